//! `GET /v1/projects/{writeKey}/settings`: what Segment's analytics.js 2.0 fetches from its
//! "CDN" before it sends anything, so `AnalyticsBrowser.load({ writeKey, cdnURL: HUB })` works
//! with no other option.
//!
//! analytics-next (`@segment/analytics-next`, `src/browser/index.ts` `loadCDNSettings`) reads
//! `integrations["Segment.io"]` (`apiKey`, `apiHost` as `host[:port]/v1`, `protocol`) and sends
//! events to `{protocol}://{apiHost}/{t|i|p|s|g|a}` (or `/b` when batching). Everything that
//! would make it load code or send elsewhere is left empty or off: no other integrations (no
//! destination bundles), no `remotePlugins`, no middleware or routing rules (no `tsub` chunk),
//! no legacy video plugins, and `metrics.sampleRate = 0` (its default 1 posts client metrics).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{error, ClientAddr, TrackingState};

pub(super) async fn get(
    State(state): State<TrackingState>,
    peer: ClientAddr,
    headers: HeaderMap,
    Path(write_key): Path<String>,
) -> Response {
    let Some(source) = state.write_keys.get(&write_key) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown write key: no [sources.*] has it in write_keys",
            None,
        );
    };
    if let Err(r) = state.check_origin(source, &headers) {
        return r;
    }
    let trusted = peer.0.is_some_and(|p| state.proxies.contains(p.ip()));
    let forwarded = |name: &str| {
        trusted
            .then(|| headers.get(name)?.to_str().ok())
            .flatten()
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let host = forwarded("x-forwarded-host").or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let Some(host) = host else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request has no Host header to tell the browser where to send events",
            None,
        );
    };
    let protocol = forwarded("x-forwarded-proto")
        .filter(|p| p == "https" || p == "http")
        .unwrap_or_else(|| "http".to_string());
    let api_host = format!("{host}/v1");
    Json(json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": false,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {},
        "remotePlugins": [],
        "enabledMiddleware": {},
        "middlewareSettings": {},
        "legacyVideoPluginsEnabled": false,
        "analyticsNextEnabled": true,
        "edgeFunction": {},
        "metrics": {"sampleRate": 0, "host": api_host},
    }))
    .into_response()
}
