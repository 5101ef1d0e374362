//! `switchyard validate` and `switchyard init`: checking a project file and writing an example
//! one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::registry::Registry;

/// Prints every problem of the file at `path`, or that it is valid.
pub fn validate(path: &Path, plugins_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg =
        crate::config::Config::parse_unchecked(&std::fs::read_to_string(path).unwrap_or_default())
            .ok();
    let plugins = plugins_dir
        .or_else(|| cfg.map(|c| c.hub.plugins_dir))
        .unwrap_or_else(|| ".switchyard/plugins".into());
    let registry = Registry::open_with_default_limits(plugins).ok();
    let problems = crate::validate::validate(path, registry.as_ref());
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if let Ok(config) = crate::config::Config::parse_unchecked(&text) {
        for w in crate::validate::warnings(&config) {
            println!("warning: {w}");
        }
    }
    if problems.is_empty() {
        println!("{}: valid", path.display());
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!(
        "{}: {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    )
}

/// Writes the commented example project to `path`.
pub fn init(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    std::fs::write(path, include_str!("../../../../switchyard.example.toml"))
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {}: edit it, then `switchyard validate --config {}`",
        path.display(),
        path.display()
    );
    Ok(())
}
