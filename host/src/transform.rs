//! Transform chains: messages pass through the `[transforms.NAME]` plugins a source or a stream
//! names, in order, each plugin keeping a message (reshaped), fanning it out into several, or
//! dropping it with a reason.
//!
//! The chain sits between the engines that carry messages (streams, and the per-source chains
//! they apply first) and the runtime. It owns what the contract leaves to the host:
//!
//! - batching to each plugin's `max-batch-size` (or the block's smaller `batch_size`);
//! - relying on the runtime to hold a plugin to one result per input, in order (it refuses
//!   another count as `PluginError::Contract`, which fails the batch: a miscount would shift
//!   every later message onto the wrong origin);
//! - keeping, for every output, the input it came from, so a caller can commit cursors and keep
//!   per-profile order;
//! - counting drops per transform and reason. A kept message that is not a JSON object is
//!   dropped with a reason rather than failing the batch: one bad output must not stall a stream
//!   forever, and it is counted, not silent.
//!
//! A plugin's whole-batch error fails the batch ([`TransformError`]); whether to retry it is
//! [`TransformError::is_transient`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use tracing::Instrument as _;

use crate::config::{Config, StreamConfig};
use crate::registry::Registry;
use crate::runtime::bindings::{CallError, TransformResult};
use crate::runtime::{PluginError, PluginInstance};

/// The longest drop reason kept, in characters; a plugin's reason is its own text, and counts
/// are kept per reason.
const MAX_REASON_CHARS: usize = 200;

/// The reason counted when a plugin keeps no message and gives no reason (`keep([])`).
pub const KEPT_NOTHING: &str = "kept no message";

/// The reason counted when a plugin keeps something that is not a JSON object.
pub const INVALID_OUTPUT: &str = "transform output is not a JSON object";

/// One `[transforms.NAME]`: its plugin instance and how many messages a call takes.
pub struct Step {
    name: String,
    instance: PluginInstance,
    batch_size: usize,
}

impl Step {
    /// A step of `instance` (a transform plugin's), in calls of at most `batch_size` messages
    /// and never more than the plugin's `max-batch-size`.
    pub fn new(name: &str, instance: PluginInstance, batch_size: Option<usize>) -> Step {
        let max = instance.plugin().manifest().max_batch_size.max(1) as usize;
        Step {
            name: name.to_string(),
            batch_size: batch_size.unwrap_or(max).clamp(1, max),
            instance,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Transforms applied in order. Cheap to clone: steps are shared.
#[derive(Clone, Default)]
pub struct TransformChain {
    steps: Vec<Arc<Step>>,
}

/// A message a chain kept, with the position of the input it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub input: usize,
    pub message: String,
}

/// A message a chain dropped: which input, at which transform, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub input: usize,
    pub transform: String,
    pub reason: String,
}

/// What a chain made of a batch. `kept` is in input order (fan-outs in the order the plugin
/// gave them); an input may appear several times in `kept`, or in `dropped`, or (a fan-out
/// partly dropped further on) in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainOutput {
    pub kept: Vec<Kept>,
    pub dropped: Vec<Dropped>,
}

impl ChainOutput {
    /// The kept messages, in order.
    pub fn messages(&self) -> impl Iterator<Item = &str> {
        self.kept.iter().map(|k| k.message.as_str())
    }

    /// Drops counted per (transform, reason).
    pub fn dropped_by_reason(&self) -> BTreeMap<(String, String), u64> {
        let mut counts = BTreeMap::new();
        for d in &self.dropped {
            *counts
                .entry((d.transform.clone(), d.reason.clone()))
                .or_insert(0) += 1;
        }
        counts
    }
}

/// Why a chain produced nothing for a batch.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The plugin's call failed as a whole: its own error, the sandbox stopping it, or an
    /// answer that breaks the contract (`PluginError::Contract`: a result count other than the
    /// batch's).
    #[error("transform `{transform}`: {source}")]
    Plugin {
        transform: String,
        #[source]
        source: PluginError,
    },
}

impl TransformError {
    /// Whether the same batch may succeed later: the plugin said so (`transient`), or it ran
    /// out of wall-clock time waiting on I/O.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransformError::Plugin {
                source: PluginError::Plugin {
                    error: CallError::Transient(_),
                    ..
                } | PluginError::Timeout { .. },
                ..
            }
        )
    }

    /// Whether no message can pass until an operator acts: the plugin's config or credentials
    /// are refused, or it is not a transform. Anything else neither transient nor this (its own
    /// `failed`, a crash, a limit, a contract breach) may be one message's doing.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            TransformError::Plugin {
                source: PluginError::Plugin {
                    error: CallError::InvalidConfig(_) | CallError::Unauthorized(_),
                    ..
                } | PluginError::MissingExport { .. }
                    | PluginError::UnsupportedAction { .. },
                ..
            }
        )
    }

    /// The `[transforms.NAME]` that failed.
    pub fn transform(&self) -> &str {
        match self {
            TransformError::Plugin { transform, .. } => transform,
        }
    }
}

impl TransformChain {
    pub fn new(steps: Vec<Arc<Step>>) -> TransformChain {
        TransformChain { steps }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The transforms' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.name.as_str()).collect()
    }

    /// This chain followed by `next` (a source's chain, then a stream's).
    pub fn then(&self, next: &TransformChain) -> TransformChain {
        let mut steps = self.steps.clone();
        steps.extend(next.steps.iter().cloned());
        TransformChain { steps }
    }

    /// Runs `messages` (each a Segment-shaped JSON object as text) through every step in order.
    /// An empty chain keeps everything as it is.
    pub async fn apply(&self, messages: Vec<String>) -> Result<ChainOutput, TransformError> {
        let mut current: Vec<Kept> = messages
            .into_iter()
            .enumerate()
            .map(|(input, message)| Kept { input, message })
            .collect();
        let mut dropped = Vec::new();
        for step in &self.steps {
            if current.is_empty() {
                break;
            }
            let span =
                tracing::info_span!("transform", transform = %step.name, messages = current.len());
            current = apply_step(step, current, &mut dropped)
                .instrument(span)
                .await?;
        }
        Ok(ChainOutput {
            kept: current,
            dropped,
        })
    }
}

/// One step over the chain's current messages, in calls of the step's batch size.
async fn apply_step(
    step: &Step,
    current: Vec<Kept>,
    dropped: &mut Vec<Dropped>,
) -> Result<Vec<Kept>, TransformError> {
    let mut next = Vec::with_capacity(current.len());
    let mut pending = current.into_iter().peekable();
    while pending.peek().is_some() {
        let (origins, batch): (Vec<usize>, Vec<String>) = pending
            .by_ref()
            .take(step.batch_size)
            .map(|k| (k.input, k.message))
            .unzip();
        let results =
            step.instance
                .transform(&batch)
                .await
                .map_err(|source| TransformError::Plugin {
                    transform: step.name.clone(),
                    source,
                })?;
        for (input, result) in origins.into_iter().zip(results) {
            let drop = |reason: &str| Dropped {
                input,
                transform: step.name.clone(),
                reason: clip(reason),
            };
            match result {
                TransformResult::Drop(reason) => dropped.push(drop(&reason)),
                TransformResult::Keep(messages) if messages.is_empty() => {
                    dropped.push(drop(KEPT_NOTHING))
                }
                TransformResult::Keep(messages) => {
                    for message in messages {
                        if is_json_object(&message) {
                            next.push(Kept { input, message });
                        } else {
                            tracing::warn!(transform = %step.name, input, "{INVALID_OUTPUT}: dropped");
                            dropped.push(drop(INVALID_OUTPUT));
                        }
                    }
                }
            }
        }
    }
    Ok(next)
}

/// Whether `text` is one JSON object (checked without building it).
fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn clip(reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        return "(no reason given)".to_string();
    }
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        None => reason.to_string(),
        Some((at, _)) => format!("{}…", &reason[..at]),
    }
}

/// Every `[transforms.NAME]` of a project, loaded once, and the chain of each source that
/// names `transforms = [...]`. Streams build their chains from it with [`Transforms::chain`].
#[derive(Clone, Default)]
pub struct Transforms {
    steps: HashMap<String, Arc<Step>>,
    sources: HashMap<String, TransformChain>,
}

impl Transforms {
    /// Loads every `[transforms.NAME]`'s plugin (installed, of kind transform, secrets
    /// resolved) and builds each source's chain. Errors name the block.
    pub async fn load(config: &Config, registry: &Registry) -> anyhow::Result<Transforms> {
        Transforms::load_some(config, registry, |_| true, |_| true).await
    }

    /// What one stream needs: the chains of the sources it reads (every source when `from` is
    /// empty) and its own chain, with only the transforms those name loaded. Each stream
    /// loads its own instances, so a transform's sandbox is never shared between streams.
    pub async fn for_stream(
        config: &Config,
        registry: &Registry,
        stream: &StreamConfig,
    ) -> anyhow::Result<(Transforms, TransformChain)> {
        let reads =
            |source: &str| stream.from.is_empty() || stream.from.iter().any(|f| f == source);
        let mut wanted: HashSet<&str> = stream.transforms.iter().map(String::as_str).collect();
        for (name, source) in &config.sources {
            if reads(name) {
                wanted.extend(source.transforms.iter().map(String::as_str));
            }
        }
        let transforms =
            Transforms::load_some(config, registry, |t| wanted.contains(t), reads).await?;
        let chain = transforms
            .chain(&stream.transforms)
            .with_context(|| format!("stream `{}` transforms", stream.name))?;
        Ok((transforms, chain))
    }

    async fn load_some(
        config: &Config,
        registry: &Registry,
        takes_transform: impl Fn(&str) -> bool,
        takes_source: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Transforms> {
        let mut steps = HashMap::new();
        for (name, block) in config.transforms.iter().filter(|(n, _)| takes_transform(n)) {
            let instance = registry.instance(&block.block(name)).await?;
            steps.insert(
                name.clone(),
                Arc::new(Step::new(name, instance, block.batch_size)),
            );
        }
        let mut transforms = Transforms {
            steps,
            sources: HashMap::new(),
        };
        for (name, source) in config.sources.iter().filter(|(n, _)| takes_source(n)) {
            if !source.transforms.is_empty() {
                let chain = transforms
                    .chain(&source.transforms)
                    .with_context(|| format!("[sources.{name}] transforms"))?;
                transforms.sources.insert(name.clone(), chain);
            }
        }
        Ok(transforms)
    }

    /// The chain of the named transforms, in order. An unknown name is an error listing the
    /// defined ones (`switchyard validate` reports it before this is reached).
    pub fn chain(&self, names: &[String]) -> anyhow::Result<TransformChain> {
        names
            .iter()
            .map(|n| {
                self.steps.get(n).cloned().with_context(|| {
                    let mut known: Vec<&str> = self.steps.keys().map(String::as_str).collect();
                    known.sort();
                    format!(
                        "no [transforms.{n}] (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })
            })
            .collect::<anyhow::Result<_>>()
            .map(TransformChain::new)
    }

    /// The chain a source's messages pass before any stream sees them (empty when the source
    /// names none).
    pub fn for_source(&self, source: &str) -> TransformChain {
        self.sources.get(source).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::PluginConfig;
    use crate::runtime::net::HttpPolicy;
    use crate::runtime::{Limits, Plugin, Runtime};
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    /// The test transform `tests/plugins/chain-probe` (max batch size 3), built by
    /// `tools/build-plugins`.
    fn probe_wasm() -> std::path::PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into())
            .join("wasm32-wasip2/plugin/chain_probe.wasm")
    }

    /// One engine and one compiled probe for every test: compiling is the slow part.
    fn compiled() -> &'static (Runtime, wasmtime::component::Component) {
        static COMPILED: OnceLock<(Runtime, wasmtime::component::Component)> = OnceLock::new();
        COMPILED.get_or_init(|| {
            let path = probe_wasm();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run tools/build-plugins first", path.display())
            });
            let runtime = Runtime::new(Limits::default()).unwrap();
            let component = runtime.compile(&bytes).unwrap();
            (runtime, component)
        })
    }

    async fn probe() -> Arc<Plugin> {
        let (runtime, component) = compiled();
        Arc::new(runtime.load(component.clone()).await.unwrap())
    }

    async fn step(name: &str, config: Value, batch_size: Option<usize>) -> Arc<Step> {
        let instance = PluginInstance::new(
            probe().await,
            PluginConfig {
                config: config.to_string(),
                secrets: vec![],
            },
            HttpPolicy::deny_all(),
        );
        Arc::new(Step::new(name, instance, batch_size))
    }

    fn track(events: &[&str]) -> Vec<String> {
        events
            .iter()
            .map(|e| json!({"type": "track", "event": e, "properties": {}}).to_string())
            .collect()
    }

    fn parsed(out: &ChainOutput) -> Vec<(usize, Value)> {
        out.kept
            .iter()
            .map(|k| (k.input, serde_json::from_str(&k.message).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn steps_apply_in_order_in_batches_of_the_plugins_maximum() {
        let chain = TransformChain::new(vec![
            step("first", json!({"mode": "tag", "tag": "a"}), None).await,
            step("second", json!({"mode": "tag", "tag": "b"}), None).await,
            step("sizes", json!({"mode": "batch-size"}), None).await,
        ]);
        assert_eq!(chain.names(), vec!["first", "second", "sizes"]);
        let out = chain
            .apply(track(&["e0", "e1", "e2", "e3", "e4", "e5", "e6"]))
            .await
            .unwrap();
        assert!(out.dropped.is_empty());
        let kept = parsed(&out);
        assert_eq!(kept.len(), 7);
        for (i, (input, m)) in kept.iter().enumerate() {
            assert_eq!(*input, i);
            assert_eq!(m["event"], format!("e{i}"));
            assert_eq!(m["properties"]["trail"], json!(["a", "b"]));
        }
        // Seven messages to a plugin taking three per call: calls of 3, 3 and 1.
        let sizes: Vec<&Value> = kept
            .iter()
            .map(|(_, m)| &m["properties"]["batch"])
            .collect();
        assert_eq!(sizes, vec![3, 3, 3, 3, 3, 3, 1]);
    }

    #[tokio::test]
    async fn a_smaller_batch_size_is_honoured_and_a_larger_one_capped() {
        let two = TransformChain::new(vec![
            step("s", json!({"mode": "batch-size"}), Some(2)).await,
        ]);
        let out = two.apply(track(&["a", "b", "c"])).await.unwrap();
        let sizes: Vec<Value> = parsed(&out)
            .into_iter()
            .map(|(_, m)| m["properties"]["batch"].clone())
            .collect();
        assert_eq!(sizes, vec![json!(2), json!(2), json!(1)]);
        let capped = TransformChain::new(vec![
            step("s", json!({"mode": "batch-size"}), Some(100)).await,
        ]);
        let out = capped.apply(track(&["a", "b", "c", "d"])).await.unwrap();
        assert_eq!(parsed(&out)[0].1["properties"]["batch"], 3);
    }

    #[tokio::test]
    async fn fan_outs_keep_their_origin_and_drops_are_counted_by_transform_and_reason() {
        let chain = TransformChain::new(vec![
            step("split", json!({"mode": "fanout", "copies": 2}), None).await,
            step(
                "plan",
                json!({"mode": "drop", "event": "noise", "reason": "unplanned"}),
                None,
            )
            .await,
        ]);
        let out = chain
            .apply(track(&["buy", "noise", "view", "noise"]))
            .await
            .unwrap();
        let kept: Vec<(usize, Value, Value)> = parsed(&out)
            .into_iter()
            .map(|(i, m)| (i, m["event"].clone(), m["properties"]["copy"].clone()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (0, json!("buy"), json!(0)),
                (0, json!("buy"), json!(1)),
                (2, json!("view"), json!(0)),
                (2, json!("view"), json!(1)),
            ]
        );
        let dropped_inputs: Vec<usize> = out.dropped.iter().map(|d| d.input).collect();
        assert_eq!(dropped_inputs, vec![1, 1, 3, 3]);
        assert_eq!(
            out.dropped_by_reason(),
            BTreeMap::from([(("plan".to_string(), "unplanned".to_string()), 4)])
        );
    }

    #[tokio::test]
    async fn invalid_outputs_and_empty_keeps_are_counted_drops_not_failures() {
        let chain = TransformChain::new(vec![
            step("bad", json!({"mode": "bad-output", "event": "x"}), None).await,
            step("none", json!({"mode": "keep-none", "event": "y"}), None).await,
            step(
                "silent",
                json!({"mode": "drop", "event": "z", "reason": "  "}),
                None,
            )
            .await,
        ]);
        let out = chain.apply(track(&["x", "ok", "y", "z"])).await.unwrap();
        assert_eq!(out.messages().count(), 1);
        assert_eq!(out.kept[0].input, 1);
        assert_eq!(
            out.dropped_by_reason(),
            BTreeMap::from([
                (("bad".to_string(), INVALID_OUTPUT.to_string()), 2),
                (("none".to_string(), KEPT_NOTHING.to_string()), 1),
                (("silent".to_string(), "(no reason given)".to_string()), 1),
            ])
        );
    }

    #[tokio::test]
    async fn a_result_count_other_than_the_batch_fails_the_batch_naming_the_transform() {
        let chain = TransformChain::new(vec![
            step("broken", json!({"mode": "miscount"}), None).await,
        ]);
        let err = chain.apply(track(&["a", "b", "c"])).await.unwrap_err();
        assert_eq!(err.transform(), "broken");
        assert!(matches!(
            &err,
            TransformError::Plugin {
                source: PluginError::Contract { .. },
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("transform `broken`") && text.contains("2 results for a batch of 3"),
            "{text}"
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_transient_plugin_error_is_retryable_and_an_empty_chain_keeps_all() {
        let chain = TransformChain::new(vec![
            step("lookup", json!({"mode": "transient"}), None).await,
        ]);
        let err = chain.apply(track(&["a"])).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("lookup service unavailable"),
            "{err}"
        );
        // Nothing to transform: the plugin is not called.
        assert_eq!(chain.apply(vec![]).await.unwrap(), ChainOutput::default());

        let empty = TransformChain::default();
        assert!(empty.is_empty());
        let out = empty.apply(track(&["a", "b"])).await.unwrap();
        assert_eq!(out.messages().collect::<Vec<_>>(), track(&["a", "b"]));
        let joined = empty.then(&chain);
        assert_eq!(joined.names(), vec!["lookup"]);
    }

    #[test]
    fn reasons_are_trimmed_and_clipped() {
        assert_eq!(clip("  spaced  "), "spaced");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_REASON_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert!(is_json_object(" {\"a\":1}"));
        assert!(!is_json_object("[1]") && !is_json_object("{nope") && !is_json_object("7"));
    }

    #[tokio::test]
    async fn transforms_load_from_config_with_source_chains() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path(), compiled().0.clone()).unwrap();
        registry.install(&probe_wasm()).await.unwrap();
        let config = Config::parse(
            r#"
[transforms.tag]
plugin = "chain-probe"
config = { mode = "tag", tag = "t" }

[transforms.split]
plugin = "chain-probe"
config = { mode = "fanout", copies = 2 }
batch_size = 2

[sources.web]
write_keys = ["wk"]
transforms = ["tag", "split"]

[sources.app]
write_keys = ["wk2"]
"#,
        )
        .unwrap();
        let transforms = Transforms::load(&config, &registry).await.unwrap();
        let web = transforms.for_source("web");
        assert_eq!(web.names(), vec!["tag", "split"]);
        assert!(transforms.for_source("app").is_empty());
        let out = web.apply(track(&["a"])).await.unwrap();
        assert_eq!(out.kept.len(), 2);
        assert_eq!(parsed(&out)[1].1["properties"]["trail"], json!(["t"]));
        let err = transforms
            .chain(&["tag".into(), "nope".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no [transforms.nope] (defined: split, tag)"),
            "{err}"
        );
    }
}
