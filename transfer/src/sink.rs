//! Where documents go: the [`Sink`] trait, with Elasticsearch and a local
//! NDJSON file sink. A sink answers one [`Outcome`] per document; an `Err`
//! means nothing is known to be written and the whole batch is retried.

use crate::bulk::{build_body, parse_response, Outcome};
use crate::doc::Doc;
use crate::Error;
use elasticsearch::http::transport::Transport;
use elasticsearch::{BulkParts, Elasticsearch, MgetParts};
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// A destination for documents.
pub trait Sink: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Writes `docs`; one outcome per document, in order.
    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>>;
    /// The stored source of each doc's (index, `_id`), `None` where there is
    /// none, in order; asked for documents a write answered
    /// [`Outcome::Exists`] for. A sink that never answers `Exists` keeps the
    /// default.
    fn stored<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Option<Value>>, Error>> {
        Box::pin(async move { Ok(vec![None; docs.len()]) })
    }
}

/// Bulk `create` requests to Elasticsearch.
pub struct EsSink {
    client: Elasticsearch,
}

impl EsSink {
    pub fn new(transport: Transport) -> Self {
        Self {
            client: Elasticsearch::new(transport),
        }
    }

    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }
}

impl Sink for EsSink {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(async move {
            let mut body = Vec::with_capacity(docs.iter().map(|d| d.source.len() + 96).sum());
            build_body(docs, &mut body);
            let body_len = body.len();
            let resp = self
                .client
                .bulk(BulkParts::None)
                .body(vec![body])
                .send()
                .await
                .map_err(|e| Error::Sink(format!("bulk request: {}", crate::es::describe(&e))))?;
            let status = resp.status_code().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| Error::Sink(format!("bulk response: {}", crate::es::describe(&e))))?;
            if status == 413 {
                return Err(Error::TooLarge { bytes: body_len });
            }
            if status != 200 {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
                return Err(Error::Sink(format!("bulk answered HTTP {status}: {text}")));
            }
            Ok(parse_response(&bytes, docs.len()))
        })
    }

    fn stored<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Option<Value>>, Error>> {
        Box::pin(async move {
            let wanted: Vec<Value> = docs
                .iter()
                .map(|d| serde_json::json!({"_index": d.index, "_id": d.id}))
                .collect();
            let resp = self
                .client
                .mget(MgetParts::None)
                .body(serde_json::json!({ "docs": wanted }))
                .send()
                .await
                .map_err(|e| Error::Sink(format!("mget request: {}", crate::es::describe(&e))))?;
            let status = resp.status_code().as_u16();
            if status != 200 {
                return Err(Error::Sink(format!("mget answered HTTP {status}")));
            }
            let v: Value = resp
                .json()
                .await
                .map_err(|e| Error::Sink(format!("mget response: {}", crate::es::describe(&e))))?;
            let mut out: Vec<Option<Value>> = v["docs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(docs.len())
                        .map(|d| (d["found"] == true).then(|| d["_source"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            out.resize(docs.len(), None);
            Ok(out)
        })
    }
}

/// Rolling NDJSON files, one per topic and day:
/// `<dir>/<topic>/<YYYY.MM.DD from the index name>.ndjson`, each line
/// `{"_index":…,"_id":…,"_source":…}`. Files are fsynced before the write
/// counts, so a committed offset's lines are on disk. Replays append the same
/// `_id` again: readers deduplicate by `_id`.
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn write_blocking(
        dir: PathBuf,
        docs: Vec<(String, String, String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let mut by_file: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        for (topic, index, id, source) in docs {
            let day = index.rsplit('-').next().unwrap_or("undated").to_string();
            let path = dir.join(&topic).join(format!("{day}.ndjson"));
            let buf = by_file.entry(path).or_default();
            buf.extend_from_slice(b"{\"_index\":");
            let _ = serde_json::to_writer(&mut *buf, &index);
            buf.extend_from_slice(b",\"_id\":");
            let _ = serde_json::to_writer(&mut *buf, &id);
            buf.extend_from_slice(b",\"_source\":");
            buf.extend_from_slice(&source);
            buf.extend_from_slice(b"}\n");
        }
        for (path, bytes) in by_file {
            let io = |e: std::io::Error| Error::Sink(format!("file sink {}: {e}", path.display()));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
        let owned: Vec<_> = docs
            .iter()
            .map(|d| {
                (
                    d.topic.clone(),
                    d.index.clone(),
                    d.id.clone(),
                    d.source.clone(),
                )
            })
            .collect();
        let dir = self.dir.clone();
        let n = docs.len();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::write_blocking(dir, owned))
                .await
                .map_err(|e| Error::Sink(format!("file sink task: {e}")))??;
            Ok(vec![Outcome::Written; n])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_sink_writes_one_line_per_doc_per_topic_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().to_path_buf());
        let doc = |topic: &str, index: &str, id: &str| Doc {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            index: index.into(),
            id: id.into(),
            source: br#"{"message":"m"}"#.to_vec(),
            dead_letter: false,
        };
        let docs = vec![
            doc("a", "a-2026.11.21", "a-0-1"),
            doc("a", "a-2026.11.22", "a-0-2"),
            doc("b", "b-2026.11.21", "b-0-1"),
            doc("a", "a-2026.11.21", "a-0-3"),
        ];
        assert_eq!(sink.write(&docs).await.unwrap(), vec![Outcome::Written; 4]);
        let day1 = std::fs::read_to_string(dir.path().join("a/2026.11.21.ndjson")).unwrap();
        assert_eq!(day1.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(day1.lines().next().unwrap()).unwrap();
        assert_eq!(v["_id"], "a-0-1");
        assert_eq!(v["_source"]["message"], "m");
        assert!(dir.path().join("b/2026.11.21.ndjson").exists());
    }
}
