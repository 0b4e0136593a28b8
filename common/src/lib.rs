//! Pieces shared by `logagent` and `logtransfer`.
//!
//! - [`agent_state`]: what an agent publishes about itself in etcd.
//! - [`event`]: the JSON event the agent produces to Kafka and the transfer indexes.
//! - [`config`]: loading a TOML config file with `${ENV}` interpolation and
//!   errors that name the file and the offending key.
//! - [`http`]: the `/metrics` and `/health` endpoints.
//! - [`secret`]: secrets that are never printed; masking of client settings
//!   and URL credentials.

pub mod agent_state;
pub mod config;
pub mod event;
pub mod host;
pub mod http;
pub mod secret;

pub use config::{check_brokers, check_endpoint_url, load_config, valid_topic, ConfigError};
pub use event::{distinct_document_id, document_id, LogEvent};
pub use secret::Secret;

/// Installs the `tracing` subscriber used by both binaries: compact text on
/// stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
