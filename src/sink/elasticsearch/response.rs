//! What the cluster's answers mean, as pure functions of status and body: whether a
//! failed request is retried or stops the sink (`classify`), and what became of each
//! item of a bulk request (`outcomes`). Tested on canned responses.

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::failure::Failure;

/// A request the cluster did not accept, by its HTTP status and body: 429 and 5xx
/// pass by themselves (retried forever, nothing dropped); everything else needs the
/// operator, with advice where the status says what to change.
pub fn classify(status: u16, body: &str) -> Failure {
    // A cluster's reason can quote a document's values: its error type stands in.
    let text: String = crate::privacy::server_error(body)
        .chars()
        .take(500)
        .collect();
    match status {
        429 | 500..=599 => Failure::Transient(format!("HTTP {status}: {text}")),
        401 | 403 => Failure::Fatal(format!(
            "HTTP {status}: check the sink's user/password or api_key and its privileges: {text}"
        )),
        413 => Failure::Fatal(format!(
            "HTTP 413: the request is larger than the cluster accepts (its http.max_content_length): lower [[sink]] batch_bytes: {text}"
        )),
        _ => Failure::Fatal(format!("HTTP {status}: {text}")),
    }
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written; or 409 (a newer version is already there); or 404 on a delete (gone).
    Done,
    /// 429 or 5xx: send again.
    Retry,
    /// Rejected for good (mapping errors, other 4xx): to the dead-letter stream.
    Reject { status: u16, error: Json },
}

/// A bulk response as the sink reads it: each item's action, status and error, in
/// request order. Read straight from the body without building a JSON tree of the
/// whole answer: a cluster's items carry `_index`, `_id`, `_shards`, `_seq_no` and
/// more that the sink never looks at, and the tree cost a third of the daemon's CPU
/// at its ceiling (bench/es_ceiling.sh).
#[derive(Debug, Deserialize)]
pub struct BulkAnswer {
    items: Vec<AnswerItem>,
}

#[derive(Debug)]
struct AnswerItem {
    delete: bool,
    status: u16,
    error: Json,
}

/// The one key of an item: its action.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ActionKey {
    Delete,
    #[serde(other)]
    Other,
}

/// The fields of an item the sink reads (the rest are skipped unparsed).
#[derive(Deserialize)]
struct ItemBody {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Json,
}

impl<'de> Deserialize<'de> for AnswerItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Item;
        impl<'de> Visitor<'de> for Item {
            type Value = AnswerItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a bulk item: {\"<action>\": {\"status\": ...}}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnswerItem, A::Error> {
                let mut item = AnswerItem {
                    delete: false,
                    status: 0,
                    error: Json::Null,
                };
                if let Some(action) = map.next_key::<ActionKey>()? {
                    let body: ItemBody = map.next_value()?;
                    item = AnswerItem {
                        delete: matches!(action, ActionKey::Delete),
                        status: body.status,
                        error: body.error,
                    };
                }
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(item)
            }
        }
        d.deserialize_map(Item)
    }
}

/// Reads a bulk response's items in request order.
pub fn outcomes(response: BulkAnswer, expected: usize) -> Result<Vec<Outcome>, String> {
    let items = response.items;
    if items.len() != expected {
        return Err(format!(
            "bulk response has {} items for {expected} actions",
            items.len()
        ));
    }
    Ok(items
        .into_iter()
        .map(|item| match item.status {
            200..=299 | 409 => Outcome::Done,
            404 if item.delete => Outcome::Done,
            429 | 500..=599 | 0 => Outcome::Retry,
            status => Outcome::Reject {
                status,
                error: item.error,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_retried_only_when_the_cluster_may_recover() {
        assert!(classify(429, "{\"error\":\"es_rejected_execution_exception\"}").is_transient());
        for status in [500, 502, 503, 504] {
            assert!(classify(status, "unavailable").is_transient(), "{status}");
        }
        for status in [400, 401, 403, 404, 413] {
            assert!(!classify(status, "").is_transient(), "{status}");
        }
        let auth = classify(401, "{\"error\":{\"type\":\"security_exception\"}}");
        assert!(auth.message().contains("api_key"), "{auth}");
        assert!(auth.message().contains("security_exception"), "{auth}");
        assert!(classify(403, "").message().contains("privileges"));
        assert!(classify(413, "").message().contains("batch_bytes"));
        // The server's words are kept, but bounded.
        assert!(classify(400, &"x".repeat(10_000)).message().len() < 600);
    }

    fn answer(resp: &Json) -> BulkAnswer {
        serde_json::from_value(resp.clone()).expect("a bulk answer")
    }

    #[test]
    fn an_answer_with_every_field_a_cluster_sends_reads_as_its_statuses() {
        let text = r#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"t_v1","_id":"1","_version":7,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}},
            {"delete":{"_index":"t_v1","_id":"2","_version":8,"result":"not_found","_shards":{"total":2,"successful":1,"failed":0},"status":404}},
            {"index":{"_index":"t_v1","_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"x","caused_by":{"type":"y"}}}}
        ]}"#;
        let answer: BulkAnswer = serde_json::from_str(text).unwrap();
        let o = outcomes(answer, 3).unwrap();
        assert_eq!(&o[..2], &[Outcome::Done, Outcome::Done]);
        assert!(
            matches!(&o[2], Outcome::Reject { status: 400, error } if error["caused_by"]["type"] == "y"),
            "{o:?}"
        );
        // An answer without items is an error, not an empty success.
        assert!(serde_json::from_str::<BulkAnswer>(r#"{"took":1}"#).is_err());
    }

    #[test]
    fn item_outcomes() {
        let resp = serde_json::json!({"items": [
            {"index": {"status": 201}},
            {"index": {"status": 409}},
            {"delete": {"status": 404}},
            {"index": {"status": 429}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
        ]});
        let o = outcomes(answer(&resp), 5).unwrap();
        assert_eq!(
            &o[..4],
            &[Outcome::Done, Outcome::Done, Outcome::Done, Outcome::Retry]
        );
        assert!(
            matches!(&o[4], Outcome::Reject { status: 400, error } if error["type"] == "mapper_parsing_exception")
        );
        assert!(outcomes(answer(&resp), 4).is_err());
    }

    #[test]
    fn a_versioned_write_that_lost_is_done_and_a_missing_index_is_rejected() {
        let resp = serde_json::json!({"items": [
            {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"delete": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"index": {"status": 404, "error": {"type": "index_not_found_exception"}}},
            {"index": {"status": 503}},
            {"index": {}},
        ]});
        let o = outcomes(answer(&resp), 5).unwrap();
        assert_eq!(&o[..2], &[Outcome::Done, Outcome::Done]);
        assert!(
            matches!(&o[2], Outcome::Reject { status: 404, .. }),
            "{o:?}"
        );
        assert_eq!(&o[3..], &[Outcome::Retry, Outcome::Retry]);
    }
}
