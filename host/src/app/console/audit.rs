//! The audit log: every state-changing action through the console or the admin API, and every
//! refused attempt, newest first (`operator` and up, as `GET /v1/audit`).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{ui, ConsoleState, Session};
use crate::app::http::Operator;

#[derive(serde::Deserialize, Default)]
pub struct Page {
    before: Option<String>,
}

pub async fn page(
    session: Session<Operator>,
    State(s): State<ConsoleState>,
    Query(q): Query<Page>,
) -> Response {
    const PAGE: i64 = 100;
    let entries = match s.access.audit_log(PAGE, q.before.as_deref()).await {
        Ok(e) => e,
        Err(e) => return ui::failure("the audit log", e),
    };
    let body = html! {
        header.page { h1 { "Audit log" } p.sub { "Who did what, when, and how it ended — through this console or the admin API." } }
        section.panel {
            @if entries.is_empty() { p.hint { "Nothing yet." } } @else {
                div.scroll { table #audit {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "On" } th scope="col" { "Outcome" } th scope="col" { "Detail" } } }
                    tbody { @for e in &entries {
                        tr class=[(e.outcome == "denied" || e.outcome == "failed").then_some("failed")] {
                            td.time { (ui::time(e.at)) }
                            td { (e.actor) " " span class={"role role-" (e.role)} { (e.role) } }
                            td { code { (e.action) } }
                            td { @if let Some(p) = e.target.strip_prefix("profile:") { a href={"/console/profiles/" (p)} { (e.target) } } @else { (e.target) } }
                            td { (ui::status(&e.outcome)) }
                            td.hint { (e.detail.as_deref().unwrap_or("")) }
                        }
                    } }
                } }
                @if entries.len() as i64 == PAGE {
                    @if let Some(last) = entries.last() {
                        p { a.button href={"/console/audit?before=" (last.id)} { "Older entries" } }
                    }
                }
            }
        }
    };
    ui::layout("Audit log", &session, "/console/audit", body).into_response()
}
