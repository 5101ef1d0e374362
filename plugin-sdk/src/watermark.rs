//! Incremental reads that resume where the previous run stopped.
//!
//! Most APIs let a source ask for "objects changed (or created) at or after T". Asking with the
//! newest time the previous run read, rather than just after it, is the only way not to miss an
//! object changed in that same second (or millisecond) after the run ended, but it returns the
//! objects read at exactly T again. A [`Watermark`] keeps both halves: the time and the ids
//! already read at it, so a run skips those and nothing else.
//!
//! A source keeps one in its page cursor, next to its own page token:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use switchyard_sdk::watermark::Watermark;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Cursor {
//!     #[serde(flatten)]
//!     mark: Watermark<i64>,
//!     #[serde(default, skip_serializing_if = "Option::is_none")]
//!     next_page: Option<String>,
//! }
//!
//! let mut cursor = Cursor::default();
//! // For every object of a page, in any order:
//! for (id, updated) in [("a", 100), ("b", 200), ("c", 200)] {
//!     if cursor.mark.already_read(id, &updated) {
//!         continue;
//!     }
//!     cursor.mark.observe(id, updated);
//! }
//! // On the last page, the cursor the next run starts from: ask for `updated >= 200`, skip b, c.
//! let next = cursor.mark.finished();
//! assert_eq!(next.since, Some(200));
//! assert_eq!(next.seen, ["b", "c"]);
//! ```

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The high-water mark of an incremental read: where this run started and what it has read.
/// `T` is the API's notion of time (Unix seconds, an RFC 3339 string with its own ordering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark<T> {
    /// The newest time the previous run read: this run asks for objects at or after it.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub since: Option<T>,
    /// Ids the previous runs read at exactly `since`, skipped when they come back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    /// The newest time read so far in this run.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub max: Option<T>,
    /// Ids read in this run at `max`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_ids: Vec<String>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Default for Watermark<T> {
    fn default() -> Self {
        Watermark {
            since: None,
            seen: Vec::new(),
            max: None,
            max_ids: Vec::new(),
        }
    }
}

impl<T: Ord> Watermark<T> {
    /// Whether a previous run already read this object: it was read at exactly `since`.
    pub fn already_read(&self, id: &str, at: &T) -> bool {
        self.since.as_ref().is_some_and(|s| s.cmp(at).is_eq()) && self.seen.iter().any(|s| s == id)
    }

    /// Counts an object this run read into the run's newest time.
    pub fn observe(&mut self, id: &str, at: T) {
        match self.max.as_ref().map(|max| at.cmp(max)) {
            Some(Ordering::Less) => {}
            Some(Ordering::Equal) => {
                if !self.max_ids.iter().any(|i| i == id) {
                    self.max_ids.push(id.to_string());
                }
            }
            None | Some(Ordering::Greater) => {
                self.max = Some(at);
                self.max_ids = vec![id.to_string()];
            }
        }
    }

    /// The watermark the next run starts from, once this run has read its last page. It never
    /// moves back: a run that read nothing newer keeps `since`, adding what it read at it.
    pub fn finished(self) -> Watermark<T> {
        let Some(max) = self.max else {
            return Watermark {
                since: self.since,
                seen: self.seen,
                ..Watermark::default()
            };
        };
        match self.since.as_ref().map(|since| max.cmp(since)) {
            None | Some(Ordering::Greater) => Watermark {
                since: Some(max),
                seen: self.max_ids,
                ..Watermark::default()
            },
            Some(Ordering::Equal) => {
                let mut seen = self.seen;
                for id in self.max_ids {
                    if !seen.contains(&id) {
                        seen.push(id);
                    }
                }
                Watermark {
                    since: self.since,
                    seen,
                    ..Watermark::default()
                }
            }
            Some(Ordering::Less) => Watermark {
                since: self.since,
                seen: self.seen,
                ..Watermark::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_the_mark_to_its_newest_time_and_the_ids_read_at_it() {
        let mut m = Watermark::default();
        for (id, at) in [("c3", 300), ("c2", 300), ("c1", 100), ("c3", 300)] {
            m.observe(id, at);
        }
        let next = m.finished();
        assert_eq!(next.since, Some(300));
        assert_eq!(next.seen, ["c3", "c2"]);
        assert_eq!(next.max, None);
        assert!(next.already_read("c2", &300));
        assert!(!next.already_read("c2", &301));
        assert!(!next.already_read("c9", &300));
    }

    #[test]
    fn a_run_that_reads_only_the_mark_adds_to_what_was_seen_there() {
        let mut m = Watermark {
            since: Some(300),
            seen: vec!["c3".into()],
            ..Watermark::default()
        };
        m.observe("c4", 300);
        let next = m.finished();
        assert_eq!(next.since, Some(300));
        assert_eq!(next.seen, ["c3", "c4"]);
    }

    #[test]
    fn the_mark_never_moves_back() {
        let empty = Watermark::<i64> {
            since: Some(300),
            seen: vec!["c3".into()],
            ..Watermark::default()
        };
        assert_eq!(empty.clone().finished(), empty);
        let mut older = empty.clone();
        older.observe("c0", 100);
        assert_eq!(older.finished(), empty);
    }

    #[test]
    fn serialises_only_what_is_set() {
        let mut m = Watermark::default();
        assert_eq!(serde_json::to_string(&m).unwrap(), "{}");
        m.observe("a", 5);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"max":5,"max_ids":["a"]}"#);
        assert_eq!(serde_json::from_str::<Watermark<i64>>(&text).unwrap(), m);
    }
}
