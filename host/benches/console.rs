//! Web console page timings on a big store: N profiles (default 1,000,000) with an email, a
//! trait and audience membership each, one profile with 200 events, 500 sync runs and 2,000
//! dead letters; then each page is fetched over loopback through the real router (a signed-in
//! session, as a browser would) and its answer time measured.
//!
//! Run: `cargo bench -p switchyard --bench console`. Knobs: `SWITCHYARD_BENCH_PROFILES`
//! (1000000), `SWITCHYARD_BENCH_ROUNDS` (20), `SWITCHYARD_BENCH_PG=1` (PostgreSQL at 127.0.0.1).
//! Rows are seeded straight into the store with multi-row inserts, as the sync benchmark does
//! (the tracking API has its own benchmark), so seeding a million takes well under a minute.

use std::time::{Duration, Instant};

use switchyard::app::hub::Hub;
use switchyard::config::Config;
use switchyard::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const TOKEN: &str = "bench-admin-token";

/// Inserts `rows` rows of `cols` columns into `table`, `bind(i, row)` giving row i's values.
async fn insert(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    columns: &str,
    cols: usize,
    range: std::ops::Range<usize>,
    bind: impl Fn(usize) -> Vec<Value>,
) {
    let sql = format!(
        "INSERT INTO {table} ({columns}) VALUES {}",
        store.value_groups(1, range.len(), cols)
    );
    let mut q = sqlx::query(&sql);
    for i in range {
        for v in bind(i) {
            q = match v {
                Value::S(s) => q.bind(s),
                Value::I(n) => q.bind(n),
            };
        }
    }
    q.execute(&mut **tx).await.unwrap();
}

enum Value {
    S(String),
    I(i64),
}
use Value::{I, S};

async fn seed(store: &Store, n: usize) {
    let now = switchyard::store::now_millis() - 3_600_000;
    let chunk = 400;
    let mut tx = store.begin().await.unwrap();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let id = |i: usize| format!("prf_{i:08}");
        insert(
            store,
            &mut tx,
            "profiles",
            "id, created_at, updated_at",
            3,
            start..end,
            |i| vec![S(id(i)), I(now), I(now)],
        )
        .await;
        insert(
            store,
            &mut tx,
            "identifiers",
            "kind, value, profile_id, first_seen",
            4,
            start..end,
            |i| {
                vec![
                    S("email".into()),
                    S(format!("user{i}@example.com")),
                    S(id(i)),
                    I(now),
                ]
            },
        )
        .await;
        insert(
            store,
            &mut tx,
            "traits",
            "profile_id, name, value, ts",
            4,
            start..end,
            |i| {
                vec![
                    S(id(i)),
                    S("plan".into()),
                    S(if i % 3 == 0 { "\"pro\"" } else { "\"free\"" }.into()),
                    I(now),
                ]
            },
        )
        .await;
        let members: Vec<usize> = (start..end).filter(|i| i % 3 == 0).collect();
        if let (Some(first), Some(last)) = (members.first(), members.last()) {
            // Every third profile is in the audience: a contiguous insert of those rows.
            let sql = format!(
                "INSERT INTO audience_members (audience, profile_id, since) VALUES {}",
                store.value_groups(1, members.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for i in &members {
                q = q.bind("pro").bind(id(*i)).bind(now);
            }
            let _ = (first, last);
            q.execute(&mut *tx).await.unwrap();
        }
        if end % 100_000 == 0 {
            tx.commit().await.unwrap();
            tx = store.begin().await.unwrap();
        }
    }
    // The audience's size as its refresh keeps it, and a month of its history (a point a day).
    let members = n.div_ceil(3) as i64;
    insert(
        store,
        &mut tx,
        "audience_sizes",
        "audience, size, at",
        3,
        0..1,
        |_| vec![S("pro".into()), I(members), I(now)],
    )
    .await;
    insert(
        store,
        &mut tx,
        "audience_size_history",
        "audience, at, size",
        3,
        0..31,
        |d| {
            vec![
                S("pro".into()),
                I(now - (30 - d as i64) * 86_400_000),
                I(members * (70 + d as i64) / 100),
            ]
        },
    )
    .await;
    // One profile with a long timeline, a sync with a long history and many dead letters.
    insert(store, &mut tx, "events", "message_id, profile_id, source, kind, name, ts, received_at, body", 8, 0..200, |i| {
        let body = format!(r#"{{"type":"track","event":"Viewed Page","userId":"u0","messageId":"m{i}","properties":{{"n":{i}}},"timestamp":"2026-12-01T00:00:00Z"}}"#);
        vec![S(format!("m{i}")), S("prf_00000000".into()), S("web".into()), S("track".into()), S("Viewed Page".into()), I(now + i as i64), I(now + i as i64), S(body)]
    })
    .await;
    for start in (0..500).step_by(100) {
        insert(store, &mut tx, "sync_runs",
            "id, sync, status, started_at, finished_at, dry_run, full_resync, planned_adds, planned_changes, planned_removals, sent, succeeded, retried, rejected, dead_lettered, error",
            16, start..start + 100, |i| {
                let t = now + i as i64 * 60_000;
                vec![S(format!("run{i:05}")), S("bench".into()), S("succeeded".into()), I(t), I(t + 4_000), I(0), I(0), I(300), I(20), I(1), I(321), I(320), I(3), I(0), I(1), S(String::new())]
            }).await;
    }
    for start in (0..2_000).step_by(200) {
        insert(
            store,
            &mut tx,
            "dead_letters",
            "id, sync, key, action, hash, fields, attempts, error, at",
            9,
            start..start + 200,
            |i| {
                vec![
                    S(format!("dl{i:05}")),
                    S("bench".into()),
                    S(format!("prf_{:08}", i * 3)),
                    S("upsert".into()),
                    S("h".into()),
                    S(format!(
                        r#"{{"email":"user{}@example.com","plan":"pro"}}"#,
                        i * 3
                    )),
                    I(5),
                    S("HTTP 400: invalid email".into()),
                    I(now),
                ]
            },
        )
        .await;
    }
    tx.commit().await.unwrap();
}

/// One GET over loopback; (status, body length, time to the last byte).
async fn get(addr: std::net::SocketAddr, path: &str, cookie: &str) -> (u16, usize, Duration) {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let took = t.elapsed();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out.len(), took)
}

async fn sign_in(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = format!("token={TOKEN}");
    let req = format!(
        "POST /console/sign-in HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let line = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session");
    line.split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn main() {
    let n: usize = env_or("SWITCHYARD_BENCH_PROFILES", 1_000_000);
    let rounds: usize = env_or("SWITCHYARD_BENCH_ROUNDS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (database, pg) = if std::env::var_os("SWITCHYARD_BENCH_PG").is_some() {
            let name = format!("switchyard_bench_console_{}", std::process::id());
            // A plain pool: `Store::open` would migrate the shared maintenance database.
            let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
            (format!("postgres://postgres@127.0.0.1:5432/{name}"), Some((admin, name)))
        } else {
            (format!("sqlite://{}/bench.db", dir.path().display()), None)
        };
        let store = Store::open(&database).await.unwrap();
        let t = Instant::now();
        seed(&store, n).await;
        // Statistics as autovacuum would have them on a live store (PostgreSQL; SQLite has none
        // to keep): without them PostgreSQL takes a 500-id IN list on `traits` for a scan.
        for table in ["profiles", "identifiers", "traits", "audience_members", "events", "sync_runs", "dead_letters"] {
            let _ = store.analyze_if_stale(table).await;
        }
        println!("seeded {n} profiles, {} audience members, 500 sync runs, 2,000 dead letters in {:.1} s", n.div_ceil(3), t.elapsed().as_secs_f64());
        drop(store);

        let text = format!(
            r#"
[hub]
database = "{database}"
plugins_dir = "{plugins}"
admin_token = "{TOKEN}"

[sources.web]
write_keys = ["wk"]

[audiences.pro]
filter = 'traits.plan == "pro"'

[destinations.sink]
plugin = "json-post-destination"
config = {{ url = "http://127.0.0.1:9/in" }}

[[syncs]]
name = "bench"
from = {{ audience = "pro" }}
to = "sink"
mode = "mirror"
[syncs.mapping]
email = "identifiers.email"
"#,
            plugins = dir.path().join("plugins").display()
        );
        let config = Config::parse(&text).unwrap();
        let hub = Hub::build(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = hub.router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cookie = sign_in(addr).await;

        let pages = [
            ("overview", "/console".to_string()),
            ("profile page (200 events, paged by 25)", "/console/profiles/prf_00000000".to_string()),
            ("profile lookup (redirect)", "/console/profiles?q=email%3Auser777%40example.com".to_string()),
            ("audience page", "/console/audiences/pro".to_string()),
            ("audiences list", "/console/audiences".to_string()),
            ("sync runs page (500 runs, 2,000 dead letters)", "/console/syncs/bench".to_string()),
            ("syncs list", "/console/syncs".to_string()),
            ("audit log", "/console/audit".to_string()),
            ("filter editor (1,000-profile sample)", "/console/audiences/editor?filter=traits.plan%20%3D%3D%20%22pro%22".to_string()),
        ];
        println!("{:<48} {:>8} {:>8} {:>8} {:>9}", "page", "p50 ms", "p95 ms", "max ms", "bytes");
        for (name, path) in &pages {
            // One warm-up fetch (the first read of a page's rows comes from disk).
            let (status, _, _) = get(addr, path, &cookie).await;
            assert!(status == 200 || status == 303, "{path}: {status}");
            let mut times = Vec::with_capacity(rounds);
            let mut bytes = 0;
            for _ in 0..rounds {
                let (_, b, took) = get(addr, path, &cookie).await;
                bytes = b;
                times.push(took.as_secs_f64() * 1000.0);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let q = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
            println!("{name:<48} {:>8.1} {:>8.1} {:>8.1} {bytes:>9}", q(0.5), q(0.95), times[times.len() - 1]);
        }
        if let Some((admin, name)) = pg {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
        }
    });
}
