//! `switchyard.toml`: the hub's settings, identity rules and sources. Unknown keys are errors
//! (with line and column), so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The whole project file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// `[hub]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `sqlite://PATH` (the default, one file) or `postgres://...` (several hubs share it).
    #[serde(default = "default_database")]
    pub database: String,
    /// Where installed plugins live.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// Bearer token for the admin and Profiles APIs: `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Messages waiting for the writer before the tracking API answers 429.
    #[serde(default = "default_queue")]
    pub ingest_queue: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: default_listen(),
            database: default_database(),
            plugins_dir: default_plugins_dir(),
            admin_token: None,
            ingest_queue: default_queue(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8088".into()
}
fn default_database() -> String {
    "sqlite://.switchyard/switchyard.db".into()
}
fn default_plugins_dir() -> PathBuf {
    ".switchyard/plugins".into()
}
fn default_queue() -> usize {
    50_000
}

/// `[identity]`: which identifiers join messages into one profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Per kind: how many values one profile may hold, and its priority (1 is highest).
    #[serde(default = "default_kinds")]
    pub kinds: BTreeMap<String, KindRule>,
    /// Traits that are identifiers too, trait name → kind (e.g. `customer_no = "customer_no"`).
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            kinds: default_kinds(),
            traits: BTreeMap::new(),
        }
    }
}

/// The rule of one identifier kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KindRule {
    pub limit: u32,
    pub priority: u32,
}

fn default_kinds() -> BTreeMap<String, KindRule> {
    BTreeMap::from([
        (
            "user_id".to_string(),
            KindRule {
                limit: 1,
                priority: 1,
            },
        ),
        (
            "email".to_string(),
            KindRule {
                limit: 5,
                priority: 2,
            },
        ),
        (
            "phone".to_string(),
            KindRule {
                limit: 5,
                priority: 3,
            },
        ),
        (
            "anonymous_id".to_string(),
            KindRule {
                limit: 1000,
                priority: 4,
            },
        ),
    ])
}

/// `[sources.NAME]`: a source of tracking-API messages (or, later, a source plugin).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Write keys of this source for the tracking API: `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub write_keys: Vec<String>,
}

impl Config {
    /// Reads and parses a project file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses project text; errors carry line:column.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    format!("{line}:{column}: ")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{location}{}", e.message())
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        for (kind, rule) in &self.identity.kinds {
            if rule.limit == 0 {
                anyhow::bail!("[identity.kinds.{kind}] limit must be at least 1");
            }
        }
        for (name, kind) in &self.identity.traits {
            if !self.identity.kinds.contains_key(kind) {
                anyhow::bail!("[identity.traits] {name} maps to kind `{kind}`, which [identity.kinds] does not define");
            }
        }
        Ok(())
    }

    /// Every write key with its source, secrets resolved.
    pub fn write_keys(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = Vec::new();
        for (source, cfg) in &self.sources {
            for spec in &cfg.write_keys {
                let key =
                    crate::cli::resolve_secret(&format!("sources.{source}.write_keys"), spec)?;
                keys.push((key, source.clone()));
            }
        }
        Ok(keys)
    }

    /// The admin token, resolved.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        self.hub
            .admin_token
            .as_deref()
            .map(|spec| crate::cli::resolve_secret("hub.admin_token", spec))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::parse("[hub]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(c.hub.listen, "127.0.0.1:9000");
        assert_eq!(
            c.identity.kinds["user_id"],
            KindRule {
                limit: 1,
                priority: 1
            }
        );
        let err = Config::parse("[hub]\nlisten = \"x\"\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("3:1: unknown field `lisen`"), "{err}");
    }

    #[test]
    fn trait_kinds_must_exist() {
        let err = Config::parse("[identity.traits]\ncustomer_no = \"customer\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind `customer`"), "{err}");
    }
}
