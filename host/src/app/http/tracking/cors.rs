//! Which browser pages may send a source's events, and the CORS answers that tell browsers.
//!
//! Origins are set per source (`[sources.NAME] allowed_origins`), but a CORS preflight
//! (`OPTIONS`) carries no credentials: the browser strips `Authorization`, so the preflight
//! cannot tell which source the request is for. So:
//!
//! - a preflight is allowed for the union of every source's origins (it only lets the browser
//!   send the real request; nothing is stored by it);
//! - the real request names its source (the write key, Basic auth or `writeKey` in the body),
//!   and is checked against that source's own list: an origin the source does not allow is
//!   refused with 403 and nothing of it is stored, and its answer carries no
//!   `Access-Control-Allow-Origin` so the page cannot read it either;
//! - `text/plain` and `sendBeacon` requests are "simple" and get no preflight at all, so the
//!   check on the real request is what keeps a disallowed page's data out, not CORS.
//!
//! The CORS headers themselves come from `tower-http`'s [`CorsLayer`]; [`OriginPolicy`] only
//! answers "is this origin allowed for this request".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, request::Parts, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::web::AllowedOrigins;

/// The browser origins of every source, and which write key belongs to which source.
#[derive(Debug, Default)]
pub struct OriginPolicy {
    /// Source name → its origins.
    sources: HashMap<String, AllowedOrigins>,
    /// Write key → source name.
    write_keys: Arc<HashMap<String, String>>,
}

impl OriginPolicy {
    pub fn new(
        sources: HashMap<String, AllowedOrigins>,
        write_keys: Arc<HashMap<String, String>>,
    ) -> OriginPolicy {
        OriginPolicy {
            sources,
            write_keys,
        }
    }

    /// Whether `origin` may send events of `source`.
    pub fn allows(&self, source: &str, origin: &str) -> bool {
        self.sources.get(source).is_some_and(|o| o.allows(origin))
    }

    /// Whether any source allows `origin` (what a preflight can know).
    pub fn allows_any_source(&self, origin: &str) -> bool {
        self.sources.values().any(|o| o.allows(origin))
    }

    /// What the CORS layer asks: a request that names a known write key (Basic auth, or the
    /// settings path) is answered for that source; anything else, preflights included, for the
    /// union of all sources.
    fn allows_request(&self, origin: &HeaderValue, parts: &Parts) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let key = settings_key(parts.uri.path())
            .map(str::to_string)
            .or_else(|| {
                (parts.method != Method::OPTIONS)
                    .then(|| super::basic_auth_user(&parts.headers).ok().flatten())
                    .flatten()
            });
        match key.as_deref().and_then(|k| self.write_keys.get(k)) {
            Some(source) => self.allows(source, origin),
            None => self.allows_any_source(origin),
        }
    }

    /// The CORS layer for the tracking routes: methods GET and POST; request headers the
    /// official SDKs send (`Authorization`, `Content-Type`, `Content-Encoding`, RudderStack's
    /// `AnonymousId`, `SentAt` and `Rsa-*` retry headers, Segment's `X-Retry-Count`); `Retry-After` readable by the page; a day's
    /// preflight cache (browsers cap it lower); never credentials (cookies are not needed: the
    /// write key is the credential).
    pub fn layer(self: Arc<Self>) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin, parts| {
                self.allows_request(origin, parts)
            }))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                HeaderName::from_static("anonymousid"),
                HeaderName::from_static("x-retry-count"),
                // RudderStack JS v3's XhrQueue (@rudderstack/analytics-js 3.34, found by the
                // browser test: without them its preflight fails).
                HeaderName::from_static("sentat"),
                HeaderName::from_static("rsa-recovered"),
                HeaderName::from_static("rsa-retry-attempt"),
                HeaderName::from_static("rsa-retry-reason"),
                HeaderName::from_static("rsa-since-first-attempt"),
                HeaderName::from_static("rsa-since-last-attempt"),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(24 * 3600))
    }
}

/// The write key of `/v1/projects/{writeKey}/settings`.
pub fn settings_key(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/projects/")?
        .strip_suffix("/settings")
        .filter(|k| !k.is_empty() && !k.contains('/'))
}
