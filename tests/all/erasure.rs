//! Privacy erasure end to end, on SQLite and PostgreSQL: a profile synced to three
//! destinations (the real `sendgrid`, `mailchimp` and `webhook` plugins against their faithful
//! fakes) is erased through the admin API; each fake receives its provider's deletion call
//! (SendGrid `DELETE /v3/marketing/contacts?ids=`, Mailchimp
//! `POST .../members/{hash}/actions/delete-permanent`, a Standard Webhooks `erase` message), a
//! 5xx is retried until done, the receipt (API and CLI) lists all three, no text column of any
//! table holds the person's identifiers, and a new message with the same email is dropped and
//! counted. A destination whose plugin cannot erase (Slack) is on the receipt as such and
//! receives nothing.

use crate::common;
use crate::fakes::{
    mailchimp as mailchimp_fake, sendgrid as sendgrid_fake, slack as slack_fake,
    webhook as webhook_fake,
};

use std::time::{Duration, Instant};

use common::hub::{Db, Hub};
use common::ok;
use serde_json::{json, Value};

/// Runs each case once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[test] fn $name() { super::$name(super::Db::Sqlite) } )* }
        mod postgres { $( #[test] fn $name() { super::$name(super::Db::Postgres) } )* }
    };
}

on_both!(
    erasure_reaches_three_destinations_and_leaves_no_trace,
    a_destination_that_cannot_erase_is_on_the_receipt_and_gets_nothing,
);

const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";
const SECRET: &str = "whsec_c3dpdGNoeWFyZC10ZXN0LXNpZ25pbmcta2V5LTMyYg==";
const HOOK: &str = "/services/T0001/B0002/s3cretT0kenPart9f8e7d";

/// Ada's identifiers: what no table may hold after her erasure.
const EMAIL: &str = "ada.erased@example.com";
const USER: &str = "user-ada-7f3e";
const ANON: &str = "anon-ada-91c2";

/// Every text column of every table of the hub's database: (table, column).
fn text_columns(hub: &Hub, db: Db) -> Vec<(String, String)> {
    let pairs = match db {
        Db::Sqlite => hub.strings(
            "SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND (upper(p.type) LIKE '%TEXT%' OR upper(p.type) LIKE '%CHAR%' OR p.type = '')",
        ),
        Db::Postgres => hub.strings(
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'json', 'jsonb')",
        ),
    };
    pairs
        .into_iter()
        .map(|p| {
            let (t, c) = p.split_once('.').unwrap();
            (t.to_string(), c.to_string())
        })
        .collect()
}

/// The (table.column) holding `needle` (case-insensitively), anywhere in the database.
fn holding(hub: &Hub, db: Db, needle: &str) -> Vec<String> {
    let columns = text_columns(hub, db);
    assert!(
        columns.iter().any(|(t, c)| t == "events" && c == "body"),
        "the column list must include events.body: {columns:?}"
    );
    let needle = needle.to_lowercase().replace('\'', "''");
    columns
        .into_iter()
        .filter(|(t, c)| {
            hub.count(&format!(
                "SELECT COUNT(*) FROM \"{t}\" WHERE lower(CAST(\"{c}\" AS TEXT)) LIKE '%{needle}%'"
            )) > 0
        })
        .map(|(t, c)| format!("{t}.{c}"))
        .collect()
}

/// Polls the receipt until no destination is pending.
fn wait_complete(hub: &Hub, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = hub.admin_get(&format!("/v1/erasures/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let receipt = r.json();
        if receipt["complete"] == true {
            return receipt;
        }
        assert!(
            Instant::now() < deadline,
            "the erasure did not complete: {receipt:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn destination<'a>(receipt: &'a Value, name: &str) -> &'a Value {
    receipt["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == name)
        .unwrap_or_else(|| panic!("{name} not on the receipt: {receipt:#}"))
}

fn erasure_reaches_three_destinations_and_leaves_no_trace(db: Db) {
    let sendgrid = sendgrid_fake::Fake::start_in_background(sendgrid_fake::Setup::default());
    let mailchimp = mailchimp_fake::Fake::start_in_background(mailchimp_fake::Setup::default());
    let hook = webhook_fake::start_in_background(SECRET);
    let (sg, mc, wh) = (
        sendgrid.host_port(),
        mailchimp.host_port(),
        hook.host_port(),
    );
    let project = format!(
        "{VIP}\n\
         [destinations.sg]\nplugin = \"sendgrid\"\nconfig = {{ list_ids = [\"{list}\"] }}\n\
         secrets = {{ api_key = \"${{SENDGRID_API_KEY}}\" }}\n\
         reroute = [\"api.sendgrid.com=http://{sg}\"]\nallow_private_hosts = [\"{sg}\"]\nrate_per_second = 100\n\n\
         [destinations.mc]\nplugin = \"mailchimp\"\nconfig = {{ list_id = \"{mc_list}\" }}\n\
         secrets = {{ api_key = \"{mc_key}\" }}\n\
         reroute = [\"{dc}.api.mailchimp.com=http://{mc}\"]\nallow_private_hosts = [\"{mc}\"]\nrate_per_second = 100\n\n\
         [destinations.crm]\nplugin = \"webhook\"\nconfig = {{ url = \"{url}\", type_prefix = \"acme\" }}\n\
         secrets = {{ signing_secret = \"${{CRM_WEBHOOK_SECRET}}\" }}\n\
         allow_hosts = [\"{wh}\"]\nallow_private_hosts = [\"{wh}\"]\nrate_per_second = 100\n\n\
         [[syncs]]\nname = \"vip-to-sg\"\nfrom = {{ audience = \"vip\" }}\nto = \"sg\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\n\n\
         [[syncs]]\nname = \"vip-to-mc\"\nfrom = {{ audience = \"vip\" }}\nto = \"mc\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\n\n\
         [[syncs]]\nname = \"vip-to-crm\"\nfrom = {{ audience = \"vip\" }}\nto = \"crm\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nuser = \"identifiers.user_id\"\nfirst_name = \"traits.first_name\"\n\n\
         [[syncs]]\nname = \"orders-to-crm\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"crm\"\nmode = \"events\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nevent = \"event.name\"\norder = \"event.properties.order_id\"\n",
        list = sendgrid_fake::LIST_ID,
        mc_list = mailchimp_fake::LIST_ID,
        mc_key = mailchimp_fake::API_KEY,
        dc = mailchimp_fake::DC,
        url = hook.url("/hooks/switchyard"),
    );
    let hub = Hub::start_project(
        db,
        "",
        &project,
        &[
            ("SWITCHYARD_RETRY_BASE_MS", "50"),
            ("SWITCHYARD_ERASURE_POLL_MS", "100"),
            ("SENDGRID_API_KEY", sendgrid_fake::API_KEY),
            ("CRM_WEBHOOK_SECRET", SECRET),
        ],
    );
    hub.install(&["sendgrid", "mailchimp", "webhook"]);

    // Ada browses anonymously, then identifies: two profiles merged (the merge log names the
    // joining identifier). Bob is the bystander whose data must stay.
    let r = hub.track(
        "track",
        json!({"anonymousId": ANON, "event": "Viewed Pricing", "properties": {"contact": EMAIL}}),
    );
    assert_eq!(r.status, 200);
    hub.identify(
        USER,
        json!({"email": EMAIL, "first_name": "Ada", "plan": "pro"}),
    );
    let r = hub.track("identify", json!({"anonymousId": ANON, "userId": USER}));
    assert_eq!(r.status, 200);
    let r = hub.track(
        "track",
        json!({"userId": USER, "event": "Order Completed", "properties": {"order_id": "o-ada-1"}}),
    );
    assert_eq!(r.status, 200);
    let ordered = Instant::now();
    hub.identify(
        "user-bob",
        json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"}),
    );
    assert!(
        !holding(&hub, db, ANON).is_empty() && hub.count("SELECT COUNT(*) FROM merges") >= 1,
        "the merge must be logged before the erasure, or the test proves nothing"
    );
    // Events syncs only take events received a moment ago (their horizon).
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(ordered.elapsed()));
    for sync in ["vip-to-sg", "vip-to-mc", "vip-to-crm", "orders-to-crm"] {
        let run = hub.run_sync(sync);
        assert_eq!(run["status"], "succeeded", "{run}");
        assert!(run["succeeded"].as_u64().unwrap() >= 1, "{run}");
    }
    assert!(
        hub.count("SELECT COUNT(*) FROM sync_records WHERE sync = 'orders-to-crm'") == 1,
        "the order reached the webhook's ledger, keyed by its message id"
    );
    assert!(sendgrid.contact(EMAIL).is_some());
    assert!(mailchimp.member(EMAIL).is_some());
    assert!(holding(&hub, db, EMAIL).contains(&"sync_records.fields".to_string()));

    // SendGrid answers the first erase with a 500, the webhook receiver with a 503: both are
    // retried until done.
    sendgrid.fail_next(1);
    hook.fail_next(1, 503, &[], "busy");
    let r = hub.admin_delete(&format!("/v1/profiles/email:{EMAIL}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let id = answer["erasure"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("era_"));
    assert_eq!(answer["deleted"], answer["erasure"]["profile_id"]);
    assert_eq!(
        answer["erasure"]["destinations"].as_array().unwrap().len(),
        3
    );
    assert!(hub.profile(&format!("email:{EMAIL}")).is_none());

    let receipt = wait_complete(&hub, &id);
    for (name, syncs) in [
        ("sg", json!(["vip-to-sg"])),
        ("mc", json!(["vip-to-mc"])),
        ("crm", json!(["orders-to-crm", "vip-to-crm"])),
    ] {
        let d = destination(&receipt, name);
        assert_eq!(d["status"], "erased", "{receipt:#}");
        assert_eq!(d["syncs"], syncs);
        assert!(
            d["done_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{d}"
        );
    }
    assert!(destination(&receipt, "sg")["attempts"].as_i64().unwrap() >= 2);
    assert!(destination(&receipt, "crm")["attempts"].as_i64().unwrap() >= 2);
    assert_eq!(receipt["identifiers_erased"], 3);

    // Each provider got its own deletion call.
    assert!(
        sendgrid.contact(EMAIL).is_none(),
        "SendGrid contact deleted"
    );
    assert!(
        sendgrid
            .seen()
            .iter()
            .any(|s| s.method == "DELETE" && s.uri.starts_with("/v3/marketing/contacts?ids=")),
        "SendGrid's contact deletion was called"
    );
    assert!(sendgrid.contact("bob@example.com").is_some());
    assert!(mailchimp.is_forgotten(EMAIL), "Mailchimp delete-permanent");
    assert!(mailchimp.member(EMAIL).is_none());
    assert!(mailchimp.member("bob@example.com").is_some());
    let erases: Vec<_> = hook
        .messages()
        .into_iter()
        .filter(|m| m.body["type"] == "acme.erase")
        .collect();
    assert_eq!(erases.len(), 1, "one erase message, its retry deduplicated");
    // The profile's record and its order's (events sync) record, each as last delivered.
    let records = erases[0].body["data"]["records"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records.iter().all(|r| r["fields"]["email"] == EMAIL),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["fields"]["order"] == "o-ada-1"),
        "{records:?}"
    );
    assert!(hook.refused().is_empty(), "{:?}", hook.refused());

    // Nothing of Ada's identifiers is left in any text column of any table.
    for needle in [EMAIL, USER, ANON] {
        assert_eq!(holding(&hub, db, needle), Vec::<String>::new(), "{needle}");
    }
    assert!(!holding(&hub, db, "bob@example.com").is_empty());

    // The CLI shows the same receipt, and lists it.
    let out = ok(&hub.cli(&["profiles", "erasure", &id]));
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["destinations"], receipt["destinations"]);
    let out = ok(&hub.cli(&["profiles", "erasures"]));
    assert!(out.lines().any(|l| l.contains(&id)), "{out}");

    // She comes back with the same email: acknowledged, dropped, counted; nothing re-created.
    let r = hub.track(
        "identify",
        json!({"userId": "user-new", "traits": {"email": EMAIL.to_uppercase(), "plan": "pro"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(hub.profile(&format!("email:{EMAIL}")).is_none());
    assert!(hub.profile("user_id:user-new").is_none());
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_events_suppressed_total 1"),
        "{metrics}"
    );
    assert_eq!(holding(&hub, db, EMAIL), Vec::<String>::new());

    // Next runs send nothing more of her.
    let run = hub.run_sync("vip-to-sg");
    assert_eq!(run["sent"], 0, "{run}");
    assert!(sendgrid.contact(EMAIL).is_none());
}

fn a_destination_that_cannot_erase_is_on_the_receipt_and_gets_nothing(db: Db) {
    let slack = slack_fake::start_in_background(&[HOOK]);
    let hp = slack.host_port();
    let project = format!(
        "{VIP}\n[destinations.alerts]\nplugin = \"slack\"\n\
         config = {{ template = \"New VIP: <{{{{email}}}}>\" }}\n\
         secrets = {{ webhook_url = \"https://hooks.slack.com{HOOK}\" }}\n\
         reroute = [\"hooks.slack.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
         [[syncs]]\nname = \"vip-to-slack\"\nfrom = {{ audience = \"vip\" }}\nto = \"alerts\"\nmode = \"upsert\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
    );
    let hub = Hub::start_project(db, "", &project, &[("SWITCHYARD_ERASURE_POLL_MS", "100")]);
    hub.install(&["slack"]);
    hub.identify(USER, json!({"email": EMAIL, "plan": "pro"}));
    assert_eq!(hub.run_sync("vip-to-slack")["status"], "succeeded");
    let posted = slack.requests();
    assert_eq!(posted, 1);

    // The CLI erases and waits for the destinations.
    let out = hub.cli(&[
        "profiles",
        "erase",
        &format!("user_id:{USER}"),
        "--wait",
        "10s",
    ]);
    let text = ok(&out);
    let receipt: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(receipt["complete"], true, "{receipt:#}");
    let d = destination(&receipt, "alerts");
    assert_eq!(d["status"], "cannot_erase", "{receipt:#}");
    assert!(d["note"].as_str().unwrap().contains("by hand"), "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("does not list `erase`"),
        "{d}"
    );
    assert_eq!(slack.requests(), posted, "nothing more was posted to Slack");
    // Nothing kept for it: the queued record went with the verdict.
    assert_eq!(holding(&hub, db, EMAIL), Vec::<String>::new());
    let r = hub.admin_get(&format!("/v1/erasures/{}", receipt["id"].as_str().unwrap()));
    assert_eq!(r.json()["destinations"], receipt["destinations"]);
    assert_eq!(hub.admin_get("/v1/erasures/era_nope").status, 404);
    assert_eq!(
        hub.admin_delete(&format!("/v1/profiles/user_id:{USER}"))
            .status,
        404
    );
}

// ---- each plugin's erase, through `switchyard plugin ...` against its fake ----

mod plugins {
    use super::common::{install_plugin, lines, ok, switchyard};
    use crate::fakes::{
        google_ads as google_fake, linkedin as linkedin_fake, meta as meta_fake,
        tiktok as tiktok_fake,
    };

    use std::path::Path;
    use std::process::Output;

    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    fn sha256(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    /// `plugin deliver NAME --action ACTION` with the API host rerouted to a fake.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        dir: &Path,
        plugin: &str,
        config: Value,
        secret: &str,
        host: &str,
        fake: &str,
        action: &str,
        records: &[Value],
    ) -> Output {
        let file = dir.join(format!("{action}.jsonl"));
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&file, text).unwrap();
        let config = config.to_string();
        let mut args: Vec<String> = [
            "plugin",
            "deliver",
            plugin,
            "--config",
            &config,
            "--secret",
            secret,
            "--allow-private",
            fake,
            "--action",
            action,
            "--records",
            file.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        // `host` may name several hosts, comma-separated, all sent to the fake.
        for h in host.split(',') {
            args.push("--reroute".into());
            args.push(format!("{h}=http://{fake}"));
        }
        switchyard(dir, &args, "warn")
    }

    #[test]
    fn every_plugin_that_can_remove_a_person_lists_erase_and_slack_says_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let erasers = [
            "sendgrid",
            "mailchimp",
            "webhook",
            "meta-custom-audiences",
            "google-ads-customer-match",
            "tiktok-audiences",
            "linkedin-audiences",
        ];
        for name in erasers.iter().chain(&["slack"]) {
            install_plugin(dir.path(), name);
        }
        for name in erasers {
            let info = ok(&switchyard(dir.path(), &["plugin", "info", name], "warn"));
            let actions = info
                .lines()
                .find(|l| l.trim_start().starts_with("actions:"))
                .unwrap_or_else(|| panic!("{name}: no actions line in {info}"));
            assert!(actions.contains("erase"), "{name}: {actions}");
            assert!(!info.contains("cannot erase"), "{name}: {info}");
        }
        let info = ok(&switchyard(
            dir.path(),
            &["plugin", "info", "slack"],
            "warn",
        ));
        assert!(info.contains("cannot erase"), "{info}");
    }

    #[test]
    fn ad_platform_erases_are_removals_from_the_audience() {
        let dir = tempfile::tempdir().unwrap();
        let people = [
            json!({"key": "p1", "fields": {"email": "Ada.Erased@Example.com"}}),
            json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
        ];

        // TikTok: segment mapping, "action": "delete".
        const TT_TOKEN: &str = "tt-act.5f0c3e1d9a7b4c2e8f6a";
        const ADVERTISER: &str = "7178918106775994370";
        const AUDIENCE: &str = "1234345";
        let tiktok = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
        install_plugin(dir.path(), "tiktok-audiences");
        let config = json!({"advertiser_id": ADVERTISER, "audience_id": AUDIENCE});
        let secret = format!("access_token={TT_TOKEN}");
        let hp = tiktok.host_port();
        let run = |action: &str, records: &[Value]| {
            lines(&ok(&deliver(
                dir.path(),
                "tiktok-audiences",
                config.clone(),
                &secret,
                "business-api.tiktok.com",
                &hp,
                action,
                records,
            )))
        };
        run("upsert", &people);
        assert_eq!(tiktok.members(AUDIENCE, "EMAIL_SHA256").len(), 2);
        let results = run("erase", &people[..1]);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        let left = tiktok.members(AUDIENCE, "EMAIL_SHA256");
        assert_eq!(
            left.into_iter().collect::<Vec<_>>(),
            [sha256("bob@example.com")]
        );
        let last = tiktok.bodies().pop().unwrap();
        assert_eq!(last["action"], "delete", "{last}");

        // LinkedIn: DMP segment users, "action": "REMOVE".
        const LI_TOKEN: &str = "AQX-linkedin-token-9b8c7d6e";
        const SEGMENT: &str = "10804";
        let linkedin = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
        install_plugin(dir.path(), "linkedin-audiences");
        let config = json!({"segment_id": SEGMENT});
        let secret = format!("access_token={LI_TOKEN}");
        let hp = linkedin.host_port();
        let run = |action: &str, records: &[Value]| {
            lines(&ok(&deliver(
                dir.path(),
                "linkedin-audiences",
                config.clone(),
                &secret,
                "api.linkedin.com",
                &hp,
                action,
                records,
            )))
        };
        run("upsert", &people);
        assert_eq!(linkedin.members(SEGMENT).len(), 2);
        let results = run("erase", &people[..1]);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        let left: Vec<String> = linkedin
            .members(SEGMENT)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(left, [sha256("bob@example.com")]);
        let last = linkedin.bodies().pop().unwrap();
        assert!(last.to_string().contains("\"REMOVE\""), "{last}");

        // Meta: DELETE /{audience}/users with a JSON body.
        let meta = meta_fake::start_in_background();
        install_plugin(dir.path(), "meta-custom-audiences");
        let config = json!({"audience_id": meta_fake::AUDIENCE_ID});
        let secret = format!("access_token={}", meta_fake::TOKEN);
        let hp = meta.host_port();
        let run = |action: &str, records: &[Value]| {
            lines(&ok(&deliver(
                dir.path(),
                "meta-custom-audiences",
                config.clone(),
                &secret,
                "graph.facebook.com",
                &hp,
                action,
                records,
            )))
        };
        run("upsert", &people);
        assert_eq!(meta.members().len(), 2);
        let results = run("erase", &people[..1]);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        let members = meta.members();
        assert_eq!(members.len(), 1, "{members:?}");
        assert_eq!(members[0]["EMAIL"], sha256("bob@example.com"));
        assert_eq!(meta.uploads().last().unwrap().method, "DELETE");

        // Google Customer Match (Data Manager API): audienceMembers:remove.
        let google = google_fake::start_in_background();
        install_plugin(dir.path(), "google-ads-customer-match");
        let config = json!({"customer_id": "123-456-7890", "user_list_id": google_fake::USER_LIST_ID,
                            "customer_match_terms_accepted": true,
                            "consent_ad_user_data": "GRANTED", "consent_ad_personalization": "GRANTED"});
        let secret = format!("access_token={}", google_fake::ACCESS_TOKEN);
        let hp = google.host_port();
        let run = |action: &str, records: &[Value]| {
            lines(&ok(&deliver(
                dir.path(),
                "google-ads-customer-match",
                config.clone(),
                &secret,
                "datamanager.googleapis.com,oauth2.googleapis.com",
                &hp,
                action,
                records,
            )))
        };
        run("upsert", &people);
        let members = || google.dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
        assert_eq!(members().len(), 2);
        let results = run("erase", &people[..1]);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(members().len(), 1, "{:?}", members());
        let (path, _) = google.dm_bodies().pop().unwrap();
        assert_eq!(path, "/v1/audienceMembers:remove");
    }
}
