//! The store survives a SIGKILL in the middle of updates: after reopening,
//! it holds exactly the state of one flush (batches are atomic), never a mix,
//! and never goes backwards past a flush that returned.
//!
//! The test re-runs its own binary as the child that writes (selected by the
//! environment variable below) and kills it at random moments.

use checkpoint::{FileId, FileState, Store};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "CHECKPOINT_CRASH_CHILD_DIR";
const FILES: u64 = 200;

fn id(i: u64) -> FileId {
    FileId {
        device: 1,
        inode: i,
        fingerprint: 42,
    }
}

fn state(i: u64, generation: u64) -> FileState {
    FileState {
        path: format!("/var/log/app-{i}.log"),
        durable_offset: generation * 1000 + i,
        acked_offset: generation,
        size: generation * 1000 + i,
        mtime_ms: 0,
        last_seen_ms: generation,
        tail: None,
        wal_seq: generation,
    }
}

/// The child: flush generation after generation of all files, printing each
/// generation once its flush returned.
fn child(dir: &str) {
    let (mut store, _) = Store::open(dir, Duration::from_secs(3600)).expect("child open");
    let mut generation = store.iter().map(|(_, s)| s.acked_offset).max().unwrap_or(0) + 1;
    loop {
        for i in 0..FILES {
            store.update(id(i), state(i, generation));
        }
        store.flush().expect("flush");
        println!("{generation}");
        generation += 1;
    }
}

#[test]
fn a_kill_mid_update_leaves_the_state_of_one_flush() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cp");
    let mut last_acknowledged = 0u64;
    for round in 0..5u64 {
        let mut c = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "a_kill_mid_update_leaves_the_state_of_one_flush",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let out = c.stdout.take().expect("stdout");
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(g) = line.trim().parse::<u64>() {
                    if last == 0 {
                        let _ = first_tx.send(());
                    }
                    last = g;
                }
            }
            last
        });
        // The kill lands mid-update once the child is flushing (a loaded
        // machine may take long to start it: wait for its first flush).
        let _ = first_rx.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50 + round * 137));
        c.kill().expect("SIGKILL");
        let _ = c.wait();
        let flushed = reader.join().expect("reader");
        assert!(
            flushed > 0,
            "round {round}: the child flushed nothing before the kill"
        );

        let (store, report) = Store::open(&dir, Duration::from_secs(1)).expect("reopen");
        assert!(report.moved_aside.is_none(), "round {round}: {report:?}");
        assert_eq!(store.len() as u64, FILES, "round {round}");
        let generation = store.get(&id(0)).expect("file 0").acked_offset;
        for i in 0..FILES {
            assert_eq!(
                store.get(&id(i)),
                Some(&state(i, generation)),
                "round {round}: file {i} is from another flush"
            );
        }
        assert!(
            generation >= flushed,
            "round {round}: flush {flushed} returned, store holds {generation}"
        );
        assert!(generation >= last_acknowledged);
        last_acknowledged = generation;
    }
}
