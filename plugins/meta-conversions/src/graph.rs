//! Graph API answers of the Conversions API: the error object, what each error means for the
//! events of a request, and the wait Meta asks for when it throttles (error codes, not 429).

use serde::Deserialize;
use switchyard_sdk::http::Response;
use switchyard_sdk::{outcome, serde_json, Retry};

/// Graph's error object: `{"error": {"message", "type", "code", "error_subcode", ...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub error_subcode: Option<i64>,
    #[serde(default)]
    pub error_user_title: Option<String>,
    #[serde(default)]
    pub error_user_msg: Option<String>,
    #[serde(default)]
    pub is_transient: Option<bool>,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    error: GraphError,
}

impl GraphError {
    /// The error in a response body, if it carries Graph's error object.
    pub fn parse(body: &[u8]) -> Option<GraphError> {
        serde_json::from_slice::<Envelope>(body)
            .ok()
            .map(|e| e.error)
    }

    /// `Meta error 100/2804003 (OAuthException): <message> (<title>: <user message>) [fbtrace_id X]`
    pub fn describe(&self) -> String {
        let mut s = String::from("Meta error");
        if let Some(code) = self.code {
            s.push_str(&format!(" {code}"));
            if let Some(sub) = self.error_subcode {
                s.push_str(&format!("/{sub}"));
            }
        }
        if let Some(kind) = &self.kind {
            s.push_str(&format!(" ({kind})"));
        }
        s.push_str(": ");
        s.push_str(if self.message.is_empty() {
            "(no message)"
        } else {
            &self.message
        });
        match (&self.error_user_title, &self.error_user_msg) {
            (Some(t), Some(m)) => s.push_str(&format!(" ({t}: {m})")),
            (None, Some(m)) | (Some(m), None) => s.push_str(&format!(" ({m})")),
            _ => {}
        }
        if let Some(trace) = &self.fbtrace_id {
            s.push_str(&format!(" [fbtrace_id {trace}]"));
        }
        s
    }
}

/// What a refused `/events` request means for the events it carried.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The access token is missing, invalid, expired or lacks a permission on the dataset.
    Unauthorized(String),
    /// Wrong for every event: the pixel/dataset id, a retired API version.
    InvalidConfig(String),
    /// Throttled or transient: retry the events, after `after_ms` when Meta said.
    Retry(Retry),
    /// Meta refused the request's content (code 100, invalid parameter). The Conversions API
    /// refuses the whole request for one bad event, so this may be about one event only.
    Rejected(String),
}

/// Codes Meta uses for rate limits: application (4), user (17), page (32), ad account (613),
/// the business-use-case limits (80000-80014 range; 80004 is ads management) and the
/// application limit 341.
pub const RATE_LIMIT_CODES: [i64; 7] = [4, 17, 32, 341, 613, 80003, 80004];

/// Classifies a non-2xx response (or a 2xx carrying an error object).
pub fn classify(response: &Response, now_unix: u64) -> Failure {
    let Some(error) = GraphError::parse(&response.body) else {
        let message = format!(
            "HTTP {}: {}",
            response.status,
            outcome::api_message(&response.body)
        );
        return match response.status {
            401 | 403 => Failure::Unauthorized(message),
            s if outcome::is_retryable_status(s) => Failure::Retry(Retry {
                reason: message,
                after_ms: wait_ms(response, now_unix),
            }),
            _ => Failure::Rejected(message),
        };
    };
    let text = error.describe();
    let code = error.code.unwrap_or(0);
    let sub = error.error_subcode.unwrap_or(0);
    if RATE_LIMIT_CODES.contains(&code) {
        return Failure::Retry(Retry {
            reason: format!("rate limited: {text}"),
            after_ms: wait_ms(response, now_unix),
        });
    }
    // "(#2635) You are calling a deprecated version of the Ads API": every request fails the
    // same way until the configuration moves to a served version.
    if code == 2635 {
        return Failure::InvalidConfig(format!(
            "{text}; set api_version to a version Meta still serves (the plugin's default is {})",
            crate::DEFAULT_VERSION
        ));
    }
    // Token problems: 190 invalid/expired (subcodes 458-467), 102 session, 104 missing token,
    // 2500 no active token; permissions: 3 (capability), 10, 200-299.
    if matches!(code, 3 | 10 | 102 | 104 | 190 | 2500) || (200..300).contains(&code) {
        return Failure::Unauthorized(text);
    }
    // Transient: 1 unknown, 2 service, 368 temporarily blocked, `is_transient`, HTTP 5xx.
    if matches!(code, 1 | 2 | 368) || error.is_transient == Some(true) || response.status >= 500 {
        return Failure::Retry(Retry {
            reason: text,
            after_ms: wait_ms(response, now_unix),
        });
    }
    // The dataset (pixel) itself: missing, or the token cannot reach it (100/33, 803).
    if (code == 100 && sub == 33) || code == 803 {
        return Failure::InvalidConfig(format!(
            "{text}; check pixel_id and that the token's system user has the dataset assigned"
        ));
    }
    Failure::Rejected(text)
}

/// How long Meta asks us to wait: the largest `estimated_time_to_regain_access` (minutes) in
/// `X-Business-Use-Case-Usage`, else `Retry-After`; None lets the hub back off.
pub fn wait_ms(response: &Response, now_unix: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    if let Some(header) = response.header("x-business-use-case-usage") {
        if let Ok(serde_json::Value::Object(by_id)) = serde_json::from_str(header) {
            for entries in by_id.values() {
                for entry in entries.as_array().into_iter().flatten() {
                    if let Some(minutes) = entry
                        .get("estimated_time_to_regain_access")
                        .and_then(serde_json::Value::as_u64)
                        .filter(|m| *m > 0)
                    {
                        best = Some(best.map_or(minutes * 60_000, |b| b.max(minutes * 60_000)));
                    }
                }
            }
        }
    }
    best.or_else(|| outcome::retry_after_ms(response, now_unix))
}

/// A successful `/events` answer: `{"events_received": N, "messages": [], "fbtrace_id": "..."}`.
#[derive(Debug, Default, Deserialize)]
pub struct EventsResponse {
    #[serde(default)]
    pub events_received: Option<u64>,
    #[serde(default)]
    pub messages: Vec<serde_json::Value>,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(status: u16, body: &str) -> Failure {
        classify(&Response::new(status, &[], body), 0)
    }

    #[test]
    fn per_event_refusals_are_rejections_naming_meta_title() {
        // The refusal of an event older than 7 days, as Meta answers it (subcode 2804003).
        let f = e(
            400,
            r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804003,"is_transient":false,"error_user_title":"Event Timestamp Too Old","error_user_msg":"The timestamp for this event is too far in the past.","fbtrace_id":"AbC"}}"#,
        );
        match f {
            Failure::Rejected(m) => assert_eq!(
                m,
                "Meta error 100/2804003 (OAuthException): Invalid parameter (Event Timestamp Too Old: The timestamp for this event is too far in the past.) [fbtrace_id AbC]"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_datasets_versions_rate_limits_and_transients() {
        assert!(matches!(
            e(
                400,
                r#"{"error":{"message":"Invalid OAuth access token","type":"OAuthException","code":190}}"#
            ),
            Failure::Unauthorized(_)
        ));
        assert!(matches!(
            e(
                403,
                r#"{"error":{"message":"Permissions error","code":200}}"#
            ),
            Failure::Unauthorized(_)
        ));
        assert!(matches!(
            e(400, r#"{"error":{"message":"Unsupported post request. Object with ID '1' does not exist","code":100,"error_subcode":33}}"#),
            Failure::InvalidConfig(m) if m.contains("pixel_id")
        ));
        assert!(matches!(
            e(400, r#"{"error":{"message":"(#2635) You are calling a deprecated version","code":2635}}"#),
            Failure::InvalidConfig(m) if m.contains("api_version")
        ));
        for code in [4, 17, 32, 341, 613, 80004] {
            let body = format!(r#"{{"error":{{"message":"limit","code":{code}}}}}"#);
            assert!(matches!(e(400, &body), Failure::Retry(_)), "{code}");
        }
        let r = Response::new(
            400,
            &[(
                "x-business-use-case-usage",
                r#"{"1":[{"type":"ads_management","estimated_time_to_regain_access":2}]}"#,
            )],
            r#"{"error":{"message":"too many","code":80004}}"#,
        );
        assert!(matches!(
            classify(&r, 0),
            Failure::Retry(Retry {
                after_ms: Some(120_000),
                ..
            })
        ));
        assert!(matches!(
            e(
                500,
                r#"{"error":{"message":"An unknown error occurred","code":1,"is_transient":true}}"#
            ),
            Failure::Retry(_)
        ));
        assert!(matches!(
            e(503, "upstream"),
            Failure::Retry(Retry { after_ms: None, .. })
        ));
        assert!(matches!(e(401, "no"), Failure::Unauthorized(_)));
    }
}
