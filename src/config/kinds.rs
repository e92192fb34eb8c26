//! `kind`-tagged sections without losing error locations.
//!
//! serde's internally tagged enums buffer the whole section before looking at `kind`,
//! and the buffer has no spans: every error would point at the section header. So a
//! first pass reads only the `kind` of `[source]` and each `[[sink]]` (with spans), and
//! the real pass deserializes each section straight into its concrete type.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, Error};
use serde::Deserialize as DeriveDeserialize;

use super::{
    line_col, parse_toml, ConfigError, SinkConfig, SourceConfig, SINK_KINDS, SOURCE_KINDS,
};
use crate::enrich::config::KINDS as ENRICH_KINDS;
use crate::enrich::EnrichConfig;

#[derive(DeriveDeserialize)]
struct KindOnly {
    kind: Option<toml::Spanned<String>>,
}

#[derive(DeriveDeserialize)]
struct Plan {
    source: Option<KindOnly>,
    #[serde(default)]
    sink: Vec<KindOnly>,
    #[serde(default)]
    enrich: Vec<KindOnly>,
}

#[derive(Default)]
struct KindPlan {
    source: Option<String>,
    sinks: VecDeque<String>,
    enrich: VecDeque<String>,
}

thread_local! {
    static PLAN: RefCell<KindPlan> = RefCell::new(KindPlan::default());
}

/// Runs `parse` with the kinds of the file's sections known.
pub fn with_kind_plan<T>(
    path: &Path,
    text: &str,
    parse: impl FnOnce() -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    // A file that is not even TOML reports its syntax error from the real pass.
    let plan: Plan = match parse_toml(path, text) {
        Ok(p) => p,
        Err(_) => return parse(),
    };
    let check = |k: &KindOnly, section: &str, allowed: &[&str]| -> Result<String, ConfigError> {
        match &k.kind {
            None => Err(ConfigError::at_key(
                path,
                text,
                &format!("[{section}"),
                format!("{section} needs `kind`, one of: {}", allowed.join(", ")),
            )
            .or_section(path, text, section)),
            Some(s) if allowed.contains(&s.get_ref().as_str()) => Ok(s.get_ref().clone()),
            Some(s) => Err(ConfigError {
                path: path.to_path_buf(),
                line_col: Some(line_col(text, s.span().start)),
                message: format!(
                    "unknown {section} kind `{}`, expected one of: {}",
                    s.get_ref(),
                    allowed.join(", ")
                ),
            }),
        }
    };
    let mut kp = KindPlan::default();
    if let Some(s) = &plan.source {
        kp.source = Some(check(s, "source", SOURCE_KINDS)?);
    }
    for s in &plan.sink {
        kp.sinks.push_back(check(s, "sink", SINK_KINDS)?);
    }
    for s in &plan.enrich {
        kp.enrich.push_back(check(s, "enrich", ENRICH_KINDS)?);
    }
    PLAN.with(|p| *p.borrow_mut() = kp);
    let out = parse();
    PLAN.with(|p| *p.borrow_mut() = KindPlan::default());
    out
}

impl ConfigError {
    /// Points at the section header when no better place is known.
    fn or_section(mut self, _path: &Path, text: &str, section: &str) -> Self {
        if self.line_col.is_none() {
            let header = [format!("[{section}]"), format!("[[{section}]]")];
            self.line_col = text
                .lines()
                .position(|l| header.iter().any(|h| l.trim() == h))
                .map(|i| (i + 1, 1));
        }
        self
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = PLAN.with(|p| p.borrow().source.clone());
        match SourceConfig::of_kind(kind.as_deref().unwrap_or(""), d)? {
            Some(source) => Ok(source),
            None => Err(D::Error::custom(format!(
                "[source] needs `kind`, one of: {}",
                SOURCE_KINDS.join(", ")
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = PLAN.with(|p| p.borrow_mut().sinks.pop_front());
        match SinkConfig::of_kind(kind.as_deref().unwrap_or(""), d)? {
            Some(sink) => Ok(sink),
            None => Err(D::Error::custom(format!(
                "[[sink]] needs `kind`, one of: {}",
                SINK_KINDS.join(", ")
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for EnrichConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = PLAN.with(|p| p.borrow_mut().enrich.pop_front());
        crate::enrich::config::deserialize(kind.as_deref().unwrap_or(""), d)
    }
}
