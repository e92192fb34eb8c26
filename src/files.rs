//! Private files: the directories and files that hold row data (the state dir and
//! offsets store, log streams, the quarantine and dead-letter streams; row values,
//! personal data, the track enricher's location history) are created for their owner
//! only, 0600 files in 0700 directories, unless a `file_mode` setting widens them on
//! purpose. A leaf: it imports nothing of the crate.

use std::fs::{File, OpenOptions};
use std::path::Path;

use serde::de::{Deserialize, Deserializer, Error};

/// The permission bits of the files tributary writes; their directories get the same
/// bits plus search (x) wherever read is granted (0640 -> 0750). The process umask can
/// only narrow what a new file gets; existing directories and files are set to the mode
/// when tributary opens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o600)
    }
}

impl FileMode {
    /// `0600`, `600` or `0o600`: octal permission bits that leave the owner read and
    /// write, grant nothing else to the owner, and no execute, setuid or sticky bits.
    pub fn parse(text: &str) -> Result<FileMode, String> {
        let digits = text.trim_start_matches("0o");
        let bits = u32::from_str_radix(digits, 8)
            .map_err(|_| format!("file_mode `{text}` is not an octal mode like \"0600\""))?;
        if bits > 0o777 || bits & 0o111 != 0 {
            return Err(format!(
                "file_mode `{text}` must be read/write bits only (like \"0600\" or \"0640\"), no execute or special bits"
            ));
        }
        if bits & 0o600 != 0o600 {
            return Err(format!(
                "file_mode `{text}` must let the owner read and write (0600 at least)"
            ));
        }
        Ok(FileMode(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// The directories' bits: the files' plus x wherever r is granted.
    pub fn dir_bits(self) -> u32 {
        self.0 | ((self.0 & 0o444) >> 2)
    }

    /// Creates `dir` (and missing parents, with the same bits) and sets its bits.
    pub fn create_dir_all(self, dir: &Path) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_bits())
                .create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(self.dir_bits()))
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir)
    }

    /// Options that create a file with these bits.
    pub fn options(self) -> OpenOptions {
        let mut o = OpenOptions::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(self.0);
        }
        o
    }

    /// Sets an existing file's bits (one written before, perhaps by an older release).
    pub fn apply(self, file: &File) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(self.0))
        }
        #[cfg(not(unix))]
        Ok(())
    }

    /// Writes `body` to `path` through a temporary file renamed over it, with these
    /// bits.
    pub fn write_atomically(self, path: &Path, body: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = self
            .options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(body)?;
        self.apply(&f)?;
        std::fs::rename(&tmp, path)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        FileMode::parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_give_their_directories_search_bits() {
        assert_eq!(FileMode::default().bits(), 0o600);
        assert_eq!(FileMode::default().dir_bits(), 0o700);
        let wide = FileMode::parse("0640").unwrap();
        assert_eq!((wide.bits(), wide.dir_bits()), (0o640, 0o750));
        assert_eq!(FileMode::parse("0o644").unwrap().dir_bits(), 0o755);
        for bad in ["0755", "0400", "1600", "rw", "0o7777", ""] {
            assert!(FileMode::parse(bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn directories_and_files_get_the_mode_even_when_they_existed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mode = FileMode::default();
        mode.create_dir_all(&dir).unwrap();
        let bits = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(bits(&dir), 0o700);
        let file = dir.join("f");
        mode.write_atomically(&file, b"x").unwrap();
        assert_eq!(bits(&file), 0o600);
    }
}
