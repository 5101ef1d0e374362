//! The Measurement Protocol validation server's answer (`POST /debug/mp/collect`):
//! `{"validationMessages": [{"fieldPath", "description", "validationCode"}]}`, empty when the
//! payload is valid ("Validate events", developers.google.com/analytics/devguides/collection/
//! protocol/ga4/validating-events, checked 2026-12-06). Codes: `VALUE_INVALID`,
//! `VALUE_REQUIRED`, `NAME_INVALID`, `NAME_RESERVED`, `VALUE_OUT_OF_BOUNDS`,
//! `EXCEEDED_MAX_ENTITIES`, `NAME_DUPLICATED`.

use std::collections::BTreeMap;

use serde::Deserialize;
use switchyard_sdk::{serde_json, CallError};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(default)]
    pub field_path: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub validation_code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    validation_messages: Vec<Message>,
}

/// The messages of a validation answer.
pub fn messages(body: &[u8]) -> Result<Vec<Message>, CallError> {
    serde_json::from_slice::<Answer>(body)
        .map(|a| a.validation_messages)
        .map_err(|e| {
            CallError::Failed(format!(
                "unexpected validation server answer: {e}: {}",
                String::from_utf8_lossy(body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        })
}

/// `CODE at PATH: description; ...`
pub fn describe(messages: &[Message]) -> String {
    messages.iter().map(one).collect::<Vec<_>>().join("; ")
}

fn one(m: &Message) -> String {
    format!(
        "{} at {}: {}",
        m.validation_code, m.field_path, m.description
    )
}

/// Which event of a request of `events` each message is about, with its text: by the index in
/// `fieldPath` (`events[2].name`, `events.2.params`) or in the description ("Event at index:
/// [2]"); a message about the request as a whole applies to every event.
pub fn assign(messages: &[Message], events: usize) -> Vec<(usize, String)> {
    let mut by_event: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for m in messages {
        match index(m).filter(|i| *i < events) {
            Some(i) => by_event.entry(i).or_default().push(one(m)),
            None => {
                for i in 0..events {
                    by_event.entry(i).or_default().push(one(m));
                }
            }
        }
    }
    by_event
        .into_iter()
        .map(|(i, reasons)| (i, reasons.join("; ")))
        .collect()
}

fn index(m: &Message) -> Option<usize> {
    let after = |text: &str, marker: &str| -> Option<usize> {
        let start = text.find(marker)? + marker.len();
        let digits: String = text[start..]
            .chars()
            .skip_while(|c| *c == '[' || *c == ' ')
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    after(&m.field_path, "events[")
        .or_else(|| after(&m.field_path, "events."))
        .or_else(|| after(&m.description, "index:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer Google's guide shows for an invalid event name.
    #[test]
    fn reads_googles_example_and_assigns_by_index() {
        let body = br#"{"validationMessages": [{"fieldPath": "events", "description": "Event at index: [0] has invalid name [_badEventName]. Names must start with an alphabetic character.", "validationCode": "NAME_INVALID"}]}"#;
        let m = messages(body).unwrap();
        assert_eq!(m[0].validation_code, "NAME_INVALID");
        let a = assign(&m, 3);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 0);
        assert!(
            a[0].1
                .starts_with("NAME_INVALID at events: Event at index: [0]"),
            "{}",
            a[0].1
        );
        assert!(messages(br#"{"validationMessages": []}"#)
            .unwrap()
            .is_empty());
        assert!(messages(b"{}").unwrap().is_empty());
        assert!(messages(b"<html>").is_err());
    }

    #[test]
    fn paths_with_indexes_and_request_wide_messages() {
        let msg = |path: &str, desc: &str| Message {
            field_path: path.into(),
            description: desc.into(),
            validation_code: "VALUE_INVALID".into(),
        };
        let a = assign(
            &[
                msg("events[2].params.value", "bad"),
                msg("events.1.name", "bad"),
                msg("client_id", "missing"),
            ],
            3,
        );
        assert_eq!(a.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(a[0].1.contains("client_id") && !a[0].1.contains("events"));
        assert!(a[2].1.contains("events[2].params.value") && a[2].1.contains("client_id"));
        assert_eq!(describe(&[msg("x", "y")]), "VALUE_INVALID at x: y");
    }
}
