//! Secrets from configs (passwords, tokens, keys, webhook URLs with a token in
//! them): a type whose `Debug` and `Serialize` print `<redacted>`, so that logging
//! or dumping a config does not leak them, and the one way to read a secret given
//! inline or in a file.

use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value. Its `Debug` and `Serialize` print `<redacted>`; only
/// [`expose`](Self::expose) gives it out.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Why a secret could not be read: `field` names the config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SecretError {
    /// The config field, e.g. `token_file`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Resolves a secret given inline (`field`) or in a file (`file_field`): at most one of
/// them may be set. A file's trailing newline is dropped (editors and `echo` add one).
/// Returns `None` when neither is set; an empty secret is an error.
pub fn resolve(
    inline: Option<&Secret>,
    file: Option<&Path>,
    field: &'static str,
    file_field: &'static str,
) -> Result<Option<Secret>, SecretError> {
    let err = |field, message: String| SecretError { field, message };
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(err(
                file_field,
                format!("set either {field} or {file_field}, not both"),
            ))
        }
        (Some(secret), None) => secret.expose().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| err(file_field, format!("read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        let which = if file.is_some() { file_field } else { field };
        return Err(err(which, "is empty".into()));
    }
    Ok(Some(Secret(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_resolved() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");

        let dir = std::env::temp_dir().join(format!("etcdmon-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let get = |inline, file| {
            resolve(inline, file, "key", "key_file").map(|s| s.map(|s| s.expose().to_owned()))
        };
        assert_eq!(
            get(Some(&secret), None).unwrap().as_deref(),
            Some("hunter2")
        );
        assert_eq!(
            get(None, Some(&file)).unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(get(None, None).unwrap(), None);
        assert_eq!(
            get(Some(&secret), Some(&file)).unwrap_err().field,
            "key_file"
        );
        let nope = dir.join("nope");
        let missing = get(None, Some(&nope)).unwrap_err();
        assert!(
            missing.to_string().starts_with("key_file: read "),
            "{missing}"
        );
        assert_eq!(
            get(Some(&Secret::new("")), None).unwrap_err().to_string(),
            "key: is empty"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
