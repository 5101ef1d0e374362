//! The `tiktok-audiences` and `linkedin-audiences` destinations through the real hub binary,
//! against faithful fakes of TikTok's Business API and LinkedIn's DMP segment users API: hashed
//! users land in the right audience, API errors map to per-record results (TikTok's HTTP-200
//! error codes, LinkedIn's per-element statuses), rate limits become retries with the right wait,
//! bad tokens fail `check`, logs leak neither tokens nor identifiers, and the fakes refuse what the
//! real APIs refuse.

use crate::common;

use crate::fakes::linkedin as linkedin_fake;
use crate::fakes::tiktok as tiktok_fake;

use std::path::Path;
use std::process::Output;

use common::hub::request;
use common::ok;
use common::{failed, install_plugin as install, lines, switchyard};
use serde_json::json;
use sha2::{Digest, Sha256};

const TT_TOKEN: &str = "tt-act.5f0c3e1d9a7b4c2e8f6a";
const ADVERTISER: &str = "7178918106775994370";
const AUDIENCE: &str = "1234345";
const LI_TOKEN: &str = "AQX-linkedin-token-9b8c7d6e";
const SEGMENT: &str = "10804";

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Runs `plugin <cmd> <plugin>` with the API host rerouted to the fake.
struct Api<'a> {
    dir: &'a Path,
    plugin: &'a str,
    host: &'a str,
    fake: String,
}

impl Api<'_> {
    fn args(&self, cmd: &str, token: &str, config: &serde_json::Value) -> Vec<String> {
        vec![
            "plugin".into(),
            cmd.into(),
            self.plugin.into(),
            "--config".into(),
            config.to_string(),
            "--secret".into(),
            format!("access_token={token}"),
            "--reroute".into(),
            format!("{}=http://{}", self.host, self.fake),
            "--allow-private".into(),
            self.fake.clone(),
        ]
    }

    fn deliver(
        &self,
        token: &str,
        config: &serde_json::Value,
        action: &str,
        records: &[serde_json::Value],
        log: &str,
    ) -> Output {
        let mut args = self.args("deliver", token, config);
        let file = self.dir.join(format!("{action}.jsonl"));
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&file, text).unwrap();
        args.extend([
            "--action".into(),
            action.into(),
            "--records".into(),
            file.display().to_string(),
        ]);
        switchyard(self.dir, &args, log)
    }

    fn check(&self, token: &str, config: &serde_json::Value) -> Output {
        switchyard(self.dir, &self.args("check", token, config), "warn")
    }
}

// ---------------------------------------------------------------- TikTok

fn tiktok_config() -> serde_json::Value {
    json!({
        "advertiser_id": ADVERTISER,
        "audience_id": AUDIENCE,
        "advertising_id_type": "IDFA",
        "default_country_code": "1"
    })
}

fn tiktok<'a>(dir: &'a Path, fake: &tiktok_fake::Fake) -> Api<'a> {
    install(dir, "tiktok-audiences");
    Api {
        dir,
        plugin: "tiktok-audiences",
        host: "business-api.tiktok.com",
        fake: fake.host_port(),
    }
}

#[test]
fn tiktok_adds_and_removes_hashed_users() {
    let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
    let dir = tempfile::tempdir().unwrap();
    let api = tiktok(dir.path(), &fake);
    let records = [
        json!({"key": "p1", "fields": {"email": " JaneDoe+promo@Gmail.com", "phone": "(650) 555-0100"}}),
        json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
        json!({"key": "p3", "fields": {"first_name": "Cy"}}),
        json!({"key": "p4", "fields": {"advertising_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"}}),
        json!({"key": "p5", "fields": {"email": "not-an-email"}}),
    ];
    let results = lines(&ok(&api.deliver(
        TT_TOKEN,
        &tiktok_config(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["result"], "ok", "{results:?}");
    assert_eq!(results[1]["result"], "ok");
    assert_eq!(results[2]["result"], "rejected");
    assert!(results[2]["reason"]
        .as_str()
        .unwrap()
        .contains("needs one of email, phone, advertising_id"));
    assert_eq!(results[3]["result"], "ok");
    assert_eq!(results[4]["result"], "rejected");
    assert!(!results[4]["reason"]
        .as_str()
        .unwrap()
        .contains("not-an-email"));

    // TikTok's published vector: janedoe@gmail.com.
    let emails = fake.members(AUDIENCE, "EMAIL_SHA256");
    assert!(emails.contains("d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"));
    assert!(emails.contains(&sha256("bob@example.com")));
    assert_eq!(emails.len(), 2);
    assert_eq!(
        fake.members(AUDIENCE, "PHONE_SHA256")
            .into_iter()
            .collect::<Vec<_>>(),
        [sha256("16505550100")],
        "digits with the country code, no +: the form both TikTok customer-file pages accept"
    );
    assert_eq!(
        fake.members(AUDIENCE, "IDFA_SHA256")
            .into_iter()
            .collect::<Vec<_>>(),
        [sha256("6d92078a-8246-4ba4-ae5b-76104861e7dc")],
        "IDFA lower-cased, as TikTok's example and RudderStack"
    );
    let bodies = fake.bodies();
    assert_eq!(bodies.len(), 1, "one request for the batch");
    assert_eq!(bodies[0]["action"], "add");
    assert_eq!(
        bodies[0]["id_schema"],
        json!(["EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256"])
    );
    assert_eq!(bodies[0]["batch_data"].as_array().unwrap().len(), 3);
    assert_eq!(bodies[0]["batch_data"][1][1], json!({}), "no phone for p2");
    let text = bodies[0].to_string();
    assert!(
        !text.contains('@') && !text.contains("555-0100"),
        "only hashes leave: {text}"
    );

    let results = lines(&ok(&api.deliver(
        TT_TOKEN,
        &tiktok_config(),
        "delete",
        &records[1..2],
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(fake.bodies()[1]["action"], "delete");
    assert!(!fake
        .members(AUDIENCE, "EMAIL_SHA256")
        .contains(&sha256("bob@example.com")));
    assert_eq!(fake.members(AUDIENCE, "EMAIL_SHA256").len(), 1);

    // phone_format = "e164" hashes +E.164 for accounts whose match tests favour it.
    let mut e164 = tiktok_config();
    e164["phone_format"] = json!("e164");
    ok(&api.deliver(
        TT_TOKEN,
        &e164,
        "upsert",
        &[json!({"key": "p9", "fields": {"phone": "(650) 555-0199"}})],
        "warn",
    ));
    assert!(fake
        .members(AUDIENCE, "PHONE_SHA256")
        .contains(&sha256("+16505550199")));

    // Events are not an audience operation.
    let err = failed(&api.deliver(TT_TOKEN, &tiktok_config(), "track", &records[..1], "warn"));
    assert!(err.contains("does not take events"), "{err}");
}

#[test]
fn tiktok_maps_http_200_error_codes_and_rate_limits() {
    let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
    let dir = tempfile::tempdir().unwrap();
    let api = tiktok(dir.path(), &fake);
    let records = [
        json!({"key": "p1", "fields": {"email": "ada@example.com"}}),
        json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
    ];
    let deliver = || {
        lines(&ok(&api.deliver(
            TT_TOKEN,
            &tiktok_config(),
            "upsert",
            &records,
            "warn",
        )))
    };

    fake.rate_limit_next(1);
    let results = deliver();
    for r in &results {
        assert_eq!(r["result"], "retry", "{results:?}");
        assert_eq!(r["after_ms"], 1000);
        assert!(r["reason"].as_str().unwrap().contains("40100"));
    }
    fake.code_next(1, 40100, "QPM limit reached: too many requests per minute");
    let results = deliver();
    assert_eq!(results[0]["after_ms"], 300_000);

    fake.code_next(1, 40002, "advertiser_ids: advertiser is in review.");
    let results = deliver();
    assert_eq!(results[0]["result"], "rejected");
    assert!(results[1]["reason"]
        .as_str()
        .unwrap()
        .contains("TikTok code 40002: advertiser_ids: advertiser is in review."));

    fake.code_next(1, 50000, "System error, please retry.");
    assert_eq!(deliver()[0]["result"], "retry");
    fake.http_next(1, 503, "upstream unavailable");
    assert_eq!(deliver()[1]["result"], "retry");
    assert!(
        fake.members(AUDIENCE, "EMAIL_SHA256").is_empty(),
        "nothing stored yet"
    );

    assert!(deliver().iter().all(|r| r["result"] == "ok"));
    assert_eq!(fake.members(AUDIENCE, "EMAIL_SHA256").len(), 2);
}

#[test]
fn tiktok_bad_token_advertiser_or_audience_fail_check() {
    let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
    let dir = tempfile::tempdir().unwrap();
    let api = tiktok(dir.path(), &fake);
    ok(&api.check(TT_TOKEN, &tiktok_config()));

    let err = failed(&api.check("tt-act.revoked", &tiktok_config()));
    assert!(
        err.contains("unauthorized") && err.contains("40105"),
        "{err}"
    );
    assert!(!err.contains("tt-act.revoked"), "token echoed: {err}");
    let mut other = tiktok_config();
    other["advertiser_id"] = json!("999");
    let err = failed(&api.check(TT_TOKEN, &other));
    assert!(err.contains("40001"), "{err}");
    let mut other = tiktok_config();
    other["audience_id"] = json!("555");
    let err = failed(&api.check(TT_TOKEN, &other));
    assert!(err.contains("audience 555 was not found"), "{err}");

    let err = failed(&api.deliver(
        "tt-act.revoked",
        &tiktok_config(),
        "upsert",
        &[json!({"key": "p1", "fields": {"email": "ada@example.com"}})],
        "warn",
    ));
    assert!(err.contains("40105"), "{err}");
    assert!(fake.bodies().is_empty());
}

#[test]
fn tiktok_logs_contain_neither_the_token_nor_identifiers() {
    let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
    let dir = tempfile::tempdir().unwrap();
    let api = tiktok(dir.path(), &fake);
    let out = api.deliver(
        TT_TOKEN,
        &tiktok_config(),
        "upsert",
        &[
            json!({"key": "p1", "fields": {"email": "ada.lovelace@example.com", "phone": "+44 20 7946 0958"}}),
            json!({"key": "p2", "fields": {"email": "broken-address"}}),
        ],
        "debug",
    );
    ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("segment mapping add"),
        "debug logs are on: {logs}"
    );
    for secret in [TT_TOKEN, "ada.lovelace", "7946", "broken-address"] {
        assert!(!logs.contains(secret), "`{secret}` in logs: {logs}");
    }
}

#[test]
fn tiktok_fake_refuses_what_tiktok_refuses() {
    let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
    let addr = fake.host_port();
    let path = "/open_api/v1.3/segment/mapping/";
    let post = |headers: &[(&str, &str)], body: &serde_json::Value| {
        let r = request(&addr, "POST", path, headers, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.status, 200, "TikTok answers 200 even for errors");
        r.json()
    };
    let auth = [
        ("access-token", TT_TOKEN),
        ("content-type", "application/json"),
    ];
    let good = json!({
        "advertiser_ids": [ADVERTISER], "action": "add", "id_schema": ["EMAIL_SHA256"],
        "batch_data": [[{"id": sha256("ada@example.com"), "audience_ids": [AUDIENCE]}]]
    });
    assert_eq!(
        post(&[("content-type", "application/json")], &good)["code"],
        40104
    );
    assert_eq!(
        post(&[("access-token", &format!("Bearer {TT_TOKEN}"))], &good)["code"],
        40105,
        "no Bearer prefix"
    );
    let with = |key: &str, value: serde_json::Value| {
        let mut b = good.clone();
        b[key] = value;
        b
    };
    let cases = [
        (with("action", json!("remove")), 40002, "action"),
        (with("advertiser_ids", json!(["1"])), 40001, "No permission"),
        (with("id_schema", json!(["EMAIL"])), 40002, "id_schema"),
        (
            with("id_schema", json!(["EMAIL_SHA256", "PHONE_SHA256"])),
            40002,
            "does not match id_schema length",
        ),
        (
            with(
                "batch_data",
                json!([[{"id": "ada@example.com", "audience_ids": [AUDIENCE]}]]),
            ),
            40002,
            "SHA256",
        ),
        (
            with(
                "batch_data",
                json!([[{"id": sha256("ada@example.com").to_uppercase(), "audience_ids": [AUDIENCE]}]]),
            ),
            40002,
            "lowercase",
        ),
        (
            with(
                "batch_data",
                json!([[{"id": sha256("a@b.co"), "audience_ids": ["42"]}]]),
            ),
            40002,
            "Audience 42 does not exist",
        ),
        (with("batch_data", json!([[{}]])), 40002, "at least one id"),
        (
            with("id_schema", json!(["IDFA_MD5"])),
            40002,
            "MD5 hex digest",
        ),
        (with("batch_data", json!([])), 40002, "at least 1"),
        (
            with(
                "batch_data",
                json!(vec![
                    json!([{"id": sha256("a@b.co"), "audience_ids": [AUDIENCE]}]);
                    tiktok_fake::MAX_ROWS + 1
                ]),
            ),
            40002,
            "at most",
        ),
    ];
    for (body, code, needle) in cases {
        let r = post(&auth, &body);
        assert_eq!(r["code"], code, "{body}: {r}");
        assert!(r["message"].as_str().unwrap().contains(needle), "{r}");
        assert!(r["request_id"].is_string());
    }
    assert!(
        fake.members(AUDIENCE, "EMAIL_SHA256").is_empty(),
        "nothing refused was stored"
    );
    let r = post(&auth, &good);
    assert_eq!(
        (r["code"].clone(), r["message"].clone()),
        (json!(0), json!("OK"))
    );
    assert_eq!(fake.members(AUDIENCE, "EMAIL_SHA256").len(), 1);
    let r = request(&addr, "GET", "/open_api/v1.3/nope/", &auth, b"").unwrap();
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------- LinkedIn

fn linkedin<'a>(dir: &'a Path, fake: &linkedin_fake::Fake) -> Api<'a> {
    install(dir, "linkedin-audiences");
    Api {
        dir,
        plugin: "linkedin-audiences",
        host: "api.linkedin.com",
        fake: fake.host_port(),
    }
}

/// Two records with an email each.
fn ada_and_bob() -> [serde_json::Value; 2] {
    [
        json!({"key": "p1", "fields": {"email": "ada@example.com"}}),
        json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
    ]
}

fn li_config() -> serde_json::Value {
    json!({"segment_id": SEGMENT})
}

#[test]
fn linkedin_adds_and_removes_users_with_the_required_headers() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let dir = tempfile::tempdir().unwrap();
    let api = linkedin(dir.path(), &fake);
    let records = [
        json!({"key": "p1", "fields": {"email": "  Test@Example.COM "}}),
        json!({"key": "p2", "fields": {"email": "jane@example.com", "google_advertising_id": "38400000-8CF0-11BD-B23E-10B96E40000D", "first_name": "Jane", "last_name": "Doe", "company": "Acme", "country": "us"}}),
        json!({"key": "p3", "fields": {"first_name": "Cy", "last_name": "Young"}}),
        json!({"key": "p4", "fields": {"title": "CTO"}}),
    ];
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok", "{results:?}");
    assert_eq!(results[1]["result"], "ok");
    assert_eq!(results[2]["result"], "ok");
    assert_eq!(results[3]["result"], "rejected");
    assert!(results[3]["reason"]
        .as_str()
        .unwrap()
        .contains("needs `email`"));

    let members = fake.members(SEGMENT);
    let expected = [
        (
            "SHA256_EMAIL",
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b".to_string(),
        ),
        ("SHA256_EMAIL", sha256("jane@example.com")),
        (
            "GOOGLE_AID",
            "38400000-8cf0-11bd-b23e-10b96e40000d".to_string(),
        ),
    ];
    for (t, v) in &expected {
        assert!(members.contains(&(t.to_string(), v.clone())), "{members:?}");
    }
    assert_eq!(members.len(), 3);
    assert!(fake
        .named(SEGMENT)
        .contains(&("Cy".to_string(), "Young".to_string())));
    let body = &fake.bodies()[0];
    assert_eq!(body["elements"].as_array().unwrap().len(), 3);
    assert_eq!(body["elements"][1]["country"], "US");
    assert_eq!(body["elements"][1]["company"], "Acme");
    assert!(
        !body.to_string().contains("example.com"),
        "only hashes leave"
    );
    let headers = &fake.headers()[0];
    assert_eq!(
        headers["linkedin-version"], "202607",
        "the plugin's default version, served until 2027-07-15"
    );
    assert_eq!(headers["x-restli-protocol-version"], "2.0.0");
    assert_eq!(headers["x-restli-method"], "BATCH_CREATE");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {LI_TOKEN}").as_str()
    );

    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "delete",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok");
    assert_eq!(fake.bodies()[1]["elements"][0]["action"], "REMOVE");
    assert_eq!(fake.members(SEGMENT).len(), 2);

    // SHA-512 on request.
    let config =
        json!({"segment_id": SEGMENT, "email_hash": "sha512", "linkedin_version": "202606"});
    ok(&api.deliver(LI_TOKEN, &config, "upsert", &records[..1], "warn"));
    let sha512 = "3af3174fa10ef8bd28ce7620c25fe18d1d5f93b9b3c4db3413402a0ec66369eab560c8cc0cefed323a2213ddec7c8a2c9ab912761215ada3e3c8c447cb318e07";
    assert!(fake
        .members(SEGMENT)
        .contains(&("SHA512_EMAIL".to_string(), sha512.to_string())));
    assert_eq!(fake.headers()[2]["linkedin-version"], "202606");
}

#[test]
fn linkedin_maps_per_element_errors_and_throttling() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let dir = tempfile::tempdir().unwrap();
    let api = linkedin(dir.path(), &fake);
    let records = ada_and_bob();
    fake.reject_id(
        &sha256("bob@example.com"),
        400,
        "The member cannot be added to this segment",
    );
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records,
        "warn",
    )));
    assert_eq!(results[0]["result"], "ok", "{results:?}");
    assert_eq!(results[1]["result"], "rejected");
    assert_eq!(
        results[1]["reason"],
        "status 400: The member cannot be added to this segment"
    );
    assert_eq!(fake.members(SEGMENT).len(), 1);

    fake.throttle_next(1);
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "retry");
    assert_eq!(results[0]["after_ms"], 60_000, "no Retry-After: a minute");
    assert!(results[0]["reason"].as_str().unwrap().contains("throttle"));

    fake.http_next(
        500,
        json!({"status": 500, "message": "Internal Server Error"}),
    );
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records[..1],
        "warn",
    )));
    assert_eq!(results[0]["result"], "retry");

    for version in ["202001", linkedin_fake::SUNSET_VERSION] {
        let config = json!({"segment_id": SEGMENT, "linkedin_version": version});
        let err = failed(&api.deliver(LI_TOKEN, &config, "upsert", &records[..1], "warn"));
        assert!(
            err.contains("426") && err.contains("not active") && err.contains("linkedin_version"),
            "{err}"
        );
    }
    let err = failed(&api.deliver(
        LI_TOKEN,
        &json!({"segment_id": SEGMENT, "linkedin_version": "2025-09"}),
        "upsert",
        &records[..1],
        "warn",
    ));
    assert!(
        err.contains("linkedin_version"),
        "schema refuses a malformed version: {err}"
    );
}

#[test]
fn linkedin_bad_token_segment_or_version_fail_check() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let dir = tempfile::tempdir().unwrap();
    let api = linkedin(dir.path(), &fake);
    ok(&api.check(LI_TOKEN, &li_config()));
    let err = failed(&api.check("AQX-expired", &li_config()));
    assert!(
        err.contains("unauthorized") && err.contains("Invalid access token"),
        "{err}"
    );
    assert!(!err.contains("AQX-expired"));
    let err = failed(&api.check(LI_TOKEN, &json!({"segment_id": "999"})));
    assert!(err.contains("DMP segment 999 not found"), "{err}");
    for version in ["202001", linkedin_fake::SUNSET_VERSION] {
        let err = failed(&api.check(
            LI_TOKEN,
            &json!({"segment_id": SEGMENT, "linkedin_version": version}),
        ));
        assert!(
            err.to_lowercase().contains("invalid config")
                && err.contains("not active")
                && err.contains(version),
            "{err}"
        );
    }
    let err = failed(&api.deliver(
        "AQX-expired",
        &li_config(),
        "upsert",
        &[json!({"key": "p1", "fields": {"email": "ada@example.com"}})],
        "warn",
    ));
    assert!(err.contains("unauthorized"), "{err}");
    assert!(fake.bodies().is_empty());
}

/// L2: a 404 on `/users` is about the segment, never the records. A segment that reads fine but
/// is too new to take users gets the batch retried after a minute; an unknown segment fails the
/// call. Before the fix both came back `rejected` (dead letters).
#[test]
fn linkedin_404_on_users_retries_a_new_segment_and_fails_an_unknown_one() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let dir = tempfile::tempdir().unwrap();
    let api = linkedin(dir.path(), &fake);
    let records = ada_and_bob();
    fake.segment_is_new(1);
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records,
        "warn",
    )));
    for r in &results {
        assert_eq!(r["result"], "retry", "{results:?}");
        assert_eq!(r["after_ms"], 60_000, "{results:?}");
    }
    assert!(fake.members(SEGMENT).is_empty());
    // The retry goes through once the segment takes users.
    let results = lines(&ok(&api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &records,
        "warn",
    )));
    assert!(results.iter().all(|r| r["result"] == "ok"), "{results:?}");
    assert_eq!(fake.members(SEGMENT).len(), 2);

    let err = failed(&api.deliver(
        LI_TOKEN,
        &json!({"segment_id": "999"}),
        "delete",
        &records,
        "warn",
    ));
    assert!(
        err.to_lowercase().contains("invalid config") && err.contains("DMP segment 999 not found"),
        "{err}"
    );
}

#[test]
fn linkedin_logs_contain_neither_the_token_nor_identifiers() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let dir = tempfile::tempdir().unwrap();
    let api = linkedin(dir.path(), &fake);
    let out = api.deliver(
        LI_TOKEN,
        &li_config(),
        "upsert",
        &[
            json!({"key": "p1", "fields": {"email": "ada.lovelace@example.com"}}),
            json!({"key": "p2", "fields": {"email": "broken-address"}}),
        ],
        "debug",
    );
    ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("dmpSegments users ADD"),
        "debug logs are on: {logs}"
    );
    for secret in [LI_TOKEN, "ada.lovelace", "broken-address"] {
        assert!(!logs.contains(secret), "`{secret}` in logs: {logs}");
    }
}

#[test]
fn linkedin_fake_refuses_what_linkedin_refuses() {
    let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
    let addr = fake.host_port();
    let bearer = format!("Bearer {LI_TOKEN}");
    let full: Vec<(&str, &str)> = vec![
        ("authorization", bearer.as_str()),
        ("linkedin-version", "202607"),
        ("x-restli-protocol-version", "2.0.0"),
        ("x-restli-method", "BATCH_CREATE"),
        ("content-type", "application/json"),
    ];
    let without = |name: &str| -> Vec<(&str, &str)> {
        full.iter().filter(|(k, _)| *k != name).cloned().collect()
    };
    let path = format!("/rest/dmpSegments/{SEGMENT}/users");
    let good = json!({"elements": [{"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha256("ada@example.com")}]}]});
    let post = |path: &str, headers: &[(&str, &str)], body: &serde_json::Value| {
        request(&addr, "POST", path, headers, body.to_string().as_bytes()).unwrap()
    };

    let r = post(&path, &without("authorization"), &good);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "INVALID_ACCESS_TOKEN");
    let r = post(&path, &without("linkedin-version"), &good);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("VERSION_MISSING"))
    );
    for version in ["202001", "202512", linkedin_fake::SUNSET_VERSION] {
        let mut old = full.clone();
        old[1] = ("linkedin-version", version);
        let r = post(&path, &old, &good);
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (426, json!("NONEXISTENT_VERSION")),
            "{version}"
        );
        assert_eq!(
            r.json()["message"],
            format!("Requested version {version} is not active")
        );
    }
    assert_eq!(
        post(&path, &without("x-restli-protocol-version"), &good).status,
        400
    );
    assert_eq!(post(&path, &without("x-restli-method"), &good).status, 400);
    assert_eq!(
        post("/rest/dmpSegments/999/users", &full, &good).status,
        404
    );
    assert_eq!(post(&path, &full, &json!({"elements": []})).status, 400);
    let too_many =
        json!({"elements": vec![good["elements"][0].clone(); linkedin_fake::MAX_ELEMENTS + 1]});
    assert_eq!(post(&path, &full, &too_many).status, 400);
    assert!(fake.bodies().is_empty(), "nothing refused was stored");

    // Per-element: raw email, wrong hash length, unknown idType, bad action, no ids and no
    // names, then one good element.
    let elements = json!({"elements": [
        {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": "ada@example.com"}]},
        {"action": "ADD", "userIds": [{"idType": "SHA512_EMAIL", "idValue": sha256("ada@example.com")}]},
        {"action": "ADD", "userIds": [{"idType": "EMAIL", "idValue": "x"}]},
        {"action": "UPSERT", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha256("a@b.co")}]},
        {"action": "ADD", "userIds": [], "firstName": "Jane"},
        {"action": "ADD", "userIds": [{"idType": "GOOGLE_AID", "idValue": "not-a-uuid"}]},
        {"action": "ADD", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha256("ada@example.com")}]}
    ]});
    let r = post(&path, &full, &elements);
    assert_eq!(r.status, 200);
    let statuses: Vec<u64> = r.json()["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [400, 400, 400, 400, 400, 400, 201]);
    assert!(r.json()["elements"][2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not an enum symbol"));
    assert_eq!(fake.members(SEGMENT).len(), 1);
    let r = request(
        &addr,
        "GET",
        &format!("/rest/dmpSegments/{SEGMENT}"),
        &without("x-restli-method"),
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["type"], "USER");
}

// ---------------------------------------------------------------- syncs through the hub

mod syncs {
    //! Both plugins driven by real syncs of a running hub: profiles in through the tracking API,
    //! `switchyard sync run`, run history and dead letters from the CLI.

    use std::time::{Duration, Instant};

    use super::common::hub::{run_counts, Db, Hub};
    use super::*;

    const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";

    #[test]
    fn tiktok_sync_mirrors_an_audience_backs_off_on_40100_and_dead_letters_rejections() {
        let fake = tiktok_fake::start_in_background(TT_TOKEN, ADVERTISER, &[AUDIENCE]);
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.tiktok_vips]\nplugin = \"tiktok-audiences\"\n\
             config = {{ advertiser_id = \"{ADVERTISER}\", audience_id = \"{AUDIENCE}\", default_country_code = \"1\" }}\n\
             secrets = {{ access_token = \"${{TIKTOK_ACCESS_TOKEN}}\" }}\n\
             reroute = [\"business-api.tiktok.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nconcurrency = 1\n\n\
             [[syncs]]\nname = \"vip-to-tiktok\"\nfrom = {{ audience = \"vip\" }}\nto = \"tiktok_vips\"\nmode = \"mirror\"\nbatch_size = 1\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nphone = \"identifiers.phone\"\n",
        );
        let env = [
            ("SWITCHYARD_RETRY_BASE_MS", "50"),
            ("TIKTOK_ACCESS_TOKEN", TT_TOKEN),
        ];
        let hub = Hub::start_project(Db::Sqlite, "", &project, &env);
        hub.install(&["tiktok-audiences"]);
        hub.identify(
            "u1",
            json!({"email": "JaneDoe+ads@Gmail.com", "phone": "(650) 555-0100", "plan": "pro"}),
        );
        hub.identify("u2", json!({"email": "bob@example.com", "plan": "pro"}));
        hub.identify("u3", json!({"email": "cy@example.com", "plan": "free"}));
        let emails = |fake: &tiktok_fake::Fake| fake.members(AUDIENCE, "EMAIL_SHA256");

        // TikTok's rate limit is an HTTP 200 with code 40100: retried after a second, completed.
        fake.rate_limit_next(1);
        let started = Instant::now();
        let r = hub.run_sync("vip-to-tiktok");
        assert_eq!(run_counts(&r), ("succeeded", 2, 1, 0), "{r}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited before retrying"
        );
        // TikTok's published vector: the +tag is dropped before hashing.
        assert_eq!(
            emails(&fake),
            [sha256("janedoe@gmail.com"), sha256("bob@example.com")]
                .into_iter()
                .collect()
        );
        assert_eq!(
            fake.members(AUDIENCE, "PHONE_SHA256"),
            [sha256("16505550100")].into_iter().collect()
        );

        // A request TikTok refuses (code 40002): its record is dead-lettered with TikTok's message.
        hub.identify("u4", json!({"email": "dee@example.com", "plan": "pro"}));
        hub.identify("u5", json!({"email": "eve@example.com", "plan": "pro"}));
        fake.code_next(
            1,
            40002,
            "Invalid audience: the audience is being calculated.",
        );
        let r = hub.run_sync("vip-to-tiktok");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-tiktok");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("rejected: ")
                && error.contains("40002")
                && error.contains("being calculated"),
            "{error}"
        );
        assert_eq!(emails(&fake).len(), 3);

        // Mirror: leaving the audience deletes the user's hashes.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-tiktok");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert!(!emails(&fake).contains(&sha256("bob@example.com")));
        assert!(emails(&fake).contains(&sha256("janedoe@gmail.com")));
        assert_eq!(fake.bodies().last().unwrap()["action"], "delete");
    }

    /// LinkedIn sends no Retry-After with its per-minute 429, so the plugin waits a minute: this
    /// test takes a little over 60 s.
    #[test]
    fn linkedin_sync_mirrors_an_audience_waits_out_429_and_dead_letters_rejections() {
        let fake = linkedin_fake::start_in_background(LI_TOKEN, &[SEGMENT]);
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.linkedin_accounts]\nplugin = \"linkedin-audiences\"\n\
             config = {{ segment_id = \"{SEGMENT}\" }}\n\
             secrets = {{ access_token = \"{LI_TOKEN}\" }}\n\
             reroute = [\"api.linkedin.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\n\n\
             [[syncs]]\nname = \"vip-to-linkedin\"\nfrom = {{ audience = \"vip\" }}\nto = \"linkedin_accounts\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\nlast_name = \"traits.last_name\"\n\
             company = \"traits.company\"\ncountry = \"traits.country\"\n",
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "50")],
        );
        hub.install(&["linkedin-audiences"]);
        hub.identify("u1",
            json!({"email": " Ada@Example.com", "first_name": "Ada", "last_name": "Lovelace",
                                    "company": "Analytical Engines", "country": "gb", "plan": "pro"}),
        );
        hub.identify("u2", json!({"email": "bob@example.com", "plan": "pro"}));
        hub.identify("u3", json!({"email": "blocked@example.com", "plan": "pro"}));
        hub.identify("u4", json!({"email": "cy@example.com", "plan": "free"}));
        let hashed = |e: &str| ("SHA256_EMAIL".to_string(), sha256(e));

        // 429 on the first request, then one element refused: the run waits, then completes
        // with that one record dead-lettered with LinkedIn's message.
        fake.throttle_next(1);
        fake.reject_id(
            &sha256("blocked@example.com"),
            400,
            "The user is not eligible for this segment",
        );
        let started = Instant::now();
        let r = hub.run_sync("vip-to-linkedin");
        assert_eq!(run_counts(&r), ("completed_with_errors", 2, 3, 1), "{r}");
        assert!(
            started.elapsed() >= Duration::from_secs(59),
            "LinkedIn's minute waited out"
        );
        let dead = hub.dead_letters("vip-to-linkedin");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            dead[0]["error"],
            "rejected: status 400: The user is not eligible for this segment"
        );
        let members = fake.members(SEGMENT);
        assert_eq!(
            members,
            [hashed("ada@example.com"), hashed("bob@example.com")]
                .into_iter()
                .collect()
        );
        let body = fake.bodies().last().unwrap().clone();
        let ada = body["elements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["userIds"][0]["idValue"] == sha256("ada@example.com"))
            .expect("Ada's element")
            .clone();
        assert_eq!(ada["action"], "ADD");
        assert_eq!(
            (
                ada["firstName"].as_str(),
                ada["lastName"].as_str(),
                ada["company"].as_str(),
                ada["country"].as_str()
            ),
            (
                Some("Ada"),
                Some("Lovelace"),
                Some("Analytical Engines"),
                Some("GB")
            )
        );

        // Mirror: leaving the audience removes the user; an unchanged run sends nothing.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-linkedin");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert_eq!(
            fake.members(SEGMENT),
            [hashed("ada@example.com")].into_iter().collect()
        );
        let requests = fake.bodies().len();
        assert_eq!(hub.run_sync("vip-to-linkedin")["sent"], 0);
        assert_eq!(fake.bodies().len(), requests);
    }
}
