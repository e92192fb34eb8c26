//! Table metadata from table-map events (binlog_row_metadata=FULL), decoded once per
//! table map and shared by every row of the table.

use std::collections::HashSet;
use std::sync::Arc;

use mysql_common::binlog::events::{
    ColumnCharsets, DefaultCharset, OptionalMetadataField, TableMapEvent,
};
use mysql_common::constants::ColumnType;

use super::charset::{Charset, Collations};
use crate::event::{Column, TableSchema};

/// How one column's binlog value is decoded.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// The real type (ENUM/SET resolved from MYSQL_TYPE_STRING).
    pub col_type: ColumnType,
    /// The column's table-map metadata bytes.
    pub meta: Vec<u8>,
    pub unsigned: bool,
    /// Character set of text, ENUM and SET columns.
    pub charset: Option<Charset>,
    /// ENUM and SET labels, in definition order.
    pub labels: Vec<String>,
    /// Declared byte length of CHAR/BINARY columns (BINARY values are zero-padded to it).
    pub fixed_len: usize,
    /// Fractional-second digits of TIME/DATETIME/TIMESTAMP.
    pub fsp: u8,
    /// MariaDB JSON (LONGTEXT with a json_valid check): emitted as nested JSON.
    pub json: bool,
    /// The most bytes a character of the column's character set takes (the table map
    /// gives CHAR and VARCHAR lengths in bytes; the type name says characters).
    pub char_bytes: Option<u8>,
}

/// A table as the binlog describes it, plus the event-facing schema.
#[derive(Debug)]
pub struct TableInfo {
    pub schema: Arc<TableSchema>,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableMapError {
    #[error(
        "table map of {table} carries no column names: the server's binlog_row_metadata is not FULL \
         (SET GLOBAL binlog_row_metadata = 'FULL' and put binlog_row_metadata = FULL in my.cnf); \
         changes written before that cannot be decoded safely"
    )]
    NoColumnNames { table: String },
    #[error("table map of {table}: {message}")]
    Bad { table: String, message: String },
}

/// What the table map alone does not say: which LONGTEXT columns are MariaDB JSON.
#[derive(Debug, Clone, Default)]
pub struct ExtraColumnInfo {
    pub json_columns: HashSet<String>,
}

impl TableInfo {
    pub fn from_table_map(
        tme: &TableMapEvent<'_>,
        collations: &Collations,
        extra: &ExtraColumnInfo,
        connector: Arc<str>,
        kind: &'static str,
        schema_version: u32,
    ) -> Result<TableInfo, TableMapError> {
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let qualified = format!("{db}.{table}");
        let bad = |message: String| TableMapError::Bad {
            table: qualified.clone(),
            message,
        };
        let n = tme.columns_count() as usize;

        let mut names = Vec::new();
        let mut unsigned_flags = Vec::new();
        let mut charsets_default: Option<DefaultCharsets> = None;
        let mut charsets_per_col: Option<Vec<u16>> = None;
        let mut es_default: Option<DefaultCharsets> = None;
        let mut es_per_col: Option<Vec<u16>> = None;
        let mut enum_labels: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut set_labels: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut pk = Vec::new();
        for field in tme.iter_optional_meta() {
            let field = field.map_err(|e| bad(format!("optional metadata: {e}")))?;
            match field {
                OptionalMetadataField::Signedness(bits) => {
                    unsigned_flags = bits.iter().by_vals().collect();
                }
                OptionalMetadataField::ColumnName(cn) => {
                    for name in cn.iter_names() {
                        let name = name.map_err(|e| bad(format!("column names: {e}")))?;
                        names.push(name.name().into_owned());
                    }
                }
                OptionalMetadataField::DefaultCharset(dc) => {
                    charsets_default = Some(default_charsets(&dc).map_err(bad)?);
                }
                OptionalMetadataField::ColumnCharset(cc) => {
                    charsets_per_col = Some(column_charsets(&cc).map_err(bad)?);
                }
                OptionalMetadataField::EnumAndSetDefaultCharset(dc) => {
                    es_default = Some(default_charsets(&dc).map_err(bad)?);
                }
                OptionalMetadataField::EnumAndSetColumnCharset(cc) => {
                    es_per_col = Some(column_charsets(&cc).map_err(bad)?);
                }
                OptionalMetadataField::EnumStrValue(vals) => {
                    for set in vals.iter_values() {
                        let set = set.map_err(|e| bad(format!("enum labels: {e}")))?;
                        enum_labels.push(
                            set.values()
                                .iter()
                                .map(|v| v.value_raw().to_vec())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SetStrValue(vals) => {
                    for set in vals.iter_values() {
                        let set = set.map_err(|e| bad(format!("set labels: {e}")))?;
                        set_labels.push(
                            set.values()
                                .iter()
                                .map(|v| v.value_raw().to_vec())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(k) => {
                    for i in k.iter_indexes() {
                        pk.push(i.map_err(|e| bad(format!("primary key: {e}")))? as usize);
                    }
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(k) => {
                    for i in k.iter_keys() {
                        pk.push(
                            i.map_err(|e| bad(format!("primary key: {e}")))?
                                .column_index() as usize,
                        );
                    }
                }
                _ => {}
            }
        }
        if names.len() != n {
            return Err(TableMapError::NoColumnNames { table: qualified });
        }

        // Charset entries are numbered among character columns (resp. ENUM/SET columns).
        let charset_at =
            |default: &Option<(u16, Vec<(u64, u16)>)>, per_col: &Option<Vec<u16>>, k: usize| {
                if let Some(v) = per_col {
                    return v.get(k).copied();
                }
                default.as_ref().map(|(d, nd)| {
                    nd.iter()
                        .find(|(idx, _)| *idx as usize == k)
                        .map(|(_, c)| *c)
                        .unwrap_or(*d)
                })
            };

        let mut columns = Vec::with_capacity(n);
        let (mut numeric_k, mut char_k, mut es_k, mut enum_k, mut set_k) = (0, 0, 0, 0, 0);
        for (i, name) in names.into_iter().enumerate() {
            let col_type = match tme.get_column_type(i) {
                Ok(Some(t)) => t,
                Ok(None) => return Err(bad(format!("column {name}: no type"))),
                Err(e) => return Err(bad(format!("column {name}: {e}"))),
            };
            let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
            let mut info = ColumnInfo {
                name,
                col_type,
                meta,
                unsigned: false,
                charset: None,
                labels: Vec::new(),
                fixed_len: 0,
                fsp: 0,
                json: false,
                char_bytes: None,
            };
            if col_type.is_numeric_type() {
                info.unsigned = unsigned_flags.get(numeric_k).copied().unwrap_or(false);
                numeric_k += 1;
            }
            let charset_id = if col_type.is_character_type() {
                char_k += 1;
                charset_at(&charsets_default, &charsets_per_col, char_k - 1)
            } else if col_type.is_enum_or_set_type() {
                es_k += 1;
                charset_at(&es_default, &es_per_col, es_k - 1)
            } else {
                None
            };
            if let Some(id) = charset_id {
                info.char_bytes = collations.bytes_per_char(id);
                info.charset = Some(
                    collations
                        .charset(id)
                        .map_err(|e| bad(format!("column {}: {e}", info.name)))?,
                );
            }
            let decode_label = |raw: &Vec<u8>| -> String {
                info.charset
                    .unwrap_or(Charset::Utf8)
                    .decode(raw.clone())
                    .unwrap_or_else(|b| String::from_utf8_lossy(&b).into_owned())
            };
            match col_type {
                ColumnType::MYSQL_TYPE_ENUM => {
                    info.labels = enum_labels
                        .get(enum_k)
                        .map(|l| l.iter().map(decode_label).collect())
                        .unwrap_or_default();
                    enum_k += 1;
                }
                ColumnType::MYSQL_TYPE_SET => {
                    info.labels = set_labels
                        .get(set_k)
                        .map(|l| l.iter().map(decode_label).collect())
                        .unwrap_or_default();
                    set_k += 1;
                }
                ColumnType::MYSQL_TYPE_STRING => info.fixed_len = string_length(&info.meta),
                ColumnType::MYSQL_TYPE_TIME2
                | ColumnType::MYSQL_TYPE_DATETIME2
                | ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
                    info.fsp = info.meta.first().copied().unwrap_or(0)
                }
                ColumnType::MYSQL_TYPE_BLOB => {
                    info.json = extra.json_columns.contains(&info.name)
                        && info.charset != Some(Charset::Binary);
                }
                _ => {}
            }
            columns.push(info);
        }
        pk.retain(|&i| i < n);

        let event_columns = columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: type_name(c),
            })
            .collect();
        let schema = Arc::new(TableSchema::new(
            connector,
            kind,
            db,
            table,
            event_columns,
            pk,
            schema_version,
        ));
        Ok(TableInfo { schema, columns })
    }
}

/// A default collation plus (column number, collation) exceptions.
type DefaultCharsets = (u16, Vec<(u64, u16)>);

fn default_charsets(dc: &DefaultCharset<'_>) -> Result<DefaultCharsets, String> {
    let mut non_default = Vec::new();
    for nd in dc.iter_non_default() {
        let nd = nd.map_err(|e| format!("charsets: {e}"))?;
        non_default.push((nd.column_index(), nd.charset()));
    }
    Ok((dc.default_charset(), non_default))
}

fn column_charsets(cc: &ColumnCharsets<'_>) -> Result<Vec<u16>, String> {
    cc.iter_charsets()
        .map(|c| c.map_err(|e| format!("charsets: {e}")))
        .collect()
}

/// Declared byte length of a MYSQL_TYPE_STRING column from its metadata (as the server
/// packs it: two bytes of the length hide in the type byte for long CHAR columns).
fn string_length(meta: &[u8]) -> usize {
    if meta.len() < 2 {
        return 0;
    }
    let (b0, b1) = (meta[0] as usize, meta[1] as usize);
    if (b0 & 0x30) != 0x30 {
        b1 | (((b0 & 0x30) ^ 0x30) << 4)
    } else {
        b1
    }
}

/// The type name the schema carries, as information_schema's COLUMN_TYPE spells it
/// without display widths and character sets: `bigint unsigned`, `varchar(50)`,
/// `decimal(12,2)`, `mediumtext`, `datetime(6)`, `json`. Lengths, precision and sizes
/// come from the table map's metadata, so a change of any of them is a schema change
/// the guard sees (`VARCHAR(50)` -> `VARCHAR(20)` loses values).
pub fn type_name(c: &ColumnInfo) -> String {
    use ColumnType::*;
    let binary = c.charset == Some(Charset::Binary);
    let chars = |bytes: usize| {
        c.char_bytes
            .filter(|&b| b > 0)
            .map(|b| format!("({})", bytes / b as usize))
    };
    let (base, modifier): (&str, Option<String>) = match c.col_type {
        MYSQL_TYPE_TINY => ("tinyint", None),
        MYSQL_TYPE_SHORT => ("smallint", None),
        MYSQL_TYPE_INT24 => ("mediumint", None),
        MYSQL_TYPE_LONG => ("int", None),
        MYSQL_TYPE_LONGLONG => ("bigint", None),
        MYSQL_TYPE_FLOAT => ("float", None),
        MYSQL_TYPE_DOUBLE => ("double", None),
        MYSQL_TYPE_NEWDECIMAL => (
            "decimal",
            match c.meta.as_slice() {
                [p, s, ..] => Some(format!("({p},{s})")),
                _ => None,
            },
        ),
        MYSQL_TYPE_DECIMAL => ("decimal", None),
        // Metadata: bits beyond whole bytes, then whole bytes.
        MYSQL_TYPE_BIT => (
            "bit",
            match c.meta.as_slice() {
                [bits, bytes, ..] => Some(format!("({})", *bytes as u32 * 8 + *bits as u32)),
                _ => None,
            },
        ),
        MYSQL_TYPE_YEAR => ("year", None),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => ("date", None),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => ("time", fsp(c)),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => ("datetime", fsp(c)),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => ("timestamp", fsp(c)),
        MYSQL_TYPE_ENUM => ("enum", None),
        MYSQL_TYPE_SET => ("set", None),
        MYSQL_TYPE_JSON => ("json", None),
        MYSQL_TYPE_GEOMETRY => ("geometry", None),
        MYSQL_TYPE_BLOB if c.json => ("json", None),
        // Metadata: how many bytes the value's length takes, which is the size.
        MYSQL_TYPE_BLOB => {
            let sizes = if binary {
                ["tinyblob", "blob", "mediumblob", "longblob"]
            } else {
                ["tinytext", "text", "mediumtext", "longtext"]
            };
            let at = c.meta.first().map_or(2, |&n| n.clamp(1, 4)) as usize - 1;
            (sizes[at], None)
        }
        MYSQL_TYPE_STRING if binary => ("binary", Some(format!("({})", c.fixed_len))),
        MYSQL_TYPE_STRING => ("char", chars(c.fixed_len)),
        // Metadata: the longest value in bytes (two bytes, little-endian).
        MYSQL_TYPE_VARCHAR => {
            let bytes = match c.meta.as_slice() {
                [lo, hi, ..] => Some(u16::from_le_bytes([*lo, *hi]) as usize),
                _ => None,
            };
            if binary {
                ("varbinary", bytes.map(|b| format!("({b})")))
            } else {
                ("varchar", bytes.and_then(chars))
            }
        }
        MYSQL_TYPE_VAR_STRING if binary => ("varbinary", None),
        MYSQL_TYPE_VAR_STRING => ("varchar", None),
        _ => ("unknown", None),
    };
    let mut name = format!("{base}{}", modifier.unwrap_or_default());
    // The signedness metadata marks YEAR unsigned, but the type has no signed form
    // (information_schema says plain `year`, which `policy diff` compares with).
    if c.unsigned && c.col_type != MYSQL_TYPE_YEAR {
        name.push_str(" unsigned");
    }
    name
}

/// Fractional-second digits as COLUMN_TYPE shows them: `(6)`, none when 0.
fn fsp(c: &ColumnInfo) -> Option<String> {
    (c.fsp > 0).then(|| format!("({})", c.fsp))
}
