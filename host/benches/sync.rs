//! Sync throughput: an audience of N profiles (default 1,000,000) mirrored through the real
//! `json-post-destination` Wasm plugin into a loopback endpoint that acknowledges at once, then
//! the unchanged re-run (diff only), with the process's peak resident memory.
//!
//! Run: `tools/build-plugins && cargo bench -p switchyard --bench sync`. Knobs:
//! `SWITCHYARD_BENCH_PROFILES` (1000000), `SWITCHYARD_BENCH_PG=1` (PostgreSQL at 127.0.0.1).
//! Profiles are seeded straight into the store (the tracking API has its own benchmark).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use switchyard::config::compile::Project;
use switchyard::registry::Registry;
use switchyard::runtime::{Limits, Runtime};
use switchyard::store::Store;
use switchyard::sync::{Engine, RunOptions};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn seed(store: &Store, n: usize) {
    let pool = store.pool();
    // Profiles that existed an hour before the benchmark.
    let now = switchyard::store::now_millis() - 3_600_000;
    let chunk = 400;
    let mut tx = pool.begin().await.unwrap();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let rows = end - start;
        let values = |cols: usize| store.value_groups(1, rows, cols);
        let sql = format!(
            "INSERT INTO profiles (id, created_at, updated_at) VALUES {}",
            values(3)
        );
        let mut q = sqlx::query(&sql);
        for i in start..end {
            q = q.bind(format!("prf_{i:08}")).bind(now).bind(now);
        }
        q.execute(&mut *tx).await.unwrap();
        let sql = format!(
            "INSERT INTO identifiers (kind, value, profile_id, first_seen) VALUES {}",
            values(4)
        );
        let mut q = sqlx::query(&sql);
        for i in start..end {
            q = q
                .bind("email")
                .bind(format!("user{i}@example.com"))
                .bind(format!("prf_{i:08}"))
                .bind(now);
        }
        q.execute(&mut *tx).await.unwrap();
        let sql = format!(
            "INSERT INTO traits (profile_id, name, value, ts) VALUES {}",
            values(4)
        );
        let mut q = sqlx::query(&sql);
        for i in start..end {
            q = q
                .bind(format!("prf_{i:08}"))
                .bind("plan")
                .bind("\"pro\"")
                .bind(now);
        }
        q.execute(&mut *tx).await.unwrap();
        if end % 100_000 == 0 {
            tx.commit().await.unwrap();
            tx = pool.begin().await.unwrap();
        }
    }
    tx.commit().await.unwrap();
}

/// A loopback endpoint that answers 200 at once and counts bytes received.
async fn sink() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use axum::routing::post;
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/in",
        post(move |body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                h.fetch_add(body.len() as u64, Ordering::Relaxed);
                "{\"ok\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn main() {
    let n: usize = env_or("SWITCHYARD_BENCH_PROFILES", 1_000_000);
    let wasm = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
        .join("wasm32-wasip2/plugin/json_post_destination.wasm");
    assert!(
        wasm.exists(),
        "{}: run tools/build-plugins first",
        wasm.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (database, pg) = if std::env::var_os("SWITCHYARD_BENCH_PG").is_some() {
            let name = format!("switchyard_bench_sync_{}", std::process::id());
            let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
            (format!("postgres://postgres@127.0.0.1:5432/{name}"), Some((admin, name)))
        } else {
            (format!("sqlite://{}/bench.db", dir.path().display()), None)
        };
        let store = Store::open(&database).await.unwrap();
        let t = Instant::now();
        seed(&store, n).await;
        println!("seeded {n} profiles in {:.1} s", t.elapsed().as_secs_f64());

        let registry = Registry::open(dir.path().join("plugins"), Runtime::new(Limits::default()).unwrap()).unwrap();
        registry.install(&wasm).await.unwrap();
        let (addr, bytes) = sink().await;
        let config = Project::parse(&format!(
            r#"
[audiences.pro]
filter = 'traits.plan == "pro"'

[destinations.sink]
plugin = "json-post-destination"
config = {{ url = "http://{addr}/in" }}
allow_hosts = ["{addr}"]
allow_private_hosts = ["{addr}"]
rate_per_second = 100000
concurrency = 4

[[syncs]]
name = "bench"
from = {{ audience = "pro" }}
to = "sink"
mode = "mirror"
[syncs.mapping]
email = "identifiers.email"
plan = "traits.plan"
"#
        ))
        .unwrap();
        let audience = config.audience("pro").unwrap().clone();
        let engine = Engine::new(store.clone(), Arc::new(registry), Arc::new(config));

        // Audiences are kept up to date as profiles change; compute it once, timed apart.
        let t = Instant::now();
        let refresh = switchyard::audience::refresh(&store, "pro", &audience, true).await.unwrap();
        println!(
            "audience computed in full: {} profiles evaluated in {:.2} s ({:.0}/s)",
            refresh.evaluated,
            t.elapsed().as_secs_f64(),
            refresh.evaluated as f64 / t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        let plan = engine
            .run("bench", RunOptions { dry_run: true, ..Default::default() }, None)
            .await
            .unwrap();
        println!(
            "dry run (plan only: read, map, hash, diff): {} adds in {:.2} s",
            plan.planned_adds,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let report = engine.run("bench", RunOptions::default(), None).await.unwrap();
        let first = t.elapsed().as_secs_f64();
        assert_eq!(report.status, "succeeded", "{report:?}");
        assert_eq!(report.succeeded as usize, n);
        println!(
            "first run: {n} records in {first:.2} s = {:.0} records/s end to end ({:.1} MiB posted); peak RSS so far {:.0} MiB",
            n as f64 / first,
            bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            peak_rss_mib()
        );
        let t = Instant::now();
        let report = engine.run("bench", RunOptions::default(), None).await.unwrap();
        let second = t.elapsed().as_secs_f64();
        assert_eq!(report.sent, 0);
        println!("unchanged re-run (diff only): {second:.2} s, {} sent", report.sent);
        println!("peak resident memory: {:.0} MiB", peak_rss_mib());
        drop(engine);
        drop(store);
        if let Some((admin, name)) = pg {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .unwrap();
        }
    });
}
