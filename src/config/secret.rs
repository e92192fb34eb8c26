//! Credentials: read from an environment variable or a file, never printed.

use std::fmt;

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a password comes from: exactly one of `password_env`, `password_file`,
/// `password` (the last for local demos only).
pub fn resolve_password(
    password: Option<&str>,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, String> {
    let given = [password.is_some(), env.is_some(), file.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given > 1 {
        return Err("set only one of `password_env`, `password_file` and `password`".into());
    }
    if let Some(var) = env {
        return std::env::var(var).map(|v| Some(Secret(v))).map_err(|_| {
            format!("`password_env` names the environment variable {var}, which is not set")
        });
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(Secret(s.trim_end_matches(['\n', '\r']).to_string())))
            .map_err(|e| format!("cannot read `password_file` {}: {e}", path.display()));
    }
    Ok(password.map(Secret::new))
}

/// Where the password came from, for "access denied" messages (never the password).
pub fn password_origin(
    password: Option<&str>,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> String {
    if let Some(v) = env {
        format!("from environment variable {v}")
    } else if let Some(f) = file {
        format!("from file {}", f.display())
    } else if password.is_some() {
        "from `password`".into()
    } else {
        "none given: set password_env or password_file".into()
    }
}

/// `[source]` may name its password one way only; the error points at `password_env`.
pub(crate) fn check_one_password(
    path: &std::path::Path,
    text: &str,
    password: bool,
    env: bool,
    file: bool,
) -> Result<(), super::ConfigError> {
    if [password, env, file].iter().filter(|g| **g).count() > 1 {
        return Err(super::ConfigError::at_key(
            path,
            text,
            "password_env",
            "[source] set only one of password_env, password_file and password",
        ));
    }
    Ok(())
}
