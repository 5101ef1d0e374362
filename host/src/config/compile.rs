//! The project compiled: every schedule, filter, mapping and run cap of the file parsed once into
//! the typed value the engines run with. Checking a file and compiling it are one pass
//! ([`Config::compile`]): its errors are what `switchyard validate` reports.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use super::{Config, RunCaps, StreamConfig, SyncConfig, SyncMode};
use crate::filter::Filter;
use crate::mapping::Mapping;
use crate::schedule::Schedule;

/// A project file that compiled: the file's own values (through `Deref`, so `project.hub`,
/// `project.destinations` read as before) and the compiled ones beside them.
#[derive(Debug, Clone)]
pub struct Project {
    file: Config,
    compiled: Compiled,
}

/// What [`Config::compile`] produces beside the file's values.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub(super) syncs: BTreeMap<String, Arc<CompiledSync>>,
    pub(super) audiences: BTreeMap<String, Arc<CompiledAudience>>,
    pub(super) sources: BTreeMap<String, CompiledSource>,
    pub(super) streams: BTreeMap<String, Arc<CompiledStream>>,
}

/// A `[[syncs]]` entry's parsed values.
#[derive(Debug)]
pub struct CompiledSync {
    pub schedule: Option<Schedule>,
    /// Paths into the profile (or, for events syncs, the event).
    pub mapping: Mapping,
    /// An events sync's `from.filter`.
    pub event_filter: Option<Filter>,
}

/// An `[audiences.NAME]` entry's parsed values.
#[derive(Debug)]
pub struct CompiledAudience {
    pub filter: Filter,
    pub full_refresh: Option<Schedule>,
}

/// A `[sources.NAME]` entry's parsed values.
#[derive(Debug, Clone)]
pub struct CompiledSource {
    pub schedule: Option<Schedule>,
    pub caps: RunCaps,
}

/// A `[[streams]]` entry's parsed values.
#[derive(Debug)]
pub struct CompiledStream {
    pub filter: Option<Filter>,
    /// None: the message itself is the record's fields.
    pub mapping: Option<Mapping>,
}

impl CompiledStream {
    /// A stream's filter and mapping, or what is wrong with each (`filter: ...`,
    /// `mapping.FIELD: ...`).
    pub fn compile(stream: &StreamConfig) -> Result<CompiledStream, Vec<String>> {
        let mut problems = Vec::new();
        let filter = keep(
            &mut problems,
            stream
                .filter
                .as_deref()
                .map(Filter::compile)
                .transpose()
                .map_err(|e| format!("filter: {e}")),
        );
        let mapping = if stream.mapping.is_empty() {
            Some(None)
        } else {
            match Mapping::compile_each(&stream.mapping, true) {
                Ok(m) => Some(Some(m)),
                Err(errors) => {
                    problems.extend(errors.into_iter().map(|e| format!("mapping.{e}")));
                    None
                }
            }
        };
        match (filter, mapping) {
            (Some(filter), Some(mapping)) => Ok(CompiledStream { filter, mapping }),
            _ => Err(problems),
        }
    }
}

impl Config {
    /// Checks the file on its own (without plugins or secrets) and parses every expression in
    /// it; every problem is reported at once, one line each.
    pub fn compile(self) -> Result<Project, Vec<String>> {
        let (compiled, problems) = self.compile_parts();
        if problems.is_empty() {
            Ok(Project {
                file: self,
                compiled,
            })
        } else {
            Err(problems)
        }
    }
}

impl Project {
    /// Reads, parses and compiles a project file.
    pub fn load(path: &Path) -> anyhow::Result<Project> {
        Project::load_with_plugins_dir(path, None)
    }

    /// [`Project::load`], with `--plugins-dir` (when given) in place of `[hub] plugins_dir`.
    pub fn load_with_plugins_dir(
        path: &Path,
        plugins_dir: Option<&Path>,
    ) -> anyhow::Result<Project> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut config = Config::parse_unchecked(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(dir) = plugins_dir {
            config.hub.plugins_dir = dir.to_path_buf();
        }
        config
            .compile()
            .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("\n")))
    }

    /// Parses and compiles project text; TOML errors carry line:column.
    pub fn parse(text: &str) -> anyhow::Result<Project> {
        Config::parse_unchecked(text)?
            .compile()
            .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))
    }

    /// The file's values.
    pub fn file(&self) -> &Config {
        &self.file
    }

    /// The `[[syncs]]` entry named `name` with its compiled values.
    pub fn compiled_sync(&self, name: &str) -> anyhow::Result<(&SyncConfig, &Arc<CompiledSync>)> {
        let sync = self.file.sync(name)?;
        let compiled = self
            .compiled
            .syncs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("sync `{name}` was not compiled"))?;
        Ok((sync, compiled))
    }

    /// Every sync's schedule, for the scheduler.
    pub fn sync_schedules(&self) -> Vec<(String, Schedule)> {
        self.compiled
            .syncs
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.schedule.clone()?)))
            .collect()
    }

    pub fn audience(&self, name: &str) -> Option<&Arc<CompiledAudience>> {
        self.compiled.audiences.get(name)
    }

    /// A `[sources.NAME]`'s schedule and caps (None: no such source).
    pub fn source(&self, name: &str) -> Option<&CompiledSource> {
        self.compiled.sources.get(name)
    }

    /// Every plugin source's schedule, for the scheduler.
    pub fn source_schedules(&self) -> Vec<(String, Schedule)> {
        self.file
            .sources
            .iter()
            .filter(|(_, s)| s.plugin.is_some())
            .filter_map(|(name, _)| {
                let schedule = self.compiled.sources.get(name)?.schedule.clone()?;
                Some((name.clone(), schedule))
            })
            .collect()
    }

    pub fn stream(&self, name: &str) -> Option<&Arc<CompiledStream>> {
        self.compiled.streams.get(name)
    }

    /// Whether the sync named `name` is an events sync.
    pub fn is_events_sync(&self, name: &str) -> bool {
        self.file
            .syncs
            .iter()
            .any(|s| s.name == name && s.mode == SyncMode::Events)
    }
}

/// `Project` is the file plus what was compiled from it: code that only reads settings reads
/// them as it would from the file.
impl Deref for Project {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.file
    }
}

/// Keeps a compiled value, or records its error among `problems`.
pub(super) fn keep<T>(problems: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(e);
            None
        }
    }
}

/// An optional schedule text, parsed.
pub(super) fn schedule(text: Option<&str>) -> Result<Option<Schedule>, String> {
    text.map(Schedule::parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECT: &str = r#"
[audiences.pro]
filter = 'traits.plan == "pro"'
full_refresh = "every 1h"

[destinations.hook]
plugin = "webhook"

[sources.shop]
plugin = "shopify"
schedule = "every 15m"
max_run_time = "90s"
[sources.shop.streams.customers]
identifiers = { email = "email" }

[[syncs]]
name = "pro-users"
from = { audience = "pro" }
to = "hook"
mode = "mirror"
schedule = "continuous"
mapping = { email = "identifiers.email" }

[[syncs]]
name = "orders"
from = { events = "Order Completed", filter = "event.properties.total > 100" }
to = "hook"
mode = "events"
mapping = { total = "event.properties.total" }

[[streams]]
name = "all"
to = "hook"
filter = 'event.type == "track"'
"#;

    #[test]
    fn every_expression_is_compiled_once_with_the_file() {
        let p = Project::parse(PROJECT).unwrap();
        let (sync, compiled) = p.compiled_sync("pro-users").unwrap();
        assert_eq!(sync.to, "hook");
        assert!(matches!(compiled.schedule, Some(Schedule::Continuous)));
        assert!(compiled.event_filter.is_none());
        let (_, orders) = p.compiled_sync("orders").unwrap();
        assert_eq!(
            orders.event_filter.as_ref().map(Filter::source),
            Some("event.properties.total > 100")
        );
        assert!(orders.schedule.is_none());
        assert!(p.is_events_sync("orders") && !p.is_events_sync("pro-users"));
        assert_eq!(
            p.sync_schedules()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            vec!["pro-users"]
        );
        let pro = p.audience("pro").unwrap();
        assert_eq!(pro.filter.source(), r#"traits.plan == "pro""#);
        assert!(matches!(pro.full_refresh, Some(Schedule::Every(d)) if d.as_secs() == 3600));
        let shop = p.source("shop").unwrap();
        assert!(matches!(shop.schedule, Some(Schedule::Every(d)) if d.as_secs() == 900));
        assert_eq!(shop.caps.time, std::time::Duration::from_secs(90));
        assert_eq!(p.source_schedules().len(), 1);
        let all = p.stream("all").unwrap();
        assert!(all.filter.is_some() && all.mapping.is_none());
        // Deref reads the file's own values.
        assert_eq!(p.syncs.len(), 2);
        assert!(p.compiled_sync("nope").is_err());
    }

    #[test]
    fn compile_errors_are_every_problem_at_once() {
        let text = PROJECT
            .replace("every 1h", "every fortnight")
            .replace("event.properties.total > 100", "event.properties.total >")
            .replace(r#"schedule = "continuous""#, r#"schedule = "sometimes""#)
            .replace(
                r#"mapping = { email = "identifiers.email" }"#,
                r#"mapping = { email = "identifier.email", plan = "trait.plan" }"#,
            );
        let problems = Config::parse_unchecked(&text)
            .unwrap()
            .compile()
            .unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("[audiences.pro] full_refresh: `every fortnight`"),
            "{all}"
        );
        assert!(all.contains("\"orders\": from.filter:"), "{all}");
        assert!(
            all.contains("\"pro-users\": schedule: `sometimes`"),
            "{all}"
        );
        assert!(all.contains("\"pro-users\": mapping.email:"), "{all}");
        assert!(all.contains("\"pro-users\": mapping.plan:"), "{all}");
        assert_eq!(problems.len(), 5, "{all}");
        // `problems()` (what `validate` prints) is the same list.
        assert_eq!(Config::parse_unchecked(&text).unwrap().problems(), problems);
    }
}
