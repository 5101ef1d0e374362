//! The plugin CLI end to end, through the real binary: install, list, info, deliver, read and
//! remove the example plugins against a local HTTP server; refuse what is not a plugin or was
//! built for an unknown API version; scaffold new plugins that build, install and run as is.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::ok;
use common::{failed, lines};
use common::{plugin_wasm, target_dir, LocalServer};

fn switchyard(plugins: &Path, args: &[&str]) -> Output {
    common::switchyard(plugins, args, "warn")
}

fn switchyard_with_stdin(plugins: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(args)
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

#[test]
fn example_destination_installs_and_delivers_to_a_local_server() {
    let server = LocalServer::start_in_background();
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin_wasm("json-post-destination");

    let out = ok(&switchyard(
        dir.path(),
        &["plugin", "install", wasm.to_str().unwrap()],
    ));
    assert!(
        out.contains("installed json-post-destination 0.1.0 (destination, plugin API 1.0.0)"),
        "{out}"
    );
    assert!(out.contains("asks to call: *"), "{out}");
    assert!(out.contains("asks for secret `token` (optional)"), "{out}");

    let list = ok(&switchyard(dir.path(), &["plugin", "list"]));
    assert!(
        list.contains("json-post-destination") && list.contains("destination"),
        "{list}"
    );
    let info = ok(&switchyard(
        dir.path(),
        &["plugin", "info", "json-post-destination"],
    ));
    assert!(info.contains("max batch size: 500"), "{info}");
    assert!(info.contains("\"url\""), "config schema shown: {info}");

    let config = serde_json::json!({"url": server.url("/in"), "use_token": true}).to_string();
    let records = "{\"key\":\"p1\",\"fields\":{\"email\":\"ada@example.com\"}}\n\
                   {\"key\":\"p2\",\"fields\":{\"email\":\"bob@example.com\"}}\n\
                   {\"key\":\"p3\",\"fields\":\"not an object\"}\n";
    let hp = server.host_port();
    let out = ok(&switchyard_with_stdin(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "json-post-destination",
            "--config",
            &config,
            "--secret",
            "token=s3cret-token",
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
        records,
    ));
    let results = lines(&out);
    assert_eq!(results.len(), 3, "{out}");
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(results[1]["result"], "ok");
    assert_eq!(results[2]["result"], "rejected");

    let seen = server.requests();
    assert_eq!(seen.len(), 1, "one batch, one request");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["action"], "upsert");
    assert_eq!(body["records"][0]["key"], "p1");
    assert_eq!(body["records"][1]["fields"]["email"], "bob@example.com");
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        seen[0].headers["content-length"],
        seen[0].body.len().to_string().as_str()
    );
    // The host filled in the secret placeholder as the request left the sandbox.
    assert_eq!(seen[0].headers["authorization"], "Bearer s3cret-token");

    // A 401 fails the whole batch with the API's message; a 429 is a retry with its Retry-After.
    let unauthorized = serde_json::json!({"url": server.url("/unauthorized")}).to_string();
    let err = failed(&switchyard_with_stdin(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "json-post-destination",
            "--config",
            &unauthorized,
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
        records,
    ));
    assert!(err.contains("unauthorized: HTTP 401: bad token"), "{err}");
    let throttled = serde_json::json!({"url": server.url("/throttled")}).to_string();
    let out = ok(&switchyard_with_stdin(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "json-post-destination",
            "--config",
            &throttled,
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
        records,
    ));
    let results = lines(&out);
    assert_eq!(results[0]["result"], "retry");
    assert_eq!(results[0]["after_ms"], 3000);

    // Without the operator's grant nothing leaves, and the error says what to grant.
    let before = server.hits();
    let err = failed(&switchyard_with_stdin(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "json-post-destination",
            "--config",
            &config,
        ],
        records,
    ));
    assert!(
        err.contains(&format!(
            "request denied by the hub: {hp} is not an allowed host"
        )),
        "{err}"
    );
    assert_eq!(server.hits(), before);

    let out = ok(&switchyard(
        dir.path(),
        &["plugin", "remove", "json-post-destination"],
    ));
    assert!(out.contains("removed json-post-destination 0.1.0"), "{out}");
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "info", "json-post-destination"],
    ));
    assert!(err.contains("is not installed"), "{err}");
}

#[test]
fn example_source_reads_every_page_with_its_cursor() {
    let server = LocalServer::start_in_background();
    let dir = tempfile::tempdir().unwrap();
    ok(&switchyard(
        dir.path(),
        &[
            "plugin",
            "install",
            plugin_wasm("paged-json-source").to_str().unwrap(),
        ],
    ));
    let hp = server.host_port();
    let config = serde_json::json!({"url": server.url("/pages"), "page_size": 3}).to_string();
    let out = switchyard(
        dir.path(),
        &[
            "plugin",
            "read",
            "paged-json-source",
            "--stream",
            "records",
            "--config",
            &config,
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
    );
    let records = lines(&ok(&out));
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7"]);
    assert_eq!(records[6]["data"]["email"], "user7@example.com");
    let cursors: Vec<String> = server.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        cursors,
        [
            "/pages?limit=3",
            "/pages?limit=3&cursor=3",
            "/pages?limit=3&cursor=6"
        ]
    );
}

#[test]
fn install_refuses_what_is_not_a_plugin_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho not wasm\n").unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "install", junk.to_str().unwrap()],
    ));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a WebAssembly component"), "{err}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "install", core.to_str().unwrap()],
    ));
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

/// Rewrites a real plugin's contract version, as a plugin built against another API version
/// would carry it (the strings have the same length, so the component stays well-formed).
fn with_api_version(wasm: &[u8], version: &str) -> Vec<u8> {
    assert_eq!(version.len(), "1.0.0".len());
    let mut bytes = wasm.to_vec();
    let needle = b"switchyard:plugin/";
    let mut i = 0;
    let mut replaced = 0;
    while i + needle.len() < bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            let at = i
                + needle.len()
                + bytes[i + needle.len()..]
                    .iter()
                    .position(|b| *b == b'@')
                    .unwrap()
                + 1;
            if &bytes[at..at + 5] == b"1.0.0" {
                bytes[at..at + 5].copy_from_slice(version.as_bytes());
                replaced += 1;
            }
            i = at;
        } else {
            i += 1;
        }
    }
    assert!(
        replaced >= 3,
        "expected the contract's names in the component"
    );
    bytes
}

#[test]
fn install_refuses_an_unknown_api_version_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(plugin_wasm("json-post-destination")).unwrap();

    let newer = dir.path().join("newer.wasm");
    std::fs::write(&newer, with_api_version(&original, "1.1.0")).unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "install", newer.to_str().unwrap()],
    ));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("plugin API version 1.1.0 is newer than this hub supports (up to 1.0.0)"),
        "{err}"
    );

    let major = dir.path().join("major.wasm");
    std::fs::write(&major, with_api_version(&original, "9.0.0")).unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "install", major.to_str().unwrap()],
    ));
    assert!(
        err.contains("9.0.0 is newer than this hub supports"),
        "{err}"
    );

    let older = dir.path().join("older.wasm");
    std::fs::write(&older, with_api_version(&original, "0.9.0")).unwrap();
    let err = failed(&switchyard(
        dir.path(),
        &["plugin", "install", older.to_str().unwrap()],
    ));
    assert!(err.contains("unknown plugin API version 0.9.0"), "{err}");

    let list = ok(&switchyard(dir.path(), &["plugin", "list"]));
    assert!(list.contains("no plugins installed"), "{list}");
}

#[test]
fn scaffolds_build_install_and_run_as_is() {
    let server = LocalServer::start_in_background();
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    let hp = server.host_port();
    // Share one target directory between runs so the scaffolds' dependencies build once.
    let scaffold_target = target_dir().join("scaffold-test");

    for (name, kind) in [("my-dest", "destination"), ("my-source", "source")] {
        let out = ok(&switchyard(
            &plugins,
            &[
                "plugin",
                "new",
                name,
                "--kind",
                kind,
                "--dir",
                work.path().to_str().unwrap(),
            ],
        ));
        assert!(
            out.contains(&format!("created {}", work.path().join(name).display())),
            "{out}"
        );
        let build = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "--plugins-dir",
                plugins.to_str().unwrap(),
                "plugin",
                "build",
            ])
            .arg(work.path().join(name))
            .env("CARGO_TARGET_DIR", &scaffold_target)
            .output()
            .unwrap();
        let wasm = ok(&build).trim().to_string();
        assert!(
            wasm.ends_with(&format!("{}.wasm", name.replace('-', "_"))),
            "{wasm}"
        );
        let out = ok(&switchyard(&plugins, &["plugin", "install", &wasm]));
        assert!(
            out.contains(&format!("installed {name} 0.1.0 ({kind}")),
            "{out}"
        );
    }

    let config = serde_json::json!({"url": server.url("/scaffold-in")}).to_string();
    let out = ok(&switchyard_with_stdin(
        &plugins,
        &[
            "plugin",
            "deliver",
            "my-dest",
            "--config",
            &config,
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
        "{\"key\":\"a\",\"fields\":{\"x\":1}}\n",
    ));
    assert_eq!(lines(&out)[0]["result"], "ok");
    let posted = server
        .requests()
        .into_iter()
        .find(|r| r.uri == "/scaffold-in")
        .expect("the scaffold posted");
    let body: serde_json::Value = serde_json::from_slice(&posted.body).unwrap();
    assert_eq!(body["records"][0]["x"], 1);

    let config = serde_json::json!({"url": server.url("/scaffold-pages")}).to_string();
    let out = ok(&switchyard(
        &plugins,
        &[
            "plugin",
            "read",
            "my-source",
            "--stream",
            "records",
            "--config",
            &config,
            "--allow-host",
            &hp,
            "--allow-private",
            &hp,
        ],
    ));
    let ids: Vec<String> = lines(&out)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
}

#[test]
fn installed_plugins_start_from_the_precompiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    ok(&switchyard(
        dir.path(),
        &[
            "plugin",
            "install",
            plugin_wasm("sandbox-probe").to_str().unwrap(),
        ],
    ));
    let version_dir = dir.path().join("sandbox-probe/0.1.0");
    let artefacts = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&version_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    assert_eq!(artefacts().len(), 1, "install precompiles once");
    let deliver = |dir: &Path| {
        let out = ok(&switchyard_with_stdin(
            dir,
            &[
                "plugin",
                "deliver",
                "sandbox-probe",
                "--config",
                "{\"mode\":\"map\"}",
            ],
            "{\"key\":\"a\",\"fields\":{\"email\":\"A@B.co\"}}\n",
        ));
        assert_eq!(lines(&out)[0]["result"], "ok");
    };

    // With the component itself gone, the plugin still starts: it runs from the cached code.
    let wasm = version_dir.join("plugin.wasm");
    let original = std::fs::read(&wasm).unwrap();
    std::fs::remove_file(&wasm).unwrap();
    deliver(dir.path());

    // Without a cached artefact (say, after a hub upgrade changed the engine) the component is
    // compiled again and the artefact written back.
    std::fs::write(&wasm, &original).unwrap();
    for a in artefacts() {
        std::fs::remove_file(a).unwrap();
    }
    deliver(dir.path());
    assert_eq!(artefacts().len(), 1);

    // A component changed behind the hub's back is refused rather than run.
    for a in artefacts() {
        std::fs::remove_file(a).unwrap();
    }
    let mut tampered = original.clone();
    tampered.extend_from_slice(&[0, 4, 1, b'x', 0]);
    std::fs::write(&wasm, &tampered).unwrap();
    let err = failed(&switchyard_with_stdin(
        dir.path(),
        &[
            "plugin",
            "deliver",
            "sandbox-probe",
            "--config",
            "{\"mode\":\"ok\"}",
        ],
        "",
    ));
    assert!(err.contains("changed since it was installed"), "{err}");
}
