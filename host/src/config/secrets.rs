//! Secret values named in the project file or on the command line: `${ENV_VAR}`, `file:PATH`,
//! or the literal text. Resolution happens here only; errors name the secret, never its value.

use anyhow::Context as _;

/// `${ENV_VAR}`, `file:PATH`, or the literal value. Errors name the secret, never its value.
pub fn resolve_secret(name: &str, spec: &str) -> anyhow::Result<String> {
    if let Some(var) = spec.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
        return std::env::var(var)
            .with_context(|| format!("secret `{name}`: environment variable {var} is not set"));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .with_context(|| format!("secret `{name}`: cannot read {path}"));
    }
    Ok(spec.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_file() {
        assert_eq!(resolve_secret("k", "plain").unwrap(), "plain");
        let err = resolve_secret("k", "${SWITCHYARD_TEST_UNSET_VAR}").unwrap_err();
        assert!(
            format!("{err:#}").starts_with(
                "secret `k`: environment variable SWITCHYARD_TEST_UNSET_VAR is not set"
            ),
            "{err:#}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "s3cret\n").unwrap();
        let spec = format!("file:{}", file.path().display());
        assert_eq!(resolve_secret("k", &spec).unwrap(), "s3cret");
    }
}
