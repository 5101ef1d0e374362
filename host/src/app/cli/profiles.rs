//! `switchyard profiles get|show|erase|erasure|erasures|unmerge`: a profile by any of its
//! identifiers, read straight from the store (`show` adds its consent and merge history);
//! erasing one (in the hub, then in every destination it was sent to), and the erasures'
//! receipts; undoing a merge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use crate::config::Config;
use crate::erasure::{Erasures, Receipt};
use crate::store::erasure::ProfileRef;

#[derive(Subcommand, Debug)]
pub enum ProfilesCommand {
    /// Print a profile (identifiers, traits) as JSON.
    Get {
        /// KIND:VALUE, e.g. email:ada@example.com
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Print a profile with its consent and its merge history (ids, reasons, the identifier
    /// that joined, undone or not) as JSON: the ids `profiles unmerge` takes.
    Show {
        /// KIND:VALUE, e.g. email:ada@example.com
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Undo a merge: split the merged-away profile back out with its identifiers, traits and
    /// events; the next sync runs correct the destinations. The two may not merge again unless
    /// --allow-rejoin.
    Unmerge {
        /// The merge's id (`mrg_...`), from `profiles show`.
        merge_id: String,
        /// Let later messages that name both profiles merge them again.
        #[arg(long)]
        allow_rejoin: bool,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Erase a profile (privacy request): in the hub at once (every trace of its identifiers;
    /// later messages carrying them are dropped), then in every destination it was sent to.
    /// Prints the receipt as JSON; exits non-zero while a destination is still pending (a
    /// running `switchyard serve` keeps retrying it; `profiles erasure ID` shows progress).
    #[command(alias = "delete")]
    Erase {
        /// KIND:VALUE (e.g. email:ada@example.com) or the profile's id.
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// How long to keep retrying the destinations' erases here before leaving them to
        /// `serve` (e.g. "30s", "5m"; "0s": one attempt each).
        #[arg(long, default_value = "30s")]
        wait: humantime::Duration,
    },
    /// An erasure's receipt: each destination, its status, when it was erased, its last error.
    /// With --retry, attempts its pending destinations now (until --wait has passed).
    Erasure {
        /// The erasure id (`era_...`) that `profiles erase` printed.
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long)]
        retry: bool,
        #[arg(long, default_value = "0s")]
        wait: humantime::Duration,
    },
    /// The newest erasures' receipts, one JSON line each.
    Erasures {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

async fn erasures(
    path: &std::path::Path,
    plugins_dir: Option<PathBuf>,
) -> anyhow::Result<Erasures> {
    let config =
        crate::config::compile::Project::load_with_plugins_dir(path, plugins_dir.as_deref())?;
    let store = config.hub.open_store().await?;
    let registry =
        crate::registry::Registry::open_with_default_limits(config.hub.plugins_dir.clone())?;
    let syncs = crate::sync::Engine::new(store, Arc::new(registry), Arc::new(config));
    Ok(Erasures::new(syncs))
}

fn print_receipt(r: &Receipt) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(r)?);
    Ok(())
}

/// Fails (non-zero exit) when a destination is still pending, naming them.
fn finished(r: &Receipt) -> anyhow::Result<()> {
    if r.complete {
        return Ok(());
    }
    let pending: Vec<&str> = r
        .destinations
        .iter()
        .filter(|d| d.status == crate::store::erasure::TargetStatus::Pending)
        .map(|d| d.destination.as_str())
        .collect();
    bail!(
        "erasure {} is done in the hub but not yet at {}: `switchyard serve` keeps retrying; see `switchyard profiles erasure {}`",
        r.id,
        pending.join(", "),
        r.id
    )
}

pub async fn run(cmd: ProfilesCommand, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match cmd {
        ProfilesCommand::Get { id, config } => {
            let config = Config::load(&config)?;
            let identifier = crate::identity::Identifier::parse(&id)
                .with_context(|| format!("`{id}` is not KIND:VALUE, e.g. email:ada@example.com"))?;
            let store = config.hub.open_store().await?;
            let profiles = crate::profiles::Profiles::new(store);
            match profiles.get(&identifier).await? {
                Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
                None => bail!("no profile has {identifier}"),
            }
            Ok(())
        }
        ProfilesCommand::Show { id, config } => {
            let config = Config::load(&config)?;
            let identifier = crate::identity::Identifier::parse(&id)
                .with_context(|| format!("`{id}` is not KIND:VALUE, e.g. email:ada@example.com"))?;
            let store = config.hub.open_store().await?;
            let profiles = crate::profiles::Profiles::new(store);
            match profiles.show(&identifier).await? {
                Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
                None => bail!("no profile has {identifier}"),
            }
            Ok(())
        }
        ProfilesCommand::Unmerge {
            merge_id,
            allow_rejoin,
            config,
        } => {
            let config = Config::load(&config)?;
            let store = config.hub.open_store().await?;
            let profiles = crate::profiles::Profiles::new(store);
            let done = profiles.unmerge(&merge_id, allow_rejoin).await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(())
        }
        ProfilesCommand::Erase { id, config, wait } => {
            let target = if id.contains(':') {
                ProfileRef::Identifier(crate::identity::Identifier::parse(&id).with_context(
                    || format!("`{id}` is not KIND:VALUE, e.g. email:ada@example.com"),
                )?)
            } else {
                ProfileRef::Id(id.clone())
            };
            let engine = erasures(&config, plugins_dir).await?;
            let Some(receipt) = engine.erase(&target).await? else {
                bail!("no profile has {id}");
            };
            let receipt = engine
                .drive(&receipt.id, Duration::from(wait))
                .await?
                .unwrap_or(receipt);
            print_receipt(&receipt)?;
            finished(&receipt)
        }
        ProfilesCommand::Erasure {
            id,
            config,
            retry,
            wait,
        } => {
            let engine = erasures(&config, plugins_dir).await?;
            let receipt = if retry {
                engine.drive(&id, Duration::from(wait)).await?
            } else {
                engine.receipt(&id).await?
            };
            let Some(receipt) = receipt else {
                bail!("no erasure {id} (see `switchyard profiles erasures`)");
            };
            print_receipt(&receipt)?;
            finished(&receipt)
        }
        ProfilesCommand::Erasures { config, limit } => {
            let engine = erasures(&config, plugins_dir).await?;
            for r in engine.recent(limit).await? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}
