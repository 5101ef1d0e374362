//! Source throughput: records/s from the real `http-json` source plugin reading a loopback fake
//! API (large pages, served fast) through identity resolution into the SQLite store, with
//! `SourceEngine::run` exactly as `switchyard source run` does it (one transaction per page,
//! committed with the cursor). Also the plugin alone (read pages, store nothing), so the two
//! costs can be told apart, and an incremental re-run with nothing new.
//!
//! Run: `tools/build-plugins && cargo bench -p switchyard --bench source`. Knobs:
//! `SWITCHYARD_BENCH_RECORDS` (100000), `SWITCHYARD_BENCH_PAGE` (records per page, 1000),
//! `SWITCHYARD_BENCH_PG=1` (PostgreSQL at 127.0.0.1 instead of SQLite).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use switchyard::config::compile::Project;
use switchyard::registry::Registry;
use switchyard::runtime::{Limits, Runtime};
use switchyard::sources::{RunOptions, SourceEngine};
use switchyard::store::Store;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `GET /items?limit=N&cursor=OFFSET` → `{"data": [...], "next": "OFFSET" | null}` over `total`
/// records, each with an email, a few traits and an update time.
async fn serve(total: usize) -> std::net::SocketAddr {
    let app = Router::new().route(
        "/items",
        get(move |Query(q): Query<HashMap<String, String>>| async move {
            let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
            let start: usize = q.get("cursor").and_then(|v| v.parse().ok()).unwrap_or(0);
            let end = (start + limit).min(total);
            let mut body = String::with_capacity((end - start) * 160 + 64);
            body.push_str("{\"data\":[");
            for i in start..end {
                if i > start {
                    body.push(',');
                }
                // Distinct, ascending update times, as a real API's "updated since" order has.
                let updated = chrono::DateTime::from_timestamp(1_704_067_200 + i as i64, 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                body.push_str(&format!(
                    "{{\"id\":\"r{i}\",\"email\":\"user{i}@example.com\",\"first_name\":\"User\",\"last_name\":\"N{i}\",\"plan\":\"pro\",\"updated_at\":\"{updated}\"}}"
                ));
            }
            body.push_str("],\"next\":");
            if end < total {
                body.push_str(&format!("\"{end}\"}}"));
            } else {
                body.push_str("null}");
            }
            ([("content-type", "application/json")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn plugin_wasm() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
        });
    let path = target.join("wasm32-wasip2/plugin/http_json.wasm");
    assert!(
        path.exists(),
        "{} is missing: run tools/build-plugins",
        path.display()
    );
    path
}

fn main() {
    let total: usize = env_or("SWITCHYARD_BENCH_RECORDS", 100_000);
    let page: usize = env_or("SWITCHYARD_BENCH_PAGE", 1000);
    let pg = std::env::var("SWITCHYARD_BENCH_PG").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(total).await;
        let database = if pg {
            let name = format!("switchyard_bench_source_{}", std::process::id());
            let status = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c", &format!("CREATE DATABASE {name}")])
                .status()
                .expect("psql");
            assert!(status.success());
            format!("postgres://postgres@127.0.0.1:5432/{name}")
        } else {
            format!("sqlite://{}/bench.db", dir.path().display())
        };
        let plugins = dir.path().join("plugins");
        let registry = Registry::open(&plugins, Runtime::new(Limits::default()).unwrap()).unwrap();
        registry.install(&plugin_wasm()).await.unwrap();
        let text = format!(
            "[hub]\ndatabase = \"{database}\"\nplugins_dir = \"{plugins}\"\n\n\
             [sources.members]\nplugin = \"http-json\"\nallow_hosts = [\"{addr}\"]\nallow_private_hosts = [\"{addr}\"]\n\
             config = {{ url = \"http://{addr}/items\", stream = \"members\", records_path = \"data\", id_field = \"id\", \
             updated_at_field = \"updated_at\", page_size = {page}, page_size_param = \"limit\", \
             pagination = {{ type = \"cursor\", cursor_path = \"next\", cursor_param = \"cursor\" }} }}\n\
             [sources.members.streams.members]\nidentifiers = {{ email = \"email\" }}\n\
             traits = {{ first_name = \"first_name\", last_name = \"last_name\", plan = \"plan\" }}\n",
            plugins = plugins.display()
        );
        let config = Project::parse(&text).unwrap();
        let store = Store::open(&database).await.unwrap();
        let engine = SourceEngine::new(store.clone(), Arc::new(registry), Arc::new(config));

        // The plugin alone: read every page, store nothing.
        let instance = engine.instance("members").await.unwrap();
        let started = Instant::now();
        let mut cursor: Option<String> = None;
        let mut read = 0usize;
        loop {
            let p = instance.read("members", cursor.as_deref()).await.unwrap();
            read += p.records.len();
            cursor = p.cursor;
            if p.done {
                break;
            }
        }
        let plugin_secs = started.elapsed().as_secs_f64();
        assert_eq!(read, total);

        // The whole path: plugin → identity resolution → store, one transaction per page.
        let started = Instant::now();
        let report = engine.run("members", RunOptions { full_refresh: true }, None).await.unwrap();
        let run_secs = started.elapsed().as_secs_f64();
        assert_eq!(report.status, "succeeded", "{:?}", report.error);
        assert_eq!(report.records as usize, total);
        let (profiles,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM profiles").fetch_one(store.pool()).await.unwrap();
        assert_eq!(profiles as usize, total);

        // Again, every profile existing now (attach path rather than create).
        let started = Instant::now();
        let again = engine.run("members", RunOptions { full_refresh: true }, None).await.unwrap();
        let again_secs = started.elapsed().as_secs_f64();
        assert_eq!(again.records as usize, total);

        println!("source benchmark: {total} records, {page} per page, {}", if pg { "PostgreSQL" } else { "SQLite" });
        println!("  plugin only (read, store nothing):      {:>10.0} records/s ({plugin_secs:.2} s)", total as f64 / plugin_secs);
        println!("  full run, new profiles:                 {:>10.0} records/s ({run_secs:.2} s, {} pages)", total as f64 / run_secs, report.pages);
        println!("  full refresh, existing profiles:        {:>10.0} records/s ({again_secs:.2} s)", total as f64 / again_secs);
        println!("  target: 50,000 records/s on SQLite");
        if pg {
            let name = database.rsplit('/').next().unwrap_or_default().to_string();
            store.pool().close().await;
            let _ = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .status();
        }
    });
}
