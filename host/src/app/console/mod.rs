//! The web console: server-rendered pages (maud templates, compiled into the binary) under
//! `/console`, for people who would otherwise `curl` the admin API. Sign-in takes one of the
//! hub's tokens and sets a session cookie (HttpOnly, SameSite=Strict) that proves itself (see
//! `Access::session_cookie`); every state-changing form carries a CSRF token; every answer has a
//! strict Content-Security-Policy (scripts and styles only from the hub itself, no inline
//! script). The one script, `assets/console.js`, only adds live parts (the event stream, the
//! progress of a running sync) to pages that work without it.
//!
//! Roles as in the admin API: a `viewer` reads everything with personal data masked, an
//! `operator` may also run, approve and replay, an `admin` may also erase and sees personal
//! data. Buttons a role may not use are not shown, and the routes behind them refuse it anyway.

mod audiences;
mod audit;
mod live;
mod overview;
mod profiles;
mod sources;
mod streams;
mod syncs;
mod ui;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;

use super::http::{Access, Need, Principal, Viewer};
use crate::ingest::tap::Tap;
use crate::metrics::Metrics;
use crate::profiles::Profiles;
use crate::registry::Registry;
use crate::sources::SourceEngine;
use crate::store::Store;

/// The session cookie's name. Its path is `/console`, so the admin API never sees it (the API
/// takes bearer tokens only, which a cross-site form cannot send).
const COOKIE: &str = "switchyard_session";

/// How long a session lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);

/// What the pages read from.
#[derive(Clone)]
pub struct ConsoleState {
    pub access: Access,
    pub store: Store,
    pub profiles: Profiles,
    pub syncs: crate::sync::Engine,
    pub sources: SourceEngine,
    pub streams: crate::streams::StreamEngine,
    pub metrics: Metrics,
    pub tap: Tap,
    pub registry: Arc<Registry>,
    /// Erases profiles in the hub and, in the background, in every destination.
    pub erasures: crate::erasure::Erasures,
    /// The profile count and when it was read: read again at most every [`COUNT_TTL`], in the
    /// background (a COUNT over a million rows is the slowest thing the overview would do, and
    /// no page should wait for it but the first), `true` while that read is going on.
    count: Arc<Mutex<CountCache>>,
}

/// The profile count with when it was read, and whether a background read is going on.
type CountCache = (Option<(Instant, i64)>, bool);

const COUNT_TTL: Duration = Duration::from_secs(15);

impl ConsoleState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        access: Access,
        store: Store,
        profiles: Profiles,
        syncs: crate::sync::Engine,
        sources: SourceEngine,
        streams: crate::streams::StreamEngine,
        metrics: Metrics,
        tap: Tap,
        registry: Arc<Registry>,
        erasures: crate::erasure::Erasures,
    ) -> ConsoleState {
        ConsoleState {
            access,
            store,
            profiles,
            syncs,
            sources,
            streams,
            metrics,
            tap,
            registry,
            erasures,
            count: Arc::default(),
        }
    }

    /// The profile count: the last one read, refreshed in the background once older than
    /// [`COUNT_TTL`]; read now only the first time.
    async fn profile_count(&self) -> anyhow::Result<i64> {
        let cached = match self.count.lock() {
            Ok(mut guard) => {
                let (cached, reading) = &mut *guard;
                let stale = cached.is_none_or(|(at, _)| at.elapsed() >= COUNT_TTL);
                if let (Some((_, n)), true, false) = (*cached, stale, *reading) {
                    *reading = true;
                    let state = self.clone();
                    tokio::spawn(async move {
                        let fresh = state.profiles.count().await;
                        if let Ok(mut guard) = state.count.lock() {
                            if let Ok(n) = fresh {
                                guard.0 = Some((Instant::now(), n));
                            }
                            guard.1 = false;
                        }
                    });
                    Some(n)
                } else {
                    cached.map(|(_, n)| n)
                }
            }
            Err(_) => None,
        };
        if let Some(n) = cached {
            return Ok(n);
        }
        let n = self.profiles.count().await?;
        if let Ok(mut guard) = self.count.lock() {
            guard.0 = Some((Instant::now(), n));
        }
        Ok(n)
    }
}

/// Every console route.
pub fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(overview::page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/live", get(live::page))
        .route("/console/live/stream", get(live::stream))
        .route("/console/profiles", get(profiles::search))
        .route("/console/profiles/{id}", get(profiles::page))
        .route("/console/profiles/{id}/erase", post(profiles::erase))
        .route("/console/audiences", get(audiences::list))
        .route("/console/audiences/editor", get(audiences::editor))
        .route("/console/audiences/{name}", get(audiences::page))
        .route("/console/syncs", get(syncs::list))
        .route("/console/syncs/{name}", get(syncs::page))
        .route("/console/syncs/{name}/run", post(syncs::run))
        .route("/console/syncs/{name}/replay", post(syncs::replay))
        .route("/console/streams", get(streams::list))
        .route("/console/streams/{name}", get(streams::page))
        .route("/console/streams/{name}/tail", get(streams::tail))
        .route("/console/streams/{name}/replay", post(streams::replay))
        .route("/console/sources", get(sources::list))
        .route("/console/sources/{name}", get(sources::page))
        .route("/console/sources/{name}/run", post(sources::run))
        .route("/console/plugins", get(sources::plugins))
        .route("/console/audit", get(audit::page))
        .fallback(not_found)
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Headers on every console answer: scripts, styles, images and connections only from the hub
/// itself, no inline script or style, no framing, forms posting only back here.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: browsers send `Origin: null` on a form post from a
    // `no-referrer` page, and the forms' origin check needs the real one. Other sites still get
    // no referrer (profile ids in URLs stay here).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(session: Option<Session>) -> Response {
    let body = html! {
        h1 { "Not found" }
        p { "Nothing lives at this address. " a href="/console" { "Back to the overview" } "." }
    };
    let page = match &session {
        Some(s) => ui::layout("Not found", s, "", body),
        None => ui::bare("Not found", body),
    };
    (StatusCode::NOT_FOUND, page).into_response()
}

/// A signed-in person whose role is at least `R`. Without a valid session the request is sent
/// to the sign-in page (and back after); with a lower role it gets a 403 page, and a refused
/// state-changing request goes to the audit log.
pub struct Session<R: Need = Viewer> {
    pub who: Principal,
    /// The CSRF token forms must carry.
    pub csrf: String,
    cookie: String,
    role: PhantomData<R>,
}

impl<R: Need> Session<R> {
    /// Whether this person may do what `need` allows (to show or hide a button).
    pub fn may(&self, need: crate::config::access::Role) -> bool {
        self.who.role >= need
    }

    /// Checks a form's CSRF token and, when the browser sent one, that `Origin` is this hub.
    pub fn check_form(
        &self,
        s: &ConsoleState,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<(), Response> {
        let same_origin = match (
            headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
            headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        ) {
            (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
            _ => true,
        };
        if same_origin && s.access.csrf_ok(&self.cookie, csrf) {
            return Ok(());
        }
        Err(ui::refusal(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not sent from this console's current session. Reload the page and try again.",
        ))
    }
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl<R: Need> FromRequestParts<ConsoleState> for Session<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &ConsoleState) -> Result<Self, Response> {
        let now = crate::store::now_millis();
        let found =
            cookie_of(&parts.headers).and_then(|c| s.access.session(&c, now).map(|who| (who, c)));
        let Some((who, cookie)) = found else {
            if parts.method == Method::GET && !parts.uri.path().starts_with("/console/live/stream")
            {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/console");
                let to = format!("/console/sign-in?next={}", urlencode(next));
                return Err(Redirect::to(&to).into_response());
            }
            return Err(ui::refusal(
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "Your session has ended. Sign in again.",
            ));
        };
        let changes = !matches!(parts.method, Method::GET | Method::HEAD);
        let what = format!("{} {}", parts.method, parts.uri.path());
        if s.access
            .require(&who, R::ROLE, changes, &what)
            .await
            .is_err()
        {
            return Err(ui::refusal(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!(
                    "You are signed in as {} with the role {}; this needs the role {}.",
                    who.name,
                    who.role,
                    R::ROLE
                ),
            ));
        }
        let csrf = s.access.csrf(&cookie).unwrap_or_default();
        Ok(Session {
            who,
            csrf,
            cookie,
            role: PhantomData,
        })
    }
}

impl axum::extract::OptionalFromRequestParts<ConsoleState> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &ConsoleState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Session as FromRequestParts<ConsoleState>>::from_request_parts(parts, s)
                .await
                .ok(),
        )
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where sign-in sends you back to: only a console path (never another site).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && !n.contains("//") && !n.contains('\\') => n,
        _ => "/console",
    }
}

#[derive(serde::Deserialize, Default)]
struct Next {
    next: Option<String>,
    error: Option<String>,
}

async fn sign_in_page(State(s): State<ConsoleState>, Query(q): Query<Next>) -> Response {
    let next = safe_next(q.next.as_deref());
    let body = html! {
        div.signin {
            div.brand.large { span.logo aria-hidden="true" { "⇄" } " Switchyard" }
            h1 { "Sign in to the console" }
            @if !s.access.enabled() {
                p.notice.bad { "The console is disabled: set " code { "[hub] admin_token" } " or add " code { "[hub.tokens.NAME]" } " to the project file and restart the hub." }
            }
            @if q.error.is_some() {
                p.notice.bad role="alert" { "That token is not one this hub knows. Check it and try again." }
            }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Access token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p.hint { "One of the tokens in " code { "[hub]" } " of the project file. Its role decides what you may do." }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    ui::bare("Sign in", body).into_response()
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
    next: Option<String>,
}

async fn sign_in(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    let next = safe_next(f.next.as_deref()).to_string();
    let same_origin = match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
        _ => true,
    };
    let who = s.access.identify(f.token.trim()).filter(|_| same_origin);
    let Some(who) = who else {
        let to = format!("/console/sign-in?error=1&next={}", urlencode(&next));
        return Redirect::to(&to).into_response();
    };
    let expires = crate::store::now_millis() + SESSION.as_millis() as i64;
    let Some(cookie) = s.access.session_cookie(&who, expires) else {
        return Redirect::to("/console/sign-in?error=1").into_response();
    };
    s.access
        .audit(&who, "console.sign_in", "console", "ok", None)
        .await;
    let set = format!(
        "{COOKIE}={cookie}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION.as_secs()
    );
    ([(header::SET_COOKIE, set)], Redirect::to(&next)).into_response()
}

#[derive(serde::Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn sign_out(
    session: Session,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Err(r) = session.check_form(&s, &headers, &f.csrf) {
        return r;
    }
    s.access
        .audit(&session.who, "console.sign_out", "console", "ok", None)
        .await;
    let clear = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, clear)],
        Redirect::to("/console/sign-in"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_only_returns_to_console_paths() {
        assert_eq!(
            safe_next(Some("/console/syncs/a?x=1")),
            "/console/syncs/a?x=1"
        );
        assert_eq!(safe_next(Some("https://evil.example/console")), "/console");
        assert_eq!(safe_next(Some("//evil.example")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; switchyard_session=ops.5.ab; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_of(&h).as_deref(), Some("ops.5.ab"));
        assert_eq!(cookie_of(&HeaderMap::new()), None);
    }
}
