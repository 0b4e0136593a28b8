//! `logagent`: file harvesting, the write-ahead spool and the Kafka producer.
//!
//! - [`config`]: the local TOML config (`--config`, `--check-config`).
//! - [`harvester`]: finding files, identity, lines, rotation.
//! - [`collect`]: collect entries from etcd (parsing, validation, merging).
//! - [`etcd_config`]: following those entries in etcd (get + watch, re-get).
//! - [`spool`]: harvested lines → WAL → durable checkpoints.
//! - [`ship`]: WAL → Kafka → WAL acks, with a read-back after a crash.
//! - [`refusal`]: which Kafka refusals are for good; dead letters (pure).
//! - [`spread`]: which partition each file goes to (`by_file`; pure).
//! - [`event`]: the JSON event and headers of each line (pure).
//! - [`run`]: start-up, hot reload, registration, signals, shutdown.
//! - [`metrics`]: `/metrics` and `/health`.

pub mod collect;
pub mod config;
pub mod etcd_config;
pub mod event;
pub mod gc;
pub mod harvester;
pub mod host_events;
pub mod metrics;
pub mod refusal;
pub mod report;
pub mod run;
pub mod ship;
pub mod spool;
pub mod spread;

/// Errors of the agent crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
    #[error(transparent)]
    Wal(#[from] wal::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("logagent stopped: {0}")]
    Stopped(String),
}
