//! Stripe source: reads customers and charges from the Stripe API and verifies Stripe webhooks.
//!
//! Streams (both incremental):
//!
//! - `customers`: `GET https://api.stripe.com/v1/customers`. Record fields: `id`, `email`,
//!   `name`, `phone`, `description`, `metadata` (object), `created` (RFC 3339), `deleted`
//!   (webhooks only).
//! - `charges`: `GET https://api.stripe.com/v1/charges?expand[]=data.customer`. Record fields:
//!   `id`, `amount` (major units, e.g. 12.5), `amount_minor` (Stripe's integer, e.g. 1250),
//!   `currency` (upper-case ISO 4217), `status`, `paid`, `refunded`, `amount_refunded`,
//!   `customer_id`, `email` (the customer's, else the billing or receipt email), `name`,
//!   `description`, `payment_intent`, `created`. A succeeded charge carries the event
//!   `Charge Succeeded`, a failed one `Charge Failed` (and a `charge.refunded` webhook
//!   `Charge Refunded`), with properties `charge_id`, `amount`, `amount_minor`, `currency`,
//!   `customer_id`, `email`, `description`; the event's message id is `{charge id}:{what}`.
//!
//! Paging: `limit` (≤ 100) and `starting_after` = the last id of the previous page while
//! `has_more`. Stripe lists newest first and its list endpoints filter only by creation time, so a
//! stored cursor carries a `created` watermark (the newest creation time read) and the next run
//! asks for `created[gte]=watermark`, skipping the ids already read at exactly that second. Changes
//! to existing customers arrive through webhooks (`customer.updated`).
//!
//! Errors: Stripe's `{"error":{"type","code","param","message"}}` becomes the call error's text;
//! 401/403 are `unauthorized`; 429 and 5xx are transient, waiting `Retry-After` when Stripe sends it
//! and otherwise one second (Stripe's limits are per second).
//!
//! Webhooks: `Stripe-Signature: t=TIMESTAMP,v1=HEX[,v1=HEX...]`, where each `v1` is the hex
//! HMAC-SHA256 of `"{t}.{raw body}"` keyed with the endpoint's signing secret (`whsec_...`), and
//! the timestamp must be within the tolerance (300 s). The delivery id is the event id (`evt_...`).
//! `customer.created|updated|deleted` yield `customers` records, `charge.succeeded|failed|refunded`
//! yield `charges` records with their events; other event types are acknowledged with no records.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use switchyard_sdk::{
    cursor, debug,
    http::{Request, Response},
    outcome, schemars, time,
    watermark::Watermark,
    CallError, Capabilities, Context, Page, Plugin, Retry, Source, SourceEvent, SourceRecord,
    StreamInfo, StreamRecord, WebhookError, WebhookOutcome, WebhookRequest,
};

const API: &str = "https://api.stripe.com";
/// Stripe's largest `limit` on list endpoints.
const MAX_PAGE: u32 = 100;

/// Settings of one `[sources.NAME]` block using the Stripe plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Objects per page (Stripe's `limit`, 1-100); default 100.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 100))]
    pub page_size: u32,
    /// Read a connected account (`acct_...`) through Stripe Connect: sent as `Stripe-Account`.
    #[serde(default)]
    pub stripe_account: Option<String>,
    /// Pin the API version sent as `Stripe-Version`, e.g. `2024-06-20`; default: the account's.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Largest age of a webhook's signed timestamp, in seconds (default 300, as Stripe's libraries).
    #[serde(default = "default_tolerance")]
    pub webhook_tolerance_seconds: u64,
}

fn default_page_size() -> u32 {
    MAX_PAGE
}

fn default_tolerance() -> u64 {
    300
}

/// Where a stream's read stands. Serialised as the page cursor: the watermark on `created`
/// (Unix seconds; a run asks for `created[gte]` of it) and the page to read next.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(flatten)]
    pub mark: Watermark<i64>,
    /// `starting_after` of the next page; none before a run's first page and once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Customers,
    Charges,
}

impl Stream {
    fn parse(name: &str) -> Result<Stream, CallError> {
        match name {
            "customers" => Ok(Stream::Customers),
            "charges" => Ok(Stream::Charges),
            other => Err(CallError::InvalidConfig(format!(
                "unknown stream `{other}`; the Stripe source has `customers` and `charges`"
            ))),
        }
    }
}

/// Stripe's list envelope.
#[derive(Deserialize)]
struct List {
    data: Vec<Value>,
    #[serde(default)]
    has_more: bool,
}

struct Stripe;

impl Plugin for Stripe {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("api.stripe.com")
            .secret(
                "api_key",
                "Secret key (sk_live_...) or restricted key (rk_live_...) with read access to customers and charges; Dashboard > Developers > API keys",
                true,
            )
            .secret_value(
                "webhook_secret",
                "Signing secret of the webhook endpoint (whsec_...), needed to accept webhooks; Dashboard > Developers > Webhooks",
                false,
            )
            .max_batch_size(MAX_PAGE)
            // Stripe allows 100 requests/s in live mode and 25/s in test mode per account; stay
            // under the per-endpoint default of 25/s.
            .default_rate_per_second(20.0)
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let response = get(ctx, &format!("{API}/v1/customers?limit=1"))?;
        check_response(&response)
    }
}

impl Source for Stripe {
    fn streams(_ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        Ok(vec![
            StreamInfo {
                name: "customers".into(),
                description: "Stripe customers (id, email, name, phone, metadata, created)".into(),
                incremental: true,
            },
            StreamInfo {
                name: "charges".into(),
                description:
                    "Stripe charges with their customer's email; succeeded and failed charges are `Charge Succeeded` / `Charge Failed` events"
                        .into(),
                incremental: true,
            },
        ])
    }

    fn read(
        ctx: &Context<Config>,
        stream: &str,
        cursor: Option<String>,
    ) -> Result<Page, CallError> {
        let stream = Stream::parse(stream)?;
        let mut state: Cursor = cursor::parse(cursor.as_deref(), "Stripe")?;
        let url = list_url(stream, ctx.config.page_size, &state);
        let response = get(ctx, &url)?;
        check_response(&response)?;
        let list: List = response.json()?;
        let mut records = Vec::with_capacity(list.data.len());
        let mut last_id = None;
        for object in &list.data {
            let id = str_field(object, "id").ok_or_else(|| {
                CallError::Failed("Stripe returned an object without an `id`".into())
            })?;
            let created = object
                .get("created")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    CallError::Failed(format!("Stripe object {id} has no integer `created`"))
                })?;
            last_id = Some(id.to_string());
            // Already read at exactly the watermark second by the previous run.
            if state.mark.already_read(id, &created) {
                continue;
            }
            state.mark.observe(id, created);
            records.push(match stream {
                Stream::Customers => customer_record(object)?,
                Stream::Charges => charge_record(object, None)?,
            });
        }
        debug!(
            "stripe {}: {} records, has_more={}",
            stream_name(stream),
            records.len(),
            list.has_more
        );
        let more = list.has_more && last_id.is_some();
        let next = if more {
            Cursor {
                after: last_id,
                ..state
            }
        } else {
            Cursor {
                mark: state.mark.finished(),
                after: None,
            }
        };
        Ok(Page {
            records,
            cursor: Some(cursor::text(&next)),
            done: !more,
        })
    }

    fn webhook(
        ctx: &Context<Config>,
        request: WebhookRequest,
    ) -> Result<WebhookOutcome, WebhookError> {
        let secret = ctx.secret("webhook_secret").map_err(|_| {
            WebhookError::Unauthorized(
                "no `webhook_secret` is configured for this Stripe source, so no webhook can be verified"
                    .into(),
            )
        })?;
        let header = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("stripe-signature"))
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| WebhookError::Unauthorized("missing Stripe-Signature header".into()))?;
        verify_signature(
            header,
            &request.body,
            secret,
            time::now_unix(),
            ctx.config.webhook_tolerance_seconds,
        )
        .map_err(WebhookError::Unauthorized)?;
        let event: Value = serde_json::from_slice(&request.body)
            .map_err(|e| WebhookError::BadRequest(format!("body is not a Stripe event: {e}")))?;
        let (delivery_id, records) = event_records(&event).map_err(WebhookError::BadRequest)?;
        Ok(WebhookOutcome {
            delivery_id: Some(delivery_id),
            records,
        })
    }
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Customers => "customers",
        Stream::Charges => "charges",
    }
}

/// The list request for one page.
fn list_url(stream: Stream, page_size: u32, cursor: &Cursor) -> String {
    let limit = page_size.clamp(1, MAX_PAGE);
    let mut url = format!("{API}/v1/{}?limit={limit}", stream_name(stream));
    if let Some(since) = cursor.mark.since {
        let _ = write!(url, "&created%5Bgte%5D={since}");
    }
    if let Some(after) = &cursor.after {
        let _ = write!(url, "&starting_after={}", encode(after));
    }
    if stream == Stream::Charges {
        url.push_str("&expand%5B%5D=data.customer");
    }
    url
}

fn get(ctx: &Context<Config>, url: &str) -> Result<Response, CallError> {
    let mut request = Request::get(url).bearer_auth(&ctx.secret_placeholder("api_key"));
    if let Some(account) = &ctx.config.stripe_account {
        request = request.header("stripe-account", account);
    }
    if let Some(version) = &ctx.config.api_version {
        request = request.header("stripe-version", version);
    }
    Ok(request.send()?)
}

/// Maps a Stripe response to a call error, with Stripe's own error text.
pub fn check_response(response: &Response) -> Result<(), CallError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let message = format!("HTTP {status}: {}", error_text(&response.body));
    Err(match status {
        401 | 403 => CallError::Unauthorized(message),
        429 => {
            // Stripe's limiters work per second; without a Retry-After, wait one second.
            let after = outcome::retry_after_ms(response, time::now_unix()).unwrap_or(1000);
            CallError::Transient(Retry {
                reason: format!("{message} (retry after {after} ms)"),
                after_ms: Some(after),
            })
        }
        s if outcome::is_retryable_status(s) => {
            let after = outcome::retry_after_ms(response, time::now_unix());
            CallError::Transient(Retry {
                reason: match after {
                    Some(ms) => format!("{message} (retry after {ms} ms)"),
                    None => message,
                },
                after_ms: after,
            })
        }
        _ => CallError::Failed(message),
    })
}

/// `invalid_request_error (resource_missing, param starting_after): No such customer: 'cus_x'`.
pub fn error_text(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return outcome::api_message(body);
    };
    let Some(error) = value.get("error") else {
        return outcome::api_message(body);
    };
    let kind = str_field(error, "type").unwrap_or("error");
    let mut details = Vec::new();
    if let Some(code) = str_field(error, "code") {
        details.push(code.to_string());
    }
    if let Some(param) = str_field(error, "param") {
        details.push(format!("param {param}"));
    }
    let message = str_field(error, "message").unwrap_or("(no message)");
    if details.is_empty() {
        format!("{kind}: {message}")
    } else {
        format!("{kind} ({}): {message}", details.join(", "))
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn opt(v: &Value, key: &str) -> Value {
    v.get(key).cloned().unwrap_or(Value::Null)
}

/// A customer object as a record.
pub fn customer_record(c: &Value) -> Result<SourceRecord, CallError> {
    let id = str_field(c, "id").ok_or_else(|| CallError::Failed("customer without `id`".into()))?;
    let created = c.get("created").and_then(Value::as_i64);
    let mut data = Map::new();
    data.insert("id".into(), json!(id));
    for key in ["email", "name", "phone", "description"] {
        data.insert(key.into(), opt(c, key));
    }
    data.insert(
        "metadata".into(),
        c.get("metadata").cloned().unwrap_or_else(|| json!({})),
    );
    data.insert(
        "created".into(),
        created
            .map(time::rfc3339)
            .map_or(Value::Null, Value::String),
    );
    if c.get("deleted").and_then(Value::as_bool) == Some(true) {
        data.insert("deleted".into(), json!(true));
    }
    Ok(SourceRecord {
        id: id.to_string(),
        data: Value::Object(data).to_string(),
        updated_at: None,
        events: vec![],
    })
}

/// A charge object as a record with its event. `event_kind` overrides the event derived from the
/// charge's status (webhooks: `refunded`).
pub fn charge_record(ch: &Value, event_kind: Option<&str>) -> Result<SourceRecord, CallError> {
    let id = str_field(ch, "id").ok_or_else(|| CallError::Failed("charge without `id`".into()))?;
    let created = ch.get("created").and_then(Value::as_i64);
    let amount_minor = ch.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let currency = str_field(ch, "currency").unwrap_or("").to_ascii_uppercase();
    let amount = major_units(amount_minor, &currency);
    // `customer` is an id, or the customer object when expanded.
    let customer = ch.get("customer").unwrap_or(&Value::Null);
    let (customer_id, customer_email, customer_name) = match customer {
        Value::String(s) => (Some(s.as_str()), None, None),
        Value::Object(_) => (
            str_field(customer, "id"),
            str_field(customer, "email"),
            str_field(customer, "name"),
        ),
        _ => (None, None, None),
    };
    let billing = ch.get("billing_details").unwrap_or(&Value::Null);
    let email = customer_email
        .or_else(|| str_field(billing, "email"))
        .or_else(|| str_field(ch, "receipt_email"));
    let name = customer_name.or_else(|| str_field(billing, "name"));
    let created_at = created.map(time::rfc3339);
    let data = json!({
        "id": id,
        "amount": amount,
        "amount_minor": amount_minor,
        "currency": currency,
        "status": opt(ch, "status"),
        "paid": opt(ch, "paid"),
        "refunded": opt(ch, "refunded"),
        "amount_refunded": opt(ch, "amount_refunded"),
        "customer_id": customer_id,
        "email": email,
        "name": name,
        "description": opt(ch, "description"),
        "payment_intent": opt(ch, "payment_intent"),
        "created": created_at,
    });
    let kind = event_kind.or(match str_field(ch, "status") {
        Some("succeeded") => Some("succeeded"),
        Some("failed") => Some("failed"),
        _ => None,
    });
    let mut events = Vec::new();
    if let Some(kind) = kind {
        let name = match kind {
            "succeeded" => "Charge Succeeded",
            "failed" => "Charge Failed",
            "refunded" => "Charge Refunded",
            _ => "Charge Updated",
        };
        let mut properties = json!({
            "charge_id": id,
            "amount": amount,
            "amount_minor": amount_minor,
            "currency": currency,
            "customer_id": customer_id,
            "email": email,
            "description": opt(ch, "description"),
        });
        if kind == "failed" {
            properties["failure_code"] = opt(ch, "failure_code");
            properties["failure_message"] = opt(ch, "failure_message");
        }
        if kind == "refunded" {
            properties["amount_refunded"] = opt(ch, "amount_refunded");
        }
        events.push(SourceEvent {
            name: name.to_string(),
            message_id: format!("{id}:{kind}"),
            timestamp: created_at
                .clone()
                .unwrap_or_else(|| time::rfc3339(time::now_unix() as i64)),
            properties: properties.to_string(),
        });
    }
    Ok(SourceRecord {
        id: id.to_string(),
        data: data.to_string(),
        updated_at: None,
        events,
    })
}

/// Stripe amounts are in the currency's smallest unit; zero- and three-decimal currencies differ.
pub fn major_units(minor: i64, currency: &str) -> f64 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "JOD", "KWD", "OMR", "TND"];
    if ZERO.contains(&currency) {
        minor as f64
    } else if THREE.contains(&currency) {
        minor as f64 / 1000.0
    } else {
        minor as f64 / 100.0
    }
}

/// Turns a verified event into records. Returns the event id and the records.
pub fn event_records(event: &Value) -> Result<(String, Vec<StreamRecord>), String> {
    let id = str_field(event, "id").ok_or("Stripe event without `id`")?;
    let kind = str_field(event, "type").ok_or("Stripe event without `type`")?;
    let object = event
        .get("data")
        .and_then(|d| d.get("object"))
        .ok_or("Stripe event without `data.object`")?;
    let bad = |e: CallError| outcome::describe_call_error(&e);
    let records = match kind {
        "customer.created" | "customer.updated" | "customer.deleted" => {
            let mut object = object.clone();
            if kind == "customer.deleted" {
                object["deleted"] = json!(true);
            }
            vec![StreamRecord {
                stream: "customers".into(),
                record: customer_record(&object).map_err(bad)?,
            }]
        }
        "charge.succeeded" | "charge.failed" | "charge.refunded" => {
            let what = kind.trim_start_matches("charge.");
            vec![StreamRecord {
                stream: "charges".into(),
                record: charge_record(object, Some(what)).map_err(bad)?,
            }]
        }
        _ => vec![],
    };
    Ok((id.to_string(), records))
}

/// Verifies a `Stripe-Signature` header against the raw body. Errors say why, never the secret.
pub fn verify_signature(
    header: &str,
    body: &[u8],
    secret: &str,
    now: u64,
    tolerance: u64,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => timestamp = v.parse::<u64>().ok(),
            "v1" => signatures.push(v),
            _ => {}
        }
    }
    let t = timestamp.ok_or("Stripe-Signature has no valid timestamp `t`")?;
    if signatures.is_empty() {
        return Err("Stripe-Signature has no `v1` signature".into());
    }
    if now.abs_diff(t) > tolerance {
        return Err(format!(
            "Stripe-Signature timestamp {t} is outside the tolerance of {tolerance} s"
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| "unusable webhook secret".to_string())?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if signatures
        .iter()
        .any(|s| constant_time_eq(s.as_bytes(), expected.as_bytes()))
    {
        Ok(())
    } else {
        Err("no Stripe-Signature v1 signature matches the body".into())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

switchyard_sdk::export_source!(Stripe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_stripe_scheme() {
        // Computed as Stripe's libraries do: hex(HMAC-SHA256(secret, "{t}.{body}")).
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_1","type":"customer.created"}"#;
        let t = 1_700_000_000u64;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let header = format!("t={t},v1={sig},v0=ignored");
        assert_eq!(verify_signature(&header, body, secret, t + 10, 300), Ok(()));
        // Several v1 signatures (secret rotation): one match is enough.
        let rotated = format!("t={t},v1={},v1={sig}", "0".repeat(64));
        assert_eq!(verify_signature(&rotated, body, secret, t, 300), Ok(()));
        // Stale or future timestamps.
        assert!(verify_signature(&header, body, secret, t + 301, 300)
            .unwrap_err()
            .contains("tolerance"));
        assert!(verify_signature(&header, body, secret, t - 301, 300).is_err());
        // Tampered body, wrong secret, missing parts.
        assert!(verify_signature(&header, b"{}", secret, t, 300).is_err());
        assert!(verify_signature(&header, body, "whsec_other", t, 300).is_err());
        assert!(verify_signature(&format!("v1={sig}"), body, secret, t, 300).is_err());
        assert!(verify_signature(&format!("t={t}"), body, secret, t, 300).is_err());
    }

    #[test]
    fn known_hmac_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn cursor_text_keeps_its_keys() {
        // Cursors stored by earlier versions use these keys: they must still parse.
        let stored =
            r#"{"since":300,"seen":["cus_3"],"max":400,"max_ids":["cus_5"],"after":"cus_9"}"#;
        let c = cursor::parse::<Cursor>(Some(stored), "Stripe").unwrap();
        assert_eq!(c.mark.since, Some(300));
        assert_eq!(c.mark.seen, ["cus_3"]);
        assert_eq!(c.mark.max, Some(400));
        assert_eq!(c.after.as_deref(), Some("cus_9"));
        assert_eq!(
            cursor::parse::<Cursor>(Some(&cursor::text(&c)), "Stripe").unwrap(),
            c
        );
        assert!(matches!(
            cursor::parse::<Cursor>(Some("garbage"), "Stripe"),
            Err(CallError::Failed(_))
        ));
        assert_eq!(
            cursor::parse::<Cursor>(None, "Stripe").unwrap(),
            Cursor::default()
        );
        assert_eq!(cursor::text(&Cursor::default()), "{}");
    }

    #[test]
    fn list_urls() {
        let c = Cursor {
            mark: Watermark {
                since: Some(1_680_000_000),
                ..Watermark::default()
            },
            after: Some("cus_A b".into()),
        };
        assert_eq!(
            list_url(Stream::Customers, 500, &c),
            "https://api.stripe.com/v1/customers?limit=100&created%5Bgte%5D=1680000000&starting_after=cus_A%20b"
        );
        assert_eq!(
            list_url(Stream::Charges, 10, &Cursor::default()),
            "https://api.stripe.com/v1/charges?limit=10&expand%5B%5D=data.customer"
        );
    }

    #[test]
    fn charge_becomes_event_linked_to_customer() {
        let ch = json!({"id":"ch_1","object":"charge","amount":1999,"currency":"usd","status":"succeeded",
            "paid":true,"refunded":false,"amount_refunded":0,"created":1680893993,
            "customer":{"id":"cus_1","object":"customer","email":"jenny@example.com","name":"Jenny"},
            "billing_details":{"email":"other@example.com"}});
        let r = charge_record(&ch, None).unwrap();
        let data: Value = serde_json::from_str(&r.data).unwrap();
        assert_eq!(data["email"], "jenny@example.com");
        assert_eq!(data["customer_id"], "cus_1");
        assert_eq!(data["amount"], 19.99);
        assert_eq!(data["currency"], "USD");
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].name, "Charge Succeeded");
        assert_eq!(r.events[0].message_id, "ch_1:succeeded");
        assert_eq!(r.events[0].timestamp, "2023-04-07T18:59:53Z");
        let p: Value = serde_json::from_str(&r.events[0].properties).unwrap();
        assert_eq!(p["amount"], 19.99);
        assert_eq!(p["email"], "jenny@example.com");
        // Unexpanded customer: the billing email links it; pending charges carry no event.
        let pending = json!({"id":"ch_2","amount":500,"currency":"jpy","status":"pending",
            "customer":"cus_2","billing_details":{"email":"b@example.com"},"created":0});
        let r = charge_record(&pending, None).unwrap();
        let data: Value = serde_json::from_str(&r.data).unwrap();
        assert_eq!(data["customer_id"], "cus_2");
        assert_eq!(data["email"], "b@example.com");
        assert_eq!(data["amount"], 500.0);
        assert!(r.events.is_empty());
    }

    #[test]
    fn stripe_errors_are_described_and_mapped() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"starting_after","message":"No such customer: 'cus_x'"}}"#;
        assert_eq!(
            error_text(body),
            "invalid_request_error (resource_missing, param starting_after): No such customer: 'cus_x'"
        );
        let resp = |status: u16, headers: Vec<(String, String)>| Response {
            status,
            headers,
            body: body.to_vec(),
        };
        assert!(matches!(
            check_response(&resp(401, vec![])),
            Err(CallError::Unauthorized(_))
        ));
        match check_response(&resp(429, vec![("retry-after".into(), "3".into())])) {
            Err(CallError::Transient(r)) => assert_eq!(r.after_ms, Some(3000)),
            other => panic!("{other:?}"),
        }
        match check_response(&resp(429, vec![])) {
            Err(CallError::Transient(r)) => assert_eq!(r.after_ms, Some(1000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_response(&resp(400, vec![])),
            Err(CallError::Failed(_))
        ));
    }

    #[test]
    fn zero_decimal_currencies() {
        assert_eq!(major_units(1234, "JPY"), 1234.0);
        assert_eq!(major_units(1234, "KWD"), 1.234);
        assert_eq!(major_units(1234, "EUR"), 12.34);
    }
}
