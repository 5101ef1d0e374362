//! HubSpot source: reads contacts and companies from the CRM v3 API with a private app token.
//!
//! Streams (both incremental):
//!
//! - `contacts`: record fields `id`, every property asked for in `contact_properties` (default
//!   `email`, `firstname`, `lastname`, `phone`, `company`, `lifecyclestage`; HubSpot sends
//!   property values as strings, and `null` when unset), `lastmodifieddate`, `createdate`,
//!   `created_at`, `updated_at`.
//! - `companies`: group/account records: `id`, `group_id` (= the company id), the
//!   `company_properties` (default `name`, `domain`, `industry`, `city`, `country`,
//!   `numberofemployees`), `hs_lastmodifieddate`, `createdate`, `created_at`, `updated_at`.
//!
//! Without a watermark a run lists everything: `GET /crm/v3/objects/{type}?limit=100&after=..
//! &properties=..&archived=false`, following `paging.next.after`. It leaves the watermark
//! min(newest last-modified time read, run start − 5 min), so a record changed while the list ran
//! is read again next time. With a watermark a run searches `POST /crm/v3/objects/{type}/search`
//! for `lastmodifieddate` (companies: `hs_lastmodifieddate`) GT the watermark, sorted ascending,
//! and leaves the newest time read as the next watermark. Search paging stops at 10,000 results,
//! so a run that reaches it restarts the search from the newest time read (GTE).
//!
//! Rate limits: on 429 the wait is `Retry-After`, else `X-HubSpot-RateLimit-Interval-Milliseconds`,
//! else by the error's `policyName` (SECONDLY 1 s, DAILY until midnight UTC, otherwise 10 s). After
//! a successful call that leaves `X-HubSpot-RateLimit-Remaining` (or `-Secondly-Remaining`) at 0
//! the plugin pauses for that window before returning.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use switchyard_sdk::{
    cursor, debug,
    http::{Request, Response},
    outcome, schemars, time, CallError, Capabilities, Context, Page, Plugin, Retry, Source,
    SourceRecord, StreamInfo,
};

const API: &str = "https://api.hubapi.com";
/// Largest page of the list endpoint (search allows 200; both use the same page size).
const MAX_PAGE: u32 = 100;
/// Search results HubSpot pages through before refusing `after`.
const SEARCH_CAP: u64 = 10_000;
/// Safety margin for changes during a full list, in milliseconds.
const LIST_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Settings of one `[sources.NAME]` block using the HubSpot plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Contact properties to read (internal names); default email, firstname, lastname, phone,
    /// company, lifecyclestage.
    #[serde(default = "default_contact_properties")]
    pub contact_properties: Vec<String>,
    /// Company properties to read; default name, domain, industry, city, country,
    /// numberofemployees.
    #[serde(default = "default_company_properties")]
    pub company_properties: Vec<String>,
    /// Objects per page, 1-100; default 100.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 100))]
    pub page_size: u32,
}

fn default_contact_properties() -> Vec<String> {
    [
        "email",
        "firstname",
        "lastname",
        "phone",
        "company",
        "lifecyclestage",
    ]
    .map(String::from)
    .to_vec()
}

fn default_company_properties() -> Vec<String> {
    [
        "name",
        "domain",
        "industry",
        "city",
        "country",
        "numberofemployees",
    ]
    .map(String::from)
    .to_vec()
}

fn default_page_size() -> u32 {
    MAX_PAGE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Contacts,
    Companies,
}

impl Stream {
    fn parse(name: &str) -> Result<Stream, CallError> {
        match name {
            "contacts" => Ok(Stream::Contacts),
            "companies" => Ok(Stream::Companies),
            other => Err(CallError::InvalidConfig(format!(
                "unknown stream `{other}`; the HubSpot source has `contacts` and `companies`"
            ))),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Stream::Contacts => "contacts",
            Stream::Companies => "companies",
        }
    }
    /// The property holding the last-modified time.
    pub fn modified_property(self) -> &'static str {
        match self {
            Stream::Contacts => "lastmodifieddate",
            Stream::Companies => "hs_lastmodifieddate",
        }
    }
}

/// Where a stream's read stands. Serialised as the page cursor.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// Watermark (Unix ms): records modified after it are searched for. None: list everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Search with GTE rather than GT (a restart at the 10,000-result cap).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inclusive: bool,
    /// HubSpot's `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Newest last-modified time read in this run (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// When a full list run began (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
}

impl Cursor {
    /// The cursor after a page: the next page's, or the next run's once done.
    pub fn advance(mut self, next_after: Option<String>, now_ms: i64) -> (Cursor, bool) {
        let searching = self.since.is_some();
        match next_after {
            Some(after) if searching && after.parse::<u64>().is_ok_and(|n| n >= SEARCH_CAP) => {
                // HubSpot refuses to page past 10,000 search results: search again from the newest
                // time read, inclusively, so a record sharing that millisecond is not lost.
                let since = self.max.or(self.since);
                (
                    Cursor {
                        since,
                        inclusive: true,
                        max: self.max,
                        ..Cursor::default()
                    },
                    false,
                )
            }
            Some(after) => {
                self.after = Some(after);
                (self, false)
            }
            None if searching => (
                Cursor {
                    since: self.max.max(self.since),
                    ..Cursor::default()
                },
                true,
            ),
            None => {
                let started = self.started.unwrap_or(now_ms);
                let since = self.max.map(|m| m.min(started - LIST_MARGIN_MS));
                (
                    Cursor {
                        since,
                        ..Cursor::default()
                    },
                    true,
                )
            }
        }
    }
}

struct HubSpot;

impl Plugin for HubSpot {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("api.hubapi.com")
            .secret(
                "access_token",
                "Private app access token (pat-...) with crm.objects.contacts.read and crm.objects.companies.read",
                true,
            )
            .max_batch_size(MAX_PAGE)
            // The search endpoint allows about 4-5 requests/s per account; lists 100+ per 10 s.
            .default_rate_per_second(4.0)
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let response = Request::get(&format!(
            "{API}/crm/v3/objects/contacts?limit=1&archived=false"
        ))
        .bearer_auth(&ctx.secret_placeholder("access_token"))
        .send()?;
        check_response(&response)
    }
}

impl Source for HubSpot {
    fn streams(_ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        Ok(vec![
            StreamInfo {
                name: "contacts".into(),
                description: "HubSpot contacts with the configured properties".into(),
                incremental: true,
            },
            StreamInfo {
                name: "companies".into(),
                description: "HubSpot companies as group/account records".into(),
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
        let mut state: Cursor = cursor::parse(cursor.as_deref(), "HubSpot")?;
        let properties = properties(ctx, stream);
        let limit = ctx.config.page_size.clamp(1, MAX_PAGE);
        let request = match state.since {
            None => {
                if state.started.is_none() {
                    state.started = Some(time::now_unix_ms());
                }
                let mut url = format!(
                    "{API}/crm/v3/objects/{}?limit={limit}&archived=false&properties={}",
                    stream.name(),
                    encode(&properties.join(","))
                );
                if let Some(after) = &state.after {
                    let _ = write!(url, "&after={}", encode(after));
                }
                Request::get(&url)
            }
            Some(since) => {
                let mut body = json!({
                    "filterGroups": [{"filters": [{
                        "propertyName": stream.modified_property(),
                        "operator": if state.inclusive { "GTE" } else { "GT" },
                        "value": since.to_string(),
                    }]}],
                    "sorts": [{"propertyName": stream.modified_property(), "direction": "ASCENDING"}],
                    "properties": properties,
                    "limit": limit,
                });
                if let Some(after) = &state.after {
                    body["after"] = json!(after);
                }
                Request::post(&format!("{API}/crm/v3/objects/{}/search", stream.name())).json(&body)
            }
        };
        let response = request
            .bearer_auth(&ctx.secret_placeholder("access_token"))
            .send()?;
        check_response(&response)?;
        let body: Value = response.json()?;
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| CallError::Failed("HubSpot's answer has no `results` list".into()))?;
        let mut records = Vec::with_capacity(results.len());
        for object in results {
            let (record, modified) =
                object_record(stream, object, &properties).map_err(CallError::Failed)?;
            if let Some(m) = modified {
                state.max = Some(state.max.map_or(m, |x| x.max(m)));
            }
            records.push(record);
        }
        let next_after = body
            .pointer("/paging/next/after")
            .and_then(|a| match a {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|_| !results.is_empty());
        debug!(
            "hubspot {} ({}): {} records, more: {}",
            stream.name(),
            if state.since.is_some() {
                "search"
            } else {
                "list"
            },
            records.len(),
            next_after.is_some()
        );
        back_off(&response);
        let (next, done) = state.advance(next_after, time::now_unix_ms());
        Ok(Page {
            records,
            cursor: Some(cursor::text(&next)),
            done,
        })
    }
}

/// The properties to ask for: the configured ones plus the modification time.
fn properties(ctx: &Context<Config>, stream: Stream) -> Vec<String> {
    let configured = match stream {
        Stream::Contacts => &ctx.config.contact_properties,
        Stream::Companies => &ctx.config.company_properties,
    };
    let mut props: Vec<String> = configured
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    for always in [stream.modified_property(), "createdate"] {
        if !props.iter().any(|p| p == always) {
            props.push(always.to_string());
        }
    }
    props
}

/// A CRM object as a record, with its last-modified time (Unix ms) when known.
pub fn object_record(
    stream: Stream,
    object: &Value,
    properties: &[String],
) -> Result<(SourceRecord, Option<i64>), String> {
    let id = match object.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(format!("a HubSpot {} result has no `id`", stream.name())),
    };
    let props = object.get("properties").cloned().unwrap_or(Value::Null);
    let mut data = Map::new();
    data.insert("id".into(), json!(id));
    if stream == Stream::Companies {
        data.insert("group_id".into(), json!(id));
    }
    for p in properties {
        data.insert(p.clone(), props.get(p).cloned().unwrap_or(Value::Null));
    }
    data.insert(
        "created_at".into(),
        object.get("createdAt").cloned().unwrap_or(Value::Null),
    );
    data.insert(
        "updated_at".into(),
        object.get("updatedAt").cloned().unwrap_or(Value::Null),
    );
    let modified_text = props
        .get(stream.modified_property())
        .and_then(Value::as_str)
        .or_else(|| object.get("updatedAt").and_then(Value::as_str));
    let modified = modified_text.and_then(parse_time_ms);
    Ok((
        SourceRecord {
            id,
            data: Value::Object(data).to_string(),
            updated_at: object
                .get("updatedAt")
                .and_then(Value::as_str)
                .or(modified_text)
                .map(str::to_string),
            events: vec![],
        },
        modified,
    ))
}

/// Maps a HubSpot response to a call error with HubSpot's own message.
pub fn check_response(response: &Response) -> Result<(), CallError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let category = body
        .get("category")
        .or_else(|| body.get("errorType"))
        .and_then(Value::as_str);
    let text = match category {
        Some(c) => format!("{c}: {}", outcome::api_message(&response.body)),
        None => outcome::api_message(&response.body),
    };
    let message = format!("HTTP {status}: {text}");
    Err(match status {
        401 | 403 => CallError::Unauthorized(message),
        s if outcome::is_retryable_status(s) => {
            let after = outcome::retry_after_ms(response, time::now_unix()).or_else(|| {
                (s == 429).then(|| {
                    rate_limit_wait_ms(
                        response,
                        body.get("policyName").and_then(Value::as_str),
                        time::now_unix_ms(),
                    )
                })
            });
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

/// How long a 429 without Retry-After asks to wait.
pub fn rate_limit_wait_ms(response: &Response, policy: Option<&str>, now_ms: i64) -> u64 {
    match policy {
        Some("DAILY") => {
            let day = 86_400_000;
            (day - now_ms.rem_euclid(day)) as u64
        }
        Some("SECONDLY") => 1000,
        _ => response
            .header("x-hubspot-ratelimit-interval-milliseconds")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(10_000),
    }
}

/// After a successful call that used up a window, wait for the window before the next call.
pub fn back_off_ms(response: &Response) -> Option<u64> {
    let num = |h: &str| {
        response
            .header(h)
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if num("x-hubspot-ratelimit-remaining") == Some(0) {
        return Some(
            num("x-hubspot-ratelimit-interval-milliseconds")
                .unwrap_or(10_000)
                .clamp(0, 10_000) as u64,
        );
    }
    if num("x-hubspot-ratelimit-secondly-remaining") == Some(0) {
        return Some(1000);
    }
    None
}

fn back_off(response: &Response) {
    if let Some(ms) = back_off_ms(response) {
        debug!("hubspot rate-limit window used up, pausing {ms} ms");
        #[cfg(target_arch = "wasm32")]
        switchyard_sdk::bindings::wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000)
            .block();
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// HubSpot times: RFC 3339 (`2019-12-07T16:50:06.678Z`) or Unix milliseconds as text.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    time::parse_ms(s)
}

switchyard_sdk::export_source!(HubSpot);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time_ms("2019-12-07T16:50:06.678Z"),
            Some(1_575_737_406_678)
        );
        assert_eq!(
            parse_time_ms("2019-12-07T16:50:06Z"),
            Some(1_575_737_406_000)
        );
        assert_eq!(
            parse_time_ms("2019-12-07T16:50:06.6Z"),
            Some(1_575_737_406_600)
        );
        assert_eq!(parse_time_ms("1575737406678"), Some(1_575_737_406_678));
        assert_eq!(parse_time_ms("soon"), None);
    }

    #[test]
    fn list_run_leaves_a_watermark_guarded_by_its_start() {
        let now = 1_700_000_000_000;
        let c = Cursor {
            max: Some(1_600_000_000_000),
            started: Some(now),
            ..Cursor::default()
        };
        let (next, done) = c.clone().advance(Some("abc".into()), now);
        assert!(!done);
        assert_eq!(next.after.as_deref(), Some("abc"));
        let (end, done) = next.advance(None, now + 1000);
        assert!(done);
        assert_eq!(
            end,
            Cursor {
                since: Some(1_600_000_000_000),
                ..Cursor::default()
            }
        );
        // A record modified during the run: the watermark falls back to the run's start − 5 min.
        let c = Cursor {
            max: Some(now + 60_000),
            started: Some(now),
            ..Cursor::default()
        };
        assert_eq!(
            c.advance(None, now + 120_000).0.since,
            Some(now - LIST_MARGIN_MS)
        );
        // An empty account keeps listing.
        assert_eq!(Cursor::default().advance(None, now).0.since, None);
    }

    #[test]
    fn search_runs_advance_and_restart_at_the_cap() {
        let c = Cursor {
            since: Some(100),
            max: Some(500),
            ..Cursor::default()
        };
        let (next, done) = c.clone().advance(Some("200".into()), 0);
        assert!(!done);
        assert_eq!(next.after.as_deref(), Some("200"));
        let (restart, done) = c.clone().advance(Some("10000".into()), 0);
        assert!(!done);
        assert_eq!(
            restart,
            Cursor {
                since: Some(500),
                inclusive: true,
                max: Some(500),
                ..Cursor::default()
            }
        );
        let (end, done) = c.advance(None, 0);
        assert!(done);
        assert_eq!(
            end,
            Cursor {
                since: Some(500),
                ..Cursor::default()
            }
        );
        // Nothing found: the watermark stays.
        let (end, _) = Cursor {
            since: Some(100),
            ..Cursor::default()
        }
        .advance(None, 0);
        assert_eq!(end.since, Some(100));
        assert!(cursor::parse::<Cursor>(Some("{\"bogus\":1}"), "HubSpot").is_err());
    }

    #[test]
    fn records_carry_properties_and_modification_time() {
        let o = json!({"id": "512", "properties": {"email": "a@x.com", "firstname": "A", "hs_object_id": "512",
            "createdate": "2019-10-30T03:30:17.883Z", "lastmodifieddate": "2019-12-07T16:50:06.678Z"},
            "createdAt": "2019-10-30T03:30:17.883Z", "updatedAt": "2019-12-07T16:50:06.678Z", "archived": false});
        let props = vec![
            "email".to_string(),
            "firstname".into(),
            "phone".into(),
            "lastmodifieddate".into(),
        ];
        let (r, m) = object_record(Stream::Contacts, &o, &props).unwrap();
        assert_eq!(r.id, "512");
        assert_eq!(m, Some(1_575_737_406_678));
        let data: Value = serde_json::from_str(&r.data).unwrap();
        assert_eq!(data["email"], "a@x.com");
        assert_eq!(data["phone"], Value::Null);
        assert_eq!(data["updated_at"], "2019-12-07T16:50:06.678Z");
        let (c, _) = object_record(
            Stream::Companies,
            &json!({"id": "7", "properties": {"name": "Acme"}}),
            &["name".into()],
        )
        .unwrap();
        let data: Value = serde_json::from_str(&c.data).unwrap();
        assert_eq!(
            (data["group_id"].as_str(), data["name"].as_str()),
            (Some("7"), Some("Acme"))
        );
    }

    #[test]
    fn rate_limits() {
        let body = r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
        match check_response(&Response::new(429, &[("retry-after", "3")], body)) {
            Err(CallError::Transient(r)) => {
                assert_eq!(r.after_ms, Some(3000));
                assert!(
                    r.reason.contains("RATE_LIMIT: You have reached"),
                    "{}",
                    r.reason
                );
            }
            other => panic!("{other:?}"),
        }
        match check_response(&Response::new(
            429,
            &[("x-hubspot-ratelimit-interval-milliseconds", "10000")],
            body,
        )) {
            Err(CallError::Transient(r)) => assert_eq!(r.after_ms, Some(10_000)),
            other => panic!("{other:?}"),
        }
        let secondly = body.replace("TEN_SECONDLY_ROLLING", "SECONDLY");
        match check_response(&Response::new(429, &[], &secondly)) {
            Err(CallError::Transient(r)) => assert_eq!(r.after_ms, Some(1000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rate_limit_wait_ms(
                &Response::new(429, &[], ""),
                Some("DAILY"),
                86_400_000 * 3 + 1000
            ),
            86_399_000
        );
        assert!(matches!(
            check_response(&Response::new(401, &[], r#"{"status":"error","message":"Authentication credentials not found.","category":"INVALID_AUTHENTICATION"}"#)),
            Err(CallError::Unauthorized(m)) if m == "HTTP 401: INVALID_AUTHENTICATION: Authentication credentials not found."
        ));
        assert_eq!(
            back_off_ms(&Response::new(
                200,
                &[
                    ("x-hubspot-ratelimit-remaining", "0"),
                    ("x-hubspot-ratelimit-interval-milliseconds", "10000")
                ],
                ""
            )),
            Some(10_000)
        );
        assert_eq!(
            back_off_ms(&Response::new(
                200,
                &[("x-hubspot-ratelimit-remaining", "5")],
                ""
            )),
            None
        );
        assert_eq!(
            back_off_ms(&Response::new(
                200,
                &[("x-hubspot-ratelimit-secondly-remaining", "0")],
                ""
            )),
            Some(1000)
        );
    }
}
