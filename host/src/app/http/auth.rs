//! Who may use the admin APIs: one extractor, [`AdminAuth`], checks `[hub] admin_token` as a
//! bearer token before a handler runs, so no handler checks it by hand.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap};

use super::ApiError;

/// `[hub] admin_token`, resolved; None disables the admin APIs (every admin route answers 403).
#[derive(Clone, Default)]
pub struct AdminToken(pub Option<Arc<str>>);

/// Proof that the request carried the admin token. Put it first among a handler's arguments:
/// extractors run in order, and the token is checked before anything the request names.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl<S> FromRequestParts<S> for AdminAuth
where
    AdminToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        verify(AdminToken::from_ref(state).0.as_deref(), &parts.headers).map(|()| AdminAuth)
    }
}

/// The check [`AdminAuth`] makes.
fn verify(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        let mut h = HeaderMap::new();
        assert!(matches!(verify(None, &h), Err(ApiError::AdminDisabled)));
        assert!(matches!(verify(Some("t"), &h), Err(ApiError::Unauthorized)));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(matches!(verify(Some("t"), &h), Err(ApiError::Unauthorized)));
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(verify(Some("t"), &h).is_ok());
    }
}
