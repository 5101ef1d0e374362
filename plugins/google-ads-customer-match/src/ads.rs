//! Google Ads REST errors: the `google.rpc.Status` envelope with `GoogleAdsFailure` details,
//! partial-failure errors mapped back to operation indexes, and what each error means.

use std::collections::BTreeMap;

use switchyard_sdk::http::Response;
use switchyard_sdk::{outcome, serde_json, Retry};

use serde_json::Value;

/// One `GoogleAdsError`: its error code (`{"quotaError": "RESOURCE_EXHAUSTED"}`), message,
/// the operation index it points at, and a quota retry delay when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct AdsError {
    pub code: String,
    pub message: String,
    pub operation: Option<usize>,
    pub retry_delay_ms: Option<u64>,
}

impl AdsError {
    pub fn describe(&self) -> String {
        if self.code.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.code, self.message)
        }
    }
}

/// The errors inside a status object's `details` (GoogleAdsFailure entries).
pub fn failure_errors(status: &Value) -> Vec<AdsError> {
    let mut out = Vec::new();
    for detail in status
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for e in detail
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let code = e
                .get("errorCode")
                .and_then(Value::as_object)
                .and_then(|m| m.iter().next())
                .map(|(k, v)| format!("{k}.{}", v.as_str().unwrap_or("?")))
                .unwrap_or_default();
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let operation = e
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .and_then(|path| {
                    path.iter()
                        .find(|p| p.get("fieldName").and_then(Value::as_str) == Some("operations"))
                })
                .and_then(|p| p.get("index"))
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            let retry_delay_ms = e
                .pointer("/details/quotaErrorDetails/retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_duration_ms);
            out.push(AdsError {
                code,
                message,
                operation,
                retry_delay_ms,
            });
        }
    }
    out
}

/// Partial-failure errors of an `addOperations` answer, per operation index (errors without an
/// index are under `None`).
pub fn partial_failures(body: &Value) -> BTreeMap<Option<usize>, Vec<AdsError>> {
    let mut by_op: BTreeMap<Option<usize>, Vec<AdsError>> = BTreeMap::new();
    if let Some(status) = body.get("partialFailureError") {
        let code = status.get("code").and_then(Value::as_i64).unwrap_or(0);
        if code != 0 {
            let errors = failure_errors(status);
            if errors.is_empty() {
                let message = status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("partial failure")
                    .to_string();
                by_op.entry(None).or_default().push(AdsError {
                    code: String::new(),
                    message,
                    operation: None,
                    retry_delay_ms: None,
                });
            }
            for e in errors {
                by_op.entry(e.operation).or_default().push(e);
            }
        }
    }
    by_op
}

/// `"30s"`, `"1.5s"` (protobuf Duration JSON) → milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

/// Whether an error code says the developer token / customer may not upload Customer Match
/// data through the Google Ads API any more (since 2026-04-01 only allowlisted tokens may:
/// https://developers.google.com/ads/blog/posts/2026/03/changes-to-customer-match-support-in).
pub fn is_not_allowlisted(code: &str) -> bool {
    matches!(
        code,
        "notAllowlistedError.CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"
            | "userDataError.OPERATIONS_FOR_CUSTOMER_MATCH_NOT_ALLOWED"
    )
}

/// What to tell the operator when Google refuses Customer Match through the Google Ads API.
pub fn not_allowlisted_message(google: &str) -> String {
    format!(
        "Google no longer accepts Customer Match uploads through the Google Ads API from this developer token ({google}); use the Data Manager API: set api = \"data_manager\" (the default) with an OAuth token of the https://www.googleapis.com/auth/datamanager scope"
    )
}

/// What a failed call means.
#[derive(Debug, Clone)]
pub enum Failure {
    Unauthorized(String),
    InvalidConfig(String),
    Retry(Retry),
    /// Refused for a reason tied to operations: per operation index (None: all of them).
    Rejected(BTreeMap<Option<usize>, Vec<AdsError>>, String),
}

/// Classifies a non-2xx Google Ads response.
pub fn classify(response: &Response, now_unix: u64) -> Failure {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let status_obj = body.get("error").cloned().unwrap_or(Value::Null);
    let status_name = status_obj
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let errors = failure_errors(&status_obj);
    let top = status_obj
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| outcome::api_message(&response.body));
    let detail: Vec<String> = errors.iter().map(AdsError::describe).collect();
    let request_id = status_obj
        .pointer("/details/0/requestId")
        .and_then(Value::as_str)
        .or_else(|| response.header("request-id"));
    let mut text = format!("HTTP {}", response.status);
    if !status_name.is_empty() {
        text.push_str(&format!(" {status_name}"));
    }
    text.push_str(&format!(": {top}"));
    if !detail.is_empty() {
        text.push_str(&format!(" ({})", detail.join("; ")));
    }
    if let Some(id) = request_id {
        text.push_str(&format!(" [request-id {id}]"));
    }

    let has = |prefix: &str| errors.iter().any(|e| e.code.starts_with(prefix));
    // Before the 403 → unauthorized rule: the credentials are fine, the API path is closed.
    if errors.iter().any(|e| is_not_allowlisted(&e.code)) {
        return Failure::InvalidConfig(not_allowlisted_message(&text));
    }
    let quota = status_name == "RESOURCE_EXHAUSTED" || response.status == 429 || has("quotaError");
    if quota {
        let delay = errors
            .iter()
            .filter_map(|e| e.retry_delay_ms)
            .max()
            .or_else(|| outcome::retry_after_ms(response, now_unix));
        return Failure::Retry(Retry {
            reason: text,
            after_ms: delay,
        });
    }
    if response.status == 401
        || response.status == 403
        || matches!(
            status_name.as_str(),
            "UNAUTHENTICATED" | "PERMISSION_DENIED"
        )
        || has("authenticationError")
        || has("authorizationError")
    {
        return Failure::Unauthorized(text);
    }
    if outcome::is_retryable_status(response.status)
        || matches!(
            status_name.as_str(),
            "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED"
        )
        || errors.iter().any(|e| {
            e.code == "databaseError.CONCURRENT_MODIFICATION" || e.code.starts_with("internalError")
        })
    {
        return Failure::Retry(Retry {
            reason: text,
            after_ms: outcome::retry_after_ms(response, now_unix),
        });
    }
    let config_error = response.status == 404
        || errors.iter().any(|e| {
            e.code.starts_with("userListError")
                || e.code.starts_with("headerError")
                || e.code.starts_with("customerError")
                || matches!(
                    e.code.as_str(),
                    "offlineUserDataJobError.INVALID_USER_LIST_ID"
                        | "offlineUserDataJobError.INVALID_USER_LIST_TYPE"
                        | "offlineUserDataJobError.NOT_ON_ALLOWLIST_FOR_USER_ID"
                        | "offlineUserDataJobError.CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"
                        | "requestError.INVALID_CUSTOMER_ID"
                )
        });
    if config_error {
        return Failure::InvalidConfig(text);
    }
    let mut by_op: BTreeMap<Option<usize>, Vec<AdsError>> = BTreeMap::new();
    for e in errors {
        by_op.entry(e.operation).or_default().push(e);
    }
    Failure::Rejected(by_op, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: Value) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.to_string().into_bytes(),
        }
    }

    fn failure(status: u16, name: &str, code: Value, extra: Value) -> Value {
        let mut e = serde_json::json!({"errorCode": code, "message": "m"});
        if let (Some(obj), Value::Object(x)) = (e.as_object_mut(), extra) {
            obj.extend(x);
        }
        serde_json::json!({"error": {"code": status, "message": "top", "status": name,
            "details": [{"@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                         "errors": [e], "requestId": "req-1"}]}})
    }

    #[test]
    fn quota_errors_retry_after_the_retry_delay() {
        let body = failure(
            429,
            "RESOURCE_EXHAUSTED",
            serde_json::json!({"quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED"}),
            serde_json::json!({"details": {"quotaErrorDetails": {"rateScope": "DEVELOPER", "rateName": "Requests per developer per day", "retryDelay": "30s"}}}),
        );
        match classify(&resp(429, body), 0) {
            Failure::Retry(r) => {
                assert_eq!(r.after_ms, Some(30_000));
                assert!(
                    r.reason
                        .contains("quotaError.RESOURCE_TEMPORARILY_EXHAUSTED"),
                    "{}",
                    r.reason
                );
                assert!(r.reason.contains("request-id req-1"), "{}", r.reason);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_duration_ms("1.5s"), Some(1500));
        assert_eq!(parse_duration_ms("x"), None);
    }

    #[test]
    fn auth_config_and_operation_errors() {
        let unauth = failure(
            401,
            "UNAUTHENTICATED",
            serde_json::json!({"authenticationError": "OAUTH_TOKEN_INVALID"}),
            Value::Null,
        );
        assert!(matches!(
            classify(&resp(401, unauth), 0),
            Failure::Unauthorized(_)
        ));
        let denied = failure(
            403,
            "PERMISSION_DENIED",
            serde_json::json!({"authorizationError": "USER_PERMISSION_DENIED"}),
            Value::Null,
        );
        assert!(
            matches!(classify(&resp(403, denied), 0), Failure::Unauthorized(m) if m.contains("USER_PERMISSION_DENIED"))
        );
        let list = failure(
            400,
            "INVALID_ARGUMENT",
            serde_json::json!({"offlineUserDataJobError": "INVALID_USER_LIST_ID"}),
            Value::Null,
        );
        assert!(matches!(
            classify(&resp(400, list), 0),
            Failure::InvalidConfig(_)
        ));
        let conc = failure(
            400,
            "INVALID_ARGUMENT",
            serde_json::json!({"databaseError": "CONCURRENT_MODIFICATION"}),
            Value::Null,
        );
        assert!(matches!(classify(&resp(400, conc), 0), Failure::Retry(_)));
        let op = failure(
            400,
            "INVALID_ARGUMENT",
            serde_json::json!({"offlineUserDataJobError": "TOO_MANY_USER_IDENTIFIERS"}),
            serde_json::json!({"location": {"fieldPathElements": [{"fieldName": "operations", "index": 3}, {"fieldName": "create"}]}}),
        );
        match classify(&resp(400, op), 0) {
            Failure::Rejected(by_op, text) => {
                assert_eq!(
                    by_op[&Some(3)][0].code,
                    "offlineUserDataJobError.TOO_MANY_USER_IDENTIFIERS"
                );
                assert!(text.contains("INVALID_ARGUMENT"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&resp(503, Value::Null), 0),
            Failure::Retry(_)
        ));
    }

    /// G1: the errors of a developer token Google no longer allowlists for Customer Match are
    /// a configuration problem naming the Data Manager API, whatever the HTTP status.
    #[test]
    fn not_allowlisted_is_invalid_config_naming_data_manager() {
        for (status, name, code) in [
            (
                403,
                "PERMISSION_DENIED",
                serde_json::json!({"notAllowlistedError": "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"}),
            ),
            (
                400,
                "INVALID_ARGUMENT",
                serde_json::json!({"userDataError": "OPERATIONS_FOR_CUSTOMER_MATCH_NOT_ALLOWED"}),
            ),
        ] {
            match classify(&resp(status, failure(status, name, code, Value::Null)), 0) {
                Failure::InvalidConfig(m) => {
                    assert!(
                        m.contains("Data Manager API") && m.contains("api = \"data_manager\""),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn partial_failures_by_operation_index() {
        let body = serde_json::json!({"partialFailureError": {"code": 3, "message": "Multiple errors in ‘details’.",
            "details": [{"@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
              "errors": [
                {"errorCode": {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, "message": "The SHA256 encoded value is malformed.",
                 "location": {"fieldPathElements": [{"fieldName": "operations", "index": 1}, {"fieldName": "create"},
                   {"fieldName": "user_identifiers", "index": 0}, {"fieldName": "hashed_email"}]}},
                {"errorCode": {"fieldError": "REQUIRED"}, "message": "The required field was not present.",
                 "location": {"fieldPathElements": [{"fieldName": "operations", "index": 1}]}},
                {"errorCode": {"offlineUserDataJobError": "INVALID_COUNTRY_CODE"}, "message": "bad country",
                 "location": {"fieldPathElements": [{"fieldName": "operations", "index": 4}]}}]}]}});
        let by_op = partial_failures(&body);
        assert_eq!(by_op[&Some(1)].len(), 2);
        assert_eq!(
            by_op[&Some(1)][0].describe(),
            "offlineUserDataJobError.INVALID_SHA256_FORMAT: The SHA256 encoded value is malformed."
        );
        assert_eq!(by_op[&Some(4)].len(), 1);
        assert!(partial_failures(&serde_json::json!({})).is_empty());
        assert!(
            partial_failures(&serde_json::json!({"partialFailureError": {"code": 0}})).is_empty()
        );
    }
}
