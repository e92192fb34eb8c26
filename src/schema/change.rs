//! Schema changes between two versions of a table, and which type changes widen.

pub use crate::event::{ChangeKind, SchemaChange};
use crate::event::{Column, TableSchema};

/// How the layouts a guard or schema history recorded spell their types: 0 before
/// MariaDB/MySQL type names carried lengths, precision and sizes (see `refines`), 1
/// since. Recorded with each layout; a layout without it is 0.
pub const TYPE_NAMES: u32 = 1;

/// The changes from `old` to `new` (same table), by column name. A column dropped and
/// one added with the same type in the same change is reported as a possible rename.
pub fn diff(old: &TableSchema, new: &TableSchema) -> Vec<SchemaChange> {
    diff_columns(&old.columns, TYPE_NAMES, &new.columns)
}

/// `diff` of two column lists; `old_names` is the `TYPE_NAMES` the old one was
/// recorded with (an older spelling's bare names are refined, not changed).
pub fn diff_columns(old: &[Column], old_names: u32, new: &[Column]) -> Vec<SchemaChange> {
    let bare = old_names < 1;
    let mut dropped: Vec<(&str, &str)> = Vec::new();
    let mut out = Vec::new();
    for c in old {
        match new.iter().find(|n| n.name == c.name) {
            None => dropped.push((&c.name, &c.type_name)),
            Some(n)
                if n.type_name != c.type_name && !(bare && refines(&c.type_name, &n.type_name)) =>
            {
                let (from, to) = (c.type_name.clone(), n.type_name.clone());
                out.push(if is_widening(&from, &to) {
                    SchemaChange::TypeWidened {
                        column: c.name.clone(),
                        from,
                        to,
                    }
                } else {
                    SchemaChange::TypeChanged {
                        column: c.name.clone(),
                        from,
                        to,
                    }
                });
            }
            Some(_) => {}
        }
    }
    let mut added: Vec<(&str, &str)> = new
        .iter()
        .filter(|n| !old.iter().any(|c| c.name == n.name))
        .map(|n| (n.name.as_str(), n.type_name.as_str()))
        .collect();
    for (name, ty) in dropped {
        if let Some(i) = added.iter().position(|(_, t)| *t == ty) {
            let (to, _) = added.remove(i);
            out.push(SchemaChange::ColumnRenamed {
                from: name.to_string(),
                to: to.to_string(),
                certain: false,
            });
        } else {
            out.push(SchemaChange::ColumnDropped {
                column: name.to_string(),
            });
        }
    }
    for (name, ty) in added {
        out.push(SchemaChange::ColumnAdded {
            column: name.to_string(),
            type_name: ty.to_string(),
        });
    }
    out
}

/// Whether `new` only adds what an older tributary (`TYPE_NAMES` 0) left out of a
/// MariaDB/MySQL type name, which named `varchar`, `char`, `binary`, `varbinary`, `decimal`, `bit`,
/// `time`, `datetime`, `timestamp` without their lengths, precision or fractional
/// digits, and every TEXT and BLOB size `text` and `blob`: a layout recorded that way
/// is the same layout, not a type change. (PostgreSQL's names never took these bare
/// forms: its `numeric` and `text` are types of their own, and compare as written.)
pub fn refines(old: &str, new: &str) -> bool {
    let unsigned = |t: &str| t.ends_with(" unsigned");
    if unsigned(old) != unsigned(new) {
        return false;
    }
    let (old, new) = (
        old.trim_end_matches(" unsigned"),
        new.trim_end_matches(" unsigned"),
    );
    match old {
        "text" => matches!(new, "tinytext" | "mediumtext" | "longtext"),
        "blob" => matches!(new, "tinyblob" | "mediumblob" | "longblob"),
        "varchar" | "char" | "binary" | "varbinary" | "decimal" | "bit" | "time" | "datetime"
        | "timestamp" => new.strip_prefix(old).is_some_and(|m| m.starts_with('(')),
        _ => false,
    }
}

/// Whether every value of type `from` fits type `to` unchanged: a larger integer
/// (signedness kept), a longer char/varchar, float to double, or a decimal with at
/// least as many integer and fraction digits. Type names as the sources give them
/// (MariaDB/MySQL and PostgreSQL spellings), lengths in parentheses; also a larger
/// TEXT or BLOB size, a longer BINARY/VARBINARY or BIT, and more fractional digits of
/// a time type.
pub fn is_widening(from: &str, to: &str) -> bool {
    let (f, t) = (Type::parse(from), Type::parse(to));
    match (f, t) {
        (Type::Bytes { var: va, len: a }, Type::Bytes { var: vb, len: b }) => {
            (va == vb || vb) && b >= a && (a, va) != (b, vb)
        }
        (
            Type::Lob {
                binary: ba,
                size: a,
            },
            Type::Lob {
                binary: bb,
                size: b,
            },
        ) => ba == bb && b > a,
        (Type::Bit(a), Type::Bit(b)) => b > a,
        (Type::Temporal { base: ba, fsp: a }, Type::Temporal { base: bb, fsp: b }) => {
            ba == bb && b > a
        }
        (
            Type::Int {
                bytes: a,
                unsigned: ua,
            },
            Type::Int {
                bytes: b,
                unsigned: ub,
            },
        ) => ua == ub && b > a,
        (Type::Chars { var: va, len: a }, Type::Chars { var: vb, len: b }) => {
            // char(n) pads; varchar keeps the value as written: char -> varchar widens.
            (va == vb || vb) && b >= a && (a, va) != (b, vb)
        }
        (Type::Float { double: false }, Type::Float { double: true }) => true,
        (Type::Decimal { p: p1, s: s1 }, Type::Decimal { p: p2, s: s2 }) => {
            s2 >= s1 && p2 - s2 >= p1 - s1 && (p1, s1) != (p2, s2)
        }
        _ => false,
    }
}

#[derive(Debug, PartialEq)]
enum Type {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Chars {
        var: bool,
        len: u32,
    },
    Float {
        double: bool,
    },
    Decimal {
        p: u32,
        s: u32,
    },
    /// BINARY / VARBINARY, length in bytes.
    Bytes {
        var: bool,
        len: u32,
    },
    /// TINY/-/MEDIUM/LONG TEXT or BLOB: size 1 to 4.
    Lob {
        binary: bool,
        size: u8,
    },
    Bit(u32),
    /// MariaDB/MySQL `time`, `datetime`, `timestamp` with fractional digits.
    Temporal {
        base: &'static str,
        fsp: u32,
    },
    Other,
}

impl Type {
    fn parse(name: &str) -> Type {
        let lower = name.trim().to_ascii_lowercase();
        let unsigned = lower.contains("unsigned");
        let base = lower.split('(').next().unwrap_or("").trim();
        let base = base.trim_end_matches(" unsigned").trim();
        let args: Vec<u32> = lower
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(a, _)| a.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        let int = |bytes| Type::Int { bytes, unsigned };
        match base {
            "tinyint" => int(1),
            "smallint" | "int2" => int(2),
            "mediumint" => int(3),
            "int" | "integer" | "int4" => int(4),
            "bigint" | "int8" => int(8),
            "char" | "character" | "bpchar" => Type::Chars {
                var: false,
                len: args.first().copied().unwrap_or(1),
            },
            "varchar" | "character varying" => Type::Chars {
                var: true,
                len: args.first().copied().unwrap_or(u32::MAX),
            },
            "binary" => Type::Bytes {
                var: false,
                len: args.first().copied().unwrap_or(1),
            },
            "varbinary" => Type::Bytes {
                var: true,
                len: args.first().copied().unwrap_or(u32::MAX),
            },
            "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob"
            | "mediumblob" | "longblob" => Type::Lob {
                binary: base.ends_with("blob"),
                size: match base.trim_end_matches("text").trim_end_matches("blob") {
                    "tiny" => 1,
                    "" => 2,
                    "medium" => 3,
                    _ => 4,
                },
            },
            "bit" => Type::Bit(args.first().copied().unwrap_or(1)),
            // Only MariaDB/MySQL spell these bare (PostgreSQL says `timestamp without
            // time zone`, whose precision goes in the middle).
            "time" | "datetime" | "timestamp" => Type::Temporal {
                base: match base {
                    "time" => "time",
                    "datetime" => "datetime",
                    _ => "timestamp",
                },
                fsp: args.first().copied().unwrap_or(0),
            },
            "float" | "real" | "float4" => Type::Float { double: false },
            "double" | "double precision" | "float8" => Type::Float { double: true },
            "decimal" | "numeric" => match args.as_slice() {
                [p] => Type::Decimal { p: *p, s: 0 },
                [p, s] => Type::Decimal { p: *p, s: *s },
                _ => Type::Other,
            },
            _ => Type::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cols: &[(&str, &str)]) -> TableSchema {
        crate::testkit::test_schema(1, cols)
    }

    #[test]
    fn widening_is_exactly_the_lossless_changes() {
        for (a, b) in [
            ("int", "bigint"),
            ("smallint", "int"),
            ("integer", "bigint"),
            ("int unsigned", "bigint unsigned"),
            ("varchar(20)", "varchar(40)"),
            ("character varying(20)", "character varying(200)"),
            ("character varying(20)", "character varying"),
            ("char(3)", "char(5)"),
            ("char(3)", "varchar(3)"),
            ("float", "double"),
            ("real", "double precision"),
            ("decimal(10,2)", "decimal(12,2)"),
            ("numeric(10,2)", "numeric(12,4)"),
            ("decimal(10,2) unsigned", "decimal(12,2) unsigned"),
            ("tinytext", "text"),
            ("text", "longtext"),
            ("blob", "mediumblob"),
            ("binary(4)", "binary(8)"),
            ("binary(4)", "varbinary(4)"),
            ("varbinary(4)", "varbinary(40)"),
            ("bit(1)", "bit(8)"),
            ("datetime", "datetime(6)"),
            ("timestamp(3)", "timestamp(6)"),
            ("time", "time(2)"),
        ] {
            assert!(is_widening(a, b), "{a} -> {b}");
        }
        for (a, b) in [
            ("bigint", "int"),
            ("int", "int unsigned"),
            ("int unsigned", "bigint"),
            ("varchar(40)", "varchar(20)"),
            ("varchar(5)", "char(5)"),
            ("double", "float"),
            ("int", "varchar(20)"),
            ("decimal(12,2)", "decimal(12,4)"),
            ("decimal(10,2)", "decimal(10,2)"),
            ("text", "jsonb"),
            ("varchar(20)", "varchar(20)"),
            ("varchar(50)", "varchar(20)"),
            ("text", "tinytext"),
            ("mediumblob", "blob"),
            ("text", "blob"),
            ("varbinary(8)", "binary(8)"),
            ("bit(8)", "bit(1)"),
            ("datetime(6)", "datetime(3)"),
            ("datetime", "timestamp(6)"),
            ("char(10)", "tinytext"),
        ] {
            assert!(!is_widening(a, b), "{a} -> {b} is not a widening");
        }
    }

    #[test]
    fn bare_names_of_older_layouts_are_refined_not_changed() {
        for (old, new) in [
            ("varchar", "varchar(50)"),
            ("decimal unsigned", "decimal(12,2) unsigned"),
            ("text", "mediumtext"),
            ("blob", "tinyblob"),
            ("datetime", "datetime(6)"),
            ("char", "char(3)"),
        ] {
            assert!(refines(old, new), "{old} -> {new}");
            let t = |ty: &str| table(&[("id", "int"), ("c", ty)]).columns;
            assert!(
                diff_columns(&t(old), 0, &t(new)).is_empty(),
                "{old} -> {new}"
            );
            // Recorded since names carry lengths, `text` is TEXT and `tinytext` smaller.
            assert_eq!(diff_columns(&t(old), TYPE_NAMES, &t(new)).len(), 1);
        }
        for (old, new) in [
            ("varchar(50)", "varchar(20)"),
            ("varchar", "char(3)"),
            ("decimal", "decimal(10,2) unsigned"),
            ("text", "blob"),
            ("numeric", "numeric(10,2)"),
            ("character varying", "character varying(20)"),
            ("int", "int(11)"),
        ] {
            assert!(!refines(old, new), "{old} -> {new}");
        }
    }

    #[test]
    fn diff_names_each_change() {
        let old = table(&[
            ("id", "int"),
            ("a", "varchar(10)"),
            ("b", "text"),
            ("c", "int"),
        ]);
        let new = table(&[
            ("id", "bigint"),
            ("a", "varchar(5)"),
            ("b2", "text"),
            ("d", "date"),
        ]);
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                SchemaChange::TypeWidened {
                    column: "id".into(),
                    from: "int".into(),
                    to: "bigint".into()
                },
                SchemaChange::TypeChanged {
                    column: "a".into(),
                    from: "varchar(10)".into(),
                    to: "varchar(5)".into()
                },
                SchemaChange::ColumnRenamed {
                    from: "b".into(),
                    to: "b2".into(),
                    certain: false
                },
                SchemaChange::ColumnDropped { column: "c".into() },
                SchemaChange::ColumnAdded {
                    column: "d".into(),
                    type_name: "date".into()
                },
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
