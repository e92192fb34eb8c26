//! Character sets of text columns: collation id -> decoder.
//!
//! The server's own collation table (information_schema.COLLATIONS) is loaded at connect
//! time, so MariaDB's newer collation ids work; mysql_common's compiled-in table is the
//! fallback.

use std::collections::HashMap;

use mysql_common::collations::{Collation, CollationId};

/// How the bytes of a character column become a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3, ascii: already UTF-8 (validated).
    Utf8,
    /// `binary`: not text; emitted as base64.
    Binary,
    /// Any other character set encoding_rs knows (latin1 is windows-1252 in MySQL).
    Other(&'static encoding_rs::Encoding),
}

/// Maps collation ids to character sets and their widest character.
#[derive(Debug, Clone, Default)]
pub struct Collations {
    by_id: HashMap<u16, (String, Option<u8>)>,
}

impl Collations {
    /// From the server's collation table: (id, character set, its MAXLEN).
    pub fn from_server(rows: impl IntoIterator<Item = (u16, String, Option<u8>)>) -> Self {
        Collations {
            by_id: rows
                .into_iter()
                .map(|(id, cs, max)| (id, (cs, max)))
                .collect(),
        }
    }

    /// Character set name of a collation id (`utf8mb4`, `latin1`, `binary`, ...).
    pub fn charset_name(&self, id: u16) -> String {
        if let Some((n, _)) = self.by_id.get(&id) {
            return n.clone();
        }
        Collation::from(CollationId::from(id)).charset.to_string()
    }

    /// The most bytes one character of a collation id's character set takes (4 for
    /// utf8mb4): table maps give text columns' lengths in bytes, DDL in characters.
    pub fn bytes_per_char(&self, id: u16) -> Option<u8> {
        if let Some((_, max)) = self.by_id.get(&id) {
            return *max;
        }
        Some(Collation::from(CollationId::from(id)).max_len).filter(|&m| m > 0)
    }

    pub fn charset(&self, id: u16) -> Result<Charset, String> {
        charset_by_name(&self.charset_name(id)).ok_or_else(|| {
            format!(
                "character set of collation id {id} ({}) is not supported",
                self.charset_name(id)
            )
        })
    }
}

pub fn charset_by_name(name: &str) -> Option<Charset> {
    Some(match name {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Charset::Utf8,
        "binary" => Charset::Binary,
        "latin1" => Charset::Other(encoding_rs::WINDOWS_1252),
        "latin2" => Charset::Other(encoding_rs::ISO_8859_2),
        "cp1250" => Charset::Other(encoding_rs::WINDOWS_1250),
        "cp1251" => Charset::Other(encoding_rs::WINDOWS_1251),
        "cp1256" => Charset::Other(encoding_rs::WINDOWS_1256),
        "cp1257" => Charset::Other(encoding_rs::WINDOWS_1257),
        "greek" => Charset::Other(encoding_rs::ISO_8859_7),
        "hebrew" => Charset::Other(encoding_rs::ISO_8859_8),
        "koi8r" => Charset::Other(encoding_rs::KOI8_R),
        "koi8u" => Charset::Other(encoding_rs::KOI8_U),
        "sjis" | "cp932" => Charset::Other(encoding_rs::SHIFT_JIS),
        "ujis" | "eucjpms" => Charset::Other(encoding_rs::EUC_JP),
        "euckr" => Charset::Other(encoding_rs::EUC_KR),
        "gbk" | "gb2312" => Charset::Other(encoding_rs::GBK),
        "gb18030" => Charset::Other(encoding_rs::GB18030),
        "big5" => Charset::Other(encoding_rs::BIG5),
        "utf16" => Charset::Other(encoding_rs::UTF_16BE),
        "utf16le" => Charset::Other(encoding_rs::UTF_16LE),
        _ => return None,
    })
}

impl Charset {
    /// Decodes column bytes; `Err` when they are not valid in the character set.
    pub fn decode(self, bytes: Vec<u8>) -> Result<String, Vec<u8>> {
        match self {
            Charset::Utf8 | Charset::Binary => String::from_utf8(bytes).map_err(|e| e.into_bytes()),
            Charset::Other(enc) => {
                let (s, had_errors) = enc.decode_without_bom_handling(&bytes);
                if had_errors {
                    Err(bytes)
                } else {
                    Ok(s.into_owned())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_windows_1252() {
        let cs = Collations::default().charset(8).unwrap(); // latin1_swedish_ci
        assert_eq!(
            cs.decode(vec![0x63, 0x61, 0x66, 0xe9, 0x80]).unwrap(),
            "café€"
        );
    }

    #[test]
    fn utf8mb4_and_binary() {
        let c = Collations::default();
        assert_eq!(c.charset(45).unwrap(), Charset::Utf8);
        assert_eq!(c.charset(63).unwrap(), Charset::Binary);
        assert!(Charset::Utf8.decode(vec![0xff]).is_err());
        // Without the server's table: mysql_common's compiled-in one.
        assert_eq!(c.bytes_per_char(45), Some(4));
        assert_eq!(c.bytes_per_char(33), Some(3)); // utf8mb3_general_ci
        assert_eq!(c.bytes_per_char(63), Some(1));
    }

    #[test]
    fn server_table_wins() {
        let c = Collations::from_server([(2304u16, "utf8mb4".to_string(), Some(4))]);
        assert_eq!(c.charset(2304).unwrap(), Charset::Utf8);
        assert_eq!(c.bytes_per_char(2304), Some(4));
    }
}
