//! Activation end to end: events into the tracking API, audiences over the profiles, syncs
//! through the real `json-post-destination` plugin into a stateful fake destination — diffs,
//! mirror and upsert, merges, faults with retries and dead letters, SIGKILL mid-run, the
//! removal guardrail, events syncs, the admin API, and `switchyard validate`.

use crate::common;
use crate::fakes::json_sink;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hub::{Db, Hub, ADMIN_TOKEN};
use common::ok;
use json_sink::{Faults, JsonSink};
use serde_json::{json, Value};

fn destination(name: &str, sink: &JsonSink, extra_config: &str) -> String {
    format!(
        "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"{}\"{extra_config} }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 1000\n",
        sink.url(),
        hp = sink.host_port()
    )
}

/// The newest run of a sync, from `sync runs`.
fn last_run(hub: &Hub, sync: &str) -> Value {
    let out = ok(&hub.cli(&["sync", "runs", sync, "--limit", "1"]));
    serde_json::from_str(out.lines().next().expect("a run")).unwrap()
}

fn by_email(sink: &JsonSink) -> HashMap<String, Value> {
    sink.records()
        .into_values()
        .map(|f| (f["email"].as_str().unwrap_or_default().to_string(), f))
        .collect()
}

const VIP: &str = r#"
[audiences.vip]
filter = 'traits.plan == "pro"'
"#;

fn audience_syncs(db: Db) {
    let mirror = JsonSink::start();
    let upsert = JsonSink::start();
    let project = format!(
        "{VIP}\n{}\n{}\n\
         [[syncs]]\nname = \"vip-mirror\"\nfrom = {{ audience = \"vip\" }}\nto = \"mirror-dest\"\nmode = \"mirror\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nname = \"traits.name\"\nplan = \"traits.plan\"\nsource = {{ value = \"switchyard\" }}\n\n\
         [[syncs]]\nname = \"vip-upsert\"\nfrom = {{ audience = \"vip\" }}\nto = \"upsert-dest\"\nmode = \"upsert\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nname = \"traits.name\"\n",
        destination("mirror-dest", &mirror, ""),
        destination("upsert-dest", &upsert, ""),
    );
    let hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["json-post-destination"]);

    hub.identify(
        "u1",
        json!({"email": "ada@example.com", "name": "Ada", "plan": "pro"}),
    );
    hub.identify(
        "u2",
        json!({"email": "bob@example.com", "name": "Bob", "plan": "pro"}),
    );
    hub.identify(
        "u3",
        json!({"email": "cy@example.com", "name": "Cy", "plan": "free"}),
    );

    // First run: both members are added, the free user is not.
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    ok(&hub.cli(&["sync", "run", "vip-upsert"]));
    let held = by_email(&mirror);
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(
        held["ada@example.com"],
        json!({"email": "ada@example.com", "name": "Ada", "plan": "pro", "source": "switchyard"})
    );
    assert_eq!(by_email(&upsert).len(), 2);
    let run = last_run(&hub, "vip-mirror");
    assert_eq!(
        (
            run["status"].as_str(),
            run["planned_adds"].as_i64(),
            run["succeeded"].as_i64()
        ),
        (Some("succeeded"), Some(2), Some(2))
    );

    // Unchanged re-run: nothing is sent.
    let requests = mirror.with(|s| s.requests);
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    assert_eq!(
        mirror.with(|s| s.requests),
        requests,
        "an unchanged re-run must send nothing"
    );
    assert_eq!(last_run(&hub, "vip-mirror")["sent"], 0);

    // A trait change re-sends that one record.
    hub.identify("u1", json!({"name": "Ada Lovelace"}));
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    let run = last_run(&hub, "vip-mirror");
    assert_eq!(
        (
            run["planned_changes"].as_i64(),
            run["planned_adds"].as_i64(),
            run["sent"].as_i64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(by_email(&mirror)["ada@example.com"]["name"], "Ada Lovelace");

    // Bob leaves the audience: deleted in mirror mode, kept in upsert mode.
    hub.identify("u2", json!({"plan": "free"}));
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    ok(&hub.cli(&["sync", "run", "vip-upsert"]));
    assert!(
        !by_email(&mirror).contains_key("bob@example.com"),
        "mirror mode removes a profile that left"
    );
    assert!(
        by_email(&upsert).contains_key("bob@example.com"),
        "upsert mode keeps it"
    );
    assert_eq!(last_run(&hub, "vip-mirror")["planned_removals"], 1);

    // Two synced profiles merge: exactly one record remains, in both modes. Dee is known
    // only by a device id until she logs in as u1 on it.
    let r = hub.track("identify", json!({"anonymousId": "device-4", "traits": {"email": "dee@example.com", "name": "Dee", "plan": "pro"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    ok(&hub.cli(&["sync", "run", "vip-upsert"]));
    assert_eq!(mirror.records().len(), 2);
    let dee = hub.profile("anonymous_id:device-4").expect("Dee's profile");
    let r = hub.track(
        "identify",
        json!({"userId": "u1", "anonymousId": "device-4"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let merged = hub.profile("user_id:u1").expect("merged profile");
    let merged_id = merged["id"].as_str().unwrap().to_string();
    assert_eq!(
        hub.profile("email:dee@example.com").unwrap()["id"],
        merged["id"],
        "Dee merged into u1's profile"
    );
    assert_ne!(dee["id"], merged["id"]);
    ok(&hub.cli(&["sync", "run", "vip-mirror"]));
    ok(&hub.cli(&["sync", "run", "vip-upsert"]));
    for (name, sink, total) in [("mirror", &mirror, 1), ("upsert", &upsert, 2)] {
        let records = sink.records();
        let people: Vec<&Value> = records
            .values()
            .filter(|f| {
                matches!(
                    f["email"].as_str(),
                    Some("ada@example.com" | "dee@example.com")
                )
            })
            .collect();
        assert_eq!(
            people.len(),
            1,
            "{name}: one record for the merged person: {records:?}"
        );
        assert!(
            records.contains_key(&merged_id),
            "{name}: the survivor's record is kept"
        );
        assert_eq!(records.len(), total, "{name}: {records:?}");
    }
    for sink in [&mirror, &upsert] {
        sink.with(|s| {
            assert!(s.bad_requests.is_empty(), "{:?}", s.bad_requests);
            assert!(s.resent_after_ack.is_empty(), "{:?}", s.resent_after_ack);
        });
    }
}

#[test]
fn audience_mirror_and_upsert_sqlite() {
    audience_syncs(Db::Sqlite);
}

#[test]
fn audience_mirror_and_upsert_postgres() {
    audience_syncs(Db::Postgres);
}

/// 30% of requests fail (429 with Retry-After, 500, or no answer in time): every record ends
/// acknowledged or dead-lettered with a reason, none lost, none re-sent after its ack.
#[test]
fn faults_end_in_ack_or_dead_letter() {
    let sink = JsonSink::start();
    sink.set_faults(Faults {
        throttle: 0.10,
        error: 0.10,
        hang: 0.10,
        hang_for: Duration::from_millis(1500),
        ..Default::default()
    });
    let project = format!(
        "{}\n[[syncs]]\nname = \"everyone\"\nfrom = \"all\"\nto = \"flaky\"\nmode = \"upsert\"\nbatch_size = 10\nmax_attempts = 3\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nn = \"traits.n\"\n",
        destination("flaky", &sink, ", timeout_ms = 400"),
    );
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &project,
        // Pages of 64 profiles: delivery of one page overlaps the planning of the next.
        &[
            ("SWITCHYARD_RETRY_BASE_MS", "50"),
            ("SWITCHYARD_SYNC_PAGE", "64"),
        ],
    );
    hub.install(&["json-post-destination"]);
    let batch: Vec<Value> = (0..600)
        .map(|i| json!({"type": "identify", "userId": format!("f{i}"), "traits": {"email": format!("f{i}@example.com"), "n": i}}))
        .collect();
    assert_eq!(hub.track("batch", json!({ "batch": batch })).status, 200);

    let out = hub.cli(&["sync", "run", "everyone"]);
    let run = last_run(&hub, "everyone");
    assert!(
        matches!(
            run["status"].as_str(),
            Some("succeeded" | "completed_with_errors")
        ),
        "{run}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held: HashSet<String> = sink.records().into_keys().collect();
    let dlq: Vec<Value> = ok(&hub.cli(&["dlq", "list", "everyone", "--limit", "1000"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dead: HashSet<String> = dlq
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    for d in &dlq {
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .contains("gave up after 3 attempts"),
            "{d}"
        );
    }
    assert_eq!(
        held.len() + dead.len(),
        600,
        "every record is acknowledged or dead-lettered"
    );
    assert!(held.is_disjoint(&dead));
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM sync_records WHERE sync = 'everyone'") as usize,
        held.len()
    );
    let stats = sink.with(|s| (s.throttled, s.failed, s.hung, s.resent_after_ack.clone()));
    assert!(
        stats.0 > 0 && stats.1 > 0 && stats.2 > 0,
        "faults were injected: {stats:?}"
    );
    assert!(
        stats.3.is_empty(),
        "re-sent after acknowledgement: {:?}",
        stats.3
    );
    assert_eq!(run["succeeded"].as_u64().unwrap() as usize, held.len());
    assert_eq!(run["dead_lettered"].as_u64().unwrap() as usize, dead.len());
    assert!(run["retried"].as_u64().unwrap() > 0);

    // Replaying the dead letters once the destination is healthy delivers them.
    sink.set_faults(Faults::default());
    if !dead.is_empty() {
        ok(&hub.cli(&["dlq", "replay", "everyone"]));
        assert_eq!(sink.records().len(), 600);
    }
    sink.with(|s| assert!(s.resent_after_ack.is_empty()));
}

/// SIGKILL the hub in the middle of a scheduled run: the restarted hub resumes it, nothing is
/// skipped, and nothing acknowledged before the kill is sent again.
#[test]
fn sigkill_mid_run_resumes() {
    let sink = JsonSink::start();
    sink.set_faults(Faults {
        delay: Duration::from_millis(60),
        ..Default::default()
    });
    let project = format!(
        "{}\n[[syncs]]\nname = \"all-users\"\nfrom = \"all\"\nto = \"slow\"\nmode = \"mirror\"\nbatch_size = 20\nschedule = \"every 1h\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("slow", &sink, "").replace("rate_per_second = 1000", "rate_per_second = 1000\nconcurrency = 1"),
    );
    let env = [
        ("SWITCHYARD_LEASE_MS", "1500"),
        ("SWITCHYARD_SYNC_PAGE", "128"),
    ];
    let mut hub = Hub::start_project(Db::Sqlite, "", "", &env);
    hub.install(&["json-post-destination"]);
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "identify", "userId": format!("k{i}"), "traits": {"email": format!("k{i}@example.com")}}))
        .collect();
    assert_eq!(hub.track("batch", json!({ "batch": batch })).status, 200);
    // Now turn the sync on (SIGHUP): the scheduler starts it at once.
    let base = std::fs::read_to_string(&hub.config).unwrap();
    hub.reload(&format!("{base}\n{project}"));

    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.with(|s| s.requests) < 15 {
        assert!(Instant::now() < deadline, "the scheduled run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    hub.kill();
    // What the hub had committed as acknowledged when it died.
    let acked_before: HashSet<String> = hub
        .strings("SELECT key FROM sync_records WHERE sync = 'all-users'")
        .into_iter()
        .collect();
    assert!(
        !acked_before.is_empty() && acked_before.len() < 1000,
        "killed mid-run: {} acknowledged",
        acked_before.len()
    );
    let log_before = sink.with(|s| s.log.len());

    hub.spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let run = hub.admin_get("/v1/syncs/all-users/runs").json();
        let runs = run["runs"].as_array().cloned().unwrap_or_default();
        if runs.first().is_some_and(|r| r["status"] == "succeeded") {
            assert!(
                runs.iter().any(|r| r["status"] == "interrupted"),
                "{runs:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run was not resumed: {runs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sink.records().len(), 1000, "nothing skipped");
    let resent: Vec<String> = sink.with(|s| {
        s.log[log_before..]
            .iter()
            .filter(|(_, k, _)| acked_before.contains(k))
            .map(|(_, k, _)| k.clone())
            .collect()
    });
    assert!(
        resent.is_empty(),
        "{} of {} records acknowledged before the kill were sent again",
        resent.len(),
        acked_before.len()
    );
    // Only the batch in flight at the kill (the hub never heard its answer) may arrive twice.
    sink.with(|s| {
        assert!(
            s.resent_after_ack.len() <= 20,
            "{:?}",
            s.resent_after_ack.len()
        )
    });
}

/// The guardrail stops a run that would remove too much, until an operator approves it; a dry
/// run prints the plan and sends nothing.
#[test]
fn guardrail_and_dry_run() {
    let sink = JsonSink::start();
    let project = format!(
        "{VIP}\n{}\n[[syncs]]\nname = \"vip\"\nfrom = {{ audience = \"vip\" }}\nto = \"dest\"\nmode = \"mirror\"\nmax_removals = \"20%\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("dest", &sink, ""),
    );
    let hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["json-post-destination"]);
    for i in 0..10 {
        hub.identify(
            &format!("g{i}"),
            json!({"email": format!("g{i}@example.com"), "plan": "pro"}),
        );
    }
    let preview = ok(&hub.cli(&["audiences", "preview", "vip", "--sample", "3"]));
    assert!(preview.starts_with("vip: 10 profiles"), "{preview}");
    assert_eq!(
        preview
            .lines()
            .filter(|l| l.contains("@example.com"))
            .count(),
        3,
        "{preview}"
    );
    let plan: Value =
        serde_json::from_str(&ok(&hub.cli(&["sync", "run", "vip", "--dry-run"]))).unwrap();
    assert_eq!(plan["planned_adds"], 10);
    assert_eq!(plan["plan"]["sample_adds"].as_array().unwrap().len(), 5);
    assert_eq!(sink.with(|s| s.requests), 0, "a dry run sends nothing");

    ok(&hub.cli(&["sync", "run", "vip"]));
    assert_eq!(sink.records().len(), 10);
    for i in 0..5 {
        hub.identify(&format!("g{i}"), json!({"plan": "free"}));
    }
    let out = hub.cli(&["sync", "run", "vip"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("blocked by the guardrail: this run would remove 5 of the destination's 10 records, more than max_removals allows (2)"), "{text}");
    assert_eq!(sink.records().len(), 10, "nothing removed while blocked");
    assert_eq!(last_run(&hub, "vip")["status"], "blocked");

    ok(&hub.cli(&["sync", "run", "vip", "--approve-removals"]));
    assert_eq!(sink.records().len(), 5);
}

/// Events syncs forward each matching event once, mapped, filtered by a CEL expression.
#[test]
fn events_sync_sends_each_event_once() {
    let sink = JsonSink::start();
    let project = format!(
        "{}\n[[syncs]]\nname = \"orders\"\nfrom = {{ events = \"Order Completed\", filter = 'event.properties.total >= 10' }}\nto = \"dest\"\nmode = \"events\"\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nevent = \"event.name\"\ntotal = \"event.properties.total\"\n",
        destination("dest", &sink, ""),
    );
    let hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["json-post-destination"]);
    hub.identify("e1", json!({"email": "e1@example.com"}));
    for (i, total) in [5, 10, 25].iter().enumerate() {
        let r = hub.track("track", json!({"userId": "e1", "event": "Order Completed", "messageId": format!("m{i}"), "properties": {"total": total}}));
        assert_eq!(r.status, 200);
    }
    hub.track(
        "track",
        json!({"userId": "e1", "event": "Viewed", "properties": {"total": 99}}),
    );
    std::thread::sleep(Duration::from_millis(2200)); // events settle for 2 s before a sync reads them
    ok(&hub.cli(&["sync", "run", "orders"]));
    let events = sink.with(|s| s.events.clone());
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0].1,
        json!({"email": "e1@example.com", "event": "Order Completed", "total": 10})
    );
    ok(&hub.cli(&["sync", "run", "orders"]));
    assert_eq!(sink.with(|s| s.events.len()), 2, "each event once");
}

/// The admin API lists syncs, runs one, shows its history and dead letters.
#[test]
fn admin_api() {
    let sink = JsonSink::start();
    let project = format!(
        "{}\n[[syncs]]\nname = \"everyone\"\nfrom = \"all\"\nto = \"dest\"\nmode = \"upsert\"\n[syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("dest", &sink, ""),
    );
    let hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["json-post-destination"]);
    hub.identify("a1", json!({"email": "a1@example.com"}));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let list = hub.admin_get("/v1/syncs").json();
    assert_eq!(list["syncs"][0]["name"], "everyone");
    assert!(
        hub.request("POST", "/v1/syncs/everyone/run", &[], b"")
            .status
            == 401
    );
    let r = hub.request(
        "POST",
        "/v1/syncs/everyone/run?dry_run=true",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["planned_adds"], 1);
    let r = hub.request(
        "POST",
        "/v1/syncs/everyone/run",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.records().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let runs = hub.admin_get("/v1/syncs/everyone/runs").json();
    assert_eq!(runs["runs"][0]["status"], "succeeded", "{runs}");
    assert_eq!(hub.admin_get("/v1/syncs/nope/runs").status, 404);
    let dl = hub.admin_get("/v1/dead-letters?sync=everyone").json();
    assert_eq!(dl["dead_letters"], json!([]));
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_sync_runs_total{sync=\"everyone\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
}

fn validate(dir: &std::path::Path, plugins: &std::path::Path, text: &str) -> (bool, String) {
    let path = dir.join("project.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("SWITCHYARD_MISSING_SECRET")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Each kind of mistake gets its own message, and all are reported together.
#[test]
fn validate_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(&plugins)
        .args(["plugin", "install"])
        .arg(common::plugin_wasm("json-post-destination"))
        .output()
        .unwrap();
    assert!(out.status.success());

    let (valid, text) = validate(dir.path(), &plugins, "[hub]\nlisten = \"x\"\nlisen = 1\n");
    assert!(!valid);
    assert!(
        text.contains("project.toml:3:1: unknown field `lisen`"),
        "{text}"
    );
    let (valid, text) = validate(dir.path(), &plugins, "[hub\n");
    assert!(!valid && text.contains("project.toml:1:"), "{text}");

    let broken = r#"
[audiences.vip]
filter = 'traits.plan =='

[audiences.typo]
filter = 'trait.plan == "pro"'

[destinations.hook]
plugin = "json-post-destination"
config = { url = 5, colour = "red" }
secrets = { token = "${SWITCHYARD_MISSING_SECRET}", nope = "x" }

[destinations.ghost]
plugin = "not-installed"

[[syncs]]
name = "a"
from = { audience = "missing" }
to = "nowhere"
mode = "mirror"
schedule = "every fortnight"
[syncs.mapping]
email = "trait.email"

[[syncs]]
name = "b"
from = "all"
to = "hook"
mode = "events"
max_removals = "10%"
[syncs.mapping]
email = "identifiers.email"
"#;
    let (valid, text) = validate(dir.path(), &plugins, broken);
    assert!(!valid);
    for expected in [
        "[audiences.vip] filter: `traits.plan ==` is not a valid CEL expression",
        "[audiences.typo] filter: `trait.plan == \"pro\"`: unknown name `trait`",
        "to = \"nowhere\" names no [destinations.nowhere] (defined: ghost, hook)",
        "from.audience = \"missing\" names no [audiences.missing] (defined: typo, vip)",
        "mapping.email: `trait.email` is not a path",
        "schedule: `every fortnight` is neither an interval",
        "mode = \"events\" needs from = { events = \"EVENT NAME\" }",
        "[destinations.hook] config.url: 5 is not of type \"string\"",
        "[destinations.hook] config: Additional properties are not allowed ('colour' was unexpected)",
        "secret `destinations.hook.secrets.token`: environment variable SWITCHYARD_MISSING_SECRET is not set",
        "[destinations.hook] secrets.nope: plugin `json-post-destination` declares no such secret",
        "[destinations.ghost] plugin `not-installed` is not installed",
        "problems",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // `switchyard init` writes the commented example project, which validates as is.
    let init = dir.path().join("new.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("init")
        .arg(&init)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (valid, text) = validate(
        dir.path(),
        &plugins,
        &std::fs::read_to_string(&init).unwrap(),
    );
    assert!(valid, "{text}");
    let again = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("init")
        .arg(&init)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "init never overwrites without --force"
    );
    let good = "[destinations.hook]\nplugin = \"json-post-destination\"\nconfig = { url = \"https://example.com/in\" }\n\
                [[syncs]]\nname = \"a\"\nfrom = \"all\"\nto = \"hook\"\nmode = \"mirror\"\n[syncs.mapping]\nemail = \"identifiers.email\"\n";
    let (valid, text) = validate(dir.path(), &plugins, good);
    assert!(valid, "{text}");
}
