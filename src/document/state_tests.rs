use super::*;

/// The issue's document, showing fewer columns and orders by amount.
fn shop() -> String {
    crate::document::tests::SHOP
        .replace(r#"columns = ["name", "code"]"#, r#"columns = ["name"]"#)
        .replace(
            r#"columns = ["id", "amount", "status", "created_at"]
order_by = ["id"]"#,
            r#"columns = ["id", "amount"]
order_by = ["amount"]"#,
        )
        .replace(
            r#"columns = ["sku", "qty", "price"]"#,
            r#"columns = ["sku", "qty"]"#,
        )
}

fn state(dir: &std::path::Path) -> State {
    let tree = crate::document::tests::shop_tree(&shop());
    State::open(&dir.join("documents.redb"), tree).unwrap()
}

fn int(i: i64) -> Value {
    Value::Int(i)
}
fn text(s: &str) -> Value {
    Value::String(s.into())
}
fn dec(s: &str) -> Value {
    Value::Decimal(s.into())
}

fn customer(id: i64, name: &str, region: Option<u64>) -> Row {
    vec![
        int(id),
        text(name),
        region.map_or(Value::Null, |r| int(r as i64)),
    ]
}
fn order(id: i64, customer: i64, amount: &str) -> Row {
    vec![
        int(id),
        int(customer),
        dec(amount),
        text("new"),
        Value::Null,
    ]
}
fn item(order: i64, line: i64, sku: &str) -> Row {
    vec![int(order), int(line), text(sku), int(1), dec("2.00")]
}
fn key(id: i64) -> Vec<u8> {
    key_bytes([int(id)].iter())
}

/// Applies an insert (`after`) and returns the affected root ids.
/// Applies a change and returns the roots it marked dirty, cleaned as if written.
fn change(
    s: &State,
    table: &str,
    before: Option<&Row>,
    after: Option<&Row>,
    version: u64,
) -> Vec<Vec<u8>> {
    s.apply(table, before, after, version).unwrap();
    let (taken, _) = s.take(1000, 0).unwrap();
    s.covered(0).unwrap();
    taken.iter().map(|b| key_bytes(b.key.iter())).collect()
}

/// Customers 1 to `n` inserted at versions 1 to `n` (durably, marks kept).
fn customers_up_to(s: &State, n: i64) {
    for c in 1..=n {
        s.apply(
            "shop.customers",
            None,
            Some(&customer(c, "c", None)),
            c as u64,
        )
        .unwrap();
    }
}

/// An insert (`after` only).
fn insert(s: &State, table: &str, row: Row, version: u64) -> Vec<Vec<u8>> {
    change(s, table, None, Some(&row), version)
}

#[test]
fn a_document_joins_its_tables_with_sql_join_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    // An order and an item before their customer exist: no document yet.
    assert!(insert(&s, "shop.orders", order(10, 1, "5.00"), 1).is_empty());
    assert!(insert(&s, "shop.order_items", item(10, 1, "a"), 2).is_empty());
    // The customer arrives: its document has the order with its item, and no region
    // yet (null), then the region (an unsigned key joins an int column).
    assert_eq!(
        insert(&s, "shop.customers", customer(1, "Ada", Some(7)), 3),
        [key(1)]
    );
    assert_eq!(
        s.render(&key(1)).unwrap().unwrap(),
        r#"{"id":1,"name":"Ada","region_id":7,"region":null,"orders":[{"id":10,"amount":"5.00","items":[{"sku":"a","qty":1}]}]}"#
    );
    let region = vec![Value::UInt(7), text("North"), text("NO")];
    assert_eq!(insert(&s, "shop.regions", region, 4), [key(1)]);
    insert(&s, "shop.orders", order(11, 1, "1.50"), 5);
    insert(&s, "shop.order_items", item(11, 2, "c"), 6);
    insert(&s, "shop.order_items", item(11, 1, "b"), 7);
    // Orders by amount (1.50 before 5.00), items by their key.
    assert_eq!(
        s.render(&key(1)).unwrap().unwrap(),
        r#"{"id":1,"name":"Ada","region_id":7,"region":{"name":"North"},"orders":[{"id":11,"amount":"1.50","items":[{"sku":"b","qty":1},{"sku":"c","qty":1}]},{"id":10,"amount":"5.00","items":[{"sku":"a","qty":1}]}]}"#
    );
    // A NULL region joins nothing; no orders is an empty array.
    insert(&s, "shop.customers", customer(2, "Bob", None), 8);
    assert_eq!(
        s.render(&key(2)).unwrap().unwrap(),
        r#"{"id":2,"name":"Bob","region_id":null,"region":null,"orders":[]}"#
    );
    assert_eq!(s.render(&key(3)).unwrap(), None, "no such customer");
}

#[test]
fn a_change_affects_exactly_the_documents_it_leaves_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let region = vec![Value::UInt(7), text("North"), text("NO")];
    insert(&s, "shop.regions", region.clone(), 1);
    for c in 1..=3 {
        insert(
            &s,
            "shop.customers",
            customer(c, "c", Some(7)),
            1 + c as u64,
        );
    }
    insert(&s, "shop.customers", customer(4, "d", None), 5);
    insert(&s, "shop.orders", order(10, 1, "5.00"), 6);
    insert(&s, "shop.order_items", item(10, 1, "a"), 7);

    // A region rename: every customer of the region, no other.
    let renamed = vec![Value::UInt(7), text("Nord"), text("NO")];
    let roots = change(&s, "shop.regions", Some(&region), Some(&renamed), 8);
    assert_eq!(roots, [key(1), key(2), key(3)]);
    // An order moving from customer 1 to 2: both.
    let moved = order(10, 2, "5.00");
    let roots = change(
        &s,
        "shop.orders",
        Some(&order(10, 1, "5.00")),
        Some(&moved),
        9,
    );
    assert_eq!(roots, [key(1), key(2)]);
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[]}"#));
    assert!(s
        .render(&key(2))
        .unwrap()
        .unwrap()
        .contains(r#""items":[{"sku":"a","qty":1}]"#));
    // An item two levels down: its customer.
    let roots = change(&s, "shop.order_items", Some(&item(10, 1, "a")), None, 10);
    assert_eq!(roots, [key(2)]);
    // A key change of an item: the old row goes, the new one comes.
    insert(&s, "shop.order_items", item(10, 1, "x"), 11);
    let roots = change(
        &s,
        "shop.order_items",
        Some(&item(10, 1, "x")),
        Some(&item(10, 5, "x")),
        12,
    );
    assert_eq!(roots, [key(2)]);
    assert!(s
        .render(&key(2))
        .unwrap()
        .unwrap()
        .contains(r#""items":[{"sku":"x","qty":1}]"#));
    // A deleted customer: its own document, which is gone.
    let roots = change(
        &s,
        "shop.customers",
        Some(&customer(3, "c", Some(7))),
        None,
        13,
    );
    assert_eq!(roots, [key(3)]);
    assert_eq!(s.render(&key(3)).unwrap(), None);
}

#[test]
fn a_replayed_change_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    insert(&s, "shop.customers", customer(1, "Ada", None), 5);
    insert(&s, "shop.orders", order(10, 1, "5.00"), 6);
    let doc = s.render(&key(1)).unwrap();
    // After a crash the stream replays from the checkpoint: an older version is
    // skipped, the same version applied again gives the same state (a PostgreSQL
    // transaction's changes share its version and come again in their order).
    assert!(insert(&s, "shop.customers", customer(1, "Old name", None), 4).is_empty());
    insert(&s, "shop.orders", order(10, 1, "5.00"), 6);
    assert_eq!(s.render(&key(1)).unwrap(), doc);
    // Within one transaction (one version) a row changed twice keeps the last change.
    insert(&s, "shop.orders", order(12, 1, "1.00"), 8);
    change(
        &s,
        "shop.orders",
        Some(&order(12, 1, "1.00")),
        Some(&order(12, 1, "2.00")),
        8,
    );
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .contains(r#"{"id":12,"amount":"2.00","items":[]}"#));
    change(&s, "shop.orders", Some(&order(12, 1, "2.00")), None, 8);
    assert_eq!(
        s.render(&key(1)).unwrap(),
        doc,
        "inserted and deleted in one transaction"
    );
    // A deleted row's tombstone keeps a late replay of its insert out.
    change(&s, "shop.orders", Some(&order(10, 1, "5.00")), None, 9);
    assert!(insert(&s, "shop.orders", order(10, 1, "5.00"), 6).is_empty());
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[]}"#));
    // The state survives a reopen.
    drop(s);
    let s = state(dir.path());
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[]}"#));
}

#[test]
fn join_values_are_equal_exactly_when_sql_would_join_them() {
    let j = |v: Value| join_bytes([v].iter());
    assert_eq!(j(Value::Int(7)), j(Value::UInt(7)));
    assert_eq!(j(dec("1.50")), j(dec("001.5")));
    assert_eq!(j(dec("-0.0")), j(dec("0")));
    assert_eq!(j(dec("10")), j(Value::Int(10)));
    assert_ne!(j(text("7")), j(Value::Int(7)));
    assert_ne!(j(dec("1.05")), j(dec("1.5")));
    assert_eq!(j(Value::Null), None);
    // Composite values cannot run into each other.
    let two = |a: &str, b: &str| join_bytes([text(a), text(b)].iter());
    assert_ne!(two("ab", "c"), two("a", "bc"));
}

#[test]
fn dirty_documents_survive_a_crash_and_a_newer_change_keeps_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    customers_up_to(&s, 5);
    // Paged in key order.
    let first = s.dirty(None, 2).unwrap();
    assert_eq!(
        first.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        [key(1), key(2)]
    );
    let next = s.dirty(Some(&first[1].0), 10).unwrap();
    assert_eq!(
        next.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        [key(3), key(4), key(5)]
    );
    // The first two are built; customer 1 changes again before their checkpoint is
    // stored: the checkpoint does not clear the newer mark.
    assert_eq!(s.take(2, 0).unwrap().0.len(), 2);
    s.apply(
        "shop.customers",
        Some(&customer(1, "c", None)),
        Some(&customer(1, "d", None)),
        9,
    )
    .unwrap();
    s.covered(0).unwrap();
    assert_eq!(s.dirty(None, 10).unwrap().first(), Some(&(key(1), 9)));
    // A crash before the rest was written: the marks are still there, although a replay
    // of the changes would mark nothing (the state has them).
    drop(s);
    let s = state(dir.path());
    assert_eq!(
        s.apply("shop.customers", None, Some(&customer(5, "c", None)), 5)
            .unwrap(),
        0
    );
    let left: Vec<_> = s
        .dirty(None, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, [key(1), key(3), key(4), key(5)]);
}

#[test]
fn a_batch_of_changes_commits_together_and_persists_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let mut batch = s.changes().unwrap();
    for c in 1..=3 {
        batch
            .apply(
                "shop.customers",
                None,
                Some(&customer(c, "c", None)),
                c as u64,
            )
            .unwrap();
    }
    batch
        .apply("shop.orders", None, Some(&order(10, 1, "5.00")), 4)
        .unwrap();
    // Three documents marked, customer 1 twice (the order is newer).
    assert_eq!(batch.commit().unwrap(), 4);
    s.persist().unwrap();
    drop(s);
    let s = state(dir.path());
    assert_eq!(s.dirty(None, 10).unwrap().len(), 3);
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .contains(r#""orders":[{"id":10"#));
    // A batch dropped without a commit leaves nothing.
    let mut batch = s.changes().unwrap();
    batch
        .apply("shop.customers", None, Some(&customer(9, "c", None)), 9)
        .unwrap();
    drop(batch);
    assert_eq!(s.render(&key(9)).unwrap(), None);
}

#[test]
fn taken_documents_come_back_after_a_crash_until_a_checkpoint_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    customers_up_to(&s, 3);
    s.apply("shop.orders", None, Some(&order(10, 1, "5.00")), 4)
        .unwrap();
    // Epoch 0 takes two documents, built with their top-level fields.
    let taken = s.take(2, 0).unwrap().0;
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[0].key, [int(1)]);
    assert_eq!(taken[0].version, 4);
    let row = taken[0].row.as_ref().unwrap();
    assert_eq!(&row[..3], &customer(1, "c", None)[..]);
    assert_eq!(row[3].to_json(), "null");
    assert_eq!(
        row[4].to_json(),
        r#"[{"id":10,"amount":"5.00","items":[]}]"#
    );
    // Epoch 1 takes the rest; a deleted root is a document to delete.
    s.apply("shop.customers", Some(&customer(2, "c", None)), None, 5)
        .unwrap();
    let rest = s.take(10, 1).unwrap().0;
    assert_eq!(
        rest.iter()
            .map(|b| (b.key.clone(), b.row.is_some()))
            .collect::<Vec<_>>(),
        [(vec![int(2)], false), (vec![int(3)], true)]
    );
    assert!(s.take(10, 2).unwrap().0.is_empty(), "nothing is dirty now");
    // A checkpoint covered epoch 0, then a crash: epoch 1's documents are built again.
    s.covered(0).unwrap();
    s.persist().unwrap();
    drop(s);
    let s = state(dir.path());
    let again = s.take(10, 0).unwrap().0;
    assert_eq!(
        again.iter().map(|b| b.key.clone()).collect::<Vec<_>>(),
        [vec![int(2)], vec![int(3)]]
    );
    s.covered(0).unwrap();
    drop(s);
    let s = state(dir.path());
    assert!(s.take(10, 0).unwrap().0.is_empty());
}

#[test]
fn a_truncated_child_table_empties_the_arrays_and_rows_of_another_layout_project() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    s.apply("shop.customers", None, Some(&customer(1, "c", None)), 1)
        .unwrap();
    for o in 10..15 {
        s.apply("shop.orders", None, Some(&order(o, 1, "1.00")), o as u64)
            .unwrap();
    }
    s.take(10, 0).unwrap();
    let mut batch = s.changes().unwrap();
    let orders = s.tree().nodes_of("shop.orders").next().unwrap();
    batch.truncate_node(orders, 20).unwrap();
    assert_eq!(batch.commit().unwrap(), 1, "one document, marked once");
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[]}"#));
    // A late replay of an insert from before the truncate stays out.
    s.apply("shop.orders", None, Some(&order(12, 1, "1.00")), 12)
        .unwrap();
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[]}"#));
    // An order in a layout with a column added in front: read by name.
    let node = &s.tree().nodes[orders];
    let wider = crate::testkit::keyed_table(
        "shop.orders",
        &[
            ("note", "text"),
            ("id", "int"),
            ("customer_id", "int"),
            ("amount", "decimal"),
            ("status", "varchar"),
            ("created_at", "datetime"),
        ],
        &[1],
    );
    let proj = node.project(&wider);
    let mut row = order(30, 1, "9.00");
    row.insert(0, text("a note"));
    let mut batch = s.changes().unwrap();
    batch
        .apply_node(orders, &proj, None, Some(&row), 30)
        .unwrap();
    batch.commit().unwrap();
    assert!(s
        .render(&key(1))
        .unwrap()
        .unwrap()
        .ends_with(r#""orders":[{"id":30,"amount":"9.00","items":[]}]}"#));
}

#[test]
fn cached_renders_below_the_root_follow_every_change_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let region = vec![Value::UInt(7), text("North"), text("NO")];
    s.apply("shop.regions", None, Some(&region), 1).unwrap();
    s.apply("shop.customers", None, Some(&customer(1, "a", Some(7))), 2)
        .unwrap();
    s.apply("shop.customers", None, Some(&customer(2, "b", Some(7))), 3)
        .unwrap();
    s.apply("shop.orders", None, Some(&order(10, 1, "1.00")), 4)
        .unwrap();
    s.apply("shop.orders", None, Some(&order(11, 2, "2.00")), 5)
        .unwrap();
    s.apply("shop.order_items", None, Some(&item(10, 1, "a")), 6)
        .unwrap();
    // Building the documents caches the orders' and the region's renders.
    let doc = |s: &State, c: i64| {
        let taken = s.take(10, 0).unwrap().0;
        let b = taken.into_iter().find(|b| b.key == [int(c)]).unwrap();
        let row = b.row.unwrap();
        format!("{} {}", row[3].to_json(), row[4].to_json())
    };
    assert_eq!(
        doc(&s, 1),
        r#"{"name":"North"} [{"id":10,"amount":"1.00","items":[{"sku":"a","qty":1}]}]"#
    );
    // An item moves to the other customer's order: both cached orders are stale.
    s.apply(
        "shop.order_items",
        Some(&item(10, 1, "a")),
        Some(&item(11, 1, "a")),
        7,
    )
    .unwrap();
    let taken = s.take(10, 1).unwrap().0;
    let orders: Vec<String> = taken
        .iter()
        .map(|b| b.row.as_ref().unwrap()[4].to_json())
        .collect();
    assert_eq!(
        orders,
        [
            r#"[{"id":10,"amount":"1.00","items":[]}]"#,
            r#"[{"id":11,"amount":"2.00","items":[{"sku":"a","qty":1}]}]"#
        ]
    );
    // The region's rename reaches the cached embed, and equals a render from scratch.
    let renamed = vec![Value::UInt(7), text("Nord"), text("NO")];
    s.apply("shop.regions", Some(&region), Some(&renamed), 8)
        .unwrap();
    let taken = s.take(10, 2).unwrap().0;
    assert_eq!(taken.len(), 2);
    for b in taken {
        let row = b.row.unwrap();
        assert_eq!(row[3].to_json(), r#"{"name":"Nord"}"#);
        let fresh = s.render(&key_bytes(b.key.iter())).unwrap().unwrap();
        assert!(fresh.contains(&row[4].to_json()), "{fresh}");
    }
}

#[test]
fn a_new_state_is_built_without_marks_then_marks_every_root_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    assert!(s.prepare().unwrap(), "a new state needs every row");
    assert!(s.building_since().is_some());
    customers_up_to(&s, 3);
    s.apply("shop.orders", None, Some(&order(10, 1, "5.00")), 7)
        .unwrap();
    s.apply("shop.customers", Some(&customer(3, "c", None)), None, 8)
        .unwrap();
    assert!(
        s.dirty(None, 10).unwrap().is_empty(),
        "nothing marked while built"
    );
    // A restart keeps the build going.
    drop(s);
    let s = state(dir.path());
    assert!(!s.prepare().unwrap());
    assert!(s.building_since().is_some());
    assert_eq!(
        s.finish_build().unwrap(),
        3,
        "every root, the deleted one too"
    );
    assert_eq!(
        s.dirty(None, 10).unwrap(),
        [(key(1), 8), (key(2), 8), (key(3), 8)]
    );
    assert!(s.building_since().is_none());
    // Built: changes mark again.
    s.apply("shop.orders", None, Some(&order(11, 2, "1.00")), 9)
        .unwrap();
    assert_eq!(s.dirty(None, 10).unwrap()[1], (key(2), 9));
}

#[test]
fn the_end_of_a_build_marks_the_roots_deleted_while_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    assert!(s.prepare().unwrap());
    customers_up_to(&s, 3);
    // Seen by the build, then deleted before its end: its document may be in the index
    // (an earlier build of the same alias), so it is deleted.
    s.apply("shop.customers", Some(&customer(3, "c", None)), None, 4)
        .unwrap();
    assert_eq!(s.finish_build().unwrap(), 3);
    let built = s.take(10, 0).unwrap().0;
    assert_eq!(
        built
            .iter()
            .map(|b| (b.key.clone(), b.row.is_some(), b.version))
            .collect::<Vec<_>>(),
        [
            (vec![int(1)], true, 4),
            (vec![int(2)], true, 4),
            (vec![int(3)], false, 4)
        ]
    );
}

#[test]
fn a_root_deleted_that_the_state_never_held_deletes_its_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    // Customer 9's document may be in the index from before the state was rebuilt.
    let marked = change(&s, "shop.customers", Some(&customer(9, "c", None)), None, 3);
    assert_eq!(marked, [key(9)]);
    // A child row the state never held marks nothing (no parent to find).
    assert!(change(&s, "shop.orders", Some(&order(1, 9, "1.00")), None, 4).is_empty());
}

/// A change that reaches the state late (replayed from a quarantine) marks its
/// documents with at least the newest version the state applied, kept over a reopen:
/// the index may hold them at that version already, and would refuse an older one.
#[test]
fn late_changes_mark_documents_with_the_newest_version_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    customers_up_to(&s, 3);
    insert(&s, "shop.orders", order(10, 1, "5.00"), 10);
    let late = |s: &State, row: Row, version: u64| {
        let mut c = s.late_changes().unwrap();
        c.apply("shop.orders", None, Some(&row), version).unwrap();
        c.commit().unwrap();
        let (taken, _) = s.take(1000, 0).unwrap();
        s.covered(0).unwrap();
        taken
            .iter()
            .map(|b| (key_bytes(b.key.iter()), b.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(late(&s, order(11, 2, "1.00"), 5), [(key(2), 10)]);
    // An on-time change keeps its own version.
    assert_eq!(
        change(&s, "shop.orders", None, Some(&order(12, 3, "1.00")), 11),
        [key(3)]
    );
    s.persist().unwrap();
    drop(s);
    let s = state(dir.path());
    assert_eq!(late(&s, order(13, 1, "2.00"), 6), [(key(1), 11)]);
    assert!(s.render(&key(1)).unwrap().unwrap().contains(r#""id":13"#));
}

/// A state opened for another definition of its document wants a new index, kept
/// over a reopen until `reindexed`; a first state and an unchanged one want none.
#[test]
fn a_changed_definition_wants_a_new_index_until_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let open = |doc: &str| {
        let tree = crate::document::tests::shop_tree(doc);
        let s = State::open(&dir.path().join("documents.redb"), tree).unwrap();
        s.prepare().unwrap();
        s
    };
    assert!(!open(&shop()).reindex_wanted().unwrap());
    assert!(!open(&shop()).reindex_wanted().unwrap());
    let other = shop().replace(r#"columns = ["sku", "qty"]"#, r#"columns = ["sku"]"#);
    assert!(open(&other).reindex_wanted().unwrap());
    let s = open(&other);
    assert!(s.reindex_wanted().unwrap(), "kept until reindexed");
    s.reindexed().unwrap();
    drop(s);
    assert!(!open(&other).reindex_wanted().unwrap());
}
