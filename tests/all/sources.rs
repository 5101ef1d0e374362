//! Source runs and push sources end to end: the real `switchyard` binary reads the Stripe and
//! Shopify source plugins from faithful fakes of their APIs (rerouted to loopback) into the
//! profile store, page by page and incrementally from the stored cursor; a run killed with
//! SIGKILL resumes from its last committed page with nothing lost or applied twice; 429s are
//! waited out; source records and tracking-API messages for the same email share one profile;
//! signed webhooks are verified by the plugin (`POST /v1/webhooks/{source}`), and wrong
//! signatures, stale timestamps and replayed deliveries are refused.
//!
//! Needs the plugins built first: `tools/build-plugins` (tools/test does it).

use crate::common;

use crate::fakes::shopify as shopify_fake;
use crate::fakes::stripe as stripe_fake;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hub::{Db, Hub};
use common::ok;
use serde_json::{json, Value};

const STRIPE_KEY: &str = "sk_test_51FakeKeyForTests0000abcd";
const STRIPE_WHSEC: &str = "whsec_testEndpointSecret123";
const SHOP: &str = "test-shop.myshopify.com";
const SHOPIFY_TOKEN: &str = "shpat_0123456789abcdef0123456789abcdef";
const SHOPIFY_SECRET: &str = "shopify-app-client-secret";

fn stripe_source(name: &str, fake: &stripe_fake::Fake, page_size: u32, extra: &str) -> String {
    let hp = fake.host_port();
    format!(
        "[sources.{name}]\nplugin = \"stripe\"\nconfig = {{ page_size = {page_size} }}\n\
         secrets = {{ api_key = \"{STRIPE_KEY}\", webhook_secret = \"{STRIPE_WHSEC}\" }}\n\
         reroute = [\"api.stripe.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n{extra}\n\
         [sources.{name}.streams.customers]\nidentifiers = {{ email = \"email\" }}\n\
         traits = {{ name = \"name\", phone = \"phone\", plan = \"metadata.plan\" }}\n\n\
         [sources.{name}.streams.charges]\nidentifiers = {{ email = \"email\" }}\ntraits = {{ last_charge_currency = \"currency\" }}\n\n"
    )
}

fn stripe_fake(customers: usize) -> stripe_fake::Fake {
    let fake = stripe_fake::start_in_background(STRIPE_KEY);
    for i in 1..=customers {
        fake.add_customer(stripe_fake::customer(
            &format!("cus_{i}"),
            &format!("user{i}@example.com"),
            &format!("User {i}"),
            1_700_000_000 + i as i64 * 100,
        ));
    }
    fake
}

fn runs(hub: &Hub, source: &str) -> Vec<Value> {
    ok(&hub.cli(&["source", "runs", source]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stripe_full_then_incremental(db: Db) {
    let fake = stripe_fake(5);
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
        "eur",
        "failed",
        1_700_001_100,
    ));
    fake.add_charge(stripe_fake::charge(
        "ch_3",
        "cus_2",
        2500,
        "usd",
        "succeeded",
        1_700_001_200,
    ));
    let project = format!(
        "{}[audiences.payers]\nfilter = 'events[\"Charge Succeeded\"].count >= 2'\n",
        stripe_source("billing", &fake, 2, "")
    );
    let hub = Hub::start_project(db, "", &project, &[]);
    hub.install(&["stripe"]);

    let out = ok(&hub.cli(&["source", "run", "billing"]));
    assert!(out.contains("billing: succeeded"), "{out}");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM identifiers WHERE kind = 'email'"),
        5
    );
    let p = hub
        .profile("email:user2@example.com")
        .expect("profile of a Stripe customer");
    assert_eq!(p["traits"]["name"], "User 2", "{p}");
    assert_eq!(p["traits"]["plan"], "pro", "{p}");
    assert_eq!(p["traits"]["last_charge_currency"], "USD", "{p}");
    // Charges became events of the customer's profile, with Stripe's properties.
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE source = 'billing' AND kind = 'track'"),
        3
    );
    let events = hub
        .admin_get("/v1/profiles/email:user2@example.com/events")
        .json();
    let names: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "Charge Succeeded").count(),
        2,
        "{events}"
    );
    let bodies = hub.strings(
        "SELECT body FROM events WHERE message_id = 'src:billing:charges:ch_1:ch_1:succeeded'",
    );
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["properties"]["amount"], 19.99);
    assert_eq!(body["properties"]["currency"], "USD");
    // Usable by audiences: two succeeded charges make user2 a payer, and only user2.
    let preview = ok(&hub.cli(&["audiences", "preview", "payers"]));
    assert!(preview.starts_with("payers: 1 profiles"), "{preview}");
    assert!(preview.contains("user2@example.com"), "{preview}");

    let history = runs(&hub, "billing");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(
        history[0]["records"], 8,
        "5 customers + 3 charges: {history:?}"
    );
    assert_eq!(history[0]["events"], 3);
    // 5 customers at 2 a page, 3 charges at 2 a page.
    assert_eq!(history[0]["pages"], 5, "{history:?}");
    assert_eq!(fake.requests().len(), 5);

    // Incremental: only what is new is fetched and applied.
    fake.clear_requests();
    fake.add_customer(stripe_fake::customer(
        "cus_6",
        "user6@example.com",
        "User 6",
        1_700_000_900,
    ));
    fake.add_charge(stripe_fake::charge(
        "ch_4",
        "cus_6",
        100,
        "usd",
        "succeeded",
        1_700_001_300,
    ));
    ok(&hub.cli(&["source", "run", "billing"]));
    let seen = fake.requests();
    assert!(
        seen.iter().all(|r| r.param("created[gte]").is_some()),
        "incremental reads filter by creation: {seen:?}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 6);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE source = 'billing'"),
        4
    );
    let history = runs(&hub, "billing");
    assert_eq!(
        history[0]["records"], 2,
        "only the new customer and charge: {history:?}"
    );

    // A full refresh reads everything again and changes nothing: no new profile, no event twice.
    fake.clear_requests();
    let out = ok(&hub.cli(&["source", "run", "billing", "--full-refresh"]));
    assert!(out.contains("0 new events"), "{out}");
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.param("created[gte]").is_none()));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 6);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE source = 'billing'"),
        4
    );
    assert_eq!(runs(&hub, "billing")[0]["records"], 10);

    let list = ok(&hub.cli(&["source", "list"]));
    assert!(
        list.contains("billing\tplugin stripe\tstreams charges,customers\tmanual\tlast: succeeded"),
        "{list}"
    );
}

#[test]
fn stripe_full_then_incremental_sqlite() {
    stripe_full_then_incremental(Db::Sqlite);
}

#[test]
fn stripe_full_then_incremental_postgres() {
    stripe_full_then_incremental(Db::Postgres);
}

#[test]
fn a_source_record_and_a_tracking_event_share_one_profile() {
    let fake = stripe_fake(2);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 100, ""),
        &[],
    );
    hub.install(&["stripe"]);
    let r = hub.track(
        "identify",
        json!({"userId": "u-1", "traits": {"email": "USER1@example.com", "favourite": "tea"}, "timestamp": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = hub.track(
        "track",
        json!({"userId": "u-1", "event": "Signed Up", "timestamp": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&hub.cli(&["source", "run", "billing"]));
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM profiles"),
        2,
        "user1's record joined the tracked profile"
    );
    let p = hub.profile("user_id:u-1").unwrap();
    assert_eq!(
        hub.profile("email:user1@example.com").unwrap()["id"],
        p["id"]
    );
    assert_eq!(p["traits"]["favourite"], "tea", "{p}");
    assert_eq!(p["traits"]["name"], "User 1", "{p}");
    let profile_id = p["id"].as_str().unwrap();
    assert_eq!(
        hub.count(&format!(
            "SELECT COUNT(*) FROM events WHERE profile_id = '{profile_id}' AND name = 'Signed Up'"
        )),
        1
    );
}

/// `switchyard source run` killed with SIGKILL mid-run (while it waits out a 429), then run
/// again: it resumes from the last committed page, and every record is stored exactly once.
#[test]
fn a_killed_run_resumes_from_its_last_committed_page() {
    let fake = stripe_fake(40);
    for i in 1..=40 {
        fake.add_charge(stripe_fake::charge(
            &format!("ch_{i}"),
            &format!("cus_{i}"),
            100 * i,
            "usd",
            "succeeded",
            1_700_010_000 + i,
        ));
    }
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 1, ""),
        &[("SWITCHYARD_LEASE_MS", "1000")],
    );
    hub.install(&["stripe"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(hub.plugins_dir())
        .args(["source", "run", "billing", "--config"])
        .arg(&hub.config)
        .env("SWITCHYARD_LOG", "warn")
        .env("SWITCHYARD_LEASE_MS", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let a few pages of charges land, then make Stripe throttle so the run stalls mid-stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the run never reached the charges"
        );
        if hub.count("SELECT COUNT(*) FROM events") >= 3 {
            fake.throttle(1000, Some("1"));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let events_before = hub.count("SELECT COUNT(*) FROM events");
    assert!(
        (3..40).contains(&events_before),
        "killed mid-stream: {events_before} events"
    );
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM source_runs WHERE status = 'running'"),
        1
    );
    let cursor = hub.strings("SELECT cursor FROM source_cursors WHERE stream = 'charges'");
    assert!(
        !cursor.is_empty() && cursor[0].contains("ch_"),
        "the committed page's cursor: {cursor:?}"
    );

    fake.throttle(0, None);
    fake.clear_requests();
    std::thread::sleep(Duration::from_millis(1100)); // the dead run's lease expires
    let out = ok(&hub.cli(&["source", "run", "billing"]));
    assert!(out.contains("succeeded"), "{out}");
    let first = &fake.requests()[0];
    assert!(
        first.uri.starts_with("/v1/charges"),
        "charges (read first) resume: {first:?}"
    );
    assert!(
        first.param("starting_after").is_some(),
        "resumed after the last committed page: {first:?}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 40);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 40);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        40,
        "every charge once"
    );
    let history = runs(&hub, "billing");
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[1]["status"], "interrupted");
    let resumed_records = history[0]["records"].as_i64().unwrap();
    assert_eq!(
        resumed_records,
        40 - events_before + 40,
        "the resumed run read only the charges not committed, then the customers: {history:?}"
    );
}

#[test]
fn a_429_is_waited_out_then_a_run_fails_with_the_reason() {
    let fake = stripe_fake(3);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 100, ""),
        &[("SWITCHYARD_SOURCE_ATTEMPTS", "3")],
    );
    hub.install(&["stripe"]);
    fake.throttle(2, Some("1"));
    let started = Instant::now();
    let out = ok(&hub.cli(&["source", "run", "billing"]));
    assert!(
        out.contains("succeeded") && out.contains("2 retries"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice: {:?}",
        started.elapsed()
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 3);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], &[429, 429, 200], "{statuses:?}");

    fake.throttle(10, Some("1"));
    let out = hub.cli(&["source", "run", "billing", "--full-refresh"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("billing: failed"), "{stdout}");
    assert!(
        stdout.contains("after 3 attempts") && stdout.contains("429"),
        "{stdout}"
    );
    let history = runs(&hub, "billing");
    assert_eq!(history[0]["status"], "failed");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("Request rate limit exceeded"),
        "{history:?}"
    );
}

fn stripe_signed(body: &str, t: u64, secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn stripe_webhooks_are_verified_applied_once_and_refused_when_stale_or_wrong() {
    let fake = stripe_fake(0);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 100, ""),
        &[],
    );
    hub.install(&["stripe"]);
    let body = json!({
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "charge.succeeded", "api_version": "2024-06-20",
        "created": 1_700_000_000,
        "data": {"object": {
            "id": "ch_9", "object": "charge", "amount": 4200, "amount_refunded": 0, "created": 1_700_000_000, "currency": "usd",
            "customer": "cus_9", "billing_details": {"email": "payer@example.com", "name": "Payer"}, "description": "Order",
            "paid": true, "refunded": false, "status": "succeeded", "payment_intent": "pi_9", "receipt_email": null, "metadata": {}
        }}
    })
    .to_string();
    let post = |sig: &str, body: &str| {
        hub.request(
            "POST",
            "/v1/webhooks/billing",
            &[
                ("stripe-signature", sig),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let t = now_unix();
    // A wrong signature, and a stale timestamp: 401, nothing stored.
    let r = post(&stripe_signed(&body, t, "whsec_wrong"), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = post(&stripe_signed(&body, t - 3600, STRIPE_WHSEC), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 0);
    assert_eq!(hub.count("SELECT COUNT(*) FROM source_deliveries"), 0);
    // Signed right: applied.
    let r = post(&stripe_signed(&body, t, STRIPE_WHSEC), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "applied");
    assert_eq!(r.json()["events"], 1);
    let p = hub
        .profile("email:payer@example.com")
        .expect("the webhook built a profile");
    assert_eq!(p["traits"]["last_charge_currency"], "USD");
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE name = 'Charge Succeeded'"),
        1
    );
    // The same delivery again (a replay, freshly signed): refused as a duplicate, nothing stored.
    let r = post(&stripe_signed(&body, now_unix(), STRIPE_WHSEC), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(hub.count("SELECT COUNT(*) FROM source_deliveries"), 1);
    // Unknown sources and sources without a plugin are 404.
    let r = hub.request("POST", "/v1/webhooks/web", &[], body.as_bytes());
    assert_eq!(r.status, 404, "{}", r.text());
    let metrics = hub.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains(
            "switchyard_source_webhooks_total{source=\"billing\",status=\"unauthorized\"} 2"
        ),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shopify

fn shopify_source(fake: &shopify_fake::Fake, page_size: u32) -> String {
    let hp = fake.host_port();
    format!(
        "[sources.shop]\nplugin = \"shopify\"\nconfig = {{ shop = \"test-shop\", page_size = {page_size} }}\n\
         secrets = {{ access_token = \"{SHOPIFY_TOKEN}\", webhook_secret = \"{SHOPIFY_SECRET}\" }}\n\
         reroute = [\"{SHOP}=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
         [sources.shop.streams.customers]\nidentifiers = {{ email = \"email\" }}\n\
         traits = {{ first_name = \"first_name\", last_name = \"last_name\", country = \"country_code\" }}\n\n\
         [sources.shop.streams.orders]\nidentifiers = {{ email = \"email\" }}\n\n"
    )
}

fn shopify_fake() -> shopify_fake::Fake {
    let fake = shopify_fake::start_in_background(SHOP, SHOPIFY_TOKEN);
    for i in 0..5u64 {
        fake.add_customer(shopify_fake::customer(
            1000 + i,
            &format!("buyer{i}@example.com"),
            &format!("Buyer{i}"),
            "Shop",
            &format!("2024-01-05T15:00:0{i}Z"),
        ));
    }
    fake.add_order(shopify_fake::order(
        5001,
        1001,
        1000,
        "buyer0@example.com",
        3,
        "2024-03-01T10:00:00-05:00",
    ));
    fake.add_order(shopify_fake::order(
        5002,
        1002,
        1001,
        "buyer1@example.com",
        1,
        "2024-03-02T10:00:00-05:00",
    ));
    fake
}

#[test]
fn shopify_full_then_incremental_and_signed_webhooks() {
    let fake = shopify_fake();
    let hub = Hub::start_project(Db::Sqlite, "", &shopify_source(&fake, 2), &[]);
    hub.install(&["shopify"]);
    ok(&hub.cli(&["source", "run", "shop"]));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 5);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM identifiers WHERE kind = 'email'"),
        5
    );
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE name = 'Order Completed'"),
        2
    );
    let history = runs(&hub, "shop");
    assert_eq!(history[0]["records"], 7);
    assert_eq!(
        history[0]["pages"],
        3 + 1,
        "5 customers at 2 a page, 2 orders on one page: {history:?}"
    );

    // Edited in the admin: only the changed customer is fetched, and its trait changes.
    fake.clear_requests();
    fake.update_customer(1003, "first_name", json!("Renamed"), "2024-02-01T09:00:00Z");
    ok(&hub.cli(&["source", "run", "shop"]));
    let seen = fake.requests();
    assert_eq!(
        seen[0].param("updated_at_min"),
        Some("2024-01-05T15:00:04Z"),
        "{seen:?}"
    );
    assert_eq!(
        runs(&hub, "shop")[0]["records"],
        1,
        "only the edited customer"
    );
    let traits = hub.strings(
        "SELECT t.value FROM traits t JOIN identifiers i ON i.profile_id = t.profile_id \
         WHERE i.kind = 'email' AND i.value = 'buyer3@example.com' AND t.name = 'first_name'",
    );
    assert_eq!(traits, ["\"Renamed\""]);

    // Webhooks: orders/create signed with the app secret.
    let order = shopify_fake::order(
        6001,
        1003,
        1004,
        "buyer4@example.com",
        2,
        "2024-05-01T12:00:00-04:00",
    )
    .to_string();
    let sign = |body: &str, secret: &str| {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            mac.finalize().into_bytes(),
        )
    };
    let post = |sig: &str, id: &str, body: &str| {
        hub.request(
            "POST",
            "/v1/webhooks/shop",
            &[
                ("x-shopify-topic", "orders/create"),
                ("x-shopify-hmac-sha256", sig),
                ("x-shopify-shop-domain", SHOP),
                ("x-shopify-webhook-id", id),
                ("x-shopify-api-version", "2025-07"),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let r = post(&sign(&order, "not-the-secret"), "wh-1", &order);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events"),
        2,
        "nothing stored"
    );
    let r = post(&sign(&order, SHOPIFY_SECRET), "wh-1", &order);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "applied");
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE name = 'Order Completed'"),
        3
    );
    let r = post(&sign(&order, SHOPIFY_SECRET), "wh-1", &order);
    assert_eq!(r.json()["status"], "duplicate", "a replayed delivery id");
    // A new delivery of the same order (orders/updated, say) stores no second event either:
    // the event's message id is the order's.
    let r = post(&sign(&order, SHOPIFY_SECRET), "wh-2", &order);
    assert_eq!(r.json()["status"], "applied");
    assert_eq!(r.json()["events"], 0);
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM events WHERE name = 'Order Completed'"),
        3
    );
    // A body that is not JSON, properly signed: 400.
    let r = post(&sign("not json", SHOPIFY_SECRET), "wh-3", "not json");
    assert_eq!(r.status, 400, "{}", r.text());
}

/// The serving hub runs a scheduled source; killed with SIGKILL mid-run and restarted, it resumes
/// the unfinished run at once and ends with every record stored once.
#[test]
fn a_killed_hub_resumes_its_scheduled_source_run() {
    let fake = stripe_fake(40);
    let mut hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 1, ""),
        &[("SWITCHYARD_LEASE_MS", "1000")],
    );
    hub.install(&["stripe"]);
    // Now that the plugin is installed, schedule the source and restart: the first run is due now.
    hub.kill();
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace(
            "plugin = \"stripe\"\n",
            "plugin = \"stripe\"\nschedule = \"every 1h\"\n",
        ),
    )
    .unwrap();
    hub.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.count("SELECT COUNT(*) FROM profiles") < 3 {
        assert!(Instant::now() < deadline, "the scheduled run did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    fake.throttle(1000, Some("1"));
    std::thread::sleep(Duration::from_millis(300));
    hub.kill();
    let before = hub.count("SELECT COUNT(*) FROM profiles");
    assert!(before < 40, "{before}");
    fake.throttle(0, None);
    std::thread::sleep(Duration::from_millis(1100));
    hub.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = hub.count("SELECT COUNT(*) FROM source_runs WHERE status = 'succeeded'");
        if done >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 40);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 40);
    assert!(hub.count("SELECT COUNT(*) FROM source_runs WHERE status = 'interrupted'") >= 1);
}

/// `switchyard validate` checks each plugin source: installed, a source, its config against the
/// plugin's JSON Schema, its secrets; and the file's own rules (kinds, schedules), all at once.
#[test]
fn validate_reports_every_source_problem() {
    let fake = stripe_fake(0);
    let hub = Hub::start_project(
        Db::Sqlite,
        "",
        &stripe_source("billing", &fake, 100, ""),
        &[],
    );
    hub.install(&["stripe", "webhook"]);
    let path = hub.dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[sources.billing]\nplugin = \"stripe\"\nconfig = { page_size = 500 }\nsecrets = { token = \"x\" }\n\
         [sources.billing.streams.customers]\nidentifiers = { email = \"email\", customer = \"id\" }\n\n\
         [sources.hooks]\nplugin = \"webhook\"\nschedule = \"every fortnight\"\n[sources.hooks.streams.x]\nidentifiers = { email = \"e\" }\n\n\
         [sources.gone]\nplugin = \"not-installed\"\n[sources.gone.streams.x]\nidentifiers = { email = \"e\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(hub.plugins_dir())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[sources.billing.streams.customers] identifiers.customer: kind `customer` is not in [identity.kinds]",
        "[sources.hooks] schedule: `every fortnight`",
        "[sources.billing] config.page_size",
        "[sources.billing] secrets.api_key is missing",
        "[sources.billing] secrets.token: plugin `stripe` declares no such secret",
        "[sources.hooks] plugin `webhook` is a destination plugin, not a source",
        "[sources.gone]",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
