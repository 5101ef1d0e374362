//! Switchyard, the data activation hub: the host side.
//!
//! Data flows one way: ingest → identity → profiles → audiences → sync → runtime → the world.
//! This crate so far holds the plugin runtime (sandboxed WASI 0.2 components), the on-disk plugin
//! registry and the CLI.

pub mod cli;
pub mod registry;
pub mod runtime;
pub mod scaffold;
