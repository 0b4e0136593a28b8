//! Helpers for the integration tests: the stack's endpoints from the
//! environment (`eval "$(scripts/stack env)"`) and unique names per test run.

use std::time::{SystemTime, UNIX_EPOCH};

/// Endpoints of the local stack started by `scripts/stack up`.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_brokers: String,
    pub es_url: String,
    pub etcd_endpoints: Vec<String>,
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: these tests run against the real stack. Start it with \
             `scripts/stack up` and export its endpoints with `eval \"$(scripts/stack env)\"` \
             (or run `scripts/test`, which does both)"
        ),
    }
}

impl Stack {
    /// Reads `KAFKA_BROKERS`, `ES_URL` and `ETCD_ENDPOINTS`.
    ///
    /// # Panics
    /// With a message saying how to start the stack when one is missing.
    pub fn from_env() -> Self {
        Self {
            kafka_brokers: required("KAFKA_BROKERS"),
            es_url: required("ES_URL"),
            etcd_endpoints: required("ETCD_ENDPOINTS")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
        }
    }
}

/// A name unique to this process and call, for topics, indices and keys.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}
