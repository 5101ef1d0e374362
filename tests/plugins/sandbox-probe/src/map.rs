//! The benchmark's mapping workload, shared verbatim by the plugin and the native baselines:
//! parse a record's fields, pick and rename fields as a sync mapping would, normalise the email,
//! and serialise the result.

use switchyard_sdk::serde_json::{self, Map, Value};

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
