//! The Elasticsearch client (auth, TLS) and the index template installed at
//! start-up, so our search page and Kibana work on the indices as they are.

use crate::config::EsConfig;
use crate::doc::IndexPattern;
use crate::Error;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use elasticsearch::http::Url;
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use std::time::Duration;

/// `e` with every cause under it (`error sending request …: … certificate
/// verify failed`): the top level alone does not say what went wrong.
pub fn describe(e: &elasticsearch::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// The nodes of `elasticsearch.url`: one URL, or several separated by
/// commas (the nodes of one cluster, used in turn; a request that fails on
/// one is retried like any other, and the next goes to the next node).
///
/// # Errors
/// An empty list, or a URL that does not parse or is not http(s).
pub fn node_urls(urls: &str) -> Result<Vec<Url>, String> {
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    if nodes.iter().any(|u| u.is_empty()) {
        return Err("an empty URL in the list".into());
    }
    nodes
        .into_iter()
        .map(|u| {
            let shown = common::secret::redact_url(u);
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("`{shown}` must start with http:// or https://"));
            }
            Url::parse(u).map_err(|e| format!("`{shown}`: {e}"))
        })
        .collect()
}

/// A transport to the configured node (or nodes, in turn) with its
/// credentials and CA.
///
/// # Errors
/// A bad URL, or an unreadable or invalid CA file.
pub fn transport(cfg: &EsConfig) -> Result<Transport, Error> {
    let mut urls =
        node_urls(&cfg.url).map_err(|e| Error::Setup(format!("elasticsearch.url: {e}")))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut b = if urls.len() == 1 {
        TransportBuilder::new(SingleNodeConnectionPool::new(urls.remove(0)))
    } else {
        TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
    }
    .timeout(timeout);
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

/// The composable index template for every index `pattern` makes for
/// `topics` (see [`IndexPattern::template_patterns`]).
pub fn template_body(pattern: &IndexPattern, topics: &[String]) -> Value {
    json!({
        "index_patterns": pattern.template_patterns(topics),
        "priority": 200,
        "_meta": {"managed_by": "logtransfer"},
        "template": {
            "settings": {"index": {"number_of_shards": 1, "refresh_interval": "1s"}},
            "mappings": {
                "dynamic_templates": [{
                    // The agent's host metrics: a value that happens to be
                    // whole in the first sample must not map the field as long.
                    "host_metrics_as_double": {
                        "path_match": "host_metrics.*",
                        "match_mapping_type": "long",
                        "mapping": {"type": "double"}
                    }
                }, {
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
                    "stream": {"type": "keyword"},
                    "container": {"properties": {"id": {"type": "keyword"}}},
                    "kubernetes": {"properties": {
                        "namespace": {"type": "keyword"},
                        "pod": {"properties": {
                            "name": {"type": "keyword"},
                            "uid": {"type": "keyword"}
                        }},
                        "container": {"properties": {"name": {"type": "keyword"}}}
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

/// Installs (or replaces) the index template `name`. Composable templates
/// whose patterns overlap may not share a priority (another deployment's
/// template on the same topics, or the older broad `logtransfer` one): on
/// that refusal the next priority is tried, up to 64 of them; overlapping
/// templates are ours and give the same mapping.
///
/// # Errors
/// Elasticsearch unreachable or refusing the template.
pub async fn install_template(
    client: &Elasticsearch,
    name: &str,
    pattern: &IndexPattern,
    topics: &[String],
) -> Result<(), Error> {
    let mut body = template_body(pattern, topics);
    let base = body["priority"].as_u64().unwrap_or(200);
    for priority in base..base + 64 {
        body["priority"] = json!(priority);
        let resp = client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(name))
            .body(body.clone())
            .send()
            .await
            .map_err(|e| {
                Error::Sink(format!(
                    "installing the index template {name}: {}",
                    describe(&e)
                ))
            })?;
        let status = resp.status_code().as_u16();
        if status == 200 {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        if !(status == 400 && text.contains("same priority")) {
            return Err(Error::Sink(format!(
                "installing the index template {name}: HTTP {status}: {text}"
            )));
        }
    }
    Err(Error::Sink(format!(
        "installing the index template {name}: every priority from {base} to {} is taken by overlapping templates",
        base + 63
    )))
}

/// Index names the template must apply to, as `pattern` names them today:
/// a topic name's own index; for a regex (`^app_.*`), its literal prefix
/// followed by `x`.
pub fn sample_indices(pattern: &IndexPattern, topics: &[String]) -> Vec<String> {
    let now = chrono::Utc::now();
    let mut out: Vec<String> = topics
        .iter()
        .map(|t| match t.strip_prefix('^') {
            None => pattern.render(t, now),
            Some(re) => {
                let lit: String = re
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
                    .collect();
                pattern.render(&format!("{lit}x"), now)
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether the mapping Elasticsearch would give a new `index` lacks ours:
/// another index template of a higher priority that matches our indices
/// wins silently (composable templates do not merge), and without our
/// properties (`host.id` and `log.file.path` as keywords, `log.offset` a
/// number) sorting, context and the console's sidebar break. Then the names
/// Elasticsearch lists as overlapping but not applied (ours among them).
/// Another logtransfer's template with the same properties is no problem.
///
/// # Errors
/// Elasticsearch unreachable or refusing the simulation.
pub async fn shadowed(
    client: &Elasticsearch,
    pattern: &IndexPattern,
    topics: &[String],
    index: &str,
) -> Result<Option<Vec<String>>, Error> {
    use elasticsearch::indices::IndicesSimulateIndexTemplateParts;
    let fail = |m: String| Error::Sink(format!("simulating the template of index {index}: {m}"));
    let resp = client
        .indices()
        .simulate_index_template(IndicesSimulateIndexTemplateParts::Name(index))
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let status = resp.status_code().as_u16();
    let v: Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
    if status != 200 {
        return Err(fail(format!("HTTP {status}: {v}")));
    }
    let want = &template_body(pattern, topics)["template"]["mappings"]["properties"];
    if &v["template"]["mappings"]["properties"] == want {
        return Ok(None);
    }
    Ok(Some(
        v["overlapping"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    ))
}

/// Deletes our indices (matching `patterns`) whose day, read from their
/// name by `pattern`, is before `cutoff`; returns their names. ILM-free
/// retention.
///
/// # Errors
/// Elasticsearch unreachable or refusing the listing; a refused deletion
/// is logged and the others go on.
pub async fn delete_older_than(
    client: &Elasticsearch,
    patterns: &[String],
    pattern: &IndexPattern,
    dead_letter_suffix: &str,
    cutoff: chrono::NaiveDate,
) -> Result<Vec<String>, Error> {
    use elasticsearch::cat::CatIndicesParts;
    use elasticsearch::indices::IndicesDeleteParts;
    let parts: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let resp = client
        .cat()
        .indices(CatIndicesParts::Index(&parts))
        .format("json")
        .h(&["index"])
        .send()
        .await
        .map_err(|e| Error::Sink(format!("listing indices for retention: {}", describe(&e))))?;
    let rows: Value = resp
        .json()
        .await
        .map_err(|e| Error::Sink(format!("listing indices for retention: {}", describe(&e))))?;
    let mut deleted = Vec::new();
    for row in rows.as_array().into_iter().flatten() {
        let Some(index) = row["index"].as_str() else {
            continue;
        };
        if pattern
            .date_of(index, dead_letter_suffix)
            .is_none_or(|d| d >= cutoff)
        {
            continue;
        }
        match client
            .indices()
            .delete(IndicesDeleteParts::Index(&[index]))
            .send()
            .await
        {
            Ok(r) if r.status_code().is_success() => deleted.push(index.to_string()),
            Ok(r) => tracing::warn!(
                index,
                status = r.status_code().as_u16(),
                "retention: delete refused"
            ),
            Err(e) => tracing::warn!(index, error = %e, "retention: delete failed"),
        }
    }
    Ok(deleted)
}
