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
//!
//! Here: start-up and the main loop (config events, SIGHUP reloads,
//! signals, shutdown). Apart: [`identity`] (host id, name, address),
//! `supervisor` (one harvester per entry, started, changed in place or
//! stopped on reload) and `state` (the registration lease and the state
//! published under it).

pub mod alive;
mod identity;
mod state;
mod supervisor;

pub use identity::{identity, settle_auto_host_id};
use state::{refresh_state, register, roots_text};
use supervisor::Supervisor;

use crate::collect::{self, CollectEntry};
use crate::config::AgentConfig;
use crate::etcd_config::{self, ConfigEvent, EtcdTls, WatchSpec};
use crate::event::Identity;
use crate::metrics::{KindLabels, Metrics};
use crate::ship::{self, ShipConfig, Shipper};
use crate::spool::{Limits, Progress, Shared, Spool};
use crate::Error;
use checkpoint::{FileId, FileState, Store};
use common::agent_state::AgentState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
    let mut last: HashMap<FileId, (String, u64, u64)> = HashMap::new();
    let mut records = 0;
    while let Some(item) = reader.next_item()? {
        if let ReadItem::Record { seq, batch } = item {
            records += 1;
            let id = FileId {
                device: batch.source.device,
                inode: batch.source.inode,
                fingerprint: batch.source.fingerprint,
            };
            last.insert(id, (batch.source.path, batch.end_offset, seq));
        }
    }
    // A seq past the WAL's end names a record of a WAL that is gone.
    store.forget_missing_records(wal.last_seq());
    let mut changed = 0;
    for (id, (path, end, seq)) in last {
        let state = match store.get(&id) {
            Some(s) if s.durable_offset == end && s.wal_seq == seq => continue,
            Some(s) => FileState {
                durable_offset: end,
                path,
                wal_seq: seq,
                ..s.clone()
            },
            None => FileState {
                wal_seq: seq,
                ..FileState::durable_at(path, end)
            },
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
        restart_stalled_after: ship::RESTART_STALLED_AFTER,
    }
}

fn watch_spec(cfg: &AgentConfig, host_id: &str, tls: EtcdTls) -> WatchSpec {
    WatchSpec {
        endpoints: cfg.etcd.endpoints.clone(),
        user: cfg
            .etcd
            .username
            .clone()
            .map(|u| (u, cfg.etcd.password.clone().unwrap_or_default())),
        prefix: cfg.etcd.prefix.clone(),
        host_id: host_id.to_string(),
        allowed_roots: cfg.allowed_roots.clone(),
        static_entries: cfg.collect.clone(),
        tls,
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
    let cfg = crate::host_events::effective(cfg);
    let metrics = Metrics::new();
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::Io {
        path: cfg.data_dir.clone(),
        source: e,
    })?;
    // Start-up work blocks (DNS, fsync, a whole WAL scan): off the async
    // workers, like the barrier waits and store flushes later.
    let ident = tokio::task::block_in_place(|| identity(&cfg))?;
    let tls = EtcdTls::load(
        cfg.etcd.ca_file.as_deref(),
        cfg.etcd.cert_file.as_deref(),
        cfg.etcd.key_file.as_deref(),
    )
    .map_err(|(what, source)| Error::Io {
        path: PathBuf::from(what),
        source,
    })?;
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
    metrics
        .wal_recovery_truncated_bytes
        .inc_by(rec.bytes_truncated);
    metrics
        .wal_recovery_segments_set_aside
        .inc_by(rec.bad_segments);
    for (kind, n) in [("skipped", rec.records_skipped), ("replayed", replayed)] {
        metrics
            .wal_recovery_records
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(n);
    }
    metrics
        .wal_max_bytes
        .set(i64::try_from(cfg.wal.max_bytes).unwrap_or(i64::MAX));
    let filesystems: Vec<common::host::Filesystem> = std::iter::once(common::host::Filesystem {
        label: "data_dir".into(),
        path: cfg.data_dir.clone(),
    })
    .chain(
        cfg.allowed_roots
            .iter()
            .filter(|r| !r.starts_with(&cfg.data_dir))
            .map(|r| common::host::Filesystem {
                label: "root".into(),
                path: r.clone(),
            }),
    )
    .collect();
    *metrics
        .filesystems
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = filesystems.clone();
    crate::host_events::spawn(&cfg, filesystems).map_err(|e| Error::Io {
        path: crate::host_events::dir(&cfg.data_dir),
        source: e,
    })?;
    metrics
        .serve(&cfg.metrics.listen)
        .await
        .map_err(|e| Error::Io {
            path: PathBuf::from(format!("metrics.listen {}", cfg.metrics.listen)),
            source: e,
        })?;
    let wal = Arc::new(wal);
    let spread = crate::spread::Plan::decode(
        store.load_meta(crate::spread::META_KEY).as_deref(),
        crate::spread::day_of(checkpoint::now_ms()),
    );
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
        spread: Arc::new(Mutex::new(spread)),
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
    // The previous run's alive stamp bounds which unknown files were born
    // while nobody read them. This run's stamp starts where that window
    // does: killed before its harvesters looked, it leaves the window to
    // the next start whole.
    let recover_born_after = alive::recover_born_after(alive::read(&cfg.data_dir));
    let started_ms = recover_born_after.unwrap_or_else(checkpoint::now_ms);
    stamp_alive(&cfg.data_dir, started_ms);
    let mut sup = Supervisor::new(
        &spool,
        Arc::clone(&store),
        ident.clone(),
        cfg.allowed_roots.clone(),
        Arc::clone(&metrics),
        recover_born_after,
    );

    // Config: etcd, or the cache when etcd does not answer in time.
    let mut cfg = cfg;
    let (cfg_tx, mut cfg_rx) = mpsc::channel(64);
    let mut watcher = tokio::spawn(etcd_config::run(
        watch_spec(&cfg, &ident.host_id, tls.clone()),
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
        watch_spec(&cfg, &ident.host_id, tls.clone()),
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
    let mut gc =
        crate::gc::Collector::new(Duration::from_secs(cfg.checkpoint.gc_after_secs), &store);
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
                        watcher = tokio::spawn(etcd_config::run(watch_spec(&new, &ident.host_id, tls.clone()), cfg_tx.clone()));
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
                gc.tick(&store, &wal);
                {
                    let dir = cfg.data_dir.clone();
                    tokio::task::spawn_blocking(move || stamp_alive(&dir, started_ms));
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
/// Writes the alive stamp (now); a failure is logged (the next start then
/// looks back over a wider window, never a narrower one).
fn stamp_alive(data_dir: &Path, started_ms: u64) {
    if let Err(e) = alive::write(data_dir, started_ms, checkpoint::now_ms()) {
        tracing::warn!(dir = %data_dir.display(), error = %e, "cannot write the alive stamp");
    }
}

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
            sup.end_recovery();
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
                ("host_metrics", cur.host_metrics != new.host_metrics),
            ]
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k)
            .collect();
            if !restart.is_empty() {
                tracing::warn!(keys = ?restart, "these settings changed and apply at the next restart");
            }
            tracing::info!(config = %path.display(), "local config reloaded");
            // Shipping host metrics stays as it started (a restart applies a change).
            let mut new = new;
            new.host_metrics = cur.host_metrics.clone();
            Some(crate::host_events::effective(new))
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the config file is refused; keeping the current one");
            None
        }
    }
}
