//! `logctl check`: is each service reachable, and what version is it.

use crate::config::ControlConfig;
use std::time::Duration;

/// One service's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceCheck {
    pub service: &'static str,
    pub address: String,
    pub ok: bool,
    /// A version, or the error.
    pub detail: String,
}

/// Checks etcd (status), Elasticsearch (`GET /`) and Kafka (a TCP connect
/// to each broker; the control library does not link a Kafka client).
pub async fn check(cfg: &ControlConfig) -> Vec<ServiceCheck> {
    let mut out = Vec::new();
    let endpoints = cfg.etcd.endpoints.join(",");
    out.push(match crate::Control::connect(cfg).await {
        Ok(mut c) => match c.etcd.status().await {
            Ok(s) => ServiceCheck {
                service: "etcd",
                address: endpoints,
                ok: true,
                detail: format!("etcd {}", s.version()),
            },
            Err(e) => ServiceCheck {
                service: "etcd",
                address: endpoints,
                ok: false,
                detail: e.to_string(),
            },
        },
        Err(e) => ServiceCheck {
            service: "etcd",
            address: endpoints,
            ok: false,
            detail: e.to_string(),
        },
    });
    for b in cfg
        .kafka
        .brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        let r =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(b)).await;
        out.push(ServiceCheck {
            service: "kafka",
            address: b.to_string(),
            ok: matches!(r, Ok(Ok(_))),
            detail: match r {
                Ok(Ok(_)) => "accepts connections".into(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 3 s".into(),
            },
        });
    }
    out.push(es_check(&cfg.elasticsearch.url).await);
    out
}

async fn es_check(url: &str) -> ServiceCheck {
    let shown = common::secret::redact_url(url);
    let res = es_version(url).await;
    ServiceCheck {
        service: "elasticsearch",
        address: shown,
        ok: res.is_ok(),
        detail: res.unwrap_or_else(|e| e),
    }
}

/// The cluster's health and a node's version, from `_cluster/health` and
/// `_nodes/_local` (the integ-test distribution has no `GET /`).
async fn es_version(url: &str) -> Result<String, String> {
    let health = es_get(url, "/_cluster/health").await?;
    let nodes = es_get(url, "/_nodes/_local?filter_path=nodes.*.version").await?;
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

/// A GET with a plain HTTP/1.1 request (http:// only; basic auth from the
/// URL is not sent: this is a reachability check).
async fn es_get(url: &str, path: &str) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// is checked here".to_string())?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.rsplit('@').next().unwrap_or(host);
    let mut s = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    let (head, json) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(format!("{path}: {status}"));
    }
    serde_json::from_str(json)
        .map_err(|_| format!("{path}: not JSON (chunked or not Elasticsearch)"))
}
