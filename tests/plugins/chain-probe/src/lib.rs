//! A transform whose behaviour the config picks (`mode`), to test the host's transform chain
//! against each thing a plugin may do, the contract breaches included:
//!
//! - `echo`: keeps each message as it came;
//! - `tag`: appends `tag` to the message's `properties.trail` (so a chain's order shows);
//! - `fanout`: keeps `copies` messages per input, each with `properties.copy` = 0, 1, ...;
//! - `drop`: drops messages whose `event` is `event`, with `reason`; keeps the others;
//! - `bad-output`: keeps text that is not a JSON object for messages whose `event` is `event`;
//! - `keep-none`: keeps no message for messages whose `event` is `event` (`keep([])`);
//! - `miscount`: returns one result fewer than the batch has (a contract breach);
//! - `transient`: fails the whole call with `transient`;
//! - `fail-on`: fails the whole call (`failed`, permanent) when a message's `event` is `event`
//!   (one poisoned message in a batch), and otherwise keeps each message as it came;
//! - `batch-size`: keeps each message with `properties.batch` = the size of its call's batch.
//!
//! It exports the `transform` world by hand instead of with `export_transform!`: the SDK's glue
//! refuses a wrong result count inside the plugin, and `miscount` must reach the host.

use serde::Deserialize;
use switchyard_sdk::serde_json::{self, json, Value};
use switchyard_sdk::{
    schemars, CallError, Capabilities, Context, Plugin, PluginConfig, PluginKind, PluginManifest,
    Retry, TransformResult,
};

#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    mode: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    copies: usize,
    #[serde(default)]
    event: String,
    #[serde(default)]
    reason: String,
}

struct Probe;

impl Plugin for Probe {
    type Config = Config;
    fn capabilities() -> Capabilities {
        Capabilities::new().name("chain-probe").max_batch_size(3)
    }
}

fn event_is(message: &Value, name: &str) -> bool {
    message.get("event").and_then(Value::as_str) == Some(name)
}

fn transform(ctx: &Context<Config>, batch: Vec<String>) -> Result<Vec<TransformResult>, CallError> {
    let c = &ctx.config;
    let size = batch.len();
    let parse = |m: &str| serde_json::from_str::<Value>(m).unwrap_or(Value::Null);
    let with = |m: &str, key: &str, value: Value| {
        let mut v = parse(m);
        if v.get("properties").is_none() {
            v["properties"] = json!({});
        }
        v["properties"][key] = value;
        v.to_string()
    };
    let results = match c.mode.as_str() {
        "echo" => batch
            .into_iter()
            .map(|m| TransformResult::Keep(vec![m]))
            .collect(),
        "tag" => batch
            .iter()
            .map(|m| {
                let mut v = parse(m);
                let mut trail = v["properties"]["trail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                trail.push(json!(c.tag));
                if v.get("properties").is_none() {
                    v["properties"] = json!({});
                }
                v["properties"]["trail"] = json!(trail);
                TransformResult::Keep(vec![v.to_string()])
            })
            .collect(),
        "fanout" => batch
            .iter()
            .map(|m| {
                TransformResult::Keep((0..c.copies).map(|i| with(m, "copy", json!(i))).collect())
            })
            .collect(),
        "drop" => batch
            .into_iter()
            .map(|m| {
                if event_is(&parse(&m), &c.event) {
                    TransformResult::Drop(c.reason.clone())
                } else {
                    TransformResult::Keep(vec![m])
                }
            })
            .collect(),
        "bad-output" => batch
            .into_iter()
            .map(|m| {
                if event_is(&parse(&m), &c.event) {
                    TransformResult::Keep(vec!["not json".to_string(), "[1]".to_string()])
                } else {
                    TransformResult::Keep(vec![m])
                }
            })
            .collect(),
        "keep-none" => batch
            .into_iter()
            .map(|m| {
                if event_is(&parse(&m), &c.event) {
                    TransformResult::Keep(vec![])
                } else {
                    TransformResult::Keep(vec![m])
                }
            })
            .collect(),
        "miscount" => batch
            .into_iter()
            .skip(1)
            .map(|m| TransformResult::Keep(vec![m]))
            .collect(),
        "transient" => {
            return Err(CallError::Transient(Retry {
                reason: "lookup service unavailable".into(),
                after_ms: Some(1000),
            }))
        }
        "fail-on" => {
            if batch.iter().any(|m| event_is(&parse(m), &c.event)) {
                return Err(CallError::Failed(format!("cannot transform `{}`", c.event)));
            }
            batch
                .into_iter()
                .map(|m| TransformResult::Keep(vec![m]))
                .collect()
        }
        "batch-size" => batch
            .iter()
            .map(|m| TransformResult::Keep(vec![with(m, "batch", json!(size))]))
            .collect(),
        other => return Err(CallError::InvalidConfig(format!("unknown mode `{other}`"))),
    };
    Ok(results)
}

mod bindings {
    switchyard_sdk::__private::wit_bindgen::generate!({
        path: "../../../plugin-sdk/wit",
        world: "switchyard:plugin/transform",
        runtime_path: "::switchyard_sdk::__private::wit_bindgen::rt",
        with: {
            "switchyard:plugin/types@1.1.0": switchyard_sdk::bindings::switchyard::plugin::types,
            "switchyard:plugin/host@1.1.0": switchyard_sdk::bindings::switchyard::plugin::host,
            "wasi:http/types@0.2.12": switchyard_sdk::bindings::wasi::http::types,
            "wasi:http/outgoing-handler@0.2.12": switchyard_sdk::bindings::wasi::http::outgoing_handler,
            "wasi:io/error@0.2.12": switchyard_sdk::bindings::wasi::io::error,
            "wasi:io/poll@0.2.12": switchyard_sdk::bindings::wasi::io::poll,
            "wasi:io/streams@0.2.12": switchyard_sdk::bindings::wasi::io::streams,
            "wasi:clocks/wall-clock@0.2.12": switchyard_sdk::bindings::wasi::clocks::wall_clock,
            "wasi:clocks/monotonic-clock@0.2.12": switchyard_sdk::bindings::wasi::clocks::monotonic_clock,
            "wasi:random/random@0.2.12": switchyard_sdk::bindings::wasi::random::random,
        },
    });
}

struct Export;

impl bindings::exports::switchyard::plugin::plugin::Guest for Export {
    fn manifest() -> PluginManifest {
        switchyard_sdk::__private::manifest::<Probe>(
            PluginKind::Transform,
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
        )
    }
    fn check(config: PluginConfig) -> Result<(), CallError> {
        Context::<Config>::from_plugin_config(config).map(|_| ())
    }
}

impl bindings::exports::switchyard::plugin::transformation::Guest for Export {
    fn transform(
        config: PluginConfig,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        let ctx = Context::<Config>::from_plugin_config(config)?;
        transform(&ctx, batch)
    }
}

#[cfg(target_arch = "wasm32")]
#[used]
#[unsafe(link_section = "switchyard:api-version")]
static API_VERSION: [u8; switchyard_sdk::API_VERSION.len()] =
    switchyard_sdk::__private::api_version_bytes();

bindings::export!(Export with_types_in bindings);
