//! `switchyard streams list` (from the store: each stream's position, lag, counters, last
//! error) and `switchyard streams tail NAME` (live, from the running hub's admin API).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use http_body_util::BodyExt as _;

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum StreamsCommand {
    /// Every stream: where it is, how far behind, what it forwarded and dropped (by reason),
    /// and the error that stopped it last.
    List {
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// One JSON object per stream instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print what a stream forwards (and drops, with the reason) as it happens, one JSON
    /// object per line, from the running hub (`[hub] listen`, `[hub] admin_token`).
    Tail {
        name: String,
        #[arg(long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// The hub's address, when it is not the file's `[hub] listen` (e.g. http://10.0.0.5:8080).
        #[arg(long)]
        url: Option<String>,
    },
}

pub async fn run(cmd: StreamsCommand) -> anyhow::Result<()> {
    match cmd {
        StreamsCommand::List { config, json } => {
            let config = Config::load(&config)?;
            let store = config.hub.open_store().await?;
            let all = crate::streams::status(&store, &config).await?;
            if all.is_empty() {
                println!("no [[streams]] in the configuration");
            }
            for s in all {
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                    continue;
                }
                let counter = |name: &str| s.counters.get(name).copied().unwrap_or(0);
                let dropped: Vec<String> = s
                    .counters
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("dropped:").map(|r| format!("{r} {v}")))
                    .collect();
                println!(
                    "{} -> {}{}: in {}, out {}, retried {}, dropped {}; position {}, {} behind, lag {:.1} s{}",
                    s.name,
                    s.to,
                    if s.from.is_empty() {
                        String::new()
                    } else {
                        format!(" (from {})", s.from.join(", "))
                    },
                    counter("in"),
                    counter("out"),
                    counter("retried"),
                    if dropped.is_empty() {
                        "0".to_string()
                    } else {
                        dropped.join(", ")
                    },
                    s.position
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "not started".into()),
                    s.behind,
                    s.lag_seconds,
                    s.error.map(|e| format!("\n  stopped: {e}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        StreamsCommand::Tail { name, config, url } => {
            let config = Config::load(&config)?;
            config.stream_named(&name)?;
            let token = config
                .admin_token()?
                .context("streams tail reads the running hub's admin API: set [hub] admin_token")?;
            let base = url.unwrap_or_else(|| format!("http://{}", local(&config.hub.listen)));
            tail(&base, &name, &token).await
        }
    }
}

/// A listen address as a client reaches it (an unspecified address means this host).
fn local(listen: &str) -> String {
    listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:")
}

/// Streams `GET {base}/v1/streams/{name}/tail` to stdout until the hub closes it.
async fn tail(base: &str, name: &str, token: &str) -> anyhow::Result<()> {
    let url: url::Url = base
        .parse()
        .with_context(|| format!("`{base}` is not a URL like http://127.0.0.1:8080"))?;
    if url.scheme() != "http" {
        bail!("streams tail speaks plain HTTP to the hub; use --url http://HOST:PORT (or tunnel to it)");
    }
    let host = url.host_str().context("the hub's URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| {
            format!("connecting to the hub at {host}:{port}: is `switchyard serve` running there?")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("tail connection ended: {e}");
        }
    });
    let path = format!("/v1/streams/{}/tail", url_segment(name));
    let request = http::Request::get(&path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        bail!(
            "the hub answered {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    use std::io::Write as _;
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Stream names are letters, digits, `-` and `_` (the config checks it), so they need no
/// escaping; anything else is refused rather than sent.
fn url_segment(name: &str) -> &str {
    name
}
