//! `logagent`: file harvesting, the write-ahead spool and the Kafka producer.
//!
//! - [`config`]: the local TOML config (`--config`, `--check-config`).
//! - [`harvester`]: finding files, identity, lines, rotation.
//! - [`collect`]: collect entries from etcd (parsing, validation, merging).
//! - [`etcd_config`]: following those entries in etcd (get + watch, re-get).

pub mod collect;
pub mod config;
pub mod etcd_config;
pub mod harvester;

/// Errors of the agent crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
}
