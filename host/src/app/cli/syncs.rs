//! `switchyard sync ...`, `switchyard dlq ...` and `switchyard audiences ...`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;

use crate::sync::{Engine, Progress, RunOptions, RunReport};

#[derive(Subcommand, Debug)]
pub enum SyncCommand {
    /// Every sync with its last run.
    List {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Run a sync now (a progress bar on a terminal), or plan it with --dry-run.
    Run {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Print what would be added, changed and removed (with samples); send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Send every record again, changed or not.
        #[arg(long)]
        full_resync: bool,
        /// Allow this run to remove more than the sync's max_removals.
        #[arg(long)]
        approve_removals: bool,
    },
    /// The run history of a sync, newest first.
    Runs {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Dead letters waiting for an operator, of one sync (or stream, `stream:NAME`) or all.
    List {
        sync: Option<String>,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send a sync's dead letters again: they are re-planned and sent by a run now. A stream's
    /// (`stream:NAME`) go back through the stream's whole way (transforms, filter, mapping) and
    /// are sent now, beside the running stream.
    Replay {
        sync: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum AudiencesCommand {
    /// Recompute an audience and print its size and a sample of members.
    Preview {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 10)]
        sample: i64,
    },
}

async fn engine(path: &std::path::Path, plugins_dir: Option<PathBuf>) -> anyhow::Result<Engine> {
    let (store, registry, config) = super::open_project(path, plugins_dir).await?;
    Ok(Engine::new(store, registry, config))
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn planned(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advanced(&self, done: u64) {
        self.0.set_position(done);
    }
}

fn print_report(r: &RunReport) {
    println!(
        "{}: {} — planned {} adds, {} changes, {} removals; sent {}, succeeded {}, retried {}, rejected {}, dead-lettered {}; withheld: no consent {}{}",
        r.sync,
        r.status,
        r.planned_adds,
        r.planned_changes,
        r.planned_removals,
        r.sent,
        r.succeeded,
        r.retried,
        r.rejected,
        r.dead_lettered,
        r.withheld,
        r.duration_ms.map(|d| format!(" in {d} ms")).unwrap_or_default()
    );
    if let Some(e) = &r.error {
        println!("  {e}");
    }
}

pub async fn sync(cmd: SyncCommand, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match cmd {
        SyncCommand::List { config } => {
            let engine = engine(&config, plugins_dir).await?;
            let cfg = engine.config();
            if cfg.syncs.is_empty() {
                println!("no [[syncs]] in {}", config.display());
            }
            for s in &cfg.syncs {
                let last = engine.runs(&s.name, 1).await?.pop();
                println!(
                    "{}\t{:?} -> {}\t{}\t{}\t{}",
                    s.name,
                    s.from,
                    s.to,
                    format!("{:?}", s.mode).to_lowercase(),
                    s.schedule.as_deref().unwrap_or("manual"),
                    last.map(|r| format!("last: {} at {}", r.status, r.started_at))
                        .unwrap_or_else(|| "never run".into())
                );
            }
        }
        SyncCommand::Run {
            name,
            config,
            dry_run,
            full_resync,
            approve_removals,
        } => {
            let engine = engine(&config, plugins_dir).await?;
            let progress: Option<Arc<dyn Progress>> = if !dry_run && std::io::stderr().is_terminal()
            {
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message(name.clone());
                Some(Arc::new(Bar(bar)))
            } else {
                None
            };
            let report = engine
                .run(
                    &name,
                    RunOptions {
                        dry_run,
                        full_resync,
                        approve_removals,
                    },
                    progress,
                )
                .await?;
            if dry_run {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            match report.status.as_str() {
                "failed" | "blocked" => bail!("sync `{name}` {}", report.status),
                _ => {}
            }
        }
        SyncCommand::Runs {
            name,
            config,
            limit,
        } => {
            let engine = engine(&config, plugins_dir).await?;
            engine.config().sync(&name)?;
            for r in engine.runs(&name, limit).await? {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}

pub async fn dlq(cmd: DlqCommand, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            sync,
            config,
            limit,
        } => {
            let engine = engine(&config, plugins_dir).await?;
            match sync.as_deref().map(|s| (s, s.strip_prefix("stream:"))) {
                Some((_, Some(stream))) => {
                    engine.config().stream_named(stream)?;
                }
                Some((s, None)) => {
                    engine.config().sync(s)?;
                }
                None => {}
            }
            for d in engine.dead_letters(sync.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&d)?);
            }
        }
        DlqCommand::Replay { sync, config } => {
            if let Some(stream) = sync.strip_prefix("stream:") {
                let (store, registry, config) = super::open_project(&config, plugins_dir).await?;
                let engine = Engine::new(store.clone(), registry.clone(), config);
                engine.config().stream_named(stream)?;
                let streams = crate::streams::StreamEngine::new(store, engine, registry);
                let r = streams.replay(stream, "cli").await?;
                println!(
                    "{}: {} dead letters replayed — sent {}, dropped {}, dead-lettered again {}, message no longer stored {}",
                    sync, r.letters, r.sent, r.dropped, r.dead_lettered, r.gone
                );
                return Ok(());
            }
            let engine = engine(&config, plugins_dir).await?;
            let n = engine.replay(&sync).await?;
            println!("{n} dead letters of `{sync}` released; running the sync to send them");
            let report = engine.run(&sync, RunOptions::default(), None).await?;
            print_report(&report);
        }
    }
    Ok(())
}

pub async fn audiences(cmd: AudiencesCommand) -> anyhow::Result<()> {
    match cmd {
        AudiencesCommand::Preview {
            name,
            config,
            sample,
        } => {
            let cfg = crate::config::compile::Project::load(&config)?;
            let audience = cfg.audience(&name).ok_or_else(|| {
                anyhow::anyhow!(
                    "no [audiences.{name}] in {} (defined: {})",
                    config.display(),
                    cfg.audiences.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let store = cfg.hub.open_store().await?;
            let refresh = crate::audience::refresh(&store, &name, audience, false).await?;
            let (size, members) = crate::audience::preview(&store, &name, sample).await?;
            let profiles = crate::store::profiles::load(&store, &members, false).await?;
            println!(
                "{name}: {size} profiles ({} evaluated now, {} joined, {} left)",
                refresh.evaluated, refresh.joined, refresh.left
            );
            if let Some(e) = refresh.first_error {
                println!(
                    "  the filter failed on {} profiles, e.g.: {e}",
                    refresh.errors
                );
            }
            for p in profiles {
                println!(
                    "  {}",
                    serde_json::json!({"id": p.id, "identifiers": p.identifiers, "traits": p.traits})
                );
            }
        }
    }
    Ok(())
}
