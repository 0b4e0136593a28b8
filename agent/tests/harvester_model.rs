//! Model test of the harvester on real files: weighted random actions —
//! write lines, write a partial line, poll, rotate by rename, copytruncate,
//! delete, recreate (possibly on a reused inode), restart from the
//! checkpoint store — against a model of what was written.
//!
//! Invariants:
//! - every complete line is emitted exactly once, in order per file, except
//!   that a copytruncate may lose the lines written since the last poll
//!   before it (copytruncate's inherent window; the model tracks exactly
//!   which lines those are and allows nothing else to be missing);
//! - nothing is emitted that was not written as a complete line;
//! - a restart resumes exactly at the checkpoint (no duplicates);
//! - the same holds when idle files are closed and reopened at every poll,
//!   and when short first lines are fingerprinted without waiting.

use agent::harvester::{HarvestConfig, Harvester};
use checkpoint::{FileState, Store};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Action {
    Write {
        file: usize,
        lines: usize,
        len: usize,
    },
    WritePartial {
        file: usize,
        len: usize,
    },
    Poll,
    Rename {
        file: usize,
    },
    CopyTruncate {
        file: usize,
    },
    Delete {
        file: usize,
    },
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0usize..2, 1usize..5, 0usize..40).prop_map(|(file, lines, len)| Action::Write { file, lines, len }),
        2 => (0usize..2, 1usize..20).prop_map(|(file, len)| Action::WritePartial { file, len }),
        6 => Just(Action::Poll),
        2 => (0usize..2).prop_map(|file| Action::Rename { file }),
        1 => (0usize..2).prop_map(|file| Action::CopyTruncate { file }),
        1 => (0usize..2).prop_map(|file| Action::Delete { file }),
        2 => Just(Action::Restart),
    ]
}

struct Model {
    counter: u64,
    /// Partial text at the end of each current file.
    partial: [String; 2],
    /// Complete lines that must be emitted exactly once.
    expected: HashSet<String>,
    /// Lines that may be missing (copytruncate window).
    may_lose: HashSet<String>,
    /// Complete lines written to each current file since the last poll.
    unpolled: [Vec<String>; 2],
    /// All complete lines of each current file instance.
    all_lines: [Vec<String>; 2],
    /// Whether a poll happened while the current instance could be
    /// fingerprinted (so the harvester holds it open).
    polled: [bool; 2],
    /// Whether the current instance has a checkpoint (it was read before).
    checkpointed: [bool; 2],
    /// Write order of every line, per physical file instance.
    order: HashMap<String, (u64, u64)>,
    instance: [u64; 2],
    next_instance: u64,
}

impl Model {
    /// The current instance of `file` is gone from its path: a file the
    /// harvester never opened may lose all its lines (it is not matched under
    /// its new name); then a new instance starts.
    fn retire(&mut self, file: usize, renamed: bool, close_idle: bool) {
        // With idle files closed, a deleted file may have no handle open:
        // what was written to it since the last poll is gone with it.
        if close_idle && !renamed {
            for l in self.unpolled[file].drain(..) {
                self.may_lose.insert(l);
            }
        }
        // A renamed file with a checkpoint is found again after a restart; a
        // deleted one is only readable through a handle held open.
        let reachable = self.polled[file] || (renamed && self.checkpointed[file]);
        if !reachable {
            for l in self.all_lines[file].drain(..) {
                self.may_lose.insert(l);
            }
        }
        self.all_lines[file].clear();
        self.unpolled[file].clear();
        self.partial[file].clear();
        self.polled[file] = false;
        self.checkpointed[file] = false;
        self.instance[file] = self.next_instance;
        self.next_instance += 1;
    }
}

fn path(dir: &Path, file: usize) -> PathBuf {
    dir.join(format!("app{file}.log"))
}

fn append(p: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

fn commit(store: &mut Store, emitted: &[agent::harvester::Emitted]) {
    for e in emitted {
        store.update(
            e.id,
            FileState::durable_at(e.path.display().to_string(), e.resume_offset),
        );
    }
}

fn run(
    actions: Vec<Action>,
    close_idle: bool,
    fingerprint_at_once: bool,
) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("logs");
    fs::create_dir_all(&dir).expect("mkdir");
    let cfg = HarvestConfig {
        include: vec![format!("{}/*.log", dir.display())],
        max_line_bytes: 1 << 16,
        fingerprint_bytes: 64,
        rotate_grace: Duration::ZERO,
        // Variants: idle files closed (parked) at every poll, and short
        // first lines fingerprinted at once instead of waited for.
        close_idle_after: if close_idle {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        },
        fingerprint_timeout: if fingerprint_at_once {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        },
        ..HarvestConfig::default()
    };
    let store_path = tmp.path().join("checkpoints");
    let (mut store, _) = Store::open(&store_path, Duration::from_secs(3600)).expect("store");
    let mut h = Harvester::new(cfg.clone()).expect("harvester");
    let mut m = Model {
        counter: 0,
        partial: [String::new(), String::new()],
        expected: HashSet::new(),
        may_lose: HashSet::new(),
        unpolled: [Vec::new(), Vec::new()],
        all_lines: [Vec::new(), Vec::new()],
        polled: [false, false],
        checkpointed: [false, false],
        order: HashMap::new(),
        instance: [0, 1],
        next_instance: 2,
    };
    let mut emitted: Vec<String> = Vec::new();
    let logs = dir.clone();
    let poll = |h: &mut Harvester, store: &mut Store, m: &mut Model, emitted: &mut Vec<String>| {
        let out = h.poll(store);
        commit(store, &out);
        for e in out {
            for l in e.lines {
                emitted.push(String::from_utf8(l.bytes).expect("utf-8 test lines"));
            }
        }
        m.unpolled = [Vec::new(), Vec::new()];
        // The harvester opens a file once its first line can be fingerprinted,
        // and checkpoints it (which survives restarts) once it has a line.
        for f in 0..2 {
            if let Ok(bytes) = fs::read(path(&logs, f)) {
                if agent::harvester::fingerprint::fingerprint(&bytes, 64).is_some()
                    && bytes.contains(&b'\n')
                {
                    m.polled[f] = true;
                    m.checkpointed[f] = true;
                }
            }
        }
    };

    for a in actions {
        match a {
            Action::Write { file, lines, len } => {
                let mut bytes = String::new();
                for i in 0..lines {
                    m.counter += 1;
                    let text = format!("L{}-{}", m.counter, "x".repeat(len));
                    // The file already holds the partial tail; the line is
                    // that tail plus what is written now.
                    bytes.push_str(&text);
                    bytes.push('\n');
                    let line = if i == 0 {
                        format!("{}{}", std::mem::take(&mut m.partial[file]), text)
                    } else {
                        text
                    };
                    m.order.insert(line.clone(), (m.instance[file], m.counter));
                    m.expected.insert(line.clone());
                    m.unpolled[file].push(line.clone());
                    m.all_lines[file].push(line);
                }
                append(&path(&dir, file), bytes.as_bytes());
            }
            Action::WritePartial { file, len } => {
                m.counter += 1;
                let text = format!("P{}-{}", m.counter, "y".repeat(len));
                append(&path(&dir, file), text.as_bytes());
                m.partial[file].push_str(&text);
            }
            Action::Poll => poll(&mut h, &mut store, &mut m, &mut emitted),
            Action::Rename { file } => {
                let p = path(&dir, file);
                if p.exists() {
                    // Complete lines already in it will still be read from the
                    // old handle; its partial tail never completes.
                    fs::rename(&p, dir.join(format!("app{file}.log.{}", m.counter)))
                        .expect("rename");
                    m.retire(file, true, close_idle);
                }
            }
            Action::CopyTruncate { file } => {
                let p = path(&dir, file);
                if p.exists() {
                    fs::copy(&p, dir.join(format!("app{file}.log.copy{}", m.counter)))
                        .expect("copy");
                    OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(0))
                        .expect("truncate");
                    // Lines not read before the truncation: the window.
                    for l in m.unpolled[file].drain(..) {
                        m.may_lose.insert(l);
                    }
                    m.retire(file, false, close_idle);
                }
            }
            Action::Delete { file } => {
                let p = path(&dir, file);
                if p.exists() {
                    fs::remove_file(&p).expect("delete");
                    m.retire(file, false, close_idle);
                }
            }
            Action::Restart => {
                // Deleted files' unread lines are gone with their handle; read
                // what is readable first, as a stopping agent drains.
                poll(&mut h, &mut store, &mut m, &mut emitted);
                store.flush().expect("flush");
                drop(h);
                drop(store);
                let (s, report) =
                    Store::open(&store_path, Duration::from_secs(3600)).expect("reopen");
                prop_assert!(report.moved_aside.is_none());
                store = s;
                h = Harvester::new(cfg.clone()).expect("harvester");
                // The new harvester holds no file open until it polls.
                m.polled = [false, false];
            }
        }
    }
    for _ in 0..3 {
        poll(&mut h, &mut store, &mut m, &mut emitted);
    }

    // Nothing emitted that was not written; nothing twice.
    let mut seen = HashSet::new();
    for l in &emitted {
        prop_assert!(
            m.expected.contains(l),
            "emitted a line never written: {:?}",
            l
        );
        prop_assert!(seen.insert(l.clone()), "emitted twice: {:?}", l);
    }
    // Everything written is emitted, but the copytruncate window.
    for l in &m.expected {
        if !seen.contains(l) {
            prop_assert!(m.may_lose.contains(l), "lost {:?}", l);
        }
    }
    // In order per physical file.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for l in &emitted {
        let (inst, n) = m.order[l];
        let prev = last.insert(inst, n).unwrap_or(0);
        prop_assert!(n > prev, "out of order in file instance {}: {:?}", inst, l);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn harvester_matches_model(actions in prop::collection::vec(action(), 1..40), close_idle in any::<bool>(), fingerprint_at_once in any::<bool>()) {
        run(actions, close_idle, fingerprint_at_once)?;
    }
}
