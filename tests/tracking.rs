//! The tracking API's contract end to end: bad input gets a 400 naming the field or limit and
//! stores nothing; unknown keys get 401; a full queue gets 429 with Retry-After and never
//! accept-and-drop; gzip bodies work; and every message acknowledged with 200 survives SIGKILL.

mod common;

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
