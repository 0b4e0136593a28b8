//! `logctl check`: is each service reachable, what version is it, and how
//! far behind is the transfer's consumer group.

use crate::config::ControlConfig;
use crate::es::Es;
use rdkafka::consumer::BaseConsumer;

/// One check's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceCheck {
    pub service: &'static str,
    pub address: String,
    pub ok: bool,
    /// A version or state, or the error.
    pub detail: String,
}

fn answer(service: &'static str, address: String, r: Result<String, String>) -> ServiceCheck {
    ServiceCheck {
        service,
        address,
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
    }
}

/// Checks etcd (its status), Kafka (metadata: brokers and topics),
/// Elasticsearch (cluster health and a node's version) and the consumer
/// group `group` (its total lag; not ok when it committed nothing).
pub async fn check(cfg: &ControlConfig, group: &str) -> Vec<ServiceCheck> {
    let mut out = Vec::new();
    let endpoints = cfg.etcd.endpoints.join(",");
    let etcd = match crate::Control::connect(cfg).await {
        Ok(mut c) => c
            .etcd
            .status()
            .await
            .map(|s| format!("etcd {}", s.version()))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    out.push(answer("etcd", endpoints, etcd));

    let brokers = cfg.kafka.brokers.clone();
    let b = brokers.clone();
    let kafka = tokio::task::spawn_blocking(move || -> Result<String, String> {
        use rdkafka::consumer::Consumer;
        let c: BaseConsumer =
            crate::kafka::consumer(&b, "logctl-check").map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(None, crate::kafka::TIMEOUT)
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "{} broker(s), {} topics",
            md.brokers().len(),
            md.topics()
                .iter()
                .filter(|t| !t.name().starts_with("__"))
                .count()
        ))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    out.push(answer("kafka", brokers, kafka));

    let es = match Es::new(&cfg.elasticsearch) {
        Ok(es) => es_version(&es).await,
        Err(e) => Err(e.to_string()),
    };
    out.push(answer(
        "elasticsearch",
        common::secret::redact_url(&cfg.elasticsearch.url),
        es,
    ));

    let lag = match crate::lag::lag(cfg, group, &[]).await {
        Ok(parts) => {
            let total: i64 = parts.iter().map(|p| p.lag).sum();
            Ok(format!("{} partitions, lag {total} messages", parts.len()))
        }
        Err(e) => Err(e.to_string()),
    };
    out.push(answer("transfer group", group.to_string(), lag));
    out
}

/// The cluster's health and a node's version (the integ-test distribution
/// has no `GET /`).
async fn es_version(es: &Es) -> Result<String, String> {
    let health = es
        .get("/_cluster/health")
        .await
        .map_err(|e| e.to_string())?;
    let nodes = es
        .get("/_nodes/_local?filter_path=nodes.*.version")
        .await
        .map_err(|e| e.to_string())?;
    let version = nodes["nodes"]
        .as_object()
        .and_then(|n| n.values().next())
        .and_then(|n| n["version"].as_str())
        .unwrap_or("?")
        .to_string();
    Ok(format!(
        "elasticsearch {version}, cluster {} {}",
        health["cluster_name"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?")
    ))
}
