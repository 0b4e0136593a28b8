//! The alive stamp: when this agent started and when it was last running,
//! so the next start knows which files were born while nobody read them.
//!
//! # On disk
//!
//! `<data_dir>/alive`, one line of text:
//!
//! ```text
//! logagent-alive v1 <started_ms> <alive_ms>
//! ```
//!
//! Unix milliseconds. `started_ms` is when the run's responsibility began:
//! its start, or the start of the window it inherited (below), so a run
//! killed before its harvesters looked leaves that window whole to the
//! next. Written at start-up (after the previous one was read) and about
//! every second after that, to `alive.tmp` and renamed over
//! `alive` (no fsync: a stamp lost to a power cut is an older one, which
//! only widens the window below). A missing or unreadable stamp (the first
//! start, an upgrade from a version without it) means no window.
//!
//! # The window
//!
//! A file can be born at a path of the globs and renamed out of them (a
//! size-based rotation, twice) while the agent is down, or in the moment
//! between a poll and a kill: no checkpoint knows it. The next start reads
//! such files when they sit at a rotated name of an entry ([`crate::harvester`])
//! and were born since [`recover_born_after`]: the later of the previous
//! start and [`WINDOW`] before the previous process was last running.
//! Everything born before that was the previous processes' to see.

use std::path::{Path, PathBuf};

/// How long before the previous process was last running a file may have
/// been born and still be missed by it (a poll that never came: a kill, a
/// stall under load).
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

const MAGIC: &str = "logagent-alive v1";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("alive")
}

/// The previous stamp: (started_ms, alive_ms).
pub fn read(data_dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    let rest = text.trim_end().strip_prefix(MAGIC)?;
    let mut it = rest.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(started)), Some(Ok(alive)), None) if started <= alive => Some((started, alive)),
        _ => None,
    }
}

/// Writes the stamp.
///
/// # Errors
/// Writing or renaming the file failed.
pub fn write(data_dir: &Path, started_ms: u64, alive_ms: u64) -> std::io::Result<()> {
    let tmp = data_dir.join("alive.tmp");
    std::fs::write(&tmp, format!("{MAGIC} {started_ms} {alive_ms}\n"))?;
    std::fs::rename(&tmp, path(data_dir))
}

/// Files born at or after this (Unix ms) and unknown to the checkpoints are
/// read at start-up from a rotated name (see the module docs); `None`
/// without a previous stamp.
pub fn recover_born_after(previous: Option<(u64, u64)>) -> Option<u64> {
    let (started, alive) = previous?;
    let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
    Some(started.max(alive.saturating_sub(window)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_and_a_bad_one_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(tmp.path()), None, "the first start");
        write(tmp.path(), 1_000, 2_000).unwrap();
        assert_eq!(read(tmp.path()), Some((1_000, 2_000)));
        for bad in [
            "",
            "logagent-alive v1 5",
            "logagent-alive v1 9 3",
            "x 1 2",
            "logagent-alive v1 1 2 3",
        ] {
            std::fs::write(tmp.path().join("alive"), bad).unwrap();
            assert_eq!(read(tmp.path()), None, "{bad:?}");
        }
    }

    #[test]
    fn the_window_starts_at_the_previous_start_or_before_its_last_sign_of_life() {
        assert_eq!(recover_born_after(None), None);
        // A short run: everything since it started.
        assert_eq!(recover_born_after(Some((10_000, 20_000))), Some(10_000));
        // A long run: the last WINDOW of it.
        let alive = 100 * 3_600_000;
        assert_eq!(recover_born_after(Some((0, alive))), Some(alive - 600_000));
    }
}
