//! The web console and the access it shares with the admin API, end to end: the real
//! `switchyard serve` with named tokens of each role.

use crate::common;

use common::hub::{Db, Hub, ADMIN_TOKEN};
use serde_json::json;

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

/// The console in a real browser: Debian's chromium, headless, driven through chromedriver
/// (WebDriver) with fantoccini. Both are installed by `tools/setup-clients` (`.ci/run` runs it);
/// without them the test fails saying so. Screenshots go to `docs/screenshots/`.
mod browser {
    use super::*;
    use crate::fakes::json_sink::{Faults, JsonSink};

    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fantoccini::{Client, ClientBuilder, Locator};

    /// chromedriver on a free port; killed on drop.
    struct Driver {
        child: Child,
        url: String,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
        Driver { child, url: format!("http://127.0.0.1:{port}") }
    }

    async fn browser(driver: &Driver) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,1000", "--hide-scrollbars"]
            }),
        );
        let mut builder = ClientBuilder::native();
        builder.capabilities(caps);
        builder
            .connect(&driver.url)
            .await
            .expect("a chromium session through chromedriver")
    }

    fn shots() -> PathBuf {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn shot(c: &Client, name: &str) {
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(shots().join(format!("console-{name}.png")), png).unwrap();
    }

    /// Waits until the element at `css` contains `text`, reloading the page when `reload` (for
    /// pages whose script does not follow the change by itself).
    async fn wait_text(c: &Client, css: &str, text: &str, reload: bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(e) = c.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if t.contains(text) {
                        return t;
                    }
                    assert!(Instant::now() < deadline, "`{text}` never appeared in {css}: {t}");
                }
            }
            assert!(Instant::now() < deadline, "{css} never had `{text}`");
            tokio::time::sleep(Duration::from_millis(300)).await;
            if reload {
                c.refresh().await.unwrap();
            }
        }
    }

    async fn sign_in(c: &Client, hub: &Hub, token: &str) {
        c.goto(&format!("http://{}/console", hub.addr)).await.unwrap();
        c.find(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
        c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css("nav.side")).await.unwrap();
    }

    async fn click(c: &Client, css: &str) {
        c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }

    async fn has(c: &Client, css: &str) -> bool {
        c.find(Locator::Css(css)).await.is_ok()
    }

    fn destination(name: &str, sink: &JsonSink) -> String {
        format!(
            "[destinations.{name}]\nplugin = \"json-post-destination\"\nconfig = {{ url = \"{}\" }}\n\
             allow_hosts = [\"{hp}\"]\nallow_private_hosts = [\"{hp}\"]\nrate_per_second = 1000\n",
            sink.url(),
            hp = sink.host_port()
        )
    }

    #[test]
    fn console_in_a_browser_operates_the_hub() {
        let sink = JsonSink::start();
        let flaky = JsonSink::start();
        flaky.set_faults(Faults { error: 1.0, ..Default::default() });
        let project = format!(
            "[audiences.vip]\nfilter = 'traits.plan == \"pro\"'\ndescription = \"Paying customers\"\n\n{}\n{}\n\
             [[syncs]]\nname = \"vip-to-crm\"\nfrom = {{ audience = \"vip\" }}\nto = \"crm\"\nmode = \"mirror\"\nmax_removals = \"20%\"\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\nplan = \"traits.plan\"\n\n\
             [[syncs]]\nname = \"everyone-to-ads\"\nfrom = \"all\"\nto = \"ads\"\nmode = \"upsert\"\nmax_attempts = 1\n\
             [syncs.mapping]\nemail = \"identifiers.email\"\n",
            destination("crm", &sink),
            destination("ads", &flaky),
        );
        let hub = Hub::start_project(Db::Sqlite, &tokens(), &project, &[("SWITCHYARD_RETRY_BASE_MS", "20")]);
        hub.install(&["json-post-destination"]);
        for i in 0..10 {
            hub.identify(&format!("c{i}"), json!({"email": format!("c{i}@example.com"), "plan": "pro"}));
        }
        let driver = driver();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = browser(&driver).await;
            let base = format!("http://{}", hub.addr);

            // Sign in (the sign-in page first, for its screenshot).
            c.goto(&format!("{base}/console/sign-in")).await.unwrap();
            shot(&c, "sign-in").await;
            sign_in(&c, &hub, OPERATOR_TOKEN).await;

            // An event sent to the tracking API appears on the live page.
            c.goto(&format!("{base}/console/live")).await.unwrap();
            wait_text(&c, "#live-status", "Listening", false).await;
            hub.track("identify", json!({"userId": "ada-1", "traits": {"email": "ada@example.com", "plan": "pro", "name": "Ada"}}));
            hub.track("track", json!({"userId": "ada-1", "event": "Viewed Pricing", "properties": {"plan": "pro"}}));
            hub.track("track", json!({"event": "No Identity"}));
            wait_text(&c, "#live", "Viewed Pricing", false).await;
            let live = wait_text(&c, "#live", "refused", false).await;
            assert!(live.contains("identify"), "{live}");
            assert!(!live.contains("ada-1"), "an operator sees ids masked: {live}");
            click(&c, "#live li.event details summary").await;
            shot(&c, "live").await;

            // Run the audience's sync now and watch the run finish.
            c.goto(&format!("{base}/console/syncs/vip-to-crm")).await.unwrap();
            click(&c, "button[value=run]").await;
            wait_text(&c, "#runs", "succeeded", false).await;
            assert_eq!(sink.records().len(), 11);
            shot(&c, "sync").await;

            // Find the profile and see the audience it joined.
            c.goto(&format!("{base}/console/profiles")).await.unwrap();
            c.find(Locator::Css("#q")).await.unwrap().send_keys("email:ada@example.com").await.unwrap();
            click(&c, "form.search button").await;
            let page = wait_text(&c, "main", "Identifiers", false).await;
            assert!(page.contains("vip"), "the profile page lists its audience: {page}");
            assert!(page.contains("Viewed Pricing"), "{page}");
            assert!(!page.contains("ada@example.com"), "masked for an operator: {page}");
            assert!(!has(&c, "button.danger").await, "no erase button below admin");
            click(&c, "ul.tags a").await;
            wait_text(&c, "#audience-size", "11", false).await;
            shot(&c, "audience").await;

            // A viewer, in a second browser: sees everything, with no button to press.
            let v = browser(&driver).await;
            sign_in(&v, &hub, VIEWER_TOKEN).await;

            // The guardrail stops a run that would remove half the audience; approve it.
            for i in 0..6 {
                hub.identify(&format!("c{i}"), json!({"plan": "free"}));
            }
            c.goto(&format!("{base}/console/syncs/vip-to-crm")).await.unwrap();
            click(&c, "button[value=run]").await;
            wait_text(&c, "main", "The guardrail stopped the last run", true).await;
            shot(&c, "guardrail").await;
            v.goto(&format!("{base}/console/syncs/vip-to-crm")).await.unwrap();
            wait_text(&v, "main", "An operator can approve these removals", false).await;
            assert!(!has(&v, "main form button").await, "a viewer gets no run or approve button");
            click(&c, "button[value=approve]").await;
            wait_text(&c, "#runs tbody tr:first-child", "succeeded", false).await;
            assert_eq!(sink.records().len(), 5);

            // A run into a failing destination dead-letters its records; replay them once it
            // is healthy.
            c.goto(&format!("{base}/console/syncs/everyone-to-ads")).await.unwrap();
            click(&c, "button[value=run]").await;
            let letters = wait_text(&c, "#dead-letters", "records could not be delivered", true).await;
            assert!(letters.contains("11 records"), "{letters}");
            shot(&c, "dead-letters").await;
            v.goto(&format!("{base}/console/syncs/everyone-to-ads")).await.unwrap();
            wait_text(&v, "#dead-letters", "records could not be delivered", false).await;
            assert!(!has(&v, "main form button").await, "a viewer gets no replay button");
            flaky.set_faults(Faults::default());
            click(&c, "#dead-letters button").await;
            wait_text(&c, "#runs tbody tr:first-child", "succeeded", false).await;
            wait_text(&c, "#dead-letters", "None", true).await;
            assert_eq!(flaky.records().len(), 11);

            // The other pages, for the screenshots.
            for (path, name, text) in [
                ("/console", "overview", "Events accepted"),
                ("/console/audiences/editor?filter=traits.plan%20%3D%3D%20%22pro%22", "audience-editor", "Valid filter"),
                ("/console/plugins", "plugins", "json-post-destination"),
            ] {
                c.goto(&format!("{base}{path}")).await.unwrap();
                wait_text(&c, "main", text, false).await;
                shot(&c, name).await;
            }

            // The forms' POSTs are refused to a viewer all the same.
            v.close().await.unwrap();
            let viewer = super::sign_in(&hub, VIEWER_TOKEN);
            let page = hub.request("GET", "/console", &[("cookie", &viewer)], b"").text();
            let csrf = super::csrf_of(&page);
            for (path, body) in [
                ("/console/syncs/vip-to-crm/run", format!("csrf={csrf}&what=run")),
                ("/console/syncs/vip-to-crm/run", format!("csrf={csrf}&what=approve")),
                ("/console/syncs/everyone-to-ads/replay", format!("csrf={csrf}")),
            ] {
                let r = hub.request(
                    "POST",
                    path,
                    &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &viewer)],
                    body.as_bytes(),
                );
                assert_eq!(r.status, 403, "{path} as a viewer");
            }

            // An admin erases the profile; the audit log shows it, and who tried what.
            c.delete_all_cookies().await.unwrap();
            sign_in(&c, &hub, ADMIN_TOKEN).await;
            c.goto(&format!("{base}/console/profiles?q=email%3Aada%40example.com")).await.unwrap();
            let page = wait_text(&c, "main", "Identifiers", false).await;
            assert!(page.contains("ada@example.com"), "an admin sees personal data");
            shot(&c, "profile").await;
            c.find(Locator::Css("#confirm")).await.unwrap().send_keys("erase").await.unwrap();
            click(&c, "button.danger").await;
            wait_text(&c, "main", "Profile erased", false).await;
            click(&c, "main a[href='/console/audit']").await;
            let log = wait_text(&c, "#audit", "profile.erase", false).await;
            for expected in ["sync.approve_removals", "dead_letters.replay", "denied", "vic"] {
                assert!(log.contains(expected), "the audit log has {expected}: {log}");
            }
            shot(&c, "audit").await;
            c.close().await.unwrap();
        });
        assert!(hub.profile("email:ada@example.com").is_none());
    }
}
