//! Who may use the admin API: one extractor, [`AdminAuth`], finds the bearer token among
//! `[hub] admin_token` and `[hub.tokens.NAME]` and checks that its role is at least the one the
//! route declares (`AdminAuth<Viewer>`, `AdminAuth<Operator>`, `AdminAuth` = `AdminAuth<Admin>`),
//! before a handler runs, so no handler checks a token by hand. A known token whose role is too
//! low is a 403 (and, on a route that changes state, an entry in the audit log); a missing or
//! unknown token is a 401.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap, Method};

use super::ApiError;
use crate::config::access::{AccessToken, Role};
use crate::store::audit::AuditEntry;
use crate::store::Store;

/// The tokens, resolved, and the audit log they write to. Cheap to clone.
#[derive(Clone, Default)]
pub struct Access {
    tokens: Arc<[AccessToken]>,
    audit: Option<Store>,
}

/// Who made a request: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
}

impl Principal {
    /// Whether raw personal data may be shown to this principal (admins only).
    pub fn sees_pii(&self) -> bool {
        self.role >= Role::Admin
    }
}

impl Access {
    /// `tokens` from `Config::access_tokens`; `audit` is where state-changing actions are logged.
    pub fn new(tokens: Vec<AccessToken>, audit: Option<Store>) -> Access {
        Access {
            tokens: tokens.into(),
            audit,
        }
    }

    /// Whether any token is configured (else the admin API and the console are disabled).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principal `secret` belongs to. Every token is compared in constant time, so the
    /// answer's timing tells nothing about which one (or which prefix) nearly matched.
    pub fn identify(&self, secret: &str) -> Option<Principal> {
        let mut found = None;
        for t in self.tokens.iter() {
            if constant_time_eq(secret.as_bytes(), t.secret.as_bytes()) {
                found = Some(Principal {
                    name: Arc::from(t.name.as_str()),
                    role: t.role,
                });
            }
        }
        found
    }

    /// The principal of a request's `Authorization: Bearer` header.
    pub fn bearer(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if !self.enabled() {
            return Err(ApiError::AdminDisabled);
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|secret| self.identify(secret))
            .ok_or(ApiError::Unauthorized)
    }

    /// A console session for `who` until `expires` (Unix ms), as the cookie's value:
    /// `NAME.EXPIRES.MAC`, the MAC an HMAC-SHA256 keyed by the token's own secret. Nothing is
    /// stored: the cookie proves itself, rotating (or removing) the token ends its sessions, and
    /// two hubs sharing a config accept each other's sessions.
    pub fn session_cookie(&self, who: &Principal, expires: i64) -> Option<String> {
        let token = self.tokens.iter().find(|t| *t.name == *who.name)?;
        let mac = mac(
            &token.secret,
            &format!("session\0{}\0{expires}", token.name),
        );
        Some(format!("{}.{expires}.{mac}", token.name))
    }

    /// The principal of a session cookie made by [`Access::session_cookie`], unless it has
    /// expired by `now` or its MAC does not hold.
    pub fn session(&self, cookie: &str, now: i64) -> Option<Principal> {
        let (rest, given) = cookie.rsplit_once('.')?;
        let (name, expires) = rest.rsplit_once('.')?;
        let expires: i64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        let token = self.tokens.iter().find(|t| t.name == name)?;
        let want = mac(&token.secret, &format!("session\0{name}\0{expires}"));
        constant_time_eq(want.as_bytes(), given.as_bytes()).then(|| Principal {
            name: Arc::from(name),
            role: token.role,
        })
    }

    /// The CSRF token of a session: an HMAC of the session cookie, keyed by the token's secret,
    /// so a page from another site (which cannot read the cookie) cannot make one.
    pub fn csrf(&self, cookie: &str) -> Option<String> {
        let name = cookie.split('.').next()?;
        let token = self.tokens.iter().find(|t| t.name == name)?;
        Some(mac(&token.secret, &format!("csrf\0{cookie}")))
    }

    /// Whether `given` is the CSRF token of the session `cookie`.
    pub fn csrf_ok(&self, cookie: &str, given: &str) -> bool {
        self.csrf(cookie)
            .is_some_and(|want| constant_time_eq(want.as_bytes(), given.as_bytes()))
    }

    /// Writes an audit entry for `who` now. A failure to write is logged, not returned: the
    /// action it records has already happened (or been refused) by then.
    pub async fn audit(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        outcome: &str,
        detail: Option<String>,
    ) {
        let Some(store) = &self.audit else { return };
        let at = crate::store::now_millis();
        let entry = AuditEntry {
            id: audit_id(at),
            at,
            actor: who.name.to_string(),
            role: who.role.as_str().into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail,
        };
        if let Err(e) = crate::store::audit::record(store, &entry).await {
            tracing::error!(
                action,
                target,
                outcome,
                "could not write the audit log: {e}"
            );
        }
    }

    /// The audit log, newest first (`before`: an entry id, for the next page).
    pub async fn audit_log(
        &self,
        limit: i64,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        match &self.audit {
            Some(store) => Ok(crate::store::audit::list(store, limit, before)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?),
            None => Ok(Vec::new()),
        }
    }

    /// Checks that `who` has at least `need`; a refusal of a state-changing request
    /// (`changes`) is written to the audit log as `denied`.
    pub async fn require(
        &self,
        who: &Principal,
        need: Role,
        changes: bool,
        what: &str,
    ) -> Result<(), ApiError> {
        if who.role >= need {
            return Ok(());
        }
        if changes {
            self.audit(
                who,
                "request",
                what,
                "denied",
                Some(format!("needs {need}")),
            )
            .await;
        }
        Err(ApiError::Forbidden {
            name: who.name.to_string(),
            role: who.role,
            need,
        })
    }
}

/// A time-ordered, unique audit id: milliseconds, a per-process sequence, and random bits (two
/// hubs sharing a database may write in the same millisecond).
fn audit_id(at: i64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{at:013}-{:010}-{:08x}",
        SEQ.fetch_add(1, Ordering::Relaxed) % 10_000_000_000,
        fastrand::u32(..)
    )
}

/// The role a route needs, as a type: `AdminAuth<Operator>`.
pub trait Need: Send + Sync + 'static {
    const ROLE: Role;
}

/// Reads everything, personal data masked.
pub struct Viewer;
/// Runs, approves, replays.
pub struct Operator;
/// Erases, sees personal data.
pub struct Admin;

impl Need for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Need for Operator {
    const ROLE: Role = Role::Operator;
}
impl Need for Admin {
    const ROLE: Role = Role::Admin;
}

/// Proof that the request carried a token with at least role `R`. Put it first among a
/// handler's arguments: extractors run in order, and the token is checked before anything the
/// request names.
pub struct AdminAuth<R: Need = Admin> {
    pub who: Principal,
    role: PhantomData<R>,
}

impl<S, R> FromRequestParts<S> for AdminAuth<R>
where
    Access: FromRef<S>,
    S: Send + Sync,
    R: Need,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let access = Access::from_ref(state);
        let who = access.bearer(&parts.headers)?;
        let changes = !matches!(parts.method, Method::GET | Method::HEAD);
        let what = format!("{} {}", parts.method, parts.uri.path());
        access.require(&who, R::ROLE, changes, &what).await?;
        Ok(AdminAuth {
            who,
            role: PhantomData,
        })
    }
}

/// HMAC-SHA256 of `message` keyed by `key`, hex.
fn mac(key: &str, message: &str) -> String {
    use hmac::Mac as _;
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC takes a key of any length");
    m.update(message.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let t = |name: &str, secret: &str, role| AccessToken {
            name: name.into(),
            secret: secret.into(),
            role,
        };
        Access::new(
            vec![
                t("admin", "root", Role::Admin),
                t("vic", "view", Role::Viewer),
                t("ops", "oper", Role::Operator),
            ],
            None,
        )
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {v}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn bearer_names_the_principal_or_refuses() {
        assert!(matches!(
            Access::default().bearer(&bearer("root")),
            Err(ApiError::AdminDisabled)
        ));
        let a = access();
        assert!(matches!(
            a.bearer(&HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            a.bearer(&bearer("roo")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            a.bearer(&bearer("rootx")),
            Err(ApiError::Unauthorized)
        ));
        let who = a.bearer(&bearer("oper")).unwrap();
        assert_eq!((&*who.name, who.role), ("ops", Role::Operator));
        assert!(!who.sees_pii());
        assert!(a.bearer(&bearer("root")).unwrap().sees_pii());
    }

    #[tokio::test]
    async fn a_role_below_the_need_is_forbidden() {
        let a = access();
        let viewer = a.bearer(&bearer("view")).unwrap();
        let e = a
            .require(&viewer, Role::Operator, true, "POST /x")
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ApiError::Forbidden {
                need: Role::Operator,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "the token `vic` has the role viewer; this needs operator"
        );
        assert!(a
            .require(&viewer, Role::Viewer, false, "GET /x")
            .await
            .is_ok());
        let admin = a.bearer(&bearer("root")).unwrap();
        assert!(a
            .require(&admin, Role::Operator, true, "POST /x")
            .await
            .is_ok());
    }

    #[test]
    fn sessions_prove_themselves_until_they_expire() {
        let a = access();
        let ops = a.bearer(&bearer("oper")).unwrap();
        let cookie = a.session_cookie(&ops, 2_000).unwrap();
        assert!(cookie.starts_with("ops.2000."));
        assert_eq!(a.session(&cookie, 1_999), Some(ops.clone()));
        assert_eq!(a.session(&cookie, 2_000), None, "expired");
        // A forged role, expiry or name does not verify.
        let forged = cookie.replacen("ops.2000", "ops.9000", 1);
        assert_eq!(a.session(&forged, 1_000), None);
        let forged = cookie.replacen("ops.", "admin.", 1);
        assert_eq!(a.session(&forged, 1_000), None);
        assert_eq!(a.session("garbage", 1_000), None);
        // Another hub with the token rotated refuses it.
        let rotated = Access::new(
            vec![AccessToken {
                name: "ops".into(),
                secret: "new".into(),
                role: Role::Operator,
            }],
            None,
        );
        assert_eq!(rotated.session(&cookie, 1_000), None);
        // CSRF tokens belong to one session.
        let csrf = a.csrf(&cookie).unwrap();
        assert!(a.csrf_ok(&cookie, &csrf));
        let other = a.session_cookie(&ops, 3_000).unwrap();
        assert!(!a.csrf_ok(&other, &csrf));
        assert!(!a.csrf_ok(&cookie, ""));
    }

    #[test]
    fn audit_ids_sort_in_time_order() {
        let a = audit_id(5);
        let b = audit_id(5);
        let c = audit_id(40);
        assert!(a < b && b < c, "{a} {b} {c}");
    }
}
