//! Masking personal data for principals that may not see it (the `viewer` role): identifier
//! values, and the values at keys that name a person (email, phone, name, address, IP, user and
//! anonymous ids) wherever they sit in a JSON document (traits, event properties, context).
//! The shape stays visible, so a viewer can still tell that a profile has an email, and which
//! domain it is at, without reading it.

use serde_json::Value;

/// Keys whose values are personal data, compared without case, `_` or `-`.
const PERSONAL_KEYS: &[&str] = &[
    "email",
    "phone",
    "name",
    "firstname",
    "lastname",
    "fullname",
    "username",
    "address",
    "street",
    "postalcode",
    "zip",
    "birthday",
    "dateofbirth",
    "ip",
    "userid",
    "anonymousid",
    "value",
];

fn is_personal(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    PERSONAL_KEYS.contains(&k.as_str())
}

/// `ada@example.com` -> `a•••@example.com`; anything else keeps its first character.
pub fn mask_str(s: &str) -> String {
    let mut chars = s.chars();
    let first: String = chars.next().map(String::from).unwrap_or_default();
    match s.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("{first}•••@{domain}"),
        _ => format!("{first}•••"),
    }
}

/// Masks, in place, every value at a personal key (recursively) in `v`. `value` counts as a
/// personal key because identifiers serialise as `{"kind": .., "value": ..}`.
pub fn mask_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map.iter_mut() {
                if is_personal(k) {
                    mask_all(inner);
                } else {
                    mask_json(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// Masks every scalar under `v` (a personal key's value may be an object, e.g. an address).
fn mask_all(v: &mut Value) {
    match v {
        Value::String(s) => *s = mask_str(s),
        Value::Number(_) => *v = Value::String("•••".into()),
        Value::Object(map) => map.values_mut().for_each(mask_all),
        Value::Array(items) => items.iter_mut().for_each(mask_all),
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_personal_values_and_keeps_the_rest() {
        let mut v = json!({
            "identifiers": [{"kind": "email", "value": "ada@example.com"}, {"kind": "user_id", "value": "u-42"}],
            "traits": {"email": "ada@example.com", "First_Name": "Ada", "plan": "pro", "ltv": 420,
                       "address": {"street": "1 Main St", "city": "Paris"}, "phone": 3312345678i64},
            "context": {"ip": "10.0.0.1", "userAgent": "Firefox"},
            "userId": "u-42"
        });
        mask_json(&mut v);
        assert_eq!(
            v,
            json!({
                "identifiers": [{"kind": "email", "value": "a•••@example.com"}, {"kind": "user_id", "value": "u•••"}],
                "traits": {"email": "a•••@example.com", "First_Name": "A•••", "plan": "pro", "ltv": 420,
                           "address": {"street": "1•••", "city": "P•••"}, "phone": "•••"},
                "context": {"ip": "1•••", "userAgent": "Firefox"},
                "userId": "u•••"
            })
        );
    }

    #[test]
    fn mask_str_keeps_only_a_hint() {
        assert_eq!(mask_str("ada@example.com"), "a•••@example.com");
        assert_eq!(mask_str("+33612345678"), "+•••");
        assert_eq!(mask_str(""), "•••");
        assert_eq!(mask_str("é@x"), "é•••@x");
    }
}
