//! Collect entries in etcd (`<prefix>/collect/<host>`, `_all` for every
//! host): read, validate, write with compare-and-swap, history, rollback,
//! and waiting for the agents to report a revision applied.
//!
//! Validation is the agent's own ([`agent::collect::parse`]) with the target
//! host's `allowed_roots` as it publishes them; for `_all`, with every
//! registered agent's. A host that has not registered yet is validated
//! against the roots the caller gives (logctl: `--roots`, default the
//! agent's default `/var/log`), and the result says so.

use crate::{Control, Error, Result};
use agent::collect::CollectEntry;
use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The host name that stands for every host.
pub const ALL: &str = "_all";

/// A stored value and the revision it was last written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One revision of a key: its value then (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub revision: i64,
    pub value: Option<Vec<u8>>,
}

/// Against which roots a value was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootsSource {
    /// What these hosts publish.
    Published(Vec<String>),
    /// Given by the caller (the host has not registered).
    Given,
}

/// A value that the agent would accept.
#[derive(Debug, Clone)]
pub struct Validated {
    pub entries: Vec<CollectEntry>,
    pub roots: RootsSource,
}

/// What a write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub key: String,
    /// The revision written at (`None`: dry run).
    pub revision: Option<i64>,
    /// The revision it replaced (0: the key was absent).
    pub previous: i64,
    /// Unified diff of the pretty-printed values.
    pub diff: String,
}

/// What the agents reported after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Refused(String),
}

/// Pretty JSON of a value (as written when it is not JSON).
pub fn pretty(value: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// A unified diff from `old` to `new` (empty when equal).
pub fn diff(old: &str, new: &str, key: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .header(&format!("{key} (etcd)"), &format!("{key} (new)"))
        .to_string()
}

impl Control {
    /// The etcd key of `host`'s entries (`_all`: every host's).
    pub fn collect_key(&self, host: &str) -> String {
        format!("{}/collect/{host}", self.prefix)
    }

    /// The value of `host`'s key, if any.
    ///
    /// # Errors
    /// etcd fails.
    pub async fn get(&mut self, host: &str) -> Result<Option<Stored>> {
        let key = self.collect_key(host);
        let r = self
            .etcd
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.etcd_err(e))?;
        Ok(r.kvs().first().map(|kv| Stored {
            key: key.clone(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// The `allowed_roots` each registered agent that `host` concerns
    /// publishes (one agent, or all of them for `_all`).
    async fn published_roots(&mut self, host: &str) -> Result<Vec<(String, Vec<PathBuf>)>> {
        let agents = self.agents().await?;
        Ok(agents
            .into_iter()
            // Registered agents only: a down host publishes nothing.
            .filter(|a| a.liveness != crate::agents::Liveness::Down)
            .filter(|a| host == ALL || a.host_id == host)
            .map(|a| {
                let roots = a.state.allowed_roots.iter().map(PathBuf::from).collect();
                (a.host_id, roots)
            })
            .collect())
    }

    /// Whether `value` would be accepted by the agents of `host`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field and, for `_all`, the host that
    /// would refuse it; etcd errors.
    pub async fn validate(
        &mut self,
        host: &str,
        value: &[u8],
        given_roots: &[PathBuf],
    ) -> Result<Validated> {
        let key = self.collect_key(host);
        let published = self.published_roots(host).await?;
        if published.is_empty() {
            let entries = agent::collect::parse(&key, value, given_roots)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            return Ok(Validated {
                entries,
                roots: RootsSource::Given,
            });
        }
        let mut entries = Vec::new();
        for (h, roots) in &published {
            entries = agent::collect::parse(&key, value, roots).map_err(|e| {
                Error::Invalid(if host == ALL {
                    format!("{e} (for host {h})")
                } else {
                    e.to_string()
                })
            })?;
        }
        Ok(Validated {
            entries,
            roots: RootsSource::Published(published.into_iter().map(|(h, _)| h).collect()),
        })
    }

    /// Validates `value` and writes it to `host`'s key if the key is still
    /// at `expected` (its `mod_revision` when read; 0: absent), or — with
    /// `expected = None` — at the revision read now. Nothing is written
    /// with `dry_run`.
    ///
    /// # Errors
    /// [`Error::Invalid`] (nothing written), [`Error::Conflict`] when the
    /// key moved, etcd errors.
    pub async fn put(
        &mut self,
        host: &str,
        value: &[u8],
        expected: Option<i64>,
        given_roots: &[PathBuf],
        dry_run: bool,
    ) -> Result<Written> {
        self.validate(host, value, given_roots).await?;
        let key = self.collect_key(host);
        let current = self.get(host).await?;
        let now = current.as_ref().map_or(0, |s| s.mod_revision);
        let expected = expected.unwrap_or(now);
        if expected != now {
            return Err(Error::Conflict {
                key,
                expected,
                actual: now,
            });
        }
        let old = current
            .as_ref()
            .map(|s| pretty(&s.value))
            .unwrap_or_default();
        let diff = diff(&old, &pretty(value), &key);
        if dry_run {
            return Ok(Written {
                key,
                revision: None,
                previous: now,
                diff,
            });
        }
        let revision = self
            .cas(&key, expected, TxnOp::put(key.as_str(), value, None))
            .await?;
        Ok(Written {
            key,
            revision: Some(revision),
            previous: expected,
            diff,
        })
    }

    /// Deletes `host`'s key if it is still at `expected` (`None`: as read
    /// now). The agents stop collecting those entries.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`], etcd errors.
    pub async fn remove(&mut self, host: &str, expected: Option<i64>) -> Result<Written> {
        let key = self.collect_key(host);
        let Some(current) = self.get(host).await? else {
            return Err(Error::NotFound(key));
        };
        let expected = expected.unwrap_or(current.mod_revision);
        let revision = self
            .cas(&key, expected, TxnOp::delete(key.as_str(), None))
            .await?;
        Ok(Written {
            diff: diff(&pretty(&current.value), "", &key),
            key,
            revision: Some(revision),
            previous: expected,
        })
    }

    /// `op` on `key` if its `mod_revision` is `expected`; the revision of
    /// the write.
    async fn cas(&mut self, key: &str, expected: i64, op: TxnOp) -> Result<i64> {
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key, None)]);
        let r = self.etcd.txn(txn).await.map_err(|e| self.etcd_err(e))?;
        if !r.succeeded() {
            let actual = r
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    etcd_client::TxnOpResponse::Get(g) => {
                        Some(g.kvs().first().map_or(0, |kv| kv.mod_revision()))
                    }
                    _ => None,
                })
                .unwrap_or(0);
            return Err(Error::Conflict {
                key: key.to_string(),
                expected,
                actual,
            });
        }
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Every revision of `host`'s key etcd still has (oldest first; what
    /// compaction removed is gone).
    ///
    /// # Errors
    /// etcd errors.
    pub async fn history(&mut self, host: &str) -> Result<Vec<Revision>> {
        let key = self.collect_key(host);
        let now = self
            .etcd
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.etcd_err(e))?;
        let head = now.header().map_or(0, |h| h.revision());
        // Present: its history ends at its mod_revision. Deleted: at an
        // unknown revision, so the watch is read until it goes quiet.
        let last = now.kvs().first().map(|kv| kv.mod_revision());
        let mut from = 1;
        'watch: loop {
            let mut stream = self
                .etcd
                .watch(
                    key.as_str(),
                    Some(WatchOptions::new().with_start_revision(from)),
                )
                .await
                .map_err(|e| self.etcd_err(e))?;
            let mut out: Vec<Revision> = Vec::new();
            loop {
                let quiet = Duration::from_millis(if last.is_some() { 10_000 } else { 1_000 });
                let Ok(next) = tokio::time::timeout(quiet, stream.message()).await else {
                    return Ok(out); // caught up
                };
                let Some(resp) = next.map_err(|e| self.etcd_err(e))? else {
                    return Ok(out);
                };
                if resp.compact_revision() > 0 {
                    from = resp.compact_revision();
                    continue 'watch;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if kv.mod_revision() > head {
                        return Ok(out);
                    }
                    out.push(Revision {
                        revision: kv.mod_revision(),
                        value: match ev.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        },
                    });
                }
                if let (Some(l), Some(r)) = (last, out.last()) {
                    if r.revision >= l {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Writes again the value `host`'s key had at `revision` (validated as
    /// any write), if the key did not move since it was read.
    ///
    /// # Errors
    /// [`Error::NotFound`] when etcd no longer has that revision (compacted)
    /// or the key was absent then; as [`Control::put`].
    pub async fn rollback(
        &mut self,
        host: &str,
        revision: i64,
        given_roots: &[PathBuf],
    ) -> Result<Written> {
        let key = self.collect_key(host);
        let r = self
            .etcd
            .get(
                key.as_str(),
                Some(GetOptions::new().with_revision(revision)),
            )
            .await
            .map_err(|e| match e {
                etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted") => {
                    Error::NotFound(format!("{key} at revision {revision} (compacted)"))
                }
                e => self.etcd_err(e),
            })?;
        let Some(kv) = r.kvs().first() else {
            return Err(Error::NotFound(format!(
                "{key} at revision {revision} (absent then)"
            )));
        };
        let value = kv.value().to_vec();
        self.put(host, &value, None, given_roots, false).await
    }

    /// Waits until every agent `host` concerns reports `revision` of its
    /// key (or a later one) applied or refused, for at most `limit`.
    ///
    /// # Errors
    /// [`Error::Refused`] with the agent's reason; [`Error::Timeout`] naming
    /// the agents that did not report; [`Error::NotFound`] when no agent
    /// of `host` is registered.
    pub async fn wait_applied(
        &mut self,
        host: &str,
        revision: i64,
        limit: Duration,
    ) -> Result<Vec<String>> {
        let key = self.collect_key(host);
        let start = Instant::now();
        loop {
            let agents: Vec<_> = self
                .agents()
                .await?
                .into_iter()
                .filter(|a| host == ALL || a.host_id == host)
                .collect();
            if agents.is_empty() {
                return Err(Error::NotFound(format!("a registered agent for {host}")));
            }
            let mut waiting = Vec::new();
            for a in &agents {
                match a.state.collect.get(&key) {
                    Some(k) if k.revision >= revision => {
                        if let (Some(reason), true) = (&k.error, k.applied_revision < revision) {
                            return Err(Error::Refused {
                                key,
                                revision,
                                reason: format!("{} (host {})", reason, a.host_id),
                            });
                        }
                    }
                    _ => waiting.push(a.host_id.clone()),
                }
            }
            if waiting.is_empty() {
                return Ok(agents.into_iter().map(|a| a.host_id).collect());
            }
            if start.elapsed() >= limit {
                return Err(Error::Timeout {
                    what: format!(
                        "agents {} to report revision {revision} of {key}",
                        waiting.join(", ")
                    ),
                    waited: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
