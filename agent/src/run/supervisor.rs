//! Supervision: one harvester per collect entry (by its reading settings),
//! started, changed in place, or stopped as entries come and go.

use super::RESCAN;
use crate::collect::CollectEntry;
use crate::event::{Identity, RecordMeta, ShipSpec};
use crate::harvester::multiline::MultilineConfig;
use crate::harvester::watch::{self, Discovery, HarvestLoop};
use crate::harvester::{HarvestConfig, Harvester, Recover};
use crate::metrics::Metrics;
use crate::spool::{SpoolMsg, Spooled};
use checkpoint::Store;
use common::agent_state::KeyState;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
pub(super) struct Supervisor {
    running: HashMap<String, Running>,
    tx: SyncSender<SpoolMsg>,
    /// Bytes waiting for the writer (bounded).
    queued: crate::spool::Queued,
    store: Arc<Mutex<Store>>,
    /// Stored in every record (`event` module docs).
    identity: Identity,
    /// Every harvester's bound (`allowed_roots`); a change restarts them.
    pub(super) allowed_roots: Vec<PathBuf>,
    metrics: Arc<Metrics>,
    /// Per collect key: the revisions seen and applied (published).
    pub(super) key_states: BTreeMap<String, KeyState>,
    /// Until the first config from etcd is applied: harvesters started
    /// read the files born since then that no checkpoint knows
    /// ([`crate::harvester::Recover`], the `alive` module).
    recover_born_after: Option<u64>,
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
        e.container,
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
        container: e.container,
        ..HarvestConfig::default()
    };
    if let Some(n) = e.max_line_bytes {
        hc.max_line_bytes = n;
    }
    Ok(hc)
}

impl Supervisor {
    pub(super) fn new(
        spool: &crate::spool::Spool,
        store: Arc<Mutex<Store>>,
        identity: Identity,
        allowed_roots: Vec<PathBuf>,
        metrics: Arc<Metrics>,
        recover_born_after: Option<u64>,
    ) -> Self {
        Self {
            running: HashMap::new(),
            tx: spool.tx.clone(),
            queued: spool.queued.clone(),
            store,
            identity,
            allowed_roots,
            metrics,
            key_states: BTreeMap::new(),
            recover_born_after,
        }
    }

    /// Harvesters started from now on read only what they see (the
    /// start-up recovery is over).
    pub(super) fn end_recovery(&mut self) {
        self.recover_born_after = None;
    }

    /// Entries in merge order (the host's, `_all`'s, the static ones): a
    /// file matched by several is collected by the first one only (one
    /// checkpoint per file, never shared between entries).
    pub(super) fn apply(&mut self, entries: &[CollectEntry]) {
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
        let all: Shadows = wanted
            .values()
            .map(|(e, _)| (vec![e.path.clone()], e.exclude.clone()))
            .collect();
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
            let recover = self.recover_born_after.map(|born_after_ms| Recover {
                born_after_ms,
                others: all
                    .iter()
                    .filter(|(i, x)| i != std::slice::from_ref(&e.path) || x != &e.exclude)
                    .cloned()
                    .collect(),
            });
            match self.start(e, &shadows, out, recover) {
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

    fn start(
        &self,
        e: &CollectEntry,
        shadows: &Shadows,
        out: Output,
        recover: Option<Recover>,
    ) -> Result<Running, String> {
        let mut hc = harvest_config(e, shadows, &self.allowed_roots)?;
        hc.recover = recover;
        let h = Harvester::new(hc)
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

    pub(super) fn open_files(&self) -> usize {
        self.running
            .values()
            .map(|r| r.open.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn globs(&self) -> Vec<String> {
        self.running.values().map(|r| r.glob.clone()).collect()
    }

    pub(super) fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect;
    use crate::event::RecordMeta;

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
