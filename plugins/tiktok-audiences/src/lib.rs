//! TikTok audiences destination: adds (`upsert`) and removes (`delete`) users in a TikTok custom
//! audience through the Business API's segment mapping endpoint,
//! `POST https://business-api.tiktok.com/open_api/v1.3/segment/mapping/`.
//!
//! Fields read from each record:
//!
//! - `email`: trimmed, lower-cased, and as TikTok's customer-file guide asks, a `+tag` in the
//!   local part removed (`Jane+ads@x.com` → `jane@x.com`); then SHA-256, lowercase hex
//!   (`EMAIL_SHA256`). A value that already is 64 hex digits is taken as a hash.
//! - `phone`: by default digits with the country code and no `+` (`16505550100`;
//!   `default_country_code` for national numbers), the one form both of TikTok's customer-file
//!   pages accept; `phone_format = "e164"` hashes `+16505550100` instead. Then SHA-256
//!   (`PHONE_SHA256`), or a 64-hex hash as is.
//! - `advertising_id`: when `advertising_id_type` is set, trimmed and lower-cased (TikTok asks for
//!   consistent case; its hashed example and RudderStack use lower case), then SHA-256
//!   (`IDFA_SHA256`, or `AAID_SHA256` for Android: `GAID` is the same id).
//!
//! A record with none of them usable is rejected without a request. Raw identifiers are never
//! logged.
//!
//! TikTok answers HTTP 200 for most failures, with a non-zero `code` in the body: `40100` (too
//! many requests) is retried (after a second, or 5 minutes for a per-minute limit, or until
//! midnight UTC for the daily quota); `40001` (no permission on the advertiser) and `401xx` (access
//! token missing, expired or revoked) fail the call as unauthorized; `5xxxx` is retried; other
//! codes (`40002` parameter errors ...) reject the batch with TikTok's message.

use serde::Deserialize;
use switchyard_sdk::{
    http::{Request, Response},
    outcome, pii, schemars, serde_json, time, Action, CallError, Capabilities, Context,
    Destination, OutboundRecord, Plugin, RecordResult, Retry,
};

const BASE: &str = "https://business-api.tiktok.com/open_api/v1.3";

/// Mobile advertising id kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
pub enum AdvertisingIdType {
    /// Apple's IDFA.
    IDFA,
    /// Google advertising id: Android's advertising id, sent as `AAID_SHA256`.
    GAID,
    /// Android advertising id.
    AAID,
}

/// How a phone number is written before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PhoneFormat {
    /// Country code and number, digits only: `16505550100` (TikTok's "List of supported IDs and
    /// formats for a customer file": remove symbols including "+").
    #[default]
    Digits,
    /// E.164 with the plus: `+16505550100` (TikTok's "How to create a Custom Audience with a
    /// customer file" recommends it and lists "without +" as also supported).
    E164,
}

/// Settings of one `[destinations.NAME]` block using the TikTok audiences plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The TikTok advertiser (ad account) id that owns the audience.
    pub advertiser_id: String,
    /// The custom audience id to add users to and remove them from.
    pub audience_id: String,
    /// Send the hashed `email` field.
    #[serde(default = "yes")]
    pub send_email: bool,
    /// Send the hashed `phone` field.
    #[serde(default = "yes")]
    pub send_phone: bool,
    /// Send the hashed `advertising_id` field, of this kind. Not sent when absent.
    #[serde(default)]
    pub advertising_id_type: Option<AdvertisingIdType>,
    /// Country calling code for phones written without one, e.g. `"1"` or `"44"`.
    #[serde(default)]
    pub default_country_code: Option<String>,
    /// `digits` (default, `16505550100`) or `e164` (`+16505550100`): the phone form hashed.
    #[serde(default)]
    pub phone_format: PhoneFormat,
}

fn yes() -> bool {
    true
}

/// The secret holding the Business API access token.
pub const SECRET: &str = "access_token";

struct TikTok;

impl Plugin for TikTok {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("business-api.tiktok.com")
            .secret(
                SECRET,
                "TikTok Business API long-term access token of an app authorised on the advertiser (Audience Management scope)",
                true,
            )
            // TikTok does not publish a per-request limit for segment mapping; 1,000 users per
            // request is a conservative size.
            .max_batch_size(1000)
            // Business API basic tier: 10 requests/s (600/min) per app.
            .default_rate_per_second(10.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Erase])
    }

    /// Reads the advertiser and the audience: proves the token works for both.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        id_schema(&ctx.config)?;
        let url = format!(
            "{BASE}/advertiser/info/?advertiser_ids={}",
            encode_query(&format!("[\"{}\"]", ctx.config.advertiser_id))
        );
        let response = authorised(ctx, Request::get(&url)).send()?;
        envelope(&response).map_err(check_error)?;
        let url = format!(
            "{BASE}/dmp/custom_audience/get/?advertiser_id={}&custom_audience_ids={}",
            encode_query(&ctx.config.advertiser_id),
            encode_query(&format!("[\"{}\"]", ctx.config.audience_id))
        );
        let response = authorised(ctx, Request::get(&url)).send()?;
        let data = envelope(&response).map_err(check_error)?;
        let found = data["list"].as_array().is_some_and(|list| {
            list.iter().any(|a| {
                // TikTok returns the id as a string or as a number.
                a["audience_id"].as_str() == Some(ctx.config.audience_id.as_str())
                    || a["audience_id"].as_u64().map(|n| n.to_string()).as_deref()
                        == Some(ctx.config.audience_id.as_str())
            })
        });
        if !found {
            return Err(CallError::InvalidConfig(format!(
                "audience {} was not found under advertiser {}",
                ctx.config.audience_id, ctx.config.advertiser_id
            )));
        }
        Ok(())
    }
}

impl Destination for TikTok {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let schema = id_schema(&ctx.config)?;
        let action_name = match action {
            Action::Upsert => "add",
            // A privacy erasure is a removal from the audience: segment mapping has no call
            // that deletes a person's data (see the README).
            Action::Delete | Action::Erase => "delete",
            Action::Track => {
                return Err(CallError::InvalidConfig(
                    "tiktok-audiences adds and removes audience users; it does not take events"
                        .to_string(),
                ))
            }
        };
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match user_row(&ctx.config, &schema, &record.fields) {
                Ok(row) => {
                    rows.push(row);
                    sent.push(i);
                }
                Err(reason) => results[i] = RecordResult::Rejected(reason),
            }
        }
        if rows.is_empty() {
            return Ok(results);
        }
        let body = serde_json::json!({
            "advertiser_ids": [ctx.config.advertiser_id],
            "action": action_name,
            "id_schema": schema.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            "batch_data": rows,
        });
        let response = authorised(ctx, Request::post(&format!("{BASE}/segment/mapping/")))
            .json(&body)
            .send()?;
        let shared = match envelope(&response) {
            Ok(_) => RecordResult::Ok,
            Err(Failure::Call(e)) => return Err(e),
            Err(Failure::Retry(r)) => RecordResult::Retry(r),
            Err(Failure::Rejected(m)) => RecordResult::Rejected(m),
        };
        switchyard_sdk::debug!(
            "segment mapping {action_name}: {} users, HTTP {}, {}",
            rows.len(),
            response.status,
            match &shared {
                RecordResult::Ok => "ok".to_string(),
                RecordResult::Retry(r) => format!("retry: {}", r.reason),
                RecordResult::Rejected(m) => format!("rejected: {m}"),
            }
        );
        for i in sent {
            results[i] = shared.clone();
        }
        Ok(results)
    }
}

fn authorised(ctx: &Context<Config>, request: Request) -> Request {
    // No `Bearer`: TikTok wants the bare token in `Access-Token`.
    request.header("access-token", &ctx.secret_placeholder(SECRET))
}

/// Which field feeds each `id_schema` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Email,
    Phone,
    AdvertisingId(AdvertisingIdType),
}

/// The id schema this config sends, in order.
pub fn id_schema(config: &Config) -> Result<Vec<(&'static str, Source)>, CallError> {
    let mut schema = Vec::new();
    if config.send_email {
        schema.push(("EMAIL_SHA256", Source::Email));
    }
    if config.send_phone {
        schema.push(("PHONE_SHA256", Source::Phone));
    }
    if let Some(kind) = config.advertising_id_type {
        let name = match kind {
            AdvertisingIdType::IDFA => "IDFA_SHA256",
            // The Google advertising id is Android's advertising id; TikTok's documented Android
            // schema is AAID (RudderStack and Braze send only IDFA/AAID).
            AdvertisingIdType::GAID | AdvertisingIdType::AAID => "AAID_SHA256",
        };
        schema.push((name, Source::AdvertisingId(kind)));
    }
    if schema.is_empty() {
        return Err(CallError::InvalidConfig(
            "nothing to match on: enable send_email, send_phone or set advertising_id_type"
                .to_string(),
        ));
    }
    Ok(schema)
}

/// One `batch_data` row: an entry per schema id, `{}` where the record has none. The error names
/// the field, never its value.
pub fn user_row(
    config: &Config,
    schema: &[(&'static str, Source)],
    fields: &str,
) -> Result<Vec<serde_json::Value>, String> {
    let fields: serde_json::Value =
        serde_json::from_str(fields).map_err(|_| "fields are not a JSON object".to_string())?;
    if !fields.is_object() {
        return Err("fields are not a JSON object".to_string());
    }
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut row = Vec::with_capacity(schema.len());
    let mut any = false;
    let mut problems = Vec::new();
    for (_, source) in schema {
        let hashed = match source {
            Source::Email => text("email").map(|raw| {
                hash_email(raw).ok_or_else(|| "`email` is not a valid email address".to_string())
            }),
            Source::Phone => text("phone").map(|raw| {
                if pii::is_sha256_hex(raw) {
                    Ok(raw.to_ascii_lowercase())
                } else {
                    hash_phone(raw, config.phone_format, config.default_country_code.as_deref()).ok_or_else(
                        || {
                            "`phone` is not a valid phone number with a country code (set default_country_code for national numbers)"
                                .to_string()
                        },
                    )
                }
            }),
            Source::AdvertisingId(kind) => text("advertising_id").map(|raw| {
                Ok(if pii::is_sha256_hex(raw) {
                    raw.to_ascii_lowercase()
                } else {
                    pii::sha256_hex(&normalize_maid(raw, *kind))
                })
            }),
        };
        match hashed {
            Some(Ok(hash)) => {
                any = true;
                row.push(serde_json::json!({"id": hash, "audience_ids": [config.audience_id]}));
            }
            Some(Err(problem)) => {
                problems.push(problem);
                row.push(serde_json::json!({}));
            }
            None => row.push(serde_json::json!({})),
        }
    }
    if !any {
        let wanted: Vec<&str> = schema
            .iter()
            .map(|(_, s)| match s {
                Source::Email => "email",
                Source::Phone => "phone",
                Source::AdvertisingId(_) => "advertising_id",
            })
            .collect();
        return Err(if problems.is_empty() {
            format!(
                "no identifier to match on: needs one of {}",
                wanted.join(", ")
            )
        } else {
            problems.join("; ")
        });
    }
    Ok(row)
}

/// TikTok's email rule: trim, lower-case, drop a `+tag` from the local part.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = pii::normalize_email(raw)?;
    let (local, domain) = email.split_once('@')?;
    let local = local.split('+').next().unwrap_or(local);
    if local.is_empty() {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

/// SHA-256 of the normalised email, or the value itself when it already is a SHA-256 hex hash.
pub fn hash_email(raw: &str) -> Option<String> {
    if pii::is_sha256_hex(raw) {
        return Some(raw.to_ascii_lowercase());
    }
    normalize_email(raw).map(|e| pii::sha256_hex(&e))
}

/// SHA-256 of the phone in the configured form.
pub fn hash_phone(raw: &str, format: PhoneFormat, default_cc: Option<&str>) -> Option<String> {
    match format {
        PhoneFormat::Digits => pii::hash_phone_digits(raw, default_cc),
        PhoneFormat::E164 => pii::hash_phone_e164(raw, default_cc),
    }
}

/// Every advertising id trimmed and lower-cased: TikTok wants one consistent case, its hashed
/// example is lower case, and RudderStack lower-cases IDFA and AAID before hashing
/// (`tiktok_audience/recordTransform.ts`). An upper-case IDFA would hash to a different value
/// than the lower-case form TikTok's own examples use.
pub fn normalize_maid(raw: &str, _kind: AdvertisingIdType) -> String {
    raw.trim().to_ascii_lowercase()
}

/// Why a response is not a success.
#[derive(Debug)]
pub enum Failure {
    Call(CallError),
    Retry(Retry),
    Rejected(String),
}

/// Unwraps TikTok's `{"code", "message", "request_id", "data"}` envelope into `data`.
pub fn envelope(response: &Response) -> Result<serde_json::Value, Failure> {
    if !response.is_success() {
        return Err(match response.status {
            401 | 403 => Failure::Call(
                outcome::call_result(response)
                    .err()
                    .unwrap_or_else(|| CallError::Unauthorized("HTTP 401".into())),
            ),
            s if outcome::is_retryable_status(s) => Failure::Retry(outcome::retry(response)),
            _ => Failure::Rejected(format!(
                "HTTP {}: {}",
                response.status,
                outcome::api_message(&response.body)
            )),
        });
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&response.body) else {
        return Err(Failure::Retry(Retry {
            reason: format!(
                "TikTok answered HTTP {} with a body that is not JSON",
                response.status
            ),
            after_ms: None,
        }));
    };
    let code = body["code"].as_i64().unwrap_or(-1);
    if code == 0 {
        return Ok(body["data"].clone());
    }
    let message = body["message"].as_str().unwrap_or("(no message)");
    let request_id = body["request_id"].as_str().unwrap_or("-");
    let reason = format!("TikTok code {code}: {message} (request_id {request_id})");
    Err(match code {
        40100 => Failure::Retry(Retry {
            after_ms: Some(rate_limit_wait_ms(message, time::now_unix())),
            reason,
        }),
        40001 | 40101..=40199 => Failure::Call(CallError::Unauthorized(reason)),
        50000..=59999 => Failure::Retry(Retry {
            reason,
            after_ms: None,
        }),
        -1 => Failure::Retry(Retry {
            reason: format!(
                "TikTok answered without a `code`: {}",
                outcome::api_message(&response.body)
            ),
            after_ms: None,
        }),
        _ => Failure::Rejected(reason),
    })
}

/// TikTok sends no Retry-After: per-second limits clear in a second, per-minute limits suspend
/// calls for 5 minutes, the daily quota resets at 00:00 UTC.
pub fn rate_limit_wait_ms(message: &str, now: u64) -> u64 {
    let m = message.to_ascii_lowercase();
    if m.contains("day") || m.contains("daily") || m.contains("qpd") {
        let next_midnight = (now / 86_400 + 1) * 86_400;
        (next_midnight - now) * 1000
    } else if m.contains("minute") || m.contains("qpm") {
        5 * 60 * 1000
    } else {
        1000
    }
}

fn check_error(failure: Failure) -> CallError {
    match failure {
        Failure::Call(e) => e,
        Failure::Retry(r) => CallError::Transient(r),
        Failure::Rejected(m) => CallError::InvalidConfig(m),
    }
}

/// Percent-encodes a query value.
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

switchyard_sdk::export_destination!(TikTok);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config {
            advertiser_id: "7178918106775994370".into(),
            audience_id: "1234345".into(),
            send_email: true,
            send_phone: true,
            advertising_id_type: Some(AdvertisingIdType::IDFA),
            default_country_code: Some("1".into()),
            phone_format: PhoneFormat::default(),
        }
    }

    // TikTok's help page "List of supported IDs and formats for a customer file".
    #[test]
    fn tiktok_published_email_vector() {
        assert_eq!(
            hash_email("janedoe@gmail.com").unwrap(),
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
        );
        assert_eq!(
            hash_email("  JaneDoe+ads@Gmail.com ").unwrap(),
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69",
            "trim, lower-case and drop the +tag"
        );
        assert_eq!(
            normalize_email("jane.doe+x@example.com").unwrap(),
            "jane.doe@example.com",
            "dots stay: removing them is a Gmail rule, not TikTok's"
        );
        assert_eq!(normalize_email("+x@example.com"), None);
        assert_eq!(hash_email("not an email"), None);
    }

    #[test]
    fn rows_follow_the_schema() {
        let c = config();
        let schema = id_schema(&c).unwrap();
        let names: Vec<_> = schema.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256"]);
        let row = user_row(
            &c,
            &schema,
            r#"{"email":"JaneDoe@gmail.com","phone":"(650) 555-0100"}"#,
        )
        .unwrap();
        assert_eq!(
            row[0],
            json!({"id": "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69", "audience_ids": ["1234345"]})
        );
        assert_eq!(row[1]["id"], pii::sha256_hex("16505550100"), "digits, no +");
        assert_eq!(row[2], json!({}));
        for idfa in [
            "6d92078a-8246-4ba4-ae5b-76104861e7dc",
            " 6D92078A-8246-4BA4-AE5B-76104861E7DC ",
        ] {
            let fields = json!({ "advertising_id": idfa }).to_string();
            let row = user_row(&c, &schema, &fields).unwrap();
            assert_eq!(
                row[2]["id"],
                pii::sha256_hex("6d92078a-8246-4ba4-ae5b-76104861e7dc"),
                "IDFA lower-cased"
            );
        }
        let hashed = pii::sha256_hex("a@b.co").to_ascii_uppercase();
        let row = user_row(&c, &schema, &format!(r#"{{"email":"{hashed}"}}"#)).unwrap();
        assert_eq!(row[0]["id"], pii::sha256_hex("a@b.co"), "pre-hashed kept");
    }

    /// T1/T2: phone digits without `+` by default (`e164` on request); GAID goes out as
    /// TikTok's Android schema AAID_SHA256.
    #[test]
    fn phone_format_and_android_schema() {
        assert_eq!(
            hash_phone("(657) 777-0000", PhoneFormat::Digits, Some("1")).unwrap(),
            pii::sha256_hex("16577770000"),
            "TikTok's normalisation example: (657)777-0000 -> 16577770000"
        );
        assert_eq!(
            hash_phone("+374-93-828222", PhoneFormat::Digits, None).unwrap(),
            pii::sha256_hex("37493828222")
        );
        assert_eq!(
            hash_phone("(657) 777-0000", PhoneFormat::E164, Some("1")).unwrap(),
            pii::sha256_hex("+16577770000")
        );
        let c: Config = serde_json::from_value(
            json!({"advertiser_id": "1", "audience_id": "2", "phone_format": "e164"}),
        )
        .unwrap();
        assert_eq!(c.phone_format, PhoneFormat::E164);
        let c: Config = serde_json::from_value(
            json!({"advertiser_id": "1", "audience_id": "2", "advertising_id_type": "GAID"}),
        )
        .unwrap();
        assert_eq!(c.phone_format, PhoneFormat::Digits);
        let names: Vec<_> = id_schema(&c).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["EMAIL_SHA256", "PHONE_SHA256", "AAID_SHA256"]);
    }

    #[test]
    fn unusable_records_are_rejected_without_their_values() {
        let c = config();
        let schema = id_schema(&c).unwrap();
        let e = user_row(&c, &schema, r#"{"email":"nope-at-example","phone":"12"}"#).unwrap_err();
        assert!(
            e.contains("`email` is not a valid") && e.contains("`phone`"),
            "{e}"
        );
        assert!(!e.contains("nope-at-example"));
        let e = user_row(&c, &schema, r#"{"first_name":"Ada"}"#).unwrap_err();
        assert!(
            e.contains("needs one of email, phone, advertising_id"),
            "{e}"
        );
        assert!(user_row(&c, &schema, "[1]").is_err());
        // One good identifier is enough; the bad one is left out.
        let row = user_row(&c, &schema, r#"{"email":"x","phone":"+44 20 7946 0958"}"#).unwrap();
        assert_eq!(row[0], json!({}));
        let none = Config {
            send_email: false,
            send_phone: false,
            advertising_id_type: None,
            ..config()
        };
        assert!(matches!(id_schema(&none), Err(CallError::InvalidConfig(_))));
    }

    fn resp(status: u16, body: serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn envelope_codes() {
        assert!(envelope(&resp(200, json!({"code": 0, "message": "OK", "data": {}}))).is_ok());
        match envelope(&resp(
            200,
            json!({"code": 40100, "message": "Too many requests.", "request_id": "r1"}),
        )) {
            Err(Failure::Retry(r)) => {
                assert_eq!(r.after_ms, Some(1000));
                assert!(
                    r.reason.contains("40100") && r.reason.contains("r1"),
                    "{}",
                    r.reason
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            envelope(&resp(
                200,
                json!({"code": 40105, "message": "Access token is incorrect or has been revoked."})
            )),
            Err(Failure::Call(CallError::Unauthorized(_)))
        ));
        assert!(matches!(
            envelope(&resp(
                200,
                json!({"code": 50000, "message": "System error"})
            )),
            Err(Failure::Retry(_))
        ));
        match envelope(&resp(
            200,
            json!({"code": 40002, "message": "id_schema: invalid"}),
        )) {
            Err(Failure::Rejected(m)) => assert!(m.contains("40002: id_schema: invalid"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            envelope(&resp(503, json!({}))),
            Err(Failure::Retry(_))
        ));
        assert_eq!(
            rate_limit_wait_ms("QPM limit: requests per minute exceeded", 0),
            300_000
        );
        assert_eq!(
            rate_limit_wait_ms("daily quota exhausted", 86_400 - 10),
            10_000
        );
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode_query(r#"["123"]"#), "%5B%22123%22%5D");
    }
}
