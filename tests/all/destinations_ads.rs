//! Ad-platform destinations end to end, through the real `switchyard` binary and the real plugin
//! components, against faithful fakes of the APIs:
//! - `meta-custom-audiences` against a fake Graph API (`tests/fakes/meta.rs`),
//! - `google-ads-customer-match` against a fake Google Ads REST API (`tests/fakes/google_ads.rs`).
//!
//! Each shows: records land mapped and hashed; per-record failures come back `rejected` with the
//! API's message; throttling comes back `retry` with the API's wait; bad credentials fail
//! `check`; logs hold neither the secret nor raw identifiers; and the fake refuses what the real
//! API refuses.

use crate::common;

use common::{failed, switchyard};

use crate::fakes::meta as meta_fake;

use crate::fakes::google_ads as google_fake;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "switchyard failed:\nstdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// A plugins dir with `crate_name`'s component installed.
fn install(crate_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::install_plugin(dir.path(), crate_name);
    dir
}

fn records_file(dir: &Path, records: &[Value]) -> std::path::PathBuf {
    let path = dir.join(format!("records-{}.jsonl", records.len()));
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn results(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A plain HTTP/1.1 request to a fake: (status, body).
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // A server may answer and close before reading a body it refuses: read the answer anyway.
    let _ = s.write_all(req.as_bytes()).and_then(|_| s.write_all(body));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Meta Custom Audiences

const META: &str = "meta-custom-audiences";

struct MetaRun {
    fake: meta_fake::Fake,
    plugins: tempfile::TempDir,
}

impl MetaRun {
    fn new() -> MetaRun {
        MetaRun {
            fake: meta_fake::start_in_background(),
            plugins: install("meta-custom-audiences"),
        }
    }

    fn args<'a>(&'a self, reroute: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--reroute", reroute, "--allow-private", &self.hp()];
        v.extend_from_slice(extra);
        v
    }

    fn hp(&self) -> &'static str {
        Box::leak(self.fake.host_port().into_boxed_str())
    }

    fn reroute(&self) -> String {
        format!("graph.facebook.com={}", self.fake.url())
    }

    fn deliver(
        &self,
        config: Value,
        token: &str,
        action: &str,
        records: &[Value],
        log: &str,
    ) -> Output {
        let file = records_file(self.plugins.path(), records);
        let config = config.to_string();
        let secret = format!("access_token={token}");
        let reroute = self.reroute();
        let mut args = vec![
            "plugin",
            "deliver",
            META,
            "--config",
            &config,
            "--secret",
            &secret,
            "--action",
            action,
            "--records",
            file.to_str().unwrap(),
        ];
        args.extend(self.args(&reroute, &[]));
        switchyard(self.plugins.path(), &args, log)
    }

    fn check(&self, config: Value, secrets: &[String]) -> Output {
        let config = config.to_string();
        let reroute = self.reroute();
        let mut args = vec!["plugin", "check", META, "--config", &config];
        for s in secrets {
            args.push("--secret");
            args.push(s);
        }
        args.extend(self.args(&reroute, &[]));
        switchyard(self.plugins.path(), &args, "warn")
    }
}

fn meta_config() -> Value {
    json!({"audience_id": meta_fake::AUDIENCE_ID, "default_phone_country_code": "1"})
}

#[test]
fn meta_upserts_and_removes_hashed_multi_key_rows_in_one_session() {
    let m = MetaRun::new();
    let records = vec![
        json!({"key": "p1", "fields": {"email": "  Test@Example.COM ", "phone": "+1 (555) 123-4567",
               "first_name": "John", "last_name": "Doe", "country": "US", "city": "San Francisco",
               "state": "California", "zip": "94045-1234", "gender": "male"}}),
        json!({"key": "p2", "fields": {"email": "ada@example.org", "phone": "(212) 555-0100"}}),
        json!({"key": "p3", "fields": {"first_name": "Nobody"}}),
    ];
    let out = m.deliver(meta_config(), meta_fake::TOKEN, "upsert", &records, "debug");
    let res = results(&ok(&out));
    assert_eq!(res.len(), 3, "{res:?}");
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "ok", "{res:?}");
    assert_eq!(res[2]["result"], "rejected");
    assert!(
        res[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no usable identifier"),
        "{res:?}"
    );

    let uploads = m.fake.uploads();
    assert_eq!(uploads.len(), 1);
    let up = &uploads[0];
    assert_eq!(up.method, "POST");
    assert_eq!(
        up.token_via, "header",
        "the token travels in the Authorization header"
    );
    assert_eq!(
        up.schema,
        ["EMAIL", "PHONE", "GEN", "LN", "FN", "FI", "CT", "ST", "ZIP", "COUNTRY"]
    );
    let session = up.session.clone().unwrap();
    assert_eq!(session["batch_seq"], 1);
    assert_eq!(session["last_batch_flag"], true);
    assert_eq!(session["estimated_num_total"], 2);
    assert!(session["session_id"].as_u64().unwrap() > 0);

    // Meta's published vectors, in the audience.
    let members = m.fake.members();
    assert_eq!(members.len(), 2, "{members:?}");
    let john = &members[0];
    assert_eq!(
        john["EMAIL"],
        "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    );
    assert_eq!(
        john["PHONE"],
        "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
    );
    assert_eq!(
        john["FN"],
        "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
    );
    assert_eq!(
        john["LN"],
        "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
    );
    assert_eq!(
        john["COUNTRY"],
        "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
    );
    assert_eq!(
        john["GEN"],
        "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"
    );
    assert_eq!(john["FI"], sha("j"));
    assert_eq!(john["CT"], sha("sanfrancisco"));
    assert_eq!(john["ST"], sha("ca"));
    assert_eq!(john["ZIP"], sha("94045"));
    let ada = &members[1];
    assert_eq!(ada["EMAIL"], sha("ada@example.org"));
    assert_eq!(
        ada["PHONE"],
        "d70a96108cd686be3737cbeed345f2a61c178747e3cb4448e6434e24ac150acd"
    );
    assert!(
        !ada.contains_key("FN"),
        "empty cells are not values: {ada:?}"
    );

    // Logs at debug level: no token, no raw email, phone or name.
    let log = stderr(&out);
    assert!(
        log.contains("POST users: batch 1 of 1"),
        "the plugin's debug log: {log}"
    );
    for secret in [
        meta_fake::TOKEN,
        "Test@Example.COM",
        "test@example.com",
        "ada@example.org",
        "555-0100",
        "5551234567",
        "San Francisco",
        "Nobody",
    ] {
        assert!(!log.contains(secret), "log leaks {secret}: {log}");
    }

    // Delete removes the person the hub last delivered.
    let out = m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "delete",
        &records[1..2],
        "warn",
    );
    let res = results(&ok(&out));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    let uploads = m.fake.uploads();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[1].method, "DELETE");
    assert_eq!(uploads[1].schema, ["EMAIL", "PHONE"]);
    let members = m.fake.members();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["EMAIL"], sha("test@example.com"));
}

#[test]
fn meta_session_spans_the_requests_of_a_call_and_throttling_retries_the_rest() {
    let m = MetaRun::new();
    let records: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("u{i}"), "fields": {"email": format!("user{i}@example.com")}}))
        .collect();
    let mut config = meta_config();
    config["rows_per_request"] = json!(2);
    config["schema"] = json!(["EMAIL", "PHONE"]);

    let out = m.deliver(config.clone(), meta_fake::TOKEN, "upsert", &records, "warn");
    let res = results(&ok(&out));
    assert!(res.iter().all(|r| r["result"] == "ok"), "{res:?}");
    let uploads = m.fake.uploads();
    assert_eq!(uploads.len(), 3);
    let sid = uploads[0].session.as_ref().unwrap()["session_id"].clone();
    for (i, up) in uploads.iter().enumerate() {
        let s = up.session.as_ref().unwrap();
        assert_eq!(s["session_id"], sid, "one session per deliver call");
        assert_eq!(s["batch_seq"], i + 1);
        assert_eq!(s["last_batch_flag"], i == 2);
        assert_eq!(s["estimated_num_total"], 5);
        assert_eq!(up.schema, ["EMAIL", "PHONE"], "the configured schema");
        assert!(up.rows.iter().all(|r| r[1].is_empty()));
    }
    assert_eq!(m.fake.members().len(), 5);

    // The second request is throttled (80003): the first two records are in, the rest retry
    // after Meta's estimated_time_to_regain_access, and nothing more is sent.
    m.fake.pass_next();
    m.fake.fail_next(meta_fake::Fault::rate_limited(2));
    let before = m.fake.requests();
    let out = m.deliver(config, meta_fake::TOKEN, "delete", &records, "warn");
    let res = results(&ok(&out));
    assert_eq!(
        m.fake.requests() - before,
        2,
        "stops after the throttled request"
    );
    assert_eq!(res[0]["result"], "ok");
    assert_eq!(res[1]["result"], "ok");
    for r in &res[2..] {
        assert_eq!(r["result"], "retry", "{res:?}");
        assert_eq!(r["after_ms"], 120_000, "{res:?}");
        assert!(r["reason"].as_str().unwrap().contains("80003"), "{res:?}");
    }
    assert_eq!(m.fake.members().len(), 3);
}

#[test]
fn meta_errors_map_to_retry_rejected_and_unauthorized() {
    let m = MetaRun::new();
    let records = vec![
        json!({"key": "good", "fields": {"email": "good@example.com"}}),
        json!({"key": "bad", "fields": {"email": "flagged@example.com"}}),
    ];
    // Meta quotes an entry as invalid: that record alone is rejected with Meta's reason.
    m.fake.mark_invalid(
        &sha("flagged@example.com"),
        "Invalid entry: hash does not match any format",
    );
    let res = results(&ok(&m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "rejected", "{res:?}");
    assert!(
        res[1]["reason"]
            .as_str()
            .unwrap()
            .contains("hash does not match any format"),
        "{res:?}"
    );
    assert_eq!(m.fake.members().len(), 1);

    // Transient (code 2) → retry without a wait; the hub backs off.
    m.fake.fail_next(meta_fake::Fault::error(
        500,
        2,
        None,
        "An unexpected error has occurred. Please retry your request later.",
    ));
    let res = results(&ok(&m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(res[0]["result"], "retry", "{res:?}");
    assert!(res[0]["after_ms"].is_null(), "{res:?}");

    // Application request limit (code 4, HTTP 403): a retry, not a credential problem.
    m.fake.fail_next(meta_fake::Fault::error(
        403,
        4,
        None,
        "(#4) Application request limit reached",
    ));
    let res = results(&ok(&m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(res[0]["result"], "retry", "{res:?}");

    // Invalid parameter (code 100) for the request → its records rejected with Meta's message.
    m.fake.fail_next(meta_fake::Fault::error(
        400,
        100,
        None,
        "(#100) Invalid parameter",
    ));
    let res = results(&ok(&m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(res[0]["result"], "rejected", "{res:?}");
    assert!(
        res[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Meta error 100"),
        "{res:?}"
    );
    assert!(
        res[0]["reason"].as_str().unwrap().contains("fbtrace_id"),
        "{res:?}"
    );

    // A bad token fails the whole call as unauthorized (code 190).
    let err = failed(&m.deliver(meta_config(), "EAAwrong", "upsert", &records[..1], "warn"));
    assert!(
        err.contains("unauthorized") || err.contains("Unauthorized"),
        "{err}"
    );
    assert!(err.contains("190"), "{err}");
    assert!(!err.contains("EAAwrong"), "the token is not echoed: {err}");
}

#[test]
fn meta_check_reads_the_audience_with_the_token() {
    let m = MetaRun::new();
    let good = vec![format!("access_token={}", meta_fake::TOKEN)];
    let out = ok(&m.check(meta_config(), &good));
    assert!(out.contains("check passed"), "{out}");

    let err = failed(&m.check(meta_config(), &["access_token=EAAexpired".to_string()]));
    assert!(
        err.to_lowercase().contains("unauthorized") && err.contains("190"),
        "{err}"
    );

    let err = failed(&m.check(json!({"audience_id": "999"}), &good));
    assert!(
        err.contains("does not exist") && err.to_lowercase().contains("invalid config"),
        "{err}"
    );

    let err = failed(&m.check(json!({"audience_id": "act_12"}), &good));
    assert!(err.contains("numeric id"), "{err}");

    // A version Meta retired fails check (code 2635), not the first sync.
    let mut retired = meta_config();
    retired["api_version"] = json!(meta_fake::RETIRED_VERSION);
    let err = failed(&m.check(retired, &good));
    assert!(
        err.contains("2635")
            && err.contains("api_version")
            && err.to_lowercase().contains("invalid config"),
        "{err}"
    );

    // When the app requires appsecret_proof, the plugin signs the token with the app secret.
    m.fake.require_appsecret_proof("app-secret-123");
    let err = failed(&m.check(meta_config(), &good));
    assert!(err.contains("appsecret_proof"), "{err}");
    let with_secret = vec![good[0].clone(), "app_secret=app-secret-123".to_string()];
    ok(&m.check(meta_config(), &with_secret));
}

/// M2: what would refuse every upload fails `check` (and the call), never dead-letters records:
/// unaccepted Custom Audience terms and a flagged audience. Before the fix `check` passed both
/// and every record of a sync was dead-lettered.
#[test]
fn meta_unaccepted_terms_and_flagged_audiences_fail_check_and_the_call() {
    let m = MetaRun::new();
    let good = vec![format!("access_token={}", meta_fake::TOKEN)];
    let records = vec![json!({"key": "p1", "fields": {"email": "ada@example.org"}})];
    m.fake.decline_terms();
    let err = failed(&m.check(meta_config(), &good));
    assert!(
        err.to_lowercase().contains("invalid config")
            && err.contains("Custom Audience terms")
            && err.contains(&format!("act={}", meta_fake::AD_ACCOUNT_ID)),
        "{err}"
    );
    let err = failed(&m.deliver(meta_config(), meta_fake::TOKEN, "upsert", &records, "warn"));
    assert!(
        err.contains("2663") && err.contains("Custom Audience terms"),
        "{err}"
    );

    let m = MetaRun::new();
    m.fake.flag_audience();
    let err = failed(&m.check(meta_config(), &good));
    assert!(err.contains("flagged") && err.contains("471"), "{err}");
    let err = failed(&m.deliver(meta_config(), meta_fake::TOKEN, "delete", &records, "warn"));
    assert!(err.contains("Audience Upload Blocked"), "{err}");
    assert!(m.fake.uploads().is_empty());
}

#[test]
fn meta_fake_rejects_what_graph_rejects() {
    let fake = meta_fake::start_in_background();
    let addr = fake.host_port();
    let ver = meta_fake::LATEST_VERSION;
    let path = format!("/{ver}/{}/users", meta_fake::AUDIENCE_ID);
    let hashed = sha("a@example.com");
    let payload = json!({"schema": ["EMAIL", "FN"], "data": [[hashed, ""]]}).to_string();
    let form_ct = ("content-type", "application/x-www-form-urlencoded");
    let bearer = format!("Bearer {}", meta_fake::TOKEN);
    let auth = ("authorization", bearer.as_str());
    let code = |body: &str| -> i64 {
        serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
            .as_i64()
            .unwrap()
    };

    // No token: code 104; a wrong one: 190.
    let (s, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct],
        &form(&[("payload", &payload)]),
    );
    assert_eq!((s, code(&b)), (400, 104), "{b}");
    let (s, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, ("authorization", "Bearer nope")],
        &form(&[("payload", &payload)]),
    );
    assert_eq!((s, code(&b)), (400, 190), "{b}");
    assert!(
        b.contains("fbtrace_id") && b.contains("OAuthException"),
        "{b}"
    );

    // Unknown audience: 100/33.
    let (s, b) = raw(
        &addr,
        "POST",
        &format!("/{ver}/42/users"),
        &[form_ct, auth],
        &form(&[("payload", &payload)]),
    );
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["error"]["error_subcode"],
        33,
        "{b}"
    );

    // Row length ≠ schema length, unknown key, missing payload, too many rows: code 100.
    let short = json!({"schema": ["EMAIL", "FN"], "data": [[hashed]]}).to_string();
    let (s, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &short)]),
    );
    assert_eq!((s, code(&b)), (400, 100), "{b}");
    assert!(b.contains("does not match the schema"), "{b}");
    let unknown = json!({"schema": ["EMAIL", "SHOE_SIZE"], "data": [[hashed, "x"]]}).to_string();
    let (_, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &unknown)]),
    );
    assert_eq!(code(&b), 100, "{b}");
    let (_, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("session", "{}")]),
    );
    assert_eq!(code(&b), 100, "{b}");
    let many: Vec<Value> = (0..10_001).map(|_| json!([hashed.clone()])).collect();
    let big = json!({"schema": ["EMAIL"], "data": many}).to_string();
    let (s, b) = raw(
        &addr,
        "POST",
        &path,
        &[("content-type", "application/json"), auth],
        json!({"payload": big}).to_string().as_bytes(),
    );
    assert_eq!((s, code(&b)), (400, 100), "{b}");
    assert!(b.contains("10000"), "{b}");

    // Session rules: batch_seq from 1, no repeats, nothing after the last batch.
    let bad_session =
        json!({"session_id": 7, "batch_seq": 0, "last_batch_flag": false}).to_string();
    let (_, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &payload), ("session", &bad_session)]),
    );
    assert_eq!(code(&b), 100, "{b}");
    let last = json!({"session_id": 7, "batch_seq": 1, "last_batch_flag": true}).to_string();
    let (s, _) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &payload), ("session", &last)]),
    );
    assert_eq!(s, 200);
    let after = json!({"session_id": 7, "batch_seq": 2, "last_batch_flag": false}).to_string();
    let (_, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &payload), ("session", &after)]),
    );
    assert!(b.contains("already finished"), "{b}");

    // Unhashed values are counted invalid and not stored; the token also works as a parameter.
    let raw_email =
        json!({"schema": ["EMAIL", "FN"], "data": [["Bob@Example.com", ""], [hashed, sha("bob")]]})
            .to_string();
    let (s, b) = raw(
        &addr,
        "POST",
        &path,
        &[form_ct],
        &form(&[("payload", &raw_email), ("access_token", meta_fake::TOKEN)]),
    );
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["num_received"], 2);
    assert_eq!(v["num_invalid_entries"], 1);
    assert_eq!(
        v["invalid_entry_samples"]["Bob@Example.com"],
        "EMAIL is not a SHA-256 hash"
    );
    assert!(
        fake.members().iter().all(|m| m["EMAIL"] == hashed),
        "{:?}",
        fake.members()
    );

    // Reading the audience needs the token too.
    let (s, b) = raw(
        &addr,
        "GET",
        &format!("/{ver}/{}?fields=id,name", meta_fake::AUDIENCE_ID),
        &[],
        b"",
    );
    assert_eq!((s, code(&b)), (400, 104));
    let (s, b) = raw(
        &addr,
        "GET",
        &format!(
            "/{ver}/{}?fields=id,name,account_id",
            meta_fake::AUDIENCE_ID
        ),
        &[auth],
        b"",
    );
    assert_eq!(s, 200);
    let audience = serde_json::from_str::<Value>(&b).unwrap();
    assert_eq!(audience["name"], meta_fake::AUDIENCE_NAME);
    assert_eq!(audience["account_id"], meta_fake::AD_ACCOUNT_ID);
    let (s, b) = raw(
        &addr,
        "GET",
        &format!(
            "/{ver}/act_{}?fields=tos_accepted",
            meta_fake::AD_ACCOUNT_ID
        ),
        &[auth],
        b"",
    );
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["tos_accepted"]["custom_audience_tos"],
        1
    );

    // A retired version: code 2635; a version that never existed: 2500.
    let (s, b) = raw(
        &addr,
        "GET",
        &format!(
            "/{}/{}?fields=id",
            meta_fake::RETIRED_VERSION,
            meta_fake::AUDIENCE_ID
        ),
        &[auth],
        b"",
    );
    assert_eq!((s, code(&b)), (400, 2635), "{b}");
    assert!(b.contains("deprecated version of the Ads API"), "{b}");
    let (_, b) = raw(
        &addr,
        "GET",
        &format!("/v99.0/{}", meta_fake::AUDIENCE_ID),
        &[auth],
        b"",
    );
    assert_eq!(code(&b), 2500, "{b}");

    // DELETE: Graph ignores a form body (payload missing) but reads a JSON body or the query.
    let members = fake.members().len();
    assert!(members > 0);
    let gone = json!({"schema": ["EMAIL", "FN"], "data": [[hashed, ""]]}).to_string();
    let (s, b) = raw(
        &addr,
        "DELETE",
        &path,
        &[form_ct, auth],
        &form(&[("payload", &gone)]),
    );
    assert_eq!((s, code(&b)), (400, 100), "{b}");
    assert!(b.contains("Missing required parameter: payload"), "{b}");
    assert_eq!(fake.members().len(), members, "nothing removed");
    let query = String::from_utf8(form(&[("payload", &gone)])).unwrap();
    let (s, b) = raw(&addr, "DELETE", &format!("{path}?{query}"), &[auth], b"");
    assert_eq!(s, 200, "{b}");
    let (s, b) = raw(
        &addr,
        "DELETE",
        &path,
        &[("content-type", "application/json"), auth],
        json!({"payload": {"schema": ["EMAIL"], "data": [[sha("nobody@example.com")]]}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(s, 200, "{b}");
}

// ---------------------------------------------------------------------------------------------
// Google Ads Customer Match

const GADS: &str = "google-ads-customer-match";

struct GoogleRun {
    fake: google_fake::Fake,
    plugins: tempfile::TempDir,
}

impl GoogleRun {
    fn new() -> GoogleRun {
        GoogleRun {
            fake: google_fake::start_in_background(),
            plugins: install(GADS),
        }
    }

    fn base_args(&self) -> Vec<String> {
        vec![
            "--reroute".into(),
            format!("googleads.googleapis.com={}", self.fake.url()),
            "--reroute".into(),
            format!("oauth2.googleapis.com={}", self.fake.url()),
            "--reroute".into(),
            format!("datamanager.googleapis.com={}", self.fake.url()),
            "--allow-private".into(),
            self.fake.host_port(),
        ]
    }

    fn secrets(dev: &str, token: &str) -> Vec<String> {
        vec![
            format!("developer_token={dev}"),
            format!("access_token={token}"),
        ]
    }

    fn call(
        &self,
        head: &[&str],
        config: &Value,
        secrets: &[String],
        tail: &[String],
        log: &str,
    ) -> Output {
        let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        args.push("--config".into());
        args.push(config.to_string());
        for s in secrets {
            args.push("--secret".into());
            args.push(s.clone());
        }
        args.extend(self.base_args());
        args.extend_from_slice(tail);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard(self.plugins.path(), &refs, log)
    }

    fn deliver(
        &self,
        config: &Value,
        secrets: &[String],
        action: &str,
        records: &[Value],
        log: &str,
    ) -> Output {
        let file = records_file(self.plugins.path(), records);
        let tail = vec![
            "--action".to_string(),
            action.to_string(),
            "--records".to_string(),
            file.to_str().unwrap().to_string(),
        ];
        self.call(&["plugin", "deliver", GADS], config, secrets, &tail, log)
    }

    fn check(&self, config: &Value, secrets: &[String]) -> Output {
        self.call(&["plugin", "check", GADS], config, secrets, &[], "warn")
    }
}

/// The Google Ads API path (OfflineUserDataJobService), opted into with `api = "google_ads"`.
fn gads_config() -> Value {
    json!({"customer_id": "123-456-7890", "user_list_id": google_fake::USER_LIST_ID, "api": "google_ads",
           "default_phone_country_code": "1", "default_country": "US",
           "consent_ad_user_data": "GRANTED", "consent_ad_personalization": "GRANTED"})
}

/// The default path: the Data Manager API.
fn dm_config() -> Value {
    json!({"customer_id": "123-456-7890", "user_list_id": google_fake::USER_LIST_ID,
           "default_phone_country_code": "1", "default_country": "US", "customer_match_terms_accepted": true,
           "consent_ad_user_data": "GRANTED", "consent_ad_personalization": "GRANTED"})
}

/// Data Manager needs only an OAuth token (datamanager scope), no developer token.
fn dm_secrets() -> Vec<String> {
    vec![format!("access_token={}", google_fake::ACCESS_TOKEN)]
}

fn gads_secrets() -> Vec<String> {
    GoogleRun::secrets(google_fake::DEVELOPER_TOKEN, google_fake::ACCESS_TOKEN)
}

#[test]
fn google_ads_creates_a_job_adds_hashed_operations_and_runs_it() {
    let g = GoogleRun::new();
    let records = vec![
        json!({"key": "dana", "fields": {"email": "DanaM@example.com", "phone": "+1-800-555-0100",
               "first_name": " Dana ", "last_name": "Smith", "zip": "94045"}}),
        json!({"key": "cloudy", "fields": {"email": "cloudy.SanFrancisco+shopping@GMAIL.com", "phone": "(800) 555-0101"}}),
        json!({"key": "nobody", "fields": {"first_name": "No", "last_name": "Address"}}),
    ];
    let out = g.deliver(&gads_config(), &gads_secrets(), "upsert", &records, "debug");
    let res = results(&ok(&out));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "ok", "{res:?}");
    assert_eq!(res[2]["result"], "rejected", "{res:?}");
    assert!(
        res[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no usable identifier"),
        "{res:?}"
    );

    let calls = g.fake.calls();
    let paths: Vec<&str> = calls.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v26/customers/1234567890/offlineUserDataJobs:create",
            "/v26/customers/1234567890/offlineUserDataJobs/701:addOperations",
            "/v26/customers/1234567890/offlineUserDataJobs/701:run",
        ]
    );
    let h = g.fake.headers_of(1);
    assert_eq!(h["developer-token"], google_fake::DEVELOPER_TOKEN);
    assert_eq!(
        h["authorization"],
        format!("Bearer {}", google_fake::ACCESS_TOKEN).as_str()
    );
    assert!(h.get("login-customer-id").is_none());
    let jobs = g.fake.jobs();
    assert_eq!(jobs[0].status, "SUCCESS");
    assert_eq!(
        jobs[0].consent,
        Some(json!({"adUserData": "GRANTED", "adPersonalization": "GRANTED"}))
    );

    // The Data Manager guide's vectors, as they landed in the list.
    let members = g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(
        members[0],
        vec![
            json!({"hashedEmail": "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7"}),
            json!({"hashedPhoneNumber": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"}),
            json!({"addressInfo": {"hashedFirstName": sha("dana"), "hashedLastName": sha("smith"),
                                   "countryCode": "US", "postalCode": "94045"}}),
        ]
    );
    assert_eq!(
        members[1],
        vec![
            json!({"hashedEmail": "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"}),
            json!({"hashedPhoneNumber": "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68"}),
        ]
    );

    let log = stderr(&out);
    assert!(
        log.contains("addOperations 1 of 1"),
        "the plugin's debug log: {log}"
    );
    for secret in [
        google_fake::ACCESS_TOKEN,
        google_fake::DEVELOPER_TOKEN,
        "DanaM@example.com",
        "danam@example.com",
        "cloudy",
        "555-0100",
        "8005550101",
        "Smith",
    ] {
        assert!(!log.contains(secret), "log leaks {secret}: {log}");
    }

    // Delete sends remove operations in a new job.
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "delete",
        &records[..1],
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    let jobs = g.fake.jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1].operations[0].0, "remove");
    let members = g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
    assert_eq!(members.len(), 1);
    assert_eq!(
        members[0][0]["hashedEmail"],
        "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"
    );
}

#[test]
fn google_ads_partial_failures_reject_only_their_records() {
    let g = GoogleRun::new();
    let records: Vec<Value> = ["a@example.com", "blocked@example.com", "c@example.com"]
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"key": format!("r{i}"), "fields": {"email": e}}))
        .collect();
    g.fake.reject_identifier(
        &sha("blocked@example.com"),
        json!({"offlineUserDataJobError": "INCOMPATIBLE_UPLOAD_KEY_TYPE"}),
        "The user identifier is not compatible with the list's upload key type.",
    );
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[2]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "rejected", "{res:?}");
    let reason = res[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("INCOMPATIBLE_UPLOAD_KEY_TYPE") && reason.contains("upload key type"),
        "{reason}"
    );
    let members = g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
    assert_eq!(members.len(), 2);
    assert!(members
        .iter()
        .all(|m| m[0]["hashedEmail"] != sha("blocked@example.com")));
}

#[test]
fn google_ads_quota_and_credential_errors() {
    let g = GoogleRun::new();
    let records = vec![
        json!({"key": "k1", "fields": {"email": "dana@example.com"}}),
        json!({"key": "k2", "fields": {"phone": "+1 800-555-0101"}}),
    ];
    // The job is created, addOperations is throttled: retry after Google's retryDelay, no run.
    g.fake.pass_next();
    g.fake.fail_next(google_fake::Fault::quota("30s"));
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    for r in &res {
        assert_eq!(r["result"], "retry", "{res:?}");
        assert_eq!(r["after_ms"], 30_000, "{res:?}");
        assert!(
            r["reason"].as_str().unwrap().contains("RESOURCE_EXHAUSTED"),
            "{res:?}"
        );
    }
    assert!(
        !g.fake.calls().iter().any(|(_, p)| p.ends_with(":run")),
        "{:?}",
        g.fake.calls()
    );
    assert!(g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
        .is_empty());

    // A concurrent modification is transient too.
    g.fake.pass_next();
    g.fake.fail_next(google_fake::Fault::status(
        400,
        "INVALID_ARGUMENT",
        json!({"databaseError": "CONCURRENT_MODIFICATION"}),
        "Multiple requests were attempting to modify the same resource at once.",
    ));
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert!(
        res.iter()
            .all(|r| r["result"] == "retry" && r["after_ms"].is_null()),
        "{res:?}"
    );

    // Then it goes through.
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert!(res.iter().all(|r| r["result"] == "ok"), "{res:?}");

    // Bad OAuth token / developer token: the call fails as unauthorized, secrets not echoed.
    let err = failed(&g.deliver(
        &gads_config(),
        &GoogleRun::secrets(google_fake::DEVELOPER_TOKEN, "ya29.expired"),
        "upsert",
        &records,
        "warn",
    ));
    assert!(
        err.contains("unauthorized") && err.contains("UNAUTHENTICATED"),
        "{err}"
    );
    assert!(!err.contains("ya29.expired"), "{err}");
    let err = failed(&g.deliver(
        &gads_config(),
        &GoogleRun::secrets("wrong-dev", google_fake::ACCESS_TOKEN),
        "upsert",
        &records,
        "warn",
    ));
    assert!(
        err.contains("unauthorized") && err.contains("PERMISSION_DENIED"),
        "{err}"
    );
}

#[test]
fn google_ads_check_reads_the_list_with_the_credentials() {
    let g = GoogleRun::new();
    let out = ok(&g.check(&gads_config(), &gads_secrets()));
    assert!(out.contains("check passed"), "{out}");
    // The write path is exercised: a validateOnly job creation after the GAQL read.
    let calls = g.fake.calls();
    assert_eq!(
        calls[1].1, "/v26/customers/1234567890/offlineUserDataJobs:create",
        "{calls:?}"
    );
    assert!(g.fake.jobs().is_empty(), "validateOnly creates no job");

    let err = failed(&g.check(
        &gads_config(),
        &GoogleRun::secrets("wrong-dev", google_fake::ACCESS_TOKEN),
    ));
    assert!(
        err.contains("unauthorized") && err.contains("DEVELOPER_TOKEN"),
        "{err}"
    );
    let err = failed(&g.check(
        &gads_config(),
        &GoogleRun::secrets(google_fake::DEVELOPER_TOKEN, "ya29.bad"),
    ));
    assert!(
        err.contains("unauthorized") && err.contains("OAUTH_TOKEN_INVALID"),
        "{err}"
    );
    let err = failed(&g.check(
        &json!({"customer_id": "1234567890", "user_list_id": "999", "api": "google_ads"}),
        &gads_secrets(),
    ));
    assert!(
        err.contains("invalid config") && err.contains("not found"),
        "{err}"
    );
    let err = failed(&g.check(
        &json!({"customer_id": "12-34", "user_list_id": "1"}),
        &gads_secrets(),
    ));
    assert!(err.contains("10-digit"), "{err}");

    // A client account needs the manager as login-customer-id.
    let client = json!({"customer_id": google_fake::CLIENT_CUSTOMER_ID, "user_list_id": google_fake::CLIENT_USER_LIST_ID, "api": "google_ads"});
    let err = failed(&g.check(&client, &gads_secrets()));
    assert!(err.contains("login-customer-id"), "{err}");
    let mut via_manager = client.clone();
    via_manager["login_customer_id"] = json!("999-888-7777");
    ok(&g.check(&via_manager, &gads_secrets()));

    // OAuth refresh-token flow instead of a static access token.
    let refresh = vec![
        format!("developer_token={}", google_fake::DEVELOPER_TOKEN),
        format!("refresh_token={}", google_fake::REFRESH_TOKEN),
        format!("client_id={}", google_fake::CLIENT_ID),
        format!("client_secret={}", google_fake::CLIENT_SECRET),
    ];
    ok(&g.check(&gads_config(), &refresh));
    assert_eq!(g.fake.token_grants(), 1);
    let mut revoked = refresh.clone();
    revoked[1] = "refresh_token=1//revoked".into();
    let err = failed(&g.check(&gads_config(), &revoked));
    assert!(
        err.contains("unauthorized") && err.contains("invalid_grant"),
        "{err}"
    );
    assert!(
        !err.contains("1//revoked") && !err.contains(google_fake::CLIENT_SECRET),
        "{err}"
    );
}

/// G1: since 2026-04-01 a developer token that is not allowlisted for Customer Match gets
/// `CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`; that is a configuration problem naming the Data
/// Manager API, not "unauthorized" and not dead letters, and `check` sees it.
#[test]
fn google_ads_non_allowlisted_token_is_invalid_config_naming_data_manager() {
    let g = GoogleRun::new();
    let secrets = GoogleRun::secrets(google_fake::NEW_DEVELOPER_TOKEN, google_fake::ACCESS_TOKEN);
    let records = vec![json!({"key": "k1", "fields": {"email": "dana@example.com"}})];
    let err = failed(&g.deliver(&gads_config(), &secrets, "upsert", &records, "warn"));
    assert!(
        err.contains("invalid config")
            && err.contains("Data Manager")
            && err.contains("CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
        "{err}"
    );
    let err = failed(&g.check(&gads_config(), &secrets));
    assert!(
        err.contains("invalid config") && err.contains("Data Manager"),
        "{err}"
    );
    assert!(g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
        .is_empty());
}

/// G2: a list has one upload key type; contact identifiers, CRM ids and mobile ids are never
/// mixed in one operation, and a record without the list's key is rejected saying so.
#[test]
fn google_ads_upload_key_type_keeps_identifiers_apart() {
    let g = GoogleRun::new();
    let mixed = vec![
        json!({"key": "both", "fields": {"email": "dana@example.com", "crm_id": "c-1", "mobile_id": "6032d997-3ab0-4de0-aa16-000000000001"}}),
    ];
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &mixed,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(
        g.fake
            .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID),
        vec![vec![json!({"hashedEmail": sha("dana@example.com")})]]
    );

    // A CRM_ID list takes only thirdPartyUserId; a record without crm_id is refused locally.
    let mut crm = gads_config();
    crm["user_list_id"] = json!(google_fake::CRM_USER_LIST_ID);
    crm["upload_key_type"] = json!("crm_id");
    let records = vec![
        json!({"key": "both", "fields": {"email": "dana@example.com", "crm_id": "c-1"}}),
        json!({"key": "email-only", "fields": {"email": "eve@example.com"}}),
    ];
    let res = results(&ok(&g.deliver(
        &crm,
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "rejected", "{res:?}");
    let reason = res[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("crm_id") && reason.contains("upload_key_type"),
        "{reason}"
    );
    assert_eq!(
        g.fake
            .members(google_fake::CUSTOMER_ID, google_fake::CRM_USER_LIST_ID),
        vec![vec![json!({"thirdPartyUserId": "c-1"})]]
    );

    // check compares the configured key type with the list's.
    let mut wrong = gads_config();
    wrong["user_list_id"] = json!(google_fake::MOBILE_USER_LIST_ID);
    let err = failed(&g.check(&wrong, &gads_secrets()));
    assert!(
        err.contains("invalid config")
            && err.contains("MOBILE_ADVERTISING_ID")
            && err.contains("upload_key_type"),
        "{err}"
    );
}

/// G3: removal jobs carry no consent (Google: "For remove requests, consent is not needed"),
/// and `DENIED` consent is refused for upserts before any job is made (Google fails such jobs).
#[test]
fn google_ads_consent_only_on_upserts_and_never_denied() {
    let g = GoogleRun::new();
    let records = vec![json!({"key": "k1", "fields": {"email": "dana@example.com"}})];
    ok(&g.deliver(&gads_config(), &gads_secrets(), "upsert", &records, "warn"));
    ok(&g.deliver(&gads_config(), &gads_secrets(), "delete", &records, "warn"));
    let jobs = g.fake.jobs();
    assert_eq!(jobs.len(), 2);
    assert!(jobs[0].consent.is_some());
    assert_eq!(jobs[1].consent, None, "no consent on a remove job");
    assert!(g
        .fake
        .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
        .is_empty());

    let mut denied = gads_config();
    denied["consent_ad_user_data"] = json!("DENIED");
    let err = failed(&g.deliver(&denied, &gads_secrets(), "upsert", &records, "warn"));
    assert!(
        err.contains("invalid config") && err.contains("DENIED"),
        "{err}"
    );
    assert_eq!(g.fake.jobs().len(), 2, "no job was created");
    let err = failed(&g.check(&denied, &gads_secrets()));
    assert!(
        err.contains("invalid config") && err.contains("DENIED"),
        "{err}"
    );
}

/// G1: the Data Manager API is the default path: one `audienceMembers:ingest` / `:remove` per
/// batch, no developer token, hex SHA-256 identifiers, consent and terms with ingests only.
#[test]
fn google_ads_data_manager_is_the_default_and_ingests_then_removes() {
    let g = GoogleRun::new();
    let records = vec![
        json!({"key": "dana", "fields": {"email": "DanaM@example.com", "phone": "+1-800-555-0100",
               "first_name": " Dana ", "last_name": "Smith", "zip": "94045", "crm_id": "c-9"}}),
        json!({"key": "cloudy", "fields": {"email": "cloudy.SanFrancisco+shopping@GMAIL.com"}}),
        json!({"key": "nobody", "fields": {"crm_id": "c-10"}}),
    ];
    let out = g.deliver(&dm_config(), &dm_secrets(), "upsert", &records, "debug");
    let res = results(&ok(&out));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(res[1]["result"], "ok", "{res:?}");
    assert_eq!(res[2]["result"], "rejected", "{res:?}");
    let calls = g.fake.calls();
    assert_eq!(
        calls,
        vec![("POST".to_string(), "/v1/audienceMembers:ingest".to_string())]
    );
    let h = g.fake.headers_of(0);
    assert!(
        h.get("developer-token").is_none(),
        "no developer token on Data Manager"
    );
    assert_eq!(
        h["authorization"],
        format!("Bearer {}", google_fake::ACCESS_TOKEN).as_str()
    );
    let (_, body) = &g.fake.dm_bodies()[0];
    assert_eq!(
        body["destinations"],
        json!([{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                "productDestinationId": google_fake::USER_LIST_ID}])
    );
    assert_eq!(body["encoding"], "HEX");
    assert_eq!(
        body["consent"],
        json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"})
    );
    assert_eq!(
        body["termsOfService"],
        json!({"customerMatchTermsOfServiceStatus": "ACCEPTED"})
    );
    assert_eq!(body["validateOnly"], false);
    // The Data Manager guide's vectors; crm_id not mixed into a contact-info member.
    let members = g
        .fake
        .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
    assert_eq!(
        members,
        vec![
            json!({"userData": {"userIdentifiers": [
                {"emailAddress": "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7"},
                {"phoneNumber": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"},
                {"address": {"givenName": sha("dana"), "familyName": sha("smith"), "regionCode": "US", "postalCode": "94045"}}]}}),
            json!({"userData": {"userIdentifiers": [
                {"emailAddress": "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"}]}}),
        ]
    );
    let log = stderr(&out);
    for secret in [
        google_fake::ACCESS_TOKEN,
        "DanaM@example.com",
        "danam@example.com",
        "555-0100",
        "Smith",
    ] {
        assert!(!log.contains(secret), "log leaks {secret}: {log}");
    }

    // delete → :remove, without consent or terms (the remove request has neither).
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "delete",
        &records[..1],
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    let (path, body) = g.fake.dm_bodies()[1].clone();
    assert_eq!(path, "/v1/audienceMembers:remove");
    assert!(
        body.get("consent").is_none() && body.get("termsOfService").is_none(),
        "{body}"
    );
    assert_eq!(
        g.fake
            .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
            .len(),
        1
    );

    // Other key types: userIdData for a CRM list, mobileData for a mobile-id list.
    let mut crm = dm_config();
    crm["user_list_id"] = json!(google_fake::CRM_USER_LIST_ID);
    crm["upload_key_type"] = json!("crm_id");
    let res = results(&ok(&g.deliver(
        &crm,
        &dm_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(
        res.iter()
            .map(|r| r["result"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ok", "rejected", "ok"],
        "{res:?}"
    );
    assert!(
        res[1]["reason"].as_str().unwrap().contains("no crm_id"),
        "{res:?}"
    );
    assert_eq!(
        g.fake
            .dm_members(google_fake::CUSTOMER_ID, google_fake::CRM_USER_LIST_ID),
        vec![
            json!({"userIdData": {"userId": "c-9"}}),
            json!({"userIdData": {"userId": "c-10"}})
        ]
    );
    let mut mobile = dm_config();
    mobile["user_list_id"] = json!(google_fake::MOBILE_USER_LIST_ID);
    mobile["upload_key_type"] = json!("mobile_id");
    let idfa = "6032d997-3ab0-4de0-aa16-000000000001";
    let res = results(&ok(&g.deliver(
        &mobile,
        &dm_secrets(),
        "upsert",
        &[json!({"key": "m", "fields": {"mobile_id": idfa, "email": "m@example.com"}})],
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    assert_eq!(
        g.fake
            .dm_members(google_fake::CUSTOMER_ID, google_fake::MOBILE_USER_LIST_ID),
        vec![json!({"mobileData": {"mobileIds": [idfa]}})]
    );
}

/// Data Manager refusals: a bad member is rejected and the rest of its request retried;
/// 429 waits Google's RetryInfo delay or Retry-After; scope, access, terms and list problems
/// fail the call with what to fix.
#[test]
fn google_ads_data_manager_errors_map_per_member_quota_and_config() {
    let g = GoogleRun::new();
    let records: Vec<Value> = ["a@example.com", "blocked@example.com", "c@example.com"]
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"key": format!("r{i}"), "fields": {"email": e}}))
        .collect();
    g.fake.reject_identifier(
        &sha("blocked@example.com"),
        json!("INVALID_AUDIENCE_MEMBER"),
        "This audience member is not valid.",
    );
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res[1]["result"], "rejected", "{res:?}");
    let reason = res[1]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Data Manager: INVALID_AUDIENCE_MEMBER")
            && reason.contains("audience_members[1]"),
        "{reason}"
    );
    for k in [0, 2] {
        assert_eq!(res[k]["result"], "retry", "{res:?}");
        assert!(
            res[k]["reason"].as_str().unwrap().contains("not applied"),
            "{res:?}"
        );
    }
    assert!(
        g.fake
            .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
            .is_empty(),
        "nothing applied"
    );

    // 429 RESOURCE_EXHAUSTED: RetryInfo's delay, else Retry-After.
    let good = &records[..1];
    g.fake
        .fail_next(google_fake::Fault::dm_quota(Some("30s"), Some("5")));
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "upsert",
        good,
        "warn",
    )));
    assert_eq!(
        (res[0]["result"].as_str(), res[0]["after_ms"].as_u64()),
        (Some("retry"), Some(30_000)),
        "{res:?}"
    );
    assert!(
        res[0]["reason"]
            .as_str()
            .unwrap()
            .contains("RESOURCE_EXHAUSTED"),
        "{res:?}"
    );
    g.fake
        .fail_next(google_fake::Fault::dm_quota(None, Some("7")));
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "upsert",
        good,
        "warn",
    )));
    assert_eq!(res[0]["after_ms"], 7_000, "{res:?}");
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "upsert",
        good,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");

    // Credentials and settings fail the call.
    let adwords_only = vec![format!("access_token={}", google_fake::ADWORDS_ONLY_TOKEN)];
    let err = failed(&g.deliver(&dm_config(), &adwords_only, "upsert", good, "warn"));
    assert!(
        err.contains("unauthorized") && err.contains("auth/datamanager"),
        "{err}"
    );
    let err = failed(&g.deliver(
        &dm_config(),
        &["access_token=ya29.expired".to_string()],
        "upsert",
        good,
        "warn",
    ));
    assert!(
        err.contains("unauthorized")
            && err.contains("UNAUTHENTICATED")
            && !err.contains("ya29.expired"),
        "{err}"
    );
    let mut no_terms = dm_config();
    no_terms["customer_match_terms_accepted"] = json!(false);
    let err = failed(&g.deliver(&no_terms, &dm_secrets(), "upsert", good, "warn"));
    assert!(
        err.contains("invalid config") && err.contains("customer_match_terms_accepted = true"),
        "{err}"
    );
    let mut wrong_list = dm_config();
    wrong_list["user_list_id"] = json!("999");
    let err = failed(&g.deliver(&wrong_list, &dm_secrets(), "upsert", good, "warn"));
    assert!(
        err.contains("invalid config") && err.contains("INVALID_USER_LIST_ID"),
        "{err}"
    );
    let client = json!({"customer_id": google_fake::CLIENT_CUSTOMER_ID, "user_list_id": google_fake::CLIENT_USER_LIST_ID,
                        "customer_match_terms_accepted": true});
    let err = failed(&g.deliver(&client, &dm_secrets(), "upsert", good, "warn"));
    assert!(
        err.contains("unauthorized") && err.contains("login_customer_id"),
        "{err}"
    );
    let mut via_manager = client.clone();
    via_manager["login_customer_id"] = json!("999-888-7777");
    let res = results(&ok(&g.deliver(
        &via_manager,
        &dm_secrets(),
        "upsert",
        good,
        "warn",
    )));
    assert_eq!(res[0]["result"], "ok", "{res:?}");
    // DENIED consent is refused before anything is sent.
    let before = g.fake.calls().len();
    let mut denied = dm_config();
    denied["consent_ad_user_data"] = json!("DENIED");
    let err = failed(&g.deliver(&denied, &dm_secrets(), "upsert", good, "warn"));
    assert!(
        err.contains("invalid config") && err.contains("DENIED"),
        "{err}"
    );
    assert_eq!(g.fake.calls().len(), before);
}

/// `check` on the Data Manager path reads the list's upload key type and sends a validateOnly
/// ingest: wrong scope, key type, terms or list fail at check time and nothing is uploaded.
#[test]
fn google_ads_data_manager_check_validates_the_write_path() {
    let g = GoogleRun::new();
    let out = ok(&g.check(&dm_config(), &dm_secrets()));
    assert!(out.contains("check passed"), "{out}");
    let calls = g.fake.calls();
    assert_eq!(
        calls[0],
        (
            "GET".to_string(),
            format!(
                "/v1/accountTypes/GOOGLE_ADS/accounts/1234567890/userLists/{}",
                google_fake::USER_LIST_ID
            )
        )
    );
    assert_eq!(
        calls[1],
        ("POST".to_string(), "/v1/audienceMembers:ingest".to_string())
    );
    assert_eq!(g.fake.dm_bodies()[0].1["validateOnly"], true);
    assert!(g
        .fake
        .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
        .is_empty());

    let mut crm = dm_config();
    crm["user_list_id"] = json!(google_fake::CRM_USER_LIST_ID);
    let err = failed(&g.check(&crm, &dm_secrets()));
    assert!(
        err.contains("invalid config")
            && err.contains("USER_ID")
            && err.contains("upload_key_type"),
        "{err}"
    );
    crm["upload_key_type"] = json!("crm_id");
    ok(&g.check(&crm, &dm_secrets()));
    let mut no_terms = dm_config();
    no_terms["customer_match_terms_accepted"] = json!(false);
    let err = failed(&g.check(&no_terms, &dm_secrets()));
    assert!(
        err.contains("invalid config") && err.contains("customer_match_terms_accepted"),
        "{err}"
    );
    let err = failed(&g.check(
        &dm_config(),
        &[format!("access_token={}", google_fake::ADWORDS_ONLY_TOKEN)],
    ));
    assert!(
        err.contains("unauthorized") && err.contains("datamanager"),
        "{err}"
    );
    let mut missing = dm_config();
    missing["user_list_id"] = json!("999");
    let err = failed(&g.check(&missing, &dm_secrets()));
    assert!(
        err.contains("invalid config") && err.contains("not found"),
        "{err}"
    );
    // The refresh-token flow works for Data Manager too.
    let refresh = vec![
        format!("refresh_token={}", google_fake::REFRESH_TOKEN),
        format!("client_id={}", google_fake::CLIENT_ID),
        format!("client_secret={}", google_fake::CLIENT_SECRET),
    ];
    ok(&g.check(&dm_config(), &refresh));
    // The Google Ads path without a developer token says what to do.
    let err = failed(&g.check(&gads_config(), &dm_secrets()));
    assert!(
        err.contains("invalid config") && err.contains("developer_token"),
        "{err}"
    );
}

#[test]
fn google_ads_fake_refuses_what_data_manager_refuses() {
    let fake = google_fake::start_in_background();
    let addr = fake.host_port();
    let bearer = format!("Bearer {}", google_fake::ACCESS_TOKEN);
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let post = |path: &str, headers: &[(&str, &str)], body: &Value| {
        raw(&addr, "POST", path, headers, body.to_string().as_bytes())
    };
    let ingest = "/v1/audienceMembers:ingest";
    let dest = json!([{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": google_fake::CUSTOMER_ID},
                       "productDestinationId": google_fake::USER_LIST_ID}]);
    let h = sha("x@example.com");
    let member = json!({"userData": {"userIdentifiers": [{"emailAddress": h}]}});
    let req = |members: Value| {
        json!({"destinations": dest, "audienceMembers": members, "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"}})
    };
    let reason = |b: &str| -> String {
        let v: Value = serde_json::from_str(b).unwrap();
        v["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|d| d.get("fieldViolations"))
            .map(|f| f[0]["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| {
                v["error"]["details"][0]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
    };

    let (s, _) = post(ingest, &auth[1..], &req(json!([member])));
    assert_eq!(s, 401);
    let adwords = format!("Bearer {}", google_fake::ADWORDS_ONLY_TOKEN);
    let (s, b) = post(
        ingest,
        &[("authorization", &adwords), auth[1]],
        &req(json!([member])),
    );
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("ACCESS_TOKEN_SCOPE_INSUFFICIENT"), "{b}");
    // Terms of service, limits, hex + SHA-256, one data type, the list's key type.
    let mut no_terms = req(json!([member]));
    no_terms.as_object_mut().unwrap().remove("termsOfService");
    let (s, b) = post(ingest, &auth, &no_terms);
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "TERMS_AND_CONDITIONS_NOT_SIGNED"),
        "{b}"
    );
    let many: Vec<Value> = (0..10_001).map(|_| member.clone()).collect();
    let (s, b) = post(ingest, &auth, &req(json!(many)));
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "TOO_MANY_AUDIENCE_MEMBERS"),
        "{b}"
    );
    let eleven: Vec<Value> = (0..11).map(|_| json!({"emailAddress": h})).collect();
    let (s, b) = post(
        ingest,
        &auth,
        &req(json!([{"userData": {"userIdentifiers": eleven}}])),
    );
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "TOO_MANY_USER_IDENTIFIERS"),
        "{b}"
    );
    let (s, b) = post(
        ingest,
        &auth,
        &req(
            json!([member, {"userData": {"userIdentifiers": [{"emailAddress": "x@example.com"}]}}]),
        ),
    );
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "INVALID_HEX_ENCODING"),
        "{b}"
    );
    assert!(b.contains("audience_members.audience_members[1]"), "{b}");
    let (s, b) = post(
        ingest,
        &auth,
        &req(json!([{"userData": {"userIdentifiers": [{"emailAddress": "abcd"}]}}])),
    );
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "INVALID_SHA256_FORMAT"),
        "{b}"
    );
    let (s, b) = post(
        ingest,
        &auth,
        &req(json!([member, {"userIdData": {"userId": "c-1"}}])),
    );
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "MULTIPLE_DATA_TYPES_NOT_ALLOWED"),
        "{b}"
    );
    let (s, b) = post(
        ingest,
        &auth,
        &req(json!([{"userIdData": {"userId": "c-1"}}])),
    );
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "INVALID_USER_LIST_TYPE"),
        "{b}"
    );
    let (s, b) = post(
        ingest,
        &auth,
        &req(json!([{"userData": {"userIdentifiers": [{"emailAddress": h, "phoneNumber": h}]}}])),
    );
    assert_eq!(s, 400);
    assert!(b.contains("Oneof field"), "{b}");
    let mut no_encoding = req(json!([member]));
    no_encoding.as_object_mut().unwrap().remove("encoding");
    let (s, b) = post(ingest, &auth, &no_encoding);
    assert_eq!(
        (s, reason(&b).as_str()),
        (400, "REQUIRED_FIELD_MISSING"),
        "{b}"
    );
    // remove takes neither consent nor terms.
    let (s, b) = post("/v1/audienceMembers:remove", &auth, &req(json!([member])));
    assert_eq!(s, 400);
    assert!(b.contains("Unknown name \\\"termsOfService\\\""), "{b}");
    // validateOnly applies nothing; a real ingest does.
    let mut validate = req(json!([member]));
    validate["validateOnly"] = json!(true);
    let (s, _) = post(ingest, &auth, &validate);
    assert_eq!(s, 200);
    assert!(fake
        .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
        .is_empty());
    let (s, b) = post(ingest, &auth, &req(json!([member])));
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("requestId"), "{b}");
    assert_eq!(
        fake.dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID),
        vec![member.clone()]
    );
    // A client account only through its manager.
    let client = json!({"destinations": [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": google_fake::CLIENT_CUSTOMER_ID},
        "productDestinationId": google_fake::CLIENT_USER_LIST_ID}], "audienceMembers": [member], "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"}});
    let (s, _) = post(ingest, &auth, &client);
    assert_eq!(s, 403);
    // The Google Ads path refuses a developer token that is not allowlisted for Customer Match.
    let ads_auth = [
        ("authorization", bearer.as_str()),
        ("developer-token", google_fake::NEW_DEVELOPER_TOKEN),
        ("content-type", "application/json"),
    ];
    let create = json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata":
        {"userList": google_fake::list_resource(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)}}, "validateOnly": true});
    let (s, b) = post(
        "/v26/customers/1234567890/offlineUserDataJobs:create",
        &ads_auth,
        &create,
    );
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
        "{b}"
    );
}

#[test]
fn google_ads_fake_rejects_what_google_ads_rejects() {
    let fake = google_fake::start_in_background();
    let addr = fake.host_port();
    let bearer = format!("Bearer {}", google_fake::ACCESS_TOKEN);
    let auth = [
        ("authorization", bearer.as_str()),
        ("developer-token", google_fake::DEVELOPER_TOKEN),
        ("content-type", "application/json"),
    ];
    let post = |path: &str, headers: &[(&str, &str)], body: &Value| {
        raw(&addr, "POST", path, headers, body.to_string().as_bytes())
    };
    let err = |b: &str| serde_json::from_str::<Value>(b).unwrap()["error"].clone();
    let create = json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata":
        {"userList": google_fake::list_resource(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)}}});
    let create_path = "/v26/customers/1234567890/offlineUserDataJobs:create";

    // Credentials.
    let (s, b) = post(create_path, &auth[1..], &create);
    assert_eq!(
        (s, err(&b)["status"].as_str().unwrap()),
        (401, "UNAUTHENTICATED"),
        "{b}"
    );
    let (s, b) = post(create_path, &[auth[0], auth[2]], &create);
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("DEVELOPER_TOKEN_PARAMETER_MISSING"), "{b}");
    let (s, b) = post(
        create_path,
        &[auth[0], ("developer-token", "nope"), auth[2]],
        &create,
    );
    assert_eq!(
        (s, err(&b)["status"].as_str().unwrap()),
        (403, "PERMISSION_DENIED"),
        "{b}"
    );
    let (s, b) = post(
        create_path,
        &[
            auth[0],
            auth[1],
            auth[2],
            ("login-customer-id", "999-888-7777"),
        ],
        &create,
    );
    assert_eq!(s, 400);
    assert!(b.contains("INVALID_LOGIN_CUSTOMER_ID"), "{b}");
    let (s, b) = post(
        "/v26/customers/123-456-7890/offlineUserDataJobs:create",
        &auth,
        &create,
    );
    assert_eq!(s, 400);
    assert!(b.contains("INVALID_CUSTOMER_ID"), "{b}");

    // Job creation: a list of another customer, a wrong type, unknown fields.
    let other = json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata":
        {"userList": "customers/1234567890/userLists/1"}}});
    let (s, b) = post(create_path, &auth, &other);
    assert_eq!(s, 400);
    assert!(b.contains("INVALID_USER_LIST_ID"), "{b}");
    let (s, b) = post(
        create_path,
        &auth,
        &json!({"job": {"type": "STORE_SALES_UPLOAD_FIRST_PARTY"}}),
    );
    assert_eq!(s, 400, "{b}");
    let (s, b) = post(
        create_path,
        &auth,
        &json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "color": "red"}}),
    );
    assert_eq!(s, 400);
    assert!(b.contains("Unknown name \\\"color\\\""), "{b}");

    let (s, b) = post(create_path, &auth, &create);
    assert_eq!(s, 200, "{b}");
    let job = serde_json::from_str::<Value>(&b).unwrap()["resourceName"]
        .as_str()
        .unwrap()
        .to_string();
    let add_path = format!("/v26/{job}:addOperations");
    let h = sha("x@example.com");

    // Oneof: two identifier fields in one UserIdentifier; create and remove in one operation.
    let (s, b) = post(
        &add_path,
        &auth,
        &json!({"operations": [{"create": {"userIdentifiers": [{"hashedEmail": h, "hashedPhoneNumber": h}]}}]}),
    );
    assert_eq!(s, 400);
    assert!(b.contains("Oneof field"), "{b}");
    let (s, _) = post(
        &add_path,
        &auth,
        &json!({"operations": [{"create": {"userIdentifiers": [{"hashedEmail": h}]}, "remove": {"userIdentifiers": [{"hashedEmail": h}]}}]}),
    );
    assert_eq!(s, 400);

    // Limits: 21 identifiers in one operation; > 100,000 in one request.
    let many: Vec<Value> = (0..21).map(|_| json!({"hashedEmail": h})).collect();
    let (s, b) = post(
        &add_path,
        &auth,
        &json!({"operations": [{"create": {"userIdentifiers": many}}]}),
    );
    assert_eq!(s, 400);
    assert!(
        b.contains("TOO_MANY_USER_IDENTIFIERS") && b.contains("\"index\":0"),
        "{b}"
    );
    let op = json!({"create": {"userIdentifiers": (0..20).map(|_| json!({"hashedEmail": h})).collect::<Vec<_>>()}});
    let ops: Vec<Value> = (0..5_001).map(|_| op.clone()).collect();
    let (s, b) = post(&add_path, &auth, &json!({"operations": ops}));
    assert_eq!(s, 400);
    assert!(
        b.contains("TOO_MANY_USER_IDENTIFIERS") && b.contains("\"index\":5000"),
        "{b}"
    );

    // Hashing: a raw email is malformed SHA-256. Without partial failure the request fails...
    let mixed = json!({"operations": [
        {"create": {"userIdentifiers": [{"hashedEmail": h}]}},
        {"create": {"userIdentifiers": [{"hashedEmail": "X@Example.com"}]}},
        {"create": {"userIdentifiers": [{"addressInfo": {"hashedFirstName": h, "hashedLastName": h, "countryCode": "USA", "postalCode": "1"}}]}}]});
    let (s, b) = post(&add_path, &auth, &mixed);
    assert_eq!(s, 400);
    assert!(
        b.contains("INVALID_SHA256_FORMAT") && b.contains("hashed_email"),
        "{b}"
    );
    assert!(
        fake.jobs()[0].operations.is_empty(),
        "nothing stored from a refused request"
    );
    // ... with it, only the bad operations are dropped and reported by index.
    let mut partial = mixed.clone();
    partial["enablePartialFailure"] = json!(true);
    let (s, b) = post(&add_path, &auth, &partial);
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let errors = v["partialFailureError"]["details"][0]["errors"]
        .as_array()
        .unwrap();
    assert_eq!(errors.len(), 2, "{b}");
    assert_eq!(
        errors[0]["location"]["fieldPathElements"][0],
        json!({"fieldName": "operations", "index": 1})
    );
    assert_eq!(
        errors[1]["errorCode"]["offlineUserDataJobError"],
        "INVALID_COUNTRY_CODE"
    );
    assert_eq!(fake.jobs()[0].operations.len(), 1);

    // Run once; no operations after that.
    let run_path = format!("/v26/{job}:run");
    let (s, b) = post(&run_path, &auth, &json!({}));
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        &add_path,
        &auth,
        &json!({"operations": [{"create": {"userIdentifiers": [{"hashedEmail": h}]}}]}),
    );
    assert_eq!(s, 400);
    assert!(b.contains("INVALID_JOB_STATUS"), "{b}");
    let (s, _) = post(&run_path, &auth, &json!({}));
    assert_eq!(s, 400);
    assert_eq!(
        fake.members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID),
        vec![vec![json!({"hashedEmail": h})]]
    );

    // The token endpoint refuses a bad client or refresh token.
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let (s, b) = raw(
        &addr,
        "POST",
        "/token",
        &[ct],
        &form(&[
            ("grant_type", "refresh_token"),
            ("client_id", google_fake::CLIENT_ID),
            ("client_secret", "x"),
            ("refresh_token", google_fake::REFRESH_TOKEN),
        ]),
    );
    assert_eq!(s, 401);
    assert!(b.contains("invalid_client"), "{b}");
    let (s, b) = raw(
        &addr,
        "POST",
        "/token",
        &[ct],
        &form(&[
            ("grant_type", "refresh_token"),
            ("client_id", google_fake::CLIENT_ID),
            ("client_secret", google_fake::CLIENT_SECRET),
            ("refresh_token", "old"),
        ]),
    );
    assert_eq!(s, 400);
    assert!(b.contains("invalid_grant"), "{b}");
}

// ---------------------------------------------------------------------------------------------
// Full-size batches inside the sandbox's limits

#[test]
fn full_batches_of_10000_records_fit_one_call() {
    let records: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"key": format!("p{i}"), "fields": {
                "email": format!("person.{i}@example.com"), "phone": format!("+1 415 555 {:04}", i % 10_000),
                "first_name": "Ada", "last_name": format!("Lovelace{i}"), "country": "US",
                "zip": "94045", "city": "San Francisco", "state": "CA", "gender": "f",
                "date_of_birth": "1990-01-02", "external_id": format!("crm-{i}"),
                "madid": format!("6032d997-3ab0-4de0-aa16-{i:012}")}})
        })
        .collect();

    let m = MetaRun::new();
    let res = results(&ok(&m.deliver(
        meta_config(),
        meta_fake::TOKEN,
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res.len(), 10_000);
    assert!(
        res.iter().all(|r| r["result"] == "ok"),
        "{:?}",
        res.iter().find(|r| r["result"] != "ok")
    );
    assert_eq!(m.fake.uploads().len(), 1, "10,000 rows go in one request");
    assert_eq!(m.fake.members().len(), 10_000);

    // Google, Data Manager (default): 10,000 members in one ingest request.
    let g = GoogleRun::new();
    let res = results(&ok(&g.deliver(
        &dm_config(),
        &dm_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(res.len(), 10_000);
    assert!(
        res.iter().all(|r| r["result"] == "ok"),
        "{:?}",
        res.iter().find(|r| r["result"] != "ok")
    );
    assert_eq!(g.fake.dm_bodies().len(), 1);
    assert_eq!(
        g.fake
            .dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
            .len(),
        10_000
    );
    // Google Ads API: one job, addOperations of at most 10,000 identifiers each (3 per record).
    let res = results(&ok(&g.deliver(
        &gads_config(),
        &gads_secrets(),
        "upsert",
        &records,
        "warn",
    )));
    assert!(res.iter().all(|r| r["result"] == "ok"));
    let jobs = g.fake.jobs();
    assert_eq!(
        (jobs.len(), jobs[0].add_requests, jobs[0].status.as_str()),
        (1, 4, "SUCCESS")
    );
    assert_eq!(
        g.fake
            .members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
            .len(),
        10_000
    );
}

// ---------------------------------------------------------------------------------------------
// Syncs through the hub

mod syncs {
    //! Both plugins driven by real syncs of a running hub: profiles in through the tracking API,
    //! `switchyard sync run`, run history and dead letters from the CLI.

    use std::time::{Duration, Instant};

    use super::common::hub::{run_counts, Db, Hub};
    use super::*;

    const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";

    #[test]
    fn meta_sync_mirrors_an_audience_backs_off_on_code_4_and_dead_letters_invalid_entries() {
        let fake = meta_fake::start_in_background();
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.meta_vips]\nplugin = \"meta-custom-audiences\"\n\
             config = {{ audience_id = \"{audience}\", default_phone_country_code = \"1\", default_country = \"US\" }}\n\
             secrets = {{ access_token = \"${{META_ACCESS_TOKEN}}\" }}\n\
             reroute = [\"graph.facebook.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
             [[syncs]]\nname = \"vip-to-meta\"\nfrom = {{ audience = \"vip\" }}\nto = \"meta_vips\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nphone = \"identifiers.phone\"\nfirst_name = \"traits.first_name\"\n\
             last_name = \"traits.last_name\"\ncountry = \"traits.country\"\n",
            audience = meta_fake::AUDIENCE_ID,
        );
        let env = [
            ("SWITCHYARD_RETRY_BASE_MS", "50"),
            ("META_ACCESS_TOKEN", meta_fake::TOKEN),
        ];
        let hub = Hub::start_project(Db::Sqlite, "", &project, &env);
        hub.install(&["meta-custom-audiences"]);
        hub.identify("u1",
            json!({"email": "Test@Example.COM", "phone": "+1 (555) 123-4567",
                                    "first_name": "John", "last_name": "Doe", "country": "US", "plan": "pro"}),
        );
        hub.identify("u2", json!({"email": "ada@example.org", "plan": "pro"}));
        hub.identify("u3", json!({"email": "cy@example.com", "plan": "free"}));
        let emails = |fake: &meta_fake::Fake| -> Vec<String> {
            let mut e: Vec<String> = fake.members().iter().map(|m| m["EMAIL"].clone()).collect();
            e.sort();
            e
        };

        // Application-level throttling (code 4, X-App-Usage, no wait given): the hub backs off.
        fake.fail_next(meta_fake::Fault {
            status: 400,
            code: 4,
            subcode: None,
            message: "(#4) Application request limit reached".into(),
            is_transient: true,
            headers: vec![(
                "x-app-usage".into(),
                r#"{"call_count":100,"total_cputime":25,"total_time":25}"#.into(),
            )],
        });
        let r = hub.run_sync("vip-to-meta");
        assert_eq!(run_counts(&r), ("succeeded", 2, 2, 0), "{r}");
        // Meta's published vectors, as they landed in the audience.
        let members = fake.members();
        let john = members
            .iter()
            .find(|m| {
                m["EMAIL"] == "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
            })
            .unwrap_or_else(|| panic!("John's row: {members:?}"));
        assert_eq!(
            john["PHONE"],
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
        assert_eq!(
            john["FN"],
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            john["LN"],
            "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
        );
        assert_eq!(
            john["COUNTRY"],
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert_eq!(members.len(), 2);

        // Meta quotes one entry as invalid: that record is dead-lettered with Meta's reason.
        fake.mark_invalid(
            &sha("flagged@example.com"),
            "Invalid entry: hash does not match any format",
        );
        hub.identify("u4", json!({"email": "flagged@example.com", "plan": "pro"}));
        hub.identify("u5", json!({"email": "eve@example.com", "plan": "pro"}));
        let r = hub.run_sync("vip-to-meta");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-meta");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("rejected: ") && error.contains("hash does not match any format"),
            "{error}"
        );
        assert!(emails(&fake).contains(&sha("eve@example.com")));
        assert!(!emails(&fake).contains(&sha("flagged@example.com")));

        // Mirror: leaving the audience removes the person (DELETE with the same hashes).
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-meta");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert!(!emails(&fake).contains(&sha("ada@example.org")));
        assert_eq!(fake.members().len(), 2);
        assert_eq!(fake.uploads().last().unwrap().method, "DELETE");
    }

    #[test]
    fn google_ads_sync_mirrors_an_audience_waits_out_quota_and_dead_letters_partial_failures() {
        let fake = google_fake::start_in_background();
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.google_vips]\nplugin = \"google-ads-customer-match\"\n\
             config = {{ api = \"google_ads\", customer_id = \"123-456-7890\", user_list_id = \"{list}\", default_phone_country_code = \"1\", default_country = \"US\",\n\
             \x20          consent_ad_user_data = \"GRANTED\", consent_ad_personalization = \"GRANTED\" }}\n\
             secrets = {{ developer_token = \"{dev}\", refresh_token = \"{refresh}\", client_id = \"{client}\", client_secret = \"{client_secret}\" }}\n\
             reroute = [\"googleads.googleapis.com=http://{hp}\", \"oauth2.googleapis.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
             [[syncs]]\nname = \"vip-to-google\"\nfrom = {{ audience = \"vip\" }}\nto = \"google_vips\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nphone = \"identifiers.phone\"\nfirst_name = \"traits.first_name\"\n\
             last_name = \"traits.last_name\"\nzip = \"traits.postal_code\"\n",
            list = google_fake::USER_LIST_ID,
            dev = google_fake::DEVELOPER_TOKEN,
            refresh = google_fake::REFRESH_TOKEN,
            client = google_fake::CLIENT_ID,
            client_secret = google_fake::CLIENT_SECRET,
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "50")],
        );
        hub.install(&["google-ads-customer-match"]);
        hub.identify(
            "u1",
            json!({"email": "DanaM@example.com", "phone": "+1-800-555-0100", "first_name": " Dana ",
                                    "last_name": "Smith", "postal_code": "94045", "plan": "pro"}),
        );
        hub.identify(
            "u2",
            json!({"email": "cloudy.SanFrancisco+shopping@GMAIL.com", "plan": "pro"}),
        );
        hub.identify("u3", json!({"email": "cy@example.com", "plan": "free"}));
        let emails = |fake: &google_fake::Fake| -> Vec<Value> {
            fake.members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
                .iter()
                .map(|m| m[0]["hashedEmail"].clone())
                .collect()
        };

        // RESOURCE_EXHAUSTED with a retryDelay of 1 s: waited out, then the job runs.
        fake.fail_next(google_fake::Fault::quota("1s"));
        let started = Instant::now();
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("succeeded", 2, 2, 0), "{r}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "retryDelay honoured"
        );
        let jobs = fake.jobs();
        assert_eq!(
            jobs.iter().filter(|j| j.status == "SUCCESS").count(),
            1,
            "one job ran"
        );
        // The Data Manager guide's vectors, as they landed in the list.
        let members = fake.members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID);
        let dana = members
            .iter()
            .find(|m| {
                m[0]["hashedEmail"]
                    == "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7"
            })
            .unwrap_or_else(|| panic!("Dana: {members:?}"));
        assert_eq!(
            dana[1],
            json!({"hashedPhoneNumber": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"})
        );
        assert_eq!(
            dana[2],
            json!({"addressInfo": {"hashedFirstName": sha("dana"), "hashedLastName": sha("smith"),
                                                   "countryCode": "US", "postalCode": "94045"}})
        );
        assert!(emails(&fake).contains(&json!(
            "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"
        )));
        assert!(
            fake.token_grants() >= 1,
            "the access token came from the refresh-token flow"
        );

        // Google refuses one operation in partialFailureError: that record is dead-lettered.
        fake.reject_identifier(
            &sha("blocked@example.com"),
            json!({"offlineUserDataJobError": "INCOMPATIBLE_UPLOAD_KEY_TYPE"}),
            "The user identifier is not compatible with the list's upload key type.",
        );
        hub.identify("u4", json!({"email": "blocked@example.com", "plan": "pro"}));
        hub.identify("u5", json!({"email": "eve@example.com", "plan": "pro"}));
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-google");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("rejected: Google Ads: ")
                && error.contains("INCOMPATIBLE_UPLOAD_KEY_TYPE"),
            "{error}"
        );
        assert!(emails(&fake).contains(&json!(sha("eve@example.com"))));
        assert!(!emails(&fake).contains(&json!(sha("blocked@example.com"))));

        // Mirror: leaving the audience sends a remove operation with the same hashes.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert_eq!(fake.jobs().last().unwrap().operations[0].0, "remove");
        assert!(!emails(&fake).contains(&json!(
            "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"
        )));
        assert_eq!(emails(&fake).len(), 2);
    }

    /// The default path through a running hub: Data Manager ingest with a 429 waited out, a
    /// refused member dead-lettered while the rest of its request goes again, and mirror
    /// removals through `audienceMembers:remove`.
    #[test]
    fn google_ads_data_manager_sync_mirrors_an_audience_and_dead_letters_refused_members() {
        let fake = google_fake::start_in_background();
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.google_vips]\nplugin = \"google-ads-customer-match\"\n\
             config = {{ customer_id = \"123-456-7890\", user_list_id = \"{list}\", customer_match_terms_accepted = true, consent_ad_user_data = \"GRANTED\" }}\n\
             secrets = {{ refresh_token = \"{refresh}\", client_id = \"{client}\", client_secret = \"{client_secret}\" }}\n\
             reroute = [\"datamanager.googleapis.com=http://{hp}\", \"oauth2.googleapis.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
             [[syncs]]\nname = \"vip-to-google\"\nfrom = {{ audience = \"vip\" }}\nto = \"google_vips\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\n",
            list = google_fake::USER_LIST_ID,
            refresh = google_fake::REFRESH_TOKEN,
            client = google_fake::CLIENT_ID,
            client_secret = google_fake::CLIENT_SECRET,
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "50")],
        );
        hub.install(&["google-ads-customer-match"]);
        hub.identify("u1", json!({"email": "dana@example.com", "plan": "pro"}));
        hub.identify("u2", json!({"email": "cy@example.com", "plan": "pro"}));
        let emails = |fake: &google_fake::Fake| -> Vec<Value> {
            fake.dm_members(google_fake::CUSTOMER_ID, google_fake::USER_LIST_ID)
                .iter()
                .map(|m| m["userData"]["userIdentifiers"][0]["emailAddress"].clone())
                .collect()
        };

        fake.fail_next(google_fake::Fault::dm_quota(Some("1s"), None));
        let started = Instant::now();
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("succeeded", 2, 2, 0), "{r}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "retryDelay honoured"
        );
        assert_eq!(emails(&fake).len(), 2);

        fake.reject_identifier(
            &sha("blocked@example.com"),
            json!("INVALID_AUDIENCE_MEMBER"),
            "This audience member is not valid.",
        );
        hub.identify("u3", json!({"email": "blocked@example.com", "plan": "pro"}));
        hub.identify("u4", json!({"email": "eve@example.com", "plan": "pro"}));
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 1, 1), "{r}");
        let dead = hub.dead_letters("vip-to-google");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("rejected: Data Manager: INVALID_AUDIENCE_MEMBER"),
            "{error}"
        );
        assert!(emails(&fake).contains(&json!(sha("eve@example.com"))));

        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-google");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert_eq!(
            fake.dm_bodies().last().unwrap().0,
            "/v1/audienceMembers:remove"
        );
        assert!(!emails(&fake).contains(&json!(sha("cy@example.com"))));
        assert_eq!(emails(&fake).len(), 2);
    }
}
