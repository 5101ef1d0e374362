//! Google Analytics 4 Measurement Protocol destination: `track` sends each event to a GA4 data
//! stream, `POST https://www.google-analytics.com/mp/collect?measurement_id=…&api_secret=…`
//! (or `region1.google-analytics.com` for EU collection; `firebase_app_id=` for app streams),
//! up to 25 events per request, events of one client (and user, user properties, consent) per
//! request since those fields belong to the request.
//!
//! The Measurement Protocol answers 2xx for invalid payloads and drops what it cannot use, so
//! the plugin refuses per record what GA4 would drop (see `event.rs`), `check` sends a sample
//! event to the validation server (`/debug/mp/collect`) and reports its `validationMessages`,
//! and with `validate_before_send` every request is first validated there and the events it
//! names are rejected with its message instead of being sent.

mod event;
mod validation;

use std::collections::BTreeMap;

use serde::Deserialize;
use switchyard_sdk::http::{self, HttpError, Request, Response};
use switchyard_sdk::{
    debug, info, outcome, schemars, serde_json, time, Action, CallError, Capabilities, Context,
    Destination, OutboundRecord, Plugin, RecordResult, Retry,
};

use event::{Built, Stream};

/// Largest request body GA4 takes ("The total size of the post body must be smaller than
/// 130kB").
pub const MAX_BODY_BYTES: usize = 130_000;

fn default_region() -> Region {
    Region::Global
}

fn yes() -> bool {
    true
}

/// Where GA4 collects the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// `www.google-analytics.com`
    Global,
    /// `region1.google-analytics.com`: collected in the EU.
    Eu,
}

impl Region {
    fn base(self) -> &'static str {
        match self {
            Region::Global => "https://www.google-analytics.com",
            Region::Eu => "https://region1.google-analytics.com",
        }
    }
}

/// Settings of one `[destinations.NAME]` block using this plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Web stream: its measurement id, `G-XXXXXXXXXX` (Admin → Data streams → the stream). Set
    /// this or `firebase_app_id`.
    #[serde(default)]
    pub measurement_id: Option<String>,
    /// App stream: the Firebase app id, `1:1234567890:android:abc…`. Set this or
    /// `measurement_id`.
    #[serde(default)]
    pub firebase_app_id: Option<String>,
    /// `global` (the default) or `eu` (region1.google-analytics.com: data collected in the EU).
    #[serde(default = "default_region")]
    pub region: Region,
    /// Validate every request on the validation server first and reject the events it names
    /// (one extra request per request).
    #[serde(default)]
    pub validate_before_send: bool,
    /// Event name translations, e.g. `{ "Trial Started" = "start_trial" }`, on top of the
    /// built-in Segment spec names (`Order Completed` → `purchase`, ...).
    #[serde(default)]
    pub event_names: BTreeMap<String, String>,
    /// Other event names become snake case (`Video Played` → `video_played`); default true.
    #[serde(default = "yes")]
    pub snake_case_names: bool,
    /// `ad_user_data` consent (`GRANTED` or `DENIED`) for records that carry none.
    #[serde(default)]
    pub ad_user_data: Option<String>,
    /// `ad_personalization` consent (`GRANTED` or `DENIED`) for records that carry none.
    #[serde(default)]
    pub ad_personalization: Option<String>,
}

struct Ga4Measurement;

impl Plugin for Ga4Measurement {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("ga4-measurement")
            .allowed_host("www.google-analytics.com")
            .allowed_host("region1.google-analytics.com")
            .secret_value(
                "api_secret",
                "Measurement Protocol API secret (Admin → Data streams → the stream → Measurement Protocol API secrets); GA4 takes it only in the query string, where the hub fills in no placeholder, so its value enters the plugin",
                true,
            )
            .max_batch_size(100)
            .default_rate_per_second(10.0)
            .actions(&[Action::Track])
    }

    /// Sends one sample event to the validation server, which checks the payload and never
    /// records it (it does not check `api_secret`; a wrong secret only shows as missing data).
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let stream = validate(&ctx.config)?;
        let identity = match stream {
            Stream::Web => ("client_id", "1234567890.1765000000"),
            Stream::App => ("app_instance_id", "0123456789abcdef0123456789abcdef"),
        };
        let body = serde_json::json!({
            identity.0: identity.1,
            "events": [{"name": "switchyard_check", "params": {"engagement_time_msec": 1}}],
        });
        let response = Request::post(&url(ctx, true)?).json(&body).send()?;
        outcome::call_result(&response)?;
        let messages = validation::messages(&response.body)?;
        if !messages.is_empty() {
            return Err(CallError::InvalidConfig(format!(
                "the validation server refused a sample event: {}",
                validation::describe(&messages)
            )));
        }
        info!("the validation server accepted a sample event for this stream");
        Ok(())
    }
}

impl Destination for Ga4Measurement {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let stream = validate(&ctx.config)?;
        if !matches!(action, Action::Track) {
            return Err(CallError::InvalidConfig(
                "ga4-measurement sends events (mode = \"events\"), not profile upserts or deletes"
                    .into(),
            ));
        }
        let names = event_names(&ctx.config);
        let defaults = event::Defaults {
            stream,
            event_names: &names,
            snake_case_names: ctx.config.snake_case_names,
            consent: (
                ctx.config.ad_user_data.as_deref(),
                ctx.config.ad_personalization.as_deref(),
            ),
            now_unix: time::now_unix() as i64,
        };
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut built: Vec<(usize, Built)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match event::build(&record.fields, &defaults) {
                Ok(b) => built.push((i, b)),
                Err(reason) => {
                    debug!("record {}: rejected before sending: {reason}", record.key);
                    results[i] = RecordResult::Rejected(reason);
                }
            }
        }
        let collect = url(ctx, false)?;
        let debug_url = url(ctx, true)?;
        let requests = group(&built);
        if ctx.config.validate_before_send {
            return validated(results, &requests, &debug_url, &collect);
        }
        // Requests go IN_FLIGHT at a time; a wave with a failure ends the call, as one failed
        // request did when they went one by one: its own events get its answer, the events
        // not sent yet share the first failure's.
        let mut sent = false;
        let mut at = 0;
        while at < requests.len() {
            let wave = &requests[at..(at + IN_FLIGHT).min(requests.len())];
            at += wave.len();
            let posts = wave
                .iter()
                .map(|r| post_request(&collect, r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut failed = Vec::new();
            for (request, answer) in wave.iter().zip(http::send_all(posts)) {
                match answer {
                    Ok(r) if r.is_success() => sent = true,
                    other => failed.push((request, other)),
                }
            }
            let mut first = None;
            for (request, answer) in failed {
                let result = fate(answer, sent)?;
                share(&mut results, std::slice::from_ref(request), &result);
                first.get_or_insert(result);
            }
            if let Some(result) = first {
                share(&mut results, &requests[at..], &result);
                return Ok(results);
            }
        }
        Ok(results)
    }
}

/// Requests sent side by side: a batch of 100 events from 100 clients is 10 round trips to
/// GA4 instead of 100, within the hub's default of 32 connections per call.
const IN_FLIGHT: usize = 10;

/// `validate_before_send`: each request is validated, then sent, one after another.
fn validated(
    mut results: Vec<RecordResult>,
    requests: &[Vec<(usize, &Built)>],
    debug_url: &str,
    collect: &str,
) -> Result<Vec<RecordResult>, CallError> {
    let mut sent = false;
    for (n, request) in requests.iter().enumerate() {
        let mut request = request.clone();
        let response = match post(debug_url, &request)? {
            Ok(r) if r.is_success() => r,
            failed => return settle(results, &requests[n..], failed, sent),
        };
        let messages = validation::messages(&response.body)?;
        for (slot, reason) in validation::assign(&messages, request.len()) {
            results[request[slot].0] =
                RecordResult::Rejected(format!("GA4 validation server: {reason}"));
        }
        request.retain(|(i, _)| matches!(results[*i], RecordResult::Ok));
        if request.is_empty() {
            continue;
        }
        match post(collect, &request)? {
            Ok(r) if r.is_success() => sent = true,
            failed => return settle(results, &requests[n..], failed, sent),
        }
    }
    Ok(results)
}

/// Posts one request's body; the outer error is a body that cannot be built, the inner one a
/// request that did not get an answer.
fn post(url: &str, request: &[(usize, &Built)]) -> Result<Result<Response, HttpError>, CallError> {
    Ok(post_request(url, request)?.send())
}

fn post_request(url: &str, request: &[(usize, &Built)]) -> Result<Request, CallError> {
    Ok(Request::post(url)
        .header("content-type", "application/json")
        .body(body(request)?))
}

/// A request failed: its events and those of every later request share its fate. A non-2xx
/// answer is retried (429, 5xx) or rejected with the answer; no answer fails the call while
/// nothing was sent, and retries the rest once something was (GA4 does not deduplicate, so a
/// failed call must not make the hub send delivered events again).
fn settle(
    mut results: Vec<RecordResult>,
    requests: &[Vec<(usize, &Built)>],
    failed: Result<Response, HttpError>,
    sent: bool,
) -> Result<Vec<RecordResult>, CallError> {
    let result = fate(failed, sent)?;
    share(&mut results, requests, &result);
    Ok(results)
}

/// What a failed request's events get: its answer's outcome (retried for 429 and 5xx), or
/// for no answer, the call's failure while nothing was sent and a retry once something was.
fn fate(failed: Result<Response, HttpError>, sent: bool) -> Result<RecordResult, CallError> {
    match failed {
        Ok(response) => Ok(outcome::record_result(&response)),
        Err(e) if !sent => Err(e.into()),
        Err(e) => Ok(RecordResult::Retry(Retry {
            reason: e.to_string(),
            after_ms: None,
        })),
    }
}

/// Gives `result` to the events of `requests` not refused already.
fn share(results: &mut [RecordResult], requests: &[Vec<(usize, &Built)>], result: &RecordResult) {
    for (i, _) in requests.iter().flatten() {
        if matches!(results[*i], RecordResult::Ok) {
            results[*i] = result.clone();
        }
    }
}

/// Requests of up to 25 events sharing their request-level fields, each under 130 kB, in the
/// batch's order (consecutive events of one client share a request).
fn group(built: &[(usize, Built)]) -> Vec<Vec<(usize, &Built)>> {
    let mut requests: Vec<Vec<(usize, &Built)>> = Vec::new();
    let mut size = 0;
    for (i, b) in built {
        let event_size = b.event.to_string().len() + 1;
        let fits = requests.last().is_some_and(|r| {
            r.len() < event::MAX_EVENTS
                && r[0].1.envelope == b.envelope
                && size + event_size < MAX_BODY_BYTES
        });
        if fits {
            size += event_size;
            if let Some(r) = requests.last_mut() {
                r.push((*i, b));
            }
        } else {
            size = serde_json::Value::Object(b.envelope.clone())
                .to_string()
                .len()
                + 20
                + event_size;
            requests.push(vec![(*i, b)]);
        }
    }
    requests
}

/// The request body: the shared fields and `events`.
pub fn body(request: &[(usize, &Built)]) -> Result<Vec<u8>, CallError> {
    let Some((_, first)) = request.first() else {
        return Ok(b"{}".to_vec());
    };
    let mut body = first.envelope.clone();
    body.insert(
        "events".into(),
        serde_json::Value::Array(request.iter().map(|(_, b)| b.event.clone()).collect()),
    );
    serde_json::to_vec(&body)
        .map_err(|e| CallError::Failed(format!("serialising the request body: {e}")))
}

/// `https://{host}/[debug/]mp/collect?measurement_id=…&api_secret=…` (or `firebase_app_id=`).
fn url(ctx: &Context<Config>, debug: bool) -> Result<String, CallError> {
    let c = &ctx.config;
    let stream = match (&c.measurement_id, &c.firebase_app_id) {
        (Some(id), _) => format!("measurement_id={}", encode(id.trim())),
        (None, Some(id)) => format!("firebase_app_id={}", encode(id.trim())),
        (None, None) => {
            return Err(CallError::InvalidConfig(
                "set measurement_id or firebase_app_id".into(),
            ))
        }
    };
    Ok(format!(
        "{}/{}mp/collect?{stream}&api_secret={}",
        c.region.base(),
        if debug { "debug/" } else { "" },
        encode(ctx.secret("api_secret")?.trim())
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn event_names(config: &Config) -> BTreeMap<String, String> {
    let mut names: BTreeMap<String, String> = event::SPEC_EVENT_NAMES
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    names.extend(config.event_names.clone());
    names
}

/// The stream type the config names, or what is wrong with it.
fn validate(config: &Config) -> Result<Stream, CallError> {
    let stream =
        match (&config.measurement_id, &config.firebase_app_id) {
            (Some(_), Some(_)) | (None, None) => return Err(CallError::InvalidConfig(
                "set exactly one of measurement_id (web stream) and firebase_app_id (app stream)"
                    .into(),
            )),
            (Some(id), None) => {
                let id = id.trim();
                let ok = id.strip_prefix("G-").is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                });
                if !ok {
                    return Err(CallError::InvalidConfig(format!(
                        "measurement_id `{id}` must look like G-XXXXXXXXXX (not the stream id)"
                    )));
                }
                Stream::Web
            }
            (None, Some(id)) => {
                if id.trim().split(':').count() != 4 {
                    return Err(CallError::InvalidConfig(format!(
                    "firebase_app_id `{id}` must look like 1:1234567890:android:0123456789abcdef"
                )));
                }
                Stream::App
            }
        };
    for (key, value) in [
        ("ad_user_data", &config.ad_user_data),
        ("ad_personalization", &config.ad_personalization),
    ] {
        if let Some(v) = value {
            if !v.eq_ignore_ascii_case("granted") && !v.eq_ignore_ascii_case("denied") {
                return Err(CallError::InvalidConfig(format!(
                    "{key} must be GRANTED or DENIED, not `{v}`"
                )));
            }
        }
    }
    for (from, to) in &config.event_names {
        event::check_event_name(to)
            .map_err(|e| CallError::InvalidConfig(format!("event_names.\"{from}\": {e}")))?;
    }
    Ok(stream)
}

switchyard_sdk::export_destination!(Ga4Measurement);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn config_validation() {
        assert_eq!(
            validate(&cfg(json!({"measurement_id": "G-ABC123"}))).unwrap(),
            Stream::Web
        );
        assert_eq!(
            validate(&cfg(
                json!({"firebase_app_id": "1:1234567890:android:321abc456def7890"})
            ))
            .unwrap(),
            Stream::App
        );
        for bad in [
            json!({}),
            json!({"measurement_id": "G-1", "firebase_app_id": "1:2:ios:3"}),
            json!({"measurement_id": "UA-1234-1"}),
            json!({"measurement_id": "1234567"}),
            json!({"firebase_app_id": "abc"}),
            json!({"measurement_id": "G-1", "ad_user_data": "yes"}),
            json!({"measurement_id": "G-1", "event_names": {"Order Completed": "Order Completed"}}),
        ] {
            assert!(validate(&cfg(bad.clone())).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_value::<Config>(json!({"measurement_id": "G-1", "region": "us"}))
                .is_err()
        );
        assert!(serde_json::from_value::<Config>(
            json!({"measurement_id": "G-1", "api_secret": "x"})
        )
        .is_err());
    }

    #[test]
    fn urls_carry_the_stream_and_the_secret_in_the_query() {
        let ctx = |c: serde_json::Value| {
            Context::new(
                cfg(c),
                [("api_secret".to_string(), "s3cr et/+".to_string())],
            )
        };
        assert_eq!(
            url(&ctx(json!({"measurement_id": "G-ABC123"})), false).unwrap(),
            "https://www.google-analytics.com/mp/collect?measurement_id=G-ABC123&api_secret=s3cr%20et%2F%2B"
        );
        assert_eq!(
            url(&ctx(json!({"measurement_id": "G-ABC123", "region": "eu"})), true).unwrap(),
            "https://region1.google-analytics.com/debug/mp/collect?measurement_id=G-ABC123&api_secret=s3cr%20et%2F%2B"
        );
        assert!(url(&ctx(json!({"firebase_app_id": "1:2:ios:3"})), false)
            .unwrap()
            .contains("?firebase_app_id=1%3A2%3Aios%3A3&"));
        let no_secret = Context::new(cfg(json!({"measurement_id": "G-1"})), []);
        assert!(matches!(
            url(&no_secret, false),
            Err(CallError::InvalidConfig(_))
        ));
    }

    #[test]
    fn requests_group_one_client_up_to_25_events() {
        let names = event_names(&cfg(json!({"measurement_id": "G-1"})));
        let d = event::Defaults {
            stream: Stream::Web,
            event_names: &names,
            snake_case_names: true,
            consent: (None, None),
            now_unix: time::now_unix() as i64,
        };
        let mk = |client: &str| {
            event::build(
                &json!({"event_name": "tap", "client_id": client}).to_string(),
                &d,
            )
            .unwrap()
        };
        let mut built: Vec<(usize, Built)> = (0..30).map(|i| (i, mk("a"))).collect();
        built.push((30, mk("b")));
        built.push((31, mk("a")));
        let requests = group(&built);
        assert_eq!(
            requests.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![25, 5, 1, 1]
        );
        let sent: serde_json::Value = serde_json::from_slice(&body(&requests[2]).unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"client_id": "b", "events": [{"name": "tap", "params": {}}]})
        );
        // Large events: requests stay under 130 kB.
        let big = |i| {
            let mut f = json!({"event_name": "tap", "client_id": "a"});
            for p in 0..20 {
                f[format!("p{p}")] = json!("x".repeat(100));
            }
            (i, event::build(&f.to_string(), &d).unwrap())
        };
        let built: Vec<(usize, Built)> = (0..100).map(big).collect();
        for r in group(&built) {
            assert!(body(&r).unwrap().len() < MAX_BODY_BYTES);
            assert!(r.len() <= event::MAX_EVENTS);
        }
    }
}
