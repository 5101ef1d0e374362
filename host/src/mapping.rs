//! Field mappings: destination field ← a path into the profile (or the event), or a literal,
//! compiled once ([`Mapping::compile`]) and applied to each record. A leaf value.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use serde::Deserialize;

/// One mapped field as the project file writes it: a path (`"traits.plan"`) or a literal
/// (`{ value = ... }`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MappingValue {
    Path(String),
    Literal { value: toml::Value },
}

/// Where a mapped value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    /// The profile's id.
    Id,
    CreatedAt,
    UpdatedAt,
    /// `traits.a.b`: a trait, or a field inside an object trait.
    Trait(Vec<String>),
    /// `identifiers.KIND`: the kind's earliest value.
    Identifier(String),
    /// `identifiers.KIND[]`: every value of the kind, as a list.
    Identifiers(String),
    /// `event.name`, `event.timestamp`, `event.message_id`, `event.properties[.x]`, `event.context[.x]`
    Event(Vec<String>),
}

impl Path {
    /// Parses a mapping path; `events` says whether event paths are allowed (events syncs).
    pub fn parse(text: &str, events: bool) -> Result<Path, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{text}` has an empty segment"));
        }
        let rest = || parts[1..].iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match parts[0] {
            "id" if parts.len() == 1 => Ok(Path::Id),
            "created_at" if parts.len() == 1 => Ok(Path::CreatedAt),
            "updated_at" if parts.len() == 1 => Ok(Path::UpdatedAt),
            "traits" if parts.len() >= 2 => Ok(Path::Trait(rest())),
            "identifiers" if parts.len() == 2 => match parts[1].strip_suffix("[]") {
                Some(kind) => Ok(Path::Identifiers(kind.to_string())),
                None => Ok(Path::Identifier(parts[1].to_string())),
            },
            "event" if !events => Err(format!(
                "`{text}`: event paths only apply to syncs with from = {{ events = ... }}"
            )),
            "event" if parts.len() >= 2 => match parts[1] {
                "name" | "timestamp" | "message_id" | "type" if parts.len() == 2 => {
                    Ok(Path::Event(rest()))
                }
                // The message's own ids, as sent (streams forward identify, group and alias
                // too, whose payload is in these and in `traits`).
                "userId" | "anonymousId" | "groupId" | "previousId" if parts.len() == 2 => {
                    Ok(Path::Event(rest()))
                }
                "properties" | "context" | "traits" => Ok(Path::Event(rest())),
                _ => Err(format!(
                    "`{text}`: use event.name, event.type, event.timestamp, event.message_id, event.userId, event.anonymousId, event.groupId, event.previousId, event.properties.NAME, event.traits.NAME or event.context.NAME"
                )),
            },
            _ => Err(format!(
                "`{text}` is not a path: use traits.NAME, identifiers.KIND (or KIND[] for all), id, created_at, updated_at{}, or {{ value = ... }} for a literal",
                if events { ", event.NAME ..." } else { "" }
            )),
        }
    }
}

/// What a mapping reads from.
pub struct Subject<'a> {
    pub profile_id: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    pub traits: &'a Map<String, Value>,
    /// kind → values, earliest first.
    pub identifiers: &'a BTreeMap<String, Vec<String>>,
    /// The event body (events syncs).
    pub event: Option<&'a Value>,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    fields: Vec<(String, Source)>,
}

#[derive(Debug, Clone)]
enum Source {
    Path(Path),
    Literal(Value),
}

impl Mapping {
    /// Compiles a mapping; the error names the first field that does not compile.
    pub fn compile(
        mapping: &BTreeMap<String, MappingValue>,
        events: bool,
    ) -> Result<Mapping, String> {
        Mapping::compile_each(mapping, events).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Compiles a mapping, or says what is wrong with each field that does not compile
    /// (`FIELD: reason`), so a project file's every problem is reported at once.
    pub fn compile_each(
        mapping: &BTreeMap<String, MappingValue>,
        events: bool,
    ) -> Result<Mapping, Vec<String>> {
        let mut fields = Vec::new();
        let mut errors = Vec::new();
        for (field, value) in mapping {
            let source = match value {
                MappingValue::Path(p) => Path::parse(p, events).map(Source::Path),
                MappingValue::Literal { value } => serde_json::to_value(value)
                    .map(Source::Literal)
                    .map_err(|e| e.to_string()),
            };
            match source {
                Ok(source) => fields.push((field.clone(), source)),
                Err(e) => errors.push(format!("{field}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Mapping { fields })
        } else {
            Err(errors)
        }
    }

    /// The destination payload; fields whose source is absent are left out.
    pub fn apply(&self, s: &Subject<'_>) -> Map<String, Value> {
        let mut out = Map::new();
        for (field, source) in &self.fields {
            let value = match source {
                Source::Literal(v) => Some(v.clone()),
                Source::Path(p) => resolve(p, s),
            };
            if let Some(v) = value {
                if !v.is_null() {
                    out.insert(field.clone(), v);
                }
            }
        }
        out
    }
}

fn resolve(path: &Path, s: &Subject<'_>) -> Option<Value> {
    match path {
        Path::Id => Some(Value::String(s.profile_id.to_string())),
        Path::CreatedAt => Some(Value::String(iso(s.created_at))),
        Path::UpdatedAt => Some(Value::String(iso(s.updated_at))),
        Path::Trait(parts) => {
            let first = s.traits.get(&parts[0])?;
            dig(first, &parts[1..])
        }
        Path::Identifier(kind) => s
            .identifiers
            .get(kind)
            .and_then(|v| v.first())
            .map(|v| Value::String(v.clone())),
        Path::Identifiers(kind) => s
            .identifiers
            .get(kind)
            .map(|v| Value::Array(v.iter().map(|x| Value::String(x.clone())).collect())),
        Path::Event(parts) => {
            let event = s.event?;
            match parts[0].as_str() {
                "name" => event.get("event").or_else(|| event.get("name")).cloned(),
                "timestamp" => event.get("timestamp").cloned(),
                "message_id" => event.get("messageId").cloned(),
                "type" => event.get("type").cloned(),
                other => dig(event.get(other)?, &parts[1..]),
            }
        }
    }
}

fn dig(mut v: &Value, parts: &[String]) -> Option<Value> {
    for p in parts {
        v = v.get(p.as_str())?;
    }
    Some(v.clone())
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_paths_with_clear_errors() {
        assert_eq!(Path::parse("id", false), Ok(Path::Id));
        assert_eq!(
            Path::parse("traits.address.city", false),
            Ok(Path::Trait(vec!["address".into(), "city".into()]))
        );
        assert_eq!(
            Path::parse("identifiers.email[]", false),
            Ok(Path::Identifiers("email".into()))
        );
        assert!(Path::parse("event.name", false)
            .unwrap_err()
            .contains("only apply"));
        assert!(Path::parse("event.properties.total", true).is_ok());
        assert!(
            Path::parse("event.properties", true).is_ok(),
            "the whole properties object"
        );
        assert!(Path::parse("trait.email", false)
            .unwrap_err()
            .contains("not a path"));
        assert!(Path::parse("traits..x", false).is_err());
    }

    #[test]
    fn applies_paths_and_literals_and_skips_absent_fields() {
        let mapping = Mapping::compile(
            &BTreeMap::from([
                (
                    "email".into(),
                    MappingValue::Path("identifiers.email".into()),
                ),
                (
                    "city".into(),
                    MappingValue::Path("traits.address.city".into()),
                ),
                ("plan".into(), MappingValue::Path("traits.plan".into())),
                (
                    "source".into(),
                    MappingValue::Literal {
                        value: toml::Value::String("switchyard".into()),
                    },
                ),
            ]),
            false,
        )
        .unwrap();
        let traits = json!({"address": {"city": "Oslo"}})
            .as_object()
            .unwrap()
            .clone();
        let ids = BTreeMap::from([(
            "email".to_string(),
            vec!["a@x.io".to_string(), "b@x.io".to_string()],
        )]);
        let out = mapping.apply(&Subject {
            profile_id: "p1",
            created_at: 0,
            updated_at: 0,
            traits: &traits,
            identifiers: &ids,
            event: None,
        });
        assert_eq!(
            Value::Object(out),
            json!({"email": "a@x.io", "city": "Oslo", "source": "switchyard"})
        );
    }
}
