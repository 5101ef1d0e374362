//! The HubSpot and generic paginated JSON (`http-json`) source plugins through the real hub, as
//! tests/all/sources.rs does for Stripe and Shopify: `switchyard source run` reads them from faithful
//! fakes of their APIs (rerouted or granted on loopback) into the profile store, a full read then
//! an incremental one fetching only what changed; a run killed with SIGKILL resumes from its last
//! committed page with nothing lost or applied twice; 429s are waited out as the API says, and a
//! run that keeps getting them fails with the reason after `SWITCHYARD_SOURCE_ATTEMPTS`. And the
//! admin API of source runs: `GET /v1/sources`, `POST /v1/sources/{name}/run` (202, 409 while a
//! run holds the lease), `GET /v1/sources/{name}/runs` and `.../cursors`. SIGHUP reloads a
//! changed source (schedule, plugin config) without a restart.
//!
//! Needs the plugins built first: `tools/build-plugins` (tools/test does it).

use crate::common;

use crate::fakes::http_json as http_json_fake;
use crate::fakes::hubspot as hubspot_fake;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::hub::{Db, HttpResponse, Hub, ADMIN_TOKEN};
use common::ok;
use serde_json::{json, Value};

const HUBSPOT_TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
const HUBAPI: &str = "api.hubapi.com";
const JSON_TOKEN: &str = "json-api-token-7f3a9c";
const POLICY: &str = "TEN_SECONDLY_ROLLING";

/// `switchyard source runs NAME`: the history, newest first.
fn runs(hub: &Hub, source: &str) -> Vec<Value> {
    ok(&hub.cli(&["source", "runs", source]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The stored cursor of a stream, parsed (both plugins keep JSON cursors), and whether the
/// stream was read to its end.
fn cursor(hub: &Hub, source: &str, stream: &str) -> (Value, bool) {
    let text = hub.strings(&format!(
        "SELECT cursor FROM source_cursors WHERE source = '{source}' AND stream = '{stream}'"
    ));
    assert_eq!(text.len(), 1, "one cursor row for {source}.{stream}");
    let done = hub.count(&format!(
        "SELECT done FROM source_cursors WHERE source = '{source}' AND stream = '{stream}'"
    ));
    (serde_json::from_str(&text[0]).unwrap(), done != 0)
}

/// `switchyard source run NAME` as a child process, to be killed mid-run.
fn spawn_run(hub: &Hub, source: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(hub.plugins_dir())
        .args(["source", "run", source, "--config"])
        .arg(&hub.config)
        .env("SWITCHYARD_LOG", "warn")
        .env("SWITCHYARD_LEASE_MS", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until at least `n` profiles are stored (a run going), at most 60 s.
fn wait_for_profiles(hub: &Hub, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.count("SELECT COUNT(*) FROM profiles") < n {
        assert!(
            Instant::now() < deadline,
            "the run never stored {n} profiles"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// HubSpot

fn hubspot_fake(contacts: usize) -> hubspot_fake::Fake {
    let fake = hubspot_fake::start_in_background(HUBSPOT_TOKEN);
    for i in 1..=contacts {
        fake.add_contact(hubspot_fake::contact(
            &format!("{}", 100 + i),
            &format!("lead{i}@example.com"),
            &format!("Lead{i}"),
            "Person",
            // Distinct modification times, one second apart.
            &format!("2024-02-01T10:{:02}:{:02}.000Z", i / 60, i % 60),
        ));
    }
    fake
}

fn hubspot_source(fake: &hubspot_fake::Fake, page_size: u32) -> String {
    let hp = fake.host_port();
    format!(
        "[sources.crm]\nplugin = \"hubspot\"\nconfig = {{ page_size = {page_size}, lookback_minutes = 0 }}\n\
         secrets = {{ access_token = \"{HUBSPOT_TOKEN}\" }}\n\
         reroute = [\"{HUBAPI}=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
         [sources.crm.streams.contacts]\nidentifiers = {{ email = \"email\" }}\n\
         traits = {{ first_name = \"firstname\", last_name = \"lastname\", lifecycle = \"lifecyclestage\" }}\n\n"
    )
}

/// Unix milliseconds of an RFC 3339 time.
fn ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .timestamp_millis()
}

fn hubspot_full_then_incremental(db: Db) {
    let fake = hubspot_fake(7);
    let hub = Hub::start_project(db, "", &hubspot_source(&fake, 2), &[]);
    hub.install(&["hubspot"]);

    // Full read: every contact listed, two a page.
    let out = ok(&hub.cli(&["source", "run", "crm"]));
    assert!(out.contains("crm: succeeded"), "{out}");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 7);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM identifiers WHERE kind = 'email'"),
        7
    );
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        0,
        "contacts carry no events"
    );
    let p = hub
        .profile("email:lead3@example.com")
        .expect("a contact's profile");
    assert_eq!(p["traits"]["first_name"], "Lead3", "{p}");
    assert_eq!(p["traits"]["last_name"], "Person", "{p}");
    assert_eq!(p["traits"]["lifecycle"], "customer", "{p}");
    let seen = fake.requests();
    assert_eq!(seen.len(), 4, "7 contacts at 2 a page: {seen:?}");
    assert!(
        seen.iter().all(|r| r.method == "GET"
            && r.uri.starts_with("/crm/v3/objects/contacts?")
            && r.param("limit") == Some("2")
            && r.status == 200),
        "{seen:?}"
    );
    assert!(seen[0].param("after").is_none() && seen[3].param("after").is_some());
    let history = runs(&hub, "crm");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[0]["records"], 7, "{history:?}");
    assert_eq!(history[0]["pages"], 4, "{history:?}");
    // The stream is caught up, its watermark the newest modification read.
    let (c, done) = cursor(&hub, "crm", "contacts");
    assert!(done);
    let watermark = ms("2024-02-01T10:00:07.000Z");
    assert_eq!(c, json!({ "since": watermark }));

    // Incremental: one contact edited in HubSpot, one added; only they are fetched, by search.
    fake.clear_requests();
    fake.update_contact("103", "firstname", "Renamed", "2024-03-01T08:00:00.000Z");
    fake.add_contact(hubspot_fake::contact(
        "108",
        "lead8@example.com",
        "Lead8",
        "Person",
        "2024-02-20T00:00:00.000Z",
    ));
    ok(&hub.cli(&["source", "run", "crm"]));
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/crm/v3/objects/contacts/search")
    );
    assert_eq!(
        seen[0].body["filterGroups"][0]["filters"][0],
        json!({"propertyName": "lastmodifieddate", "operator": "GT", "value": watermark.to_string()})
    );
    let history = runs(&hub, "crm");
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(
        history[0]["records"], 2,
        "only the changed contacts: {history:?}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 8);
    let p = hub.profile("email:lead3@example.com").unwrap();
    assert_eq!(p["traits"]["first_name"], "Renamed", "{p}");
    assert!(hub.profile("email:lead8@example.com").is_some());
    let (c, _) = cursor(&hub, "crm", "contacts");
    assert_eq!(c, json!({ "since": ms("2024-03-01T08:00:00.000Z") }));

    // Nothing changed since: one search, nothing applied.
    fake.clear_requests();
    ok(&hub.cli(&["source", "run", "crm"]));
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(runs(&hub, "crm")[0]["records"], 0);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 8);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 8);
}

#[test]
fn hubspot_full_then_incremental_sqlite() {
    hubspot_full_then_incremental(Db::Sqlite);
}

#[test]
fn hubspot_full_then_incremental_postgres() {
    hubspot_full_then_incremental(Db::Postgres);
}

/// `switchyard source run` killed with SIGKILL while it waits out HubSpot's 429s, then run
/// again: it resumes after the last committed page (HubSpot's `after` of it), and every contact
/// is fetched and stored exactly once.
#[test]
fn hubspot_killed_run_resumes_from_its_last_committed_page() {
    let fake = hubspot_fake(40);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &hubspot_source(&fake, 1),
        &[("SWITCHYARD_LEASE_MS", "1000")],
    );
    hub.install(&["hubspot"]);
    let mut child = spawn_run(&hub, "crm");
    wait_for_profiles(&hub, 3);
    fake.throttle(1000, POLICY, Some("1"));
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let before = hub.count("SELECT COUNT(*) FROM profiles");
    assert!((3..40).contains(&before), "killed mid-stream: {before}");
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM source_runs WHERE status = 'running'"),
        1
    );
    // The committed cursor points after the last stored contact (one contact a page).
    let (c, done) = cursor(&hub, "crm", "contacts");
    assert!(!done);
    let after = c["after"].as_str().expect("a mid-list cursor").to_string();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&after)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, format!("id:{}", 100 + before), "{c}");

    fake.throttle(0, POLICY, None);
    fake.clear_requests();
    std::thread::sleep(Duration::from_millis(1100)); // the dead run's lease expires
    let out = ok(&hub.cli(&["source", "run", "crm"]));
    assert!(out.contains("succeeded"), "{out}");
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("after"),
        Some(after.as_str()),
        "resumed after the last committed page: {seen:?}"
    );
    assert_eq!(
        seen.len() as i64,
        40 - before,
        "each remaining contact fetched once, none before the cursor: {seen:?}"
    );
    assert!(seen.iter().all(|r| r.method == "GET" && r.status == 200));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 40);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 40);
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM traits WHERE name = 'first_name'"),
        40
    );
    let history = runs(&hub, "crm");
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[1]["status"], "interrupted");
    assert_eq!(
        history[0]["records"].as_i64().unwrap(),
        40 - before,
        "the resumed run applied only what was not committed: {history:?}"
    );
    let (_, done) = cursor(&hub, "crm", "contacts");
    assert!(done);
}

/// HubSpot's 429s: `Retry-After` waited out, else the `X-HubSpot-RateLimit-Interval-Milliseconds`
/// window; a call that leaves `X-HubSpot-RateLimit-Remaining` at 0 pauses for the window; a run
/// that keeps getting 429s fails with HubSpot's reason after the configured attempts.
#[test]
fn hubspot_429s_are_waited_out_then_a_run_fails_with_the_reason() {
    let fake = hubspot_fake(5);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &hubspot_source(&fake, 100),
        &[("SWITCHYARD_SOURCE_ATTEMPTS", "3")],
    );
    hub.install(&["hubspot"]);

    fake.throttle(2, POLICY, Some("1"));
    let started = Instant::now();
    let out = ok(&hub.cli(&["source", "run", "crm"]));
    assert!(
        out.contains("succeeded") && out.contains("2 retries"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice: {:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);

    // No Retry-After: the interval HubSpot's rate-limit headers give (well above the hub's own
    // first backoff of 0.5-0.75 s).
    fake.clear_requests();
    fake.state.lock().unwrap().interval_ms = 1500;
    fake.throttle(1, POLICY, None);
    let started = Instant::now();
    let out = ok(&hub.cli(&["source", "run", "crm", "--full-refresh"]));
    assert!(
        out.contains("succeeded") && out.contains("1 retries"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "waited the rate-limit interval: {:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);

    // The window used up by a successful call: the plugin pauses before the run goes on.
    {
        let mut s = fake.state.lock().unwrap();
        s.remaining_override = Some(0);
        s.interval_ms = 1200;
    }
    let started = Instant::now();
    let out = ok(&hub.cli(&["source", "run", "crm", "--full-refresh"]));
    assert!(
        out.contains("succeeded") && out.contains("0 retries"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "paused for the used-up window: {:?}",
        started.elapsed()
    );
    fake.state.lock().unwrap().remaining_override = None;

    // 429s all along: three attempts, then the run fails with HubSpot's reason.
    fake.clear_requests();
    fake.throttle(10, POLICY, Some("1"));
    let out = hub.cli(&["source", "run", "crm", "--full-refresh"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("crm: failed"), "{stdout}");
    assert!(
        stdout.contains("after 3 attempts") && stdout.contains("429"),
        "{stdout}"
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 429], "exactly the configured attempts");
    let history = runs(&hub, "crm");
    assert_eq!(history[0]["status"], "failed");
    assert_eq!(history[0]["retries"], 2);
    let error = history[0]["error"].as_str().unwrap();
    assert!(
        error.contains("RATE_LIMIT")
            && error.contains("You have reached your ten_secondly_rolling limit"),
        "{error}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
}

// ---------------------------------------------------------------------------------------------
// Generic paginated JSON (http-json)

pub(crate) fn json_fake(items: usize) -> http_json_fake::Fake {
    let fake = http_json_fake::start_in_background(JSON_TOKEN);
    for i in 1..=items {
        fake.add_item(http_json_fake::item(
            &format!("it_{i:02}"),
            &format!("member{i}@example.com"),
            &format!("2024-04-01T12:{:02}:{:02}Z", i / 60, i % 60),
        ));
    }
    fake
}

/// The cursor-paginated style (`/v1/items`), incremental on `updated_since`; the plugin names no
/// host, so the operator grants the fake's.
pub(crate) fn json_source(fake: &http_json_fake::Fake, page_size: u32) -> String {
    let hp = fake.host_port();
    format!(
        "[sources.members]\nplugin = \"http-json\"\nsecrets = {{ token = \"{JSON_TOKEN}\" }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
         [sources.members.config]\nurl = \"http://{hp}/v1/items\"\nrecords_path = \"data.items\"\n\
         id_field = \"id\"\nupdated_at_field = \"updated_at\"\nincremental_param = \"updated_since\"\n\
         page_size = {page_size}\npage_size_param = \"limit\"\n\
         pagination = {{ type = \"cursor\", cursor_path = \"data.next_cursor\", cursor_param = \"cursor\" }}\n\n\
         [sources.members.streams.records]\nidentifiers = {{ email = \"email\" }}\n\
         traits = {{ name = \"name\", plan = \"plan\" }}\n\n"
    )
}

#[test]
fn http_json_full_then_incremental() {
    let fake = json_fake(5);
    let hub = Hub::start_project(Db::Sqlite, "", &json_source(&fake, 2), &[]);
    hub.install(&["http-json"]);

    let out = ok(&hub.cli(&["source", "run", "members"]));
    assert!(out.contains("members: succeeded"), "{out}");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM identifiers WHERE kind = 'email'"),
        5
    );
    let p = hub.profile("email:member2@example.com").expect("a profile");
    assert_eq!(p["traits"]["name"], "Item it_02", "{p}");
    assert_eq!(p["traits"]["plan"], "basic", "{p}");
    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "5 items at 2 a page: {seen:?}");
    assert!(seen
        .iter()
        .all(|r| r.param("limit") == Some("2") && r.param("updated_since").is_none()));
    assert!(seen[0].param("cursor").is_none() && seen[2].param("cursor").is_some());
    let history = runs(&hub, "members");
    assert_eq!(history[0]["records"], 5, "{history:?}");
    assert_eq!(history[0]["pages"], 3, "{history:?}");
    let (c, done) = cursor(&hub, "members", "records");
    assert!(done);
    assert_eq!(c["since"], "2024-04-01T12:00:05Z", "{c}");

    // Incremental: from the watermark; the item at it is not applied again.
    fake.clear_requests();
    fake.update_item("it_02", "plan", json!("pro"), "2024-05-01T00:00:00Z");
    fake.add_item(http_json_fake::item(
        "it_06",
        "member6@example.com",
        "2024-04-20T00:00:00Z",
    ));
    ok(&hub.cli(&["source", "run", "members"]));
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("updated_since"),
        Some("2024-04-01T12:00:05Z"),
        "{seen:?}"
    );
    let history = runs(&hub, "members");
    assert_eq!(history[0]["records"], 2, "only what changed: {history:?}");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 6);
    let p = hub.profile("email:member2@example.com").unwrap();
    assert_eq!(p["traits"]["plan"], "pro", "{p}");

    fake.clear_requests();
    ok(&hub.cli(&["source", "run", "members"]));
    assert_eq!(
        fake.requests()[0].param("updated_since"),
        Some("2024-05-01T00:00:00Z")
    );
    assert_eq!(runs(&hub, "members")[0]["records"], 0);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 6);
}

#[test]
fn http_json_killed_run_resumes_from_its_last_committed_page() {
    let fake = json_fake(40);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &json_source(&fake, 1),
        &[("SWITCHYARD_LEASE_MS", "1000")],
    );
    hub.install(&["http-json"]);
    let mut child = spawn_run(&hub, "members");
    wait_for_profiles(&hub, 3);
    fake.throttle(1000, "1");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let before = hub.count("SELECT COUNT(*) FROM profiles");
    assert!((3..40).contains(&before), "killed mid-stream: {before}");
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM source_runs WHERE status = 'running'"),
        1
    );
    let (c, done) = cursor(&hub, "members", "records");
    assert!(!done);
    let next = c["next"].as_str().expect("a mid-stream cursor").to_string();

    fake.throttle(0, "1");
    fake.clear_requests();
    std::thread::sleep(Duration::from_millis(1100));
    let out = ok(&hub.cli(&["source", "run", "members"]));
    assert!(out.contains("succeeded"), "{out}");
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("cursor"),
        Some(next.as_str()),
        "resumed from the committed page's cursor: {seen:?}"
    );
    assert_eq!(
        seen.len() as i64,
        40 - before,
        "each remaining item fetched once: {seen:?}"
    );
    assert!(seen
        .iter()
        .all(|r| r.status == 200 && r.param("updated_since").is_none()));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 40);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 40);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM traits WHERE name = 'plan'"),
        40
    );
    let history = runs(&hub, "members");
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[1]["status"], "interrupted");
    assert_eq!(
        history[0]["records"].as_i64().unwrap(),
        40 - before,
        "{history:?}"
    );
    let (c, done) = cursor(&hub, "members", "records");
    assert!(done);
    assert_eq!(c["since"], "2024-04-01T12:00:40Z", "{c}");
}

#[test]
fn http_json_429s_are_waited_out_then_a_run_fails_with_the_reason() {
    let fake = json_fake(3);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &json_source(&fake, 100),
        &[("SWITCHYARD_SOURCE_ATTEMPTS", "3")],
    );
    hub.install(&["http-json"]);
    fake.throttle(2, "1");
    let started = Instant::now();
    let out = ok(&hub.cli(&["source", "run", "members"]));
    assert!(
        out.contains("succeeded") && out.contains("2 retries"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice: {:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 3);

    fake.clear_requests();
    fake.throttle(10, "1");
    let out = hub.cli(&["source", "run", "members", "--full-refresh"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("members: failed"), "{stdout}");
    assert!(
        stdout.contains("after 3 attempts") && stdout.contains("429"),
        "{stdout}"
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 429]);
    let history = runs(&hub, "members");
    assert_eq!(history[0]["status"], "failed");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("too many requests"),
        "{history:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The admin API of source runs

fn admin(hub: &Hub, method: &str, path: &str) -> HttpResponse {
    hub.request(
        method,
        path,
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    )
}

/// Polls `GET /v1/sources/{source}/runs` until run `id` has finished; its report.
fn wait_for_run(hub: &Hub, source: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = admin(hub, "GET", &format!("/v1/sources/{source}/runs"));
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let run = body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["id"] == id)
            .cloned();
        if let Some(run) = run.filter(|run| run["status"] != "running") {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn source_run_api(db: Db) {
    let fake = hubspot_fake(5);
    let json = json_fake(4);
    let project = format!("{}{}", hubspot_source(&fake, 2), json_source(&json, 100));
    let hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["hubspot", "http-json"]);

    // The admin token is required.
    let r = hub.request("GET", "/v1/sources", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = hub.request(
        "GET",
        "/v1/sources",
        &[("authorization", "Bearer not-the-token")],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = hub.request("POST", "/v1/sources/crm/run", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    for path in ["/v1/sources/crm/runs", "/v1/sources/crm/cursors"] {
        assert_eq!(hub.request("GET", path, &[], b"").status, 401, "{path}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM source_runs"),
        0,
        "an unauthorised request started nothing"
    );
    assert!(fake.requests().is_empty());

    // Every plugin source, never run yet; `web` (write keys only) is not one.
    let r = admin(&hub, "GET", "/v1/sources");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let sources = list["sources"].as_array().unwrap();
    let names: Vec<&str> = sources.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["crm", "members"], "{list}");
    assert_eq!(sources[0]["plugin"], "hubspot");
    assert_eq!(sources[0]["streams"], json!(["contacts"]));
    assert_eq!(sources[0]["schedule"], Value::Null);
    assert_eq!(sources[0]["last_run"], Value::Null);
    assert_eq!(sources[1]["plugin"], "http-json");
    assert_eq!(sources[1]["streams"], json!(["records"]));

    // Unknown sources, and a source without a plugin, are 404s.
    for (method, path) in [
        ("POST", "/v1/sources/nope/run"),
        ("POST", "/v1/sources/web/run"),
        ("GET", "/v1/sources/nope/runs"),
        ("GET", "/v1/sources/nope/cursors"),
    ] {
        let r = admin(&hub, method, path);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("crm, members"));
    }

    // A run through the API: 202 with its id, then polled until it succeeded.
    let r = admin(&hub, "POST", "/v1/sources/crm/run");
    assert_eq!(r.status, 202, "{}", r.text());
    let started = r.json();
    let id = started["run_id"]
        .as_str()
        .expect("the run's id")
        .to_string();
    assert!(
        ["running", "succeeded"].contains(&started["status"].as_str().unwrap()),
        "{started}"
    );
    let run = wait_for_run(&hub, "crm", &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["records"], 5, "{run}");
    assert_eq!(run["pages"], 3, "{run}");
    assert_eq!(run["full_refresh"], false);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
    assert_eq!(fake.requests().len(), 3);
    let list = admin(&hub, "GET", "/v1/sources").json();
    assert_eq!(list["sources"][0]["last_run"]["id"], id.as_str(), "{list}");
    assert_eq!(list["sources"][0]["last_run"]["status"], "succeeded");
    assert_eq!(list["sources"][1]["last_run"], Value::Null);
    let r = admin(&hub, "GET", "/v1/sources/crm/cursors");
    assert_eq!(r.status, 200, "{}", r.text());
    let cursors = r.json();
    assert_eq!(cursors["cursors"][0]["stream"], "contacts", "{cursors}");
    assert_eq!(cursors["cursors"][0]["done"], true, "{cursors}");
    let c: Value = serde_json::from_str(cursors["cursors"][0]["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(c["since"], ms("2024-02-01T10:00:05.000Z"), "{cursors}");

    // While a run holds the lease (waiting out a 429), another is refused with a 409 naming it.
    fake.clear_requests();
    fake.throttle(1, POLICY, Some("2"));
    let r = admin(&hub, "POST", "/v1/sources/crm/run?full_refresh=true");
    assert_eq!(r.status, 202, "{}", r.text());
    let going = r.json();
    assert_eq!(going["status"], "running", "{going}");
    assert_eq!(going["full_refresh"], true);
    let second = going["run_id"].as_str().unwrap().to_string();
    assert_ne!(second, id);
    let r = admin(&hub, "POST", "/v1/sources/crm/run");
    assert_eq!(r.status, 409, "{}", r.text());
    let refused = r.json();
    assert_eq!(refused["run_id"], second.as_str(), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{refused}"
    );
    let run = wait_for_run(&hub, "crm", &second);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["full_refresh"], true);
    assert_eq!(run["retries"], 1, "{run}");
    assert_eq!(run["records"], 5);
    let history = admin(&hub, "GET", "/v1/sources/crm/runs").json();
    assert_eq!(
        history["runs"].as_array().unwrap().len(),
        2,
        "the refused request left no run: {history}"
    );
    assert_eq!(history["runs"][0]["id"], second.as_str());
    let one = admin(&hub, "GET", "/v1/sources/crm/runs?limit=1").json();
    assert_eq!(one["runs"].as_array().unwrap().len(), 1);
    // A full refresh: the list again (one 429, then 3 pages), nothing stored twice.
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 200, 200]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);

    // The other source, through the same API.
    let r = admin(&hub, "POST", "/v1/sources/members/run");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_string();
    let run = wait_for_run(&hub, "members", &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["records"], 4);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 9);
}

#[test]
fn source_runs_through_the_admin_api_sqlite() {
    source_run_api(Db::Sqlite);
}

#[test]
fn source_runs_through_the_admin_api_postgres() {
    source_run_api(Db::Postgres);
}

// ---------------------------------------------------------------------------------------------
// Loading plugins: a cold precompile cache under parallel loads (issue 15, point 1)

/// With no cached native code (the first start after an install or an upgrade) several sources
/// of one plugin started together each loaded it at once; each compiled it and rewrote the
/// cache file in place while another had it memory-mapped, and the serving hub died of SIGBUS.
/// Each round restarts the hub with the artefact deleted and starts `SOURCES` runs together
/// (`SWITCHYARD_TEST_COLD_ROUNDS` rounds, 2 by default; the report on issue 15 ran 13, over
/// 100 loads).
#[test]
fn parallel_source_runs_on_a_cold_plugin_cache_do_not_crash_the_hub() {
    const SOURCES: usize = 8;
    let rounds: usize = std::env::var("SWITCHYARD_TEST_COLD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let fake = json_fake(3);
    let one = json_source(&fake, 100);
    let project: String = (0..SOURCES)
        .map(|i| one.replace("sources.members", &format!("sources.members{i}")))
        .collect();
    let mut hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["http-json"]);
    let plugin_dir = hub.plugins_dir().join("http-json");
    let artefacts = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for version in std::fs::read_dir(dir).unwrap() {
            for f in std::fs::read_dir(version.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "cwasm") {
                    out.push(p);
                }
            }
        }
        out
    };
    for round in 0..rounds {
        hub.kill();
        for a in artefacts(&plugin_dir) {
            std::fs::remove_file(a).unwrap();
        }
        hub.spawn();
        let started: Vec<(String, String)> = std::thread::scope(|s| {
            let hub = &hub;
            let handles: Vec<_> = (0..SOURCES)
                .map(|i| {
                    s.spawn(move || {
                        let source = format!("members{i}");
                        let r = admin(hub, "POST", &format!("/v1/sources/{source}/run"));
                        assert_eq!(r.status, 202, "round {round}: {}", r.text());
                        let id = r.json()["run_id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("round {round}: {}", r.text()))
                            .to_string();
                        (source, id)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (source, id) in started {
            let deadline = Instant::now() + Duration::from_secs(120);
            let run = loop {
                let r = hub
                    .try_request(
                        "GET",
                        &format!("/v1/sources/{source}/runs"),
                        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                        b"",
                    )
                    .unwrap_or_else(|e| {
                        panic!("round {round}: the hub died while loading the plugin: {e}")
                    });
                let run = r.json()["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|run| run["id"] == id.as_str())
                    .cloned();
                if let Some(run) = run.filter(|run| run["status"] != "running") {
                    break run;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {source} never finished"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(run["status"], "succeeded", "round {round}, {source}: {run}");
        }
        assert_eq!(
            artefacts(&plugin_dir).len(),
            1,
            "round {round}: one artefact"
        );
        assert_eq!(admin(&hub, "GET", "/healthz").status, 200);
        // A run is recorded as finished a moment before it lets go of its lease; the next
        // round's restart must not find a lease of this one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.count("SELECT COUNT(*) FROM source_leases") > 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: leases never released"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 3);
}

// ---------------------------------------------------------------------------------------------
// Source run caps (issue 15, point 7)

/// A source whose API always has a next page ran forever. A run now stops at
/// `max_pages_per_run` as `capped`, naming the cap, with every page it read committed and no page
/// read past the cap; the next run resumes from the stored cursor.
#[test]
fn an_endless_source_stops_at_its_page_cap_and_the_next_run_resumes() {
    let fake = json_fake(0);
    fake.endless();
    let project = json_source(&fake, 2).replace(
        "[sources.members.config]",
        "max_pages_per_run = 5\n\n[sources.members.config]",
    );
    let hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["http-json"]);

    let out = hub.cli(&["source", "run", "members"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a capped run is not a success: {stdout}"
    );
    assert!(stdout.contains("members: capped"), "{stdout}");
    assert!(
        stderr.contains(
            "stopped at the cap of 5 pages per run ([sources.members] max_pages_per_run)"
        ),
        "{stderr}"
    );
    assert_eq!(fake.requests().len(), 5, "no page read past the cap");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 10);
    let history = runs(&hub, "members");
    assert_eq!(history[0]["status"], "capped", "{history:?}");
    assert_eq!(history[0]["pages"], 5, "{history:?}");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("the next run resumes from the stored cursor"),
        "{history:?}"
    );
    let (c, done) = cursor(&hub, "members", "records");
    assert!(!done);
    let next = c["next"].as_str().expect("a mid-stream cursor").to_string();

    fake.clear_requests();
    let out = hub.cli(&["source", "run", "members"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("members: capped"));
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("cursor"),
        Some(next.as_str()),
        "resumed: {seen:?}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 20);
}

/// The same for wall time: with `max_run_time`, a slow endless source stops at the deadline,
/// even in the middle of a read, as `capped` with what it committed kept.
#[test]
fn an_endless_source_stops_at_its_time_cap() {
    let fake = json_fake(0);
    fake.endless();
    fake.delay(400);
    let project = json_source(&fake, 1).replace(
        "[sources.members.config]",
        "max_run_time = \"2s\"\n\n[sources.members.config]",
    );
    let hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["http-json"]);

    let started = Instant::now();
    let out = hub.cli(&["source", "run", "members"]);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("stopped at the cap of 2s per run ([sources.members] max_run_time)"),
        "{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "stopped at the cap: {elapsed:?}"
    );
    let history = runs(&hub, "members");
    assert_eq!(history[0]["status"], "capped", "{history:?}");
    let pages = history[0]["pages"].as_i64().unwrap();
    assert!(
        pages >= 1,
        "pages read before the deadline are kept: {history:?}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), pages);
    let (_, done) = cursor(&hub, "members", "records");
    assert!(!done);
}

/// SIGHUP reaches the source engine as it does the sync engine: a source given a schedule and a
/// new page size in the file is run by the scheduler with the new plugin config, without a
/// restart (before, only syncs were reloaded and a source's change waited for one).
#[test]
fn sighup_reloads_a_changed_source() {
    let fake = json_fake(5);
    let hub = Hub::start_project(Db::Sqlite, "", &json_source(&fake, 2), &[]);
    hub.install(&["http-json"]);
    let r = admin(&hub, "GET", "/v1/sources");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sources"][0]["schedule"], Value::Null);

    // Unscheduled: the scheduler leaves it alone.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hub.count("SELECT COUNT(*) FROM source_runs"), 0);
    assert!(fake.requests().is_empty());

    let text = std::fs::read_to_string(&hub.config).unwrap();
    assert!(text.contains("page_size = 2\n"), "{text}");
    let changed = text
        .replace(
            "plugin = \"http-json\"\n",
            "plugin = \"http-json\"\nschedule = \"every 1h\"\n",
        )
        .replace("page_size = 2\n", "page_size = 5\n");
    hub.reload(&changed);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = admin(&hub, "GET", "/v1/sources");
        let body = r.json();
        let source = &body["sources"][0];
        if source["schedule"] == "every 1h" && source["last_run"]["status"] == "succeeded" {
            assert_eq!(source["last_run"]["records"], 5, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded source was not scheduled: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "5 items at the new page size of 5: {seen:?}");
    assert_eq!(seen[0].param("limit"), Some("5"));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
}
