//! The MySQL 8 binlog path, on event bytes laid out as MySQL 8 writes them (MySQL cannot
//! run on the build machines): a table map with FULL optional metadata and a v2
//! WRITE_ROWS event carrying MySQL's binary JSON, read by mysql_common's stream reader
//! and decoded by our table and row code.

use std::sync::Arc;

use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::EventData;
use mysql_common::binlog::EventStreamReader;
use mysql_common::io::ParseBuf;

use super::charset::Collations;
use super::decode::read_image;
use super::table::{ExtraColumnInfo, TableInfo};
use crate::event::{ChangeEvent, Op, Position, Value};

/// A v4 event: 19-byte header (timestamp, type, server id, size, log pos, flags) + body.
fn event(type_code: u8, body: &[u8], log_pos: u32) -> Vec<u8> {
    let size = 19 + body.len() as u32;
    let mut e = Vec::new();
    e.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    e.push(type_code);
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&log_pos.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(body);
    e
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn tlv(out: &mut Vec<u8>, field: u8, value: &[u8]) {
    out.push(field);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

const TABLE_ID: u64 = 91;

/// `shop.orders (id BIGINT UNSIGNED PK, name VARCHAR(40) utf8mb4, doc JSON,
/// amount DECIMAL(10,2), at DATETIME(3))`
fn table_map() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&TABLE_ID.to_le_bytes()[..6]);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.push(4);
    b.extend_from_slice(b"shop\0");
    b.push(6);
    b.extend_from_slice(b"orders\0");
    b.push(5); // columns
    b.extend_from_slice(&[8, 15, 245, 246, 18]); // LONGLONG VARCHAR JSON NEWDECIMAL DATETIME2
    let meta = [160u8, 0, 4, 10, 2, 3]; // varchar max bytes 160; json length bytes 4; (10,2); fsp 3
    b.push(meta.len() as u8);
    b.extend_from_slice(&meta);
    b.push(0b0001_1110); // nullability: all but id
    tlv(&mut b, 1, &[0b1000_0000]); // SIGNEDNESS (numeric columns id, amount): id unsigned
                                    // DEFAULT_CHARSET utf8mb4_0900_ai_ci (255, MySQL 8 default) as a length-encoded int.
    tlv(&mut b, 2, &[0xfc, 255, 0]);
    let mut names = Vec::new();
    for n in ["id", "name", "doc", "amount", "at"] {
        lenenc_str(&mut names, n.as_bytes());
    }
    tlv(&mut b, 4, &names); // COLUMN_NAME
    tlv(&mut b, 8, &[0]); // SIMPLE_PRIMARY_KEY: column 0
    event(19, &b, 400)
}

fn write_rows() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&TABLE_ID.to_le_bytes()[..6]);
    b.extend_from_slice(&1u16.to_le_bytes()); // STMT_END_F
    b.extend_from_slice(&2u16.to_le_bytes()); // v2 extra data: none
    b.push(5);
    b.push(0b0001_1111); // every column in the image
                         // row 1
    b.push(0); // no NULLs
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    lenenc_str(&mut b, "héllo".as_bytes());
    // MySQL binary JSON {"a": 1}: small object, 1 element, 12 bytes; key at 11 (len 1);
    // value int16 1 inlined.
    let jsonb = [0x00, 1, 0, 12, 0, 11, 0, 1, 0, 0x05, 1, 0, b'a'];
    b.extend_from_slice(&(jsonb.len() as u32).to_le_bytes());
    b.extend_from_slice(&jsonb);
    b.extend_from_slice(&[0x7f, 0xff, 0xff, 0xf3, 0xcd]); // DECIMAL(10,2) -12.50
    let ymd = ((2024i64 * 13 + 2) << 5) | 29;
    let hms = (12 << 12) | (34 << 6) | 56;
    let packed = ((ymd << 17) | hms) + 0x80_0000_0000;
    b.extend_from_slice(&packed.to_be_bytes()[3..]);
    b.extend_from_slice(&7890i16.to_be_bytes()); // .789
                                                 // row 2: NULLs in name, doc, amount, at
    b.push(0b0001_1110);
    b.extend_from_slice(&7u64.to_le_bytes());
    event(30, &b, 500)
}

#[test]
fn mysql8_table_map_and_v2_rows_with_binary_json() {
    let mut reader = EventStreamReader::new(BinlogVersion::Version4);
    let tm_bytes = table_map();
    let tm = reader.read(&tm_bytes[..]).unwrap().unwrap();
    let tme = match tm.read_data().unwrap() {
        Some(EventData::TableMapEvent(t)) => t,
        other => panic!("not a table map: {other:?}"),
    };
    let info = TableInfo::from_table_map(
        &tme,
        &Collations::default(),
        &ExtraColumnInfo::default(),
        Arc::from("mysql-test"),
        "mysql",
        1,
    )
    .unwrap();
    assert_eq!(info.schema.qualified_name(), "shop.orders");
    assert_eq!(info.schema.primary_key, vec![0]);
    let types: Vec<&str> = info
        .schema
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "bigint unsigned",
            "varchar(40)",
            "json",
            "decimal(10,2)",
            "datetime(3)"
        ]
    );

    let rows_bytes = write_rows();
    let ev = reader.read(&rows_bytes[..]).unwrap().unwrap();
    let rows = match ev.read_data().unwrap() {
        Some(EventData::RowsEvent(r)) => r,
        other => panic!("not a rows event: {other:?}"),
    };
    let after = rows.columns_after_image().unwrap();
    let present: Vec<bool> = (0..5)
        .map(|i| after.get(i).map(|b| *b).unwrap_or(false))
        .collect();
    let mut buf = ParseBuf(rows.rows_data());
    let r1 = read_image(&mut buf, &info, &present).unwrap();
    let r2 = read_image(&mut buf, &info, &present).unwrap();
    assert!(buf.is_empty());

    let schema = info.schema.clone();
    let e = ChangeEvent {
        op: Op::Create,
        table: schema,
        pos: Position::Binlog {
            file: "binlog.000001".into(),
            offset: 400,
            gtid: None,
        },
        txid: None,
        source_ts_ms: 0,
        before: None,
        after: Some(r1),
        version: 1,
        ts_ms: 0,
    };
    let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
    assert_eq!(
        json["after"],
        serde_json::json!({
            "id": 18446744073709551615u64,
            "name": "héllo",
            "doc": {"a": 1},
            "amount": "-12.50",
            "at": "2024-02-29T12:34:56.789"
        })
    );
    assert_eq!(
        json["key"],
        serde_json::json!({"id": 18446744073709551615u64})
    );
    assert_eq!(
        r2,
        vec![
            Value::UInt(7),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null
        ]
    );
}

/// The table map of `table_map()`, parsed.
fn orders_info() -> TableInfo {
    let mut reader = EventStreamReader::new(BinlogVersion::Version4);
    let tm_bytes = table_map();
    let tm = reader.read(&tm_bytes[..]).unwrap().unwrap();
    let Some(EventData::TableMapEvent(tme)) = tm.read_data().unwrap() else {
        panic!("not a table map")
    };
    TableInfo::from_table_map(
        &tme,
        &Collations::default(),
        &ExtraColumnInfo::default(),
        Arc::from("mysql-test"),
        "mysql",
        1,
    )
    .unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(3000)))]

    /// Row images of any bytes: rows or an error, never a panic (the JSON length, the
    /// string lengths and the DECIMAL come from the bytes).
    #[test]
    fn row_images_of_any_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
        let info = orders_info();
        let present = [true; 5];
        let mut buf = ParseBuf(&data);
        while !buf.is_empty() && read_image(&mut buf, &info, &present).is_ok() {}
    }

    /// The real rows event with one byte changed or the image cut: never a panic.
    #[test]
    fn mutated_row_images_never_panic(at in proptest::prelude::any::<usize>(), byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
        let info = orders_info();
        let event = write_rows();
        // The row images start after the header (19), table id (6), flags (2), extra
        // data length (2), column count (1) and present bitmap (1).
        let mut rows = event[31..].to_vec();
        let i = at % rows.len();
        if cut {
            rows.truncate(i);
        } else {
            rows[i] = byte;
        }
        let present = [true; 5];
        let mut buf = ParseBuf(&rows);
        while !buf.is_empty() && read_image(&mut buf, &info, &present).is_ok() {}
    }

    /// Table map events with a body byte changed: parsed or refused, never a panic.
    /// (The 19-byte header is left alone: mysql_common 0.37's `Event::read` unwraps a
    /// short read when the header claims more bytes than the packet holds.)
    #[test]
    fn mutated_table_maps_never_panic(at in proptest::prelude::any::<usize>(), byte in proptest::prelude::any::<u8>()) {
        let mut bytes = table_map();
        let i = 19 + at % (bytes.len() - 19);
        bytes[i] = byte;
        let mut reader = EventStreamReader::new(BinlogVersion::Version4);
        if let Ok(Some(ev)) = reader.read(&bytes[..]) {
            if let Ok(Some(EventData::TableMapEvent(tme))) = ev.read_data() {
                let _ = TableInfo::from_table_map(
                    &tme,
                    &Collations::default(),
                    &ExtraColumnInfo::default(),
                    Arc::from("mysql-test"),
                    "mysql",
                    1,
                );
            }
        }
    }
}
