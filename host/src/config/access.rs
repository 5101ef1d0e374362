//! `[hub] admin_token` and `[hub.tokens.NAME]`: who may use the admin API and the console, each
//! token with a [`Role`]. Resolved once here; `app::http::auth` only compares.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::secrets;

/// What a token may do. Ordered: each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything; raw personal data (identifier values, personal traits) is masked.
    Viewer,
    /// A viewer that may also run syncs and sources, approve removals and replay dead letters.
    Operator,
    /// An operator that may also erase profiles and see personal data unmasked.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[hub.tokens.NAME]`: `token = "${ADA_TOKEN}"` (or `file:PATH`, or a literal), `role = "operator"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    pub role: Role,
}

/// One resolved token: the name the audit log records, the secret, the role.
#[derive(Clone)]
pub struct AccessToken {
    pub name: String,
    pub secret: String,
    pub role: Role,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({}, {}, <secret>)", self.name, self.role)
    }
}

/// The name `[hub] admin_token` goes by in the audit log.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// Every token, secrets resolved: `admin_token` as an admin named [`ADMIN_TOKEN_NAME`], then the
/// named ones. Two tokens with the same secret would make the audit log's "who" ambiguous (and
/// give one of them the other's role), so that is an error, as is an empty secret.
pub fn resolve(
    admin_token: Option<&str>,
    tokens: &BTreeMap<String, TokenConfig>,
) -> anyhow::Result<Vec<AccessToken>> {
    let mut out = Vec::new();
    if let Some(spec) = admin_token {
        if tokens.contains_key(ADMIN_TOKEN_NAME) {
            anyhow::bail!(
                "[hub.tokens.{ADMIN_TOKEN_NAME}] clashes with [hub] admin_token, which goes by that name: rename the token"
            );
        }
        out.push(AccessToken {
            name: ADMIN_TOKEN_NAME.into(),
            secret: secrets::resolve_secret("hub.admin_token", spec)?,
            role: Role::Admin,
        });
    }
    for (name, t) in tokens {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            anyhow::bail!(
                "[hub.tokens.{name}]: a token name may use letters, digits, '-', '_', '.' and '@'"
            );
        }
        out.push(AccessToken {
            name: name.clone(),
            secret: secrets::resolve_secret(&format!("hub.tokens.{name}.token"), &t.token)?,
            role: t.role,
        });
    }
    for (i, t) in out.iter().enumerate() {
        if t.secret.trim().is_empty() {
            anyhow::bail!(
                "[hub] the token of `{}` is empty: give it a long random value",
                t.name
            );
        }
        if let Some(other) = out[..i].iter().find(|o| o.secret == t.secret) {
            anyhow::bail!(
                "[hub] `{}` and `{}` have the same token: give each its own, so the audit log can tell them apart",
                other.name,
                t.name
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(entries: &[(&str, &str, Role)]) -> BTreeMap<String, TokenConfig> {
        entries
            .iter()
            .map(|(n, t, r)| {
                (
                    n.to_string(),
                    TokenConfig {
                        token: t.to_string(),
                        role: *r,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn admin_token_is_an_admin_named_admin_beside_named_tokens() {
        let all = resolve(
            Some("root-secret"),
            &tokens(&[
                ("ada", "ada-secret", Role::Viewer),
                ("ops", "ops-secret", Role::Operator),
            ]),
        )
        .unwrap();
        let seen: Vec<_> = all
            .iter()
            .map(|t| (t.name.as_str(), t.secret.as_str(), t.role))
            .collect();
        assert_eq!(
            seen,
            [
                ("admin", "root-secret", Role::Admin),
                ("ada", "ada-secret", Role::Viewer),
                ("ops", "ops-secret", Role::Operator)
            ]
        );
        assert!(
            !format!("{:?}", all[0]).contains("root-secret"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn shared_empty_or_clashing_tokens_are_refused() {
        let e = resolve(
            None,
            &tokens(&[("a", "same", Role::Viewer), ("b", "same", Role::Admin)]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("`a` and `b` have the same token"),
            "{e}"
        );
        let e = resolve(None, &tokens(&[("a", " ", Role::Viewer)])).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = resolve(Some("x"), &tokens(&[("admin", "y", Role::Viewer)])).unwrap_err();
        assert!(e.to_string().contains("clashes"), "{e}");
        let e = resolve(None, &tokens(&[("a b", "y", Role::Viewer)])).unwrap_err();
        assert!(e.to_string().contains("token name"), "{e}");
    }

    #[test]
    fn roles_are_ordered_and_parsed_lowercase() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        let t: TokenConfig = toml::from_str("token = \"x\"\nrole = \"operator\"").unwrap();
        assert_eq!(t.role, Role::Operator);
        assert!(toml::from_str::<TokenConfig>("token = \"x\"\nrole = \"root\"").is_err());
    }
}
