//! The console's page frame and the small pieces every page uses: navigation, status badges,
//! times, numbers, and the refusal page.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{TimeZone, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::Session;
use crate::app::http::Need;
use crate::config::access::Role;

const NAV: &[(&str, &str)] = &[
    ("/console", "Overview"),
    ("/console/live", "Live events"),
    ("/console/profiles", "Profiles"),
    ("/console/audiences", "Audiences"),
    ("/console/syncs", "Syncs"),
    ("/console/streams", "Streams"),
    ("/console/sources", "Sources"),
    ("/console/plugins", "Plugins"),
    ("/console/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Switchyard" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A signed-in page: navigation (the current section marked), who is signed in, the content.
pub fn layout<R: Need>(
    title: &str,
    session: &Session<R>,
    active: &str,
    content: Markup,
) -> Html<String> {
    let page = html! {
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                div.shell {
                    nav.side aria-label="Sections" {
                        a.brand href="/console" { span.logo aria-hidden="true" { "⇄" } " Switchyard" }
                        ul {
                            @for (href, label) in NAV {
                                li {
                                    @if *href == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        div.who {
                            span.name { (session.who.name) }
                            span class={"role role-" (session.who.role)} { (session.who.role) }
                            @if !session.may(Role::Admin) {
                                p.hint { "Personal data is masked for your role." }
                            }
                            form method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main tabindex="-1" {
                        (content)
                    }
                }
            }
        }
    };
    Html(page.into_string())
}

/// A page without navigation (sign-in, refusals before sign-in).
pub fn bare(title: &str, content: Markup) -> Html<String> {
    let page = html! {
        html lang="en" {
            (head(title))
            body.bare {
                main #main { (content) }
            }
        }
    };
    Html(page.into_string())
}

/// A refusal as a page, with its status.
pub fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        div.signin {
            h1 { (title) }
            p { (message) }
            p { a href="/console" { "Back to the overview" } }
        }
    };
    (status, bare(title, body)).into_response()
}

/// An error while reading what a page shows: a 500 page naming what failed (the cause goes to
/// the log, not to the browser).
/// The page for a run (or replay) the engine refused: 409 when another holds its lease, 404
/// for an unknown name, 500 otherwise.
pub fn run_refusal(title: &str, e: &anyhow::Error) -> Response {
    let status = match crate::runs::RunError::of(e) {
        Some(crate::runs::RunError::AlreadyRunning { .. }) => StatusCode::CONFLICT,
        Some(crate::runs::RunError::NotFound(_)) => StatusCode::NOT_FOUND,
        None => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refusal(status, title, &format!("{e:#}"))
}

pub fn failure(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!("console: {what}: {e:#}");
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        &format!("Reading {what} failed; the hub's log has the cause."),
    )
}

/// A run status as a coloured badge: red for failures, amber for what needs someone.
pub fn status(s: &str) -> Markup {
    let class = match s {
        "succeeded" | "ok" | "planned" | "accepted" => "ok",
        "failed" | "interrupted" | "denied" | "refused" => "bad",
        "completed_with_errors" | "blocked" | "capped" | "conflict" | "not_found" => "warn",
        "running" | "started" => "run",
        _ => "idle",
    };
    html! { span class={"badge " (class)} { (s.replace('_', " ")) } }
}

/// A time (Unix ms) as `2026-12-06 20:04:05 UTC`.
pub fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// An RFC 3339 time as [`time`] shows it.
pub fn rfc3339(s: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| time(t.timestamp_millis()))
        .unwrap_or_else(|_| s.to_string())
}

/// A duration in milliseconds, readably.
pub fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// 1234567 -> `1,234,567`.
pub fn count(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Pretty JSON for a `<pre>`.
pub fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The hidden CSRF field of a form.
pub fn csrf<R: Need>(session: &Session<R>) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A bar chart as inline SVG (no style attributes: the CSP allows none), with a text summary
/// for screen readers.
pub fn bars(values: &[(String, f64)], label: &str) -> Markup {
    let max = values
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let w = 600.0;
    let h = 80.0;
    let n = values.len().max(1) as f64;
    let bw = w / n;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="{}">"#,
        maud::html! { (label) }.into_string()
    );
    for (i, (tip, v)) in values.iter().enumerate() {
        let bh = (v / max * (h - 2.0)).max(if *v > 0.0 { 1.0 } else { 0.0 });
        svg.push_str(&format!(
            r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}"><title>{}</title></rect>"#,
            i as f64 * bw + 0.5,
            h - bh,
            (bw - 1.0).max(0.5),
            bh,
            maud::html! { (tip) }.into_string()
        ));
    }
    svg.push_str("</svg>");
    PreEscaped(svg)
}

/// Whether a page should follow the runs after "run now" was asked at `asked` (Unix ms, taken
/// before the run was spawned, so the new run started at or after it and a run that finished
/// just before the click is not taken for it), given the newest run's start (RFC 3339) and
/// status: until a run started since then has finished, for at most a minute (a run refused
/// by the lease never starts).
pub fn awaiting(asked: i64, newest: Option<(&str, &str)>, now: i64) -> bool {
    if now - asked > 60_000 {
        return false;
    }
    let Some((started_at, status)) = newest else {
        return true;
    };
    let started = chrono::DateTime::parse_from_rfc3339(started_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    started < asked || status == "running"
}

/// A count over time as a step chart in inline SVG (no script or style attribute: the CSP
/// allows neither), its scale and dates as text beside it. `points` are (ms, value), oldest
/// first, each value holding until the next point and the last until `now`; the chart starts
/// at the first point or at `since`, whichever is later.
pub fn steps(points: &[(i64, i64)], since: i64, now: i64, unit: &str) -> Markup {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return html! {};
    };
    let from = first.0.max(since);
    let to = now.max(from + 60_000);
    let high = points.iter().map(|p| p.1).max().unwrap_or(0);
    let low = points.iter().map(|p| p.1).min().unwrap_or(0);
    let (w, h) = (600.0, 120.0);
    // The highest value a little below the top edge, level with its label beside the chart.
    let top = (high as f64).max(1.0);
    let x = |t: i64| (t.clamp(from, to) - from) as f64 / (to - from) as f64 * w;
    let y = |v: i64| h - 1.0 - v as f64 / top * (h - 8.0);
    let mut line = format!("M0,{:.2}", y(first.1));
    for p in &points[1..] {
        line.push_str(&format!(" H{:.2} V{:.2}", x(p.0), y(p.1)));
    }
    line.push_str(&format!(" H{w}"));
    let area = format!("{line} V{h} H0 Z");
    let label = format!(
        "{} {unit} now; {} at {}; highest {}, lowest {}",
        count(last.1),
        count(first.1),
        time(from),
        count(high),
        count(low)
    );
    let svg = format!(
        r#"<svg class="chart steps" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="{label}"><path class="area" d="{area}"></path><path class="line" d="{line}" vector-effect="non-scaling-stroke"></path></svg>"#,
        label = html! { (label) }.into_string()
    );
    html! {
        figure.history {
            div.scale { span { (count(high)) } span { "0" } }
            div.plot {
                (PreEscaped(svg))
                div.axis { span { (time(from)) } span { "now" } }
            }
            figcaption.hint {
                (count(last.1)) " " (unit) " now"
                @if points.len() > 1 { "; " (count(first.1)) " on " (time(from)) ", highest " (count(high)) ", lowest " (count(low)) }
                "."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(count(-1000), "-1,000");
        assert_eq!(duration(Some(250)), "250 ms");
        assert_eq!(duration(Some(2_500)), "2.5 s");
        assert_eq!(duration(Some(125_000)), "2m 05s");
        assert_eq!(duration(None), "—");
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn a_page_follows_the_run_it_asked_for_until_it_finishes() {
        let asked = 1_765_000_000_000; // 2025-12-06T05:46:40Z
        let at = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
        };
        assert!(awaiting(asked, None, asked + 100), "no run yet");
        let before = at(asked - 500);
        assert!(
            awaiting(asked, Some((&before, "succeeded")), asked + 100),
            "the run before the click is not the one asked for"
        );
        let after = at(asked + 20);
        assert!(awaiting(asked, Some((&after, "running")), asked + 100));
        assert!(!awaiting(asked, Some((&after, "succeeded")), asked + 100));
        assert!(
            !awaiting(asked, None, asked + 61_000),
            "gives up after a minute"
        );
    }

    #[test]
    fn a_step_chart_holds_each_value_until_the_next() {
        let day = 86_400_000;
        let chart = steps(&[(0, 10), (day, 5)], 0, 2 * day, "members").into_string();
        // From 10 (y = 119 - 10/10 * 112) to 5 at half way, held to the right edge.
        assert!(
            chart.contains(r#"d="M0,7.00 H300.00 V63.00 H600""#),
            "{chart}"
        );
        assert!(chart.contains("5 members now; 10 on 1970-01-01"), "{chart}");
        // Points before the window start it at its opening, with the value they held.
        let chart = steps(&[(0, 7), (3 * day, 9)], 2 * day, 4 * day, "members").into_string();
        assert!(
            chart.contains("M0,") && chart.contains(" H300.00 V"),
            "{chart}"
        );
        assert!(steps(&[], 0, day, "members").into_string().is_empty());
    }

    #[test]
    fn chart_labels_are_escaped() {
        let svg = bars(&[("<b>".into(), 1.0)], "a \"label\"").into_string();
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("a &quot;label&quot;"), "{svg}");
    }
}
