//! `logctl lag`: how far a consumer group (logtransfer's) is behind, per
//! partition: the group's committed offset against the partition's high
//! watermark. Read with an offset fetch; the group is not joined.

use crate::config::ControlConfig;
use crate::kafka::{blocking, consumer, kafka_err, topics, TIMEOUT};
use crate::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// logtransfer's group id by default (`config/transfer.toml`).
pub const DEFAULT_GROUP: &str = "logtransfer";

/// One partition's lag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's next offset to read (what it committed).
    pub committed: i64,
    /// The partition's end (next offset to be written).
    pub high: i64,
    /// `high - committed`, messages not yet written by the group.
    pub lag: i64,
}

/// The lag of `group` on every partition of `wanted` (names or `^regex`;
/// all topics when empty) where it has committed an offset.
///
/// # Errors
/// [`Error::NotFound`] when the group has no committed offset there (it
/// never ran, or consumed other topics); a named topic missing; Kafka
/// failing.
pub async fn lag(cfg: &ControlConfig, group: &str, wanted: &[String]) -> Result<Vec<PartitionLag>> {
    let brokers = cfg.kafka.brokers.clone();
    let group = group.to_string();
    let wanted = wanted.to_vec();
    blocking(move || {
        let c: BaseConsumer = consumer(&brokers, &group)?;
        let found = topics(&c, &brokers, &wanted)?;
        let mut tpl = TopicPartitionList::new();
        for (topic, n) in &found {
            for p in 0..*n {
                tpl.add_partition(topic, p);
            }
        }
        let committed = c
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| kafka_err(&brokers, &format!("offsets of group {group}"), e))?;
        let mut out = Vec::new();
        for el in committed.elements() {
            let Offset::Offset(at) = el.offset() else {
                continue;
            };
            let (_, high) = c
                .fetch_watermarks(el.topic(), el.partition(), TIMEOUT)
                .map_err(|e| {
                    kafka_err(
                        &brokers,
                        &format!("watermarks of {}/{}", el.topic(), el.partition()),
                        e,
                    )
                })?;
            out.push(PartitionLag {
                topic: el.topic().to_string(),
                partition: el.partition(),
                committed: at,
                high,
                lag: (high - at).max(0),
            });
        }
        if out.is_empty() {
            return Err(Error::NotFound(format!(
                "committed offsets of group `{group}` on {} in Kafka at {brokers}",
                if wanted.is_empty() {
                    "any topic".to_string()
                } else {
                    wanted.join(", ")
                }
            )));
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    })
    .await
}
