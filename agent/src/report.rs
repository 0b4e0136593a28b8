//! The agent's state as published in etcd ([`common::agent_state`] has the
//! schema): the parts computed from the checkpoint store and the WAL.
//! Called from a blocking thread every `REFRESH_SECS`.

use common::agent_state::{FileReport, WalState};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every checkpointed file: its path, read and acknowledged offsets, and
/// its size when the file at that path is still the same inode (a rotated
/// file's size is unknown here: taken as its read offset).
/// The store is locked only to copy the entries, not while stat'ing.
pub fn files(store: &std::sync::Mutex<checkpoint::Store>) -> Vec<FileReport> {
    let copy = {
        let st = store.lock().unwrap_or_else(|p| p.into_inner());
        entries(&st)
    };
    with_sizes(copy, |p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len()))
    })
}

/// (device, inode, path, read offset, acked offset) of every entry.
type Entry = (u64, u64, String, u64, u64);

fn entries(store: &checkpoint::Store) -> Vec<Entry> {
    store
        .iter()
        .map(|(id, s)| {
            (
                id.device,
                id.inode,
                s.path.clone(),
                s.durable_offset,
                s.acked_offset,
            )
        })
        .collect()
}

/// [`files`] with the stat given (tests).
pub fn files_with(
    store: &checkpoint::Store,
    stat: impl Fn(&Path) -> Option<(u64, u64, u64)>,
) -> Vec<FileReport> {
    with_sizes(entries(store), stat)
}

fn with_sizes(
    entries: Vec<Entry>,
    stat: impl Fn(&Path) -> Option<(u64, u64, u64)>,
) -> Vec<FileReport> {
    entries
        .into_iter()
        .map(|(dev, ino, path, read, acked)| {
            let size = match stat(Path::new(&path)) {
                Some((d, i, len)) if (d, i) == (dev, ino) => len,
                _ => read,
            };
            FileReport {
                path,
                size,
                read_offset: read,
                acked_offset: acked.min(read),
            }
        })
        .collect()
}

/// The WAL's use and the age of its oldest unacknowledged record.
pub fn wal_state(wal: &wal::Wal, max_bytes: u64, now_ms: u64) -> WalState {
    let acked = wal.acked_seq();
    let unacked = wal.last_seq().saturating_sub(acked);
    let oldest = if unacked == 0 {
        None
    } else {
        match wal.reader(acked + 1).next_item() {
            Ok(Some(wal::ReadItem::Record { batch, .. })) if batch.read_ms > 0 => {
                Some(batch.read_ms)
            }
            _ => None,
        }
    };
    WalState {
        used_bytes: wal.disk_bytes(),
        max_bytes,
        unacked_records: unacked,
        oldest_unacked_read_at: oldest.map(crate::event::timestamp),
        lag_secs: oldest.map(|t| now_ms.saturating_sub(t) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkpoint::{FileId, FileState, Store};
    use std::time::Duration;

    #[test]
    fn sizes_come_from_the_same_inode_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut st, _) = Store::open(tmp.path().join("cp"), Duration::from_secs(60)).unwrap();
        let id = |inode| FileId {
            device: 1,
            inode,
            fingerprint: 9,
        };
        let mut a = FileState::durable_at("/l/a.log", 100);
        a.acked_offset = 40;
        st.update(id(1), a);
        st.update(id(2), FileState::durable_at("/l/rotated.log", 70));
        let got = files_with(&st, |p| match p.to_str() {
            Some("/l/a.log") => Some((1, 1, 500)),
            _ => Some((1, 99, 5)), // another file at that path now
        });
        let by = |p: &str| got.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(
            (by("/l/a.log").size, by("/l/a.log").unshipped()),
            (500, 460)
        );
        assert_eq!(by("/l/rotated.log").size, 70);
    }
}
