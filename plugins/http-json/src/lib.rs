//! Generic source: reads any paginated JSON API into one stream.
//!
//! The operator describes the API in the config: the list `url`, where the records sit in a
//! response (`records_path`, a dotted path such as `data.items`; empty when the body is the array),
//! which field is the id (`id_field`) and which the last-update time (`updated_at_field`), how
//! pages follow each other (`pagination`: a cursor read from the response and sent back as a query
//! parameter, a page number, the `Link: <...>; rel="next"` header, or none), and optionally an
//! auth header filled with the `token` secret (`auth_header`, `auth_prefix`).
//!
//! Record fields: the API's record object as is. The record id is `id_field`'s value (string or
//! number), `updated-at` is `updated_at_field`'s value.
//!
//! Incremental reads: with `updated_at_field` and `incremental_param` set, a run that finishes
//! leaves the newest `updated_at_field` value it read as the watermark, and the next run sends it
//! as `incremental_param` (e.g. `updated_since=2024-05-01T10:00:00Z`), skipping ids it already read
//! at exactly that time. Values compare as RFC 3339 times, numbers, or else as text.
//!
//! Errors: 401/403 → `unauthorized`; 429/5xx → transient honouring `Retry-After` or
//! `X-RateLimit-Reset`; other 4xx → `invalid-config` with the API's message.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_sdk::{
    cursor, debug,
    http::{Request, Response},
    outcome, schemars, time,
    watermark::Watermark,
    CallError, Capabilities, Context, Page, Plugin, Retry, Source, SourceRecord, StreamInfo,
};

/// Settings of one `[sources.NAME]` block using the generic JSON source.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The list endpoint, e.g. `https://api.example.com/v1/customers` (may carry a query).
    pub url: String,
    /// Name of the stream; default `records`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Dotted path to the array of records in a response, e.g. `data.items`; empty: the body
    /// itself is the array.
    #[serde(default)]
    pub records_path: String,
    /// Dotted path of the record id inside a record; default `id`.
    #[serde(default = "default_id")]
    pub id_field: String,
    /// Dotted path of the record's last-update time, e.g. `updated_at`.
    #[serde(default)]
    pub updated_at_field: Option<String>,
    /// Query parameter that asks for records updated since a time, e.g. `updated_since`; makes the
    /// stream incremental (needs `updated_at_field`).
    #[serde(default)]
    pub incremental_param: Option<String>,
    /// Header carrying the `token` secret; default `Authorization`.
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    /// Text before the token in that header; default `Bearer ` (use "" for a bare API key).
    #[serde(default = "default_auth_prefix")]
    pub auth_prefix: String,
    /// Records asked per page; default 100.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub page_size: u32,
    /// Query parameter carrying the page size, e.g. `limit` or `per_page`; none: not sent.
    #[serde(default)]
    pub page_size_param: Option<String>,
    /// How pages follow each other.
    #[serde(default)]
    pub pagination: Pagination,
    /// Extra query parameters sent with the first request of a run.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// Pagination styles.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request returns everything.
    #[default]
    None,
    /// The response carries the next cursor (`cursor_path`, e.g. `meta.next_cursor`), sent back
    /// as the query parameter `cursor_param`; a missing, null or empty cursor ends the run.
    Cursor {
        cursor_path: String,
        #[serde(default = "default_cursor_param")]
        cursor_param: String,
    },
    /// Page numbers in `page_param`, from `first_page`; a page shorter than `page_size` (or
    /// empty) ends the run.
    Page {
        #[serde(default = "default_page_param")]
        page_param: String,
        #[serde(default = "default_first_page")]
        first_page: u64,
    },
    /// RFC 8288 `Link: <URL>; rel="next"` response headers (GitHub, Shopify style).
    LinkHeader,
}

fn default_stream() -> String {
    "records".into()
}
fn default_id() -> String {
    "id".into()
}
fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_auth_prefix() -> String {
    "Bearer ".into()
}
fn default_page_size() -> u32 {
    100
}
fn default_cursor_param() -> String {
    "cursor".into()
}
fn default_page_param() -> String {
    "page".into()
}
fn default_first_page() -> u64 {
    1
}

/// Where a read stands. Serialised as the page cursor: the watermark on `updated_at_field` and
/// the page to read next.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(flatten)]
    pub mark: Watermark<Time>,
    /// The next page: the API's cursor, a page number, or the next URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An update time as the API wrote it, sent back as is and ordered by [`compare_times`]
/// (RFC 3339 by instant, numbers by value, anything else as text).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(pub String);

impl Ord for Time {
    fn cmp(&self, other: &Time) -> std::cmp::Ordering {
        compare_times(&self.0, &other.0)
    }
}

impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Time) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Time {
    fn eq(&self, other: &Time) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Time {}

struct HttpJson;

impl Plugin for HttpJson {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            // Any host: the operator grants the API's host explicitly (`allow_hosts`).
            .allowed_host("*")
            .secret(
                "token",
                "API token or key sent in `auth_header`, if the API needs one",
                false,
            )
            .max_batch_size(10_000)
            .default_rate_per_second(5.0)
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        validate(&ctx.config)?;
        let url = first_url(&ctx.config, &Cursor::default());
        let response = get(ctx, &url)?;
        check_response(&response)?;
        let body: Value = response.json()?;
        records_at(&body, &ctx.config.records_path)?;
        Ok(())
    }
}

impl Source for HttpJson {
    fn streams(ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        validate(&ctx.config)?;
        let incremental =
            ctx.config.updated_at_field.is_some() && ctx.config.incremental_param.is_some();
        Ok(vec![StreamInfo {
            name: ctx.config.stream.clone(),
            description: format!("Records listed by {}", origin(&ctx.config.url)),
            incremental,
        }])
    }

    fn read(
        ctx: &Context<Config>,
        stream: &str,
        cursor: Option<String>,
    ) -> Result<Page, CallError> {
        let config = &ctx.config;
        validate(config)?;
        if stream != config.stream {
            return Err(CallError::InvalidConfig(format!(
                "unknown stream `{stream}`; this source has `{}`",
                config.stream
            )));
        }
        let mut state: Cursor = cursor::parse(cursor.as_deref(), "http-json")?;
        let url = match (&config.pagination, &state.next) {
            (Pagination::LinkHeader, Some(next)) => {
                if origin(next) != origin(&config.url) {
                    return Err(CallError::Failed(format!(
                        "the next-page link leaves {}; refusing to follow it",
                        origin(&config.url)
                    )));
                }
                next.clone()
            }
            _ => first_url(config, &state),
        };
        let response = get(ctx, &url)?;
        check_response(&response)?;
        let body: Value = response.json()?;
        let items = records_at(&body, &config.records_path)?;
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            let id = scalar_text(lookup(item, &config.id_field)).ok_or_else(|| {
                CallError::Failed(format!("a record has no `{}` (id_field)", config.id_field))
            })?;
            let updated = config
                .updated_at_field
                .as_deref()
                .and_then(|f| scalar_text(lookup(item, f)));
            if let Some(at) = &updated {
                let at = Time(at.clone());
                if state.mark.already_read(&id, &at) {
                    continue;
                }
                state.mark.observe(&id, at);
            }
            records.push(SourceRecord {
                id,
                data: item.to_string(),
                updated_at: updated,
                events: vec![],
            });
        }
        let next = if items.is_empty() {
            None
        } else {
            match &config.pagination {
                Pagination::None => None,
                Pagination::Cursor { cursor_path, .. } => {
                    scalar_text(lookup(&body, cursor_path)).filter(|c| !c.is_empty())
                }
                Pagination::Page { first_page, .. } => {
                    let current = state
                        .next
                        .as_deref()
                        .and_then(|p| p.parse::<u64>().ok())
                        .unwrap_or(*first_page);
                    let short = config.page_size_param.is_some()
                        && (items.len() as u64) < u64::from(config.page_size);
                    (!short).then(|| (current + 1).to_string())
                }
                Pagination::LinkHeader => response
                    .header("link")
                    .and_then(next_link)
                    .map(|l| absolute(&l, &url)),
            }
        };
        debug!(
            "http-json {stream}: {} records, more: {}",
            records.len(),
            next.is_some()
        );
        let done = next.is_none();
        let next = match next {
            Some(n) => Cursor {
                next: Some(n),
                ..state
            },
            None => Cursor {
                mark: state.mark.finished(),
                next: None,
            },
        };
        Ok(Page {
            records,
            cursor: Some(cursor::text(&next)),
            done,
        })
    }
}

fn validate(config: &Config) -> Result<(), CallError> {
    if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
        return Err(CallError::InvalidConfig(format!(
            "url `{}` must start with https:// or http://",
            config.url
        )));
    }
    if config.incremental_param.is_some() && config.updated_at_field.is_none() {
        return Err(CallError::InvalidConfig(
            "incremental_param needs updated_at_field, to know the newest record read".into(),
        ));
    }
    if config.id_field.trim().is_empty() {
        return Err(CallError::InvalidConfig(
            "id_field must not be empty".into(),
        ));
    }
    Ok(())
}

/// The URL of a page built from the config (every style but a followed Link header).
fn first_url(config: &Config, cursor: &Cursor) -> String {
    let mut url = config.url.clone();
    let mut params: Vec<(String, String)> = config
        .query
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(p) = &config.page_size_param {
        params.push((p.clone(), config.page_size.to_string()));
    }
    if let (Some(param), Some(since)) = (&config.incremental_param, &cursor.mark.since) {
        params.push((param.clone(), since.0.clone()));
    }
    match &config.pagination {
        Pagination::Cursor { cursor_param, .. } => {
            if let Some(next) = &cursor.next {
                params.push((cursor_param.clone(), next.clone()));
            }
        }
        Pagination::Page {
            page_param,
            first_page,
        } => {
            let page = cursor
                .next
                .clone()
                .unwrap_or_else(|| first_page.to_string());
            params.push((page_param.clone(), page));
        }
        Pagination::None | Pagination::LinkHeader => {}
    }
    for (k, v) in params {
        url.push(if url.contains('?') { '&' } else { '?' });
        let _ = write!(url, "{}={}", encode(&k), encode(&v));
    }
    url
}

fn get(ctx: &Context<Config>, url: &str) -> Result<Response, CallError> {
    let mut request = Request::get(url).header("accept", "application/json");
    if ctx.has_secret("token") {
        request = request.header(
            &ctx.config.auth_header,
            &format!(
                "{}{}",
                ctx.config.auth_prefix,
                ctx.secret_placeholder("token")
            ),
        );
    }
    Ok(request.send()?)
}

/// `outcome::call_result`, with the wait also in the reason so the CLI shows it.
fn check_response(response: &Response) -> Result<(), CallError> {
    match outcome::call_result(response) {
        Err(CallError::Transient(Retry {
            reason,
            after_ms: Some(ms),
        })) => Err(CallError::Transient(Retry {
            reason: format!("{reason} (retry after {ms} ms)"),
            after_ms: Some(ms),
        })),
        other => other,
    }
}

/// The records array at a dotted path.
pub fn records_at<'a>(body: &'a Value, path: &str) -> Result<&'a Vec<Value>, CallError> {
    lookup(body, path).and_then(Value::as_array).ok_or_else(|| {
        CallError::Failed(if path.is_empty() {
            "the response body is not a JSON array; set records_path to where the records are"
                .into()
        } else {
            format!("the response has no array at `{path}` (records_path)")
        })
    })
}

/// The value at a dotted path (`data.items`, `items.0.id`); the whole value for an empty path.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim();
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(list) => key.parse::<usize>().ok().and_then(|i| list.get(i)),
        _ => None,
    })
}

fn scalar_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Orders two update times: as RFC 3339 instants, as numbers, or as text.
pub fn compare_times(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Some(x), Some(y)) = (time::parse_ms(a), time::parse_ms(b)) {
        return x.cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
    }
    a.cmp(b)
}

/// The target of the `rel="next"` link of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    for part in header.split(',') {
        let Some((target, params)) = part.split_once(';') else {
            continue;
        };
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            return Some(
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            );
        }
    }
    None
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?']).next().unwrap_or("");
    format!("{scheme}://{host}").to_ascii_lowercase()
}

/// Resolves a possibly relative link against the URL it came from.
fn absolute(link: &str, base: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        link.to_string()
    } else if link.starts_with('/') {
        format!("{}{link}", origin(base))
    } else {
        let dir = base.split('?').next().unwrap_or(base);
        let dir = &dir[..dir.rfind('/').map_or(dir.len(), |i| i + 1)];
        format!("{dir}{link}")
    }
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

switchyard_sdk::export_source!(HttpJson);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        let mut base = json!({"url": "https://api.example.com/v1/items?active=1"});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn paths() {
        let body = json!({"data": {"items": [{"id": 1, "meta": {"updated": "x"}}]}});
        assert_eq!(records_at(&body, "data.items").unwrap().len(), 1);
        assert_eq!(
            lookup(&body, "data.items.0.meta.updated"),
            Some(&json!("x"))
        );
        assert!(records_at(&body, "data").is_err());
        assert!(records_at(&json!([1, 2]), "").is_ok());
    }

    #[test]
    fn urls_per_pagination_style() {
        let c = config(
            json!({"page_size": 50, "page_size_param": "limit", "incremental_param": "updated_since",
            "updated_at_field": "updated_at", "pagination": {"type": "cursor", "cursor_path": "meta.next"}}),
        );
        let cur = Cursor {
            mark: Watermark {
                since: Some(Time("2024-01-01T00:00:00+01:00".into())),
                ..Watermark::default()
            },
            next: Some("a b".into()),
        };
        assert_eq!(
            first_url(&c, &cur),
            "https://api.example.com/v1/items?active=1&limit=50&updated_since=2024-01-01T00%3A00%3A00%2B01%3A00&cursor=a%20b"
        );
        let p = config(json!({"pagination": {"type": "page", "page_param": "p", "first_page": 0}}));
        assert_eq!(
            first_url(&p, &Cursor::default()),
            "https://api.example.com/v1/items?active=1&p=0"
        );
        assert_eq!(
            first_url(
                &p,
                &Cursor {
                    next: Some("3".into()),
                    ..Cursor::default()
                }
            ),
            "https://api.example.com/v1/items?active=1&p=3"
        );
        assert!(serde_json::from_value::<Config>(
            json!({"url": "https://x", "pagination": {"type": "bogus"}})
        )
        .is_err());
        assert!(
            serde_json::from_value::<Config>(json!({"url": "https://x", "unknown": 1})).is_err()
        );
    }

    #[test]
    fn links() {
        let h = r#"<https://api.example.com/items?page=3>; rel="next", <https://api.example.com/items?page=1>; rel="prev""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.example.com/items?page=3")
        );
        assert_eq!(next_link(r#"<https://a/x>; rel="last""#), None);
        assert_eq!(
            absolute("/items?page=2", "https://a.example/v1/items?page=1"),
            "https://a.example/items?page=2"
        );
        assert_eq!(
            absolute("items?page=2", "https://a.example/v1/list?page=1"),
            "https://a.example/v1/items?page=2"
        );
        assert_eq!(
            origin("https://API.example.com:8443/x?y"),
            "https://api.example.com:8443"
        );
    }

    #[test]
    fn times_compare_as_instants() {
        use std::cmp::Ordering::*;
        assert_eq!(
            compare_times("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z"),
            Equal
        );
        assert_eq!(
            compare_times("2024-01-01T10:00:00.5Z", "2024-01-01T10:00:00Z"),
            Greater
        );
        assert_eq!(compare_times("9", "10"), Less);
        assert_eq!(compare_times("b", "a"), Greater);
    }

    #[test]
    fn cursor_watermarks_order_times_as_instants() {
        let mut mark = Watermark::default();
        mark.observe("a", Time("2024-01-02T00:00:00Z".into()));
        // The same instant written with an offset counts as the same time.
        mark.observe("b", Time("2024-01-02T01:00:00+01:00".into()));
        mark.observe("c", Time("2024-01-01T23:00:00Z".into()));
        let next = mark.finished();
        assert_eq!(
            next.since.as_ref().map(|t| t.0.as_str()),
            Some("2024-01-02T00:00:00Z")
        );
        assert_eq!(next.seen, ["a", "b"]);
        assert!(next.already_read("b", &Time("2024-01-02T00:00:00.000Z".into())));
        // Stored cursors keep their keys; the time is sent back exactly as the API wrote it.
        let stored = r#"{"since":"2024-01-02T00:00:00Z","seen":["a"],"next":"3"}"#;
        let cursor: Cursor = cursor::parse(Some(stored), "http-json").unwrap();
        assert_eq!(cursor.next.as_deref(), Some("3"));
        assert_eq!(cursor::text(&cursor), stored);
        assert!(cursor::parse::<Cursor>(Some("nope"), "http-json").is_err());
    }
}
