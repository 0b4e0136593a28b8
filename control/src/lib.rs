//! The control library of logpipe: what `logctl` and the web console do,
//! written once.
//!
//! - [`config`]: where etcd, Kafka and Elasticsearch are (TOML, `${ENV}`).
//! - [`collect`]: collect entries in etcd — read, validate with exactly
//!   the agent's parser and the target host's `allowed_roots`, write with
//!   compare-and-swap on `mod_revision`, history and rollback from etcd's
//!   revisions, waiting until the agent reports a revision applied.
//! - [`agents`]: the agents' published state (`common::agent_state`) and
//!   liveness (the lease-kept key exists).
//! - [`check`]: are etcd, Kafka and Elasticsearch reachable.
//! - [`search`]: the documents logtransfer wrote, by query, time, host and
//!   file, newest first; the filters ([`search::Filter`]) shared with `tail`.
//! - [`context`]: the lines around a document *in its source file* (host
//!   and file identity, `log.offset` order).
//! - [`tail`]: events live from Kafka, assigned partitions, no group.
//! - [`lag`]: a consumer group's committed offsets against the partitions'
//!   high watermarks.
//! - [`explore`]: the console's search: a page of lines, the histogram and
//!   the fields' top values in one request; export; a line's provenance.
//! - [`live`]: the console's query evaluated on a live event.
//! - [`completeness`]: why search results may be incomplete (agents down
//!   or paused, the transfer behind).
//! - [`dlq`]: the dead letters logtransfer wrote (`<index>-deadletter`).
//!
//! Every fallible call returns [`Error`]; [`Error::exit_code`] maps it to
//! logctl's exit codes (1: refused, conflict, not found; 2: config/usage).

pub mod agents;
pub mod check;
pub mod collect;
pub mod completeness;
pub mod config;
pub mod context;
pub mod dlq;
mod es;
pub mod explore;
mod kafka;
pub mod lag;
pub mod live;
pub mod search;
pub mod tail;

use std::time::Duration;

/// Errors of the control library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
    #[error("etcd ({endpoints}): {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    /// The value would be refused by the agent (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// Someone else changed the key since it was read (nothing written).
    #[error("conflict: {key} changed since it was read (at revision {expected}, now {actual}); read it again and retry")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    #[error("not found: {0}")]
    NotFound(String),
    /// The agent refused the value once written (its reason).
    #[error("the agent refused revision {revision} of {key}: {reason}")]
    Refused {
        key: String,
        revision: i64,
        reason: String,
    },
    #[error("timed out after {waited:?}: {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    /// A command-line argument (or its value) that cannot be used.
    #[error("{arg}: {message}")]
    BadArgument { arg: String, message: String },
    /// Elasticsearch answered with an error status.
    #[error("elasticsearch ({address}) answered {status} to {what}: {reason}")]
    Elasticsearch {
        address: String,
        what: String,
        status: u16,
        reason: String,
    },
    #[error("kafka ({brokers}): {what}: {message}")]
    Kafka {
        brokers: String,
        what: String,
        message: String,
    },
}

impl Error {
    /// logctl's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::BadArgument { .. } => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection to the control plane (etcd) with the prefix in use.
#[derive(Clone)]
pub struct Control {
    pub(crate) etcd: etcd_client::Client,
    pub(crate) prefix: String,
    pub(crate) endpoints: String,
}

impl Control {
    /// Connects to etcd as configured.
    ///
    /// # Errors
    /// No etcd endpoint answers, or the CA file cannot be read.
    pub async fn connect(cfg: &config::ControlConfig) -> Result<Self> {
        let endpoints = cfg.etcd.endpoints.join(",");
        let tls = agent::etcd_config::EtcdTls::load(
            cfg.etcd.ca_file.as_deref(),
            cfg.etcd.cert_file.as_deref(),
            cfg.etcd.key_file.as_deref(),
        )
        .map_err(|(what, e)| Error::Io {
            what,
            message: e.to_string(),
        })?;
        let user = cfg
            .etcd
            .username
            .as_ref()
            .map(|u| (u.clone(), cfg.etcd.password.clone().unwrap_or_default()));
        let etcd = agent::etcd_config::connect_to(&cfg.etcd.endpoints, user.as_ref(), &tls)
            .await
            .map_err(|source| Error::Etcd {
                endpoints: endpoints.clone(),
                source,
            })?;
        Ok(Self {
            etcd,
            prefix: cfg.etcd.prefix.trim_end_matches('/').to_string(),
            endpoints,
        })
    }

    pub(crate) fn etcd_err(&self, source: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// The etcd prefix (`/logagent`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
