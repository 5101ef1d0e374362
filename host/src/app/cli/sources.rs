//! `switchyard source run|runs|list`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;

use crate::sources::{Progress, RunOptions, RunReport, SourceEngine};

#[derive(Subcommand, Debug)]
pub enum SourceCommand {
    /// Every plugin source with its streams, schedule, stored cursors and last run.
    List {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Read a source now: every configured stream from its stored cursor (a progress bar on a
    /// terminal). A run cut short resumes from its last committed page.
    Run {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Read every stream from the beginning instead of from the stored cursor.
        #[arg(long)]
        full_refresh: bool,
    },
    /// The run history of a source, newest first, one JSON object a line.
    Runs {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

async fn engine(path: &Path, plugins_dir: Option<PathBuf>) -> anyhow::Result<SourceEngine> {
    let (store, registry, config) = super::open_project(path, plugins_dir).await?;
    Ok(SourceEngine::new(store, registry, config))
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn records(&self, stream: &str, done: u64) {
        self.0.set_message(stream.to_string());
        self.0.set_position(done);
    }
}

fn print_report(r: &RunReport) {
    println!(
        "{}: {} — {} pages, {} records, {} new events, {} retries{}",
        r.source,
        r.status,
        r.pages,
        r.records,
        r.events,
        r.retries,
        r.duration_ms
            .map(|d| format!(" in {d} ms"))
            .unwrap_or_default()
    );
    if let Some(e) = &r.error {
        println!("  {e}");
    }
}

/// Runs a `switchyard source ...` command.
pub async fn source(cmd: SourceCommand, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match cmd {
        SourceCommand::List { config } => {
            let engine = engine(&config, plugins_dir).await?;
            let cfg = engine.config();
            let mut any = false;
            for (name, s) in cfg.sources.iter().filter(|(_, s)| s.plugin.is_some()) {
                any = true;
                let last = engine.runs(name, 1).await?.pop();
                println!(
                    "{name}\tplugin {}\tstreams {}\t{}\t{}",
                    s.plugin.as_deref().unwrap_or_default(),
                    s.streams.keys().cloned().collect::<Vec<_>>().join(","),
                    s.schedule.as_deref().unwrap_or("manual"),
                    last.map(|r| format!(
                        "last: {} at {} ({} records)",
                        r.status, r.started_at, r.records
                    ))
                    .unwrap_or_else(|| "never run".into())
                );
                for (stream, cursor, done) in engine.cursors(name).await? {
                    println!(
                        "  {stream}: {}{}",
                        if done {
                            "caught up"
                        } else {
                            "resumes mid-stream"
                        },
                        cursor.map(|c| format!(", cursor {c}")).unwrap_or_default()
                    );
                }
            }
            if !any {
                println!("no [sources.NAME] with a plugin in {}", config.display());
            }
        }
        SourceCommand::Run {
            name,
            config,
            full_refresh,
        } => {
            let engine = engine(&config, plugins_dir).await?;
            engine.source(&name)?;
            let progress: Option<Arc<dyn Progress>> = if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new_spinner().with_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {prefix} {msg}: {pos} records ({per_sec}, {elapsed})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_prefix(name.clone());
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                Some(Arc::new(Bar(bar)))
            } else {
                None
            };
            let report = engine
                .run(&name, RunOptions { full_refresh }, progress)
                .await?;
            print_report(&report);
            if report.status.needs_attention() {
                bail!(
                    "source `{name}` run {}: {}",
                    report.status,
                    report.error.unwrap_or_default()
                );
            }
        }
        SourceCommand::Runs {
            name,
            config,
            limit,
        } => {
            let engine = engine(&config, plugins_dir).await?;
            engine.source(&name)?;
            for r in engine.runs(&name, limit).await? {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}
