//! The `webhook` (Standard Webhooks) and `slack` (incoming webhook) destinations through the real
//! hub binary, against faithful fakes: what lands, how failures map to per-record results, that
//! bad credentials fail `check`, that logs leak neither secrets nor identifiers, and that the
//! fakes themselves refuse what the real receivers refuse.

use crate::common;

use crate::fakes::slack as slack_fake;
use crate::fakes::webhook as webhook_fake;

use std::path::Path;
use std::process::Output;

use common::hub::request;
use common::ok;
use common::{failed, install_plugin as install, lines, switchyard};

/// 32 random-looking bytes, base64, as Standard Webhooks secrets are.
const SECRET: &str = "whsec_c3dpdGNoeWFyZC10ZXN0LXNpZ25pbmcta2V5LTMyYg==";
const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HOOK: &str = "/services/T0001/B0002/s3cretT0kenPart9f8e7d";

fn records_file(dir: &Path, name: &str, records: &[serde_json::Value]) -> String {
    let path = dir.join(name);
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

// ---------------------------------------------------------------- webhook

struct WebhookRun<'a> {
    dir: &'a Path,
    fake: &'a webhook_fake::Fake,
}

impl WebhookRun<'_> {
    fn args(&self, cmd: &str, secret: &str, config: serde_json::Value) -> Vec<String> {
        let hp = self.fake.host_port();
        vec![
            "plugin".into(),
            cmd.into(),
            "webhook".into(),
            "--config".into(),
            config.to_string(),
            "--secret".into(),
            format!("signing_secret={secret}"),
            "--allow-host".into(),
            hp.clone(),
            "--allow-private".into(),
            hp,
        ]
    }

    fn deliver(
        &self,
        secret: &str,
        action: &str,
        records: &[serde_json::Value],
        log: &str,
    ) -> Output {
        let mut args = self.args(
            "deliver",
            secret,
            serde_json::json!({"url": self.fake.url("/hooks/switchyard")}),
        );
        let file = records_file(self.dir, &format!("{action}.jsonl"), records);
        args.extend(["--action".into(), action.into(), "--records".into(), file]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard(self.dir, &refs, log)
    }

    fn check(&self, secret: &str, config: serde_json::Value) -> Output {
        let args = self.args("check", secret, config);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard(self.dir, &refs, "warn")
    }
}

#[test]
fn webhook_delivers_signed_batches_the_receiver_verifies() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let records = [
        serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com", "plan": "pro"}}),
        serde_json::json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
        serde_json::json!({"key": "p3", "fields": "not an object"}),
    ];
    let results = lines(&ok(&run.deliver(SECRET, "upsert", &records, "warn")));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["result"], "ok", "{results:?}");
    assert_eq!(results[1]["result"], "ok");
    assert_eq!(results[2]["result"], "rejected");
    assert_eq!(results[2]["reason"], "fields are not a JSON object");

    let messages = fake.messages();
    assert_eq!(messages.len(), 1, "one batch, one signed message");
    let m = &messages[0];
    assert_eq!(m.path, "/hooks/switchyard");
    assert!(m.id.starts_with("msg_"), "{}", m.id);
    assert_eq!(
        m.signature,
        webhook_fake::sign(SECRET, &m.id, m.timestamp, &m.raw),
        "the fake verified this signature over the raw body"
    );
    assert_eq!(m.body["type"], "switchyard.upsert");
    assert_eq!(m.body["data"]["action"], "upsert");
    let sent = m.body["data"]["records"].as_array().unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["key"], "p1");
    assert_eq!(sent[0]["fields"]["plan"], "pro");
    assert_eq!(sent[1]["fields"]["email"], "bob@example.com");

    // Deletes and events are their own message types.
    let deleted = lines(&ok(&run.deliver(SECRET, "delete", &records[..1], "warn")));
    assert_eq!(deleted[0]["result"], "ok");
    let track = [serde_json::json!({"key": "e1", "fields": {
        "event": "Order Completed", "email": "ada@example.com", "properties": {"total": 42}}})];
    let tracked = lines(&ok(&run.deliver(SECRET, "track", &track, "warn")));
    assert_eq!(tracked[0]["result"], "ok");
    let messages = fake.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1].body["type"], "switchyard.delete");
    assert_eq!(messages[1].body["data"]["records"][0]["key"], "p1");
    assert_eq!(messages[2].body["type"], "switchyard.track");
    assert_eq!(
        messages[2].body["data"]["records"][0]["fields"]["properties"]["total"],
        42
    );
    assert_ne!(messages[1].id, messages[0].id);

    // The same events again (a retry after a lost answer) carry the same webhook-id: the
    // receiver acknowledges them and does not apply them twice.
    let again = lines(&ok(&run.deliver(SECRET, "track", &track, "warn")));
    assert_eq!(again[0]["result"], "ok");
    assert_eq!(fake.messages().len(), 3);
    assert_eq!(fake.duplicates(), 1);

    // The same upsert again is a new state change (p1 was deleted in between): a receiver
    // deduplicating on webhook-id must apply it, so it gets a new id.
    let again = lines(&ok(&run.deliver(SECRET, "upsert", &records[..1], "warn")));
    assert_eq!(again[0]["result"], "ok");
    let messages = fake.messages();
    assert_eq!(messages.len(), 4, "the re-added record was applied");
    assert_eq!(messages[3].body["type"], "switchyard.upsert");
    assert_ne!(messages[3].id, messages[0].id);
    assert_eq!(fake.duplicates(), 1);
}

#[test]
fn webhook_maps_throttling_server_errors_and_rejections() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let records = [
        serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com"}}),
        serde_json::json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
    ];

    fake.fail_next(1, 429, &[("retry-after", "7")], "slow down");
    let results = lines(&ok(&run.deliver(SECRET, "upsert", &records, "warn")));
    for r in &results {
        assert_eq!(r["result"], "retry", "{results:?}");
        assert_eq!(r["after_ms"], 7000);
    }

    fake.fail_next(1, 503, &[], "maintenance");
    let results = lines(&ok(&run.deliver(SECRET, "upsert", &records, "warn")));
    assert_eq!(results[0]["result"], "retry");
    assert!(results[0]["reason"].as_str().unwrap().contains("503"));

    fake.fail_next(
        1,
        422,
        &[("content-type", "application/json")],
        r#"{"message":"unknown plan tier"}"#,
    );
    let results = lines(&ok(&run.deliver(SECRET, "upsert", &records, "warn")));
    assert_eq!(results[0]["result"], "rejected");
    assert_eq!(results[0]["reason"], "HTTP 422: unknown plan tier");
    assert_eq!(results[1]["reason"], "HTTP 422: unknown plan tier");

    // After the faults the receiver accepts the batch.
    let results = lines(&ok(&run.deliver(SECRET, "upsert", &records, "warn")));
    assert!(results.iter().all(|r| r["result"] == "ok"), "{results:?}");
    assert_eq!(fake.messages().len(), 1);
}

#[test]
fn webhook_410_gone_stops_delivery_to_the_endpoint() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let records = [serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com"}})];
    // Standard Webhooks: 410 means "disable the webhook endpoint, and stop sending it messages".
    fake.fail_next(1, 410, &[], "endpoint disabled");
    let err = failed(&run.deliver(SECRET, "upsert", &records, "warn"));
    assert!(
        err.contains("invalid config: HTTP 410") && err.contains("endpoint disabled"),
        "a 410 fails the call (the sync stops), it does not reject the records: {err}"
    );
    fake.fail_next(1, 410, &[], "endpoint disabled");
    let ping = serde_json::json!({"url": fake.url("/hooks/switchyard"), "ping_on_check": true});
    let err = failed(&run.check(SECRET, ping));
    assert!(err.contains("invalid config: HTTP 410"), "{err}");
}

#[test]
fn webhook_retried_changes_keep_their_id_and_later_changes_get_new_ones() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let fields = serde_json::json!({"email": "ada@example.com"});
    let deliver = |delivery_id: &str, action: &str| {
        let records =
            [serde_json::json!({"key": "p1", "delivery_id": delivery_id, "fields": fields})];
        let mut args = run.args(
            "deliver",
            SECRET,
            serde_json::json!({"url": fake.url("/hooks/switchyard")}),
        );
        let file = records_file(dir.path(), "changes.jsonl", &records);
        args.extend(["--action".into(), action.into(), "--records".into(), file]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        lines(&ok(&switchyard(dir.path(), &refs, "warn")))
    };
    // The receiver applies the batch but its answer is lost (500): the hub retries the change.
    fake.accept_then_fail(1, 500, "timed out after commit");
    assert_eq!(deliver("dlv_change1", "upsert")[0]["result"], "retry");
    assert_eq!(deliver("dlv_change1", "upsert")[0]["result"], "ok");
    let ids = fake.attempt_ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ids[0], ids[1],
        "a resent message keeps its webhook-id (the spec's idempotency key)"
    );
    assert_eq!(fake.messages().len(), 1, "the receiver applied it once");
    assert_eq!(fake.duplicates(), 1);
    let record = &fake.messages()[0].body["data"]["records"][0];
    assert_eq!(record["delivery_id"], "dlv_change1");
    assert_eq!(record["fields"]["email"], "ada@example.com");
    // A delete of the same record is another message.
    assert_eq!(deliver("dlv_change2", "delete")[0]["result"], "ok");
    assert_eq!(fake.messages().len(), 2);
    // The record re-joins with identical fields: a new change, a new id, applied again.
    assert_eq!(deliver("dlv_change3", "upsert")[0]["result"], "ok");
    assert_eq!(fake.messages().len(), 3);
    assert_eq!(fake.duplicates(), 1);
}

#[test]
fn webhook_wrong_secret_fails_check_and_delivery() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let url = fake.url("/hooks/switchyard");

    // A signed ping with the right secret passes; with another secret the receiver says 401.
    let ping = serde_json::json!({"url": url, "ping_on_check": true});
    ok(&run.check(SECRET, ping.clone()));
    let err = failed(&run.check(OTHER_SECRET, ping));
    assert!(
        err.contains("unauthorized") && err.contains("no matching signature"),
        "{err}"
    );
    assert!(fake
        .messages()
        .iter()
        .all(|m| m.body["type"] == "switchyard.ping"));

    // Without the ping, check verifies the secret's format and that the URL answers (405).
    ok(&run.check(SECRET, serde_json::json!({"url": url})));
    let err = failed(&run.check("whsec_c2hvcnQ=", serde_json::json!({"url": url})));
    assert!(err.contains("24 to 64 bytes"), "{err}");
    assert!(!err.contains("c2hvcnQ"), "the secret is not echoed: {err}");
    let err = failed(&run.check(
        SECRET,
        serde_json::json!({"url": fake.url("/hooks/switchyard"), "nope": 1}),
    ));
    assert!(
        err.contains("nope"),
        "unknown config fields are refused: {err}"
    );

    let out = run.deliver(
        OTHER_SECRET,
        "upsert",
        &[serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com"}})],
        "warn",
    );
    let err = failed(&out);
    assert!(err.contains("unauthorized") && err.contains("401"), "{err}");
    assert_eq!(
        fake.messages()
            .iter()
            .filter(|m| m.body["type"] == "switchyard.upsert")
            .count(),
        0
    );
}

#[test]
fn webhook_logs_contain_neither_the_secret_nor_the_fields() {
    let fake = webhook_fake::start_in_background(SECRET);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "webhook");
    let run = WebhookRun {
        dir: dir.path(),
        fake: &fake,
    };
    let out = run.deliver(
        SECRET,
        "upsert",
        &[serde_json::json!({"key": "p1", "fields": {"email": "ada.lovelace@example.com"}})],
        "debug",
    );
    ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("webhook msg_"), "debug logs are on: {logs}");
    let key_part = SECRET.trim_start_matches("whsec_");
    assert!(!logs.contains(key_part), "secret in logs: {logs}");
    assert!(!logs.contains("ada.lovelace"), "identifier in logs: {logs}");
    assert!(
        !logs.contains(&fake.messages()[0].signature[3..]),
        "signature in logs"
    );
}

#[test]
fn webhook_fake_refuses_what_a_verifying_receiver_refuses() {
    let fake = webhook_fake::start_in_background(SECRET);
    let addr = fake.host_port();
    let body = br#"{"type":"test.event","data":{"x":1}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        request(&addr, "POST", "/in", headers, body).expect("request to the fake")
    };
    let ts = now.to_string();
    let good = webhook_fake::sign(SECRET, "msg_1", now, body);

    // Missing headers.
    let r = post(&[("webhook-id", "msg_1"), ("webhook-timestamp", &ts)], body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("missing required headers"));
    // Wrong signature: the spec suite's known-bad value, and one signed with another key.
    let r = post(
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
            ),
        ],
        body,
    );
    assert_eq!(r.status, 401);
    assert!(r.text().contains("no matching signature"));
    let other = webhook_fake::sign(OTHER_SECRET, "msg_1", now, body);
    let r = post(
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &other),
        ],
        body,
    );
    assert_eq!(r.status, 401);
    // A signature over different bytes (re-serialised JSON) does not verify.
    let r = post(
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &good),
        ],
        br#"{"type": "test.event", "data": {"x": 1}}"#,
    );
    assert_eq!(r.status, 401);
    // Stale and future timestamps, correctly signed.
    for skew in [-301, 301] {
        let t = now + skew;
        let sig = webhook_fake::sign(SECRET, "msg_1", t, body);
        let r = post(
            &[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &t.to_string()),
                ("webhook-signature", &sig),
            ],
            body,
        );
        assert_eq!(r.status, 401, "skew {skew}");
        assert!(r.text().contains("tolerance"));
    }
    // Signed but not JSON.
    let sig = webhook_fake::sign(SECRET, "msg_2", now, b"hello");
    let r = post(
        &[
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        b"hello",
    );
    assert_eq!(r.status, 400);
    assert!(fake.messages().is_empty(), "nothing refused was stored");

    // A valid message (with a rotated-out key listed first) is accepted once; its id again is
    // acknowledged as a duplicate.
    let sigs = format!("{other} {good}");
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sigs.as_str()),
    ];
    assert_eq!(post(&headers, body).status, 204);
    assert_eq!(post(&headers, body).status, 200);
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.duplicates(), 1);
    assert_eq!(request(&addr, "GET", "/in", &[], b"").unwrap().status, 405);
}

// ---------------------------------------------------------------- slack

fn slack_args(
    cmd: &str,
    fake: &slack_fake::Fake,
    hook: &str,
    config: serde_json::Value,
) -> Vec<String> {
    vec![
        "plugin".into(),
        cmd.into(),
        "slack".into(),
        "--config".into(),
        config.to_string(),
        "--secret".into(),
        format!("webhook_url=https://hooks.slack.com{hook}"),
        "--reroute".into(),
        format!("hooks.slack.com=http://{}", fake.host_port()),
        "--allow-private".into(),
        fake.host_port(),
    ]
}

fn slack_deliver(
    dir: &Path,
    fake: &slack_fake::Fake,
    config: serde_json::Value,
    action: &str,
    records: &[serde_json::Value],
    log: &str,
) -> Output {
    let mut args = slack_args("deliver", fake, HOOK, config);
    let file = records_file(dir, &format!("slack-{action}.jsonl"), records);
    args.extend(["--action".into(), action.into(), "--records".into(), file]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    switchyard(dir, &refs, log)
}

fn slack_check(dir: &Path, fake: &slack_fake::Fake, hook: &str) -> Output {
    let args = slack_args("check", fake, hook, serde_json::json!({"template": "x"}));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    switchyard(dir, &refs, "warn")
}

#[test]
fn slack_posts_one_escaped_message_per_record() {
    let fake = slack_fake::start_in_background(&[HOOK]);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "slack");
    let config = serde_json::json!({
        "template": "New VIP: {{first_name|someone}} ({{email}}) on <https://app.example.com|{{plan}}>",
        "delete_template": "{{email}} left the VIPs",
        "channel": "#alerts",
        "icon_emoji": ":star:"
    });
    let records = [
        serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}}),
        serde_json::json!({"key": "p2", "fields": {"email": "bob@example.com", "first_name": "<!channel> & co", "plan": "free"}}),
        serde_json::json!({"key": "p3", "fields": {"first_name": ""}}),
    ];
    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        config.clone(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["result"], "ok", "{results:?}");
    assert_eq!(results[1]["result"], "ok");
    // p3 renders to text anyway (fallback), so it is posted too.
    assert_eq!(results[2]["result"], "ok");
    let posted = fake.posted();
    assert_eq!(posted.len(), 3, "one message per record");
    assert_eq!(posted[0].path, HOOK);
    assert_eq!(
        posted[0].body["text"],
        "New VIP: Ada (ada@example.com) on <https://app.example.com|pro>"
    );
    assert_eq!(
        posted[1].body["text"],
        "New VIP: &lt;!channel&gt; &amp; co (bob@example.com) on <https://app.example.com|free>"
    );
    assert_eq!(
        posted[2].body["text"],
        "New VIP: someone () on <https://app.example.com|>"
    );
    assert_eq!(posted[0].body["channel"], "#alerts");
    assert_eq!(posted[0].body["icon_emoji"], ":star:");
    assert_eq!(posted[0].body["unfurl_links"], false);

    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        config,
        "delete",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(
        fake.posted()[3].body["text"],
        "ada@example.com left the VIPs"
    );

    // Without a delete_template an exit is acknowledged and nothing is posted; an event uses
    // the template with nested properties.
    let config = serde_json::json!({"template": "{{event}}: {{properties.total}} by {{email}}"});
    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        config.clone(),
        "delete",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(fake.posted().len(), 4);
    let event = [serde_json::json!({"key": "e1", "fields": {
        "event": "Order Completed", "email": "ada@example.com", "properties": {"total": 99.5}}})];
    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        config,
        "track",
        &event,
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(
        fake.posted()[4].body["text"],
        "Order Completed: 99.5 by ada@example.com"
    );
}

#[test]
fn slack_maps_rejections_throttling_and_bad_webhooks() {
    let fake = slack_fake::start_in_background(&[HOOK]);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "slack");
    let config = serde_json::json!({"template": "Hello {{email}}"});
    let records = [
        serde_json::json!({"key": "p1", "fields": {"email": "ada@example.com"}}),
        serde_json::json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
        serde_json::json!({"key": "p3", "fields": {"email": "cy@example.com"}}),
    ];
    // p1 refused by Slack, p2 throttled, p3 posted.
    fake.fail_next(1, 400, &[], "invalid_payload");
    fake.fail_next(1, 429, &[("retry-after", "3")], "rate_limited");
    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        config.clone(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(results[0]["result"], "rejected", "{results:?}");
    assert_eq!(results[0]["reason"], "HTTP 400: invalid_payload");
    assert_eq!(results[1]["result"], "retry");
    assert_eq!(results[1]["after_ms"], 3000);
    assert_eq!(results[2]["result"], "ok");
    assert_eq!(fake.posted().len(), 1);

    // A template that renders nothing is refused before Slack would say no_text.
    let results = lines(&ok(&slack_deliver(
        dir.path(),
        &fake,
        serde_json::json!({"template": "{{missing}}"}),
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "rejected");
    assert!(results[0]["reason"].as_str().unwrap().contains("empty"));

    // A channel the workspace does not have fails the call as a config error.
    let err = failed(&slack_deliver(
        dir.path(),
        &fake,
        serde_json::json!({"template": "x {{email}}", "channel": "#nope"}),
        "upsert",
        &records[..1],
        "warn",
    ));
    assert!(err.contains("channel_not_found"), "{err}");

    // check: a live webhook passes (Slack answers no_text to the empty probe and posts nothing);
    // a wrong token or a revoked webhook fails as unauthorized.
    let before = fake.posted().len();
    ok(&slack_check(dir.path(), &fake, HOOK));
    assert_eq!(fake.posted().len(), before, "check posts nothing");
    let err = failed(&slack_check(
        dir.path(),
        &fake,
        "/services/T0001/B0002/wrongTokenPart",
    ));
    assert!(
        err.contains("unauthorized") && err.contains("invalid_token"),
        "{err}"
    );
    assert!(
        !err.contains("wrongTokenPart"),
        "the URL is not echoed: {err}"
    );
    fake.revoke(HOOK);
    let err = failed(&slack_check(dir.path(), &fake, HOOK));
    assert!(
        err.contains("unauthorized") && err.contains("no_service"),
        "{err}"
    );
    let err = failed(&slack_deliver(
        dir.path(),
        &fake,
        config,
        "upsert",
        &records[..1],
        "warn",
    ));
    assert!(err.contains("no_service"), "{err}");

    // A webhook URL that is not Slack's is refused without a request.
    let requests = fake.requests();
    let mut args = slack_args("check", &fake, HOOK, serde_json::json!({"template": "x"}));
    args[6] = "webhook_url=https://evil.example.com/services/x".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failed(&switchyard(dir.path(), &refs, "warn"));
    assert!(
        err.contains("hooks.slack.com") && !err.contains("evil"),
        "{err}"
    );
    assert_eq!(fake.requests(), requests);
}

#[test]
fn slack_logs_contain_neither_the_webhook_url_nor_the_fields() {
    let fake = slack_fake::start_in_background(&[HOOK]);
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "slack");
    let out = slack_deliver(
        dir.path(),
        &fake,
        serde_json::json!({"template": "Hello {{email}}"}),
        "upsert",
        &[serde_json::json!({"key": "p1", "fields": {"email": "ada.lovelace@example.com"}})],
        "debug",
    );
    let results = lines(&ok(&out));
    assert_eq!(results[0]["result"], "ok");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("slack message 1"),
        "debug logs are on: {logs}"
    );
    assert!(
        !logs.contains("s3cretT0kenPart"),
        "webhook URL in logs: {logs}"
    );
    assert!(!logs.contains("ada.lovelace"), "identifier in logs: {logs}");
}

#[test]
fn slack_fake_refuses_what_slack_refuses() {
    let fake = slack_fake::start_in_background(&[HOOK]);
    let addr = fake.host_port();
    let json = [("content-type", "application/json")];
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        request(&addr, "POST", path, headers, body.as_bytes()).expect("request to the fake")
    };

    let r = post(HOOK, &json, "{not json");
    assert_eq!((r.status, r.text().as_str()), (400, "invalid_payload"));
    let r = post(HOOK, &json, "[1,2]");
    assert_eq!((r.status, r.text().as_str()), (400, "invalid_payload"));
    let r = post(HOOK, &[("content-type", "text/plain")], r#"{"text":"hi"}"#);
    assert_eq!((r.status, r.text().as_str()), (400, "invalid_payload"));
    let r = post(HOOK, &json, "{}");
    assert_eq!((r.status, r.text().as_str()), (400, "no_text"));
    let r = post(HOOK, &json, r#"{"text":"  "}"#);
    assert_eq!((r.status, r.text().as_str()), (400, "no_text"));
    let r = post("/services/T9/B9/nothing", &json, r#"{"text":"hi"}"#);
    assert_eq!((r.status, r.text().as_str()), (404, "no_service"));
    let r = post("/services/T0001/B0002/wrong", &json, r#"{"text":"hi"}"#);
    assert_eq!((r.status, r.text().as_str()), (403, "invalid_token"));
    let r = post(HOOK, &json, r##"{"text":"hi","channel":"#nope"}"##);
    assert_eq!((r.status, r.text().as_str()), (404, "channel_not_found"));
    assert!(fake.posted().is_empty(), "nothing refused was posted");

    let r = post(HOOK, &json, r##"{"text":"hi","channel":"#general"}"##);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    let r = post(HOOK, &json, r#"{"blocks":[{"type":"section"}]}"#);
    assert_eq!(r.status, 200, "blocks without text are a message");
    assert_eq!(fake.posted().len(), 2);
}

// ---------------------------------------------------------------- syncs through the hub

mod syncs {
    //! Both plugins driven by real syncs of a running hub: profiles and events in through the
    //! tracking API, `switchyard sync run`, run history and dead letters from the CLI.

    use std::time::{Duration, Instant};

    use super::common::hub::{run_counts, Db, Hub};
    use super::*;
    use serde_json::{json, Value};

    const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";

    fn order(hub: &Hub, user: &str, id: &str, total: f64) {
        let r = hub.track(
            "track",
            json!({"userId": user, "event": "Order Completed", "messageId": id,
                                          "properties": {"order_id": id, "total": total}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Waits until events received at `since` are old enough for an events sync (2 s).
    fn settle(since: Instant) {
        let wait = Duration::from_millis(2200).saturating_sub(since.elapsed());
        std::thread::sleep(wait);
    }

    /// Records of every accepted webhook message of a type, by key.
    fn records_of(fake: &webhook_fake::Fake, kind: &str) -> Vec<Value> {
        fake.messages()
            .into_iter()
            .filter(|m| m.body["type"] == kind)
            .flat_map(|m| {
                m.body["data"]["records"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn webhook_sync_mirrors_an_audience_backs_off_and_dead_letters_rejections() {
        let fake = webhook_fake::start_in_background(SECRET);
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.crm_hook]\nplugin = \"webhook\"\n\
             config = {{ url = \"{url}\", type_prefix = \"acme\" }}\n\
             secrets = {{ signing_secret = \"${{CRM_WEBHOOK_SECRET}}\" }}\n\
             allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\nconcurrency = 1\n\n\
             [[syncs]]\nname = \"vip-to-crm\"\nfrom = {{ audience = \"vip\" }}\nto = \"crm_hook\"\nmode = \"mirror\"\nbatch_size = 1\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\nplan = \"traits.plan\"\n\n\
             [[syncs]]\nname = \"orders-to-crm\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"crm_hook\"\nmode = \"events\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nevent = \"event.name\"\ntotal = \"event.properties.total\"\n",
            url = fake.url("/hooks/switchyard"),
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[
                ("SWITCHYARD_RETRY_BASE_MS", "50"),
                ("CRM_WEBHOOK_SECRET", SECRET),
            ],
        );
        hub.install(&["webhook"]);
        hub.identify(
            "u1",
            json!({"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}),
        );
        hub.identify(
            "u2",
            json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"}),
        );
        hub.identify(
            "u3",
            json!({"email": "cy@example.com", "first_name": "Cy", "plan": "free"}),
        );
        order(&hub, "u1", "o-1", 42.5);
        order(&hub, "u3", "o-2", 7.0);
        let ordered = Instant::now();

        // The receiver throttles the first message: the run waits out Retry-After and completes.
        fake.fail_next(1, 429, &[("retry-after", "1")], "slow down");
        let started = Instant::now();
        let r = hub.run_sync("vip-to-crm");
        assert_eq!(run_counts(&r), ("succeeded", 2, 1, 0), "{r}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After honoured"
        );
        let mut upserts = records_of(&fake, "acme.upsert");
        upserts.sort_by_key(|r| r["fields"]["email"].as_str().map(str::to_string));
        assert_eq!(upserts.len(), 2, "{upserts:?}");
        assert_eq!(
            upserts[0]["fields"],
            json!({"email": "ada@example.com", "first_name": "Ada", "plan": "pro"})
        );
        assert_eq!(upserts[1]["fields"]["email"], "bob@example.com");

        // The receiver refuses one record: it is dead-lettered with the receiver's message.
        hub.identify("u4", json!({"email": "dee@example.com", "plan": "pro"}));
        hub.identify("u5", json!({"email": "eve@example.com", "plan": "pro"}));
        fake.fail_next(
            1,
            422,
            &[("content-type", "application/json")],
            r#"{"message":"unknown plan tier"}"#,
        );
        let r = hub.run_sync("vip-to-crm");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-crm");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            dead[0]["error"], "rejected: HTTP 422: unknown plan tier",
            "{dead:?}"
        );
        assert_eq!(records_of(&fake, "acme.upsert").len(), 3);

        // Mirror: leaving the audience sends the last delivered fields as a delete.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-crm");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        let deletes = records_of(&fake, "acme.delete");
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!(
            deletes[0]["fields"],
            json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"})
        );

        // Joining again re-sends the very same upsert: the receiver must apply it, not take it
        // for a duplicate of the first one.
        hub.identify("u2", json!({"plan": "pro"}));
        let r = hub.run_sync("vip-to-crm");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        let bobs = records_of(&fake, "acme.upsert")
            .into_iter()
            .filter(|r| r["fields"]["email"] == "bob@example.com")
            .count();
        assert_eq!(bobs, 2, "the re-join was applied");
        assert_eq!(fake.duplicates(), 0);

        // Events: each Order Completed once, mapped, signed like every other message.
        settle(ordered);
        let r = hub.run_sync("orders-to-crm");
        assert_eq!(run_counts(&r), ("succeeded", 2, 0, 0), "{r}");
        let mut tracked: Vec<Value> = records_of(&fake, "acme.track")
            .into_iter()
            .map(|r| r["fields"].clone())
            .collect();
        tracked.sort_by_key(|f| f["email"].as_str().map(str::to_string));
        assert_eq!(
            tracked,
            vec![
                json!({"email": "ada@example.com", "event": "Order Completed", "total": 42.5}),
                json!({"email": "cy@example.com", "event": "Order Completed", "total": 7.0}),
            ]
        );
        hub.run_sync("orders-to-crm");
        assert_eq!(records_of(&fake, "acme.track").len(), 2, "each event once");
        assert!(
            fake.refused().is_empty(),
            "every message verified: {:?}",
            fake.refused()
        );
    }

    #[test]
    fn slack_sync_posts_entries_leaves_and_events_backs_off_and_dead_letters_rejections() {
        let fake = slack_fake::start_in_background(&[HOOK]);
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.sales_alerts]\nplugin = \"slack\"\n\
             config = {{ template = \"New VIP: {{{{first_name|someone}}}} <{{{{email}}}}>\", delete_template = \"{{{{email}}}} is no longer a VIP\" }}\n\
             secrets = {{ webhook_url = \"https://hooks.slack.com{HOOK}\" }}\n\
             reroute = [\"hooks.slack.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\nconcurrency = 1\n\n\
             [destinations.order_alerts]\nplugin = \"slack\"\n\
             config = {{ template = \"{{{{email}}}} ordered for {{{{total}}}}\" }}\n\
             secrets = {{ webhook_url = \"https://hooks.slack.com{HOOK}\" }}\n\
             reroute = [\"hooks.slack.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
             [[syncs]]\nname = \"vip-to-slack\"\nfrom = {{ audience = \"vip\" }}\nto = \"sales_alerts\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\n\n\
             [[syncs]]\nname = \"orders-to-slack\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"order_alerts\"\nmode = \"events\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nevent = \"event.name\"\ntotal = \"event.properties.total\"\n",
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "50")],
        );
        hub.install(&["slack"]);
        hub.identify(
            "u1",
            json!({"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}),
        );
        hub.identify("u2", json!({"email": "bob@example.com", "plan": "pro"}));
        hub.identify(
            "u3",
            json!({"email": "cy@example.com", "first_name": "Cy", "plan": "free"}),
        );
        order(&hub, "u3", "o-1", 99.5);
        let ordered = Instant::now();
        let texts = |fake: &slack_fake::Fake| {
            let mut t: Vec<String> = fake
                .posted()
                .iter()
                .map(|p| p.body["text"].as_str().unwrap().to_string())
                .collect();
            t.sort();
            t
        };

        // Slack rate-limits the first message (429 + Retry-After): retried, then both posted.
        fake.fail_next(1, 429, &[("retry-after", "1")], "rate_limited");
        let r = hub.run_sync("vip-to-slack");
        assert_eq!(run_counts(&r), ("succeeded", 2, 1, 0), "{r}");
        assert_eq!(
            texts(&fake),
            vec![
                "New VIP: Ada <ada@example.com>".to_string(),
                "New VIP: someone <bob@example.com>".to_string(),
            ]
        );

        // Slack refuses one message: that record is dead-lettered with Slack's error.
        hub.identify(
            "u4",
            json!({"email": "dee@example.com", "first_name": "Dee", "plan": "pro"}),
        );
        hub.identify(
            "u5",
            json!({"email": "eve@example.com", "first_name": "Eve", "plan": "pro"}),
        );
        fake.fail_next(1, 400, &[], "invalid_blocks");
        let r = hub.run_sync("vip-to-slack");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-slack");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["error"], "rejected: HTTP 400: invalid_blocks");
        assert_eq!(fake.posted().len(), 3);

        // Mirror: leaving the audience posts the delete template.
        hub.identify("u1", json!({"plan": "free"}));
        hub.run_sync("vip-to-slack");
        assert_eq!(
            fake.posted().last().unwrap().body["text"],
            "ada@example.com is no longer a VIP"
        );

        // Events: one message per Order Completed, once.
        settle(ordered);
        let r = hub.run_sync("orders-to-slack");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert_eq!(
            fake.posted().last().unwrap().body["text"],
            "cy@example.com ordered for 99.5"
        );
        hub.run_sync("orders-to-slack");
        assert_eq!(fake.posted().len(), 5, "each event once");
    }
}
