//! Switchyard, the data activation hub: the host side.
//!
//! Data flows one way: ingest → identity → profiles → audiences → sync → runtime → the world.
//! Modules are named for the concept they own: `config`, `store`, `identity`, `ingest` (the
//! tracking API), `profiles`, `api`, `runtime` (plugins), `registry` (installed plugins), `cli`.

pub mod api;
pub mod audience;
pub mod cli;
pub mod config;
pub mod identity;
pub mod identifier;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod profiles;
pub mod registry;
pub mod runtime;
pub mod scaffold;
pub mod schedule;
pub mod sources;
pub mod store;
pub mod sync;
pub mod validate;
