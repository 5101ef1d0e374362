//! Switchyard, the data activation hub: the host side.
//!
//! Data flows one way: ingest → identity → profiles → audiences → sync → runtime → the world.
//! Modules are named for the concept they own, in layers that import only downward:
//!
//! - `app`: the faces — hub wiring and `serve` (`app::hub`), the HTTP API (`app::http`: one
//!   router, one `AdminAuth` extractor, one `ApiError`), the command line (`app::cli`, one file
//!   per command group). Nothing in the crate imports `app`; only `main.rs` does.
//! - `config`: the project file (`switchyard.toml`), its checks, and secret resolution
//!   (`config::secrets`); `validate` adds the checks that need installed plugins.
//! - the engines: `ingest` (message parsing, the writer), `identity` (decisions over identifier
//!   lists), `profiles`, `audience`, `sync`, `streams` (events forwarded as they arrive, through
//!   the syncs' delivery), `erasure` (privacy erasure to the destinations), `sources`, and `runs`
//!   (what both run engines share:
//!   status, errors, lease, the scheduler loop).
//! - at the bottom: `store` (every SQL statement, migrations, SQLite and PostgreSQL), `runtime`
//!   (plugins in wasmtime), `registry` (installed plugins), and leaf values with no I/O
//!   (`identifier`, `schedule`, `metrics`, `scaffold`).

pub mod app;
pub mod audience;
pub mod config;
pub mod consent;
pub mod erasure;
pub mod identifier;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod profiles;
pub mod registry;
pub mod retention;
pub mod runs;
pub mod runtime;
pub mod scaffold;
pub mod schedule;
pub mod sources;
pub mod store;
pub mod streams;
pub mod sync;
pub mod validate;
