//! Logging to the hub: lines land in the hub's `tracing` output under the plugin's name.
//!
//! Never log secrets or raw personal identifiers (emails, phones) a plugin was asked to hash.

pub use crate::bindings::switchyard::plugin::host::LogLevel as Level;

/// Writes one line to the hub's log.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::switchyard::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// `debug!("sent {} records", n)`
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &format!($($arg)*)) };
}

/// `info!("sent {} records", n)`
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &format!($($arg)*)) };
}

/// `warn!("rate limited, retrying in {} ms", ms)`
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &format!($($arg)*)) };
}

/// `error!("unexpected response: {}", status)`
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &format!($($arg)*)) };
}
