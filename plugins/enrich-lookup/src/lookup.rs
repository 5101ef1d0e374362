//! Lookups: read a key from the message, find it in a table given in config, write what was
//! found into the message.

use std::collections::BTreeMap;

use serde::Deserialize;
use switchyard_sdk::message::{self, Path, Segment};
use switchyard_sdk::schemars;
use switchyard_sdk::serde_json::{self, Value};

/// Settings of one `[transforms.NAME]` block with `plugin = "enrich-lookup"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lookups, applied in order (a later one may read what an earlier one wrote).
    pub lookups: Vec<LookupConfig>,
}

/// One lookup.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Where the key is read, a dotted path, e.g. `properties.product_id`. With one `*`
    /// (`properties.products.*.product_id`) every element is looked up on its own.
    pub from: String,
    /// Where the value found is written, e.g. `properties.category`. When `from` has a `*`,
    /// `into` starts with the same prefix up to it (`properties.products.*.category`), and the
    /// value goes into the same element. An object found is merged into the object at `into`
    /// (`into = "properties"` adds its fields beside the others).
    pub into: String,
    /// The table: key → value (any JSON). A number or boolean key in the message is looked up
    /// as its text (`1001` as "1001").
    pub table: BTreeMap<String, Value>,
    /// Written when the key is absent from the message or from the table; without it, such a
    /// message follows `missing`.
    #[serde(default)]
    pub default: Option<Value>,
    /// A message whose key is absent or not in the table (and no `default`): `pass` (the
    /// default: unchanged) or `drop` (counted, reason "lookup key not found").
    #[serde(default)]
    pub missing: Missing,
    /// Replace a value the message already has at `into`. Default false: what the message
    /// carries wins, and only absent fields are filled in.
    #[serde(default)]
    pub overwrite: bool,
    /// Only track events with these names are looked up (others pass); empty: every message.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    #[default]
    Pass,
    Drop,
}

/// The drop reason of a message whose key is not found, fixed so the hub's per-reason counts
/// stay few.
pub const NOT_FOUND: &str = "lookup key not found";

/// One lookup, its paths parsed and checked.
#[derive(Debug)]
struct Lookup<'c> {
    config: &'c LookupConfig,
    /// Segments up to and including the `*` both paths share; empty without one.
    prefix: Vec<Segment>,
    from: Vec<Segment>,
    into: Vec<Segment>,
}

/// The config's lookups, ready to apply.
#[derive(Debug)]
pub struct Enricher<'c> {
    lookups: Vec<Lookup<'c>>,
}

/// What became of one message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Keep(String),
    Drop(String),
}

impl<'c> Enricher<'c> {
    /// Parses every lookup's paths; errors name the lookup (1-based) and the path.
    pub fn new(config: &'c Config) -> Result<Enricher<'c>, String> {
        if config.lookups.is_empty() {
            return Err("no lookups: add one, e.g. lookups = [{ from = \"properties.product_id\", into = \"properties.category\", table = { \"p1\" = \"shoes\" } }]".into());
        }
        let lookups = config
            .lookups
            .iter()
            .enumerate()
            .map(|(i, c)| Lookup::new(c).map_err(|e| format!("lookups[{}]: {e}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Enricher { lookups })
    }

    /// Enriches one message (JSON text).
    pub fn apply(&self, text: &str) -> Outcome {
        let mut value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Outcome::Drop("not a JSON object".into()),
        };
        let mut changed = false;
        for lookup in &self.lookups {
            if !lookup.applies_to(&value) {
                continue;
            }
            let mut missing = false;
            message::visit_mut(&mut value, &lookup.prefix, &mut |element| match lookup
                .enrich(element)
            {
                Some(c) => changed |= c,
                None => missing = true,
            });
            if missing && lookup.config.missing == Missing::Drop {
                return Outcome::Drop(NOT_FOUND.into());
            }
        }
        if !changed {
            return Outcome::Keep(text.to_string());
        }
        match serde_json::to_string(&value) {
            Ok(text) => Outcome::Keep(text),
            Err(e) => Outcome::Drop(format!("could not serialise the enriched message: {e}")),
        }
    }
}

impl<'c> Lookup<'c> {
    fn new(config: &'c LookupConfig) -> Result<Lookup<'c>, String> {
        let from = Path::parse(&config.from).map_err(|e| format!("from: {e}"))?;
        let into = Path::parse(&config.into).map_err(|e| format!("into: {e}"))?;
        let (prefix, from_rest) = from.split_after_wildcard();
        if from_rest.contains(&Segment::Any) {
            return Err(format!(
                "from = \"{from}\" has more than one `*`: a lookup reads one key per element"
            ));
        }
        if from_rest.is_empty() {
            return Err(format!("from = \"{from}\" ends in `*`: name the key inside each element, e.g. `{from}.product_id`"));
        }
        let into_rest = match into.segments().strip_prefix(prefix) {
            Some(rest) if !rest.contains(&Segment::Any) => rest,
            _ if prefix.is_empty() => {
                return Err(format!(
                    "into = \"{into}\" has a `*` but from = \"{from}\" has none"
                ))
            }
            _ => {
                let shown: Vec<&str> = from.as_str().split('.').take(prefix.len()).collect();
                return Err(format!(
                    "into = \"{into}\" must start with `{}.` (the part of from up to its `*`) and have no other `*`",
                    shown.join(".")
                ));
            }
        };
        if into_rest.is_empty() {
            // Into each element itself: only an object can be merged there.
            let scalar = config
                .table
                .iter()
                .map(|(k, v)| (k.as_str(), v))
                .chain(config.default.as_ref().map(|d| ("default", d)))
                .find(|(_, v)| !v.is_object());
            if let Some((key, _)) = scalar {
                return Err(format!(
                    "into = \"{into}\" merges into each element, so every value must be an object, but `{key}` is not: name a field, e.g. `{into}.category`"
                ));
            }
        }
        if into.segments().is_empty() || into.root().is_none() {
            return Err(format!("into = \"{into}\" must name a field"));
        }
        if matches!(
            into.root(),
            Some("type" | "messageId" | "userId" | "anonymousId")
        ) && into.segments().len() == 1
        {
            return Err(format!("into = \"{into}\" would overwrite the message's identity or type: write into properties, traits or context"));
        }
        Ok(Lookup {
            config,
            prefix: prefix.to_vec(),
            from: from_rest.to_vec(),
            into: into_rest.to_vec(),
        })
    }

    fn applies_to(&self, message: &Value) -> bool {
        self.config.events.is_empty()
            || (message::message_type(message) == Some("track")
                && message
                    .get("event")
                    .and_then(Value::as_str)
                    .is_some_and(|e| self.config.events.iter().any(|n| n == e)))
    }

    /// Enriches one element (the message itself without a `*`). None: the key was not found
    /// and there is no default; Some(changed) otherwise.
    fn enrich(&self, element: &mut Value) -> Option<bool> {
        let key = message::get(element, &self.from).and_then(|k| match k {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        let found = key
            .and_then(|k| self.config.table.get(&k))
            .or(self.config.default.as_ref())?;
        Some(write(element, &self.into, found, self.config.overwrite))
    }
}

/// Writes `found` at `into` below `element`: an object merges into an object there, anything
/// else is set. Without `overwrite` existing values stay. Returns whether anything changed.
fn write(element: &mut Value, into: &[Segment], found: &Value, overwrite: bool) -> bool {
    let existing = into.iter().try_fold(&mut *element, |v, s| match s {
        Segment::Key(k) => v.as_object_mut()?.get_mut(k),
        Segment::Any => None,
    });
    match (existing, found) {
        (Some(Value::Object(target)), Value::Object(fields)) => {
            let mut changed = false;
            for (k, v) in fields {
                if overwrite || !target.contains_key(k) {
                    changed |= target.insert(k.clone(), v.clone()).as_ref() != Some(v);
                }
            }
            changed
        }
        (Some(Value::Null), _) | (None, _) => message::set(element, into, found.clone()),
        (Some(current), _) if overwrite && current != found => {
            *current = found.clone();
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(c: Value) -> Config {
        serde_json::from_value(c).unwrap()
    }

    fn kept(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Keep(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected keep, got {other:?}"),
        }
    }

    fn viewed(product: Value) -> String {
        json!({"type": "track", "event": "Product Viewed", "properties": {"product_id": product}})
            .to_string()
    }

    #[test]
    fn sets_a_scalar_from_the_table_keyed_by_string_or_number() {
        let c = config(json!({"lookups": [{
            "from": "properties.product_id", "into": "properties.category",
            "table": {"p1": "shoes", "1001": "hats"}
        }]}));
        let e = Enricher::new(&c).unwrap();
        assert_eq!(
            kept(e.apply(&viewed(json!("p1"))))["properties"]["category"],
            "shoes"
        );
        assert_eq!(
            kept(e.apply(&viewed(json!(1001))))["properties"]["category"],
            "hats"
        );
        // Not found, no default, missing = pass: the text passes unchanged.
        assert_eq!(
            e.apply(&viewed(json!("p9"))),
            Outcome::Keep(viewed(json!("p9")))
        );
    }

    #[test]
    fn merges_an_object_and_keeps_what_the_message_has_unless_overwrite() {
        let table = json!({"p1": {"category": "shoes", "brand": "Acme"}});
        let m = json!({"type": "track", "event": "x",
            "properties": {"product_id": "p1", "brand": "Own"}})
        .to_string();
        let keep = config(
            json!({"lookups": [{"from": "properties.product_id", "into": "properties", "table": table}]}),
        );
        let out = kept(Enricher::new(&keep).unwrap().apply(&m));
        assert_eq!(
            out["properties"],
            json!({"product_id": "p1", "brand": "Own", "category": "shoes"})
        );
        let over = config(
            json!({"lookups": [{"from": "properties.product_id", "into": "properties", "table": table, "overwrite": true}]}),
        );
        let out = kept(Enricher::new(&over).unwrap().apply(&m));
        assert_eq!(out["properties"]["brand"], "Acme");
    }

    #[test]
    fn each_element_under_a_wildcard_is_looked_up_on_its_own() {
        let c = config(json!({"lookups": [{
            "from": "properties.products.*.sku", "into": "properties.products.*.category",
            "table": {"a": "shoes", "b": "hats"}, "default": "other"
        }]}));
        let m = json!({"type": "track", "event": "Order Completed", "properties": {"products": [
            {"sku": "a"}, {"sku": "b", "category": "mine"}, {"sku": "zzz"}, {"name": "no sku"}
        ]}});
        let out = kept(Enricher::new(&c).unwrap().apply(&m.to_string()));
        let cats: Vec<&Value> = out["properties"]["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["category"])
            .collect();
        assert_eq!(cats, vec!["shoes", "mine", "other", "other"]);
    }

    #[test]
    fn objects_merge_into_each_element_under_a_wildcard() {
        let c = config(json!({"lookups": [{
            "from": "properties.products.*.sku", "into": "properties.products.*",
            "table": {"a": {"category": "shoes", "sku": "ignored"}}, "default": {"category": "other"}
        }]}));
        let m = json!({"type": "track", "properties": {"products": [{"sku": "a"}, {"sku": "z"}]}});
        let out = kept(Enricher::new(&c).unwrap().apply(&m.to_string()));
        assert_eq!(
            out["properties"]["products"],
            json!([{"sku": "a", "category": "shoes"}, {"sku": "z", "category": "other"}])
        );
    }

    #[test]
    fn missing_drop_drops_with_a_fixed_reason() {
        let c = config(json!({"lookups": [{
            "from": "properties.product_id", "into": "properties.category",
            "table": {"p1": "shoes"}, "missing": "drop"
        }]}));
        let e = Enricher::new(&c).unwrap();
        assert_eq!(
            e.apply(&viewed(json!("p2"))),
            Outcome::Drop(NOT_FOUND.into())
        );
        let no_key = json!({"type": "track", "event": "x", "properties": {}}).to_string();
        assert_eq!(e.apply(&no_key), Outcome::Drop(NOT_FOUND.into()));
        assert!(matches!(e.apply(&viewed(json!("p1"))), Outcome::Keep(_)));
    }

    #[test]
    fn events_limit_which_messages_are_looked_up() {
        let c = config(json!({"lookups": [{
            "from": "properties.product_id", "into": "properties.category",
            "table": {"p1": "shoes"}, "missing": "drop", "events": ["Product Viewed"]
        }]}));
        let e = Enricher::new(&c).unwrap();
        let other = json!({"type": "track", "event": "Signed Up"}).to_string();
        assert_eq!(e.apply(&other), Outcome::Keep(other.clone()));
        let identify = json!({"type": "identify", "traits": {}}).to_string();
        assert_eq!(e.apply(&identify), Outcome::Keep(identify.clone()));
        assert_eq!(
            kept(e.apply(&viewed(json!("p1"))))["properties"]["category"],
            "shoes"
        );
    }

    #[test]
    fn later_lookups_read_what_earlier_ones_wrote() {
        let c = config(json!({"lookups": [
            {"from": "properties.product_id", "into": "properties.category", "table": {"p1": "shoes"}},
            {"from": "properties.category", "into": "context.department", "table": {"shoes": "apparel"}}
        ]}));
        let out = kept(Enricher::new(&c).unwrap().apply(&viewed(json!("p1"))));
        assert_eq!(out["context"]["department"], "apparel");
    }

    #[test]
    fn config_errors_name_the_lookup_and_path() {
        let err = |c: Value| Enricher::new(&config(c)).unwrap_err();
        assert!(err(json!({"lookups": []})).contains("no lookups"));
        let e = err(
            json!({"lookups": [{"from": "properties.items.*.sku", "into": "properties.category", "table": {}}]}),
        );
        assert!(
            e.starts_with("lookups[1]: into") && e.contains("`properties.items.*.`"),
            "{e}"
        );
        let e = err(
            json!({"lookups": [{"from": "properties.sku", "into": "properties.*.x", "table": {}}]}),
        );
        assert!(e.contains("has a `*` but from"), "{e}");
        assert!(
            err(json!({"lookups": [{"from": "a.*.b.*.c", "into": "a.*.x", "table": {}}]}))
                .contains("more than one")
        );
        assert!(
            err(json!({"lookups": [{"from": "a.*", "into": "a.*.x", "table": {}}]}))
                .contains("ends in `*`")
        );
        assert!(
            err(json!({"lookups": [{"from": "properties.k", "into": "userId", "table": {}}]}))
                .contains("identity")
        );
        let e = err(
            json!({"lookups": [{"from": "p.*.k", "into": "p.*", "table": {"a": {"x": 1}, "b": 2}}]}),
        );
        assert!(
            e.contains("every value must be an object") && e.contains("`b`"),
            "{e}"
        );
    }
}
