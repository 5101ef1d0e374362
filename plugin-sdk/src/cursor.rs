//! A source's page cursor kept as JSON: the text the hub stores after a page and hands back
//! with the next `read`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use switchyard_sdk::cursor;
//!
//! #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
//! struct Cursor {
//!     #[serde(default, skip_serializing_if = "Option::is_none")]
//!     after: Option<String>,
//! }
//!
//! // First read of a stream: no stored cursor.
//! let c: Cursor = cursor::parse(None, "Example").unwrap();
//! assert_eq!(c, Cursor::default());
//! let next = Cursor { after: Some("p2".into()) };
//! assert_eq!(cursor::parse::<Cursor>(Some(&cursor::text(&next)), "Example").unwrap(), next);
//! // Text the source did not write (another plugin's, a hand edit) is refused, not guessed at.
//! assert!(cursor::parse::<Cursor>(Some("p2"), "Example").is_err());
//! ```

use serde::{de::DeserializeOwned, Serialize};

use crate::CallError;

/// Reads a stored cursor: none (or blank) is a stream's first read, `T::default()`. Text that
/// is not a `T` fails the call with a message naming the `source` and telling the operator to
/// reset the stream's cursor, rather than reading from a guessed position.
pub fn parse<T: DeserializeOwned + Default>(
    stored: Option<&str>,
    source: &str,
) -> Result<T, CallError> {
    match stored.map(str::trim) {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            CallError::Failed(format!(
                "stored cursor is not one the {source} source wrote ({e}); reset the stream's cursor to read from the start"
            ))
        }),
    }
}

/// The cursor as the text the hub stores.
pub fn text<T: Serialize>(cursor: &T) -> String {
    // A cursor of plain fields cannot fail to serialise; if one somehow did, an empty cursor
    // makes the next run read from the start rather than lose records.
    serde_json::to_string(cursor).unwrap_or_default()
}
