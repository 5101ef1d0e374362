//! Sources (runs, cursors per stream, "run now") and the installed plugins (kind, version, API
//! version, declared hosts, limits, config schema).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;

use super::overview::{source_rows, sources_table};
use super::{ui, ConsoleState, Session};
use crate::app::http::Operator;
use crate::config::access::Role;
use crate::runs::RunError;

pub async fn list(session: Session, State(s): State<ConsoleState>) -> Response {
    let rows = match source_rows(&s).await {
        Ok(r) => r,
        Err(e) => return ui::failure("the sources", e),
    };
    let config = s.sources.config();
    let tracking: Vec<_> = config
        .sources
        .iter()
        .filter(|(_, c)| c.plugin.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let body = html! {
        header.page { h1 { "Sources" } p.sub { "Where profiles and events come from: plugin sources read other systems; tracking sources receive SDK messages." } }
        section.panel {
            h2 { "Plugin sources" }
            @if rows.is_empty() { p.hint { "None configured." } } @else { (sources_table(&rows)) }
        }
        section.panel {
            h2 { "Tracking sources" }
            @if tracking.is_empty() { p.hint { "None configured." } }
            ul.tags { @for t in &tracking { li { a href={"/console/live?source=" (t)} { (t) } } } }
            p.hint { "Their messages appear on " a href="/console/live" { "Live events" } "." }
        }
    };
    ui::layout("Sources", &session, "/console/sources", body).into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct PageQuery {
    /// Set after "run now" (Unix ms): the page follows until the run asked for has finished.
    started: Option<String>,
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let source = match s.sources.source(&name) {
        Ok(c) => c,
        Err(e) => return ui::refusal(StatusCode::NOT_FOUND, "No such source", &format!("{e:#}")),
    };
    let runs = match s.sources.runs(&name, 25).await {
        Ok(r) => r,
        Err(e) => return ui::failure("the source's runs", e),
    };
    let cursors = match s.sources.cursors(&name).await {
        Ok(c) => c,
        Err(e) => return ui::failure("the source's cursors", e),
    };
    let running = runs.iter().any(|r| r.status.as_str() == "running");
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
    // While a run goes on (or the one asked for has not finished), the script re-reads the
    // cursors and runs every 1.5 s: the run's pages and records count up as it reads.
    let refresh = match watch {
        Some(asked) => Some(format!("/console/sources/{name}?started={asked}")),
        None if running => Some(format!("/console/sources/{name}")),
        None => None,
    };
    let body = html! {
        header.page {
            p.crumbs { a href="/console/sources" { "Sources" } " / " }
            h1 { (name) }
            p.sub { "plugin " (source.plugin.as_deref().unwrap_or("?")) " · " (source.schedule.as_deref().unwrap_or("manual runs")) }
        }
        @if session.may(Role::Operator) {
            div.actions {
                form method="post" action={"/console/sources/" (name) "/run"} {
                    (ui::csrf(&session))
                    button.primary type="submit" name="what" value="run" { "Run now" }
                    button type="submit" name="what" value="full_refresh" { "Full refresh" }
                }
            }
        }
        div #progress data-refresh=[refresh] aria-live="polite" {
        section.panel #cursors {
            h2 { "Cursors" }
            @if cursors.is_empty() { p.hint { "No stream has been read yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Stream" } th scope="col" { "Next read starts at" } th scope="col" { "Done" } } }
                    tbody { @for (stream, cursor, done) in &cursors {
                        tr { td { (stream) } td { code { (cursor.as_deref().unwrap_or("the beginning")) } } td { @if *done { "yes" } @else { "no" } } }
                    } }
                }
            }
        }
        section.panel #runs {
            h2 { "Runs" @if running { " " span.badge.run { "a run is going" } } }
            @if runs.is_empty() { p.hint { "No runs yet." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Started" } th scope="col" { "Status" } th.num scope="col" { "Pages" } th.num scope="col" { "Records" } th.num scope="col" { "Events" } th.num scope="col" { "Retries" } th.num scope="col" { "Duration" } } }
                    tbody { @for r in &runs {
                        tr class=[matches!(r.status.as_str(), "failed" | "interrupted").then_some("failed")] {
                            td { (ui::rfc3339(&r.started_at)) @if r.full_refresh { " " span.hint { "(full refresh)" } } }
                            td { (ui::status(r.status.as_str())) }
                            td.num { (ui::count(r.pages)) }
                            td.num { (ui::count(r.records)) }
                            td.num { (ui::count(r.events)) }
                            td.num { (ui::count(r.retries)) }
                            td.num { (ui::duration(r.duration_ms)) }
                        }
                        @if let Some(e) = &r.error { tr.error { td colspan="7" { span.hint { "Why: " } (e) } } }
                    } }
                } }
            }
        }
        }
    };
    ui::layout(&name, &session, "/console/sources", body).into_response()
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
    let full_refresh = f.what == "full_refresh";
    if let Err(e) = s.sources.source(&name) {
        s.access
            .audit(&session.who, "source.run", &name, "not_found", None)
            .await;
        return ui::refusal(StatusCode::NOT_FOUND, "No such source", &format!("{e:#}"));
    }
    s.access
        .audit(
            &session.who,
            "source.run",
            &name,
            "started",
            full_refresh.then(|| "full_refresh".into()),
        )
        .await;
    let asked = crate::store::now_millis();
    let engine = s.sources.clone();
    let source = name.clone();
    tokio::spawn(async move {
        let options = crate::sources::RunOptions { full_refresh };
        if let Err(e) = engine.run(&source, options, None).await {
            match RunError::of(&e) {
                Some(RunError::AlreadyRunning { .. }) => {
                    tracing::info!(source = %source, "run asked in the console: {e:#}")
                }
                _ => tracing::warn!(source = %source, "run requested in the console failed: {e:#}"),
            }
        }
    });
    Redirect::to(&format!("/console/sources/{name}?started={asked}")).into_response()
}

pub async fn plugins(session: Session, State(s): State<ConsoleState>) -> Response {
    let list = match s.registry.list() {
        Ok(l) => l,
        Err(e) => return ui::failure("the installed plugins", e),
    };
    let body = html! {
        header.page { h1 { "Plugins" } p.sub { "Installed connectors: sandboxed WebAssembly components, each allowed only the hosts it declares and the operator grants." } }
        @if list.is_empty() { section.panel { p.hint { "No plugins installed: " code { "switchyard plugin install FILE.wasm" } "." } } }
        @for p in &list {
            section.panel.plugin {
                h2 { (p.name) " " span.hint { (p.version) } " " span class={"badge kind-" (p.kind)} { (p.kind) } }
                p { (p.description) }
                dl {
                    dt { "API version" } dd { (p.api_version) }
                    dt { "Hosts it may call" } dd { @if p.allowed_hosts.is_empty() { "none" } @else { @for h in &p.allowed_hosts { code { (h) } " " } } }
                    @if !p.actions.is_empty() { dt { "Actions" } dd { (p.actions.join(", ")) } }
                    dt { "Limits" } dd { "batches of up to " (ui::count(p.max_batch_size as i64)) " records; " (p.default_rate_per_second) " requests/s by default" }
                    dt { "Secrets" } dd { @if p.secrets.is_empty() { "none" } @else { @for sec in &p.secrets { code { (sec.name) } @if sec.required { " (required)" } " " } } }
                    dt { "SHA-256" } dd { code.small { (p.sha256) } }
                }
                details { summary { "Config schema" } pre { (ui::json(&p.config_schema)) } }
            }
        }
    };
    ui::layout("Plugins", &session, "/console/plugins", body).into_response()
}
