//! Audience filters: a CEL expression compiled once ([`Filter::compile`]) and evaluated against a
//! profile (its traits, identifiers and events) and, for events syncs, one event. A leaf value.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::extractors::Arguments;
use cel::{IdedExpr, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::store::now_millis;
use crate::store::profiles::ProfileData;

/// A compiled filter expression.
#[derive(Clone)]
pub struct Filter {
    program: Arc<Program>,
    source: Arc<str>,
    /// Whether the expression reads events, so loading them can be skipped when it doesn't.
    pub uses_events: bool,
    /// The names the expression reads: only those are built for each evaluation (a stream
    /// filtering on `event.type` converted every message whole, and every profile's traits
    /// and identifiers, for each message).
    reads: Reads,
}

/// What an expression reads of the values a filter provides.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reads {
    traits: bool,
    identifiers: bool,
    now: bool,
    event: EventReads,
}

/// What an expression reads of `event`.
#[derive(Debug, Clone, Default, PartialEq)]
enum EventReads {
    #[default]
    Nothing,
    /// Only `event.NAME` for these names (and deeper), so only they are converted.
    Fields(Vec<String>),
    /// `event` itself (compared, indexed by a computed key, iterated, passed on).
    Whole,
}

impl Reads {
    fn of(expression: &IdedExpr) -> Reads {
        let mut reads = Reads::default();
        reads.walk(expression);
        reads
    }

    /// Over every sub-expression. An `event` a macro binds (`event_list.exists(event, …)`)
    /// counts as the message's: that reads more than needed, never less.
    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Select(select) => match &select.operand.expr {
                Expr::Ident(name) if name == "event" => {
                    if let EventReads::Nothing = self.event {
                        self.event = EventReads::Fields(Vec::new());
                    }
                    if let EventReads::Fields(fields) = &mut self.event {
                        if !fields.contains(&select.field) {
                            fields.push(select.field.clone());
                        }
                    }
                }
                _ => self.walk(&select.operand),
            },
            Expr::Ident(name) => match name.as_str() {
                "traits" => self.traits = true,
                "identifiers" => self.identifiers = true,
                "now" => self.now = true,
                "event" => self.event = EventReads::Whole,
                _ => {}
            },
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.walk(target);
                }
                call.args.iter().for_each(|a| self.walk(a));
            }
            Expr::Comprehension(c) => {
                for part in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    self.walk(part);
                }
            }
            Expr::List(list) => list.elements.iter().for_each(|e| self.walk(e)),
            Expr::Map(map) => map.entries.iter().for_each(|e| self.walk_entry(&e.expr)),
            Expr::Struct(st) => st.entries.iter().for_each(|e| self.walk_entry(&e.expr)),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn walk_entry(&mut self, entry: &EntryExpr) {
        match entry {
            EntryExpr::MapEntry(m) => {
                self.walk(&m.key);
                self.walk(&m.value);
            }
            EntryExpr::StructField(f) => self.walk(&f.value),
        }
    }

    /// `event` as the expression reads it: a message's fields it never names are not
    /// converted (a missing field is missing either way).
    fn event(&self, event: &Value) -> CelValue {
        match (&self.event, event) {
            (EventReads::Fields(fields), Value::Object(message)) => CelValue::from(
                fields
                    .iter()
                    .filter_map(|f| message.get(f).map(|v| (f.clone(), json_to_cel(v))))
                    .collect::<HashMap<String, CelValue>>(),
            ),
            _ => json_to_cel(event),
        }
    }
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
            reads: Reads::of(program.expression()),
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
            let reads = &self.reads;
            if reads.traits {
                ctx.add_variable_from_value("traits", object_to_cel(&profile.traits));
            }
            if reads.identifiers {
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
            }
            if reads.now {
                ctx.add_variable_from_value("now", CelValue::Timestamp(ts(now_millis())));
            }
            if self.uses_events {
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
            if let (Some(e), false) = (event, reads.event == EventReads::Nothing) {
                ctx.add_variable_from_value("event", reads.event(e));
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
        Value::Object(o) => object_to_cel(o),
    }
}

fn object_to_cel(o: &Map<String, Value>) -> CelValue {
    CelValue::from(
        o.iter()
            .map(|(k, v)| (k.clone(), json_to_cel(v)))
            .collect::<HashMap<String, CelValue>>(),
    )
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
    fn builds_only_what_the_expression_reads() {
        let reads = |src: &str| Filter::compile(src).unwrap().reads;
        let r = reads("event.type == 'track' && event.properties.k > 2 && has(event.userId)");
        assert_eq!(
            r.event,
            EventReads::Fields(vec!["type".into(), "properties".into(), "userId".into()])
        );
        assert!(!r.traits && !r.identifiers && !r.now);
        assert_eq!(reads("size(event) > 3").event, EventReads::Whole);
        assert_eq!(reads("event[traits.key] == 1").event, EventReads::Whole);
        assert_eq!(
            reads("event.properties.exists(k, k == 'a')").event,
            EventReads::Fields(vec!["properties".into()])
        );
        let r = reads(r#""email" in identifiers && traits.age > now - now"#);
        assert!(r.traits && r.identifiers && r.now);
        assert_eq!(r.event, EventReads::Nothing);
    }

    #[test]
    fn an_event_filter_reads_the_same_from_the_fields_it_names() {
        let p = profile(json!({"plan": "pro"}), &[]);
        let message = json!({
            "type": "track", "event": "Clicked", "userId": "u1",
            "properties": {"k": 3, "tags": ["a", "b"]}, "context": {"ip": "10.0.0.1"},
        });
        let cases = [
            ("event.type == 'track' && event.properties.k == 3", true),
            ("event.properties.tags.exists(t, t == 'b')", true),
            (
                "has(event.context) && event.context.ip.startsWith('10.')",
                true,
            ),
            ("has(event.anonymousId)", false),
            ("event.anonymousId == 'x'", false),
            ("size(event) == 5 && event['event'] == 'Clicked'", true),
            ("traits.plan == 'pro' && event.userId == 'u1'", true),
            ("'properties' in event && !('traits' in event)", true),
        ];
        for (src, want) in cases {
            let f = Filter::compile(src).unwrap();
            assert_eq!(f.matches(&p, Some(&message)).unwrap(), want, "{src}");
        }
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
