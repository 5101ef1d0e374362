//! A message's `integrations` object, read the way Segment reads it.
//!
//! Segment's spec ("Spec: Common fields", https://www.twilio.com/docs/segment/connections/spec/common,
//! and "Destination data control", segmentio/segment-docs src/connections/destination-data-control.md):
//! `integrations` is a dictionary of destination names to enable or disable; `"All": false`
//! turns every destination off except those then named `true`; a named destination set to
//! `false` is off even with `All` on; destination flags are case sensitive and match the
//! destination's name. A destination named with an object (destination-specific options, as
//! in `"Google Analytics": {"clientId": "..."}`) is on. Without the object, or without
//! `All`, everything is on.

use serde_json::Value;

/// Whether a message with this `integrations` value goes to a destination known by any of
/// `names` (exact, case-sensitive). The first name the object mentions decides; else `All`.
pub fn enabled(integrations: Option<&Value>, names: &[String]) -> bool {
    let Some(Value::Object(map)) = integrations else {
        return true;
    };
    for name in names {
        if let Some(flag) = map.get(name) {
            return on(flag);
        }
    }
    map.get("All").is_none_or(on)
}

/// `false` is off; `true` or an options object is on; anything else (null, a string) is
/// ignored as Segment's libraries do, that is, left on.
fn on(flag: &Value) -> bool {
    !matches!(flag, Value::Bool(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn segment_semantics() {
        let meta = names(&["meta_capi", "Facebook Conversions API"]);
        // No object, an empty one, All on: on.
        assert!(enabled(None, &meta));
        assert!(enabled(Some(&json!({})), &meta));
        assert!(enabled(Some(&json!({"All": true})), &meta));
        // All off: off, unless this destination is named on (true or options).
        assert!(!enabled(Some(&json!({"All": false})), &meta));
        assert!(enabled(
            Some(&json!({"All": false, "Facebook Conversions API": true})),
            &meta
        ));
        assert!(enabled(
            Some(&json!({"All": false, "meta_capi": {"test_event_code": "X"}})),
            &meta
        ));
        // Named off: off even with All on; another destination's flag changes nothing.
        assert!(!enabled(
            Some(&json!({"All": true, "Facebook Conversions API": false})),
            &meta
        ));
        assert!(enabled(Some(&json!({"Mixpanel": false})), &meta));
        assert!(!enabled(
            Some(&json!({"All": false, "Mixpanel": true})),
            &meta
        ));
        // Case sensitive, as Segment's flags are.
        assert!(!enabled(
            Some(&json!({"All": false, "facebook conversions api": true})),
            &meta
        ));
        // Not an object (the tracking API refuses these, but old rows may hold them): on.
        assert!(enabled(Some(&json!(null)), &meta));
    }
}
