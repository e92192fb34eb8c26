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

/// From a string in a config file: the value is a `Secret` from parsing on, so no
/// config struct's `Debug` can show it.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A config section's password settings: exactly one of `password_env`,
/// `password_file`, `password` (the last for local demos only). Each section that
/// takes a password hands out this view, so reading, checking and describing the
/// password live here once.
#[derive(Clone, Copy)]
pub struct PasswordSetting<'a> {
    pub password: Option<&'a Secret>,
    pub env: Option<&'a str>,
    pub file: Option<&'a std::path::Path>,
}

impl PasswordSetting<'_> {
    fn given(&self) -> usize {
        [
            self.password.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// The password, read now from its env var or file; errors begin with `section`.
    pub fn resolve(&self, section: &str) -> Result<Option<Secret>, String> {
        let fail = |m: String| format!("{section} {m}");
        if self.given() > 1 {
            return Err(fail(
                "set only one of `password_env`, `password_file` and `password`".into(),
            ));
        }
        if let Some(var) = self.env {
            return std::env::var(var).map(|v| Some(Secret(v))).map_err(|_| {
                fail(format!(
                    "`password_env` names the environment variable {var}, which is not set"
                ))
            });
        }
        if let Some(path) = self.file {
            return std::fs::read_to_string(path)
                .map(|s| Some(Secret(s.trim_end_matches(['\n', '\r']).to_string())))
                .map_err(|e| {
                    fail(format!(
                        "cannot read `password_file` {}: {e}",
                        path.display()
                    ))
                });
        }
        Ok(self.password.cloned())
    }

    /// Where the password came from, for "access denied" messages (never the password).
    pub fn origin(&self) -> String {
        if let Some(v) = self.env {
            format!("from environment variable {v}")
        } else if let Some(f) = self.file {
            format!("from file {}", f.display())
        } else if self.password.is_some() {
            "from `password`".into()
        } else {
            "none given: set password_env or password_file".into()
        }
    }

    /// At load time: more than one way given is an error pointing at `password_env`.
    pub(crate) fn check_one(
        &self,
        path: &std::path::Path,
        text: &str,
        section: &str,
    ) -> Result<(), super::ConfigError> {
        if self.given() > 1 {
            return Err(super::ConfigError::at_key(
                path,
                text,
                "password_env",
                format!("{section} set only one of password_env, password_file and password"),
            ));
        }
        Ok(())
    }
}
