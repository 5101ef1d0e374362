//! Profiles: look one up by any identifier (`email:ada@example.com`, `user_id:42`, a bare email,
//! or a profile id), and a profile's page: identifiers, traits, the audiences it is in, its
//! merge history with reasons, its events (paged, newest first) and, for admins, erase. Pages
//! are addressed by profile id, so identifiers (personal data) stay out of URLs and logs.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde_json::Value;

use super::{ui, ConsoleState, Session};
use crate::app::http::Admin;
use crate::app::mask::{mask_json, mask_str};
use crate::config::access::Role;
use crate::identity::Identifier;

#[derive(serde::Deserialize, Default)]
pub struct Search {
    q: Option<String>,
}

/// What a search box entry names.
fn identifier_of(q: &str) -> Option<Identifier> {
    let q = q.trim();
    match Identifier::parse(q) {
        Some(id) => Some(id),
        None if q.contains('@') => Some(Identifier::new("email", q)),
        None => None,
    }
}

pub async fn search(
    session: Session,
    State(s): State<ConsoleState>,
    Query(q): Query<Search>,
) -> Response {
    let query = q.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let mut problem = None;
    if let Some(query) = query {
        let found = match identifier_of(query) {
            Some(id) => s.profiles.find(&id).await,
            None => s.profiles.by_id(query).await.map(|p| p.map(|p| p.id)),
        };
        match found {
            Ok(Some(id)) => {
                return Redirect::to(&format!("/console/profiles/{id}")).into_response()
            }
            Ok(None) => problem = Some("No profile has that identifier."),
            Err(e) => return ui::failure("the profile", e),
        }
    }
    let body = html! {
        header.page { h1 { "Profiles" } p.sub { "Every message resolves to one profile. Find one by any of its identifiers." } }
        section.panel {
            form.search method="get" action="/console/profiles" role="search" {
                label for="q" { "Identifier" }
                div.row {
                    input #q type="search" name="q" value=[query] placeholder="email:ada@example.com, user_id:42, or a profile id" required autofocus;
                    button.primary type="submit" { "Find" }
                }
            }
            @if let Some(p) = problem { p.notice.bad role="alert" { (p) } }
            p.hint { "Kinds are those of " code { "[identity]" } ": user_id, anonymous_id, email, phone and your own." }
        }
    };
    let status = if problem.is_some() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    (
        status,
        ui::layout("Profiles", &session, "/console/profiles", body),
    )
        .into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct EventsPage {
    cursor: Option<String>,
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    Query(q): Query<EventsPage>,
) -> Response {
    let profile = match s.profiles.by_id(&id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return ui::refusal(
                StatusCode::NOT_FOUND,
                "No such profile",
                "No profile has this id: it may have been merged into another or erased.",
            )
        }
        Err(e) => return ui::failure("the profile", e),
    };
    let events = match s.profiles.events(&id, 25, q.cursor.as_deref()).await {
        Ok(e) => e,
        Err(e) => return ui::failure("the profile's events", e),
    };
    let merges = match s.profiles.merges(&id).await {
        Ok(m) => m,
        Err(e) => return ui::failure("the profile's merges", e),
    };
    let config = s.syncs.config();
    let mut audiences = Vec::new();
    for name in config.audiences.keys() {
        match crate::store::audiences::members_among(&s.store, name, std::slice::from_ref(&id))
            .await
        {
            Ok(found) if !found.is_empty() => audiences.push(name.clone()),
            Ok(_) => {}
            Err(e) => return ui::failure("the profile's audiences", e),
        }
    }
    let pii = session.may(Role::Admin);
    let show = |v: &str| if pii { v.to_string() } else { mask_str(v) };
    let mut traits = Value::Object(profile.traits.clone());
    let mut event_list: Vec<Value> = events.data.clone();
    if !pii {
        mask_json(&mut traits);
        event_list.iter_mut().for_each(mask_json);
    }
    let traits = traits.as_object().cloned().unwrap_or_default();
    let body = html! {
        header.page {
            p.crumbs { a href="/console/profiles" { "Profiles" } " / " }
            h1 { "Profile " code { (profile.id) } }
            p.sub { "Created " (ui::rfc3339(&profile.created_at)) " · updated " (ui::rfc3339(&profile.updated_at)) }
        }
        div.grid {
            section.panel {
                h2 { "Identifiers" }
                table { tbody {
                    @for i in &profile.identifiers { tr { th scope="row" { (i.kind) } td { code { (show(&i.value)) } } } }
                } }
            }
            section.panel {
                h2 { "Audiences" }
                @if audiences.is_empty() { p.hint { "In no audience." } }
                ul.tags { @for a in &audiences { li { a href={"/console/audiences/" (a)} { (a) } } } }
            }
        }
        section.panel {
            h2 { "Traits" }
            @if traits.is_empty() { p.hint { "No traits." } } @else {
                table { tbody {
                    @for (k, v) in &traits {
                        tr { th scope="row" { (k) } td { @match v { Value::String(s) => (s), other => code { (other.to_string()) } } } }
                    }
                } }
            }
        }
        section.panel #events {
            h2 { "Events" }
            @if event_list.is_empty() { p.hint { "No events." } }
            ol.timeline {
                @for e in &event_list {
                    li {
                        details {
                            summary {
                                span.type { (e["type"].as_str().unwrap_or("?")) }
                                " "
                                strong { (e["event"].as_str().or(e["name"].as_str()).unwrap_or("")) }
                                " "
                                span.hint { (e["timestamp"].as_str().map(ui::rfc3339).unwrap_or_default()) }
                            }
                            pre { (ui::json(e)) }
                        }
                    }
                }
            }
            @if let Some(c) = &events.cursor {
                p { a.button href={"/console/profiles/" (profile.id) "?cursor=" (c) "#events"} { "Older events" } }
            }
        }
        section.panel {
            h2 { "Merge history" }
            @if merges.is_empty() { p.hint { "This profile was never merged." } } @else {
                table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "From" } th scope="col" { "Into" } th scope="col" { "Reason" } th scope="col" { "Through" } } }
                    tbody { @for m in &merges {
                        tr {
                            td.time { (ui::rfc3339(&m.at)) }
                            td { code { (m.from_profile) } }
                            td { code { (m.into_profile) } }
                            td { (m.reason) }
                            td { @if let Some(i) = &m.identifier { (i.kind) ":" (show(&i.value)) } }
                        }
                    } }
                }
            }
        }
        @if pii {
            section.panel.danger-zone {
                h2 { "Erase this profile" }
                p { "Erasing removes its events, traits and identifiers for good, keeps messages carrying those identifiers from creating it again, and asks every destination it was sent to to erase it. This cannot be undone." }
                form method="post" action={"/console/profiles/" (profile.id) "/erase"} {
                    (ui::csrf(&session))
                    label for="confirm" { "Type " strong { "erase" } " to confirm" }
                    div.row {
                        input #confirm type="text" name="confirm" autocomplete="off" required pattern="erase";
                        button.danger type="submit" { "Erase profile" }
                    }
                }
            }
        }
    };
    ui::layout("Profile", &session, "/console/profiles", body).into_response()
}

#[derive(serde::Deserialize)]
pub struct EraseForm {
    csrf: String,
    confirm: String,
}

pub async fn erase(
    session: Session<Admin>,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<EraseForm>,
) -> Response {
    if let Err(r) = session.check_form(&s, &headers, &f.csrf) {
        return r;
    }
    if f.confirm.trim() != "erase" {
        return ui::refusal(
            StatusCode::BAD_REQUEST,
            "Not erased",
            "Type the word erase to confirm; nothing was erased.",
        );
    }
    let target = format!("profile:{id}");
    let profile = match s.profiles.by_id(&id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            s.access
                .audit(&session.who, "profile.erase", &target, "not_found", None)
                .await;
            return ui::refusal(
                StatusCode::NOT_FOUND,
                "No such profile",
                "Nothing was erased.",
            );
        }
        Err(e) => return ui::failure("the profile", e),
    };
    let erased = s
        .erasures
        .erase(&crate::store::erasure::ProfileRef::Id(profile.id.clone()))
        .await;
    match erased {
        Ok(receipt) => {
            s.access
                .audit(&session.who, "profile.erase", &target, "ok", None)
                .await;
            let body = html! {
                header.page { h1 { "Profile erased" } }
                section.panel {
                    p { "Profile " code { (id) } " and its events, traits and identifiers are gone from the hub; its identifiers are suppressed." }
                    @if let Some(r) = &receipt {
                        p { "Destinations it was sent to are asked to erase it too, in the background: receipt " code { (r.id) } " (" code { "GET /v1/erasures/" (r.id) } ")." }
                    }
                    p { a href="/console/audit" { "See it in the audit log" } " · " a href="/console/profiles" { "Find another profile" } }
                }
            };
            ui::layout("Profile erased", &session, "/console/profiles", body).into_response()
        }
        Err(e) => {
            s.access
                .audit(
                    &session.who,
                    "profile.erase",
                    &target,
                    "failed",
                    Some(format!("{e:#}")),
                )
                .await;
            ui::failure("erasing the profile", e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_names_an_identifier_or_an_id() {
        assert_eq!(
            identifier_of(" user_id:42 ").unwrap().to_string(),
            "user_id:42"
        );
        assert_eq!(identifier_of("ada@example.com").unwrap().kind, "email");
        assert!(identifier_of("0193a0b2-aaaa").is_none(), "a profile id");
    }
}
