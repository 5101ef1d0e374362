//! The traits a plugin implements, and what it declares about itself.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::{
    Action, CallError, OutboundRecord, Page, PluginConfig, PluginKind, PluginManifest,
    RecordResult, SecretSpec, StreamInfo, TransformResult, WebhookError, WebhookOutcome,
    WebhookRequest,
};

/// What every plugin has: a typed config and the capabilities it asks of the hub.
pub trait Plugin {
    /// The operator's settings for one instance of the plugin. Its JSON Schema, derived with
    /// `schemars` (doc comments become descriptions), is the manifest's `config-schema`, so the
    /// hub rejects a bad config before the plugin ever sees it.
    type Config: DeserializeOwned + JsonSchema;

    /// Hosts, secrets, batch size and rate the plugin asks for.
    fn capabilities() -> Capabilities;

    /// Verifies settings and credentials with a cheap, read-only call. The default accepts any
    /// config that deserialises.
    fn check(ctx: &Context<Self::Config>) -> Result<(), CallError> {
        let _ = ctx;
        Ok(())
    }
}

/// A destination delivers records to one channel.
pub trait Destination: Plugin {
    /// Delivers one batch and returns exactly one result per record, in order. Return `Err` only
    /// when the whole batch failed for one reason (bad credentials, the API is down).
    fn deliver(
        ctx: &Context<Self::Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError>;
}

/// A source reads records from another system, page by page, and optionally by webhook.
pub trait Source: Plugin {
    /// The streams this source offers.
    fn streams(ctx: &Context<Self::Config>) -> Result<Vec<StreamInfo>, CallError>;

    /// Reads one page of `stream` from `cursor` (none: from the start).
    fn read(
        ctx: &Context<Self::Config>,
        stream: &str,
        cursor: Option<String>,
    ) -> Result<Page, CallError>;

    /// Verifies a pushed request's signature and turns it into records. The default refuses.
    fn webhook(
        ctx: &Context<Self::Config>,
        request: WebhookRequest,
    ) -> Result<WebhookOutcome, WebhookError> {
        let _ = (ctx, request);
        Err(WebhookError::BadRequest(
            "this source does not accept webhooks".to_string(),
        ))
    }
}

/// A transform reshapes, fans out or drops messages on their way to destinations (plugin API
/// 1.1.0 and later).
pub trait Transform: Plugin {
    /// Transforms one batch of messages, each a JSON object as text in the Segment spec's shape
    /// (`type`, `event`, `userId`, `properties`, `traits`, `context`, `messageId`, ...), and
    /// returns exactly one result per input, in order: [`TransformResult::Keep`] with the
    /// message (reshaped), several messages (a fan-out) or none, or [`TransformResult::Drop`]
    /// with a reason the hub counts. Return `Err` only when the whole batch failed for one
    /// reason; a message the transform cannot parse is better dropped with that reason.
    fn transform(
        ctx: &Context<Self::Config>,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError>;
}

/// The config and secrets of the plugin instance a call is for.
pub struct Context<C> {
    /// The operator's settings, already validated against the plugin's schema by the hub.
    pub config: C,
    secrets: BTreeMap<String, String>,
}

/// Shows secret names only, so that logging a context never leaks a secret.
impl<C: std::fmt::Debug> std::fmt::Debug for Context<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field(
                "secrets",
                &self
                    .secrets
                    .keys()
                    .map(|k| format!("{k}=<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<C: DeserializeOwned> Context<C> {
    /// Parses a call's config. A config that does not deserialise is `invalid-config`, naming
    /// the field serde complained about.
    pub fn from_plugin_config(config: PluginConfig) -> Result<Self, CallError> {
        let text = if config.config.trim().is_empty() {
            "{}"
        } else {
            config.config.as_str()
        };
        let parsed: C = serde_json::from_str(text)
            .map_err(|e| CallError::InvalidConfig(format!("config: {e}")))?;
        Ok(Context {
            config: parsed,
            secrets: config.secrets.into_iter().collect(),
        })
    }
}

impl<C> Context<C> {
    /// Builds a context directly, for unit tests of a plugin's logic.
    pub fn new(config: C, secrets: impl IntoIterator<Item = (String, String)>) -> Self {
        Context {
            config,
            secrets: secrets.into_iter().collect(),
        }
    }

    /// The value of a secret, or `invalid-config` naming the missing secret. Only secrets the
    /// plugin declared with [`Capabilities::secret_value`] arrive as values; the others arrive as
    /// their placeholder. Prefer [`Context::secret_placeholder`] when the secret only goes into
    /// an HTTP header.
    pub fn secret(&self, name: &str) -> Result<&str, CallError> {
        self.secrets.get(name).map(String::as_str).ok_or_else(|| {
            CallError::InvalidConfig(format!(
                "secret `{name}` is not set: add it under `secrets` in this destination's or source's config"
            ))
        })
    }

    /// Whether a secret was provided.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// A placeholder the host replaces with the secret's value in outgoing HTTP headers, so the
    /// raw secret never enters the sandbox.
    pub fn secret_placeholder(&self, name: &str) -> String {
        format!("{{{{secret:{name}}}}}")
    }
}

/// The config-schema keyword that declared raw-value secrets in plugin API 1.0.0. Since 1.1.0
/// the declaration is `secret-spec.raw-value` (set by [`Capabilities::secret_value`]); the hub
/// still reads the keyword from 1.0.0 plugins only, and this SDK no longer writes it.
pub const SECRET_VALUES_KEYWORD: &str = "x-switchyard-secret-values";

/// What a plugin asks of the hub; turned into its [`PluginManifest`] by the export macro, which adds
/// the name, version and description from `Cargo.toml`.
#[derive(Debug, Clone)]
pub struct Capabilities {
    name: Option<String>,
    description: Option<String>,
    allowed_hosts: Vec<String>,
    secrets: Vec<SecretSpec>,
    max_batch_size: u32,
    default_rate_per_second: f64,
    actions: Vec<Action>,
    key_fields: Vec<String>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

impl Capabilities {
    /// Defaults: no hosts, no secrets, batches of 100, 10 requests/s, upsert only.
    pub fn new() -> Self {
        Capabilities {
            name: None,
            description: None,
            allowed_hosts: Vec::new(),
            secrets: Vec::new(),
            max_batch_size: 100,
            default_rate_per_second: 10.0,
            actions: vec![Action::Upsert],
            key_fields: Vec::new(),
        }
    }

    /// The plugin's name, when it should differ from the crate's (e.g. `sendgrid`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// A one-line description, when it should differ from the crate's.
    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_string());
        self
    }

    /// A host the plugin calls: `api.example.com`, `api.example.com:8443` or `*.example.com`.
    pub fn allowed_host(mut self, host: &str) -> Self {
        self.allowed_hosts.push(host.to_string());
        self
    }

    /// A secret the plugin needs. The plugin receives only its placeholder (see
    /// [`Context::secret_placeholder`]): the hub fills the value into HTTP headers as a request
    /// leaves the sandbox, so it never enters plugin memory.
    pub fn secret(mut self, name: &str, description: &str, required: bool) -> Self {
        self.secrets.push(SecretSpec {
            name: name.to_string(),
            description: description.to_string(),
            required,
            raw_value: false,
        });
        self
    }

    /// A secret whose raw value the plugin needs inside the sandbox, because it computes with
    /// it (an HMAC signature such as Standard Webhooks', Stripe's or Shopify's webhook
    /// verification, Meta's `appsecret_proof`) or sends it where no header placeholder reaches
    /// (a URL, a form body). `plugin install` and `plugin info` tell the operator it enters
    /// plugin memory. Use [`Capabilities::secret`] for anything else.
    ///
    /// It is the manifest's `secret-spec.raw-value` (plugin API 1.1.0; 1.0.0 used the config
    /// schema keyword [`SECRET_VALUES_KEYWORD`]).
    pub fn secret_value(mut self, name: &str, description: &str, required: bool) -> Self {
        self.secrets.push(SecretSpec {
            name: name.to_string(),
            description: description.to_string(),
            required,
            raw_value: true,
        });
        self
    }

    /// The most records one `deliver` call or one page takes.
    pub fn max_batch_size(mut self, size: u32) -> Self {
        self.max_batch_size = size.max(1);
        self
    }

    /// Requests per second the API tolerates by default.
    pub fn default_rate_per_second(mut self, rate: f64) -> Self {
        self.default_rate_per_second = rate;
        self
    }

    /// Actions a destination supports.
    pub fn actions(mut self, actions: &[Action]) -> Self {
        self.actions = actions.to_vec();
        self
    }

    /// The mapped fields the provider identifies a contact by, e.g. `&["email"]`. When one of
    /// them changes for a record, the record arrives with `previous_fields` (the fields last
    /// acknowledged), so the plugin can rename or remove the contact under the old key.
    pub fn key_fields(mut self, fields: &[&str]) -> Self {
        self.key_fields = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Builds the manifest; the crate's own metadata fills what the capabilities leave out.
    pub fn into_manifest<C: JsonSchema>(
        self,
        kind: PluginKind,
        package_name: &str,
        package_version: &str,
        package_description: &str,
    ) -> PluginManifest {
        let schema = schemars::schema_for!(C);
        PluginManifest {
            name: self.name.unwrap_or_else(|| package_name.to_string()),
            version: package_version.to_string(),
            kind,
            description: self
                .description
                .unwrap_or_else(|| package_description.to_string()),
            config_schema: serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_string()),
            secrets: self.secrets,
            allowed_hosts: self.allowed_hosts,
            max_batch_size: self.max_batch_size,
            default_rate_per_second: self.default_rate_per_second,
            actions: match kind {
                PluginKind::Destination => self.actions,
                PluginKind::Source | PluginKind::Transform => Vec::new(),
            },
            key_fields: match kind {
                PluginKind::Destination => self.key_fields,
                PluginKind::Source | PluginKind::Transform => Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Cfg {
        /// Target URL.
        url: String,
        #[serde(default)]
        retries: u32,
    }

    #[test]
    fn manifest_carries_schema_and_capabilities() {
        let m = Capabilities::new()
            .allowed_host("api.example.com")
            .secret("token", "API token", true)
            .max_batch_size(250)
            .into_manifest::<Cfg>(PluginKind::Destination, "my-dest", "1.2.3", "Posts JSON");
        assert_eq!(m.name, "my-dest");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.max_batch_size, 250);
        assert_eq!(m.allowed_hosts, vec!["api.example.com"]);
        let schema: serde_json::Value = serde_json::from_str(&m.config_schema).unwrap();
        assert_eq!(schema["required"], serde_json::json!(["url"]));
        assert_eq!(schema["properties"]["url"]["description"], "Target URL.");
        assert!(schema.get(SECRET_VALUES_KEYWORD).is_none());
    }

    #[test]
    fn secret_values_are_declared_in_the_secret_spec_not_the_schema() {
        let m = Capabilities::new()
            .secret("token", "API token", true)
            .secret_value("signing_secret", "Signs the payload", true)
            .into_manifest::<Cfg>(PluginKind::Destination, "my-dest", "1.2.3", "Posts JSON");
        let raw: Vec<(&str, bool)> = m
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.raw_value))
            .collect();
        assert_eq!(raw, vec![("token", false), ("signing_secret", true)]);
        let schema: serde_json::Value = serde_json::from_str(&m.config_schema).unwrap();
        assert!(schema.get(SECRET_VALUES_KEYWORD).is_none());
    }

    #[test]
    fn key_fields_and_actions_belong_to_destinations_only() {
        let caps = Capabilities::new()
            .actions(&[Action::Upsert, Action::Erase])
            .key_fields(&["email"]);
        let d = caps
            .clone()
            .into_manifest::<Cfg>(PluginKind::Destination, "d", "1.0.0", "");
        assert_eq!(d.key_fields, vec!["email"]);
        assert_eq!(d.actions, vec![Action::Upsert, Action::Erase]);
        let t = caps.into_manifest::<Cfg>(PluginKind::Transform, "t", "1.0.0", "");
        assert!(t.key_fields.is_empty() && t.actions.is_empty());
    }

    #[test]
    fn bad_config_is_invalid_config_naming_the_field() {
        let err = Context::<Cfg>::from_plugin_config(PluginConfig {
            config: r#"{"retries": 3}"#.into(),
            secrets: vec![],
        })
        .unwrap_err();
        match err {
            CallError::InvalidConfig(m) => assert!(m.contains("missing field `url`"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn secrets_and_placeholders() {
        let ctx = Context::new((), [("token".to_string(), "s3cr3t".to_string())]);
        assert_eq!(ctx.secret("token").unwrap(), "s3cr3t");
        assert!(
            matches!(ctx.secret("nope"), Err(CallError::InvalidConfig(m)) if m.contains("`nope`"))
        );
        assert_eq!(ctx.secret_placeholder("token"), "{{secret:token}}");
        let shown = format!("{ctx:?}");
        assert!(
            shown.contains("token=<redacted>") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
