//! What a plugin sees of its secrets, and what the hub keeps of them in what a plugin says.
//!
//! By default a plugin receives only placeholders (`{{secret:NAME}}`) in `plugin-config.secrets`;
//! the host fills them into HTTP headers as a request leaves the sandbox, so the value never
//! enters plugin memory. A plugin that must compute with a value (an HMAC signature, Meta's
//! `appsecret_proof`, an OAuth refresh form) declares it (`secret-spec.raw-value`), and then
//! receives it raw; install and `plugin info` say so. Whatever any plugin returns or logs is scrubbed of every secret value
//! of its instance before the hub stores or logs it (a plugin can learn a placeholder's value
//! from a server that echoes headers, so the scrub covers every secret, declared or not).

use std::sync::Arc;

use super::bindings::PluginManifest;

/// The placeholder a plugin receives, and writes into a header, for secret `name`.
pub fn placeholder(name: &str) -> String {
    format!("{{{{secret:{name}}}}}")
}

/// Secrets of a manifest that enter plugin memory: those whose `secret-spec.raw-value` is set
/// (for a 1.0.0 plugin, converted from its config schema's keyword by [`super::v1_0`]).
pub fn raw_value_names(manifest: &PluginManifest) -> Vec<String> {
    manifest
        .secrets
        .iter()
        .filter(|s| s.raw_value)
        .map(|s| s.name.clone())
        .collect()
}

/// One line for install output and `plugin info` saying where a secret's value goes.
pub fn access_note(raw: bool) -> &'static str {
    if raw {
        "its VALUE ENTERS PLUGIN MEMORY (the plugin declares it computes with it)"
    } else {
        "by reference: the plugin sees a placeholder, the hub fills it into HTTP headers"
    }
}

/// Replaces every secret value of one plugin instance with `[redacted secret NAME]`.
#[derive(Debug, Default)]
pub struct Scrubber {
    /// (value, replacement), longest value first so a secret containing another is replaced
    /// whole.
    secrets: Vec<(String, String)>,
}

impl Scrubber {
    pub fn new(secrets: &[(String, String)]) -> Arc<Scrubber> {
        let mut secrets: Vec<(String, String)> = secrets
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (value.clone(), format!("[redacted secret {name}]")))
            .collect();
        secrets.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
        Arc::new(Scrubber { secrets })
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.secrets.iter().any(|(v, _)| text.contains(v.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for (value, replacement) in &self.secrets {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), replacement);
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// Scrubs a string in place.
    pub fn scrub_in_place(&self, text: &mut String) {
        if self.secrets.is_empty() {
            return;
        }
        if let std::borrow::Cow::Owned(clean) = self.scrub(text) {
            *text = clean;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_every_value_longest_first() {
        let s = Scrubber::new(&[
            ("short".into(), "abcd".into()),
            ("long".into(), "abcdefgh".into()),
            ("empty".into(), String::new()),
        ]);
        assert_eq!(
            s.scrub("x abcdefgh y abcd z"),
            "x [redacted secret long] y [redacted secret short] z"
        );
        assert!(matches!(
            s.scrub("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut text = "abcd".to_string();
        s.scrub_in_place(&mut text);
        assert_eq!(text, "[redacted secret short]");
    }

    #[test]
    fn raw_values_are_those_the_secret_specs_declare() {
        use crate::runtime::bindings::{PluginKind, SecretSpec};
        let spec = |name: &str, raw_value: bool| SecretSpec {
            name: name.into(),
            description: String::new(),
            required: true,
            raw_value,
        };
        let manifest = PluginManifest {
            name: "p".into(),
            version: "1.0.0".into(),
            kind: PluginKind::Destination,
            description: String::new(),
            // The 1.0.0 keyword means nothing in a 1.1.0 manifest.
            config_schema: serde_json::json!({"x-switchyard-secret-values": ["token"]}).to_string(),
            secrets: vec![spec("signing", true), spec("token", false)],
            allowed_hosts: vec![],
            max_batch_size: 1,
            default_rate_per_second: 1.0,
            actions: vec![],
            key_fields: vec![],
        };
        assert_eq!(raw_value_names(&manifest), vec!["signing".to_string()]);
    }
}
