//! Email destinations end to end: the `sendgrid` and `mailchimp` plugins run in the real hub
//! binary (`switchyard plugin deliver|check`), their API hosts rerouted to faithful fakes
//! (`tests/fakes/sendgrid.rs`, `tests/fakes/mailchimp.rs`). Each fake is also tested on its own
//! with plain HTTP requests, to prove it refuses what the real API refuses.

use crate::common;

use common::ok;
use common::{failed, install_plugin as install, lines};

use crate::fakes::sendgrid as sendgrid_fake;

use crate::fakes::mailchimp as mailchimp_fake;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

// ---- helpers ----

/// Runs the hub binary with `args`, feeding `stdin`, with plugin logs at debug level.
fn switchyard(plugins: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--plugins-dir")
        .arg(plugins)
        .args(args)
        .env("SWITCHYARD_LOG", "debug")
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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// A plain HTTP/1.1 request to a fake; returns status, lower-cased headers and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

// ============================== SendGrid ==============================

mod sendgrid {
    use super::sendgrid_fake::{self, Fake, Setup, API_KEY, LIST_ID, TEMPLATE_ID};
    use super::*;

    struct Hub {
        dir: tempfile::TempDir,
        fake: Fake,
    }

    fn hub() -> Hub {
        let fake = Fake::start_in_background(Setup::default());
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "sendgrid");
        Hub { dir, fake }
    }

    impl Hub {
        /// Runs `plugin <command> sendgrid` with the fake standing in for api.sendgrid.com.
        fn run(
            &self,
            command: &str,
            config: &Value,
            key: &str,
            extra: &[&str],
            stdin: &str,
        ) -> Output {
            let reroute = format!("api.sendgrid.com={}", self.fake.url());
            let secret = format!("api_key={key}");
            let config = config.to_string();
            let hp = self.fake.host_port();
            let mut args = vec![
                "plugin",
                command,
                "sendgrid",
                "--config",
                &config,
                "--secret",
                &secret,
                "--reroute",
                &reroute,
                "--allow-private",
                &hp,
            ];
            args.extend_from_slice(extra);
            switchyard(self.dir.path(), &args, stdin)
        }

        fn deliver(&self, action: &str, config: &Value, records: &[Value]) -> (Vec<Value>, String) {
            let out = self.run(
                "deliver",
                config,
                API_KEY,
                &["--action", action],
                &jsonl(records),
            );
            let results = lines(&ok(&out));
            assert_eq!(results.len(), records.len(), "one result per record");
            (results, stderr(&out))
        }
    }

    fn config() -> Value {
        json!({
            "list_ids": [LIST_ID],
            "custom_fields": {"plan": "e1_T", "lifetime_value": "e2_N"},
            "template_id": TEMPLATE_ID,
            "from_email": "orders@shop.example.com",
            "from_name": "Example Shop"
        })
    }

    /// Neither the API key nor any email address may appear in the hub's output.
    fn assert_no_leaks(logs: &str, emails: &[&str]) {
        assert!(
            logs.contains("HTTP 202"),
            "the plugin's debug lines are expected in the output: {logs}"
        );
        assert!(
            !logs.contains(API_KEY),
            "the API key leaked into the logs: {logs}"
        );
        assert!(
            !logs.contains("s3cr3t"),
            "part of the API key leaked: {logs}"
        );
        for email in emails {
            assert!(
                !logs.to_lowercase().contains(&email.to_lowercase()),
                "{email} leaked into the logs: {logs}"
            );
        }
    }

    #[test]
    fn sendgrid_upsert_lands_contacts_mapped_and_rejects_what_sendgrid_refuses() {
        let h = hub();
        let records = vec![
            json!({"key": "p1", "fields": {"email": "Ada@Example.com", "first_name": "Ada", "last_name": "Lovelace",
                                           "plan": "pro", "lifetime_value": 1234.5, "postal_code": 94107, "city": null}}),
            json!({"key": "p2", "fields": {"email": "grace@example.org", "first_name": "Grace"}}),
            // SendGrid refuses this address; the others must still land.
            json!({"key": "p3", "fields": {"email": "not-an-email@", "first_name": "Bad"}}),
            // A field neither reserved nor mapped: refused by the plugin before sending.
            json!({"key": "p4", "fields": {"email": "x@example.com", "favourite_colour": "blue"}}),
            // Too long for SendGrid's 50-character first_name.
            json!({"key": "p5", "fields": {"email": "long@example.com", "first_name": "N".repeat(51)}}),
        ];
        let (results, logs) = h.deliver("upsert", &config(), &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(results[1]["result"], "ok", "{results:?}");
        assert_eq!(results[2]["result"], "rejected");
        assert_eq!(
            results[2]["reason"],
            "HTTP 400: email: Email address is invalid"
        );
        assert_eq!(results[3]["result"], "rejected");
        assert!(
            results[3]["reason"]
                .as_str()
                .unwrap()
                .contains("`favourite_colour`"),
            "{results:?}"
        );
        assert_eq!(results[4]["result"], "rejected");
        assert_eq!(
            results[4]["reason"],
            "HTTP 400: first_name: must be at most 50 characters"
        );

        let ada = h.fake.contact("ada@example.com").expect("Ada stored");
        assert_eq!(ada["email"], "ada@example.com");
        assert_eq!(ada["first_name"], "Ada");
        assert_eq!(ada["last_name"], "Lovelace");
        assert_eq!(ada["postal_code"], "94107");
        assert_eq!(ada["custom_fields"], json!({"e1_T": "pro", "e2_N": 1234.5}));
        assert_eq!(ada["list_ids"], json!([LIST_ID]));
        assert!(ada.get("city").is_none(), "null fields are left out");
        assert_eq!(
            h.fake.contact("grace@example.org").unwrap()["first_name"],
            "Grace"
        );
        assert_eq!(h.fake.contact_count(), 2, "nothing else stored");

        // The first PUT was refused as a whole (nothing stored), the second carried the rest.
        let puts: Vec<_> = h
            .fake
            .seen()
            .into_iter()
            .filter(|s| s.method == "PUT")
            .collect();
        assert_eq!(puts.len(), 2);
        assert_eq!(puts[0].uri, "/v3/marketing/contacts");
        let second: Value = serde_json::from_slice(&puts[1].body).unwrap();
        assert_eq!(second["contacts"].as_array().unwrap().len(), 2);
        assert_eq!(second["list_ids"], json!([LIST_ID]));
        assert_no_leaks(
            &logs,
            &["ada@example.com", "grace@example.org", "not-an-email@"],
        );

        // A custom field id SendGrid does not know is refused by SendGrid for that record.
        let bad_field = json!({"custom_fields": {"plan": "e9_T"}});
        let (results, _) = h.deliver(
            "upsert",
            &bad_field,
            &[json!({"key": "p6", "fields": {"email": "new@example.com", "plan": "x"}})],
        );
        assert_eq!(results[0]["result"], "rejected");
        assert_eq!(
            results[0]["reason"],
            "HTTP 400: custom_fields: invalid custom field ids supplied - e9_T"
        );
        assert!(h.fake.contact("new@example.com").is_none());
    }

    /// S1: a profile leaving the synced audience comes off the synced list only; the contact,
    /// its other lists and its fields stay. Erasing it account-wide takes
    /// `delete_mode = "delete_contact"`, by name.
    #[test]
    fn sendgrid_removal_takes_contacts_off_the_synced_lists_only_unless_erasing_is_named() {
        const OTHER_LIST: &str = "0b7a3796-e8a8-4029-9ccb-df8937940999";
        let h = hub();
        let gone = h
            .fake
            .seed_contact("gone@example.com", &[LIST_ID, OTHER_LIST]);
        h.fake.seed_contact("kept@example.com", &[LIST_ID]);
        h.fake.seed_contact("elsewhere@example.com", &[OTHER_LIST]);
        let records = vec![
            json!({"key": "p1", "fields": {"email": "Gone@Example.com", "first_name": "G"}}),
            // On another list only: nothing of this sync's to remove.
            json!({"key": "p2", "fields": {"email": "elsewhere@example.com"}}),
            // Unknown to SendGrid: nothing to remove.
            json!({"key": "p3", "fields": {"email": "never-there@example.com"}}),
            json!({"key": "p4", "fields": {"first_name": "no email"}}),
        ];
        let (results, logs) = h.deliver("delete", &config(), &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(results[1]["result"], "ok");
        assert_eq!(results[2]["result"], "ok");
        assert_eq!(results[3]["result"], "rejected");
        let g = h
            .fake
            .contact("gone@example.com")
            .expect("the contact stays in SendGrid");
        assert_eq!(
            g["list_ids"],
            json!([OTHER_LIST]),
            "only the synced list is left"
        );
        assert_eq!(
            h.fake.contact("elsewhere@example.com").unwrap()["list_ids"],
            json!([OTHER_LIST])
        );
        assert_eq!(h.fake.contact_count(), 3, "nothing deleted");
        let seen = h.fake.seen();
        assert_eq!(seen[0].uri, "/v3/marketing/contacts/search/emails");
        let lookup: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(lookup["emails"].as_array().unwrap().len(), 3);
        assert_eq!(seen[1].method, "DELETE");
        assert_eq!(
            seen[1].uri,
            format!("/v3/marketing/lists/{LIST_ID}/contacts?contact_ids={gone}")
        );
        assert_eq!(seen.len(), 2);
        assert!(
            !seen
                .iter()
                .any(|s| s.uri.starts_with("/v3/marketing/contacts?")),
            "no account-wide delete by default"
        );
        assert_no_leaks(&logs, &["gone@example.com", "never-there@example.com"]);

        // Without lists there is nothing to remove from: the operator must say what they want.
        let err = failed(&h.run(
            "deliver",
            &json!({}),
            API_KEY,
            &["--action", "delete"],
            &jsonl(&records[..1]),
        ));
        assert!(err.contains("delete_mode = \"delete_contact\""), "{err}");

        // Erasing, named: the contact is deleted from the whole account.
        let mut cfg = config();
        cfg["delete_mode"] = json!("delete_contact");
        let (results, _) = h.deliver(
            "delete",
            &cfg,
            &[json!({"key": "k", "fields": {"email": "kept@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok");
        assert!(h.fake.contact("kept@example.com").is_none());
        let last = h.fake.seen().pop().unwrap();
        assert!(
            last.uri.starts_with("/v3/marketing/contacts?ids="),
            "{}",
            last.uri
        );

        // Nobody in the batch exists: SendGrid answers 404 and every record is done.
        let (results, _) = h.deliver(
            "delete",
            &config(),
            &[json!({"key": "n", "fields": {"email": "nobody@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok");

        // The synced list was deleted in SendGrid: a config error, not dead letters.
        let mut gone_list = config();
        gone_list["list_ids"] = json!(["11111111-2222-4333-8444-555555555555"]);
        h.fake
            .seed_contact("x@example.com", &["11111111-2222-4333-8444-555555555555"]);
        let err = failed(&h.run(
            "deliver",
            &gone_list,
            API_KEY,
            &["--action", "delete"],
            &jsonl(&[json!({"key": "x", "fields": {"email": "x@example.com"}})]),
        ));
        assert!(err.contains("SendGrid has no list"), "{err}");
    }

    /// S3: `search/emails` also matches `alternate_emails`; the contact it returns for such an
    /// address is someone else and is neither removed nor deleted.
    #[test]
    fn sendgrid_removal_leaves_a_contact_found_by_an_alternate_email_alone() {
        let h = hub();
        h.fake.seed_contact_with(
            "owner@example.com",
            &[LIST_ID],
            json!({"alternate_emails": ["shared@example.com"]}),
        );
        let mut cfg = config();
        cfg["delete_mode"] = json!("delete_contact");
        for cfg in [config(), cfg] {
            let (results, _) = h.deliver(
                "delete",
                &cfg,
                &[json!({"key": "s", "fields": {"email": "shared@example.com"}})],
            );
            assert_eq!(results[0]["result"], "ok", "{results:?}");
            let owner = h.fake.contact("owner@example.com").expect("owner kept");
            assert_eq!(owner["list_ids"], json!([LIST_ID]));
        }
        assert!(
            !h.fake.seen().iter().any(|s| s.method == "DELETE"),
            "nothing removed"
        );
    }

    /// S2: 202 is "queued". The plugin follows the import job; a contact the job refused is
    /// rejected naming the job, the others are ok, and a job that fails entirely rejects all.
    #[test]
    fn sendgrid_upsert_follows_the_import_job_and_reads_per_contact_errors() {
        let h = hub();
        h.fake.pending_polls(2);
        h.fake
            .fail_in_job("capped@example.com", "contact limit of the plan reached");
        // Already stored exactly as it will be sent: an unchanged contact still counts as stored.
        h.fake
            .seed_contact_with("same@example.com", &[LIST_ID], json!({"first_name": "Sam"}));
        let records = vec![
            json!({"key": "p1", "fields": {"email": "ada@example.com", "first_name": "Ada"}}),
            json!({"key": "p2", "fields": {"email": "capped@example.com", "first_name": "Cap"}}),
            json!({"key": "p3", "fields": {"external_id": "crm-7", "first_name": "NoMail"}}),
        ];
        let (results, logs) = h.deliver("upsert", &config(), &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(results[1]["result"], "rejected", "{results:?}");
        let reason = results[1]["reason"].as_str().unwrap();
        assert!(
            reason.contains("import job") && reason.contains("1 of 3 contacts errored"),
            "{reason}"
        );
        // No email to look it up by: sent again rather than claimed.
        assert_eq!(results[2]["result"], "retry", "{results:?}");
        assert!(h.fake.contact("ada@example.com").is_some());
        assert!(h.fake.contact("capped@example.com").is_none());
        let polls = h
            .fake
            .seen()
            .iter()
            .filter(|s| s.method == "GET" && s.uri.starts_with("/v3/marketing/contacts/imports/"))
            .count();
        assert_eq!(polls, 3, "two pending answers, then the finished job");
        assert!(logs.contains("import job"), "{logs}");
        assert_no_leaks(&logs, &["ada@example.com", "capped@example.com"]);

        // A clean job: every contact ok, the unchanged one included.
        h.fake.pending_polls(0);
        let (results, _) = h.deliver(
            "upsert",
            &config(),
            &[
                json!({"key": "p4", "fields": {"email": "same@example.com", "first_name": "Sam"}}),
                json!({"key": "p5", "fields": {"email": "bo@example.com"}}),
            ],
        );
        assert!(results.iter().all(|r| r["result"] == "ok"), "{results:?}");

        // Every contact refused: the job `failed`, all rejected.
        h.fake
            .fail_in_job("cap2@example.com", "contact limit of the plan reached");
        let (results, _) = h.deliver(
            "upsert",
            &config(),
            &[json!({"key": "p6", "fields": {"email": "cap2@example.com"}})],
        );
        assert_eq!(results[0]["result"], "rejected", "{results:?}");
        assert!(
            results[0]["reason"].as_str().unwrap().contains("failed"),
            "{results:?}"
        );
    }

    /// S2: a job SendGrid has not finished within `import_wait_secs` is never claimed as
    /// stored: its contacts are retried (an upsert is idempotent).
    #[test]
    fn sendgrid_upsert_retries_contacts_whose_import_job_is_still_pending() {
        let h = hub();
        h.fake.hold_jobs(true);
        let mut cfg = config();
        cfg["import_wait_secs"] = json!(2);
        let started = std::time::Instant::now();
        let (results, _) = h.deliver(
            "upsert",
            &cfg,
            &[json!({"key": "p1", "fields": {"email": "ada@example.com"}})],
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert_eq!(results[0]["result"], "retry", "{results:?}");
        assert_eq!(results[0]["after_ms"], 60_000);
        let reason = results[0]["reason"].as_str().unwrap();
        assert!(reason.contains("still pending after 2 s"), "{reason}");
        assert!(h.fake.contact("ada@example.com").is_none());

        // SendGrid catches up: the retry lands and is confirmed.
        h.fake.hold_jobs(false);
        let (results, _) = h.deliver(
            "upsert",
            &cfg,
            &[json!({"key": "p1", "fields": {"email": "ada@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok", "{results:?}");
    }

    #[test]
    fn sendgrid_track_sends_dynamic_template_mail_per_record() {
        let h = hub();
        let mut cfg = config();
        cfg["event_templates"] = json!({"Order Completed": TEMPLATE_ID});
        cfg["template_id"] = json!("d-00000000000000000000000000000000");
        let records = vec![
            json!({"key": "e1", "fields": {"event": "Order Completed", "email": "ada@example.com", "name": "Ada",
                                           "properties": {"order_id": "o-1", "total": 42.5}}}),
            json!({"key": "e2", "fields": {"event": "Order Completed", "email": "bob@@example.com"}}),
            json!({"key": "e3", "fields": {"event": "Order Completed", "email": "ada@example.com",
                                           "properties": {"order_id": "o-2"}}}),
            // The default template does not exist in SendGrid.
            json!({"key": "e4", "fields": {"event": "Signed Up", "email": "cy@example.com"}}),
            json!({"key": "e5", "fields": {"event": "Order Completed"}}),
        ];
        let (results, logs) = h.deliver("track", &cfg, &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(results[1]["result"], "rejected");
        assert_eq!(
            results[1]["reason"],
            "HTTP 400: to.0.email: Does not contain a valid address."
        );
        assert_eq!(results[2]["result"], "ok", "{results:?}");
        assert_eq!(results[3]["result"], "rejected");
        assert_eq!(
            results[3]["reason"],
            "HTTP 400: template_id: The template_id is not a valid template ID."
        );
        assert_eq!(results[4]["result"], "rejected");

        let mails = h.fake.mails();
        assert_eq!(
            mails.len(),
            2,
            "the same recipient twice goes out in two requests: {mails:?}"
        );
        let first = &mails[0];
        assert_eq!(first["template_id"], TEMPLATE_ID);
        assert_eq!(
            first["from"],
            json!({"email": "orders@shop.example.com", "name": "Example Shop"})
        );
        let p = &first["personalizations"][0];
        assert_eq!(
            p["to"],
            json!([{"email": "ada@example.com", "name": "Ada"}])
        );
        assert_eq!(p["dynamic_template_data"]["properties"]["order_id"], "o-1");
        assert_eq!(p["dynamic_template_data"]["event"], "Order Completed");
        assert_eq!(p["custom_args"]["switchyard_key"], "e1");
        assert_eq!(
            mails[1]["personalizations"][0]["dynamic_template_data"]["properties"]["order_id"],
            "o-2"
        );
        assert_no_leaks(&logs, &["ada@example.com", "bob@@example.com"]);

        // Track without a sender is a config error for the whole call.
        let mut no_from = cfg.clone();
        no_from.as_object_mut().unwrap().remove("from_email");
        let err = failed(&h.run(
            "deliver",
            &no_from,
            API_KEY,
            &["--action", "track"],
            &jsonl(&records[..1]),
        ));
        assert!(err.contains("from_email is required"), "{err}");
    }

    #[test]
    fn sendgrid_429_is_retried_after_rate_limit_reset_and_500_backs_off() {
        let h = hub();
        let records = vec![
            json!({"key": "p1", "fields": {"email": "ada@example.com"}}),
            json!({"key": "p2", "fields": {"email": "bob@example.com"}}),
        ];
        h.fake.throttle(1, 30);
        let (results, _) = h.deliver("upsert", &config(), &records);
        for r in &results {
            assert_eq!(r["result"], "retry", "{results:?}");
            let after = r["after_ms"]
                .as_u64()
                .expect("after_ms from X-RateLimit-Reset");
            assert!((28_000..=31_000).contains(&after), "after_ms {after}");
            assert!(r["reason"].as_str().unwrap().contains("429"), "{r}");
        }
        assert_eq!(h.fake.contact_count(), 0);

        h.fake.fail_next(1);
        let (results, _) = h.deliver(
            "track",
            &config(),
            &[json!({"key": "e", "fields": {"email": "ada@example.com"}})],
        );
        assert_eq!(results[0]["result"], "retry");
        assert!(results[0]["after_ms"].is_null());

        // The throttle is over: the same records go through.
        let (results, _) = h.deliver("upsert", &config(), &records);
        assert!(results.iter().all(|r| r["result"] == "ok"), "{results:?}");
        assert_eq!(h.fake.contact_count(), 2);
    }

    #[test]
    fn sendgrid_check_verifies_key_lists_and_custom_fields() {
        let h = hub();
        let out = ok(&h.run("check", &config(), API_KEY, &[], ""));
        assert!(out.contains("check passed"), "{out}");
        let seen: Vec<String> = h
            .fake
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.uri))
            .collect();
        assert_eq!(
            seen,
            vec![
                "GET /v3/scopes".to_string(),
                "GET /v3/marketing/field_definitions".to_string(),
                format!("GET /v3/marketing/lists/{LIST_ID}"),
            ]
        );

        let out = h.run("check", &config(), "SG.wrong-key", &[], "");
        let err = failed(&out);
        assert!(err.contains("unauthorized"), "{err}");
        assert!(
            err.contains("The provided authorization grant is invalid, expired, or revoked"),
            "{err}"
        );
        assert!(!err.contains("SG.wrong-key"), "{err}");

        let mut cfg = config();
        cfg["custom_fields"] = json!({"plan": "e9_T"});
        let err = failed(&h.run("check", &cfg, API_KEY, &[], ""));
        assert!(
            err.contains("SendGrid has no custom field with id `e9_T`"),
            "{err}"
        );

        let mut cfg = config();
        cfg["list_ids"] = json!(["00000000-0000-4000-8000-000000000000"]);
        let err = failed(&h.run("check", &cfg, API_KEY, &[], ""));
        assert!(err.contains("SendGrid has no list"), "{err}");

        // A bad key fails delivery as a whole, as unauthorized.
        let err = failed(&h.run(
            "deliver",
            &config(),
            "SG.wrong-key",
            &["--action", "upsert"],
            &jsonl(&[json!({"key": "p", "fields": {"email": "a@example.com"}})]),
        ));
        assert!(err.contains("unauthorized"), "{err}");
        assert_eq!(h.fake.contact_count(), 0);
    }

    #[test]
    fn sendgrid_fake_refuses_what_sendgrid_refuses() {
        let fake = Fake::start_in_background(Setup::default());
        let a = fake.addr;
        let auth = format!("Bearer {API_KEY}");
        let json_h = |auth: &str| {
            vec![
                ("authorization", auth.to_string()),
                ("content-type", "application/json".to_string()),
            ]
        };
        let put = |headers: Vec<(&str, String)>, body: &Value| {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            raw(
                a,
                "PUT",
                "/v3/marketing/contacts",
                &h,
                body.to_string().as_bytes(),
            )
        };
        let post = |path: &str, body: &Value| {
            raw(
                a,
                "POST",
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string().as_bytes(),
            )
        };
        let one = json!({"contacts": [{"email": "a@example.com"}]});
        let expect = |resp: (u16, Vec<(String, String)>, Vec<u8>),
                      status: u16,
                      field: Option<&str>,
                      needle: &str| {
            assert_eq!(resp.0, status, "{}", String::from_utf8_lossy(&resp.2));
            let body = body_json(&resp.2);
            let errors = body["errors"].as_array().expect("SendGrid error shape");
            assert!(
                errors
                    .iter()
                    .any(|e| e["message"].as_str().unwrap_or("").contains(needle)
                        && field.is_none_or(|f| e["field"] == f)),
                "expected {field:?} / {needle} in {body}"
            );
        };

        // Auth first.
        let (s, _, b) = raw(
            a,
            "PUT",
            "/v3/marketing/contacts",
            &[("content-type", "application/json")],
            one.to_string().as_bytes(),
        );
        assert_eq!(s, 401);
        assert_eq!(
            body_json(&b),
            json!({"errors": [{"field": null, "message": "authorization required"}]})
        );
        expect(
            put(json_h("Bearer SG.nope"), &one),
            401,
            None,
            "authorization grant is invalid",
        );
        expect(
            put(json_h("Basic Zm9vOmJhcg=="), &one),
            401,
            None,
            "authorization grant is invalid",
        );

        // Body and limits.
        expect(
            put(vec![("authorization", auth.clone())], &one),
            400,
            None,
            "Content-Type should be application/json.",
        );
        expect(
            put(json_h(&auth), &json!({"contacts": []})),
            400,
            Some("contacts"),
            "at least 1 item",
        );
        expect(
            put(json_h(&auth), &json!({"list_ids": [LIST_ID]})),
            400,
            Some("contacts"),
            "contacts is required",
        );
        let many: Vec<Value> = (0..30_001)
            .map(|i| json!({"email": format!("u{i}@example.com")}))
            .collect();
        expect(
            put(json_h(&auth), &json!({"contacts": many})),
            400,
            Some("contacts"),
            "at most 30000 items",
        );
        let big =
            json!({"contacts": [{"email": "a@example.com", "first_name": "x".repeat(6_000_001)}]});
        expect(put(json_h(&auth), &big), 413, None, "content too large");
        expect(
            put(json_h(&auth), &json!({"contacts": [{"first_name": "Ada"}]})),
            400,
            Some("contacts[0]"),
            "at least one identifier",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"contacts": [{"email": "a@example.com"}, {"email": "ada at example.com"}]}),
            ),
            400,
            Some("contacts[1].email"),
            "Email address is invalid",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"contacts": [{"email": "a@example.com", "custom_fields": {"w1": "x"}}]}),
            ),
            400,
            Some("contacts[0].custom_fields"),
            "invalid custom field ids supplied - w1",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"contacts": [{"email": "a@example.com", "custom_fields": {"e2_N": "many"}}]}),
            ),
            400,
            Some("contacts[0].custom_fields.e2_N"),
            "Number",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"contacts": [{"email": "a@example.com", "plan": "pro"}]}),
            ),
            400,
            Some("contacts[0].plan"),
            "unknown field",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"list_ids": ["newsletter"], "contacts": [{"email": "a@example.com"}]}),
            ),
            400,
            Some("list_ids[0]"),
            "uuid",
        );
        expect(
            put(
                json_h(&auth),
                &json!({"contacts": [{"email": "a@example.com", "first_name": "x".repeat(51)}]}),
            ),
            400,
            Some("contacts[0].first_name"),
            "at most 50",
        );
        assert_eq!(fake.contact_count(), 0, "refused requests store nothing");

        // Accepted: 202 with a job id, rate-limit headers on every response.
        let (s, h, b) = put(
            json_h(&auth),
            &json!({"list_ids": [LIST_ID], "contacts": [{"email": "A@Example.com"}]}),
        );
        assert_eq!(s, 202);
        let job = body_json(&b)["job_id"].as_str().unwrap().to_string();
        assert!(header(&h, "x-ratelimit-reset").is_some());
        assert!(
            fake.contact("a@example.com").is_none(),
            "202 is queued: nothing stored before the job runs"
        );
        let get = |path: &str| raw(a, "GET", path, &[("authorization", auth.as_str())], b"");
        let (s, _, b) = get(&format!("/v3/marketing/contacts/imports/{job}"));
        assert_eq!(s, 200);
        let status = body_json(&b);
        assert_eq!(status["status"], "pending");
        assert_eq!(status["job_type"], "upsert_contacts");
        assert_eq!(status["results"], json!({"requested_count": 1}));
        let (_, _, b) = get(&format!("/v3/marketing/contacts/imports/{job}"));
        let status = body_json(&b);
        assert_eq!(status["status"], "completed");
        assert_eq!(status["results"]["created_count"], 1);
        assert_eq!(status["results"]["errored_count"], 0);
        assert!(status["finished_at"].is_string());
        assert_eq!(
            fake.contact("a@example.com").unwrap()["email"],
            "a@example.com"
        );
        assert_eq!(get("/v3/marketing/contacts/imports/no-such-job").0, 404);
        // Contacts refused inside the job: `errored` (some) or `failed` (all), with counts.
        fake.pending_polls(0);
        fake.fail_in_job("capped@example.com", "limit");
        let (_, _, b) = put(
            json_h(&auth),
            &json!({"contacts": [{"email": "capped@example.com"}, {"email": "ok@example.com"}]}),
        );
        let job = body_json(&b)["job_id"].as_str().unwrap().to_string();
        let (_, _, b) = get(&format!("/v3/marketing/contacts/imports/{job}"));
        let status = body_json(&b);
        assert_eq!(status["status"], "errored");
        assert_eq!(status["results"]["errored_count"], 1);
        assert!(status["results"]["errors_url"].is_string());
        assert!(fake.contact("capped@example.com").is_none());
        let (_, _, b) = put(
            json_h(&auth),
            &json!({"contacts": [{"email": "capped@example.com"}]}),
        );
        let job = body_json(&b)["job_id"].as_str().unwrap().to_string();
        let (_, _, b) = get(&format!("/v3/marketing/contacts/imports/{job}"));
        assert_eq!(body_json(&b)["status"], "failed");
        fake.hold_jobs(true);
        let (_, _, b) = put(
            json_h(&auth),
            &json!({"contacts": [{"email": "late@example.com"}]}),
        );
        let job = body_json(&b)["job_id"].as_str().unwrap().to_string();
        for _ in 0..3 {
            let (_, _, b) = get(&format!("/v3/marketing/contacts/imports/{job}"));
            assert_eq!(body_json(&b)["status"], "pending");
        }
        fake.hold_jobs(false);
        fake.pending_polls(1);

        // List membership removal: contact_ids required, unknown list or contact id 404.
        let owner = fake.seed_contact_with(
            "owner@example.com",
            &[LIST_ID],
            json!({"alternate_emails": ["alt@example.com"]}),
        );
        let del = |path: &str| raw(a, "DELETE", path, &[("authorization", auth.as_str())], b"");
        expect(
            del(&format!("/v3/marketing/lists/{LIST_ID}/contacts")),
            400,
            Some("contact_ids"),
            "required",
        );
        assert_eq!(
            del("/v3/marketing/lists/11111111-2222-4333-8444-555555555555/contacts?contact_ids=x")
                .0,
            404
        );
        assert_eq!(
            del(&format!(
                "/v3/marketing/lists/{LIST_ID}/contacts?contact_ids={owner},nope"
            ))
            .0,
            404
        );
        assert_eq!(
            fake.contact("owner@example.com").unwrap()["list_ids"],
            json!([LIST_ID])
        );
        let (s, _, b) = del(&format!(
            "/v3/marketing/lists/{LIST_ID}/contacts?contact_ids={owner}"
        ));
        assert_eq!(s, 202);
        assert!(body_json(&b)["job_id"].is_string());
        assert_eq!(
            fake.contact("owner@example.com").unwrap()["list_ids"],
            json!([])
        );
        // The lookup matches alternate emails too, returning the owner.
        let (s, _, b) = post(
            "/v3/marketing/contacts/search/emails",
            &json!({"emails": ["alt@example.com"]}),
        );
        assert_eq!(s, 200);
        assert_eq!(
            body_json(&b)["result"]["alt@example.com"]["contact"]["email"],
            "owner@example.com"
        );

        // Lookup and delete.
        expect(
            post(
                "/v3/marketing/contacts/search/emails",
                &json!({"emails": ["a@example.com", "bad@"]}),
            ),
            400,
            Some("emails[1]"),
            "invalid email",
        );
        let hundred_one: Vec<String> = (0..101).map(|i| format!("u{i}@example.com")).collect();
        expect(
            post(
                "/v3/marketing/contacts/search/emails",
                &json!({"emails": hundred_one}),
            ),
            400,
            Some("emails"),
            "between 1 and 100",
        );
        expect(
            post(
                "/v3/marketing/contacts/search/emails",
                &json!({"emails": ["nobody@example.com"]}),
            ),
            404,
            None,
            "No contacts found",
        );
        let (s, _, b) = post(
            "/v3/marketing/contacts/search/emails",
            &json!({"emails": ["A@example.com", "nobody@example.com"]}),
        );
        assert_eq!(s, 200);
        let found = body_json(&b);
        assert!(found["result"]["a@example.com"]["contact"]["id"].is_string());
        assert_eq!(
            found["result"]["nobody@example.com"]["error"],
            "contact not found"
        );
        let (s, _, b) = raw(
            a,
            "DELETE",
            "/v3/marketing/contacts",
            &[("authorization", auth.as_str())],
            b"",
        );
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));

        // Mail send.
        let mail = |p: Value| json!({"from": {"email": "shop@example.com"}, "template_id": TEMPLATE_ID, "personalizations": p});
        let to = |e: &str| json!({"to": [{"email": e}]});
        expect(
            post(
                "/v3/mail/send",
                &json!({"from": {"email": "shop@example.com"}, "template_id": TEMPLATE_ID}),
            ),
            400,
            Some("personalizations"),
            "personalization",
        );
        expect(
            post("/v3/mail/send", &mail(json!([]))),
            400,
            Some("personalizations"),
            "You must have at least one personalization.",
        );
        let thousand_one: Vec<Value> = (0..1001)
            .map(|i| to(&format!("u{i}@example.com")))
            .collect();
        expect(
            post("/v3/mail/send", &mail(json!(thousand_one))),
            400,
            Some("personalizations"),
            "limited to 1000 personalizations",
        );
        expect(
            post(
                "/v3/mail/send",
                &json!({"template_id": TEMPLATE_ID, "personalizations": [to("a@example.com")]}),
            ),
            400,
            Some("from"),
            "from object must be provided",
        );
        expect(
            post(
                "/v3/mail/send",
                &mail(json!([to("a@example.com"), to("A@example.com")])),
            ),
            400,
            None,
            "should only be included once",
        );
        expect(
            post(
                "/v3/mail/send",
                &mail(json!([to("a@example.com"), to("nope")])),
            ),
            400,
            Some("personalizations.1.to.0.email"),
            "Does not contain a valid address.",
        );
        let mut both = mail(json!([to("a@example.com")]));
        both["reply_to"] = json!({"email": "r@example.com"});
        both["reply_to_list"] = json!([{"email": "r@example.com"}]);
        expect(
            post("/v3/mail/send", &both),
            400,
            Some("reply_to"),
            "mutually exclusive",
        );
        let mut cats = mail(json!([to("a@example.com")]));
        cats["categories"] = json!((0..11).map(|i| format!("c{i}")).collect::<Vec<_>>());
        expect(
            post("/v3/mail/send", &cats),
            400,
            Some("categories"),
            "10 unique categories",
        );
        expect(
            post(
                "/v3/mail/send",
                &json!({"from": {"email": "shop@example.com"}, "personalizations": [to("a@example.com")], "subject": "",
                                            "content": [{"type": "text/plain", "value": "hi"}]}),
            ),
            400,
            Some("subject"),
            "The subject is required",
        );
        let mut unknown = mail(json!([to("a@example.com")]));
        unknown["template_id"] = json!("d-ffffffffffffffffffffffffffffffff");
        expect(
            post("/v3/mail/send", &unknown),
            400,
            Some("template_id"),
            "not a valid template ID",
        );
        assert!(fake.mails().is_empty(), "refused mail is not sent");
        let (s, h, b) = post("/v3/mail/send", &mail(json!([to("a@example.com")])));
        assert_eq!(s, 202, "{}", String::from_utf8_lossy(&b));
        assert!(b.is_empty());
        assert!(header(&h, "x-message-id").is_some());

        // Unknown paths and methods; throttling and failures.
        expect(
            raw(
                a,
                "GET",
                "/v3/nothing",
                &[("authorization", auth.as_str())],
                b"",
            ),
            404,
            None,
            "not found",
        );
        expect(
            raw(
                a,
                "GET",
                "/v3/mail/send",
                &[("authorization", auth.as_str())],
                b"",
            ),
            405,
            None,
            "method not allowed",
        );
        fake.throttle(1, 10);
        let (s, h, b) = put(json_h(&auth), &one);
        assert_eq!(s, 429);
        assert_eq!(
            body_json(&b),
            json!({"errors": [{"field": null, "message": "too many requests"}]})
        );
        assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
        let reset: u64 = header(&h, "x-ratelimit-reset").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            (now + 8..=now + 11).contains(&reset),
            "reset {reset} now {now}"
        );
        fake.fail_next(1);
        assert_eq!(put(json_h(&auth), &one).0, 500);
        assert_eq!(put(json_h(&auth), &one).0, 202);
        let _ = sendgrid_fake::valid_email("x@y.z");
    }
}

// ============================== Mailchimp ==============================

mod mailchimp {
    use super::mailchimp_fake::{subscriber_hash, Fake, Setup, API_KEY, LIST_ID};
    use super::*;

    struct Hub {
        dir: tempfile::TempDir,
        fake: Fake,
    }

    fn hub() -> Hub {
        let fake = Fake::start_in_background(Setup::default());
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "mailchimp");
        Hub { dir, fake }
    }

    impl Hub {
        /// Runs `plugin <command> mailchimp` with the fake standing in for the us14 datacenter
        /// (and for us2, so that a key of another datacenter reaches it too).
        fn run(
            &self,
            command: &str,
            config: &Value,
            key: &str,
            extra: &[&str],
            stdin: &str,
        ) -> Output {
            let us14 = format!("us14.api.mailchimp.com={}", self.fake.url());
            let us2 = format!("us2.api.mailchimp.com={}", self.fake.url());
            let secret = format!("api_key={key}");
            let config = config.to_string();
            let hp = self.fake.host_port();
            let mut args = vec![
                "plugin",
                command,
                "mailchimp",
                "--config",
                &config,
                "--secret",
                &secret,
                "--reroute",
                &us14,
                "--reroute",
                &us2,
                "--allow-private",
                &hp,
            ];
            args.extend_from_slice(extra);
            switchyard(self.dir.path(), &args, stdin)
        }

        fn deliver(&self, action: &str, config: &Value, records: &[Value]) -> (Vec<Value>, String) {
            let out = self.run(
                "deliver",
                config,
                API_KEY,
                &["--action", action],
                &jsonl(records),
            );
            let results = lines(&ok(&out));
            assert_eq!(results.len(), records.len(), "one result per record");
            (results, stderr(&out))
        }
    }

    fn config() -> Value {
        json!({"list_id": LIST_ID, "merge_fields": {"plan": "PLAN"}})
    }

    /// Neither the API key nor an email address (nor its subscriber hash) may be logged.
    fn assert_no_leaks(logs: &str, plugin_line: &str, emails: &[&str]) {
        assert!(
            logs.contains(plugin_line),
            "the plugin's debug line `{plugin_line}` is expected: {logs}"
        );
        assert!(!logs.contains(API_KEY), "the API key leaked: {logs}");
        assert!(
            !logs.contains("5f4dcc3b5aa765d61d8327deb882cf99"),
            "part of the API key leaked: {logs}"
        );
        for email in emails {
            assert!(
                !logs.to_lowercase().contains(&email.to_lowercase()),
                "{email} leaked: {logs}"
            );
            assert!(
                !logs.contains(&subscriber_hash(email)),
                "the hash of {email} leaked: {logs}"
            );
        }
    }

    #[test]
    fn mailchimp_batch_subscribe_lands_members_and_rejects_per_member_errors() {
        let h = hub();
        h.fake.seed_member("old@example.com", "subscribed");
        h.fake.seed_forgotten("erased@example.com");
        let records = vec![
            json!({"key": "p1", "fields": {"email": "Ada@Example.com", "first_name": "Ada", "last_name": "Lovelace",
                                           "plan": "pro", "tags": ["vip"], "phone": null}}),
            json!({"key": "p2", "fields": {"email": "bob@invalid"}}),
            json!({"key": "p3", "fields": {"email": "erased@example.com", "first_name": "E"}}),
            json!({"key": "p4", "fields": {"email": "old@example.com", "first_name": "Old"}}),
            json!({"key": "p5", "fields": {"email": "x@example.com", "favourite_colour": "blue"}}),
            // The same address again: it goes out in a second request.
            json!({"key": "p6", "fields": {"email": "ada@example.com", "BIRTHDAY": "12/10"}}),
            // A merge tag the audience does not have.
            json!({"key": "p7", "fields": {"email": "cy@example.com", "SHOESIZE": 44}}),
        ];
        let (results, logs) = h.deliver("upsert", &config(), &records);
        let r = |i: usize| {
            (
                results[i]["result"].as_str().unwrap().to_string(),
                results[i]["reason"].as_str().unwrap_or("").to_string(),
            )
        };
        assert_eq!(r(0).0, "ok", "{results:?}");
        assert_eq!(r(1), ("rejected".into(), "bob@invalid looks fake or invalid, please enter a real email address. (ERROR_GENERIC)".into()));
        assert_eq!(r(2).0, "rejected");
        assert!(
            r(2).1
                .contains("was permanently deleted and cannot be re-imported"),
            "{results:?}"
        );
        assert_eq!(r(3).0, "ok");
        assert_eq!(r(4).0, "rejected");
        assert!(r(4).1.contains("`favourite_colour`"));
        assert_eq!(r(5).0, "ok");
        assert_eq!(
            r(6),
            (
                "rejected".into(),
                "Your merge fields were invalid. SHOESIZE: no such merge field (ERROR_GENERIC)"
                    .into()
            )
        );

        let ada = h.fake.member("ada@example.com").expect("Ada is a member");
        assert_eq!(ada["id"], subscriber_hash("ada@example.com"));
        assert_eq!(ada["status"], "subscribed");
        assert_eq!(
            ada["merge_fields"],
            json!({"FNAME": "Ada", "LNAME": "Lovelace", "PLAN": "pro", "BIRTHDAY": "12/10"})
        );
        assert_eq!(ada["tags"][0]["name"], "vip");
        assert_eq!(
            h.fake.member("old@example.com").unwrap()["merge_fields"]["FNAME"],
            "Old"
        );
        assert!(h.fake.member("bob@invalid").is_none());
        assert!(h.fake.member("erased@example.com").is_none());

        let posts: Vec<_> = h
            .fake
            .seen()
            .into_iter()
            .filter(|s| s.method == "POST")
            .collect();
        assert_eq!(posts.len(), 2, "two requests: Ada twice cannot share one");
        assert_eq!(posts[0].uri, format!("/3.0/lists/{LIST_ID}"));
        let first: Value = serde_json::from_slice(&posts[0].body).unwrap();
        assert_eq!(first["update_existing"], true);
        assert_eq!(first["members"].as_array().unwrap().len(), 5);
        assert_eq!(first["members"][0]["email_address"], "Ada@Example.com");
        assert_eq!(first["members"][0]["status_if_new"], "subscribed");
        assert!(first["members"][0].get("status").is_none(), "{first}");
        assert_no_leaks(
            &logs,
            "batch subscribe: HTTP 200, 1 created, 1 updated, 3 errors",
            &[
                "ada@example.com",
                "bob@invalid",
                "erased@example.com",
                "old@example.com",
            ],
        );
    }

    /// C1: the default batch upsert leaves every existing member's status as it is:
    /// unsubscribed and cleaned members are not resubscribed (and not refused every run), pending
    /// members are not pushed past double opt-in; their merge fields still update.
    #[test]
    fn mailchimp_batch_upsert_never_changes_an_existing_members_status() {
        let h = hub();
        for (email, status) in [
            ("left@example.com", "unsubscribed"),
            ("bounced@example.com", "cleaned"),
            ("unconfirmed@example.com", "pending"),
            ("fan@example.com", "subscribed"),
        ] {
            h.fake.seed_member(email, status);
        }
        let records: Vec<Value> = [
            "left@example.com",
            "bounced@example.com",
            "unconfirmed@example.com",
            "fan@example.com",
            "new@example.com",
        ]
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"key": format!("p{i}"), "fields": {"email": e, "first_name": "Up", "plan": "pro"}}))
        .collect();
        for via in ["batch", "member"] {
            let mut cfg = config();
            cfg["upsert_via"] = json!(via);
            let (results, _) = h.deliver("upsert", &cfg, &records);
            assert!(
                results.iter().all(|r| r["result"] == "ok"),
                "{via}: {results:?}"
            );
            let status = |e: &str| h.fake.member(e).unwrap()["status"].clone();
            assert_eq!(status("left@example.com"), "unsubscribed", "{via}");
            assert_eq!(status("bounced@example.com"), "cleaned", "{via}");
            assert_eq!(status("unconfirmed@example.com"), "pending", "{via}");
            assert_eq!(status("fan@example.com"), "subscribed", "{via}");
            assert_eq!(status("new@example.com"), "subscribed", "{via}");
            assert_eq!(
                h.fake.member("left@example.com").unwrap()["merge_fields"]["PLAN"],
                "pro"
            );
        }
    }

    /// C1: what Mailchimp refuses for compliance reads per member as a rejection with
    /// Mailchimp's own message; the rest of the batch lands.
    #[test]
    fn mailchimp_compliance_refusals_are_rejected_per_member_with_mailchimps_message() {
        let h = hub();
        h.fake.seed_member("left@example.com", "unsubscribed");
        h.fake.seed_forgotten("erased@example.com");
        let records = vec![
            // The record itself asks to resubscribe an unsubscribed member.
            json!({"key": "p1", "fields": {"email": "left@example.com", "status": "subscribed"}}),
            json!({"key": "p2", "fields": {"email": "erased@example.com"}}),
            json!({"key": "p3", "fields": {"email": "ok@example.com"}}),
        ];
        let (results, _) = h.deliver("upsert", &config(), &records);
        assert_eq!(results[0]["result"], "rejected", "{results:?}");
        assert_eq!(
            results[0]["reason"],
            "left@example.com is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed. (ERROR_GENERIC)"
        );
        assert_eq!(results[1]["result"], "rejected");
        assert!(results[1]["reason"]
            .as_str()
            .unwrap()
            .contains("permanently deleted"));
        assert_eq!(results[2]["result"], "ok");
        assert_eq!(
            h.fake.member("left@example.com").unwrap()["status"],
            "unsubscribed"
        );

        let mut cfg = config();
        cfg["upsert_via"] = json!("member");
        let (results, _) = h.deliver("upsert", &cfg, &records);
        assert_eq!(results[0]["result"], "rejected", "{results:?}");
        assert_eq!(
            results[0]["reason"],
            "HTTP 400: Member In Compliance State: left@example.com is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."
        );
        assert_eq!(results[1]["result"], "rejected");
        assert!(results[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 400: Forgotten Email Not Subscribed: "));
        assert_eq!(results[2]["result"], "ok");
    }

    /// New members of a double opt-in audience are added `pending` (Mailchimp mails the
    /// confirmation) unless the config names a status.
    #[test]
    fn mailchimp_new_members_are_pending_when_the_audience_has_double_opt_in() {
        let fake = Fake::start_in_background(Setup {
            double_optin: true,
            ..Setup::default()
        });
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "mailchimp");
        let h = Hub { dir, fake };
        let (results, _) = h.deliver(
            "upsert",
            &config(),
            &[json!({"key": "p", "fields": {"email": "new@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(
            h.fake.member("new@example.com").unwrap()["status"],
            "pending"
        );
        let mut cfg = config();
        cfg["status"] = json!("subscribed");
        let (results, _) = h.deliver(
            "upsert",
            &cfg,
            &[json!({"key": "p", "fields": {"email": "named@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(
            h.fake.member("named@example.com").unwrap()["status"],
            "subscribed"
        );
    }

    #[test]
    fn mailchimp_member_mode_puts_by_subscriber_hash_and_keeps_existing_status() {
        let h = hub();
        h.fake.seed_member("left@example.com", "unsubscribed");
        let mut cfg = config();
        cfg["upsert_via"] = json!("member");
        cfg["status"] = json!("pending");
        let records = vec![
            json!({"key": "p1", "fields": {"email": "New@Example.com", "first_name": "New"}}),
            json!({"key": "p2", "fields": {"email": "left@example.com", "first_name": "Left"}}),
            json!({"key": "p3", "fields": {"email": "forced@example.com", "status": "subscribed"}}),
            json!({"key": "p4", "fields": {"email": "nope"}}),
        ];
        let (results, logs) = h.deliver("upsert", &cfg, &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(results[1]["result"], "ok");
        assert_eq!(results[2]["result"], "ok");
        assert_eq!(results[3]["result"], "rejected");
        assert_eq!(results[3]["reason"], "HTTP 400: Invalid Resource: nope looks fake or invalid, please enter a real email address.");
        assert_eq!(
            h.fake.member("new@example.com").unwrap()["status"],
            "pending"
        );
        let left = h.fake.member("left@example.com").unwrap();
        assert_eq!(
            left["status"], "unsubscribed",
            "status_if_new leaves existing members alone"
        );
        assert_eq!(left["merge_fields"]["FNAME"], "Left");
        assert_eq!(
            h.fake.member("forced@example.com").unwrap()["status"],
            "subscribed"
        );

        let puts: Vec<_> = h
            .fake
            .seen()
            .into_iter()
            .filter(|s| s.method == "PUT")
            .collect();
        assert_eq!(
            puts[0].uri,
            format!(
                "/3.0/lists/{LIST_ID}/members/{}",
                subscriber_hash("new@example.com")
            )
        );
        let body: Value = serde_json::from_slice(&puts[0].body).unwrap();
        assert_eq!(body["status_if_new"], "pending");
        assert!(body.get("status").is_none(), "{body}");
        assert_no_leaks(
            &logs,
            "upserted 4 members one by one",
            &["new@example.com", "left@example.com"],
        );
    }

    #[test]
    fn mailchimp_delete_archives_or_permanently_deletes() {
        let h = hub();
        h.fake.seed_member("a@example.com", "subscribed");
        h.fake.seed_member("b@example.com", "subscribed");
        let records = vec![
            json!({"key": "p1", "fields": {"email": "A@example.com"}}),
            json!({"key": "p2", "fields": {"email": "never@example.com"}}),
            json!({"key": "p3", "fields": {"first_name": "no email"}}),
        ];
        let (results, logs) = h.deliver("delete", &config(), &records);
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(
            results[1]["result"], "ok",
            "an unknown member is already gone"
        );
        assert_eq!(results[2]["result"], "rejected");
        assert_eq!(
            h.fake.member("a@example.com").unwrap()["status"],
            "archived"
        );
        let seen = h.fake.seen();
        assert_eq!(seen[0].method, "DELETE");
        assert_eq!(
            seen[0].uri,
            format!(
                "/3.0/lists/{LIST_ID}/members/{}",
                subscriber_hash("a@example.com")
            )
        );
        assert_no_leaks(
            &logs,
            "delete (Archive): 1 removed, 1 already absent",
            &["a@example.com", "never@example.com"],
        );

        let mut cfg = config();
        cfg["delete_mode"] = json!("permanent");
        let (results, _) = h.deliver(
            "delete",
            &cfg,
            &[json!({"key": "p", "fields": {"email": "b@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok");
        assert!(h.fake.member("b@example.com").is_none());
        assert!(h.fake.is_forgotten("b@example.com"));
        let last = h.fake.seen().pop().unwrap();
        assert_eq!(
            last.uri,
            format!(
                "/3.0/lists/{LIST_ID}/members/{}/actions/delete-permanent",
                subscriber_hash("b@example.com")
            )
        );
        // Unsubscribe mode: the member stays, unsubscribed.
        h.fake.seed_member("c@example.com", "subscribed");
        let mut cfg = config();
        cfg["delete_mode"] = json!("unsubscribe");
        let (results, _) = h.deliver(
            "delete",
            &cfg,
            &[json!({"key": "p", "fields": {"email": "c@example.com"}})],
        );
        assert_eq!(results[0]["result"], "ok", "{results:?}");
        assert_eq!(
            h.fake.member("c@example.com").unwrap()["status"],
            "unsubscribed"
        );
        assert_eq!(h.fake.seen().pop().unwrap().method, "PATCH");

        // Permanently deleted addresses cannot be re-imported.
        let (results, _) = h.deliver(
            "upsert",
            &config(),
            &[json!({"key": "p", "fields": {"email": "b@example.com"}})],
        );
        assert_eq!(results[0]["result"], "rejected");
    }

    #[test]
    fn mailchimp_429_and_500_are_retried() {
        let h = hub();
        let records = vec![
            json!({"key": "p1", "fields": {"email": "a@example.com"}}),
            json!({"key": "p2", "fields": {"email": "b@example.com"}}),
        ];
        // Mailchimp sends no wait hint: the hub backs off on its own.
        h.fake.throttle(1, None);
        let (results, _) = h.deliver("upsert", &config(), &records);
        for r in &results {
            assert_eq!(r["result"], "retry", "{results:?}");
            assert!(r["after_ms"].is_null());
            assert_eq!(r["reason"], "HTTP 429: Too Many Requests: You have exceeded the limit of 10 simultaneous connections.");
        }
        // A Retry-After, when present, is honoured.
        h.fake.throttle(1, Some(7));
        let (results, _) = h.deliver("delete", &config(), &records);
        assert_eq!(results[0]["result"], "retry");
        assert_eq!(results[0]["after_ms"], 7000);
        assert_eq!(
            results[1]["result"], "retry",
            "the rest of the batch waits too"
        );
        assert_eq!(
            h.fake
                .seen()
                .iter()
                .filter(|s| s.method == "DELETE")
                .count(),
            1
        );
        h.fake.fail_next(1);
        let mut cfg = config();
        cfg["upsert_via"] = json!("member");
        let (results, _) = h.deliver("upsert", &cfg, &records);
        assert_eq!(results[0]["result"], "retry");
        assert_eq!(results[1]["result"], "retry");
        assert_eq!(h.fake.member_count(), 0);
        let (results, _) = h.deliver("upsert", &config(), &records);
        assert!(results.iter().all(|r| r["result"] == "ok"), "{results:?}");
        assert_eq!(h.fake.member_count(), 2);
    }

    #[test]
    fn mailchimp_check_pings_and_finds_the_audience() {
        let h = hub();
        let out = ok(&h.run("check", &config(), API_KEY, &[], ""));
        assert!(out.contains("check passed"), "{out}");
        let seen: Vec<String> = h
            .fake
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.uri))
            .collect();
        assert_eq!(
            seen,
            vec![
                "GET /3.0/ping".to_string(),
                format!("GET /3.0/lists/{LIST_ID}?fields=id,name")
            ]
        );

        let err = failed(&h.run(
            "check",
            &config(),
            "00000000000000000000000000000000-us14",
            &[],
            "",
        ));
        assert!(
            err.contains("unauthorized") && err.contains("API Key Invalid"),
            "{err}"
        );
        // A key of another datacenter goes to that datacenter, which does not know it.
        let err = failed(&h.run(
            "check",
            &config(),
            "5f4dcc3b5aa765d61d8327deb882cf99-us2",
            &[],
            "",
        ));
        assert!(err.contains("wrong datacenter"), "{err}");
        // A key without its datacenter never leaves the sandbox.
        let before = h.fake.seen().len();
        let err = failed(&h.run(
            "check",
            &config(),
            "5f4dcc3b5aa765d61d8327deb882cf99",
            &[],
            "",
        ));
        assert!(err.contains("must end in its datacenter"), "{err}");
        assert!(!err.contains("5f4dcc3b5aa765d61d8327deb882cf99"), "{err}");
        assert_eq!(h.fake.seen().len(), before);

        let err = failed(&h.run("check", &json!({"list_id": "ffffffffff"}), API_KEY, &[], ""));
        assert!(
            err.contains("Mailchimp has no audience `ffffffffff`"),
            "{err}"
        );

        let err = failed(&h.run(
            "deliver",
            &config(),
            "00000000000000000000000000000000-us14",
            &["--action", "upsert"],
            &jsonl(&[json!({"key": "p", "fields": {"email": "a@example.com"}})]),
        ));
        assert!(err.contains("unauthorized"), "{err}");
        assert_eq!(h.fake.member_count(), 0);
    }

    #[test]
    fn mailchimp_fake_refuses_what_mailchimp_refuses() {
        use base64::Engine;
        let fake = Fake::start_in_background(Setup::default());
        let a = fake.addr;
        let basic = |key: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("anystring:{key}"))
            )
        };
        let auth = basic(API_KEY);
        let send = |method: &str, path: &str, body: &Value| {
            raw(
                a,
                method,
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string().as_bytes(),
            )
        };
        let expect = |resp: (u16, Vec<(String, String)>, Vec<u8>),
                      status: u16,
                      title: &str,
                      needle: &str| {
            assert_eq!(resp.0, status, "{}", String::from_utf8_lossy(&resp.2));
            assert_eq!(
                header(&resp.1, "content-type"),
                Some("application/problem+json; charset=utf-8")
            );
            let body = body_json(&resp.2);
            assert_eq!(body["title"], title, "{body}");
            assert_eq!(body["status"], status);
            assert!(body["type"]
                .as_str()
                .unwrap()
                .starts_with("https://mailchimp.com/developer/"));
            assert!(
                body.to_string().contains(needle),
                "expected {needle} in {body}"
            );
        };
        let list = format!("/3.0/lists/{LIST_ID}");
        let member = |email: &str| format!("{list}/members/{}", subscriber_hash(email));

        // Auth.
        expect(
            raw(a, "GET", "/3.0/ping", &[], b""),
            401,
            "API Key Missing",
            "did not include an API key",
        );
        expect(
            raw(
                a,
                "GET",
                "/3.0/ping",
                &[("authorization", basic("wrong-us14").as_str())],
                b"",
            ),
            401,
            "API Key Invalid",
            "wrong datacenter",
        );
        expect(
            raw(
                a,
                "GET",
                "/3.0/ping",
                &[("authorization", format!("Bearer {API_KEY}").as_str())],
                b"",
            ),
            401,
            "API Key Missing",
            "API key",
        );
        let (s, _, b) = raw(
            a,
            "GET",
            "/3.0/ping",
            &[("authorization", auth.as_str())],
            b"",
        );
        assert_eq!(
            (s, body_json(&b)),
            (200, json!({"health_status": "Everything's Chimpy!"}))
        );

        // Batch subscribe: schema and limits refuse the whole request.
        let members = |n: usize| {
            (0..n).map(|i| json!({"email_address": format!("u{i}@example.com"), "status": "subscribed"})).collect::<Vec<_>>()
        };
        expect(
            send(
                "POST",
                &list,
                &json!({"members": members(501), "update_existing": true}),
            ),
            400,
            "Invalid Resource",
            "more than 500 items",
        );
        expect(
            send("POST", &list, &json!({"update_existing": true})),
            400,
            "Invalid Resource",
            "members",
        );
        // A new batch member with neither status nor status_if_new is that member's error.
        let (s, _, b) = send(
            "POST",
            &list,
            &json!({"members": [{"email_address": "a@example.com"}]}),
        );
        assert_eq!(s, 200);
        assert!(
            body_json(&b)["errors"][0]["error"]
                .as_str()
                .unwrap()
                .contains("status_if_new"),
            "{}",
            String::from_utf8_lossy(&b)
        );
        expect(
            send(
                "POST",
                &list,
                &json!({"members": [{"email_address": "a@example.com", "status_if_new": "gone"}]}),
            ),
            400,
            "Invalid Resource",
            "members.item:0.status_if_new",
        );
        expect(
            send(
                "POST",
                &list,
                &json!({"members": [{"email_address": "a@example.com", "status": "archived"}]}),
            ),
            400,
            "Invalid Resource",
            "not in enum",
        );
        expect(
            raw(
                a,
                "POST",
                &list,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                b"{not json",
            ),
            400,
            "JSON Parse Error",
            "parsing",
        );
        expect(
            send(
                "POST",
                "/3.0/lists/ffffffffff",
                &json!({"members": members(1)}),
            ),
            404,
            "Resource Not Found",
            "could not be found",
        );
        assert_eq!(fake.member_count(), 0);
        // Per-member errors come back with 200.
        fake.seed_forgotten("gone@example.com");
        fake.seed_member("old@example.com", "subscribed");
        let (s, _, b) = send(
            "POST",
            &list,
            &json!({"members": [
            {"email_address": "ok@example.com", "status": "subscribed", "merge_fields": {"FNAME": "Ok"}},
            {"email_address": "bad@nowhere", "status": "subscribed"},
            {"email_address": "gone@example.com", "status": "subscribed"},
            {"email_address": "old@example.com", "status": "subscribed"},
            {"email_address": "tag@example.com", "status": "subscribed", "merge_fields": {"NOPE": "x"}}]}),
        );
        assert_eq!(s, 200);
        let answer = body_json(&b);
        assert_eq!(answer["total_created"], 1);
        assert_eq!(answer["error_count"], 4);
        let errors = answer["errors"].as_array().unwrap();
        assert_eq!(errors[0]["email_address"], "bad@nowhere");
        assert!(errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("looks fake or invalid"));
        assert!(errors[1]["error"]
            .as_str()
            .unwrap()
            .contains("permanently deleted"));
        assert_eq!(
            errors[2]["error_code"], "ERROR_CONTACT_EXISTS",
            "update_existing defaults to false"
        );
        assert!(errors[3]["error"]
            .as_str()
            .unwrap()
            .contains("merge fields were invalid"));
        assert_eq!(
            answer["new_members"][0]["id"],
            subscriber_hash("ok@example.com")
        );

        // Add or update by subscriber hash.
        expect(
            send(
                "PUT",
                &member("other@example.com"),
                &json!({"email_address": "new@example.com", "status_if_new": "subscribed"}),
            ),
            400,
            "Invalid Resource",
            "doesn't match the URL",
        );
        expect(
            send(
                "PUT",
                &member("new@example.com"),
                &json!({"email_address": "new@example.com"}),
            ),
            400,
            "Invalid Resource",
            "status_if_new",
        );
        expect(
            send(
                "PUT",
                &member("new@example.com"),
                &json!({"email_address": "new@example.com", "status_if_new": "gone"}),
            ),
            400,
            "Invalid Resource",
            "not in enum",
        );
        expect(
            send(
                "PUT",
                &member("gone@example.com"),
                &json!({"email_address": "gone@example.com", "status_if_new": "subscribed"}),
            ),
            400,
            "Forgotten Email Not Subscribed",
            "cannot be re-imported",
        );
        expect(
            send(
                "PUT",
                &member("x@y"),
                &json!({"email_address": "x@y", "status_if_new": "subscribed"}),
            ),
            400,
            "Invalid Resource",
            "looks fake or invalid",
        );
        let (s, _, b) = send(
            "PUT",
            &member("New@Example.com"),
            &json!({"email_address": "New@Example.com", "status_if_new": "pending"}),
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(body_json(&b)["id"], subscriber_hash("new@example.com"));
        assert_eq!(body_json(&b)["status"], "pending");
        let (s, _, _) = send(
            "PUT",
            &member("old@example.com"),
            &json!({"email_address": "old@example.com"}),
        );
        assert_eq!(s, 200, "existing members need no status_if_new");

        // Compliance state: unsubscribed/cleaned members are not resubscribed, by PUT, PATCH
        // or batch; unsubscribed → pending is allowed; status_if_new never touches them.
        fake.seed_member("left@example.com", "unsubscribed");
        fake.seed_member("bounced@example.com", "cleaned");
        for (email, status) in [
            ("left@example.com", "subscribed"),
            ("bounced@example.com", "subscribed"),
            ("bounced@example.com", "pending"),
        ] {
            let body = json!({"email_address": email, "status": status});
            expect(
                send("PUT", &member(email), &body),
                400,
                "Member In Compliance State",
                "is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed.",
            );
            expect(
                send("PATCH", &member(email), &json!({"status": status})),
                400,
                "Member In Compliance State",
                "cannot be subscribed",
            );
        }
        let (s, _, b) = send(
            "POST",
            &list,
            &json!({"members": [{"email_address": "left@example.com", "status": "subscribed"},
                                {"email_address": "bounced@example.com", "status_if_new": "subscribed"}],
                    "update_existing": true}),
        );
        assert_eq!(s, 200);
        let answer = body_json(&b);
        assert_eq!(answer["error_count"], 1, "{answer}");
        assert!(answer["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("compliance state"));
        assert_eq!(answer["total_updated"], 1);
        assert_eq!(
            fake.member("left@example.com").unwrap()["status"],
            "unsubscribed"
        );
        assert_eq!(
            fake.member("bounced@example.com").unwrap()["status"],
            "cleaned"
        );
        let (s, _, _) = send(
            "PUT",
            &member("left@example.com"),
            &json!({"email_address": "left@example.com", "status": "pending"}),
        );
        assert_eq!(s, 200);
        assert_eq!(
            fake.member("left@example.com").unwrap()["status"],
            "pending"
        );
        // The API itself lets pending become subscribed: clients must not send it.
        let (s, _, _) = send(
            "PATCH",
            &member("left@example.com"),
            &json!({"status": "subscribed"}),
        );
        assert_eq!(s, 200);
        expect(
            send(
                "PATCH",
                &member("nobody@example.com"),
                &json!({"status": "unsubscribed"}),
            ),
            404,
            "Resource Not Found",
            "could not be found",
        );

        // Archive and permanent delete.
        assert_eq!(
            send("DELETE", &member("old@example.com"), &json!({})).0,
            204
        );
        expect(
            send("DELETE", &member("old@example.com"), &json!({})),
            404,
            "Resource Not Found",
            "could not be found",
        );
        expect(
            send("GET", &member("old@example.com"), &json!({})),
            404,
            "Resource Not Found",
            "could not be found",
        );
        assert_eq!(
            send(
                "POST",
                &format!("{}/actions/delete-permanent", member("ok@example.com")),
                &json!({})
            )
            .0,
            204
        );
        assert!(fake.is_forgotten("ok@example.com"));
        expect(
            send("PATCH", "/3.0/ping", &json!({})),
            405,
            "Method Not Allowed",
            "not compatible",
        );

        // Knobs.
        fake.throttle(1, None);
        let (s, h, b) = send("GET", "/3.0/ping", &json!({}));
        assert_eq!(s, 429);
        assert_eq!(body_json(&b)["title"], "Too Many Requests");
        assert!(header(&h, "retry-after").is_none() && header(&h, "x-ratelimit-reset").is_none());
        fake.throttle(1, Some(3));
        assert_eq!(
            header(&send("GET", "/3.0/ping", &json!({})).1, "retry-after"),
            Some("3")
        );
        fake.fail_next(1);
        assert_eq!(send("GET", "/3.0/ping", &json!({})).0, 500);
        assert_eq!(send("GET", "/3.0/ping", &json!({})).0, 200);
    }
}

// ============================== syncs through the hub ==============================

mod syncs {
    //! Both plugins driven by real syncs of a running hub: profiles and events in through the
    //! tracking API, `switchyard sync run`, run history and dead letters from the CLI.

    use std::time::{Duration, Instant};

    use super::common::hub::{run_counts, Db, Hub};
    use super::mailchimp_fake::{self, subscriber_hash};
    use super::sendgrid_fake;
    use super::*;

    const VIP: &str = "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n";

    #[test]
    fn sendgrid_sync_mirrors_an_audience_mails_events_backs_off_and_dead_letters_rejections() {
        let fake = sendgrid_fake::Fake::start_in_background(sendgrid_fake::Setup::default());
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.newsletter]\nplugin = \"sendgrid\"\n\
             config = {{ list_ids = [\"{list}\"], custom_fields = {{ plan = \"e1_T\" }}, template_id = \"{template}\", from_email = \"orders@shop.example.com\" }}\n\
             secrets = {{ api_key = \"${{SENDGRID_API_KEY}}\" }}\n\
             reroute = [\"api.sendgrid.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
             [[syncs]]\nname = \"vip-to-sendgrid\"\nfrom = {{ audience = \"vip\" }}\nto = \"newsletter\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\nplan = \"traits.plan\"\n\n\
             [[syncs]]\nname = \"order-confirmations\"\nfrom = {{ events = \"Order Completed\" }}\nto = \"newsletter\"\nmode = \"events\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nname = \"traits.first_name\"\nevent = \"event.name\"\norder_id = \"event.properties.order_id\"\n",
            list = sendgrid_fake::LIST_ID,
            template = sendgrid_fake::TEMPLATE_ID,
        );
        let env = [
            ("SWITCHYARD_RETRY_BASE_MS", "50"),
            ("SENDGRID_API_KEY", sendgrid_fake::API_KEY),
        ];
        let hub = Hub::start_project(Db::Sqlite, "", &project, &env);
        hub.install(&["sendgrid"]);
        hub.identify(
            "u1",
            json!({"email": "Ada@Example.com", "first_name": "Ada", "plan": "pro"}),
        );
        hub.identify(
            "u2",
            json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"}),
        );
        hub.identify("u3", json!({"email": "cy@example.com", "plan": "free"}));
        let r = hub.track(
            "track",
            json!({"userId": "u3", "event": "Order Completed", "properties": {"order_id": "o-1"}}),
        );
        assert_eq!(r.status, 200);
        let ordered = Instant::now();

        // 429 with X-RateLimit-Reset: the run waits for the reset and completes.
        fake.throttle(1, 1);
        let r = hub.run_sync("vip-to-sendgrid");
        assert_eq!(run_counts(&r), ("succeeded", 2, 2, 0), "{r}");
        let ada = fake.contact("ada@example.com").expect("Ada upserted");
        assert_eq!(ada["first_name"], "Ada");
        assert_eq!(ada["custom_fields"], json!({"e1_T": "pro"}));
        assert_eq!(ada["list_ids"], json!([sendgrid_fake::LIST_ID]));
        assert!(fake.contact("bob@example.com").is_some());
        assert!(
            fake.contact("cy@example.com").is_none(),
            "not in the audience"
        );

        // SendGrid refuses one contact of the request: dead-lettered with SendGrid's message.
        hub.identify(
            "u4",
            json!({"email": "dee@example.com", "first_name": "N".repeat(51), "plan": "pro"}),
        );
        hub.identify(
            "u5",
            json!({"email": "eve@example.com", "first_name": "Eve", "plan": "pro"}),
        );
        let r = hub.run_sync("vip-to-sendgrid");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-sendgrid");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            dead[0]["error"],
            "rejected: HTTP 400: first_name: must be at most 50 characters"
        );
        assert!(fake.contact("dee@example.com").is_none());
        assert_eq!(
            fake.contact("eve@example.com").unwrap()["first_name"],
            "Eve"
        );

        // The import job refuses one contact: dead-lettered naming the job, not "stored".
        fake.fail_in_job("fay@example.com", "contact limit of the plan reached");
        hub.identify(
            "u6",
            json!({"email": "fay@example.com", "first_name": "Fay", "plan": "pro"}),
        );
        let r = hub.run_sync("vip-to-sendgrid");
        assert_eq!(run_counts(&r), ("completed_with_errors", 0, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-sendgrid");
        assert!(
            dead.iter().any(|d| d["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("rejected: SendGrid's import job"))),
            "{dead:?}"
        );

        // Mirror: leaving the audience takes the contact off the synced list; it stays in
        // SendGrid.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-sendgrid");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        let bob = fake
            .contact("bob@example.com")
            .expect("Bob kept in SendGrid");
        assert_eq!(bob["list_ids"], json!([]));
        assert!(fake.contact("ada@example.com").is_some());

        // Events: each Order Completed becomes one dynamic-template mail.
        std::thread::sleep(Duration::from_millis(2200).saturating_sub(ordered.elapsed()));
        let r = hub.run_sync("order-confirmations");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        let mails = fake.mails();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert_eq!(mails[0]["template_id"], sendgrid_fake::TEMPLATE_ID);
        let p = &mails[0]["personalizations"][0];
        assert_eq!(p["to"], json!([{"email": "cy@example.com"}]));
        assert_eq!(p["dynamic_template_data"]["order_id"], "o-1");
    }

    #[test]
    fn mailchimp_sync_mirrors_an_audience_backs_off_and_dead_letters_rejections() {
        let fake = mailchimp_fake::Fake::start_in_background(mailchimp_fake::Setup::default());
        let hp = fake.host_port();
        let project = format!(
            "{VIP}\n[destinations.newsletter]\nplugin = \"mailchimp\"\n\
             config = {{ list_id = \"{list}\", merge_fields = {{ plan = \"PLAN\" }} }}\n\
             secrets = {{ api_key = \"{key}\" }}\n\
             reroute = [\"{dc}.api.mailchimp.com=http://{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 100\n\n\
             [[syncs]]\nname = \"vip-to-mailchimp\"\nfrom = {{ audience = \"vip\" }}\nto = \"newsletter\"\nmode = \"mirror\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nfirst_name = \"traits.first_name\"\nplan = \"traits.plan\"\n",
            list = mailchimp_fake::LIST_ID,
            key = mailchimp_fake::API_KEY,
            dc = mailchimp_fake::DC,
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            "",
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "50")],
        );
        hub.install(&["mailchimp"]);
        hub.identify(
            "u1",
            json!({"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}),
        );
        hub.identify(
            "u2",
            json!({"email": "bob@example.com", "first_name": "Bob", "plan": "pro"}),
        );
        hub.identify("u3", json!({"email": "cy@example.com", "plan": "free"}));

        // Mailchimp's 429 carries no wait hint: the hub backs off on its own and completes.
        fake.throttle(1, None);
        let r = hub.run_sync("vip-to-mailchimp");
        assert_eq!(run_counts(&r), ("succeeded", 2, 2, 0), "{r}");
        let ada = fake.member("ada@example.com").expect("Ada subscribed");
        assert_eq!(ada["id"], subscriber_hash("ada@example.com"));
        assert_eq!(ada["status"], "subscribed");
        assert_eq!(ada["merge_fields"]["FNAME"], "Ada");
        assert_eq!(ada["merge_fields"]["PLAN"], "pro");
        assert_eq!(fake.member_count(), 2);

        // A per-member error of the batch call: that member is dead-lettered, the other lands.
        fake.seed_forgotten("gone@example.com");
        hub.identify("u4", json!({"email": "gone@example.com", "plan": "pro"}));
        hub.identify("u5", json!({"email": "eve@example.com", "plan": "pro"}));
        let r = hub.run_sync("vip-to-mailchimp");
        assert_eq!(run_counts(&r), ("completed_with_errors", 1, 0, 1), "{r}");
        let dead = hub.dead_letters("vip-to-mailchimp");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("rejected: ") && error.contains("permanently deleted"),
            "{error}"
        );
        assert!(fake.member("eve@example.com").is_some());

        // Mirror: leaving the audience archives the member.
        hub.identify("u2", json!({"plan": "free"}));
        let r = hub.run_sync("vip-to-mailchimp");
        assert_eq!(run_counts(&r), ("succeeded", 1, 0, 0), "{r}");
        assert_eq!(
            fake.member("bob@example.com").unwrap()["status"],
            "archived"
        );
        assert_eq!(
            fake.member("ada@example.com").unwrap()["status"],
            "subscribed"
        );
    }
}
