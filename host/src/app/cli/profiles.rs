//! `switchyard profiles get|show|delete|unmerge`: a profile by any of its identifiers, read or
//! erased straight from the store, and merges undone.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;

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
    /// Erase a profile and suppress its identifiers.
    Delete {
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
}

/// What to do with the profile a command names.
enum Act {
    Get,
    Show,
    Delete,
}

pub async fn run(cmd: ProfilesCommand) -> anyhow::Result<()> {
    let (id, path, act) = match cmd {
        ProfilesCommand::Get { id, config } => (id, config, Act::Get),
        ProfilesCommand::Show { id, config } => (id, config, Act::Show),
        ProfilesCommand::Delete { id, config } => (id, config, Act::Delete),
        ProfilesCommand::Unmerge {
            merge_id,
            allow_rejoin,
            config,
        } => return unmerge(&merge_id, allow_rejoin, &config).await,
    };
    let config = crate::config::Config::load(&path)?;
    let identifier = crate::identity::Identifier::parse(&id)
        .with_context(|| format!("`{id}` is not KIND:VALUE, e.g. email:ada@example.com"))?;
    let store = config.hub.open_store().await?;
    let profiles = crate::profiles::Profiles::new(store);
    match act {
        Act::Delete => match profiles.delete(&identifier).await? {
            Some(p) => println!("erased profile {p}; its identifiers are suppressed"),
            None => bail!("no profile has {identifier}"),
        },
        Act::Show => match profiles.show(&identifier).await? {
            Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
            None => bail!("no profile has {identifier}"),
        },
        Act::Get => match profiles.get(&identifier).await? {
            Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
            None => bail!("no profile has {identifier}"),
        },
    }
    Ok(())
}

async fn unmerge(merge_id: &str, allow_rejoin: bool, path: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path)?;
    let store = config.hub.open_store().await?;
    let done = crate::identity::unmerge::unmerge(
        &store,
        merge_id,
        allow_rejoin,
        crate::store::now_millis(),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(())
}
