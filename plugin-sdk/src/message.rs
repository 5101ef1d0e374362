//! Paths into a message (a Segment-spec JSON object: `type`, `event`, `properties`, `traits`,
//! `context`, ...), for transforms that read, rewrite or remove named fields.
//!
//! A path is dotted keys, `properties.order.total`, where `*` stands for every member of an
//! object or every element of an array at that level: `properties.products.*.sku` names the
//! `sku` of each product of a Segment e-commerce event. Keys cannot contain `.` or be `*`; such
//! fields are rare in tracking data, and a path language with quoting would be harder to read in
//! a config file than it is worth.
//!
//! Transforms work on `serde_json::Value` trees: a message is small (a few hundred bytes to a
//! few KiB), and a transform that changes fields needs the whole tree to write it back anyway.

use serde_json::{Map, Value};

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A member of an object, by name.
    Key(String),
    /// Every member of an object, or every element of an array.
    Any,
}

/// A parsed path, e.g. `properties.products.*.sku`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    text: String,
    segments: Vec<Segment>,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    /// Parses dotted keys. Errors name the path and say what is wrong, for a config error.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.trim().is_empty() {
            return Err("a path is empty: write dotted keys like `properties.email`".into());
        }
        let segments = text
            .split('.')
            .map(|part| match part {
                "" => Err(format!(
                    "path `{text}` has an empty key (two dots in a row, or a dot at an end)"
                )),
                "*" => Ok(Segment::Any),
                key if key.trim() != key => Err(format!(
                    "path `{text}`: key `{key}` starts or ends with a space"
                )),
                key => Ok(Segment::Key(key.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Path {
            text: text.to_string(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The first key, e.g. `properties` (None when the path starts with `*`).
    pub fn root(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// Whether the path has a `*`.
    pub fn has_wildcard(&self) -> bool {
        self.segments.contains(&Segment::Any)
    }

    /// Splits the path after its first `*`: (`properties.products.*`, `sku`). A path without
    /// `*` is all rest: (empty, the path).
    pub fn split_after_wildcard(&self) -> (&[Segment], &[Segment]) {
        match self.segments.iter().position(|s| *s == Segment::Any) {
            Some(i) => self.segments.split_at(i + 1),
            None => (&[], &self.segments),
        }
    }

    /// Calls `f` on every value the path names in `root` (none when a key is missing).
    pub fn for_each_mut(&self, root: &mut Value, f: &mut dyn FnMut(&mut Value)) {
        visit_mut(root, &self.segments, f)
    }

    /// Removes every value the path names; returns how many. A path ending in `*` empties the
    /// object or array it points into.
    pub fn remove(&self, root: &mut Value) -> usize {
        let Some((last, parent)) = self.segments.split_last() else {
            return 0;
        };
        let mut removed = 0;
        visit_mut(root, parent, &mut |v| match (last, v) {
            (Segment::Key(k), Value::Object(map)) => removed += map.remove(k).is_some() as usize,
            (Segment::Any, Value::Object(map)) => {
                removed += map.len();
                map.clear();
            }
            (Segment::Any, Value::Array(items)) => {
                removed += items.len();
                items.clear();
            }
            _ => {}
        });
        removed
    }
}

/// The value at `segments` (keys only) below `value`.
pub fn get<'v>(value: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    segments.iter().try_fold(value, |v, s| match s {
        Segment::Key(k) => v.as_object()?.get(k),
        Segment::Any => None,
    })
}

/// Sets the value at `segments` (keys only) below `value`, creating objects on the way. When
/// something other than an object is in the way, nothing is written and false is returned.
pub fn set(value: &mut Value, segments: &[Segment], new: Value) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        *value = new;
        return true;
    };
    let mut at = value;
    for s in parents {
        let Segment::Key(k) = s else { return false };
        let Value::Object(map) = at else { return false };
        at = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match (last, at) {
        (Segment::Key(k), Value::Object(map)) => {
            map.insert(k.clone(), new);
            true
        }
        _ => false,
    }
}

/// Calls `f` on every value `segments` name below `value` (keys and `*`).
pub fn visit_mut(value: &mut Value, segments: &[Segment], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = segments.split_first() else {
        f(value);
        return;
    };
    match (first, value) {
        (Segment::Key(k), Value::Object(map)) => {
            if let Some(v) = map.get_mut(k) {
                visit_mut(v, rest, f);
            }
        }
        (Segment::Any, Value::Object(map)) => {
            for v in map.values_mut() {
                visit_mut(v, rest, f);
            }
        }
        (Segment::Any, Value::Array(items)) => {
            for v in items {
                visit_mut(v, rest, f);
            }
        }
        _ => {}
    }
}

/// Calls `f` on every string, number and boolean at or below `value` (inside objects and
/// arrays too); nulls are left alone.
pub fn for_each_scalar_mut(value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match value {
        Value::Null => {}
        Value::Object(map) => map.values_mut().for_each(|v| for_each_scalar_mut(v, f)),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_scalar_mut(v, f)),
        scalar => f(scalar),
    }
}

/// A message's `type` (`track`, `identify`, `page`, `screen`, `group`, `alias`), lowercased
/// as the Segment libraries send it.
pub fn message_type(message: &Value) -> Option<&str> {
    message.get("type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Path {
        Path::parse(p).unwrap()
    }

    #[test]
    fn parse_rejects_empty_keys_with_the_path_named() {
        assert!(Path::parse("").unwrap_err().contains("empty"));
        let e = Path::parse("properties..email").unwrap_err();
        assert!(e.contains("properties..email"), "{e}");
        assert!(Path::parse("properties.").is_err());
        assert!(Path::parse("properties. email").is_err());
        let p = path("properties.products.*.sku");
        assert_eq!(p.root(), Some("properties"));
        assert!(p.has_wildcard());
        assert_eq!(p.to_string(), "properties.products.*.sku");
    }

    #[test]
    fn remove_by_key_and_wildcard() {
        let mut m = json!({"properties": {"email": "a@b.c", "n": 1,
            "products": [{"sku": "x", "email": "1"}, {"sku": "y"}]}});
        assert_eq!(path("properties.email").remove(&mut m), 1);
        assert_eq!(path("properties.email").remove(&mut m), 0);
        assert_eq!(path("properties.products.*.email").remove(&mut m), 1);
        assert_eq!(
            m,
            json!({"properties": {"n": 1, "products": [{"sku": "x"}, {"sku": "y"}]}})
        );
        assert_eq!(path("properties.products.*").remove(&mut m), 2);
        assert_eq!(m["properties"]["products"], json!([]));
        // A path through a scalar removes nothing.
        assert_eq!(path("properties.n.deeper").remove(&mut m), 0);
    }

    #[test]
    fn for_each_visits_every_match() {
        let mut m = json!({"traits": {"a": {"x": 1}, "b": {"x": 2}, "c": 3}});
        let mut seen = Vec::new();
        path("traits.*.x").for_each_mut(&mut m, &mut |v| seen.push(v.clone()));
        assert_eq!(seen, vec![json!(1), json!(2)]);
    }

    #[test]
    fn set_creates_objects_and_refuses_to_replace_scalars_on_the_way() {
        let mut m = json!({"properties": {"n": 1}});
        let p = path("properties.meta.category");
        assert!(set(&mut m, p.segments(), json!("shoes")));
        assert_eq!(m["properties"]["meta"]["category"], "shoes");
        let through_scalar = path("properties.n.x");
        assert!(!set(&mut m, through_scalar.segments(), json!(1)));
        assert_eq!(m["properties"]["n"], 1);
        assert_eq!(get(&m, p.segments()), Some(&json!("shoes")));
    }

    #[test]
    fn split_after_wildcard() {
        let p = path("properties.products.*.sku");
        let (prefix, rest) = p.split_after_wildcard();
        assert_eq!(prefix.len(), 3);
        assert_eq!(rest, &[Segment::Key("sku".into())]);
        let q = path("properties.sku");
        assert_eq!(q.split_after_wildcard().0.len(), 0);
    }

    #[test]
    fn scalars_below_a_value() {
        let mut v = json!({"a": [1, "x", null, {"b": true}]});
        let mut n = 0;
        for_each_scalar_mut(&mut v, &mut |_| n += 1);
        assert_eq!(n, 3);
    }
}
