//! Configuration primitives every room uses: errors that name `file:line:column`, TOML
//! parsing that keeps those locations, and secrets that never reach a log. A leaf: it
//! imports nothing of the crate, so a component's config can use it without importing
//! the connector file's assembly (`config`), which imports every component.

mod secret;

pub use secret::{PasswordSetting, Secret};

use std::fmt;
use std::path::{Path, PathBuf};

/// A config error, rendered as `file:line:column: message`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line_col: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl ConfigError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line_col: None,
            message: message.into(),
        }
    }

    /// An error located at the first occurrence of `key = ` in the file (best effort).
    pub fn at_key(path: &Path, text: &str, key: &str, message: impl Into<String>) -> Self {
        let line_col = text.lines().enumerate().find_map(|(i, line)| {
            let t = line.trim_start();
            let rest = t.strip_prefix(key)?;
            rest.trim_start()
                .starts_with('=')
                .then(|| (i + 1, line.len() - t.len() + 1))
        });
        ConfigError {
            path: path.to_path_buf(),
            line_col,
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|nl| before.len() - nl)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Parses TOML text into `T`, turning parser errors into `file:line:column` errors.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line_col: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim().to_string(),
    })
}
