//! Helpers shared by the end-to-end tests: where the built plugins are, and a local HTTP server
//! that records what reaches it.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

pub mod hub;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

/// The stdout of a `switchyard` command that must have succeeded; else fails the test with
/// both of its outputs.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "switchyard failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `switchyard --plugins-dir PLUGINS ARGS..` with `SWITCHYARD_LOG` = `log` and waits for it.
pub fn switchyard<S: AsRef<OsStr>>(plugins: &Path, args: &[S], log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(args)
        .env("SWITCHYARD_LOG", log)
        .output()
        .expect("running switchyard")
}

/// The stderr of a `switchyard` command that must have failed; else fails the test with both of
/// its outputs.
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON value on each non-blank line of a command's output (`plugin deliver`, `plugin read`).
pub fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Installs the bundled plugin built from crate `crate_name` into the plugins directory `plugins`.
pub fn install_plugin(plugins: &Path, crate_name: &str) {
    let wasm = plugin_wasm(crate_name);
    ok(&switchyard(
        plugins,
        &[
            OsStr::new("plugin"),
            OsStr::new("install"),
            wasm.as_os_str(),
        ],
        "warn",
    ));
}

/// Serves `app` on a free loopback port from a task of the current runtime; the address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// Runs `start` on a Tokio runtime of its own, on a thread that keeps it running, and returns
/// what `start` made: for starting a fake API from a test that has no runtime.
pub fn in_background<T, F, Fut>(start: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    runtime_thread(move || async move {
        tx.send(start().await).unwrap();
        std::future::pending::<()>().await
    });
    rx.recv().unwrap()
}

/// Runs `work` to completion on a current-thread Tokio runtime of a new thread.
pub fn runtime_thread<T, F, Fut>(work: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work())
    })
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// A component built by `tools/build-plugins`.
pub fn plugin_wasm(crate_name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: run tools/build-plugins (tools/test does)",
        path.display()
    );
    path
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A local HTTP server: `POST` anything is recorded and answered 200; `GET /pages` serves the
/// paginated shape of the example source (`?limit&cursor` → `{"data", "next_cursor"}`),
/// `GET /scaffold-pages` the scaffold source's shape; `GET /hang` never answers in time.
#[derive(Clone)]
pub struct LocalServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl LocalServer {
    pub async fn start() -> LocalServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(any(handle)).with_state(seen.clone());
        let addr = serve(app).await;
        LocalServer { addr, seen }
    }

    /// Starts the server on its own runtime thread, for tests that drive the binary.
    pub fn start_in_background() -> LocalServer {
        in_background(LocalServer::start)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers.clone(),
        body: body.clone(),
    });
    match (method.as_str(), uri.path()) {
        ("GET", "/hang") => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        ("GET", "/slow") => {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            axum::Json(serde_json::json!({"ok": true})).into_response()
        }
        ("GET", "/pages") => {
            // 7 records, `limit` per page, the cursor is the next offset.
            let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(3);
            let start: usize = query
                .get("cursor")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let end = (start + limit).min(7);
            let data: Vec<_> = (start..end)
                .map(|i| serde_json::json!({"id": i + 1, "email": format!("user{}@example.com", i + 1)}))
                .collect();
            let next = (end < 7).then(|| end.to_string());
            axum::Json(serde_json::json!({"data": data, "next_cursor": next})).into_response()
        }
        ("GET", "/scaffold-pages") => {
            let start: usize = query
                .get("cursor")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let end = (start + 2).min(5);
            let records: Vec<_> = (start..end)
                .map(|i| serde_json::json!({"id": format!("r{i}")}))
                .collect();
            let next = (end < 5).then(|| end.to_string());
            axum::Json(serde_json::json!({"records": records, "next": next})).into_response()
        }
        ("GET", _) => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        ("POST", "/unauthorized") => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"message": "bad token"})),
        )
            .into_response(),
        ("POST", "/throttled") => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "3")],
            "slow down",
        )
            .into_response(),
        _ => axum::Json(serde_json::json!({"ok": true})).into_response(),
    }
}
