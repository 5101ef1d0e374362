//! The tracking plan: which names each planned event arrives as, and what becomes of a track
//! event the plan does not name.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Deserialize;
use switchyard_sdk::message;
use switchyard_sdk::schemars;
use switchyard_sdk::serde_json::{self, Value};

/// Settings of one `[transforms.NAME]` block with `plugin = "rename-events"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The tracking plan: each planned event name, with the other names it arrives as, e.g.
    /// `"Order Completed" = ["order_completed", "checkout_done"]`. A planned name matches
    /// itself; an empty list plans the name with no aliases.
    pub events: BTreeMap<String, Vec<String>>,
    /// A track event whose name the plan does not know: `pass` (the default: forwarded with
    /// its name unchanged) or `drop` (counted as dropped, reason "event not in the tracking
    /// plan").
    #[serde(default)]
    pub unknown: Unknown,
    /// Match names ignoring case, spaces, `_` and `-`, so that `order_completed`,
    /// `orderCompleted` and `Order Completed` are one name. Default false: exact names.
    #[serde(default)]
    pub loose: bool,
    /// A property the name the event arrived with is kept in when it is renamed, e.g.
    /// `original_event`; none by default.
    #[serde(default)]
    pub original_name_property: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    #[default]
    Pass,
    Drop,
}

/// The drop reason of an unplanned event: one fixed text, since the hub counts drops per reason
/// and an event name in it would make a new count for every misspelling.
pub const UNPLANNED: &str = "event not in the tracking plan";
/// The drop reason of a track message without an event name, when unknown events are dropped.
pub const UNNAMED: &str = "track event without a name";

/// The plan compiled into a lookup from every accepted spelling to its planned name.
#[derive(Debug)]
pub struct Plan {
    names: HashMap<String, String>,
    unknown: Unknown,
    loose: bool,
    original_name_property: Option<String>,
}

/// What became of one message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Keep(String),
    Drop(String),
}

impl Plan {
    /// Builds the lookup. Two planned names claiming one spelling is an error naming both.
    pub fn new(config: &Config) -> Result<Plan, String> {
        if config.events.is_empty() {
            return Err(
                "the tracking plan is empty: list events, e.g. events = { \"Order Completed\" = [\"order_completed\"] }"
                    .into(),
            );
        }
        if let Some(p) = &config.original_name_property {
            if p.is_empty() || p.contains('.') {
                return Err(format!(
                    "original_name_property = \"{p}\" must be one property name, without dots"
                ));
            }
        }
        let mut names: HashMap<String, String> = HashMap::new();
        for (planned, aliases) in &config.events {
            if planned.trim().is_empty() {
                return Err("events: a planned event name is empty".into());
            }
            for spelling in std::iter::once(planned).chain(aliases) {
                let key = key(spelling, config.loose);
                match names.get(&key) {
                    Some(other) if other != planned => {
                        return Err(format!(
                        "events: `{spelling}` is claimed by both \"{other}\" and \"{planned}\"{}",
                        if config.loose {
                            " (loose matching ignores case, spaces, '_' and '-')"
                        } else {
                            ""
                        }
                    ))
                    }
                    _ => {
                        names.insert(key, planned.clone());
                    }
                }
            }
        }
        Ok(Plan {
            names,
            unknown: config.unknown,
            loose: config.loose,
            original_name_property: config.original_name_property.clone(),
        })
    }

    /// Renames one message (JSON text). Only `track` messages have an event name to plan;
    /// identify, page, screen, group and alias pass untouched. A message that is not a JSON
    /// object is dropped, saying so.
    pub fn apply(&self, text: &str) -> Outcome {
        let mut value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Outcome::Drop("not a JSON object".into()),
        };
        if message::message_type(&value) != Some("track") {
            return Outcome::Keep(text.to_string());
        }
        let Some(event) = value.get("event").and_then(Value::as_str) else {
            return match self.unknown {
                Unknown::Pass => Outcome::Keep(text.to_string()),
                Unknown::Drop => Outcome::Drop(UNNAMED.into()),
            };
        };
        let planned = match self.names.get(&key(event, self.loose)) {
            Some(planned) => planned,
            None if self.unknown == Unknown::Drop => return Outcome::Drop(UNPLANNED.into()),
            None => return Outcome::Keep(text.to_string()),
        };
        if planned == event {
            // Already the planned name: the text passes as it came, byte for byte.
            return Outcome::Keep(text.to_string());
        }
        let original = event.to_string();
        value["event"] = Value::String(planned.clone());
        if let Some(property) = &self.original_name_property {
            let properties = value
                .as_object_mut()
                .map(|m| {
                    m.entry("properties")
                        .or_insert_with(|| Value::Object(Default::default()))
                })
                .and_then(Value::as_object_mut);
            if let Some(properties) = properties {
                properties.insert(property.clone(), Value::String(original));
            }
        }
        match serde_json::to_string(&value) {
            Ok(text) => Outcome::Keep(text),
            Err(e) => Outcome::Drop(format!("could not serialise the renamed message: {e}")),
        }
    }
}

/// The lookup key of a name: itself, or with loose matching lowercased without spaces, `_`
/// and `-`.
fn key(name: &str, loose: bool) -> String {
    if loose {
        name.chars()
            .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(config: Value) -> Plan {
        Plan::new(&serde_json::from_value(config).unwrap()).unwrap()
    }

    fn kept(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Keep(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected keep, got {other:?}"),
        }
    }

    fn track(event: &str) -> String {
        json!({"type": "track", "event": event, "properties": {"total": 10}}).to_string()
    }

    #[test]
    fn renames_aliases_to_the_planned_name() {
        let p = plan(json!({"events": {"Order Completed": ["order_completed", "checkout_done"]}}));
        let out = kept(p.apply(&track("checkout_done")));
        assert_eq!(out["event"], "Order Completed");
        assert_eq!(out["properties"]["total"], 10);
        // Exact by default: another spelling is unknown, and unknown passes by default.
        assert_eq!(
            kept(p.apply(&track("orderCompleted")))["event"],
            "orderCompleted"
        );
        // The planned name passes byte for byte.
        assert_eq!(
            p.apply(&track("Order Completed")),
            Outcome::Keep(track("Order Completed"))
        );
    }

    #[test]
    fn unknown_events_are_dropped_when_configured_with_a_fixed_reason() {
        let p = plan(json!({"events": {"Signed Up": []}, "unknown": "drop"}));
        assert_eq!(p.apply(&track("signup")), Outcome::Drop(UNPLANNED.into()));
        assert_eq!(p.apply(&track("other")), Outcome::Drop(UNPLANNED.into()));
        let unnamed = json!({"type": "track", "properties": {}}).to_string();
        assert_eq!(p.apply(&unnamed), Outcome::Drop(UNNAMED.into()));
        assert_eq!(kept(p.apply(&track("Signed Up")))["event"], "Signed Up");
    }

    #[test]
    fn other_message_types_pass_untouched() {
        let p = plan(json!({"events": {"Signed Up": ["signup"]}, "unknown": "drop"}));
        for m in [
            json!({"type": "identify", "userId": "u1", "traits": {"event": "signup"}}),
            json!({"type": "page", "name": "signup"}),
            json!({"type": "alias", "previousId": "a", "userId": "b"}),
        ] {
            assert_eq!(p.apply(&m.to_string()), Outcome::Keep(m.to_string()));
        }
        assert_eq!(p.apply("7"), Outcome::Drop("not a JSON object".into()));
    }

    #[test]
    fn loose_matching_ignores_case_spaces_underscores_and_dashes() {
        let p = plan(json!({"events": {"Order Completed": []}, "loose": true, "unknown": "drop"}));
        for spelling in [
            "order_completed",
            "orderCompleted",
            "ORDER-COMPLETED",
            "Order  Completed",
        ] {
            assert_eq!(
                kept(p.apply(&track(spelling)))["event"],
                "Order Completed",
                "{spelling}"
            );
        }
        assert_eq!(
            p.apply(&track("Order Complete")),
            Outcome::Drop(UNPLANNED.into())
        );
    }

    #[test]
    fn keeps_the_original_name_when_asked() {
        let p = plan(
            json!({"events": {"Order Completed": ["buy"]}, "original_name_property": "original_event"}),
        );
        let out = kept(p.apply(&track("buy")));
        assert_eq!(out["properties"]["original_event"], "buy");
        let bare = json!({"type": "track", "event": "buy"}).to_string();
        assert_eq!(
            kept(p.apply(&bare))["properties"],
            json!({"original_event": "buy"})
        );
    }

    #[test]
    fn config_errors_say_what_collides() {
        let err = |c: Value| Plan::new(&serde_json::from_value(c).unwrap()).unwrap_err();
        assert!(err(json!({"events": {}})).contains("empty"));
        let e = err(json!({"events": {"A": ["x"], "B": ["x"]}}));
        assert!(
            e.contains("`x`") && e.contains("\"A\"") && e.contains("\"B\""),
            "{e}"
        );
        let e =
            err(json!({"events": {"Order Completed": [], "order_completed": []}, "loose": true}));
        assert!(e.contains("loose"), "{e}");
        assert!(
            err(json!({"events": {"A": []}, "original_name_property": "a.b"})).contains("dots")
        );
        assert!(
            serde_json::from_value::<Config>(json!({"events": {}, "unknown": "keep"})).is_err()
        );
    }
}
