//! `logagent`: file harvesting, the write-ahead spool and the Kafka producer.
//!
//! - [`config`]: the local TOML config (`--config`, `--check-config`).

pub mod config;

/// Errors of the agent crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
}
