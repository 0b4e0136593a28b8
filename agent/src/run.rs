//! The running agent: wiring harvesters, the spool writer, the shipper, the
//! etcd config watch, the registration lease, metrics and signals.
//!
//! Start-up order matters for the delivery contract:
//! 1. open the checkpoint store and the WAL (recovery truncates torn tails);
//! 2. make the checkpoints agree with the WAL: for every file with records
//!    still in the WAL, the resume offset becomes the end of its last record
//!    ([`reconcile`]) — so a line already spooled is never read again into
//!    a second record, whatever the checkpoint flush missed;
//! 3. start the writer and the shipper (which reads back Kafka before
//!    sending anything again);
//! 4. only then start harvesters, from etcd's config, or the cached one
//!    when etcd does not answer within [`ETCD_START_WAIT`].

use crate::collect::{self, CollectEntry};
use crate::config::AgentConfig;
use crate::etcd_config::{self, ConfigEvent, WatchSpec};
use crate::event::{Identity, RecordMeta, ShipSpec};
use crate::harvester::multiline::MultilineConfig;
use crate::harvester::watch::{self, Discovery, HarvestLoop};
use crate::harvester::{HarvestConfig, Harvester};
use crate::metrics::{KindLabels, Metrics};
use crate::ship::{self, ShipConfig, Shipper};
use crate::spool::{Limits, Progress, Shared, Spool, SpoolMsg, Spooled};
use crate::Error;
use checkpoint::{FileId, FileState, Store};
use common::agent_state::{AgentState, KeyState, ProblemState};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use wal::{ReadItem, SyncPolicy, Wal, WalOptions};

/// How long start-up waits for etcd before using the cached config.
pub const ETCD_START_WAIT: Duration = Duration::from_secs(5);
/// Every harvester also rescans its globs this often (inotify is the fast
/// path): new files are found within this bound even without events.
const RESCAN: Duration = Duration::from_secs(1);

/// Hands memory freed after a burst (a backlog read, an outage drained)
/// back to the OS: glibc keeps freed heap pages of its per-thread arenas
/// otherwise, and the agent's RSS would stay at its peak while it tails.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The file in the data dir that pins an `"auto"` host id.
const HOST_ID_FILE: &str = "host_id";

/// The host's name and the local address towards the first etcd endpoint
/// (`None` when it cannot be found, e.g. the name does not resolve).
fn host_name_and_ip(cfg: &AgentConfig) -> (String, Option<String>) {
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let ip = cfg.etcd.endpoints.first().and_then(|e| local_ip_towards(e));
    (host_name, ip)
}

/// How `host_id = "auto"` is settled (pure): the id derived now
/// (`<hostname>-<ip>`, if the ip could be found) against the one pinned in
/// the data dir by an earlier start. The first derived id is pinned and kept:
/// a host whose address changes (DHCP) or whose DNS fails at start keeps
/// following its own etcd key instead of silently following another (empty)
/// one. `Ok((id, pin_it, warning))`.
///
/// # Errors
/// Nothing pinned and nothing derivable.
pub fn settle_auto_host_id(
    derived: Option<String>,
    pinned: Option<String>,
) -> Result<(String, bool, Option<String>), String> {
    match (derived, pinned) {
        (Some(d), Some(p)) if d == p => Ok((p, false, None)),
        (Some(d), Some(p)) => Ok((
            p.clone(),
            false,
            Some(format!(
                "host_id \"auto\" would now be `{d}`, but this agent has been `{p}` (pinned in the data dir); it stays `{p}`: set host_id explicitly to change it"
            )),
        )),
        (Some(d), None) => Ok((d, true, None)),
        (None, Some(p)) => Ok((
            p.clone(),
            false,
            Some(format!(
                "host_id \"auto\": the address towards etcd cannot be found now; using `{p}` pinned by an earlier start"
            )),
        )),
        (None, None) => Err(
            "host_id = \"auto\" cannot be derived: the address towards the first etcd endpoint cannot be found (does its name resolve?); set host_id explicitly".into(),
        ),
    }
}

/// Resolves the agent's identity: `host_id` as configured, or `"auto"`
/// settled by [`settle_auto_host_id`] against `<data_dir>/host_id`.
///
/// # Errors
/// `"auto"` cannot be derived and was never pinned, or the pin file cannot
/// be read or written.
pub fn identity(cfg: &AgentConfig) -> Result<Identity, Error> {
    let (host_name, ip) = host_name_and_ip(cfg);
    let host_id = if cfg.host_id == "auto" {
        let file = cfg.data_dir.join(HOST_ID_FILE);
        let pinned = match std::fs::read_to_string(&file) {
            Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Io {
                    path: file,
                    source: e,
                })
            }
        };
        let derived = ip.as_ref().map(|ip| format!("{host_name}-{ip}"));
        let (id, pin, warning) = settle_auto_host_id(derived, pinned).map_err(Error::Stopped)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        if pin {
            write_atomically(&file, id.as_bytes()).map_err(|e| Error::Io {
                path: file.clone(),
                source: e,
            })?;
        }
        id
    } else {
        cfg.host_id.clone()
    };
    Ok(Identity {
        host_id,
        host_name,
        host_ip: ip.unwrap_or_else(|| "unknown".into()),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new
/// content: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The local address the kernel would use to reach `endpoint` (a UDP
/// "connect" sends nothing).
fn local_ip_towards(endpoint: &str) -> Option<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let hostport = endpoint
        .split("://")
        .last()
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let addr = hostport.to_socket_addrs().ok()?.next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Step 2 of start-up: the WAL's unacknowledged records are the newest
/// word on their files; their end offsets become the resume offsets.
/// Returns the number of records replayed.
///
/// # Errors
/// Reading the WAL or flushing the store failed.
pub fn reconcile(wal: &Wal, store: &mut Store, include_unsynced: bool) -> Result<u64, Error> {
    let from = wal.acked_seq() + 1;
    let mut reader = if include_unsynced {
        wal.reader_including_unsynced(from)
    } else {
        wal.reader(from)
    };
    let mut last: HashMap<FileId, (String, u64)> = HashMap::new();
    let mut records = 0;
    while let Some(item) = reader.next_item()? {
        if let ReadItem::Record { batch, .. } = item {
            records += 1;
            let id = FileId {
                device: batch.source.device,
                inode: batch.source.inode,
                fingerprint: batch.source.fingerprint,
            };
            last.insert(id, (batch.source.path, batch.end_offset));
        }
    }
    let mut changed = 0;
    for (id, (path, end)) in last {
        let state = match store.get(&id) {
            Some(s) if s.durable_offset == end => continue,
            Some(s) => FileState {
                durable_offset: end,
                path,
                ..s.clone()
            },
            None => FileState::durable_at(path, end),
        };
        store.update(id, state);
        changed += 1;
    }
    store.flush()?;
    if changed > 0 {
        tracing::info!(
            files = changed,
            records,
            "checkpoints advanced to what the WAL holds"
        );
    }
    Ok(records)
}

/// The output settings of a running harvester; changed in place on reload.
#[derive(Clone)]
struct Output {
    topic: String,
    meta: Arc<Vec<u8>>,
}

struct Running {
    glob: String,
    output: Arc<RwLock<Output>>,
    lp: HarvestLoop,
    open: Arc<AtomicUsize>,
    /// Set before stopping: a harvester waiting for room in the spool
    /// channel (WAL full) gives its lines up instead of blocking the stop;
    /// they were not checkpointed, so they are read again later.
    cancel: Arc<AtomicBool>,
}

impl Running {
    fn stop(self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.lp.stop();
    }
}

/// Harvesters by the settings that shape reading (path, exclude, multiline,
/// line limit); topic and output settings change without a restart.
struct Supervisor {
    running: HashMap<String, Running>,
    tx: SyncSender<SpoolMsg>,
    /// Bytes waiting for the writer (bounded).
    queued: crate::spool::Queued,
    store: Arc<Mutex<Store>>,
    /// Stored in every record (`event` module docs).
    identity: Identity,
    /// Every harvester's bound (`allowed_roots`); a change restarts them.
    allowed_roots: Vec<PathBuf>,
    metrics: Arc<Metrics>,
    /// Per collect key: the revisions seen and applied (published).
    key_states: BTreeMap<String, KeyState>,
}

/// The globs of the entries before one: the files they collect are theirs
/// (see [`HarvestConfig::shadowed_by`]).
type Shadows = Vec<(Vec<String>, Vec<String>)>;

fn harvest_key(e: &CollectEntry, shadows: &Shadows, roots: &[PathBuf]) -> String {
    serde_json::json!([
        e.path,
        e.exclude,
        e.multiline,
        e.max_line_bytes,
        e.follow_symlinks,
        shadows,
        roots
    ])
    .to_string()
}

fn output_of(e: &CollectEntry, identity: &Identity) -> Output {
    let spec = ShipSpec {
        fields: e.fields.clone(),
        json_key: e
            .json
            .then(|| e.json_key.clone().unwrap_or_else(|| "json".into())),
        partition: e.partition.clone(),
    };
    Output {
        topic: e.topic.clone(),
        meta: Arc::new(RecordMeta::encode(&spec, identity)),
    }
}

fn harvest_config(
    e: &CollectEntry,
    shadows: &Shadows,
    roots: &[PathBuf],
) -> Result<HarvestConfig, String> {
    let multiline = match &e.multiline {
        None => None,
        Some(m) => {
            let mut c = MultilineConfig::new(&m.start).map_err(|x| x.to_string())?;
            c.max_lines = m.max_lines;
            c.flush_timeout = Duration::from_millis(m.flush_timeout_ms);
            Some(c)
        }
    };
    let mut hc = HarvestConfig {
        include: vec![e.path.clone()],
        exclude: e.exclude.clone(),
        shadowed_by: shadows.clone(),
        multiline,
        allowed_roots: roots.to_vec(),
        follow_symlinks: e.follow_symlinks,
        ..HarvestConfig::default()
    };
    if let Some(n) = e.max_line_bytes {
        hc.max_line_bytes = n;
    }
    Ok(hc)
}

impl Supervisor {
    /// Entries in merge order (the host's, `_all`'s, the static ones): a
    /// file matched by several is collected by the first one only (one
    /// checkpoint per file, never shared between entries).
    fn apply(&mut self, entries: &[CollectEntry]) {
        let mut wanted: BTreeMap<String, (&CollectEntry, Shadows)> = BTreeMap::new();
        let mut shadows: Shadows = Vec::new();
        for e in entries {
            if shadows
                .iter()
                .any(|(inc, exc)| inc == std::slice::from_ref(&e.path) && exc == &e.exclude)
            {
                tracing::warn!(path = %e.path, topic = %e.topic, "the same path is collected by an earlier entry; this one is ignored");
                continue;
            }
            wanted.insert(
                harvest_key(e, &shadows, &self.allowed_roots),
                (e, shadows.clone()),
            );
            shadows.push((vec![e.path.clone()], e.exclude.clone()));
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        let stopped = !gone.is_empty();
        for k in gone {
            if let Some(r) = self.running.remove(&k) {
                tracing::info!(path = %r.glob, "collect entry removed; harvesting stops (checkpoints stay)");
                r.stop();
            }
        }
        if stopped {
            // What the stopped harvesters read must be checkpointed before
            // another harvester may open the same files.
            self.barrier();
        }
        for (k, (e, shadows)) in wanted {
            let out = output_of(e, &self.identity);
            if let Some(r) = self.running.get(&k) {
                let mut cur = r.output.write().unwrap_or_else(|p| p.into_inner());
                if cur.topic != out.topic || cur.meta != out.meta {
                    tracing::info!(path = %e.path, topic = %e.topic, "output settings changed; new lines follow them");
                    *cur = out;
                }
                continue;
            }
            match self.start(e, &shadows, out) {
                Ok(r) => {
                    tracing::info!(path = %e.path, topic = %e.topic, "harvesting");
                    self.running.insert(k, r);
                }
                Err(err) => {
                    tracing::error!(path = %e.path, error = %err, "cannot start harvesting")
                }
            }
        }
    }

    fn start(&self, e: &CollectEntry, shadows: &Shadows, out: Output) -> Result<Running, String> {
        let h = Harvester::new(harvest_config(e, shadows, &self.allowed_roots)?)
            .map_err(|x| x.to_string())?
            .with_observer(Arc::clone(&self.metrics) as Arc<dyn crate::harvester::Observer>);
        let output = Arc::new(RwLock::new(out));
        let open = Arc::new(AtomicUsize::new(0));
        let tx = self.tx.clone();
        let queued = self.queued.clone();
        let o = Arc::clone(&output);
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let lp = watch::spawn(
            h,
            Arc::clone(&self.store),
            RESCAN,
            Discovery::NotifyAndRescan,
            Arc::clone(&open),
            move |emitted| {
                // Lines not handed over (writer gone, or this harvester
                // cancelled) are not checkpointed: they are read again later.
                // Once cancelled, nothing more is handed over — lines after
                // given-up ones must not be checkpointed past them.
                if cancelled.load(Ordering::SeqCst) {
                    return None;
                }
                let out = o.read().unwrap_or_else(|p| p.into_inner()).clone();
                let msg = SpoolMsg::Data(Spooled {
                    topic: out.topic,
                    meta: out.meta,
                    read_ms: checkpoint::now_ms(),
                    emitted,
                });
                // Bounded by bytes too: lines that do not fit now are
                // offered again, as when the channel is full.
                let n = match &msg {
                    SpoolMsg::Data(s) => crate::spool::spooled_bytes(s),
                    SpoolMsg::Barrier(_) => 0,
                };
                if !queued.try_reserve(n) {
                    return match msg {
                        SpoolMsg::Data(s) => Some(s.emitted),
                        SpoolMsg::Barrier(_) => None,
                    };
                }
                match tx.try_send(msg) {
                    Ok(()) => None,
                    Err(TrySendError::Disconnected(_)) => {
                        queued.release(n);
                        None
                    }
                    // Full: the loop offers them again (and opens new files
                    // meanwhile).
                    Err(TrySendError::Full(SpoolMsg::Data(s))) => {
                        queued.release(n);
                        Some(s.emitted)
                    }
                    Err(TrySendError::Full(_)) => {
                        queued.release(n);
                        None
                    }
                }
            },
        )
        .map_err(|x| x.to_string())?;
        Ok(Running {
            glob: e.path.clone(),
            output,
            lp,
            open,
            cancel,
        })
    }

    fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(SpoolMsg::Barrier(tx)).is_ok()
            && rx.recv_timeout(Duration::from_secs(10)).is_err()
        {
            tracing::warn!("the spool writer did not confirm within 10 s (WAL full?); a file read by the new entries may be read again from its last checkpoint");
        }
    }

    fn open_files(&self) -> usize {
        self.running
            .values()
            .map(|r| r.open.load(Ordering::Relaxed))
            .sum()
    }

    fn globs(&self) -> Vec<String> {
        self.running.values().map(|r| r.glob.clone()).collect()
    }

    fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.stop();
        }
    }
}

fn wal_options(cfg: &AgentConfig) -> WalOptions {
    let sync = match cfg.wal.sync.as_str() {
        "always" => SyncPolicy::Always,
        "none" => SyncPolicy::Manual,
        _ => SyncPolicy::Group {
            interval: Duration::from_millis(cfg.wal.group_commit_ms.max(1)),
            max_pending_bytes: 4 << 20,
        },
    };
    WalOptions {
        segment_bytes: cfg.wal.segment_bytes,
        max_bytes: cfg.wal.max_bytes,
        sync,
        ..WalOptions::default()
    }
}

fn ship_config(cfg: &AgentConfig, identity: &Identity) -> ShipConfig {
    let mut settings = ship::default_settings();
    settings.insert("compression.type".into(), cfg.kafka.compression.clone());
    settings.insert("linger.ms".into(), cfg.kafka.linger_ms.to_string());
    settings.insert("batch.size".into(), cfg.kafka.batch_bytes.to_string());
    settings.insert(
        "message.max.bytes".into(),
        cfg.kafka.max_message_bytes.to_string(),
    );
    for (k, v) in &cfg.kafka.producer {
        settings.insert(k.clone(), v.clone());
    }
    ShipConfig {
        brokers: cfg.kafka.brokers.clone(),
        settings,
        identity: identity.clone(),
        // Room for the headers, key and record overhead.
        max_event_bytes: cfg
            .kafka
            .max_message_bytes
            .saturating_sub(ship::EVENT_HEADROOM),
        dead_letter_topic: Some(cfg.kafka.dead_letter_topic.clone()).filter(|t| !t.is_empty()),
        dead_letter_after: Duration::from_secs(cfg.kafka.dead_letter_after_secs),
        readback_timeout: Duration::from_secs(cfg.kafka.readback_timeout_secs),
        include_unsynced: cfg.wal.sync == "none",
        max_in_flight_lines: 100_000,
        max_in_flight_bytes: 16 << 20,
        ack_every: ship::ACK_EVERY,
        retry_every: ship::RETRY_EVERY,
    }
}

fn watch_spec(cfg: &AgentConfig, host_id: &str, ca_pem: Option<Vec<u8>>) -> WatchSpec {
    WatchSpec {
        endpoints: cfg.etcd.endpoints.clone(),
        user: cfg.etcd.username.clone().map(|u| {
            let pw = cfg.etcd.password.as_ref().map(|p| p.expose().to_string());
            (u, pw.unwrap_or_default())
        }),
        prefix: cfg.etcd.prefix.clone(),
        host_id: host_id.to_string(),
        allowed_roots: cfg.allowed_roots.clone(),
        static_entries: cfg.collect.clone(),
        ca_pem,
    }
}

/// Keeps the registration key alive with a lease until the task is aborted.
async fn register(spec: WatchSpec, key: String, info: Arc<Mutex<AgentState>>) {
    use etcd_client::PutOptions;
    let mut backoff = Duration::from_millis(500);
    loop {
        let res: Result<(), etcd_client::Error> = async {
            let mut client = etcd_config::connect_to(
                &spec.endpoints,
                spec.user.as_ref(),
                spec.ca_pem.as_deref(),
            )
            .await?;
            let lease = client.lease_grant(10, None).await?.id();
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            let mut last = String::new();
            loop {
                let body = {
                    let i = info.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_string(&*i).unwrap_or_default()
                };
                if body != last {
                    client
                        .put(
                            key.as_str(),
                            body.as_str(),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                        .await?;
                    last = body;
                }
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        return Err(etcd_client::Error::LeaseKeepAliveError(
                            "lease expired".into(),
                        ))
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, key = %key, "registration lost; registering again");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn cached_entries(store: &Mutex<Store>, roots: &[PathBuf]) -> Option<Vec<CollectEntry>> {
    let bytes = store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .load_config()?;
    match collect::parse("the checkpoint store's config cache", &bytes, roots) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "the cached collect config is not usable");
            None
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT; see the module docs.
///
/// # Errors
/// The data directory, the store or the WAL cannot be opened, the metrics
/// address cannot be bound, or the WAL failed while running.
pub async fn run(cfg_path: PathBuf, cfg: AgentConfig, grace: Duration) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let metrics = Metrics::new();
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::Io {
        path: cfg.data_dir.clone(),
        source: e,
    })?;
    // Start-up work blocks (DNS, fsync, a whole WAL scan): off the async
    // workers, like the barrier waits and store flushes later.
    let ident = tokio::task::block_in_place(|| identity(&cfg))?;
    let ca_pem = match &cfg.etcd.ca_file {
        None => None,
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::Io {
            path: PathBuf::from(format!("etcd.ca_file {}", p.display())),
            source: e,
        })?),
    };
    tracing::info!(host_id = %ident.host_id, ip = %ident.host_ip, "logagent starting");
    let (mut store, report) = tokio::task::block_in_place(|| {
        Store::open(cfg.data_dir.join("checkpoints"), Duration::from_secs(1))
    })?;
    if let Some(aside) = &report.moved_aside {
        tracing::error!(moved_to = %aside.display(), error = ?report.open_error, restored = report.from_snapshot, "the checkpoint store could not be opened and was set aside; positions come from its snapshot and the WAL");
    }
    let (wal, rec) =
        tokio::task::block_in_place(|| Wal::open(cfg.data_dir.join("wal"), wal_options(&cfg)))?;
    if !rec.is_clean() {
        tracing::warn!(?rec, "WAL recovery found damage");
    }
    let include_unsynced = cfg.wal.sync == "none";
    let replayed = tokio::task::block_in_place(|| reconcile(&wal, &mut store, include_unsynced))?;
    for (kind, n) in [
        ("truncated_bytes", rec.bytes_truncated),
        ("skipped_records", rec.records_skipped),
        ("segments_set_aside", rec.bad_segments),
        ("records_replayed", replayed),
    ] {
        metrics
            .wal_recovery
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(n);
    }
    metrics
        .serve(&cfg.metrics.listen)
        .await
        .map_err(|e| Error::Io {
            path: PathBuf::from(format!("metrics.listen {}", cfg.metrics.listen)),
            source: e,
        })?;
    let wal = Arc::new(wal);
    let store = Arc::new(Mutex::new(store));
    let progress = Arc::new(Progress::default());
    progress
        .checkpointed
        .store(wal.last_seq(), Ordering::SeqCst);
    let shared = Shared {
        wal: Arc::clone(&wal),
        store: Arc::clone(&store),
        progress: Arc::clone(&progress),
        metrics: Arc::clone(&metrics),
    };
    let spool = Spool::start(
        shared.clone(),
        !include_unsynced,
        Limits::for_wal(cfg.wal.segment_bytes, cfg.wal.max_bytes),
    )
    .map_err(|e| Error::Io {
        path: PathBuf::from("spool-writer thread"),
        source: e,
    })?;
    let shipper = Shipper::start(ship_config(&cfg, &ident), shared).map_err(|e| Error::Io {
        path: PathBuf::from("shipper thread"),
        source: e,
    })?;
    let mut sup = Supervisor {
        running: HashMap::new(),
        tx: spool.tx.clone(),
        queued: spool.queued.clone(),
        store: Arc::clone(&store),
        identity: ident.clone(),
        allowed_roots: cfg.allowed_roots.clone(),
        metrics: Arc::clone(&metrics),
        key_states: BTreeMap::new(),
    };

    // Config: etcd, or the cache when etcd does not answer in time.
    let mut cfg = cfg;
    let (cfg_tx, mut cfg_rx) = mpsc::channel(64);
    let mut watcher = tokio::spawn(etcd_config::run(
        watch_spec(&cfg, &ident.host_id, ca_pem.clone()),
        cfg_tx.clone(),
    ));
    let started = tokio::time::Instant::now();
    let mut have_config = false;
    while !have_config {
        let left = ETCD_START_WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, cfg_rx.recv()).await {
            Ok(Some(ev)) => {
                let unreachable = matches!(ev, ConfigEvent::Unreachable { .. });
                have_config = handle_event(ev, &mut sup, &store, &metrics);
                if unreachable {
                    break;
                }
            }
            _ => break,
        }
    }
    if !have_config {
        match cached_entries(&store, &cfg.allowed_roots) {
            Some(entries) => {
                tracing::warn!(
                    entries = entries.len(),
                    "etcd does not answer; starting from the cached collect config"
                );
                metrics.config_reloads.inc();
                tokio::task::block_in_place(|| sup.apply(&entries));
            }
            None => {
                tracing::warn!("etcd does not answer and no config is cached; harvesting the static entries only");
                let entries = cfg.collect.clone();
                tokio::task::block_in_place(|| sup.apply(&entries));
            }
        }
    }

    // Registration.
    // What it publishes (`common::agent_state`), refreshed every few seconds.
    let reg_info = Arc::new(Mutex::new(AgentState {
        schema: common::agent_state::SCHEMA,
        host_id: ident.host_id.clone(),
        hostname: ident.host_name.clone(),
        ip: ident.host_ip.clone(),
        version: ident.version.clone(),
        started_at: crate::event::timestamp(checkpoint::now_ms()),
        updated_at: crate::event::timestamp(checkpoint::now_ms()),
        metrics: cfg.metrics.listen.clone(),
        allowed_roots: roots_text(&cfg.allowed_roots),
        globs: sup.globs(),
        collect: sup.key_states.clone(),
        kafka: "ok".into(),
        ..AgentState::default()
    }));
    let mut paused_since: Option<u64> = None;
    let reg_key = format!(
        "{}/agents/{}",
        cfg.etcd.prefix.trim_end_matches('/'),
        ident.host_id
    );
    let registry = tokio::spawn(register(
        watch_spec(&cfg, &ident.host_id, ca_pem.clone()),
        reg_key,
        Arc::clone(&reg_info),
    ));

    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Io {
        path: PathBuf::from("SIGTERM handler"),
        source: e,
    })?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Io {
        path: PathBuf::from("SIGHUP handler"),
        source: e,
    })?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failed = None;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            Some(ev) = cfg_rx.recv() => {
                tokio::task::block_in_place(|| handle_event(ev, &mut sup, &store, &metrics));
                let mut r = reg_info.lock().unwrap_or_else(|p| p.into_inner());
                r.globs = sup.globs();
                r.collect = sup.key_states.clone();
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                match reload(&cfg_path, &cfg) {
                    Some(new) => {
                        watcher.abort();
                        watcher = tokio::spawn(etcd_config::run(watch_spec(&new, &ident.host_id, ca_pem.clone()), cfg_tx.clone()));
                        // The watcher sends the entries again: harvesters
                        // restart under the new bound.
                        sup.allowed_roots = new.allowed_roots.clone();
                        cfg = new;
                        metrics.config_reloads.inc();
                    }
                    None => {
                        metrics.config_rejections.inc();
                    }
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    release_free_memory();
                }
                {
                    // The checkpoint snapshot (fsync) off the async workers.
                    let st = Arc::clone(&store);
                    tokio::task::spawn_blocking(move || {
                        st.lock().unwrap_or_else(|p| p.into_inner()).maybe_snapshot();
                    });
                }
                let open = sup.open_files();
                metrics.files_open.set(i64::try_from(open).unwrap_or(i64::MAX));
                let paused = metrics.wal_full.load(Ordering::Relaxed);
                paused_since = if paused { paused_since.or(Some(checkpoint::now_ms())) } else { None };
                {
                    let mut r = reg_info.lock().unwrap_or_else(|p| p.into_inner());
                    r.files_harvested = open;
                    r.globs = sup.globs();
                    r.collect = sup.key_states.clone();
                    r.allowed_roots = roots_text(&cfg.allowed_roots);
                    r.paused = paused;
                    r.paused_since = paused_since.map(crate::event::timestamp);
                }
                if ticks.is_multiple_of(common::agent_state::REFRESH_SECS) {
                    let (st, w, r, m) = (Arc::clone(&store), Arc::clone(&wal), Arc::clone(&reg_info), Arc::clone(&metrics));
                    let max = cfg.wal.max_bytes;
                    tokio::task::spawn_blocking(move || refresh_state(&st, &w, max, &m, &r));
                }
                if spool.is_finished() {
                    failed = Some("the spool writer stopped");
                    break;
                }
                if shipper.is_finished() {
                    // Only a panic ends it: exit non-zero so the service
                    // manager restarts the agent (the WAL keeps every line).
                    failed = Some("the shipper thread stopped");
                    break;
                }
            }
        }
    }

    // Shutdown: stop reading, spool what was read, ship it within the grace.
    tracing::info!("stopping: harvesters first, then the WAL, then in-flight acks");
    metrics.draining.store(true, Ordering::SeqCst);
    progress.stop_when_full.store(true, Ordering::SeqCst);
    watcher.abort();
    tokio::task::block_in_place(|| sup.stop_all());
    drop(sup);
    let spool_result = tokio::task::block_in_place(|| spool.join());
    tokio::task::block_in_place(|| shipper.finish(grace));
    registry.abort();
    {
        let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
        st.flush()?;
        if let Err(e) = st.snapshot() {
            tracing::warn!(error = %e, "cannot write the checkpoint snapshot");
        }
    }
    if let Ok(w) = Arc::try_unwrap(wal) {
        w.close()?;
    }
    spool_result?;
    if let Some(why) = failed {
        return Err(Error::Stopped(why.into()));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Handles one config event; returns whether a config was applied.
fn handle_event(
    ev: ConfigEvent,
    sup: &mut Supervisor,
    store: &Mutex<Store>,
    metrics: &Metrics,
) -> bool {
    match ev {
        ConfigEvent::Applied(entries) => {
            metrics.config_reloads.inc();
            metrics.etcd_connected.set(1);
            sup.apply(&entries);
            if let Ok(bytes) = serde_json::to_vec(&entries) {
                let st = store.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = st.save_config(&bytes) {
                    tracing::warn!(error = %e, "cannot cache the collect config");
                }
            }
            true
        }
        ConfigEvent::Rejected { key, error } => {
            metrics.config_rejections.inc();
            tracing::error!(
                key,
                error,
                "collect value refused; the previous config stays"
            );
            false
        }
        ConfigEvent::Unreachable { error } => {
            metrics.etcd_connected.set(0);
            tracing::warn!(error, "etcd unreachable; running on the current config");
            false
        }
        ConfigEvent::Connected => {
            metrics.etcd_connected.set(1);
            false
        }
        ConfigEvent::KeySeen {
            key,
            revision,
            error,
        } => {
            let k = sup.key_states.entry(key).or_default();
            k.revision = revision;
            match error {
                None => {
                    k.applied_revision = revision;
                    k.error = None;
                }
                Some(e) => k.error = Some(e),
            }
            false
        }
    }
}

/// `allowed_roots` as published.
fn roots_text(roots: &[PathBuf]) -> Vec<String> {
    roots.iter().map(|r| r.display().to_string()).collect()
}

/// The slower parts of the published state: files (a stat each), the WAL,
/// problems (a blocking thread, every `REFRESH_SECS`).
fn refresh_state(
    store: &Mutex<Store>,
    wal: &Wal,
    max_bytes: u64,
    metrics: &Metrics,
    reg: &Mutex<AgentState>,
) {
    let files = crate::report::files(store);
    let files = common::agent_state::files_state(files);
    let wal_state = crate::report::wal_state(wal, max_bytes, checkpoint::now_ms());
    let problems: Vec<ProblemState> = metrics
        .current_problems()
        .into_iter()
        .map(|(key, reason, for_secs)| ProblemState {
            key,
            reason,
            for_secs,
        })
        .collect();
    let mut r = reg.lock().unwrap_or_else(|p| p.into_inner());
    r.kafka = if problems.iter().any(|p| p.key == "kafka") {
        "stalled".into()
    } else {
        "ok".into()
    };
    r.etcd_connected = metrics.etcd_connected.get() == 1;
    r.problems = problems;
    r.files = files;
    r.wal = wal_state;
    r.updated_at = crate::event::timestamp(checkpoint::now_ms());
}

/// SIGHUP: the local config file again. Static entries, allowed roots and
/// the etcd settings apply at once; other changes need a restart (logged).
fn reload(path: &Path, cur: &AgentConfig) -> Option<AgentConfig> {
    match AgentConfig::load(path) {
        Ok(new) => {
            let restart: Vec<&str> = [
                ("data_dir", cur.data_dir != new.data_dir),
                ("host_id", cur.host_id != new.host_id),
                (
                    "kafka",
                    serde_json::to_string(&cur.kafka).ok()
                        != serde_json::to_string(&new.kafka).ok(),
                ),
                (
                    "wal",
                    serde_json::to_string(&cur.wal).ok() != serde_json::to_string(&new.wal).ok(),
                ),
                ("metrics", cur.metrics.listen != new.metrics.listen),
            ]
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k)
            .collect();
            if !restart.is_empty() {
                tracing::warn!(keys = ?restart, "these settings changed and apply at the next restart");
            }
            tracing::info!(config = %path.display(), "local config reloaded");
            Some(new)
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config file is refused; keeping the current one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_host_id_is_hostname_and_the_address_towards_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
data_dir = "{}"
[kafka]
brokers = "127.0.0.1:9092"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
            dir.path().display()
        );
        let path = Path::new("agent.toml");
        let mut cfg: AgentConfig = common::config::parse_config(path, &text, |_| None).unwrap();
        let id = identity(&cfg).unwrap();
        assert_eq!(id.host_ip, "127.0.0.1");
        assert_eq!(id.host_id, format!("{}-127.0.0.1", id.host_name));
        // Pinned: a later start whose etcd name does not resolve keeps it.
        cfg.etcd.endpoints = vec!["http://no-such-host.invalid:2379".into()];
        assert_eq!(identity(&cfg).unwrap().host_id, id.host_id);
        cfg.host_id = "web-7".into();
        assert_eq!(identity(&cfg).unwrap().host_id, "web-7");
        assert_eq!(local_ip_towards("no-such-host.invalid:2379"), None);
    }

    /// Issue #12 item 6: never a different identity silently.
    #[test]
    fn an_auto_host_id_is_pinned_and_never_falls_back_silently() {
        let s = |d: Option<&str>, p: Option<&str>| {
            settle_auto_host_id(d.map(String::from), p.map(String::from))
        };
        assert_eq!(
            s(Some("h-10.0.0.1"), None),
            Ok(("h-10.0.0.1".into(), true, None))
        );
        assert_eq!(
            s(Some("h-10.0.0.1"), Some("h-10.0.0.1")),
            Ok(("h-10.0.0.1".into(), false, None))
        );
        let (id, pin, warn) = s(Some("h-10.0.0.9"), Some("h-10.0.0.1")).unwrap();
        assert_eq!((id.as_str(), pin), ("h-10.0.0.1", false));
        assert!(warn.unwrap().contains("h-10.0.0.9"));
        let (id, _, warn) = s(None, Some("h-10.0.0.1")).unwrap();
        assert_eq!(id, "h-10.0.0.1");
        assert!(warn.is_some());
        assert!(s(None, None).unwrap_err().contains("set host_id"));
    }

    #[test]
    fn output_settings_follow_the_entry() {
        let e: Vec<CollectEntry> = collect::parse(
            "k",
            br#"[{"path":"/var/log/a.log","topic":"t","json":true,"fields":{"env":"x"},"partition":{"fixed":1}}]"#,
            &[PathBuf::from("/var/log")],
        )
        .unwrap();
        let who = Identity {
            host_id: "h".into(),
            host_name: "h".into(),
            host_ip: "10.0.0.1".into(),
            version: "0".into(),
        };
        let out = output_of(&e[0], &who);
        let spec = RecordMeta::decode(&out.meta).spec;
        assert_eq!(out.topic, "t");
        assert_eq!(spec.json_key.as_deref(), Some("json"));
        assert_eq!(spec.fields["env"], "x");
        assert_eq!(spec.partition, collect::PartitionMode::Fixed(1));
        // Reading settings key a harvester; output settings do not.
        let mut other = e[0].clone();
        other.topic = "u".into();
        assert_eq!(
            harvest_key(&e[0], &vec![], &[]),
            harvest_key(&other, &vec![], &[])
        );
        other.exclude = vec!["/var/log/b.log".into()];
        assert_ne!(
            harvest_key(&e[0], &vec![], &[]),
            harvest_key(&other, &vec![], &[])
        );
    }
}
