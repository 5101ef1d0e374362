//! Runs the real `switchyard serve` on a fresh database (a SQLite file, or a PostgreSQL database
//! created for the test and dropped after it) and talks HTTP/1.1 to it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WRITE_KEY: &str = "wk_test_web";
pub const ADMIN_TOKEN: &str = "admin-secret-token";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running hub; killed (and its PostgreSQL database dropped) on drop.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub database: String,
    pub config: PathBuf,
    child: Option<Child>,
    pg_db: Option<String>,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn psql(sql: &str) {
    let status = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-q",
            "-c",
            sql,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

impl Hub {
    pub fn start(db: Db) -> Hub {
        Hub::start_with(db, "")
    }

    /// Starts a hub; `extra_hub` is appended to the `[hub]` table.
    pub fn start_with(db: Db, extra_hub: &str) -> Hub {
        Hub::start_project(db, extra_hub, "", &[])
    }

    /// Starts a hub whose project file also holds `project` (audiences, destinations, syncs),
    /// with plugins under `<dir>/plugins` and extra environment for the server.
    pub fn start_project(db: Db, extra_hub: &str, project: &str, env: &[(&str, &str)]) -> Hub {
        Hub::start_full(db, extra_hub, "", project, env)
    }

    /// Starts a hub whose `[sources.web]` (write key [`WRITE_KEY`]) also holds `web_source`,
    /// e.g. `allowed_origins = [...]`.
    pub fn start_full(
        db: Db,
        extra_hub: &str,
        web_source: &str,
        project: &str,
        env: &[(&str, &str)],
    ) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let (database, pg_db) = match db {
            Db::Sqlite => (format!("sqlite://{}/hub.db", dir.path().display()), None),
            Db::Postgres => {
                let name = format!("switchyard_test_{}_{}", std::process::id(), uuid_like());
                psql(&format!("CREATE DATABASE {name}"));
                (
                    format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    Some(name),
                )
            }
        };
        let config = dir.path().join("switchyard.toml");
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            &config,
            format!(
                "[hub]\nlisten = \"{addr}\"\ndatabase = \"{database}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nplugins_dir = \"{plugins}\"\n{extra_hub}\n\n\
                 [sources.web]\nwrite_keys = [\"{WRITE_KEY}\"]\n{web_source}\n\n[sources.server]\nwrite_keys = [\"wk_test_server\"]\n\n{project}\n",
                plugins = dir.path().join("plugins").display()
            ),
        )
        .unwrap();
        let mut hub = Hub {
            dir,
            addr,
            database,
            config,
            child: None,
            pg_db,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        hub.spawn();
        hub
    }

    /// (Re)starts the server process and waits until it answers.
    pub fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("SWITCHYARD_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("starting switchyard serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.try_request("GET", "/healthz", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("switchyard serve did not come up on {}", self.addr);
    }

    /// The plugins directory of this hub.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Runs the CLI against this hub's project file and plugins (`--config` is appended for
    /// commands that take it), with the hub's extra environment.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--plugins-dir").arg(self.plugins_dir()).args(args);
        if !matches!(args.first(), Some(&"plugin")) {
            cmd.arg("--config").arg(&self.config);
        }
        cmd.env("SWITCHYARD_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running switchyard")
    }

    /// Installs built plugins (by crate name) into this hub's plugins directory.
    pub fn install(&self, crates: &[&str]) {
        for name in crates {
            let wasm = super::plugin_wasm(name);
            let out = self.cli(&["plugin", "install", wasm.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "installing {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Rewrites the project part of the config and sends SIGHUP.
    pub fn reload(&self, config_text: &str) {
        std::fs::write(&self.config, config_text).unwrap();
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status();
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        request(&self.addr, method, path, headers, body)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.try_request(method, path, headers, body)
            .expect("HTTP request to the hub")
    }

    /// POSTs a tracking call with the write key as Basic user name.
    pub fn track(&self, endpoint: &str, body: serde_json::Value) -> HttpResponse {
        self.request(
            "POST",
            &format!("/v1/{endpoint}"),
            &[
                ("authorization", &basic(WRITE_KEY)),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// Sends `identify` for a user with traits through the tracking API; it must be accepted.
    pub fn identify(&self, user: &str, traits: serde_json::Value) {
        let r = self.track(
            "identify",
            serde_json::json!({"userId": user, "traits": traits}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Runs a sync with `switchyard sync run`; returns its newest entry of `sync runs`.
    pub fn run_sync(&self, sync: &str) -> serde_json::Value {
        super::ok(&self.cli(&["sync", "run", sync]));
        let out = super::ok(&self.cli(&["sync", "runs", sync, "--limit", "1"]));
        serde_json::from_str(out.lines().next().expect("a run")).unwrap()
    }

    /// The sync's dead letters, from `switchyard dlq list`.
    pub fn dead_letters(&self, sync: &str) -> Vec<serde_json::Value> {
        super::lines(&super::ok(&self.cli(&["dlq", "list", sync])))
    }

    pub fn admin_get(&self, path: &str) -> HttpResponse {
        self.request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"",
        )
    }

    pub fn admin_delete(&self, path: &str) -> HttpResponse {
        self.request(
            "DELETE",
            path,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"",
        )
    }

    /// The profile holding an identifier, or None on 404.
    pub fn profile(&self, id: &str) -> Option<serde_json::Value> {
        let r = self.admin_get(&format!("/v1/profiles/{id}"));
        match r.status {
            200 => Some(r.json()),
            404 => None,
            s => panic!("GET profile {id}: {s} {}", r.text()),
        }
    }

    /// The first column of a query's rows, as text.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        let sql = sql.to_string();
        self.with_db(move |mut conn| async move {
            let rows: Vec<(String,)> = sqlx::query_as(&sql).fetch_all(&mut conn).await.unwrap();
            rows.into_iter().map(|r| r.0).collect()
        })
    }

    /// Runs a query against the hub's database with sqlx, for counts the API does not show.
    pub fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_string();
        self.with_db(move |mut conn| async move {
            let (n,): (i64,) = sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap();
            n
        })
    }

    /// Runs `query` on a connection of its own to the hub's database, on a runtime of its own
    /// (the tests that look into the database drive the binary and have none).
    fn with_db<T, F, Fut>(&self, query: F) -> T
    where
        F: FnOnce(sqlx::AnyConnection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let url = self.database.clone();
        super::runtime_thread(move || async move {
            sqlx::any::install_default_drivers();
            let conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            query(conn).await
        })
        .join()
        .unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        if let Some(name) = &self.pg_db {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// (status, succeeded, retried, dead-lettered) of a sync run.
pub fn run_counts(run: &serde_json::Value) -> (&str, u64, u64, u64) {
    (
        run["status"].as_str().unwrap_or_default(),
        run["succeeded"].as_u64().unwrap_or_default(),
        run["retried"].as_u64().unwrap_or_default(),
        run["dead_lettered"].as_u64().unwrap_or_default(),
    )
}

pub fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough for tests.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}
