//! `switchyard profiles get|delete`: a profile by any of its identifiers, read or erased
//! straight from the store.

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
    /// Erase a profile and suppress its identifiers.
    Delete {
        id: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
}

pub async fn run(cmd: ProfilesCommand) -> anyhow::Result<()> {
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
