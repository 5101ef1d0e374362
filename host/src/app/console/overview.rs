//! The overview: ingestion over the last hour (accepted and refused per second, by reason),
//! the writer's queue and commit latency, the profile count, and every sync and source with its
//! last run and next one, red where something failed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};

use super::{ui, ConsoleState, Session};
use crate::config::{SyncFrom, SyncMode};
use crate::metrics::Recent;
use crate::schedule::Schedule;

pub async fn page(session: Session, State(s): State<ConsoleState>) -> Response {
    let now = crate::store::now_millis();
    let hour = s.metrics.recent.last_hour(now);
    let this_minute = now.div_euclid(60_000);
    // Per minute of the hour, oldest first, zeros where nothing happened.
    let mut accepted = Vec::with_capacity(Recent::MINUTES as usize);
    let mut refused = Vec::with_capacity(Recent::MINUTES as usize);
    for m in (this_minute - Recent::MINUTES + 1)..=this_minute {
        let minute = hour.iter().find(|x| x.minute == m);
        let label = ui::time(m * 60_000);
        let a = minute.map_or(0, |x| x.accepted) as f64 / 60.0;
        let r = minute.map_or(0, |x| x.rejected.values().sum::<u64>()) as f64 / 60.0;
        accepted.push((format!("{label}: {a:.2} accepted/s"), a));
        refused.push((format!("{label}: {r:.2} refused/s"), r));
    }
    let total_accepted: u64 = hour.iter().map(|m| m.accepted).sum();
    let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
    for m in &hour {
        for (k, v) in &m.rejected {
            *reasons.entry(k.as_str()).or_default() += v;
        }
    }
    let total_refused: u64 = reasons.values().sum();
    let commits: u64 = hour.iter().map(|m| m.commits).sum();
    let commit_avg = if commits > 0 {
        hour.iter().map(|m| m.commit_seconds).sum::<f64>() / commits as f64 * 1000.0
    } else {
        0.0
    };
    let commit_max = hour
        .iter()
        .map(|m| m.commit_max_seconds)
        .fold(0.0, f64::max)
        * 1000.0;
    // The last five minutes, for "now".
    let recent_rate = hour
        .iter()
        .filter(|m| m.minute > this_minute - 5)
        .map(|m| m.accepted)
        .sum::<u64>() as f64
        / 300.0;
    let profiles = match s.profile_count().await {
        Ok(n) => n,
        Err(e) => return ui::failure("the profile count", e),
    };
    let syncs = match sync_rows(&s).await {
        Ok(m) => m,
        Err(e) => return ui::failure("the syncs' runs", e),
    };
    let sources = match source_rows(&s).await {
        Ok(m) => m,
        Err(e) => return ui::failure("the sources' runs", e),
    };
    let queue = s.metrics.queue_depth.get();
    let body = html! {
        header.page {
            h1 { "Overview" }
            p.sub { "The last hour of this hub, as of " (ui::time(now)) "." }
        }
        section.cards aria-label="Figures" {
            div.card { h2 { "Events accepted" } p.big { (format!("{recent_rate:.1}")) small { " /s" } } p.hint { "last 5 minutes · " (ui::count(total_accepted as i64)) " in the hour" } }
            div class={"card" @if total_refused > 0 { " warn" }} { h2 { "Events refused" } p.big { (ui::count(total_refused as i64)) } p.hint { "in the hour" } }
            div.card { h2 { "Write queue" } p.big { (ui::count(queue)) } p.hint { "messages waiting for the writer" } }
            div.card { h2 { "Commit latency" } p.big { (format!("{commit_avg:.1}")) small { " ms" } } p.hint { "average; slowest " (format!("{commit_max:.1}")) " ms, " (ui::count(commits as i64)) " commits" } }
            div.card { h2 { "Profiles" } p.big { (ui::count(profiles)) } p.hint { a href="/console/profiles" { "Look one up" } } }
        }
        section.panel {
            h2 { "Accepted per second, last 60 minutes" }
            (ui::bars(&accepted, "Events accepted per second, one bar per minute"))
            h2 { "Refused per second, last 60 minutes" }
            (ui::bars(&refused, "Events refused per second, one bar per minute"))
            @if reasons.is_empty() {
                p.hint { "Nothing was refused in the last hour." }
            } @else {
                table {
                    caption { "Refused by reason" }
                    thead { tr { th scope="col" { "Reason" } th.num scope="col" { "Messages" } } }
                    tbody {
                        @for (reason, n) in &reasons {
                            tr { td { code { (reason) } } td.num { (ui::count(*n as i64)) } }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Syncs" }
            @if syncs.is_empty() {
                p.hint { "No syncs are configured: add a " code { "[[syncs]]" } " to the project file." }
            } @else { (syncs_table(&syncs)) }
        }
        section.panel {
            h2 { "Sources" }
            @if sources.is_empty() {
                p.hint { "No plugin sources are configured." }
            } @else { (sources_table(&sources)) }
        }
    };
    ui::layout("Overview", &session, "/console", body).into_response()
}

/// One sync as the overview and the syncs list show it.
pub struct SyncRow {
    pub name: String,
    pub model: String,
    pub to: String,
    pub mode: &'static str,
    pub schedule: Option<String>,
    pub last: Option<crate::sync::RunReport>,
    pub next: Option<String>,
}

pub fn model(from: &SyncFrom) -> String {
    match from {
        SyncFrom::All(_) => "all profiles".into(),
        SyncFrom::Audience { audience } => format!("audience {audience}"),
        SyncFrom::Events { events, .. } => format!("events “{events}”"),
    }
}

/// When a schedule is next due, given the last run's start (RFC 3339).
fn next_run(schedule: Option<&Schedule>, last_started: Option<&str>) -> Option<String> {
    let schedule = schedule?;
    let last = last_started
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let now = Utc::now();
    let next = schedule.next_after(last, now);
    Some(if next <= now {
        "due now".into()
    } else {
        ui::time(next.timestamp_millis())
    })
}

pub async fn sync_rows(s: &ConsoleState) -> anyhow::Result<Vec<SyncRow>> {
    let config = s.syncs.config();
    let mut out = Vec::new();
    for sync in &config.syncs {
        let last = s.syncs.runs(&sync.name, 1).await?.pop();
        out.push(SyncRow {
            name: sync.name.clone(),
            model: model(&sync.from),
            to: sync.to.clone(),
            mode: match sync.mode {
                SyncMode::Upsert => "upsert",
                SyncMode::Mirror => "mirror",
                SyncMode::Events => "events",
            },
            next: next_run(
                config
                    .compiled_sync(&sync.name)
                    .ok()
                    .and_then(|(_, c)| c.schedule.as_ref()),
                last.as_ref().map(|r| r.started_at.as_str()),
            ),
            schedule: sync.schedule.clone(),
            last,
        });
    }
    Ok(out)
}

pub fn syncs_table(rows: &[SyncRow]) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Sync" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Mode" }
                th scope="col" { "Last run" } th scope="col" { "Status" } th scope="col" { "Next run" }
            } }
            tbody {
                @for r in rows {
                    @let failed = r.last.as_ref().is_some_and(|l| matches!(l.status.as_str(), "failed" | "interrupted"));
                    tr class=[failed.then_some("failed")] {
                        td { a href={"/console/syncs/" (r.name)} { (r.name) } }
                        td { (r.model) }
                        td { (r.to) }
                        td { (r.mode) }
                        td.time { @match &r.last { Some(l) => (ui::rfc3339(&l.started_at)), None => span.hint { "never" } } }
                        td { @match &r.last { Some(l) => (ui::status(l.status.as_str())), None => (ui::status("idle")) } }
                        td { @match (&r.schedule, &r.next) {
                            (Some(sched), Some(next)) => { (next) br; span.hint { (sched) } }
                            _ => span.hint { "manual" }
                        } }
                    }
                }
            }
        }
    }
}

pub struct SourceRow {
    pub name: String,
    pub plugin: String,
    pub schedule: Option<String>,
    pub last: Option<crate::sources::RunReport>,
    pub next: Option<String>,
}

pub async fn source_rows(s: &ConsoleState) -> anyhow::Result<Vec<SourceRow>> {
    let config = s.sources.config();
    let mut out = Vec::new();
    for (name, source) in config.sources.iter() {
        let Some(plugin) = &source.plugin else {
            continue;
        };
        let last = s.sources.runs(name, 1).await?.pop();
        out.push(SourceRow {
            name: name.clone(),
            plugin: plugin.clone(),
            next: next_run(
                config.source(name).and_then(|c| c.schedule.as_ref()),
                last.as_ref().map(|r| r.started_at.as_str()),
            ),
            schedule: source.schedule.clone(),
            last,
        });
    }
    Ok(out)
}

pub fn sources_table(rows: &[SourceRow]) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Source" } th scope="col" { "Plugin" } th scope="col" { "Last run" }
                th scope="col" { "Status" } th.num scope="col" { "Records" } th scope="col" { "Next run" }
            } }
            tbody {
                @for r in rows {
                    @let failed = r.last.as_ref().is_some_and(|l| matches!(l.status.as_str(), "failed" | "interrupted"));
                    tr class=[failed.then_some("failed")] {
                        td { a href={"/console/sources/" (r.name)} { (r.name) } }
                        td { (r.plugin) }
                        td.time { @match &r.last { Some(l) => (ui::rfc3339(&l.started_at)), None => span.hint { "never" } } }
                        td { @match &r.last { Some(l) => (ui::status(l.status.as_str())), None => (ui::status("idle")) } }
                        td.num { @if let Some(l) = &r.last { (ui::count(l.records)) } }
                        td { @match (&r.schedule, &r.next) {
                            (Some(sched), Some(next)) => { (next) br; span.hint { (sched) } }
                            _ => span.hint { "manual" }
                        } }
                    }
                }
            }
        }
    }
}
