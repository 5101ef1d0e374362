//! `switchyard validate`: everything that can be wrong with a project file, all at once — TOML
//! syntax and unknown keys (file:line:column), references between sections, filter and
//! mapping syntax, each destination's, source's and transform's config against its plugin's
//! JSON Schema, plugins that are not installed or cannot do what a sync asks, and secrets that
//! cannot be resolved.

use std::path::Path;

use crate::config::{Config, PluginBlock, SyncMode};
use crate::registry::{InstalledPlugin, Registry};

/// Checks the file at `path`; returns one line per problem (empty: valid).
pub fn validate(path: &Path, registry: Option<&Registry>) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: cannot read: {e}", path.display())],
    };
    let config = match Config::parse_unchecked(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("{}:{e}", path.display())],
    };
    let mut problems = config.problems();
    problems.extend(check_secrets(&config));
    if let Some(registry) = registry {
        problems.extend(check_plugins(&config, registry));
        problems.extend(check_source_plugins(&config, registry));
        for (name, transform) in &config.transforms {
            check_block(&transform.block(name), registry, &mut problems);
        }
    }
    problems
}

/// Each `[sources.NAME]` with a plugin: installed, a source, its config valid against the
/// plugin's JSON Schema, its required secrets given and no unknown ones.
fn check_source_plugins(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, source) in &config.sources {
        if let Some(block) = source.block(name) {
            check_block(&block, registry, &mut problems);
        }
    }
    problems
}

/// A plugin block's plugin: installed, of the block's kind, the block's config valid against the
/// plugin's JSON Schema, its required secrets given and no unknown ones. Returns the plugin
/// when it is installed and of the right kind, for checks of what it can do.
fn check_block(
    block: &PluginBlock,
    registry: &Registry,
    problems: &mut Vec<String>,
) -> Option<InstalledPlugin> {
    let at = block.at();
    let plugin = match registry.find(block.plugin, block.version) {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("{at} {e:#}"));
            return None;
        }
    };
    if plugin.kind != block.kind {
        problems.push(format!(
            "{at} plugin `{}` is a {} plugin, not a {}",
            plugin.name, plugin.kind, block.kind
        ));
        return None;
    }
    match serde_json::to_value(block.config) {
        Err(e) => problems.push(format!("{at} config cannot be read as JSON: {e}")),
        Ok(instance) => match jsonschema::validator_for(&plugin.config_schema) {
            Ok(validator) => {
                for error in validator.iter_errors(&instance) {
                    let path = error.instance_path.to_string();
                    let field = if path.is_empty() {
                        "config".to_string()
                    } else {
                        format!("config{}", path.replace('/', "."))
                    };
                    problems.push(format!(
                        "{at} {field}: {error} (plugin `{}` {})",
                        plugin.name, plugin.version
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "{at} plugin `{}` publishes an unusable config schema: {e}",
                plugin.name
            )),
        },
    }
    for secret in &plugin.secrets {
        if secret.required && !block.secrets.contains_key(&secret.name) {
            problems.push(format!(
                "{at} secrets.{} is missing: plugin `{}` requires it ({})",
                secret.name, plugin.name, secret.description
            ));
        }
    }
    for key in block.secrets.keys() {
        if !plugin.secrets.iter().any(|s| &s.name == key) {
            problems.push(format!(
                "{at} secrets.{key}: plugin `{}` declares no such secret (it knows: {})",
                plugin.name,
                plugin
                    .secrets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Some(plugin)
}

fn check_secrets(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = config.access_tokens() {
        problems.push(format!("[hub] {e:#}"));
    }
    if let Err(e) = config.write_keys() {
        problems.push(format!("[sources] {e:#}"));
    }
    let blocks = config
        .sources
        .iter()
        .filter_map(|(name, source)| source.block(name))
        .chain(
            config
                .destinations
                .iter()
                .map(|(name, dest)| dest.block(name)),
        )
        .chain(config.transforms.iter().map(|(name, t)| t.block(name)));
    for block in blocks {
        for (key, spec) in block.secrets {
            if let Err(e) = crate::config::secrets::resolve_secret(&block.secret_path(key), spec) {
                problems.push(format!("{} {e:#}", block.at()));
            }
        }
    }
    problems
}

fn check_plugins(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, dest) in &config.destinations {
        let Some(plugin) = check_block(&dest.block(name), registry, &mut problems) else {
            continue;
        };
        for sync in config.syncs.iter().filter(|s| &s.to == name) {
            let needs: &[&str] = match sync.mode {
                SyncMode::Upsert => &["upsert"],
                SyncMode::Mirror => &["upsert", "delete"],
                SyncMode::Events => &["track"],
            };
            for action in needs {
                if !plugin.actions.iter().any(|a| a == action) {
                    problems.push(format!(
                        "[[syncs]] \"{}\": mode = \"{}\" needs `{action}`, which plugin `{}` does not support (it supports {})",
                        sync.name,
                        format!("{:?}", sync.mode).to_lowercase(),
                        plugin.name,
                        plugin.actions.join(", ")
                    ));
                }
            }
        }
    }
    problems
}

/// Plugins that send people to email and advertising platforms, where consent is what
/// regulators check first: `sendgrid`, `mailchimp`, `meta-*`, `google-ads-*`, `tiktok-*`,
/// `linkedin-*`.
fn is_ad_or_email(plugin: &str) -> bool {
    matches!(plugin, "sendgrid" | "mailchimp")
        || ["meta-", "google-ads-", "tiktok-", "linkedin-"]
            .iter()
            .any(|p| plugin.starts_with(p))
}

/// Warnings, not problems: each ad or email destination without a consent requirement.
pub fn warnings(config: &Config) -> Vec<String> {
    config
        .destinations
        .iter()
        .filter(|(_, d)| d.consent.is_empty() && is_ad_or_email(&d.plugin))
        .map(|(name, d)| {
            format!(
                "[destinations.{name}] plugin `{}` sends people to an email or ad platform, but names no consent: \
                 every profile reaches it whatever it consented to; add e.g. consent = [\"marketing\"]",
                d.plugin
            )
        })
        .collect()
}

#[cfg(test)]
mod consent_tests {
    use super::*;

    #[test]
    fn warns_on_ad_and_email_destinations_without_consent() {
        let config = Config::parse_unchecked(
            r#"
[destinations.mail]
plugin = "sendgrid"
[destinations.ads]
plugin = "meta-custom-audiences"
consent = ["Advertising"]
[destinations.tt]
plugin = "tiktok-audiences"
[destinations.hook]
plugin = "webhook"
"#,
        )
        .unwrap();
        let w = warnings(&config);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("[destinations.mail] plugin `sendgrid`"),
            "{w:?}"
        );
        assert!(w[1].starts_with("[destinations.tt]"), "{w:?}");
        assert_eq!(config.destinations["ads"].consent, vec!["advertising"]);
    }
}
