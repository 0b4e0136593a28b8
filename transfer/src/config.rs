//! The transfer's config file (TOML). Unknown keys are errors that name the key.

use common::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// librdkafka consumer settings that the delivery contract depends on.
pub const PINNED_CONSUMER_SETTINGS: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    pub kafka: KafkaConfig,
    pub elasticsearch: EsConfig,
    #[serde(default)]
    pub bulk: BulkConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics to subscribe to; entries starting with `^` are regexes.
    pub topics: Vec<String>,
    /// Extra librdkafka consumer settings passed through (TLS/SASL…).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsConfig {
    pub url: String,
    /// `{topic}` plus strftime fields of the event's `@timestamp`.
    #[serde(default = "default_index_pattern")]
    pub index_pattern: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    #[serde(default = "default_max_docs")]
    pub max_docs: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            max_docs: default_max_docs(),
            max_bytes: default_max_bytes(),
            flush_interval_ms: default_flush_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_group() -> String {
    "logtransfer".into()
}
fn default_index_pattern() -> String {
    "{topic}-%Y.%m.%d".into()
}
fn default_max_docs() -> usize {
    5000
}
fn default_max_bytes() -> usize {
    5 << 20
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9102".into()
}

impl TransferConfig {
    /// Loads and validates the config at `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = common::load_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks values that TOML types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key at fault.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.kafka.brokers.trim().is_empty() {
            return Err(bad(
                "kafka.brokers",
                "must list at least one host:port".into(),
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(bad("kafka.group_id", "must not be empty".into()));
        }
        if self.kafka.topics.is_empty() {
            return Err(bad("kafka.topics", "must list at least one topic".into()));
        }
        for key in self.kafka.consumer.keys() {
            if PINNED_CONSUMER_SETTINGS.contains(&key.as_str()) {
                return Err(bad(
                    &format!("kafka.consumer.\"{key}\""),
                    "is fixed by logtransfer's delivery contract and cannot be overridden".into(),
                ));
            }
        }
        let url = &self.elasticsearch.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(
                "elasticsearch.url",
                format!("`{url}` must start with http:// or https://"),
            ));
        }
        if !self.elasticsearch.index_pattern.contains("{topic}")
            && self.elasticsearch.index_pattern.trim().is_empty()
        {
            return Err(bad(
                "elasticsearch.index_pattern",
                "must not be empty".into(),
            ));
        }
        if self.elasticsearch.password.is_some() && self.elasticsearch.username.is_none() {
            return Err(bad(
                "elasticsearch.password",
                "is set without elasticsearch.username".into(),
            ));
        }
        if self.bulk.max_docs == 0 {
            return Err(bad("bulk.max_docs", "must be at least 1".into()));
        }
        if self.bulk.max_bytes < 1024 {
            return Err(bad("bulk.max_bytes", "must be at least 1024".into()));
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen",
                format!("`{}` is not an ip:port address", self.metrics.listen),
            ));
        }
        Ok(())
    }

    /// The effective config as TOML, with secrets replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [
            &mut shown.elasticsearch.password,
            &mut shown.elasticsearch.api_key,
        ] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        for (k, v) in shown.kafka.consumer.iter_mut() {
            if k.contains("password") || k.contains("secret") {
                *v = "***".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["web_log"]
[elasticsearch]
url = "http://127.0.0.1:9200"
"#;

    fn parse(text: &str) -> Result<TransferConfig, ConfigError> {
        let path = Path::new("transfer.toml");
        let cfg: TransferConfig = common::config::parse_config(path, text, |_| None)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.kafka.group_id, "logtransfer");
        assert_eq!(cfg.elasticsearch.index_pattern, "{topic}-%Y.%m.%d");
        assert_eq!(cfg.bulk.max_docs, 5000);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}[bulk]\nmax_doc = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_doc"), "{err}");
    }

    #[test]
    fn auto_commit_cannot_be_turned_on() {
        let err = parse(&format!(
            "{MINIMAL}[kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn bad_url_is_named() {
        let err = parse(&MINIMAL.replace("http://127.0.0.1:9200", "127.0.0.1:9200"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("elasticsearch.url"), "{err}");
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let cfg = parse(&format!("{MINIMAL}api_key = \"sekrit\"\n")).unwrap();
        assert!(!cfg.to_redacted_toml().contains("sekrit"));
    }
}
