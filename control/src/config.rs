//! logctl's (and the console's) config: where the services are. TOML with
//! the same `${VAR}` / `${VAR:-default}` rules as the agent's; every key has
//! a default that reaches the local stack (`scripts/stack`), and the
//! environment the stack prints (`ETCD_ENDPOINTS`, `KAFKA_BROKERS`,
//! `ES_URL`) overrides those defaults when no file is given.
//!
//! ```toml
//! [etcd]
//! endpoints = ["http://127.0.0.1:2379"]
//! prefix = "/logagent"
//! # username, password, ca_file, cert_file, key_file as in the agent's [etcd]
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! [elasticsearch]
//! url = "http://127.0.0.1:9200"
//! # the indices `search` and `context` read (logtransfer's, not its dead letters)
//! index = "*,-*-deadletter"
//! ```

use common::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub etcd: EtcdConfig,
    pub kafka: KafkaConfig,
    pub elasticsearch: EsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<common::Secret>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/logagent".into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EsConfig {
    pub url: String,
    /// The indices (a comma-separated multi-target expression) that search
    /// and context read. Default `*,-*-deadletter`: every index but dead
    /// letters (logtransfer's are `{topic}-%Y.%m.%d`).
    pub index: String,
}

impl Default for EsConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            index: "*,-*-deadletter".into(),
        }
    }
}

impl ControlConfig {
    /// The file's config, or (no file) the defaults with the stack's
    /// environment applied; validated.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a value is unusable (named).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (cfg, at) = match path {
            Some(p) => (common::load_config::<Self>(p)?, p.to_path_buf()),
            None => (
                Self::from_env(|k| std::env::var(k).ok()),
                PathBuf::from("(defaults)"),
            ),
        };
        cfg.validate(&at)?;
        Ok(cfg)
    }

    /// Defaults, with `ETCD_ENDPOINTS` (comma-separated), `KAFKA_BROKERS`,
    /// `ES_URL` and `LOGAGENT_PREFIX` from `env` when set.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let mut c = Self::default();
        if let Some(e) = env("ETCD_ENDPOINTS") {
            c.etcd.endpoints = e.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(b) = env("KAFKA_BROKERS") {
            c.kafka.brokers = b;
        }
        if let Some(u) = env("ES_URL") {
            c.elasticsearch.url = u;
        }
        if let Some(p) = env("LOGAGENT_PREFIX") {
            c.etcd.prefix = p;
        }
        c
    }

    /// Checks every value, naming the key at fault.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.etcd.endpoints.is_empty() {
            return Err(bad(
                "etcd.endpoints",
                "must list at least one endpoint".into(),
            ));
        }
        for (i, e) in self.etcd.endpoints.iter().enumerate() {
            common::check_endpoint_url(e).map_err(|m| bad(&format!("etcd.endpoints[{i}]"), m))?;
        }
        if !self.etcd.prefix.starts_with('/') {
            return Err(bad("etcd.prefix", "must start with '/'".into()));
        }
        common::check_brokers(&self.kafka.brokers).map_err(|m| bad("kafka.brokers", m))?;
        common::check_endpoint_url(&self.elasticsearch.url)
            .map_err(|m| bad("elasticsearch.url", m))?;
        if self.elasticsearch.index.trim().is_empty() {
            return Err(bad("elasticsearch.index", "must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reach_the_local_stack_and_env_overrides() {
        let c = ControlConfig::from_env(|k| {
            (k == "ETCD_ENDPOINTS").then(|| "http://a:1,http://b:2".into())
        });
        assert_eq!(c.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        c.validate(Path::new("x")).unwrap();
    }

    #[test]
    fn a_bad_value_is_named() {
        let err = common::config::parse_config::<ControlConfig>(
            Path::new("logctl.toml"),
            "[etcd]\nprefix = \"nope\"\n",
            |_| None,
        )
        .unwrap()
        .validate(Path::new("logctl.toml"))
        .unwrap_err()
        .to_string();
        assert!(err.contains("etcd.prefix"), "{err}");
    }
}
