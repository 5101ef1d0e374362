//! `switchyard validate`: everything that can be wrong with a project file, all at once — TOML
//! syntax and unknown keys (file:line:column), references between sections, filter and
//! mapping syntax, each destination's config against its plugin's JSON Schema, plugins that are
//! not installed or cannot do what a sync asks, and secrets that cannot be resolved.

use std::path::Path;

use crate::config::{Config, SyncMode};
use crate::registry::Registry;

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
    }
    problems
}

/// Each `[sources.NAME]` with a plugin: installed, a source, its config valid against the
/// plugin's JSON Schema, its required secrets given and no unknown ones.
fn check_source_plugins(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, source) in &config.sources {
        let Some(plugin_name) = &source.plugin else {
            continue;
        };
        let at = format!("[sources.{name}]");
        let plugin = match registry.find(plugin_name, source.version.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at} {e:#}"));
                continue;
            }
        };
        if plugin.kind != "source" {
            problems.push(format!(
                "{at} plugin `{}` is a {} plugin, not a source",
                plugin.name, plugin.kind
            ));
            continue;
        }
        let instance = match serde_json::to_value(&source.config) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{at} config cannot be read as JSON: {e}"));
                continue;
            }
        };
        match jsonschema::validator_for(&plugin.config_schema) {
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
        }
        for secret in &plugin.secrets {
            if secret.required && !source.secrets.contains_key(&secret.name) {
                problems.push(format!(
                    "{at} secrets.{} is missing: plugin `{}` requires it ({})",
                    secret.name, plugin.name, secret.description
                ));
            }
        }
        for key in source.secrets.keys() {
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
    }
    problems
}

fn check_secrets(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = config.admin_token() {
        problems.push(format!("[hub] {e:#}"));
    }
    if let Err(e) = config.write_keys() {
        problems.push(format!("[sources] {e:#}"));
    }
    for (name, source) in &config.sources {
        for (key, spec) in &source.secrets {
            if let Err(e) =
                crate::cli::resolve_secret(&format!("sources.{name}.secrets.{key}"), spec)
            {
                problems.push(format!("[sources.{name}] {e:#}"));
            }
        }
    }
    for (name, dest) in &config.destinations {
        for (key, spec) in &dest.secrets {
            if let Err(e) =
                crate::cli::resolve_secret(&format!("destinations.{name}.secrets.{key}"), spec)
            {
                problems.push(format!("[destinations.{name}] {e:#}"));
            }
        }
    }
    problems
}

fn check_plugins(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, dest) in &config.destinations {
        let at = format!("[destinations.{name}]");
        let plugin = match registry.find(&dest.plugin, dest.version.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at} {e:#}"));
                continue;
            }
        };
        if plugin.kind != "destination" {
            problems.push(format!(
                "{at} plugin `{}` is a {} plugin, not a destination",
                plugin.name, plugin.kind
            ));
            continue;
        }
        let instance = match serde_json::to_value(&dest.config) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{at} config cannot be read as JSON: {e}"));
                continue;
            }
        };
        match jsonschema::validator_for(&plugin.config_schema) {
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
        }
        for secret in &plugin.secrets {
            if secret.required && !dest.secrets.contains_key(&secret.name) {
                problems.push(format!(
                    "{at} secrets.{} is missing: plugin `{}` requires it ({})",
                    secret.name, plugin.name, secret.description
                ));
            }
        }
        for key in dest.secrets.keys() {
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
