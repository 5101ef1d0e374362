//! Webhook destination: posts each batch of records as one JSON message to an operator-configured
//! URL, signed as the [Standard Webhooks](https://www.standardwebhooks.com/) spec v1.0.0 asks.
//!
//! Every request carries three headers:
//!
//! - `webhook-id`: `msg_` and a digest of the action and the batch's delivery ids. The spec
//!   wants it "the same when the same webhook is being resent (e.g. due to a previous
//!   failure)" and new for every other message (Standard Webhooks v1.0.0, "Webhook metadata"
//!   and "Verifying Webhook Signatures"). Each record's delivery id (plugin API 1.1.0) is the
//!   same on every retry of one change of the record, across runs too, and new for the next
//!   change (a profile that leaves an audience and re-joins it with identical fields gets new
//!   ids), so a resent batch keeps its `webhook-id` and a receiver deduplicating on it applies
//!   each change once. Each record in the body carries its own `delivery_id` as well, for
//!   receivers that deduplicate per record (a half-accepted batch is resent with fewer
//!   records, so under another `webhook-id`);
//! - `webhook-timestamp`: the attempt time, integer Unix seconds;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`, keyed with
//!   the base64-decoded part of the `whsec_...` signing secret.
//!
//! The body is `{"type": "<prefix>.<action>", "timestamp": RFC 3339, "data": {"action",
//! "records": [{"key", "delivery_id", "fields"}]}}`.
//!
//! Fields read: none in particular. Each record's `fields` object (whatever the sync's mapping
//! made: `email`, `first_name`, traits, and for `track` the `event`, `timestamp` and
//! `properties`) is forwarded as is; a record whose fields are not a JSON object is rejected.
//!
//! Outcomes: 2xx acknowledges the whole batch; 429 and 5xx (and 408/425) are retried honouring
//! `Retry-After`; 401/403 fail the call as unauthorized; 410 Gone fails it as invalid config
//! (the spec: "the server is no longer interested in receiving webhooks from this source. Sender
//! should disable the webhook endpoint", so the sync stops until the operator fixes the URL);
//! 3xx (redirects are not followed, as the spec asks) and other 4xx reject the batch's records
//! with the receiver's message.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard_sdk::{
    http::{Request, Response},
    outcome, schemars, serde_json, time, Action, CallError, Capabilities, Context, Destination,
    OutboundRecord, Plugin, RecordResult,
};

/// Settings of one `[destinations.NAME]` block using the webhook plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The receiver's URL, e.g. `https://hooks.example.com/switchyard`. The operator must also
    /// grant its host to this destination (the plugin asks for any host).
    pub url: String,
    /// Prefix of the message `type`: the type is `<prefix>.upsert`, `.delete`, `.track` or
    /// `.erase`.
    #[serde(default = "default_type_prefix")]
    pub type_prefix: String,
    /// Seconds to wait for the receiver's answer (the spec suggests 15 to 30).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u64,
    /// When true, `check` sends a signed `<prefix>.ping` message with no records, so that a
    /// wrong signing secret fails the check (the receiver answers 401). When false, `check` only
    /// verifies the secret's format and that the URL answers at all.
    #[serde(default)]
    pub ping_on_check: bool,
    /// Deprecated, ignored: accepted so that configs written for earlier builds still load.
    /// It made retried upserts keep their `webhook-id`; every message now does, from the hub's
    /// delivery ids, and a later change of a record always gets a new one.
    #[serde(default)]
    pub stable_ids: bool,
}

fn default_type_prefix() -> String {
    "switchyard".to_string()
}

fn default_timeout() -> u64 {
    15
}

/// The signing secret's name in the operator's `secrets`.
pub const SECRET: &str = "signing_secret";

struct Webhook;

impl Plugin for Webhook {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            // The receiver is the operator's choice: the operator grants its host.
            .allowed_host("*")
            .secret_value(
                SECRET,
                "Standard Webhooks signing secret, `whsec_` followed by base64 of 24 to 64 random bytes; the receiver verifies signatures with the same secret",
                true,
            )
            .max_batch_size(100)
            .default_rate_per_second(10.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Track, Action::Erase])
    }

    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let key = signing_key(ctx.secret(SECRET)?).map_err(CallError::InvalidConfig)?;
        if ctx.config.ping_on_check {
            let body = message_body(&ctx.config.type_prefix, "ping", &[], time::now_unix())?;
            let response = send_signed(ctx, &key, &ping_id(time::now_unix()), body)?;
            if response.status == 410 {
                return Err(gone(&response));
            }
            return outcome::call_result(&response);
        }
        // An unsigned GET changes nothing; receivers usually answer 405 (POST only). Any answer
        // but "not found" or a server error shows the URL is right.
        let response = Request::get(&ctx.config.url)
            .timeout(std::time::Duration::from_secs(ctx.config.timeout_seconds))
            .send()?;
        match response.status {
            404 | 410 => Err(CallError::InvalidConfig(format!(
                "the webhook URL answered HTTP {}: {}",
                response.status,
                outcome::api_message(&response.body)
            ))),
            s if outcome::is_retryable_status(s) => outcome::call_result(&response),
            _ => Ok(()),
        }
    }
}

impl Destination for Webhook {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let key = signing_key(ctx.secret(SECRET)?).map_err(CallError::InvalidConfig)?;
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match serde_json::from_str::<serde_json::Value>(&record.fields) {
                Ok(fields @ serde_json::Value::Object(_)) => {
                    rows.push(serde_json::json!({
                        "key": record.key,
                        "delivery_id": record.delivery_id,
                        "fields": fields,
                    }));
                    sent.push(i);
                }
                _ => {
                    results[i] = RecordResult::Rejected("fields are not a JSON object".to_string())
                }
            }
        }
        if rows.is_empty() {
            return Ok(results);
        }
        let action = action_name(action);
        let id = message_id(action, sent.iter().map(|&i| batch[i].delivery_id.as_str()));
        let body = message_body(&ctx.config.type_prefix, action, &rows, time::now_unix())?;
        let response = send_signed(ctx, &key, &id, body)?;
        switchyard_sdk::debug!(
            "webhook {id}: {} {action} records, HTTP {}",
            rows.len(),
            response.status
        );
        let shared = batch_outcome(&response)?;
        for i in sent {
            results[i] = shared.clone();
        }
        Ok(results)
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Upsert => "upsert",
        Action::Delete => "delete",
        Action::Track => "track",
        Action::Erase => "erase",
    }
}

/// 410 Gone: the receiver asks not to be sent anything more (Standard Webhooks: disable the
/// endpoint), which only the operator can change.
fn gone(response: &Response) -> CallError {
    CallError::InvalidConfig(format!(
        "HTTP 410: the receiver no longer accepts webhooks at this URL ({}); fix `url` or remove the destination",
        outcome::api_message(&response.body)
    ))
}

/// What the receiver's answer means for every record of the batch.
pub fn batch_outcome(response: &Response) -> Result<RecordResult, CallError> {
    match response.status {
        401 | 403 => outcome::call_result(response).map(|_| RecordResult::Ok),
        410 => Err(gone(response)),
        300..=399 => Ok(RecordResult::Rejected(format!(
            "HTTP {}: the receiver redirected{}; webhooks do not follow redirects, configure the final URL",
            response.status,
            response
                .header("location")
                .map(|l| format!(" to {l}"))
                .unwrap_or_default()
        ))),
        _ => Ok(outcome::record_result(response)),
    }
}

fn send_signed(
    ctx: &Context<Config>,
    key: &[u8],
    id: &str,
    body: Vec<u8>,
) -> Result<Response, CallError> {
    let timestamp = time::now_unix();
    let signature = sign(key, id, timestamp, &body);
    Ok(Request::post(&ctx.config.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", &timestamp.to_string())
        .header("webhook-signature", &signature)
        .timeout(std::time::Duration::from_secs(ctx.config.timeout_seconds))
        .body(body)
        .send()?)
}

/// The HMAC key inside a `whsec_...` secret (the prefix is optional, as in the reference
/// libraries). The error never contains the secret.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| {
            format!("secret `{SECRET}` must be `whsec_` followed by base64 (it does not decode)")
        })?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "secret `{SECRET}` decodes to {} bytes; Standard Webhooks keys are 24 to 64 bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// `msg_` + 32 hex digits of SHA-256 over the action and the records' delivery ids: the same
/// batch of changes, resent after a failure, keeps its id; any other batch has another.
pub fn message_id<'a>(action: &str, delivery_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(action.as_bytes());
    for id in delivery_ids {
        hasher.update(b"\n");
        hasher.update(id.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

fn ping_id(now: u64) -> String {
    format!("msg_ping_{now}")
}

/// The JSON body: `{"type", "timestamp", "data": {"action", "records"}}`.
pub fn message_body(
    prefix: &str,
    action: &str,
    rows: &[serde_json::Value],
    now: u64,
) -> Result<Vec<u8>, CallError> {
    let body = serde_json::json!({
        "type": format!("{prefix}.{action}"),
        "timestamp": time::rfc3339(now as i64),
        "data": { "action": action, "records": rows },
    });
    serde_json::to_vec(&body).map_err(|e| CallError::Failed(format!("serialising the body: {e}")))
}

switchyard_sdk::export_destination!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    // The spec's own test vector (standard-webhooks, libraries/python/tests/test_webhooks.py).
    #[test]
    fn standard_webhooks_test_vector() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // The suite's known-bad signature differs in the last character.
        assert_ne!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=");
        // The prefix is optional, as in the reference libraries.
        assert_eq!(
            signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            key
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        let e = signing_key("whsec_not base64!!").unwrap_err();
        assert!(
            e.contains("does not decode") && !e.contains("not base64"),
            "{e}"
        );
        let e = signing_key("whsec_c2hvcnQ=").unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
    }

    #[test]
    fn message_id_is_stable_for_the_same_changes_only() {
        let id = |action: &str, ids: &[&str]| message_id(action, ids.iter().copied());
        assert_eq!(
            id("upsert", &["dlv_1", "dlv_2"]),
            id("upsert", &["dlv_1", "dlv_2"])
        );
        assert_ne!(id("upsert", &["dlv_1", "dlv_2"]), id("upsert", &["dlv_1"]));
        assert_ne!(id("upsert", &["dlv_1"]), id("upsert", &["dlv_3"]));
        assert_ne!(id("upsert", &["dlv_1"]), id("delete", &["dlv_1"]));
        // Ids cannot run together: ["ab"] is not ["a", "b"].
        assert_ne!(id("upsert", &["ab"]), id("upsert", &["a", "b"]));
        assert!(id("upsert", &["dlv_1"]).starts_with("msg_"));
        assert_eq!(id("upsert", &["dlv_1"]).len(), 4 + 32);
    }

    #[test]
    fn body_shape_and_timestamps() {
        let rows = vec![serde_json::json!({"key": "p1", "fields": {"email": "a@x.com"}})];
        let body: serde_json::Value =
            serde_json::from_slice(&message_body("acme", "upsert", &rows, 1_614_265_330).unwrap())
                .unwrap();
        assert_eq!(body["type"], "acme.upsert");
        assert_eq!(body["timestamp"], "2021-02-25T15:02:10Z");
        assert_eq!(body["data"]["action"], "upsert");
        assert_eq!(body["data"]["records"][0]["key"], "p1");
    }

    #[test]
    fn outcomes() {
        assert!(matches!(
            batch_outcome(&Response::new(204, &[], "")),
            Ok(RecordResult::Ok)
        ));
        match batch_outcome(&Response::new(429, &[("retry-after", "12")], "slow down")) {
            Ok(RecordResult::Retry(r)) => assert_eq!(r.after_ms, Some(12_000)),
            other => panic!("{other:?}"),
        }
        match batch_outcome(&Response::new(
            422,
            &[],
            r#"{"message":"unknown field plan"}"#,
        )) {
            Ok(RecordResult::Rejected(m)) => assert_eq!(m, "HTTP 422: unknown field plan"),
            other => panic!("{other:?}"),
        }
        match batch_outcome(&Response::new(
            301,
            &[("location", "https://new.example.com/")],
            "",
        )) {
            Ok(RecordResult::Rejected(m)) => assert!(m.contains("new.example.com"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            batch_outcome(&Response::new(401, &[], "bad signature")),
            Err(CallError::Unauthorized(_))
        ));
        match batch_outcome(&Response::new(410, &[], "endpoint disabled")) {
            Err(CallError::InvalidConfig(m)) => {
                assert!(
                    m.starts_with("HTTP 410:") && m.contains("endpoint disabled"),
                    "{m}"
                )
            }
            other => panic!("410 must stop delivery to the endpoint: {other:?}"),
        }
    }
}
