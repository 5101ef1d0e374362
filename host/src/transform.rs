//! Transform chains: messages pass through the `[transforms.NAME]` plugins a source or a stream
//! names, in order, each plugin keeping a message (reshaped), fanning it out into several, or
//! dropping it with a reason.
//!
//! The chain sits between the engines that carry messages (streams, and the per-source chains
//! they apply first) and the runtime. It owns what the contract leaves to the host:
//!
//! - batching to each plugin's `max-batch-size` (or the block's smaller `batch_size`);
//! - holding a plugin to one result per input, in order (the runtime refuses another count as a
//!   contract error; the chain checks again so no miscount can shift messages onto the wrong
//!   origin);
//! - keeping, for every output, the input it came from, so a caller can commit cursors and keep
//!   per-profile order;
//! - counting drops per transform and reason. A kept message that is not a JSON object is
//!   dropped with a reason rather than failing the batch: one bad output must not stall a stream
//!   forever, and it is counted, not silent.
//!
//! A plugin's whole-batch error fails the batch ([`TransformError`]); whether to retry it is
//! [`TransformError::is_transient`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use tracing::Instrument as _;

use crate::config::Config;
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

    fn plugin(&self) -> String {
        self.instance.plugin().manifest().name.clone()
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
    /// The plugin's call failed as a whole: its own error, or the sandbox stopping it.
    #[error("transform `{transform}`: {source}")]
    Plugin {
        transform: String,
        #[source]
        source: PluginError,
    },
    /// The plugin answered, but not as the contract says (a result count other than the
    /// batch's).
    #[error("transform `{transform}` (plugin `{plugin}`) broke the contract: {reason}; fix or replace the plugin, its messages are held back until then")]
    Contract {
        transform: String,
        plugin: String,
        reason: String,
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

    /// The `[transforms.NAME]` that failed.
    pub fn transform(&self) -> &str {
        match self {
            TransformError::Plugin { transform, .. } | TransformError::Contract { transform, .. } => {
                transform
            }
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
            let span = tracing::info_span!("transform", transform = %step.name, messages = current.len());
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
        let results = step
            .instance
            .transform(&batch)
            .await
            .map_err(|source| TransformError::Plugin {
                transform: step.name.clone(),
                source,
            })?;
        if results.len() != batch.len() {
            return Err(TransformError::Contract {
                transform: step.name.clone(),
                plugin: step.plugin(),
                reason: format!(
                    "it returned {} results for a batch of {}",
                    results.len(),
                    batch.len()
                ),
            });
        }
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
        let mut steps = HashMap::new();
        for (name, block) in &config.transforms {
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
        for (name, source) in &config.sources {
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
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
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
