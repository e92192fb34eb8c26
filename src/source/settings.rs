//! What every source's `[source]` section has besides its own settings: a password
//! setting, include/exclude patterns and the snapshot settings. A source's config
//! implements the three accessors; reading, checking and the derived values live here
//! once.

use std::path::Path;

use crate::settings::{ConfigError, PasswordSetting, Secret};
use crate::snapshot::SnapshotMode;
use crate::source::filter::TableFilter;

pub trait CommonSettings {
    /// `password`, `password_env`, `password_file`.
    fn password_setting(&self) -> PasswordSetting<'_>;

    /// `include` / `exclude`, as this source's filter reads them.
    fn table_filter(&self) -> Result<TableFilter, String>;

    /// `snapshot`, `snapshot_chunk_rows`, `snapshot_parallel_tables`.
    fn snapshot_fields(&self) -> (SnapshotMode, u64, usize);

    /// The password, read now from its env var or file.
    fn password(&self) -> Result<Option<Secret>, String> {
        self.password_setting().resolve("[source]")
    }

    fn filter(&self) -> TableFilter {
        self.table_filter().expect("validated when loaded")
    }

    /// `resync`: the server lost the stored position (`when_needed`).
    fn snapshot_settings(
        &self,
        first_start: bool,
        resync: bool,
    ) -> crate::snapshot::reader::Settings {
        let (mode, chunk_rows, parallel_tables) = self.snapshot_fields();
        crate::snapshot::reader::Settings {
            mode,
            chunk_rows,
            parallel_tables,
            first_start,
            resync,
        }
    }

    /// Checks the common settings of connector file `path` (text `text`).
    fn validate_common(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if let Err(e) = self.table_filter() {
            return Err(ConfigError::at_key(
                path,
                text,
                "include",
                format!("[source] {e}"),
            ));
        }
        let (_, chunk_rows, parallel_tables) = self.snapshot_fields();
        if let Err((key, msg)) = crate::snapshot::check_settings(chunk_rows, parallel_tables) {
            return Err(ConfigError::at_key(path, text, key, msg));
        }
        self.password_setting().check_one(path, text, "[source]")
    }
}

/// Whether `host` names this machine (plain text there never crosses a network).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
