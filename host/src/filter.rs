//! Audience filters: a CEL expression compiled once ([`Filter::compile`]) and evaluated against a
//! profile (its traits, identifiers and events) and, for events syncs, one event. A leaf value.

use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::Arguments;
use cel::{Program, Value as CelValue};
use serde_json::Value;

use crate::store::now_millis;
use crate::store::profiles::ProfileData;

/// A compiled filter expression.
#[derive(Clone)]
pub struct Filter {
    program: Arc<Program>,
    source: Arc<str>,
    /// Whether the expression reads events, so loading them can be skipped when it doesn't.
    pub uses_events: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({})", self.source)
    }
}

impl Filter {
    /// Compiles a CEL expression; the error quotes the expression and says where it broke.
    pub fn compile(source: &str) -> Result<Filter, String> {
        let program = Program::compile(source).map_err(|e| {
            let detail = e.to_string();
            format!(
                "`{source}` is not a valid CEL expression: {}",
                detail.trim()
            )
        })?;
        let filter = Filter {
            uses_events: program
                .references()
                .variables()
                .iter()
                .any(|v| *v == "events" || *v == "event_list"),
            program: Arc::new(program),
            source: source.into(),
        };
        // A dry evaluation on an empty profile catches misspelt names (`trait.plan`) now
        // rather than on every profile later. (Names bound by macros like `e` in
        // `event_list.filter(e, ...)` are fine; a static check would flag them.)
        if let Err(cel::ExecutionError::UndeclaredReference(name)) =
            filter.evaluate(&ProfileData::default(), Some(&Value::Null))
        {
            return Err(format!(
                "`{source}`: unknown name `{name}`; a filter can read traits, identifiers, events, event_list, event and now"
            ));
        }
        Ok(filter)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the filter for a profile (and, for event filters, one event body).
    /// A filter that reads a trait the profile lacks is false for it, as SQL's NULL would be.
    pub fn matches(&self, profile: &ProfileData, event: Option<&Value>) -> Result<bool, String> {
        match self.evaluate(profile, event) {
            Ok(CelValue::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "`{}` gave {:?}, not true or false",
                self.source,
                other.type_of()
            )),
            Err(cel::ExecutionError::NoSuchKey(_)) => Ok(false),
            Err(e) => Err(format!("`{}`: {e}", self.source)),
        }
    }

    fn evaluate(
        &self,
        profile: &ProfileData,
        event: Option<&Value>,
    ) -> Result<CelValue, cel::ExecutionError> {
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value(
                "traits",
                json_to_cel(&Value::Object(profile.traits.clone())),
            );
            let ids: HashMap<String, CelValue> = profile
                .identifiers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        CelValue::List(Arc::new(
                            v.iter().map(|s| CelValue::from(s.as_str())).collect(),
                        )),
                    )
                })
                .collect();
            ctx.add_variable_from_value("identifiers", ids);
            ctx.add_variable_from_value("now", CelValue::Timestamp(ts(now_millis())));
            if self.uses_events || event.is_some() {
                let mut stats: HashMap<String, (i64, i64, i64)> = HashMap::new();
                let mut list = Vec::with_capacity(profile.events.len());
                for e in &profile.events {
                    let s = stats.entry(e.name.clone()).or_insert((0, e.ts, e.ts));
                    s.0 += 1;
                    s.1 = s.1.min(e.ts);
                    s.2 = s.2.max(e.ts);
                    list.push(CelValue::from(HashMap::from([
                        ("name".to_string(), CelValue::from(e.name.as_str())),
                        ("ts".to_string(), CelValue::Timestamp(ts(e.ts))),
                        ("properties".to_string(), json_to_cel(&e.properties)),
                    ])));
                }
                let events: HashMap<String, CelValue> = stats
                    .into_iter()
                    .map(|(name, (count, first, last))| {
                        (
                            name,
                            CelValue::from(HashMap::from([
                                ("count".to_string(), CelValue::Int(count)),
                                ("first".to_string(), CelValue::Timestamp(ts(first))),
                                ("last".to_string(), CelValue::Timestamp(ts(last))),
                            ])),
                        )
                    })
                    .collect();
                ctx.add_variable_from_value("events", events);
                ctx.add_variable_from_value("event_list", CelValue::List(Arc::new(list)));
            }
            if let Some(e) = event {
                ctx.add_variable_from_value("event", json_to_cel(e));
            }
            self.program.execute(&ctx)
        })
    }
}

thread_local! {
    /// The standard CEL functions plus ours, built once per thread.
    static ROOT: cel::Context<'static> = {
        let mut ctx = cel::Context::default();
        ctx.add_function("sum", sum);
        ctx
    };
}

/// `sum(list)`: the total of a list of numbers (`sum(event_list.filter(e, e.name ==
/// "Order Completed").map(e, e.properties.total))`).
fn sum(Arguments(args): Arguments) -> Result<CelValue, cel::ExecutionError> {
    let items: Vec<CelValue> = match args.as_slice() {
        [CelValue::List(l)] => l.as_ref().clone(),
        other => other.to_vec(),
    };
    let mut int: i64 = 0;
    let mut float: f64 = 0.0;
    let mut is_float = false;
    for v in items {
        match v {
            CelValue::Int(i) => int = int.saturating_add(i),
            CelValue::UInt(u) => int = int.saturating_add(u as i64),
            CelValue::Float(f) => {
                is_float = true;
                float += f
            }
            CelValue::Null => {}
            other => {
                return Err(cel::ExecutionError::function_error(
                    "sum",
                    format!("cannot add a {}", other.type_of()),
                ))
            }
        }
    }
    Ok(if is_float {
        CelValue::Float(float + int as f64)
    } else {
        CelValue::Int(int)
    })
}

fn ts(ms: i64) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .fixed_offset()
}

fn json_to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => CelValue::Int(i),
            None => CelValue::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => CelValue::from(s.as_str()),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Value::Object(o) => CelValue::from(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect::<HashMap<String, CelValue>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::profiles::EventFact;
    use serde_json::json;

    fn profile(traits: Value, events: &[(&str, i64, Value)]) -> ProfileData {
        ProfileData {
            id: "p".into(),
            traits: traits.as_object().cloned().unwrap_or_default(),
            identifiers: [("email".to_string(), vec!["a@x.io".to_string()])].into(),
            events: events
                .iter()
                .map(|(n, t, p)| EventFact {
                    name: n.to_string(),
                    ts: *t,
                    properties: p.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn traits_identifiers_and_missing_traits() {
        let p = profile(json!({"plan": "pro", "age": 41}), &[]);
        let f = Filter::compile(r#"traits.plan == "pro" && traits.age > 40"#).unwrap();
        assert!(f.matches(&p, None).unwrap());
        let f = Filter::compile(r#"traits.country == "NO""#).unwrap();
        assert!(
            !f.matches(&p, None).unwrap(),
            "a missing trait is not a match"
        );
        let f =
            Filter::compile(r#""email" in identifiers && identifiers.email[0].endsWith("@x.io")"#)
                .unwrap();
        assert!(f.matches(&p, None).unwrap());
    }

    #[test]
    fn event_aggregates_and_windows() {
        let now = now_millis();
        let day = 86_400_000;
        let p = profile(
            json!({}),
            &[
                ("Order Completed", now - 40 * day, json!({"total": 10})),
                ("Order Completed", now - 2 * day, json!({"total": 25.5})),
                ("Viewed", now - day, json!({})),
            ],
        );
        let yes = [
            r#"events["Order Completed"].count == 2"#,
            r#"events["Order Completed"].last > now - duration("72h")"#,
            r#"event_list.filter(e, e.name == "Order Completed" && e.ts > now - duration("720h")).size() == 1"#,
            r#"sum(event_list.filter(e, e.name == "Order Completed").map(e, e.properties.total)) == 35.5"#,
        ];
        for src in yes {
            let f = Filter::compile(src).unwrap();
            assert!(f.uses_events);
            assert!(f.matches(&p, None).unwrap(), "{src}");
        }
        let f = Filter::compile(r#"events["Signed Up"].count > 0"#).unwrap();
        assert!(!f.matches(&p, None).unwrap());
    }

    #[test]
    fn errors_point_at_the_expression() {
        let e = Filter::compile("traits.plan ==").unwrap_err();
        assert!(
            e.contains("`traits.plan ==` is not a valid CEL expression"),
            "{e}"
        );
        let e = Filter::compile("trait.plan == 1").unwrap_err();
        assert!(e.contains("unknown name `trait`"), "{e}");
        let f = Filter::compile("traits.plan").unwrap();
        let e = f
            .matches(&profile(json!({"plan": "x"}), &[]), None)
            .unwrap_err();
        assert!(e.contains("not true or false"), "{e}");
    }
}
