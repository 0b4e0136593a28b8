//! The Elasticsearch client (auth, TLS) and the index template installed at
//! start-up, so our search page and Kibana work on the indices as they are.

use crate::config::EsConfig;
use crate::doc::IndexPattern;
use crate::Error;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use std::time::Duration;

pub const TEMPLATE_NAME: &str = "logtransfer";

/// A transport to the configured node with its credentials and CA.
///
/// # Errors
/// A bad URL, or an unreadable or invalid CA file.
pub fn transport(cfg: &EsConfig) -> Result<Transport, Error> {
    let url = Url::parse(&cfg.url).map_err(|e| {
        Error::Setup(format!(
            "elasticsearch.url `{}`: {e}",
            common::secret::redact_url(&cfg.url)
        ))
    })?;
    let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(Duration::from_millis(cfg.timeout_ms));
    if let Some(key) = &cfg.api_key {
        b = b.auth(Credentials::EncodedApiKey(key.expose().to_string()));
    } else if let Some(user) = &cfg.username {
        b = b.auth(Credentials::Basic(
            user.clone(),
            cfg.password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        ));
    }
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| Error::Setup(format!("elasticsearch.ca_file {}: {e}", ca.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| Error::Setup(format!("elasticsearch.ca_file {}: {e}", ca.display())))?;
        b = b.cert_validation(CertificateValidation::Full(cert));
    }
    b.build()
        .map_err(|e| Error::Setup(format!("elasticsearch client: {e}")))
}

/// The composable index template for every index `pattern` makes.
pub fn template_body(pattern: &IndexPattern) -> Value {
    json!({
        "index_patterns": pattern.template_patterns(),
        "priority": 200,
        "_meta": {"managed_by": "logtransfer"},
        "template": {
            "settings": {"index": {"number_of_shards": 1, "refresh_interval": "1s"}},
            "mappings": {
                "dynamic_templates": [{
                    "strings_as_text_and_keyword": {
                        "match_mapping_type": "string",
                        "mapping": {
                            "type": "text",
                            "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}
                        }
                    }
                }],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "message": {"type": "text"},
                    "host": {"properties": {
                        "name": {"type": "keyword"},
                        "id": {"type": "keyword"}
                    }},
                    "agent": {"properties": {
                        "type": {"type": "keyword"},
                        "version": {"type": "keyword"}
                    }},
                    "log": {"properties": {
                        "offset": {"type": "long"},
                        "flags": {"type": "keyword"},
                        "file": {"properties": {
                            "path": {"type": "keyword"},
                            "device": {"type": "long"},
                            "inode": {"type": "long"},
                            "fingerprint": {"type": "keyword"}
                        }}
                    }},
                    "kafka": {"properties": {
                        "topic": {"type": "keyword"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "long"}
                    }},
                    "error": {"properties": {
                        "status": {"type": "integer"},
                        "type": {"type": "keyword"},
                        "reason": {"type": "text"}
                    }},
                    "original": {"type": "text", "index": false},
                    "original_index": {"type": "keyword"}
                }
            }
        }
    })
}

/// Installs (or replaces) the index template.
///
/// # Errors
/// Elasticsearch unreachable or refusing the template.
pub async fn install_template(client: &Elasticsearch, pattern: &IndexPattern) -> Result<(), Error> {
    let resp = client
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(TEMPLATE_NAME))
        .body(template_body(pattern))
        .send()
        .await
        .map_err(|e| Error::Sink(format!("installing the index template: {e}")))?;
    let status = resp.status_code().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(Error::Sink(format!(
            "installing the index template: HTTP {status}: {text}"
        )));
    }
    Ok(())
}
