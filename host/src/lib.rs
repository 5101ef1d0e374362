//! Switchyard, the data activation hub: the host side.
//!
//! Data flows one way: ingest → identity → profiles → audiences → sync → runtime → the world.
//! Modules are named for the concept they own, in layers that import only downward
//! (`tools/import-graph` draws the arrows and fails on a circle):
//!
//! - `app`: the faces — hub wiring and `serve` (`app::hub`), the HTTP API (`app::http`: one
//!   router, one `AdminAuth` extractor, one `ApiError`; tracking, profiles, syncs, sources and
//!   webhook routes), the command line (`app::cli`, one file per command group). Nothing in the
//!   crate imports `app`; only `main.rs` does.
//! - the engines: `sync`, `sources` (and `runs`, what both share: status, errors, lease, the
//!   scheduler loop), `streams` (events forwarded as they are committed, through the syncs'
//!   delivery), `erasure` (privacy erasure to the destinations), `transform` (the chains of
//!   transform plugins that sources and streams name), `audience`,
//!   `ingest` (message parsing, the writer), `profiles`, `identity`
//!   (decisions over identifier lists), `registry` (installed plugins, instantiated for a
//!   config block) and `validate` (the checks that need installed plugins).
//! - `config`: the project file (`switchyard.toml`) and the typed values compiled from it, which
//!   the engines are given; secret resolution (`config::secrets`). It sits below the engines
//!   because they read it, and imports only what lies below it.
//! - leaf values, no I/O: `filter` (CEL), `mapping`, `schedule`, `identifier`, `metrics`,
//!   `scaffold`.
//! - at the bottom: `store` (every SQL statement, migrations, SQLite and PostgreSQL) and
//!   `runtime` (plugins in wasmtime).

pub mod app;
pub mod audience;
pub mod config;
pub mod consent;
pub mod erasure;
pub mod filter;
pub mod identifier;
pub mod identity;
pub mod ingest;
pub mod mapping;
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
pub mod transform;
pub mod validate;
