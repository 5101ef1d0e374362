//! Syncs: the list, and one sync's runs (live while one runs), dry-run plan with samples, "run
//! now", "approve removals" when the guardrail stopped the last run, and its dead letters with
//! "replay". Running, approving and replaying need the `operator` role.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};

use super::overview::{sync_rows, syncs_table};
use super::{ui, ConsoleState, Session};
use crate::app::http::Operator;
use crate::app::mask::mask_json;
use crate::config::access::Role;
use crate::sync::{RunOptions, RunReport};

/// Dead letters a sync's page lists (the oldest; the rest are counted).
const LETTERS: i64 = 200;

pub async fn list(session: Session, State(s): State<ConsoleState>) -> Response {
    let rows = match sync_rows(&s).await {
        Ok(r) => r,
        Err(e) => return ui::failure("the syncs", e),
    };
    let body = html! {
        header.page { h1 { "Syncs" } p.sub { "Each sync sends a model to a destination; runs send only what changed." } }
        section.panel {
            @if rows.is_empty() {
                p.hint { "No syncs are configured: add a " code { "[[syncs]]" } " to the project file and reload the hub (SIGHUP)." }
            } @else { (syncs_table(&rows)) }
        }
    };
    ui::layout("Syncs", &session, "/console/syncs", body).into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct PageQuery {
    /// `runs`: only the runs section (what the page's script polls while a run goes on).
    fragment: Option<String>,
    /// Set after "run now": the page polls until the new run shows up and finishes.
    started: Option<String>,
}

/// `watch`: the time "run now" was asked, while the page still waits for that run; the section's
/// refreshes carry it so they keep following until the run has finished.
fn runs_section(name: &str, runs: &[RunReport], watch: Option<i64>) -> Markup {
    let running = runs.iter().any(|r| r.status.as_str() == "running");
    let refresh = match watch {
        Some(asked) => Some(format!(
            "/console/syncs/{name}?fragment=runs&started={asked}"
        )),
        None if running => Some(format!("/console/syncs/{name}?fragment=runs")),
        None => None,
    };
    html! {
        section.panel #runs data-refresh=[refresh] aria-live="polite" {
            h2 { "Runs" @if running { " " span.badge.run { "a run is going" } } }
            @if runs.is_empty() {
                p.hint { "No runs yet." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Started" } th scope="col" { "Status" } th.num scope="col" { "Planned" }
                        th.num scope="col" { "Sent" } th.num scope="col" { "Succeeded" } th.num scope="col" { "Retried" }
                        th.num scope="col" { "Rejected" } th.num scope="col" { "Dead-lettered" } th.num scope="col" { "Duration" }
                    } }
                    tbody {
                        @for r in runs {
                            tr class=[matches!(r.status.as_str(), "failed" | "interrupted").then_some("failed")] data-status=(r.status.as_str()) {
                                td { (ui::rfc3339(&r.started_at)) @if r.dry_run { " " span.hint { "(dry run)" } } @if r.full_resync { " " span.hint { "(full resync)" } } }
                                td { (ui::status(r.status.as_str())) }
                                td.num title="adds + changes + removals" { (ui::count(r.planned_adds)) " + " (ui::count(r.planned_changes)) " + " (ui::count(r.planned_removals)) }
                                td.num { (ui::count(r.sent)) }
                                td.num { (ui::count(r.succeeded)) }
                                td.num { (ui::count(r.retried)) }
                                td.num { (ui::count(r.rejected)) }
                                td.num { (ui::count(r.dead_lettered)) }
                                td.num { (ui::duration(r.duration_ms)) }
                            }
                            @if let Some(e) = &r.error {
                                tr.error { td colspan="9" { span.hint { "Why: " } (e) } }
                            }
                        }
                    }
                } }
            }
        }
    }
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let config = s.syncs.config();
    let Some(sync) = config.syncs.iter().find(|x| x.name == name) else {
        return ui::refusal(
            axum::http::StatusCode::NOT_FOUND,
            "No such sync",
            &format!("No sync is named `{name}` in the project file."),
        );
    };
    let runs = match s.syncs.runs(&name, 25).await {
        Ok(r) => r,
        Err(e) => return ui::failure("the sync's runs", e),
    };
    let watch = q
        .started
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|&asked| {
            let newest = runs
                .first()
                .map(|r| (r.started_at.as_str(), r.status.as_str()));
            ui::awaiting(asked, newest, crate::store::now_millis())
        });
    if q.fragment.as_deref() == Some("runs") {
        return axum::response::Html(runs_section(&name, &runs, watch).into_string())
            .into_response();
    }
    let mut letters = match s.syncs.dead_letters(Some(&name), LETTERS).await {
        Ok(d) => d,
        Err(e) => return ui::failure("the sync's dead letters", e),
    };
    let pending = if (letters.len() as i64) < LETTERS {
        letters.len() as i64
    } else {
        match crate::store::syncs::pending_dead_letters(&s.store, &name).await {
            Ok(n) => n,
            Err(e) => return ui::failure("the sync's dead letters", e),
        }
    };
    if !session.may(Role::Admin) {
        for l in &mut letters {
            mask_json(&mut l.fields);
        }
    }
    let blocked = runs.first().filter(|r| r.status.as_str() == "blocked");
    let operator = session.may(Role::Operator);
    let body = html! {
        header.page {
            p.crumbs { a href="/console/syncs" { "Syncs" } " / " }
            h1 { (name) }
            p.sub { (super::overview::model(&sync.from)) " → " (sync.to) " · " (format!("{:?}", sync.mode).to_lowercase())
                " · " (sync.schedule.as_deref().unwrap_or("manual runs")) }
        }
        @if operator {
            div.actions {
                form method="post" action={"/console/syncs/" (name) "/run"} {
                    (ui::csrf(&session))
                    button.primary type="submit" name="what" value="run" { "Run now" }
                    button type="submit" name="what" value="dry_run" { "Dry run" }
                    button type="submit" name="what" value="full_resync" { "Full resync" }
                }
            }
        }
        @if let Some(b) = blocked {
            section.panel.warn role="alert" {
                h2 { "The guardrail stopped the last run" }
                p { (b.error.as_deref().unwrap_or("It would remove more records than max_removals allows.")) }
                p { "Planned: " (ui::count(b.planned_removals)) " removals, " (ui::count(b.planned_adds)) " adds, " (ui::count(b.planned_changes)) " changes." }
                @if operator {
                    form method="post" action={"/console/syncs/" (name) "/run"} {
                        (ui::csrf(&session))
                        button.danger type="submit" name="what" value="approve" { "Approve removals and run" }
                    }
                } @else {
                    p.hint { "An operator can approve these removals." }
                }
            }
        }
        (runs_section(&name, &runs, watch))
        section.panel #dead-letters {
            h2 { "Dead letters" }
            @if letters.is_empty() {
                p.hint { "None: every record this sync sent was acknowledged or rejected for good." }
            } @else {
                p {
                    (ui::count(pending)) " records could not be delivered after every retry."
                    @if pending > letters.len() as i64 { " The oldest " (ui::count(letters.len() as i64)) " are below." }
                }
                @if operator {
                    form method="post" action={"/console/syncs/" (name) "/replay"} {
                        (ui::csrf(&session))
                        button.primary type="submit" { "Replay and run now" }
                    }
                }
                div.scroll { table {
                    thead { tr { th scope="col" { "Record" } th scope="col" { "Action" } th.num scope="col" { "Attempts" } th scope="col" { "Error" } th scope="col" { "When" } } }
                    tbody {
                        @for l in &letters {
                            tr {
                                td { details.record { summary { code { (l.key) } } pre { (ui::json(&l.fields)) } } }
                                td { (l.action) }
                                td.num { (l.attempts) }
                                td.error-text { (l.error) }
                                td.time { (ui::rfc3339(&l.at)) }
                            }
                        }
                    }
                } }
            }
        }
    };
    ui::layout(&name, &session, "/console/syncs", body).into_response()
}

#[derive(serde::Deserialize)]
pub struct RunForm {
    csrf: String,
    what: String,
}

pub async fn run(
    session: Session<Operator>,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<RunForm>,
) -> Response {
    if let Err(r) = session.check_form(&s, &headers, &f.csrf) {
        return r;
    }
    let (action, options) = match f.what.as_str() {
        "run" => ("sync.run", RunOptions::default()),
        "dry_run" => (
            "sync.plan",
            RunOptions {
                dry_run: true,
                ..RunOptions::default()
            },
        ),
        "full_resync" => (
            "sync.run",
            RunOptions {
                full_resync: true,
                ..RunOptions::default()
            },
        ),
        "approve" => (
            "sync.approve_removals",
            RunOptions {
                approve_removals: true,
                ..RunOptions::default()
            },
        ),
        other => {
            return ui::refusal(
                axum::http::StatusCode::BAD_REQUEST,
                "Unknown action",
                &format!("`{other}` is not something a sync can do."),
            )
        }
    };
    if let Err(e) = s.syncs.sync_config(&s.syncs.config(), &name) {
        s.access
            .audit(&session.who, action, &name, "not_found", None)
            .await;
        return ui::refusal(
            axum::http::StatusCode::NOT_FOUND,
            "No such sync",
            &format!("{e:#}"),
        );
    }
    if options.dry_run {
        return match s.syncs.run(&name, options, None).await {
            Ok(report) => plan_page(&session, &name, &report),
            Err(e) => run_refused(&e),
        };
    }
    let detail = options.full_resync.then(|| "full_resync".to_string());
    start(&s, &session, &name, options, action, detail).await
}

/// Starts a run in the background (a big audience takes a while) and shows the sync's page,
/// which follows the run until it finishes.
async fn start(
    s: &ConsoleState,
    session: &Session<Operator>,
    name: &str,
    options: RunOptions,
    action: &str,
    detail: Option<String>,
) -> Response {
    let asked = crate::app::operate::start_run(
        &s.syncs,
        &s.access,
        &session.who,
        name,
        options,
        action,
        detail,
    )
    .await;
    Redirect::to(&format!("/console/syncs/{name}?started={asked}")).into_response()
}

fn run_refused(e: &anyhow::Error) -> Response {
    ui::run_refusal("The run did not happen", e)
}

fn plan_page(session: &Session<Operator>, name: &str, r: &RunReport) -> Response {
    let mut plan = serde_json::to_value(&r.plan).unwrap_or_default();
    if !session.may(Role::Admin) {
        mask_json(&mut plan);
    }
    let samples = |key: &str| plan[key].as_array().cloned().unwrap_or_default();
    let body = html! {
        header.page {
            p.crumbs { a href="/console/syncs" { "Syncs" } " / " a href={"/console/syncs/" (name)} { (name) } " / " }
            h1 { "Dry run" }
            p.sub { "What a run would send now. Nothing was sent." }
        }
        section.cards {
            div.card { h2 { "Adds" } p.big { (ui::count(r.planned_adds)) } }
            div.card { h2 { "Changes" } p.big { (ui::count(r.planned_changes)) } }
            div class={"card" @if r.planned_removals > 0 { " warn" }} { h2 { "Removals" } p.big { (ui::count(r.planned_removals)) } }
            div.card { h2 { "Unchanged" } p.big { (ui::count(plan["unchanged"].as_i64().unwrap_or(0))) } }
        }
        @if let Some(e) = &r.error { section.panel.warn { p { (e) } } }
        @for (title, key) in [("Sample adds", "sample_adds"), ("Sample changes", "sample_changes"), ("Sample removals", "sample_removals")] {
            @let list = samples(key);
            @if !list.is_empty() {
                section.panel {
                    h2 { (title) }
                    @for item in &list { pre { (ui::json(item)) } }
                }
            }
        }
        p { a href={"/console/syncs/" (name)} { "Back to " (name) } }
    };
    ui::layout("Dry run", session, "/console/syncs", body).into_response()
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    pub(super) csrf: String,
}

pub async fn replay(
    session: Session<Operator>,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.check_form(&s, &headers, &f.csrf) {
        return r;
    }
    // The same as the admin API's replay: mark, audit, and start the run that sends them.
    match crate::app::operate::replay(&s.syncs, &s.access, &session.who, &name).await {
        Ok(done) => {
            let to = match done.run_asked {
                Some(asked) => format!("/console/syncs/{name}?started={asked}"),
                None => format!("/console/syncs/{name}"),
            };
            Redirect::to(&to).into_response()
        }
        Err(e) => run_refused(&e),
    }
}
