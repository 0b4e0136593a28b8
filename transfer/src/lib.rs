//! `logtransfer`: Kafka consumer group → Elasticsearch bulk writer.
//!
//! - [`config`]: the TOML config (`--config`, `--check-config`).
//! - [`doc`]: Kafka message → document (index, `_id`, source); dead letters.
//! - [`bulk`]: the `_bulk` body and per-item outcomes.
//! - [`sink`]: the [`sink::Sink`] trait; Elasticsearch and NDJSON file sinks.
//! - [`sql`]: PostgreSQL and MariaDB sinks (a table per route).
//! - [`redis_sink`]: the Redis sink (a stream or list per route).
//! - [`dlq`]: the dead-letter Kafka topic (fallback or instead of the index).
//! - [`es`]: client construction and the index template.
//! - [`kafka`]: librdkafka defaults; re-bootstrapping a client left with no
//!   broker.
//! - [`pipeline`]: consume, batch, write, commit (the commit rule is there).
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/health`.

pub mod bulk;
pub mod config;
pub mod dlq;
pub mod doc;
pub mod es;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod redis_sink;
pub mod sink;
pub mod sql;

/// Errors of the transfer crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
    /// Something needed to start is missing or wrong.
    #[error("{0}")]
    Setup(String),
    /// A sink write failed as a whole (retried).
    #[error("{0}")]
    Sink(String),
    /// The sink refused the request for its size (HTTP 413): the batch is
    /// split, and a single document that is still too large dead-lettered.
    #[error("a bulk request of {bytes} bytes is too large for the sink (HTTP 413)")]
    TooLarge { bytes: usize },
}
