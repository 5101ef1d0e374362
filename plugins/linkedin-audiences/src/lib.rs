//! LinkedIn audiences destination: adds (`upsert`) and removes (`delete`) users in a LinkedIn DMP
//! segment (Matched Audiences streaming), `POST https://api.linkedin.com/rest/dmpSegments/{id}/users`
//! with `X-RestLi-Method: BATCH_CREATE`, `LinkedIn-Version` and `X-Restli-Protocol-Version: 2.0.0`.
//!
//! Fields read from each record:
//!
//! - `email`: whitespace removed, lower-cased, then SHA-256 (`SHA256_EMAIL`) or SHA-512
//!   (`SHA512_EMAIL`, with `email_hash = "sha512"`), lowercase hex. A value that already is 64 or
//!   128 hex digits is taken as a SHA-256 / SHA-512 hash.
//! - `google_advertising_id`: sent as is (`GOOGLE_AID`, LinkedIn does not want it hashed),
//!   lower-cased.
//! - `first_name`, `last_name`, `title`, `company`, `country` (ISO 3166-1 alpha-2): sent as
//!   `firstName`, `lastName`, `title`, `company`, `country`; without any user id, LinkedIn needs
//!   both names to match.
//!
//! A record with no user id and no full name is rejected without a request. Raw emails are never
//! logged.
//!
//! LinkedIn answers `200 {"elements": [{"status": 201}, {"status": 400, "error": {"message"}}]}`,
//! one status per element in order: each record gets its own (2xx ok, 429/5xx retry, other 4xx
//! rejected with LinkedIn's message). A whole-request `429` (LinkedIn sends no Retry-After; the
//! limit is per minute) is retried after a minute; `401`/`403` fail the call as unauthorized;
//! `426` (a version past its sunset) fails it as a config error. A `404` is never the records'
//! fault: the plugin reads the segment, and fails the call as a config error when it does not
//! exist, or retries the batch after a minute when it does (a segment created moments ago answers
//! 404 on `/users` for a while).

use serde::Deserialize;
use sha2::{Digest, Sha512};
use switchyard_sdk::{
    http::{Request, Response},
    outcome, pii, schemars, serde_json,
    sunset::Sunset,
    Action, CallError, Capabilities, Context, Destination, OutboundRecord, Plugin, RecordResult,
    Retry,
};

const BASE: &str = "https://api.linkedin.com/rest";
const PROTOCOL_VERSION: &str = "2.0.0";

/// The `LinkedIn-Version` a config without `linkedin_version` sends: the newest version LinkedIn
/// documented as "Latest" when checked (2026-12-06), live until 2027-07-15.
pub const DEFAULT_VERSION: &str = "202607";

/// LinkedIn Marketing versions and the day LinkedIn stops serving them (then every call answers
/// `426 NONEXISTENT_VERSION`). Checked 2026-12-06.
pub const SUNSETS: &[Sunset] = &[
    Sunset {
        version: "202509",
        sunset: "2026-09-15",
        source: MIGRATIONS_MIRROR,
    },
    Sunset {
        version: "202510",
        sunset: "2026-10-15",
        source: MIGRATIONS,
    },
    Sunset {
        version: "202511",
        sunset: "2026-11-16",
        source: MIGRATIONS,
    },
    Sunset {
        version: "202601",
        sunset: "2027-01-15",
        source: MIGRATIONS,
    },
    Sunset {
        version: "202602",
        sunset: "2027-02-15",
        source: MIGRATIONS,
    },
    Sunset {
        version: "202603",
        sunset: "2027-03-16",
        source: MIGRATIONS,
    },
    Sunset {
        version: "202604",
        sunset: "2027-04-15",
        source: MIGRATIONS_MIRROR,
    },
    Sunset {
        version: "202605",
        sunset: "2027-05-15",
        source: MIGRATIONS_MIRROR,
    },
    Sunset {
        version: "202606",
        sunset: "2027-06-15",
        source: MIGRATIONS_MIRROR,
    },
    Sunset {
        version: "202607",
        sunset: "2027-07-15",
        source: MIGRATIONS_MIRROR,
    },
];
const MIGRATIONS: &str = "https://learn.microsoft.com/it-it/linkedin/marketing/integrations/migrations (API Migration Status table)";
const MIGRATIONS_MIRROR: &str = "LinkedIn's migrations table as copied on 2026-08-13 in api-evangelist/linkedin-ads lifecycle/linkedin-ads-lifecycle.yml (source https://learn.microsoft.com/en-us/linkedin/marketing/integrations/migrations)";

/// Requests per second by default: half of LinkedIn's per-member ceiling of 600 requests per
/// minute on the DMP streaming endpoints, so another integration on the same member token does
/// not tip both into 429.
pub const DEFAULT_RATE_PER_SECOND: f64 = 5.0;

/// How long a batch waits when `/users` answers 404 for a segment that exists: Segment's
/// connector observed segments accept users "1 - 2 minutes after they're created".
const FRESH_SEGMENT_WAIT_MS: u64 = 60_000;

/// Which email hash to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailHash {
    Sha256,
    Sha512,
}

/// Settings of one `[destinations.NAME]` block using the LinkedIn audiences plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The DMP segment id (the number in `urn:li:dmpSegment:...`). Create the segment first
    /// (type USER) and wait a few seconds before streaming users to it.
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub segment_id: String,
    /// The `LinkedIn-Version` (YYYYMM) of the Marketing API to call (default 202607). LinkedIn
    /// sunsets versions after about a year: move it forward when LinkedIn answers 426.
    #[serde(default = "default_version")]
    #[schemars(regex(pattern = r"^[0-9]{6}$"))]
    pub linkedin_version: String,
    /// `sha256` (SHA256_EMAIL) or `sha512` (SHA512_EMAIL).
    #[serde(default = "default_hash")]
    pub email_hash: EmailHash,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

fn default_hash() -> EmailHash {
    EmailHash::Sha256
}

/// The secret holding the OAuth access token.
pub const SECRET: &str = "access_token";

struct LinkedIn;

impl Plugin for LinkedIn {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("api.linkedin.com")
            .secret(
                SECRET,
                "LinkedIn OAuth 2.0 access token of a member with the rw_dmp_segments permission on the ad account",
                true,
            )
            // LinkedIn does not document a maximum number of elements per BATCH_CREATE; 5,000 is
            // the size integrations commonly use.
            .max_batch_size(5000)
            .default_rate_per_second(DEFAULT_RATE_PER_SECOND)
            .actions(&[Action::Upsert, Action::Delete, Action::Erase])
    }

    /// Reads the segment with the write path's headers, without side effects: proves the token,
    /// that LinkedIn still serves `linkedin_version`, and that the segment exists.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        read_segment(ctx)
    }
}

impl Destination for LinkedIn {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let action_name =
            match action {
                Action::Upsert => "ADD",
                // A privacy erasure is a removal from the segment: the DMP segment API has no
                // call that deletes a person's data (see the README).
                Action::Delete | Action::Erase => "REMOVE",
                Action::Track => return Err(CallError::InvalidConfig(
                    "linkedin-audiences adds and removes segment users; it does not take events"
                        .to_string(),
                )),
            };
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut elements = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match element(ctx.config.email_hash, action_name, &record.fields) {
                Ok(e) => {
                    elements.push(e);
                    sent.push(i);
                }
                Err(reason) => results[i] = RecordResult::Rejected(reason),
            }
        }
        if elements.is_empty() {
            return Ok(results);
        }
        let url = format!("{BASE}/dmpSegments/{}/users", ctx.config.segment_id);
        let response = headers(ctx, Request::post(&url))
            .header("x-restli-method", "BATCH_CREATE")
            .json(&serde_json::json!({ "elements": elements }))
            .send()?;
        if response.status == 404 {
            // Not the records' fault: either the segment id is wrong (fail the call) or the
            // segment is too new to take users yet (retry the batch).
            read_segment(ctx)?;
            let retry = RecordResult::Retry(Retry {
                reason: format!(
                    "DMP segment {} exists but its users endpoint answered 404 ({}); a new segment takes users after a minute or two",
                    ctx.config.segment_id,
                    outcome::api_message(&response.body)
                ),
                after_ms: Some(FRESH_SEGMENT_WAIT_MS),
            });
            for i in sent {
                results[i] = retry.clone();
            }
            return Ok(results);
        }
        let per_element = element_results(&response, elements.len(), &ctx.config.linkedin_version)?;
        let failed = per_element
            .iter()
            .filter(|r| !matches!(r, RecordResult::Ok))
            .count();
        switchyard_sdk::debug!(
            "dmpSegments users {action_name}: {} elements, HTTP {}, {failed} not ok",
            elements.len(),
            response.status
        );
        for (i, result) in sent.into_iter().zip(per_element) {
            results[i] = result;
        }
        Ok(results)
    }
}

/// `GET /rest/dmpSegments/{id}`: Ok when the segment exists; a wrong token, an inactive
/// version or an unknown segment is the call's error.
fn read_segment(ctx: &Context<Config>) -> Result<(), CallError> {
    let url = format!("{BASE}/dmpSegments/{}", ctx.config.segment_id);
    let response = headers(ctx, Request::get(&url)).send()?;
    segment_answer(&response, &ctx.config)
}

/// What a segment read means for the call.
pub fn segment_answer(response: &Response, config: &Config) -> Result<(), CallError> {
    match response.status {
        200..=299 => Ok(()),
        404 => Err(CallError::InvalidConfig(format!(
            "DMP segment {} not found: {} (check segment_id and that the token's member can see the ad account)",
            config.segment_id,
            outcome::api_message(&response.body)
        ))),
        426 => Err(version_error(response, &config.linkedin_version)),
        429 => Err(CallError::Transient(throttled(response))),
        _ => outcome::call_result(response),
    }
}

fn version_error(response: &Response, version: &str) -> CallError {
    CallError::InvalidConfig(format!(
        "LinkedIn no longer serves LinkedIn-Version {version} (HTTP 426: {}); set linkedin_version to a current YYYYMM such as {DEFAULT_VERSION}",
        outcome::api_message(&response.body)
    ))
}

fn headers(ctx: &Context<Config>, request: Request) -> Request {
    request
        .bearer_auth(&ctx.secret_placeholder(SECRET))
        .header("linkedin-version", &ctx.config.linkedin_version)
        .header("x-restli-protocol-version", PROTOCOL_VERSION)
}

/// One BATCH_CREATE element; the error names the fields, never their values.
pub fn element(hash: EmailHash, action: &str, fields: &str) -> Result<serde_json::Value, String> {
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
    let mut user_ids = Vec::new();
    let mut problems = Vec::new();
    if let Some(raw) = text("email") {
        match email_id(hash, raw) {
            Some((id_type, value)) => {
                user_ids.push(serde_json::json!({"idType": id_type, "idValue": value}))
            }
            None => problems.push("`email` is not a valid email address"),
        }
    }
    if let Some(raw) = text("google_advertising_id") {
        user_ids
            .push(serde_json::json!({"idType": "GOOGLE_AID", "idValue": raw.to_ascii_lowercase()}));
    }
    let mut element = serde_json::json!({ "action": action, "userIds": user_ids });
    for (field, name) in [
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("title", "title"),
        ("company", "company"),
    ] {
        if let Some(v) = text(field) {
            element[name] = serde_json::Value::String(v.to_string());
        }
    }
    if let Some(c) = text("country") {
        if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
            element["country"] = serde_json::Value::String(c.to_ascii_uppercase());
        } else {
            problems.push("`country` must be an ISO 3166-1 alpha-2 code");
        }
    }
    let has_names = text("first_name").is_some() && text("last_name").is_some();
    if user_ids.is_empty() && !has_names {
        return Err(if problems.is_empty() {
            "no way to match this user: needs `email`, `google_advertising_id`, or both `first_name` and `last_name`".to_string()
        } else {
            problems.join("; ")
        });
    }
    Ok(element)
}

/// `(idType, idValue)` of an email: pre-hashed values are recognised by length.
pub fn email_id(hash: EmailHash, raw: &str) -> Option<(&'static str, String)> {
    let is_hex = raw.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex && raw.len() == 64 {
        return Some(("SHA256_EMAIL", raw.to_ascii_lowercase()));
    }
    if is_hex && raw.len() == 128 {
        return Some(("SHA512_EMAIL", raw.to_ascii_lowercase()));
    }
    let email = pii::normalize_email(raw)?;
    Some(match hash {
        EmailHash::Sha256 => ("SHA256_EMAIL", pii::sha256_hex(&email)),
        EmailHash::Sha512 => (
            "SHA512_EMAIL",
            Sha512::digest(email.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ),
    })
}

/// Per-element results of a BATCH_CREATE answer, in order. (`deliver` handles a 404 before this:
/// it is about the segment, never the records.)
pub fn element_results(
    response: &Response,
    sent: usize,
    version: &str,
) -> Result<Vec<RecordResult>, CallError> {
    match response.status {
        401 | 403 => return outcome::call_result(response).map(|_| Vec::new()),
        429 => return Ok(vec![RecordResult::Retry(throttled(response)); sent]),
        426 => return Err(version_error(response, version)),
        404 => {
            return Ok(vec![
                RecordResult::Retry(Retry {
                    reason: format!("HTTP 404: {}", outcome::api_message(&response.body)),
                    after_ms: Some(FRESH_SEGMENT_WAIT_MS),
                });
                sent
            ])
        }
        s if !(200..300).contains(&s) => return Ok(vec![outcome::record_result(response); sent]),
        _ => {}
    }
    let body: serde_json::Value = response.json()?;
    let statuses = body["elements"].as_array().cloned().unwrap_or_default();
    Ok((0..sent)
        .map(|i| match statuses.get(i) {
            None => RecordResult::Retry(Retry {
                reason: format!(
                    "LinkedIn returned {} statuses for {sent} elements; this one has none",
                    statuses.len()
                ),
                after_ms: None,
            }),
            Some(e) => {
                let status = e["status"].as_u64().unwrap_or(0) as u16;
                let message = e["error"]["message"]
                    .as_str()
                    .or_else(|| e["message"].as_str())
                    .unwrap_or("(no message)");
                match status {
                    200..=299 => RecordResult::Ok,
                    s if outcome::is_retryable_status(s) => RecordResult::Retry(Retry {
                        reason: format!("element status {s}: {message}"),
                        after_ms: (s == 429).then_some(60_000),
                    }),
                    0 => RecordResult::Retry(Retry {
                        reason: "element without a status".to_string(),
                        after_ms: None,
                    }),
                    s => RecordResult::Rejected(format!("status {s}: {message}")),
                }
            }
        })
        .collect())
}

/// A 429: LinkedIn's limit is per minute and it sends no Retry-After, so wait a minute unless
/// the response says otherwise.
fn throttled(response: &Response) -> Retry {
    let mut retry = outcome::retry(response);
    if retry.after_ms.is_none() {
        retry.after_ms = Some(60_000);
    }
    retry
}

switchyard_sdk::export_destination!(LinkedIn);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_hashes() {
        // Same SHA-256 rule as Meta's published vector.
        assert_eq!(
            email_id(EmailHash::Sha256, "  Test@Example.COM ").unwrap(),
            (
                "SHA256_EMAIL",
                "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b".to_string()
            )
        );
        // SHA-512 of "test@example.com" (FIPS 180-4 SHA-512, computed with coreutils sha512sum).
        let (t, v) = email_id(EmailHash::Sha512, "Test@Example.com").unwrap();
        assert_eq!(t, "SHA512_EMAIL");
        assert_eq!(
            v,
            "3af3174fa10ef8bd28ce7620c25fe18d1d5f93b9b3c4db3413402a0ec66369eab560c8cc0cefed323a2213ddec7c8a2c9ab912761215ada3e3c8c447cb318e07"
        );
        let pre = "973DFE463EC85785F5F95AF5BA3906EEDB2D931C24E69824A89EA65DBA4E813B";
        assert_eq!(email_id(EmailHash::Sha512, pre).unwrap().0, "SHA256_EMAIL");
        assert_eq!(email_id(EmailHash::Sha256, "nope"), None);
    }

    #[test]
    fn elements() {
        let e = element(
            EmailHash::Sha256,
            "ADD",
            r#"{"email":"test@example.com","google_advertising_id":"38400000-8CF0-11BD-B23E-10B96E40000D","first_name":"Jane","last_name":"Doe","country":"us","company":"Acme"}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            json!({"action": "ADD", "userIds": [
                {"idType": "SHA256_EMAIL", "idValue": "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"},
                {"idType": "GOOGLE_AID", "idValue": "38400000-8cf0-11bd-b23e-10b96e40000d"}],
                "firstName": "Jane", "lastName": "Doe", "company": "Acme", "country": "US"})
        );
        let e = element(
            EmailHash::Sha256,
            "REMOVE",
            r#"{"first_name":"Jane","last_name":"Doe"}"#,
        )
        .unwrap();
        assert_eq!(e["userIds"], json!([]));
        let err = element(
            EmailHash::Sha256,
            "ADD",
            r#"{"email":"jane-at-x","first_name":"Jane"}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("`email` is not a valid") && !err.contains("jane-at-x"),
            "{err}"
        );
        let err = element(EmailHash::Sha256, "ADD", r#"{"title":"CTO"}"#).unwrap_err();
        assert!(err.contains("needs `email`"), "{err}");
    }

    fn resp(status: u16, body: serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn per_element_statuses() {
        let r = element_results(
            &resp(200, json!({"elements": [
                {"status": 201},
                {"status": 400, "error": {"message": "Invalid idValue for SHA256_EMAIL", "status": 400}},
                {"status": 503}
            ]})),
            4,
            "202607",
        )
        .unwrap();
        assert!(matches!(r[0], RecordResult::Ok));
        match &r[1] {
            RecordResult::Rejected(m) => {
                assert_eq!(m, "status 400: Invalid idValue for SHA256_EMAIL")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r[2], RecordResult::Retry(_)));
        assert!(matches!(r[3], RecordResult::Retry(_)), "missing status");
        let r = element_results(
            &resp(429, json!({"status": 429, "message": "throttled"})),
            2,
            "202607",
        )
        .unwrap();
        match &r[1] {
            RecordResult::Retry(x) => assert_eq!(x.after_ms, Some(60_000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            element_results(&resp(401, json!({"status": 401, "code": "INVALID_ACCESS_TOKEN", "message": "Invalid access token"})), 1, "202607"),
            Err(CallError::Unauthorized(m)) if m.contains("Invalid access token")
        ));
        match &element_results(
            &resp(400, json!({"status": 400, "message": "bad"})),
            1,
            "202607",
        )
        .unwrap()[0]
        {
            RecordResult::Rejected(m) => assert_eq!(m, "HTTP 400: bad"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            element_results(
                &resp(
                    426,
                    json!({"status": 426, "code": "NONEXISTENT_VERSION", "message": "Requested version 202509 is not active"})
                ),
                1,
                "202509"
            ),
            Err(CallError::InvalidConfig(m)) if m.contains("202509") && m.contains(DEFAULT_VERSION)
        ));
    }

    /// L2: a 404 is about the segment (wrong id, or created moments ago), never the records':
    /// it must not come back as a rejection that dead-letters the whole batch.
    #[test]
    fn a_404_on_users_is_never_a_rejection() {
        let r = element_results(
            &resp(404, json!({"status": 404, "code": "NOT_FOUND", "message": "DmpSegment 1 does not exist"})),
            3,
            DEFAULT_VERSION,
        )
        .unwrap();
        assert!(
            r.iter().all(|x| matches!(
                x,
                RecordResult::Retry(Retry {
                    after_ms: Some(60_000),
                    ..
                })
            )),
            "{r:?}"
        );
        let config = Config {
            segment_id: "999".into(),
            linkedin_version: DEFAULT_VERSION.into(),
            email_hash: EmailHash::Sha256,
        };
        assert!(matches!(
            segment_answer(&resp(404, json!({"status": 404, "message": "DmpSegment 999 does not exist"})), &config),
            Err(CallError::InvalidConfig(m)) if m.contains("DMP segment 999 not found")
        ));
        assert!(segment_answer(&resp(200, json!({"id": 999})), &config).is_ok());
    }

    /// L1: the default version must have more than 60 days left before LinkedIn's sunset (it
    /// failed with the old default 202509, sunset 2026-09-15).
    #[test]
    fn default_version_is_not_near_its_sunset() {
        switchyard_sdk::sunset::assert_fresh(
            DEFAULT_VERSION,
            SUNSETS,
            switchyard_sdk::sunset::MARGIN_DAYS,
        );
        assert_eq!(default_version(), DEFAULT_VERSION);
    }

    /// L3: the default rate stays well under LinkedIn's 600 requests per minute per member.
    #[test]
    #[allow(clippy::assertions_on_constants)]
    fn default_rate_leaves_room_under_the_per_member_ceiling() {
        assert!(
            DEFAULT_RATE_PER_SECOND * 60.0 <= 600.0 / 2.0,
            "{DEFAULT_RATE_PER_SECOND}/s"
        );
    }
}
