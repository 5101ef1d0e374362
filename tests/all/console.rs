//! The web console and the access it shares with the admin API, end to end: the real
//! `switchyard serve` with named tokens of each role.

use crate::common;

use crate::fakes::json_sink::{Faults, JsonSink};
use common::hub::{Db, Hub, ADMIN_TOKEN};
use serde_json::json;
use std::time::{Duration, Instant};

pub const VIEWER_TOKEN: &str = "viewer-secret-token";
pub const OPERATOR_TOKEN: &str = "operator-secret-token";

/// `[hub.tokens.*]` with a viewer and an operator beside `admin_token`.
pub fn tokens() -> String {
    format!(
        "\n[hub.tokens.vic]\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n\
         [hub.tokens.ops]\ntoken = \"{OPERATOR_TOKEN}\"\nrole = \"operator\"\n"
    )
}

fn call(hub: &Hub, method: &str, path: &str, token: Option<&str>) -> common::hub::HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    hub.request(method, path, &headers, b"")
}

/// Every admin route, with the least role it needs.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/profiles/email:ada@example.com", "viewer"),
    ("GET", "/v1/profiles/email:ada@example.com/traits", "viewer"),
    ("GET", "/v1/profiles/email:ada@example.com/events", "viewer"),
    ("GET", "/v1/profiles/email:ada@example.com/merges", "viewer"),
    ("DELETE", "/v1/profiles/email:nobody@example.com", "admin"),
    ("GET", "/v1/syncs", "viewer"),
    ("POST", "/v1/syncs/nightly/run", "operator"),
    ("POST", "/v1/syncs/nightly/run?dry_run=true", "operator"),
    (
        "POST",
        "/v1/syncs/nightly/run?approve_removals=true",
        "operator",
    ),
    ("GET", "/v1/syncs/nightly/runs", "viewer"),
    ("GET", "/v1/dead-letters", "viewer"),
    ("POST", "/v1/dead-letters/replay?sync=nightly", "operator"),
    ("GET", "/v1/sources", "viewer"),
    ("POST", "/v1/sources/billing/run", "operator"),
    ("GET", "/v1/sources/billing/runs", "viewer"),
    ("GET", "/v1/sources/billing/cursors", "viewer"),
    ("GET", "/v1/audit", "operator"),
    ("GET", "/v1/erasures", "admin"),
    ("GET", "/v1/erasures/no-such-erasure", "admin"),
];

#[test]
fn console_admin_routes_refuse_missing_wrong_and_lesser_tokens() {
    let hub = Hub::start_with(Db::Sqlite, &tokens());
    hub.identify("u-1", json!({"email": "ada@example.com"}));
    let role_token = |role: &str| match role {
        "viewer" => VIEWER_TOKEN,
        "operator" => OPERATOR_TOKEN,
        _ => ADMIN_TOKEN,
    };
    for (method, path, need) in ROUTES {
        let r = call(&hub, method, path, None);
        assert_eq!(
            r.status,
            401,
            "{method} {path} without a token: {}",
            r.text()
        );
        let r = call(&hub, method, path, Some("not-a-token"));
        assert_eq!(
            r.status,
            401,
            "{method} {path} with a wrong token: {}",
            r.text()
        );
        assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
        for below in ["viewer", "operator"] {
            if (below, *need) == ("viewer", "viewer") || below == "operator" && *need != "admin" {
                continue;
            }
            let r = call(&hub, method, path, Some(role_token(below)));
            assert_eq!(r.status, 403, "{method} {path} as {below}: {}", r.text());
            assert_eq!(
                r.json()["error"],
                format!(
                    "the token `{}` has the role {below}; this needs {need}",
                    if below == "viewer" { "vic" } else { "ops" }
                )
            );
        }
        // The role it needs, and every role above, gets past the check (an unknown sync or
        // source is then a 404, which is not an access answer).
        for role in ["viewer", "operator", "admin"]
            .iter()
            .skip_while(|r| *r != need)
        {
            let r = call(&hub, method, path, Some(role_token(role)));
            assert!(
                ![401, 403].contains(&r.status),
                "{method} {path} as {role}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Refused state-changing calls are in the audit log, named by token and role.
    let log = call(&hub, "GET", "/v1/audit?limit=1000", Some(ADMIN_TOKEN)).json();
    let denied: Vec<_> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["role"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        denied.contains(&"vic viewer POST /v1/syncs/nightly/run".to_string()),
        "{denied:?}"
    );
    assert!(
        denied.contains(&"ops operator DELETE /v1/profiles/email:nobody@example.com".to_string()),
        "{denied:?}"
    );
    assert!(
        !denied.iter().any(|d| d.contains("GET")),
        "reads are not audited: {denied:?}"
    );
}

#[test]
fn console_viewer_sees_profiles_masked_and_admin_erase_is_audited() {
    let hub = Hub::start_with(Db::Sqlite, &tokens());
    hub.identify(
        "u-7",
        json!({"email": "ada@example.com", "name": "Ada", "plan": "pro"}),
    );
    let as_viewer = call(
        &hub,
        "GET",
        "/v1/profiles/email:ada@example.com",
        Some(VIEWER_TOKEN),
    )
    .json();
    let as_admin = call(
        &hub,
        "GET",
        "/v1/profiles/email:ada@example.com",
        Some(ADMIN_TOKEN),
    )
    .json();
    assert_eq!(as_viewer["id"], as_admin["id"]);
    assert_eq!(as_admin["traits"]["email"], "ada@example.com");
    assert_eq!(as_viewer["traits"]["email"], "a•••@example.com");
    assert_eq!(as_viewer["traits"]["name"], "A•••");
    assert_eq!(
        as_viewer["traits"]["plan"], "pro",
        "non-personal traits stay readable"
    );
    assert!(
        !as_viewer.to_string().contains("ada@example.com"),
        "{as_viewer}"
    );
    assert!(!as_viewer.to_string().contains("u-7"), "{as_viewer}");

    let id = as_admin["id"].as_str().unwrap().to_string();
    let r = call(
        &hub,
        "DELETE",
        "/v1/profiles/email:ada@example.com",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = call(&hub, "GET", "/v1/audit", Some(OPERATOR_TOKEN)).json();
    let first = &log["entries"][0];
    assert_eq!(first["actor"], "admin");
    assert_eq!(first["role"], "admin");
    assert_eq!(first["action"], "profile.erase");
    assert_eq!(first["target"], format!("profile:{id}"));
    assert_eq!(first["outcome"], "ok");
    assert!(
        !log.to_string().contains("ada@example.com"),
        "the log keeps no erased identifier"
    );
}

#[test]
fn console_tokens_that_clash_stop_the_hub_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[hub]\nadmin_token = \"{ADMIN_TOKEN}\"\n[hub.tokens.ops]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"operator\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("`admin` and `ops` have the same token"),
        "{text}"
    );
}

/// Signs in to the console over plain HTTP; returns the session cookie (`name=value`).
pub fn sign_in(hub: &Hub, token: &str) -> String {
    let body = format!("token={token}&next=%2Fconsole");
    let r = hub.request(
        "POST",
        "/console/sign-in",
        &[("content-type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split(';').next().unwrap().to_string()
}

#[test]
fn console_stream_page_counts_follows_live_and_replays_dead_letters() {
    let sink = JsonSink::start();
    sink.set_faults(Faults {
        error: 1.0,
        ..Default::default()
    });
    let project = format!(
        "{}\n[[streams]]\nname = \"ticks\"\nto = \"sink\"\nmax_attempts = 1\n",
        destination("sink", &sink)
    );
    let mut hub = Hub::start_project(
        Db::Sqlite,
        &tokens(),
        &project,
        &[("SWITCHYARD_RETRY_BASE_MS", "20")],
    );
    hub.install(&["json-post-destination"]);
    // Installed after the start: restart so the stream finds its plugin at once.
    hub.kill();
    hub.spawn();
    for i in 0..2 {
        let r = hub.track(
            "track",
            json!({"userId": format!("u{i}"), "event": "Tick", "messageId": format!("m{i}"),
                   "properties": {"email": "ada@example.com"}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    eventually("both dead-lettered", || {
        hub.dead_letters("stream:ticks").len() == 2
    });

    let viewer = sign_in(&hub, VIEWER_TOKEN);
    let list = page(&hub, "/console/streams", &viewer);
    assert!(list.contains("href=\"/console/streams/ticks\""), "{list}");
    let seen = page(&hub, "/console/streams/ticks", &viewer);
    assert!(
        seen.contains("2 messages or records could not be forwarded"),
        "{seen}"
    );
    assert!(seen.contains("refused record"), "{seen}");
    assert!(
        !seen.contains("ada@example.com"),
        "a viewer sees the letters masked"
    );
    assert!(!seen.contains("Replay now"), "a viewer cannot replay");
    assert!(
        seen.contains("data-stream=\"/console/streams/ticks/tail\""),
        "{seen}"
    );

    // Live: the page's stream shows a message as the stream forwards it.
    sink.set_faults(Faults::default());
    let live = std::net::TcpStream::connect(&hub.addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = live.try_clone().unwrap();
    std::io::Write::write_all(
        &mut writer,
        format!(
            "GET /console/streams/ticks/tail HTTP/1.1\r\nhost: {}\r\ncookie: {viewer}\r\n\r\n",
            hub.addr
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(live);
    let mut line = String::new();
    // The headers, then the first events once the subscription is in place.
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let sent = Instant::now();
    let r = hub.track(
        "track",
        json!({"userId": "u9", "event": "Tick", "messageId": "m-live"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut event = String::new();
    while sent.elapsed() < Duration::from_secs(20) {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("m-live") {
            event = line.clone();
            break;
        }
    }
    assert!(event.starts_with("data: "), "an SSE message: {event:?}");
    let v: serde_json::Value = serde_json::from_str(event["data: ".len()..].trim()).unwrap();
    assert_eq!(v["outcome"], "forwarded", "{v}");
    assert_eq!(v["type"], "track", "{v}");
    assert_eq!(v["name"], "Tick", "{v}");

    // An operator replays the two letters from the page; they arrive and the list is empty.
    let ops = sign_in(&hub, OPERATOR_TOKEN);
    let before = page(&hub, "/console/streams/ticks", &ops);
    assert!(before.contains("Replay now"), "{before}");
    let r = post_form(
        &hub,
        "/console/streams/ticks/replay",
        &ops,
        &format!("csrf={}", csrf_of(&before)),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let keys: Vec<String> = sink.with(|s| s.events.iter().map(|e| e.0.clone()).collect());
    for k in ["m0", "m1", "m-live"] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
    }
    let after = page(&hub, "/console/streams/ticks", &ops);
    assert!(
        after.contains("None: everything this stream took"),
        "{after}"
    );
    let audit = call(&hub, "GET", "/v1/audit", Some(ADMIN_TOKEN)).text();
    assert!(audit.contains("stream:ticks"), "{audit}");
}

/// The CSRF token in a console page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[test]
fn console_pages_need_a_session_and_send_a_strict_policy() {
    let hub = Hub::start_with(Db::Sqlite, &tokens());
    // Signed out: pages send you to sign in (and back), assets are public.
    let r = hub.request("GET", "/console/syncs", &[], b"");
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/console/sign-in?next=%2Fconsole%2Fsyncs")
    );
    let r = hub.request("GET", "/console/sign-in", &[], b"");
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'")
            && csp.contains("default-src 'none'")
            && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!r.text().contains("<script>"), "no inline script");
    assert_eq!(
        hub.request("GET", "/console/assets/console.js", &[], b"")
            .status,
        200
    );
    // A wrong token does not sign in.
    let r = hub.request(
        "POST",
        "/console/sign-in",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"token=nope",
    );
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().contains("error=1"));
    assert!(r.header("set-cookie").is_none());
    // A forged cookie is no session.
    let r = hub.request(
        "GET",
        "/console",
        &[("cookie", "switchyard_session=admin.99999999999999.00")],
        b"",
    );
    assert_eq!(r.status, 303);

    // Every page answers to a viewer, with the policy header.
    let cookie = sign_in(&hub, VIEWER_TOKEN);
    for path in [
        "/console",
        "/console/live",
        "/console/profiles",
        "/console/audiences",
        "/console/audiences/editor?filter=traits.plan%20%3D%3D%20%22pro%22",
        "/console/syncs",
        "/console/sources",
        "/console/plugins",
    ] {
        let r = hub.request("GET", path, &[("cookie", &cookie)], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.header("content-security-policy").is_some(), "{path}");
        assert!(r.text().contains("vic"), "{path} names who is signed in");
    }
    // The audit log needs an operator.
    assert_eq!(
        hub.request("GET", "/console/audit", &[("cookie", &cookie)], b"")
            .status,
        403
    );
    // A filter that does not compile is explained.
    let r = hub.request(
        "GET",
        "/console/audiences/editor?filter=traits.plan%20%3D%3D",
        &[("cookie", &cookie)],
        b"",
    );
    assert!(r.text().contains("does not compile"), "{}", r.text());
}

#[test]
fn console_forms_need_the_csrf_token_and_the_role() {
    let hub = Hub::start_with(Db::Sqlite, &tokens());
    hub.identify("u-9", json!({"email": "grace@example.com"}));
    let profile = call(
        &hub,
        "GET",
        "/v1/profiles/email:grace@example.com",
        Some(ADMIN_TOKEN),
    )
    .json();
    let id = profile["id"].as_str().unwrap().to_string();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    // A viewer sees the profile masked and no erase form; posting it anyway is refused.
    let viewer = sign_in(&hub, VIEWER_TOKEN);
    let page = hub
        .request(
            "GET",
            &format!("/console/profiles/{id}"),
            &[("cookie", &viewer)],
            b"",
        )
        .text();
    assert!(
        page.contains("g•••@example.com") && !page.contains("grace@example.com"),
        "{page}"
    );
    assert!(!page.contains("Erase profile"));
    let csrf = csrf_of(&page);
    let body = format!("csrf={csrf}&confirm=erase");
    let r = hub.request(
        "POST",
        &format!("/console/profiles/{id}/erase"),
        &[form[0], ("cookie", &viewer)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403);

    // An admin without the right CSRF token, or from another origin, is refused too.
    let admin = sign_in(&hub, ADMIN_TOKEN);
    let page = hub
        .request(
            "GET",
            &format!("/console/profiles/{id}"),
            &[("cookie", &admin)],
            b"",
        )
        .text();
    assert!(page.contains("grace@example.com") && page.contains("Erase profile"));
    let csrf = csrf_of(&page);
    let r = hub.request(
        "POST",
        &format!("/console/profiles/{id}/erase"),
        &[form[0], ("cookie", &admin)],
        b"csrf=forged&confirm=erase",
    );
    assert_eq!(r.status, 403);
    let body = format!("csrf={csrf}&confirm=erase");
    let r = hub.request(
        "POST",
        &format!("/console/profiles/{id}/erase"),
        &[
            form[0],
            ("cookie", &admin),
            ("origin", "https://evil.example"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403);
    // Without the confirmation word nothing is erased.
    let r = hub.request(
        "POST",
        &format!("/console/profiles/{id}/erase"),
        &[form[0], ("cookie", &admin)],
        format!("csrf={csrf}&confirm=no").as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(hub.profile("email:grace@example.com").is_some());
    // With both it is, and the audit log says who.
    let r = hub.request(
        "POST",
        &format!("/console/profiles/{id}/erase"),
        &[form[0], ("cookie", &admin)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(hub.profile("email:grace@example.com").is_none());
    let log = call(&hub, "GET", "/v1/audit", Some(ADMIN_TOKEN)).json();
    let entries = log["entries"].as_array().unwrap();
    let erase = entries
        .iter()
        .find(|e| e["action"] == "profile.erase" && e["outcome"] == "ok")
        .expect("the erase");
    assert_eq!(erase["actor"], "admin");
    assert_eq!(erase["target"], format!("profile:{id}"));
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "vic" && e["outcome"] == "denied"),
        "{log}"
    );
}

/// A `json-post-destination` posting to `sink`.
fn destination(name: &str, sink: &JsonSink) -> String {
    format!(
        "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"{}\" }}\n\
         allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 1000\n",
        sink.url(),
        hp = sink.host_port()
    )
}

/// A console page's HTML, read with a session cookie; it must answer 200.
fn page(hub: &Hub, path: &str, cookie: &str) -> String {
    let r = hub.request("GET", path, &[("cookie", cookie)], b"");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.text()
}

/// Posts a console form with a session cookie.
fn post_form(hub: &Hub, path: &str, cookie: &str, body: &str) -> common::hub::HttpResponse {
    hub.request(
        "POST",
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", cookie),
        ],
        body.as_bytes(),
    )
}

/// What the page's script re-reads (its first `data-refresh`), if it re-reads anything.
fn refresh_of(page: &str) -> Option<String> {
    let at = page.find("data-refresh=\"")? + 14;
    Some(page[at..].split('"').next()?.replace("&amp;", "&"))
}

/// The text (tags dropped, entities decoded) of a page from `start` (in or at a tag) to the
/// first `end` after it.
fn text_of(page: &str, start: &str, end: &str) -> String {
    let Some(at) = page.find(start) else {
        return String::new();
    };
    let rest = &page[at..];
    let html = &rest[..rest.find(end).unwrap_or(rest.len())];
    let mut out = String::new();
    let mut in_tag = true;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Follows a page the way its script does, re-reading `data-refresh` until the page stops
/// asking for it; every text `watch` picked out while `busy` was on the page, and the last page.
fn follow(
    hub: &Hub,
    cookie: &str,
    mut refresh: String,
    busy: &str,
    watch: impl Fn(&str) -> String,
) -> (Vec<String>, String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let fresh = page(hub, &refresh, cookie);
        if fresh.contains(busy) {
            seen.push(watch(&fresh));
        }
        match refresh_of(&fresh) {
            Some(next) => refresh = next,
            None => return (seen, fresh),
        }
        assert!(
            Instant::now() < deadline,
            "the page never stopped following: {fresh}"
        );
        std::thread::sleep(Duration::from_millis(60));
    }
}

#[test]
fn console_sync_page_follows_its_run_live_and_shows_a_dry_run_plan() {
    // One record a call, 400 ms each: a run of 4 records takes a moment to watch.
    let sink = JsonSink::start();
    sink.set_faults(Faults {
        delay: Duration::from_millis(400),
        ..Default::default()
    });
    let project = format!(
        "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\n\n{}concurrency = 1\n\n\
         [[syncs]]\nname = \"vip-to-crm\"\nfrom = {{ audience = \"vip\" }}\nto = \"crm\"\nmode = \"mirror\"\nbatch_size = 1\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\nplan = \"traits.plan\"\n",
        destination("crm", &sink)
    );
    let hub = Hub::start_project(Db::Sqlite, &tokens(), &project, &[]);
    hub.install(&["json-post-destination"]);
    for i in 0..4 {
        hub.identify(
            &format!("p{i}"),
            json!({"email": format!("p{i}@example.com"), "plan": "pro"}),
        );
    }
    let ops = sign_in(&hub, OPERATOR_TOKEN);
    let before = page(&hub, "/console/syncs/vip-to-crm", &ops);
    assert_eq!(refresh_of(&before), None, "nothing to follow yet");
    let csrf = csrf_of(&before);

    // A dry run: what a run would send, with samples (personal data masked below admin), and
    // nothing sent.
    let r = post_form(
        &hub,
        "/console/syncs/vip-to-crm/run",
        &ops,
        &format!("csrf={csrf}&what=dry_run"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let plan = r.text();
    assert!(plan.contains("Nothing was sent"), "{plan}");
    assert!(
        plan.contains(r#"<h2>Adds</h2><p class="big">4</p>"#),
        "{plan}"
    );
    assert!(
        plan.contains(r#"<h2>Removals</h2><p class="big">0</p>"#),
        "{plan}"
    );
    let samples = text_of(&plan, "<h2>Sample adds</h2>", "</section>");
    assert!(samples.contains("p•••@example.com"), "{samples}");
    assert!(samples.contains("\"plan\": \"pro\""), "{samples}");
    assert!(
        !plan.contains("p0@example.com"),
        "masked below admin: {plan}"
    );
    assert!(sink.records().is_empty(), "a dry run sends nothing");

    // Run now: the page follows the run it asked for, its counters moving while it goes, and
    // stops once it has finished.
    let r = post_form(
        &hub,
        "/console/syncs/vip-to-crm/run",
        &ops,
        &format!("csrf={csrf}&what=run"),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with("/console/syncs/vip-to-crm?started="),
        "{location}"
    );
    let refresh = refresh_of(&page(&hub, &location, &ops)).expect("the page follows the run");
    assert!(
        refresh.starts_with("/console/syncs/vip-to-crm?fragment=runs&started="),
        "{refresh}"
    );
    let (running, last) = follow(&hub, &ops, refresh, r#"data-status="running""#, |p| {
        text_of(p, r#"data-status="running""#, "</tr>")
    });
    let distinct: std::collections::BTreeSet<_> = running.iter().collect();
    assert!(
        distinct.len() >= 2,
        "the running run's row changes as it goes: {running:?}"
    );
    assert!(running.iter().all(|r| r.contains("running")), "{running:?}");
    let newest = text_of(&last, "<tbody>", "</tr>");
    assert!(newest.contains("succeeded"), "{newest}");
    assert!(!last.contains("a run is going"), "{last}");
    assert_eq!(sink.records().len(), 4);
}

#[test]
fn console_source_page_runs_now_and_follows_the_run() {
    // One record a page, 300 ms a page.
    let fake = crate::sources_hub::json_fake(4);
    fake.delay(300);
    let hub = Hub::start_project(
        Db::Sqlite,
        &tokens(),
        &crate::sources_hub::json_source(&fake, 1),
        &[],
    );
    hub.install(&["http-json"]);

    let viewer = sign_in(&hub, VIEWER_TOKEN);
    let seen = page(&hub, "/console/sources/members", &viewer);
    assert!(seen.contains("No runs yet"), "{seen}");
    assert!(!seen.contains("Run now"), "no button for a viewer");

    let ops = sign_in(&hub, OPERATOR_TOKEN);
    let before = page(&hub, "/console/sources/members", &ops);
    assert!(before.contains("Run now") && before.contains("No stream has been read yet"));
    assert_eq!(refresh_of(&before), None);
    let r = post_form(
        &hub,
        "/console/sources/members/run",
        &ops,
        &format!("csrf={}&what=run", csrf_of(&before)),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with("/console/sources/members?started="),
        "{location}"
    );
    let refresh = refresh_of(&page(&hub, &location, &ops)).expect("the page follows the run");
    let (running, last) = follow(&hub, &ops, refresh, "a run is going", |p| {
        text_of(p, r#"id="runs""#, "</tbody>")
    });
    let distinct: std::collections::BTreeSet<_> = running.iter().collect();
    assert!(
        distinct.len() >= 2,
        "pages and records count up while it reads: {running:?}"
    );
    let runs = text_of(&last, r#"id="runs""#, "</section>");
    assert!(runs.contains("succeeded"), "{runs}");
    let cursors = text_of(&last, r#"id="cursors""#, "</section>");
    assert!(
        cursors.contains("records") && cursors.contains("yes"),
        "{cursors}"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 4);
    let log = call(&hub, "GET", "/v1/audit", Some(ADMIN_TOKEN)).json();
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "source.run"
                && e["actor"] == "ops"
                && e["target"] == "members"),
        "{log}"
    );
}

/// Waits until `done()`, for up to a minute.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn console_and_api_replay_dead_letters_by_one_path() {
    let sink = JsonSink::start();
    let failing = || {
        sink.set_faults(Faults {
            error: 1.0,
            ..Default::default()
        })
    };
    failing();
    let project = format!(
        "{}\n[[syncs]]\nname = \"everyone\"\nfrom = \"all\"\nto = \"ads\"\nmode = \"upsert\"\nmax_attempts = 1\n\
         [syncs.mapping]\nemail = \"identifiers.email\"\n",
        destination("ads", &sink)
    );
    let hub = Hub::start_project(
        Db::Sqlite,
        &tokens(),
        &project,
        &[("SWITCHYARD_RETRY_BASE_MS", "20")],
    );
    hub.install(&["json-post-destination"]);
    let idle = || {
        let runs = call(&hub, "GET", "/v1/syncs/everyone/runs", Some(ADMIN_TOKEN)).json();
        runs["runs"][0]["status"] != "running"
    };
    for i in 0..2 {
        hub.identify(
            &format!("a{i}"),
            json!({"email": format!("a{i}@example.com")}),
        );
    }
    hub.run_sync("everyone");
    assert_eq!(hub.dead_letters("everyone").len(), 2);

    // Through the API: marked, and the run that sends them again started.
    sink.set_faults(Faults::default());
    let r = call(
        &hub,
        "POST",
        "/v1/dead-letters/replay?sync=everyone",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["replayed"], 2);
    assert_eq!(r.json()["run"], "started");
    eventually("the API's replay delivering", || sink.records().len() == 2);
    eventually("the run finishing", idle);
    assert!(hub.dead_letters("everyone").is_empty());
    // Nothing left to replay: nothing runs.
    let r = call(
        &hub,
        "POST",
        "/v1/dead-letters/replay?sync=everyone",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["replayed"], 0);

    // Through the console: the same.
    failing();
    hub.identify("a2", json!({"email": "a2@example.com"}));
    hub.run_sync("everyone");
    sink.set_faults(Faults::default());
    let ops = sign_in(&hub, OPERATOR_TOKEN);
    let before = page(&hub, "/console/syncs/everyone", &ops);
    assert!(
        before.contains("1 records could not be delivered"),
        "{before}"
    );
    let r = post_form(
        &hub,
        "/console/syncs/everyone/replay",
        &ops,
        &format!("csrf={}", csrf_of(&before)),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(location.contains("?started="), "{location}");
    eventually("the console's replay delivering", || {
        sink.records().len() == 3
    });
    eventually("the run finishing", idle);
    let after = page(&hub, "/console/syncs/everyone", &ops);
    assert!(after.contains("None: every record"), "{after}");

    // One audit trail for both: the replay, then the run it started.
    let log = call(&hub, "GET", "/v1/audit", Some(ADMIN_TOKEN)).json();
    let entries = log["entries"].as_array().unwrap();
    for actor in ["admin", "ops"] {
        let of = |action: &str, outcome: &str| {
            entries
                .iter()
                .any(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
        };
        assert!(of("dead_letters.replay", "ok"), "{actor}: {log}");
        assert!(
            entries.iter().any(|e| e["actor"] == actor
                && e["action"] == "sync.run"
                && e["detail"] == "after replay"),
            "{actor}: {log}"
        );
    }
}

/// The console in a real browser: Debian's chromium, headless, driven through chromedriver over
/// the W3C WebDriver protocol. Both are installed by `tools/setup-clients` (`.ci/run` runs it);
/// without them the test fails saying so. Screenshots go to `docs/screenshots/`.
///
/// The WebDriver client is the dozen commands below over the tests' own HTTP client rather than
/// a crate (fantoccini was tried: its TLS and hyper features change the features of crates the
/// hub shares, which rebuilds wasmtime and sqlx for every test build).
mod browser {
    use super::*;

    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use serde_json::Value;

    /// chromedriver on a free port; killed on drop.
    struct Driver {
        child: Child,
        addr: String,
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn driver() -> Driver {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "the console's browser tests need {tool}: run tools/setup-clients (as .ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// The W3C key of an element reference.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// One browser session.
    struct Browser {
        driver: String,
        session: String,
    }

    impl Browser {
        fn open(driver: &Driver) -> Browser {
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,1000", "--hide-scrollbars"]
                }
            }}});
            let v = command(&driver.addr, "POST", "/session", Some(caps))
                .expect("a chromium session through chromedriver");
            Browser {
                driver: driver.addr.clone(),
                session: v["sessionId"].as_str().unwrap().to_string(),
            }
        }

        fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
            command(
                &self.driver,
                method,
                &format!("/session/{}{path}", self.session),
                body,
            )
        }

        fn goto(&self, url: &str) {
            self.cmd("POST", "/url", Some(json!({ "url": url })))
                .unwrap();
        }

        fn refresh(&self) {
            self.cmd("POST", "/refresh", Some(json!({}))).unwrap();
        }

        fn find(&self, css: &str) -> Option<String> {
            self.cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()
            .and_then(|v| v[ELEMENT].as_str().map(str::to_string))
        }

        fn text(&self, css: &str) -> Option<String> {
            let e = self.find(css)?;
            self.cmd("GET", &format!("/element/{e}/text"), None)
                .ok()?
                .as_str()
                .map(str::to_string)
        }

        fn click(&self, css: &str) {
            let e = self
                .find(css)
                .unwrap_or_else(|| panic!("no {css} on the page"));
            self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
                .unwrap();
        }

        fn type_into(&self, css: &str, text: &str) {
            let e = self
                .find(css)
                .unwrap_or_else(|| panic!("no {css} on the page"));
            self.cmd(
                "POST",
                &format!("/element/{e}/value"),
                Some(json!({ "text": text })),
            )
            .unwrap();
        }

        fn delete_cookies(&self) {
            self.cmd("DELETE", "/cookie", None).unwrap();
        }

        fn shot(&self, name: &str) {
            use base64::Engine as _;
            let v = self.cmd("GET", "/screenshot", None).unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            std::fs::write(shots().join(format!("console-{name}.png")), png).unwrap();
        }

        /// Waits until the element at `css` contains `text`, reloading the page between looks
        /// when `reload` (for what the page's script does not follow by itself).
        fn wait_text(&self, css: &str, text: &str, reload: bool) -> String {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let seen = self.text(css);
                if let Some(t) = &seen {
                    if t.contains(text) {
                        return t.clone();
                    }
                }
                if Instant::now() >= deadline {
                    let url = self.cmd("GET", "/url", None).unwrap_or_default();
                    let source = self.cmd("GET", "/source", None).unwrap_or_default();
                    panic!(
                        "`{text}` never appeared in {css}: {seen:?}\nat {url}:\n{}",
                        source.as_str().unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(300));
                if reload {
                    self.refresh();
                }
            }
        }

        fn sign_in(&self, hub: &Hub, token: &str) {
            self.goto(&format!("http://{}/console", hub.addr));
            self.type_into("#token", token);
            self.click("form button[type=submit]");
            self.wait_text("nav.side", "Overview", false);
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.cmd("DELETE", "", None);
        }
    }

    /// One WebDriver command; its `value`, or the error chromedriver answered.
    fn command(
        driver: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        use std::io::{Read, Write};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        // Starting a browser on a busy machine can take a while: a long read timeout.
        let mut stream =
            std::net::TcpStream::connect(driver).map_err(|e| format!("chromedriver: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(180)))
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {driver}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open whatever the request says: read the head, then
        // exactly Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let split = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("chromedriver: {e}"))?;
            if n == 0 {
                return Err("chromedriver closed the connection".into());
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let length: usize = String::from_utf8_lossy(&raw[..split])
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            })
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or("no Content-Length from chromedriver")?;
        while raw.len() < split + 4 + length {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("chromedriver: {e}"))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let status: u16 = String::from_utf8_lossy(&raw[9..12])
            .parse()
            .map_err(|_| "bad status line")?;
        let v: Value = serde_json::from_slice(&raw[split + 4..])
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&raw)))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {status} {}", v["value"]))
        }
    }

    fn shots() -> PathBuf {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn console_in_a_browser_operates_the_hub() {
        let sink = JsonSink::start();
        let events = JsonSink::start();
        let flaky = JsonSink::start();
        flaky.set_faults(Faults {
            error: 1.0,
            ..Default::default()
        });
        let project = format!(
            "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\ndescription = \"Paying customers\"\n\n{}\n{}\n\
             [[syncs]]\nname = \"vip-to-crm\"\nfrom = {{ audience = \"vip\" }}\nto = \"crm\"\nmode = \"mirror\"\nmax_removals = \"20%\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nplan = \"traits.plan\"\n\n\
             [[syncs]]\nname = \"everyone-to-ads\"\nfrom = \"all\"\nto = \"ads\"\nmode = \"upsert\"\nmax_attempts = 1\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\n\n{}\n\
             [[streams]]\nname = \"tracks-to-warehouse\"\nto = \"warehouse\"\nfilter = \"event.type == 'track'\"\n",
            destination("crm", &sink),
            destination("ads", &flaky),
            destination("warehouse", &events),
        );
        let hub = Hub::start_project(
            Db::Sqlite,
            &tokens(),
            &project,
            &[("SWITCHYARD_RETRY_BASE_MS", "20")],
        );
        hub.install(&["json-post-destination"]);
        for i in 0..10 {
            hub.identify(
                &format!("c{i}"),
                json!({"email": format!("c{i}@example.com"), "plan": "pro"}),
            );
        }
        let driver = driver();
        {
            let c = Browser::open(&driver);
            let base = format!("http://{}", hub.addr);

            // Sign in (the sign-in page first, for its screenshot).
            c.goto(&format!("{base}/console/sign-in"));
            c.shot("sign-in");
            c.sign_in(&hub, OPERATOR_TOKEN);

            // An event sent to the tracking API appears on the live page.
            c.goto(&format!("{base}/console/live"));
            c.wait_text("#live-status", "Listening", false);
            hub.track("identify", json!({"userId": "ada-1", "traits": {"email": "ada@example.com", "plan": "pro", "name": "Ada"}}));
            hub.track("track", json!({"userId": "ada-1", "event": "Viewed Pricing", "properties": {"plan": "pro"}}));
            hub.track("track", json!({"event": "No Identity"}));
            c.wait_text("#live", "Viewed Pricing", false);
            let live = c.wait_text("#live", "refused", false);
            assert!(live.contains("identify"), "{live}");
            assert!(
                !live.contains("ada-1"),
                "an operator sees ids masked: {live}"
            );
            c.click("#live li.event details summary");
            c.shot("live");

            // A stream's page: its counts, and what it forwards and drops, live.
            c.goto(&format!("{base}/console/streams/tracks-to-warehouse"));
            c.wait_text("#live-status", "Listening", false);
            hub.track(
                "identify",
                json!({"userId": "ada-1", "traits": {"plan": "pro"}}),
            );
            hub.track(
                "track",
                json!({"userId": "ada-1", "event": "Order Completed", "properties": {"total": 42}}),
            );
            let live = c.wait_text("#live", "Order Completed", false);
            assert!(live.contains("forwarded"), "{live}");
            c.wait_text("#live", "dropped", false);
            c.click("#live li.event details summary");
            c.shot("stream");

            // Run the audience's sync now and watch the run finish.
            c.goto(&format!("{base}/console/syncs/vip-to-crm"));
            c.click("button[value=run]");
            c.wait_text("#runs", "succeeded", false);
            assert_eq!(sink.records().len(), 11);
            c.shot("sync");

            // Find the profile and see the audience it joined.
            c.goto(&format!("{base}/console/profiles"));
            c.type_into("#q", "email:ada@example.com");
            c.click("form.search button");
            let page = c.wait_text("main", "Identifiers", false);
            assert!(
                page.contains("vip"),
                "the profile page lists its audience: {page}"
            );
            assert!(page.contains("Viewed Pricing"), "{page}");
            assert!(
                !page.contains("ada@example.com"),
                "masked for an operator: {page}"
            );
            assert!(
                c.find("button.danger").is_none(),
                "no erase button below admin"
            );
            c.click("ul.tags a");
            c.wait_text("#audience-size", "11", false);

            // A viewer, in a second browser: sees everything, with no button to press.
            let v = Browser::open(&driver);
            v.sign_in(&hub, VIEWER_TOKEN);

            // The guardrail stops a run that would remove half the audience; approve it.
            for i in 0..6 {
                hub.identify(&format!("c{i}"), json!({"plan": "free"}));
            }
            c.goto(&format!("{base}/console/syncs/vip-to-crm"));
            c.click("button[value=run]");
            c.wait_text("main", "The guardrail stopped the last run", true);
            c.shot("guardrail");
            v.goto(&format!("{base}/console/syncs/vip-to-crm"));
            v.wait_text("main", "An operator can approve these removals", false);
            assert!(
                v.find("main form button").is_none(),
                "a viewer gets no run or approve button"
            );
            c.click("button[value=approve]");
            c.wait_text("#runs tbody tr:first-child", "succeeded", false);
            assert_eq!(sink.records().len(), 5);

            // The audience's page draws its size over time: 11, then 5.
            c.goto(&format!("{base}/console/audiences/vip"));
            c.wait_text("#audience-size", "5", false);
            let history = c.wait_text("#size-history", "5 members now", false);
            assert!(history.contains("11 on"), "{history}");
            assert!(c.find("#size-history svg path.line").is_some(), "a chart");
            c.shot("audience");

            // A run into a failing destination dead-letters its records; replay them once it
            // is healthy.
            c.goto(&format!("{base}/console/syncs/everyone-to-ads"));
            c.click("button[value=run]");
            let letters = c.wait_text("#dead-letters", "records could not be delivered", true);
            assert!(letters.contains("11 records"), "{letters}");
            c.shot("dead-letters");
            v.goto(&format!("{base}/console/syncs/everyone-to-ads"));
            v.wait_text("#dead-letters", "records could not be delivered", false);
            assert!(
                v.find("main form button").is_none(),
                "a viewer gets no replay button"
            );
            flaky.set_faults(Faults::default());
            c.click("#dead-letters button");
            c.wait_text("#runs tbody tr:first-child", "succeeded", false);
            c.wait_text("#dead-letters", "None", true);
            assert_eq!(flaky.records().len(), 11);

            // The other pages, for the screenshots.
            for (path, name, text) in [
                ("/console", "overview", "The last hour of this hub"),
                (
                    "/console/audiences/editor?filter=traits.plan%20%3D%3D%20%22pro%22",
                    "audience-editor",
                    "Valid filter",
                ),
                ("/console/plugins", "plugins", "json-post-destination"),
            ] {
                c.goto(&format!("{base}{path}"));
                c.wait_text("main", text, false);
                c.shot(name);
            }

            // The forms' POSTs are refused to a viewer all the same.
            drop(v);
            let viewer = super::sign_in(&hub, VIEWER_TOKEN);
            let page = hub
                .request("GET", "/console", &[("cookie", &viewer)], b"")
                .text();
            let csrf = super::csrf_of(&page);
            for (path, body) in [
                (
                    "/console/syncs/vip-to-crm/run",
                    format!("csrf={csrf}&what=run"),
                ),
                (
                    "/console/syncs/vip-to-crm/run",
                    format!("csrf={csrf}&what=approve"),
                ),
                (
                    "/console/syncs/everyone-to-ads/replay",
                    format!("csrf={csrf}"),
                ),
            ] {
                let r = hub.request(
                    "POST",
                    path,
                    &[
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("cookie", &viewer),
                    ],
                    body.as_bytes(),
                );
                assert_eq!(r.status, 403, "{path} as a viewer");
            }

            // An admin erases the profile; the audit log shows it, and who tried what.
            c.delete_cookies();
            c.sign_in(&hub, ADMIN_TOKEN);
            c.goto(&format!(
                "{base}/console/profiles?q=email%3Aada%40example.com"
            ));
            let page = c.wait_text("main", "Identifiers", false);
            assert!(
                page.contains("ada@example.com"),
                "an admin sees personal data"
            );
            c.shot("profile");
            c.type_into("#confirm", "erase");
            c.click("button.danger");
            c.wait_text("main", "Profile erased", false);
            c.click("main a[href='/console/audit']");
            let log = c.wait_text("#audit", "profile.erase", false);
            for expected in [
                "sync.approve_removals",
                "dead_letters.replay",
                "denied",
                "vic",
            ] {
                assert!(
                    log.contains(expected),
                    "the audit log has {expected}: {log}"
                );
            }
            c.shot("audit");
        }
        assert!(hub.profile("email:ada@example.com").is_none());
    }
}
