//! The tracking API's contract end to end: bad input gets a 400 naming the field or limit and
//! stores nothing; unknown keys get 401; a full queue gets 429 with Retry-After and never
//! accept-and-drop; gzip bodies work; and every message acknowledged with 200 survives SIGKILL.

use crate::common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::hub::{basic, request, Db, Hub, WRITE_KEY};
use serde_json::json;

fn post(hub: &Hub, path: &str, body: &[u8], extra: &[(&str, &str)]) -> common::hub::HttpResponse {
    let auth = basic(WRITE_KEY);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    hub.request("POST", path, &headers, body)
}

fn assert_400(r: &common::hub::HttpResponse, field: Option<&str>, words: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.json();
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains(words), "{body}");
    if let Some(f) = field {
        assert_eq!(body["field"], f, "{body}");
    }
}

#[test]
fn bad_input_is_refused_and_nothing_of_it_is_stored() {
    let hub = Hub::start(Db::Sqlite);
    assert_400(&post(&hub, "/v1/track", b"{not json", &[]), None, "JSON");
    assert_400(
        &post(
            &hub,
            "/v1/track",
            json!({"event": "X"}).to_string().as_bytes(),
            &[],
        ),
        Some("userId"),
        "anonymousId",
    );
    assert_400(
        &post(
            &hub,
            "/v1/track",
            json!({"userId": "u"}).to_string().as_bytes(),
            &[],
        ),
        Some("event"),
        "event",
    );
    assert_400(
        &post(
            &hub,
            "/v1/identify",
            json!({"userId": "u", "traits": "nope"})
                .to_string()
                .as_bytes(),
            &[],
        ),
        Some("traits"),
        "object",
    );
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "Fine"},
        {"type": "teleport", "userId": "u"}
    ]});
    assert_400(
        &post(&hub, "/v1/batch", batch.to_string().as_bytes(), &[]),
        Some("batch[1].type"),
        "type",
    );
    let huge_message =
        json!({"userId": "u", "event": "Big", "properties": {"blob": "x".repeat(40_000)}});
    let r = post(&hub, "/v1/track", huge_message.to_string().as_bytes(), &[]);
    assert_400(&r, None, "32");
    let many: Vec<_> = (0..30).map(|i| json!({"type": "track", "userId": "u", "event": "E", "properties": {"pad": "y".repeat(20_000), "i": i}})).collect();
    let r = post(
        &hub,
        "/v1/batch",
        json!({"batch": many}).to_string().as_bytes(),
        &[],
    );
    assert_400(&r, None, "500");
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        0,
        "a refused request stored something"
    );

    // Keys: unknown or missing is 401; the body's writeKey works as Segment documents.
    let body = json!({"userId": "u", "event": "Keyed"}).to_string();
    let r = hub.request(
        "POST",
        "/v1/track",
        &[("authorization", &basic("wk_nope"))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        hub.request("POST", "/v1/track", &[], body.as_bytes())
            .status,
        401
    );
    let r = hub.request(
        "POST",
        "/v1/track",
        &[],
        json!({"userId": "u", "event": "Keyed", "writeKey": "wk_test_server"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE source = 'server'"),
        1
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 1);

    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_events_rejected_total{reason=\"invalid\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_events_rejected_total{reason=\"bad_body\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_events_rejected_total{reason=\"unknown_write_key\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_events_accepted_total 1"),
        "{metrics}"
    );
}

#[test]
fn gzip_bodies_and_clock_skew() {
    let hub = Hub::start(Db::Sqlite);
    let body = json!({"batch": [{"type": "track", "userId": "u-gz", "event": "Zipped",
        "timestamp": "2026-03-01T12:00:00Z"}], "sentAt": "2026-03-01T12:00:05Z"});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let r = post(
        &hub,
        "/v1/batch",
        &gz.finish().unwrap(),
        &[("content-encoding", "gzip")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let events = hub.admin_get("/v1/profiles/user_id:u-gz/events").json();
    let e = &events["data"][0];
    assert_eq!(e["event"], "Zipped");
    assert_eq!(e["originalTimestamp"], "2026-03-01T12:00:00.000Z");
    // The client's clock was off: the stored timestamp is receivedAt minus the 5 s in flight.
    let received = chrono::DateTime::parse_from_rfc3339(e["receivedAt"].as_str().unwrap()).unwrap();
    let corrected = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!((received - corrected).num_milliseconds(), 5000);

    // A gzip bomb stops at the limit.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 5 << 20]).unwrap();
    let r = post(
        &hub,
        "/v1/batch",
        &bomb.finish().unwrap(),
        &[("content-encoding", "gzip")],
    );
    assert_400(&r, None, "limit");
}

#[test]
fn a_full_queue_answers_429_and_drops_nothing_it_accepted() {
    let hub = Hub::start_with(Db::Sqlite, "ingest_queue = 100");
    let addr = hub.addr.clone();
    let threads: Vec<_> = (0..40)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let batch: Vec<_> = (0..100).map(|i| json!({"type": "track", "userId": format!("u-{t}-{i}"), "event": "Load", "messageId": format!("m-{t}-{i}")})).collect();
                let r = request(&addr, "POST", "/v1/batch", &[("authorization", &basic(WRITE_KEY))], json!({"batch": batch}).to_string().as_bytes()).unwrap();
                (r.status, r.header("retry-after").map(str::to_string))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted = results.iter().filter(|(s, _)| *s == 200).count() as i64;
    let throttled: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        !throttled.is_empty(),
        "40 concurrent batches against a queue of 100 must see back-pressure"
    );
    assert!(throttled.iter().all(|(_, ra)| ra.as_deref() == Some("1")));
    assert_eq!(accepted + throttled.len() as i64, 40);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        accepted * 100,
        "exactly the acknowledged messages are stored"
    );
}

#[test]
fn every_acknowledged_message_survives_sigkill() {
    let mut hub = Hub::start(Db::Sqlite);
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (addr, acked, stop) = (hub.addr.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 2000 {
                    let ids: Vec<String> = (0..20).map(|i| format!("k-{t}-{n}-{i}")).collect();
                    let batch: Vec<_> = ids.iter().map(|id| json!({"type": "track", "anonymousId": format!("a-{t}"), "event": "Tick", "messageId": id})).collect();
                    match request(&addr, "POST", "/v1/batch", &[("authorization", &basic(WRITE_KEY))], json!({"batch": batch}).to_string().as_bytes()) {
                        Ok(r) if r.status == 200 => acked.lock().unwrap().extend(ids),
                        _ => {}
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    hub.kill();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the test must have sent something before the kill ({} acked)",
        acked.len()
    );
    hub.spawn();
    let stored = hub.count("SELECT COUNT(*) FROM events");
    assert!(
        stored >= acked.len() as i64,
        "{stored} stored < {} acknowledged",
        acked.len()
    );
    // Spot-check identities, first and last acknowledged.
    for id in [&acked[0], &acked[acked.len() - 1]] {
        assert_eq!(
            hub.count(&format!(
                "SELECT COUNT(*) FROM events WHERE message_id = '{id}'"
            )),
            1,
            "{id} was acknowledged but is missing"
        );
    }
    let placeholders: Vec<String> = acked.iter().map(|id| format!("'{id}'")).collect();
    let present = hub.count(&format!(
        "SELECT COUNT(*) FROM events WHERE message_id IN ({})",
        placeholders.join(",")
    ));
    assert_eq!(
        present,
        acked.len() as i64,
        "every acknowledged message is stored"
    );
}

/// A hub whose `web` source takes pages of `http://shop.example`, with a second source `other`
/// for `http://other.example`, behind a trusted proxy at 127.0.0.1.
fn browser_hub() -> Hub {
    Hub::start_full(
        Db::Sqlite,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "allowed_origins = [\"http://shop.example\"]",
        "[sources.other]\nwrite_keys = [\"wk_other\"]\nallowed_origins = [\"http://other.example\"]\n",
        &[],
    )
}

/// POSTs as a browser page on `origin` does: `text/plain`, the write key as Basic auth.
fn from_page(hub: &Hub, origin: &str, path: &str, body: &str) -> common::hub::HttpResponse {
    let auth = basic(WRITE_KEY);
    hub.request(
        "POST",
        path,
        &[
            ("origin", origin),
            ("authorization", &auth),
            ("content-type", "text/plain"),
        ],
        body.as_bytes(),
    )
}

#[test]
fn short_paths_and_text_plain_bodies_from_an_allowed_origin() {
    let hub = browser_hub();
    let shop = "http://shop.example";
    let calls = [
        (
            "/v1/i",
            json!({"userId": "sp-1", "traits": {"plan": "pro"}}),
        ),
        ("/v1/t", json!({"userId": "sp-1", "event": "Clicked"})),
        ("/v1/p", json!({"userId": "sp-1", "name": "Home"})),
        ("/v1/s", json!({"userId": "sp-1", "name": "Settings"})),
        ("/v1/g", json!({"userId": "sp-1", "groupId": "acme"})),
        ("/v1/a", json!({"userId": "sp-1", "previousId": "anon-sp"})),
        (
            "/v1/b",
            json!({"batch": [{"type": "track", "userId": "sp-1", "event": "Batched"}]}),
        ),
    ];
    for (path, body) in calls {
        let r = from_page(&hub, shop, path, &body.to_string());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(shop),
            "{path}"
        );
        assert!(r.header("access-control-allow-credentials").is_none());
        assert!(r
            .header("vary")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("origin"));
    }
    let events = hub.admin_get("/v1/profiles/user_id:sp-1/events").json();
    let kinds: Vec<_> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 7, "{events}");
    for kind in ["identify", "track", "page", "screen", "group", "alias"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    assert_eq!(
        hub.admin_get("/v1/profiles/user_id:sp-1/traits").json()["traits"]["plan"],
        "pro"
    );
    // An error is readable by the page too: it carries Access-Control-Allow-Origin.
    let r = from_page(&hub, shop, "/v1/t", "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("access-control-allow-origin"), Some(shop));
}

#[test]
fn cors_preflight_and_per_source_origins() {
    let hub = browser_hub();
    let preflight = |origin: &str| {
        hub.request(
            "OPTIONS",
            "/v1/t",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            b"",
        )
    };
    // The preflight carries no write key: any source's origin passes it.
    for origin in ["http://shop.example", "http://other.example"] {
        let r = preflight(origin);
        assert!(r.status < 300, "{}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        let methods = r.header("access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST"), "{methods}");
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{headers}"
        );
        assert_eq!(r.header("access-control-max-age"), Some("86400"));
        assert!(r.header("access-control-allow-credentials").is_none());
    }
    assert!(preflight("http://evil.example")
        .header("access-control-allow-origin")
        .is_none());

    // The real request names its source, whose own list decides: `other`'s origin may not send
    // `web`'s events (403, no CORS header, nothing stored), through any path, even a simple
    // text/plain request with the key in the body (sendBeacon: no preflight at all).
    let body = json!({"userId": "cors-1", "event": "Stolen"}).to_string();
    for origin in ["http://other.example", "http://evil.example", "null"] {
        let r = from_page(&hub, origin, "/v1/t", &body);
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("allowed_origins"));
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        let keyed = json!({"userId": "cors-1", "event": "Beacon", "writeKey": WRITE_KEY});
        let r = hub.request(
            "POST",
            "/v1/t",
            &[
                ("origin", origin),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
            keyed.to_string().as_bytes(),
        );
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
    }
    let batch = json!({"writeKey": WRITE_KEY, "batch": [{"type": "track", "userId": "cors-1", "event": "B"}]});
    let r = hub.request(
        "POST",
        "/v1/b",
        &[
            ("origin", "http://other.example"),
            ("content-type", "text/plain"),
        ],
        batch.to_string().as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        0,
        "a refused origin stored events"
    );
    // `other`'s own key from its own origin is fine; servers (no Origin) are never affected.
    let r = hub.request(
        "POST",
        "/v1/t",
        &[
            ("origin", "http://other.example"),
            ("authorization", &basic("wk_other")),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://other.example")
    );
    assert_eq!(post(&hub, "/v1/t", body.as_bytes(), &[]).status, 200);
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_events_rejected_total{reason=\"origin_not_allowed\"} 7"),
        "{metrics}"
    );
}

#[test]
fn settings_for_analytics_js() {
    let hub = browser_hub();
    let get = |path: &str, origin: &str| hub.request("GET", path, &[("origin", origin)], b"");
    let r = get(
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        "http://shop.example",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://shop.example")
    );
    let s = r.json();
    let segment = &s["integrations"]["Segment.io"];
    assert_eq!(segment["apiKey"], WRITE_KEY);
    assert_eq!(segment["apiHost"], format!("{}/v1", hub.addr));
    assert_eq!(segment["protocol"], "http");
    assert_eq!(s["integrations"].as_object().unwrap().len(), 1, "{s}");
    assert_eq!((&s["plan"], &s["remotePlugins"]), (&json!({}), &json!([])));
    assert_eq!(s["metrics"]["sampleRate"], 0);
    // Behind the trusted proxy, the public host and scheme are the proxy's.
    let r = hub.request(
        "GET",
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "hub.example"),
        ],
        b"",
    );
    let segment = &r.json()["integrations"]["Segment.io"];
    assert_eq!(
        (&segment["apiHost"], &segment["protocol"]),
        (&json!("hub.example/v1"), &json!("https"))
    );
    // Another source's origin gets neither the settings nor a CORS header; unknown keys 404.
    let r = get(
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        "http://other.example",
    );
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(
        get("/v1/projects/wk_nope/settings", "http://shop.example").status,
        404
    );
}

#[test]
fn enrichment_ip_user_agent_and_rudderstack_fields() {
    let hub = browser_hub();
    let send = |user: &str, context: serde_json::Value, extra: &[(&str, &str)]| {
        let body = json!({"userId": user, "event": "Seen", "context": context});
        let r = post(&hub, "/v1/track", body.to_string().as_bytes(), extra);
        assert_eq!(r.status, 200, "{}", r.text());
        hub.admin_get(&format!("/v1/profiles/user_id:{user}/events"))
            .json()["data"][0]
            .clone()
    };
    // The peer (127.0.0.1, a trusted proxy here) with no X-Forwarded-For is the client.
    let e = send("ip-1", json!({"userAgent": "Mozilla/5.0 Test"}), &[]);
    assert_eq!(e["context"]["ip"], "127.0.0.1");
    assert_eq!(e["context"]["userAgent"], "Mozilla/5.0 Test");
    assert!(
        e["receivedAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{e}"
    );
    // Through the proxy: the nearest hop that is not a trusted proxy; the client's own wins.
    let e = send(
        "ip-2",
        json!({}),
        &[("x-forwarded-for", "203.0.113.5, 198.51.100.7")],
    );
    assert_eq!(e["context"]["ip"], "198.51.100.7");
    let e = send(
        "ip-3",
        json!({"ip": "192.0.2.1"}),
        &[("x-forwarded-for", "198.51.100.7")],
    );
    assert_eq!(e["context"]["ip"], "192.0.2.1");

    // RudderStack: identify traits in context.traits, the AnonymousId header (base64 from
    // JS v3), consent and externalIds kept.
    let identify = json!({"userId": "rs-1", "rudderId": "r-77", "context": {
        "traits": {"email": "rs@example.com", "plan": "team"},
        "consent": {"categoryPreferences": {"Advertising": false}},
        "externalIds": [{"id": "crm-9", "type": "crm_id"}]}});
    let r = post(&hub, "/v1/identify", identify.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let traits = hub.admin_get("/v1/profiles/user_id:rs-1/traits").json()["traits"].clone();
    assert_eq!(
        (&traits["email"], &traits["plan"]),
        (&json!("rs@example.com"), &json!("team"))
    );
    let e = &hub.admin_get("/v1/profiles/user_id:rs-1/events").json()["data"][0];
    assert_eq!(
        e["context"]["consent"]["categoryPreferences"]["Advertising"],
        false
    );
    assert_eq!(
        (&e["context"]["externalIds"][0]["id"], &e["rudderId"]),
        (&json!("crm-9"), &json!("r-77"))
    );
    use base64::Engine as _;
    let header = base64::engine::general_purpose::STANDARD.encode("anon-hdr-1");
    let body = json!({"event": "Headed"}).to_string();
    let r = post(
        &hub,
        "/v1/track",
        body.as_bytes(),
        &[("anonymousid", &header)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(hub.profile("anonymous_id:anon-hdr-1").is_some());
}

/// The official clients in `tests/clients`, installed by `tools/setup-clients` (`.ci/run` runs
/// it). Missing tools fail the test, naming that script: a client test never passes silently.
mod clients {
    use std::path::PathBuf;
    use std::process::Command;

    pub fn dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients"))
    }

    fn require() {
        let dir = dir();
        let missing: Vec<String> = [
            (PathBuf::from("/usr/bin/chromium"), "Debian's chromium"),
            (
                dir.join("node_modules/.package-lock.installed"),
                "the npm packages",
            ),
            (dir.join(".venv/requirements.installed"), "the Python SDKs"),
        ]
        .into_iter()
        .filter(|(path, _)| !path.exists())
        .map(|(path, what)| format!("{what} ({})", path.display()))
        .collect();
        let node = Command::new("node").arg("--version").output();
        let node_missing = !node.is_ok_and(|o| o.status.success());
        assert!(
            missing.is_empty() && !node_missing,
            "the client tests need {}{}: run tools/setup-clients (as .ci/run does)",
            missing.join(", "),
            if node_missing { ", node" } else { "" }
        );
    }

    /// Runs a client script (`node X.mjs ...` or the venv's python); its last stdout line as
    /// JSON. A failing script fails the test with its output.
    pub fn run(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
        require();
        let program = match program {
            "python" => dir().join(".venv/bin/python").display().to_string(),
            other => other.to_string(),
        };
        let out = Command::new(&program)
            .arg(script)
            .args(args)
            .current_dir(dir())
            .output()
            .unwrap_or_else(|e| panic!("running {program} {script}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{script} {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("null");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: not JSON ({e}): {stdout}"))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 10 s) for the profile holding `id` to have `n` events; its events.
fn events_of(hub: &Hub, id: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = hub.admin_get(&format!("/v1/profiles/{id}/events?limit=100"));
        let events = if r.status == 200 {
            r.json()["data"].as_array().cloned().unwrap_or_default()
        } else {
            vec![]
        };
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn names(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or_default();
            match e["event"].as_str() {
                Some(name) => format!("{kind}:{name}"),
                None => kind.to_string(),
            }
        })
        .collect()
}

#[test]
fn browser_sdks_on_another_origin_reach_the_profile() {
    let (page, other) = (free_port(), free_port());
    let hub = Hub::start_full(
        Db::Sqlite,
        "",
        &format!("allowed_origins = [\"http://localhost:{page}\"]"),
        &format!("[sources.other]\nwrite_keys = [\"wk_other\"]\nallowed_origins = [\"http://localhost:{other}\"]\n"),
        &[],
    );
    let url = format!("http://{}", hub.addr);
    let page_origin = format!("http://localhost:{page}");
    for (sdk, mode, user) in [
        ("segment", "allowed", "ajs-1"),
        ("segment", "batching", "ajs-2"),
        ("rudderstack", "allowed", "rs-js-1"),
    ] {
        let out = clients::run(
            "node",
            "browser.mjs",
            &[sdk, mode, &url, &page.to_string(), WRITE_KEY, user],
        );
        // Nothing but the page's own origin and the hub: no CDN, no metrics endpoint.
        for r in out["requests"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            assert!(
                r.starts_with(&page_origin) || r.starts_with(&url),
                "{sdk} {mode} fetched {r}: {out}"
            );
        }
        assert!(
            out["errors"].as_array().unwrap().is_empty(),
            "{sdk} {mode}: {out}"
        );
        let events = names(&events_of(&hub, &format!("user_id:{user}"), 3));
        for want in ["page", "identify", "track:Clicked Buy"] {
            assert!(
                events.iter().any(|e| e == want),
                "{sdk} {mode}: {want} missing from {events:?} ({out})"
            );
        }
        let traits = hub
            .admin_get(&format!("/v1/profiles/user_id:{user}/traits"))
            .json()["traits"]
            .clone();
        assert_eq!(
            traits["email"],
            format!("{user}@example.com"),
            "{sdk} {mode}"
        );
        assert_eq!(traits["plan"], "pro");
        let paths: Vec<&str> = out["posts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["url"].as_str())
            .collect();
        let expected = match (sdk, mode) {
            ("segment", "batching") => vec!["/v1/b"],
            ("segment", _) => vec!["/v1/p", "/v1/i", "/v1/t"],
            _ => vec!["/v1/page", "/v1/identify", "/v1/track"],
        };
        for path in expected {
            assert!(
                paths.iter().any(|p| p.ends_with(path)),
                "{sdk} {mode}: no POST {path} in {paths:?}"
            );
        }
    }

    // A page whose origin the `web` source does not take (it is `other`'s, so the preflight
    // passes), sending with `web`'s key: refused, nothing stored, not even a sendBeacon.
    let before = hub.count("SELECT COUNT(*) FROM events");
    for (sdk, user) in [("segment", "ajs-bad"), ("rudderstack", "rs-js-bad")] {
        let out = clients::run(
            "node",
            "browser.mjs",
            &[sdk, "disallowed", &url, &other.to_string(), WRITE_KEY, user],
        );
        let posts = out["posts"].as_array().unwrap();
        assert!(
            !posts.is_empty(),
            "{sdk}: the page sent nothing, so the test shows nothing: {out}"
        );
        assert!(posts.iter().all(|p| p["status"] != 200), "{sdk}: {out}");
        assert!(
            posts.iter().any(|p| p["status"] == 403),
            "{sdk}: the hub never refused: {out}"
        );
        assert!(
            hub.profile(&format!("user_id:{user}")).is_none(),
            "{sdk}: a disallowed page stored a profile"
        );
    }
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        before,
        "a disallowed origin stored events"
    );
}

#[test]
fn server_sdks_node_and_python_identify_track_group_alias() {
    let hub = Hub::start(Db::Sqlite);
    let url = format!("http://{}", hub.addr);
    for (program, script, sdk) in [
        ("node", "node-sdks.mjs", "segment"),
        ("node", "node-sdks.mjs", "rudderstack"),
        ("python", "python-sdks.py", "segment"),
        ("python", "python-sdks.py", "rudderstack"),
    ] {
        let user = format!("{program}-{sdk}");
        clients::run(program, script, &[sdk, &url, WRITE_KEY, &user]);
        let events = names(&events_of(&hub, &format!("user_id:{user}"), 5));
        for want in [
            "track:Viewed Pricing",
            "identify",
            "track:Order Completed",
            "group",
            "alias",
        ] {
            assert!(
                events.iter().any(|e| e == want),
                "{user}: {want} missing from {events:?}"
            );
        }
        let traits = hub
            .admin_get(&format!("/v1/profiles/user_id:{user}/traits"))
            .json()["traits"]
            .clone();
        assert_eq!(
            traits["email"],
            format!("{user}@example.com"),
            "{user}: {traits}"
        );
        assert!(traits["plan"].is_string(), "{user}: {traits}");
        // The alias joined the anonymous visitor to the user.
        let anon = hub
            .profile(&format!("anonymous_id:anon-{user}"))
            .expect("aliased visitor");
        let known = hub.profile(&format!("user_id:{user}")).unwrap();
        assert_eq!(anon["id"], known["id"], "{user}");
    }
}

/// What analytics-kotlin uploads to `/v1/b`: its event file, framed by `EventsFileManager`
/// as `{"batch":[EVENT,...],"sentAt":"...","writeKey":"..."}` (segmentio/analytics-kotlin
/// core/src/test/.../utilities/EventsFileManagerTest.kt, "read finishes open file and lists it"),
/// holding an event exactly as analytics-kotlin 1.15.0 serialised it on an Android 14 emulator
/// (segmentio/substrata-kotlin's JSScope test fixture `testCallWithJsonElement`: note the empty
/// `userId` the SDK sends before identify). Read 2026-12-06.
const KOTLIN_EVENT: &str = r#"{"properties":{"version":1,"build":1,"from_background":false},"event":"Application Opened","type":"track","messageId":"2132f014-a8fe-41b6-b714-0226db39e0d3","anonymousId":"a7bffc58-991e-4a2d-98a7-2a04abb3ea93","integrations":{},"context":{"library":{"name":"analytics-kotlin","version":"1.15.0"},"instanceId":"49f19161-6d56-4024-b23d-7f32d6ab9982","app":{"name":"analytics-kotlin-live","version":1,"namespace":"com.segment.analytics.liveplugins.app","build":1},"device":{"id":"87bc73d4e4ca1608da083975d36421aef0411dff765c9766b9bfaf266b7c1586","manufacturer":"Google","model":"sdk_gphone64_arm64","name":"emu64a","type":"android"},"os":{"name":"Android","version":14},"screen":{"density":2.75,"height":2154,"width":1080},"network":{},"locale":"en-US","userAgent":"Dalvik/2.1.0 (Linux; U; Android 14; sdk_gphone64_arm64 Build/UE1A.230829.036.A1)","timezone":"America/Chicago"},"userId":"","_metadata":{"bundled":[],"unbundled":[],"bundledIds":[]},"timestamp":"2024-04-25T16:40:55.994Z"}"#;

#[test]
fn mobile_sdk_batches_to_v1_b() {
    let hub = Hub::start(Db::Sqlite);
    let kotlin = format!(
        r#"{{"batch":[{KOTLIN_EVENT}],"sentAt":"2024-04-25T16:40:56.100Z","writeKey":"{WRITE_KEY}"}}"#
    );
    // analytics-swift's upload file, framed by DirectoryStore (segmentio/analytics-swift
    // Sources/Segment/Utilities/Storage/Types/DirectoryStore.swift: `startFileIfNeeded` writes
    // the line `{ "batch": [`, `append` one line per event with a leading comma after the first,
    // `finishFile` the line `],"sentAt":"...","writeKey":"..."}`), each event with the fields of
    // its RawEvent Codable types (Sources/Segment/Types.swift). Read 2026-12-06.
    let swift = format!(
        "{{ \"batch\": [\n{}\n,{}\n],\"sentAt\":\"2026-12-06T08:00:01.000Z\",\"writeKey\":\"{WRITE_KEY}\"}}\n",
        r#"{"type":"identify","anonymousId":"6ED8CB57-D2E1-4A11-9B0A-2D4A1C0D0E5F","messageId":"A0E7C5D6-3A1B-4C2D-8E9F-0A1B2C3D4E5F","userId":"swift-user","timestamp":"2026-12-06T08:00:00.000Z","context":{"library":{"name":"analytics-swift","version":"1.7.3"},"os":{"name":"iOS","version":"18.1"},"device":{"type":"ios","model":"iPhone16,1"},"timezone":"Europe/Paris","locale":"fr-FR","traits":{"email":"swift@example.com"}},"integrations":{},"traits":{"email":"swift@example.com","plan":"mobile"},"_metadata":{"bundled":[],"unbundled":[],"bundledIds":[]}}"#,
        r#"{"type":"screen","anonymousId":"6ED8CB57-D2E1-4A11-9B0A-2D4A1C0D0E5F","messageId":"B1F8D6E7-4B2C-4D3E-9F0A-1B2C3D4E5F60","userId":"swift-user","timestamp":"2026-12-06T08:00:00.500Z","context":{"library":{"name":"analytics-swift","version":"1.7.3"}},"integrations":{},"name":"Home","properties":{},"_metadata":{"bundled":[],"unbundled":[],"bundledIds":[]}}"#,
    );
    // Kotlin's HTTPClient sends text/plain, Swift's application/json; both as Basic auth.
    for (body, content_type) in [
        (&kotlin, "text/plain"),
        (&swift, "application/json; charset=utf-8"),
    ] {
        let r = hub.request(
            "POST",
            "/v1/b",
            &[
                ("authorization", &basic(WRITE_KEY)),
                ("content-type", content_type),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let events = events_of(&hub, "anonymous_id:a7bffc58-991e-4a2d-98a7-2a04abb3ea93", 1);
    assert_eq!(names(&events), ["track:Application Opened"]);
    assert_eq!(events[0]["context"]["library"]["name"], "analytics-kotlin");
    assert!(
        events[0].get("userId").is_none_or(|u| u == ""),
        "{}",
        events[0]
    );
    let traits = hub
        .admin_get("/v1/profiles/user_id:swift-user/traits")
        .json()["traits"]
        .clone();
    assert_eq!(
        (&traits["email"], &traits["plan"]),
        (&json!("swift@example.com"), &json!("mobile"))
    );
    assert_eq!(names(&events_of(&hub, "user_id:swift-user", 2)).len(), 2);
}
