//! Turning HTTP outcomes into record results and call errors, the same way for every plugin:
//! 2xx is ok; 408, 425, 429 and 5xx are retried (honouring `Retry-After` or
//! `X-RateLimit-Reset`); 401/403 are credential problems; any other 4xx is rejected with the
//! API's own message.

use crate::http::Response;
use crate::{CallError, RecordResult, Retry};

/// Whether a status is worth retrying.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

/// The result of one record whose fate is this response.
pub fn record_result(response: &Response) -> RecordResult {
    if response.is_success() {
        RecordResult::Ok
    } else if is_retryable_status(response.status) {
        RecordResult::Retry(retry(response))
    } else {
        RecordResult::Rejected(format!(
            "HTTP {}: {}",
            response.status,
            api_message(&response.body)
        ))
    }
}

/// The result of a call that fails as a whole on a non-2xx response (e.g. `check`).
pub fn call_result(response: &Response) -> Result<(), CallError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let message = format!("HTTP {status}: {}", api_message(&response.body));
    Err(match status {
        401 | 403 => CallError::Unauthorized(message),
        s if is_retryable_status(s) => CallError::Transient(retry(response)),
        400 | 404 | 422 => CallError::InvalidConfig(message),
        _ => CallError::Failed(message),
    })
}

/// A retry carrying the response's reason and its wait hint.
pub fn retry(response: &Response) -> Retry {
    Retry {
        reason: format!("HTTP {}: {}", response.status, api_message(&response.body)),
        after_ms: retry_after_ms(response, crate::time::now_unix()),
    }
}

/// How long the API asked us to wait, from `Retry-After` (seconds or an HTTP date) or
/// `X-RateLimit-Reset` (Unix seconds, as SendGrid and others send it), in milliseconds.
pub fn retry_after_ms(response: &Response, now_unix: u64) -> Option<u64> {
    if let Some(value) = response.header("retry-after") {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<f64>() {
            if seconds.is_finite() && seconds >= 0.0 {
                return Some((seconds * 1000.0) as u64);
            }
        }
        if let Some(at) = parse_http_date(value) {
            return Some(at.saturating_sub(now_unix) * 1000);
        }
    }
    if let Some(value) = response.header("x-ratelimit-reset") {
        if let Ok(n) = value.trim().parse::<u64>() {
            // Some APIs send a Unix time, others a number of seconds to wait.
            return Some(if n > 1_000_000_000 {
                n.saturating_sub(now_unix) * 1000
            } else {
                n * 1000
            });
        }
    }
    None
}

/// The human message inside an API error body, from the shapes APIs commonly use:
/// `{"message"}`, `{"error": "..."}`, `{"error": {"message"}}`, `{"errors": [{"message"}]}`,
/// RFC 7807 `{"title", "detail"}`. Falls back to the start of the body.
pub fn api_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        let start: String = text.trim().chars().take(300).collect();
        return if start.is_empty() {
            "(empty body)".to_string()
        } else {
            start
        };
    };
    let str_at =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|m| m.as_str()).map(str::to_string);
    if let Some(detail) = str_at(&value, "detail") {
        return match str_at(&value, "title") {
            Some(title) => format!("{title}: {detail}"),
            None => detail,
        };
    }
    if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
        let messages: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                let message = str_at(e, "message")?;
                Some(match str_at(e, "field") {
                    Some(field) if field != "null" => format!("{field}: {message}"),
                    _ => message,
                })
            })
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    if let Some(error) = value.get("error") {
        if let Some(s) = error.as_str() {
            return s.to_string();
        }
        if let Some(m) = str_at(error, "message") {
            return m;
        }
    }
    if let Some(m) = str_at(&value, "message") {
        return m;
    }
    text.chars().take(300).collect()
}

/// A one-line description of a call error, for places that need text.
pub fn describe_call_error(error: &CallError) -> String {
    match error {
        CallError::InvalidConfig(m) => format!("invalid config: {m}"),
        CallError::Unauthorized(m) => format!("unauthorized: {m}"),
        CallError::Transient(r) => format!("transient: {}", r.reason),
        CallError::Failed(m) => m.clone(),
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else {
        return None;
    };
    if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&sec) {
        return None;
    }
    let days = crate::time::days_from_civil_checked(year, month, day)?;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses_to_record_results() {
        assert!(matches!(
            record_result(&Response::new(202, &[], "")),
            RecordResult::Ok
        ));
        match record_result(&Response::new(429, &[("retry-after", "7")], "")) {
            RecordResult::Retry(r) => assert_eq!(r.after_ms, Some(7000)),
            other => panic!("{other:?}"),
        }
        match record_result(&Response::new(503, &[], "")) {
            RecordResult::Retry(r) => assert_eq!(r.after_ms, None),
            other => panic!("{other:?}"),
        }
        match record_result(&Response::new(
            400,
            &[],
            r#"{"errors":[{"field":"email","message":"invalid email"}]}"#,
        )) {
            RecordResult::Rejected(m) => assert_eq!(m, "HTTP 400: email: invalid email"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn call_errors_by_status() {
        assert!(matches!(
            call_result(&Response::new(401, &[], "{}")),
            Err(CallError::Unauthorized(_))
        ));
        assert!(matches!(
            call_result(&Response::new(500, &[], "")),
            Err(CallError::Transient(_))
        ));
        assert!(matches!(
            call_result(&Response::new(404, &[], "")),
            Err(CallError::InvalidConfig(_))
        ));
        assert!(call_result(&Response::new(200, &[], "")).is_ok());
    }

    #[test]
    fn retry_after_forms() {
        let now = 1_700_000_000;
        let date = Response::new(429, &[("Retry-After", "Tue, 14 Nov 2023 22:13:30 GMT")], "");
        assert_eq!(retry_after_ms(&date, now), Some(10_000));
        let reset = Response::new(429, &[("X-RateLimit-Reset", "1700000030")], "");
        assert_eq!(retry_after_ms(&reset, now), Some(30_000));
        let relative = Response::new(429, &[("x-ratelimit-reset", "5")], "");
        assert_eq!(retry_after_ms(&relative, now), Some(5_000));
        assert_eq!(retry_after_ms(&Response::new(429, &[], ""), now), None);
    }

    #[test]
    fn http_date_matches_rfc_example() {
        // RFC 9110's example date.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        for bad in [
            "Fri, 30 Feb 2024 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Thu, 01 Jan 1960 00:00:00 GMT",
            "Thu, 01 Jan 99999999999999 00:00:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn api_messages_from_common_shapes() {
        assert_eq!(api_message(br#"{"message":"bad"}"#), "bad");
        assert_eq!(
            api_message(br#"{"error":{"message":"Invalid parameter","code":100}}"#),
            "Invalid parameter"
        );
        assert_eq!(
            api_message(br#"{"title":"Invalid Resource","status":400,"detail":"Your merge fields were invalid."}"#),
            "Invalid Resource: Your merge fields were invalid."
        );
        assert_eq!(api_message(b"<html>oops</html>"), "<html>oops</html>");
        assert_eq!(api_message(b""), "(empty body)");
    }
}
