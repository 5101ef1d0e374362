//! Installed plugins on disk: `<plugins dir>/<name>/<version>/` holds the component as
//! installed (`plugin.wasm`), its manifest (`manifest.json`) and the native code compiled from it
//! (`<sha256 prefix>-<engine key>.cwasm`), so start-up loads without compiling.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PluginBlock;
use crate::runtime::bindings::{Action, PluginConfig, PluginKind, PluginManifest};
use crate::runtime::inspect::{self, ComponentInfo};
use crate::runtime::net::HttpPolicy;
use crate::runtime::{Plugin, PluginInstance, Runtime, WasmContext as _};

/// What `plugin list` and `plugin info` show, and what install recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstalledPlugin {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub description: String,
    pub api_version: String,
    pub sha256: String,
    pub allowed_hosts: Vec<String>,
    pub secrets: Vec<SecretRecord>,
    pub max_batch_size: u32,
    pub default_rate_per_second: f64,
    pub actions: Vec<String>,
    pub config_schema: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretRecord {
    pub name: String,
    pub description: String,
    pub required: bool,
}

impl InstalledPlugin {
    fn from_manifest(m: &PluginManifest, info: &ComponentInfo, sha256: String) -> Self {
        InstalledPlugin {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: match m.kind {
                PluginKind::Destination => "destination".into(),
                PluginKind::Source => "source".into(),
            },
            description: m.description.clone(),
            api_version: info.api_version.clone(),
            sha256,
            allowed_hosts: m.allowed_hosts.clone(),
            secrets: m
                .secrets
                .iter()
                .map(|s| SecretRecord {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    required: s.required,
                })
                .collect(),
            max_batch_size: m.max_batch_size,
            default_rate_per_second: m.default_rate_per_second,
            actions: m
                .actions
                .iter()
                .map(|a| match a {
                    Action::Upsert => "upsert".to_string(),
                    Action::Delete => "delete".to_string(),
                    Action::Track => "track".to_string(),
                })
                .collect(),
            config_schema: serde_json::from_str(&m.config_schema)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The plugins directory.
pub struct Registry {
    dir: PathBuf,
    runtime: Runtime,
}

impl Registry {
    pub fn open(dir: impl Into<PathBuf>, runtime: Runtime) -> anyhow::Result<Registry> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the plugins directory {}", dir.display()))?;
        Ok(Registry { dir, runtime })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Validates, precompiles and stores a component. Refuses anything that is not a plugin
    /// component of a supported API version, with a one-line reason.
    pub async fn install(&self, wasm_path: &Path) -> anyhow::Result<InstalledPlugin> {
        let bytes =
            std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
        let info = inspect::inspect(&bytes).map_err(|reason| anyhow::anyhow!("{reason}"))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let artefact = self.runtime.precompile(&bytes)?;
        // SAFETY: the artefact was produced by this engine a moment ago.
        let component = unsafe {
            wasmtime::component::Component::deserialize(self.runtime.engine(), &artefact)
        }
        .wasm_context("loading the freshly compiled plugin")?;
        let plugin = self.runtime.load(component).await?;
        let manifest = plugin.manifest();
        validate_manifest(manifest)?;
        let record = InstalledPlugin::from_manifest(manifest, &info, sha.clone());

        let target = self.dir.join(&record.name).join(&record.version);
        let staging = self
            .dir
            .join(format!(".staging-{}-{}", record.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        std::fs::write(staging.join("plugin.wasm"), &bytes)?;
        std::fs::write(staging.join(self.artefact_name(&sha)), &artefact)?;
        std::fs::write(
            staging.join("manifest.json"),
            serde_json::to_vec_pretty(&record)?,
        )?;
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&staging, &target)
            .with_context(|| format!("moving the plugin into {}", target.display()))?;
        tracing::info!(plugin = %record.name, version = %record.version, "installed");
        Ok(record)
    }

    fn artefact_name(&self, sha: &str) -> String {
        format!(
            "{}-{}.cwasm",
            &sha[..16.min(sha.len())],
            self.runtime.compatibility_key()
        )
    }

    /// Every installed plugin version, sorted by name then version.
    pub fn list(&self) -> anyhow::Result<Vec<InstalledPlugin>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() || entry.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            for version in std::fs::read_dir(entry.path())? {
                let path = version?.path().join("manifest.json");
                if let Ok(text) = std::fs::read(&path) {
                    match serde_json::from_slice::<InstalledPlugin>(&text) {
                        Ok(p) => out.push(p),
                        Err(e) => tracing::warn!("skipping unreadable {}: {e}", path.display()),
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| cmp_versions(&a.version, &b.version))
        });
        Ok(out)
    }

    /// The newest installed version of `name` matching `req` (any version when None).
    pub fn find(&self, name: &str, req: Option<&str>) -> anyhow::Result<InstalledPlugin> {
        let req =
            match req {
                Some(r) => Some(semver::VersionReq::parse(r).with_context(|| {
                    format!("`{r}` is not a version requirement (e.g. \"^1.2\")")
                })?),
                None => None,
            };
        let candidates: Vec<InstalledPlugin> = self
            .list()?
            .into_iter()
            .filter(|p| p.name == name)
            .collect();
        if candidates.is_empty() {
            bail!("plugin `{name}` is not installed (see `switchyard plugin list`)");
        }
        candidates
            .into_iter()
            .rfind(|p| match (&req, semver::Version::parse(&p.version)) {
                (Some(r), Ok(v)) => r.matches(&v),
                (Some(_), Err(_)) => false,
                (None, _) => true,
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no installed version of `{name}` matches `{}`",
                    req.map(|r| r.to_string()).unwrap_or_default()
                )
            })
    }

    /// Loads an installed plugin from its cached native code, compiling (and caching) it only
    /// if this engine has no artefact for it yet.
    pub async fn load(&self, name: &str, req: Option<&str>) -> anyhow::Result<Arc<Plugin>> {
        let record = self.find(name, req)?;
        let dir = self.dir.join(&record.name).join(&record.version);
        let artefact = dir.join(self.artefact_name(&record.sha256));
        let component = if artefact.exists() {
            // SAFETY: only this host writes into the plugins directory's artefacts.
            unsafe { self.runtime.load_precompiled(&artefact)? }
        } else {
            let bytes = std::fs::read(dir.join("plugin.wasm"))
                .with_context(|| format!("reading {}", dir.join("plugin.wasm").display()))?;
            let sha = hex::encode(Sha256::digest(&bytes));
            if sha != record.sha256 {
                bail!(
                    "{} changed since it was installed: reinstall the plugin",
                    dir.display()
                );
            }
            let compiled = self.runtime.precompile(&bytes)?;
            std::fs::write(&artefact, &compiled)?;
            unsafe { self.runtime.load_precompiled(&artefact)? }
        };
        Ok(Arc::new(self.runtime.load(component).await?))
    }

    /// The plugin instance a `[destinations.NAME]` or `[sources.NAME]` block configures: its
    /// plugin loaded and of the kind the block needs, secrets resolved, and outbound HTTP
    /// limited to what the manifest asks for and the block grants.
    pub async fn instance(&self, block: &PluginBlock<'_>) -> anyhow::Result<PluginInstance> {
        let at = block.at();
        let plugin = self
            .load(block.plugin, block.version)
            .await
            .with_context(|| format!("{at}: install it with `switchyard plugin install`"))?;
        let kind = match plugin.kind() {
            PluginKind::Source => "source",
            PluginKind::Destination => "destination",
        };
        if kind != block.kind {
            bail!(
                "{at} plugin `{}` is a {kind} plugin, not a {}",
                block.plugin,
                block.kind
            );
        }
        let mut secrets = Vec::new();
        for (key, spec) in block.secrets {
            secrets.push((
                key.clone(),
                crate::cli::resolve_secret(&block.secret_path(key), spec)?,
            ));
        }
        let config = serde_json::to_string(block.config)?;
        let reroutes = block
            .reroute
            .iter()
            .map(|r| r.parse().map_err(|e: String| anyhow::anyhow!("{at} {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let policy = HttpPolicy::new(
            &plugin.manifest().allowed_hosts,
            block.allow_hosts,
            block.allow_private_hosts,
        )
        .with_reroutes(reroutes);
        Ok(PluginInstance::new(
            plugin,
            PluginConfig { config, secrets },
            policy,
        ))
    }

    /// Removes every version of `name`, or one version.
    pub fn remove(&self, name: &str, version: Option<&str>) -> anyhow::Result<Vec<String>> {
        let root = self.dir.join(name);
        if !root.is_dir() || name.contains('/') || name.starts_with('.') {
            bail!("plugin `{name}` is not installed");
        }
        let mut removed = Vec::new();
        match version {
            Some(v) => {
                let path = root.join(v);
                if !path.is_dir() {
                    bail!("version {v} of `{name}` is not installed");
                }
                std::fs::remove_dir_all(&path)?;
                removed.push(v.to_string());
                if std::fs::read_dir(&root)?.next().is_none() {
                    std::fs::remove_dir(&root)?;
                }
            }
            None => {
                for entry in std::fs::read_dir(&root)? {
                    removed.push(entry?.file_name().to_string_lossy().into_owned());
                }
                std::fs::remove_dir_all(&root)?;
            }
        }
        Ok(removed)
    }
}

fn validate_manifest(m: &PluginManifest) -> anyhow::Result<()> {
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_name {
        bail!(
            "plugin name `{}` must be 1-64 characters of a-z, 0-9 and -",
            m.name
        );
    }
    semver::Version::parse(&m.version)
        .with_context(|| format!("plugin version `{}` is not a semantic version", m.version))?;
    serde_json::from_str::<serde_json::Value>(&m.config_schema)
        .context("the manifest's config schema is not valid JSON")?;
    Ok(())
}

fn cmp_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}
