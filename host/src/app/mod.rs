//! The faces of the hub: the HTTP API ([`http`]), the command line ([`cli`]), and the wiring
//! that builds a hub from a project file and serves it ([`hub`]). Nothing imports `app`.

pub mod cli;
pub mod http;
pub mod hub;
