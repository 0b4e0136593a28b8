//! Collecting the checkpoints of files that are gone (issue #12 item 8).
//!
//! Every entry records when its file was last seen (`last_seen_ms`): the
//! spool writer sets it when the file's lines are checkpointed, and each
//! harvester refreshes it for every file it tracks — open, parked, or at a
//! matched path — at most once a second and at most one write per file per
//! [`checkpoint::Store::seen_every`] ([`crate::harvester::Harvester::mark_seen`]).
//! The [`Collector`], ticked by the agent's main loop, removes the entries
//! not seen for `checkpoint.gc_after_secs` whose last WAL record Kafka
//! acknowledged ([`checkpoint::collectible`]), and flushes the store.
//!
//! What keeps an entry: its file is tracked by a running harvester (even
//! deleted, while its handle is open), or its lines wait in the WAL. What
//! does not: a file that no harvester sees — deleted, renamed out of every
//! glob and read to its end, or under an entry removed from the config —
//! for longer than the retention. Such a file coming back later is read
//! from 0.
//!
//! The first pass waits [`Collector::first_pass_after`] after start-up so
//! the harvesters have marked what they see: an agent that was stopped for
//! longer than the retention must not drop the entries of files that are
//! still there.

use checkpoint::Store;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wal::Wal;

/// Most time between two passes.
pub const MAX_EVERY: Duration = Duration::from_secs(300);

/// The periodic collection; see the module docs.
pub struct Collector {
    every: Duration,
    next: Instant,
    /// A pass is running on a blocking thread.
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl Collector {
    /// Sets the store's retention and schedules the first pass.
    pub fn new(retention: Duration, store: &Mutex<Store>) -> Self {
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_retention(retention);
        let every = Self::every(retention);
        Self {
            every,
            next: Instant::now() + Self::first_pass_after(retention),
            running: Arc::default(),
        }
    }

    /// How often passes run: a quarter of the retention, at most
    /// [`MAX_EVERY`], at least a second.
    pub fn every(retention: Duration) -> Duration {
        (retention / 4).clamp(Duration::from_secs(1), MAX_EVERY)
    }

    /// How long after start-up the first pass runs: a pass interval, and at
    /// least the retention or a minute, whichever is shorter — time for
    /// every harvester's first polls to mark what it sees.
    pub fn first_pass_after(retention: Duration) -> Duration {
        Self::every(retention).max(retention.min(Duration::from_secs(60)))
    }

    /// Runs a pass when one is due, on a blocking thread (the store flush
    /// fsyncs). Call it from the main loop's tick.
    pub fn tick(&mut self, store: &Arc<Mutex<Store>>, wal: &Arc<Wal>) {
        use std::sync::atomic::Ordering;
        if Instant::now() < self.next || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        self.next = Instant::now() + self.every;
        let (store, wal, running) = (
            Arc::clone(store),
            Arc::clone(wal),
            Arc::clone(&self.running),
        );
        tokio::task::spawn_blocking(move || {
            pass(&store, wal.acked_seq(), checkpoint::now_ms());
            running.store(false, Ordering::SeqCst);
        });
    }
}

/// One pass: collect, then flush what changed (removals and the marks of
/// seen files, so they survive a crash). Returns how many were removed.
pub fn pass(store: &Mutex<Store>, acked_seq: u64, now_ms: u64) -> usize {
    let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
    let removed = st.gc(now_ms, acked_seq);
    if removed > 0 {
        tracing::info!(
            entries = removed,
            left = st.len(),
            retention_secs = st.retention().as_secs(),
            "checkpoints of files not seen for the retention collected"
        );
    }
    if st.pending() > 0 {
        if let Err(e) = st.flush() {
            tracing::warn!(error = %e, "cannot flush checkpoints after collecting; tried again at the next flush");
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvester::watch::{self, Discovery};
    use crate::harvester::{HarvestConfig, Harvester};
    use checkpoint::{FileId, FileState};

    /// Issue #12 item 8: `Store::gc` was never called. With a running
    /// harvester loop (the agent's), a file deleted and not seen for longer
    /// than the retention loses its checkpoint; a live file that was idle
    /// just as long keeps it (the loop marks it seen), and so does a deleted
    /// file whose last record waits in the WAL, until it is acknowledged.
    #[test]
    fn a_gone_file_is_collected_and_a_live_or_pending_one_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for name in ["live", "gone", "pending"] {
            std::fs::write(logs.join(format!("{name}.log")), format!("{name} line\n")).unwrap();
        }
        let (store, _) = Store::open(tmp.path().join("cp"), Duration::from_secs(60)).unwrap();
        let store = Arc::new(Mutex::new(store));
        let retention = Duration::from_secs(5);
        let _collector = Collector::new(retention, &store);
        let h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            allowed_roots: vec![logs.clone()],
            rotate_grace: Duration::from_millis(100),
            ..HarvestConfig::default()
        })
        .unwrap();
        // The sink checkpoints as the spool writer would, the last record
        // of `pending` being seq 8; last seen an hour ago, all of them.
        let hour_ago = checkpoint::now_ms() - 3_600_000;
        let sink_store = Arc::clone(&store);
        let lp = watch::spawn(
            h,
            Arc::clone(&store),
            Duration::from_millis(50),
            Discovery::RescanOnly,
            Arc::default(),
            move |out| {
                let mut st = sink_store.lock().unwrap();
                for e in out {
                    let path = e.path.display().to_string();
                    let wal_seq = if path.ends_with("pending.log") { 8 } else { 1 };
                    st.update(
                        e.id,
                        FileState {
                            last_seen_ms: hour_ago,
                            wal_seq,
                            ..FileState::durable_at(path, e.resume_offset)
                        },
                    );
                }
                None
            },
        )
        .unwrap();
        let names = |st: &Store| -> Vec<String> {
            let mut v: Vec<String> = st
                .iter()
                .map(|(_, s)| s.path.rsplit('/').next().unwrap_or("").to_string())
                .collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "the files were not read");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(logs.join("gone.log")).unwrap();
        std::fs::remove_file(logs.join("pending.log")).unwrap();
        // The deleted files' handles close after rotate_grace; the loop
        // marks what it still tracks about every second.
        std::thread::sleep(Duration::from_millis(2500));
        let now = checkpoint::now_ms();
        let live_seen = |st: &Store| -> Vec<u64> {
            st.iter()
                .filter(|(_, s)| s.path.ends_with("live.log"))
                .map(|(_, s)| s.last_seen_ms)
                .collect()
        };
        let seen = live_seen(&store.lock().unwrap());
        assert!(
            seen.len() == 1 && seen[0] + 2000 >= now,
            "the live file is marked seen: {seen:?}"
        );
        assert_eq!(
            pass(&store, 7, now),
            1,
            "only gone.log: pending.log's seq 8 is not acked"
        );
        assert_eq!(names(&store.lock().unwrap()), ["live.log", "pending.log"]);
        assert_eq!(
            pass(&store, 8, checkpoint::now_ms()),
            1,
            "acked: pending.log goes too"
        );
        assert!(lp.stop().is_some());
        drop(store);
        // Flushed: the store on disk holds the live file only.
        let (st, _) = Store::open(tmp.path().join("cp"), Duration::from_secs(60)).unwrap();
        assert_eq!(names(&st), ["live.log"]);
    }

    /// After a restart, the WAL's unacknowledged records name their files'
    /// last seq again (a store of format V2 knew none), and a seq past the
    /// WAL's end is forgotten.
    #[test]
    fn start_up_sets_each_entrys_last_record_from_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path().join("wal"), wal::WalOptions::default()).unwrap();
        let (mut st, _) = Store::open(tmp.path().join("cp"), Duration::from_secs(60)).unwrap();
        let file = |inode| FileId {
            device: 1,
            inode,
            fingerprint: 2,
        };
        let batch = |inode, end| wal::Batch {
            source: wal::SourceId {
                device: 1,
                inode,
                fingerprint: 2,
                path: format!("/l/{inode}.log"),
            },
            topic: "t".into(),
            end_offset: end,
            read_ms: 1,
            meta: Vec::new(),
            lines: vec![wal::Line {
                offset: 0,
                bytes: b"x".to_vec(),
                flags: 0,
            }],
        };
        wal.append(&[batch(1, 2), batch(7, 2), batch(1, 4)])
            .unwrap();
        st.update(file(1), FileState::durable_at("/l/1.log", 2));
        st.update(
            file(9),
            FileState {
                wal_seq: 99,
                ..FileState::durable_at("/l/9.log", 2)
            },
        );
        crate::run::reconcile(&wal, &mut st, true).unwrap();
        let seq = |st: &Store, i| st.get(&file(i)).map(|s| (s.durable_offset, s.wal_seq));
        assert_eq!(seq(&st, 1), Some((4, 3)));
        assert_eq!(seq(&st, 7), Some((2, 2)));
        assert_eq!(seq(&st, 9), Some((2, 0)), "seq 99 is past the WAL's end");
        assert_eq!(
            st.gc(checkpoint::now_ms() + 8 * 24 * 3_600_000, 2),
            2,
            "1.log waits for seq 3"
        );
        assert_eq!(seq(&st, 1), Some((4, 3)));
    }

    #[test]
    fn passes_are_spaced_and_the_first_waits_for_the_harvesters() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(Collector::every(7 * day), MAX_EVERY);
        assert_eq!(Collector::first_pass_after(7 * day), MAX_EVERY);
        assert_eq!(
            Collector::every(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            Collector::first_pass_after(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            Collector::first_pass_after(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
