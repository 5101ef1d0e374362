//! The profile store: SQLite (one file, WAL, the default) or PostgreSQL (shared by several
//! hubs), through sqlx's `Any` driver so that both run the very same SQL: `$N` placeholders,
//! `ON CONFLICT`, times as Unix milliseconds and JSON as text.

use std::str::FromStr;

pub mod audiences;
pub mod audit;
pub mod consent;
pub mod erasure;
pub mod identity;
pub mod leases;
pub mod merges;
pub mod profiles;
pub mod retention;
pub mod runs;
pub mod sources;
pub mod streams;
pub mod syncs;

use std::borrow::Cow;

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

/// A connection or transaction of the store, for statements that must run together.
pub type Conn = sqlx::AnyConnection;

/// An open transaction.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// What a store call can fail with; callers match on the first two.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A write lost to a concurrent one (a unique key taken, a lease held).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound("no such row".to_string()),
            e => StoreError::Other(e.into()),
        }
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> StoreError {
        StoreError::Other(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A column of a row, by name.
fn col<'r, T>(row: &'r AnyRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(name)?)
}

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
    /// Bumped after each commit that stored events through this store, so event streams wake
    /// at once instead of polling (see [`Store::events_committed`]).
    commits: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// SQLite: one connection with `synchronous = NORMAL`, for writes whose loss on a power cut
    /// costs only a repetition (see [`Store::begin_write_relaxed`]); None on PostgreSQL and for
    /// in-memory databases (another connection would be another database).
    relaxed: Option<AnyPool>,
    /// Turns at the write lock for this process's frequent writers, in arrival order (see
    /// [`Store::write_turn`]).
    turns: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The erasure suppression key once read (see [`erasure::KnownKey`]).
    erasure_key: erasure::KnownKey,
    /// SQLite: how to open a connection of its own to the same file (the event streams'
    /// readers, [`streams::EventReader`]); None on PostgreSQL and for in-memory databases.
    own_connection: Option<sqlx::sqlite::SqliteConnectOptions>,
}

/// The schema, as sqlx migrations embedded from `host/migrations/` (applied in order once each,
/// recorded in `_sqlx_migrations`; never edit a released one, add the next). Built by hand
/// rather than by `sqlx::migrate!`, which needs the sqlx-macros proc-macro crate and with it a
/// second build of both drivers and the bundled SQLite. Migrations 1-4 only create what does
/// not exist yet, so a database made by the hand-split schema of earlier releases (tracked in
/// `schema_migrations`) adopts them unchanged.
fn migrator() -> Migrator {
    let migration = |version: i64, name: &'static str, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            migration(
                1,
                "profiles",
                include_str!("../../migrations/0001_profiles.sql"),
            ),
            migration(2, "syncs", include_str!("../../migrations/0002_syncs.sql")),
            migration(
                3,
                "sources",
                include_str!("../../migrations/0003_sources.sql"),
            ),
            migration(
                4,
                "incremental",
                include_str!("../../migrations/0004_incremental.sql"),
            ),
            migration(
                10,
                "privacy",
                include_str!("../../migrations/0010_privacy.sql"),
            ),
            migration(
                20,
                "erasure",
                include_str!("../../migrations/0020_erasure.sql"),
            ),
            migration(
                30,
                "delivery_ids",
                include_str!("../../migrations/0030_delivery_ids.sql"),
            ),
            migration(
                40,
                "streams",
                include_str!("../../migrations/0040_streams.sql"),
            ),
            migration(50, "audit", include_str!("../../migrations/0050_audit.sql")),
            migration(
                51,
                "console_sizes",
                include_str!("../../migrations/0051_console_sizes.sql"),
            ),
        ]),
        ..Migrator::DEFAULT
    }
}

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
            // sqlx pings every connection it hands out. A SQLite connection is a file in this
            // process, not a socket that can drop: its ping is only a round trip to the
            // connection's worker thread, one more on every acquire (each group commit, each
            // stream read).
            .test_before_acquire(backend != Backend::Sqlite)
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
        let own_connection = if backend == Backend::Sqlite && !url.contains(":memory:") {
            Some(
                sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .with_context(|| format!("invalid database URL {url}"))?
                    .disable_statement_logging()
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .pragma("mmap_size", (sqlite_mmap_mib << 20).to_string())
                    .foreign_keys(false)
                    // Readers: a statement that would write fails instead.
                    .pragma("query_only", "ON"),
            )
        } else {
            None
        };
        let relaxed = if backend == Backend::Sqlite && !url.contains(":memory:") {
            let options = AnyConnectOptions::from_str(&url)
                .with_context(|| format!("invalid database URL {url}"))?
                .disable_statement_logging();
            Some(
                AnyPoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // NORMAL in WAL mode: a commit is in the log but not fsynced; a
                            // process crash keeps it, a power cut may lose the last ones. The
                            // next FULL commit (the tracking API's) syncs them with its own.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = OFF").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .with_context(|| format!("connecting to {}", redact_url(&url)))?,
            )
        } else {
            None
        };
        let store = Store {
            pool,
            backend,
            commits: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            relaxed,
            turns: std::sync::Arc::default(),
            erasure_key: erasure::KnownKey::default(),
            own_connection,
        };
        store.migrate().await?;
        // Erased identifiers are kept only as keyed digests; older hubs kept them in clear.
        let adopted = erasure::adopt_plain_suppressions(&store)
            .await
            .context("hashing the erased identifiers an older hub kept in clear")?;
        if adopted > 0 {
            tracing::info!(
                identifiers = adopted,
                "erased identifiers kept in clear by an older hub are now kept as keyed digests"
            );
        }
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Says that a transaction which stored events has committed: wakes every event stream
    /// of this process (streams also poll now and then for events other processes commit).
    pub fn events_committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes after each [`Store::events_committed`].
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// This process's copy of the erasure suppression key, for identity batches to skip
    /// reading it (see [`erasure::KnownKey`]).
    pub fn known_erasure_key(&self) -> &erasure::KnownKey {
        &self.erasure_key
    }

    /// A transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction that will write: on SQLite it takes the write lock at once. A read
    /// transaction that later writes fails at once (SQLITE_BUSY, no waiting) if another
    /// connection wrote in between.
    pub async fn begin_write(&self) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A turn at the write lock, held until the guard drops: the tracking API's group commit
    /// and the event streams' batch commits take one before their write transaction, so they
    /// queue in order here. Without it they meet at SQLite's lock, whose busy handler sleeps
    /// (1, 2, 5, ... 100 ms) and lets the writer that just committed take the lock again
    /// before the sleeper wakes: a stream's commit waited up to 2.5 s behind the ingest writer
    /// at 1,000 events/s, and the ingest writer behind the streams. Other writers (syncs,
    /// audiences, sources) are rarer and still meet at the lock.
    pub async fn write_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turns.clone().lock_owned().await
    }

    /// A write transaction whose commit is not flushed to disk at once: SQLite's
    /// `synchronous = NORMAL` (its own connection), PostgreSQL's `synchronous_commit = off`.
    /// A process crash loses nothing; a power cut may lose the last such commits. For writes
    /// whose loss only repeats work (an event stream's cursor: its batch is re-sent, which at
    /// least once allows), so they neither wait for nor add an fsync beside the tracking API's.
    pub async fn begin_write_relaxed(&self) -> Result<Tx> {
        Ok(match (&self.relaxed, self.backend) {
            (Some(pool), _) => pool.begin_with("BEGIN IMMEDIATE").await?,
            (None, Backend::Postgres) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                tx
            }
            (None, Backend::Sqlite) => self.begin_write().await?,
        })
    }

    /// A pooled connection, for a series of reads.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// The single integer a diagnostic query (`SELECT COUNT(*) ...`) answers, for tests and
    /// benchmarks that look at what was stored.
    #[doc(hidden)]
    pub async fn scalar(&self, sql: &str) -> Result<i64> {
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
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
        let counts = sqlx::query(
            "SELECT n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = counts {
            let changed: i64 = col(&row, "n_mod_since_analyze")?;
            let live: i64 = col(&row, "n_live_tup")?;
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
        // On PostgreSQL the migrator holds an advisory lock: of several hubs starting at once,
        // one migrates and the others wait.
        migrator()
            .run(&self.pool)
            .await
            .context("applying the schema migrations")
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

/// For unit tests elsewhere in the crate: a PostgreSQL database of a test's own, and reads of
/// what was stored, so their SQL stays in the store.
#[cfg(test)]
pub(crate) mod testing {
    use super::Store;

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    async fn admin() -> sqlx::PgPool {
        // A plain pool: the maintenance database is shared, it must not get our migrations.
        sqlx::PgPool::connect(&format!("{SERVER}/postgres"))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432")
    }

    /// A database created for one test; [`PgDatabase::drop_with`] removes it.
    pub(crate) struct PgDatabase {
        pub name: String,
    }

    impl PgDatabase {
        /// A new, empty database named after `tag`, the process and the time.
        pub(crate) async fn create(tag: &str) -> PgDatabase {
            let name = format!(
                "switchyard_unit_{tag}_{}_{}",
                std::process::id(),
                super::now_millis()
            );
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin().await)
                .await
                .unwrap();
            PgDatabase { name }
        }

        pub(crate) fn url(&self) -> String {
            format!("{SERVER}/{}", self.name)
        }

        /// The database opened as a store (migrated).
        pub(crate) async fn open(&self) -> Store {
            Store::open(&self.url()).await.unwrap()
        }

        /// Closes these stores and drops the database.
        pub(crate) async fn drop_with(self, stores: Vec<Store>) {
            drop(stores);
            sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .execute(&admin().await)
                .await
                .unwrap();
        }
    }

    /// Each row a diagnostic query (`SELECT ...`) answers.
    pub(crate) async fn rows<T>(store: &Store, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        sqlx::query_as(sql).fetch_all(store.pool()).await.unwrap()
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
        let db = testing::PgDatabase::create("stats").await;
        let store = db.open().await;
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
        db.drop_with(vec![store]).await;
    }

    /// What releases before the sqlx migrator left: the same four schema texts, split on `;` and
    /// recorded in `schema_migrations`, and a profile in them.
    async fn old_hub_database(url: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .unwrap();
        // Only the four schema texts of that era; later migrations came with the migrator.
        let all = migrator();
        for (i, migration) in all.migrations.iter().filter(|m| m.version <= 4).enumerate() {
            for statement in migration.sql.split(';').map(str::trim) {
                // The comment lines are the file's own; the old constants had none.
                let statement: String = statement
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if !statement.trim().is_empty() {
                    conn.execute(statement.as_str()).await.unwrap();
                }
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(i as i64 + 1)
                .bind(now_millis())
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.execute("INSERT INTO profiles (id, created_at, updated_at) VALUES ('prf_old', 1, 1)")
            .await
            .unwrap();
        conn.execute("INSERT INTO identifiers (kind, value, profile_id, first_seen) VALUES ('email', 'old@x.com', 'prf_old', 1)")
            .await
            .unwrap();
        sqlx::Connection::close(conn).await.unwrap();
    }

    /// An existing hub's database opens after the upgrade: the migrator adopts the schema,
    /// the data stays, and it takes writes.
    async fn upgrade_keeps_an_old_database_working(url: &str) {
        old_hub_database(url).await;
        for _ in 0..2 {
            let store = Store::open(url).await.unwrap();
            assert_eq!(
                store
                    .scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .await
                    .unwrap(),
                migrator().migrations.len() as i64
            );
            let old = crate::identifier::Identifier::new("email", "old@x.com");
            let row = profiles::by_identifier(&store, &old)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.id, "prf_old");
            let mut tx = store.begin().await.unwrap();
            identity::create_profile(
                &mut tx,
                &format!("prf_{}", uuid::Uuid::new_v4().simple()),
                2,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            store.pool().close().await;
        }
        let store = Store::open(url).await.unwrap();
        assert_eq!(
            store.scalar("SELECT COUNT(*) FROM profiles").await.unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn an_old_sqlite_database_opens_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
        upgrade_keeps_an_old_database_working(&url).await;
    }

    #[tokio::test]
    async fn an_old_postgres_database_opens_after_the_upgrade() {
        let db = testing::PgDatabase::create("upgrade").await;
        upgrade_keeps_an_old_database_working(&db.url()).await;
        db.drop_with(Vec::new()).await;
    }

    #[tokio::test]
    async fn a_new_database_gets_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/new.db", dir.path().display()))
            .await
            .unwrap();
        for table in [
            "profiles",
            "sync_runs",
            "source_runs",
            "sync_meta",
            "audience_changes",
        ] {
            let n = store
                .scalar(&format!(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
                ))
                .await
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
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
