//! Consent, enforced by the host: what a message says a person consented to, and whether a
//! profile's consent lets its data reach a destination.
//!
//! Clients send Segment's consent object, `context.consent.categoryPreferences`, a map of
//! category name to `true`/`false` (Segment, "Consent in Segment Connections": "the consent
//! object ... stamp[s] events with the end user consent preferences captured by your consent
//! management platform", https://www.twilio.com/docs/segment/privacy/consent-management/consent-in-segment-connections).
//! The hub keeps each profile's latest state per category, by the message's own timestamp, and
//! a destination that lists categories (`[destinations.NAME] consent = ["marketing"]`) gets a
//! profile only when every one of them is granted: Segment forwards "only if the user has
//! opted-in to all" the categories mapped to a destination (Consent Management FAQ,
//! https://www.twilio.com/docs/segment/privacy/consent-management/consent-faq).
//!
//! Category names are compared without regard to case and surrounding blanks (CMPs send
//! `Advertising`, operators write `advertising`).
//!
//! A profile that never sent a consent object is decided by `[hub] consent_default`. Segment's
//! rule is "Events without the consent object continue to flow to destinations without consent
//! enforcement" (same page): that is `"allow"`, right where consent may be presumed until
//! withdrawn (opt-out regimes such as the CCPA). The default is `"deny"`: under the GDPR and
//! the ePrivacy Directive consent for marketing and advertising must be given before the data
//! is used (opt-in), so a destination that needs consent gets nobody who has not given it. A
//! profile that sent a consent object which does not name a required category has not
//! granted it, whatever the default.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

/// `[hub] consent_default`: what a profile with no consent signal at all means for a
/// destination that requires consent. See the module doc.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsentDefault {
    /// No signal, no consent (opt-in: GDPR, ePrivacy).
    #[default]
    Deny,
    /// No signal, no enforcement (Segment's behaviour; opt-out regimes).
    Allow,
}

impl ConsentDefault {
    pub fn allows(self) -> bool {
        self == ConsentDefault::Allow
    }
}

/// A category name as the hub stores and compares it.
pub fn category(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The consent preferences a message's `context` carries, `(category, granted)`; empty when it
/// has no consent object. Values that are not booleans are left out: a CMP that sends
/// `"yes"` is not read as consent.
pub fn preferences(context: &serde_json::Map<String, Value>) -> Vec<(String, bool)> {
    let Some(prefs) = context
        .get("consent")
        .and_then(|c| c.get("categoryPreferences"))
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    prefs
        .iter()
        .filter_map(|(name, v)| {
            let name = category(name);
            (!name.is_empty()).then_some(())?;
            v.as_bool().map(|granted| (name, granted))
        })
        .collect()
}

/// Whether a profile whose stored state is `state` (category → granted; `None`: it never sent
/// a consent object) may be sent to a destination requiring `required` (normalised names).
pub fn allows(
    state: Option<&HashMap<String, bool>>,
    required: &[String],
    default: ConsentDefault,
) -> bool {
    if required.is_empty() {
        return true;
    }
    match state {
        None => default.allows(),
        Some(state) => required.iter().all(|c| state.get(c) == Some(&true)),
    }
}

/// Whether an event's own consent stamp (its `context.consent`, if any) allows it to reach a
/// destination requiring `required`. An event without a stamp is judged by its profile alone.
pub fn event_allows(body: &Value, required: &[String]) -> bool {
    let Some(context) = body.get("context").and_then(Value::as_object) else {
        return true;
    };
    if context.get("consent").is_none() {
        return true;
    }
    let stamp: HashMap<String, bool> = preferences(context).into_iter().collect();
    required.iter().all(|c| stamp.get(c) == Some(&true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn reads_segment_consent_object() {
        let c = ctx(json!({"consent": {"categoryPreferences": {
            "Advertising": true, " Marketing ": false, "Analytics": "yes", "": true}}}));
        let mut p = preferences(&c);
        p.sort();
        assert_eq!(
            p,
            vec![("advertising".into(), true), ("marketing".into(), false)]
        );
        assert!(preferences(&ctx(json!({"ip": "1.2.3.4"}))).is_empty());
        assert!(preferences(&ctx(json!({"consent": {"categoryPreferences": 3}}))).is_empty());
    }

    #[test]
    fn every_required_category_must_be_granted() {
        let req = vec!["marketing".to_string(), "advertising".to_string()];
        let both: HashMap<_, _> = [
            ("marketing".to_string(), true),
            ("advertising".to_string(), true),
        ]
        .into();
        let one: HashMap<_, _> = [
            ("marketing".to_string(), true),
            ("advertising".to_string(), false),
        ]
        .into();
        let unnamed: HashMap<_, _> = [("marketing".to_string(), true)].into();
        for d in [ConsentDefault::Deny, ConsentDefault::Allow] {
            assert!(allows(Some(&both), &req, d));
            assert!(!allows(Some(&one), &req, d));
            assert!(
                !allows(Some(&unnamed), &req, d),
                "an unnamed category is not granted"
            );
            assert!(allows(None, &[], d), "no requirement, no filter");
        }
        assert!(!allows(None, &req, ConsentDefault::Deny));
        assert!(allows(None, &req, ConsentDefault::Allow));
    }

    #[test]
    fn an_events_own_stamp_counts() {
        let req = vec!["marketing".to_string()];
        assert!(event_allows(&json!({"event": "x"}), &req));
        assert!(event_allows(
            &json!({"context": {"consent": {"categoryPreferences": {"Marketing": true}}}}),
            &req
        ));
        assert!(!event_allows(
            &json!({"context": {"consent": {"categoryPreferences": {"Marketing": false}}}}),
            &req
        ));
        assert!(!event_allows(
            &json!({"context": {"consent": {"categoryPreferences": {}}}}),
            &req
        ));
    }
}
