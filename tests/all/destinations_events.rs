//! Event destinations end to end, through the real `switchyard` binary and the real plugin
//! components, against faithful fakes of the APIs:
//! - `meta-conversions` against a fake Conversions API (`tests/fakes/meta_capi.rs`),
//! - `ga4-measurement` against a fake Measurement Protocol and its validation server
//!   (`tests/fakes/ga4.rs`).
//!
//! Events go in through the tracking API, out through `mode = "events"` syncs, and are checked
//! at the fakes: mapped, hashed, deduplicable by the message id; events the provider would
//! refuse (Meta) or silently drop (GA4) are dead-lettered with the reason instead; throttling
//! and outages are retried; `plugin check` reports credentials and the validation server.

use crate::common;

use common::hub::{run_counts, Db, Hub};
use common::{failed, switchyard};

use crate::fakes::meta_capi as capi_fake;

use crate::fakes::ga4 as ga4_fake;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn iso(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An `Order Completed` from a browser, through the tracking API.
fn order(hub: &Hub, user: &str, id: &str, total: f64, at: chrono::DateTime<chrono::Utc>) {
    let r = hub.track(
        "track",
        json!({
            "userId": user, "event": "Order Completed", "messageId": id, "timestamp": iso(at),
            "properties": {"order_id": id, "total": total, "currency": "eur",
                           "ga_client_id": format!("1197.{user}"), "fbp": "fb.1.1765000000000.1098115397"},
            "context": {"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
                        "page": {"url": "https://shop.example.com/checkout"}}
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits until events received at `since` are old enough for an events sync (2 s).
fn settle(since: Instant) {
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(since.elapsed()));
}

const MAPPING_META: &str = "[syncs.mapping]\nevent_name = \"event.name\"\nevent_time = \"event.timestamp\"\n\
     event_source_url = \"event.context.page.url\"\nclient_user_agent = \"event.context.userAgent\"\n\
     client_ip_address = \"event.context.ip\"\nfbp = \"event.properties.fbp\"\nemail = \"identifiers.email\"\n\
     external_id = \"identifiers.user_id\"\nvalue = \"event.properties.total\"\ncurrency = \"event.properties.currency\"\n\
     order_id = \"event.properties.order_id\"\n";

const MAPPING_GA4: &str =
    "[syncs.mapping]\nevent_name = \"event.name\"\ntimestamp = \"event.timestamp\"\n\
     client_id = \"event.properties.ga_client_id\"\nuser_id = \"identifiers.user_id\"\n\
     transaction_id = \"event.properties.order_id\"\nvalue = \"event.properties.total\"\n\
     currency = \"event.properties.currency\"\nuser_property_plan = \"traits.plan\"\n";

#[test]
fn tracked_orders_reach_meta_capi_and_ga4_through_events_syncs() {
    let capi = capi_fake::start_in_background();
    let ga4 = ga4_fake::start_in_background();
    let (chp, ghp) = (capi.host_port(), ga4.host_port());
    let project = format!(
        "[destinations.meta_capi]\nplugin = \"meta-conversions\"\n\
         config = {{ pixel_id = \"{pixel}\", test_event_code = \"TEST4242\" }}\n\
         secrets = {{ access_token = \"${{META_CAPI_TOKEN}}\" }}\n\
         reroute = [\"graph.facebook.com=http://{chp}\"]\nallow_private_hosts = [\"{chp}\"]\n\n\
         [destinations.ga4]\nplugin = \"ga4-measurement\"\n\
         config = {{ measurement_id = \"{mid}\", validate_before_send = true, ad_user_data = \"GRANTED\" }}\n\
         secrets = {{ api_secret = \"${{GA4_API_SECRET}}\" }}\n\
         reroute = [\"www.google-analytics.com=http://{ghp}\"]\nallow_private_hosts = [\"{ghp}\"]\n\n\
         [[syncs]]\nname = \"orders-to-meta\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"meta_capi\"\nmode = \"events\"\n{MAPPING_META}\n\
         [[syncs]]\nname = \"orders-to-ga4\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"ga4\"\nmode = \"events\"\n{MAPPING_GA4}",
        pixel = capi_fake::PIXEL_ID,
        mid = ga4_fake::MEASUREMENT_ID,
    );
    let env = [
        ("SWITCHYARD_RETRY_BASE_MS", "50"),
        ("META_CAPI_TOKEN", capi_fake::TOKEN),
        ("GA4_API_SECRET", ga4_fake::API_SECRET),
    ];
    let hub = Hub::start_project(Db::Sqlite, "", &project, &env);
    hub.install(&["meta-conversions", "ga4-measurement"]);
    hub.identify("u1", json!({"email": "Ada@Example.com", "plan": "pro"}));
    let now = chrono::Utc::now();
    order(&hub, "u1", "o-1", 42.5, now - chrono::Duration::minutes(5));
    order(&hub, "u2", "o-2", 7.0, now - chrono::Duration::minutes(1));
    // Four days old: within Meta's 7 days, past GA4's 72 hours.
    order(&hub, "u1", "o-3", 12.0, now - chrono::Duration::days(4));
    // Eight days old: past both windows.
    order(&hub, "u2", "o-4", 3.0, now - chrono::Duration::days(8));
    settle(Instant::now());

    // Meta throttles the first request (code 4): the hub backs off and the events go through;
    // the 8-day-old event never reaches Meta, where it would have sunk the whole request.
    capi.fail_next(capi_fake::Fault::app_rate_limited());
    let r = hub.run_sync("orders-to-meta");
    assert_eq!(run_counts(&r), ("completed_with_errors", 3, 3, 1), "{r}");
    let dead = hub.dead_letters("orders-to-meta");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["key"], "o-4", "{dead:?}");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("more than 7 days ago"), "{error}");
    let refused = capi.refused();
    assert_eq!(refused.len(), 1, "only the throttled request: {refused:?}");
    assert_eq!(refused[0]["error"]["code"], 4);
    let received = capi.received();
    assert_eq!(received.len(), 1, "three events in one request");
    assert_eq!(received[0].test_event_code.as_deref(), Some("TEST4242"));
    assert_eq!(
        received[0].token_via, "header",
        "the token went by header placeholder"
    );
    let mut events = capi.events();
    events.sort_by_key(|e| e["event_id"].as_str().map(str::to_string));
    assert_eq!(
        events
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>(),
        vec![json!("o-1"), json!("o-2"), json!("o-3")],
        "event_id is the message id, for deduplication against the pixel"
    );
    let o1 = &events[0];
    assert_eq!(o1["event_name"], "Purchase");
    assert_eq!(o1["action_source"], "website");
    assert_eq!(o1["event_source_url"], "https://shop.example.com/checkout");
    assert_eq!(
        o1["event_time"],
        json!((now - chrono::Duration::minutes(5)).timestamp())
    );
    assert_eq!(o1["user_data"]["em"], sha("ada@example.com"));
    assert_eq!(o1["user_data"]["external_id"], sha("u1"));
    assert_eq!(o1["user_data"]["client_ip_address"], "203.0.113.9");
    assert_eq!(
        o1["user_data"]["client_user_agent"],
        "Mozilla/5.0 (X11; Linux x86_64)"
    );
    assert_eq!(o1["user_data"]["fbp"], "fb.1.1765000000000.1098115397");
    assert_eq!(
        o1["custom_data"],
        json!({"value": 42.5, "currency": "EUR", "order_id": "o-1"})
    );
    assert!(
        events[1]["user_data"].get("em").is_none(),
        "u2 has no email: matched on IP, user agent, fbp and external id"
    );
    // Each event once: a second run sends nothing.
    let r = hub.run_sync("orders-to-meta");
    assert_eq!(run_counts(&r).1, 0, "{r}");
    assert_eq!(capi.events().len(), 3);
    assert_eq!(capi.deduplicated(), 0);

    // GA4: an outage (503) is retried; the 4- and 8-day-old events are refused with the reason
    // rather than sent to be dropped in silence; every request is validated first.
    ga4.fail_next(1);
    let r = hub.run_sync("orders-to-ga4");
    assert_eq!(run_counts(&r), ("completed_with_errors", 2, 2, 2), "{r}");
    let mut dead: Vec<String> = hub
        .dead_letters("orders-to-ga4")
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["key"].as_str().unwrap(),
                d["error"].as_str().unwrap()
            )
        })
        .collect();
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead[0].starts_with("o-3 ") && dead[0].contains("72 hours"),
        "{dead:?}"
    );
    assert!(
        dead[1].starts_with("o-4 ") && dead[1].contains("72 hours"),
        "{dead:?}"
    );
    assert!(
        ga4.dropped().is_empty(),
        "GA4 dropped nothing: {:?}",
        ga4.dropped()
    );
    let collected = ga4.collected();
    assert_eq!(collected.len(), 2, "one request per client: {collected:?}");
    let (collects, debugs) = ga4.requests();
    assert_eq!(collects, 3, "one 503, then one request per client");
    assert!(debugs >= 2, "validated before sending: {debugs}");
    let u1 = collected
        .iter()
        .find(|c| c.body["client_id"] == "1197.u1")
        .expect("u1's request");
    assert_eq!(u1.body["user_id"], "u1");
    assert_eq!(
        u1.body["user_properties"],
        json!({"plan": {"value": "pro"}})
    );
    assert_eq!(u1.body["consent"], json!({"ad_user_data": "GRANTED"}));
    assert_eq!(u1.events.len(), 1);
    let purchase = &u1.events[0];
    assert_eq!(purchase["name"], "purchase");
    assert_eq!(
        purchase["params"],
        json!({"transaction_id": "o-1", "value": 42.5, "currency": "EUR"})
    );
    assert_eq!(
        purchase["timestamp_micros"],
        json!((now - chrono::Duration::minutes(5)).timestamp_millis() * 1000)
    );
    let r = hub.run_sync("orders-to-ga4");
    assert_eq!(run_counts(&r).1, 0, "{r}");
    assert_eq!(ga4.events().len(), 2, "each event once");
}

/// GA4 takes one client per request: a batch of many clients' events goes as requests side by
/// side (IN_FLIGHT in the plugin), and an outage answering some of them costs no event twice
/// (GA4 does not deduplicate) and loses none.
#[test]
fn ga4_sends_many_clients_requests_side_by_side_each_event_once() {
    let ga4 = ga4_fake::start_in_background();
    let ghp = ga4.host_port();
    let project = format!(
        "[destinations.ga4]\nplugin = \"ga4-measurement\"\n\
         config = {{ measurement_id = \"{mid}\" }}\n\
         secrets = {{ api_secret = \"${{GA4_API_SECRET}}\" }}\n\
         reroute = [\"www.google-analytics.com=http://{ghp}\"]\nallow_private_hosts = [\"{ghp}\"]\n\n\
         [[syncs]]\nname = \"orders-to-ga4\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"ga4\"\nmode = \"events\"\n{MAPPING_GA4}",
        mid = ga4_fake::MEASUREMENT_ID,
    );
    let env = [
        ("SWITCHYARD_RETRY_BASE_MS", "50"),
        ("GA4_API_SECRET", ga4_fake::API_SECRET),
    ];
    let hub = Hub::start_project(Db::Sqlite, "", &project, &env);
    hub.install(&["ga4-measurement"]);
    let now = chrono::Utc::now();
    let started = Instant::now();
    for n in 0..30 {
        order(
            &hub,
            &format!("u{n}"),
            &format!("o-{n}"),
            10.0 + n as f64,
            now,
        );
    }
    settle(started);
    ga4.answer_after(Duration::from_millis(100));
    ga4.fail_next(2);
    let r = hub.run_sync("orders-to-ga4");
    assert_eq!(run_counts(&r).1, 30, "{r}");
    let most = ga4.max_in_flight();
    assert!(
        (2..=10).contains(&most),
        "requests went side by side, at most ten at once: {most}"
    );
    let mut ids: Vec<String> = ga4
        .events()
        .iter()
        .map(|e| e["params"]["transaction_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..30).map(|n| format!("o-{n}")).collect();
    want.sort();
    assert_eq!(
        ids, want,
        "every event once, after the two 503s were retried"
    );
    let (collects, _) = ga4.requests();
    assert!(
        collects >= 32,
        "30 clients' requests and two refused: {collects}"
    );
}

#[test]
fn check_reports_credentials_and_the_validation_server() {
    let capi = capi_fake::start_in_background();
    let ga4 = ga4_fake::start_in_background();
    let plugins = tempfile::tempdir().unwrap();
    common::install_plugin(plugins.path(), "meta-conversions");
    common::install_plugin(plugins.path(), "ga4-measurement");
    let check =
        |plugin: &str, host: &str, fake: String, hp: String, config: Value, secret: String| {
            let reroute = format!("{host}={fake}");
            let config = config.to_string();
            switchyard(
                plugins.path(),
                &[
                    "plugin",
                    "check",
                    plugin,
                    "--config",
                    &config,
                    "--secret",
                    &secret,
                    "--reroute",
                    &reroute,
                    "--allow-private",
                    &hp,
                ],
                "warn",
            )
        };
    let meta = |token: &str, pixel: &str| {
        check(
            "meta-conversions",
            "graph.facebook.com",
            capi.url(),
            capi.host_port(),
            json!({"pixel_id": pixel}),
            format!("access_token={token}"),
        )
    };
    let out = meta(capi_fake::TOKEN, capi_fake::PIXEL_ID);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = failed(&meta("EAAwrong", capi_fake::PIXEL_ID));
    assert!(
        err.contains("190") && err.contains("Invalid OAuth access token"),
        "{err}"
    );
    assert!(
        !err.contains("EAAwrong"),
        "the token is never echoed: {err}"
    );
    let err = failed(&meta(capi_fake::TOKEN, "999"));
    assert!(err.contains("100/33") && err.contains("pixel_id"), "{err}");

    let ga = |config: Value| {
        check(
            "ga4-measurement",
            "www.google-analytics.com",
            ga4.url(),
            ga4.host_port(),
            config,
            format!("api_secret={}", ga4_fake::API_SECRET),
        )
    };
    let out = ga(json!({"measurement_id": ga4_fake::MEASUREMENT_ID}));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ga4.requests(),
        (0, 1),
        "check only talks to the validation server"
    );
    // An app stream needs a Firebase app id in the query and an app instance id in the body;
    // the check's sample uses one, so the validation server accepts it too.
    let out = ga(json!({"firebase_app_id": "1:1234567890:android:321abc456def7890"}));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = failed(&ga(json!({"measurement_id": "UA-1234-1"})));
    assert!(err.contains("G-XXXXXXXXXX"), "{err}");
}

/// The Conversions API refuses a whole request for one event; the plugin halves the request
/// until the refused event is alone, so only it is rejected. And the fakes refuse what the
/// APIs refuse, with their shapes.
#[test]
fn one_refused_event_is_isolated_and_the_fakes_refuse_like_the_apis() {
    let capi = capi_fake::start_in_background();
    let plugins = tempfile::tempdir().unwrap();
    common::install_plugin(plugins.path(), "meta-conversions");
    let now = chrono::Utc::now().timestamp();
    let records: String = (0..8)
        .map(|i| {
            json!({"key": format!("m-{i}"), "fields": {
                "event_name": "Lead", "event_time": now - 60, "action_source": "system_generated",
                "email": format!("user{i}@example.com")}})
            .to_string()
                + "\n"
        })
        .collect();
    let file = plugins.path().join("records.jsonl");
    std::fs::write(&file, records).unwrap();
    capi.refuse_event("m-5", "Invalid Click ID");
    let reroute = format!("graph.facebook.com={}", capi.url());
    let hp = capi.host_port();
    let config = json!({"pixel_id": capi_fake::PIXEL_ID}).to_string();
    let secret = format!("access_token={}", capi_fake::TOKEN);
    let out = switchyard(
        plugins.path(),
        &[
            "plugin",
            "deliver",
            "meta-conversions",
            "--action",
            "track",
            "--config",
            &config,
            "--secret",
            &secret,
            "--records",
            file.to_str().unwrap(),
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
        "warn",
    );
    let text = common::ok(&out);
    let results: Vec<Value> = common::lines(&text);
    assert_eq!(results.len(), 8, "{text}");
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            assert_eq!(r["result"], "rejected", "{r}");
            let reason = r["reason"].as_str().unwrap();
            assert!(
                reason.contains("Meta error 100") && reason.contains("Invalid Click ID"),
                "{reason}"
            );
        } else {
            assert_eq!(r["result"], "ok", "{i}: {r}");
        }
    }
    // 8 → 4 + 4 → (4 ok) 2 + 2 → (2 ok) 1 + 1: four refused requests, three accepted.
    assert_eq!(capi.refused().len(), 4);
    assert_eq!(capi.events().len(), 7);
    assert_eq!(capi.requests(), 7);

    // The fake refuses like Meta: one stale event sinks its whole request, nothing is stored.
    let post = |body: Value| {
        common::hub::request(
            &capi.host_port(),
            "POST",
            &format!("/v26.0/{}/events", capi_fake::PIXEL_ID),
            &[
                ("authorization", &format!("Bearer {}", capi_fake::TOKEN)),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    let good = json!({"event_name": "Lead", "event_time": now, "action_source": "other",
                      "user_data": {"em": sha("a@example.com")}});
    let stale = json!({"event_name": "Lead", "event_time": now - 8 * 86_400, "action_source": "other",
                       "user_data": {"em": sha("b@example.com")}});
    let before = capi.events().len();
    let r = post(json!({"data": [good.clone(), stale]}));
    assert_eq!(r.status, 400);
    let error = &r.json()["error"];
    assert_eq!(
        (error["code"].as_i64(), error["error_subcode"].as_i64()),
        (Some(100), Some(2804003))
    );
    assert_eq!(error["error_user_title"], "Event Timestamp Too Old");
    assert_eq!(
        capi.events().len(),
        before,
        "no event of a refused request is kept"
    );
    let unhashed = json!({"event_name": "Lead", "event_time": now, "action_source": "other",
                          "user_data": {"em": "a@example.com"}});
    assert_eq!(post(json!({"data": [unhashed]})).status, 400);
    let web = json!({"event_name": "Lead", "event_time": now, "action_source": "website",
                     "user_data": {"em": sha("a@example.com")}});
    assert_eq!(
        post(json!({"data": [web]})).status,
        400,
        "website events need URL and user agent"
    );
    let purchase = json!({"event_name": "Purchase", "event_time": now, "action_source": "other",
                          "user_data": {"em": sha("a@example.com")}});
    assert_eq!(post(json!({"data": [purchase]})).status, 400);
    let many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    assert_eq!(post(json!({"data": many})).status, 400);
    assert_eq!(post(json!({"data": [good]})).status, 200);

    // GA4: the collection endpoint takes anything with 2xx and drops what it cannot use; the
    // validation server says why, in Google's words.
    let ga4 = ga4_fake::start_in_background();
    let send = |path: &str, secret: &str, body: Value| {
        common::hub::request(
            &ga4.host_port(),
            "POST",
            &format!(
                "{path}?measurement_id={}&api_secret={secret}",
                ga4_fake::MEASUREMENT_ID
            ),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    let bad = json!({"client_id": "1.2", "events": [{"name": "_badEventName", "params": {}}]});
    let r = send("/debug/mp/collect", "wrong-secret", bad.clone());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["validationMessages"],
        json!([{"fieldPath": "events", "validationCode": "NAME_INVALID",
                "description": "Event at index: [0] has invalid name [_badEventName]. Names must start with an alphabetic character."}])
    );
    assert_eq!(send("/mp/collect", ga4_fake::API_SECRET, bad).status, 204);
    let fine = json!({"client_id": "1.2", "events": [{"name": "tap", "params": {}}]});
    assert_eq!(
        send("/mp/collect", "wrong-secret", fine.clone()).status,
        204
    );
    assert!(ga4.events().is_empty(), "both dropped in silence");
    assert_eq!(ga4.dropped().len(), 2);
    assert_eq!(send("/mp/collect", ga4_fake::API_SECRET, fine).status, 204);
    assert_eq!(ga4.events().len(), 1);
}
