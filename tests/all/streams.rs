//! Event streams end to end, through the real `switchyard` binary and real plugins:
//! - events from the official Segment Node SDK reach the Meta Conversions API fake and the GA4
//!   Measurement Protocol fake as they arrive, filtered (CEL) and mapped; `integrations:
//!   {"All": false}` reaches neither, a destination named back on reaches that one only;
//!   `streams list` counts what was dropped and why; `streams tail` shows it live;
//! - the same SDK's events pass a source's transforms (a tracking plan renaming and dropping
//!   events) before the filter and a stream's (PII scrub) after it, and reach both fakes
//!   renamed and scrubbed, the drops counted; a transient transform error holds the stream
//!   where it is, a permanent one dead-letters only the message it fails on;
//! - a SIGKILL of the hub while the destination holds the answer to a batch it took loses
//!   nothing acknowledged, re-sends exactly that batch (counted at the fake), and keeps each
//!   profile's events in order (SQLite and PostgreSQL);
//! - a destination that answers 500 and hangs does not delay another stream;
//! - a stream's dead letters (records the destination refused, a message a transform failed
//!   on) are replayed through the stream's whole way as it is now (SQLite and PostgreSQL).

use crate::common;
use crate::fakes::ga4 as ga4_fake;
use crate::fakes::json_sink::{Faults, JsonSink};
use crate::fakes::meta_capi as capi_fake;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hub::{Db, Hub, WRITE_KEY};
use common::ok;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Waits up to `secs` for `done`, checking every 20 ms.
fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// `streams list --json`, by stream name.
fn list(hub: &Hub) -> HashMap<String, Value> {
    common::lines(&ok(&hub.cli(&["streams", "list", "--json"])))
        .into_iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s))
        .collect()
}

fn counter(status: &Value, name: &str) -> i64 {
    status["counters"][name].as_i64().unwrap_or(0)
}

fn sink_destination(name: &str, sink: &JsonSink) -> String {
    format!(
        "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"{}\" }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 1000\n",
        sink.url(),
        hp = sink.host_port()
    )
}

/// Runs the Segment Node SDK script (tests/clients, installed by tools/setup-clients); `extra`:
/// the order event's name and an extra event's (see the script).
fn segment_node(hub: &Hub, user: &str, extra: &[&str]) {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients"));
    assert!(
        dir.join("node_modules/@segment/analytics-node").exists(),
        "the stream tests drive the Segment Node SDK: run tools/setup-clients (as .ci/run does)"
    );
    let out = Command::new("node")
        .args([
            "node-stream.mjs",
            &format!("http://{}", hub.addr),
            WRITE_KEY,
            user,
        ])
        .args(extra)
        .current_dir(&dir)
        .output()
        .expect("running node (tools/setup-clients installs the clients)");
    assert!(
        out.status.success(),
        "node-stream.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Meta CAPI and GA4 destinations (rerouted to the fakes) and one stream to each: Meta
/// takes big orders (`meta_extra` is appended to its stream), GA4 every track.
fn meta_and_ga4_project(capi: &capi_fake::Fake, ga4: &ga4_fake::Fake, meta_extra: &str) -> String {
    let (chp, ghp) = (capi.host_port(), ga4.host_port());
    format!(
        "[destinations.meta_capi]\nplugin = \"meta-conversions\"\n\
         config = {{ pixel_id = \"{pixel}\", test_event_code = \"TEST4242\" }}\n\
         secrets = {{ access_token = \"${{META_CAPI_TOKEN}}\" }}\n\
         reroute = [\"graph.facebook.com=http://{chp}\"]\nallow_private_hosts = [\"{chp}\"]\n\n\
         [destinations.ga4]\nplugin = \"ga4-measurement\"\n\
         config = {{ measurement_id = \"{mid}\", ad_user_data = \"GRANTED\" }}\n\
         secrets = {{ api_secret = \"${{GA4_API_SECRET}}\" }}\n\
         reroute = [\"www.google-analytics.com=http://{ghp}\"]\nallow_private_hosts = [\"{ghp}\"]\n\n\
         [[streams]]\nname = \"orders-to-meta\"\nfrom = [\"web\"]\nto = \"meta_capi\"\n\
         integration_names = [\"Facebook Conversions API\"]\n\
         filter = \"event.type == 'track' && event.event == 'Order Completed' && event.properties.total > 10.0\"\n\
         {meta_extra}\n\
         [streams.mapping]\nevent_name = \"event.name\"\nevent_time = \"event.timestamp\"\n\
         event_source_url = \"event.context.page.url\"\nclient_user_agent = \"event.context.userAgent\"\n\
         client_ip_address = \"event.context.ip\"\nfbp = \"event.properties.fbp\"\nemail = \"identifiers.email\"\n\
         external_id = \"identifiers.user_id\"\nvalue = \"event.properties.total\"\ncurrency = \"event.properties.currency\"\n\
         order_id = \"event.properties.order_id\"\n\n\
         [[streams]]\nname = \"tracks-to-ga4\"\nto = \"ga4\"\nfilter = \"event.type == 'track'\"\n\
         [streams.mapping]\nevent_name = \"event.name\"\ntimestamp = \"event.timestamp\"\n\
         client_id = \"event.properties.ga_client_id\"\nuser_id = \"identifiers.user_id\"\n\
         transaction_id = \"event.properties.order_id\"\nvalue = \"event.properties.total\"\n\
         currency = \"event.properties.currency\"\nuser_property_plan = \"traits.plan\"\n",
        pixel = capi_fake::PIXEL_ID,
        mid = ga4_fake::MEASUREMENT_ID,
    )
}

#[test]
fn streams_forward_sdk_events_to_meta_capi_and_ga4_filtered_honouring_integrations() {
    let capi = capi_fake::start_in_background();
    let ga4 = ga4_fake::start_in_background();
    let project = meta_and_ga4_project(&capi, &ga4, "");
    let env = [
        ("META_CAPI_TOKEN", capi_fake::TOKEN),
        ("GA4_API_SECRET", ga4_fake::API_SECRET),
    ];
    let mut hub = Hub::start_project(Db::Sqlite, "", &project, &env);
    hub.install(&["meta-conversions", "ga4-measurement"]);
    // The streams found no plugin at start: restart now that they are installed (a stream
    // that cannot load its plugin retries on its own, but only after its pause).
    hub.kill();
    hub.spawn();

    // Watch the Meta stream live while the SDK sends.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["streams", "tail", "orders-to-meta", "--config"])
        .arg(&hub.config)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let hello: Value = serde_json::from_str(&tail_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(hello["tailing"], "orders-to-meta");

    segment_node(&hub, "sdk-u1", &[]);
    // Meta: the big order and the one sent to "Facebook Conversions API" only; GA4: both
    // orders Meta's filter or integrations do not stop, i.e. the big and the small one.
    assert!(
        wait_for(20, || capi.events().len() >= 2 && ga4.events().len() >= 2),
        "meta got {:?}, ga4 got {:?}, streams {:?}",
        capi.events(),
        ga4.events(),
        list(&hub)
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut meta_ids: Vec<String> = capi
        .events()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    meta_ids.sort();
    assert_eq!(meta_ids, ["sdk-u1-big", "sdk-u1-meta-only"]);
    let big = capi
        .events()
        .into_iter()
        .find(|e| e["event_id"] == "sdk-u1-big")
        .unwrap();
    assert_eq!(big["event_name"], "Purchase");
    assert_eq!(big["action_source"], "website");
    assert_eq!(big["event_source_url"], "https://shop.example.com/checkout");
    assert_eq!(
        big["user_data"]["em"],
        hex::encode(Sha256::digest(b"ada@example.com")),
        "the profile's email (from the SDK's identify), hashed"
    );
    assert_eq!(
        big["custom_data"],
        json!({"value": 42.5, "currency": "EUR", "order_id": "sdk-u1-big"})
    );
    let mut ga4_ids: Vec<String> = ga4
        .events()
        .iter()
        .map(|e| e["params"]["transaction_id"].as_str().unwrap().to_string())
        .collect();
    ga4_ids.sort();
    assert_eq!(ga4_ids, ["sdk-u1-big", "sdk-u1-small"]);
    assert!(ga4.dropped().is_empty(), "{:?}", ga4.dropped());

    // What each stream read, forwarded and dropped, and why.
    let streams = list(&hub);
    let meta = &streams["orders-to-meta"];
    // identify, four orders, page: six messages from `web`.
    assert_eq!(counter(meta, "in"), 6, "{meta}");
    assert_eq!(counter(meta, "out"), 2, "{meta}");
    assert_eq!(counter(meta, "dropped:integrations"), 1, "{meta}");
    assert_eq!(
        counter(meta, "dropped:filter"),
        3,
        "identify, small order, page: {meta}"
    );
    assert_eq!(meta["behind"], 0, "{meta}");
    let ga = &streams["tracks-to-ga4"];
    assert_eq!(counter(ga, "out"), 2, "{ga}");
    assert_eq!(
        counter(ga, "dropped:integrations"),
        2,
        "All: false, and All: false naming only Meta: {ga}"
    );
    assert_eq!(counter(ga, "dropped:filter"), 2, "identify and page: {ga}");

    // The tail saw each of the Meta stream's messages with its outcome.
    let mut seen: Vec<(String, String)> = Vec::new();
    while seen.len() < 6 {
        let line = tail_lines.next().expect("a tail line").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        seen.push((
            v["message_id"].as_str().unwrap_or_default().to_string(),
            format!(
                "{}{}",
                v["outcome"].as_str().unwrap(),
                v["reason"]
                    .as_str()
                    .map(|r| format!(":{r}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let outcome = |id: &str| {
        seen.iter()
            .find(|(m, _)| m == id)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{id} not in the tail: {seen:?}"))
    };
    assert_eq!(outcome("sdk-u1-big"), "forwarded");
    assert_eq!(outcome("sdk-u1-meta-only"), "forwarded");
    assert_eq!(outcome("sdk-u1-none"), "dropped:integrations");
    assert_eq!(outcome("sdk-u1-small"), "dropped:filter");

    // The metrics say the same.
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_stream_events_dropped_total{stream=\"orders-to-meta\",reason=\"integrations\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_stream_events_out_total{stream=\"tracks-to-ga4\"} 2"),
        "{metrics}"
    );
}

#[test]
fn streams_transform_sdk_events_before_meta_capi_and_ga4() {
    let capi = capi_fake::start_in_background();
    let ga4 = ga4_fake::start_in_background();
    // The source's tracking plan renames `checkout_done` to `Order Completed` and drops the
    // unplanned `Debug Ping`, before any stream's filter (which names the planned event);
    // Meta's stream then scrubs the browser's `fbp` and IP from what it forwards.
    let transforms = "[transforms.plan]\nplugin = \"rename-events\"\n\
        config = { unknown = \"drop\", original_name_property = \"original_event\", events = { \"Order Completed\" = [\"checkout_done\"] } }\n\n\
        [transforms.scrub]\nplugin = \"pii-scrub\"\nconfig = { drop = [\"properties.fbp\", \"context.ip\"] }\n\n";
    let project = format!(
        "{transforms}{}",
        meta_and_ga4_project(&capi, &ga4, "transforms = [\"scrub\"]")
    );
    let env = [
        ("META_CAPI_TOKEN", capi_fake::TOKEN),
        ("GA4_API_SECRET", ga4_fake::API_SECRET),
    ];
    let mut hub = Hub::start_full(Db::Sqlite, "", "transforms = [\"plan\"]", &project, &env);
    hub.install(&[
        "meta-conversions",
        "ga4-measurement",
        "rename-events",
        "pii-scrub",
    ]);
    hub.kill();
    hub.spawn();

    segment_node(&hub, "sdk-t1", &["checkout_done", "Debug Ping"]);
    assert!(
        wait_for(20, || capi.events().len() >= 2 && ga4.events().len() >= 2),
        "meta got {:?}, ga4 got {:?}, streams {:?}",
        capi.events(),
        ga4.events(),
        list(&hub)
    );
    std::thread::sleep(Duration::from_millis(500));
    let meta_events = capi.events();
    let mut meta_ids: Vec<&str> = meta_events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    meta_ids.sort();
    assert_eq!(meta_ids, ["sdk-t1-big", "sdk-t1-meta-only"]);
    for e in &meta_events {
        // Renamed to the plan (then to Meta's standard event), scrubbed of fbp and the IP.
        assert_eq!(e["event_name"], "Purchase", "{e}");
        assert!(e["user_data"].get("fbp").is_none(), "fbp not scrubbed: {e}");
        assert!(
            e["user_data"].get("client_ip_address").is_none(),
            "IP not scrubbed: {e}"
        );
        assert_eq!(
            e["user_data"]["client_user_agent"], "Mozilla/5.0 (X11; Linux x86_64)",
            "what the scrub does not name passes: {e}"
        );
    }
    let ga4_events = ga4.events();
    let mut ga4_ids: Vec<&str> = ga4_events
        .iter()
        .map(|e| e["params"]["transaction_id"].as_str().unwrap())
        .collect();
    ga4_ids.sort();
    assert_eq!(ga4_ids, ["sdk-t1-big", "sdk-t1-small"]);
    for e in &ga4_events {
        // `checkout_done` would have become `checkout_done`: the plan's name became GA4's.
        assert_eq!(e["name"], "purchase", "{e}");
    }
    assert!(ga4.dropped().is_empty(), "{:?}", ga4.dropped());

    let streams = list(&hub);
    for name in ["orders-to-meta", "tracks-to-ga4"] {
        let s = &streams[name];
        // identify, four orders, the ping, the page.
        assert_eq!(counter(s, "in"), 7, "{s}");
        assert_eq!(counter(s, "out"), 2, "{s}");
        assert_eq!(counter(s, "dropped:transform"), 1, "the ping: {s}");
        assert_eq!(
            counter(s, "transform:plan:event not in the tracking plan"),
            1,
            "{s}"
        );
        assert_eq!(s["behind"], 0, "{s}");
    }
    let meta = &streams["orders-to-meta"];
    assert_eq!(
        counter(meta, "dropped:filter"),
        3,
        "identify, small order, page; the renamed orders pass: {meta}"
    );
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("switchyard_stream_events_dropped_total{stream=\"tracks-to-ga4\",reason=\"transform\"} 1"),
        "{metrics}"
    );
}

/// Sends `n` track events for five users through `/v1/batch`, 50 per request; message ids
/// `{prefix}-{i}` and `properties.n = i`.
fn send_numbered(hub: &Hub, prefix: &str, from: usize, n: usize) {
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"type": "track", "userId": format!("u{}", i % 5), "event": "Tick",
                       "messageId": format!("{prefix}-{i}"), "properties": {"n": i}})
            })
            .collect();
        let r = hub.track("batch", json!({ "batch": batch }));
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn streams_transform_failures_retry_transient_ones_and_dead_letter_only_the_poison_and_reload_on_sighup(
) {
    let sink = JsonSink::start();
    let project = format!(
        "{}\n[transforms.probe]\nplugin = \"chain-probe\"\nconfig = {{ mode = \"transient\" }}\n\n\
         [[streams]]\nname = \"ticks\"\nto = \"sink\"\ntransforms = [\"probe\"]\n",
        sink_destination("sink", &sink)
    );
    let mut hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["json-post-destination", "chain-probe"]);
    // Installed after the start: restart so the stream finds its plugins at once.
    hub.kill();
    hub.spawn();
    send_numbered(&hub, "t", 0, 6);
    // The transform fails transiently: the stream keeps its cursor and says why.
    assert!(
        wait_for(20, || list(&hub)["ticks"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("lookup service unavailable"))),
        "{:?}",
        list(&hub)
    );
    std::thread::sleep(Duration::from_millis(300));
    let status = &list(&hub)["ticks"];
    assert_eq!(
        counter(status, "in"),
        0,
        "nothing counted as read: {status}"
    );
    assert_eq!(status["behind"], 6, "{status}");
    assert_eq!(sink.with(|s| s.events.len()), 0);

    // A new transform config, by SIGHUP: the plugin recovers, but fails for good on one
    // message. The stream starts again with it from where it stood, and only that message is
    // dead-lettered.
    let text = std::fs::read_to_string(&hub.config).unwrap().replace(
        "mode = \"transient\"",
        "mode = \"fail-on\", event = \"Poison\"",
    );
    hub.reload(&text);
    let r = hub.track(
        "track",
        json!({"userId": "u9", "event": "Poison", "messageId": "t-poison"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    send_numbered(&hub, "t", 6, 3);
    assert!(
        wait_for(30, || sink.with(|s| s.events.len()) >= 9),
        "{} of 9 arrived: {:?}",
        sink.with(|s| s.events.len()),
        list(&hub)
    );
    std::thread::sleep(Duration::from_millis(300));
    let keys: HashSet<String> = sink.with(|s| s.events.iter().map(|e| e.0.clone()).collect());
    let expected: HashSet<String> = (0..9).map(|i| format!("t-{i}")).collect();
    assert_eq!(keys, expected, "every message but the poison, none skipped");
    let status = &list(&hub)["ticks"];
    assert_eq!(counter(status, "in"), 10, "{status}");
    assert_eq!(counter(status, "out"), 9, "{status}");
    assert_eq!(counter(status, "dropped:dead_letter"), 1, "{status}");
    assert!(status["error"].is_null(), "{status}");
    let dead: Vec<Value> = common::lines(&ok(&hub.cli(&["dlq", "list"])));
    let dead: Vec<&Value> = dead
        .iter()
        .filter(|d| d["sync"] == "stream:ticks")
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["key"], "t-poison", "{:?}", dead[0]);
    let reason = dead[0].to_string();
    assert!(
        reason.contains("transform `probe`") && reason.contains("cannot transform `Poison`"),
        "{reason}"
    );
}

#[test]
fn streams_dead_letters_replay_through_the_whole_way_as_the_stream_is_now() {
    dead_letters_replay(Db::Sqlite);
}

/// The same on PostgreSQL: the stream's commits there skip waiting for the WAL flush
/// (`synchronous_commit = off`), its dead letters and replay marks are the same rows.
#[test]
fn streams_dead_letters_replay_on_postgres() {
    dead_letters_replay(Db::Postgres);
}

fn dead_letters_replay(db: Db) {
    let sink = JsonSink::start();
    // The destination fails every request: each record is dead-lettered after two attempts.
    sink.set_faults(Faults {
        error: 1.0,
        ..Faults::default()
    });
    let project = format!(
        "{}\n[transforms.probe]\nplugin = \"chain-probe\"\nconfig = {{ mode = \"fail-on\", event = \"Poison\" }}\n\n\
         [[streams]]\nname = \"ticks\"\nto = \"sink\"\ntransforms = [\"probe\"]\nmax_attempts = 2\n",
        sink_destination("sink", &sink)
    );
    let mut hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["json-post-destination", "chain-probe"]);
    hub.kill();
    hub.spawn();
    send_numbered(&hub, "t", 0, 3);
    let r = hub.track(
        "track",
        json!({"userId": "u9", "event": "Poison", "messageId": "t-poison"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        wait_for(30, || counter(&list(&hub)["ticks"], "dropped:dead_letter")
            == 4),
        "{:?}",
        list(&hub)
    );
    // Two kinds of letter: records the destination refused (the record as sent), and the
    // message the transform failed on (the message, before the chain).
    let letters = hub.dead_letters("stream:ticks");
    let kinds: HashMap<String, String> = letters
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{letters:?}");
    assert_eq!(kinds["t-poison"], "transform", "{letters:?}");
    for i in 0..3 {
        assert_eq!(kinds[&format!("t-{i}")], "track", "{letters:?}");
    }

    // The operator fixes both (the destination recovers; the transform config no longer
    // fails) and, meanwhile, the stream's filter now leaves out t-1. A replay applies the
    // stream as it is now: t-1 is dropped, the rest arrive, the poison through the transform.
    sink.set_faults(Faults::default());
    let text = std::fs::read_to_string(&hub.config)
        .unwrap()
        .replace(
            "mode = \"fail-on\", event = \"Poison\"",
            "mode = \"tag\", tag = \"replayed\"",
        )
        .replace(
            "max_attempts = 2\n",
            "max_attempts = 2\nfilter = \"event.messageId != 't-1'\"\n",
        );
    hub.reload(&text);
    let out = ok(&hub.cli(&["dlq", "replay", "stream:ticks"]));
    assert!(
        out.contains("4 dead letters replayed — sent 3, dropped 1, dead-lettered again 0"),
        "{out}"
    );
    let arrived: HashMap<String, Value> = sink.with(|s| s.events.iter().cloned().collect());
    let keys: HashSet<&str> = arrived.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        HashSet::from(["t-0", "t-2", "t-poison"]),
        "{arrived:?}"
    );
    assert_eq!(
        arrived["t-poison"]["properties"]["trail"],
        json!(["replayed"]),
        "the poison went through the transform as it is now: {:?}",
        arrived["t-poison"]
    );
    assert!(hub.dead_letters("stream:ticks").is_empty());
    let status = &list(&hub)["ticks"];
    assert_eq!(counter(status, "replayed"), 4, "{status}");
    assert_eq!(
        counter(status, "in"),
        4,
        "a replay reads no new messages: {status}"
    );
    assert_eq!(counter(status, "out"), 3, "{status}");
    assert_eq!(counter(status, "dropped:filter"), 1, "{status}");

    // Nothing left: a second replay sends nothing; the admin API says the same, and the
    // syncs' replay route points at it.
    let out = ok(&hub.cli(&["dlq", "replay", "stream:ticks"]));
    assert!(out.contains("0 dead letters replayed"), "{out}");
    let bearer = format!("Bearer {}", common::hub::ADMIN_TOKEN);
    let r = hub.request(
        "POST",
        "/v1/streams/ticks/replay",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["letters"], 0, "{}", r.text());
    let r = hub.request(
        "POST",
        "/v1/streams/nope/replay",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = hub.request(
        "POST",
        "/v1/dead-letters/replay?sync=stream:ticks",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("/v1/streams/ticks/replay"),
        "{}",
        r.text()
    );
    let audit = hub.admin_get("/v1/audit");
    assert!(
        audit.text().contains("stream:ticks"),
        "the API replay is audited: {}",
        audit.text()
    );
}

#[test]
fn streams_sigkill_mid_stream_loses_nothing_and_resends_at_most_the_batch_in_flight() {
    sigkill_mid_stream(Db::Sqlite);
}

/// On PostgreSQL the sequence numbers come from an advisory lock and the cursor commits are
/// `synchronous_commit = off`: the same guarantees, by other means.
#[test]
fn streams_sigkill_mid_stream_on_postgres() {
    sigkill_mid_stream(Db::Postgres);
}

fn sigkill_mid_stream(db: Db) {
    let sink = JsonSink::start();
    // Once 60 events are in, the sink takes the next batch but holds its answer: that batch is
    // surely in flight (delivered, not acknowledged to the hub) when the hub is killed.
    sink.set_faults(Faults {
        hold_after: Some(60),
        hang_for: Duration::from_secs(120),
        ..Faults::default()
    });
    let project = format!(
        "{}\n[[streams]]\nname = \"ticks\"\nto = \"sink\"\nbatch_size = 10\n",
        sink_destination("sink", &sink)
    );
    let mut hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["json-post-destination"]);
    hub.kill();
    hub.spawn();
    // Every event acknowledged (200) before the kill.
    send_numbered(&hub, "k", 0, 300);
    assert!(
        wait_for(30, || sink.with(|s| !s.held.is_empty())),
        "the stream never reached the held batch: {} events in",
        sink.with(|s| s.events.len())
    );
    let status = &list(&hub)["ticks"];
    hub.kill();
    let (before, held) = sink.with(|s| (s.events.len(), s.held.clone()));
    println!(
        "SIGKILL with {before} of 300 at the destination, a batch of {} in flight ({status})",
        held.len()
    );
    assert!(before < 300, "everything went out before the kill");
    assert_eq!(held.len(), 10, "the batch in flight is one batch");
    assert!(
        counter(status, "out") <= before as i64 - 10,
        "the held batch is not committed: {status}"
    );
    sink.set_faults(Faults::default());
    hub.spawn();
    assert!(
        wait_for(60, || {
            sink.with(|s| s.events.iter().map(|e| &e.0).collect::<HashSet<_>>().len()) >= 300
        }),
        "not every acknowledged event arrived after the restart: {} of 300",
        sink.with(|s| s.events.iter().map(|e| &e.0).collect::<HashSet<_>>().len())
    );
    std::thread::sleep(Duration::from_millis(300));
    let (events, resent) = sink.with(|s| {
        (
            s.events.clone(),
            s.resent_after_ack
                .iter()
                .map(|(_, k)| k.clone())
                .collect::<Vec<_>>(),
        )
    });
    println!("after the restart: {} re-sent: {resent:?}", resent.len());
    // The held batch was taken by the destination but never committed by the hub: it comes
    // again, and nothing else does.
    let mut resent_sorted = resent.clone();
    resent_sorted.sort();
    let mut held_sorted = held.clone();
    held_sorted.sort();
    assert_eq!(
        resent_sorted, held_sorted,
        "re-sent exactly the batch in flight"
    );
    assert_eq!(
        events.len(),
        300 + resent.len(),
        "each event once, plus the re-sent batch"
    );
    // In order per profile: each user's events arrive in the order they were sent (a re-sent
    // batch repeats a run the user already had, so compare first arrivals).
    let mut first_seen = HashSet::new();
    let mut last_n: HashMap<String, i64> = HashMap::new();
    for (key, fields) in &events {
        if !first_seen.insert(key.clone()) {
            continue;
        }
        let user = fields["userId"].as_str().unwrap().to_string();
        let n = fields["properties"]["n"].as_i64().unwrap();
        if let Some(prev) = last_n.insert(user.clone(), n) {
            assert!(prev < n, "{user}: event {n} arrived after {prev}");
        }
    }
    let status = &list(&hub)["ticks"];
    assert_eq!(
        counter(status, "in"),
        300,
        "each event counted once: {status}"
    );
    assert_eq!(counter(status, "out"), 300, "{status}");
}

#[test]
fn streams_a_failing_hanging_destination_does_not_delay_another_stream() {
    let broken = JsonSink::start();
    let healthy = JsonSink::start();
    // Every request to the broken destination fails: half with a 500 at once, half hanging
    // for 10 s before a 504.
    broken.set_faults(Faults {
        error: 0.5,
        hang: 0.5,
        hang_for: Duration::from_secs(10),
        ..Faults::default()
    });
    let project = format!(
        "{}\n{}\n[[streams]]\nname = \"to-broken\"\nto = \"broken\"\n\n\
         [[streams]]\nname = \"to-healthy\"\nto = \"healthy\"\n",
        sink_destination("broken", &broken),
        sink_destination("healthy", &healthy)
    );
    let mut hub = Hub::start_project(Db::Sqlite, "", &project, &[]);
    hub.install(&["json-post-destination"]);
    hub.kill();
    hub.spawn();
    let mut latencies = Vec::new();
    for i in 0..40 {
        let id = format!("iso-{i}");
        let r = hub.track(
            "track",
            json!({"userId": "u1", "event": "Tick", "messageId": id, "properties": {"n": i}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let acked = Instant::now();
        assert!(
            wait_for(10, || healthy.with(|s| s.events.iter().any(|e| e.0 == id))),
            "{id} never reached the healthy destination"
        );
        latencies.push(acked.elapsed());
        std::thread::sleep(Duration::from_millis(25));
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    println!("healthy stream, from 200 to the destination: p50 {p50:?}, max {max:?}");
    assert!(
        broken.with(|s| s.failed + s.hung) > 0,
        "the broken destination was never called"
    );
    // The broken one hangs for 10 s a call: any sharing would show here.
    assert!(
        max < Duration::from_secs(2),
        "the healthy stream waited {max:?} for an event"
    );
    assert!(p50 < Duration::from_millis(250), "p50 {p50:?}");
    let status = &list(&hub)["to-healthy"];
    assert_eq!(counter(status, "out"), 40, "{status}");
}
