//! The `switchyard` command line.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::registry::{caps, clip, InstalledPlugin, Registry};
use crate::runtime::bindings::{Action, OutboundRecord, PluginConfig, RecordResult};
use crate::runtime::net::HttpPolicy;
use crate::runtime::{Limits, PluginInstance, Runtime};
use crate::scaffold::{self, Kind};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: customer profiles in, audiences and events out, through sandboxed WebAssembly plugins"
)]
pub struct Cli {
    /// Where installed plugins live.
    #[arg(long, global = true, env = "SWITCHYARD_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub: tracking API, Profiles API, metrics.
    Serve {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Look up or erase profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Install, inspect, write and try plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check a project file: TOML, references, filters, mappings, each destination's config
    /// against its plugin's schema, secrets. Prints every problem.
    Validate {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Write a commented example project file.
    Init {
        #[arg(default_value = "switchyard.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run syncs and read their history.
    #[command(subcommand)]
    Sync(crate::sync::commands::SyncCommand),
    /// Records that could not be delivered.
    #[command(subcommand)]
    Dlq(crate::sync::commands::DlqCommand),
    /// Inspect audiences.
    #[command(subcommand)]
    Audiences(crate::sync::commands::AudiencesCommand),
    /// Run source plugins (pull) and read their history.
    #[command(subcommand)]
    Source(crate::sources::commands::SourceCommand),
}

#[derive(Subcommand, Debug)]
pub enum ProfilesCommand {
    /// Print a profile (identifiers, traits) as JSON.
    Get {
        /// KIND:VALUE, e.g. email:ada@example.com
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Erase a profile and suppress its identifiers.
    Delete {
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Scaffold a plugin crate that builds as is.
    New {
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Use this switchyard-sdk checkout instead of the published crate.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate into a component (cargo, target wasm32-wasip2).
    Build {
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Cargo profile.
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Validate, precompile and install a component.
    Install { file: PathBuf },
    /// List installed plugins.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show an installed plugin's manifest.
    Info { name: String },
    /// Remove an installed plugin (every version unless --version).
    Remove {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Run a plugin's `check` with a config.
    Check {
        name: String,
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// Deliver records (JSON lines of {"key", "fields"}) through a destination plugin; prints
    /// one result per record.
    Deliver {
        name: String,
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long, value_enum, default_value = "upsert")]
        action: CliAction,
        /// JSON-lines file of records; standard input when absent.
        #[arg(long)]
        records: Option<PathBuf>,
    },
    /// Read a source plugin's stream page by page; prints records as JSON lines.
    Read {
        name: String,
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        cursor: Option<String>,
        /// Stop after this many pages.
        #[arg(long, default_value_t = 1000)]
        max_pages: usize,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct InstanceArgs {
    /// The plugin's config, JSON text or @FILE.
    #[arg(long, default_value = "{}")]
    config: String,
    /// A secret as NAME=VALUE, where VALUE is `${ENV_VAR}`, `file:PATH` or literal text.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Hosts granted to the plugin (default: those its manifest names).
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    /// Exact host:port pairs the plugin may reach on private or loopback addresses.
    #[arg(long = "allow-private")]
    allow_private: Vec<String>,
    /// Send requests for a granted host elsewhere, as HOST[:PORT]=URL (a staging API, a proxy,
    /// a local fake). The target's host:port must also be in --allow-private if it is private.
    #[arg(long = "reroute")]
    reroutes: Vec<crate::runtime::net::Reroute>,
    /// Version requirement, e.g. "^1.2".
    #[arg(long)]
    version: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliAction {
    Upsert,
    Delete,
    Track,
}

impl From<CliAction> for Action {
    fn from(a: CliAction) -> Action {
        match a {
            CliAction::Upsert => Action::Upsert,
            CliAction::Delete => Action::Delete,
            CliAction::Track => Action::Track,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.plugins_dir;
    match cli.command {
        Command::Serve { config } => serve(&config, dir).await,
        Command::Profiles(cmd) => profiles(cmd).await,
        Command::Plugin(cmd) => {
            plugin(cmd, dir.unwrap_or_else(|| ".switchyard/plugins".into())).await
        }
        Command::Validate { config } => {
            let cfg = crate::config::Config::parse_unchecked(
                &std::fs::read_to_string(&config).unwrap_or_default(),
            )
            .ok();
            let plugins = dir
                .or_else(|| cfg.map(|c| c.hub.plugins_dir))
                .unwrap_or_else(|| ".switchyard/plugins".into());
            let registry = registry(plugins).ok();
            let problems = crate::validate::validate(&config, registry.as_ref());
            if problems.is_empty() {
                println!("{}: valid", config.display());
                return Ok(());
            }
            for p in &problems {
                println!("{p}");
            }
            bail!(
                "{}: {} problem{}",
                config.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )
        }
        Command::Init { path, force } => {
            if path.exists() && !force {
                bail!("{} exists; pass --force to overwrite it", path.display());
            }
            std::fs::write(&path, include_str!("../../switchyard.example.toml"))
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {}: edit it, then `switchyard validate --config {}`",
                path.display(),
                path.display()
            );
            Ok(())
        }
        Command::Sync(cmd) => crate::sync::commands::sync(cmd, dir).await,
        Command::Dlq(cmd) => crate::sync::commands::dlq(cmd, dir).await,
        Command::Audiences(cmd) => crate::sync::commands::audiences(cmd).await,
        Command::Source(cmd) => crate::sources::commands::source(cmd, dir).await,
    }
}

async fn serve(path: &std::path::Path, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    // Plugin calls get half of the descriptors at most (`[hub.plugin_limits] hub_connections`):
    // the rest is the reserve that keeps the listeners and the database answering.
    match crate::runtime::raise_fd_limit() {
        Ok(n) => tracing::debug!(file_descriptors = n, "file descriptor limit"),
        Err(e) => tracing::warn!("could not raise the file descriptor limit: {e}"),
    }
    let mut config = crate::config::Config::load(path)?;
    if let Some(dir) = plugins_dir {
        config.hub.plugins_dir = dir;
    }
    let hub = crate::api::Hub::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.hub.listen)
        .await
        .with_context(|| format!("listening on {}", config.hub.listen))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::sync::scheduler::run(hub.engine.clone()));
    tokio::spawn(crate::sources::scheduler::run(hub.sources.clone()));
    // SIGHUP: re-read the file; audiences, destinations and syncs change for runs that start
    // from now on, runs in flight finish with the config they started with.
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let engine = hub.engine.clone();
        let path = path.to_path_buf();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match crate::config::Config::load(&path) {
                    Ok(c) => {
                        engine.reload(std::sync::Arc::new(c));
                        tracing::info!(path = %path.display(), "configuration reloaded (audiences, destinations, syncs; [hub], [identity] and [sources] need a restart)");
                    }
                    Err(e) => tracing::error!(
                        "configuration not reloaded, keeping the running one: {e:#}"
                    ),
                }
            }
        });
    }
    tracing::info!(%addr, database = %crate::store::redact_url(&config.hub.database), "switchyard is serving");
    println!("switchyard listening on http://{addr}");
    // Connect info: the tracking API's `context.ip` is the peer's address.
    let app = hub
        .router
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = ctrl_c => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await?;
    Ok(())
}

async fn profiles(cmd: ProfilesCommand) -> anyhow::Result<()> {
    let (id, path, delete) = match &cmd {
        ProfilesCommand::Get { id, config } => (id, config, false),
        ProfilesCommand::Delete { id, config } => (id, config, true),
    };
    let config = crate::config::Config::load(path)?;
    let identifier = crate::identity::Identifier::parse(id)
        .with_context(|| format!("`{id}` is not KIND:VALUE, e.g. email:ada@example.com"))?;
    let store = config.hub.open_store().await?;
    let profiles = crate::profiles::Profiles::new(store);
    if delete {
        match profiles.delete(&identifier).await? {
            Some(p) => println!("erased profile {p}; its identifiers are suppressed"),
            None => bail!("no profile has {identifier}"),
        }
    } else {
        match profiles.get(&identifier).await? {
            Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
            None => bail!("no profile has {identifier}"),
        }
    }
    Ok(())
}

pub(crate) fn registry(dir: PathBuf) -> anyhow::Result<Registry> {
    Registry::open(dir, Runtime::new(Limits::default())?)
}

async fn plugin(cmd: PluginCommand, dir: PathBuf) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New {
            name,
            kind,
            dir: into,
            sdk_path,
        } => {
            let path = scaffold::new_plugin(&name, kind, &into, sdk_path.as_deref())?;
            println!("created {}", path.display());
            println!("next: switchyard plugin build {} && switchyard plugin install <the .wasm it prints>", path.display());
        }
        PluginCommand::Build { path, profile } => {
            let wasm = scaffold::build_plugin(&path, &profile)?;
            println!("{}", wasm.display());
        }
        PluginCommand::Install { file } => {
            let reg = registry(dir)?;
            let p = reg.install(&file).await?;
            println!(
                "installed {} {} ({}, plugin API {})",
                p.name, p.version, p.kind, p.api_version
            );
            print_grants(&p);
            println!("  these grants are fixed at install: a load that finds the plugin declaring others is refused; reinstall to change them");
        }
        PluginCommand::List { json } => {
            let reg = registry(dir)?;
            let mut list = reg.list()?;
            // A record kept from before the manifest caps may hold anything; print little of it.
            for p in &mut list {
                p.description = clip(&p.description, caps::DESCRIPTION);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no plugins installed in {}", reg.dir().display());
            } else {
                println!(
                    "{:<28} {:<10} {:<12} DESCRIPTION",
                    "NAME", "VERSION", "KIND"
                );
                for p in list {
                    println!(
                        "{:<28} {:<10} {:<12} {}",
                        clip(&p.name, 64),
                        clip(&p.version, 20),
                        p.kind,
                        clip(p.description.lines().next().unwrap_or_default(), 100)
                    );
                }
            }
        }
        PluginCommand::Info { name } => {
            let reg = registry(dir)?;
            let p = reg.find(&name, None)?;
            println!(
                "{} {} ({}, plugin API {})",
                clip(&p.name, 64),
                clip(&p.version, 20),
                p.kind,
                p.api_version
            );
            println!("  sha256: {}", p.sha256);
            print_grants(&p);
            println!(
                "  config schema:\n{}",
                clip(
                    &serde_json::to_string_pretty(&p.config_schema)?,
                    caps::CONFIG_SCHEMA
                )
            );
        }
        PluginCommand::Remove { name, version } => {
            let reg = registry(dir)?;
            for v in reg.remove(&name, version.as_deref())? {
                println!("removed {name} {v}");
            }
        }
        PluginCommand::Check { name, instance } => {
            let reg = registry(dir)?;
            let inst = configure(&reg, &name, &instance).await?;
            inst.check().await?;
            println!("{name}: check passed");
        }
        PluginCommand::Deliver {
            name,
            instance,
            action,
            records,
        } => {
            let reg = registry(dir)?;
            let inst = configure(&reg, &name, &instance).await?;
            let batch = read_records(records)?;
            let max = inst.plugin().manifest().max_batch_size.max(1) as usize;
            let mut out = std::io::stdout().lock();
            for chunk in batch.chunks(max) {
                let results = inst.deliver(action.into(), chunk).await?;
                for (record, result) in chunk.iter().zip(results) {
                    let line = match result {
                        RecordResult::Ok => serde_json::json!({"key": record.key, "result": "ok"}),
                        RecordResult::Retry(r) => {
                            serde_json::json!({"key": record.key, "result": "retry", "reason": r.reason, "after_ms": r.after_ms})
                        }
                        RecordResult::Rejected(reason) => {
                            serde_json::json!({"key": record.key, "result": "rejected", "reason": reason})
                        }
                    };
                    writeln!(out, "{line}")?;
                }
            }
        }
        PluginCommand::Read {
            name,
            instance,
            stream,
            cursor,
            max_pages,
        } => {
            let reg = registry(dir)?;
            let inst = configure(&reg, &name, &instance).await?;
            let mut cursor = cursor;
            let mut out = std::io::stdout().lock();
            for _ in 0..max_pages {
                let page = inst.read(&stream, cursor.as_deref()).await?;
                for r in &page.records {
                    let data: serde_json::Value = serde_json::from_str(&r.data)
                        .unwrap_or(serde_json::Value::String(r.data.clone()));
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"id": r.id, "data": data, "updated_at": r.updated_at})
                    )?;
                }
                cursor = page.cursor;
                if page.done {
                    break;
                }
            }
            eprintln!("cursor: {}", cursor.unwrap_or_default());
        }
    }
    Ok(())
}

/// What install recorded and granted: shown at install and by `plugin info`. Clipped, since a
/// record kept from before the manifest caps may hold anything.
fn print_grants(p: &InstalledPlugin) {
    println!("  {}", clip(&p.description, caps::DESCRIPTION));
    println!(
        "  max batch size: {}, default rate: {}/s",
        p.max_batch_size, p.default_rate_per_second
    );
    if !p.actions.is_empty() {
        println!("  actions: {}", clip(&p.actions.join(", "), 80));
    }
    if p.allowed_hosts.is_empty() {
        println!("  asks to call: no hosts");
    } else {
        let shown: Vec<String> = p
            .allowed_hosts
            .iter()
            .take(caps::HOSTS)
            .map(|h| clip(h, caps::HOST))
            .collect();
        let more = p.allowed_hosts.len().saturating_sub(shown.len());
        println!(
            "  asks to call: {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    if p.secrets.is_empty() {
        println!("  asks for secrets: none");
    } else {
        let raw = crate::runtime::secrets::raw_value_names_in(&p.config_schema);
        for s in p.secrets.iter().take(caps::SECRETS) {
            println!(
                "  asks for secret `{}`{}: {}",
                clip(&s.name, caps::SECRET_NAME),
                if s.required { "" } else { " (optional)" },
                clip(&s.description, caps::SECRET_DESCRIPTION)
            );
            println!(
                "    {}",
                crate::runtime::secrets::access_note(raw.contains(&s.name))
            );
        }
        if p.secrets.len() > caps::SECRETS {
            println!("  and {} more secrets", p.secrets.len() - caps::SECRETS);
        }
    }
}

async fn configure(
    reg: &Registry,
    name: &str,
    args: &InstanceArgs,
) -> anyhow::Result<PluginInstance> {
    let plugin = reg.load(name, args.version.as_deref()).await?;
    let config_text = match args.config.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading config {path}"))?
        }
        None => args.config.clone(),
    };
    serde_json::from_str::<serde_json::Value>(&config_text)
        .context("--config is not valid JSON")?;
    let mut secrets = Vec::new();
    for s in &args.secrets {
        let Some((k, v)) = s.split_once('=') else {
            bail!(
                "--secret `{}` must be NAME=VALUE",
                s.split('=').next().unwrap_or("")
            );
        };
        secrets.push((k.to_string(), resolve_secret(k, v)?));
    }
    let manifest = plugin.manifest();
    let policy = HttpPolicy::new(
        &manifest.allowed_hosts,
        (!args.allow_hosts.is_empty()).then_some(args.allow_hosts.as_slice()),
        &args.allow_private,
    )
    .with_reroutes(args.reroutes.clone());
    Ok(PluginInstance::new(
        plugin,
        PluginConfig {
            config: config_text,
            secrets,
        },
        policy,
    ))
}

/// `${ENV_VAR}`, `file:PATH`, or the literal value. Errors name the secret, never its value.
pub fn resolve_secret(name: &str, spec: &str) -> anyhow::Result<String> {
    if let Some(var) = spec.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
        return std::env::var(var)
            .with_context(|| format!("secret `{name}`: environment variable {var} is not set"));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .with_context(|| format!("secret `{name}`: cannot read {path}"));
    }
    Ok(spec.to_string())
}

fn read_records(path: Option<PathBuf>) -> anyhow::Result<Vec<OutboundRecord>> {
    let reader: Box<dyn BufRead> = match &path {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("record line {}: not JSON", i + 1))?;
        let key = v["key"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("record line {}: needs a string `key`", i + 1))?;
        let fields = v.get("fields").cloned().unwrap_or(serde_json::json!({}));
        out.push(OutboundRecord {
            key,
            fields: fields.to_string(),
        });
    }
    Ok(out)
}
