//! Slack destination: posts one message per record to a Slack incoming webhook.
//!
//! Each message's text is rendered from the operator's template: `{{field}}` is replaced with
//! the record's field of that name (`{{properties.plan}}` reaches into objects, `{{name|someone}}`
//! gives a fallback for a missing or empty field). Values are escaped for Slack (`&`, `<`, `>`),
//! so a field can never inject a mention or a link; the template itself may use Slack markup.
//!
//! Actions: `upsert` (a profile entered the audience, or changed) and `track` (an event) use
//! `template`; `delete` (a profile left the audience) uses `delete_template`, and is acknowledged
//! without a message when no `delete_template` is configured.
//!
//! Fields read: whichever the templates name, from the record's mapped fields (e.g. `email`,
//! `first_name`, and for events `event`, `timestamp`, `properties.*`).
//!
//! The webhook URL is a credential (anyone holding it can post), so it is the secret
//! `webhook_url`, never config; it is never logged.
//!
//! Slack answers `200 ok` in plain text, or a plain-text error: `400 invalid_payload`, `no_text`,
//! `user_not_found` (rejected, per message), `403 invalid_token` / `action_prohibited`,
//! `404 no_service` (the webhook is revoked: unauthorized), `404 channel_not_found`,
//! `410 channel_is_archived` (the config is wrong), `429` with `Retry-After` and `5xx` (retried).

use serde::Deserialize;
use switchyard_sdk::{
    http::{Request, Response},
    outcome, schemars, serde_json, Action, CallError, Capabilities, Context, Destination,
    OutboundRecord, Plugin, RecordResult, Retry,
};

/// Settings of one `[destinations.NAME]` block using the Slack plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Message for `upsert` and `track` records, e.g. `New VIP: {{first_name|someone}} ({{email}})`.
    /// `{{field}}` is replaced with the record's field (escaped for Slack); `{{a.b}}` reads
    /// nested objects; `{{field|fallback}}` is used when the field is missing or empty.
    pub template: String,
    /// Message for `delete` records (a profile left the audience). Without it, deletes are
    /// acknowledged and nothing is posted.
    #[serde(default)]
    pub delete_template: Option<String>,
    /// Channel override (`#alerts`); only legacy webhooks honour it.
    #[serde(default)]
    pub channel: Option<String>,
    /// Display name override; only legacy webhooks honour it.
    #[serde(default)]
    pub username: Option<String>,
    /// Emoji icon override such as `:rocket:`; only legacy webhooks honour it.
    #[serde(default)]
    pub icon_emoji: Option<String>,
    /// Let Slack unfurl links in the message.
    #[serde(default)]
    pub unfurl_links: bool,
}

/// The secret holding the webhook URL.
pub const SECRET: &str = "webhook_url";

struct Slack;

impl Plugin for Slack {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .allowed_host("hooks.slack.com")
            .secret_value(
                SECRET,
                "Incoming webhook URL, https://hooks.slack.com/services/T.../B.../... (it is a credential)",
                true,
            )
            // One message per record, and Slack takes about one message per second per webhook:
            // one record per call keeps the hub's rate limiter exact.
            .max_batch_size(1)
            .default_rate_per_second(1.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Track])
    }

    /// Posts an empty payload: Slack answers `400 no_text` for a live webhook without posting
    /// anything, and `404 no_service` / `403 invalid_token` for a revoked or wrong one.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let url = webhook_url(ctx)?;
        let response = Request::post(url).json(&serde_json::json!({})).send()?;
        match response.status {
            200..=299 | 400 => Ok(()),
            _ => Err(call_error(&response)),
        }
    }
}

impl Destination for Slack {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let url = webhook_url(ctx)?;
        let template = match action {
            Action::Upsert | Action::Track => Some(ctx.config.template.as_str()),
            Action::Delete => ctx.config.delete_template.as_deref(),
            // Not in the manifest: an incoming webhook cannot delete what it posted, and a
            // message about the erasure would post the person's data once more.
            Action::Erase => {
                return Err(CallError::InvalidConfig(
                    "slack cannot erase: an incoming webhook cannot delete messages; delete them in Slack by hand".into(),
                ))
            }
        };
        let Some(template) = template else {
            switchyard_sdk::debug!(
                "no delete_template: {} delete records acknowledged without a message",
                batch.len()
            );
            return Ok(vec![RecordResult::Ok; batch.len()]);
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut stop: Option<RecordResult> = None;
        for (i, record) in batch.iter().enumerate() {
            if let Some(rest) = &stop {
                results.push(rest.clone());
                continue;
            }
            let fields = match serde_json::from_str::<serde_json::Value>(&record.fields) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    results.push(RecordResult::Rejected(
                        "fields are not a JSON object".to_string(),
                    ));
                    continue;
                }
            };
            let text = render(template, &fields);
            if text.trim().is_empty() {
                results.push(RecordResult::Rejected(
                    "the template rendered an empty message (Slack would answer no_text)"
                        .to_string(),
                ));
                continue;
            }
            let response = Request::post(url)
                .json(&payload(&ctx.config, &text))
                .send()?;
            switchyard_sdk::debug!("slack message {}: HTTP {}", i + 1, response.status);
            match classify(&response) {
                Outcome::Posted => results.push(RecordResult::Ok),
                Outcome::Rejected(m) => results.push(RecordResult::Rejected(m)),
                Outcome::Retry(r) => {
                    // Throttled or failing: stop here, the rest waits as long.
                    results.push(RecordResult::Retry(r.clone()));
                    stop = Some(RecordResult::Retry(r));
                }
                Outcome::Call(e) => {
                    if results.iter().all(|r| !matches!(r, RecordResult::Ok)) {
                        return Err(e);
                    }
                    // Earlier messages were posted: report them, hold back the rest.
                    let r = Retry {
                        reason: outcome::describe_call_error(&e),
                        after_ms: None,
                    };
                    results.push(RecordResult::Retry(r.clone()));
                    stop = Some(RecordResult::Retry(r));
                }
            }
        }
        Ok(results)
    }
}

fn webhook_url(ctx: &Context<Config>) -> Result<&str, CallError> {
    let url = ctx.secret(SECRET)?.trim();
    if !url.starts_with("https://hooks.slack.com/") {
        return Err(CallError::InvalidConfig(format!(
            "secret `{SECRET}` must be a Slack incoming webhook URL starting with https://hooks.slack.com/"
        )));
    }
    Ok(url)
}

/// The JSON body of one message.
pub fn payload(config: &Config, text: &str) -> serde_json::Value {
    let mut body = serde_json::json!({ "text": text, "unfurl_links": config.unfurl_links });
    for (name, value) in [
        ("channel", &config.channel),
        ("username", &config.username),
        ("icon_emoji", &config.icon_emoji),
    ] {
        if let Some(v) = value {
            body[name] = serde_json::Value::String(v.clone());
        }
    }
    body
}

/// What Slack's answer to one message means.
#[derive(Debug)]
pub enum Outcome {
    Posted,
    Rejected(String),
    Retry(Retry),
    Call(CallError),
}

/// Maps Slack's status and plain-text error to an outcome.
pub fn classify(response: &Response) -> Outcome {
    if response.is_success() {
        return Outcome::Posted;
    }
    if outcome::is_retryable_status(response.status) {
        return Outcome::Retry(outcome::retry(response));
    }
    let error = slack_error(response);
    match (response.status, error.as_str()) {
        (403, _) | (404, "no_service") | (401, _) => Outcome::Call(call_error(response)),
        (404, _) | (410, _) => Outcome::Call(call_error(response)),
        _ => Outcome::Rejected(format!("HTTP {}: {error}", response.status)),
    }
}

fn call_error(response: &Response) -> CallError {
    let error = slack_error(response);
    let message = format!("Slack answered HTTP {}: {error}", response.status);
    match (response.status, error.as_str()) {
        (401 | 403, _) | (404, "no_service") => CallError::Unauthorized(format!(
            "{message} (the webhook URL is wrong, revoked or not allowed to post)"
        )),
        (404 | 410, _) => CallError::InvalidConfig(format!(
            "{message} (check the webhook's channel or the `channel` override)"
        )),
        (s, _) if outcome::is_retryable_status(s) => CallError::Transient(outcome::retry(response)),
        _ => CallError::Failed(message),
    }
}

/// Slack's error string: the plain-text body (`invalid_payload`), or `{"error"}` if JSON.
fn slack_error(response: &Response) -> String {
    outcome::api_message(&response.body)
}

/// Renders `template` over `fields`: `{{path}}` / `{{path|fallback}}`, values escaped.
pub fn render(template: &str, fields: &serde_json::Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            // An unterminated placeholder is plain text.
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (path, fallback) = match inner.split_once('|') {
            Some((p, f)) => (p.trim(), Some(f.trim())),
            None => (inner.trim(), None),
        };
        if path.is_empty() {
            out.push_str(&rest[start..start + 2 + end + 2]);
        } else {
            match lookup(fields, path).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(&escape(&value)),
                None => out.push_str(fallback.unwrap_or("")),
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The text of the value at a dotted path, if any.
fn lookup(fields: &serde_json::Value, path: &str) -> Option<String> {
    let mut value = fields;
    for part in path.split('.') {
        value = match value {
            serde_json::Value::Object(map) => map.get(part)?,
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Slack's three control characters in text: `&`, `<`, `>`.
pub fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

switchyard_sdk::export_destination!(Slack);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_paths_and_fallbacks() {
        let fields = json!({
            "email": "ada@example.com", "first_name": "", "plan": null,
            "properties": {"total": 42.5, "items": ["a", "b"], "vip": true}
        });
        assert_eq!(
            render("Hi {{ first_name | there }} <{{email}}>", &fields),
            "Hi there <ada@example.com>"
        );
        assert_eq!(
            render(
                "{{properties.total}} {{properties.items.1}} {{properties.vip}} [{{plan}}] [{{nope}}]",
                &fields
            ),
            "42.5 b true [] []"
        );
        assert_eq!(render("{{properties.items}}", &fields), r#"["a","b"]"#);
        assert_eq!(render("a {{ }} b {{email", &fields), "a {{ }} b {{email");
        assert_eq!(render("no placeholders", &fields), "no placeholders");
    }

    #[test]
    fn values_are_escaped_but_the_template_is_not() {
        let fields = json!({"name": "<!channel> & <https://evil.example|click>"});
        assert_eq!(
            render("<https://app.example.com|Open> {{name}}", &fields),
            "<https://app.example.com|Open> &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"
        );
    }

    #[test]
    fn maps_slack_errors() {
        assert!(matches!(
            classify(&Response::new(200, &[], "ok")),
            Outcome::Posted
        ));
        match classify(&Response::new(400, &[], "invalid_payload")) {
            Outcome::Rejected(m) => assert_eq!(m, "HTTP 400: invalid_payload"),
            other => panic!("{other:?}"),
        }
        match classify(&Response::new(400, &[], "no_text")) {
            Outcome::Rejected(m) => assert_eq!(m, "HTTP 400: no_text"),
            other => panic!("{other:?}"),
        }
        match classify(&Response::new(
            429,
            &[("retry-after", "30")],
            "rate_limited",
        )) {
            Outcome::Retry(r) => assert_eq!(r.after_ms, Some(30_000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&Response::new(500, &[], "rollup_error")),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(&Response::new(404, &[], "no_service")),
            Outcome::Call(CallError::Unauthorized(_))
        ));
        assert!(matches!(
            classify(&Response::new(403, &[], "invalid_token")),
            Outcome::Call(CallError::Unauthorized(_))
        ));
        match classify(&Response::new(404, &[], "channel_not_found")) {
            Outcome::Call(CallError::InvalidConfig(m)) => {
                assert!(m.contains("channel_not_found"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&Response::new(410, &[], "channel_is_archived")),
            Outcome::Call(CallError::InvalidConfig(_))
        ));
    }

    #[test]
    fn payload_carries_overrides_only_when_set() {
        let config = Config {
            template: "x".into(),
            delete_template: None,
            channel: Some("#alerts".into()),
            username: None,
            icon_emoji: Some(":rocket:".into()),
            unfurl_links: false,
        };
        let p = payload(&config, "hello");
        assert_eq!(
            p,
            json!({"text": "hello", "unfurl_links": false, "channel": "#alerts", "icon_emoji": ":rocket:"})
        );
    }
}
