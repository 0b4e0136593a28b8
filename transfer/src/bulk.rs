//! The `_bulk` wire format: building a request body of `create` operations
//! and classifying each item of the response. Pure functions.

use crate::doc::Doc;
use serde::Deserialize;
use serde_json::Value;

/// What became of one document of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Created now (2xx).
    Written,
    /// The `_id` is taken (409): an earlier attempt at this very message, or
    /// a different message that reused the offset (a recreated topic). The
    /// caller compares the stored document to tell them apart.
    Exists,
    /// Worth retrying: 429, 5xx, a write block (403 `cluster_block_exception`),
    /// a missing index with auto-creation off (404 `index_not_found_exception`),
    /// or no answer for this item.
    Retry,
    /// Refused for good (any other 4xx): dead-letter it.
    Refused { status: u16, error: Value },
}

/// Appends `{"create":{"_index":…,"_id":…}}\n<source>\n` for each doc.
pub fn build_body(docs: &[Doc], out: &mut Vec<u8>) {
    for d in docs {
        out.extend_from_slice(b"{\"create\":{\"_index\":");
        // Index names and ids are plain strings; serde_json escapes them.
        let _ = serde_json::to_writer(&mut *out, &d.index);
        out.extend_from_slice(b",\"_id\":");
        let _ = serde_json::to_writer(&mut *out, &d.id);
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(&d.source);
        out.push(b'\n');
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// Classifies a status code of one item.
pub fn classify(status: u16, error: Option<Value>) -> Outcome {
    let kind = error
        .as_ref()
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str);
    match (status, kind) {
        (200..=299, _) => Outcome::Written,
        (409, _) => Outcome::Exists,
        (429 | 500..=599, _) => Outcome::Retry,
        // An operator's (or the disk watermark's) write block, or an index
        // that auto-creation may not make: the documents are fine, wait.
        (403, Some("cluster_block_exception")) | (404, Some("index_not_found_exception")) => {
            Outcome::Retry
        }
        (400..=499, _) => Outcome::Refused {
            status,
            error: error.unwrap_or(Value::Null),
        },
        _ => Outcome::Retry,
    }
}

/// One outcome per document of the request, in order, from an HTTP 200
/// answer's body. Items the answer does not cover are `Retry`.
pub fn parse_response(body: &[u8], docs: usize) -> Vec<Outcome> {
    let items = serde_json::from_slice::<BulkResponse>(body)
        .map(|r| r.items)
        .unwrap_or_default();
    let mut out: Vec<Outcome> = items
        .into_iter()
        .take(docs)
        .map(|mut m| match m.drain().next() {
            Some((_, item)) => classify(item.status, item.error),
            None => Outcome::Retry,
        })
        .collect();
    out.resize(docs, Outcome::Retry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> Doc {
        Doc {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            index: "t-2026.11.21".into(),
            id: id.into(),
            source: br#"{"message":"m"}"#.to_vec(),
            dead_letter: false,
        }
    }

    #[test]
    fn body_is_ndjson_of_create_operations() {
        let mut out = Vec::new();
        build_body(&[doc("t-0-1"), doc("we\"ird")], &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            r#"{"create":{"_index":"t-2026.11.21","_id":"t-0-1"}}"#
        );
        assert_eq!(lines[1], r#"{"message":"m"}"#);
        let v: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(v["create"]["_id"], "we\"ird");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn write_blocks_and_missing_indices_are_transient() {
        let block = serde_json::json!({"type": "cluster_block_exception", "reason": "index [x] blocked by: [FORBIDDEN/8/index write (api)];"});
        assert_eq!(classify(403, Some(block)), Outcome::Retry);
        let missing = serde_json::json!({"type": "index_not_found_exception"});
        assert_eq!(classify(404, Some(missing)), Outcome::Retry);
        let denied = serde_json::json!({"type": "security_exception"});
        assert!(matches!(
            classify(403, Some(denied)),
            Outcome::Refused { status: 403, .. }
        ));
        assert!(matches!(
            classify(400, None),
            Outcome::Refused { status: 400, .. }
        ));
    }

    #[test]
    fn items_are_classified_in_order() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"_id":"a","status":201}},
            {"create":{"_id":"b","status":409,"error":{"type":"version_conflict_engine_exception"}}},
            {"create":{"_id":"c","status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"create":{"_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"x"}}},
            {"create":{"_id":"e","status":503}}]}"#;
        let out = parse_response(body, 6);
        assert_eq!(out[0], Outcome::Written);
        assert_eq!(out[1], Outcome::Exists);
        assert_eq!(out[2], Outcome::Retry);
        assert!(
            matches!(&out[3], Outcome::Refused { status: 400, error } if error["type"] == "mapper_parsing_exception")
        );
        assert_eq!(out[4], Outcome::Retry);
        assert_eq!(
            out[5],
            Outcome::Retry,
            "an item missing from the answer is retried"
        );
        assert_eq!(
            parse_response(b"not json", 2),
            vec![Outcome::Retry, Outcome::Retry]
        );
    }
}
