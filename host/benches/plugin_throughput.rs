//! Plugin call throughput, side by side in one run: the same mapping work (parse a record's
//! fields, map and rename them, normalise the email, serialise) done
//!
//! - through the `bench-mapper` destination plugin (a fresh instance per call, no network),
//! - natively, by the very same Rust function,
//! - by a subprocess speaking JSON lines over stdio, the way Airbyte and Singer connectors run:
//!   started for each call and exiting after it (Airbyte starts a connector per job; this is the
//!   isolation the plugin's fresh instance gives), and one kept alive across calls,
//!
//! for batches of 1, 100 and 1,000 records, plus the cost of a fresh instance with an empty call.
//!
//! Run: `tools/build-plugins && cargo bench -p switchyard --bench plugin_throughput`
//! `SWITCHYARD_BENCH_SIZES=1000` measures only the batch sizes given (comma-separated) and
//! `SWITCHYARD_BENCH_WORKLOADS=map-typed` only the workloads given (`map`, `map-typed`), e.g.
//! under `perf record` with `SWITCHYARD_WASM_PROFILER=perfmap`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::runtime::bindings::{Action, OutboundRecord, PluginConfig, RecordResult};
use switchyard::runtime::net::HttpPolicy;
use switchyard::runtime::{Limits, PluginInstance, Runtime};

// Its unit tests run in bench-mapper; here they are compiled out, leaving their import unused.
#[allow(unused_imports)]
#[path = "../../tests/plugins/bench-mapper/src/map.rs"]
mod map;

const WORKER_ENV: &str = "SWITCHYARD_BENCH_WORKER";
const MEASURE_FOR: Duration = Duration::from_millis(1500);

fn main() {
    if let Ok(mode) = std::env::var(WORKER_ENV) {
        let workload = WORKLOADS
            .iter()
            .find(|w| w.mode == mode)
            .expect("known workload");
        return worker(workload);
    }
    let wasm_path = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
        .join("wasm32-wasip2/plugin/bench_mapper.wasm");
    let bytes = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run tools/build-plugins first",
            wasm_path.display()
        )
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let component = runtime.compile(&bytes).unwrap();
    let plugin = Arc::new(rt.block_on(runtime.load(component)).unwrap());
    let instance = |mode: &str| {
        PluginInstance::new(
            plugin.clone(),
            PluginConfig {
                config: format!("{{\"mode\":\"{mode}\"}}"),
                secrets: vec![],
            },
            HttpPolicy::deny_all(),
        )
    };

    // Fresh instance + an empty call (config parsed, no records).
    let empty = instance("ok");
    let per_call = time_per_iter(|| {
        let r = rt.block_on(empty.deliver(Action::Upsert, &[])).unwrap();
        assert!(r.is_empty());
    });
    println!(
        "fresh instance + empty deliver call: {:.1} µs",
        per_call.as_secs_f64() * 1e6
    );
    let sizes: Vec<usize> = std::env::var("SWITCHYARD_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    let only: Option<Vec<String>> = std::env::var("SWITCHYARD_BENCH_WORKLOADS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    for workload in WORKLOADS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|m| m == workload.mode))
        {
            continue;
        }
        println!();
        println!("{}", workload.title);
        println!(
            "{:>6}  {:>12}  {:>12}  {:>16}  {:>16}  {:>11}  {:>13}  {:>13}",
            "batch",
            "wasm rec/s",
            "native rec/s",
            "spawned rec/s",
            "kept-alive rec/s",
            "wasm/native",
            "wasm/spawned",
            "wasm/kept"
        );
        let mapper = instance(workload.mode);
        let mut worker = Worker::spawn(workload);
        for &size in &sizes {
            let batch = records(size);
            let wasm = time_per_iter(|| {
                let results = rt.block_on(mapper.deliver(Action::Upsert, &batch)).unwrap();
                assert!(matches!(results[0], RecordResult::Ok));
            });
            let native = time_per_iter(|| {
                let mut out = Vec::with_capacity(size * 128);
                let results: Vec<RecordResult> = batch
                    .iter()
                    .map(|r| match (workload.map)(&r.key, &r.fields, &mut out) {
                        Ok(()) => RecordResult::Ok,
                        Err(e) => RecordResult::Rejected(e),
                    })
                    .collect();
                std::hint::black_box((&out, results));
            });
            // The Airbyte way: a connector process is started for each job and exits after
            // it, which is the isolation a fresh Wasm instance per call gives.
            let spawned = time_per_iter(|| {
                let mut w = Worker::spawn(workload);
                w.round_trip(&batch);
                w.finish();
            });
            // One process kept alive across calls: cheaper, but calls share its state.
            let kept = time_per_iter(|| worker.round_trip(&batch));
            let rate = |d: Duration| size as f64 / d.as_secs_f64();
            let times = |slow: Duration, fast: Duration| slow.as_secs_f64() / fast.as_secs_f64();
            println!(
                "{:>6}  {:>12.0}  {:>12.0}  {:>16.0}  {:>16.0}  {:>10.2}x  {:>12.1}x  {:>12.1}x",
                size,
                rate(wasm),
                rate(native),
                rate(spawned),
                rate(kept),
                times(wasm, native),
                times(spawned, wasm),
                times(kept, wasm),
            );
        }
    }
    println!();
    println!("wasm/native: how much slower the plugin is than native code;");
    println!("wasm/spawned, wasm/kept: how much faster the plugin is than a subprocess started");
    println!("per call (a fresh sandbox per call, as the plugin has) or kept alive across calls.");
}

/// One way of writing the mapping, run the same by the plugin, natively and by the worker.
struct Workload {
    title: &'static str,
    /// The plugin's `mode` and the worker's `SWITCHYARD_BENCH_WORKER` value.
    mode: &'static str,
    map: fn(&str, &str, &mut Vec<u8>) -> Result<(), String>,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        title: "fields parsed into serde_json::Value (any shape):",
        mode: "map",
        map: map::map_record,
    },
    Workload {
        title: "fields deserialised into a struct borrowing from the record:",
        mode: "map-typed",
        map: map::map_record_typed,
    },
];

/// Median time of one iteration over several rounds of `MEASURE_FOR / 5`, after a warm-up.
fn time_per_iter(mut f: impl FnMut()) -> Duration {
    let warm_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm_until {
        f();
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let until = Instant::now() + MEASURE_FOR / 5;
        let started = Instant::now();
        let mut n = 0u32;
        while Instant::now() < until {
            f();
            n += 1;
        }
        rounds.push(started.elapsed() / n);
    }
    rounds.sort();
    rounds[2]
}

fn records(n: usize) -> Vec<OutboundRecord> {
    (0..n)
        .map(|i| OutboundRecord {
            key: format!("profile-{i:08}"),
            fields: serde_json::json!({
                "email": format!("  User{i}@Example.COM "),
                "first_name": "Ada",
                "last_name": "Lovelace",
                "plan": if i % 3 == 0 { "pro" } else { "free" },
                "orders": i % 7,
            })
            .to_string(),
            delivery_id: format!("dlv_{i:08}"),
            previous_fields: None,
        })
        .collect()
}

/// The subprocess side: this same binary in worker mode, fed one JSON line per record and an
/// empty line per batch, answering one line per record.
struct Worker {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    line: String,
}

impl Worker {
    fn spawn(workload: &Workload) -> Worker {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .env(WORKER_ENV, workload.mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Worker {
            child,
            stdin,
            stdout,
            line: String::new(),
        }
    }

    fn round_trip(&mut self, batch: &[OutboundRecord]) {
        let mut buf = Vec::with_capacity(batch.len() * 160);
        for r in batch {
            serde_json::to_writer(
                &mut buf,
                &serde_json::json!({"key": r.key, "fields": r.fields}),
            )
            .unwrap();
            buf.push(b'\n');
        }
        buf.push(b'\n');
        let stdin = self.stdin.as_mut().expect("worker input open");
        stdin.write_all(&buf).unwrap();
        stdin.flush().unwrap();
        for _ in 0..batch.len() {
            self.line.clear();
            self.stdout.read_line(&mut self.line).unwrap();
            assert!(
                self.line.starts_with("{\"result\":\"ok\"}"),
                "{}",
                self.line
            );
        }
    }
}

impl Worker {
    /// Closes its input and waits for it to exit.
    fn finish(mut self) {
        self.stdin.take();
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker(workload: &Workload) {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut pending = Vec::new();
    let mut mapped = Vec::with_capacity(1 << 16);
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        if line.is_empty() {
            out.flush().unwrap();
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        mapped.clear();
        let result = match (workload.map)(
            record["key"].as_str().unwrap_or(""),
            record["fields"].as_str().unwrap_or("{}"),
            &mut mapped,
        ) {
            Ok(()) => "{\"result\":\"ok\"}".to_string(),
            Err(e) => serde_json::json!({"result": "rejected", "reason": e}).to_string(),
        };
        pending.push(result);
        for r in pending.drain(..) {
            out.write_all(r.as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
        }
    }
}
