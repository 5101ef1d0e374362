//! Installed plugins on disk: `<plugins dir>/<name>/<version>/` holds the component as
//! installed (`plugin.wasm`), its manifest as recorded at install (`manifest.json`) and the
//! native code compiled from it (`<sha256 prefix>-<engine key>.cwasm`), so start-up loads
//! without compiling.
//!
//! Nothing here is ever rewritten in place: wasmtime maps an artefact into memory, and a file
//! truncated under a mapping kills the process with SIGBUS. An install builds the whole version
//! directory beside the target and swaps it in; a missing artefact is compiled once (under a
//! lock, across processes too) into a temporary file that is synced and renamed into place.
//!
//! The recorded manifest is the plugin's grant: what install showed the operator (hosts,
//! secrets, batch size, rate, actions). At every load the component's `manifest()` must still
//! say exactly that, or the load is refused.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PluginBlock;
use crate::runtime::bindings::{Action, PluginConfig, PluginKind, PluginManifest};
use crate::runtime::inspect;
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
    /// Fields the provider identifies a contact by (plugin API 1.1.0; empty before).
    #[serde(default)]
    pub key_fields: Vec<String>,
    pub config_schema: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretRecord {
    pub name: String,
    pub description: String,
    pub required: bool,
    /// Whether the plugin receives the raw value (`secret-spec.raw-value`, or for a 1.0.0
    /// plugin the config schema's keyword). Absent in records written before plugin API 1.1.0:
    /// see [`InstalledPlugin::read`].
    #[serde(default)]
    pub raw_value: bool,
}

impl InstalledPlugin {
    fn from_manifest(m: &PluginManifest, api_version: &str, sha256: String) -> Self {
        InstalledPlugin {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: kind_name(m.kind).into(),
            description: m.description.clone(),
            api_version: api_version.to_string(),
            sha256,
            allowed_hosts: m.allowed_hosts.clone(),
            secrets: m
                .secrets
                .iter()
                .map(|s| SecretRecord {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    required: s.required,
                    raw_value: s.raw_value,
                })
                .collect(),
            max_batch_size: m.max_batch_size,
            default_rate_per_second: m.default_rate_per_second,
            actions: m
                .actions
                .iter()
                .map(|a| action_name(*a).to_string())
                .collect(),
            key_fields: m.key_fields.clone(),
            config_schema: serde_json::from_str(&m.config_schema)
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// Reads a recorded `manifest.json`. Records written before plugin API 1.1.0 lack each
    /// secret's `raw_value`; for a 1.0.0 plugin it is what the config schema's keyword says, as
    /// the runtime converts its manifest (so an upgrade does not see a changed manifest).
    pub fn read(text: &[u8]) -> serde_json::Result<InstalledPlugin> {
        let mut record: InstalledPlugin = serde_json::from_slice(text)?;
        if record.api_version == crate::runtime::v1_0::API_VERSION {
            let raw = crate::runtime::v1_0::raw_value_names_in(&record.config_schema);
            for s in &mut record.secrets {
                s.raw_value = raw.contains(&s.name);
            }
        }
        Ok(record)
    }

    /// What differs between this record and `now`, field by field (`allowed_hosts: recorded
    /// ["a"], now ["b"]`). Compared as JSON so that every field the record gains is covered.
    fn differences(&self, now: &InstalledPlugin) -> Vec<String> {
        let (Ok(serde_json::Value::Object(then)), Ok(serde_json::Value::Object(now))) =
            (serde_json::to_value(self), serde_json::to_value(now))
        else {
            return vec!["the manifest could not be compared".into()];
        };
        then.iter()
            .filter(|(field, value)| now.get(*field) != Some(*value))
            .map(|(field, value)| {
                let now = now.get(field).unwrap_or(&serde_json::Value::Null);
                format!(
                    "{field}: recorded {}, now {}",
                    clip(&value.to_string(), 120),
                    clip(&now.to_string(), 120)
                )
            })
            .collect()
    }
}

/// Why an installed plugin was not loaded, for the cases callers tell apart.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component's manifest is not the one recorded (and shown) at install.
    #[error("plugin `{name}` {version} now declares a manifest other than the one recorded at install ({}): its grants are fixed at install; reinstall it to change them", .differences.join("; "))]
    ManifestChanged {
        name: String,
        version: String,
        differences: Vec<String>,
    },
}

/// `text` cut to at most `max` characters, with an ellipsis when cut: for printing what a
/// plugin declared (a manifest recorded before the caps could hold anything).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
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

    /// The registry as the command line opens it: the runtime with the host's default limits
    /// (`serve` opens it with `[hub.plugin_limits]` instead).
    pub fn open_with_default_limits(dir: impl Into<PathBuf>) -> anyhow::Result<Registry> {
        Registry::open(dir, Runtime::new(crate::runtime::Limits::default())?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Validates, precompiles and stores a component. Refuses anything that is not a plugin
    /// component of a supported API version, or whose manifest is malformed or over the caps,
    /// with a one-line reason. Installing a version that is already there replaces it in one
    /// step; of installs of one version racing, the last to finish wins.
    pub async fn install(&self, wasm_path: &Path) -> anyhow::Result<InstalledPlugin> {
        let bytes =
            std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
        let info = inspect::inspect(&bytes).map_err(|reason| anyhow::anyhow!("{reason}"))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let bytes = Arc::new(bytes);
        let artefact = {
            let (runtime, bytes) = (self.runtime.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || runtime.precompile(&bytes))
                .await
                .context("the compiler thread stopped")??
        };
        // SAFETY: the artefact was produced by this engine a moment ago.
        let component = unsafe {
            wasmtime::component::Component::deserialize(self.runtime.engine(), &artefact)
        }
        .wasm_context("loading the freshly compiled plugin")?;
        let plugin = self.runtime.load(component).await?;
        let manifest = plugin.manifest();
        validate_manifest(manifest)?;
        let record = InstalledPlugin::from_manifest(manifest, &info.api_version, sha.clone());

        // The version directory is built whole beside its place (removed again if anything
        // fails), then swapped in.
        self.remove_stale_staging();
        let staging = tempfile::Builder::new()
            .prefix(&format!(".staging-{}-", record.name))
            .tempdir_in(&self.dir)
            .with_context(|| format!("creating a staging directory in {}", self.dir.display()))?;
        write_synced(&staging.path().join("plugin.wasm"), &bytes)?;
        write_synced(&staging.path().join(self.artefact_name(&sha)), &artefact)?;
        write_synced(
            &staging.path().join("manifest.json"),
            &serde_json::to_vec_pretty(&record)?,
        )?;
        let target = self.dir.join(&record.name).join(&record.version);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || swap_in(&dir, staging, &target))
            .await
            .context("the install thread stopped")??;
        tracing::info!(plugin = %record.name, version = %record.version, "installed");
        Ok(record)
    }

    /// Removes staging and replaced directories an install killed mid-way left behind (a
    /// running install's are younger than an hour).
    fn remove_stale_staging(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if (name.starts_with(".staging-") || name.starts_with(".replaced-")) && stale {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => tracing::info!("removed {name}, left by an interrupted install"),
                    Err(e) => tracing::warn!("could not remove {name}: {e}"),
                }
            }
        }
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
                    match InstalledPlugin::read(&text) {
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
    /// if this engine has no artefact for it yet, and refuses it if its manifest is no longer
    /// the one recorded at install ([`LoadError::ManifestChanged`]).
    pub async fn load(&self, name: &str, req: Option<&str>) -> anyhow::Result<Arc<Plugin>> {
        let record = self.find(name, req)?;
        let dir = self.dir.join(&record.name).join(&record.version);
        let component = self.component(&dir, &record).await?;
        let plugin = self.runtime.load(component).await?;
        let now = InstalledPlugin::from_manifest(
            plugin.manifest(),
            &record.api_version,
            record.sha256.clone(),
        );
        let differences = record.differences(&now);
        if !differences.is_empty() {
            return Err(LoadError::ManifestChanged {
                name: record.name,
                version: record.version,
                differences,
            }
            .into());
        }
        Ok(Arc::new(plugin))
    }

    /// The compiled component of an installed version: from its artefact, or compiled now and
    /// cached for the next load.
    async fn component(
        &self,
        dir: &Path,
        record: &InstalledPlugin,
    ) -> anyhow::Result<wasmtime::component::Component> {
        let artefact = dir.join(self.artefact_name(&record.sha256));
        // An artefact only ever appears whole (renamed into place) and is never written again,
        // so one that exists is complete.
        if !artefact.exists() {
            let (runtime, dir, path, sha) = (
                self.runtime.clone(),
                dir.to_path_buf(),
                artefact.clone(),
                record.sha256.clone(),
            );
            let compiled = tokio::task::spawn_blocking(move || {
                compile_into_cache(&runtime, &dir, &path, &sha)
            })
            .await
            .context("the compiler thread stopped")??;
            if let Some(compiled) = compiled {
                // SAFETY: compiled by this engine a moment ago.
                return unsafe {
                    wasmtime::component::Component::deserialize(self.runtime.engine(), &compiled)
                }
                .wasm_context("loading the freshly compiled plugin");
            }
        }
        // SAFETY: only this host writes artefacts into the plugins directory, whole.
        unsafe { self.runtime.load_precompiled(&artefact) }
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
        let kind = kind_name(plugin.kind());
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
                crate::config::secrets::resolve_secret(&block.secret_path(key), spec)?,
            ));
        }
        let config = serde_json::to_string(block.config)?;
        let reroutes = block.reroute.to_vec();
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

/// Compiles a version's component into its artefact unless another loader (a task here or
/// another process) did meanwhile: the compiled code when this call wrote it. Holds an
/// exclusive lock on `<artefact>.lock` throughout, so each artefact is compiled once however
/// many loads race (`flock` locks belong to the open file, so threads of one process wait
/// for each other as processes do). The lock file stays: removing it could let two loaders
/// hold locks on two different files.
fn compile_into_cache(
    runtime: &Runtime,
    dir: &Path,
    artefact: &Path,
    sha256: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut lock_name = artefact.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let _lock = lock_exclusive(&dir.join(lock_name))?;
    if artefact.exists() {
        return Ok(None);
    }
    let wasm = dir.join("plugin.wasm");
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    if hex::encode(Sha256::digest(&bytes)) != sha256 {
        bail!(
            "{} changed since it was installed: reinstall the plugin",
            dir.display()
        );
    }
    let compiled = runtime.precompile(&bytes)?;
    write_atomically(artefact, &compiled)?;
    tracing::info!(artefact = %artefact.display(), "compiled and cached the plugin");
    Ok(Some(compiled))
}

/// An exclusive `flock` on `path` (created if missing), held until the file is dropped; waits
/// for whoever holds it, in this process or another.
fn lock_exclusive(path: &Path) -> anyhow::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Writes a new file and syncs it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Puts `bytes` at `path` whole or not at all: a temporary file in the same directory, synced,
/// then renamed over the path (a loader that mapped the old file keeps it intact), and the
/// directory synced so the rename lasts.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Moves a complete staging directory to `target`, replacing what is there in one step. Swaps
/// of one plugins directory take turns (a lock on `.install.lock`), so racing installs of a
/// version never trip over each other's half-done moves; the last one wins.
fn swap_in(plugins: &Path, staging: tempfile::TempDir, target: &Path) -> anyhow::Result<()> {
    let parent = target.parent().unwrap_or(plugins);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let _lock = lock_exclusive(&plugins.join(".install.lock"))?;
    let moving = || format!("moving the plugin into {}", target.display());
    if !target.exists() {
        std::fs::rename(staging.path(), target).with_context(moving)?;
        // It is the installed version now, not a staging directory to clean up.
        let _ = staging.keep();
        return sync_dir(parent);
    }
    // The old version ends up in the staging directory, which is removed when it drops.
    if exchange(staging.path(), target).is_err() {
        // No atomic exchange here (not Linux, or a filesystem without it): the old version is
        // moved onto an empty directory of its own, then the new one into place.
        let old = tempfile::Builder::new()
            .prefix(".replaced-")
            .tempdir_in(plugins)
            .with_context(|| format!("creating a directory in {}", plugins.display()))?;
        std::fs::rename(target, old.path()).with_context(moving)?;
        std::fs::rename(staging.path(), target).with_context(moving)?;
        let _ = staging.keep();
    }
    sync_dir(parent)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Caps on what a manifest may declare, checked at install: it is stored, shown by `plugin
/// list` and `plugin info`, and compared at every load, so it must stay small.
pub mod caps {
    /// `description`, in bytes: one line for `plugin list`.
    pub const DESCRIPTION: usize = 512;
    /// `version`, in bytes.
    pub const VERSION: usize = 64;
    /// `config-schema` (JSON text), in bytes.
    pub const CONFIG_SCHEMA: usize = 64 << 10;
    /// Entries of `allowed-hosts`, and bytes of each.
    pub const HOSTS: usize = 64;
    pub const HOST: usize = 253 + 6;
    /// Entries of `secrets`, bytes of each name and of each description.
    pub const SECRETS: usize = 32;
    pub const SECRET_NAME: usize = 64;
    pub const SECRET_DESCRIPTION: usize = 512;
    /// Entries of `actions`.
    pub const ACTIONS: usize = 8;
    /// `max-batch-size`.
    pub const MAX_BATCH_SIZE: u32 = 100_000;
    /// `default-rate-per-second`.
    pub const RATE: f64 = 100_000.0;
}

/// Checks a manifest's shape and sizes; the error names the field, its size and the cap.
fn validate_manifest(m: &PluginManifest) -> anyhow::Result<()> {
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_name {
        bail!(
            "plugin name `{}` must be 1-64 characters of a-z, 0-9 and -",
            clip(&m.name, 80)
        );
    }
    let too_long = |field: &str, len: usize, cap: usize| {
        anyhow::anyhow!(
            "the manifest's {field} is {len} bytes, over the cap of {cap}: shorten it and rebuild the plugin"
        )
    };
    let too_many = |field: &str, len: usize, cap: usize| {
        anyhow::anyhow!(
            "the manifest lists {len} {field}, over the cap of {cap}: rebuild the plugin with fewer"
        )
    };
    if m.version.len() > caps::VERSION {
        return Err(too_long("version", m.version.len(), caps::VERSION));
    }
    semver::Version::parse(&m.version).with_context(|| {
        format!(
            "plugin version `{}` is not a semantic version",
            clip(&m.version, 80)
        )
    })?;
    if m.description.len() > caps::DESCRIPTION {
        return Err(too_long(
            "description",
            m.description.len(),
            caps::DESCRIPTION,
        ));
    }
    if m.description.chars().any(char::is_control) {
        bail!("the manifest's description must be one line of text, without control characters");
    }
    if m.config_schema.len() > caps::CONFIG_SCHEMA {
        return Err(too_long(
            "config schema",
            m.config_schema.len(),
            caps::CONFIG_SCHEMA,
        ));
    }
    serde_json::from_str::<serde_json::Value>(&m.config_schema)
        .context("the manifest's config schema is not valid JSON")?;
    if m.allowed_hosts.len() > caps::HOSTS {
        return Err(too_many(
            "allowed hosts",
            m.allowed_hosts.len(),
            caps::HOSTS,
        ));
    }
    for host in &m.allowed_hosts {
        if host.is_empty()
            || host.len() > caps::HOST
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "the manifest's allowed host `{}` is not a host name (at most {} bytes, no spaces)",
                clip(host, 80),
                caps::HOST
            );
        }
    }
    if m.secrets.len() > caps::SECRETS {
        return Err(too_many("secrets", m.secrets.len(), caps::SECRETS));
    }
    for secret in &m.secrets {
        let valid = !secret.name.is_empty()
            && secret.name.len() <= caps::SECRET_NAME
            && secret
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            bail!(
                "the manifest's secret name `{}` must be 1-{} characters of A-Z, a-z, 0-9, _ and -",
                clip(&secret.name, 80),
                caps::SECRET_NAME
            );
        }
        if secret.description.len() > caps::SECRET_DESCRIPTION {
            return Err(too_long(
                &format!("description of secret `{}`", secret.name),
                secret.description.len(),
                caps::SECRET_DESCRIPTION,
            ));
        }
    }
    if m.actions.len() > caps::ACTIONS {
        return Err(too_many("actions", m.actions.len(), caps::ACTIONS));
    }
    if !(1..=caps::MAX_BATCH_SIZE).contains(&m.max_batch_size) {
        bail!(
            "the manifest's max batch size {} is not between 1 and {}",
            m.max_batch_size,
            caps::MAX_BATCH_SIZE
        );
    }
    let rate = m.default_rate_per_second;
    if !(rate.is_finite() && rate > 0.0 && rate <= caps::RATE) {
        bail!(
            "the manifest's default rate {rate}/s is not a number above 0 and at most {}",
            caps::RATE
        );
    }
    Ok(())
}

/// A plugin kind as `plugin list`, the recorded manifest and config blocks name it.
pub fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Source => "source",
        PluginKind::Destination => "destination",
        PluginKind::Transform => "transform",
    }
}

/// An action as the recorded manifest, the ledger and `plugin info` name it.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Upsert => "upsert",
        Action::Delete => "delete",
        Action::Track => "track",
        Action::Erase => "erase",
    }
}

fn cmp_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::SecretSpec;

    fn manifest() -> PluginManifest {
        PluginManifest {
            name: "ok-plugin".into(),
            version: "1.2.3".into(),
            kind: PluginKind::Destination,
            description: "Sends records".into(),
            config_schema: "{}".into(),
            secrets: vec![SecretSpec {
                name: "api_key".into(),
                description: "The key".into(),
                required: true,
                raw_value: false,
            }],
            allowed_hosts: vec!["api.example.com".into()],
            max_batch_size: 100,
            default_rate_per_second: 10.0,
            actions: vec![Action::Upsert],
            key_fields: vec![],
        }
    }

    #[test]
    fn manifests_over_the_caps_are_refused_naming_the_field() {
        assert!(validate_manifest(&manifest()).is_ok());
        let refused = |change: &dyn Fn(&mut PluginManifest), says: &str| {
            let mut m = manifest();
            change(&mut m);
            let err = format!("{:#}", validate_manifest(&m).unwrap_err());
            assert!(err.contains(says), "{err}");
        };
        refused(
            &|m| m.description = "x".repeat(513),
            "description is 513 bytes, over the cap of 512",
        );
        refused(&|m| m.description = "two\nlines".into(), "one line");
        refused(
            &|m| m.config_schema = format!("\"{}\"", "x".repeat(64 << 10)),
            "config schema is 65538 bytes",
        );
        refused(
            &|m| m.allowed_hosts = vec!["h.example".into(); 65],
            "lists 65 allowed hosts, over the cap of 64",
        );
        refused(
            &|m| m.allowed_hosts = vec!["a b".into()],
            "is not a host name",
        );
        refused(
            &|m| m.secrets[0].name = "bad name".into(),
            "secret name `bad name`",
        );
        refused(&|m| m.version = "1".repeat(65), "version is 65 bytes");
        refused(&|m| m.max_batch_size = 0, "max batch size 0");
        refused(
            &|m| m.default_rate_per_second = f64::NAN,
            "default rate NaN/s",
        );
        refused(&|m| m.name = "Bad".into(), "plugin name `Bad`");
    }

    #[test]
    fn differences_name_each_changed_field() {
        let then = InstalledPlugin::from_manifest(&manifest(), "1.0.0", "abc".into());
        let mut m = manifest();
        m.allowed_hosts = vec!["evil.example".into()];
        m.max_batch_size = 5;
        let now = InstalledPlugin::from_manifest(&m, "1.0.0", "abc".into());
        assert_eq!(
            then.differences(&now),
            [
                r#"allowed_hosts: recorded ["api.example.com"], now ["evil.example"]"#,
                "max_batch_size: recorded 100, now 5"
            ]
        );
        assert!(then.differences(&then.clone()).is_empty());
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn records_from_before_1_1_read_raw_values_from_the_1_0_keyword() {
        let mut record = InstalledPlugin::from_manifest(&manifest(), "1.0.0", "abc".into());
        record.config_schema = serde_json::json!({"x-switchyard-secret-values": ["api_key"]});
        let mut old = serde_json::to_value(&record).unwrap();
        old["secrets"][0]
            .as_object_mut()
            .unwrap()
            .remove("raw_value");
        old.as_object_mut().unwrap().remove("key_fields");
        let text = serde_json::to_vec(&old).unwrap();
        let read = InstalledPlugin::read(&text).unwrap();
        assert!(read.secrets[0].raw_value);
        assert!(read.key_fields.is_empty());
        // A 1.1.0 record means its field, not the keyword.
        old["api_version"] = "1.1.0".into();
        let read = InstalledPlugin::read(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(!read.secrets[0].raw_value);
    }
}
