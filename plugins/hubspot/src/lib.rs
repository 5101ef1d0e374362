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
//! for `lastmodifieddate` (companies: `hs_lastmodifieddate`) GT the watermark minus the lookback
//! (`lookback_minutes`, default 10: HubSpot's search index is eventually consistent, so a record
//! can appear in it after newer ones were read), sorted ascending, and leaves the newest time
//! read as the next watermark. Records re-read inside the lookback are not emitted again: the
//! cursor remembers the (id, last-modified) pairs read within the lookback of the watermark
//! (at most [`SEEN_CAP`]) and skips a record whose pair it holds.
//!
//! Search paging stops at 10,000 results (HubSpot answers 400 past it). A run that reaches it
//! has read every record older than the newest time T of that window (the results are sorted by
//! time), so it reads the records modified exactly at T by id instead — `lastmodifieddate` GTE T
//! and LTE T, `hs_object_id` GT the last id read, sorted by `hs_object_id` — restarting that
//! query past the last id whenever it reaches the cap again, then goes on with GT T. Every
//! restart moves past what it read, so ≥ 10,000 records sharing one millisecond (HubSpot's
//! month-end batch updates) end instead of looping: the fix of Airbyte's source-hubspot
//! (`airbytehq/airbyte` issue #43317, PR #44899: `hs_object_id` filter and sort within the
//! timestamp; Estuary's `estuary/connectors` issue #2100 does the same).
//!
//! Rate limits: on 429 the wait is `Retry-After`, else `X-HubSpot-RateLimit-Interval-Milliseconds`,
//! else by the error's `policyName` (SECONDLY 1 s, DAILY until midnight UTC, otherwise 10 s). After
//! a successful call that leaves `X-HubSpot-RateLimit-Remaining` (or `-Secondly-Remaining`) at 0
//! the plugin pauses for that window before returning.

use std::collections::BTreeMap;
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
/// Most (id, last-modified) pairs the cursor remembers for the lookback's dedup; beyond it the
/// oldest are dropped, and a record re-read in the lookback is emitted again (which the hub
/// applies idempotently: same values, same update time).
pub const SEEN_CAP: usize = 1000;
/// The id property HubSpot sorts and filters on when one timestamp holds more than the cap.
const ID_PROPERTY: &str = "hs_object_id";

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
    /// Minutes before the watermark each incremental run searches again, for records HubSpot's
    /// search index shows late; 0-1440, default 10. Records already read are not emitted twice.
    #[serde(default = "default_lookback")]
    #[schemars(range(min = 0, max = 1440))]
    pub lookback_minutes: u32,
}

fn default_lookback() -> u32 {
    10
}

impl Config {
    fn lookback_ms(&self) -> i64 {
        i64::from(self.lookback_minutes.min(1440)) * 60_000
    }
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
    /// Watermark (Unix ms): the newest last-modified time read by earlier runs. None: list
    /// everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Cursors of earlier versions: search with GTE `since` (a restart at the cap).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inclusive: bool,
    /// This run's search reads records modified after this (Unix ms): `since` minus the
    /// lookback on the run's first page, then the time a split by id finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Reading the records of one timestamp by id (past the 10,000-result cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie: Option<Tie>,
    /// HubSpot's `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Newest last-modified time read in this run (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// When a full list run began (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    /// Id → last-modified time (Unix ms) of the records read within the lookback of the
    /// watermark: a record that comes back with the same time is not emitted again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, i64>,
}

/// A search of the records modified exactly `at`, by ascending `hs_object_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tie {
    /// The shared last-modified time (Unix ms).
    pub at: i64,
    /// Only ids above this one (the last id read before the latest restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<u64>,
    /// The largest id read in this split so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
}

impl Cursor {
    /// Sets up a run's search on its first page: from the watermark minus the lookback.
    pub fn begin(&mut self, lookback_ms: i64) {
        let Some(since) = self.since else { return };
        if self.from.is_some() || self.tie.is_some() {
            return;
        }
        // A cursor of an earlier version meant GTE (GT since − 1).
        let base = if std::mem::take(&mut self.inclusive) {
            since - 1
        } else {
            since
        };
        // Mid-run cursors of an earlier version continue the query their `after` belongs to.
        self.from = Some(if self.after.is_some() {
            base
        } else {
            base - lookback_ms
        });
    }

    /// Whether a record read now is new: not one an earlier run read with this very time.
    pub fn is_new(&self, id: &str, modified: Option<i64>) -> bool {
        let Some(m) = modified else { return true };
        !(self.since.is_some_and(|s| m <= s) && self.seen.get(id) == Some(&m))
    }

    /// Counts a record this page read.
    pub fn observe(&mut self, id: &str, modified: Option<i64>) {
        let Some(m) = modified else { return };
        self.max = Some(self.max.map_or(m, |x| x.max(m)));
        if let (Some(tie), Ok(n)) = (self.tie.as_mut(), id.parse::<u64>()) {
            tie.last = Some(tie.last.map_or(n, |l| l.max(n)));
        }
        self.seen.insert(id.to_string(), m);
    }

    /// Drops remembered pairs older than the lookback of `watermark`, and the oldest past the cap.
    fn prune(&mut self, watermark: Option<i64>, lookback_ms: i64) {
        let Some(w) = watermark else {
            self.seen.clear();
            return;
        };
        let horizon = w - lookback_ms;
        self.seen.retain(|_, m| *m > horizon);
        if self.seen.len() > SEEN_CAP {
            let mut times: Vec<i64> = self.seen.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() - SEEN_CAP];
            self.seen.retain(|_, m| *m >= cut);
            // Ties at the cut may leave a few more than the cap; drop them by id order.
            while self.seen.len() > SEEN_CAP {
                let Some(key) = self
                    .seen
                    .iter()
                    .find(|(_, m)| **m == cut)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                self.seen.remove(&key);
            }
        }
    }

    /// The cursor after a page: the next page's, or the next run's once done.
    pub fn advance(
        mut self,
        next_after: Option<String>,
        now_ms: i64,
        lookback_ms: i64,
    ) -> Result<(Cursor, bool), CallError> {
        let searching = self.since.is_some();
        let newest = self.max.max(self.since);
        self.prune(newest, lookback_ms);
        match next_after {
            Some(after) if searching && after.parse::<u64>().is_ok_and(|n| n >= SEARCH_CAP) => {
                // HubSpot refuses to page past 10,000 search results. Everything older than
                // the newest time read is read; split the records of that time by id.
                self.tie = Some(match self.tie.take() {
                    Some(tie) => {
                        let last = tie.last.ok_or_else(|| {
                            CallError::Failed(
                                "HubSpot returned 10,000 results of one timestamp without numeric ids; cannot page past them".into(),
                            )
                        })?;
                        Tie {
                            at: tie.at,
                            above: Some(last),
                            last: Some(last),
                        }
                    }
                    None => Tie {
                        at: self.max.ok_or_else(|| {
                            CallError::Failed(
                                "HubSpot returned 10,000 search results without last-modified times; cannot page past them".into(),
                            )
                        })?,
                        above: None,
                        last: None,
                    },
                });
                self.after = None;
                Ok((self, false))
            }
            Some(after) => {
                self.after = Some(after);
                Ok((self, false))
            }
            None if self.tie.is_some() => {
                // The timestamp is read: go on after it.
                self.from = self.tie.take().map(|t| t.at);
                self.after = None;
                Ok((self, false))
            }
            None if searching => Ok((
                Cursor {
                    since: newest,
                    seen: self.seen,
                    ..Cursor::default()
                },
                true,
            )),
            None => {
                let started = self.started.unwrap_or(now_ms);
                let since = self.max.map(|m| m.min(started - LIST_MARGIN_MS));
                let mut next = Cursor {
                    since,
                    seen: self.seen,
                    ..Cursor::default()
                };
                next.prune(since, lookback_ms);
                Ok((next, true))
            }
        }
    }

    /// The search request body of this page.
    pub fn search_body(&self, stream: Stream, properties: &[String], limit: u32) -> Value {
        let modified = stream.modified_property();
        let mut body = match &self.tie {
            None => json!({
                "filterGroups": [{"filters": [{
                    "propertyName": modified,
                    "operator": "GT",
                    "value": self.from.or(self.since).unwrap_or(0).to_string(),
                }]}],
                "sorts": [{"propertyName": modified, "direction": "ASCENDING"}],
            }),
            Some(tie) => {
                let at = tie.at.to_string();
                let mut filters = vec![
                    json!({"propertyName": modified, "operator": "GTE", "value": at}),
                    json!({"propertyName": modified, "operator": "LTE", "value": at}),
                ];
                if let Some(above) = tie.above {
                    filters.push(json!({"propertyName": ID_PROPERTY, "operator": "GT", "value": above.to_string()}));
                }
                json!({
                    "filterGroups": [{"filters": filters}],
                    "sorts": [{"propertyName": ID_PROPERTY, "direction": "ASCENDING"}],
                })
            }
        };
        body["properties"] = json!(properties);
        body["limit"] = json!(limit);
        if let Some(after) = &self.after {
            body["after"] = json!(after);
        }
        body
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
            Some(_) => {
                state.begin(ctx.config.lookback_ms());
                let body = state.search_body(stream, &properties, limit);
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
        let mut repeats = 0;
        for object in results {
            let (record, modified) =
                object_record(stream, object, &properties).map_err(CallError::Failed)?;
            let new = state.is_new(&record.id, modified);
            state.observe(&record.id, modified);
            if new {
                records.push(record);
            } else {
                repeats += 1;
            }
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
            "hubspot {} ({}): {} records, {repeats} already read, more: {}",
            stream.name(),
            match (&state.since, &state.tie) {
                (None, _) => "list".to_string(),
                (Some(_), None) => "search".to_string(),
                (Some(_), Some(t)) => format!("search by id at {}", t.at),
            },
            records.len(),
            next_after.is_some()
        );
        back_off(&response);
        let (next, done) =
            state.advance(next_after, time::now_unix_ms(), ctx.config.lookback_ms())?;
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

    const LOOKBACK: i64 = 10 * 60_000;

    #[test]
    fn list_run_leaves_a_watermark_guarded_by_its_start() {
        let now = 1_700_000_000_000;
        let c = Cursor {
            max: Some(1_600_000_000_000),
            started: Some(now),
            ..Cursor::default()
        };
        let (next, done) = c
            .clone()
            .advance(Some("abc".into()), now, LOOKBACK)
            .unwrap();
        assert!(!done);
        assert_eq!(next.after.as_deref(), Some("abc"));
        let (end, done) = next.advance(None, now + 1000, LOOKBACK).unwrap();
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
            c.advance(None, now + 120_000, LOOKBACK).unwrap().0.since,
            Some(now - LIST_MARGIN_MS)
        );
        // An empty account keeps listing.
        assert_eq!(
            Cursor::default()
                .advance(None, now, LOOKBACK)
                .unwrap()
                .0
                .since,
            None
        );
    }

    #[test]
    fn search_pages_then_splits_the_newest_time_by_id_at_the_cap() {
        let mut c = Cursor {
            since: Some(100),
            ..Cursor::default()
        };
        c.begin(0);
        assert_eq!(c.from, Some(100));
        c.observe("7", Some(500));
        let (next, done) = c.clone().advance(Some("200".into()), 0, 0).unwrap();
        assert!(!done);
        assert_eq!(next.after.as_deref(), Some("200"));
        // At the cap: everything before 500 is read; the records of 500 are read by id.
        let (split, done) = c.clone().advance(Some("10000".into()), 0, 0).unwrap();
        assert!(!done);
        assert_eq!(split.after, None);
        assert_eq!(
            split.tie,
            Some(Tie {
                at: 500,
                above: None,
                last: None
            })
        );
        let body = split.search_body(Stream::Contacts, &["email".into()], 100);
        assert_eq!(
            body["filterGroups"][0]["filters"],
            json!([
                {"propertyName": "lastmodifieddate", "operator": "GTE", "value": "500"},
                {"propertyName": "lastmodifieddate", "operator": "LTE", "value": "500"},
            ])
        );
        assert_eq!(
            body["sorts"],
            json!([{"propertyName": "hs_object_id", "direction": "ASCENDING"}])
        );
        // The split reaches the cap too: it restarts above the last id read, so it moves on.
        let mut s = split;
        s.observe("9", Some(500));
        s.observe("30000", Some(500));
        let (again, _) = s.advance(Some("10000".into()), 0, 0).unwrap();
        assert_eq!(again.tie.as_ref().unwrap().above, Some(30_000));
        let body = again.search_body(Stream::Contacts, &[], 100);
        assert_eq!(
            body["filterGroups"][0]["filters"][2],
            json!({"propertyName": "hs_object_id", "operator": "GT", "value": "30000"})
        );
        // The split is done: go on after that time.
        let (on, done) = again.advance(None, 0, 0).unwrap();
        assert!(!done);
        assert_eq!((on.tie.clone(), on.from), (None, Some(500)));
        let body = on.search_body(Stream::Contacts, &[], 100);
        assert_eq!(
            body["filterGroups"][0]["filters"][0],
            json!({"propertyName": "lastmodifieddate", "operator": "GT", "value": "500"})
        );
        let (end, done) = on.advance(None, 0, 0).unwrap();
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
        .advance(None, 0, 0)
        .unwrap();
        assert_eq!(end.since, Some(100));
        assert!(cursor::parse::<Cursor>(Some("{\"bogus\":1}"), "HubSpot").is_err());
        // A cursor an earlier version left at a restart (GTE) still reads.
        let mut old: Cursor = cursor::parse(
            Some(r#"{"since":500,"inclusive":true,"max":500}"#),
            "HubSpot",
        )
        .unwrap();
        old.begin(LOOKBACK);
        assert_eq!(old.from, Some(499 - LOOKBACK));
        assert!(!old.inclusive);
    }

    /// HubSpot's search over `objects` (id, modified), as the real one pages and caps it.
    fn search(objects: &[(u64, i64)], body: &Value) -> (Vec<(u64, i64)>, Option<String>) {
        let filters = body["filterGroups"][0]["filters"].as_array().unwrap();
        let value = |f: &Value| f["value"].as_str().unwrap().parse::<i64>().unwrap();
        let mut found: Vec<(u64, i64)> = objects
            .iter()
            .copied()
            .filter(|(id, m)| {
                filters.iter().all(|f| {
                    let have = if f["propertyName"] == ID_PROPERTY {
                        *id as i64
                    } else {
                        *m
                    };
                    match f["operator"].as_str().unwrap() {
                        "GT" => have > value(f),
                        "GTE" => have >= value(f),
                        "LTE" => have <= value(f),
                        op => panic!("{op}"),
                    }
                })
            })
            .collect();
        if body["sorts"][0]["propertyName"] == ID_PROPERTY {
            found.sort_by_key(|o| o.0);
        } else {
            found.sort_by_key(|o| o.1);
        }
        let offset: usize = body["after"].as_str().map_or(0, |a| a.parse().unwrap());
        assert!(offset < 10_000, "HubSpot answers 400 past 10,000 results");
        let limit = body["limit"].as_u64().unwrap() as usize;
        let page: Vec<_> = found.iter().skip(offset).take(limit).copied().collect();
        let next = (offset + limit < found.len()).then(|| (offset + limit).to_string());
        (page, next)
    }

    #[test]
    fn more_than_10000_records_of_one_millisecond_end() {
        // 25,000 records share one millisecond (a month-end batch update), a few are later.
        let mut objects: Vec<(u64, i64)> = (1..=25_000).map(|id| (id * 3, 1_000)).collect();
        objects.extend([(5, 900), (7, 2_000), (8, 3_000)]);
        let mut cursor = Cursor {
            since: Some(500),
            ..Cursor::default()
        };
        let mut read = std::collections::HashSet::new();
        for page in 0.. {
            assert!(page < 1_000, "the search never ends");
            cursor.begin(0);
            let (results, next) = search(&objects, &cursor.search_body(Stream::Contacts, &[], 100));
            for (id, m) in results {
                cursor.observe(&id.to_string(), Some(m));
                read.insert(id);
            }
            let (c, done) = cursor.advance(next, 0, 0).unwrap();
            cursor = c;
            if done {
                break;
            }
        }
        assert_eq!(read.len(), objects.len());
        assert_eq!(cursor.since, Some(3_000));
    }

    #[test]
    fn the_lookback_rereads_late_records_but_not_those_already_read() {
        let since = 1_700_000_000_000;
        let mut c = Cursor {
            since: Some(since),
            seen: BTreeMap::from([("105".to_string(), since), ("104".into(), since - 60_000)]),
            ..Cursor::default()
        };
        c.begin(LOOKBACK);
        assert_eq!(c.from, Some(since - LOOKBACK));
        // Already read with that very time: skipped. Changed since, or never read: new.
        assert!(!c.is_new("105", Some(since)));
        assert!(!c.is_new("104", Some(since - 60_000)));
        assert!(c.is_new("104", Some(since + 1)));
        assert!(c.is_new("107", Some(since - 120_000)));
        c.observe("107", Some(since - 120_000));
        c.observe("104", Some(since + 5_000));
        let (end, done) = c.advance(None, 0, LOOKBACK).unwrap();
        assert!(done);
        assert_eq!(end.since, Some(since + 5_000));
        assert_eq!(
            end.seen,
            BTreeMap::from([
                ("104".to_string(), since + 5_000),
                ("105".into(), since),
                ("107".into(), since - 120_000),
            ])
        );
        // Pairs older than the lookback of the new watermark are forgotten, and the cap holds.
        let mut big = Cursor {
            since: Some(since),
            ..Cursor::default()
        };
        for i in 0..(SEEN_CAP as i64 + 50) {
            big.observe(&i.to_string(), Some(since + i));
        }
        big.observe("old", Some(since - LOOKBACK - 1));
        let (end, _) = big.advance(None, 0, LOOKBACK).unwrap();
        assert_eq!(end.seen.len(), SEEN_CAP);
        assert!(!end.seen.contains_key("old") && !end.seen.contains_key("0"));
        // Without a lookback nothing needs remembering.
        let mut none = Cursor {
            since: Some(since),
            ..Cursor::default()
        };
        none.observe("1", Some(since + 1));
        assert!(none.advance(None, 0, 0).unwrap().0.seen.is_empty());
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
