//! `switchyard plugin new` and `switchyard plugin build`: a plugin crate that builds as is, and
//! building any plugin crate into a component.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Which world a new plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Source,
    Destination,
}

/// The SDK this binary was built beside, used as a path dependency when it is still there
/// (a source checkout); otherwise the published crate.
fn sdk_dependency(sdk_path: Option<&Path>) -> String {
    let local = sdk_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk")));
    match local.canonicalize() {
        Ok(p) if p.join("Cargo.toml").exists() => {
            format!(
                "switchyard-sdk = {{ path = {:?} }}",
                p.display().to_string()
            )
        }
        _ => format!("switchyard-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    }
}

/// Writes a new plugin crate into `dir/NAME` and returns its path.
pub fn new_plugin(
    name: &str,
    kind: Kind,
    dir: &Path,
    sdk_path: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!("plugin name `{name}` must start with a-z and use only a-z, 0-9 and -");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists; pick another name or directory",
            root.display()
        );
    }
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    let kind_word = match kind {
        Kind::Source => "source",
        Kind::Destination => "destination",
    };
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
description = "A Switchyard {kind_word} plugin"

# A standalone crate, even when created inside another workspace.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
opt-level = "s"
lto = true
strip = true
"#,
        sdk = sdk_dependency(sdk_path)
    );
    let lib = match kind {
        Kind::Destination => DESTINATION_TEMPLATE,
        Kind::Source => SOURCE_TEMPLATE,
    };
    std::fs::write(root.join("Cargo.toml"), cargo)?;
    std::fs::write(root.join("src/lib.rs"), lib)?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    Ok(root)
}

/// Builds the plugin crate at `path` for wasm32-wasip2 and returns the component's path.
pub fn build_plugin(path: &Path, profile: &str) -> anyhow::Result<PathBuf> {
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_path_buf()
    };
    if !manifest.exists() {
        bail!("no Cargo.toml at {}", manifest.display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running `cargo metadata` (is cargo installed?)")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&metadata.stderr).trim()
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let target_dir = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target directory")?;
    let canonical = manifest.canonicalize()?;
    let package = meta["packages"]
        .as_array()
        .and_then(|pkgs| {
            pkgs.iter().find(|p| {
                p["manifest_path"]
                    .as_str()
                    .map(PathBuf::from)
                    .and_then(|m| m.canonicalize().ok())
                    == Some(canonical.clone())
            })
        })
        .context("the Cargo.toml holds no package")?;
    let name = package["name"]
        .as_str()
        .context("package without a name")?
        .to_string();

    let status = Command::new(&cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            profile,
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed for {} (is the target installed? `rustup target add wasm32-wasip2`)", manifest.display());
    }
    let dir_name = if profile == "dev" { "debug" } else { profile };
    let wasm = target_dir
        .join("wasm32-wasip2")
        .join(dir_name)
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !wasm.exists() {
        bail!(
            "cargo build succeeded but {} is missing (is the crate a cdylib?)",
            wasm.display()
        );
    }
    Ok(wasm)
}

const DESTINATION_TEMPLATE: &str = r#"//! A Switchyard destination: posts each batch as JSON to one configured URL.
//! Change `deliver` to call your API; `switchyard plugin build` makes the component.

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, outcome, schemars, Action, CallError, Capabilities, Context, Destination,
    OutboundRecord, Plugin, RecordResult,
};

/// The operator's settings for one `[destinations.NAME]` block.
#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    /// The endpoint that receives the records.
    url: String,
}

struct MyDestination;

impl Plugin for MyDestination {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            // Name the API's host here; `*` leaves the choice to the operator's config.
            .allowed_host("*")
            .max_batch_size(100)
            .actions(&[Action::Upsert, Action::Delete])
    }
}

impl Destination for MyDestination {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let records: Vec<switchyard_sdk::serde_json::Value> = batch
            .iter()
            .map(|r| switchyard_sdk::serde_json::from_str(&r.fields).unwrap_or_default())
            .collect();
        let action = match action {
            Action::Upsert => "upsert",
            Action::Delete => "delete",
            Action::Track => "track",
            Action::Erase => "erase",
        };
        let response = Request::post(&ctx.config.url)
            .json(&switchyard_sdk::serde_json::json!({ "action": action, "records": records }))
            .send()?;
        Ok(vec![outcome::record_result(&response); batch.len()])
    }
}

switchyard_sdk::export_destination!(MyDestination);
"#;

const SOURCE_TEMPLATE: &str = r#"//! A Switchyard source: reads `{"records": [...], "next": "cursor"}` pages from one URL.
//! Change `read` to call your API; `switchyard plugin build` makes the component.

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, outcome, schemars, serde_json, CallError, Capabilities, Context, Page, Plugin,
    Source, SourceRecord, StreamInfo,
};

/// The operator's settings for one `[sources.NAME]` block.
#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    /// The endpoint that lists records.
    url: String,
}

#[derive(Deserialize)]
struct ApiPage {
    records: Vec<serde_json::Value>,
    next: Option<String>,
}

struct MySource;

impl Plugin for MySource {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new().allowed_host("*").max_batch_size(100)
    }
}

impl Source for MySource {
    fn streams(_ctx: &Context<Config>) -> Result<Vec<StreamInfo>, CallError> {
        Ok(vec![StreamInfo {
            name: "records".into(),
            description: "Every record the endpoint lists".into(),
            incremental: false,
        }])
    }

    fn read(ctx: &Context<Config>, _stream: &str, cursor: Option<String>) -> Result<Page, CallError> {
        let url = match &cursor {
            Some(c) => format!("{}?cursor={c}", ctx.config.url),
            None => ctx.config.url.clone(),
        };
        let response = Request::get(&url).send()?;
        outcome::call_result(&response)?;
        let page: ApiPage = response.json()?;
        let records = page
            .records
            .into_iter()
            .map(|r| SourceRecord {
                id: r["id"].to_string().trim_matches('"').to_string(),
                data: r.to_string(),
                updated_at: None,
                events: vec![],
            })
            .collect();
        Ok(Page { records, done: page.next.is_none(), cursor: page.next.or(cursor) })
    }
}

switchyard_sdk::export_source!(MySource);
"#;
