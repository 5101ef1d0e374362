//! Transform plugins end to end, through the real binary: the three first-party transforms
//! install as kind `transform`, `plugin check` reports their config errors, `plugin transform`
//! runs them on JSON lines (one result per line, drops with reasons, a chain by piping), and
//! `switchyard validate` checks `[transforms.NAME]` blocks and the chains (sources' and streams')
//! that name them.

use crate::common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{failed, install_plugin, lines, ok};

fn switchyard(plugins: &Path, args: &[&str]) -> Output {
    common::switchyard(plugins, args, "warn")
}

/// Runs `switchyard --plugins-dir PLUGINS ARGS..` with `stdin` as its input.
fn with_stdin(plugins: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running switchyard");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn jsonl(messages: &[serde_json::Value]) -> String {
    messages.iter().map(|m| format!("{m}\n")).collect()
}

fn install_all(plugins: &Path) {
    for p in ["pii-scrub", "rename-events", "enrich-lookup"] {
        install_plugin(plugins, p);
    }
}

#[test]
fn transform_plugins_install_as_transforms_and_check_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path();
    install_all(plugins);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&switchyard(plugins, &["plugin", "list", "--json"]))).unwrap();
    let kinds: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in ["pii-scrub", "rename-events", "enrich-lookup"] {
        assert!(
            kinds.contains(&(name.to_string(), "transform".to_string())),
            "{kinds:?}"
        );
    }

    // `check` runs the plugin's own config checks: paths are parsed there.
    let bad = failed(&switchyard(
        plugins,
        &[
            "plugin",
            "check",
            "pii-scrub",
            "--config",
            r#"{"drop":["userId"]}"#,
        ],
    ));
    assert!(
        bad.contains("`userId`") && bad.contains("properties, traits or context"),
        "{bad}"
    );
    let bad = failed(&switchyard(
        plugins,
        &[
            "plugin",
            "check",
            "rename-events",
            "--config",
            r#"{"events":{"A":["x"],"B":["x"]}}"#,
        ],
    ));
    assert!(bad.contains("`x` is claimed by both"), "{bad}");
    let bad = failed(&switchyard(
        plugins,
        &[
            "plugin",
            "check",
            "enrich-lookup",
            "--config",
            r#"{"lookups":[{"from":"properties.items.*.sku","into":"properties.category","table":{}}]}"#,
        ],
    ));
    assert!(bad.contains("lookups[1]: into"), "{bad}");
    let good = ok(&switchyard(
        plugins,
        &[
            "plugin",
            "check",
            "pii-scrub",
            "--config",
            r#"{"hash":["traits.email"]}"#,
        ],
    ));
    assert!(good.contains("check passed"), "{good}");
}

#[test]
fn plugin_transform_prints_one_result_per_message_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path();
    install_all(plugins);
    let input = jsonl(&[
        serde_json::json!({"type": "track", "event": "checkout_done", "properties": {"total": 5}}),
        serde_json::json!({"type": "track", "event": "Debug Ping"}),
        serde_json::json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
        serde_json::json!({"type": "track", "event": "Order Completed"}),
        serde_json::json!({"type": "track", "event": "nope"}),
    ]);
    let config = r#"{"events":{"Order Completed":["checkout_done"]},"unknown":"drop","original_name_property":"original_event"}"#;
    let out = with_stdin(
        plugins,
        &["plugin", "transform", "rename-events", "--config", config],
        &input,
    );
    let results = lines(&ok(&out));
    assert_eq!(results.len(), 5, "{results:?}");
    assert_eq!(results[0]["keep"][0]["event"], "Order Completed");
    assert_eq!(
        results[0]["keep"][0]["properties"]["original_event"],
        "checkout_done"
    );
    assert_eq!(results[1]["drop"], "event not in the tracking plan");
    assert_eq!(results[2]["keep"][0]["userId"], "u1");
    assert_eq!(results[3]["keep"][0]["event"], "Order Completed");
    assert_eq!(results[4]["drop"], "event not in the tracking plan");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("5 messages in, 3 out, 2 dropped")
            && summary.contains("2 × rename-events: event not in the tracking plan"),
        "{summary}"
    );

    // A line that is not a JSON object is refused before the plugin runs, naming the line.
    let err = failed(&with_stdin(
        plugins,
        &["plugin", "transform", "rename-events", "--config", config],
        "{\"type\":\"track\"}\n[1]\n",
    ));
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn transforms_chain_by_piping_messages_output() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path();
    install_all(plugins);
    let input = jsonl(&[serde_json::json!({
        "type": "track", "event": "product_viewed",
        "properties": {"sku": "s1", "email": " Ada@Example.com"},
        "context": {"ip": "203.0.113.9"}
    })]);
    let scrubbed = ok(&with_stdin(
        plugins,
        &[
            "plugin",
            "transform",
            "pii-scrub",
            "--output",
            "messages",
            "--config",
            r#"{"drop":["context.ip"],"hash":["properties.email"],"normalize":"trim_lowercase"}"#,
        ],
        &input,
    ));
    let renamed = ok(&with_stdin(
        plugins,
        &[
            "plugin",
            "transform",
            "rename-events",
            "--output",
            "messages",
            "--config",
            r#"{"events":{"Product Viewed":[]},"loose":true}"#,
        ],
        &scrubbed,
    ));
    let enriched = ok(&with_stdin(
        plugins,
        &[
            "plugin",
            "transform",
            "enrich-lookup",
            "--output",
            "messages",
            "--config",
            r#"{"lookups":[{"from":"properties.sku","into":"properties","table":{"s1":{"category":"shoes"}}}]}"#,
        ],
        &renamed,
    ));
    let out = lines(&enriched);
    assert_eq!(out.len(), 1);
    let m = &out[0];
    assert_eq!(m["event"], "Product Viewed");
    assert_eq!(m["properties"]["category"], "shoes");
    // sha256("ada@example.com"), the normalised address.
    assert_eq!(
        m["properties"]["email"],
        switchyard_sdk::pii::sha256_hex("ada@example.com")
    );
    assert!(m["context"].get("ip").is_none(), "{m}");
}

#[test]
fn validate_checks_transform_blocks_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install_all(&plugins);
    install_plugin(&plugins, "webhook");
    let path = dir.path().join("switchyard.toml");
    let validate = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--plugins-dir")
            .arg(&plugins)
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let good = r#"
[transforms.scrub]
plugin = "pii-scrub"
config = { drop = ["context.ip"], hash = ["traits.email"], normalize = "trim_lowercase" }

[transforms.catalog]
plugin = "enrich-lookup"
config = { lookups = [
  { from = "properties.products.*.sku", into = "properties.products.*", default = { category = "other" }, table = { "sku-1" = { category = "shoes" } } },
] }

[sources.web]
write_keys = ["wk_test"]
transforms = ["scrub", "catalog"]
"#;
    let out = validate(good);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = r#"
[transforms.scrub]
plugin = "pii-scrub"
config = { hash = ["traits.email"], normalize = "upper" }

[transforms.hook]
plugin = "webhook"

[transforms.gone]
plugin = "not-installed"

[sources.web]
write_keys = ["wk_test"]
transforms = ["scrub", "rename"]

[[streams]]
name = "to-hook"
to = "nowhere"
transforms = ["scrub", "plan"]
"#;
    let out = validate(bad);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[sources.web] transforms: \"rename\" names no [transforms.rename]",
        "[[streams]] #1 \"to-hook\": transforms: \"plan\" names no [transforms.plan]",
        "[transforms.scrub] config.normalize",
        "[transforms.hook] plugin `webhook` is a destination plugin, not a transform",
        "[transforms.gone]",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
