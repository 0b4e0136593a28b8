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
        Ok(v)
    }
}

impl Es {
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
