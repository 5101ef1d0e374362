//! The faces of the hub: the HTTP API ([`http`]), the web console ([`console`]), the command
//! line ([`cli`]), what an operator does through either of the first two ([`operate`]), and the
//! wiring that builds a hub from a project file and serves it ([`hub`]). Nothing imports `app`.

pub mod cli;
pub mod console;
pub mod http;
pub mod hub;
pub mod mask;
pub mod operate;
