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
