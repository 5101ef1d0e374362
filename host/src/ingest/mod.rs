//! Ingestion: tracking-API messages parsed and checked ([`message`]), then resolved to profiles
//! and committed in groups ([`writer`]). The HTTP face of it is `app::http::tracking`.

pub mod message;
pub mod tap;
pub mod writer;
