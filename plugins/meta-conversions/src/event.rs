//! One record's fields → one Conversions API server event: the event's name, time, id and
//! source, `user_data` normalised and SHA-256 hashed as Meta specifies, and `custom_data`.
//!
//! Whatever Meta would refuse is refused here, per record, before a request: the Conversions
//! API refuses a whole request of up to 1,000 events for one bad event ("If any event_time in
//! data is greater than 7 days in the past, we return an error for the entire request and
//! process no events", server-event parameters page), so one stale event must not cost the
//! others their delivery.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use switchyard_sdk::{pii, serde_json, time};

use crate::normalize;

/// Meta accepts events up to 7 days old.
pub const MAX_AGE_SECONDS: i64 = 7 * 86_400;
/// Clock skew allowed for an event stamped ahead of the hub's clock.
pub const MAX_AHEAD_SECONDS: i64 = 60;

/// Where the conversion happened (server-event parameters, `action_source`).
pub const ACTION_SOURCES: [&str; 9] = [
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];

/// Segment/RudderStack e-commerce spec names → Meta standard events, the mapping RudderStack's
/// `facebook_conversions` applies (`docs/businesslogic.md`, "Standard E-commerce Events").
/// Config `event_names` entries replace these and add others.
pub const SPEC_EVENT_NAMES: [(&str, &str); 8] = [
    ("Product List Viewed", "ViewContent"),
    ("Product Viewed", "ViewContent"),
    ("Product Added", "AddToCart"),
    ("Order Completed", "Purchase"),
    ("Products Searched", "Search"),
    ("Checkout Started", "InitiateCheckout"),
    ("Payment Info Entered", "AddPaymentInfo"),
    ("Product Added to Wishlist", "AddToWishlist"),
];

/// `custom_data` keys read from the record's top level (besides a `custom_data` object).
const CUSTOM_DATA_KEYS: [&str; 13] = [
    "value",
    "currency",
    "content_ids",
    "content_name",
    "content_type",
    "content_category",
    "contents",
    "num_items",
    "order_id",
    "predicted_ltv",
    "search_string",
    "status",
    "delivery_category",
];

/// What every event of a call shares: the config's defaults and the clock.
pub struct Defaults<'a> {
    pub action_source: &'a str,
    pub default_country: Option<&'a str>,
    pub phone_country_code: Option<&'a str>,
    pub event_names: &'a BTreeMap<String, String>,
    pub now_unix: i64,
}

/// The server event for one record, or why it cannot be sent.
pub fn server_event(key: &str, fields: &str, d: &Defaults<'_>) -> Result<Value, String> {
    let Ok(Value::Object(f)) = serde_json::from_str::<Value>(fields) else {
        return Err("the record's fields are not a JSON object".into());
    };
    let text = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| match f.get(*n) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    };

    let raw_name = text(&["event_name", "event", "name"])
        .ok_or("no event_name: map one, e.g. event_name = \"event.name\"")?;
    let event_name = d.event_names.get(&raw_name).cloned().unwrap_or(raw_name);

    let event_time = match f.get("event_time").or_else(|| f.get("timestamp")) {
        Some(v) => unix_seconds(v).ok_or_else(|| {
            format!("event_time {v} is neither Unix seconds nor an RFC 3339 time")
        })?,
        None => {
            return Err(
                "no event_time: map the event's time, e.g. event_time = \"event.timestamp\"".into(),
            )
        }
    };
    if event_time < d.now_unix - MAX_AGE_SECONDS {
        return Err(format!(
            "event_time {} is more than 7 days ago; Meta refuses such events (Event Timestamp Too Old)",
            time::rfc3339(event_time)
        ));
    }
    if event_time > d.now_unix + MAX_AHEAD_SECONDS {
        return Err(format!(
            "event_time {} is in the future",
            time::rfc3339(event_time)
        ));
    }

    let event_id = text(&["event_id"]).unwrap_or_else(|| key.to_string());
    let action_source = text(&["action_source"]).unwrap_or_else(|| d.action_source.to_string());
    if !ACTION_SOURCES.contains(&action_source.as_str()) {
        return Err(format!(
            "action_source `{action_source}` is not one of {}",
            ACTION_SOURCES.join(", ")
        ));
    }
    let event_source_url = text(&["event_source_url", "url", "page_url"]);

    let user_data = user_data(&f, d)?;
    if action_source == "website" {
        if event_source_url.is_none() {
            return Err("website events need event_source_url (map event.context.page.url)".into());
        }
        if !user_data.contains_key("client_user_agent") {
            return Err(
                "website events need client_user_agent (map event.context.userAgent)".into(),
            );
        }
    }

    let mut event = Map::new();
    event.insert("event_name".into(), json!(event_name));
    event.insert("event_time".into(), json!(event_time));
    event.insert("event_id".into(), json!(event_id));
    event.insert("action_source".into(), json!(action_source));
    if let Some(url) = event_source_url {
        event.insert("event_source_url".into(), json!(url));
    }
    if let Some(Value::Bool(opt_out)) = f.get("opt_out") {
        event.insert("opt_out".into(), json!(opt_out));
    }
    event.insert("user_data".into(), Value::Object(user_data));
    let custom = custom_data(&f)?;
    if event_name == "Purchase"
        && (!custom.contains_key("currency") || !custom.contains_key("value"))
    {
        return Err("Purchase events need value and currency".into());
    }
    if !custom.is_empty() {
        event.insert("custom_data".into(), Value::Object(custom));
    }
    for passthrough in [
        "data_processing_options",
        "data_processing_options_country",
        "data_processing_options_state",
        "app_data",
    ] {
        if let Some(v) = f.get(passthrough).filter(|v| !v.is_null()) {
            event.insert(passthrough.into(), v.clone());
        }
    }
    Ok(Value::Object(event))
}

/// Unix seconds from a number (seconds; 13-digit milliseconds are divided down) or a string
/// (RFC 3339, or digits).
pub fn unix_seconds(v: &Value) -> Option<i64> {
    let from_number = |n: f64| {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        // A 13-digit number is milliseconds (JavaScript's Date.now()), which Meta would read
        // as a time in the far future.
        Some(if n >= 1e11 {
            (n / 1000.0) as i64
        } else {
            n as i64
        })
    };
    match v {
        Value::Number(n) => from_number(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return from_number(s.parse::<f64>().ok()?);
            }
            time::parse_ms(s).map(|ms| ms.div_euclid(1000))
        }
        _ => None,
    }
}

/// `user_data`: contact information normalised and hashed, browser and click ids as they are.
fn user_data(f: &Map<String, Value>, d: &Defaults<'_>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let current_year = u32::try_from(time::year(d.now_unix)).unwrap_or(9999);
    let country_raw = first_text(f, &["country"]);
    let country = country_raw
        .as_deref()
        .and_then(normalize::country)
        .or_else(|| d.default_country.and_then(normalize::country));

    let mut hashed = |key: &str, names: &[&str], rule: &dyn Fn(&str) -> Option<String>| {
        let values: Vec<String> = names
            .iter()
            .flat_map(|n| texts(f.get(*n)))
            .filter_map(|raw| {
                if pii::is_sha256_hex(&raw) {
                    Some(raw.to_ascii_lowercase())
                } else {
                    rule(&raw).map(|v| pii::sha256_hex(&v))
                }
            })
            .collect();
        match values.len() {
            0 => {}
            1 => {
                out.insert(key.into(), json!(values[0]));
            }
            _ => {
                out.insert(key.into(), json!(values));
            }
        }
    };
    hashed("em", &["email", "em"], &normalize::email);
    hashed("ph", &["phone", "ph"], &|p| {
        normalize::phone(p, d.phone_country_code)
    });
    hashed("fn", &["first_name", "fn"], &normalize::name);
    hashed("ln", &["last_name", "ln"], &normalize::name);
    hashed("ge", &["gender", "ge"], &normalize::gender);
    hashed("db", &["date_of_birth", "birthday", "db"], &|b| {
        normalize::birth_date(b, current_year).map(|(y, m, d)| format!("{y}{m}{d}"))
    });
    hashed("ct", &["city", "ct"], &normalize::city);
    hashed("st", &["state", "st"], &|s| {
        normalize::state(s, country.as_deref())
    });
    hashed("zp", &["zip", "postal_code", "zp"], &|z| {
        normalize::zip(z, country.as_deref())
    });
    hashed("external_id", &["external_id"], &normalize::extern_id);
    if let Some(c) = &country {
        match &country_raw {
            Some(raw) if pii::is_sha256_hex(raw) => {
                out.insert("country".into(), json!(raw.to_ascii_lowercase()));
            }
            _ => {
                out.insert("country".into(), json!(pii::sha256_hex(c)));
            }
        }
    }
    for (key, names) in [
        ("client_ip_address", &["client_ip_address", "ip"][..]),
        (
            "client_user_agent",
            &["client_user_agent", "user_agent"][..],
        ),
        ("fbc", &["fbc"][..]),
        ("fbp", &["fbp"][..]),
        ("lead_id", &["lead_id"][..]),
        ("subscription_id", &["subscription_id"][..]),
    ] {
        if let Some(v) = first_text(f, names) {
            out.insert(key.into(), json!(v));
        }
    }
    let identifies = ["em", "ph", "external_id", "fbc", "fbp", "lead_id"]
        .iter()
        .any(|k| out.contains_key(*k))
        || (out.contains_key("client_ip_address") && out.contains_key("client_user_agent"));
    if !identifies {
        return Err(
            "no customer information Meta can match: needs email, phone, external_id, fbc, fbp, lead_id, or client_ip_address with client_user_agent".into(),
        );
    }
    Ok(out)
}

/// `custom_data`: a `custom_data` object field, then the known keys from the top level.
fn custom_data(f: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut out = match f.get("custom_data") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Null) | None => Map::new(),
        Some(other) => return Err(format!("custom_data must be an object, not {other}")),
    };
    for key in CUSTOM_DATA_KEYS {
        if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = out.get("value").cloned() {
        let n = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() => {
                out.insert("value".into(), json!(n));
            }
            _ => return Err(format!("custom_data.value {v} is not a number")),
        }
    }
    if let Some(v) = out.get("currency").cloned() {
        match v.as_str().map(str::trim) {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                out.insert("currency".into(), json!(c.to_ascii_uppercase()));
            }
            _ => return Err(format!("currency {v} is not an ISO 4217 code such as USD")),
        }
    }
    Ok(out)
}

fn first_text(f: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().flat_map(|n| texts(f.get(*n))).next()
}

/// A string, a number as text, or each of a list of them; empty strings left out.
fn texts(v: Option<&Value>) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000; // 2025-12-06T05:46:40Z

    fn names() -> BTreeMap<String, String> {
        SPEC_EVENT_NAMES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn build(fields: Value) -> Result<Value, String> {
        let names = names();
        let d = Defaults {
            action_source: "website",
            default_country: None,
            phone_country_code: Some("1"),
            event_names: &names,
            now_unix: NOW,
        };
        server_event("msg-1", &fields.to_string(), &d)
    }

    fn web(extra: Value) -> Value {
        let mut base = json!({
            "event_name": "Lead", "event_time": NOW - 60,
            "event_source_url": "https://shop.example.com/checkout",
            "user_agent": "Mozilla/5.0", "ip": "203.0.113.7"
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    /// Meta's normalisation examples (Customer Information Parameters): each value normalised as
    /// the page shows, then SHA-256; hashes computed from the normalised values.
    #[test]
    fn user_data_is_normalised_and_hashed_per_meta() {
        let e = build(web(json!({
            "email": "  John_Smith@Gmail.com ", "phone": "+1 (616) 954-78 88",
            "first_name": "Mary", "last_name": "Smith", "city": "Menlo Park",
            "state": "California", "zip": "94025-1234", "country": "US",
            "gender": "Female", "date_of_birth": "1997-02-01", "external_id": " crm-42 ",
            "fbc": "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890", "fbp": "fb.1.1558571054389.1098115397"
        })))
        .unwrap();
        let u = &e["user_data"];
        let h = pii::sha256_hex;
        assert_eq!(u["em"], h("john_smith@gmail.com"));
        assert_eq!(u["ph"], h("16169547888"));
        assert_eq!(u["fn"], h("mary"));
        assert_eq!(u["ln"], h("smith"));
        assert_eq!(u["ct"], h("menlopark"));
        assert_eq!(u["st"], h("ca"));
        assert_eq!(u["zp"], h("94025"));
        assert_eq!(u["country"], h("us"));
        assert_eq!(u["ge"], h("f"));
        assert_eq!(u["db"], h("19970201"));
        assert_eq!(u["external_id"], h("crm-42"));
        // The published vector of the shared normaliser: Test@Example.COM.
        assert_eq!(
            build(web(json!({"email": "  Test@Example.COM "}))).unwrap()["user_data"]["em"],
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        // Unhashed, as Meta asks.
        assert_eq!(u["client_ip_address"], "203.0.113.7");
        assert_eq!(u["client_user_agent"], "Mozilla/5.0");
        assert_eq!(u["fbp"], "fb.1.1558571054389.1098115397");
        assert!(u["fbc"].as_str().unwrap().starts_with("fb.1."));
        // Already hashed values are sent as they are (lowercased), lists become lists.
        let pre = "973DFE463EC85785F5F95AF5BA3906EEDB2D931C24E69824A89EA65DBA4E813B";
        let e = build(web(json!({"email": [pre, "b@example.com"]}))).unwrap();
        assert_eq!(
            e["user_data"]["em"],
            json!([pre.to_ascii_lowercase(), h("b@example.com")])
        );
    }

    #[test]
    fn event_fields_ids_names_and_custom_data() {
        let e = build(web(json!({
            "event_name": "Order Completed", "event_time": "2025-12-06T05:40:00Z",
            "value": "42.50", "currency": "usd", "order_id": "o-1",
            "custom_data": {"contents": [{"id": "sku-1", "quantity": 2}]},
            "data_processing_options": ["LDU"], "data_processing_options_country": 1
        })))
        .unwrap();
        assert_eq!(e["event_name"], "Purchase", "spec name translated");
        assert_eq!(e["event_time"], 1_765_000_000 - 400);
        assert_eq!(
            e["event_id"], "msg-1",
            "the message id deduplicates against the pixel"
        );
        assert_eq!(e["action_source"], "website");
        assert_eq!(e["event_source_url"], "https://shop.example.com/checkout");
        assert_eq!(
            e["custom_data"],
            json!({"contents": [{"id": "sku-1", "quantity": 2}], "value": 42.5, "currency": "USD", "order_id": "o-1"})
        );
        assert_eq!(e["data_processing_options"], json!(["LDU"]));
        let e = build(web(
            json!({"event_id": "order-o-1", "event_time": (NOW - 5) * 1000}),
        ))
        .unwrap();
        assert_eq!(e["event_id"], "order-o-1");
        assert_eq!(e["event_time"], NOW - 5, "milliseconds are read as such");
        assert_eq!(e["event_name"], "Lead");
        assert!(e.get("custom_data").is_none());
    }

    #[test]
    fn refuses_what_meta_refuses_per_event() {
        let err = |v: Value| build(v).unwrap_err();
        assert!(err(web(json!({"event_time": NOW - 7 * 86_400 - 1}))).contains("more than 7 days"));
        assert!(build(web(json!({"event_time": NOW - 7 * 86_400 + 5}))).is_ok());
        assert!(err(web(json!({"event_time": NOW + 3600}))).contains("future"));
        assert!(err(web(json!({"event_time": "yesterday"}))).contains("RFC 3339"));
        let mut no_time = web(json!({}));
        no_time.as_object_mut().unwrap().remove("event_time");
        assert!(err(no_time).contains("no event_time"));
        assert!(err(web(json!({"event_name": " "}))).contains("no event_name"));
        assert!(err(web(json!({"action_source": "fax"}))).contains("not one of"));
        assert!(err(web(json!({"event_source_url": null}))).contains("event_source_url"));
        assert!(
            err(web(json!({"user_agent": null, "email": "a@example.com"})))
                .contains("client_user_agent")
        );
        assert!(err(web(json!({"event_name": "Purchase", "value": 3}))).contains("currency"));
        assert!(err(web(json!({"currency": "dollars"}))).contains("ISO 4217"));
        assert!(err(web(json!({"value": "lots"}))).contains("not a number"));
        // Non-web events need neither URL nor user agent, but something to match on.
        let store = json!({"event_name": "Purchase", "event_time": NOW, "action_source": "physical_store",
                           "value": 10, "currency": "EUR"});
        assert!(build(store.clone())
            .unwrap_err()
            .contains("no customer information"));
        let mut with_phone = store;
        with_phone["phone"] = json!("(212) 555-0100");
        let e = build(with_phone).unwrap();
        assert_eq!(
            e["user_data"]["ph"],
            "d70a96108cd686be3737cbeed345f2a61c178747e3cb4448e6434e24ac150acd"
        );
        assert!(build(json!("x")).is_err());
    }
}
