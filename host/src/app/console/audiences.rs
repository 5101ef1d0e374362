//! Audiences: each with its CEL filter and size; one audience with a sample of members; and an
//! editor that checks a filter and estimates its size on a sample of profiles before anything
//! is saved (saving stays in the project file, where audiences are reviewed like code).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{ui, ConsoleState, Session};
use crate::filter::Filter;

/// Profiles the editor evaluates a filter on: enough for a useful estimate, few enough to
/// answer in well under a second on a store of millions.
const SAMPLE: i64 = 1_000;

/// How far back an audience's page draws its size: 30 days.
const HISTORY_MS: i64 = 30 * 86_400_000;

pub async fn list(session: Session, State(s): State<ConsoleState>) -> Response {
    let config = s.syncs.config();
    // Sizes as each audience's last refresh left them: one small read, no counting.
    let sizes = match crate::store::audiences::sizes(&s.store).await {
        Ok(m) => m,
        Err(e) => return ui::failure("the audiences' sizes", e),
    };
    let mut rows = Vec::new();
    for (name, a) in &config.audiences {
        let full = crate::audience::last_full(&s.store, name)
            .await
            .ok()
            .flatten();
        rows.push((name.clone(), a.clone(), sizes.get(name).copied(), full));
    }
    let body = html! {
        header.page {
            h1 { "Audiences" }
            p.sub { "Profiles a CEL filter accepts; syncs send them on. Defined in " code { "[audiences.NAME]" } " of the project file." }
        }
        div.actions { a.button href="/console/audiences/editor" { "Try a filter" } }
        section.panel {
            @if rows.is_empty() { p.hint { "No audiences are configured." } } @else {
                table {
                    thead { tr { th scope="col" { "Audience" } th scope="col" { "Filter" } th.num scope="col" { "Members" } th scope="col" { "Last full refresh" } } }
                    tbody { @for (name, a, size, full) in &rows {
                        tr {
                            td { a href={"/console/audiences/" (name)} { (name) } @if let Some(d) = &a.description { br; span.hint { (d) } } }
                            td { code.filter { (a.filter) } }
                            td.num { @match size { Some(n) => (ui::count(*n)), None => span.hint { "not evaluated yet" } } }
                            td { @match full { Some(t) => (ui::time(*t)), None => span.hint { "never" } } }
                        }
                    } }
                }
            }
        }
    };
    ui::layout("Audiences", &session, "/console/audiences", body).into_response()
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    let config = s.syncs.config();
    let Some(a) = config.audiences.get(&name) else {
        return ui::refusal(
            StatusCode::NOT_FOUND,
            "No such audience",
            &format!("No audience is named `{name}` in the project file."),
        );
    };
    let (size, sample) = match crate::audience::preview(&s.store, &name, 20).await {
        Ok(p) => p,
        Err(e) => return ui::failure("the audience", e),
    };
    let changed = crate::audience::membership_changed_at(&s.store, &name)
        .await
        .ok()
        .flatten();
    let full = crate::audience::last_full(&s.store, &name)
        .await
        .ok()
        .flatten();
    let now = crate::store::now_millis();
    let history =
        match crate::store::audiences::size_history(&s.store, &name, now - HISTORY_MS, 2_000).await
        {
            Ok(h) => h,
            Err(e) => return ui::failure("the audience's size over time", e),
        };
    let syncs: Vec<_> = config
        .syncs
        .iter()
        .filter(|x| matches!(&x.from, crate::config::SyncFrom::Audience { audience } if *audience == name))
        .map(|x| x.name.clone())
        .collect();
    let body = html! {
        header.page {
            p.crumbs { a href="/console/audiences" { "Audiences" } " / " }
            h1 { (name) }
            @if let Some(d) = &a.description { p.sub { (d) } }
        }
        section.cards {
            div.card { h2 { "Members" } p.big #audience-size { (ui::count(size)) } }
            div.card { h2 { "Membership changed" } p { @match changed { Some(t) => (ui::time(t)), None => "never" } } }
            div.card { h2 { "Last full refresh" } p { @match full { Some(t) => (ui::time(t)), None => "never" } } p.hint { (a.full_refresh.as_deref().unwrap_or("no schedule")) } }
        }
        section.panel #size-history {
            h2 { "Size over time" }
            @if history.is_empty() {
                p.hint { "No size recorded yet: it is recorded each time the audience is evaluated (before each sync run and on full refreshes)." }
            } @else {
                (ui::steps(&history, now - HISTORY_MS, now, "members"))
            }
        }
        section.panel {
            h2 { "Filter" }
            pre.filter { (a.filter) }
            p { a.button href={"/console/audiences/editor?filter=" (super::urlencode(&a.filter))} { "Open in the editor" } }
        }
        section.panel {
            h2 { "Synced by" }
            @if syncs.is_empty() { p.hint { "No sync reads this audience." } }
            ul.tags { @for x in &syncs { li { a href={"/console/syncs/" (x)} { (x) } } } }
        }
        section.panel {
            h2 { "Newest members" }
            @if sample.is_empty() { p.hint { "No members yet: membership is evaluated before each sync run and on full refreshes." } }
            ul.members { @for id in &sample { li { a href={"/console/profiles/" (id)} { code { (id) } } } } }
        }
    };
    ui::layout(&name, &session, "/console/audiences", body).into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct EditorQuery {
    filter: Option<String>,
}

/// What the editor found for a filter.
struct Estimate {
    sampled: usize,
    matched: usize,
    total: i64,
    errors: usize,
}

/// Evaluates `filter` on up to [`SAMPLE`] profiles from a random point of the id order (ids are
/// time-ordered: always starting at the lowest would sample only the oldest profiles), loaded as
/// an audience refresh loads them.
async fn estimate(s: &ConsoleState, filter: &Filter) -> anyhow::Result<Estimate> {
    let total = s.profile_count().await?;
    let start = match crate::store::profiles::id_range(&s.store).await? {
        Some((lo, hi)) => random_between(&lo, &hi, fastrand::f64()),
        None => String::new(),
    };
    let mut ids = crate::store::profiles::ids_page(&s.store, None, &start, SAMPLE).await?;
    if (ids.len() as i64) < SAMPLE {
        let more =
            crate::store::profiles::ids_page(&s.store, None, "", SAMPLE - ids.len() as i64).await?;
        for id in more {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let profiles = if filter.uses_events {
        crate::store::profiles::load(&s.store, &ids, true).await?
    } else {
        crate::store::profiles::by_ids(&s.store, &ids).await?
    };
    let mut matched = 0;
    let mut errors = 0;
    for p in &profiles {
        match filter.matches(p, None) {
            Ok(true) => matched += 1,
            Ok(false) => {}
            Err(_) => errors += 1,
        }
    }
    Ok(Estimate {
        sampled: profiles.len(),
        matched,
        total,
        errors,
    })
}

/// A string between `lo` and `hi` in byte order, `share` (0..1) of the way from one to the
/// other as far as their first 8 differing bytes tell: kept to ASCII without NUL, so any store
/// takes it as a bound.
fn random_between(lo: &str, hi: &str, share: f64) -> String {
    let common = lo
        .bytes()
        .zip(hi.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let word = |s: &str| {
        let mut b = [0u8; 8];
        for (i, c) in s.as_bytes().iter().skip(common).take(8).enumerate() {
            b[i] = *c;
        }
        u64::from_be_bytes(b)
    };
    let (a, b) = (word(lo), word(hi));
    let pick = a.saturating_add((b.saturating_sub(a) as f64 * share.clamp(0.0, 1.0)) as u64);
    let mut out = lo.get(..common).unwrap_or_default().to_string();
    let tail: Vec<u8> = pick.to_be_bytes().iter().map(|b| b & 0x7f).collect();
    let end = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    out.extend(tail[..end].iter().map(|b| char::from((*b).max(1))));
    out
}

pub async fn editor(
    session: Session,
    State(s): State<ConsoleState>,
    Query(q): Query<EditorQuery>,
) -> Response {
    let text = q.filter.as_deref().map(str::trim).filter(|f| !f.is_empty());
    let result = match text {
        None => None,
        Some(t) => Some(match Filter::compile(t) {
            Err(problem) => Err(problem),
            Ok(filter) => match estimate(&s, &filter).await {
                Ok(e) => Ok(e),
                Err(e) => return ui::failure("the sample of profiles", e),
            },
        }),
    };
    let body = html! {
        header.page {
            p.crumbs { a href="/console/audiences" { "Audiences" } " / " }
            h1 { "Filter editor" }
            p.sub { "Check a CEL filter and estimate how many profiles it accepts. Nothing is saved: copy it into " code { "[audiences.NAME] filter" } "." }
        }
        section.panel {
            form method="get" action="/console/audiences/editor" {
                label for="filter" { "Filter" }
                textarea #filter name="filter" rows="4" spellcheck="false" required { (text.unwrap_or("traits.plan == \"pro\"")) }
                p.hint { "Reads " code { "traits" } ", " code { "identifiers" } ", " code { "events[\"Name\"].count / first / last" } ", " code { "event_list" } " and " code { "now" } "." }
                button.primary type="submit" { "Check and preview" }
            }
        }
        @match &result {
            None => {},
            Some(Err(problem)) => section.panel.warn role="alert" { h2 { "This filter does not compile" } p { (problem) } },
            Some(Ok(e)) => section.panel.ok role="status" {
                h2 { "Valid filter" }
                @let share = if e.sampled > 0 { e.matched as f64 / e.sampled as f64 } else { 0.0 };
                @if e.sampled as i64 >= e.total {
                    p.big #preview-size { (ui::count(e.matched as i64)) " profiles" }
                    p.hint { "Exact: every profile was evaluated." }
                } @else {
                    p.big #preview-size { "≈ " (ui::count((share * e.total as f64).round() as i64)) " profiles" }
                    p.hint { (ui::count(e.matched as i64)) " of a sample of " (ui::count(e.sampled as i64)) " matched (" (format!("{:.1}", share * 100.0)) "%), of " (ui::count(e.total)) " profiles." }
                }
                @if e.errors > 0 { p.notice { (e.errors) " profiles could not be evaluated (a value of the wrong type); they count as not matching." } }
            },
        }
    };
    ui::layout("Filter editor", &session, "/console/audiences", body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_starts_anywhere_between_the_lowest_and_highest_id() {
        let (lo, hi) = (
            "prf_01a24db1f87a000000c739d4780deb43",
            "prf_01a24de31d4900000034ed71bc2f434c",
        );
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..=10 {
            let at = random_between(lo, hi, i as f64 / 10.0);
            assert!(at.as_str() >= "prf_01a24d" && at.as_str() <= hi, "{at}");
            assert!(at.is_ascii() && !at.contains('\0'), "{at:?}");
            seen.insert(at);
        }
        assert!(seen.len() > 5, "spread over the range: {seen:?}");
        assert_eq!(
            random_between(lo, hi, 1.0).as_str().cmp(hi),
            std::cmp::Ordering::Less
        );
        assert_eq!(
            random_between("prf_00000000", "prf_00999999", 0.5).get(..6),
            Some("prf_00")
        );
        assert_eq!(random_between("", "", 0.5), "");
    }
}
