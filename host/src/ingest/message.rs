//! Parsing and validation for Segment's HTTP Tracking API (`/v1/identify`, `/v1/track`,
//! `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`).
//!
//! Segment's and RudderStack's SDKs must be able to point at the hub unchanged, so this
//! module follows Segment's documented rules (limits, required ids, `api-` message ids,
//! clock-skew correction) rather than inventing its own. It is pure: the caller supplies
//! the body bytes and the receive time, and gets back validated [`Message`]s or a
//! [`MessageError`] naming the offending field, ready to be sent as a 400.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// The six Segment call types. The wire form is the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        Self::Identify,
        Self::Track,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    /// Parses a `type` value. Exact match: every Segment/RudderStack SDK sends lowercase.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

const TYPES: &str = "identify, track, page, screen, group, alias";

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated message, with identities normalised to strings and timestamps resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The client's `messageId`, or `api-<uuid>` when absent (Segment's convention), so
    /// downstream deduplication always has a key.
    pub message_id: String,
    pub kind: MessageType,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// Alias only: the identity being merged into `user_id`.
    pub previous_id: Option<String>,
    /// Group only.
    pub group_id: Option<String>,
    /// Track only: the event name.
    pub event: Option<String>,
    /// Page/screen only.
    pub name: Option<String>,
    /// Identify/group: the call's `traits`. Other types: `context.traits`, where SDKs put
    /// the user's cached traits.
    pub traits: Map<String, Value>,
    /// Track/page/screen `properties`; empty for other types.
    pub properties: Map<String, Value>,
    /// Object (after merging any batch-level context) or `Null`.
    pub context: Value,
    /// Object or `Null`.
    pub integrations: Value,
    /// Skew-corrected event time: what reports and destinations should use.
    pub timestamp: DateTime<Utc>,
    /// The time the client claimed (`timestamp`, else `originalTimestamp`).
    pub original_timestamp: Option<DateTime<Utc>>,
    /// When the client sent the request (the message's own, else the batch's).
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// A write key given in the body, which some SDKs use instead of Basic auth.
    pub write_key: Option<String>,
    /// The message as received, with `type`, `messageId`, `receivedAt`, `timestamp`
    /// (corrected), `originalTimestamp`, `sentAt` and merged `context` filled in and
    /// `writeKey` removed, so it can be forwarded in Segment's own shape.
    pub raw: Value,
}

impl Message {
    /// `traits.email`, falling back to `context.traits.email`.
    pub fn email(&self) -> Option<String> {
        self.trait_string("email")
    }

    /// `traits.phone`, falling back to `context.traits.phone`.
    pub fn phone(&self) -> Option<String> {
        self.trait_string("phone")
    }

    /// `(type, id)` pairs from `context.externalIds`, skipping malformed entries.
    pub fn external_ids(&self) -> Vec<(String, String)> {
        let Some(list) = self.context.get("externalIds").and_then(Value::as_array) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|entry| {
                let id = scalar_string(entry.get("id")?)?;
                let kind = scalar_string(entry.get("type")?)?;
                Some((kind, id))
            })
            .collect()
    }

    /// Sets `context.ip` (in the message and its stored body) unless the client set it: the
    /// tracking API's enrichment, as Segment's does.
    pub fn default_ip(&mut self, ip: &str) {
        let set = |context: &mut Value| {
            if context.is_null() {
                *context = Value::Object(Map::new());
            }
            if let Value::Object(map) = context {
                let present = map
                    .get("ip")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty());
                if !present {
                    map.insert("ip".into(), Value::String(ip.to_string()));
                }
            }
        };
        set(&mut self.context);
        if let Value::Object(raw) = &mut self.raw {
            set(raw.entry("context").or_insert(Value::Null));
        }
    }

    fn trait_string(&self, key: &str) -> Option<String> {
        let context_traits = self.context.get("traits").and_then(Value::as_object);
        [Some(&self.traits), context_traits]
            .into_iter()
            .flatten()
            .find_map(|traits| traits.get(key).and_then(scalar_string))
    }
}

/// A rejected request. `field` is a JSON path such as `batch[3].userId`, so SDK authors
/// can see exactly which message and field was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MessageError {
    pub field: Option<String>,
    pub message: String,
}

impl MessageError {
    fn at(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    fn in_batch(mut self, index: usize) -> Self {
        self.field = Some(match self.field {
            Some(field) => format!("batch[{index}].{field}"),
            None => format!("batch[{index}]"),
        });
        self
    }

    /// The 400 response body: `{"success": false, "error": ..., "field": ...}`.
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "success": false, "error": self.message });
        if let Some(field) = &self.field {
            body["field"] = Value::String(field.clone());
        }
        body
    }
}

/// Segment's documented size limits; exceeding them is a 400 rather than a silent drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per message, measured as compact JSON (32 KiB).
    pub max_message_bytes: usize,
    /// Per request body (500 KiB).
    pub max_request_bytes: usize,
    /// Messages per `/v1/batch` request (2500).
    pub max_batch_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 * 1024,
            max_request_bytes: 500 * 1024,
            max_batch_messages: 2500,
        }
    }
}

/// A validated `/v1/batch` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub write_key: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Parses a single-call endpoint body. The endpoint decides the type; a body `type` that
/// disagrees is rejected rather than silently trusted or overridden.
///
/// `header_anonymous_id` is RudderStack's `AnonymousId` request header, the anonymous id of a
/// message that carries none of its own.
pub fn parse_single(
    body: &[u8],
    endpoint: MessageType,
    received_at: DateTime<Utc>,
    limits: &Limits,
    header_anonymous_id: Option<&str>,
) -> Result<Message, MessageError> {
    let obj = parse_body(body, limits)?;
    check_message_size(&obj, limits)?;
    let stated = obj.get("type").filter(|t| !t.is_null());
    if let Some(t) = stated.filter(|t| t.as_str() != Some(endpoint.as_str())) {
        return fail(
            "type",
            format!("type {t} does not match the /v1/{endpoint} endpoint"),
        );
    }
    let inherited = Inherited {
        anonymous_id: header_anonymous_id,
        ..Inherited::default()
    };
    build(obj, endpoint, received_at, &inherited)
}

/// Parses a `/v1/batch` body. All-or-nothing: one invalid message rejects the request,
/// so SDKs (which retry whole batches) never see a partially stored batch.
pub fn parse_batch(
    body: &[u8],
    received_at: DateTime<Utc>,
    limits: &Limits,
    header_anonymous_id: Option<&str>,
) -> Result<Batch, MessageError> {
    let mut top = parse_body(body, limits)?;
    let items = match top.remove("batch") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return fail("batch", "batch is required"),
        Some(_) => return fail("batch", "batch must be an array"),
    };
    if items.is_empty() {
        return fail("batch", "batch must contain at least one message");
    }
    let (count, max) = (items.len(), limits.max_batch_messages);
    if count > max {
        return fail(
            "batch",
            format!("batch has {count} messages, over the {max} limit"),
        );
    }
    let write_key = optional_string(&top, "writeKey")?;
    let sent_at = time_field(&top, "sentAt")?;
    let inherited = Inherited {
        sent_at,
        context: object_field(&top, "context")?,
        write_key: write_key.as_deref(),
        anonymous_id: header_anonymous_id,
    };
    let messages = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_batch_item(item, received_at, limits, &inherited).map_err(|e| e.in_batch(i))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        messages,
        write_key,
        sent_at,
    })
}

/// Batch-level values that apply to every message lacking its own.
#[derive(Default)]
struct Inherited<'a> {
    sent_at: Option<DateTime<Utc>>,
    context: Option<&'a Map<String, Value>>,
    write_key: Option<&'a str>,
    /// RudderStack's `AnonymousId` request header.
    anonymous_id: Option<&'a str>,
}

fn parse_batch_item(
    item: Value,
    received_at: DateTime<Utc>,
    limits: &Limits,
    inherited: &Inherited<'_>,
) -> Result<Message, MessageError> {
    let Value::Object(obj) = item else {
        return Err(MessageError::whole("message must be a JSON object"));
    };
    check_message_size(&obj, limits)?;
    let kind = match obj.get("type") {
        Some(Value::String(t)) => match MessageType::parse(t) {
            Some(kind) => kind,
            None => {
                return fail(
                    "type",
                    format!("unknown type {t:?}; expected one of {TYPES}"),
                )
            }
        },
        None | Some(Value::Null) => return fail("type", "type is required"),
        Some(_) => return fail("type", "type must be a string"),
    };
    build(obj, kind, received_at, inherited)
}

fn fail<T>(field: &str, message: impl Into<String>) -> Result<T, MessageError> {
    Err(MessageError::at(field, message))
}

fn parse_body(body: &[u8], limits: &Limits) -> Result<Map<String, Value>, MessageError> {
    if body.len() > limits.max_request_bytes {
        return Err(MessageError::whole(format!(
            "request body is {} bytes, over the {} limit",
            body.len(),
            format_limit(limits.max_request_bytes)
        )));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(MessageError::whole("request body must be a JSON object")),
        Err(e) => Err(MessageError::whole(format!("invalid JSON: {e}"))),
    }
}

/// Measures compact JSON, so client whitespace does not count against the limit.
fn check_message_size(obj: &Map<String, Value>, limits: &Limits) -> Result<(), MessageError> {
    // Serialising a `Map` cannot fail; if it somehow did, reject rather than accept.
    let size = serde_json::to_vec(obj).map_or(usize::MAX, |json| json.len());
    if size > limits.max_message_bytes {
        let limit = format_limit(limits.max_message_bytes);
        return Err(MessageError::whole(format!(
            "message is {size} bytes, over the {limit} limit"
        )));
    }
    Ok(())
}

fn format_limit(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

fn build(
    mut obj: Map<String, Value>,
    kind: MessageType,
    received_at: DateTime<Utc>,
    inherited: &Inherited<'_>,
) -> Result<Message, MessageError> {
    use MessageType::*;

    for key in ["traits", "properties", "integrations"] {
        object_field(&obj, key)?;
    }
    // Batch context goes underneath; the message's own keys win.
    let context = match (obj.remove("context"), inherited.context) {
        (None | Some(Value::Null), None) => Value::Null,
        (None | Some(Value::Null), Some(shared)) => Value::Object(shared.clone()),
        (Some(Value::Object(own)), shared) => {
            let mut merged = shared.cloned().unwrap_or_default();
            merged.extend(own);
            Value::Object(merged)
        }
        (Some(_), _) => return fail("context", "context must be an object"),
    };
    let context_traits = match context.get("traits") {
        None | Some(Value::Null) => None,
        Some(Value::Object(traits)) => Some(traits),
        Some(_) => return fail("context.traits", "context.traits must be an object"),
    };

    let user_id = id_field(&obj, "userId")?;
    // RudderStack's SDKs also keep the anonymous id in `context.traits.anonymousId` and (JS v3)
    // in the `AnonymousId` header; the message's own field wins.
    let anonymous_id = match id_field(&obj, "anonymousId")? {
        Some(id) => Some(id),
        None => context_traits
            .and_then(|t| t.get("anonymousId"))
            .and_then(scalar_string)
            .or_else(|| {
                inherited
                    .anonymous_id
                    .filter(|id| !id.trim().is_empty())
                    .map(str::to_string)
            }),
    };
    let previous_id = (kind == Alias)
        .then(|| id_field(&obj, "previousId"))
        .transpose()?
        .flatten();
    let group_id = (kind == Group)
        .then(|| id_field(&obj, "groupId"))
        .transpose()?
        .flatten();
    let missing = match kind {
        Alias if user_id.is_none() => Some(("userId", "userId is required for alias")),
        Alias if previous_id.is_none() => Some(("previousId", "previousId is required for alias")),
        Alias => None,
        _ if user_id.is_none() && anonymous_id.is_none() => {
            Some(("userId", "userId or anonymousId is required"))
        }
        Group if group_id.is_none() => Some(("groupId", "groupId is required for group")),
        _ => None,
    };
    if let Some((field, message)) = missing {
        return fail(field, message);
    }

    let event = match (kind, obj.get("event")) {
        (Track, Some(Value::String(e))) if !e.trim().is_empty() => Some(e.clone()),
        (Track, _) => return fail("event", "track requires a non-empty string event"),
        _ => None,
    };
    let name = match (kind, obj.get("name")) {
        (Page | Screen, Some(Value::String(n))) if !n.is_empty() => Some(n.clone()),
        (Page | Screen, Some(v)) if !v.is_null() && !v.is_string() => {
            return fail("name", "name must be a string")
        }
        _ => None,
    };

    let message_id = match obj.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.chars().count() > 100 => {
            return fail("messageId", "messageId must be at most 100 characters")
        }
        Some(Value::String(id)) => Some(id.clone()).filter(|id| !id.is_empty()),
        Some(_) => return fail("messageId", "messageId must be a string"),
    }
    .unwrap_or_else(|| format!("api-{}", uuid::Uuid::new_v4()));

    let client_timestamp = time_field(&obj, "timestamp")?;
    let original_timestamp = client_timestamp.or(time_field(&obj, "originalTimestamp")?);
    let sent_at = time_field(&obj, "sentAt")?.or(inherited.sent_at);
    // Segment's skew correction: the client's clock offset is (sentAt - receivedAt), so
    // timestamp = receivedAt - (sentAt - originalTimestamp).
    let timestamp = match (original_timestamp, sent_at) {
        (Some(client), Some(sent)) => received_at
            .checked_sub_signed(sent - client)
            .ok_or_else(|| MessageError::at("sentAt", "sentAt is too far from timestamp"))?,
        (Some(client), None) => client,
        (None, _) => received_at,
    };

    let write_key =
        optional_string(&obj, "writeKey")?.or_else(|| inherited.write_key.map(String::from));
    let traits = match kind {
        // The user's traits: RudderStack's SDKs send identify traits in `context.traits`,
        // Segment's in `traits`; both count, the top level winning per key.
        Identify => {
            let mut merged = context_traits.cloned().unwrap_or_default();
            if let Some(own) = object_field(&obj, "traits")? {
                merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            merged
        }
        // The group's (account's) traits, not the user's.
        Group => object_field(&obj, "traits")?.cloned().unwrap_or_default(),
        _ => context_traits.cloned().unwrap_or_default(),
    };
    let properties = match kind {
        Track | Page | Screen => object_field(&obj, "properties")?
            .cloned()
            .unwrap_or_default(),
        _ => Map::new(),
    };
    let integrations = obj.get("integrations").cloned().unwrap_or(Value::Null);

    // The write key is a credential: never forward it to destinations.
    obj.remove("writeKey");
    let ids = [
        ("userId", &user_id),
        ("anonymousId", &anonymous_id),
        ("previousId", &previous_id),
        ("groupId", &group_id),
    ];
    for (key, value) in ids {
        if let Some(value) = value {
            obj.insert(key.to_string(), Value::String(value.clone()));
        }
    }
    let stamp = |t: DateTime<Utc>| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true));
    obj.insert("type".into(), Value::String(kind.as_str().into()));
    obj.insert("messageId".into(), Value::String(message_id.clone()));
    obj.insert("receivedAt".into(), stamp(received_at));
    obj.insert("timestamp".into(), stamp(timestamp));
    if let Some(t) = original_timestamp {
        obj.insert("originalTimestamp".into(), stamp(t));
    }
    if let Some(t) = sent_at {
        obj.insert("sentAt".into(), stamp(t));
    }
    if !context.is_null() {
        obj.insert("context".into(), context.clone());
    }

    Ok(Message {
        message_id,
        kind,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        event,
        name,
        traits,
        properties,
        context,
        integrations,
        timestamp,
        original_timestamp,
        sent_at,
        received_at,
        write_key,
        raw: Value::Object(obj),
    })
}

/// Ids are strings, but numbers are accepted and stringified, as Segment's API does.
/// Blank strings count as absent.
fn id_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(scalar_string(v)),
        Some(_) => fail(key, format!("{key} must be a string or number")),
    }
}

/// A non-blank string, or a number rendered as a string.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(_) => fail(key, format!("{key} must be a string")),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => fail(key, format!("{key} must be an object")),
    }
}

fn time_field(obj: &Map<String, Value>, key: &str) -> Result<Option<DateTime<Utc>>, MessageError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s).map(Some).ok_or_else(|| {
            MessageError::at(key, format!("{key} is not an ISO-8601 date-time: {s:?}"))
        }),
        Some(_) => fail(key, format!("{key} must be an ISO-8601 string")),
    }
}

/// RFC 3339, ISO-8601 offsets without a colon (`+0100`), or no zone at all (taken as UTC).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::MessageType::*;
    use super::*;

    const NOW: &str = "2024-01-01T11:00:06Z";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn single(kind: MessageType, body: &str) -> Result<Message, MessageError> {
        parse_single(body.as_bytes(), kind, t(NOW), &Limits::default(), None)
    }

    fn batch(body: &str) -> Result<Batch, MessageError> {
        parse_batch(body.as_bytes(), t(NOW), &Limits::default(), None)
    }

    /// The error's `field`, or `"<ok>"` so that a wrongly accepted body fails the assert.
    fn field<T>(result: Result<T, MessageError>) -> String {
        let error = result.err();
        error.map_or("<ok>".into(), |e| e.field.unwrap_or_default())
    }

    #[test]
    fn identify_happy_path() {
        let body = r#"{"userId":"u1","traits":{"plan":"pro"},"messageId":"m-1"}"#;
        let m = single(Identify, body).unwrap();
        assert_eq!((m.kind, m.user_id.as_deref()), (Identify, Some("u1")));
        assert_eq!(m.traits["plan"], "pro");
        assert_eq!(m.message_id, "m-1");
        assert_eq!((m.timestamp, m.original_timestamp), (t(NOW), None));
        assert_eq!(m.raw["type"], "identify");
        assert_eq!(m.raw["receivedAt"], "2024-01-01T11:00:06.000Z");
        assert_eq!(m.raw["timestamp"], "2024-01-01T11:00:06.000Z");
        assert!(m.raw.get("originalTimestamp").is_none());
    }

    #[test]
    fn track_page_screen_happy_paths() {
        let body = r#"{"anonymousId":"a1","event":"Signed Up","properties":{"n":1}}"#;
        let m = single(Track, body).unwrap();
        assert_eq!(m.event.as_deref(), Some("Signed Up"));
        assert_eq!(m.anonymous_id.as_deref(), Some("a1"));
        assert_eq!(m.properties["n"], 1);
        let body = r#"{"userId":"u","name":"Home","properties":{"path":"/"}}"#;
        let m = single(Page, body).unwrap();
        assert_eq!((m.kind, m.name.as_deref()), (Page, Some("Home")));
        assert_eq!(m.properties["path"], "/");
        let body = r#"{"userId":"u","name":"Settings","type":"screen"}"#;
        let m = single(Screen, body).unwrap();
        assert_eq!((m.kind, m.name.as_deref()), (Screen, Some("Settings")));
        assert_eq!(m.event, None);
    }

    #[test]
    fn group_and_alias_happy_paths() {
        let body = r#"{"userId":"u","groupId":42,"traits":{"name":"Acme"}}"#;
        let m = single(Group, body).unwrap();
        assert_eq!(m.group_id.as_deref(), Some("42"));
        assert_eq!(
            (&m.traits["name"], &m.raw["groupId"]),
            (&json!("Acme"), &json!("42"))
        );
        let m = single(Alias, r#"{"userId":"new","previousId":"old"}"#).unwrap();
        assert_eq!(m.user_id.as_deref(), Some("new"));
        assert_eq!(m.previous_id.as_deref(), Some("old"));
    }

    #[test]
    fn numeric_user_id_becomes_string() {
        let m = single(Identify, r#"{"userId":12345}"#).unwrap();
        assert_eq!(m.user_id.as_deref(), Some("12345"));
        assert_eq!(m.raw["userId"], "12345");
    }

    #[test]
    fn missing_user_and_anonymous_id() {
        let e = single(Track, r#"{"event":"x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("userId"));
        assert_eq!(e.message, "userId or anonymousId is required");
    }

    #[test]
    fn single_message_rejections_name_the_field() {
        let cases = [
            // Identity: blank strings count as missing; other types are invalid.
            (
                Track,
                r#"{"event":"x","userId":"","anonymousId":" "}"#,
                "userId",
            ),
            (Track, r#"{"event":"x","userId":true}"#, "userId"),
            (Identify, r#"{"anonymousId":["a"]}"#, "anonymousId"),
            // Per-type requirements.
            (Alias, r#"{"anonymousId":"a","previousId":"p"}"#, "userId"),
            (Alias, r#"{"userId":"u"}"#, "previousId"),
            (Group, r#"{"userId":"u"}"#, "groupId"),
            (Track, r#"{"userId":"u"}"#, "event"),
            (Track, r#"{"userId":"u","event":""}"#, "event"),
            (Track, r#"{"userId":"u","event":7}"#, "event"),
            (Page, r#"{"userId":"u","name":{}}"#, "name"),
            // Object-valued fields.
            (Identify, r#"{"userId":"u","traits":"x"}"#, "traits"),
            (Page, r#"{"userId":"u","properties":[1]}"#, "properties"),
            (Identify, r#"{"userId":"u","context":1}"#, "context"),
            (
                Identify,
                r#"{"userId":"u","integrations":true}"#,
                "integrations",
            ),
            (
                Identify,
                r#"{"userId":"u","context":{"traits":1}}"#,
                "context.traits",
            ),
            // Timestamps and message ids.
            (
                Identify,
                r#"{"userId":"u","timestamp":"yesterday"}"#,
                "timestamp",
            ),
            (
                Identify,
                r#"{"userId":"u","sentAt":"2024-13-01T00:00:00Z"}"#,
                "sentAt",
            ),
            (
                Identify,
                r#"{"userId":"u","originalTimestamp":1704067200}"#,
                "originalTimestamp",
            ),
            (Identify, r#"{"userId":"u","messageId":7}"#, "messageId"),
        ];
        for (kind, body, expected) in cases {
            assert_eq!(field(single(kind, body)), expected, "{kind} {body}");
        }
        let long = format!(r#"{{"userId":"u","messageId":"{}"}}"#, "x".repeat(101));
        assert_eq!(field(single(Identify, &long)), "messageId");
    }

    #[test]
    fn endpoint_type_mismatch() {
        let e = single(Identify, r#"{"type":"track","userId":"u","event":"e"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("type"));
        assert_eq!(
            e.message,
            "type \"track\" does not match the /v1/identify endpoint"
        );
        let m = single(Identify, r#"{"type":"identify","userId":"u"}"#).unwrap();
        assert_eq!(m.kind, Identify);
    }

    #[test]
    fn batch_rejections_name_the_index() {
        let ok = r#"{"type":"identify","userId":"u"}"#;
        let cases = [
            (r#"{"type":"purchase","userId":"u"}"#, "batch[1].type"),
            (r#"{"userId":"u"}"#, "batch[1].type"),
            (r#"{"type":3,"userId":"u"}"#, "batch[1].type"),
            (r#""identify""#, "batch[1]"),
            (r#"{"type":"track","event":"no id"}"#, "batch[1].userId"),
        ];
        for (bad, expected) in cases {
            let body = format!(r#"{{"batch":[{ok},{bad},{ok}]}}"#);
            assert_eq!(field(batch(&body)), expected, "{bad}");
        }
        let e = batch(r#"{"batch":[{"type":"purchase","userId":"u"}]}"#).unwrap_err();
        assert!(e.message.starts_with("unknown type \"purchase\""), "{e}");
        let body = format!(r#"{{"sentAt":"nope","batch":[{ok}]}}"#);
        assert_eq!(field(batch(&body)), "sentAt");
        assert_eq!(field(batch(r#"{"batch":{}}"#)), "batch");
        assert_eq!(field(batch("{}")), "batch");
        let e = batch(r#"{"batch":[]}"#).unwrap_err();
        assert_eq!(e.message, "batch must contain at least one message");
    }

    #[test]
    fn one_bad_message_rejects_the_batch() {
        let body = r#"{"batch":[
            {"type":"identify","userId":"u1"},
            {"type":"track","userId":"u2","event":"ok"},
            {"type":"identify","userId":"u3"},
            {"type":"track","event":"no id"}]}"#;
        let e = batch(body).unwrap_err();
        assert_eq!(e.to_string(), "userId or anonymousId is required");
        let expected = json!({"success": false, "error": e.message, "field": "batch[3].userId"});
        assert_eq!(e.to_json(), expected);
    }

    #[test]
    fn oversize_body_and_message() {
        let e = parse_batch(&[b' '; 600_000], t(NOW), &Limits::default(), None).unwrap_err();
        assert_eq!(
            e.message,
            "request body is 600000 bytes, over the 500 KB limit"
        );
        assert_eq!(e.field, None);

        let blob = "x".repeat(33_000);
        let big = format!(r#"{{"type":"identify","userId":"u","traits":{{"b":"{blob}"}}}}"#);
        let body = format!(r#"{{"batch":[{{"type":"identify","userId":"u"}},{big}]}}"#);
        let e = batch(&body).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("batch[1]"));
        assert_eq!(e.message, "message is 33050 bytes, over the 32 KB limit");
        let e = single(Identify, &big).unwrap_err();
        assert_eq!(e.message, "message is 33050 bytes, over the 32 KB limit");

        let limits = Limits {
            max_batch_messages: 1,
            ..Limits::default()
        };
        let body = br#"{"batch":[{"type":"alias","userId":"u"},{"type":"alias","userId":"v"}]}"#;
        let e = parse_batch(body, t(NOW), &limits, None).unwrap_err();
        assert_eq!(e.message, "batch has 2 messages, over the 1 limit");
    }

    #[test]
    fn malformed_json_and_non_object_bodies() {
        let e = single(Identify, r#"{"userId": "#).unwrap_err();
        assert_eq!(
            e.message,
            "invalid JSON: EOF while parsing a value at line 1 column 11"
        );
        let e = batch("[1, 2]").unwrap_err();
        assert_eq!(e.message, "request body must be a JSON object");
    }

    #[test]
    fn batch_level_sent_at_context_and_write_key() {
        let body = r#"{"writeKey":"wk","sentAt":"2024-01-01T12:00:05Z",
            "context":{"library":{"name":"analytics-go"},"ip":"1.1.1.1"},
            "batch":[
              {"type":"identify","userId":"u","timestamp":"2024-01-01T12:00:00Z",
               "context":{"ip":"2.2.2.2"}},
              {"type":"track","userId":"u","event":"e","sentAt":"2024-01-01T12:00:00Z",
               "timestamp":"2024-01-01T12:00:00Z","writeKey":"own"}]}"#;
        let b = batch(body).unwrap();
        assert_eq!(b.write_key.as_deref(), Some("wk"));
        assert_eq!(b.sent_at, Some(t("2024-01-01T12:00:05Z")));
        let (first, second) = (&b.messages[0], &b.messages[1]);
        let merged = json!({"library": {"name": "analytics-go"}, "ip": "2.2.2.2"});
        assert_eq!((&first.context, &first.raw["context"]), (&merged, &merged));
        assert_eq!(second.context["ip"], "1.1.1.1");
        // The first message inherits the batch's sentAt, so its skew is corrected.
        assert_eq!(first.sent_at, Some(t("2024-01-01T12:00:05Z")));
        assert_eq!(first.raw["sentAt"], "2024-01-01T12:00:05.000Z");
        assert_eq!(first.timestamp, t("2024-01-01T11:00:01Z"));
        // The second's own sentAt wins: sent the instant it happened, so timestamp = receivedAt.
        assert_eq!(second.sent_at, Some(t("2024-01-01T12:00:00Z")));
        assert_eq!(second.timestamp, t(NOW));
        assert_eq!(first.write_key.as_deref(), Some("wk"));
        assert_eq!(second.write_key.as_deref(), Some("own"));
    }

    #[test]
    fn skew_correction_worked_example() {
        // The client clock is one hour fast: it stamps the event 12:00:00 and sends it at
        // 12:00:05; we receive it at 11:00:06. It was sent 5s after the event, so the
        // event happened at 11:00:06 - 5s = 11:00:01.
        let body = r#"{"userId":"u","event":"e",
            "timestamp":"2024-01-01T12:00:00Z","sentAt":"2024-01-01T12:00:05Z"}"#;
        let m = single(Track, body).unwrap();
        assert_eq!(m.timestamp, t("2024-01-01T11:00:01Z"));
        assert_eq!(m.original_timestamp, Some(t("2024-01-01T12:00:00Z")));
        assert_eq!(m.raw["timestamp"], "2024-01-01T11:00:01.000Z");
        assert_eq!(m.raw["originalTimestamp"], "2024-01-01T12:00:00.000Z");

        // RudderStack SDKs send originalTimestamp instead of timestamp.
        let body = body.replace("\"timestamp", "\"originalTimestamp");
        let m = single(Track, &body).unwrap();
        assert_eq!(m.timestamp, t("2024-01-01T11:00:01Z"));

        // Without sentAt the client's timestamp stands.
        let body = r#"{"userId":"u","event":"e","timestamp":"2023-06-01T08:00:00Z"}"#;
        let m = single(Track, body).unwrap();
        assert_eq!(m.timestamp, t("2023-06-01T08:00:00Z"));
    }

    #[test]
    fn timestamp_formats() {
        let cases = [
            ("2024-01-01T12:00:00+02:00", "2024-01-01T10:00:00Z"),
            ("2024-01-01T12:00:00-0130", "2024-01-01T13:30:00Z"),
            ("2024-01-01T12:00:00.250Z", "2024-01-01T12:00:00.250Z"),
            ("2024-01-01T12:00:00", "2024-01-01T12:00:00Z"),
            ("2024-01-01T12:00:00.5", "2024-01-01T12:00:00.500Z"),
        ];
        for (sent, expected) in cases {
            let body = format!(r#"{{"userId":"u","timestamp":"{sent}"}}"#);
            assert_eq!(
                single(Identify, &body).unwrap().timestamp,
                t(expected),
                "{sent}"
            );
        }
    }

    #[test]
    fn message_id_kept_or_generated() {
        let m = single(Identify, r#"{"userId":"u"}"#).unwrap();
        let uuid = m.message_id.strip_prefix("api-").expect("api- prefix");
        assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 4);
        assert_eq!(m.raw["messageId"], m.message_id.as_str());
        let m = single(Identify, r#"{"userId":"u","messageId":"client-1"}"#).unwrap();
        assert_eq!(m.message_id, "client-1");
    }

    #[test]
    fn write_key_is_read_and_stripped_from_raw() {
        let m = single(Identify, r#"{"userId":"u","writeKey":"secret"}"#).unwrap();
        assert_eq!(m.write_key.as_deref(), Some("secret"));
        assert!(m.raw.get("writeKey").is_none());
    }

    #[test]
    fn email_phone_and_external_ids() {
        let body = r#"{"userId":"u","traits":{"email":"top@example.com"},
            "context":{"traits":{"email":"ctx@example.com","phone":"+15551234567"},
              "externalIds":[
                {"id":"cus_1","type":"stripe_id","collection":"users","encoding":"none"},
                {"id":987,"type":"crm_id","collection":"users","encoding":"none"},
                {"type":"missing_id"}, "junk"]}}"#;
        let m = single(Identify, body).unwrap();
        assert_eq!(m.email().as_deref(), Some("top@example.com"));
        assert_eq!(m.phone().as_deref(), Some("+15551234567"));
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let expected = [pair("stripe_id", "cus_1"), pair("crm_id", "987")];
        assert_eq!(m.external_ids(), expected);

        // Other calls take their traits from context.traits.
        let body = r#"{"userId":"u","event":"e","context":{"traits":{"email":"t@x.io"}}}"#;
        let m = single(Track, body).unwrap();
        assert_eq!(m.traits["email"], "t@x.io");
        assert_eq!(m.email().as_deref(), Some("t@x.io"));
        assert_eq!((m.phone(), m.external_ids()), (None, vec![]));
    }

    #[test]
    fn message_type_round_trips() {
        for kind in MessageType::ALL {
            assert_eq!(MessageType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(MessageType::parse("Track"), None);
    }

    #[test]
    fn identify_traits_from_both_places_top_level_wins() {
        // RudderStack's Python and JS SDKs put identify traits in context.traits.
        let body = r#"{"userId":"u","traits":{"plan":"pro","name":"Ada"},
            "context":{"traits":{"plan":"free","email":"ada@example.com"}}}"#;
        let m = single(Identify, body).unwrap();
        let expected = json!({"plan": "pro", "name": "Ada", "email": "ada@example.com"});
        assert_eq!(Value::Object(m.traits.clone()), expected);
        let body = r#"{"userId":"u","context":{"traits":{"email":"r@example.com"}}}"#;
        assert_eq!(
            single(Identify, body).unwrap().traits["email"],
            "r@example.com"
        );
        // A group's traits are the account's, not the user's.
        let body = r#"{"userId":"u","groupId":"g","traits":{"name":"Acme"},
            "context":{"traits":{"email":"u@example.com"}}}"#;
        let m = single(Group, body).unwrap();
        assert_eq!(Value::Object(m.traits), json!({"name": "Acme"}));
    }

    #[test]
    fn rudderstack_anonymous_id_conventions() {
        // context.traits.anonymousId (RudderStack's mobile SDKs) stands in for anonymousId.
        let body = r#"{"event":"e","context":{"traits":{"anonymousId":"ctx-anon"}}}"#;
        let m = single(Track, body).unwrap();
        assert_eq!(m.anonymous_id.as_deref(), Some("ctx-anon"));
        assert_eq!(m.raw["anonymousId"], "ctx-anon");
        // The AnonymousId header (JS SDK v3) fills a message that has neither.
        let m = parse_single(
            br#"{"event":"e"}"#,
            Track,
            t(NOW),
            &Limits::default(),
            Some("hdr"),
        )
        .unwrap();
        assert_eq!(m.anonymous_id.as_deref(), Some("hdr"));
        let m = parse_single(
            br#"{"event":"e","anonymousId":"own"}"#,
            Track,
            t(NOW),
            &Limits::default(),
            Some("hdr"),
        )
        .unwrap();
        assert_eq!(m.anonymous_id.as_deref(), Some("own"));
        let b = parse_batch(
            br#"{"batch":[{"type":"track","event":"e"}]}"#,
            t(NOW),
            &Limits::default(),
            Some("hdr"),
        )
        .unwrap();
        assert_eq!(b.messages[0].anonymous_id.as_deref(), Some("hdr"));
        // rudderId and the rest of context are kept as sent.
        let body = r#"{"userId":"u","rudderId":"r-1","context":{
            "consent":{"categoryPreferences":{"Advertising":false}},
            "externalIds":[{"id":"c1","type":"crm_id"}],"userAgent":"UA/1"}}"#;
        let m = single(Identify, body).unwrap();
        assert_eq!(m.raw["rudderId"], "r-1");
        assert_eq!(
            m.raw["context"]["consent"]["categoryPreferences"]["Advertising"],
            false
        );
        assert_eq!(m.raw["context"]["externalIds"][0]["id"], "c1");
        assert_eq!(m.raw["context"]["userAgent"], "UA/1");
    }

    #[test]
    fn default_ip_fills_only_what_the_client_left_out() {
        let mut m = single(Track, r#"{"userId":"u","event":"e"}"#).unwrap();
        m.default_ip("198.51.100.7");
        assert_eq!(
            (&m.context["ip"], &m.raw["context"]["ip"]),
            (&json!("198.51.100.7"), &json!("198.51.100.7"))
        );
        let mut m = single(
            Track,
            r#"{"userId":"u","event":"e","context":{"ip":"1.1.1.1","x":1}}"#,
        )
        .unwrap();
        m.default_ip("198.51.100.7");
        assert_eq!(m.raw["context"], json!({"ip": "1.1.1.1", "x": 1}));
        let mut m = single(Track, r#"{"userId":"u","event":"e","context":{"ip":""}}"#).unwrap();
        m.default_ip("198.51.100.7");
        assert_eq!(m.raw["context"]["ip"], "198.51.100.7");
    }
}
