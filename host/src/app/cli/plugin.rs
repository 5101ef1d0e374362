//! `switchyard plugin ...`: scaffold, build, install, list, inspect and remove plugins, and try
//! one by hand (check, deliver, read) with a config and secrets given on the command line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use crate::config::secrets::resolve_secret;
use crate::registry::{caps, clip, InstalledPlugin, Registry};
use crate::runtime::bindings::{Action, OutboundRecord, PluginConfig, RecordResult};
use crate::runtime::net::HttpPolicy;
use crate::runtime::PluginInstance;
use crate::scaffold::{self, Kind};
use crate::transform::{Step, TransformChain};

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
    /// Deliver records (JSON lines of {"key", "fields"}, optionally "delivery_id" and
    /// "previous_fields") through a destination plugin; prints one result per record.
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
    /// Transform messages (JSON lines, one Segment-spec message each) through a transform
    /// plugin; prints one result per message as a JSON line ({"keep": [...]} or {"drop": reason}).
    Transform {
        name: String,
        #[command(flatten)]
        instance: InstanceArgs,
        /// JSON-lines file of messages; standard input when absent.
        #[arg(long)]
        messages: Option<PathBuf>,
        /// `results`: one line per input message ({"keep": [...]} or {"drop": reason});
        /// `messages`: only the messages kept, one per line, to pipe into the next transform.
        #[arg(long, value_enum, default_value = "results")]
        output: TransformOutput,
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

/// What `plugin transform` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TransformOutput {
    Results,
    Messages,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliAction {
    Upsert,
    Delete,
    Track,
    /// Remove the person from the provider for good (plugins listing `erase` only).
    Erase,
}

impl From<CliAction> for Action {
    fn from(a: CliAction) -> Action {
        match a {
            CliAction::Upsert => Action::Upsert,
            CliAction::Delete => Action::Delete,
            CliAction::Track => Action::Track,
            CliAction::Erase => Action::Erase,
        }
    }
}

pub async fn run(cmd: PluginCommand, dir: PathBuf) -> anyhow::Result<()> {
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
            let reg = Registry::open_with_default_limits(dir)?;
            let p = reg.install(&file).await?;
            println!(
                "installed {} {} ({}, plugin API {})",
                p.name, p.version, p.kind, p.api_version
            );
            print_grants(&p);
            println!("  these grants are fixed at install: a load that finds the plugin declaring others is refused; reinstall to change them");
        }
        PluginCommand::List { json } => {
            let reg = Registry::open_with_default_limits(dir)?;
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
            let reg = Registry::open_with_default_limits(dir)?;
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
            let reg = Registry::open_with_default_limits(dir)?;
            for v in reg.remove(&name, version.as_deref())? {
                println!("removed {name} {v}");
            }
        }
        PluginCommand::Check { name, instance } => {
            let reg = Registry::open_with_default_limits(dir)?;
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
            let reg = Registry::open_with_default_limits(dir)?;
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
        PluginCommand::Transform {
            name,
            instance,
            messages,
            output,
        } => {
            let reg = Registry::open_with_default_limits(dir)?;
            let inst = configure(&reg, &name, &instance).await?;
            let batch = read_messages(messages)?;
            transform_by_hand(&name, inst, batch, output).await?;
        }
        PluginCommand::Read {
            name,
            instance,
            stream,
            cursor,
            max_pages,
        } => {
            let reg = Registry::open_with_default_limits(dir)?;
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
        if p.kind == "destination" && !p.actions.iter().any(|a| a == "erase") {
            println!("  cannot erase: privacy erasures must be done in the provider by hand");
        }
    }
    if !p.key_fields.is_empty() {
        println!(
            "  keyed by: {} (a changed value renames or replaces the contact)",
            clip(&p.key_fields.join(", "), 80)
        );
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
        for s in p.secrets.iter().take(caps::SECRETS) {
            println!(
                "  asks for secret `{}`{}: {}",
                clip(&s.name, caps::SECRET_NAME),
                if s.required { "" } else { " (optional)" },
                clip(&s.description, caps::SECRET_DESCRIPTION)
            );
            println!("    {}", crate::runtime::secrets::access_note(s.raw_value));
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
        let fields = v
            .get("fields")
            .cloned()
            .unwrap_or(serde_json::json!({}))
            .to_string();
        // By hand, a record's delivery id is its content's: the same line sent twice is the
        // same delivery, as a retry would be.
        let delivery_id = match v.get("delivery_id").and_then(|d| d.as_str()) {
            Some(id) => id.to_string(),
            None => crate::sync::delivery_id::by_content(&key, &fields),
        };
        let previous_fields = v.get("previous_fields").map(|p| p.to_string());
        out.push(OutboundRecord {
            key,
            fields,
            delivery_id,
            previous_fields,
        });
    }
    Ok(out)
}

/// Messages for `plugin transform`: one JSON object per line, passed on as text.
fn read_messages(path: Option<PathBuf>) -> anyhow::Result<Vec<String>> {
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
            .with_context(|| format!("message line {}: not JSON", i + 1))?;
        if !v.is_object() {
            bail!("message line {}: a message is a JSON object", i + 1);
        }
        out.push(line);
    }
    Ok(out)
}

/// Runs `batch` through one transform as a stream's chain would (in calls of the plugin's
/// batch size, its outputs checked, drops counted), prints what `output` asks for, and a
/// summary on stderr.
async fn transform_by_hand(
    name: &str,
    instance: PluginInstance,
    batch: Vec<String>,
    output: TransformOutput,
) -> anyhow::Result<()> {
    let inputs = batch.len();
    let chain = TransformChain::new(vec![Arc::new(Step::new(name, instance, None))]);
    let result = chain.apply(batch).await?;
    let mut out = std::io::stdout().lock();
    match output {
        TransformOutput::Messages => {
            for message in result.messages() {
                writeln!(out, "{message}")?;
            }
        }
        TransformOutput::Results => {
            let mut kept: Vec<Vec<serde_json::Value>> = vec![Vec::new(); inputs];
            for k in &result.kept {
                kept[k.input].push(serde_json::from_str(&k.message)?);
            }
            let mut dropped: Vec<Option<&str>> = vec![None; inputs];
            for d in &result.dropped {
                dropped[d.input].get_or_insert(&d.reason);
            }
            for (keep, drop) in kept.into_iter().zip(dropped) {
                let line = match drop {
                    Some(reason) if keep.is_empty() => serde_json::json!({ "drop": reason }),
                    // Some of a fan-out was not a JSON object: kept the rest, say why.
                    Some(reason) => serde_json::json!({ "keep": keep, "dropped": reason }),
                    None => serde_json::json!({ "keep": keep }),
                };
                writeln!(out, "{line}")?;
            }
        }
    }
    let counts = result.dropped_by_reason();
    let mut summary = format!(
        "{inputs} messages in, {} out, {} dropped",
        result.kept.len(),
        result.dropped.len()
    );
    for ((transform, reason), n) in &counts {
        summary.push_str(&format!("\n  {n} × {transform}: {reason}"));
    }
    eprintln!("{summary}");
    Ok(())
}
