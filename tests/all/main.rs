//! The end-to-end tests: the real `switchyard` binary, the real plugins, local fakes of the APIs
//! they call. One test binary with one module per area, so the host is linked once, not once per
//! area; `cargo test -p switchyard --test all tracking::` runs one area.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fakes/mod.rs"]
mod fakes;

mod console;
mod contract;
mod destinations_ads;
mod destinations_email;
mod destinations_events;
mod destinations_social;
mod destinations_webhook;
mod erasure;
mod plugin_cli;
mod privacy;
mod profiles;
mod sandbox;
mod sources;
mod sources_hub;
mod sources_plugins;
mod streams;
mod syncs;
mod tracking;
mod transforms;
