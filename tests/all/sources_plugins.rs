//! The first-party source plugins (Stripe, Shopify, HubSpot, generic paginated JSON) end to end:
//! the real binary reads their streams from faithful fakes of the APIs (`--reroute` sends the
//! plugin's real API host to the fake), page by page and incrementally from the stored cursor;
//! 429s become retries with the API's wait, bad credentials `unauthorized`; each fake refuses what
//! the real API refuses; webhooks are verified through the host library (there is no webhook CLI).
//!
//! Needs the plugins built first: `tools/build-plugins` (tools/test does it).

use crate::common;

use crate::fakes::http_json as http_json_fake;
use crate::fakes::hubspot as hubspot_fake;
use crate::fakes::shopify as shopify_fake;
use crate::fakes::stripe as stripe_fake;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use common::ok;
use common::plugin_wasm;
use common::{failed, lines};
use serde_json::{json, Value};
use switchyard::registry::Registry;
use switchyard::runtime::bindings::{CallError, Page, PluginConfig, WebhookError, WebhookRequest};
use switchyard::runtime::net::{HttpPolicy, Reroute};
use switchyard::runtime::{Limits, PluginError, PluginInstance, Runtime};

// ---------------------------------------------------------------------------------------------
// Helpers: the binary, a raw HTTP client for the fakes, and library instances for webhooks.

fn switchyard(plugins: &Path, args: &[&str]) -> Output {
    common::switchyard(plugins, args, "warn")
}

/// Installs a built plugin into a fresh plugins directory.
fn install(crate_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::install_plugin(dir.path(), crate_name);
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
#[allow(clippy::too_many_arguments)] // one per CLI flag, as the command line reads
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
    read_cli_log(
        dir,
        plugin,
        stream,
        cursor,
        config,
        secrets,
        reroute_host,
        fake,
        "warn",
    )
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
        "plugin",
        "read",
        plugin,
        "--stream",
        stream,
        "--config",
        &config,
        "--reroute",
        &reroute,
        "--allow-private",
        fake,
    ];
    for s in secrets {
        args.push("--secret");
        args.push(s);
    }
    if let Some(c) = cursor {
        args.push("--cursor");
        args.push(c);
    }
    let out = common::switchyard(dir, &args, log);
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
fn raw(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
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
    (status, head.to_string(), body.to_string())
}

fn raw_json(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let (status, _, body) = raw(addr, method, target, headers, body);
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
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
    let policy = HttpPolicy::new(&plugin.manifest().allowed_hosts, None, &policy_private)
        .with_reroutes(reroutes);
    let config = PluginConfig {
        config: config.to_string(),
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    (
        dir,
        PluginInstance::new(Arc::clone(&plugin), config, policy),
    )
}

fn webhook_request(headers: &[(&str, &str)], body: &[u8]) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: "/v1/webhooks/src".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect(),
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
        Err(PluginError::Plugin {
            error: CallError::Transient(r),
            ..
        }) => r.after_ms,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn data_ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
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

    let full = read_cli(
        dir.path(),
        "stripe",
        "customers",
        None,
        &config,
        &secrets,
        "api.stripe.com",
        &hp,
    )
    .unwrap();
    assert_eq!(
        data_ids(&full.records),
        ["cus_5", "cus_4", "cus_3", "cus_2", "cus_1"],
        "newest first"
    );
    let first = &full.records[0]["data"];
    assert_eq!(first["email"], "user5@example.com");
    assert_eq!(first["name"], "User 5");
    assert_eq!(first["phone"], "+15555550100");
    assert_eq!(first["metadata"], json!({"plan": "pro"}));
    assert_eq!(first["created"], "2023-11-14T22:21:40Z");

    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "5 customers at 2 a page: {seen:?}");
    assert!(seen
        .iter()
        .all(|r| r.param("limit") == Some("2") && r.param("created[gte]").is_none()));
    assert_eq!(seen[0].param("starting_after"), None);
    assert_eq!(seen[1].param("starting_after"), Some("cus_4"));
    assert_eq!(seen[2].param("starting_after"), Some("cus_2"));
    // The host filled in the key; the plugin only ever saw a placeholder.
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );

    // New customers: one created later, one in the very second of the newest already read.
    fake.clear_requests();
    fake.add_customer(stripe_fake::customer(
        "cus_6",
        "user6@example.com",
        "User 6",
        1_700_000_900,
    ));
    fake.add_customer(stripe_fake::customer(
        "cus_5b",
        "user5b@example.com",
        "User 5b",
        1_700_000_500,
    ));
    let incremental = read_cli(
        dir.path(),
        "stripe",
        "customers",
        Some(&full.cursor),
        &config,
        &secrets,
        "api.stripe.com",
        &hp,
    )
    .unwrap();
    assert_eq!(
        data_ids(&incremental.records),
        ["cus_6", "cus_5b"],
        "only the new customers"
    );
    let seen = fake.requests();
    assert!(
        seen.iter()
            .all(|r| r.param("created[gte]") == Some("1700000500")),
        "{seen:?}"
    );

    // Nothing changed since: nothing read.
    let again = read_cli(
        dir.path(),
        "stripe",
        "customers",
        Some(&incremental.cursor),
        &config,
        &secrets,
        "api.stripe.com",
        &hp,
    )
    .unwrap();
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
        &[
            "plugin",
            "check",
            "stripe",
            "--secret",
            "api_key=sk_test_wrongwrongwrong1234",
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    );
    let err = failed(&out);
    assert!(err.contains("unauthorized: HTTP 401"), "{err}");
    assert!(err.contains("Invalid API Key provided"), "{err}");
    let good = switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "stripe",
            "--secret",
            &format!("api_key={STRIPE_KEY}"),
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    );
    assert!(ok(&good).contains("check passed"));

    let err = read_cli(
        dir.path(),
        "stripe",
        "customers",
        None,
        &json!({}),
        &["api_key=sk_test_wrong".into()],
        "api.stripe.com",
        &hp,
    )
    .unwrap_err();
    assert!(err.contains("unauthorized"), "{err}");

    let out = read_cli_log(
        dir.path(),
        "stripe",
        "customers",
        None,
        &json!({}),
        &[format!("api_key={STRIPE_KEY}")],
        "api.stripe.com",
        &hp,
        "debug",
    )
    .unwrap();
    assert_eq!(out.records.len(), 5);
    assert!(
        out.stderr.contains("stripe customers: 5 records"),
        "plugin logs reach the hub: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(STRIPE_KEY),
        "the key leaked into the logs"
    );
    assert!(
        !out.stderr.contains("user1@example.com"),
        "an email leaked into the logs"
    );
}

#[test]
fn stripe_429_is_a_retry_with_the_wait() {
    let fake = stripe_fake_with_customers();
    let dir = install("stripe");
    let hp = fake.host_port();
    let secrets = [format!("api_key={STRIPE_KEY}")];
    fake.throttle(1, Some("2"));
    let err = read_cli(
        dir.path(),
        "stripe",
        "customers",
        None,
        &json!({}),
        &secrets,
        "api.stripe.com",
        &hp,
    )
    .unwrap_err();
    assert!(err.contains("transient: HTTP 429"), "{err}");
    assert!(err.contains("Request rate limit exceeded"), "{err}");
    assert!(err.contains("retry after 2000 ms"), "{err}");
    // Once the limiter lets go, the same read works.
    let out = read_cli(
        dir.path(),
        "stripe",
        "customers",
        None,
        &json!({}),
        &secrets,
        "api.stripe.com",
        &hp,
    )
    .unwrap();
    assert_eq!(out.records.len(), 5);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance(
            "stripe",
            json!({}),
            &[("api_key", STRIPE_KEY)],
            Some(("api.stripe.com", &hp)),
        )
        .await;
        fake.throttle(1, Some("2"));
        assert_eq!(
            transient_after(inst.read("customers", None).await),
            Some(2000)
        );
        // Stripe usually sends no Retry-After: its limits are per second, so wait a second.
        fake.throttle(1, None);
        assert_eq!(
            transient_after(inst.read("customers", None).await),
            Some(1000)
        );
        fake.state.lock().unwrap().fail_500 = 1;
        assert_eq!(transient_after(inst.read("customers", None).await), None);
        // A cursor naming an object Stripe does not know fails with Stripe's message.
        let bad = json!({"after": "cus_gone"}).to_string();
        match inst.read("customers", Some(&bad)).await {
            Err(PluginError::Plugin {
                error: CallError::Failed(m),
                ..
            }) => {
                assert!(
                    m.contains("resource_missing") && m.contains("No such customer: 'cus_gone'"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        match inst.read("customers", Some("not json")).await {
            Err(PluginError::Plugin {
                error: CallError::Failed(m),
                ..
            }) => assert!(m.contains("not one the Stripe source wrote"), "{m}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn stripe_charges_are_events_linked_to_the_customer() {
    let fake = stripe_fake_with_customers();
    fake.add_charge(stripe_fake::charge(
        "ch_1",
        "cus_2",
        1999,
        "usd",
        "succeeded",
        1_700_001_000,
    ));
    fake.add_charge(stripe_fake::charge(
        "ch_2",
        "cus_3",
        500,
        "jpy",
        "failed",
        1_700_001_100,
    ));
    fake.add_charge(stripe_fake::charge(
        "ch_3",
        "cus_3",
        700,
        "eur",
        "pending",
        1_700_001_200,
    ));
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance(
            "stripe",
            json!({"page_size": 2}),
            &[("api_key", STRIPE_KEY)],
            Some(("api.stripe.com", &hp)),
        )
        .await;
        let streams = inst.streams().await.unwrap();
        assert_eq!(
            streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["customers", "charges"]
        );
        assert!(streams.iter().all(|s| s.incremental));
        let first = inst.read("charges", None).await.unwrap();
        assert!(!first.done);
        let second = inst.read("charges", first.cursor.as_deref()).await.unwrap();
        assert!(second.done);
        let records: Vec<_> = first.records.into_iter().chain(second.records).collect();
        assert_eq!(
            records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["ch_3", "ch_2", "ch_1"]
        );
        let ch1 = &records[2];
        let data: Value = serde_json::from_str(&ch1.data).unwrap();
        assert_eq!(
            data["email"], "user2@example.com",
            "linked through the expanded customer"
        );
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
        assert!(
            records[0].events.is_empty(),
            "a pending charge is no event yet"
        );
    });
    let seen = fake.requests();
    assert!(seen
        .iter()
        .all(|r| r.uri.starts_with("/v1/charges") && r.param("expand[]") == Some("data.customer")));
}

#[test]
fn stripe_fake_rejects_what_stripe_rejects() {
    let fake = stripe_fake_with_customers();
    let hp = fake.host_port();
    let auth = format!("Bearer {STRIPE_KEY}");
    let a = [("Authorization", auth.as_str())];
    let (status, body) = raw_json(&hp, "GET", "/v1/customers", &[], b"");
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("You did not provide an API key"));
    let (status, body) = raw_json(
        &hp,
        "GET",
        "/v1/customers",
        &[("Authorization", "Bearer sk_test_nopenopenope9999")],
        b"",
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid API Key provided: sk_test_"));
    // Basic auth with the key as user name is accepted, as by Stripe.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{STRIPE_KEY}:")
        )
    );
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            "/v1/customers?limit=1",
            &[("Authorization", &basic)],
            b""
        )
        .0,
        200
    );

    let (status, body) = raw_json(&hp, "GET", "/v1/customers?limit=101", &a, b"");
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("limit"))
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v1/customers?limit=0", &a, b"").0,
        400
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v1/customers?limit=abc", &a, b"").0,
        400
    );
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?starting_after=cus_nope", &a, b"");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "starting_after");
    assert_eq!(body["error"]["message"], "No such customer: 'cus_nope'");
    let (status, body) = raw_json(
        &hp,
        "GET",
        "/v1/customers?starting_after=cus_2&ending_before=cus_4",
        &a,
        b"",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_json(&hp, "GET", "/v1/customers?updated_since=5", &a, b"");
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("Received unknown parameter: updated_since"))
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v1/customers?created%5Bgte%5D=soon", &a, b"").0,
        400
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v1/charges?expand%5B%5D=data.secret", &a, b"").0,
        400
    );
    assert_eq!(raw_json(&hp, "GET", "/v1/refunds", &a, b"").0, 404);
    assert_eq!(raw_json(&hp, "POST", "/v1/customers", &a, b"").0, 404);
    // And serves what Stripe serves: filters, cursors both ways.
    let (status, body) = raw_json(
        &hp,
        "GET",
        "/v1/customers?limit=2&created%5Bgte%5D=1700000300",
        &a,
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["has_more"], true);
    assert_eq!(body["data"][0]["id"], "cus_5");
    let (_, body) = raw_json(
        &hp,
        "GET",
        "/v1/customers?limit=2&ending_before=cus_2",
        &a,
        b"",
    );
    assert_eq!(
        data_ids(body["data"].as_array().unwrap()),
        ["cus_4", "cus_3"]
    );
    assert_eq!(body["has_more"], true);
}

fn stripe_signed(body: &str, t: u64, secret: &str) -> String {
    let sig = hex::encode(hmac_sha256(
        secret.as_bytes(),
        format!("{t}.{body}").as_bytes(),
    ));
    format!("t={t},v1={sig},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39")
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_webhooks_are_verified() {
    let (_d, inst) = instance(
        "stripe",
        json!({}),
        &[("api_key", STRIPE_KEY), ("webhook_secret", STRIPE_WHSEC)],
        None,
    )
    .await;
    let body = json!({
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "charge.succeeded", "api_version": "2024-06-20",
        "created": 1_700_000_000,
        "data": {"object": stripe_fake::charge("ch_9", "cus_9", 4200, "usd", "succeeded", 1_700_000_000)}
    })
    .to_string();
    let t = now_unix();
    let good = stripe_signed(&body, t, STRIPE_WHSEC);
    let outcome = inst
        .webhook(&webhook_request(
            &[("Stripe-Signature", &good)],
            body.as_bytes(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.delivery_id.as_deref(),
        Some("evt_1NG8Du2eZvKYlo2CUI79vXWy")
    );
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
        .webhook(&webhook_request(
            &[(
                "stripe-signature",
                &stripe_signed(&customer, t, STRIPE_WHSEC),
            )],
            customer.as_bytes(),
        ))
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
    let m = refused(
        inst.webhook(&webhook_request(
            &[("Stripe-Signature", &wrong)],
            body.as_bytes(),
        ))
        .await,
    );
    assert!(
        m.contains("no Stripe-Signature v1 signature matches"),
        "{m}"
    );
    let tampered = body.replace("4200", "1");
    refused(
        inst.webhook(&webhook_request(
            &[("Stripe-Signature", &good)],
            tampered.as_bytes(),
        ))
        .await,
    );
    let stale = stripe_signed(&body, t - 301, STRIPE_WHSEC);
    let m = refused(
        inst.webhook(&webhook_request(
            &[("Stripe-Signature", &stale)],
            body.as_bytes(),
        ))
        .await,
    );
    assert!(m.contains("tolerance"), "{m}");
    let future = stripe_signed(&body, t + 400, STRIPE_WHSEC);
    refused(
        inst.webhook(&webhook_request(
            &[("Stripe-Signature", &future)],
            body.as_bytes(),
        ))
        .await,
    );
    refused(inst.webhook(&webhook_request(&[], body.as_bytes())).await);
    // Signed but not an event: a bad request.
    let junk = "[1,2,3]";
    match inst
        .webhook(&webhook_request(
            &[("Stripe-Signature", &stripe_signed(junk, t, STRIPE_WHSEC))],
            junk.as_bytes(),
        ))
        .await
        .unwrap()
    {
        Err(WebhookError::BadRequest(_)) => {}
        other => panic!("{other:?}"),
    }
    // Without a configured signing secret nothing is accepted.
    let (_d2, bare) = instance("stripe", json!({}), &[("api_key", STRIPE_KEY)], None).await;
    refused(
        bare.webhook(&webhook_request(
            &[("Stripe-Signature", &good)],
            body.as_bytes(),
        ))
        .await,
    );
}

// ---------------------------------------------------------------------------------------------
// Shopify

const SHOP: &str = "test-shop.myshopify.com";
const SHOPIFY_TOKEN: &str = "shpat_0123456789abcdef0123456789abcdef";
const SHOPIFY_SECRET: &str = "shopify-app-client-secret";

fn shopify_fake_with_customers() -> shopify_fake::Fake {
    let fake = shopify_fake::start_in_background(SHOP, SHOPIFY_TOKEN);
    // Shop-local offsets, out of id order: the plugin must follow updated_at, not ids.
    let updated = [
        "2024-01-05T10:00:05-05:00",
        "2024-01-05T15:00:01Z",
        "2024-01-05T17:00:03+02:00",
        "2024-01-05T10:00:04-05:00",
        "2024-01-05T15:00:02Z",
    ];
    for (i, at) in updated.iter().enumerate() {
        let id = 1000 + i as u64;
        fake.add_customer(shopify_fake::customer(
            id,
            &format!("buyer{i}@example.com"),
            &format!("Buyer{i}"),
            "Shop",
            at,
        ));
    }
    fake
}

fn shopify_config(page_size: u32) -> Value {
    json!({"shop": "test-shop", "page_size": page_size})
}

#[test]
fn shopify_reads_customers_across_pages_then_only_changed_ones() {
    let fake = shopify_fake_with_customers();
    let dir = install("shopify");
    let hp = fake.host_port();
    let secrets = [format!("access_token={SHOPIFY_TOKEN}")];
    let full = read_cli(
        dir.path(),
        "shopify",
        "customers",
        None,
        &shopify_config(2),
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap();
    // Ascending updated_at: 15:00:01Z, 15:00:02Z, 15:00:03Z (17:00:03+02), 15:00:04Z, 15:00:05Z.
    assert_eq!(
        data_ids(&full.records),
        ["1001", "1004", "1002", "1003", "1000"]
    );
    let first = &full.records[0]["data"];
    assert_eq!(first["email"], "buyer1@example.com");
    assert_eq!(first["first_name"], "Buyer1");
    assert_eq!(first["accepts_marketing"], true);
    assert_eq!(first["total_spent"], 199.0);
    assert_eq!(first["country_code"], "CA");
    assert_eq!(full.records[0]["updated_at"], "2024-01-05T15:00:01Z");

    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].param("order"), Some("updated_at asc"));
    assert_eq!(seen[0].param("updated_at_min"), None);
    assert!(seen[0]
        .uri
        .starts_with("/admin/api/2026-07/customers.json?"));
    for later in &seen[1..] {
        assert!(later.param("page_info").is_some());
        assert_eq!(later.query.len(), 2, "only limit with page_info: {later:?}");
    }
    assert_eq!(seen[0].token.as_deref(), Some(SHOPIFY_TOKEN));

    // One customer edited in the admin, one new; the rest untouched.
    fake.clear_requests();
    fake.update_customer(
        1002,
        "email",
        json!("changed@example.com"),
        "2024-02-01T09:00:00-05:00",
    );
    fake.add_customer(shopify_fake::customer(
        1010,
        "new@example.com",
        "New",
        "Buyer",
        "2024-01-06T00:00:00Z",
    ));
    let inc = read_cli(
        dir.path(),
        "shopify",
        "customers",
        Some(&full.cursor),
        &shopify_config(2),
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap();
    assert_eq!(data_ids(&inc.records), ["1010", "1002"]);
    assert_eq!(inc.records[1]["data"]["email"], "changed@example.com");
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("updated_at_min"),
        Some("2024-01-05T15:00:05Z")
    );

    let again = read_cli(
        dir.path(),
        "shopify",
        "customers",
        Some(&inc.cursor),
        &shopify_config(2),
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);
}

#[test]
fn shopify_orders_are_order_completed_events() {
    let fake = shopify_fake_with_customers();
    fake.add_order(shopify_fake::order(
        5001,
        1001,
        1000,
        "buyer0@example.com",
        3,
        "2024-03-01T10:00:00-05:00",
    ));
    let mut closed = shopify_fake::order(
        5002,
        1002,
        1001,
        "buyer1@example.com",
        1,
        "2024-03-02T10:00:00-05:00",
    );
    closed["closed_at"] = json!("2024-03-03T10:00:00-05:00");
    fake.add_order(closed);
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance(
            "shopify",
            shopify_config(250),
            &[("access_token", SHOPIFY_TOKEN)],
            Some((SHOP, &hp)),
        )
        .await;
        let page = inst.read("orders", None).await.unwrap();
        assert!(page.done);
        assert_eq!(
            page.records
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["5001", "5002"],
            "closed orders too"
        );
        let e = &page.records[0].events[0];
        assert_eq!(
            (e.name.as_str(), e.message_id.as_str()),
            ("Order Completed", "5001")
        );
        assert_eq!(e.timestamp, "2024-03-01T10:00:00-05:00");
        let p: Value = serde_json::from_str(&e.properties).unwrap();
        assert_eq!(p["total"], 59.97);
        assert_eq!(p["currency"], "USD");
        assert_eq!(p["line_item_count"], 3);
        assert_eq!(p["email"], "buyer0@example.com");
        assert_eq!(p["customer_id"], "1000");
        assert_eq!(p["products"].as_array().unwrap().len(), 3);
        let data: Value = serde_json::from_str(&page.records[1].data).unwrap();
        assert_eq!(data["email"], "buyer1@example.com");
        assert_eq!(data["name"], "#1002");
    });
    let seen = fake.requests();
    assert_eq!(seen[0].param("status"), Some("any"));
}

#[test]
fn shopify_429_and_a_full_bucket_back_off() {
    let fake = shopify_fake_with_customers();
    let dir = install("shopify");
    let hp = fake.host_port();
    let secrets = [format!("access_token={SHOPIFY_TOKEN}")];
    fake.state.lock().unwrap().throttle = 1;
    let err = read_cli(
        dir.path(),
        "shopify",
        "customers",
        None,
        &shopify_config(250),
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap_err();
    assert!(
        err.contains("transient: HTTP 429: Exceeded 2 calls per second"),
        "{err}"
    );
    assert!(err.contains("retry after 2000 ms"), "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = instance(
            "shopify",
            shopify_config(250),
            &[("access_token", SHOPIFY_TOKEN)],
            Some((SHOP, &hp)),
        )
        .await;
        // A full bucket: Shopify's own 429 with Retry-After: 2.0.
        fake.fill_bucket(40.0);
        assert_eq!(
            transient_after(inst.read("customers", None).await),
            Some(2000)
        );
        // Nearly full: the read succeeds, then pauses until the bucket drained to 80%.
        fake.fill_bucket(36.0);
        let started = std::time::Instant::now();
        let page = inst.read("customers", None).await.unwrap();
        assert_eq!(page.records.len(), 5);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(2400),
            "paused {:?}",
            started.elapsed()
        );
        let used = fake.state.lock().unwrap().bucket;
        assert!(used >= 36.0, "the call was counted: {used}");
        // So the very next read is not refused.
        assert!(inst.read("customers", None).await.is_ok());
        fake.state.lock().unwrap().fail_500 = 1;
        assert_eq!(transient_after(inst.read("customers", None).await), None);
    });
}

#[test]
fn shopify_asks_for_a_version_shopify_still_serves_and_names_a_retired_one() {
    let fake = shopify_fake_with_customers();
    let dir = install("shopify");
    let hp = fake.host_port();
    let secrets = [format!("access_token={SHOPIFY_TOKEN}")];
    // The default: Shopify serves it as asked (no silent fall-forward to another schema).
    read_cli(
        dir.path(),
        "shopify",
        "customers",
        None,
        &shopify_config(250),
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap();
    let seen = fake.requests();
    let asked = seen[0].uri.split('/').nth(3).unwrap().to_string();
    assert_eq!(
        seen[0].api_version.as_deref(),
        Some(asked.as_str()),
        "the default api_version {asked} is served as another version: it is past Shopify's support window"
    );
    // A pinned retired version: a read warns, naming what Shopify served; check fails.
    let retired = json!({"shop": "test-shop", "api_version": "2025-04"});
    let out = read_cli(
        dir.path(),
        "shopify",
        "customers",
        None,
        &retired,
        &secrets,
        SHOP,
        &hp,
    )
    .unwrap();
    assert_eq!(out.records.len(), 5);
    assert!(
        out.stderr.contains(
            "Shopify answered with API version 2026-01, not the configured api_version 2025-04"
        ),
        "{}",
        out.stderr
    );
    let reroute = format!("{SHOP}=http://{hp}");
    let err = failed(&switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "shopify",
            "--config",
            &retired.to_string(),
            "--secret",
            &secrets[0],
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    ));
    assert!(
        err.contains("invalid config: Shopify answered with API version 2026-01"),
        "{err}"
    );
}

#[test]
fn shopify_bad_token_is_unauthorized_and_logs_hold_no_secret() {
    let fake = shopify_fake_with_customers();
    let dir = install("shopify");
    let hp = fake.host_port();
    let reroute = format!("{SHOP}=http://{hp}");
    let config = shopify_config(250).to_string();
    let err = failed(&switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "shopify",
            "--config",
            &config,
            "--secret",
            "access_token=shpat_wrong",
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    ));
    assert!(
        err.contains("unauthorized: HTTP 401: [API] Invalid API key or access token"),
        "{err}"
    );
    let good = switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "shopify",
            "--config",
            &config,
            "--secret",
            &format!("access_token={SHOPIFY_TOKEN}"),
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    );
    assert!(ok(&good).contains("check passed"));
    let out = read_cli_log(
        dir.path(),
        "shopify",
        "customers",
        None,
        &shopify_config(2),
        &[format!("access_token={SHOPIFY_TOKEN}")],
        SHOP,
        &hp,
        "debug",
    )
    .unwrap();
    assert!(
        out.stderr
            .contains("shopify customers: 2 records, next page: true"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SHOPIFY_TOKEN));
    assert!(!out.stderr.contains("buyer1@example.com"));
    // A shop name that is not a shop handle never becomes a request.
    let err = read_cli(
        dir.path(),
        "shopify",
        "customers",
        None,
        &json!({"shop": "evil.com/x"}),
        &[format!("access_token={SHOPIFY_TOKEN}")],
        SHOP,
        &hp,
    )
    .unwrap_err();
    assert!(err.contains("invalid config: shop `evil.com/x`"), "{err}");
}

#[test]
fn shopify_fake_rejects_what_shopify_rejects() {
    let fake = shopify_fake_with_customers();
    let hp = fake.host_port();
    let t = [("X-Shopify-Access-Token", SHOPIFY_TOKEN)];
    let path = "/admin/api/2026-07/customers.json";
    // A supported version is served as asked; a retired one as the oldest supported, not refused.
    let (status, head, _) = raw(&hp, "GET", path, &t, b"");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-shopify-api-version: 2026-07"),
        "{head}"
    );
    let (status, head, _) = raw(&hp, "GET", "/admin/api/2025-07/customers.json", &t, b"");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-shopify-api-version: 2026-01"),
        "{head}"
    );
    let (status, body) = raw_json(&hp, "GET", path, &[], b"");
    assert_eq!(status, 401);
    assert_eq!(
        body["errors"],
        "[API] Invalid API key or access token (unrecognized login or wrong password)"
    );
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            path,
            &[("X-Shopify-Access-Token", "shpat_nope")],
            b""
        )
        .0,
        401
    );
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {SHOPIFY_TOKEN}"))],
            b""
        )
        .0,
        401,
        "the token goes in its own header"
    );
    let (status, body) = raw_json(&hp, "GET", &format!("{path}?limit=251"), &t, b"");
    assert_eq!(status, 400);
    assert!(body["errors"]["limit"].is_string(), "{body}");
    let (status, body) = raw_json(
        &hp,
        "GET",
        &format!("{path}?page_info=bm90LWEtY3Vyc29y"),
        &t,
        b"",
    );
    assert_eq!(
        (status, body["errors"]["page_info"].as_str()),
        (400, Some("Invalid value."))
    );
    // A real page_info, then the same with a filter next to it.
    let (status, head, _) = raw(
        &hp,
        "GET",
        &format!("{path}?limit=2&order=updated_at%20asc"),
        &t,
        b"",
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-shopify-shop-api-call-limit: "),
        "{head}"
    );
    let link = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("link: "))
        .map(|l| l[6..].to_string())
        .expect("a Link header");
    assert!(
        link.contains(&format!("<https://{SHOP}{path}?limit=2&page_info="))
            && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let page_info = link
        .split("page_info=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            &format!("{path}?limit=2&page_info={page_info}"),
            &t,
            b""
        )
        .0,
        200
    );
    let (status, body) = raw_json(
        &hp,
        "GET",
        &format!("{path}?limit=2&page_info={page_info}&updated_at_min=2024-01-01T00:00:00Z"),
        &t,
        b"",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        raw_json(&hp, "GET", "/admin/api/2026-07/products.json", &t, b"").0,
        404
    );
    assert_eq!(raw_json(&hp, "POST", path, &t, b"{}").0, 404);
    // Orders default to status=open, as Shopify's do.
    let mut closed = shopify_fake::order(7, 1, 1, "c@example.com", 1, "2024-01-01T00:00:00Z");
    closed["closed_at"] = json!("2024-01-02T00:00:00Z");
    fake.add_order(closed);
    let (_, body) = raw_json(&hp, "GET", "/admin/api/2026-07/orders.json", &t, b"");
    assert_eq!(body["orders"], json!([]));
    let (_, body) = raw_json(
        &hp,
        "GET",
        "/admin/api/2026-07/orders.json?status=any",
        &t,
        b"",
    );
    assert_eq!(body["orders"].as_array().unwrap().len(), 1);
    // The bucket: 40 calls, then 429 with Retry-After 2.0.
    fake.fill_bucket(40.0);
    let (status, head, body) = raw(&hp, "GET", path, &t, b"");
    assert_eq!(status, 429);
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2.0"),
        "{head}"
    );
    assert!(body.contains("Exceeded 2 calls per second for api client"));
}

fn shopify_signed(body: &[u8], secret: &str) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        hmac_sha256(secret.as_bytes(), body),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn shopify_webhooks_are_verified() {
    let (_d, inst) = instance(
        "shopify",
        shopify_config(250),
        &[
            ("access_token", SHOPIFY_TOKEN),
            ("webhook_secret", SHOPIFY_SECRET),
        ],
        None,
    )
    .await;
    let order = shopify_fake::order(
        820982911946154508,
        1234,
        115310627314723954,
        "jon@example.com",
        2,
        "2024-05-01T12:00:00-04:00",
    )
    .to_string();
    let sig = shopify_signed(order.as_bytes(), SHOPIFY_SECRET);
    let headers = |sig: &str, domain: &str| {
        vec![
            ("X-Shopify-Topic".to_string(), "orders/create".to_string()),
            ("X-Shopify-Hmac-Sha256".to_string(), sig.to_string()),
            ("X-Shopify-Shop-Domain".to_string(), domain.to_string()),
            (
                "X-Shopify-Webhook-Id".to_string(),
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".to_string(),
            ),
            ("X-Shopify-API-Version".to_string(), "2026-07".to_string()),
        ]
    };
    let request = |h: Vec<(String, String)>, body: &str| {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        webhook_request(&pairs, body.as_bytes())
    };
    let outcome = inst
        .webhook(&request(headers(&sig, SHOP), &order))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.delivery_id.as_deref(),
        Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    );
    assert_eq!(outcome.records.len(), 1);
    assert_eq!(outcome.records[0].stream, "orders");
    let record = &outcome.records[0].record;
    assert_eq!(record.id, "820982911946154508");
    assert_eq!(record.events[0].name, "Order Completed");
    let p: Value = serde_json::from_str(&record.events[0].properties).unwrap();
    assert_eq!(p["line_item_count"], 2);
    assert_eq!(p["email"], "jon@example.com");

    let refused = |r: Result<Result<_, WebhookError>, PluginError>| match r.unwrap() {
        Err(WebhookError::Unauthorized(m)) => m,
        other => panic!("expected unauthorized, got {other:?}"),
    };
    let wrong = shopify_signed(order.as_bytes(), "another-secret");
    let m = refused(inst.webhook(&request(headers(&wrong, SHOP), &order)).await);
    assert!(m.contains("does not match"), "{m}");
    refused(
        inst.webhook(&request(
            headers(&sig, SHOP),
            &order.replace("jon@", "eve@"),
        ))
        .await,
    );
    let m = refused(
        inst.webhook(&request(headers(&sig, "other-shop.myshopify.com"), &order))
            .await,
    );
    assert!(m.contains("other-shop.myshopify.com"), "{m}");
    let mut unsigned = headers(&sig, SHOP);
    unsigned.retain(|(k, _)| k != "X-Shopify-Hmac-Sha256");
    refused(inst.webhook(&request(unsigned, &order)).await);

    // customers/delete carries only the id.
    let deleted = r#"{"id":706405506930370084,"phone":null,"addresses":[],"tax_exemptions":[],"email_marketing_consent":null,"admin_graphql_api_id":"gid://shopify/Customer/706405506930370084"}"#;
    let mut h = headers(&shopify_signed(deleted.as_bytes(), SHOPIFY_SECRET), SHOP);
    h[0].1 = "customers/delete".into();
    let outcome = inst.webhook(&request(h, deleted)).await.unwrap().unwrap();
    assert_eq!(outcome.records[0].stream, "customers");
    let data: Value = serde_json::from_str(&outcome.records[0].record.data).unwrap();
    assert_eq!(data["deleted"], true);
    assert_eq!(data["id"], "706405506930370084");
}

// ---------------------------------------------------------------------------------------------
// HubSpot

const HUBSPOT_TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
const HUBAPI: &str = "api.hubapi.com";

/// A configured HubSpot instance whose API calls go to the fake.
async fn hubspot_instance(config: Value, fake: &str) -> (tempfile::TempDir, PluginInstance) {
    instance(
        "hubspot",
        config,
        &[("access_token", HUBSPOT_TOKEN)],
        Some((HUBAPI, fake)),
    )
    .await
}

fn hubspot_fake_with_contacts() -> hubspot_fake::Fake {
    let fake = hubspot_fake::start_in_background(HUBSPOT_TOKEN);
    for i in 1..=5 {
        fake.add_contact(hubspot_fake::contact(
            &format!("{}", 100 + i),
            &format!("lead{i}@example.com"),
            &format!("Lead{i}"),
            "Person",
            &format!("2024-02-0{i}T10:00:00.000Z"),
        ));
    }
    fake
}

#[test]
fn hubspot_lists_contacts_across_pages_then_searches_only_changed_ones() {
    let fake = hubspot_fake_with_contacts();
    let dir = install("hubspot");
    let hp = fake.host_port();
    let secrets = [format!("access_token={HUBSPOT_TOKEN}")];
    let config = json!({"page_size": 2});
    let full = read_cli(
        dir.path(),
        "hubspot",
        "contacts",
        None,
        &config,
        &secrets,
        HUBAPI,
        &hp,
    )
    .unwrap();
    assert_eq!(data_ids(&full.records), ["101", "102", "103", "104", "105"]);
    let first = &full.records[0]["data"];
    assert_eq!(first["email"], "lead1@example.com");
    assert_eq!(first["firstname"], "Lead1");
    assert_eq!(first["phone"], "+1 617 555 0100");
    assert_eq!(first["lifecyclestage"], "customer");
    assert_eq!(first["lastmodifieddate"], "2024-02-01T10:00:00.000Z");
    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|r| r.method == "GET"
        && r.param("limit") == Some("2")
        && r.param("archived") == Some("false")));
    assert_eq!(
        seen[0].param("properties"),
        Some("email,firstname,lastname,phone,company,lifecyclestage,lastmodifieddate,createdate")
    );
    assert!(seen[0].param("after").is_none() && seen[1].param("after").is_some());
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {HUBSPOT_TOKEN}").as_str())
    );

    fake.clear_requests();
    fake.update_contact(
        "103",
        "email",
        "moved@example.com",
        "2024-03-01T08:00:00.000Z",
    );
    fake.add_contact(hubspot_fake::contact(
        "106",
        "lead6@example.com",
        "Lead6",
        "Person",
        "2024-02-20T00:00:00.000Z",
    ));
    let inc = read_cli(
        dir.path(),
        "hubspot",
        "contacts",
        Some(&full.cursor),
        &config,
        &secrets,
        HUBAPI,
        &hp,
    )
    .unwrap();
    assert_eq!(
        data_ids(&inc.records),
        ["106", "103"],
        "changed since the watermark, oldest change first"
    );
    assert_eq!(inc.records[1]["data"]["email"], "moved@example.com");
    let seen = fake.requests();
    assert_eq!(
        seen.len(),
        2,
        "105 (re-read in the lookback, not emitted), 106, then 103"
    );
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/crm/v3/objects/contacts/search")
    );
    let body = &seen[0].body;
    assert_eq!(
        body["filterGroups"][0]["filters"][0],
        json!({"propertyName": "lastmodifieddate", "operator": "GT", "value": "1707126600000"}),
        "GT the newest lastmodifieddate read (2024-02-05T10:00Z) minus the 10-minute lookback"
    );
    assert_eq!(
        body["sorts"][0],
        json!({"propertyName": "lastmodifieddate", "direction": "ASCENDING"})
    );
    assert_eq!(body["limit"], 2);

    let again = read_cli(
        dir.path(),
        "hubspot",
        "contacts",
        Some(&inc.cursor),
        &config,
        &secrets,
        HUBAPI,
        &hp,
    )
    .unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);
}

#[test]
fn hubspot_companies_are_group_records() {
    let fake = hubspot_fake_with_contacts();
    fake.add_company(hubspot_fake::company(
        "9001",
        "Acme Inc",
        "acme.example",
        "2024-01-01T00:00:00Z",
    ));
    fake.add_company(hubspot_fake::company(
        "9002",
        "Globex",
        "globex.example",
        "2024-01-02T00:00:00Z",
    ));
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = hubspot_instance(
            json!({"company_properties": ["name", "domain", "not_a_property"]}),
            &hp,
        )
        .await;
        let page = inst.read("companies", None).await.unwrap();
        assert!(page.done);
        let data: Vec<Value> = page
            .records
            .iter()
            .map(|r| serde_json::from_str(&r.data).unwrap())
            .collect();
        assert_eq!(data[0]["group_id"], "9001");
        assert_eq!(data[0]["name"], "Acme Inc");
        assert_eq!(data[1]["domain"], "globex.example");
        assert_eq!(
            data[0]["not_a_property"],
            Value::Null,
            "HubSpot ignores unknown properties"
        );
        assert_eq!(
            page.records[1].updated_at.as_deref(),
            Some("2024-01-02T00:00:00Z")
        );
        let cursor: Value = serde_json::from_str(page.cursor.as_deref().unwrap()).unwrap();
        assert_eq!(cursor["since"], 1_704_153_600_000i64);
        // The next run searches on hs_lastmodifieddate.
        let page = inst
            .read("companies", page.cursor.as_deref())
            .await
            .unwrap();
        assert!(page.records.is_empty() && page.done);
    });
    let search = fake.requests().into_iter().last().unwrap();
    assert_eq!(
        search.body["filterGroups"][0]["filters"][0]["propertyName"],
        "hs_lastmodifieddate"
    );
}

#[test]
fn hubspot_rate_limits_are_honoured() {
    let fake = hubspot_fake_with_contacts();
    let dir = install("hubspot");
    let hp = fake.host_port();
    let secrets = [format!("access_token={HUBSPOT_TOKEN}")];
    fake.throttle(1, "TEN_SECONDLY_ROLLING", Some("3"));
    let err = read_cli(
        dir.path(),
        "hubspot",
        "contacts",
        None,
        &json!({}),
        &secrets,
        HUBAPI,
        &hp,
    )
    .unwrap_err();
    assert!(
        err.contains(
            "transient: HTTP 429: RATE_LIMIT: You have reached your ten_secondly_rolling limit."
        ),
        "{err}"
    );
    assert!(err.contains("retry after 3000 ms"), "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = hubspot_instance(json!({}), &hp).await;
        fake.throttle(1, "TEN_SECONDLY_ROLLING", Some("3"));
        assert_eq!(
            transient_after(inst.read("contacts", None).await),
            Some(3000)
        );
        // No Retry-After: the interval the rate-limit headers give.
        fake.state.lock().unwrap().interval_ms = 7000;
        fake.throttle(1, "TEN_SECONDLY_ROLLING", None);
        assert_eq!(
            transient_after(inst.read("contacts", None).await),
            Some(7000)
        );
        fake.throttle(1, "SECONDLY", None);
        let search_cursor = json!({"since": 0}).to_string();
        assert_eq!(
            transient_after(inst.read("contacts", Some(&search_cursor)).await),
            Some(1000)
        );
        // A window used up on a successful call: pause for it before returning.
        {
            let mut s = fake.state.lock().unwrap();
            s.remaining_override = Some(0);
            s.interval_ms = 1500;
        }
        let started = std::time::Instant::now();
        let page = inst.read("contacts", None).await.unwrap();
        assert_eq!(page.records.len(), 5);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
        fake.state.lock().unwrap().remaining_override = None;
        fake.state.lock().unwrap().fail_500 = 1;
        assert_eq!(transient_after(inst.read("contacts", None).await), None);
    });
}

#[test]
fn hubspot_bad_token_is_unauthorized_and_logs_hold_no_secret() {
    let fake = hubspot_fake_with_contacts();
    let dir = install("hubspot");
    let hp = fake.host_port();
    let reroute = format!("{HUBAPI}=http://{hp}");
    let err = failed(&switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "hubspot",
            "--secret",
            "access_token=pat-na1-wrong",
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    ));
    assert!(
        err.contains("unauthorized: HTTP 401: INVALID_AUTHENTICATION"),
        "{err}"
    );
    let good = switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "hubspot",
            "--secret",
            &format!("access_token={HUBSPOT_TOKEN}"),
            "--reroute",
            &reroute,
            "--allow-private",
            &hp,
        ],
    );
    assert!(ok(&good).contains("check passed"));
    let out = read_cli_log(
        dir.path(),
        "hubspot",
        "contacts",
        None,
        &json!({}),
        &[format!("access_token={HUBSPOT_TOKEN}")],
        HUBAPI,
        &hp,
        "debug",
    )
    .unwrap();
    assert!(
        out.stderr.contains("hubspot contacts (list): 5 records"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(HUBSPOT_TOKEN));
    assert!(!out.stderr.contains("lead1@example.com"));
    // A forged cursor is refused by HubSpot with its message.
    let err = read_cli(
        dir.path(),
        "hubspot",
        "contacts",
        Some(r#"{"after":"bm9wZQ"}"#),
        &json!({}),
        &[format!("access_token={HUBSPOT_TOKEN}")],
        HUBAPI,
        &hp,
    )
    .unwrap_err();
    assert!(
        err.contains("VALIDATION_ERROR") && err.contains("`after` cursor"),
        "{err}"
    );
}

/// Reads pages through the library until the run is done, at most `max_pages` of them.
async fn read_run(
    inst: &PluginInstance,
    stream: &str,
    cursor: Option<String>,
    max_pages: usize,
) -> (Vec<String>, String) {
    let mut cursor = cursor;
    let mut ids = Vec::new();
    for _ in 0..max_pages {
        let page = inst.read(stream, cursor.as_deref()).await.unwrap();
        ids.extend(page.records.iter().map(|r| r.id.clone()));
        cursor = page.cursor;
        if page.done {
            return (ids, cursor.unwrap_or_default());
        }
    }
    panic!(
        "the run did not end within {max_pages} pages ({} records read, cursor {cursor:?})",
        ids.len()
    );
}

#[test]
fn hubspot_search_past_10000_records_of_one_millisecond_ends() {
    // HubSpot's month-end batch update stamps every record with one lastmodifieddate
    // (airbytehq/airbyte issue #43317): 10,050 of them, then 3 later changes.
    let fake = hubspot_fake_with_contacts();
    {
        let mut s = fake.state.lock().unwrap();
        for id in 1_000..11_050 {
            s.contacts.push(hubspot_fake::contact(
                &id.to_string(),
                &format!("c{id}@example.com"),
                "Batch",
                "Person",
                "2024-03-31T23:59:59.000Z",
            ));
        }
        for (id, at) in [
            ("20001", "2024-04-01T08:00:00.000Z"),
            ("20002", "2024-04-01T09:00:00.000Z"),
            ("20003", "2024-04-02T09:00:00.000Z"),
        ] {
            s.contacts.push(hubspot_fake::contact(
                id,
                "late@example.com",
                "Late",
                "Person",
                at,
            ));
        }
    }
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ids, cursor) = rt.block_on(async {
        let (_d, inst) = hubspot_instance(json!({"lookback_minutes": 0}), &hp).await;
        // The watermark of an earlier run: 2024-02-05T10:00Z.
        let start = json!({"since": 1_707_127_200_000i64}).to_string();
        read_run(&inst, "contacts", Some(start), 400).await
    });
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 10_053, "every changed record is read");
    assert!(unique.contains(&"11049".to_string()) && unique.contains(&"20003".to_string()));
    let cursor: Value = serde_json::from_str(&cursor).unwrap();
    assert_eq!(cursor["since"], 1_712_048_400_000i64, "{cursor}");
    let seen = fake.requests();
    assert!(
        seen.iter().all(|r| r.status == 200),
        "no request past the cap"
    );
    assert!(
        seen.iter().any(|r| r.body["filterGroups"][0]["filters"][2]
            == json!({"propertyName": "hs_object_id", "operator": "GT", "value": "10999"})),
        "the split restarts above the last id read"
    );
}

#[test]
fn hubspot_lookback_reads_records_the_index_showed_late_once() {
    let fake = hubspot_fake_with_contacts();
    // Changed just before 105 (2024-02-05T10:00Z) but not yet in HubSpot's search index.
    fake.add_contact(hubspot_fake::contact(
        "107",
        "late@example.com",
        "Late",
        "Indexed",
        "2024-02-05T09:58:00.000Z",
    ));
    fake.hide_from_search("107");
    let hp = fake.host_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_d, inst) = hubspot_instance(json!({}), &hp).await;
        // An earlier run's watermark: 2024-02-04T12:00Z.
        let start = json!({"since": 1_707_048_000_000i64}).to_string();
        let (ids, cursor) = read_run(&inst, "contacts", Some(start), 10).await;
        assert_eq!(ids, ["105"]);
        fake.index("107");
        fake.clear_requests();
        let (ids, cursor) = read_run(&inst, "contacts", Some(cursor), 10).await;
        assert_eq!(ids, ["107"], "late in the index: read; 105 again: not emitted twice");
        let search = &fake.requests()[0].body;
        assert_eq!(
            search["filterGroups"][0]["filters"][0],
            json!({"propertyName": "lastmodifieddate", "operator": "GT", "value": (1_707_127_200_000i64 - 600_000).to_string()}),
            "10 minutes before the watermark by default"
        );
        let (ids, _) = read_run(&inst, "contacts", Some(cursor), 10).await;
        assert!(ids.is_empty(), "{ids:?}");
    });
}

#[test]
fn hubspot_fake_rejects_what_hubspot_rejects() {
    let fake = hubspot_fake_with_contacts();
    let hp = fake.host_port();
    let auth = format!("Bearer {HUBSPOT_TOKEN}");
    let a = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = raw_json(&hp, "GET", "/crm/v3/objects/contacts", &[], b"");
    assert_eq!(
        (status, body["category"].as_str()),
        (401, Some("INVALID_AUTHENTICATION"))
    );
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            "/crm/v3/objects/contacts",
            &[("Authorization", "Bearer pat-na1-nope")],
            b""
        )
        .0,
        401
    );
    let (status, body) = raw_json(&hp, "GET", "/crm/v3/objects/contacts?limit=101", &a, b"");
    assert_eq!(
        (status, body["category"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    assert_eq!(body["status"], "error");
    assert!(body["correlationId"].is_string());
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            "/crm/v3/objects/contacts?after=garbage",
            &a,
            b""
        )
        .0,
        400
    );
    let search = "/crm/v3/objects/contacts/search";
    assert_eq!(
        raw_json(&hp, "POST", search, &a, br#"{"limit":201}"#).0,
        400
    );
    let six_groups = json!({"filterGroups": vec![json!({"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}); 6]}).to_string();
    assert_eq!(
        raw_json(&hp, "POST", search, &a, six_groups.as_bytes()).0,
        400
    );
    let eleven = json!({"filterGroups": [{"filters": vec![json!({"propertyName": "email", "operator": "HAS_PROPERTY"}); 11]}]}).to_string();
    assert_eq!(raw_json(&hp, "POST", search, &a, eleven.as_bytes()).0, 400);
    let (status, body) = raw_json(&hp, "POST", search, &a, br#"{"after":"10000","limit":100}"#);
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("10,000"));
    assert_eq!(raw_json(&hp, "POST", search, &a, br#"{"filterGroups":[{"filters":[{"propertyName":"email","operator":"LIKE","value":"x"}]}]}"#).0, 400);
    assert_eq!(raw_json(&hp, "POST", search, &a, b"not json").0, 400);
    assert_eq!(
        raw_json(&hp, "GET", "/crm/v3/objects/deals", &a, b"").0,
        404
    );
    // What HubSpot serves: list headers, search by date in ms or ISO, unknown properties dropped.
    let (status, head, _) = raw(
        &hp,
        "GET",
        "/crm/v3/objects/contacts?limit=2&properties=email,bogus",
        &a,
        b"",
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-hubspot-ratelimit-remaining: 189"),
        "{head}"
    );
    let (_, body) = raw_json(
        &hp,
        "GET",
        "/crm/v3/objects/contacts?limit=2&properties=email,bogus",
        &a,
        b"",
    );
    assert!(body["results"][0]["properties"].get("bogus").is_none());
    assert!(body["paging"]["next"]["after"].is_string());
    let by_ms = json!({"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": "1707040800000"}]}]}).to_string();
    let (status, head, text) = raw(&hp, "POST", search, &a, by_ms.as_bytes());
    assert_eq!(status, 200);
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("x-hubspot-ratelimit-remaining"),
        "search has no rate-limit headers"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["total"], 2, "{body}");
    fake.throttle(1, "TEN_SECONDLY_ROLLING", None);
    let (status, body) = raw_json(&hp, "GET", "/crm/v3/objects/contacts", &a, b"");
    assert_eq!(
        (
            status,
            body["errorType"].as_str(),
            body["policyName"].as_str()
        ),
        (429, Some("RATE_LIMIT"), Some("TEN_SECONDLY_ROLLING"))
    );
}

// ---------------------------------------------------------------------------------------------
// Generic paginated JSON (http-json)

const JSON_TOKEN: &str = "json-api-token-7f3a9c";

fn json_fake_with_items() -> http_json_fake::Fake {
    let fake = http_json_fake::start_in_background(JSON_TOKEN);
    for i in 1..=5 {
        fake.add_item(http_json_fake::item(
            &format!("it_{i}"),
            &format!("member{i}@example.com"),
            &format!("2024-04-0{i}T12:00:00Z"),
        ));
    }
    fake
}

/// `plugin read http-json` against the fake's own address (the plugin's hosts are the operator's
/// to grant: `--allow-host`).
fn read_json(
    dir: &Path,
    config: &Value,
    secrets: &[String],
    cursor: Option<&str>,
    hp: &str,
) -> Result<ReadOut, String> {
    let config = config.to_string();
    let mut args = vec![
        "plugin",
        "read",
        "http-json",
        "--stream",
        "records",
        "--config",
        &config,
        "--allow-host",
        hp,
        "--allow-private",
        hp,
    ];
    for s in secrets {
        args.push("--secret");
        args.push(s);
    }
    if let Some(c) = cursor {
        args.push("--cursor");
        args.push(c);
    }
    let out = common::switchyard(dir, &args, "debug");
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

fn cursor_style_config(fake: &http_json_fake::Fake) -> Value {
    json!({
        "url": fake.url("/v1/items"),
        "records_path": "data.items",
        "id_field": "id",
        "updated_at_field": "updated_at",
        "incremental_param": "updated_since",
        "page_size": 2,
        "page_size_param": "limit",
        "pagination": {"type": "cursor", "cursor_path": "data.next_cursor", "cursor_param": "cursor"}
    })
}

#[test]
fn http_json_cursor_paging_then_incremental_reads() {
    let fake = json_fake_with_items();
    let dir = install("http-json");
    let hp = fake.host_port();
    let secrets = [format!("token={JSON_TOKEN}")];
    let config = cursor_style_config(&fake);
    let full = read_json(dir.path(), &config, &secrets, None, &hp).unwrap();
    assert_eq!(
        data_ids(&full.records),
        ["it_1", "it_2", "it_3", "it_4", "it_5"]
    );
    assert_eq!(full.records[2]["data"]["email"], "member3@example.com");
    assert_eq!(full.records[2]["updated_at"], "2024-04-03T12:00:00Z");
    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].param("cursor"), None);
    assert!(seen[1].param("cursor").is_some() && seen[2].param("cursor").is_some());
    assert!(seen
        .iter()
        .all(|r| r.param("limit") == Some("2") && r.param("updated_since").is_none()));
    assert!(
        !full.stderr.contains(JSON_TOKEN),
        "the token leaked into the logs"
    );
    assert!(!full.stderr.contains("member1@example.com"));

    fake.clear_requests();
    fake.update_item("it_2", "plan", json!("pro"), "2024-05-01T00:00:00Z");
    fake.add_item(http_json_fake::item(
        "it_6",
        "member6@example.com",
        "2024-04-20T00:00:00Z",
    ));
    let inc = read_json(dir.path(), &config, &secrets, Some(&full.cursor), &hp).unwrap();
    assert_eq!(
        data_ids(&inc.records),
        ["it_6", "it_2"],
        "only what changed; it_5 at the watermark is not read again"
    );
    assert_eq!(inc.records[1]["data"]["plan"], "pro");
    let seen = fake.requests();
    assert_eq!(seen[0].param("updated_since"), Some("2024-04-05T12:00:00Z"));
    let again = read_json(dir.path(), &config, &secrets, Some(&inc.cursor), &hp).unwrap();
    assert!(again.records.is_empty(), "{:?}", again.records);
}

#[test]
fn http_json_page_numbers_and_link_headers() {
    let fake = json_fake_with_items();
    let dir = install("http-json");
    let hp = fake.host_port();
    let secrets = [format!("token={JSON_TOKEN}")];
    // Page numbers, a bare API key in its own header, records under `results`.
    let pages = json!({
        "url": fake.url("/v2/items"), "records_path": "results", "updated_at_field": "updated_at",
        "auth_header": "X-Api-Key", "auth_prefix": "", "page_size": 2, "page_size_param": "per_page",
        "pagination": {"type": "page", "page_param": "page", "first_page": 1}
    });
    let out = read_json(dir.path(), &pages, &secrets, None, &hp).unwrap();
    assert_eq!(
        data_ids(&out.records),
        ["it_1", "it_2", "it_3", "it_4", "it_5"]
    );
    let pages_asked: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.param("page").unwrap_or("").to_string())
        .collect();
    assert_eq!(
        pages_asked,
        ["1", "2", "3"],
        "the short third page ends the run"
    );

    // Link headers, the body a bare array.
    fake.clear_requests();
    let link = json!({
        "url": fake.url("/v3/items"), "page_size": 2, "page_size_param": "per_page",
        "pagination": {"type": "link_header"}
    });
    let out = read_json(dir.path(), &link, &secrets, None, &hp).unwrap();
    assert_eq!(
        data_ids(&out.records),
        ["it_1", "it_2", "it_3", "it_4", "it_5"]
    );
    let uris: Vec<_> = fake.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        uris,
        [
            "/v3/items?per_page=2",
            "/v3/items?page=2&per_page=2",
            "/v3/items?page=3&per_page=2"
        ]
    );

    // A records_path that is not there says so.
    let wrong = json!({"url": fake.url("/v2/items"), "records_path": "data", "auth_header": "X-Api-Key", "auth_prefix": ""});
    let err = read_json(dir.path(), &wrong, &secrets, None, &hp).unwrap_err();
    assert!(err.contains("no array at `data` (records_path)"), "{err}");
    // An unknown config field is refused before any call.
    let err = read_json(
        dir.path(),
        &json!({"url": fake.url("/v1/items"), "recordz": "x"}),
        &secrets,
        None,
        &hp,
    )
    .unwrap_err();
    assert!(err.contains("recordz"), "{err}");
}

#[test]
fn http_json_429_bad_token_and_bad_cursor() {
    let fake = json_fake_with_items();
    let dir = install("http-json");
    let hp = fake.host_port();
    let config = cursor_style_config(&fake);
    let err = read_json(dir.path(), &config, &["token=wrong".into()], None, &hp).unwrap_err();
    assert!(
        err.contains("unauthorized: HTTP 401: missing or invalid credentials"),
        "{err}"
    );
    let check = switchyard(
        dir.path(),
        &[
            "plugin",
            "check",
            "http-json",
            "--config",
            &config.to_string(),
            "--secret",
            &format!("token={JSON_TOKEN}"),
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
    );
    assert!(ok(&check).contains("check passed"));
    fake.throttle(1, "4");
    let err = read_json(
        dir.path(),
        &config,
        &[format!("token={JSON_TOKEN}")],
        None,
        &hp,
    )
    .unwrap_err();
    assert!(
        err.contains("transient: HTTP 429: too many requests (retry after 4000 ms)"),
        "{err}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path(), Runtime::new(Limits::default()).unwrap()).unwrap();
        reg.install(&plugin_wasm("http-json")).await.unwrap();
        let plugin = reg.load("http-json", None).await.unwrap();
        let policy = HttpPolicy::new(
            &plugin.manifest().allowed_hosts,
            Some(std::slice::from_ref(&hp)),
            std::slice::from_ref(&hp),
        );
        let inst = PluginInstance::new(
            plugin,
            PluginConfig {
                config: config.to_string(),
                secrets: vec![("token".into(), JSON_TOKEN.into())],
            },
            policy,
        );
        assert!(inst.streams().await.unwrap()[0].incremental);
        fake.throttle(1, "4");
        assert_eq!(
            transient_after(inst.read("records", None).await),
            Some(4000)
        );
        let forged = json!({"next": "bm90LWEtY3Vyc29y"}).to_string();
        match inst.read("records", Some(&forged)).await {
            Err(PluginError::Plugin {
                error: CallError::InvalidConfig(m),
                ..
            }) => {
                assert!(
                    m.contains("HTTP 400: cursor is malformed or expired"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn http_json_fake_rejects_what_a_strict_api_rejects() {
    let fake = json_fake_with_items();
    let hp = fake.host_port();
    let bearer = format!("Bearer {JSON_TOKEN}");
    let a = [("Authorization", bearer.as_str())];
    assert_eq!(raw_json(&hp, "GET", "/v1/items", &[], b"").0, 401);
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            "/v1/items",
            &[("Authorization", "Bearer nope")],
            b""
        )
        .0,
        401
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v2/items", &a, b"").0,
        401,
        "v2 wants X-Api-Key"
    );
    let (status, body) = raw_json(&hp, "GET", "/v1/items?limit=101", &a, b"");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    assert_eq!(
        raw_json(
            &hp,
            "GET",
            "/v2/items?per_page=51",
            &[("X-Api-Key", JSON_TOKEN)],
            b""
        )
        .0,
        400
    );
    let (status, body) = raw_json(&hp, "GET", "/v1/items?cursor=garbage", &a, b"");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    assert_eq!(
        raw_json(&hp, "GET", "/v1/items?updated_since=yesterday", &a, b"").0,
        400
    );
    assert_eq!(raw_json(&hp, "GET", "/v3/items?page=0", &a, b"").0, 400);
    assert_eq!(raw_json(&hp, "POST", "/v1/items", &a, b"{}").0, 404);
    let (status, body) = raw_json(
        &hp,
        "GET",
        "/v1/items?limit=2&updated_since=2024-04-04T12:00:00Z",
        &a,
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        data_ids(body["data"]["items"].as_array().unwrap()),
        ["it_4", "it_5"],
        "inclusive updated_since"
    );
    assert!(body["data"]["next_cursor"].is_null());
}
