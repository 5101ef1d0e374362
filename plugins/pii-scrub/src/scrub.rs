//! The scrubbing itself, without the plugin glue: parse the config's paths once per call, then
//! remove or hash what they name in each message.

use serde::Deserialize;
use switchyard_sdk::message::{self, Path};
use switchyard_sdk::pii::sha256_hex;
use switchyard_sdk::schemars;
use switchyard_sdk::serde_json::{self, Value};

/// Settings of one `[transforms.NAME]` block with `plugin = "pii-scrub"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fields removed from every message, as dotted paths under `properties`, `traits` or
    /// `context`; `*` matches every member or element at its level, e.g. `context.ip`,
    /// `properties.products.*.customer_email`.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Fields replaced by the lowercase hex SHA-256 of their value, paths as for `drop`. A
    /// number or boolean is hashed as its JSON text (`42` as "42"); an object or array has each
    /// value inside it hashed; null stays null.
    #[serde(default)]
    pub hash: Vec<String>,
    /// What is done to a string before it is hashed: `none` (the default: the exact text) or
    /// `trim_lowercase` (surrounding spaces removed and lowercased, as Meta and Google ask of
    /// emails, so that the hash still matches on their side).
    #[serde(default)]
    pub normalize: Normalize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    #[default]
    None,
    TrimLowercase,
}

/// The message parts a rule may name. Paths elsewhere (`userId`, `messageId`, `type`, ...)
/// would break identity resolution or the message itself, so the config refuses them.
const ROOTS: [&str; 3] = ["properties", "traits", "context"];

/// The config's paths, parsed and checked.
#[derive(Debug)]
pub struct Scrubber {
    drop: Vec<Path>,
    hash: Vec<Path>,
    normalize: Normalize,
}

/// What became of one message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Keep(String),
    Drop(String),
}

impl Scrubber {
    /// Parses the paths. An error names the path and what to write instead.
    pub fn new(config: &Config) -> Result<Scrubber, String> {
        if config.drop.is_empty() && config.hash.is_empty() {
            return Err("nothing to scrub: list paths in `drop` and/or `hash`, e.g. drop = [\"context.ip\"], hash = [\"traits.email\"]".into());
        }
        let parse = |key: &str, paths: &[String]| -> Result<Vec<Path>, String> {
            paths
                .iter()
                .map(|p| {
                    let path = Path::parse(p).map_err(|e| format!("{key}: {e}"))?;
                    match path.root() {
                        Some(root) if ROOTS.contains(&root) && path.segments().len() > 1 => Ok(path),
                        _ => Err(format!(
                            "{key}: path `{p}` must name a field under properties, traits or context (e.g. `properties.{}`)",
                            p.rsplit('.').next().unwrap_or("email")
                        )),
                    }
                })
                .collect()
        };
        Ok(Scrubber {
            drop: parse("drop", &config.drop)?,
            hash: parse("hash", &config.hash)?,
            normalize: config.normalize,
        })
    }

    /// Scrubs one message (JSON text). A message that is not a JSON object is dropped, saying
    /// so: passing it on unscrubbed could leak what this transform exists to remove.
    pub fn apply(&self, message: &str) -> Outcome {
        let mut value: Value = match serde_json::from_str(message) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Outcome::Drop("not a JSON object".into()),
        };
        for path in &self.drop {
            path.remove(&mut value);
        }
        for path in &self.hash {
            path.for_each_mut(&mut value, &mut |v| {
                message::for_each_scalar_mut(v, &mut |scalar| {
                    *scalar = Value::String(self.hash_scalar(scalar))
                })
            });
        }
        match serde_json::to_string(&value) {
            Ok(text) => Outcome::Keep(text),
            Err(e) => Outcome::Drop(format!("could not serialise the scrubbed message: {e}")),
        }
    }

    fn hash_scalar(&self, scalar: &Value) -> String {
        let text = match scalar {
            Value::String(s) => match self.normalize {
                Normalize::None => return sha256_hex(s),
                Normalize::TrimLowercase => return sha256_hex(&s.trim().to_lowercase()),
            },
            other => other.to_string(),
        };
        sha256_hex(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrubber(config: Value) -> Scrubber {
        Scrubber::new(&serde_json::from_value(config).unwrap()).unwrap()
    }

    fn kept(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Keep(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected keep, got {other:?}"),
        }
    }

    // SHA-256 test vector: sha256("abc") from FIPS 180-2, appendix B.1.
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn drops_and_hashes_named_fields_and_leaves_the_rest() {
        let s = scrubber(json!({
            "drop": ["context.ip", "properties.card.*"],
            "hash": ["traits.email", "properties.code"]
        }));
        let message = json!({
            "type": "identify", "userId": "u1", "messageId": "m1",
            "traits": {"email": "abc", "plan": "pro"},
            "properties": {"code": 42, "card": {"number": "4111", "cvc": "123"}},
            "context": {"ip": "203.0.113.9", "library": {"name": "analytics-node"}}
        });
        let out = kept(s.apply(&message.to_string()));
        assert_eq!(out["traits"]["email"], SHA256_ABC);
        assert_eq!(out["traits"]["plan"], "pro");
        assert_eq!(out["properties"]["code"], sha256_hex("42"));
        assert_eq!(out["properties"]["card"], json!({}));
        assert!(out["context"].get("ip").is_none());
        assert_eq!(out["context"]["library"]["name"], "analytics-node");
        assert_eq!(out["userId"], "u1");
        assert_eq!(out["messageId"], "m1");
    }

    #[test]
    fn normalizes_before_hashing_when_asked() {
        let plain = scrubber(json!({"hash": ["traits.email"]}));
        let norm = scrubber(json!({"hash": ["traits.email"], "normalize": "trim_lowercase"}));
        let m = json!({"traits": {"email": "  ABC "}}).to_string();
        assert_eq!(kept(norm.apply(&m))["traits"]["email"], SHA256_ABC);
        assert_eq!(
            kept(plain.apply(&m))["traits"]["email"],
            sha256_hex("  ABC ")
        );
    }

    #[test]
    fn hashes_every_value_inside_objects_and_arrays_and_keeps_null() {
        let s = scrubber(json!({"hash": ["traits.address", "properties.products.*.email"]}));
        let m = json!({
            "traits": {"address": {"street": "abc", "zip": null, "lines": ["abc", true]}},
            "properties": {"products": [{"email": "abc", "sku": "s1"}, {"sku": "s2"}]}
        });
        let out = kept(s.apply(&m.to_string()));
        assert_eq!(out["traits"]["address"]["street"], SHA256_ABC);
        assert_eq!(out["traits"]["address"]["zip"], Value::Null);
        assert_eq!(out["traits"]["address"]["lines"][1], sha256_hex("true"));
        assert_eq!(out["properties"]["products"][0]["email"], SHA256_ABC);
        assert_eq!(out["properties"]["products"][0]["sku"], "s1");
        assert_eq!(out["properties"]["products"][1], json!({"sku": "s2"}));
    }

    #[test]
    fn absent_fields_leave_the_message_unchanged() {
        let s = scrubber(json!({"drop": ["context.ip"], "hash": ["traits.email"]}));
        let m = json!({"type": "track", "event": "Signed Up", "properties": {"plan": "pro"}});
        assert_eq!(kept(s.apply(&m.to_string())), m);
    }

    #[test]
    fn a_message_that_is_not_an_object_is_dropped_not_passed_unscrubbed() {
        let s = scrubber(json!({"drop": ["context.ip"]}));
        assert_eq!(s.apply("[1,2]"), Outcome::Drop("not a JSON object".into()));
        assert_eq!(s.apply("{nope"), Outcome::Drop("not a JSON object".into()));
    }

    #[test]
    fn config_errors_name_the_path() {
        let err = |c: Value| Scrubber::new(&serde_json::from_value(c).unwrap()).unwrap_err();
        assert!(err(json!({})).contains("nothing to scrub"));
        let e = err(json!({"drop": ["userId"]}));
        assert!(
            e.contains("`userId`") && e.contains("properties, traits or context"),
            "{e}"
        );
        assert!(err(json!({"hash": ["traits"]})).contains("`traits`"));
        assert!(err(json!({"hash": ["traits..email"]})).contains("hash:"));
        assert!(serde_json::from_value::<Config>(json!({"hash": [], "salt": "x"})).is_err());
    }
}
