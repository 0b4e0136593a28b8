//! `logtransfer`: Kafka consumer group → Elasticsearch bulk writer.
//!
//! - [`config`]: the TOML config (`--config`, `--check-config`).

pub mod config;

/// Errors of the transfer crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
}
