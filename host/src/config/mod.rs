//! `switchyard.toml`: the hub's settings, identity rules, sources, audiences, destinations and
//! syncs. Unknown keys are errors (with line and column), so a typo never silently falls back to
//! a default; cross-references are checked together and every problem is reported at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

pub mod access;
pub mod compile;
pub mod secrets;
pub mod web;

/// The whole project file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub audiences: BTreeMap<String, AudienceConfig>,
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    #[serde(default)]
    pub syncs: Vec<SyncConfig>,
    /// `[[streams]]`: every message, as it arrives, to a destination (see [`StreamConfig`]).
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// `[transforms.NAME]`: transform plugins that sources and streams name in their
    /// `transforms = [...]` chains.
    #[serde(default)]
    pub transforms: BTreeMap<String, TransformConfig>,
}

/// `[transforms.NAME]`: one configured instance of a transform plugin. Sources
/// (`[sources.NAME] transforms = [...]`) and streams chain them by name, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Installed plugin name, e.g. `pii-scrub`.
    pub plugin: String,
    /// Version requirement, e.g. `"^1.2"`; the newest installed version by default.
    #[serde(default)]
    pub version: Option<String>,
    /// The plugin's settings, checked against the JSON Schema in its manifest.
    #[serde(default)]
    pub config: toml::Table,
    /// Secret name → `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Hosts granted to the plugin (default: the hosts its manifest names; the first-party
    /// transforms name none).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// Exact `host:port` pairs the plugin may reach on private or loopback addresses.
    #[serde(default)]
    pub allow_private_hosts: Vec<String>,
    /// `HOST[:PORT]=URL`: send requests for a granted host elsewhere (staging, proxy, fake).
    #[serde(default)]
    pub reroute: Vec<Reroute>,
    /// Messages per plugin call (default and ceiling: the plugin's maximum).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

impl TransformConfig {
    pub fn block<'a>(&'a self, name: &'a str) -> PluginBlock<'a> {
        PluginBlock {
            table: "transforms",
            name,
            kind: "transform",
            plugin: &self.plugin,
            version: self.version.as_deref(),
            config: &self.config,
            secrets: &self.secrets,
            allow_hosts: self.allow_hosts.as_deref(),
            allow_private_hosts: &self.allow_private_hosts,
            reroute: &self.reroute,
        }
    }
}

/// `[[streams]]`: messages of every type (track, identify, page, screen, group, alias) from
/// one or more sources forwarded to a destination as they are committed, filtered, and mapped.
/// Not a `[[syncs]]` mode: a sync is a run over a model that is planned, diffed against what
/// the destination acknowledged and recorded in a history, while a stream never ends, keeps
/// no per-record state (one cursor in commit order), honours each message's `integrations`
/// and counts what it drops. Delivery (batches, rate limit, retries, dead letters) is the
/// syncs' own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    /// `[sources.NAME]` whose messages are forwarded; empty (the default) means every source.
    #[serde(default)]
    pub from: Vec<String>,
    /// A `[destinations.NAME]`.
    pub to: String,
    /// A CEL expression over the message (`event`: the message with `type`, `event`,
    /// `properties`, `traits`, `context`, ..., as its source's `transforms` left it) and its
    /// profile (`traits`, `identifiers`); true forwards it.
    #[serde(default)]
    pub filter: Option<String>,
    /// `[transforms.NAME]`s the messages this stream forwards pass through, in order, after its
    /// `filter` and before its `mapping` (e.g. `["scrub"]` to remove what this destination
    /// must not see). The order is Segment's: a source's transforms (`[sources.NAME]
    /// transforms`, like source-level Protocols transformations) run first, so the filter sees
    /// planned names; `integrations`, consent and the filter come next; the stream's own
    /// transforms (like Segment's destination insert functions, which run after destination
    /// filters) only see what the filter kept, so a plugin is not called for a message the
    /// destination will never get. A message a transform drops is counted `dropped:transform`.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Destination field → `event.*` path into the message (or a profile path, or
    /// `{ value = LITERAL }`); empty forwards the message itself as the record's fields.
    #[serde(default)]
    pub mapping: BTreeMap<String, MappingValue>,
    /// The names this destination answers to in a message's `integrations` object (Segment's
    /// destination names, case-sensitive, e.g. "Facebook Conversions API"); the destination's
    /// own name and its plugin's name always count.
    #[serde(default)]
    pub integration_names: Vec<String>,
    /// Attempts per message before it goes to the dead-letter store.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Messages per plugin call (default and ceiling: the plugin's maximum).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Where a new stream starts: `"now"` (the default: messages committed from its first
    /// start on) or `"beginning"` (every stored message numbered for streams).
    #[serde(default)]
    pub start: StreamStart,
}

/// Where a stream without a stored cursor starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StreamStart {
    #[default]
    Now,
    Beginning,
}

/// `[audiences.NAME]`: the profiles a CEL filter accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    /// A CEL expression over `traits`, `identifiers`, `events` (per name: count, first, last)
    /// and `event_list` (name, ts, properties), with `now`; true means member.
    pub filter: String,
    #[serde(default)]
    pub description: Option<String>,
    /// How often membership is recomputed in full (changed profiles are re-evaluated before
    /// every sync run regardless): an interval like `"1h"` or a cron expression.
    #[serde(default)]
    pub full_refresh: Option<String>,
}

/// `[destinations.NAME]`: one configured instance of a destination plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Installed plugin name.
    pub plugin: String,
    /// Version requirement, e.g. `"^1.2"`; the newest installed version by default.
    #[serde(default)]
    pub version: Option<String>,
    /// The plugin's settings, checked against the JSON Schema in its manifest.
    #[serde(default)]
    pub config: toml::Table,
    /// Secret name → `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Hosts granted to the plugin (default: the hosts its manifest names).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// Exact `host:port` pairs the plugin may reach on private or loopback addresses.
    #[serde(default)]
    pub allow_private_hosts: Vec<String>,
    /// `HOST[:PORT]=URL`: send requests for a granted host elsewhere (staging, proxy, fake).
    #[serde(default)]
    pub reroute: Vec<Reroute>,
    /// Requests per second to this destination (default: the plugin's own).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Batches in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Consent categories (Segment's `context.consent.categoryPreferences` names, any case) a
    /// profile must have granted, every one, before any of its data reaches this destination.
    #[serde(default, deserialize_with = "consent_categories")]
    pub consent: Vec<String>,
}

/// `consent = [...]`, normalised (see [`crate::consent::category`]); a blank name is an error.
fn consent_categories<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        let c = crate::consent::category(&n);
        if c.is_empty() {
            return Err(serde::de::Error::custom(
                "consent: a category name is blank; list names like \"marketing\"",
            ));
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

fn default_concurrency() -> usize {
    4
}

/// `[[syncs]]`: a model delivered to a destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub name: String,
    pub from: SyncFrom,
    /// A `[destinations.NAME]`.
    pub to: String,
    pub mode: SyncMode,
    /// Destination field → profile path (`traits.NAME`, `identifiers.KIND`, `id`,
    /// `event.name`, `event.properties.NAME`, ...) or `{ value = LITERAL }`.
    #[serde(default)]
    pub mapping: BTreeMap<String, MappingValue>,
    /// `"every 15m"`, a cron expression (`"0 */6 * * *"`), `"continuous"`, or absent (manual).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Stop a run that would remove more than this: a count (`500`) or a share of the
    /// destination's records (`"10%"`).
    #[serde(default)]
    pub max_removals: Option<MaxRemovals>,
    /// Attempts per record before it goes to the dead-letter store.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Records per plugin call (default and ceiling: the plugin's maximum).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

fn default_attempts() -> u32 {
    5
}

/// What a sync reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SyncFrom {
    /// `from = "all"`: every profile.
    All(AllProfiles),
    /// `from = { audience = "vip" }`
    Audience { audience: String },
    /// `from = { events = "Order Completed", filter = "event.properties.total > 100" }`
    Events {
        events: String,
        #[serde(default)]
        filter: Option<String>,
    },
}

/// The literal `"all"`.
#[derive(Debug, Clone, PartialEq)]
pub struct AllProfiles;

impl<'de> Deserialize<'de> for AllProfiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "all" {
            Ok(AllProfiles)
        } else {
            Err(serde::de::Error::custom(format!(
                "from = \"{s}\" is not a model: use \"all\", {{ audience = \"NAME\" }} or {{ events = \"EVENT NAME\" }}"
            )))
        }
    }
}

/// How a sync treats the destination.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Adds and changes.
    Upsert,
    /// Adds, changes and removals.
    Mirror,
    /// Each matching event, once.
    Events,
}

pub use crate::mapping::MappingValue;
pub use crate::runtime::net::Reroute;

/// A removal guardrail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxRemovals {
    Count(u64),
    Percent(f64),
}

impl<'de> Deserialize<'de> for MaxRemovals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= 0 => Ok(MaxRemovals::Count(n as u64)),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "max_removals = {n}: must be 0 or more"
            ))),
            Raw::S(s) => s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .map(MaxRemovals::Percent)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "max_removals = \"{s}\": use a count like 500 or a share like \"10%\""
                    ))
                }),
        }
    }
}

impl MaxRemovals {
    /// The most removals allowed when the destination holds `existing` records.
    pub fn limit(&self, existing: u64) -> u64 {
        match *self {
            MaxRemovals::Count(n) => n,
            MaxRemovals::Percent(p) => ((existing as f64) * p / 100.0).floor() as u64,
        }
    }
}

/// `[hub]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `sqlite://PATH` (the default, one file) or `postgres://...` (several hubs share it).
    #[serde(default = "default_database")]
    pub database: String,
    /// Where installed plugins live.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// Bearer token for the admin and Profiles APIs: `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// `[hub.tokens.NAME]`: named tokens for the admin API and the console, each with a role
    /// (`viewer`, `operator`, `admin`); `admin_token` is an admin named `admin` beside them.
    #[serde(default)]
    pub tokens: BTreeMap<String, access::TokenConfig>,
    /// Messages waiting for the writer before the tracking API answers 429.
    #[serde(default = "default_queue")]
    pub ingest_queue: usize,
    /// SQLite only: how much of the database file is read through a memory map, in MiB. Pages
    /// past it are read with a system call each. Raising it to the file's size makes profile
    /// lookups faster on a large store; the mapped pages count in the process's resident memory.
    #[serde(default = "default_sqlite_mmap_mib")]
    pub sqlite_mmap_mib: u64,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` names the client, for
    /// `context.ip` (a load balancer or reverse proxy in front of the hub).
    #[serde(default)]
    pub trusted_proxies: web::TrustedProxies,
    /// `[hub.plugin_limits]`: what one plugin call may use.
    #[serde(default)]
    pub plugin_limits: PluginLimitsConfig,
    /// What a profile that never sent a consent object means for a destination that requires
    /// consent: `"deny"` (the default; opt-in, as the GDPR asks) or `"allow"` (Segment's rule).
    #[serde(default)]
    pub consent_default: crate::consent::ConsentDefault,
    /// Events older than this (by their own timestamp) are purged in the background, e.g.
    /// `"400d"`; absent: kept for ever.
    #[serde(default, deserialize_with = "retention")]
    pub event_retention: Option<std::time::Duration>,
}

/// `event_retention = "400d"`: a positive duration.
fn retention<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    match humantime::parse_duration(&text) {
        Ok(t) if !t.is_zero() => Ok(Some(t)),
        Ok(_) => Err(serde::de::Error::custom(
            "event_retention must be more than 0 (leave it out to keep events for ever)",
        )),
        Err(e) => Err(serde::de::Error::custom(format!(
            "event_retention = \"{text}\" is not a duration like \"400d\": {e}"
        ))),
    }
}

/// `[hub.plugin_limits]`: the ceilings every plugin call runs under; unset ones keep the host's
/// defaults (see `runtime::Limits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitsConfig {
    /// Linear memory of one instance, in MiB (default 64).
    pub memory_mib: Option<usize>,
    /// Time a call may spend running, not counting waiting on I/O, e.g. `"5s"` (default).
    pub cpu_time: Option<String>,
    /// Time a call may take in all, waiting included, e.g. `"60s"` (default).
    pub wall_time: Option<String>,
    /// Lines a call may log (default 1,000), then one "log budget exhausted" line.
    pub log_lines: Option<u32>,
    /// Bytes a call may log (default 262,144).
    pub log_bytes: Option<usize>,
    /// Outgoing connections a call may have open at once (default 32).
    pub connections_per_call: Option<usize>,
    /// Outgoing requests a call may make (default 2,000).
    pub requests_per_call: Option<u32>,
    /// Response bytes a call may receive (default 268,435,456).
    pub received_bytes_per_call: Option<u64>,
    /// Outgoing connections all plugin calls together may have open (default: half the
    /// process's file descriptor limit, at most 4,096; the rest is the hub's reserve).
    pub hub_connections: Option<usize>,
}

impl PluginLimitsConfig {
    /// The runtime limits: the host's defaults with what is set here.
    pub fn limits(&self) -> anyhow::Result<crate::runtime::Limits> {
        let mut l = crate::runtime::Limits::default();
        let duration =
            |key: &str, v: &Option<String>| -> anyhow::Result<Option<std::time::Duration>> {
                v.as_deref()
                    .map(|t| match humantime::parse_duration(t) {
                        Ok(d) if !d.is_zero() => Ok(d),
                        Ok(_) => anyhow::bail!("[hub.plugin_limits] {key} must be more than 0"),
                        Err(e) => anyhow::bail!(
                        "[hub.plugin_limits] {key} = \"{t}\" is not a duration like \"5s\": {e}"
                    ),
                    })
                    .transpose()
            };
        if let Some(d) = duration("cpu_time", &self.cpu_time)? {
            l.cpu_deadline = d;
        }
        if let Some(d) = duration("wall_time", &self.wall_time)? {
            l.wall_timeout = d;
        }
        if let Some(m) = self.memory_mib {
            l.memory_bytes = m.max(1) << 20;
        }
        if let Some(n) = self.log_lines {
            l.log_lines = n;
        }
        if let Some(n) = self.log_bytes {
            l.log_bytes = n;
        }
        if let Some(n) = self.connections_per_call {
            l.connections_per_call = n;
        }
        if let Some(n) = self.requests_per_call {
            l.requests_per_call = n;
        }
        if let Some(n) = self.received_bytes_per_call {
            l.received_bytes_per_call = n;
        }
        if self.hub_connections.is_some() {
            l.hub_connections = self.hub_connections;
        }
        Ok(l)
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: default_listen(),
            database: default_database(),
            plugins_dir: default_plugins_dir(),
            admin_token: None,
            tokens: BTreeMap::new(),
            ingest_queue: default_queue(),
            sqlite_mmap_mib: default_sqlite_mmap_mib(),
            trusted_proxies: web::TrustedProxies::default(),
            plugin_limits: PluginLimitsConfig::default(),
            consent_default: crate::consent::ConsentDefault::default(),
            event_retention: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8088".into()
}
fn default_database() -> String {
    "sqlite://.switchyard/switchyard.db".into()
}
fn default_plugins_dir() -> PathBuf {
    ".switchyard/plugins".into()
}
fn default_queue() -> usize {
    50_000
}
fn default_sqlite_mmap_mib() -> u64 {
    crate::store::DEFAULT_SQLITE_MMAP_MIB
}

impl HubConfig {
    /// Opens the hub's database with the hub's store settings.
    pub async fn open_store(&self) -> anyhow::Result<crate::store::Store> {
        crate::store::Store::open_with(&self.database, self.sqlite_mmap_mib).await
    }
}

/// `[identity]`: which identifiers join messages into one profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Per kind: how many values one profile may hold, and its priority (1 is highest).
    #[serde(default = "default_kinds")]
    pub kinds: BTreeMap<String, KindRule>,
    /// Traits that are identifiers too, trait name → kind (e.g. `customer_no = "customer_no"`).
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            kinds: default_kinds(),
            traits: BTreeMap::new(),
        }
    }
}

/// The rule of one identifier kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KindRule {
    pub limit: u32,
    pub priority: u32,
}

fn default_kinds() -> BTreeMap<String, KindRule> {
    BTreeMap::from([
        (
            "user_id".to_string(),
            KindRule {
                limit: 1,
                priority: 1,
            },
        ),
        (
            "email".to_string(),
            KindRule {
                limit: 5,
                priority: 2,
            },
        ),
        (
            "phone".to_string(),
            KindRule {
                limit: 5,
                priority: 3,
            },
        ),
        (
            "anonymous_id".to_string(),
            KindRule {
                limit: 1000,
                priority: 4,
            },
        ),
    ])
}

/// `[sources.NAME]`: a source of tracking-API messages (write keys), of records read by a source
/// plugin (`plugin` and its settings), or both.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Write keys of this source for the tracking API: `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub write_keys: Vec<String>,
    /// `[transforms.NAME]`s this source's messages pass through, in order, before any stream
    /// sees them (e.g. `["scrub"]` to remove PII once for every destination).
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Browser origins whose pages may send this source's events (`["https://shop.example"]`
    /// or `"*"`); none by default. Server SDKs send no `Origin` and are not affected.
    #[serde(default)]
    pub allowed_origins: web::AllowedOrigins,
    /// Installed source plugin that reads (and receives webhooks for) this source.
    #[serde(default)]
    pub plugin: Option<String>,
    /// Version requirement, e.g. `"^1.2"`; the newest installed version by default.
    #[serde(default)]
    pub version: Option<String>,
    /// The plugin's settings, checked against the JSON Schema in its manifest.
    #[serde(default)]
    pub config: toml::Table,
    /// Secret name → `${ENV_VAR}`, `file:PATH` or literal.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Hosts granted to the plugin (default: the hosts its manifest names).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// Exact `host:port` pairs the plugin may reach on private or loopback addresses.
    #[serde(default)]
    pub allow_private_hosts: Vec<String>,
    /// `HOST[:PORT]=URL`: send requests for a granted host elsewhere (staging, proxy, fake).
    #[serde(default)]
    pub reroute: Vec<Reroute>,
    /// When `switchyard serve` reads the source: `"every 15m"`, a cron expression, or absent
    /// (manual `switchyard source run` only).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Most pages one run reads, all streams together (default 10,000). A run that reaches it
    /// stops with status `capped`, keeping every page it committed, and the next run resumes
    /// from the stored cursor: a source that never says it is done cannot run forever.
    #[serde(default)]
    pub max_pages_per_run: Option<u64>,
    /// Longest one run reads, e.g. `"30m"` (default `"1h"`); as for `max_pages_per_run`.
    #[serde(default)]
    pub max_run_time: Option<String>,
    /// Per stream: which record fields are identifiers and which are traits. Streams not listed
    /// here are not read by a run (webhook records of them are ignored).
    #[serde(default)]
    pub streams: BTreeMap<String, SourceStreamConfig>,
}

/// What a `[destinations.NAME]` or `[sources.NAME]` block says about running its plugin, so that
/// validating the block and building its plugin instance treat both kinds alike.
#[derive(Debug, Clone, Copy)]
pub struct PluginBlock<'a> {
    /// `destinations`, `sources` or `transforms`.
    pub table: &'static str,
    pub name: &'a str,
    /// The plugin kind the block needs: `destination`, `source` or `transform`.
    pub kind: &'static str,
    pub plugin: &'a str,
    pub version: Option<&'a str>,
    pub config: &'a toml::Table,
    pub secrets: &'a BTreeMap<String, String>,
    pub allow_hosts: Option<&'a [String]>,
    pub allow_private_hosts: &'a [String],
    pub reroute: &'a [Reroute],
}

impl PluginBlock<'_> {
    /// The block as messages name it, e.g. `[destinations.crm]`.
    pub fn at(&self) -> String {
        format!("[{}.{}]", self.table, self.name)
    }

    /// Where a secret is set, e.g. `destinations.crm.secrets.token`.
    pub fn secret_path(&self, key: &str) -> String {
        format!("{}.{}.secrets.{key}", self.table, self.name)
    }
}

impl DestinationConfig {
    pub fn block<'a>(&'a self, name: &'a str) -> PluginBlock<'a> {
        PluginBlock {
            table: "destinations",
            name,
            kind: "destination",
            plugin: &self.plugin,
            version: self.version.as_deref(),
            config: &self.config,
            secrets: &self.secrets,
            allow_hosts: self.allow_hosts.as_deref(),
            allow_private_hosts: &self.allow_private_hosts,
            reroute: &self.reroute,
        }
    }
}

/// The caps of one source run: `max_pages_per_run` and `max_run_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCaps {
    pub pages: u64,
    pub time: std::time::Duration,
}

impl Default for RunCaps {
    fn default() -> Self {
        RunCaps {
            pages: 10_000,
            time: std::time::Duration::from_secs(3600),
        }
    }
}

impl SourceConfig {
    /// The caps of a run of this source, defaults for what is not set (a `max_run_time` that
    /// does not parse is reported by validation, before any run).
    pub fn run_caps(&self) -> RunCaps {
        let default = RunCaps::default();
        RunCaps {
            pages: self.max_pages_per_run.unwrap_or(default.pages),
            time: self
                .max_run_time
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(default.time),
        }
    }

    /// The source's plugin block; None for a source of tracking-API messages only.
    pub fn block<'a>(&'a self, name: &'a str) -> Option<PluginBlock<'a>> {
        Some(PluginBlock {
            table: "sources",
            name,
            kind: "source",
            plugin: self.plugin.as_deref()?,
            version: self.version.as_deref(),
            config: &self.config,
            secrets: &self.secrets,
            allow_hosts: self.allow_hosts.as_deref(),
            allow_private_hosts: &self.allow_private_hosts,
            reroute: &self.reroute,
        })
    }
}

/// `[sources.NAME.streams.STREAM]`: how a stream's records map onto profiles.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceStreamConfig {
    /// Identifier kind → dotted path in the record's data, e.g. `email = "email"`,
    /// `user_id = "customer_id"`. Kinds must exist in `[identity.kinds]`.
    #[serde(default)]
    pub identifiers: BTreeMap<String, String>,
    /// Trait name → dotted path in the record's data, e.g. `first_name = "first_name"`.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
}

impl Config {
    /// Reads and parses a project file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses project text; errors carry line:column.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config = Config::parse_unchecked(text)?;
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
        Ok(config)
    }

    /// Parses TOML only: what `switchyard validate` checks further before reporting.
    pub fn parse_unchecked(text: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    format!("{line}:{column}: ")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{location}{}", e.message())
        })
    }

    /// Every problem this file has on its own (without plugins or secrets), one line each:
    /// the errors of [`Config::compile`].
    pub fn problems(&self) -> Vec<String> {
        self.compile_parts().1
    }

    /// Compiles what compiles and lists every problem; the values are whole only when there
    /// are none.
    fn compile_parts(&self) -> (compile::Compiled, Vec<String>) {
        use compile::{keep, schedule, CompiledAudience, CompiledSource, CompiledSync};
        let mut out = compile::Compiled::default();
        let mut problems = Vec::new();
        if let Err(e) = self.hub.plugin_limits.limits() {
            problems.push(e.to_string());
        }
        for (kind, rule) in &self.identity.kinds {
            if rule.limit == 0 {
                problems.push(format!("[identity.kinds.{kind}] limit must be at least 1"));
            }
        }
        for (name, kind) in &self.identity.traits {
            if !self.identity.kinds.contains_key(kind) {
                problems.push(format!("[identity.traits] {name} maps to kind `{kind}`, which [identity.kinds] does not define"));
            }
        }
        for (name, audience) in &self.audiences {
            let filter = keep(
                &mut problems,
                crate::filter::Filter::compile(&audience.filter)
                    .map_err(|e| format!("[audiences.{name}] filter: {e}")),
            );
            let full_refresh = keep(
                &mut problems,
                schedule(audience.full_refresh.as_deref())
                    .map_err(|e| format!("[audiences.{name}] full_refresh: {e}")),
            );
            if let (Some(filter), Some(full_refresh)) = (filter, full_refresh) {
                out.audiences.insert(
                    name.clone(),
                    Arc::new(CompiledAudience {
                        filter,
                        full_refresh,
                    }),
                );
            }
        }
        for (name, dest) in &self.destinations {
            if dest.concurrency == 0 {
                problems.push(format!(
                    "[destinations.{name}] concurrency must be at least 1"
                ));
            }
            if let Some(r) = dest.rate_per_second {
                if r.is_nan() || r <= 0.0 {
                    problems.push(format!(
                        "[destinations.{name}] rate_per_second must be more than 0"
                    ));
                }
            }
            if let Some(v) = &dest.version {
                if semver::VersionReq::parse(v).is_err() {
                    problems.push(format!("[destinations.{name}] version = \"{v}\" is not a version requirement like \"^1.2\""));
                }
            }
        }
        for (name, source) in &self.sources {
            problems.extend(source_problems(name, source, &self.identity));
            let schedule = keep(
                &mut problems,
                schedule(source.schedule.as_deref())
                    .map_err(|e| format!("[sources.{name}] schedule: {e}")),
            );
            if let Some(schedule) = schedule {
                let caps = source.run_caps();
                out.sources
                    .insert(name.clone(), CompiledSource { schedule, caps });
            }
            problems.extend(
                self.chain_problems(&format!("[sources.{name}] transforms"), &source.transforms),
            );
        }
        for (name, transform) in &self.transforms {
            problems.extend(transform_problems(name, transform));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, sync) in self.syncs.iter().enumerate() {
            let at = format!("[[syncs]] #{} \"{}\"", i + 1, sync.name);
            if sync.name.is_empty()
                || !sync
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "{at}: name must be letters, digits, '-' or '_' (it appears in URLs and metrics)"
                ));
            }
            if !seen.insert(sync.name.clone()) {
                problems.push(format!("{at}: another sync already has this name"));
            }
            if !self.destinations.contains_key(&sync.to) {
                problems.push(format!(
                    "{at}: to = \"{}\" names no [destinations.{}] (defined: {})",
                    sync.to,
                    sync.to,
                    names(self.destinations.keys())
                ));
            }
            match &sync.from {
                SyncFrom::Audience { audience } if !self.audiences.contains_key(audience) => {
                    problems.push(format!(
                        "{at}: from.audience = \"{audience}\" names no [audiences.{audience}] (defined: {})",
                        names(self.audiences.keys())
                    ));
                }
                _ => {}
            }
            let event_filter = match &sync.from {
                SyncFrom::Events {
                    filter: Some(f), ..
                } => keep(
                    &mut problems,
                    crate::filter::Filter::compile(f)
                        .map(Some)
                        .map_err(|e| format!("{at}: from.filter: {e}")),
                ),
                _ => Some(None),
            };
            let events = matches!(sync.from, SyncFrom::Events { .. });
            match (sync.mode, events) {
                (SyncMode::Events, false) => problems.push(format!(
                    "{at}: mode = \"events\" needs from = {{ events = \"EVENT NAME\" }}"
                )),
                (SyncMode::Upsert | SyncMode::Mirror, true) => problems.push(format!(
                    "{at}: from = {{ events = ... }} needs mode = \"events\""
                )),
                _ => {}
            }
            if sync.mapping.is_empty() {
                problems.push(format!(
                    "{at}: [syncs.mapping] is empty: map at least one destination field"
                ));
            }
            let mapping = match crate::mapping::Mapping::compile_each(&sync.mapping, events) {
                Ok(m) => Some(m),
                Err(errors) => {
                    problems.extend(errors.into_iter().map(|e| format!("{at}: mapping.{e}")));
                    None
                }
            };
            let schedule = keep(
                &mut problems,
                schedule(sync.schedule.as_deref()).map_err(|e| format!("{at}: schedule: {e}")),
            );
            if let (Some(event_filter), Some(mapping), Some(schedule)) =
                (event_filter, mapping, schedule)
            {
                out.syncs.insert(
                    sync.name.clone(),
                    Arc::new(CompiledSync {
                        schedule,
                        mapping,
                        event_filter,
                    }),
                );
            }
            if sync.max_attempts == 0 {
                problems.push(format!("{at}: max_attempts must be at least 1"));
            }
            if sync.batch_size == Some(0) {
                problems.push(format!("{at}: batch_size must be at least 1"));
            }
        }
        self.compile_streams(&mut out, &mut problems);
        (out, problems)
    }

    /// The problems of `[[streams]]` entries, and their compiled values.
    fn compile_streams(&self, out: &mut compile::Compiled, problems: &mut Vec<String>) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = format!("[[streams]] #{} \"{}\"", i + 1, stream.name);
            if stream.name.is_empty()
                || !stream
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "{at}: name must be letters, digits, '-' or '_' (it appears in URLs and metrics)"
                ));
            }
            if !seen.insert(stream.name.clone()) {
                problems.push(format!("{at}: another stream already has this name"));
            }
            if !self.destinations.contains_key(&stream.to) {
                problems.push(format!(
                    "{at}: to = \"{}\" names no [destinations.{}] (defined: {})",
                    stream.to,
                    stream.to,
                    names(self.destinations.keys())
                ));
            }
            for source in &stream.from {
                if !self.sources.contains_key(source) {
                    problems.push(format!(
                        "{at}: from names \"{source}\", which is no [sources.{source}] (defined: {})",
                        names(self.sources.keys())
                    ));
                }
            }
            match compile::CompiledStream::compile(stream) {
                Ok(rule) => {
                    out.streams.insert(stream.name.clone(), Arc::new(rule));
                }
                Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{at}: {e}"))),
            }
            problems.extend(self.chain_problems(&format!("{at}: transforms"), &stream.transforms));
            if stream.max_attempts == 0 {
                problems.push(format!("{at}: max_attempts must be at least 1"));
            }
            if stream.batch_size == Some(0) {
                problems.push(format!("{at}: batch_size must be at least 1"));
            }
        }
    }

    /// The problems of a `transforms = [...]` chain (`at` names where it is written): every
    /// name must be a `[transforms.NAME]`. Streams check theirs with this too.
    pub fn chain_problems(&self, at: &str, chain: &[String]) -> Vec<String> {
        chain
            .iter()
            .filter(|n| !self.transforms.contains_key(*n))
            .map(|n| {
                format!(
                    "{at}: \"{n}\" names no [transforms.{n}] (defined: {})",
                    names(self.transforms.keys())
                )
            })
            .collect()
    }

    /// The sync called `name`.
    pub fn sync(&self, name: &str) -> anyhow::Result<&SyncConfig> {
        self.syncs.iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "no sync named `{name}` (defined: {})",
                names(self.syncs.iter().map(|s| &s.name))
            )
        })
    }

    /// The `[[streams]]` entry named `name`, or an error listing the streams there are.
    pub fn stream_named(&self, name: &str) -> anyhow::Result<&StreamConfig> {
        self.streams.iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "no stream named `{name}` in the configuration (defined: {})",
                names(self.streams.iter().map(|s| &s.name))
            )
        })
    }

    /// Every write key with its source, secrets resolved.
    pub fn write_keys(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = Vec::new();
        for (source, cfg) in &self.sources {
            for spec in &cfg.write_keys {
                let key = secrets::resolve_secret(&format!("sources.{source}.write_keys"), spec)?;
                keys.push((key, source.clone()));
            }
        }
        Ok(keys)
    }

    /// The admin token, resolved.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        self.hub
            .admin_token
            .as_deref()
            .map(|spec| secrets::resolve_secret("hub.admin_token", spec))
            .transpose()
    }

    /// Every admin API and console token (`admin_token` and `[hub.tokens.*]`), resolved.
    pub fn access_tokens(&self) -> anyhow::Result<Vec<access::AccessToken>> {
        access::resolve(self.hub.admin_token.as_deref(), &self.hub.tokens)
    }
}

/// The problems of one `[transforms.NAME]` on its own (its config is checked against the
/// plugin's schema by `validate`).
fn transform_problems(name: &str, transform: &TransformConfig) -> Vec<String> {
    let at = format!("[transforms.{name}]");
    let mut problems = Vec::new();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push(format!(
            "{at}: the name must be letters, digits, '-' or '_' (it appears in drop counts and metrics)"
        ));
    }
    if let Some(v) = &transform.version {
        if semver::VersionReq::parse(v).is_err() {
            problems.push(format!(
                "{at} version = \"{v}\" is not a version requirement like \"^1.2\""
            ));
        }
    }
    if transform.batch_size == Some(0) {
        problems.push(format!("{at} batch_size must be at least 1"));
    }
    problems
}

/// The problems of one `[sources.NAME]` on its own (plugin settings are checked by `validate`).
fn source_problems(name: &str, source: &SourceConfig, identity: &IdentityConfig) -> Vec<String> {
    let at = format!("[sources.{name}]");
    let mut problems = Vec::new();
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push(format!(
            "{at}: the name must be letters, digits, '-' or '_' (it appears in webhook URLs and metrics)"
        ));
    }
    let Some(_) = &source.plugin else {
        let plugin_keys = [
            ("version", source.version.is_some()),
            ("config", !source.config.is_empty()),
            ("secrets", !source.secrets.is_empty()),
            ("allow_hosts", source.allow_hosts.is_some()),
            (
                "allow_private_hosts",
                !source.allow_private_hosts.is_empty(),
            ),
            ("reroute", !source.reroute.is_empty()),
            ("schedule", source.schedule.is_some()),
            ("max_pages_per_run", source.max_pages_per_run.is_some()),
            ("max_run_time", source.max_run_time.is_some()),
            ("streams", !source.streams.is_empty()),
        ];
        for (key, set) in plugin_keys {
            if set {
                problems.push(format!(
                    "{at} {key} needs plugin = \"NAME\" (a source plugin to read with)"
                ));
            }
        }
        return problems;
    };
    if let Some(v) = &source.version {
        if semver::VersionReq::parse(v).is_err() {
            problems.push(format!(
                "{at} version = \"{v}\" is not a version requirement like \"^1.2\""
            ));
        }
    }
    if source.max_pages_per_run == Some(0) {
        problems.push(format!("{at} max_pages_per_run must be at least 1"));
    }
    if let Some(t) = &source.max_run_time {
        match humantime::parse_duration(t) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => {}
            Ok(_) => problems.push(format!("{at} max_run_time = \"{t}\" must be at least 1s")),
            Err(e) => problems.push(format!(
                "{at} max_run_time = \"{t}\" is not a duration like \"30m\" or \"2h\": {e}"
            )),
        }
    }
    if source.streams.is_empty() {
        problems.push(format!(
            "{at} has a plugin but no [sources.{name}.streams.STREAM]: name the streams to read and map their identifiers"
        ));
    }
    for (stream, mapping) in &source.streams {
        let at = format!("[sources.{name}.streams.{stream}]");
        if mapping.identifiers.is_empty() {
            problems.push(format!(
                "{at} identifiers is empty: map at least one identifier kind to a record field (e.g. email = \"email\"), or records cannot join a profile"
            ));
        }
        for (kind, path) in &mapping.identifiers {
            if !identity.kinds.contains_key(kind) {
                problems.push(format!(
                    "{at} identifiers.{kind}: kind `{kind}` is not in [identity.kinds] (defined: {})",
                    names(identity.kinds.keys())
                ));
            }
            if path.trim().is_empty() {
                problems.push(format!(
                    "{at} identifiers.{kind}: the record field path is empty"
                ));
            }
        }
        for (name, path) in &mapping.traits {
            if path.trim().is_empty() {
                problems.push(format!(
                    "{at} traits.{name}: the record field path is empty"
                ));
            }
        }
    }
    problems
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::parse("[hub]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(c.hub.listen, "127.0.0.1:9000");
        assert_eq!(
            c.identity.kinds["user_id"],
            KindRule {
                limit: 1,
                priority: 1
            }
        );
        let err = Config::parse("[hub]\nlisten = \"x\"\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("3:1: unknown field `lisen`"), "{err}");
    }

    #[test]
    fn source_plugin_settings_are_checked() {
        let err = Config::parse(
            "[sources.shop]\nplugin = \"shopify\"\nschedule = \"every fortnight\"\n\
             [sources.shop.streams.customers]\nidentifiers = { email = \"email\", customer = \"id\" }\n\
             [sources.keys]\nwrite_keys = [\"k\"]\nstreams = { a = {} }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[sources.shop] schedule: `every fortnight`"),
            "{err}"
        );
        assert!(err.contains("[sources.shop.streams.customers] identifiers.customer: kind `customer` is not in [identity.kinds]"), "{err}");
        assert!(err.contains("[sources.keys] streams needs plugin"), "{err}");
        assert_eq!(err.lines().count(), 3, "{err}");
        // A reroute is parsed as the file is read: its error has the line and column.
        let err = Config::parse("[sources.shop]\nplugin = \"shopify\"\nreroute = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("3:11: reroute `nope` must be HOST[:PORT]=http(s)://HOST:PORT"),
            "{err}"
        );
        let err = Config::parse(
            "[sources.shop]\nplugin = \"shopify\"\nmax_pages_per_run = 0\nmax_run_time = \"soon\"\n\
             [sources.shop.streams.customers]\nidentifiers = { email = \"email\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[sources.shop] max_pages_per_run must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("[sources.shop] max_run_time = \"soon\" is not a duration"),
            "{err}"
        );
        let ok = Config::parse(
            "[sources.shop]\nplugin = \"shopify\"\nconfig = { shop = \"s\" }\nschedule = \"every 15m\"\n\
             [sources.shop.streams.customers]\nidentifiers = { email = \"email\" }\ntraits = { first_name = \"first_name\" }\n",
        )
        .unwrap();
        assert_eq!(
            ok.sources["shop"].streams["customers"].traits["first_name"],
            "first_name"
        );
        assert_eq!(ok.sources["shop"].run_caps(), RunCaps::default());
        let capped = Config::parse(
            "[sources.shop]\nplugin = \"shopify\"\nmax_pages_per_run = 5\nmax_run_time = \"90s\"\n\
             [sources.shop.streams.customers]\nidentifiers = { email = \"email\" }\n",
        )
        .unwrap();
        assert_eq!(
            capped.sources["shop"].run_caps(),
            RunCaps {
                pages: 5,
                time: std::time::Duration::from_secs(90)
            }
        );
    }

    #[test]
    fn trait_kinds_must_exist() {
        let err = Config::parse("[identity.traits]\ncustomer_no = \"customer\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind `customer`"), "{err}");
    }

    #[test]
    fn transforms_are_typed_and_chains_must_name_them() {
        let c = Config::parse(
            r#"
[transforms.scrub]
plugin = "pii-scrub"
config = { hash = ["traits.email"] }
batch_size = 500

[sources.web]
write_keys = ["wk"]
transforms = ["scrub"]
"#,
        )
        .unwrap();
        let t = &c.transforms["scrub"];
        assert_eq!(t.plugin, "pii-scrub");
        assert_eq!(t.batch_size, Some(500));
        assert_eq!(t.block("scrub").kind, "transform");
        assert_eq!(t.block("scrub").at(), "[transforms.scrub]");
        assert_eq!(c.sources["web"].transforms, vec!["scrub"]);

        let err = Config::parse(
            r#"
[transforms.scrub]
plugin = "pii-scrub"
batch_size = 0
version = "one"

[transforms."bad name"]
plugin = "x"

[sources.web]
transforms = ["scrub", "rename"]
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[sources.web] transforms: \"rename\" names no [transforms.rename] (defined: bad name, scrub)"), "{err}");
        assert!(
            err.contains("[transforms.scrub] batch_size must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("[transforms.scrub] version = \"one\""),
            "{err}"
        );
        assert!(
            err.contains("[transforms.bad name]: the name must be"),
            "{err}"
        );
        assert!(Config::parse("[transforms.x]\nplugin = \"p\"\nconfg = {}\n").is_err());
    }

    #[test]
    fn stream_transforms_must_name_transforms() {
        let base = "[transforms.scrub]\nplugin = \"pii-scrub\"\n\n\
                    [destinations.d]\nplugin = \"p\"\n\n\
                    [[streams]]\nname = \"s\"\nto = \"d\"\n";
        let c = Config::parse(&format!("{base}transforms = [\"scrub\"]\n")).unwrap();
        assert_eq!(c.streams[0].transforms, vec!["scrub"]);
        assert!(Config::parse(base).unwrap().streams[0]
            .transforms
            .is_empty());
        let err = Config::parse(&format!("{base}transforms = [\"scrub\", \"plan\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "[[streams]] #1 \"s\": transforms: \"plan\" names no [transforms.plan] (defined: scrub)"
            ),
            "{err}"
        );
    }
}
