//! Tracking-API and Profiles-API throughput through the real `switchyard serve` over loopback:
//!
//! 1. durable ingest through `/v1/batch` (JSON) and `/v1/b` (`text/plain`), 100 events per
//!    request, closed loop, alternating;
//! 2. single-event `/v1/track` at a fixed open-loop rate, acknowledgement latency;
//! 3. profile lookups (`GET /v1/profiles/user_id:...`) with many profiles stored.
//!
//! Run: `cargo bench -p switchyard --bench ingest` (SQLite), and with
//! `SWITCHYARD_BENCH_PG=1` for PostgreSQL at 127.0.0.1:5432. Knobs: `SWITCHYARD_BENCH_SECS`
//! (default 8), `SWITCHYARD_BENCH_PROFILES` (default 1000000), `SWITCHYARD_BENCH_RATE` (5000),
//! `SWITCHYARD_BENCH_MMAP_MIB` (the hub's `[hub] sqlite_mmap_mib`, default 256).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Workload 1: closed-loop batches of 100 events on 8 connections to `path` for `secs`.
fn batch_ingest(
    addr: &str,
    auth: &'static str,
    path: &'static str,
    content_type: &'static str,
    secs: u64,
    round: u32,
) {
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (addr, events, stop) = (addr.to_string(), events.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (0..100)
                        .map(|i| {
                            format!(
                                r#"{{"type":"track","anonymousId":"anon-{w}-{}","userId":"user-{w}-{}","event":"Page Loaded","properties":{{"path":"/pricing","i":{i}}},"messageId":"b{round}-{path}-{w}-{n}-{i}"}}"#,
                                n % 1000,
                                n % 1000
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"batch":[{}],"writeKey":"wk_bench"}}"#, batch.join(","));
                    if conn.send_as("POST", path, auth, content_type, body.as_bytes()) == 200 {
                        events.fetch_add(100, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs.max(1)));
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let n = events.load(Ordering::Relaxed);
    println!(
        "batch ingest {path} {content_type} (100/request, 8 connections): {:.0} events/s durable ({} events in {:.1} s)",
        n as f64 / elapsed,
        n,
        elapsed
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: String,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            addr: addr.to_string(),
        }
    }

    fn send(&mut self, method: &str, path: &str, auth: &str, body: &[u8]) -> u16 {
        self.send_as(method, path, auth, "application/json", body)
    }

    /// `send` with another `Content-Type` (browsers post `text/plain` to skip the preflight).
    fn send_as(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        content_type: &str,
        body: &[u8],
    ) -> u16 {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database: &str, dir: tempfile::TempDir) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("switchyard.toml");
    // `SWITCHYARD_BENCH_MMAP_MIB` sets `[hub] sqlite_mmap_mib` (default: the hub's default).
    let mmap = std::env::var("SWITCHYARD_BENCH_MMAP_MIB")
        .map(|v| format!("sqlite_mmap_mib = {v}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("[hub]\nlisten = \"{addr}\"\ndatabase = \"{database}\"\nadmin_token = \"bench\"\n{mmap}\n[sources.web]\nwrite_keys = [\"wk_bench\"]\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWITCHYARD_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(&addr).is_ok() {
            return Server {
                child,
                addr,
                _dir: dir,
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let secs: u64 = env_or("SWITCHYARD_BENCH_SECS", 8);
    let profiles: u64 = env_or("SWITCHYARD_BENCH_PROFILES", 1_000_000);
    let rate: u64 = env_or("SWITCHYARD_BENCH_RATE", 5000);
    let pg = std::env::var_os("SWITCHYARD_BENCH_PG").is_some();
    let dir = tempfile::tempdir().unwrap();
    let (database, pg_name) = if pg {
        let name = format!("switchyard_bench_{}", std::process::id());
        psql(&format!("CREATE DATABASE {name}"));
        (
            format!("postgres://postgres@127.0.0.1:5432/{name}"),
            Some(name),
        )
    } else {
        (format!("sqlite://{}/bench.db", dir.path().display()), None)
    };
    println!("backend: {}", if pg { "PostgreSQL" } else { "SQLite" });
    let server = start(&database, dir);
    let auth = "Basic d2tfYmVuY2g6"; // base64("wk_bench:")

    // 1. Batches of 100 events, 8 connections, closed loop: `/v1/batch` as the server SDKs post
    // it, then `/v1/b` with `text/plain` as analytics.js (batching) and the mobile SDKs post it,
    // alternating so both see the same machine.
    for round in 0..2 {
        for (path, content_type) in [("/v1/batch", "application/json"), ("/v1/b", "text/plain")] {
            batch_ingest(&server.addr, auth, path, content_type, secs / 2, round);
        }
    }

    // 2. /v1/track at a fixed rate, open loop: latency from the scheduled send time.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let conns = 32u64;
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let begin = Instant::now() + Duration::from_millis(100);
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            let (addr, latencies, failures) =
                (server.addr.clone(), latencies.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut mine = Vec::new();
                let offset = per_conn.mul_f64(c as f64 / conns as f64);
                let mut k = 0u32;
                loop {
                    let due = begin + offset + per_conn * k;
                    if due > begin + Duration::from_secs(secs) {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let body = format!(
                        r#"{{"userId":"t-{c}-{}","event":"Clicked","messageId":"t-{c}-{k}"}}"#,
                        k % 50
                    );
                    if conn.send("POST", "/v1/track", auth, body.as_bytes()) != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    mine.push(due.elapsed());
                    k += 1;
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    println!(
        "single /v1/track at {rate}/s open loop: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-200: {}",
        l.len(),
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        failures.load(Ordering::Relaxed)
    );

    // 3. Profile lookups with `profiles` profiles stored (loaded through the API, 100 per request).
    let load_started = Instant::now();
    let loaded = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..8u64)
        .map(|w| {
            let (addr, loaded) = (server.addr.clone(), loaded.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut i = w * 100;
                while i < profiles {
                    let batch: Vec<String> = (i..(i + 100).min(profiles))
                        .map(|p| format!(r#"{{"type":"identify","userId":"p-{p}","traits":{{"email":"p{p}@example.com","plan":"pro"}},"messageId":"id-{p}"}}"#))
                        .collect();
                    let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
                    while conn.send("POST", "/v1/batch", auth, body.as_bytes()) != 200 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    loaded.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    i += 800;
                }
            })
        })
        .collect();
    loaders.into_iter().for_each(|w| w.join().unwrap());
    println!(
        "loaded {} profiles (identify, 100/request) in {:.1} s",
        loaded.load(Ordering::Relaxed),
        load_started.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..8u64)
        .map(|w| {
            let (addr, stop, latencies) = (server.addr.clone(), stop.clone(), latencies.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut mine = Vec::new();
                let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = x % profiles;
                    let t = Instant::now();
                    let status = conn.send(
                        "GET",
                        &format!("/v1/profiles/user_id:p-{p}"),
                        "Bearer bench",
                        b"",
                    );
                    assert_eq!(status, 200, "lookup of p-{p}");
                    mine.push(t.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    println!(
        "profile lookups ({} profiles, 8 connections): {:.0} lookups/s, p50 {:.2} ms, p99 {:.2} ms",
        profiles,
        l.len() as f64 / elapsed,
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3
    );
    drop(server);
    if let Some(name) = pg_name {
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-q",
            "-c",
            sql,
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "psql: {sql}");
}
