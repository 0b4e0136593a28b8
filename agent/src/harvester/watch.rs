//! Running a [`Harvester`] on its own thread: it polls as soon as inotify
//! (through `notify`) reports a change under the glob roots, and every
//! `rescan` interval regardless — the fallback for filesystems that deliver
//! no events (NFS, some container overlays) and for events lost on overflow.
//!
//! Wake-ups are coalesced: the queue holds at most one pending wake, so an
//! event storm during an outage costs no memory. A new directory makes the
//! loop poll again [`NEW_DIR_REPOLL`] after the poll it caused: files created
//! in it before its watch was added give no event of their own.
//!
//! About every second (paused or not) the loop marks the files it tracks as
//! seen in the store ([`Harvester::mark_seen`]), so their checkpoints are
//! not garbage-collected (the agent's `gc` module). After every poll (and
//! every open while paused) it records the files opened as new identities
//! in the store at offset 0 and flushes it ([`Harvester::record_opened`]):
//! a file renamed out of the globs before any of its lines was durable is
//! still found by the next start.

use super::{Emitted, Harvester};
use checkpoint::Store;
use notify::{RecursiveMode, Watcher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A harvester running on its own thread; see [`spawn`].
pub struct HarvestLoop {
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    handle: Option<JoinHandle<Harvester>>,
}

/// How soon after a poll woken by a new directory the loop polls again.
pub const NEW_DIR_REPOLL: Duration = Duration::from_millis(200);

/// Whether inotify events wake the loop (`false`: rescans only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    NotifyAndRescan,
    RescanOnly,
}

/// How often a loop whose sink is full opens new files meanwhile.
pub const PAUSED_OPEN_EVERY: Duration = Duration::from_secs(1);

/// How often a loop marks the files it tracks as seen in the store
/// ([`Harvester::mark_seen`]; paused or not).
pub const MARK_SEEN_EVERY: Duration = Duration::from_secs(1);

/// Records the files `h` opened as new identities and flushes the store
/// when there were any ([`Harvester::record_opened`]), then marks what `h`
/// tracks when [`MARK_SEEN_EVERY`] has passed since `at`.
fn record_and_mark(h: &mut Harvester, store: &mut Store, at: &mut Option<std::time::Instant>) {
    if h.record_opened(store) > 0 {
        if let Err(e) = store.flush() {
            tracing::warn!(error = %e, "cannot flush the checkpoints of newly opened files; a restart may miss them if they are renamed meanwhile");
        }
    }
    if at.is_none_or(|t| t.elapsed() >= MARK_SEEN_EVERY) {
        h.mark_seen(store, checkpoint::now_ms());
        *at = Some(std::time::Instant::now());
    }
}

/// Starts polling `harvester` on a thread; every non-empty poll result goes
/// to `sink`, which gives the lines back (`Some`) when it cannot take them
/// now (the WAL is full): the loop offers them again every 5 ms and
/// meanwhile, every [`PAUSED_OPEN_EVERY`], opens new files without reading
/// them ([`Harvester::open_new`]), so files rotated and deleted during the
/// pause stay readable through their handles. The store is read (locked)
/// during each poll. After each poll the number of open files is stored in
/// `open_files`.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn(
    harvester: Harvester,
    store: Arc<Mutex<Store>>,
    rescan: Duration,
    discovery: Discovery,
    open_files: Arc<AtomicUsize>,
    mut sink: impl FnMut(Vec<Emitted>) -> Option<Vec<Emitted>> + Send + 'static,
) -> std::io::Result<HarvestLoop> {
    let stop = Arc::new(AtomicBool::new(false));
    // At most one pending wake: more would say nothing new.
    let (wake, rx) = mpsc::sync_channel::<()>(1);
    // The first poll happens at once.
    let _ = wake.try_send(());
    let events = wake.clone();
    let new_dir = Arc::new(AtomicBool::new(false));
    let new_dir_seen = Arc::clone(&new_dir);
    let stop_flag = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("harvester".into())
        .spawn(move || {
            let mut h = harvester;
            // Kept alive for the loop's lifetime; dropped (unwatched) at exit.
            let _watcher = (discovery == Discovery::NotifyAndRescan)
                .then(|| watch_roots(h.roots(), events, new_dir_seen))
                .flatten();
            // After a poll that found lines, poll again at once: a file may
            // have more than one read chunk waiting.
            let mut timeout = Duration::ZERO;
            let mut marked_at = None;
            while let Ok(()) | Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                while rx.try_recv().is_ok() {}
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                let out = {
                    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                    let out = h.poll(&store);
                    record_and_mark(&mut h, &mut store, &mut marked_at);
                    out
                };
                open_files.store(h.open_files(), Ordering::Relaxed);
                let busy = !out.is_empty();
                let mut pending = busy.then_some(out);
                let mut opened_at = std::time::Instant::now();
                while let Some(batch) = pending.take() {
                    let Some(back) = sink(batch) else { break };
                    if stop_flag.load(Ordering::SeqCst) {
                        break; // given up: not checkpointed, read again later
                    }
                    if opened_at.elapsed() >= PAUSED_OPEN_EVERY {
                        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                        h.open_new(&store);
                        record_and_mark(&mut h, &mut store, &mut marked_at);
                        open_files.store(h.open_files(), Ordering::Relaxed);
                        opened_at = std::time::Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    pending = Some(back);
                }
                timeout = if busy {
                    Duration::ZERO
                } else if new_dir.swap(false, Ordering::SeqCst) {
                    NEW_DIR_REPOLL.min(rescan)
                } else {
                    rescan
                };
            }
            h
        })?;
    Ok(HarvestLoop {
        stop,
        wake,
        handle: Some(handle),
    })
}

fn watch_roots(
    roots: &[std::path::PathBuf],
    events: SyncSender<()>,
    new_dir: Arc<AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::event::{CreateKind, EventKind};
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            let Ok(e) = res else { return };
            // Our own reads (access, open, close-after-read) are events too;
            // waking on them would make every poll cause the next one.
            if matches!(e.kind, EventKind::Access(_)) {
                return;
            }
            if matches!(e.kind, EventKind::Create(CreateKind::Folder)) {
                new_dir.store(true, Ordering::SeqCst);
            }
            // Full: a wake is already pending.
            let _ = events.try_send(());
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; discovering files by rescanning only");
            return None;
        }
    };
    for root in roots {
        if let Err(e) = watcher.watch(root, RecursiveMode::Recursive) {
            tracing::warn!(root = %root.display(), error = %e, "cannot watch; relying on rescans there");
        }
    }
    Some(watcher)
}

impl HarvestLoop {
    /// Stops the loop after its current poll and returns the harvester.
    pub fn stop(mut self) -> Option<Harvester> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        self.handle.take().and_then(|h| h.join().ok())
    }
}

impl Drop for HarvestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvester::HarvestConfig;
    use std::time::Instant;

    fn run(discovery: Discovery, rescan: Duration) -> Duration {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let (store, _) = Store::open(tmp.path().join("cp"), Duration::from_secs(60)).unwrap();
        let h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/**/*.log", logs.display())],
            ..HarvestConfig::default()
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let lp = spawn(
            h,
            Arc::new(Mutex::new(store)),
            rescan,
            discovery,
            Arc::default(),
            move |out| {
                for e in out {
                    for l in e.lines {
                        let _ = tx.send(l.bytes);
                    }
                }
                None
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        std::fs::create_dir_all(logs.join("sub")).unwrap();
        std::fs::write(logs.join("sub/new.log"), b"hello\n").unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the line arrives");
        let took = start.elapsed();
        assert_eq!(got, b"hello");
        assert!(lp.stop().is_some());
        took
    }

    #[test]
    fn inotify_wakes_the_loop_long_before_the_rescan() {
        let took = run(Discovery::NotifyAndRescan, Duration::from_secs(30));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn rescans_alone_find_new_files() {
        run(Discovery::RescanOnly, Duration::from_millis(100));
    }
}
