//! `logctl tail`: events live from Kafka, as they arrive.
//!
//! The consumer joins no group and commits nothing: it is *assigned* every
//! partition of the topics, at the high watermark read just before (or at
//! the first offset at or after `--since`), so starting a tail never moves
//! logtransfer's offsets and a line produced after [`tail`] reported its
//! start positions is seen. Events are filtered by host and file
//! ([`Filter`], as `search` does) and by a regex on `message`.

use crate::config::ControlConfig;
use crate::kafka::{blocking, consumer, kafka_err, topics, TIMEOUT};
use crate::search::{Filter, Line};
use crate::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The topics tailed when none is given: logtransfer's default.
pub const DEFAULT_TOPICS: &[&str] = &["^.*_log$"];

/// What to tail and when to stop.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    /// Names, or regexes starting with `^`; empty: [`DEFAULT_TOPICS`].
    pub topics: Vec<String>,
    pub filter: Filter,
    /// A regex `message` must match.
    pub grep: Option<String>,
    /// Start this far back instead of at the end.
    pub since: Option<Duration>,
    /// Stop after this many matching events.
    pub max: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Where reading starts in one partition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Tails until `stop` completes, `max` events matched or `duration`
/// passed; `started` gets the start positions once they are assigned,
/// `on_line` every matching event, `on_warning` what the consumer reports
/// while it keeps going (a broker down: librdkafka reconnects). Returns how
/// many matched.
///
/// # Errors
/// A bad `--grep`, `--file` or `--topic` (named), a named topic that does
/// not exist, no topic matching, or Kafka failing for good.
pub async fn tail(
    cfg: &ControlConfig,
    t: &Tail,
    stop: impl Future<Output = ()>,
    started: impl FnOnce(&[Position]),
    mut on_line: impl FnMut(&Line),
    mut on_warning: impl FnMut(&str),
) -> Result<u64> {
    let grep = t
        .grep
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| Error::BadArgument {
            arg: "--grep".into(),
            message: e.to_string(),
        })?;
    let matcher = t.filter.matcher()?;
    let brokers = cfg.kafka.brokers.clone();
    let wanted: Vec<String> = if t.topics.is_empty() {
        DEFAULT_TOPICS.iter().map(|s| s.to_string()).collect()
    } else {
        t.topics.clone()
    };
    let since = t.since;
    let b = brokers.clone();
    let (tpl, positions) = blocking(move || start_positions(&b, &wanted, since)).await?;
    let c: StreamConsumer = consumer(&brokers, &tail_group())?;
    c.assign(&tpl)
        .map_err(|e| kafka_err(&brokers, "assigning partitions", e))?;
    started(&positions);

    let deadline = t.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, until_deadline);
    let mut matched = 0u64;
    while t.max.is_none_or(|m| matched < m) {
        let m = tokio::select! {
            () = &mut stop => break,
            () = &mut until_deadline => break,
            m = c.recv() => match m {
                Ok(m) => m,
                // Transport errors and the like: librdkafka retries.
                Err(KafkaError::MessageConsumption(code)) if !fatal(code) => {
                    on_warning(&format!("kafka ({brokers}): {code}"));
                    continue;
                }
                Err(e) => return Err(kafka_err(&brokers, "reading", e)),
            },
        };
        let line = event_line(
            m.topic(),
            m.partition(),
            m.offset(),
            m.payload(),
            m.timestamp().to_millis(),
        );
        if matcher.matches(&line.source) && grep.as_ref().is_none_or(|g| g.is_match(&line.message))
        {
            matched += 1;
            on_line(&line);
        }
    }
    Ok(matched)
}

/// Consumer errors a tail cannot go on after.
fn fatal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Fatal
    )
}

/// A group id no one else uses (it is never joined or committed to).
fn tail_group() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("logctl-tail-{}-{nanos}", std::process::id())
}

fn start_positions(
    brokers: &str,
    wanted: &[String],
    since: Option<Duration>,
) -> Result<(TopicPartitionList, Vec<Position>)> {
    let c: BaseConsumer = consumer(brokers, &tail_group())?;
    let found = topics(&c, brokers, wanted)?;
    if found.is_empty() {
        return Err(Error::NotFound(format!(
            "a topic matching {} in Kafka at {brokers}",
            wanted.join(", ")
        )));
    }
    let mut tpl = TopicPartitionList::new();
    let mut positions = Vec::new();
    let since_ms = since.map(|d| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |n| n.as_millis());
        i64::try_from(now.saturating_sub(d.as_millis())).unwrap_or(0)
    });
    let at_times = match since_ms {
        Some(ms) => {
            let mut q = TopicPartitionList::new();
            for (topic, n) in &found {
                for p in 0..*n {
                    q.add_partition_offset(topic, p, Offset::Offset(ms))
                        .map_err(|e| kafka_err(brokers, "offsets for --since", e))?;
                }
            }
            Some(
                c.offsets_for_times(q, TIMEOUT)
                    .map_err(|e| kafka_err(brokers, "offsets for --since", e))?,
            )
        }
        None => None,
    };
    for (topic, n) in &found {
        for p in 0..*n {
            let (_, high) = c
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| kafka_err(brokers, &format!("watermarks of {topic}/{p}"), e))?;
            let offset = match at_times.as_ref().and_then(|l| l.find_partition(topic, p)) {
                Some(el) => match el.offset() {
                    Offset::Offset(o) if o < high => o,
                    _ => high,
                },
                None => high,
            };
            tpl.add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(|e| kafka_err(brokers, "assigning partitions", e))?;
            positions.push(Position {
                topic: topic.clone(),
                partition: p,
                offset,
            });
        }
    }
    Ok((tpl, positions))
}

/// An event as the line logtransfer would index: JSON objects as they
/// are (`@timestamp` from Kafka when missing), anything else as
/// `{"message": <text>}`; its id is the document `_id` it gets.
pub fn event_line(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: Option<&[u8]>,
    ts_millis: Option<i64>,
) -> Line {
    let payload = payload.unwrap_or_default();
    let mut source = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => serde_json::json!({"message": String::from_utf8_lossy(payload)}),
    };
    if source.get("@timestamp").is_none() {
        if let Some(t) = ts_millis.and_then(chrono::DateTime::from_timestamp_millis) {
            source["@timestamp"] = t
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into();
        }
    }
    let mut l = Line::from_source(common::document_id(topic, partition, offset), source);
    l.topic = Some(topic.to_string());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_lines_with_their_document_id() {
        let l = event_line(
            "web_log",
            2,
            7,
            Some(br#"{"message":"hi","log":{"offset":5,"file":{"path":"/a"}}}"#),
            Some(0),
        );
        assert_eq!(l.id, "web_log-2-7");
        assert_eq!((l.message.as_str(), l.offset), ("hi", Some(5)));
        assert_eq!(l.timestamp, "1970-01-01T00:00:00.000Z");
        let raw = event_line("t", 0, 1, Some(b"plain \xff"), None);
        assert_eq!(raw.message, "plain \u{fffd}");
    }
}
