//! Kafka clients of the control library: consumers that never join a
//! group and never commit (tail, lag), and which topics a list of names
//! and `^regex`es means. The calls here block; callers run them on a
//! blocking thread.

use crate::{Error, Result};
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// How long a metadata or offsets request may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn kafka_err(brokers: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka {
        brokers: brokers.to_string(),
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// A consumer with `group.id` `group` that commits nothing: auto-commit
/// and the offset store are off, and it is only ever `assign`ed.
pub(crate) fn consumer<C: FromClientConfig>(brokers: &str, group: &str) -> Result<C> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| kafka_err(brokers, "creating a consumer", e))
}

/// The topics (and their partition count) that `wanted` names: exact
/// names, or regexes when they start with `^`; every non-internal topic
/// when `wanted` is empty. Sorted by name.
///
/// # Errors
/// A bad regex or a named topic that does not exist (named), or no
/// metadata from the brokers.
pub(crate) fn topics(
    c: &BaseConsumer,
    brokers: &str,
    wanted: &[String],
) -> Result<Vec<(String, i32)>> {
    let mut regexes = Vec::new();
    for w in wanted.iter().filter(|w| w.starts_with('^')) {
        regexes.push(regex::Regex::new(w).map_err(|e| Error::BadArgument {
            arg: "--topic".into(),
            message: format!("`{w}`: {e}"),
        })?);
    }
    let md = c
        .fetch_metadata(None, TIMEOUT)
        .map_err(|e| kafka_err(brokers, "reading topic metadata", e))?;
    let mut out: Vec<(String, i32)> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .filter(|t| {
            let n = t.name();
            if wanted.is_empty() {
                !n.starts_with("__")
            } else {
                wanted.iter().any(|w| w == n) || regexes.iter().any(|r| r.is_match(n))
            }
        })
        .map(|t| {
            (
                t.name().to_string(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect();
    out.sort();
    for w in wanted.iter().filter(|w| !w.starts_with('^')) {
        if !out.iter().any(|(n, _)| n == w) {
            return Err(Error::NotFound(format!(
                "topic `{w}` in Kafka at {brokers}"
            )));
        }
    }
    Ok(out)
}

/// Runs blocking Kafka calls off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io {
            what: "a Kafka call".into(),
            message: e.to_string(),
        })?
}
