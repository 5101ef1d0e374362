//! Privacy end to end (issue 19 items 1, 6, 7), on SQLite and PostgreSQL: consent enforced by
//! the host (a profile without the consent a destination needs never reaches it, withdrawal
//! removes it on the next run, the run history and metrics count it withheld), undoing a merge
//! (both profiles as they were, events and traits on the right side, the destination
//! corrected, no re-merge), and event retention.
//!
//! Consent arrives as Segment's consent object, `context.consent.categoryPreferences`
//! (https://www.twilio.com/docs/segment/privacy/consent-management/consent-in-segment-connections).

use crate::common;
use crate::fakes::json_sink::JsonSink;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::hub::{Db, Hub, ADMIN_TOKEN};
use common::ok;
use serde_json::{json, Value};

fn destination(name: &str, sink: &JsonSink, extra: &str) -> String {
    format!(
        "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"{}\" }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 1000\n{extra}\n",
        sink.url(),
        hp = sink.host_port()
    )
}

fn last_run(hub: &Hub, sync: &str) -> Value {
    let out = ok(&hub.cli(&["sync", "runs", sync, "--limit", "1"]));
    serde_json::from_str(out.lines().next().expect("a run")).unwrap()
}

fn emails(sink: &JsonSink) -> Vec<String> {
    let mut e: Vec<String> = sink
        .records()
        .into_values()
        .map(|f| f["email"].as_str().unwrap_or_default().to_string())
        .collect();
    e.sort();
    e
}

/// An identify carrying a consent object (or none), at a given time.
fn identify(hub: &Hub, user: &str, email: &str, marketing: Option<bool>, at: &str) {
    let mut body = json!({"userId": user, "traits": {"email": email}, "timestamp": at});
    if let Some(granted) = marketing {
        body["context"] =
            json!({"consent": {"categoryPreferences": {"Marketing": granted, "Analytics": true}}});
    }
    let r = hub.track("identify", body);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn admin_post(hub: &Hub, path: &str) -> common::hub::HttpResponse {
    hub.request(
        "POST",
        path,
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    )
}

fn consent(db: Db) {
    let mail = JsonSink::start();
    let plain = JsonSink::start();
    let events = JsonSink::start();
    let project = format!(
        "{}{}{}\
         [[syncs]]\nname = \"mail\"\nfrom = \"all\"\nto = \"mail\"\nmode = \"upsert\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n\n\
         [[syncs]]\nname = \"plain\"\nfrom = \"all\"\nto = \"plain\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n\n\
         [[syncs]]\nname = \"orders\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"events\"\nmode = \"events\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("mail", &mail, "consent = [\"marketing\"]"),
        destination("plain", &plain, ""),
        destination("events", &events, "consent = [\"Marketing\"]"),
    );
    let hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["json-post-destination"]);

    identify(
        &hub,
        "u1",
        "ada@example.com",
        Some(true),
        "2026-01-01T10:00:00Z",
    );
    identify(
        &hub,
        "u2",
        "bob@example.com",
        Some(false),
        "2026-01-01T10:00:00Z",
    );
    // No consent object at all: `consent_default` is "deny" unless set.
    identify(&hub, "u3", "cy@example.com", None, "2026-01-01T10:00:00Z");
    // An older message saying "no" arrives late: the later "yes" stands (message time, not
    // arrival order).
    identify(
        &hub,
        "u1",
        "ada@example.com",
        Some(false),
        "2025-12-31T10:00:00Z",
    );

    let out = ok(&hub.cli(&["sync", "run", "mail"]));
    assert!(out.contains("withheld: no consent 2"), "{out}");
    assert_eq!(emails(&mail), vec!["ada@example.com"], "only Ada consented");
    mail.with(|s| {
        assert!(
            s.log
                .iter()
                .all(|(_, _, f)| f["email"] == "ada@example.com"),
            "nothing of Bob or Cy ever reached the destination: {:?}",
            s.log
        )
    });
    let run = last_run(&hub, "mail");
    assert_eq!(
        (run["withheld"].as_i64(), run["planned_adds"].as_i64()),
        (Some(2), Some(1)),
        "{run}"
    );
    // A destination that needs no consent gets everyone.
    ok(&hub.cli(&["sync", "run", "plain"]));
    assert_eq!(emails(&plain).len(), 3);
    assert_eq!(last_run(&hub, "plain")["withheld"], 0);

    // Events: the profile's consent and the event's own stamp both count.
    // o3 is an old event stamped "no": withheld, and too old to change Ada's state.
    for (user, id, stamp) in [
        ("u1", "o1", None),
        ("u2", "o2", None),
        ("u1", "o3", Some(false)),
    ] {
        let mut body = json!({"userId": user, "event": "Order Completed", "messageId": id});
        if let Some(g) = stamp {
            body["context"] = json!({"consent": {"categoryPreferences": {"Marketing": g}}});
            body["timestamp"] = json!("2025-06-01T00:00:00Z");
        }
        assert_eq!(hub.track("track", body).status, 200);
    }
    std::thread::sleep(Duration::from_millis(2200)); // events settle 2 s before a sync reads them
    ok(&hub.cli(&["sync", "run", "orders"]));
    let sent: Vec<String> = events.with(|s| s.events.iter().map(|e| e.0.clone()).collect());
    assert_eq!(sent, vec!["o1"], "only Ada's unstamped order: {sent:?}");
    assert_eq!(last_run(&hub, "orders")["withheld"], 2);

    // Ada withdraws: the next run removes her, in upsert mode too.
    identify(
        &hub,
        "u1",
        "ada@example.com",
        Some(false),
        "2026-01-02T10:00:00Z",
    );
    ok(&hub.cli(&["sync", "run", "mail"]));
    assert!(emails(&mail).is_empty(), "{:?}", mail.records());
    let run = last_run(&hub, "mail");
    assert_eq!(run["planned_removals"], 1, "{run}");
    mail.with(|s| {
        let (action, _, _) = s.log.last().expect("a delete");
        assert_eq!(action, "delete");
    });
    assert_eq!(
        emails(&plain).len(),
        3,
        "the other destination is untouched"
    );
    ok(&hub.cli(&["sync", "run", "plain"]));
    assert_eq!(emails(&plain).len(), 3);

    // Bob consents, in a `/v1/batch` this time (read from every message, batched or not):
    // added on the next run. That run goes through the admin API, so the serving hub's metrics
    // count its withheld profiles (Ada and Cy).
    let r = hub.track(
        "batch",
        json!({"batch": [{"type": "identify", "userId": "u2", "timestamp": "2026-01-02T10:00:00Z",
                          "context": {"consent": {"categoryPreferences": {"Marketing": true}}}}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_post(&hub, "/v1/syncs/mail/run?full_resync=true");
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = hub.admin_get("/v1/syncs/mail/runs?limit=1").json();
        let newest = runs["runs"]
            .get(0)
            .cloned()
            .or_else(|| runs.get(0).cloned());
        if let Some(run) = newest {
            if run["status"] == "succeeded" && run["full_resync"] == true {
                assert_eq!(run["withheld"], 2, "{run}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API run did not finish: {runs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(emails(&mail), vec!["bob@example.com"]);
    // The metrics count the run's withheld profiles.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = hub.request("GET", "/metrics", &[], b"").text();
        if metrics
            .lines()
            .any(|l| l.starts_with("switchyard_sync_withheld_total{sync=\"mail\"} 2"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // `profiles show` has the consent state.
    let shown: Value =
        serde_json::from_str(&ok(&hub.cli(&["profiles", "show", "user_id:u1"]))).unwrap();
    assert_eq!(shown["consent"]["marketing"]["granted"], false, "{shown}");
    assert_eq!(shown["consent"]["analytics"]["granted"], true, "{shown}");
}

#[test]
fn privacy_consent_sqlite() {
    consent(Db::Sqlite);
}

#[test]
fn privacy_consent_postgres() {
    consent(Db::Postgres);
}

/// `consent_default = "allow"` is Segment's rule: no consent object, no enforcement; an explicit
/// "no" still withholds. `validate` warns about an email destination without consent.
#[test]
fn privacy_consent_default_allow_and_validate_warning() {
    let mail = JsonSink::start();
    let project = format!(
        "{}[[syncs]]\nname = \"mail\"\nfrom = \"all\"\nto = \"mail\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("mail", &mail, "consent = [\"marketing\"]"),
    );
    let hub = Hub::start_project(Db::Sqlite, "consent_default = \"allow\"", &project, &[]);
    hub.install(&["json-post-destination"]);
    identify(
        &hub,
        "u2",
        "bob@example.com",
        Some(false),
        "2026-01-01T10:00:00Z",
    );
    identify(&hub, "u3", "cy@example.com", None, "2026-01-01T10:00:00Z");
    ok(&hub.cli(&["sync", "run", "mail"]));
    assert_eq!(emails(&mail), vec!["cy@example.com"]);
    assert_eq!(last_run(&hub, "mail")["withheld"], 1);

    let file = hub.dir.path().join("ads.toml");
    std::fs::write(
        &file,
        "[destinations.news]\nplugin = \"sendgrid\"\n[destinations.ads]\nplugin = \"meta-custom-audiences\"\nconsent = [\"advertising\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["validate", "--config"])
        .arg(&file)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: [destinations.news] plugin `sendgrid` sends people to an email or ad platform, but names no consent"),
        "{text}"
    );
    assert!(!text.contains("warning: [destinations.ads]"), "{text}");
}

fn unmerge(db: Db) {
    let crm = JsonSink::start();
    let project = format!(
        "{}[[syncs]]\nname = \"crm\"\nfrom = \"all\"\nto = \"crm\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nname = \"traits.name\"\nplan = \"traits.plan\"\n",
        destination("crm", &crm, ""),
    );
    let hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["json-post-destination"]);

    let send = |kind: &str, body: Value| {
        let r = hub.track(kind, body);
        assert_eq!(r.status, 200, "{}", r.text());
    };
    send(
        "identify",
        json!({"userId": "u1", "traits": {"email": "ada@example.com", "name": "Ada", "plan": "pro"}, "timestamp": "2026-01-01T10:00:00Z"}),
    );
    send(
        "identify",
        json!({"anonymousId": "device-9", "traits": {"email": "dee@example.com", "name": "Dee", "plan": "free"}, "timestamp": "2026-01-01T11:00:00Z"}),
    );
    send(
        "track",
        json!({"anonymousId": "device-9", "event": "Viewed", "messageId": "dee-viewed", "timestamp": "2026-01-01T11:05:00Z"}),
    );
    send(
        "track",
        json!({"userId": "u1", "event": "Paid", "messageId": "ada-paid", "timestamp": "2026-01-01T11:06:00Z"}),
    );
    let ada_id = hub.profile("user_id:u1").unwrap()["id"].clone();
    let dee_id = hub.profile("anonymous_id:device-9").unwrap()["id"].clone();
    ok(&hub.cli(&["sync", "run", "crm"]));
    assert_eq!(crm.records().len(), 2);

    // A wrong merge: someone logs in as u1 on Dee's device.
    send(
        "identify",
        json!({"userId": "u1", "anonymousId": "device-9", "messageId": "the-join", "timestamp": "2026-01-01T12:00:00Z"}),
    );
    assert_eq!(hub.profile("anonymous_id:device-9").unwrap()["id"], ada_id);
    ok(&hub.cli(&["sync", "run", "crm"]));
    assert_eq!(crm.records().len(), 1, "{:?}", crm.records());
    assert_eq!(
        crm.records()[ada_id.as_str().unwrap()]["name"],
        "Dee",
        "the merged profile took Dee's later name"
    );

    // After the merge Dee's device keeps sending: an event and a new plan land on the merged
    // profile, and must go back with her.
    send(
        "track",
        json!({"anonymousId": "device-9", "event": "Viewed", "messageId": "dee-after", "timestamp": "2026-01-01T12:10:00Z"}),
    );
    send(
        "identify",
        json!({"anonymousId": "device-9", "traits": {"plan": "team"}, "timestamp": "2026-01-01T12:30:00Z"}),
    );
    assert_eq!(hub.profile("user_id:u1").unwrap()["traits"]["plan"], "team");

    // The merge log shows the merge with its id and reason.
    let shown: Value =
        serde_json::from_str(&ok(&hub.cli(&["profiles", "show", "user_id:u1"]))).unwrap();
    let merges = shown["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 1, "{shown}");
    let merge = &merges[0];
    assert_eq!(
        (
            &merge["from_profile"],
            &merge["into_profile"],
            &merge["reason"],
            &merge["message_id"]
        ),
        (&dee_id, &ada_id, &json!("identify"), &json!("the-join")),
        "{merge}"
    );
    let merge_id = merge["id"].as_str().unwrap().to_string();
    assert!(merge_id.starts_with("mrg_"));

    let out: Value =
        serde_json::from_str(&ok(&hub.cli(&["profiles", "unmerge", &merge_id]))).unwrap();
    assert_eq!(out["restored_profile"], dee_id, "{out}");
    assert_eq!(out["survivor_profile"], ada_id, "{out}");

    // Both profiles as they were.
    let ada = hub.profile("user_id:u1").unwrap();
    let dee = hub.profile("anonymous_id:device-9").unwrap();
    assert_eq!((&ada["id"], &dee["id"]), (&ada_id, &dee_id));
    assert_eq!(
        (&ada["traits"]["name"], &ada["traits"]["plan"]),
        (&json!("Ada"), &json!("pro"))
    );
    assert_eq!(
        (
            &dee["traits"]["name"],
            &dee["traits"]["plan"],
            &dee["traits"]["email"]
        ),
        (&json!("Dee"), &json!("team"), &json!("dee@example.com"))
    );
    let ids = |p: &Value| -> Vec<String> {
        let mut v: Vec<String> = p["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["kind"].as_str().unwrap(),
                    i["value"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&ada), vec!["email:ada@example.com", "user_id:u1"]);
    assert_eq!(
        ids(&dee),
        vec!["anonymous_id:device-9", "email:dee@example.com"]
    );
    let events_of = |id: &str| -> Vec<String> {
        let page = hub.admin_get(&format!("/v1/profiles/{id}/events")).json();
        let mut v: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["messageId"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    let dee_events = events_of("anonymous_id:device-9");
    assert!(
        dee_events.contains(&"dee-viewed".to_string()),
        "{dee_events:?}"
    );
    assert!(
        !dee_events.contains(&"ada-paid".to_string()),
        "{dee_events:?}"
    );
    assert!(
        dee_events.contains(&"dee-after".to_string()),
        "an event after the merge naming only Dee's device goes back with her: {dee_events:?}"
    );
    let ada_events = events_of("user_id:u1");
    assert!(
        ada_events.contains(&"ada-paid".to_string()),
        "{ada_events:?}"
    );
    assert!(
        ada_events.contains(&"the-join".to_string()),
        "the message naming both stays with the survivor: {ada_events:?}"
    );
    assert!(!ada_events.contains(&"dee-viewed".to_string()));

    // The destination is corrected on the next run: Dee re-added, Ada updated.
    ok(&hub.cli(&["sync", "run", "crm"]));
    let held = crm.records();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(
        held[ada_id.as_str().unwrap()],
        json!({"email": "ada@example.com", "name": "Ada", "plan": "pro"})
    );
    assert_eq!(
        held[dee_id.as_str().unwrap()],
        json!({"email": "dee@example.com", "name": "Dee", "plan": "team"})
    );

    // The same join again does not merge them: u1 (highest priority) wins.
    send(
        "identify",
        json!({"userId": "u1", "anonymousId": "device-9", "timestamp": "2026-01-01T13:00:00Z"}),
    );
    assert_eq!(hub.profile("anonymous_id:device-9").unwrap()["id"], dee_id);
    assert_eq!(hub.profile("user_id:u1").unwrap()["id"], ada_id);

    // The admin API: undone already (409), unknown (404); the log says undone.
    let r = admin_post(&hub, &format!("/v1/merges/{merge_id}/unmerge"));
    assert_eq!(r.status, 409, "{}", r.text());
    let r = admin_post(&hub, "/v1/merges/mrg_nope/unmerge");
    assert_eq!(r.status, 404, "{}", r.text());
    let log = hub.admin_get("/v1/profiles/user_id:u1/merges").json();
    assert!(log["merges"][0]["undone_at"].is_string(), "{log}");
}

#[test]
fn privacy_unmerge_sqlite() {
    unmerge(Db::Sqlite);
}

#[test]
fn privacy_unmerge_postgres() {
    unmerge(Db::Postgres);
}

/// `--allow-rejoin` (here through the API): the next message naming both merges them again.
#[test]
fn privacy_unmerge_allow_rejoin() {
    let hub = Hub::start(Db::Sqlite);
    let send = |body: Value| assert_eq!(hub.track("identify", body).status, 200);
    send(json!({"userId": "u1", "traits": {"name": "Ada"}}));
    send(json!({"anonymousId": "d1", "traits": {"name": "Dee"}}));
    send(json!({"userId": "u1", "anonymousId": "d1"}));
    let merges = hub.admin_get("/v1/profiles/user_id:u1/merges").json();
    let id = merges["merges"][0]["id"].as_str().unwrap().to_string();
    let r = admin_post(&hub, &format!("/v1/merges/{id}/unmerge?allow_rejoin=true"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rejoin_allowed"], true);
    assert_ne!(
        hub.profile("anonymous_id:d1").unwrap()["id"],
        hub.profile("user_id:u1").unwrap()["id"]
    );
    send(json!({"userId": "u1", "anonymousId": "d1"}));
    assert_eq!(
        hub.profile("anonymous_id:d1").unwrap()["id"],
        hub.profile("user_id:u1").unwrap()["id"],
        "allowed to rejoin"
    );
}

fn retention(db: Db) {
    let hub = Hub::start_project(
        db,
        "event_retention = \"30d\"",
        "",
        &[("SWITCHYARD_RETENTION_EVERY_MS", "200")],
    );
    let old = "2020-01-01T00:00:00Z";
    for i in 0..12 {
        let r = hub.track(
            "track",
            json!({"userId": "u1", "event": "Old", "messageId": format!("old-{i}"), "timestamp": old}),
        );
        assert_eq!(r.status, 200);
    }
    let r = hub.track(
        "track",
        json!({"userId": "u1", "event": "New", "messageId": "new-1"}),
    );
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.count("SELECT COUNT(*) FROM events WHERE message_id LIKE 'old-%'") > 0 {
        assert!(Instant::now() < deadline, "old events were not purged");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE message_id = 'new-1'"),
        1,
        "recent events stay"
    );
    assert!(hub.profile("user_id:u1").is_some(), "the profile stays");
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    let purged: HashMap<&str, f64> = metrics
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    assert_eq!(
        purged.get("switchyard_events_purged_total"),
        Some(&12.0),
        "{metrics}"
    );
}

#[test]
fn privacy_retention_sqlite() {
    retention(Db::Sqlite);
}

#[test]
fn privacy_retention_postgres() {
    retention(Db::Postgres);
}
