//! Row values in logs and error messages: hidden unless the operator asks for them
//! with `--log-row-values`.
//!
//! Logs travel further than the data they describe (journald, log shippers, support
//! tickets), and row values are personal data more often than not. So a message that
//! would quote a value, a statement or a reason a server gave about a value says that
//! it is hidden instead. Dead-letter and quarantine records keep everything: they hold
//! the rows anyway, in private files.

use std::sync::atomic::{AtomicBool, Ordering};

static SHOWN: AtomicBool = AtomicBool::new(false);

/// Set once at startup from `--log-row-values`.
pub fn show_row_values(on: bool) {
    SHOWN.store(on, Ordering::Relaxed);
}

pub fn row_values_shown() -> bool {
    SHOWN.load(Ordering::Relaxed)
}

/// A value for a message: quoted when values may be shown.
pub fn value(text: &str) -> String {
    if row_values_shown() {
        format!("`{text}`")
    } else {
        "a value (--log-row-values shows it)".into()
    }
}

/// Text that may hold row values (a server's reason about a document, an expression's
/// error): itself when values may be shown.
pub fn text(text: &str) -> String {
    if row_values_shown() {
        text.to_string()
    } else {
        "(may quote row values: --log-row-values shows it)".into()
    }
}

/// An Elasticsearch error body for a message: itself when values may be shown, else
/// its error type (`resource_already_exists_exception`: a class name, never a value),
/// which is what tells an operator what went wrong.
pub fn server_error(body: &str) -> String {
    if row_values_shown() {
        return body.to_string();
    }
    let kind = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["type"].as_str().map(str::to_string));
    match kind {
        Some(kind) => {
            format!("{kind} (the reason may quote row values: --log-row-values shows it)")
        }
        None => text(body),
    }
}

/// A SQL statement for a message: its first `words` words when values are hidden
/// (`CREATE USER ...`; literals, passwords included, come later), else its first 120
/// characters.
pub fn statement(sql: &str, words: usize) -> String {
    if row_values_shown() {
        return sql.chars().take(120).collect();
    }
    let head: Vec<&str> = sql.split_whitespace().take(words).collect();
    format!("{} ...", head.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_hidden_unless_shown() {
        show_row_values(false);
        assert!(!value("alice@example.com").contains("alice"));
        assert!(!text("failed to parse field [n] value 'alice'").contains("alice"));
        assert_eq!(
            statement("CREATE USER 'u'@'%' IDENTIFIED BY 'pw'", 2),
            "CREATE USER ..."
        );
        let refused = r#"{"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] value 'alice'"},"status":400}"#;
        let shown = server_error(refused);
        assert!(shown.starts_with("mapper_parsing_exception") && !shown.contains("alice"));
        assert!(!server_error("alice").contains("alice"));
        show_row_values(true);
        assert_eq!(value("alice"), "`alice`");
        assert!(statement("CREATE USER 'u'@'%' IDENTIFIED BY 'pw'", 2).contains("'pw'"));
        show_row_values(false);
    }
}
