//! # switchyard-sdk
//!
//! Write [Switchyard](https://github.com/switchyard-hub/switchyard) source, destination and
//! transform plugins in Rust. A plugin is a WASI 0.2 component: the hub runs it sandboxed, with outbound
//! HTTP only to the hosts its manifest asks for and the operator grants.
//!
//! A destination implements [`Plugin`] (its typed config and what it asks of the hub) and
//! [`Destination`] (delivering a batch, one result per record), then exports itself:
//!
//! ```no_run
//! use serde::Deserialize;
//! use switchyard_sdk::{
//!     http::Request, outcome, schemars, Action, CallError, Capabilities, Context, Destination,
//!     OutboundRecord, Plugin, RecordResult,
//! };
//!
//! /// Settings of one `[destinations.NAME]` block.
//! #[derive(Deserialize, schemars::JsonSchema)]
//! struct Config {
//!     /// Where records are posted, e.g. `https://hooks.example.com/in`.
//!     url: String,
//! }
//!
//! struct Hook;
//!
//! impl Plugin for Hook {
//!     type Config = Config;
//!     fn capabilities() -> Capabilities {
//!         Capabilities::new()
//!             .allowed_host("hooks.example.com")
//!             .secret("token", "Bearer token of the endpoint", true)
//!             .max_batch_size(500)
//!             .actions(&[Action::Upsert, Action::Delete])
//!     }
//! }
//!
//! impl Destination for Hook {
//!     fn deliver(
//!         ctx: &Context<Config>,
//!         action: Action,
//!         batch: Vec<OutboundRecord>,
//!     ) -> Result<Vec<RecordResult>, CallError> {
//!         let rows: Vec<serde_json::Value> = batch
//!             .iter()
//!             .map(|r| serde_json::from_str(&r.fields).unwrap_or_default())
//!             .collect();
//!         let response = Request::post(&ctx.config.url)
//!             // The host fills in the secret as the request leaves the sandbox.
//!             .bearer_auth(&ctx.secret_placeholder("token"))
//!             .json(&serde_json::json!({ "action": format!("{action:?}"), "records": rows }))
//!             .send()?;
//!         // One HTTP outcome for the whole batch: 2xx ok, 429/5xx retry, other 4xx rejected.
//!         Ok(vec![outcome::record_result(&response); batch.len()])
//!     }
//! }
//!
//! switchyard_sdk::export_destination!(Hook);
//! ```
//!
//! Each record also carries a `delivery_id`, the same on every retry of this change of the
//! record and new for the next change: send it as the API's idempotency key. A destination
//! whose provider identifies contacts by a mapped field declares it with
//! [`Capabilities::key_fields`]; when that field changes (a new email), the record arrives with
//! `previous_fields`, the fields last acknowledged, so the plugin can rename or remove the
//! contact under the old value.
//!
//! A transform (plugin API 1.1.0) implements [`Transform`]: a batch of messages in, one result
//! per message out: kept (reshaped, or fanned out into several) or dropped with a reason.
//!
//! ```no_run
//! use serde::Deserialize;
//! use switchyard_sdk::{
//!     schemars, serde_json, CallError, Capabilities, Context, Plugin, Transform, TransformResult,
//! };
//!
//! #[derive(Deserialize, schemars::JsonSchema)]
//! struct Config {
//!     /// Event names to drop, e.g. `["Debug Ping"]`.
//!     #[serde(default)]
//!     drop_events: Vec<String>,
//! }
//!
//! struct DropNoise;
//!
//! impl Plugin for DropNoise {
//!     type Config = Config;
//!     fn capabilities() -> Capabilities {
//!         Capabilities::new()
//!     }
//! }
//!
//! impl Transform for DropNoise {
//!     fn transform(
//!         ctx: &Context<Config>,
//!         batch: Vec<String>,
//!     ) -> Result<Vec<TransformResult>, CallError> {
//!         Ok(batch
//!             .into_iter()
//!             .map(|text| {
//!                 let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
//!                     return TransformResult::Drop("not a JSON message".into());
//!                 };
//!                 match message["event"].as_str() {
//!                     Some(e) if ctx.config.drop_events.iter().any(|d| d == e) => {
//!                         TransformResult::Drop(format!("event `{e}` is dropped by config"))
//!                     }
//!                     _ => TransformResult::Keep(vec![text]),
//!                 }
//!             })
//!             .collect())
//!     }
//! }
//!
//! switchyard_sdk::export_transform!(DropNoise);
//! ```
//!
//! A record's `fields` is a JSON object. Parsing it into `serde_json::Value` takes any shape;
//! when a plugin knows the fields it sends, deserialising into a struct that borrows from the
//! record (`&'a str`, `Cow<'a, str>`, `&'a serde_json::value::RawValue` to pass a value through
//! untouched) skips the rest unparsed and allocates little: in the plugin benchmark it maps
//! records about twice as fast inside the sandbox.
//!
//! ```
//! use std::borrow::Cow;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Contact<'a> {
//!     #[serde(borrow)]
//!     email: Option<Cow<'a, str>>,
//!     #[serde(borrow)]
//!     first_name: Option<&'a switchyard_sdk::serde_json::value::RawValue>,
//! }
//!
//! let fields = r#"{"email":"Ada@Example.com","first_name":"Ada","orders":3}"#;
//! let contact: Contact = switchyard_sdk::serde_json::from_str(fields).unwrap();
//! assert_eq!(contact.email.as_deref(), Some("Ada@Example.com"));
//! assert_eq!(contact.first_name.map(|v| v.get()), Some("\"Ada\""));
//! ```
//!
//! Build it with `switchyard plugin build` (or `cargo build --release --target wasm32-wasip2`)
//! and install the `.wasm` with `switchyard plugin install`.

pub mod alloc;
pub mod cursor;
pub mod http;
pub mod log;
pub mod message;
pub mod outcome;
pub mod pii;
pub mod sunset;
pub mod time;
pub mod watermark;

mod plugin;

pub use plugin::{
    Capabilities, Context, Destination, Plugin, Source, Transform, SECRET_VALUES_KEYWORD,
};
pub use schemars;
pub use serde_json;
pub use switchyard_sdk_macros::{export_destination, export_source, export_transform};

// Every plugin gets the size-class allocator unless it turns the feature off (see `alloc`).
#[cfg(all(
    target_arch = "wasm32",
    not(target_feature = "atomics"),
    feature = "size-class-alloc"
))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses = alloc::SizeClasses::new();

/// The plugin API version (the `switchyard:plugin` WIT package version) this SDK builds against.
pub const API_VERSION: &str = "1.1.0";

/// Bindings generated from the contract in `plugin-sdk/wit`; plugins rarely need them directly.
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "switchyard:plugin/plugin-imports",
        generate_unused_types: true,
        generate_all,
    });
}

pub use bindings::switchyard::plugin::types::{
    Action, CallError, OutboundRecord, Page, PluginConfig, PluginKind, PluginManifest,
    RecordResult, Retry, SecretSpec, SourceEvent, SourceRecord, StreamInfo, StreamRecord,
    TransformResult, WebhookError, WebhookOutcome, WebhookRequest,
};

/// Glue called by the export macros. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::{
        Action, CallError, Context, Destination, OutboundRecord, Page, Plugin, PluginConfig,
        PluginKind, PluginManifest, RecordResult, Source, StreamInfo, Transform, TransformResult,
        WebhookError, WebhookOutcome, WebhookRequest,
    };

    /// The API version as a fixed-size array, for the custom section the macros emit.
    pub const fn api_version_bytes<const N: usize>() -> [u8; N] {
        let src = crate::API_VERSION.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = src[i];
            i += 1;
        }
        out
    }

    pub fn manifest<P: Plugin>(
        kind: PluginKind,
        package_name: &str,
        package_version: &str,
        package_description: &str,
    ) -> PluginManifest {
        P::capabilities().into_manifest::<P::Config>(
            kind,
            package_name,
            package_version,
            package_description,
        )
    }

    pub fn check<P: Plugin>(config: PluginConfig) -> Result<(), CallError> {
        let ctx = Context::<P::Config>::from_plugin_config(config)?;
        P::check(&ctx)
    }

    pub fn deliver<D: Destination>(
        config: PluginConfig,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let ctx = Context::<D::Config>::from_plugin_config(config)?;
        let expected = batch.len();
        let results = D::deliver(&ctx, action, batch)?;
        if results.len() != expected {
            return Err(CallError::Failed(format!(
                "plugin bug: deliver returned {} results for a batch of {expected}",
                results.len()
            )));
        }
        Ok(results)
    }

    pub fn transform<T: Transform>(
        config: PluginConfig,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        let ctx = Context::<T::Config>::from_plugin_config(config)?;
        let expected = batch.len();
        let results = T::transform(&ctx, batch)?;
        if results.len() != expected {
            return Err(CallError::Failed(format!(
                "plugin bug: transform returned {} results for a batch of {expected}",
                results.len()
            )));
        }
        Ok(results)
    }

    pub fn streams<S: Source>(config: PluginConfig) -> Result<Vec<StreamInfo>, CallError> {
        let ctx = Context::<S::Config>::from_plugin_config(config)?;
        S::streams(&ctx)
    }

    pub fn read<S: Source>(
        config: PluginConfig,
        stream: String,
        cursor: Option<String>,
    ) -> Result<Page, CallError> {
        let ctx = Context::<S::Config>::from_plugin_config(config)?;
        S::read(&ctx, &stream, cursor)
    }

    pub fn webhook<S: Source>(
        config: PluginConfig,
        request: WebhookRequest,
    ) -> Result<WebhookOutcome, WebhookError> {
        let ctx = Context::<S::Config>::from_plugin_config(config)
            .map_err(|e| WebhookError::BadRequest(crate::outcome::describe_call_error(&e)))?;
        S::webhook(&ctx, request)
    }
}
