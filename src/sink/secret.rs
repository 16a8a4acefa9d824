//! Secrets of the sinks and the `${NAME}` references of their settings: one secret reference
//! (an environment variable or a file, never the configuration file itself), one trimming
//! rule, one `${NAME}` scanner for checking and for expanding.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret, read from an environment variable or a file (never written in the config).
/// Exactly one of `env` and `file`. Whitespace around the value (a file's trailing newline)
/// is not part of the secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret.
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// A reference from a pair of `…Env` / `…File` settings (the Kafka sink's form).
    pub fn of(env: Option<&str>, file: Option<&std::path::Path>) -> Self {
        Self {
            env: env.map(str::to_owned),
            file: file.map(ToOwned::to_owned),
        }
    }

    /// Reads the secret from the process environment or its file; `Err` says which variable
    /// or file failed.
    pub fn read(&self) -> Result<String, String> {
        self.read_with(&|name| std::env::var(name).ok())
    }

    /// [`SecretRef::read`] with the environment given as a lookup (tests pass their own).
    pub fn read_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => {
                env(var).ok_or_else(|| format!("environment variable {var} is not set"))?
            }
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
            }
            _ => return Err("exactly one of env and file must be set".into()),
        };
        Ok(value.trim().to_owned())
    }
}

/// One piece of a value with `${NAME}` references.
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `value` into text and `${NAME}` references; `Err` for an unclosed `${` or a name
/// that is not an environment variable name.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push(Piece::Text(&rest[..i]));
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?} has an unclosed ${{"))?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{value:?}: ${{{name}}} is not an environment variable name"
            ));
        }
        out.push(Piece::Var(name));
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Checks the `${NAME}` references of `value` (closed, valid names) without reading them.
pub fn check_env_references(value: &str) -> Result<(), String> {
    pieces(value).map(|_| ())
}

/// Replaces every `${NAME}` in `value` with the variable's value; a missing one is an error.
pub fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    for piece in pieces(value)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => out.push_str(
                &env(name).ok_or_else(|| format!("environment variable {name} is not set"))?,
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PASS").then(|| " s3cret\n".to_owned())
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "  from-file\n").unwrap();
        assert_eq!(
            SecretRef::of(Some("PASS"), None).read_with(&env).unwrap(),
            "s3cret"
        );
        assert_eq!(
            SecretRef::of(None, Some(&f)).read_with(&env).unwrap(),
            "from-file"
        );
        let e = SecretRef::of(Some("NOPE"), None)
            .read_with(&env)
            .unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(
            SecretRef::of(Some("PASS"), Some(&f))
                .read_with(&env)
                .is_err()
        );
        assert!(SecretRef::default().read_with(&env).is_err());
    }

    #[test]
    fn env_references_are_checked_and_expanded_by_one_scanner() {
        assert_eq!(expand_env("a${PASS}b", &env).unwrap(), "a s3cret\nb");
        assert_eq!(expand_env("plain", &env).unwrap(), "plain");
        assert!(
            expand_env("${X}", &env)
                .unwrap_err()
                .contains("X is not set")
        );
        for bad in ["${X", "${}", "${A-B}"] {
            assert!(check_env_references(bad).is_err(), "{bad}");
            assert!(expand_env(bad, &env).is_err(), "{bad}");
        }
        assert!(check_env_references("x=${PASS}!").is_ok());
    }
}
