//! `logctl dlq list|show`: the dead letters logtransfer wrote in
//! `<index>-deadletter` for documents Elasticsearch refused for good
//! (`transfer/src/doc.rs`, `dead_letter`): when, which Kafka message,
//! Elasticsearch's error, and the original document (cut to 32 KiB).

use crate::config::ControlConfig;
use crate::es::{hits, Es};
use crate::search::TimeRange;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// The dead-letter indices of logtransfer's default suffix.
pub const DEFAULT_INDEX: &str = "*-deadletter";

/// One dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    pub index: String,
    pub timestamp: String,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    /// Elasticsearch's status and error for the original.
    pub status: i64,
    pub error_type: String,
    pub reason: String,
    /// The index the original was meant for.
    pub original_index: String,
    /// The original document's source (its first 32 KiB when cut).
    pub original: String,
    pub original_truncated: bool,
}

impl DeadLetter {
    fn from_hit(hit: &Value) -> Self {
        let s = &hit["_source"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Self {
            id: text(&hit["_id"]),
            index: text(&hit["_index"]),
            timestamp: text(&s["@timestamp"]),
            topic: text(&s["kafka"]["topic"]),
            partition: s["kafka"]["partition"].as_i64().unwrap_or(-1),
            offset: s["kafka"]["offset"].as_i64().unwrap_or(-1),
            status: s["error"]["status"].as_i64().unwrap_or(0),
            error_type: text(&s["error"]["type"]),
            reason: text(&s["error"]["reason"]),
            original_index: text(&s["original_index"]),
            original: text(&s["original"]),
            original_truncated: s["original_truncated"].as_bool().unwrap_or(false),
        }
    }
}

/// The newest `limit` dead letters in `index` within `range`.
///
/// # Errors
/// Elasticsearch unreachable or failing; `-n` out of range.
pub async fn list(
    cfg: &ControlConfig,
    index: &str,
    range: TimeRange,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    if limit == 0 || limit > crate::search::MAX_LIMIT {
        return Err(Error::BadArgument {
            arg: "-n".into(),
            message: format!("{limit} is not within 1..={}", crate::search::MAX_LIMIT),
        });
    }
    let s = crate::search::Search {
        query: String::new(),
        range,
        filter: Default::default(),
        limit,
    };
    let es = Es::new(&cfg.elasticsearch)?;
    let v = es.search(index, "listing dead letters", s.body()).await?;
    Ok(hits(&v).iter().map(DeadLetter::from_hit).collect())
}

/// The dead letter with `_id` `id` (the `_id` of the document it stands
/// for, `topic-partition-offset`).
///
/// # Errors
/// [`Error::NotFound`] when `index` has none with that id.
pub async fn show(cfg: &ControlConfig, index: &str, id: &str) -> Result<DeadLetter> {
    let es = Es::new(&cfg.elasticsearch)?;
    es.by_id(index, "dead letter", id)
        .await?
        .as_ref()
        .map(DeadLetter::from_hit)
        .ok_or_else(|| Error::NotFound(format!("dead letter `{id}` in `{index}`")))
}
