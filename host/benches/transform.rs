//! Per-message cost of the first-party transform plugins at a batch of 1,000 messages: each of
//! `pii-scrub`, `rename-events` and `enrich-lookup` through `PluginInstance::transform` (a fresh
//! instance per call, the config parsed per call, no network), the same plugin logic natively
//! (the plugin's own module compiled into this bench), and the three chained through
//! `TransformChain::apply` (what a stream with `transforms = [...]` pays, the host's checks of
//! every output included).
//!
//! The messages are Segment-spec track events of about 700 bytes, shaped like what
//! `analytics-node` sends (context.library, context.ip, traits, an e-commerce `products` list).
//!
//! Run: `tools/build-plugins && cargo bench -p switchyard --bench transform`
//! (`SWITCHYARD_BENCH_SIZES=1,100,1000` for other batch sizes; 1,000 by default.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::runtime::bindings::{PluginConfig, TransformResult};
use switchyard::runtime::net::HttpPolicy;
use switchyard::runtime::{Limits, PluginInstance, Runtime};
use switchyard::transform::{Step, TransformChain};

// The plugins' logic, compiled natively for the side-by-side figure. Their unit tests run in
// the plugin crates; here they are compiled out.
#[allow(dead_code, unused_imports)]
#[path = "../../plugins/enrich-lookup/src/lookup.rs"]
mod lookup;
#[allow(dead_code, unused_imports)]
#[path = "../../plugins/rename-events/src/plan.rs"]
mod plan;
#[allow(dead_code, unused_imports)]
#[path = "../../plugins/pii-scrub/src/scrub.rs"]
mod scrub;

const MEASURE_FOR: Duration = Duration::from_millis(1500);

/// The same transform run natively: whether it keeps a message.
type NativeKeeps<'a> = Box<dyn Fn(&str) -> bool + 'a>;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let load = |crate_name: &str, config: &serde_json::Value| {
        let path = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
            .join(format!("wasm32-wasip2/plugin/{crate_name}.wasm"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run tools/build-plugins first", path.display()));
        let component = runtime.compile(&bytes).unwrap();
        let plugin = Arc::new(rt.block_on(runtime.load(component)).unwrap());
        PluginInstance::new(
            plugin,
            PluginConfig {
                config: config.to_string(),
                secrets: vec![],
            },
            HttpPolicy::deny_all(),
        )
    };

    let scrub_config = serde_json::json!({
        "drop": ["context.ip", "properties.products.*.coupon"],
        "hash": ["context.traits.email", "properties.email"],
        "normalize": "trim_lowercase"
    });
    let plan_config = serde_json::json!({
        "events": {
            "Order Completed": ["order_completed", "checkout_done"],
            "Product Viewed": ["product_viewed"],
            "Signed Up": []
        },
        "unknown": "drop",
        "original_name_property": "original_event"
    });
    let mut table = serde_json::Map::new();
    for i in 0..500 {
        table.insert(
            format!("sku-{i}"),
            serde_json::json!({"category": format!("cat-{}", i % 20), "brand": "Acme"}),
        );
    }
    let enrich_config = serde_json::json!({"lookups": [{
        "from": "properties.products.*.sku",
        "into": "properties.products.*",
        "table": table,
        "default": {"category": "other"}
    }]});

    let scrub_wasm = load("pii_scrub", &scrub_config);
    let plan_wasm = load("rename_events", &plan_config);
    let enrich_wasm = load("enrich_lookup", &enrich_config);

    let scrub_native =
        scrub::Scrubber::new(&serde_json::from_value(scrub_config.clone()).unwrap()).unwrap();
    let plan_cfg: plan::Config = serde_json::from_value(plan_config.clone()).unwrap();
    let plan_native = plan::Plan::new(&plan_cfg).unwrap();
    let enrich_cfg: lookup::Config = serde_json::from_value(enrich_config.clone()).unwrap();
    let enrich_native = lookup::Enricher::new(&enrich_cfg).unwrap();

    let sizes: Vec<usize> = std::env::var("SWITCHYARD_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000]);
    println!(
        "messages of {} bytes on average",
        messages(100).iter().map(String::len).sum::<usize>() / 100
    );
    println!(
        "{:>6}  {:<14}  {:>14}  {:>14}  {:>11}",
        "batch", "transform", "wasm µs/msg", "native µs/msg", "wasm/native"
    );
    for &size in &sizes {
        let batch = messages(size);
        let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / size as f64;
        let rows: [(&str, &PluginInstance, NativeKeeps); 3] = [
            (
                "pii-scrub",
                &scrub_wasm,
                Box::new(|m| matches!(scrub_native.apply(m), scrub::Outcome::Keep(_))),
            ),
            (
                "rename-events",
                &plan_wasm,
                Box::new(|m| matches!(plan_native.apply(m), plan::Outcome::Keep(_))),
            ),
            (
                "enrich-lookup",
                &enrich_wasm,
                Box::new(|m| matches!(enrich_native.apply(m), lookup::Outcome::Keep(_))),
            ),
        ];
        for (name, instance, native) in &rows {
            let wasm = time_per_iter(|| {
                let results = rt.block_on(instance.transform(&batch)).unwrap();
                assert!(matches!(results[0], TransformResult::Keep(_)));
            });
            let native = time_per_iter(|| {
                let kept = batch.iter().filter(|m| native(m)).count();
                std::hint::black_box(kept);
            });
            println!(
                "{:>6}  {:<14}  {:>14.2}  {:>14.2}  {:>10.2}x",
                size,
                name,
                per_msg(wasm),
                per_msg(native),
                wasm.as_secs_f64() / native.as_secs_f64()
            );
        }
        let chain = TransformChain::new(vec![
            Arc::new(Step::new("scrub", scrub_wasm.clone(), None)),
            Arc::new(Step::new("plan", plan_wasm.clone(), None)),
            Arc::new(Step::new("enrich", enrich_wasm.clone(), None)),
        ]);
        let mut kept = 0;
        let chained = time_per_iter(|| {
            let out = rt.block_on(chain.apply(batch.clone())).unwrap();
            kept = out.kept.len();
        });
        println!(
            "{:>6}  {:<14}  {:>14.2}  {:>14}  {:>11}   ({kept} of {size} kept)",
            size,
            "chain of 3",
            per_msg(chained),
            "",
            ""
        );
    }
}

/// Median time of one iteration over five rounds of `MEASURE_FOR / 5`, after a warm-up.
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

/// Track events as `analytics-node` sends them: a mix of planned names, aliases and (one in
/// ten) an unplanned name that `rename-events` drops.
fn messages(n: usize) -> Vec<String> {
    const NAMES: [&str; 10] = [
        "Order Completed",
        "order_completed",
        "checkout_done",
        "Product Viewed",
        "product_viewed",
        "Signed Up",
        "Order Completed",
        "Product Viewed",
        "Signed Up",
        "Debug Ping",
    ];
    (0..n)
        .map(|i| {
            serde_json::json!({
                "type": "track",
                "event": NAMES[i % NAMES.len()],
                "userId": format!("user-{i}"),
                "anonymousId": format!("anon-{:08x}", i * 7919),
                "messageId": format!("msg-{i:012}"),
                "timestamp": "2026-12-06T20:00:00.000Z",
                "properties": {
                    "order_id": format!("o-{i}"),
                    "total": 59.9,
                    "currency": "EUR",
                    "email": format!("  Buyer{i}@Example.COM "),
                    "products": [
                        {"sku": format!("sku-{}", i % 600), "price": 19.95, "quantity": 2, "coupon": "XMAS"},
                        {"sku": format!("sku-{}", (i * 3) % 600), "price": 20.0, "quantity": 1}
                    ]
                },
                "context": {
                    "ip": "203.0.113.9",
                    "library": {"name": "analytics-node", "version": "2.1.0"},
                    "traits": {"email": format!("buyer{i}@example.com")}
                },
                "integrations": {}
            })
            .to_string()
        })
        .collect()
}
