//! Audiences: the profiles a CEL filter accepts. Membership is stored; before each use the
//! profiles that changed since the last evaluation are re-evaluated (incremental), and the whole
//! audience is recomputed on its `full_refresh` schedule or when its filter changed (time
//! windows like "in the last 30 days" move without any profile changing).

use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::Arguments;
use cel::{Program, Value as CelValue};
use serde_json::Value;

use crate::config::AudienceConfig;
use crate::store::profiles::{self, ProfileData};
use crate::store::{audiences, now_millis, Store};

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

/// What one refresh did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Refresh {
    pub evaluated: u64,
    pub joined: u64,
    pub left: u64,
    pub errors: u64,
    /// The first evaluation error, to show the operator.
    pub first_error: Option<String>,
    pub full: bool,
}

/// Re-evaluates the audience's changed profiles (or all of them when `full`, the filter
/// changed, or it was never computed) and stores who is in it.
#[tracing::instrument(skip(store, config), fields(audience = %name))]
pub async fn refresh(
    store: &Store,
    name: &str,
    config: &AudienceConfig,
    full: bool,
) -> anyhow::Result<Refresh> {
    let filter = Filter::compile(&config.filter)
        .map_err(|e| anyhow::anyhow!("[audiences.{name}] filter: {e}"))?;
    let started = now_millis();
    let state = audiences::state(store, name).await?;
    let full = full || state.as_ref().is_none_or(|(f, _)| *f != config.filter);
    let since = if full {
        i64::MIN
    } else {
        state.map(|s| s.1).unwrap_or(i64::MIN)
    };
    let mut report = Refresh {
        full,
        ..Default::default()
    };

    // Profiles gone (merged away or deleted) leave every audience; only look when some went.
    if full || profiles_gone_since(store, since).await? {
        report.left += audiences::drop_gone(store, name).await?;
    }

    let mut after = String::new();
    loop {
        let ids = profiles::ids_page(store, (!full).then_some(since), &after, 5000).await?;
        if ids.is_empty() {
            break;
        }
        after = ids.last().cloned().unwrap_or_default();
        let loaded = if filter.uses_events {
            profiles::load(store, &ids, true).await?
        } else {
            profiles::by_ids(store, &ids).await?
        };
        store.analyze_if_stale("audience_members").await?;
        let current = audiences::members_among(store, name, &ids).await?;
        let mut join = Vec::new();
        let mut leave = Vec::new();
        for p in &loaded {
            report.evaluated += 1;
            let member = match filter.matches(p, None) {
                Ok(m) => m,
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(e);
                    false
                }
            };
            match (member, current.contains(&p.id)) {
                (true, false) => join.push(p.id.clone()),
                (false, true) => leave.push(p.id.clone()),
                _ => {}
            }
        }
        audiences::apply(store, name, &join, &leave, started).await?;
        report.joined += join.len() as u64;
        report.left += leave.len() as u64;
    }

    if report.joined + report.left > 0 {
        audiences::mark_changed(store, name, started).await?;
    }

    // Writers stamp updated_at before their commit lands; look back a little next time so a
    // profile committed just after this scan is not missed.
    let through = started - 10_000;
    let full_at = if full { started } else { 0 };
    audiences::save_state(store, name, &config.filter, through, full_at).await?;
    tracing::info!(
        evaluated = report.evaluated,
        joined = report.joined,
        left = report.left,
        full,
        "audience refreshed"
    );
    Ok(report)
}

/// Whether any profile was merged away or erased at or after `since` (ms).
pub async fn profiles_gone_since(store: &Store, since: i64) -> anyhow::Result<bool> {
    Ok(profiles::gone_since(store, since).await?)
}

/// When the audience's membership last changed (ms), if ever recorded.
pub async fn membership_changed_at(store: &Store, name: &str) -> anyhow::Result<Option<i64>> {
    Ok(audiences::changed_at(store, name).await?)
}

/// When the audience was last recomputed in full (ms), if ever.
pub async fn last_full(store: &Store, name: &str) -> anyhow::Result<Option<i64>> {
    Ok(audiences::last_full(store, name).await?)
}

/// Size and a sample of members, for `switchyard audiences preview`.
pub async fn preview(store: &Store, name: &str, sample: i64) -> anyhow::Result<(i64, Vec<String>)> {
    Ok(audiences::preview(store, name, sample).await?)
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
