//! The agent's and the transfer's config loaders: any text (first byte:
//! which one) is parsed with `${VAR}` interpolation and validated, never a
//! panic; every error names the file. A config that loads:
//! - prints (`--check-config`) as TOML that loads and validates again and
//!   prints the same (unless a value holds a literal `${`, which the printed
//!   form would interpolate);
//! - shows no planted secret (passwords, API key, unknown client settings,
//!   URL credentials) in that output, nor passwords and client settings in
//!   `Debug`.
#![no_main]
use agent::config::AgentConfig;
use common::{ConfigError, Secret};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use std::path::Path;
use transfer::config::TransferConfig;

const PLANTED: &str = "Pl4ntedS3cretQx7";

/// What both configs offer: validation, the printed form, secrets to plant.
trait Config: DeserializeOwned + std::fmt::Debug {
    const FILE: &'static str;
    fn validate(&self, path: &Path) -> Result<(), ConfigError>;
    fn shown(&self) -> String;
    /// Secrets shown nowhere, `Debug` included.
    fn plant_hidden(&mut self);
    /// URL credentials, masked in the printed form only.
    fn plant_urls(&mut self);
}

impl Config for AgentConfig {
    const FILE: &'static str = "agent.toml";
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        AgentConfig::validate(self, path)
    }
    fn shown(&self) -> String {
        self.to_redacted_toml()
    }
    fn plant_hidden(&mut self) {
        self.etcd.password = Some(Secret::new(PLANTED));
        let producer = &mut self.kafka.producer.0;
        producer.insert("sasl.password".into(), PLANTED.into());
        producer.insert("ssl.key.pem".into(), PLANTED.into());
    }
    fn plant_urls(&mut self) {
        let brokers = format!(",sasl_ssl://u:{PLANTED}@b:9092");
        self.kafka.brokers.push_str(&brokers);
        self.etcd
            .endpoints
            .push(format!("https://u:{PLANTED}@e:2379"));
    }
}

impl Config for TransferConfig {
    const FILE: &'static str = "transfer.toml";
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        TransferConfig::validate(self, path)
    }
    fn shown(&self) -> String {
        // Derived names never panic either.
        let _ = self.template_name();
        self.to_redacted_toml()
    }
    fn plant_hidden(&mut self) {
        self.elasticsearch.password = Some(Secret::new(PLANTED));
        self.elasticsearch.api_key = Some(Secret::new(PLANTED));
        let consumer = &mut self.kafka.consumer.0;
        consumer.insert("sasl.password".into(), PLANTED.into());
    }
    fn plant_urls(&mut self) {
        self.kafka.brokers.push_str(&format!(",u:{PLANTED}@b:9092"));
        self.elasticsearch.url = format!("https://elastic:{PLANTED}@es:9200");
    }
}

fn load<T: Config>(text: &str) -> Result<T, ConfigError> {
    let path = Path::new(T::FILE);
    let lookup = |k: &str| (k == "SET").then(|| "v".to_string());
    let cfg: T = common::config::parse_config(path, text, lookup)?;
    cfg.validate(path)?;
    Ok(cfg)
}

fn check<T: Config>(text: &str) {
    let mut cfg = match load::<T>(text) {
        Ok(c) => c,
        Err(e) => return assert!(e.to_string().contains(T::FILE), "{e}"),
    };
    let shown = cfg.shown();
    if !shown.contains("${") {
        let again = load::<T>(&shown)
            .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{shown}"));
        assert_eq!(again.shown(), shown);
    }
    if text.contains(PLANTED) {
        return;
    }
    cfg.plant_hidden();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains(PLANTED), "{debug}");
    cfg.plant_urls();
    let shown = cfg.shown();
    assert!(!shown.contains(PLANTED), "{shown}");
}

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which & 1 == 0 {
        check::<AgentConfig>(text);
    } else {
        check::<TransferConfig>(text);
    }
});
