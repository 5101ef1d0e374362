//! The plugin contract 1.1.0 end to end: a plugin built against 1.0.0 (the committed fixture,
//! built from the SDK before 1.1.0) still installs and delivers; delivery ids stay the same
//! across the retries of a change and differ for the next change, as the receiver sees them;
//! a changed email renames the contact in an email-keyed destination; a transform plugin is
//! installed, listed and called through the host. SQLite and PostgreSQL.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::hub::{run_counts, Db, Hub};
use crate::common::{failed, install_plugin, lines, ok, switchyard};
use crate::fakes::mailchimp as mailchimp_fake;
use crate::fakes::sendgrid as sendgrid_fake;
use crate::fakes::webhook as webhook_fake;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";

/// The webhook plugin as built against plugin API 1.0.0 (see tests/fixtures/README.md).
fn fixture_1_0() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/webhook-api-1.0.0.wasm")
}

fn hook_project(fake: &webhook_fake::Fake, sync_extra: &str) -> String {
    let hp = fake.host_port();
    format!(
        "{VIP}\n[destinations.hook]\nplugin = \"webhook\"\n\
         config = {{ url = \"{url}\" }}\n\
         secrets = {{ signing_secret = \"${{HOOK_SECRET}}\" }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\nconcurrency = 1\n\n\
         [[syncs]]\nname = \"vip-to-hook\"\nfrom = {{ audience = \"vip\" }}\nto = \"hook\"\nmode = \"mirror\"\n{sync_extra}\n\
         [syncs.mapping]\nemail = \"traits.email\"\nfirst_name = \"traits.first_name\"\n",
        url = fake.url("/hooks/in"),
    )
}

fn hub_with(db: Db, project: &str) -> Hub {
    Hub::start_project(
        db,
        "",
        project,
        &[("SWITCHYARD_RETRY_BASE_MS", "20"), ("HOOK_SECRET", SECRET)],
    )
}

/// Every record of every accepted message: (key, delivery id, fields).
fn delivered(fake: &webhook_fake::Fake) -> Vec<(String, String, Value)> {
    fake.messages()
        .iter()
        .flat_map(|m| {
            m.body["data"]["records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| {
            (
                r["key"].as_str().unwrap_or_default().to_string(),
                r["delivery_id"].as_str().unwrap_or_default().to_string(),
                r["fields"].clone(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- 1.0.0 plugins

#[test]
fn a_plugin_built_against_1_0_0_installs_and_delivers_under_the_1_1_host() {
    let fake = webhook_fake::start_in_background(SECRET);
    let hub = hub_with(Db::Sqlite, &hook_project(&fake, ""));
    let out = ok(&hub.cli(&["plugin", "install", fixture_1_0().to_str().unwrap()]));
    assert!(out.contains("(destination, plugin API 1.0.0)"), "{out}");
    // Its raw-value secret is declared the 1.0.0 way (a config schema keyword), still honoured.
    assert!(out.contains("VALUE ENTERS PLUGIN MEMORY"), "{out}");
    assert!(out.contains("cannot erase"), "{out}");

    hub.identify(
        "u1",
        json!({"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}),
    );
    hub.identify("u2", json!({"email": "bob@example.com", "plan": "pro"}));
    let r = hub.run_sync("vip-to-hook");
    assert_eq!(run_counts(&r), ("succeeded", 2, 0, 0), "{r}");
    // The receiver verified each signature, made with the raw secret the plugin was given.
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    let records = delivered(&fake);
    let mut emails: Vec<&str> = records
        .iter()
        .map(|(_, _, f)| f["email"].as_str().unwrap())
        .collect();
    emails.sort();
    assert_eq!(emails, ["ada@example.com", "bob@example.com"]);
    // A 1.0.0 plugin knows nothing of delivery ids: it sends none.
    assert!(
        records.iter().all(|(_, id, _)| id.is_empty()),
        "{records:?}"
    );

    // Mirror: a removal reaches it too.
    hub.identify("u2", json!({"plan": "free"}));
    let r = hub.run_sync("vip-to-hook");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    assert!(fake
        .messages()
        .iter()
        .any(|m| m.body["type"] == "switchyard.delete"));

    // It is never sent `erase`: the host refuses before any call.
    let hp = fake.host_port();
    let dir = hub.plugins_dir();
    let records_file = hub.dir.path().join("erase.jsonl");
    std::fs::write(
        &records_file,
        "{\"key\":\"p1\",\"fields\":{\"email\":\"a@x.com\"}}\n",
    )
    .unwrap();
    let before = fake.attempt_ids().len();
    let err = failed(&switchyard(
        &dir,
        &[
            "plugin",
            "deliver",
            "webhook",
            "--config",
            &json!({"url": fake.url("/hooks/in")}).to_string(),
            "--secret",
            &format!("signing_secret={SECRET}"),
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
            "--action",
            "erase",
            "--records",
            records_file.to_str().unwrap(),
        ],
        "warn",
    ));
    assert!(err.contains("cannot erase"), "{err}");
    assert!(err.contains("plugin API 1.0.0"), "{err}");
    assert_eq!(fake.attempt_ids().len(), before, "nothing was sent");
}

// ---------------------------------------------------------------- delivery ids

fn half_accepted_batch_is_retried_with_the_same_delivery_ids(db: Db) {
    let fake = webhook_fake::start_in_background(SECRET);
    // Batches of two, one attempt per run: a failed batch waits for the next run.
    let hub = hub_with(db, &hook_project(&fake, "batch_size = 2\nmax_attempts = 1"));
    hub.install(&["webhook"]);
    for (user, email) in [
        ("u1", "ada@example.com"),
        ("u2", "bob@example.com"),
        ("u3", "cy@example.com"),
        ("u4", "dee@example.com"),
    ] {
        hub.identify(
            user,
            json!({"email": email, "first_name": user, "plan": "pro"}),
        );
    }
    // The receiver applies the first message, but its answer is lost (500).
    fake.accept_then_fail(1, 500, "timed out after commit");
    let r = hub.run_sync("vip-to-hook");
    assert_eq!(run_counts(&r), ("completed_with_errors", 2, 2, 2), "{r}");
    let first = delivered(&fake);
    assert_eq!(
        first.len(),
        4,
        "the receiver applied both batches: {first:?}"
    );
    assert!(
        first.iter().all(|(_, id, _)| id.starts_with("dlv_")),
        "{first:?}"
    );

    // The operator replays the dead letters: a new run sends the half-accepted batch again,
    // with the same delivery ids and webhook-id; the receiver drops it as a duplicate.
    ok(&hub.cli(&["dlq", "replay", "vip-to-hook"]));
    let runs = ok(&hub.cli(&["sync", "runs", "vip-to-hook", "--limit", "1"]));
    let r: Value = serde_json::from_str(runs.lines().next().unwrap()).unwrap();
    assert_eq!(run_counts(&r), ("succeeded", 2, 0, 0), "{r}");
    let attempts = fake.attempt_ids();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(
        attempts[0], attempts[2],
        "the retried batch carries the webhook-id of its first attempt"
    );
    assert_eq!(fake.duplicates(), 1);
    assert_eq!(delivered(&fake), first, "nothing applied twice");

    // A later change of a record is a new delivery: a new id, applied.
    hub.identify("u1", json!({"first_name": "Ada"}));
    let r = hub.run_sync("vip-to-hook");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    let now = delivered(&fake);
    assert_eq!(now.len(), 5);
    let (key, id, fields) = now.last().unwrap().clone();
    assert_eq!(fields["first_name"], "Ada");
    let earlier = first.iter().find(|(k, _, _)| *k == key).unwrap();
    assert_ne!(earlier.1, id, "a later change gets a new delivery id");

    // It leaves the audience and comes back with identical fields: new ids both times.
    hub.identify("u1", json!({"plan": "free"}));
    assert_eq!(
        run_counts(&hub.run_sync("vip-to-hook")),
        ("succeeded", 1, 0, 0)
    );
    hub.identify("u1", json!({"plan": "pro"}));
    assert_eq!(
        run_counts(&hub.run_sync("vip-to-hook")),
        ("succeeded", 1, 0, 0)
    );
    let all = delivered(&fake);
    let ids: Vec<&str> = all
        .iter()
        .filter(|(k, _, _)| *k == key)
        .map(|(_, id, _)| id.as_str())
        .collect();
    assert_eq!(ids.len(), 4, "{all:?}");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        4,
        "every change of the record has its own id: {ids:?}"
    );
    assert_eq!(
        fake.duplicates(),
        1,
        "the re-join was not taken for a retry"
    );
}

#[test]
fn half_accepted_batch_is_retried_with_the_same_delivery_ids_sqlite() {
    half_accepted_batch_is_retried_with_the_same_delivery_ids(Db::Sqlite);
}

#[test]
fn half_accepted_batch_is_retried_with_the_same_delivery_ids_postgres() {
    half_accepted_batch_is_retried_with_the_same_delivery_ids(Db::Postgres);
}

// ---------------------------------------------------------------- changed identifiers

fn a_changed_email_renames_the_mailchimp_member(db: Db) {
    let fake = mailchimp_fake::Fake::start_in_background(mailchimp_fake::Setup::default());
    let hp = fake.host_port();
    let project = format!(
        "{VIP}\n[destinations.newsletter]\nplugin = \"mailchimp\"\n\
         config = {{ list_id = \"{list}\" }}\n\
         secrets = {{ api_key = \"{key}\" }}\n\
         reroute = [\"{dc}.api.mailchimp.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
         [[syncs]]\nname = \"vip-to-mailchimp\"\nfrom = {{ audience = \"vip\" }}\nto = \"newsletter\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"traits.email\"\nfirst_name = \"traits.first_name\"\n",
        list = mailchimp_fake::LIST_ID,
        key = mailchimp_fake::API_KEY,
        dc = mailchimp_fake::DC,
    );
    let hub = hub_with(db, &project);
    hub.install(&["mailchimp"]);
    let info = ok(&hub.cli(&["plugin", "info", "mailchimp"]));
    assert!(info.contains("keyed by: email"), "{info}");

    hub.identify(
        "u1",
        json!({"email": "ada@old.example.com", "first_name": "Ada", "plan": "pro"}),
    );
    hub.identify(
        "u2",
        json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"}),
    );
    let r = hub.run_sync("vip-to-mailchimp");
    assert_eq!(run_counts(&r), ("succeeded", 2, 0, 0), "{r}");
    // Ada unsubscribed in Mailchimp meanwhile: a rename must keep that.
    fake.inner
        .lock()
        .unwrap()
        .members
        .get_mut(&mailchimp_fake::subscriber_hash("ada@old.example.com"))
        .unwrap()["status"] = json!("unsubscribed");

    hub.identify(
        "u1",
        json!({"email": "ada@new.example.com", "first_name": "Ada L."}),
    );
    let r = hub.run_sync("vip-to-mailchimp");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    assert_eq!(
        fake.active_emails(),
        ["ada@new.example.com", "bob@example.com"],
        "only the new address is left"
    );
    let ada = fake.member("ada@new.example.com").unwrap();
    assert_eq!(ada["status"], "unsubscribed", "renamed in place: {ada}");
    assert_eq!(ada["merge_fields"]["FNAME"], "Ada L.");
    assert!(fake.member("ada@old.example.com").is_none());
    let renames: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert_eq!(renames.len(), 1);
    assert!(renames[0]
        .uri
        .contains(&mailchimp_fake::subscriber_hash("ada@old.example.com")));

    // The new address is already a member (someone added it by hand): the old member is
    // removed as a delete would (archived), and the existing one updated.
    fake.seed_member("bob@new.example.com", "subscribed");
    hub.identify("u2", json!({"email": "bob@new.example.com"}));
    let r = hub.run_sync("vip-to-mailchimp");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    assert_eq!(
        fake.active_emails(),
        ["ada@new.example.com", "bob@new.example.com"]
    );
    assert_eq!(
        fake.member("bob@example.com").unwrap()["status"],
        "archived"
    );
    assert_eq!(
        fake.member("bob@new.example.com").unwrap()["merge_fields"]["FNAME"],
        "Bob"
    );
}

#[test]
fn a_changed_email_renames_the_mailchimp_member_sqlite() {
    a_changed_email_renames_the_mailchimp_member(Db::Sqlite);
}

#[test]
fn a_changed_email_renames_the_mailchimp_member_postgres() {
    a_changed_email_renames_the_mailchimp_member(Db::Postgres);
}

fn a_changed_email_replaces_the_sendgrid_contact(db: Db) {
    let fake = sendgrid_fake::Fake::start_in_background(sendgrid_fake::Setup::default());
    let hp = fake.host_port();
    let project = format!(
        "{VIP}\n[destinations.newsletter]\nplugin = \"sendgrid\"\n\
         config = {{ list_ids = [\"{list}\"], delete_mode = \"delete_contact\" }}\n\
         secrets = {{ api_key = \"{key}\" }}\n\
         reroute = [\"api.sendgrid.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
         [[syncs]]\nname = \"vip-to-sendgrid\"\nfrom = {{ audience = \"vip\" }}\nto = \"newsletter\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"traits.email\"\nfirst_name = \"traits.first_name\"\n",
        list = sendgrid_fake::LIST_ID,
        key = sendgrid_fake::API_KEY,
    );
    let hub = hub_with(db, &project);
    hub.install(&["sendgrid"]);
    hub.identify(
        "u1",
        json!({"email": "ada@old.example.com", "first_name": "Ada", "plan": "pro"}),
    );
    let r = hub.run_sync("vip-to-sendgrid");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    assert!(fake.contact("ada@old.example.com").is_some());

    hub.identify("u1", json!({"email": "ada@new.example.com"}));
    let r = hub.run_sync("vip-to-sendgrid");
    assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
    let ada = fake
        .contact("ada@new.example.com")
        .expect("the new address upserted");
    assert_eq!(ada["first_name"], "Ada");
    assert!(
        fake.contact("ada@old.example.com").is_none(),
        "the contact under the old address was deleted"
    );
    assert_eq!(fake.contact_count(), 1, "only the new address is left");
    // Looked up by the old address, deleted by id, after the new contact's import.
    let seen = fake.seen();
    let upsert = seen.iter().rposition(|s| s.method == "PUT").unwrap();
    let delete = seen
        .iter()
        .rposition(|s| s.method == "DELETE" && s.uri.contains("/v3/marketing/contacts?ids="))
        .expect("a delete by id");
    assert!(upsert < delete);
}

#[test]
fn a_changed_email_replaces_the_sendgrid_contact_sqlite() {
    a_changed_email_replaces_the_sendgrid_contact(Db::Sqlite);
}

#[test]
fn a_changed_email_replaces_the_sendgrid_contact_postgres() {
    a_changed_email_replaces_the_sendgrid_contact(Db::Postgres);
}

// ---------------------------------------------------------------- transforms

#[test]
fn a_transform_plugin_installs_lists_and_transforms_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    install_plugin(dir.path(), "transform-probe");
    let list = ok(&switchyard(dir.path(), &["plugin", "list"], "warn"));
    assert!(
        list.lines()
            .any(|l| l.starts_with("transform-probe") && l.contains("transform")),
        "{list}"
    );
    let info = ok(&switchyard(
        dir.path(),
        &["plugin", "info", "transform-probe"],
        "warn",
    ));
    assert!(info.contains("(transform, plugin API 1.1.0)"), "{info}");
    assert!(info.contains("VALUE ENTERS PLUGIN MEMORY"), "{info}");

    let messages = dir.path().join("messages.jsonl");
    let input = [
        json!({"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1"}),
        json!({"type": "track", "event": "Debug Ping", "userId": "u1", "messageId": "m2"}),
        json!({"type": "track", "event": "Fan Out", "userId": "u2", "messageId": "m3"}),
        json!({"type": "track", "event": "Leak", "userId": "u3", "messageId": "m4"}),
    ];
    let text: String = input.iter().map(|m| format!("{m}\n")).collect();
    std::fs::write(&messages, text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "transform",
            "transform-probe",
            "--config",
            r#"{"drop_events": ["Debug Ping"]}"#,
            "--secret",
            "token=tok_s3cr3t_value",
            "--messages",
            messages.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        switchyard(dir.path(), &args, "warn")
    };
    let out = lines(&ok(&run(&[])));
    assert_eq!(out.len(), 4, "one result per message: {out:?}");
    assert_eq!(out[0]["keep"][0]["properties"]["transformed"], true);
    assert_eq!(out[0]["keep"][0]["messageId"], "m1");
    assert_eq!(out[1]["drop"], "event `Debug Ping` is dropped by config");
    let fanned: Vec<&str> = out[2]["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(fanned, ["Fan Out 1", "Fan Out 2"]);
    // What a transform returns is scrubbed of its secrets like anything a plugin returns.
    assert_eq!(
        out[3]["keep"][0]["properties"]["token"],
        "[redacted secret token]"
    );

    // A transform that spins is stopped by the CPU deadline, like any plugin call.
    std::fs::write(&messages, format!("{}\n", json!({"event": "Spin"}))).unwrap();
    let err = failed(&run(&[]));
    assert!(err.contains("CPU time limit"), "{err}");

    // A transform is not a destination.
    let records = dir.path().join("records.jsonl");
    std::fs::write(&records, "{\"key\":\"p1\",\"fields\":{}}\n").unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "transform-probe",
            "--records",
            records.to_str().unwrap(),
        ],
        "warn",
    ));
    assert!(err.contains("is not a destination plugin"), "{err}");
}
