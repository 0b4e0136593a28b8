//! Following the collect entries in etcd: get, then watch from the next
//! revision; on a disconnect, a compaction or a cancelled watch, get again
//! and watch again, so no update is ever missed.
//!
//! Two keys count: `<prefix>/collect/<host_id>` and `<prefix>/collect/_all`,
//! and only those two are read: one transaction gets both at one revision,
//! then one watch stream carries a watch of each from the next revision. So
//! an etcd role that may read only these two keys is enough (issue #14 item
//! 5: no host reads another's entry). Each is parsed and validated as a
//! whole ([`crate::collect::parse`]); a refused value is reported and that
//! key keeps its last good value. Every time the merged entries change,
//! [`ConfigEvent::Applied`] is sent.

use crate::collect::{all_key, host_key, merge, parse, CollectEntry};
use etcd_client::{
    Client, ConnectOptions, EventType, OpenSslClientConfig, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::path::{Path, PathBuf};
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
    /// User name and password (a [`common::Secret`]: never printed).
    pub user: Option<(String, common::Secret)>,
    pub prefix: String,
    pub host_id: String,
    pub allowed_roots: Vec<PathBuf>,
    /// Entries from the local config, merged after etcd's.
    pub static_entries: Vec<CollectEntry>,
    /// The CA and client certificate for `https://` endpoints.
    pub tls: EtcdTls,
}

/// TLS material for etcd: the CA that signed its certificate, and the
/// client certificate with its key when etcd requires one
/// (`--client-cert-auth`). The key is a [`common::Secret`]: never printed.
#[derive(Clone, Default)]
pub struct EtcdTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, common::Secret)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads the files named by a config's `ca_file`, `cert_file` and
    /// `key_file`.
    ///
    /// # Errors
    /// A file cannot be read (the error names its key and path), or only
    /// one of `cert_file`/`key_file` is set.
    pub fn load(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Self, (String, std::io::Error)> {
        let read = |key: &str, p: &Path| {
            std::fs::read(p).map_err(|e| (format!("etcd.{key} {}", p.display()), e))
        };
        let ca_pem = ca_file.map(|p| read("ca_file", p)).transpose()?;
        let client = match (cert_file, key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let key = read("key_file", k)?;
                let key = String::from_utf8(key).map_err(|_| {
                    (
                        format!("etcd.key_file {}", k.display()),
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM file"),
                    )
                })?;
                Some((read("cert_file", c)?, common::Secret::new(key)))
            }
            (Some(p), None) | (None, Some(p)) => {
                return Err((
                    format!("etcd.cert_file/key_file {}", p.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "a client certificate needs both etcd.cert_file and etcd.key_file",
                    ),
                ))
            }
        };
        Ok(Self { ca_pem, client })
    }

    fn openssl(&self) -> Option<OpenSslClientConfig> {
        if self.ca_pem.is_none() && self.client.is_none() {
            return None;
        }
        let mut c = OpenSslClientConfig::default();
        if let Some(pem) = &self.ca_pem {
            c = c.ca_cert_pem(pem);
        }
        if let Some((cert, key)) = &self.client {
            c = c.client_cert_pem_and_key(cert, key.expose().as_bytes());
        }
        Some(c)
    }
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
    connect_to(&spec.endpoints, spec.user.as_ref(), &spec.tls).await
}

/// A client of `endpoints` with keep-alives and a connect timeout.
///
/// # Errors
/// No endpoint answers.
pub async fn connect_to(
    endpoints: &[String],
    user: Option<&(String, common::Secret)>,
    tls: &EtcdTls,
) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
    if let Some((u, p)) = user {
        opts = opts.with_user(u.clone(), p.expose());
    }
    if let Some(c) = tls.openssl() {
        opts = opts.with_openssl_tls(c);
    }
    Client::connect(endpoints, Some(opts)).await
}

/// Follows the two keys until `tx` is closed. Never returns an error: etcd
/// being unreachable is reported and retried with backoff.
pub async fn run(spec: WatchSpec, tx: mpsc::Sender<ConfigEvent>) {
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
        match follow(&spec, &keys, &mut state, &tx).await {
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
    keys: &[String; 2],
    state: &mut State,
    tx: &mpsc::Sender<ConfigEvent>,
) -> Result<(), etcd_client::Error> {
    let mut client = connect(spec).await?;
    // Both keys at one revision, each read on its own (no range over
    // `collect/`, which a per-host role may not read).
    let resp = client
        .txn(
            Txn::new().and_then(
                keys.iter()
                    .map(|k| TxnOp::get(k.as_str(), None))
                    .collect::<Vec<_>>(),
            ),
        )
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let gets = resp.op_responses();
    if tx.send(ConfigEvent::Connected).await.is_err() {
        return Ok(());
    }
    for (key, got) in keys.iter().zip(gets) {
        let kv = match &got {
            TxnOpResponse::Get(g) => g.kvs().iter().find(|kv| kv.key() == key.as_bytes()),
            _ => None,
        };
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
    // One stream, one watch per key, both from the revision after the get.
    let from = || WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = client.watch(keys[0].as_str(), Some(from())).await?;
    stream.watch(keys[1].as_str(), Some(from())).await?;
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
