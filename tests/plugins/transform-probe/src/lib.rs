//! A transform for the host's tests: per message, by its `event`:
//!
//! - named in `drop_events`: dropped, with a reason naming the event;
//! - `Fan Out`: kept as two messages, `Fan Out 1` and `Fan Out 2`;
//! - `Leak`: kept with the raw value of its secret `token` in `properties.token` (it asks for
//!   the raw value), so the test sees the host scrub what a transform returns;
//! - `Spin`: loops until the host's CPU deadline stops it;
//! - anything else: kept, with `properties.transformed = true`;
//! - not a JSON object: dropped as such.

use serde::Deserialize;
use switchyard_sdk::serde_json::{self, json, Value};
use switchyard_sdk::{
    schemars, CallError, Capabilities, Context, Plugin, Transform, TransformResult,
};

#[derive(Deserialize, schemars::JsonSchema)]
struct Config {
    /// Events dropped.
    #[serde(default)]
    drop_events: Vec<String>,
}

struct Probe;

impl Plugin for Probe {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new().secret_value("token", "A value the probe leaks on purpose", false)
    }
}

impl Transform for Probe {
    fn transform(
        ctx: &Context<Config>,
        batch: Vec<String>,
    ) -> Result<Vec<TransformResult>, CallError> {
        Ok(batch
            .into_iter()
            .map(|text| {
                let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&text) else {
                    return TransformResult::Drop("not a JSON object".into());
                };
                let event = message
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if ctx.config.drop_events.contains(&event) {
                    return TransformResult::Drop(format!("event `{event}` is dropped by config"));
                }
                match event.as_str() {
                    "Fan Out" => TransformResult::Keep(
                        (1..=2)
                            .map(|n| {
                                let mut m = message.clone();
                                m.insert("event".into(), json!(format!("Fan Out {n}")));
                                Value::Object(m).to_string()
                            })
                            .collect(),
                    ),
                    "Spin" => {
                        let mut n: u64 = 0;
                        loop {
                            n = std::hint::black_box(n.wrapping_add(1));
                        }
                    }
                    other => {
                        let props = message.entry("properties").or_insert_with(|| json!({}));
                        if let Value::Object(props) = props {
                            if other == "Leak" {
                                let token = ctx.secret("token").unwrap_or("no token");
                                props.insert("token".into(), json!(token));
                            } else {
                                props.insert("transformed".into(), json!(true));
                            }
                        }
                        TransformResult::Keep(vec![Value::Object(message).to_string()])
                    }
                }
            })
            .collect())
    }
}

switchyard_sdk::export_transform!(Probe);
