//! The Elasticsearch client of the control library: one `_search` call
//! that turns every failure into an [`Error`] naming the address and what
//! was asked.

use crate::config::EsConfig;
use crate::{Error, Result};
use elasticsearch::http::transport::Transport;
use elasticsearch::{Elasticsearch, SearchParts};
use serde_json::Value;

pub(crate) struct Es {
    client: Elasticsearch,
    /// The URL with any password hidden, for messages.
    address: String,
}

impl Es {
    /// # Errors
    /// `elasticsearch.url` is not a URL the client takes.
    pub(crate) fn new(cfg: &EsConfig) -> Result<Self> {
        let transport = Transport::single_node(&cfg.url).map_err(|e| Error::BadArgument {
            arg: "elasticsearch.url".into(),
            message: format!("`{}`: {e}", common::secret::redact_url(&cfg.url)),
        })?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            address: common::secret::redact_url(&cfg.url),
        })
    }

    /// `POST /<index>/_search` with `body`; the response's JSON.
    ///
    /// # Errors
    /// Elasticsearch unreachable ([`Error::Io`]) or answering an error
    /// status ([`Error::Elasticsearch`] with its reason).
    pub(crate) async fn search(&self, index: &str, what: &str, body: Value) -> Result<Value> {
        let resp = self
            .client
            .search(SearchParts::Index(&[index]))
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Io {
                what: format!("elasticsearch ({}): {what}", self.address),
                message: e.to_string(),
            })?;
        let status = resp.status_code().as_u16();
        let text = resp.text().await.map_err(|e| Error::Io {
            what: format!("elasticsearch ({}): {what}", self.address),
            message: e.to_string(),
        })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !(200..300).contains(&status) {
            return Err(Error::Elasticsearch {
                address: self.address.clone(),
                what: what.to_string(),
                status,
                reason: reason(&v),
            });
        }
        // A query that does not parse fails only on the shards the time
        // range did not skip: an error, not "no line matches". Other shard
        // failures while some shards answered are a partial result that
        // callers report ([`partial`]); no shard answering is an error.
        if let Some(e) = shard_failure(&v).filter(|(status, _)| {
            *status == 400 || v["_shards"]["successful"].as_u64().unwrap_or(0) == 0
        }) {
            return Err(Error::Elasticsearch {
                address: self.address.clone(),
                what: what.to_string(),
                status: e.0,
                reason: e.1,
            });
        }
        Ok(v)
    }
}

/// Why a response is partial (some shards failed), if it is.
pub(crate) fn partial(v: &Value) -> Option<String> {
    shard_failure(v).map(|(_, why)| format!("results may be partial: {why}"))
}

/// The status and reason of a response whose shards partly failed: 400
/// when the query itself is at fault (`query_shard_exception`), else 502.
fn shard_failure(v: &Value) -> Option<(u16, String)> {
    let failed = v["_shards"]["failed"].as_u64().unwrap_or(0);
    if failed == 0 {
        return None;
    }
    let total = v["_shards"]["total"].as_u64().unwrap_or(0);
    let first = &v["_shards"]["failures"][0]["reason"];
    let status = if first["type"].as_str() == Some("query_shard_exception") {
        400
    } else {
        502
    };
    let why = reason(&serde_json::json!({"error": first}));
    Some((status, format!("{failed} of {total} shards failed: {why}")))
}

impl Es {
    /// [`Es::search`] of a user's `query`: Elasticsearch's 400 (the query
    /// does not parse, shard failures included) becomes
    /// [`Error::BadArgument`] naming it as `arg` (`QUERY`, `query`).
    ///
    /// # Errors
    /// As [`Es::search`].
    pub(crate) async fn search_query(
        &self,
        index: &str,
        arg: &str,
        query: &str,
        body: Value,
    ) -> Result<Value> {
        let q = query.trim();
        self.search(index, &format!("search `{q}`"), body)
            .await
            .map_err(|e| match e {
                Error::Elasticsearch {
                    status: 400,
                    reason,
                    ..
                } => Error::BadArgument {
                    arg: format!("{arg} `{q}`"),
                    message: reason,
                },
                other => other,
            })
    }

    /// `GET path` (an API path such as `/_cluster/health`); its JSON.
    ///
    /// # Errors
    /// As [`Es::search`].
    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        use elasticsearch::http::{headers::HeaderMap, request::JsonBody, Method};
        let resp = self
            .client
            .send(
                Method::Get,
                path,
                HeaderMap::new(),
                Option::<&()>::None,
                Option::<JsonBody<Value>>::None,
                None,
            )
            .await
            .map_err(|e| Error::Io {
                what: format!("elasticsearch ({}): GET {path}", self.address),
                message: e.to_string(),
            })?;
        let status = resp.status_code().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(Error::Elasticsearch {
                address: self.address.clone(),
                what: format!("GET {path}"),
                status,
                reason: reason(&v),
            });
        }
        Ok(v)
    }

    /// The document with `_id` `id` in `index` (a search hit: `_index`,
    /// `_id`, `_source`), if any.
    ///
    /// # Errors
    /// As [`Es::search`].
    pub(crate) async fn by_id(&self, index: &str, what: &str, id: &str) -> Result<Option<Value>> {
        let v = self
            .search(
                index,
                &format!("{what} {id}"),
                serde_json::json!({"size": 1, "query": {"ids": {"values": [id]}}}),
            )
            .await?;
        Ok(hits(&v).first().cloned())
    }
}

/// The most specific reason in an Elasticsearch error body.
fn reason(v: &Value) -> String {
    let e = &v["error"];
    let root = &e["root_cause"][0];
    let deepest = e["caused_by"]["caused_by"]["reason"]
        .as_str()
        .or_else(|| e["caused_by"]["reason"].as_str())
        .or_else(|| root["reason"].as_str())
        .or_else(|| e["reason"].as_str());
    match (e["type"].as_str(), deepest) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (None, Some(r)) => r.to_string(),
        _ => match v {
            Value::String(s) => s.chars().take(500).collect(),
            other => other.to_string().chars().take(500).collect(),
        },
    }
}

/// The hits of a search response.
pub(crate) fn hits(v: &Value) -> &[Value] {
    v["hits"]["hits"].as_array().map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_partial_result_is_an_error() {
        let v = json!({"_shards": {"total": 3, "failed": 1, "failures": [{"reason": {
            "type": "query_shard_exception", "reason": "Failed to parse query [a:(]",
            "caused_by": {"type": "parse_exception", "reason": "Cannot parse 'a:('"}}}]}});
        let (status, why) = shard_failure(&v).unwrap();
        assert_eq!(status, 400);
        assert_eq!(
            why,
            "1 of 3 shards failed: query_shard_exception: Cannot parse 'a:('"
        );
        assert!(shard_failure(&json!({"_shards": {"total": 3, "failed": 0}})).is_none());
    }

    #[test]
    fn the_deepest_reason_is_reported() {
        let v = json!({"error": {"type": "search_phase_execution_exception", "reason": "all shards failed",
            "caused_by": {"type": "x", "reason": "Failed to parse query [a:(]",
                "caused_by": {"reason": "Encountered \"<EOF>\""}}}});
        assert_eq!(
            reason(&v),
            "search_phase_execution_exception: Encountered \"<EOF>\""
        );
        assert_eq!(reason(&json!("plain")), "plain");
    }
}
