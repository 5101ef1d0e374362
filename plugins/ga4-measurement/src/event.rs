//! One record's fields → one Measurement Protocol event and the request-level fields it needs
//! (`client_id` or `app_instance_id`, `user_id`, `user_properties`, `consent`), refused here
//! when GA4 would refuse or silently drop it.
//!
//! The Measurement Protocol answers 2xx even for an invalid payload and drops what it cannot
//! use, so nothing downstream would tell the operator; the rules below are the ones its
//! validation server reports (Measurement Protocol reference, "Reserved names" and limits;
//! GA4 event collection limits, support.google.com/analytics/answer/9267744; RudderStack's
//! `src/v0/destinations/ga4/utils.js`), checked 2026-12-06.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use switchyard_sdk::{serde_json, time};

/// Events per request.
pub const MAX_EVENTS: usize = 25;
/// Parameters per event.
pub const MAX_PARAMS: usize = 25;
/// Event and parameter names.
pub const MAX_NAME: usize = 40;
/// String parameter values, but for the three page parameters below.
pub const MAX_PARAM_VALUE: usize = 100;
/// User properties per request.
pub const MAX_USER_PROPERTIES: usize = 25;
pub const MAX_USER_PROPERTY_NAME: usize = 24;
pub const MAX_USER_PROPERTY_VALUE: usize = 36;
pub const MAX_USER_ID: usize = 256;
/// How far back `timestamp_micros` may go.
pub const MAX_AGE_SECONDS: i64 = 72 * 3600;
/// Clock skew allowed for an event stamped ahead of the hub's clock.
pub const MAX_AHEAD_SECONDS: i64 = 60;

/// Event names GA4 reserves (Measurement Protocol reference, "Reserved event names"; RudderStack
/// also refuses `screen_view`).
pub const RESERVED_EVENT_NAMES: [&str; 38] = [
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_install",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "firebase_campaign",
    "firebase_in_app_message_action",
    "firebase_in_app_message_dismiss",
    "firebase_in_app_message_impression",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "screen_view",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
];
/// Event name prefixes GA4 reserves.
pub const RESERVED_EVENT_PREFIXES: [&str; 5] = ["_", "firebase_", "ga_", "google_", "gtag."];
/// Parameter and user property name prefixes GA4 reserves.
pub const RESERVED_PARAM_PREFIXES: [&str; 3] = ["firebase_", "ga_", "google_"];
pub const RESERVED_PARAM_NAMES: [&str; 1] = ["firebase_conversion"];
pub const RESERVED_USER_PROPERTY_NAMES: [&str; 5] = [
    "first_open_time",
    "first_visit_time",
    "last_deep_link_referrer",
    "user_id",
    "first_open_after_install",
];

/// Segment/RudderStack spec names → GA4 recommended events, as RudderStack's `ga4`
/// destination maps them (`src/v0/destinations/ga4/config.js`). Config `event_names` entries
/// replace these and add others.
pub const SPEC_EVENT_NAMES: [(&str, &str); 18] = [
    ("Logged In", "login"),
    ("Signed Up", "sign_up"),
    ("Lead Generated", "generate_lead"),
    ("Products Searched", "search"),
    ("Product List Viewed", "view_item_list"),
    ("Promotion Viewed", "view_promotion"),
    ("Promotion Clicked", "select_promotion"),
    ("Product Clicked", "select_item"),
    ("Product Viewed", "view_item"),
    ("Product Added", "add_to_cart"),
    ("Product Removed", "remove_from_cart"),
    ("Cart Viewed", "view_cart"),
    ("Checkout Started", "begin_checkout"),
    ("Payment Info Entered", "add_payment_info"),
    ("Checkout Step Completed", "add_shipping_info"),
    ("Order Completed", "purchase"),
    ("Order Refunded", "refund"),
    ("Product Added to Wishlist", "add_to_wishlist"),
];

/// Record fields that are not event parameters.
const RESERVED_FIELDS: [&str; 16] = [
    "event_name",
    "event",
    "name",
    "client_id",
    "app_instance_id",
    "user_id",
    "timestamp",
    "timestamp_micros",
    "event_time",
    "params",
    "user_properties",
    "ad_user_data",
    "ad_personalization",
    "ip_override",
    "user_location",
    "device",
];

/// Which identifier the stream type needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `measurement_id` in the URL, `client_id` in the body.
    Web,
    /// `firebase_app_id` in the URL, `app_instance_id` in the body.
    App,
}

/// What every event of a call shares.
pub struct Defaults<'a> {
    pub stream: Stream,
    pub event_names: &'a BTreeMap<String, String>,
    pub snake_case_names: bool,
    /// Consent for records that carry none: (`ad_user_data`, `ad_personalization`).
    pub consent: (Option<&'a str>, Option<&'a str>),
    pub now_unix: i64,
}

/// One event and the request-level fields it must travel with.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// `client_id`/`app_instance_id`, `user_id`, `user_properties`, `consent`, ...: events can
    /// share a request only when these are equal.
    pub envelope: Map<String, Value>,
    /// `{"name", "params", "timestamp_micros"}`.
    pub event: Value,
}

/// The event for one record, or why GA4 would not take it.
pub fn build(fields: &str, d: &Defaults<'_>) -> Result<Built, String> {
    let Ok(Value::Object(f)) = serde_json::from_str::<Value>(fields) else {
        return Err("the record's fields are not a JSON object".into());
    };
    let text = |name: &str| -> Option<String> {
        match f.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };

    let raw = ["event_name", "event", "name"]
        .iter()
        .find_map(|n| text(n))
        .ok_or("no event_name: map one, e.g. event_name = \"event.name\"")?;
    let name = match d.event_names.get(&raw) {
        Some(mapped) => mapped.clone(),
        None if d.snake_case_names => snake_case(&raw),
        None => raw,
    };
    check_event_name(&name)?;

    let mut envelope = Map::new();
    match d.stream {
        Stream::Web => {
            let id = text("client_id").ok_or(
                "no client_id: web streams need the GA client id (map event.properties.client_id or a trait holding the _ga cookie's id)",
            )?;
            envelope.insert("client_id".into(), json!(id));
        }
        Stream::App => {
            let id = text("app_instance_id")
                .ok_or("no app_instance_id: app streams need the Firebase app instance id")?;
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "app_instance_id `{id}` is not the 32 hex digits Firebase gives"
                ));
            }
            envelope.insert("app_instance_id".into(), json!(id));
        }
    }
    if let Some(user_id) = text("user_id") {
        if user_id.chars().count() > MAX_USER_ID {
            return Err(format!("user_id is longer than {MAX_USER_ID} characters"));
        }
        envelope.insert("user_id".into(), json!(user_id));
    }
    let user_properties = user_properties(&f)?;
    if !user_properties.is_empty() {
        envelope.insert("user_properties".into(), Value::Object(user_properties));
    }
    let consent = consent(&f, d)?;
    if !consent.is_empty() {
        envelope.insert("consent".into(), Value::Object(consent));
    }
    for passthrough in ["ip_override", "user_location", "device"] {
        if let Some(v) = f.get(passthrough).filter(|v| !v.is_null()) {
            envelope.insert(passthrough.into(), v.clone());
        }
    }

    let mut event = Map::new();
    event.insert("name".into(), json!(name));
    event.insert("params".into(), Value::Object(params(&f)?));
    if let Some(micros) = timestamp_micros(&f, d.now_unix)? {
        event.insert("timestamp_micros".into(), json!(micros));
    }
    Ok(Built {
        envelope,
        event: Value::Object(event),
    })
}

/// Name rules: at most 40 characters, a letter first, then letters, digits and underscores,
/// not reserved.
pub fn check_event_name(name: &str) -> Result<(), String> {
    check_name("event name", name, MAX_NAME)?;
    if RESERVED_EVENT_NAMES.contains(&name) {
        return Err(format!("event name `{name}` is reserved by GA4"));
    }
    if let Some(p) = RESERVED_EVENT_PREFIXES
        .iter()
        .find(|p| name.to_ascii_lowercase().starts_with(*p))
    {
        return Err(format!(
            "event name `{name}` uses the reserved prefix `{p}`"
        ));
    }
    Ok(())
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{what} `{name}` must start with a letter and hold only letters, digits and underscores"
        ));
    }
    if name.chars().count() > max {
        return Err(format!("{what} `{name}` is longer than {max} characters"));
    }
    Ok(())
}

/// `Order Completed` → `order_completed`: lower case, every run of other characters one `_`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// The event's parameters: a `params` object, then every other field; nested objects are
/// flattened with `_` (`shipping.method` → `shipping_method`), `items` stays a list.
fn params(f: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut flat = Map::new();
    match f.get("params") {
        Some(Value::Object(p)) => flatten("", p, &mut flat)?,
        Some(Value::Null) | None => {}
        Some(other) => return Err(format!("params must be an object, not {other}")),
    }
    for (k, v) in f {
        if RESERVED_FIELDS.contains(&k.as_str()) || k.starts_with("user_property_") {
            continue;
        }
        flatten_one(k, v, &mut flat)?;
    }
    if flat.len() > MAX_PARAMS {
        return Err(format!(
            "{} event parameters; GA4 takes at most {MAX_PARAMS} per event",
            flat.len()
        ));
    }
    for (k, v) in &flat {
        check_name("parameter name", k, MAX_NAME)?;
        if RESERVED_PARAM_NAMES.contains(&k.as_str())
            || RESERVED_PARAM_PREFIXES.iter().any(|p| k.starts_with(p))
        {
            return Err(format!("parameter name `{k}` is reserved by GA4"));
        }
        if let Value::String(s) = v {
            let max = match k.as_str() {
                "page_location" => 1000,
                "page_referrer" => 420,
                "page_title" => 300,
                _ => MAX_PARAM_VALUE,
            };
            if s.chars().count() > max {
                return Err(format!(
                    "parameter `{k}` is {} characters long; GA4 takes at most {max}",
                    s.chars().count()
                ));
            }
        }
    }
    Ok(flat)
}

fn flatten(
    prefix: &str,
    object: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    for (k, v) in object {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}_{k}")
        };
        flatten_one(&key, v, out)?;
    }
    Ok(())
}

fn flatten_one(key: &str, v: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    match v {
        Value::Null => {}
        Value::Object(inner) => flatten(key, inner, out)?,
        Value::Array(items) if key == "items" => {
            if items.iter().any(|i| !i.is_object()) {
                return Err("items must be a list of objects (item_id, item_name, ...)".into());
            }
            out.insert(key.into(), v.clone());
        }
        Value::Array(_) => {
            return Err(format!(
                "parameter `{key}` is a list; GA4 parameters are strings or numbers (only `items` is a list)"
            ))
        }
        Value::Bool(b) => {
            out.insert(key.into(), json!(b.to_string()));
        }
        // GA4 reads `currency` as an ISO 4217 code in upper case.
        Value::String(s) if key == "currency" => {
            out.insert(key.into(), json!(s.trim().to_ascii_uppercase()));
        }
        Value::String(_) | Value::Number(_) => {
            out.insert(key.into(), v.clone());
        }
    }
    Ok(())
}

/// `user_properties` (an object of name → value) and `user_property_NAME` fields, as
/// `{"NAME": {"value": ...}}`.
fn user_properties(f: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut props: Vec<(String, Value)> = Vec::new();
    match f.get("user_properties") {
        Some(Value::Object(m)) => props.extend(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
        Some(Value::Null) | None => {}
        Some(other) => return Err(format!("user_properties must be an object, not {other}")),
    }
    for (k, v) in f {
        if let Some(name) = k.strip_prefix("user_property_") {
            props.push((name.to_string(), v.clone()));
        }
    }
    let mut out = Map::new();
    for (name, value) in props {
        let value = match value {
            Value::Null => continue,
            Value::Object(ref o) if o.contains_key("value") => o["value"].clone(),
            v => v,
        };
        check_name("user property name", &name, MAX_USER_PROPERTY_NAME)?;
        if RESERVED_USER_PROPERTY_NAMES.contains(&name.as_str())
            || RESERVED_PARAM_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            return Err(format!("user property name `{name}` is reserved by GA4"));
        }
        let value = match value {
            Value::String(s) => {
                if s.chars().count() > MAX_USER_PROPERTY_VALUE {
                    return Err(format!(
                        "user property `{name}` is longer than {MAX_USER_PROPERTY_VALUE} characters"
                    ));
                }
                json!(s)
            }
            Value::Number(n) => json!(n),
            Value::Bool(b) => json!(b.to_string()),
            other => {
                return Err(format!(
                    "user property `{name}` must be a string or number, not {other}"
                ))
            }
        };
        out.insert(name, json!({ "value": value }));
    }
    if out.len() > MAX_USER_PROPERTIES {
        return Err(format!(
            "{} user properties; GA4 takes at most {MAX_USER_PROPERTIES}",
            out.len()
        ));
    }
    Ok(out)
}

/// `consent`: `ad_user_data` and `ad_personalization`, each `GRANTED` or `DENIED` (also
/// `true`/`false`), from the record or the config.
fn consent(f: &Map<String, Value>, d: &Defaults<'_>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (key, default) in [
        ("ad_user_data", d.consent.0),
        ("ad_personalization", d.consent.1),
    ] {
        let value = match f.get(key) {
            Some(Value::Bool(true)) => Some("GRANTED".to_string()),
            Some(Value::Bool(false)) => Some("DENIED".to_string()),
            Some(Value::String(s)) => Some(s.trim().to_ascii_uppercase()),
            Some(Value::Null) | None => default.map(str::to_ascii_uppercase),
            Some(other) => return Err(format!("{key} must be GRANTED or DENIED, not {other}")),
        };
        if let Some(v) = value {
            if v != "GRANTED" && v != "DENIED" {
                return Err(format!("{key} must be GRANTED or DENIED, not `{v}`"));
            }
            out.insert(key.into(), json!(v));
        }
    }
    Ok(out)
}

/// The event's time in microseconds: `timestamp_micros`, or `timestamp` / `event_time` as
/// RFC 3339 or Unix seconds (13-digit milliseconds read as such); at most 72 hours back.
fn timestamp_micros(f: &Map<String, Value>, now: i64) -> Result<Option<i64>, String> {
    let micros = if let Some(v) = f.get("timestamp_micros").filter(|v| !v.is_null()) {
        match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("timestamp_micros {v} is not a number of microseconds"))?
    } else if let Some(v) = f
        .get("timestamp")
        .or_else(|| f.get("event_time"))
        .filter(|v| !v.is_null())
    {
        let ms = match v {
            Value::Number(n) => n
                .as_f64()
                .map(|n| if n >= 1e11 { n } else { n * 1000.0 } as i64),
            Value::String(s)
                if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .map(|n| if n >= 1e11 { n } else { n * 1000.0 } as i64)
            }
            Value::String(s) => time::parse_ms(s),
            _ => None,
        }
        .ok_or_else(|| format!("timestamp {v} is neither Unix seconds nor an RFC 3339 time"))?;
        ms * 1000
    } else {
        return Ok(None);
    };
    let seconds = micros.div_euclid(1_000_000);
    if seconds < now - MAX_AGE_SECONDS {
        return Err(format!(
            "the event is from {}, more than 72 hours ago; GA4 only takes events up to 72 hours back",
            time::rfc3339(seconds)
        ));
    }
    if seconds > now + MAX_AHEAD_SECONDS {
        return Err(format!(
            "the event is from {}, in the future",
            time::rfc3339(seconds)
        ));
    }
    Ok(Some(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000;

    fn names() -> BTreeMap<String, String> {
        SPEC_EVENT_NAMES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn web(fields: Value) -> Result<Built, String> {
        let names = names();
        let d = Defaults {
            stream: Stream::Web,
            event_names: &names,
            snake_case_names: true,
            consent: (None, None),
            now_unix: NOW,
        };
        build(&fields.to_string(), &d)
    }

    #[test]
    fn builds_event_params_and_envelope() {
        let b = web(json!({
            "event_name": "Order Completed", "client_id": "123.456", "user_id": "u1",
            "timestamp": "2025-12-06T05:40:00Z", "value": 42.5, "currency": "EUR",
            "transaction_id": "o-1", "shipping": {"method": "post", "cost": 4},
            "items": [{"item_id": "sku-1", "quantity": 2}], "coupon": null, "gift": true,
            "user_properties": {"plan": "pro"}, "user_property_tier": 3,
            "ad_user_data": "granted", "ad_personalization": false,
            "session_id": "1765000000", "engagement_time_msec": 100
        }))
        .unwrap();
        assert_eq!(
            b.event,
            json!({"name": "purchase", "timestamp_micros": (NOW - 400) * 1_000_000, "params": {
                "value": 42.5, "currency": "EUR", "transaction_id": "o-1",
                "shipping_method": "post", "shipping_cost": 4,
                "items": [{"item_id": "sku-1", "quantity": 2}], "gift": "true",
                "session_id": "1765000000", "engagement_time_msec": 100
            }})
        );
        assert_eq!(
            Value::Object(b.envelope),
            json!({"client_id": "123.456", "user_id": "u1",
                   "user_properties": {"plan": {"value": "pro"}, "tier": {"value": 3}},
                   "consent": {"ad_user_data": "GRANTED", "ad_personalization": "DENIED"}})
        );
        // Other names become snake case; a params object is flattened the same way.
        let b = web(
            json!({"event": "Video Played!", "client_id": "c", "params": {"video": {"id": "v1"}}}),
        )
        .unwrap();
        assert_eq!(
            b.event,
            json!({"name": "video_played", "params": {"video_id": "v1"}})
        );
    }

    #[test]
    fn refuses_what_ga4_refuses() {
        let err = |v: Value| web(v).unwrap_err();
        let ok = json!({"event_name": "signup", "client_id": "c"});
        assert!(web(ok.clone()).is_ok());
        let with = |k: &str, v: Value| {
            let mut o = ok.clone();
            o[k] = v;
            o
        };
        assert!(err(json!({"client_id": "c"})).contains("no event_name"));
        assert!(err(json!({"event_name": "signup"})).contains("no client_id"));
        assert!(err(with("event_name", json!("session_start"))).contains("reserved"));
        assert!(err(with("event_name", json!("ga_custom"))).contains("reserved prefix"));
        assert!(err(with("event_name", json!("x".repeat(41)))).contains("longer than 40"));
        // Not snake-cased when it is already a name: 1st character must be a letter.
        assert!(err(with("event_name", json!("1st_purchase"))).contains("start with a letter"));
        assert!(err(with("firebase_x", json!(1))).contains("reserved"));
        assert!(err(with("a".repeat(41).as_str(), json!(1))).contains("longer than 40"));
        assert!(err(with("note", json!("x".repeat(101)))).contains("at most 100"));
        assert!(web(with("page_location", json!("x".repeat(1000)))).is_ok());
        assert!(err(with("tags", json!(["a"]))).contains("is a list"));
        let mut many = ok.clone();
        for i in 0..26 {
            many[format!("p{i}")] = json!(i);
        }
        assert!(err(many).contains("26 event parameters"));
        assert!(err(with("user_property_first_open_time", json!(1))).contains("reserved"));
        assert!(err(with("user_property_plan", json!("x".repeat(37)))).contains("36"));
        assert!(err(with("user_property_abcdefghijklmnopqrstuvwxy", json!(1))).contains("24"));
        assert!(err(with("user_id", json!("u".repeat(257)))).contains("256"));
        assert!(err(with("ad_user_data", json!("maybe"))).contains("GRANTED or DENIED"));
        assert!(err(with("timestamp", json!(NOW - 72 * 3600 - 1))).contains("72 hours"));
        assert!(web(with("timestamp", json!((NOW - 72 * 3600 + 5) * 1000))).is_ok());
        assert!(err(with("timestamp_micros", json!((NOW + 3600) * 1_000_000))).contains("future"));
        assert!(err(with("timestamp", json!("soon"))).contains("RFC 3339"));
    }

    #[test]
    fn app_streams_need_an_app_instance_id() {
        let names = names();
        let d = Defaults {
            stream: Stream::App,
            event_names: &names,
            snake_case_names: false,
            consent: (Some("granted"), None),
            now_unix: NOW,
        };
        let b = build(
            &json!({"event_name": "level_up", "app_instance_id": "cbd7e1b4b4ea4ebb8bd1dc7e3a27d2b3"}).to_string(),
            &d,
        )
        .unwrap();
        assert_eq!(
            b.envelope["app_instance_id"],
            "cbd7e1b4b4ea4ebb8bd1dc7e3a27d2b3"
        );
        assert_eq!(b.envelope["consent"], json!({"ad_user_data": "GRANTED"}));
        assert!(build(
            &json!({"event_name": "level_up", "app_instance_id": "x"}).to_string(),
            &d
        )
        .unwrap_err()
        .contains("32 hex"));
        assert!(build(&json!({"event_name": "Level Up", "app_instance_id": "cbd7e1b4b4ea4ebb8bd1dc7e3a27d2b3"}).to_string(), &d)
            .unwrap_err()
            .contains("letters, digits and underscores"));
    }

    #[test]
    fn snake_case_names() {
        assert_eq!(snake_case("Order Completed"), "order_completed");
        assert_eq!(snake_case("  Add-to Cart (v2) "), "add_to_cart_v2");
        assert_eq!(snake_case("already_fine"), "already_fine");
    }
}
