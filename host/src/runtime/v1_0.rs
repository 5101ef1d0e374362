//! Plugins built against plugin API 1.0.0, the first released contract, frozen in
//! `plugin-sdk/wit-1.0.0`: their own bindings, and conversions between their types and the
//! newest ones, so that the rest of the hub deals in the newest types only.
//!
//! What 1.0.0 lacks, a 1.0.0 plugin never sees: the `erase` action (the runtime refuses it for
//! any plugin whose manifest does not list it, and a 1.0.0 manifest cannot), a record's
//! `delivery-id` and `previous-fields`, and the `transform` world. What its manifest lacks is
//! filled in as 1.0.0 meant it: no key fields, and a secret's `raw-value` read from the config
//! schema's `x-switchyard-secret-values` keyword, which only 1.0.0 plugins may use.

use super::bindings as new;
use super::state::PluginState;

/// The plugin API version this module adapts.
pub const API_VERSION: &str = "1.0.0";

/// Generated from `plugin-sdk/wit-1.0.0`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit-1.0.0",
        inline: "
            package switchyard:hub-v1-0;
            world hub {
                import switchyard:plugin/host@1.0.0;
                export switchyard:plugin/plugin@1.0.0;
                export switchyard:plugin/delivery@1.0.0;
                export switchyard:plugin/intake@1.0.0;
            }
        ",
        world: "switchyard:hub-v1-0/hub",
        imports: { default: async },
        exports: { default: async },
    });

    pub use self::switchyard::plugin::types::*;
    pub use exports::switchyard::plugin::{
        delivery as destination, intake as source, plugin as meta,
    };
}

use bindings as old;

/// The config-schema keyword that declared raw-value secrets in 1.0.0 (1.1.0 made it
/// `secret-spec.raw-value`).
pub const SECRET_VALUES_KEYWORD: &str = "x-switchyard-secret-values";

/// The names a 1.0.0 config schema (as JSON) declares under [`SECRET_VALUES_KEYWORD`].
pub fn raw_value_names_in(schema: &serde_json::Value) -> Vec<String> {
    schema
        .get(SECRET_VALUES_KEYWORD)
        .and_then(|v| v.as_array())
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `host` import of 1.0.0 is the newest one's `log`.
impl old::switchyard::plugin::host::Host for PluginState {
    async fn log(&mut self, level: old::switchyard::plugin::host::LogLevel, message: String) {
        use new::switchyard::plugin::host::LogLevel as N;
        use old::switchyard::plugin::host::LogLevel as O;
        let level = match level {
            O::Trace => N::Trace,
            O::Debug => N::Debug,
            O::Info => N::Info,
            O::Warn => N::Warn,
            O::Error => N::Error,
        };
        new::switchyard::plugin::host::Host::log(self, level, message).await
    }
}

// ---- newest -> 1.0.0 (what the host passes in) ----

/// The action as 1.0.0 knows it; `None` for `erase`, which 1.0.0 does not have.
pub fn action(a: new::Action) -> Option<old::Action> {
    Some(match a {
        new::Action::Upsert => old::Action::Upsert,
        new::Action::Delete => old::Action::Delete,
        new::Action::Track => old::Action::Track,
        new::Action::Erase => return None,
    })
}

pub fn config(c: &new::PluginConfig) -> old::PluginConfig {
    old::PluginConfig {
        config: c.config.clone(),
        secrets: c.secrets.clone(),
    }
}

/// A record without what 1.0.0 does not carry (delivery id, previous fields).
pub fn record(r: &new::OutboundRecord) -> old::OutboundRecord {
    old::OutboundRecord {
        key: r.key.clone(),
        fields: r.fields.clone(),
    }
}

pub fn webhook_request(r: &new::WebhookRequest) -> old::WebhookRequest {
    old::WebhookRequest {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

// ---- 1.0.0 -> newest (what the plugin returns) ----

/// A 1.0.0 manifest in the newest shape: no key fields, and raw-value secrets read from the
/// schema keyword (only secrets the manifest asks for).
pub fn manifest(m: old::PluginManifest) -> new::PluginManifest {
    let raw = serde_json::from_str::<serde_json::Value>(&m.config_schema)
        .map(|schema| raw_value_names_in(&schema))
        .unwrap_or_default();
    new::PluginManifest {
        name: m.name,
        version: m.version,
        kind: match m.kind {
            old::PluginKind::Source => new::PluginKind::Source,
            old::PluginKind::Destination => new::PluginKind::Destination,
        },
        description: m.description,
        config_schema: m.config_schema,
        secrets: m
            .secrets
            .into_iter()
            .map(|s| new::SecretSpec {
                raw_value: raw.contains(&s.name),
                name: s.name,
                description: s.description,
                required: s.required,
            })
            .collect(),
        allowed_hosts: m.allowed_hosts,
        max_batch_size: m.max_batch_size,
        default_rate_per_second: m.default_rate_per_second,
        actions: m
            .actions
            .into_iter()
            .map(|a| match a {
                old::Action::Upsert => new::Action::Upsert,
                old::Action::Delete => new::Action::Delete,
                old::Action::Track => new::Action::Track,
            })
            .collect(),
        key_fields: Vec::new(),
    }
}

fn retry(r: old::Retry) -> new::Retry {
    new::Retry {
        reason: r.reason,
        after_ms: r.after_ms,
    }
}

pub fn call_error(e: old::CallError) -> new::CallError {
    match e {
        old::CallError::InvalidConfig(m) => new::CallError::InvalidConfig(m),
        old::CallError::Unauthorized(m) => new::CallError::Unauthorized(m),
        old::CallError::Transient(r) => new::CallError::Transient(retry(r)),
        old::CallError::Failed(m) => new::CallError::Failed(m),
    }
}

pub fn record_result(r: old::RecordResult) -> new::RecordResult {
    match r {
        old::RecordResult::Ok => new::RecordResult::Ok,
        old::RecordResult::Retry(r) => new::RecordResult::Retry(retry(r)),
        old::RecordResult::Rejected(m) => new::RecordResult::Rejected(m),
    }
}

pub fn stream_info(s: old::StreamInfo) -> new::StreamInfo {
    new::StreamInfo {
        name: s.name,
        description: s.description,
        incremental: s.incremental,
    }
}

fn source_record(r: old::SourceRecord) -> new::SourceRecord {
    new::SourceRecord {
        id: r.id,
        data: r.data,
        updated_at: r.updated_at,
        events: r
            .events
            .into_iter()
            .map(|e| new::SourceEvent {
                name: e.name,
                message_id: e.message_id,
                timestamp: e.timestamp,
                properties: e.properties,
            })
            .collect(),
    }
}

pub fn page(p: old::Page) -> new::Page {
    new::Page {
        records: p.records.into_iter().map(source_record).collect(),
        cursor: p.cursor,
        done: p.done,
    }
}

pub fn webhook_verdict(
    v: Result<old::WebhookOutcome, old::WebhookError>,
) -> Result<new::WebhookOutcome, new::WebhookError> {
    match v {
        Ok(o) => Ok(new::WebhookOutcome {
            delivery_id: o.delivery_id,
            records: o
                .records
                .into_iter()
                .map(|r| new::StreamRecord {
                    stream: r.stream,
                    record: source_record(r.record),
                })
                .collect(),
        }),
        Err(old::WebhookError::Unauthorized(m)) => Err(new::WebhookError::Unauthorized(m)),
        Err(old::WebhookError::BadRequest(m)) => Err(new::WebhookError::BadRequest(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1_0_manifest_gets_raw_values_from_the_keyword_and_no_key_fields() {
        let m = old::PluginManifest {
            name: "hook".into(),
            version: "1.0.0".into(),
            kind: old::PluginKind::Destination,
            description: "d".into(),
            config_schema: serde_json::json!({SECRET_VALUES_KEYWORD: ["signing", "not-asked"]})
                .to_string(),
            secrets: vec![
                old::SecretSpec {
                    name: "signing".into(),
                    description: "s".into(),
                    required: true,
                },
                old::SecretSpec {
                    name: "token".into(),
                    description: "t".into(),
                    required: false,
                },
            ],
            allowed_hosts: vec![],
            max_batch_size: 10,
            default_rate_per_second: 1.0,
            actions: vec![old::Action::Upsert, old::Action::Delete],
        };
        let n = manifest(m);
        let raw: Vec<(&str, bool)> = n
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.raw_value))
            .collect();
        assert_eq!(raw, vec![("signing", true), ("token", false)]);
        assert!(n.key_fields.is_empty());
        assert_eq!(n.actions, vec![new::Action::Upsert, new::Action::Delete]);
    }

    #[test]
    fn erase_has_no_1_0_equivalent_and_records_lose_the_new_fields() {
        assert!(action(new::Action::Erase).is_none());
        assert_eq!(action(new::Action::Delete), Some(old::Action::Delete));
        let r = record(&new::OutboundRecord {
            key: "k".into(),
            fields: "{}".into(),
            delivery_id: "dlv_1".into(),
            previous_fields: Some("{\"email\":\"a@x\"}".into()),
        });
        assert_eq!((r.key.as_str(), r.fields.as_str()), ("k", "{}"));
    }
}
