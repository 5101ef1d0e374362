//! Event stream latency through the real `switchyard serve` over loopback: single `/v1/track`
//! calls at a fixed open-loop rate (1,000 and 5,000 events/s), two `[[streams]]` forwarding
//! every event through the `json-post-destination` Wasm plugin to two loopback endpoints.
//! Latency is from the tracking API's 200 (the commit) to the event's arrival at the endpoint
//! (after the plugin's call, so a little more than "to the plugin call"). The same rate
//! through a hub without streams gives the ingest acknowledgement latency to compare with.
//! Each rate runs the two streams twice: as they are, and with one transform (`pii-scrub`,
//! hashing a property and dropping the IP) in both streams' chain.
//!
//! Run: `tools/build-plugins && cargo bench -p switchyard --bench streams`. The figures, and
//! what was tried to bring the acknowledgements with streams down to those without, are in
//! README, Performance (this comment does not keep figures: they go stale). Knobs:
//! `SWITCHYARD_BENCH_SECS` (per phase, default 5), `SWITCHYARD_BENCH_RATES` (default
//! "1000,5000"), `SWITCHYARD_BENCH_CONNS` (client connections, default 32; at 5,000/s use 128,
//! or the client itself falls behind), `SWITCHYARD_BENCH_LOG` (the hub's log filter, e.g.
//! `switchyard::streams=debug` for the per-batch timings, `switchyard::ingest=debug` for each
//! group commit's; phases are marked in the log). `SWITCHYARD_BENCH_BIN` runs another build of
//! the hub (say, the one before a change, copied aside) so the two can be run in alternation
//! on the same machine. Acknowledgement latency is counted from each request's scheduled send
//! time (open loop), and also from its actual send, which leaves out the client's own lateness.
//! Check first what the machine sustains: where the run without streams is already far above
//! its usual few milliseconds, the hub is saturated at that rate and the comparison says
//! nothing about the streams.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

    fn send(&mut self, path: &str, auth: &str, body: &[u8]) -> u16 {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hub under test: this build's, or `SWITCHYARD_BENCH_BIN` (another build of it, to run a
/// baseline and a change in alternation on the same machine).
fn switchyard() -> Command {
    Command::new(
        std::env::var_os("SWITCHYARD_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchyard").into()),
    )
}

fn start(dir: &std::path::Path, project: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nlisten = \"{addr}\"\ndatabase = \"sqlite://{}/bench.db\"\nadmin_token = \"bench\"\nplugins_dir = \"{}\"\n\n\
             [sources.web]\nwrite_keys = [\"wk_bench\"]\n\n{project}",
            dir.display(),
            dir.join("plugins").display()
        ),
    )
    .unwrap();
    let mut child = switchyard()
        .args(["serve", "--config"])
        .arg(&config)
        // `SWITCHYARD_BENCH_LOG=switchyard::streams=debug` prints each stream's per-batch
        // timings (read, decide/transform, deliver, commit) on stderr.
        .env(
            "SWITCHYARD_LOG",
            std::env::var("SWITCHYARD_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(&addr).is_ok() {
            return Server { child, addr };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start");
}

/// Marks where a phase's hub log begins on stderr, when the hub logs (`SWITCHYARD_BENCH_LOG`).
fn mark_phase(name: &str) {
    if std::env::var_os("SWITCHYARD_BENCH_LOG").is_some() {
        eprintln!("=== phase {name}");
    }
}

/// When each message id arrived at an endpoint.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// What a sink reads of a `json-post-destination` request: each record's key, the rest
/// skipped unparsed. The sinks share the hub's two cores; a whole `Value` tree per record
/// was CPU the real destination spends, not the hub.
#[derive(serde::Deserialize)]
struct Posted<'a> {
    #[serde(borrow)]
    records: Vec<PostedRecord<'a>>,
}

#[derive(serde::Deserialize)]
struct PostedRecord<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
}

/// A loopback endpoint in the `json-post-destination` wire format that acknowledges at once
/// and notes when each record arrived.
async fn sink() -> (std::net::SocketAddr, Arrivals) {
    use axum::routing::post;
    let arrivals: Arrivals = Arc::default();
    let a = arrivals.clone();
    let app = axum::Router::new().route(
        "/in",
        post(move |body: axum::body::Bytes| {
            let a = a.clone();
            async move {
                let now = Instant::now();
                if let Ok(posted) = serde_json::from_slice::<Posted>(&body) {
                    let mut a = a.lock().unwrap();
                    for r in posted.records {
                        a.entry(r.key.into_owned()).or_insert(now);
                    }
                }
                "{\"ok\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, arrivals)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The acknowledgement latencies of a load, sorted: from each request's scheduled send time
/// (what a client sees, the open-loop measure), and from when it was sent. The second leaves
/// out the client's own lateness: on two cores shared by the hub, its streams and 128 client
/// threads, a client thread woken late for its send counts in the first.
struct Acks {
    scheduled: Vec<Duration>,
    sent: Vec<Duration>,
}

impl Acks {
    fn len(&self) -> usize {
        self.scheduled.len()
    }

    fn describe(&self) -> String {
        format!(
            "ack p50 {:.2} ms, p99 {:.2} ms (from the send: p50 {:.2} ms, p99 {:.2} ms)",
            ms(percentile(&self.scheduled, 0.5)),
            ms(percentile(&self.scheduled, 0.99)),
            ms(percentile(&self.sent, 0.5)),
            ms(percentile(&self.sent, 0.99))
        )
    }
}

/// Sends `/v1/track` at `rate`/s for `secs`, open loop over `SWITCHYARD_BENCH_CONNS`
/// connections; returns when each message id was acknowledged, and the acknowledgement
/// latencies.
fn load(addr: &str, rate: u64, secs: u64, tag: &str) -> (HashMap<String, Instant>, Acks) {
    let conns: u64 = env_or("SWITCHYARD_BENCH_CONNS", 32);
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let begin = Instant::now() + Duration::from_millis(100);
    let acks = Arc::new(Mutex::new((HashMap::new(), Vec::new(), Vec::new())));
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            let (addr, acks, tag) = (addr.to_string(), acks.clone(), tag.to_string());
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
                    let id = format!("{tag}-{c}-{k}");
                    let body = format!(
                        r#"{{"userId":"u-{c}-{}","event":"Clicked","messageId":"{id}","properties":{{"k":{k},"email":" User{c}@Example.com"}}}}"#,
                        k % 50
                    );
                    let sent = Instant::now();
                    let status = conn.send("/v1/track", "Basic d2tfYmVuY2g6", body.as_bytes());
                    let acked = Instant::now();
                    if status == 200 {
                        mine.push((id, acked, acked - due, acked - sent));
                    }
                    k += 1;
                }
                let mut a = acks.lock().unwrap();
                for (id, at, lat, from_send) in mine {
                    a.0.insert(id, at);
                    a.1.push(lat);
                    a.2.push(from_send);
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let (map, mut scheduled, mut sent) = std::mem::take(&mut *acks.lock().unwrap());
    scheduled.sort();
    sent.sort();
    (map, Acks { scheduled, sent })
}

fn main() {
    let secs: u64 = env_or("SWITCHYARD_BENCH_SECS", 5);
    let rates: Vec<u64> = std::env::var("SWITCHYARD_BENCH_RATES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let plugin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
        .join("wasm32-wasip2/plugin");
    let wasm: Vec<std::path::PathBuf> = ["json_post_destination.wasm", "pii_scrub.wasm"]
        .iter()
        .map(|w| plugin_dir.join(w))
        .collect();
    for w in &wasm {
        assert!(w.exists(), "{}: run tools/build-plugins first", w.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (a_addr, a_arrivals) = rt.block_on(sink());
    let (b_addr, b_arrivals) = rt.block_on(sink());
    let dest = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"http://{addr}/in\" }}\n\
             allow_hosts = [\"{addr}\"]\nallow_private_hosts = [\"{addr}\"]\nrate_per_second = 100000\n\n"
        )
    };
    // Stream a filters and maps, stream b forwards the message as it is; with `transform`, both
    // pass each message through `pii-scrub` (hashing the email, dropping the IP) first.
    let project = |transform: bool| {
        let (scrub, chain) = if transform {
            (
                "[transforms.scrub]\nplugin = \"pii-scrub\"\n\
                 config = { hash = [\"properties.email\"], drop = [\"context.ip\"], normalize = \"trim_lowercase\" }\n\n",
                "transforms = [\"scrub\"]\n",
            )
        } else {
            ("", "")
        };
        format!(
            "{scrub}{}{}[[streams]]\nname = \"a\"\nto = \"sink_a\"\nfilter = \"event.type == 'track'\"\n{chain}\
             [streams.mapping]\nname = \"event.name\"\nk = \"event.properties.k\"\nuser = \"event.userId\"\n\
             email = \"event.properties.email\"\n\n\
             [[streams]]\nname = \"b\"\nto = \"sink_b\"\n{chain}",
            dest("sink_a", a_addr),
            dest("sink_b", b_addr)
        )
    };
    for &rate in &rates {
        // Without streams: the ingest acknowledgement latency alone.
        let plain = tempfile::tempdir().unwrap();
        mark_phase(&format!("{rate}/s, no streams"));
        let server = start(plain.path(), "");
        let (_, ack) = load(&server.addr, rate, secs, "plain");
        drop(server);
        println!(
            "{rate}/s, no streams: {} acknowledged, {}",
            ack.len(),
            ack.describe()
        );

        for (phase, transform) in [("two streams", false), ("two streams + transform", true)] {
            let dir = tempfile::tempdir().unwrap();
            for w in &wasm {
                let out = switchyard()
                    .arg("--plugins-dir")
                    .arg(dir.path().join("plugins"))
                    .args(["plugin", "install"])
                    .arg(w)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            mark_phase(&format!("{rate}/s, {phase}"));
            let server = start(dir.path(), &project(transform));
            let tag = format!("r{rate}-{transform}");
            let (acked, ack) = load(&server.addr, rate, secs, &tag);
            // Let the streams finish what is in flight.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let done = |a: &Arrivals| {
                    let a = a.lock().unwrap();
                    acked.keys().all(|k| a.contains_key(k))
                };
                if done(&a_arrivals) && done(&b_arrivals) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(server);
            println!(
                "{rate}/s, {phase}: {} acknowledged, {}",
                ack.len(),
                ack.describe()
            );
            for (name, arrivals) in [
                ("a (filter + mapping)", &a_arrivals),
                ("b (as sent)", &b_arrivals),
            ] {
                let arrivals = arrivals.lock().unwrap();
                let mut missing = 0;
                let mut lat: Vec<Duration> = acked
                    .iter()
                    .filter_map(|(id, at)| match arrivals.get(id) {
                        Some(arrived) => Some(arrived.saturating_duration_since(*at)),
                        None => {
                            missing += 1;
                            None
                        }
                    })
                    .collect();
                lat.sort();
                println!(
                    "  stream {name}: 200 -> destination p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} delivered, {missing} missing",
                    ms(percentile(&lat, 0.5)),
                    ms(percentile(&lat, 0.9)),
                    ms(percentile(&lat, 0.99)),
                    ms(lat.last().copied().unwrap_or_default()),
                    lat.len()
                );
            }
        }
    }
}
