//! The `switchyard` command line: the commands and their arguments, one file per group
//! ([`plugin`], [`profiles`], [`project`]: validate and init, [`syncs`]: sync, dlq and
//! audiences, [`sources`]); `serve` is `app::hub::serve`.

mod plugin;
mod profiles;
mod project;
mod sources;
mod streams;
mod syncs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

pub use plugin::PluginCommand;
pub use profiles::ProfilesCommand;
pub use sources::SourceCommand;
pub use syncs::{AudiencesCommand, DlqCommand, SyncCommand};

use crate::config::compile::Project;
use crate::registry::Registry;
use crate::store::Store;

/// What the engine commands (sync, dlq, source) open: the project file (with `--plugins-dir`
/// overriding `[hub] plugins_dir`), its store and its installed plugins.
async fn open_project(
    path: &Path,
    plugins_dir: Option<PathBuf>,
) -> anyhow::Result<(Store, Arc<Registry>, Arc<Project>)> {
    let config = Project::load_with_plugins_dir(path, plugins_dir.as_deref())?;
    let store = config.hub.open_store().await?;
    let registry = Registry::open_with_default_limits(config.hub.plugins_dir.clone())?;
    Ok((store, Arc::new(registry), Arc::new(config)))
}

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
    Sync(SyncCommand),
    /// Records that could not be delivered.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Inspect audiences.
    #[command(subcommand)]
    Audiences(AudiencesCommand),
    /// Run source plugins (pull) and read their history.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Event streams: their state, and what one forwards, live.
    #[command(subcommand)]
    Streams(streams::StreamsCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.plugins_dir;
    match cli.command {
        Command::Serve { config } => super::hub::serve(&config, dir).await,
        Command::Profiles(cmd) => profiles::run(cmd, dir).await,
        Command::Plugin(cmd) => {
            plugin::run(cmd, dir.unwrap_or_else(|| ".switchyard/plugins".into())).await
        }
        Command::Validate { config } => project::validate(&config, dir),
        Command::Init { path, force } => project::init(&path, force),
        Command::Sync(cmd) => syncs::sync(cmd, dir).await,
        Command::Dlq(cmd) => syncs::dlq(cmd, dir).await,
        Command::Audiences(cmd) => syncs::audiences(cmd).await,
        Command::Source(cmd) => sources::source(cmd, dir).await,
        Command::Streams(cmd) => streams::run(cmd).await,
    }
}
