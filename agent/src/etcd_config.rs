//! Following the collect entries in etcd: get, then watch from the next
//! revision; on a disconnect, a compaction or a cancelled watch, get again
//! and watch again, so no update is ever missed.
//!
//! Two keys count: `<prefix>/collect/<host_id>` and `<prefix>/collect/_all`.
//! Each is parsed and validated as a whole ([`crate::collect::parse`]); a
//! refused value is reported and that key keeps its last good value. Every
//! time the merged entries change, [`ConfigEvent::Applied`] is sent.

use crate::collect::{all_key, host_key, merge, parse, CollectEntry};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the watcher tells the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigEvent {
    /// The entries in force changed (host's, then `_all`'s, then static).
    Applied(Vec<CollectEntry>),
    /// A value was refused; the previous entries for that key stay.
    Rejected { key: String, error: String },
    /// etcd cannot be reached (the agent keeps running on what it has).
    Unreachable { error: String },
    /// A get succeeded; the watch follows (sent before that get's `Applied`).
    Connected,
    /// One of the two keys was read at `revision` (its `mod_revision`; 0:
    /// absent): applied, or refused with `error`. Sent before the
    /// `Applied`/`Rejected` it leads to; the agent reports it in its
    /// registration so `logctl collect put --wait` can tell.
    KeySeen {
        key: String,
        revision: i64,
        error: Option<String>,
    },
}

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub prefix: String,
    pub host_id: String,
    pub allowed_roots: Vec<PathBuf>,
    /// Entries from the local config, merged after etcd's.
    pub static_entries: Vec<CollectEntry>,
    /// PEM of the CA that signed etcd's certificate (`https://` endpoints).
    pub ca_pem: Option<Vec<u8>>,
}

struct State {
    host: Vec<CollectEntry>,
    all: Vec<CollectEntry>,
    last_sent: Option<Vec<CollectEntry>>,
}

impl State {
    /// Applies a value (None = deleted) of one of the two keys.
    fn apply(
        &mut self,
        spec: &WatchSpec,
        key: &str,
        value: Option<&[u8]>,
        revision: i64,
    ) -> Vec<ConfigEvent> {
        let mut events = Vec::new();
        let parsed = match value {
            None => Ok(Vec::new()),
            Some(v) => parse(key, v, &spec.allowed_roots),
        };
        match parsed {
            Ok(entries) => {
                if key == host_key(&spec.prefix, &spec.host_id) {
                    self.host = entries;
                } else {
                    self.all = entries;
                }
                events.push(ConfigEvent::KeySeen {
                    key: key.to_string(),
                    revision,
                    error: None,
                });
            }
            Err(e) => {
                tracing::error!(key, error = %e, "collect entries refused; keeping the previous ones");
                events.push(ConfigEvent::KeySeen {
                    key: key.to_string(),
                    revision,
                    error: Some(e.to_string()),
                });
                events.push(ConfigEvent::Rejected {
                    key: key.to_string(),
                    error: e.to_string(),
                });
            }
        }
        events
    }

    fn merged(&self, spec: &WatchSpec) -> Vec<CollectEntry> {
        merge(&[&self.host, &self.all, &spec.static_entries])
    }
}

async fn connect(spec: &WatchSpec) -> Result<Client, etcd_client::Error> {
    connect_to(&spec.endpoints, spec.user.as_ref(), spec.ca_pem.as_deref()).await
}

/// A client of `endpoints` with keep-alives and a connect timeout.
///
/// # Errors
/// No endpoint answers.
pub async fn connect_to(
    endpoints: &[String],
    user: Option<&(String, String)>,
    ca_pem: Option<&[u8]>,
) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
    if let Some((u, p)) = user {
        opts = opts.with_user(u.clone(), p.clone());
    }
    if let Some(pem) = ca_pem {
        opts = opts.with_openssl_tls(etcd_client::OpenSslClientConfig::default().ca_cert_pem(pem));
    }
    Client::connect(endpoints, Some(opts)).await
}

/// Follows the two keys until `tx` is closed. Never returns an error: etcd
/// being unreachable is reported and retried with backoff.
pub async fn run(spec: WatchSpec, tx: mpsc::Sender<ConfigEvent>) {
    let dir = format!("{}/collect/", spec.prefix.trim_end_matches('/'));
    let keys = [host_key(&spec.prefix, &spec.host_id), all_key(&spec.prefix)];
    let mut state = State {
        host: Vec::new(),
        all: Vec::new(),
        last_sent: None,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        if tx.is_closed() {
            return;
        }
        match follow(&spec, &dir, &keys, &mut state, &tx).await {
            Ok(()) => return, // receiver gone
            Err(e) => {
                tracing::warn!(error = %e, "etcd: lost the watch; getting and watching again");
                if tx
                    .send(ConfigEvent::Unreachable {
                        error: e.to_string(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn send_if_changed(
    state: &mut State,
    spec: &WatchSpec,
    tx: &mpsc::Sender<ConfigEvent>,
) -> bool {
    let merged = state.merged(spec);
    if state.last_sent.as_ref() != Some(&merged) {
        state.last_sent = Some(merged.clone());
        return tx.send(ConfigEvent::Applied(merged)).await.is_ok();
    }
    true
}

/// One get + watch cycle. `Ok(())` when the receiver is gone; `Err` to
/// start over.
async fn follow(
    spec: &WatchSpec,
    dir: &str,
    keys: &[String; 2],
    state: &mut State,
    tx: &mpsc::Sender<ConfigEvent>,
) -> Result<(), etcd_client::Error> {
    let mut client = connect(spec).await?;
    let resp = client
        .get(dir, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    if tx.send(ConfigEvent::Connected).await.is_err() {
        return Ok(());
    }
    for key in keys {
        let kv = resp.kvs().iter().find(|kv| kv.key() == key.as_bytes());
        let value = kv.map(|kv| kv.value().to_vec());
        let rev = kv.map_or(0, |kv| kv.mod_revision());
        for ev in state.apply(spec, key, value.as_deref(), rev) {
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
    if !send_if_changed(state, spec, tx).await {
        return Ok(());
    }
    let mut stream = client
        .watch(
            dir,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    loop {
        let Some(resp) = stream.message().await? else {
            return Err(etcd_client::Error::WatchError("watch stream ended".into()));
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            return Err(etcd_client::Error::WatchError(format!(
                "watch cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(key) = keys.iter().find(|k| k.as_bytes() == kv.key()) else {
                continue;
            };
            let (value, rev) = match ev.event_type() {
                EventType::Put => (Some(kv.value().to_vec()), kv.mod_revision()),
                EventType::Delete => (None, kv.mod_revision()),
            };
            for e in state.apply(spec, key, value.as_deref(), rev) {
                if tx.send(e).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !send_if_changed(state, spec, tx).await {
            return Ok(());
        }
    }
}
