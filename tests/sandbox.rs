//! The sandbox holds: a plugin that loops, hoards memory, panics, calls hosts it was not granted,
//! hangs on I/O, or looks for files and environment variables is stopped or finds nothing, and
//! the very next call on the same plugin works.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{plugin_wasm, LocalServer};
use switchyard::runtime::bindings::{Action, OutboundRecord, PluginConfig, RecordResult};
use switchyard::runtime::net::HttpPolicy;
use switchyard::runtime::{Limits, Plugin, PluginError, PluginInstance, Runtime};

fn limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        cpu_deadline: Duration::from_millis(300),
        wall_timeout: Duration::from_secs(3),
        max_instances: 16,
        ..Limits::default()
    }
}

async fn probe() -> Arc<Plugin> {
    let runtime = Runtime::new(limits()).unwrap();
    let bytes = std::fs::read(plugin_wasm("sandbox-probe")).unwrap();
    let component = runtime.compile(&bytes).unwrap();
    Arc::new(runtime.load(component).await.unwrap())
}

fn instance(plugin: &Arc<Plugin>, config: serde_json::Value, policy: HttpPolicy) -> PluginInstance {
    PluginInstance::new(
        plugin.clone(),
        PluginConfig {
            config: config.to_string(),
            secrets: vec![],
        },
        policy,
    )
}

fn batch(n: usize) -> Vec<OutboundRecord> {
    (0..n)
        .map(|i| OutboundRecord {
            key: format!("k{i}"),
            fields: serde_json::json!({"email": format!(" User{i}@Example.com"), "orders": i})
                .to_string(),
        })
        .collect()
}

/// The next call after a misbehaving one is served normally.
async fn next_call_works(plugin: &Arc<Plugin>) {
    let ok = instance(
        plugin,
        serde_json::json!({"mode": "map"}),
        HttpPolicy::deny_all(),
    );
    let results = ok
        .deliver(Action::Upsert, &batch(3))
        .await
        .expect("the next call must work");
    assert!(
        results.iter().all(|r| matches!(r, RecordResult::Ok)),
        "{results:?}"
    );
}

fn rejected_reason(results: &[RecordResult]) -> String {
    match &results[0] {
        RecordResult::Rejected(reason) => reason.clone(),
        other => panic!("expected the probe's note, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_the_cpu_deadline() {
    let plugin = probe().await;
    let started = Instant::now();
    let err = instance(
        &plugin,
        serde_json::json!({"mode": "loop"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap_err();
    assert!(matches!(err, PluginError::CpuDeadline { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped after {:?}",
        started.elapsed()
    );
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_stopped_at_the_memory_cap() {
    let plugin = probe().await;
    let err = instance(
        &plugin,
        serde_json::json!({"mode": "alloc"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap_err();
    assert!(
        matches!(err, PluginError::MemoryCap { mib: 32, .. }),
        "{err}"
    );
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_an_error_of_that_call() {
    let plugin = probe().await;
    let err = instance(
        &plugin,
        serde_json::json!({"mode": "panic"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap_err();
    match &err {
        PluginError::Trap { reason, .. } => {
            assert!(reason.contains("probe was told to panic"), "{reason}")
        }
        other => panic!("expected a trap, got {other}"),
    }
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_not_granted_are_refused_before_any_request_leaves() {
    let server = LocalServer::start().await;
    let plugin = probe().await;
    let fetch = serde_json::json!({"mode": "fetch", "url": server.url("/probe")});
    let manifest_hosts = vec!["*".to_string()];

    // Granted another host only.
    let other = HttpPolicy::new(&manifest_hosts, Some(&["api.example.com".to_string()]), &[]);
    let results = instance(&plugin, fetch.clone(), other)
        .deliver(Action::Upsert, &batch(1))
        .await
        .unwrap();
    assert!(
        rejected_reason(&results).contains("request denied by the hub"),
        "{results:?}"
    );

    // Granted 127.0.0.1:PORT by name, but loopback is not allowed without an exact allowance.
    let named = HttpPolicy::new(&manifest_hosts, Some(&[server.host_port()]), &[]);
    let results = instance(&plugin, fetch.clone(), named)
        .deliver(Action::Upsert, &batch(1))
        .await
        .unwrap();
    assert!(
        rejected_reason(&results).contains("request denied by the hub"),
        "{results:?}"
    );

    // A name that resolves to loopback (as a rebinding attack would) is refused too.
    let port = server.addr.port();
    let by_name =
        serde_json::json!({"mode": "fetch", "url": format!("http://localhost:{port}/probe")});
    let granted_name = HttpPolicy::new(&manifest_hosts, Some(&[format!("localhost:{port}")]), &[]);
    let results = instance(&plugin, by_name, granted_name)
        .deliver(Action::Upsert, &batch(1))
        .await
        .unwrap();
    assert!(
        rejected_reason(&results).contains("request denied by the hub"),
        "{results:?}"
    );

    assert_eq!(server.hits(), 0, "a refused request reached the server");

    // With the operator's exact allowance the same request goes through: the check above can fail.
    let allowed = HttpPolicy::new(
        &manifest_hosts,
        Some(&[server.host_port()]),
        &[server.host_port()],
    );
    let results = instance(&plugin, fetch, allowed)
        .deliver(Action::Upsert, &batch(1))
        .await
        .unwrap();
    assert_eq!(rejected_reason(&results), "fetched: HTTP 405");
    assert_eq!(server.hits(), 1);
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_io_is_bounded_by_the_wall_clock_timeout() {
    let server = LocalServer::start().await;
    let plugin = probe().await;
    let allowed = HttpPolicy::new(
        &["*".to_string()],
        Some(&[server.host_port()]),
        &[server.host_port()],
    );
    let started = Instant::now();
    let err = instance(
        &plugin,
        serde_json::json!({"mode": "fetch", "url": server.url("/hang")}),
        allowed,
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    next_call_works(&plugin).await;
}

/// Waiting on a slow API is not CPU: a response slower than the CPU deadline is fine as long as
/// it comes within the wall-clock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_io_does_not_count_towards_the_cpu_deadline() {
    let server = LocalServer::start().await;
    let plugin = probe().await;
    let allowed = HttpPolicy::new(
        &["*".to_string()],
        Some(&[server.host_port()]),
        &[server.host_port()],
    );
    let started = Instant::now();
    let result = instance(
        &plugin,
        serde_json::json!({"mode": "fetch", "url": server.url("/slow")}),
        allowed,
    )
    .deliver(Action::Upsert, &batch(1))
    .await;
    assert!(started.elapsed() > limits().cpu_deadline * 2);
    assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_files_and_no_environment() {
    // SAFETY: set before any plugin runs; the plugin must not see it.
    unsafe { std::env::set_var("SWITCHYARD_TEST_SECRET", "visible-to-host-only") };
    let plugin = probe().await;
    let files = instance(
        &plugin,
        serde_json::json!({"mode": "read-file"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap();
    let note = rejected_reason(&files);
    assert!(note.starts_with("file: Err("), "{note}");
    assert!(note.contains("dir: Err("), "{note}");
    let env = instance(
        &plugin,
        serde_json::json!({"mode": "read-env"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap();
    assert_eq!(rejected_reason(&env), "env vars: 0; HOME=None");
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_isolated_and_concurrent() {
    // Many calls at once, each in a fresh instance; a bad one among them harms none of the others.
    let plugin = probe().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mode = if i == 5 { "panic" } else { "map" };
        let inst = instance(
            &plugin,
            serde_json::json!({"mode": mode}),
            HttpPolicy::deny_all(),
        );
        tasks.push(tokio::spawn(async move {
            inst.deliver(Action::Upsert, &batch(50)).await
        }));
    }
    let mut failures = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(results) => assert_eq!(results.len(), 50),
            Err(PluginError::Trap { .. }) => failures += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_the_plugins_invalid_config_error() {
    let plugin = probe().await;
    let err = instance(
        &plugin,
        serde_json::json!({"nomode": true}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("invalid config") && text.contains("missing field `mode`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sockets_are_refused() {
    let server = LocalServer::start().await;
    let plugin = probe().await;
    let results = instance(
        &plugin,
        serde_json::json!({"mode": "socket", "url": server.host_port()}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(1))
    .await
    .unwrap();
    let note = rejected_reason(&results);
    assert!(
        note.starts_with("socket: ") && note != "socket: connected",
        "{note}"
    );
    assert_eq!(server.hits(), 0);
    next_call_works(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_data_is_capped() {
    let runtime = Runtime::new(Limits {
        max_output_bytes: 64 << 10,
        ..limits()
    })
    .unwrap();
    let bytes = std::fs::read(plugin_wasm("sandbox-probe")).unwrap();
    let plugin = Arc::new(
        runtime
            .load(runtime.compile(&bytes).unwrap())
            .await
            .unwrap(),
    );
    let err = instance(
        &plugin,
        serde_json::json!({"mode": "big-output"}),
        HttpPolicy::deny_all(),
    )
    .deliver(Action::Upsert, &batch(2))
    .await
    .unwrap_err();
    assert!(
        matches!(err, PluginError::OutputTooLarge { cap: 65536, .. }),
        "{err}"
    );
    next_call_works(&plugin).await;
}

/// IPv6 forms that embed an IPv4 address are judged by that address: on a network with NAT64,
/// 6to4 or IPv4-compatible routing they reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_embedded_in_ipv6_is_refused() {
    let server = LocalServer::start().await;
    let plugin = probe().await;
    let port = server.addr.port();
    for host in [
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[::ffff:127.0.0.1]",
        "[2002:7f00:1::1]",
        "[64:ff9b:1::7f00:1]",
    ] {
        let granted = HttpPolicy::new(&["*".to_string()], Some(&[format!("{host}:{port}")]), &[]);
        let fetch =
            serde_json::json!({"mode": "fetch", "url": format!("http://{host}:{port}/probe")});
        let results = instance(&plugin, fetch, granted)
            .deliver(Action::Upsert, &batch(1))
            .await
            .unwrap();
        assert!(
            rejected_reason(&results).contains("request denied by the hub"),
            "{host}: {results:?}"
        );
    }
    assert_eq!(server.hits(), 0);
}
