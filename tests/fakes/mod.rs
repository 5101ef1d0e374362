//! Faithful fakes of the third-party APIs the plugins call, one module per API, each on a
//! loopback port of its own per test.

pub mod ga4;
pub mod google_ads;
pub mod http_json;
pub mod hubspot;
pub mod json_sink;
pub mod linkedin;
pub mod mailchimp;
pub mod meta;
pub mod meta_capi;
pub mod sendgrid;
pub mod shopify;
pub mod slack;
pub mod stripe;
pub mod tiktok;
pub mod webhook;
