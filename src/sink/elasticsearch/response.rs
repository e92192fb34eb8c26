//! What the cluster's answers mean, as pure functions of status and body: whether a
//! failed request is retried or stops the sink (`classify`), and what became of each
//! item of a bulk request (`outcomes`). Tested on canned responses.

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

/// Reads a bulk response's items in request order.
pub fn outcomes(response: &Json, expected: usize) -> Result<Vec<Outcome>, String> {
    let items = response["items"]
        .as_array()
        .ok_or("bulk response has no `items` array")?;
    if items.len() != expected {
        return Err(format!(
            "bulk response has {} items for {expected} actions",
            items.len()
        ));
    }
    Ok(items
        .iter()
        .map(|item| {
            let (action, body) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, v)| (k.as_str(), v))
                .unwrap_or(("", &Json::Null));
            let status = body["status"].as_u64().unwrap_or(0) as u16;
            match status {
                200..=299 | 409 => Outcome::Done,
                404 if action == "delete" => Outcome::Done,
                429 | 500..=599 | 0 => Outcome::Retry,
                _ => Outcome::Reject {
                    status,
                    error: body["error"].clone(),
                },
            }
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

    #[test]
    fn item_outcomes() {
        let resp = serde_json::json!({"items": [
            {"index": {"status": 201}},
            {"index": {"status": 409}},
            {"delete": {"status": 404}},
            {"index": {"status": 429}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
        ]});
        let o = outcomes(&resp, 5).unwrap();
        assert_eq!(
            &o[..4],
            &[Outcome::Done, Outcome::Done, Outcome::Done, Outcome::Retry]
        );
        assert!(
            matches!(&o[4], Outcome::Reject { status: 400, error } if error["type"] == "mapper_parsing_exception")
        );
        assert!(outcomes(&resp, 4).is_err());
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
        let o = outcomes(&resp, 5).unwrap();
        assert_eq!(&o[..2], &[Outcome::Done, Outcome::Done]);
        assert!(
            matches!(&o[2], Outcome::Reject { status: 404, .. }),
            "{o:?}"
        );
        assert_eq!(&o[3..], &[Outcome::Retry, Outcome::Retry]);
    }
}
