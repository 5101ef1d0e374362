//! Shopify source: reads customers and orders from the Admin REST API of one shop and verifies
//! Shopify webhooks.
//!
//! Streams (both incremental by `updated_at`):
//!
//! - `customers`: `GET https://{shop}.myshopify.com/admin/api/{version}/customers.json`. Record
//!   fields: `id`, `email`, `first_name`, `last_name`, `phone`, `state`, `verified_email`,
//!   `accepts_marketing` (email marketing consent is `subscribed`), `tags`, `orders_count`,
//!   `total_spent`, `currency`, `city`, `country_code`, `created_at`, `updated_at`, `deleted`
//!   (webhook `customers/delete` only).
//! - `orders`: `.../orders.json?status=any`. Record fields: `id`, `name` (`#1001`),
//!   `order_number`, `email` (the order's, else its customer's), `customer_id`,
//!   `financial_status`, `fulfillment_status`, `total_price` (number), `subtotal_price`,
//!   `total_tax`, `currency`, `line_item_count`, `quantity`, `created_at`, `updated_at`,
//!   `processed_at`, `cancelled_at`. Every order is an `Order Completed` event (message id = the
//!   order id, time = `processed_at`) with properties `order_id`, `order_number`, `name`, `total`,
//!   `subtotal`, `tax`, `currency`, `line_item_count`, `quantity`, `email`, `customer_id`,
//!   `products` (`product_id`, `variant_id`, `sku`, `name`, `price`, `quantity`); a cancelled one
//!   also `Order Cancelled` (message id `{id}:cancelled`).
//!
//! Paging: `limit` (≤ 250) and the `page_info` of the `Link: <...>; rel="next"` header; once a
//! `page_info` is sent only `limit` may accompany it (the filters live in the cursor). Requests are
//! ordered `updated_at asc` and filtered `updated_at_min=` the watermark the previous run left
//! (the newest `updated_at` it read), skipping ids already read in that very second.
//!
//! Rate limits: Shopify's leaky bucket (`X-Shopify-Shop-Api-Call-Limit: used/size`, leaking 2
//! requests/s on standard plans). When a response shows the bucket 90% full the plugin pauses
//! until it has drained to 80% before returning; a 429 is transient with its `Retry-After`.
//!
//! API version: `api_version` (default [`DEFAULT_VERSION`]). Shopify does not refuse a version
//! past its support window: it answers as the oldest supported version and says so in
//! `X-Shopify-API-Version`. The plugin compares that header with the version it asked for: a
//! read logs a warning naming both, and `check` fails, so a stale pinned version is seen before
//! its answers change shape. [`SUNSETS`] lists the versions' support end; a unit test fails when
//! the default is within 60 days of it.
//!
//! Webhooks: `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(app client secret, raw body)), compared
//! in constant time; `X-Shopify-Shop-Domain` must be the configured shop; the delivery id is
//! `X-Shopify-Webhook-Id`. Topics `customers/create|update|enable|disable|delete` yield
//! `customers` records, `orders/create|updated|paid|fulfilled|cancelled` `orders` records.

use std::fmt::Write as _;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use switchyard_sdk::{
    cursor, debug,
    http::{Request, Response},
    outcome, schemars,
    sunset::Sunset,
    time,
    watermark::Watermark,
    CallError, Capabilities, Context, Page, Plugin, Retry, Source, SourceEvent, SourceRecord,
    StreamInfo, StreamRecord, WebhookError, WebhookOutcome, WebhookRequest,
};

/// Shopify's largest `limit`.
const MAX_PAGE: u32 = 250;

/// The Admin API version asked for unless the config says otherwise.
pub const DEFAULT_VERSION: &str = "2026-07";

/// When Shopify stops serving each version the plugin may default to. Shopify supports each
/// stable version for at least 12 months from its release (https://shopify.dev/docs/api/usage/versioning,
/// checked 2026-12-06); the dates are that guaranteed minimum, except 2025-07's, which is when
/// Shopify actually stopped serving it. Add the next version here when moving the default.
pub const SUNSETS: &[Sunset] = &[
    Sunset {
        version: "2025-07",
        sunset: "2026-07-16",
        source: "https://dev.to/flarecanary/shopify-retires-api-version-2025-07-on-july-16-pinned-apps-dont-error-they-silently-fall-2hfi",
    },
    Sunset {
        version: "2025-10",
        sunset: "2026-10-01",
        source: "https://shopify.dev/docs/api/usage/versioning (supported at least 12 months)",
    },
    Sunset {
        version: "2026-01",
        sunset: "2027-01-01",
        source: "https://shopify.dev/docs/api/usage/versioning (supported at least 12 months)",
    },
    Sunset {
        version: "2026-04",
        sunset: "2027-04-01",
        source: "https://shopify.dev/docs/api/usage/versioning (supported at least 12 months)",
    },
    Sunset {
        version: "2026-07",
        sunset: "2027-07-01",
        source: "https://shopify.dev/docs/api/usage/versioning (supported at least 12 months); stable since 2026-07-01, https://shopify.dev/changelog/release-notes/2026-07",
    },
];

/// Settings of one `[sources.NAME]` block using the Shopify plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shop: `my-store` or `my-store.myshopify.com`.
    pub shop: String,
    /// Admin API version, `YYYY-MM`; default `2026-07`. Shopify serves a retired version as its
    /// oldest supported one: keep this within Shopify's support window (12 months).
    #[serde(default = "default_version")]
    pub api_version: String,
    /// Objects per page (Shopify's `limit`, 1-250); default 250.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 250))]
    pub page_size: u32,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

fn default_page_size() -> u32 {
    MAX_PAGE
}

impl Config {
    /// `my-store.myshopify.com`, or an error naming what is wrong.
    pub fn shop_domain(&self) -> Result<String, CallError> {
        let shop = self.shop.trim().to_ascii_lowercase();
        let handle = shop.strip_suffix(".myshopify.com").unwrap_or(&shop);
        if handle.is_empty()
            || !handle
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(CallError::InvalidConfig(format!(
                "shop `{}` must be the shop's handle or its myshopify.com domain, e.g. `my-store`",
                self.shop
            )));
        }
        let v = self.api_version.as_bytes();
        if v.len() != 7
            || v[4] != b'-'
            || !self
                .api_version
                .chars()
                .enumerate()
                .all(|(i, c)| i == 4 || c.is_ascii_digit())
        {
            return Err(CallError::InvalidConfig(format!(
                "api_version `{}` must look like `2026-07`",
                self.api_version
            )));
        }
        Ok(format!("{handle}.myshopify.com"))
    }
}

/// Where a stream's read stands. Serialised as the page cursor: the watermark on `updated_at`
/// (Unix seconds; a run asks for `updated_at_min` of it) and the page to read next.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(flatten)]
    pub mark: Watermark<i64>,
    /// `page_info` of the next page; none before a run's first page and once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_info: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Customers,
    Orders,
}

impl Stream {
    fn parse(name: &str) -> Result<Stream, CallError> {
        match name {
            "customers" => Ok(Stream::Customers),
            "orders" => Ok(Stream::Orders),
            other => Err(CallError::InvalidConfig(format!(
                "unknown stream `{other}`; the Shopify source has `customers` and `orders`"
            ))),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Stream::Customers => "customers",
            Stream::Orders => "orders",
        }
    }
}

struct Shopify;

impl Plugin for Shopify {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("*.myshopify.com")
            .secret(
                "access_token",
                "Admin API access token (shpat_...) of a custom app with read_customers and read_orders scopes",
                true,
            )
            .secret_value(
                "webhook_secret",
                "The app's client secret (API secret key), which signs its webhooks; needed to accept webhooks",
                false,
            )
            .max_batch_size(MAX_PAGE)
            // The standard leaky bucket drains 2 requests per second.
            .default_rate_per_second(2.0)
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let domain = ctx.config.shop_domain()?;
        let url = format!(
            "https://{domain}/admin/api/{}/customers.json?limit=1",
            ctx.config.api_version
        );
        let response = get(ctx, &url)?;
        check_response(&response)?;
        match served_elsewhere(&ctx.config.api_version, &response) {
            Some(note) => Err(CallError::InvalidConfig(note)),
            None => Ok(()),
        }
    }
}

impl Source for Shopify {
    fn streams(_ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        Ok(vec![
            StreamInfo {
                name: "customers".into(),
                description: "Shopify customers, changed since the last run".into(),
                incremental: true,
            },
            StreamInfo {
                name: "orders".into(),
                description: "Shopify orders of any status as `Order Completed` events, changed since the last run".into(),
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
        let domain = ctx.config.shop_domain()?;
        let mut state: Cursor = cursor::parse(cursor.as_deref(), "Shopify")?;
        let url = list_url(
            &domain,
            &ctx.config.api_version,
            stream,
            ctx.config.page_size,
            &state,
        );
        let response = get(ctx, &url)?;
        check_response(&response)?;
        if let Some(note) = served_elsewhere(&ctx.config.api_version, &response) {
            switchyard_sdk::warn!("{note}");
        }
        let body: Value = response.json()?;
        let items = body
            .get(stream.name())
            .and_then(Value::as_array)
            .ok_or_else(|| {
                CallError::Failed(format!("Shopify's answer has no `{}` list", stream.name()))
            })?;
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            let record = match stream {
                Stream::Customers => customer_record(item),
                Stream::Orders => order_record(item),
            }
            .map_err(CallError::Failed)?;
            let updated = item
                .get("updated_at")
                .and_then(Value::as_str)
                .and_then(time::parse_unix);
            if let Some(at) = updated {
                if state.mark.already_read(&record.id, &at) {
                    continue;
                }
                state.mark.observe(&record.id, at);
            }
            records.push(record);
        }
        let next = response.header("link").and_then(next_page_info);
        debug!(
            "shopify {}: {} records, next page: {}",
            stream.name(),
            records.len(),
            next.is_some()
        );
        back_off(&response);
        let done = next.is_none();
        let next = match next {
            Some(page_info) => Cursor {
                page_info: Some(page_info),
                ..state
            },
            None => Cursor {
                mark: state.mark.finished(),
                page_info: None,
            },
        };
        Ok(Page {
            records,
            cursor: Some(cursor::text(&next)),
            done,
        })
    }

    fn webhook(
        ctx: &Context<Config>,
        request: WebhookRequest,
    ) -> Result<WebhookOutcome, WebhookError> {
        let secret = ctx.secret("webhook_secret").map_err(|_| {
            WebhookError::Unauthorized(
                "no `webhook_secret` is configured for this Shopify source, so no webhook can be verified".into(),
            )
        })?;
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let signature = header("x-shopify-hmac-sha256").ok_or_else(|| {
            WebhookError::Unauthorized("missing X-Shopify-Hmac-Sha256 header".into())
        })?;
        if !verify_hmac(signature, &request.body, secret) {
            return Err(WebhookError::Unauthorized(
                "X-Shopify-Hmac-Sha256 does not match the body".into(),
            ));
        }
        let domain = ctx
            .config
            .shop_domain()
            .map_err(|e| WebhookError::BadRequest(outcome::describe_call_error(&e)))?;
        if let Some(from) = header("x-shopify-shop-domain") {
            if !from.eq_ignore_ascii_case(&domain) {
                return Err(WebhookError::Unauthorized(format!(
                    "webhook is from shop {from}, this source reads {domain}"
                )));
            }
        }
        let topic = header("x-shopify-topic")
            .ok_or_else(|| WebhookError::BadRequest("missing X-Shopify-Topic header".into()))?;
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| WebhookError::BadRequest(format!("body is not JSON: {e}")))?;
        let records = topic_records(topic, &body).map_err(WebhookError::BadRequest)?;
        Ok(WebhookOutcome {
            delivery_id: header("x-shopify-webhook-id")
                .or_else(|| header("x-shopify-event-id"))
                .map(str::to_string),
            records,
        })
    }
}

/// The request for one page.
fn list_url(
    domain: &str,
    version: &str,
    stream: Stream,
    page_size: u32,
    cursor: &Cursor,
) -> String {
    let limit = page_size.clamp(1, MAX_PAGE);
    let mut url = format!(
        "https://{domain}/admin/api/{version}/{}.json?limit={limit}",
        stream.name()
    );
    if let Some(page_info) = &cursor.page_info {
        // The filters are inside page_info; Shopify refuses any other parameter next to it.
        let _ = write!(url, "&page_info={}", encode(page_info));
        return url;
    }
    url.push_str("&order=updated_at%20asc");
    if stream == Stream::Orders {
        url.push_str("&status=any");
    }
    if let Some(since) = cursor.mark.since {
        let _ = write!(url, "&updated_at_min={}", encode(&time::rfc3339(since)));
    }
    url
}

/// When Shopify answered with another version than the one asked for (it serves a retired
/// version as its oldest supported one), what to tell the operator.
pub fn served_elsewhere(asked: &str, response: &Response) -> Option<String> {
    let served = response.header("x-shopify-api-version")?.trim();
    (!served.is_empty() && served != asked).then(|| {
        format!(
            "Shopify answered with API version {served}, not the configured api_version {asked}: {asked} is no longer supported and Shopify serves the oldest supported version instead; set api_version to a supported version (the default is {DEFAULT_VERSION})"
        )
    })
}

fn get(ctx: &Context<Config>, url: &str) -> Result<Response, CallError> {
    Ok(Request::get(url)
        .header(
            "x-shopify-access-token",
            &ctx.secret_placeholder("access_token"),
        )
        .header("accept", "application/json")
        .send()?)
}

/// Maps a Shopify response to a call error with Shopify's own message.
pub fn check_response(response: &Response) -> Result<(), CallError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let message = format!("HTTP {status}: {}", error_text(&response.body));
    Err(match status {
        401 | 403 => CallError::Unauthorized(message),
        s if outcome::is_retryable_status(s) => {
            let after = outcome::retry_after_ms(response, time::now_unix());
            // Without a Retry-After, a full standard bucket drains a slot in half a second.
            let after = after.or((s == 429).then_some(1000));
            CallError::Transient(Retry {
                reason: match after {
                    Some(ms) => format!("{message} (retry after {ms} ms)"),
                    None => message,
                },
                after_ms: after,
            })
        }
        // Payment required (frozen shop), not found (no such shop), locked.
        402 | 404 | 423 => CallError::InvalidConfig(message),
        _ => CallError::Failed(message),
    })
}

/// Shopify's `errors` as text: a string, a list, or an object of field → messages.
pub fn error_text(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return outcome::api_message(body);
    };
    match value.get("errors").or_else(|| value.get("error")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(Value::Object(fields)) => fields
            .iter()
            .map(|(field, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a
                        .iter()
                        .map(|m| {
                            m.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| m.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                format!("{field}: {text}")
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => outcome::api_message(body),
    }
}

/// The `page_info` of the `rel="next"` link, if any.
pub fn next_page_info(link: &str) -> Option<String> {
    for part in link.split(',') {
        let Some((target, params)) = part.split_once(';') else {
            continue;
        };
        if !params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next")
        {
            continue;
        }
        let url = target.trim().trim_start_matches('<').trim_end_matches('>');
        let query = url.split_once('?')?.1;
        return query
            .split('&')
            .find_map(|kv| kv.strip_prefix("page_info="))
            .map(decode);
    }
    None
}

/// Pauses while the shop's bucket is nearly full (`X-Shopify-Shop-Api-Call-Limit: used/size`),
/// so the next call does not hit a 429: down to 80% at the standard 2 requests/s leak.
fn back_off(response: &Response) {
    let Some(ms) = response
        .header("x-shopify-shop-api-call-limit")
        .and_then(back_off_ms)
    else {
        return;
    };
    debug!("shopify call bucket nearly full, pausing {ms} ms");
    pause(ms);
}

/// How long to pause for a call-limit header, if at all.
pub fn back_off_ms(header: &str) -> Option<u64> {
    let (used, size) = header.trim().split_once('/')?;
    let used: f64 = used.trim().parse().ok()?;
    let size: f64 = size.trim().parse().ok()?;
    if size <= 0.0 || used < size * 0.9 {
        return None;
    }
    let excess = used - size * 0.8;
    Some(((excess / 2.0) * 1000.0).min(10_000.0) as u64)
}

fn pause(ms: u64) {
    #[cfg(target_arch = "wasm32")]
    {
        switchyard_sdk::bindings::wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000)
            .block();
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = ms;
    }
}

fn id_text(v: &Value) -> Option<String> {
    match v.get("id")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn opt(v: &Value, key: &str) -> Value {
    v.get(key).cloned().unwrap_or(Value::Null)
}

fn money(v: &Value, key: &str) -> Value {
    match v.get(key) {
        Some(Value::String(s)) => s.parse::<f64>().map(|f| json!(f)).unwrap_or(Value::Null),
        Some(Value::Number(n)) => Value::Number(n.clone()),
        _ => Value::Null,
    }
}

/// A customer object as a record.
pub fn customer_record(c: &Value) -> Result<SourceRecord, String> {
    let id = id_text(c).ok_or("a Shopify customer has no `id`")?;
    let mut data = Map::new();
    data.insert("id".into(), json!(id));
    for key in [
        "email",
        "first_name",
        "last_name",
        "phone",
        "state",
        "verified_email",
        "tags",
        "orders_count",
        "currency",
        "created_at",
        "updated_at",
    ] {
        data.insert(key.into(), opt(c, key));
    }
    data.insert("total_spent".into(), money(c, "total_spent"));
    let consent = c
        .get("email_marketing_consent")
        .and_then(|m| m.get("state"))
        .and_then(Value::as_str);
    let accepts = match consent {
        Some(state) => Value::Bool(state == "subscribed"),
        None => opt(c, "accepts_marketing"),
    };
    data.insert("accepts_marketing".into(), accepts);
    let address = c.get("default_address").unwrap_or(&Value::Null);
    data.insert("city".into(), opt(address, "city"));
    data.insert("country_code".into(), opt(address, "country_code"));
    if c.get("deleted").and_then(Value::as_bool) == Some(true) {
        data.insert("deleted".into(), json!(true));
    }
    Ok(SourceRecord {
        id,
        data: Value::Object(data).to_string(),
        updated_at: c
            .get("updated_at")
            .and_then(Value::as_str)
            .map(str::to_string),
        events: vec![],
    })
}

/// An order as a record carrying its `Order Completed` (and `Order Cancelled`) event.
pub fn order_record(o: &Value) -> Result<SourceRecord, String> {
    let id = id_text(o).ok_or("a Shopify order has no `id`")?;
    let customer = o.get("customer").unwrap_or(&Value::Null);
    let email = o
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .or_else(|| o.get("contact_email").and_then(Value::as_str))
        .or_else(|| customer.get("email").and_then(Value::as_str));
    let customer_id = id_text(customer);
    let items: &[Value] = o
        .get("line_items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let quantity: i64 = items
        .iter()
        .map(|i| i.get("quantity").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let products: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({
                "product_id": opt(i, "product_id"),
                "variant_id": opt(i, "variant_id"),
                "sku": opt(i, "sku"),
                "name": i.get("name").or_else(|| i.get("title")).cloned().unwrap_or(Value::Null),
                "price": money(i, "price"),
                "quantity": opt(i, "quantity"),
            })
        })
        .collect();
    let data = json!({
        "id": id,
        "name": opt(o, "name"),
        "order_number": opt(o, "order_number"),
        "email": email,
        "customer_id": customer_id,
        "financial_status": opt(o, "financial_status"),
        "fulfillment_status": opt(o, "fulfillment_status"),
        "total_price": money(o, "total_price"),
        "subtotal_price": money(o, "subtotal_price"),
        "total_tax": money(o, "total_tax"),
        "currency": opt(o, "currency"),
        "line_item_count": items.len(),
        "quantity": quantity,
        "created_at": opt(o, "created_at"),
        "updated_at": opt(o, "updated_at"),
        "processed_at": opt(o, "processed_at"),
        "cancelled_at": opt(o, "cancelled_at"),
    });
    let when = ["processed_at", "created_at", "updated_at"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let properties = json!({
        "order_id": id,
        "order_number": opt(o, "order_number"),
        "name": opt(o, "name"),
        "total": money(o, "total_price"),
        "subtotal": money(o, "subtotal_price"),
        "tax": money(o, "total_tax"),
        "currency": opt(o, "currency"),
        "line_item_count": items.len(),
        "quantity": quantity,
        "email": email,
        "customer_id": customer_id,
        "products": products,
    });
    let mut events = vec![SourceEvent {
        name: "Order Completed".into(),
        message_id: id.clone(),
        timestamp: when,
        properties: properties.to_string(),
    }];
    if let Some(cancelled) = o.get("cancelled_at").and_then(Value::as_str) {
        events.push(SourceEvent {
            name: "Order Cancelled".into(),
            message_id: format!("{id}:cancelled"),
            timestamp: cancelled.to_string(),
            properties: json!({
                "order_id": id, "name": opt(o, "name"), "total": money(o, "total_price"),
                "currency": opt(o, "currency"), "reason": opt(o, "cancel_reason"),
                "email": email, "customer_id": customer_id,
            })
            .to_string(),
        });
    }
    Ok(SourceRecord {
        id,
        data: data.to_string(),
        updated_at: o
            .get("updated_at")
            .and_then(Value::as_str)
            .map(str::to_string),
        events,
    })
}

/// The records a webhook topic yields.
pub fn topic_records(topic: &str, body: &Value) -> Result<Vec<StreamRecord>, String> {
    Ok(match topic {
        "customers/create" | "customers/update" | "customers/enable" | "customers/disable" => {
            vec![StreamRecord {
                stream: "customers".into(),
                record: customer_record(body)?,
            }]
        }
        "customers/delete" => {
            let mut body = body.clone();
            body["deleted"] = json!(true);
            vec![StreamRecord {
                stream: "customers".into(),
                record: customer_record(&body)?,
            }]
        }
        "orders/create"
        | "orders/updated"
        | "orders/paid"
        | "orders/fulfilled"
        | "orders/partially_fulfilled"
        | "orders/cancelled" => vec![StreamRecord {
            stream: "orders".into(),
            record: order_record(body)?,
        }],
        _ => vec![],
    })
}

/// Checks `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body) in constant time.
pub fn verify_hmac(header: &str, body: &[u8], secret: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let given = header.trim().as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

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

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

switchyard_sdk::export_source!(Shopify);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_api_version_is_not_near_its_sunset() {
        switchyard_sdk::sunset::assert_fresh(
            DEFAULT_VERSION,
            SUNSETS,
            switchyard_sdk::sunset::MARGIN_DAYS,
        );
        assert_eq!(default_version(), DEFAULT_VERSION);
    }

    #[test]
    fn a_version_served_as_another_is_named() {
        let r = |v: &str| Response::new(200, &[("x-shopify-api-version", v)], "{}");
        assert_eq!(served_elsewhere("2026-07", &r("2026-07")), None);
        assert_eq!(
            served_elsewhere("2026-07", &Response::new(200, &[], "{}")),
            None
        );
        let note = served_elsewhere("2025-07", &r("2026-01")).unwrap();
        assert!(
            note.contains("API version 2026-01, not the configured api_version 2025-07"),
            "{note}"
        );
    }

    #[test]
    fn webhook_hmac_vector() {
        // base64(HMAC-SHA256("hush", "{\"id\":1}")), computed per Shopify's verification guide.
        assert!(verify_hmac(
            "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=",
            br#"{"id":1}"#,
            "hush"
        ));
        assert!(!verify_hmac(
            "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=",
            br#"{"id":2}"#,
            "hush"
        ));
        assert!(!verify_hmac(
            "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=",
            br#"{"id":1}"#,
            "other"
        ));
        assert!(!verify_hmac("", br#"{"id":1}"#, "hush"));
    }

    #[test]
    fn link_header_next_page_info() {
        let link = r#"<https://shop.myshopify.com/admin/api/2025-07/customers.json?limit=2&page_info=eyJwIjoxfQ%3D%3D>; rel="previous", <https://shop.myshopify.com/admin/api/2025-07/customers.json?limit=2&page_info=eyJuIjoyfQ>; rel="next""#;
        assert_eq!(next_page_info(link).as_deref(), Some("eyJuIjoyfQ"));
        let prev_only = r#"<https://s.myshopify.com/x.json?page_info=abc%3D>; rel="previous""#;
        assert_eq!(next_page_info(prev_only), None);
        let encoded = r#"<https://s.myshopify.com/x.json?limit=1&page_info=abc%3D>; rel="next""#;
        assert_eq!(next_page_info(encoded).as_deref(), Some("abc="));
    }

    #[test]
    fn urls_keep_filters_out_of_page_info_requests() {
        let first = Cursor {
            mark: Watermark {
                since: Some(1_704_467_430),
                ..Watermark::default()
            },
            ..Cursor::default()
        };
        assert_eq!(
            list_url("s.myshopify.com", "2025-07", Stream::Orders, 999, &first),
            "https://s.myshopify.com/admin/api/2025-07/orders.json?limit=250&order=updated_at%20asc&status=any&updated_at_min=2024-01-05T15%3A10%3A30Z"
        );
        let next = Cursor {
            page_info: Some("ab+c=".into()),
            ..first
        };
        assert_eq!(
            list_url("s.myshopify.com", "2025-07", Stream::Customers, 10, &next),
            "https://s.myshopify.com/admin/api/2025-07/customers.json?limit=10&page_info=ab%2Bc%3D"
        );
    }

    #[test]
    fn orders_become_order_completed() {
        let o = json!({"id": 450789469, "name": "#1001", "order_number": 1001, "email": "bob@example.com",
            "total_price": "598.94", "subtotal_price": "597.00", "total_tax": "11.94", "currency": "USD",
            "financial_status": "paid", "processed_at": "2008-01-10T11:00:00-05:00",
            "updated_at": "2008-01-10T11:00:00-05:00", "customer": {"id": 207119551, "email": "bob@example.com"},
            "line_items": [{"product_id": 632910392, "sku": "IPOD2008PINK", "name": "IPod Nano - 8gb - pink", "price": "199.00", "quantity": 1},
                           {"product_id": 632910393, "sku": "IPOD2008BLK", "title": "IPod Nano", "price": "199.00", "quantity": 2}]});
        let r = order_record(&o).unwrap();
        assert_eq!(r.id, "450789469");
        assert_eq!(r.events.len(), 1);
        let e = &r.events[0];
        assert_eq!(
            (e.name.as_str(), e.message_id.as_str()),
            ("Order Completed", "450789469")
        );
        assert_eq!(e.timestamp, "2008-01-10T11:00:00-05:00");
        let p: Value = serde_json::from_str(&e.properties).unwrap();
        assert_eq!(p["total"], 598.94);
        assert_eq!(p["currency"], "USD");
        assert_eq!(p["line_item_count"], 2);
        assert_eq!(p["quantity"], 3);
        assert_eq!(p["email"], "bob@example.com");
        assert_eq!(p["customer_id"], "207119551");
        assert_eq!(p["products"][1]["name"], "IPod Nano");
        let mut cancelled = o.clone();
        cancelled["cancelled_at"] = json!("2008-01-11T11:00:00-05:00");
        assert_eq!(
            order_record(&cancelled).unwrap().events[1].name,
            "Order Cancelled"
        );
    }

    #[test]
    fn call_limit_back_off() {
        assert_eq!(back_off_ms("10/40"), None);
        assert_eq!(back_off_ms("35/40"), None);
        assert_eq!(back_off_ms("36/40"), Some(2000));
        assert_eq!(back_off_ms("40/40"), Some(4000));
        assert_eq!(back_off_ms("garbage"), None);
    }

    #[test]
    fn shopify_errors() {
        assert_eq!(
            error_text(br#"{"errors":"[API] Invalid API key or access token (unrecognized login or wrong password)"}"#),
            "[API] Invalid API key or access token (unrecognized login or wrong password)"
        );
        assert_eq!(
            error_text(br#"{"errors":{"email":["is invalid"],"limit":"Invalid"}}"#),
            "email: is invalid; limit: Invalid"
        );
        let r = |status, headers: Vec<(String, String)>| Response {
            status,
            headers,
            body: b"{}".to_vec(),
        };
        match check_response(&r(429, vec![("retry-after".into(), "2.0".into())])) {
            Err(CallError::Transient(t)) => assert_eq!(t.after_ms, Some(2000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_response(&r(401, vec![])),
            Err(CallError::Unauthorized(_))
        ));
        assert!(matches!(
            check_response(&r(404, vec![])),
            Err(CallError::InvalidConfig(_))
        ));
    }

    #[test]
    fn shop_domains() {
        let c = |shop: &str| Config {
            shop: shop.into(),
            api_version: "2025-07".into(),
            page_size: 250,
        };
        assert_eq!(
            c("my-store").shop_domain().unwrap(),
            "my-store.myshopify.com"
        );
        assert_eq!(
            c("My-Store.myshopify.com").shop_domain().unwrap(),
            "my-store.myshopify.com"
        );
        assert!(c("evil.com/x").shop_domain().is_err());
        assert!(c("").shop_domain().is_err());
        let mut bad = c("s");
        bad.api_version = "latest".into();
        assert!(bad.shop_domain().is_err());
    }
}
