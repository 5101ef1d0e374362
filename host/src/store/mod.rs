//! The profile store: SQLite (one file, WAL, the default) or PostgreSQL (shared by several
//! hubs), through sqlx's `Any` driver so that both run the very same SQL: `$N` placeholders,
//! `ON CONFLICT`, times as Unix milliseconds and JSON as text.

use std::str::FromStr;

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `rows` groups of `cols` bind placeholders for a multi-row statement, `(..),(..)`.
    /// SQLite gets anonymous `?` (sqlx resolves each `$N` by name, quadratic in the count),
    /// PostgreSQL numbered `$N` starting at `first`.
    pub fn value_groups(self, first: usize, rows: usize, cols: usize) -> String {
        let mut out = String::with_capacity(rows * (cols * 5 + 3));
        let mut n = first;
        for r in 0..rows {
            if r > 0 {
                out.push(',');
            }
            out.push('(');
            for c in 0..cols {
                if c > 0 {
                    out.push(',');
                }
                match self {
                    Backend::Sqlite => out.push('?'),
                    Backend::Postgres => {
                        out.push('$');
                        out.push_str(&n.to_string());
                    }
                }
                n += 1;
            }
            out.push(')');
        }
        out
    }
}

/// A connection pool with the schema in place.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Schema changes, applied in order once each; never edit a released one, add the next.
const MIGRATIONS: &[&str] = &[
    // 1: profiles, identifiers, traits, events, merges, suppressions, groups
    r#"
    CREATE TABLE IF NOT EXISTS profiles (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS identifiers (
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        PRIMARY KEY (kind, value)
    );
    CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers (profile_id);
    CREATE TABLE IF NOT EXISTS traits (
        profile_id TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        ts BIGINT NOT NULL,
        PRIMARY KEY (profile_id, name)
    );
    CREATE TABLE IF NOT EXISTS events (
        message_id TEXT PRIMARY KEY,
        profile_id TEXT NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT,
        ts BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_by_profile ON events (profile_id, ts, message_id);
    CREATE TABLE IF NOT EXISTS merges (
        id TEXT PRIMARY KEY,
        from_profile TEXT NOT NULL,
        into_profile TEXT NOT NULL,
        reason TEXT NOT NULL,
        message_id TEXT,
        identifier_kind TEXT,
        identifier_value TEXT,
        at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS merges_into ON merges (into_profile);
    CREATE TABLE IF NOT EXISTS suppressions (
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (kind, value)
    );
    CREATE TABLE IF NOT EXISTS account_groups (
        group_id TEXT PRIMARY KEY,
        traits TEXT NOT NULL,
        ts BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS profile_groups (
        profile_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        PRIMARY KEY (profile_id, group_id)
    );
    "#,
    // 2: audiences, syncs (acknowledged state, runs, leases, event cursors), dead letters
    r#"
    CREATE TABLE IF NOT EXISTS audience_members (
        audience TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        since BIGINT NOT NULL,
        PRIMARY KEY (audience, profile_id)
    );
    CREATE TABLE IF NOT EXISTS audience_state (
        audience TEXT PRIMARY KEY,
        filter TEXT NOT NULL,
        evaluated_through BIGINT NOT NULL,
        full_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sync_records (
        sync TEXT NOT NULL,
        key TEXT NOT NULL,
        hash TEXT NOT NULL,
        fields TEXT NOT NULL,
        acked_at BIGINT NOT NULL,
        PRIMARY KEY (sync, key)
    );
    CREATE TABLE IF NOT EXISTS sync_runs (
        id TEXT PRIMARY KEY,
        sync TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT,
        dry_run BIGINT NOT NULL,
        full_resync BIGINT NOT NULL,
        planned_adds BIGINT NOT NULL,
        planned_changes BIGINT NOT NULL,
        planned_removals BIGINT NOT NULL,
        sent BIGINT NOT NULL,
        succeeded BIGINT NOT NULL,
        retried BIGINT NOT NULL,
        rejected BIGINT NOT NULL,
        dead_lettered BIGINT NOT NULL,
        error TEXT
    );
    CREATE INDEX IF NOT EXISTS sync_runs_by_sync ON sync_runs (sync, started_at);
    CREATE TABLE IF NOT EXISTS sync_leases (
        sync TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        run_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sync_cursors (
        sync TEXT PRIMARY KEY,
        received_at BIGINT NOT NULL,
        message_id TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dead_letters (
        id TEXT PRIMARY KEY,
        sync TEXT NOT NULL,
        key TEXT NOT NULL,
        action TEXT NOT NULL,
        hash TEXT NOT NULL,
        fields TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        error TEXT NOT NULL,
        at BIGINT NOT NULL,
        replayed_at BIGINT
    );
    CREATE INDEX IF NOT EXISTS dead_letters_by_sync ON dead_letters (sync, replayed_at);
    CREATE INDEX IF NOT EXISTS profiles_by_updated ON profiles (updated_at);
    CREATE INDEX IF NOT EXISTS events_by_name ON events (kind, name, received_at, message_id);
    "#,
    // 3: source runs: per-stream cursors (committed with each page), run history, one lease per
    // source, and the webhook deliveries already applied (replay protection)
    r#"
    CREATE TABLE IF NOT EXISTS source_cursors (
        source TEXT NOT NULL,
        stream TEXT NOT NULL,
        cursor TEXT,
        done BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (source, stream)
    );
    CREATE TABLE IF NOT EXISTS source_runs (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT,
        full_refresh BIGINT NOT NULL,
        pages BIGINT NOT NULL,
        records BIGINT NOT NULL,
        events BIGINT NOT NULL,
        retries BIGINT NOT NULL,
        error TEXT
    );
    CREATE INDEX IF NOT EXISTS source_runs_by_source ON source_runs (source, started_at);
    CREATE TABLE IF NOT EXISTS source_leases (
        source TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        run_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS source_deliveries (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        records BIGINT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (source, delivery_id)
    );
    "#,
    // 4: per sync, the model and mapping fingerprint of its last completed run and when that run
    // started, and per audience when its membership last changed, so an unchanged re-run only
    // looks at profiles changed since
    r#"
    CREATE TABLE IF NOT EXISTS sync_meta (
        sync TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        complete_started_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audience_changes (
        audience TEXT PRIMARY KEY,
        changed_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS merges_by_time ON merges (at);
    CREATE INDEX IF NOT EXISTS suppressions_by_time ON suppressions (at);
    "#,
];

/// Default `[hub] sqlite_mmap_mib`: enough for a store of a few hundred thousand profiles, while
/// a sync walking a million keeps the process under half a GiB resident.
pub const DEFAULT_SQLITE_MMAP_MIB: u64 = 256;

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        Store::open_with(url, DEFAULT_SQLITE_MMAP_MIB).await
    }

    /// [`Store::open`], mapping up to `sqlite_mmap_mib` MiB of a SQLite file into memory.
    pub async fn open_with(url: &str, sqlite_mmap_mib: u64) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("database URL `{url}` must start with sqlite:// or postgres://");
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if path != ":memory:" {
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("creating {}", parent.display()))?;
                    }
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let options = AnyConnectOptions::from_str(&url)
            .with_context(|| format!("invalid database URL {url}"))?
            .disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer; FULL: a commit is on disk before
                        // the tracking API says 200. Group commit pays the fsync once per batch.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // Read pages through a memory map instead of a read() call each: a
                        // profile lookup is then a few B-tree walks in memory.
                        conn.execute(
                            format!("PRAGMA mmap_size = {}", sqlite_mmap_mib << 20).as_str(),
                        )
                        .await?;
                        conn.execute("PRAGMA foreign_keys = OFF").await?;
                    } else {
                        // Plan each execution of a prepared statement for its own values. The
                        // generic plan PostgreSQL otherwise keeps after five runs is chosen while
                        // a table is small (a sequential scan) and stays as it grows: a first
                        // sync or audience of 100,000 profiles then ran at a thousand a second.
                        conn.execute("SET plan_cache_mode = force_custom_plan")
                            .await?;
                        // No JIT: with a table's statistics not yet caught up, a page query's
                        // estimated cost passes jit_above_cost and each one spent 115 ms
                        // compiling itself to run for 15 ms.
                        conn.execute("SET jit = off").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to {}", redact_url(&url)))?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Refreshes a PostgreSQL table's statistics once the rows changed since they were taken
    /// pass a fifth of the table. Autovacuum does it only a minute or more later; meanwhile a
    /// run that grows a table from nothing (a first audience or sync of a million profiles) is
    /// planned as if it were still small, and `audience = $1 AND profile_id IN (...)` walked
    /// every member of the audience for each page. SQLite plans without statistics: a no-op.
    pub async fn analyze_if_stale(&self, table: &'static str) -> anyhow::Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let counts: Option<(i64, i64)> = sqlx::query_as(
            "SELECT n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((changed, live)) = counts {
            if changed >= 10_000 && changed * 5 >= live {
                tracing::debug!(table, changed, live, "refreshing statistics");
                sqlx::query(&format!("ANALYZE {table}"))
                    .execute(&self.pool)
                    .await
                    .with_context(|| format!("ANALYZE {table}"))?;
            }
        }
        Ok(())
    }

    /// The `n`th bind placeholder of a statement whose placeholders all come from this and
    /// [`Store::value_groups`] (SQLite cannot mix anonymous and numbered ones).
    pub fn param(&self, n: usize) -> String {
        match self.backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${n}"),
        }
    }

    /// `rows` groups of `cols` bind placeholders for a multi-row statement, `(..),(..)`.
    /// See [`Backend::value_groups`].
    pub fn value_groups(&self, first: usize, rows: usize, cols: usize) -> String {
        self.backend.value_groups(first, rows, cols)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .context("creating schema_migrations")?;
        if self.backend == Backend::Postgres {
            // Several hubs may start at once: one migrates, the others wait.
            conn.execute("SELECT pg_advisory_lock(7301)").await?;
        }
        let result = async {
            for (i, migration) in MIGRATIONS.iter().enumerate() {
                let version = i as i64 + 1;
                let done: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(version)
                        .fetch_optional(&mut *conn)
                        .await?;
                if done.is_some() {
                    continue;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for statement in migration
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    tx.execute(statement)
                        .await
                        .with_context(|| format!("migration {version}: {statement}"))?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(now_millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::info!(version, "applied migration");
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7301)").await?;
        }
        result
    }
}

/// Current time as Unix milliseconds, the store's time unit.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Hides a password in a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[tokio::test]
    async fn postgres_statistics_are_refreshed_once_a_table_outgrew_them() {
        let server = "postgres://postgres@127.0.0.1:5432";
        let admin = Store::open(&format!("{server}/postgres")).await.unwrap();
        let name = format!(
            "switchyard_unit_stats_{}_{}",
            std::process::id(),
            now_millis()
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await
            .unwrap();
        let store = Store::open(&format!("{server}/{name}")).await.unwrap();
        let reltuples = |table: &'static str| {
            let store = store.clone();
            async move {
                let (n,): (f64,) =
                    sqlx::query_as("SELECT reltuples::float8 FROM pg_class WHERE relname = $1")
                        .bind(table)
                        .fetch_one(store.pool())
                        .await
                        .unwrap();
                n
            }
        };
        sqlx::query(
            "INSERT INTO audience_members (audience, profile_id, since) \
             SELECT 'a', 'p' || g, 0 FROM generate_series(1, 12000) g",
        )
        .execute(store.pool())
        .await
        .unwrap();
        // The server publishes a table's change counts within about a second of the commit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (changed,): (i64,) = sqlx::query_as(
                "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'audience_members'",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            if changed >= 12_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "change counts never showed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Never analysed: -1. A table that barely changed is left alone.
        assert_eq!(reltuples("audience_members").await, -1.0);
        store.analyze_if_stale("sync_records").await.unwrap();
        assert_eq!(reltuples("sync_records").await, -1.0);
        store.analyze_if_stale("audience_members").await.unwrap();
        assert_eq!(reltuples("audience_members").await, 12_000.0);

        drop(store);
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(admin.pool())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn sqlite_memory_map_follows_the_hub_setting() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db", dir.path().display());
        for (mib, expected) in [(None, DEFAULT_SQLITE_MMAP_MIB), (Some(8), 8)] {
            let store = match mib {
                Some(mib) => Store::open_with(&url, mib).await.unwrap(),
                None => Store::open(&url).await.unwrap(),
            };
            let (bytes,): (i64,) = sqlx::query_as("PRAGMA mmap_size")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(bytes as u64, expected << 20);
        }
    }
}
