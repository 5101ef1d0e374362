//! Identifiers: a kind (`user_id`, `email`, ...) and a normalised value. A leaf value type that
//! identity, the store and the faces share; no I/O.

/// One identifier of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identifier {
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: &str, value: &str) -> Identifier {
        Identifier {
            kind: kind.to_string(),
            value: normalize(kind, value),
        }
    }

    /// Parses `kind:value` as the Profiles API and CLI take it.
    pub fn parse(text: &str) -> Option<Identifier> {
        let (kind, value) = text.split_once(':')?;
        (!kind.is_empty() && !value.is_empty()).then(|| Identifier::new(kind, value))
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Emails match case-insensitively; other kinds as given, trimmed.
fn normalize(kind: &str, value: &str) -> String {
    let v = value.trim();
    if kind == "email" {
        v.to_lowercase()
    } else {
        v.to_string()
    }
}
