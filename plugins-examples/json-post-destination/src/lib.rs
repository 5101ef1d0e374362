//! Example destination: posts each batch of records as JSON to one configured URL.
//!
//! Copy this crate to start a destination of your own. The hub calls `deliver` with at most
//! `max_batch_size` records and expects one result per record, in order.

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, outcome, schemars, serde_json, Action, CallError, Capabilities, Context,
    Destination, OutboundRecord, Plugin, RecordResult,
};

/// Settings of one `[destinations.NAME]` block using this plugin. Doc comments become the
/// descriptions in the config's JSON Schema, which `switchyard validate` checks against.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The URL that receives `{"action": ..., "records": [...]}` as a POST.
    url: String,
    /// Send `Authorization: Bearer <token secret>` when true.
    #[serde(default)]
    use_token: bool,
    /// Give up on a response after this many milliseconds (the hub then retries the batch).
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

struct JsonPost;

impl Plugin for JsonPost {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            // The endpoint is the operator's choice, so the operator's config names the host;
            // a plugin for one API would name that API's host instead.
            .allowed_host("*")
            .secret(
                "token",
                "Bearer token the endpoint expects (when use_token = true)",
                false,
            )
            .max_batch_size(500)
            .default_rate_per_second(50.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Track])
    }

    /// A cheap request that changes nothing: the endpoint must answer a HEAD-like GET.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let response = authorised(ctx, Request::get(&ctx.config.url)).send()?;
        // 405 means the endpoint is there but only takes POST, which is fine.
        if response.status == 405 {
            return Ok(());
        }
        outcome::call_result(&response)
    }
}

impl Destination for JsonPost {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        // Records whose fields are not a JSON object are rejected one by one; the rest go out.
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match serde_json::from_str::<serde_json::Value>(&record.fields) {
                Ok(fields @ serde_json::Value::Object(_)) => {
                    rows.push(serde_json::json!({ "key": record.key, "fields": fields }));
                    sent.push(i);
                }
                _ => results[i] = RecordResult::Rejected("fields are not a JSON object".into()),
            }
        }
        if rows.is_empty() {
            return Ok(results);
        }
        let action = match action {
            Action::Upsert => "upsert",
            Action::Delete => "delete",
            Action::Track => "track",
            Action::Erase => "erase",
        };
        let body = serde_json::json!({ "action": action, "records": rows });
        let request = Request::post(&ctx.config.url)
            .json(&body)
            .timeout(std::time::Duration::from_millis(ctx.config.timeout_ms));
        let response = authorised(ctx, request).send()?;
        if matches!(response.status, 401 | 403) {
            // Bad credentials fail the whole batch: nothing here is the records' fault.
            return outcome::call_result(&response).map(|_| results);
        }
        // One response for the batch: every sent record shares its outcome.
        let shared = outcome::record_result(&response);
        for i in sent {
            results[i] = shared.clone();
        }
        switchyard_sdk::debug!("posted {} records: HTTP {}", rows.len(), response.status);
        Ok(results)
    }
}

fn authorised(ctx: &Context<Config>, request: Request) -> Request {
    if ctx.config.use_token {
        // The placeholder is replaced by the host as the request leaves the sandbox.
        request.bearer_auth(&ctx.secret_placeholder("token"))
    } else {
        request
    }
}

switchyard_sdk::export_destination!(JsonPost);
