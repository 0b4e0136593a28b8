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

/// One topic to several sinks: each document goes to every one, and counts
/// as written only when every one wrote it. Per document the worst answer
/// wins (retry, then refused, then exists, then written); a failed write of
/// any sink fails the batch, which is then written again to all of them —
/// the sinks that had it skip it (Elasticsearch's `_id`, the tables' key,
/// Redis's offsets). A document one sink refuses is dead-lettered in every
/// sink (each keeps its dead letters its way), so the sinks that took it
/// also hold its dead letter.
pub struct FanOut {
    members: Vec<std::sync::Arc<dyn Sink>>,
    name: &'static str,
}

impl FanOut {
    pub fn new(members: Vec<std::sync::Arc<dyn Sink>>) -> Self {
        let name = members
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join("+");
        // Made once per route at start-up: the name lives as long as the process.
        Self {
            members,
            name: Box::leak(name.into_boxed_str()),
        }
    }
}

/// The answer that decides what becomes of a document two sinks answered.
fn worse(a: Outcome, b: Outcome) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Written => 0,
        Outcome::Exists => 1,
        Outcome::Refused { .. } => 2,
        Outcome::Retry => 3,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

impl Sink for FanOut {
    fn name(&self) -> &'static str {
        self.name
    }

    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(async move {
            let answers =
                futures::future::join_all(self.members.iter().map(|m| m.write(docs))).await;
            let mut out = vec![Outcome::Written; docs.len()];
            let mut failed = Vec::new();
            for a in answers {
                match a {
                    Ok(outcomes) => {
                        for (o, n) in out.iter_mut().zip(outcomes) {
                            *o = worse(std::mem::replace(o, Outcome::Written), n);
                        }
                    }
                    // A 413 splits the batch for every sink.
                    Err(e @ Error::TooLarge { .. }) => return Err(e),
                    Err(e) => failed.push(e),
                }
            }
            // Every failed member is named, not only one of them.
            match failed.len() {
                0 => Ok(out),
                1 => Err(failed.remove(0)),
                _ => Err(Error::Sink(
                    failed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
            }
        })
    }

    fn stored<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Option<Value>>, Error>> {
        Box::pin(async move {
            let mut out = vec![None; docs.len()];
            for m in &self.members {
                for (o, s) in out.iter_mut().zip(m.stored(docs).await?) {
                    if o.is_none() {
                        *o = s;
                    }
                }
            }
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

    struct Fixed(&'static str, Result<Vec<Outcome>, &'static str>);

    impl Sink for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn write<'a>(&'a self, _: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
            let r = self.1.clone().map_err(|e| Error::Sink(e.into()));
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn a_fan_out_answers_the_worst_of_its_sinks() {
        use std::sync::Arc;
        let refused = Outcome::Refused {
            status: 400,
            error: serde_json::json!({}),
        };
        let a = Fixed(
            "a",
            Ok(vec![
                Outcome::Written,
                Outcome::Exists,
                Outcome::Written,
                Outcome::Written,
            ]),
        );
        let b = Fixed(
            "b",
            Ok(vec![
                Outcome::Written,
                Outcome::Written,
                refused.clone(),
                Outcome::Retry,
            ]),
        );
        let f = FanOut::new(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(f.name(), "a+b");
        let docs = vec![
            Doc {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                index: "t-x".into(),
                id: "t-0-0".into(),
                source: b"{}".to_vec(),
                dead_letter: false,
            };
            4
        ];
        assert_eq!(
            f.write(&docs).await.unwrap(),
            vec![Outcome::Written, Outcome::Exists, refused, Outcome::Retry]
        );
        let down = FanOut::new(vec![
            Arc::new(Fixed("a", Ok(vec![Outcome::Written; 4]))),
            Arc::new(Fixed("b", Err("server down"))),
        ]);
        assert!(
            down.write(&docs).await.is_err(),
            "one sink down fails the batch"
        );
    }

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
