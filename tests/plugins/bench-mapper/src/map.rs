//! The benchmark's mapping workloads, shared verbatim by the plugin and the native baselines:
//! parse a record's fields, pick and rename fields as a sync mapping would, normalise the email,
//! and serialise the result. Two ways a plugin author writes that:
//!
//! - [`map_record`] parses the fields into a `serde_json::Value` (any shape, every key and string
//!   allocated, a `BTreeMap` per object), as plugins that forward arbitrary fields do;
//! - [`map_record_typed`] deserialises into a struct that borrows from the record and serialises
//!   a struct, as plugins that know the fields they send do.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use switchyard_sdk::serde_json::{self, value::RawValue, Map, Value};

pub fn map_record(key: &str, fields: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let input: Value = serde_json::from_str(fields).map_err(|e| format!("fields: {e}"))?;
    let obj = input.as_object().ok_or("fields are not an object")?;
    let mut mapped = Map::with_capacity(6);
    mapped.insert("external_id".into(), Value::String(key.to_string()));
    if let Some(email) = obj.get("email").and_then(Value::as_str) {
        mapped.insert("email".into(), Value::String(email.trim().to_lowercase()));
    }
    for (from, to) in [
        ("first_name", "FNAME"),
        ("last_name", "LNAME"),
        ("plan", "plan_tier"),
    ] {
        if let Some(v) = obj.get(from) {
            mapped.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = obj.get("orders").and_then(Value::as_i64) {
        mapped.insert("is_buyer".into(), Value::Bool(n > 0));
    }
    serde_json::to_writer(&mut *out, &Value::Object(mapped)).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(())
}

/// The fields the typed mapping reads; the others are skipped unparsed.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    first_name: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    last_name: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    plan: Option<&'a RawValue>,
    orders: Option<i64>,
}

/// A field that is there, `null` included (a plain `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What the typed mapping sends: the same object [`map_record`] builds, keys in the same order.
#[derive(Serialize)]
struct Mapped<'a> {
    #[serde(rename = "FNAME", skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a RawValue>,
    #[serde(rename = "LNAME", skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    external_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_buyer: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_tier: Option<&'a RawValue>,
}

pub fn map_record_typed(key: &str, fields: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let input: Fields = serde_json::from_str(fields).map_err(|e| format!("fields: {e}"))?;
    let mapped = Mapped {
        first_name: input.first_name,
        last_name: input.last_name,
        email: input.email.map(|e| e.trim().to_lowercase()),
        external_id: key,
        is_buyer: input.orders.map(|n| n > 0),
        plan_tier: input.plan,
    };
    serde_json::to_writer(&mut *out, &mapped).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_write_the_same_json() {
        for fields in [
            r#"{"email":"  Ada@Example.COM ","first_name":"Ada","last_name":"Lovelace","plan":"pro","orders":3,"extra":[1,{"a":2}]}"#,
            r#"{"first_name":"Ad\"a","plan":null,"orders":0}"#,
            r#"{"email":"caf\u00e9@EXAMPLE.com"}"#,
            r#"{}"#,
        ] {
            let (mut dynamic, mut typed) = (Vec::new(), Vec::new());
            map_record("k-1", fields, &mut dynamic).unwrap();
            map_record_typed("k-1", fields, &mut typed).unwrap();
            assert_eq!(
                String::from_utf8(dynamic).unwrap(),
                String::from_utf8(typed).unwrap(),
                "{fields}"
            );
        }
    }

    #[test]
    fn both_mappings_reject_fields_that_are_not_an_object() {
        for fields in ["[1,2]", "not json", "\"text\""] {
            assert!(
                map_record("k", fields, &mut Vec::new()).is_err(),
                "{fields}"
            );
            assert!(
                map_record_typed("k", fields, &mut Vec::new()).is_err(),
                "{fields}"
            );
        }
    }
}
