//! The first-party source plugins (Stripe, Shopify, HubSpot, generic paginated JSON) end to end:
//! the real binary reads their streams from faithful fakes of the APIs (`--reroute` sends the
//! plugin's real API host to the fake), page by page and incrementally from the stored cursor;
//! 429s become retries with the API's wait, bad credentials `unauthorized`; each fake refuses what
//! the real API refuses; webhooks are verified through the host library (there is no webhook CLI).
//!
//! Needs the plugins built first: `tools/build-plugins` (tools/test does it).

mod common;

#[path = "fakes/stripe.rs"]
mod stripe_fake;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::plugin_wasm;
use serde_json::{json, Value};
use switchyard::registry::Registry;
use switchyard::runtime::bindings::{CallError, Page, PluginConfig, WebhookError, WebhookRequest};
use switchyard::runtime::net::{HttpPolicy, Reroute};
use switchyard::runtime::{Limits, PluginError, PluginInstance, Runtime};

// ---------------------------------------------------------------------------------------------
// Helpers: the binary, a raw HTTP client for the fakes, and library instances for webhooks.

fn switchyard(plugins: &Path, args: &[&str]) -> Output {
    switchyard_log(plugins, args, "warn")
}

fn switchyard_log(plugins: &Path, args: &[&str], log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(args)
        .env("SWITCHYARD_LOG", log)
        .output()
        .expect("running switchyard")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "switchyard failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Installs a built plugin into a fresh plugins directory.
fn install(crate_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin_wasm(crate_name);
    ok(&switchyard(dir.path(), &["plugin", "install", wasm.to_str().unwrap()]));
    dir
}

/// The result of `plugin read`: records (stdout) and the final cursor (stderr).
#[derive(Debug)]
struct ReadOut {
    records: Vec<Value>,
    cursor: String,
    stderr: String,
}

/// `switchyard plugin read NAME --stream S [--cursor C] --config .. --secret .. --reroute ..`.
fn read_cli(
    dir: &Path,
    plugin: &str,
    stream: &str,
    cursor: Option<&str>,
    config: &Value,
    secrets: &[String],
    reroute_host: &str,
    fake: &str,
) -> Result<ReadOut, String> {
    read_cli_log(dir, plugin, stream, cursor, config, secrets, reroute_host, fake, "warn")
}

#[allow(clippy::too_many_arguments)]
fn read_cli_log(
    dir: &Path,
    plugin: &str,
    stream: &str,
    cursor: Option<&str>,
    config: &Value,
    secrets: &[String],
    reroute_host: &str,
    fake: &str,
    log: &str,
) -> Result<ReadOut, String> {
    let config = config.to_string();
    let reroute = format!("{reroute_host}=http://{fake}");
    let mut args = vec![
        "plugin", "read", plugin, "--stream", stream, "--config", &config, "--reroute", &reroute,
        "--allow-private", fake,
    ];
    for s in secrets {
        args.push("--secret");
        args.push(s);
    }
    if let Some(c) = cursor {
        args.push("--cursor");
        args.push(c);
    }
    let out = switchyard_log(dir, &args, log);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    let cursor = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cursor: "))
        .unwrap_or_default()
        .to_string();
    Ok(ReadOut {
        records: lines(&String::from_utf8_lossy(&out.stdout)),
        cursor,
        stderr,
    })
}

/// A minimal HTTP/1.1 client, so the fakes' refusals are checked without the plugin in between.
fn raw(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn raw_json(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let (status, _, body) = raw(addr, method, target, headers, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// A configured instance through the host library, as `switchyard plugin read` builds one.
async fn instance(
    crate_name: &str,
    config: Value,
    secrets: &[(&str, &str)],
    reroute: Option<(&str, &str)>,
) -> (tempfile::TempDir, PluginInstance) {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path(), Runtime::new(Limits::default()).unwrap()).unwrap();
    let installed = reg.install(&plugin_wasm(crate_name)).await.unwrap();
    let plugin = reg.load(&installed.name, None).await.unwrap();
    let mut policy_private = Vec::new();
    let mut reroutes = Vec::new();
    if let Some((host, fake)) = reroute {
        reroutes.push(format!("{host}=http://{fake}").parse::<Reroute>().unwrap());
        policy_private.push(fake.to_string());
    }
    let policy = HttpPolicy::new(&plugin.manifest().allowed_hosts, None, &policy_private).with_reroutes(reroutes);
    let config = PluginConfig {
        config: config.to_string(),
        secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    (dir, PluginInstance::new(Arc::clone(&plugin), config, policy))
}

fn webhook_request(headers: &[(&str, &str)], body: &[u8]) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: "/v1/webhooks/src".into(),
        headers: headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect(),
        body: body.to_vec(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The transient error's wait, from a read that failed.
fn transient_after(result: Result<Page, PluginError>) -> Option<u64> {
    match result {
        Err(PluginError::Plugin { error: CallError::Transient(r), .. }) => r.after_ms,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn data_ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Stripe

const STRIPE_KEY: &str = "sk_test_51FakeKeyForTests0000abcd";
const STRIPE_WHSEC: &str = "whsec_testEndpointSecret123";

fn stripe_fake_with_customers() -> stripe_fake::Fake {
    let fake = stripe_fake::start_in_background(STRIPE_KEY);
    for i in 1..=5 {
        fake.add_customer(stripe_fake::customer(
            &format!("cus_{i}"),
            &format!("user{i}@example.com"),
            &format!("User {i}"),
            1_700_000_000 + i64::from(i) * 100,
        ));
    }
    fake
}

#[test]
fn stripe_reads_customers_across_pages_then_only_new_ones_from_the_cursor() {
    let fake = stripe_fake_with_customers();
    let dir = install("stripe");
    let secrets = [format!("api_key={STRIPE_KEY}")];
    let config = json!({"page_size": 2});
    let hp = fake.host_port();

    let full = read_cli(dir.path(), "stripe", "customers", None, &config, &secrets, "api.stripe.com", &hp).unwrap();
    assert_eq!(data_ids(&full.records), ["cus_5", "cus_4", "cus_3", "cus_2", "cus_1"], "newest first");
    let first = &full.records[0]["data"];
    assert_eq!(first["email"], "user5@example.com");
    assert_eq!(first["name"], "User 5");
    assert_eq!(first["phone"], "+15555550100");
    assert_eq!(first["metadata"], json!({"plan": "pro"}));
    assert_eq!(first["created"], "2023-11-14T22:21:40Z");

    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "5 customers at 2 a page: {seen:?}");
    assert!(seen.iter().all(|r| r.param("limit") == Some("2") && r.param("created[gte]").is_none()));
    assert_eq!(seen[0].param("starting_after"), None);
    assert_eq!(seen[1].param("starting_after"), Some("cus_4"));
    assert_eq!(seen[2].param("starting_after"), Some("cus_2"));
    // The host filled in the key; the plugin only ever saw a placeholder.
    assert_eq!(seen[0].authorization.as_deref(), Some(format!("Bearer {STRIPE_KEY}").as_str()));

    // New customers: one created later, one in the very second of the newest already read.
    fake.clear_requests();
    fake.add_customer(stripe_fake::customer("cus_6", "user6@example.com", "User 6", 1_700_000_900));
    fake.add_customer(stripe_fake::customer("cus_5b", "user5b@example.com", "User 5b", 1_700_000_500));
    let incremental =
        read_cli(dir.path(), "stripe", "customers", Some(&full.cursor), &config, &secrets, "api.stripe.com", &hp).unwrap();
    assert_eq!(data_ids(&incremental.records), ["cus_6", "cus_5b"], "only the new customers");
    let seen = fake.requests();
    assert!(seen.iter().all(|r| r.param("created[gte]") == Some("1700000500")), "{seen:?}");

    // Nothing changed since: nothing read.
    let again =
        read_cli(dir.path(), "stripe", "customers", Some(&incremental.cursor), &config, &secrets, "api.stripe.com", &hp).unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);
    assert!(again.cursor.contains("1700000900"), "{}", again.cursor);
}

#[test]
fn stripe_bad_key_is_unauthorized_and_logs_hold_no_secret() {
    let fake = stripe_fake_with_customers();
    let dir = install("stripe");
    let hp = fake.host_port();
    let reroute = format!("api.stripe.com=http://{hp}");
    let out = switchyard(
        dir.path(),
        &["plugin", "check", "stripe", "--secret", "api_key=sk_test_wrongwrongwrong1234", "--reroute", &reroute, "--allow-private", &hp],
    );
    let err = failed(&out);
    assert!(err.contains("unauthorized: HTTP 401"), "{err}");
    assert!(err.contains("Invalid API Key provided"), "{err}");
    let good = switchyard(
        dir.path(),
        &["plugin", "check", "stripe", "--secret", &format!("api_key={STRIPE_KEY}"), "--reroute", &reroute, "--allow-private", &hp],
    );
    assert!(ok(&good).contains("check passed"));

    let err = read_cli(dir.path(), "stripe", "customers", None, &json!({}), &["api_key=sk_test_wrong".into()], "api.stripe.com", &hp)
        .unwrap_err();
    assert!(err.contains("unauthorized"), "{err}");

    let out = read_cli_log(
        dir.path(), "stripe", "customers", None, &json!({}), &[format!("api_key={STRIPE_KEY}")], "api.stripe.com", &hp, "debug",
    )
    .unwrap();
    assert_eq!(out.records.len(), 5);
    assert!(out.stderr.contains("stripe customers: 5 records"), "plugin logs reach the hub: {}", out.stderr);
    assert!(!out.stderr.contains(STRIPE_KEY), "the key leaked into the logs");
    assert!(!out.stderr.contains("user1@example.com"), "an email leaked into the logs");
}

#[test]
fn stripe_429_is_a_retry_with_the_wait() {
    let fake = stripe_fake_with_customers();
    let dir = install("stripe");
    let hp = fake.host_port();
    let secrets = [format!("api_key={STRIPE_KEY}")];
    fake.throttle(1, Some("2"));
    let err = read_cli(dir.path(), "stripe", "customers", None, &json!({}), &secrets, "api.stripe.com", &hp).unwrap_err();
    assert!(err.contains("transient: HTTP 429"), "{err}");
    assert!(err.contains("Request rate limit exceeded"), "{err}");
    assert!(err.contains("retry after 2000 ms"), "{err}");
    // Once the limiter lets go, the same read works.
    let out = read_cli(dir.path(), "stripe", "customers", None, &json!({}), &secrets, "api.stripe.com", &hp).unwrap();
    assert_eq!(out.records.len(), 5);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance("stripe", json!({}), &[("api_key", STRIPE_KEY)], Some(("api.stripe.com", &hp))).await;
        fake.throttle(1, Some("2"));
        assert_eq!(transient_after(inst.read("customers", None).await), Some(2000));
        // Stripe usually sends no Retry-After: its limits are per second, so wait a second.
        fake.throttle(1, None);
        assert_eq!(transient_after(inst.read("customers", None).await), Some(1000));
        fake.state.lock().unwrap().fail_500 = 1;
        assert_eq!(transient_after(inst.read("customers", None).await), None);
        // A cursor naming an object Stripe does not know fails with Stripe's message.
        let bad = json!({"after": "cus_gone"}).to_string();
        match inst.read("customers", Some(&bad)).await {
            Err(PluginError::Plugin { error: CallError::Failed(m), .. }) => {
                assert!(m.contains("resource_missing") && m.contains("No such customer: 'cus_gone'"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match inst.read("customers", Some("not json")).await {
            Err(PluginError::Plugin { error: CallError::Failed(m), .. }) => assert!(m.contains("not a Stripe cursor"), "{m}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn stripe_charges_are_events_linked_to_the_customer() {
    let fake = stripe_fake_with_customers();
    fake.add_charge(stripe_fake::charge("ch_1", "cus_2", 1999, "usd", "succeeded", 1_700_001_000));
    fake.add_charge(stripe_fake::charge("ch_2", "cus_3", 500, "jpy", "failed", 1_700_001_100));
    fake.add_charge(stripe_fake::charge("ch_3", "cus_3", 700, "eur", "pending", 1_700_001_200));
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance("stripe", json!({"page_size": 2}), &[("api_key", STRIPE_KEY)], Some(("api.stripe.com", &hp))).await;
        let streams = inst.streams().await.unwrap();
        assert_eq!(streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["customers", "charges"]);
        assert!(streams.iter().all(|s| s.incremental));
        let first = inst.read("charges", None).await.unwrap();
        assert!(!first.done);
        let second = inst.read("charges", first.cursor.as_deref()).await.unwrap();
        assert!(second.done);
        let records: Vec<_> = first.records.into_iter().chain(second.records).collect();
        assert_eq!(records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["ch_3", "ch_2", "ch_1"]);
        let ch1 = &records[2];
        let data: Value = serde_json::from_str(&ch1.data).unwrap();
        assert_eq!(data["email"], "user2@example.com", "linked through the expanded customer");
        assert_eq!(data["customer_id"], "cus_2");
        assert_eq!(ch1.events.len(), 1);
        assert_eq!(ch1.events[0].name, "Charge Succeeded");
        assert_eq!(ch1.events[0].message_id, "ch_1:succeeded");
        let props: Value = serde_json::from_str(&ch1.events[0].properties).unwrap();
        assert_eq!(props["amount"], 19.99);
        assert_eq!(props["currency"], "USD");
        assert_eq!(props["email"], "user2@example.com");
        assert_eq!(records[1].events[0].name, "Charge Failed");
        let p2: Value = serde_json::from_str(&records[1].events[0].properties).unwrap();
        assert_eq!(p2["amount"], 500.0, "JPY has no minor unit");
        assert!(records[0].events.is_empty(), "a pending charge is no event yet");
    });
    let seen = fake.requests();
    assert!(seen.iter().all(|r| r.uri.starts_with("/v1/charges") && r.param("expand[]") == Some("data.customer")));
}

#[test]
fn stripe_fake_rejects_what_stripe_rejects() {
    let fake = stripe_fake_with_customers();
    let hp = fake.host_port();
    let auth = format!("Bearer {STRIPE_KEY}");
    let a = [("Authorization", auth.as_str())];
    let (status, body) = raw_json(&hp, "GET", "/v1/customers", &[], b"");
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("You did not provide an API key"));
    let (status, body) = raw_json(&hp, "GET", "/v1/customers", &[("Authorization", "Bearer sk_test_nopenopenope9999")], b"");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Invalid API Key provided: sk_test_"));
    // Basic auth with the key as user name is accepted, as by Stripe.
    let basic = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{STRIPE_KEY}:")));
    assert_eq!(raw_json(&hp, "GET", "/v1/customers?limit=1", &[("Authorization", &basic)], b"").0, 200);

    let (status, body) = raw_json(&hp, "GET", "/v1/customers?limit=101", &a, b"");
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("limit")));
    assert_eq!(raw_json(&hp, "GET", "/v1/customers?limit=0", &a, b"").0, 400);
    assert_eq!(raw_json(&hp, "GET", "/v1/customers?limit=abc", &a, b"").0, 400);
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?starting_after=cus_nope", &a, b"");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "starting_after");
    assert_eq!(body["error"]["message"], "No such customer: 'cus_nope'");
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?starting_after=cus_2&ending_before=cus_4", &a, b"");
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?updated_since=5", &a, b"");
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("Received unknown parameter: updated_since")));
    assert_eq!(raw_json(&hp, "GET", "/v1/customers?created%5Bgte%5D=soon", &a, b"").0, 400);
    assert_eq!(raw_json(&hp, "GET", "/v1/charges?expand%5B%5D=data.secret", &a, b"").0, 400);
    assert_eq!(raw_json(&hp, "GET", "/v1/refunds", &a, b"").0, 404);
    assert_eq!(raw_json(&hp, "POST", "/v1/customers", &a, b"").0, 404);
    // And serves what Stripe serves: filters, cursors both ways.
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?limit=2&created%5Bgte%5D=1700000300", &a, b"");
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["has_more"], true);
    assert_eq!(body["data"][0]["id"], "cus_5");
    let (_, body) = raw_json(&hp, "GET", "/v1/customers?limit=2&ending_before=cus_2", &a, b"");
    assert_eq!(data_ids(body["data"].as_array().unwrap()), ["cus_4", "cus_3"]);
    assert_eq!(body["has_more"], true);
}

fn stripe_signed(body: &str, t: u64, secret: &str) -> String {
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), format!("{t}.{body}").as_bytes()));
    format!("t={t},v1={sig},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39")
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_webhooks_are_verified() {
    let (_d, inst) = instance("stripe", json!({}), &[("api_key", STRIPE_KEY), ("webhook_secret", STRIPE_WHSEC)], None).await;
    let body = json!({
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "charge.succeeded", "api_version": "2024-06-20",
        "created": 1_700_000_000,
        "data": {"object": stripe_fake::charge("ch_9", "cus_9", 4200, "usd", "succeeded", 1_700_000_000)}
    })
    .to_string();
    let t = now_unix();
    let good = stripe_signed(&body, t, STRIPE_WHSEC);
    let outcome = inst.webhook(&webhook_request(&[("Stripe-Signature", &good)], body.as_bytes())).await.unwrap().unwrap();
    assert_eq!(outcome.delivery_id.as_deref(), Some("evt_1NG8Du2eZvKYlo2CUI79vXWy"));
    assert_eq!(outcome.records.len(), 1);
    assert_eq!(outcome.records[0].stream, "charges");
    assert_eq!(outcome.records[0].record.id, "ch_9");
    assert_eq!(outcome.records[0].record.events[0].name, "Charge Succeeded");
    let data: Value = serde_json::from_str(&outcome.records[0].record.data).unwrap();
    assert_eq!(data["customer_id"], "cus_9");

    let customer = json!({"id": "evt_2", "object": "event", "type": "customer.updated",
        "data": {"object": stripe_fake::customer("cus_7", "seven@example.com", "Seven", 1_700_000_000)}})
    .to_string();
    let outcome = inst
        .webhook(&webhook_request(&[("stripe-signature", &stripe_signed(&customer, t, STRIPE_WHSEC))], customer.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.records[0].stream, "customers");
    let data: Value = serde_json::from_str(&outcome.records[0].record.data).unwrap();
    assert_eq!(data["email"], "seven@example.com");

    let refused = |r: Result<Result<_, WebhookError>, PluginError>| match r.unwrap() {
        Err(WebhookError::Unauthorized(m)) => m,
        other => panic!("expected unauthorized, got {other:?}"),
    };
    // Wrong secret, tampered body, stale and future timestamps, no header.
    let wrong = stripe_signed(&body, t, "whsec_someoneelse");
    let m = refused(inst.webhook(&webhook_request(&[("Stripe-Signature", &wrong)], body.as_bytes())).await);
    assert!(m.contains("no Stripe-Signature v1 signature matches"), "{m}");
    let tampered = body.replace("4200", "1");
    refused(inst.webhook(&webhook_request(&[("Stripe-Signature", &good)], tampered.as_bytes())).await);
    let stale = stripe_signed(&body, t - 301, STRIPE_WHSEC);
    let m = refused(inst.webhook(&webhook_request(&[("Stripe-Signature", &stale)], body.as_bytes())).await);
    assert!(m.contains("tolerance"), "{m}");
    let future = stripe_signed(&body, t + 400, STRIPE_WHSEC);
    refused(inst.webhook(&webhook_request(&[("Stripe-Signature", &future)], body.as_bytes())).await);
    refused(inst.webhook(&webhook_request(&[], body.as_bytes())).await);
    // Signed but not an event: a bad request.
    let junk = "[1,2,3]";
    match inst.webhook(&webhook_request(&[("Stripe-Signature", &stripe_signed(junk, t, STRIPE_WHSEC))], junk.as_bytes())).await.unwrap() {
        Err(WebhookError::BadRequest(_)) => {}
        other => panic!("{other:?}"),
    }
    // Without a configured signing secret nothing is accepted.
    let (_d2, bare) = instance("stripe", json!({}), &[("api_key", STRIPE_KEY)], None).await;
    refused(bare.webhook(&webhook_request(&[("Stripe-Signature", &good)], body.as_bytes())).await);
}
