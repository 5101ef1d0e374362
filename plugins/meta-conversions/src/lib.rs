//! Meta Conversions API destination: `track` sends each event as a server event to a dataset
//! (pixel), `POST https://graph.facebook.com/{version}/{pixel_id}/events` with a JSON body
//! `{"data": [...], "test_event_code": ...}`, up to 1,000 events per request.
//!
//! Each event carries `event_id` (the record key, i.e. the message id, unless the record maps
//! one) so Meta deduplicates it against the same event from the browser pixel; `user_data` is
//! normalised and SHA-256 hashed inside the plugin (see `event.rs`), so raw contact
//! information never leaves the sandbox.
//!
//! Results: the Conversions API refuses a whole request for one bad event. What Meta refuses
//! per event (too old, no user data, a website event without URL or user agent, a Purchase
//! without value and currency) is rejected per record before sending; when Meta still refuses
//! a request with an invalid-parameter error, the plugin halves it and re-sends each half
//! (Meta processed none of its events), so the refusal lands on the events that caused it and
//! the others go through. Rate limits and transient errors retry the request's events (and
//! leave the rest of the call unsent); token, permission, dataset and version errors fail the
//! call, or, after some requests of the call succeeded, retry the rest.

mod event;
mod graph;
// Meta's hashing rules are the same for Custom Audiences and the Conversions API: one source.
#[allow(dead_code)]
#[path = "../../meta-custom-audiences/src/normalize.rs"]
mod normalize;

use std::collections::BTreeMap;

use serde::Deserialize;
use switchyard_sdk::{
    debug, http::Request, info, schemars, serde_json, sunset::Sunset, time, warn, Action,
    CallError, Capabilities, Context, Destination, OutboundRecord, Plugin, RecordResult, Retry,
};

use graph::{classify, EventsResponse, Failure, GraphError};

/// Meta's limit of events per `/events` request.
pub const MAX_EVENTS_PER_REQUEST: usize = 1_000;
/// Extra requests one call may spend halving refused requests to find the refused events.
pub const ISOLATION_REQUESTS: usize = 48;
const GRAPH: &str = "https://graph.facebook.com";

/// The Graph/Marketing API version a config without `api_version` calls: v26.0 (released
/// 2026-07-29).
pub const DEFAULT_VERSION: &str = "v26.0";

/// API versions and the day Meta stops serving them. The Conversions API is part of the
/// Marketing API and follows its (shorter) schedule. Checked 2026-12-06 on Meta's version
/// history; the same table as `meta-custom-audiences`.
pub const SUNSETS: &[Sunset] = &[
    Sunset {
        version: "v24.0",
        sunset: "2026-11-10",
        source: VERSIONS,
    },
    Sunset {
        version: "v25.0",
        sunset: "2027-02-23",
        source: VERSIONS,
    },
    // "TBD" on Meta's page. Estimate: release + 11 months, the shortest life of v21.0-v25.0;
    // replace with Meta's date once published.
    Sunset {
        version: "v26.0",
        sunset: "2027-06-29",
        source: VERSIONS_ESTIMATE,
    },
    Sunset {
        version: "v27.0",
        sunset: "2027-10-04",
        source: VERSIONS_ESTIMATE,
    },
];
const VERSIONS: &str = "https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions";
const VERSIONS_ESTIMATE: &str = "estimated (Meta lists TBD): https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions";

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

fn default_action_source() -> String {
    "website".to_string()
}

/// Settings of one `[destinations.NAME]` block using this plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The dataset (pixel) id, digits, from Events Manager.
    pub pixel_id: String,
    /// Graph API version, e.g. `v26.0` (the default).
    #[serde(default = "default_version")]
    pub api_version: String,
    /// Where the events happened when a record does not say (`action_source`): `website`
    /// (the default), `app`, `email`, `phone_call`, `chat`, `physical_store`,
    /// `system_generated`, `business_messaging` or `other`.
    #[serde(default = "default_action_source")]
    pub action_source: String,
    /// Sends every event as a test event with this code (Events Manager → Test events).
    #[serde(default)]
    pub test_event_code: Option<String>,
    /// Event name translations, e.g. `{ "Signed Up" = "CompleteRegistration" }`, on top of the
    /// built-in Segment e-commerce spec names (`Order Completed` → `Purchase`, ...).
    #[serde(default)]
    pub event_names: BTreeMap<String, String>,
    /// ISO 3166-1 alpha-2 country (e.g. `US`) for records without `country`.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Country calling code (digits, e.g. `1`) for phone numbers written without one.
    #[serde(default)]
    pub default_phone_country_code: Option<String>,
    /// Events per request, at most 1,000 (Meta's limit).
    #[serde(default)]
    pub events_per_request: Option<u32>,
}

struct MetaConversions;

impl Plugin for MetaConversions {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("meta-conversions")
            .allowed_host("graph.facebook.com")
            .secret(
                "access_token",
                "Conversions API access token (Events Manager → dataset → Settings → Generate access token, or a system user token with the dataset assigned); sent as Authorization: Bearer, never enters the plugin",
                true,
            )
            .secret_value(
                "appsecret_proof",
                "Only if the app requires it: hex HMAC-SHA256 of the access token keyed by the app secret (printf %s \"$TOKEN\" | openssl dgst -sha256 -hmac \"$APP_SECRET\"); sent in the query string, so its value enters the plugin",
                false,
            )
            .max_batch_size(MAX_EVENTS_PER_REQUEST as u32)
            .default_rate_per_second(5.0)
            .actions(&[Action::Track])
    }

    /// Reads the dataset (`GET /{v}/{pixel_id}?fields=id,name`): the token, the version and the
    /// id, without sending an event (the Conversions API has no validate-only mode; use
    /// `test_event_code` to see events in Events Manager without affecting ads).
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        validate(&ctx.config)?;
        let url = format!(
            "{GRAPH}/{}/{}?fields=id,name{}",
            ctx.config.api_version,
            ctx.config.pixel_id,
            proof_query(ctx, '&')?
        );
        let response = authorised(ctx, Request::get(&url)).send()?;
        if !response.is_success() || GraphError::parse(&response.body).is_some() {
            return Err(match classify(&response, time::now_unix()) {
                Failure::Unauthorized(m) => CallError::Unauthorized(m),
                Failure::InvalidConfig(m) | Failure::Rejected(m) => CallError::InvalidConfig(m),
                Failure::Retry(r) => CallError::Transient(r),
            });
        }
        let pixel: serde_json::Value = response.json()?;
        if pixel.get("id").and_then(|v| v.as_str()) != Some(ctx.config.pixel_id.as_str()) {
            return Err(CallError::InvalidConfig(format!(
                "Meta answered for dataset {}, not {}",
                pixel.get("id").unwrap_or(&serde_json::Value::Null),
                ctx.config.pixel_id
            )));
        }
        info!(
            "dataset {} ({}) is reachable with this token",
            ctx.config.pixel_id,
            pixel.get("name").and_then(|v| v.as_str()).unwrap_or("")
        );
        Ok(())
    }
}

impl Destination for MetaConversions {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        validate(&ctx.config)?;
        if !matches!(action, Action::Track) {
            return Err(CallError::InvalidConfig(
                "meta-conversions sends events (mode = \"events\"), not profile upserts or deletes"
                    .into(),
            ));
        }
        let names = event_names(&ctx.config);
        let defaults = event::Defaults {
            action_source: &ctx.config.action_source,
            default_country: ctx.config.default_country.as_deref(),
            phone_country_code: ctx.config.default_phone_country_code.as_deref(),
            event_names: &names,
            now_unix: time::now_unix() as i64,
        };
        let mut results: Vec<Option<RecordResult>> = vec![None; batch.len()];
        let mut events: Vec<(usize, serde_json::Value)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match event::server_event(&record.key, &record.fields, &defaults) {
                Ok(e) => events.push((i, e)),
                Err(reason) => {
                    debug!("record {}: rejected before sending: {reason}", record.key);
                    results[i] = Some(RecordResult::Rejected(reason));
                }
            }
        }

        let per_request = ctx
            .config
            .events_per_request
            .map_or(MAX_EVENTS_PER_REQUEST, |n| n as usize)
            .clamp(1, MAX_EVENTS_PER_REQUEST);
        let mut post = |events: &[(usize, serde_json::Value)]| post(ctx, events);
        let mut sender = Sender {
            post: &mut post,
            results: &mut results,
            isolation_left: ISOLATION_REQUESTS,
            succeeded: false,
        };
        let mut stop: Option<Stop> = None;
        for chunk in events.chunks(per_request) {
            if let Err(s) = sender.send(chunk) {
                stop = Some(s);
                break;
            }
        }
        let succeeded = sender.succeeded;
        if let Some(stop) = stop {
            let pending = |results: &mut Vec<Option<RecordResult>>, r: RecordResult| {
                for slot in results.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(r.clone());
                }
            };
            match stop {
                Stop::Retry(retry) => pending(&mut results, RecordResult::Retry(retry)),
                Stop::Call(error) if !succeeded => return Err(error),
                Stop::Call(error) => {
                    let reason = switchyard_sdk::outcome::describe_call_error(&error);
                    warn!("a later request of this call failed: {reason}");
                    pending(
                        &mut results,
                        RecordResult::Retry(Retry {
                            reason,
                            after_ms: None,
                        }),
                    );
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(RecordResult::Ok))
            .collect())
    }
}

/// Why sending stopped before every event was decided.
enum Stop {
    /// Throttled or transient: the undecided events are retried.
    Retry(Retry),
    /// Wrong for every event (token, dataset, version).
    Call(CallError),
}

/// Sends one request of events (the network in a plugin, a script in tests).
type Post<'a> =
    dyn FnMut(&[(usize, serde_json::Value)]) -> Result<switchyard_sdk::http::Response, Stop> + 'a;

/// Sends requests of events and writes each event's result.
struct Sender<'a> {
    post: &'a mut Post<'a>,
    results: &'a mut Vec<Option<RecordResult>>,
    isolation_left: usize,
    succeeded: bool,
}

impl Sender<'_> {
    /// Sends `events` in one request; on an invalid-parameter refusal, each half again.
    fn send(&mut self, events: &[(usize, serde_json::Value)]) -> Result<(), Stop> {
        let response = (self.post)(events)?;
        if response.is_success() && GraphError::parse(&response.body).is_none() {
            self.succeeded = true;
            let answer: EventsResponse = serde_json::from_slice(&response.body).unwrap_or_default();
            if answer
                .events_received
                .is_some_and(|n| n as usize != events.len())
            {
                warn!(
                    "Meta received {:?} of {} events [fbtrace_id {}]",
                    answer.events_received,
                    events.len(),
                    answer.fbtrace_id.as_deref().unwrap_or("-")
                );
            }
            for message in &answer.messages {
                info!("Meta: {message}");
            }
            for (i, _) in events {
                self.results[*i] = Some(RecordResult::Ok);
            }
            return Ok(());
        }
        match classify(&response, time::now_unix()) {
            Failure::Rejected(reason) if events.len() > 1 && self.isolation_left >= 2 => {
                // Meta processed none of the request's events: halve it to find the refused one.
                self.isolation_left -= 2;
                debug!(
                    "{} events refused together ({reason}); sending each half again",
                    events.len()
                );
                let (a, b) = events.split_at(events.len() / 2);
                self.send(a)?;
                self.send(b)
            }
            Failure::Rejected(reason) => {
                let reason = if events.len() > 1 {
                    format!(
                        "{reason} (refused with {} other events of the request; the plugin's budget for isolating the refused event ran out)",
                        events.len() - 1
                    )
                } else {
                    reason
                };
                for (i, _) in events {
                    self.results[*i] = Some(RecordResult::Rejected(reason.clone()));
                }
                Ok(())
            }
            Failure::Retry(retry) => Err(Stop::Retry(retry)),
            Failure::Unauthorized(m) => Err(Stop::Call(CallError::Unauthorized(m))),
            Failure::InvalidConfig(m) => Err(Stop::Call(CallError::InvalidConfig(m))),
        }
    }
}

/// `POST /{v}/{pixel_id}/events` with the events as `data`.
fn post(
    ctx: &Context<Config>,
    events: &[(usize, serde_json::Value)],
) -> Result<switchyard_sdk::http::Response, Stop> {
    let url = format!(
        "{GRAPH}/{}/{}/events{}",
        ctx.config.api_version,
        ctx.config.pixel_id,
        proof_query(ctx, '?').map_err(Stop::Call)?
    );
    let body = events_body(
        events.iter().map(|(_, e)| e),
        ctx.config.test_event_code.as_deref(),
    )
    .map_err(Stop::Call)?;
    authorised(ctx, Request::post(&url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .map_err(|e| match CallError::from(e) {
            CallError::Transient(r) => Stop::Retry(r),
            other => Stop::Call(other),
        })
}

/// `{"data": [...events], "test_event_code": "..."}`.
pub fn events_body<'a>(
    events: impl Iterator<Item = &'a serde_json::Value>,
    test_event_code: Option<&str>,
) -> Result<Vec<u8>, CallError> {
    let mut body = serde_json::Map::new();
    body.insert(
        "data".into(),
        serde_json::Value::Array(events.cloned().collect()),
    );
    if let Some(code) = test_event_code {
        body.insert("test_event_code".into(), serde_json::json!(code));
    }
    serde_json::to_vec(&body)
        .map_err(|e| CallError::Failed(format!("serialising the request body: {e}")))
}

/// The spec names, then the config's own translations over them.
fn event_names(config: &Config) -> BTreeMap<String, String> {
    let mut names: BTreeMap<String, String> = event::SPEC_EVENT_NAMES
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    names.extend(config.event_names.clone());
    names
}

fn validate(config: &Config) -> Result<(), CallError> {
    if config.pixel_id.is_empty() || !config.pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CallError::InvalidConfig(format!(
            "pixel_id `{}` must be the dataset's numeric id",
            config.pixel_id
        )));
    }
    let v = config.api_version.strip_prefix('v').unwrap_or("");
    let ok = !v.is_empty()
        && v.split('.').count() <= 2
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(CallError::InvalidConfig(format!(
            "api_version `{}` must look like v26.0",
            config.api_version
        )));
    }
    if !event::ACTION_SOURCES.contains(&config.action_source.as_str()) {
        return Err(CallError::InvalidConfig(format!(
            "action_source `{}` must be one of {}",
            config.action_source,
            event::ACTION_SOURCES.join(", ")
        )));
    }
    if let Some(c) = &config.default_country {
        if normalize::country(c).is_none() {
            return Err(CallError::InvalidConfig(format!(
                "default_country `{c}` must be an ISO 3166-1 alpha-2 code such as US"
            )));
        }
    }
    if let Some(cc) = &config.default_phone_country_code {
        let digits = cc.trim_start_matches('+');
        if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CallError::InvalidConfig(format!(
                "default_phone_country_code `{cc}` must be 1 to 3 digits, e.g. 1 or 44"
            )));
        }
    }
    if config
        .events_per_request
        .is_some_and(|n| n == 0 || n as usize > MAX_EVENTS_PER_REQUEST)
    {
        return Err(CallError::InvalidConfig(
            "events_per_request must be between 1 and 1000 (Meta's limit per request)".into(),
        ));
    }
    if let Some(code) = &config.test_event_code {
        if code.trim().is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CallError::InvalidConfig(format!(
                "test_event_code `{code}` must be the code Events Manager shows, e.g. TEST12345"
            )));
        }
    }
    Ok(())
}

/// The token goes in the `Authorization` header as a placeholder the hub fills in: Graph
/// accepts `Authorization: Bearer` as well as an `access_token` parameter, and only headers
/// are filled in, so the token never enters the sandbox.
fn authorised(ctx: &Context<Config>, request: Request) -> Request {
    request.bearer_auth(&ctx.secret_placeholder("access_token"))
}

/// `{lead}appsecret_proof=...` when the operator set it, else nothing.
fn proof_query(ctx: &Context<Config>, lead: char) -> Result<String, CallError> {
    if !ctx.has_secret("appsecret_proof") {
        return Ok(String::new());
    }
    let proof = ctx.secret("appsecret_proof")?.trim();
    if proof.len() != 64 || !proof.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CallError::InvalidConfig(
            "appsecret_proof must be the 64 hex digits of HMAC-SHA256(app secret, access token)"
                .into(),
        ));
    }
    Ok(format!(
        "{lead}appsecret_proof={}",
        proof.to_ascii_lowercase()
    ))
}

switchyard_sdk::export_destination!(MetaConversions);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_version_is_not_near_its_sunset() {
        switchyard_sdk::sunset::assert_fresh(
            DEFAULT_VERSION,
            SUNSETS,
            switchyard_sdk::sunset::MARGIN_DAYS,
        );
        assert_eq!(default_version(), DEFAULT_VERSION);
    }

    #[test]
    fn config_validation() {
        assert!(validate(&cfg(serde_json::json!({"pixel_id": "123"}))).is_ok());
        for bad in [
            serde_json::json!({"pixel_id": "px_1"}),
            serde_json::json!({"pixel_id": "1", "api_version": "26"}),
            serde_json::json!({"pixel_id": "1", "action_source": "fax"}),
            serde_json::json!({"pixel_id": "1", "events_per_request": 1001}),
            serde_json::json!({"pixel_id": "1", "events_per_request": 0}),
            serde_json::json!({"pixel_id": "1", "default_country": "USA"}),
            serde_json::json!({"pixel_id": "1", "test_event_code": "TEST 1"}),
        ] {
            assert!(validate(&cfg(bad.clone())).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<Config>(
            serde_json::json!({"pixel_id": "1", "access_token": "x"})
        )
        .is_err());
        let c = cfg(
            serde_json::json!({"pixel_id": "1", "event_names": {"Signed Up": "CompleteRegistration", "Order Completed": "Order"}}),
        );
        let names = event_names(&c);
        assert_eq!(names["Signed Up"], "CompleteRegistration");
        assert_eq!(
            names["Order Completed"], "Order",
            "config wins over the spec"
        );
        assert_eq!(names["Product Added"], "AddToCart");
    }

    #[test]
    fn body_carries_data_and_test_code() {
        let events = [serde_json::json!({"event_name": "Lead"})];
        let body = events_body(events.iter(), Some("TEST123")).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"data": [{"event_name": "Lead"}], "test_event_code": "TEST123"})
        );
        let body = events_body(events.iter(), None).unwrap();
        assert!(!String::from_utf8(body).unwrap().contains("test_event_code"));
    }

    /// Runs a `Sender` over `names` against a scripted API: a request holding a `Bad` event is
    /// refused with code 100 (as Meta refuses a whole request), `Slow` answers code 4.
    fn isolate(names: &[&str], budget: usize) -> (Vec<Option<RecordResult>>, usize, Option<Stop>) {
        use switchyard_sdk::http::Response;
        let events: Vec<(usize, serde_json::Value)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i, serde_json::json!({"event_name": n})))
            .collect();
        let mut requests = 0;
        let mut post = |events: &[(usize, serde_json::Value)]| {
            requests += 1;
            let has = |n: &str| events.iter().any(|(_, e)| e["event_name"] == n);
            Ok(if has("Slow") {
                Response::new(
                    400,
                    &[],
                    r#"{"error":{"message":"Application request limit reached","code":4}}"#,
                )
            } else if has("Bad") {
                Response::new(
                    400,
                    &[],
                    r#"{"error":{"message":"Invalid parameter","code":100,"error_subcode":2804003,"error_user_title":"Event Timestamp Too Old"}}"#,
                )
            } else {
                Response::new(
                    200,
                    &[],
                    format!(r#"{{"events_received":{}}}"#, events.len()),
                )
            })
        };
        let mut results = vec![None; names.len()];
        let stop = Sender {
            post: &mut post,
            results: &mut results,
            isolation_left: budget,
            succeeded: false,
        }
        .send(&events)
        .err();
        (results, requests, stop)
    }

    #[test]
    fn a_refused_request_is_halved_until_the_refused_events_are_found() {
        let (results, requests, stop) = isolate(
            &[
                "Lead", "Lead", "Bad", "Lead", "Lead", "Lead", "Lead", "Lead",
            ],
            48,
        );
        assert!(stop.is_none());
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (2, Some(RecordResult::Rejected(m))) => assert!(
                    m.contains("Event Timestamp Too Old") && !m.contains("other events"),
                    "{m}"
                ),
                (2, other) => panic!("{other:?}"),
                (_, Some(RecordResult::Ok)) => {}
                (_, other) => panic!("{i}: {other:?}"),
            }
        }
        // 8 → 4+4 → 2+2 → 1+1: the bad event's halves only.
        assert_eq!(requests, 7);
        // Out of budget: the rest of the refused request is rejected with Meta's reason, saying so.
        let (results, requests, _) = isolate(&["Lead", "Bad", "Lead", "Lead"], 2);
        assert_eq!(requests, 3);
        assert!(
            matches!(&results[0], Some(RecordResult::Rejected(m)) if m.contains("1 other events"))
        );
        assert!(matches!(&results[2], Some(RecordResult::Ok)));
        // A rate limit stops the call: what is undecided is retried by the caller.
        let (results, _, stop) = isolate(&["Lead", "Slow"], 48);
        assert!(matches!(stop, Some(Stop::Retry(_))));
        assert!(results.iter().all(Option::is_none));
    }

    #[test]
    fn appsecret_proof_goes_to_the_query_only_when_set() {
        let c = || cfg(serde_json::json!({"pixel_id": "1"}));
        let ctx = Context::new(
            c(),
            [(
                "access_token".to_string(),
                "{{secret:access_token}}".to_string(),
            )],
        );
        assert_eq!(proof_query(&ctx, '?').unwrap(), "");
        let proof = "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843";
        let ctx = Context::new(c(), [("appsecret_proof".to_string(), proof.to_string())]);
        assert_eq!(
            proof_query(&ctx, '?').unwrap(),
            format!("?appsecret_proof={}", proof.to_ascii_lowercase())
        );
        let ctx = Context::new(
            c(),
            [("appsecret_proof".to_string(), "app-secret".to_string())],
        );
        assert!(matches!(
            proof_query(&ctx, '&'),
            Err(CallError::InvalidConfig(_))
        ));
    }
}
