//! The pgoutput decoder on real PostgreSQL 15 output: the server's own message bytes,
//! taken from a logical slot with pg_logical_slot_peek_binary_changes, include an
//! unchanged TOASTed column, REPLICA IDENTITY FULL, deletes and a truncate.

mod common;

use common::{pg_admin, PG_PORT};
use tributary::source::postgres::pgoutput::{decode, Datum, Message, OldTuple};

async fn admin_session() -> tokio_postgres::Client {
    pg_admin(PG_PORT).await
}

/// A pgoutput slot. Its own statement: a slot cannot be created in a transaction that
/// wrote.
async fn create_slot(client: &tokio_postgres::Client, slot: &str) {
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
}

/// The slot's changes for publication `p_<slot>` as the server's raw pgoutput messages;
/// drops the slot.
async fn take_changes(client: &tokio_postgres::Client, slot: &str) -> Vec<Vec<u8>> {
    let rows = client
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'p_{slot}')"
            ),
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect()
}

#[tokio::test]
async fn decodes_what_postgres_15_sends() {
    let client = admin_session().await;
    let slot = format!("t_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS docs, plain;
             CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE plain (id int PRIMARY KEY, n numeric);
             ALTER TABLE plain REPLICA IDENTITY FULL;
             DROP PUBLICATION IF EXISTS p_{slot};
             CREATE PUBLICATION p_{slot} FOR TABLE docs, plain;"
        ))
        .await
        .unwrap();
    create_slot(&client, &slot).await;
    let big = "x".repeat(1 << 20);
    client
        .execute("INSERT INTO docs VALUES (1, 'first', $1)", &[&big])
        .await
        .unwrap();
    client
        .batch_execute(
            "UPDATE docs SET title = 'renamed' WHERE id = 1;
         INSERT INTO plain VALUES (7, 1.50);
         UPDATE plain SET n = 'NaN' WHERE id = 7;
         DELETE FROM plain WHERE id = 7;
         DELETE FROM docs WHERE id = 1;
         TRUNCATE plain;",
        )
        .await
        .unwrap();

    let raw = take_changes(&client, &slot).await;
    let msgs: Vec<Message> = raw.iter().map(|b| decode(b).expect("decodes")).collect();

    let kinds: String = msgs
        .iter()
        .map(|m| match m {
            Message::Begin { .. } => 'B',
            Message::Commit { .. } => 'C',
            Message::Relation(_) => 'R',
            Message::Insert { .. } => 'I',
            Message::Update { .. } => 'U',
            Message::Delete { .. } => 'D',
            Message::Truncate { .. } => 'T',
            _ => '?',
        })
        .collect();
    // The second batch is one transaction; the server repeats `plain`'s Relation before
    // the truncate.
    assert_eq!(kinds, "BRICBURIUDDRTC", "{msgs:#?}");

    // The 1 MB body arrives whole on insert, and as "unchanged" on the title update.
    let Message::Insert { new, .. } = &msgs[2] else {
        panic!()
    };
    assert_eq!(new[2], Datum::Text(big.as_bytes()));
    let Message::Update { old, new, .. } = &msgs[5] else {
        panic!()
    };
    assert!(
        old.is_none(),
        "REPLICA IDENTITY DEFAULT and an unchanged key send no old tuple"
    );
    assert_eq!(new[1], Datum::Text(b"renamed"));
    assert_eq!(new[2], Datum::UnchangedToast);

    // REPLICA IDENTITY FULL sends the whole old row.
    let Message::Relation(r) = &msgs[6] else {
        panic!()
    };
    assert_eq!((r.name, r.replica_identity), ("plain", b'f'));
    let Message::Update {
        old: Some(OldTuple::Full(old)),
        new,
        ..
    } = &msgs[8]
    else {
        panic!("{:?}", msgs[8])
    };
    assert_eq!(old[1], Datum::Text(b"1.50"));
    assert_eq!(new[1], Datum::Text(b"NaN"));
    let Message::Delete {
        old: OldTuple::Full(old),
        ..
    } = &msgs[9]
    else {
        panic!()
    };
    assert_eq!(old[0], Datum::Text(b"7"));
    let Message::Delete {
        old: OldTuple::Key(key),
        ..
    } = &msgs[10]
    else {
        panic!()
    };
    assert_eq!((key[0], key[2]), (Datum::Text(b"1"), Datum::Null));
    let Message::Truncate { relations, .. } = &msgs[12] else {
        panic!()
    };
    assert_eq!(relations, &vec![r.oid]);
}
