//! Meta Graph API responses: the error object, what each error code means for a batch, and the
//! wait Meta asks for when it throttles (it signals rate limits with error codes, not HTTP 429).

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

    /// `Meta error 100/33: <message> (<user message>) [fbtrace_id X]`
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
            (None, Some(m)) => s.push_str(&format!(" ({m})")),
            _ => {}
        }
        if let Some(trace) = &self.fbtrace_id {
            s.push_str(&format!(" [fbtrace_id {trace}]"));
        }
        s
    }
}

/// What a failed Graph call means for the records it carried.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The access token is missing, invalid, expired or lacks a permission.
    Unauthorized(String),
    /// The audience is wrong for every record (missing, deleted, not shared, flagged).
    InvalidConfig(String),
    /// Throttled or transient: retry the records, after `after_ms` when Meta said.
    Retry(Retry),
    /// The request itself was refused (invalid parameter): reject the records.
    Rejected(String),
}

/// Codes Meta uses for rate limits: application (4), user (17), page (32), ad account (613),
/// and the business-use-case limits of custom audiences and ads management (80003, 80004).
pub const RATE_LIMIT_CODES: [i64; 6] = [4, 17, 32, 613, 80003, 80004];

/// Classifies a non-2xx response (or a 2xx carrying an error object).
pub fn classify(response: &Response, now_unix: u64) -> Failure {
    let Some(error) = GraphError::parse(&response.body) else {
        // No Graph error object: fall back on the HTTP status.
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
    // A retired API version: "(#2635) You are calling a deprecated version of the Ads API.
    // Please update to the latest version: vXX.0." (Meta blog "Upcoming change in Marketing API
    // version deprecation", 2024-04-16). Every request fails the same way until the config moves.
    if code == 2635 {
        return Failure::InvalidConfig(format!(
            "{text}; set api_version to a version Meta still serves (the plugin's default is {})",
            crate::DEFAULT_VERSION
        ));
    }
    // Custom Audience terms not accepted: "(#2655)/(#2663) Terms of service has not been
    // accepted. To accept, go to https://www.facebook.com/customaudiences/app/tos/?act=..."
    // (facebook-php-business-sdk#43, facebook-nodejs-business-sdk#26), or a permission error
    // 200 with subcode 1870090 on custom-audience writes. No record can go through until the
    // terms are accepted: a config problem, not a rejection of these records.
    if matches!(code, 2655 | 2663) || (code == 200 && sub == 1870090) {
        return Failure::InvalidConfig(format!(
            "{text}; accept Meta's Custom Audience terms for the ad account (https://business.facebook.com/ads/manage/customaudiences/tos/) with the user that owns the token"
        ));
    }
    // Token problems: 190 invalid/expired (subcodes 458-467), 102 session, 104 missing token,
    // 2500 no active token; permissions: 10, 200-299 (294 needs ads_management).
    if matches!(code, 102 | 104 | 190 | 2500 | 10) || (200..300).contains(&code) {
        return Failure::Unauthorized(text);
    }
    if matches!(code, 1 | 2) || error.is_transient == Some(true) || response.status >= 500 {
        return Failure::Retry(Retry {
            reason: text,
            after_ms: wait_ms(response, now_unix),
        });
    }
    // The audience itself: missing or inaccessible (100/33), deleted, not shared with the ad
    // account, or flagged for integrity restrictions (operation_status 471).
    if (code == 100 && matches!(sub, 33 | 1713230))
        || matches!(code, 803 | 1487301 | 1487366)
        || matches!(sub, 1487301 | 1487366)
    {
        return Failure::InvalidConfig(text);
    }
    Failure::Rejected(text)
}

/// How long Meta asks us to wait: the largest `estimated_time_to_regain_access` (minutes) in
/// `X-Business-Use-Case-Usage`, `reset_time_duration` (seconds) in `X-Ad-Account-Usage`, or a
/// `Retry-After`; None lets the hub back off.
pub fn wait_ms(response: &Response, now_unix: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    let take = |best: &mut Option<u64>, ms: u64| {
        if ms > 0 {
            *best = Some(best.map_or(ms, |b| b.max(ms)));
        }
    };
    if let Some(header) = response.header("x-business-use-case-usage") {
        if let Ok(serde_json::Value::Object(by_id)) = serde_json::from_str(header) {
            for entries in by_id.values() {
                for entry in entries.as_array().into_iter().flatten() {
                    if let Some(minutes) = entry
                        .get("estimated_time_to_regain_access")
                        .and_then(serde_json::Value::as_u64)
                    {
                        take(&mut best, minutes * 60_000);
                    }
                }
            }
        }
    }
    if let Some(header) = response.header("x-ad-account-usage") {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(header) {
            if let Some(seconds) = value
                .get("reset_time_duration")
                .and_then(serde_json::Value::as_u64)
            {
                take(&mut best, seconds * 1000);
            }
        }
    }
    if best.is_none() {
        if let Some(ms) = outcome::retry_after_ms(response, now_unix) {
            take(&mut best, ms);
        }
    }
    best
}

/// A successful `/users` answer.
#[derive(Debug, Default, Deserialize)]
pub struct UsersResponse {
    #[serde(default)]
    pub num_received: Option<u64>,
    #[serde(default)]
    pub num_invalid_entries: Option<u64>,
    /// Invalid entries Meta quotes back, each with the reason.
    #[serde(default)]
    pub invalid_entry_samples: Option<serde_json::Value>,
}

impl UsersResponse {
    /// (entry, reason) pairs from `invalid_entry_samples` (a map; an array of strings is also
    /// accepted).
    pub fn samples(&self) -> Vec<(String, String)> {
        match &self.invalid_entry_samples {
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let reason = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), reason)
                })
                .collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| (s.to_string(), "invalid entry".to_string()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_codes_retry_with_the_regain_time() {
        let r = Response::new(
            400,
            &[(
                "x-business-use-case-usage",
                r#"{"123":[{"type":"custom_audience","call_count":100,"total_cputime":20,"total_time":20,"estimated_time_to_regain_access":3}]}"#,
            )],
            r#"{"error":{"message":"There have been too many calls to this ad-account.","type":"OAuthException","code":80003,"fbtrace_id":"Ab1"}}"#,
        );
        match classify(&r, 0) {
            Failure::Retry(retry) => {
                assert_eq!(retry.after_ms, Some(180_000));
                assert!(retry.reason.contains("80003"), "{}", retry.reason);
                assert!(retry.reason.contains("fbtrace_id Ab1"), "{}", retry.reason);
            }
            other => panic!("{other:?}"),
        }
        for code in [4, 17, 613] {
            let body = format!(r#"{{"error":{{"message":"limit","code":{code}}}}}"#);
            assert!(matches!(
                classify(&Response::new(403, &[], &body), 0),
                Failure::Retry(Retry { after_ms: None, .. })
            ));
        }
        let r = Response::new(
            400,
            &[(
                "x-ad-account-usage",
                r#"{"acc_id_util_pct":100,"reset_time_duration":42}"#,
            )],
            r#"{"error":{"message":"too many calls","code":613,"error_subcode":1487742}}"#,
        );
        assert!(matches!(
            classify(&r, 0),
            Failure::Retry(Retry {
                after_ms: Some(42_000),
                ..
            })
        ));
    }

    #[test]
    fn token_permission_audience_and_parameter_errors() {
        let e = |body: &str| classify(&Response::new(400, &[], body), 0);
        assert!(matches!(
            e(
                r#"{"error":{"message":"Invalid OAuth access token","type":"OAuthException","code":190}}"#
            ),
            Failure::Unauthorized(_)
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"needs ads_management","code":294}}"#),
            Failure::Unauthorized(_)
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"Object does not exist","code":100,"error_subcode":33}}"#),
            Failure::InvalidConfig(_)
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"Invalid parameter","code":100,"error_subcode":1713230,"error_user_title":"Audience Upload Blocked","error_user_msg":"resolve restrictions"}}"#),
            Failure::InvalidConfig(m) if m.contains("Audience Upload Blocked: resolve restrictions")
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"Unknown error","code":2,"is_transient":true}}"#),
            Failure::Retry(_)
        ));
        assert!(matches!(
            e(r#"{"error":{"message":"Invalid parameter","code":100,"fbtrace_id":"X"}}"#),
            Failure::Rejected(m) if m == "Meta error 100: Invalid parameter [fbtrace_id X]"
        ));
        assert!(matches!(
            classify(&Response::new(503, &[("retry-after", "5")], "oops"), 0),
            Failure::Retry(Retry {
                after_ms: Some(5000),
                ..
            })
        ));
    }

    /// M2: unaccepted terms and a retired version are the configuration's problem: the call
    /// fails instead of every record being dead-lettered.
    #[test]
    fn terms_and_retired_versions_are_config_errors() {
        let e = |body: &str| classify(&Response::new(400, &[], body), 0);
        for body in [
            r#"{"error":{"message":"(#2655) Terms of service has not been accepted","type":"OAuthException","code":2655}}"#,
            r#"{"error":{"message":"(#2663) Terms of service has not been accepted. To accept, go to https://www.facebook.com/customaudiences/app/tos/?act=1","type":"OAuthException","code":2663}}"#,
            r#"{"error":{"message":"(#200) Permissions error","code":200,"error_subcode":1870090}}"#,
        ] {
            assert!(
                matches!(e(body), Failure::InvalidConfig(ref m) if m.contains("Custom Audience terms")),
                "{body}"
            );
        }
        assert!(matches!(
            e(r#"{"error":{"message":"(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: v26.0.","type":"OAuthException","code":2635}}"#),
            Failure::InvalidConfig(m) if m.contains("api_version")
        ));
    }

    #[test]
    fn invalid_entry_samples_shapes() {
        let r: UsersResponse = serde_json::from_str(
            r#"{"audience_id":"1","num_received":2,"num_invalid_entries":1,"invalid_entry_samples":{"abc":"Invalid hash"}}"#,
        )
        .unwrap();
        assert_eq!(r.samples(), vec![("abc".into(), "Invalid hash".into())]);
        let r: UsersResponse = serde_json::from_str(r#"{"invalid_entry_samples":["x"]}"#).unwrap();
        assert_eq!(r.samples().len(), 1);
        let r: UsersResponse = serde_json::from_str(r#"{"num_received":1}"#).unwrap();
        assert!(r.samples().is_empty());
    }
}
