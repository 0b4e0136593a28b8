//! What a logagent publishes about itself at `<prefix>/agents/<host_id>`
//! in etcd: one JSON object kept alive by a 10 s lease (the key vanishes
//! within the lease's TTL after the agent dies) and refreshed every
//! [`REFRESH_SECS`]. The agent writes it; `logctl` and the console read it
//! (the `control` crate). Schema [`SCHEMA`]:
//!
//! ```json
//! {"schema": 1, "host_id": "web-1-10.0.0.5", "hostname": "web-1", "ip": "10.0.0.5",
//!  "version": "0.1.0", "started_at": "…Z", "updated_at": "…Z", "metrics": "127.0.0.1:9101",
//!  "allowed_roots": ["/var/log"], "globs": ["/var/log/nginx/*.log"], "files_harvested": 3,
//!  "collect": {"/logagent/collect/web-1-10.0.0.5": {"revision": 42, "applied_revision": 42, "error": null},
//!              "/logagent/collect/_all": {"revision": 0, "applied_revision": 0, "error": null}},
//!  "paused": false, "paused_since": null,
//!  "wal": {"used_bytes": 1048576, "max_bytes": 1073741824, "unacked_records": 3,
//!          "oldest_unacked_read_at": "…Z", "lag_secs": 0},
//!  "kafka": "ok", "etcd_connected": true,
//!  "problems": [{"key": "topic:web_log", "reason": "…", "for_secs": 12}],
//!  "files": {"total": 120, "unshipped_bytes": 2048,
//!            "shown": [{"path": "/var/log/nginx/access.log", "size": 9000,
//!                       "read_offset": 8000, "acked_offset": 7000}]}}
//! ```
//!
//! - `collect`: per collect key, the last `mod_revision` seen (0: absent)
//!   and the last one applied; `error` is the refusal of `revision` when it
//!   was refused (the agent keeps running `applied_revision`).
//! - `wal.lag_secs`: how long ago the oldest unacknowledged record was read.
//! - `kafka`: `ok`, or `stalled` (records waited 30 s with no ack).
//! - `files.shown`: the [`FILES_SHOWN`] files with the most bytes not yet
//!   acknowledged by Kafka (`size - acked_offset`); `total` counts every
//!   file with a checkpoint.
//!
//! Add fields, never change or remove one; a reader ignores what it does
//! not know and defaults what is missing (a newer or older agent).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema version written in `schema`.
pub const SCHEMA: u32 = 1;
/// How often the agent refreshes the value.
pub const REFRESH_SECS: u64 = 5;
/// Files listed in `files.shown`.
pub const FILES_SHOWN: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub schema: u32,
    pub host_id: String,
    pub hostname: String,
    pub ip: String,
    pub version: String,
    pub started_at: String,
    pub updated_at: String,
    /// The agent's `/metrics` and `/health` address.
    pub metrics: String,
    pub allowed_roots: Vec<String>,
    pub globs: Vec<String>,
    /// Files open now.
    pub files_harvested: usize,
    pub collect: BTreeMap<String, KeyState>,
    pub paused: bool,
    pub paused_since: Option<String>,
    pub wal: WalState,
    pub kafka: String,
    pub etcd_connected: bool,
    pub problems: Vec<ProblemState>,
    pub files: FilesState,
}

/// One collect key as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyState {
    pub revision: i64,
    pub applied_revision: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WalState {
    pub used_bytes: u64,
    pub max_bytes: u64,
    pub unacked_records: u64,
    pub oldest_unacked_read_at: Option<String>,
    pub lag_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProblemState {
    pub key: String,
    pub reason: String,
    pub for_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesState {
    pub total: usize,
    pub unshipped_bytes: u64,
    pub shown: Vec<FileReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    pub read_offset: u64,
    pub acked_offset: u64,
}

impl FileReport {
    /// Bytes of the file Kafka has not acknowledged yet.
    pub fn unshipped(&self) -> u64 {
        self.size.saturating_sub(self.acked_offset)
    }
}

/// The [`FilesState`] of `files` (every file with a checkpoint): totals,
/// and the [`FILES_SHOWN`] with the most unshipped bytes, most first.
pub fn files_state(mut files: Vec<FileReport>) -> FilesState {
    let total = files.len();
    let unshipped_bytes = files.iter().map(FileReport::unshipped).sum();
    files.sort_by(|a, b| {
        b.unshipped()
            .cmp(&a.unshipped())
            .then_with(|| a.path.cmp(&b.path))
    });
    files.truncate(FILES_SHOWN);
    FilesState {
        total,
        unshipped_bytes,
        shown: files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_or_newer_value_still_reads() {
        let old: AgentState =
            serde_json::from_str(r#"{"hostname":"h","ip":"1.2.3.4","globs":["/a"]}"#).unwrap();
        assert_eq!((old.schema, old.hostname.as_str()), (0, "h"));
        let newer: AgentState =
            serde_json::from_str(r#"{"schema":2,"hostname":"h","future":{"x":1}}"#).unwrap();
        assert_eq!(newer.schema, 2);
    }

    #[test]
    fn the_most_lagging_files_are_shown_first() {
        let f = |p: &str, size, acked| FileReport {
            path: p.into(),
            size,
            read_offset: size,
            acked_offset: acked,
        };
        let mut files: Vec<FileReport> =
            (0..30).map(|i| f(&format!("/l/{i:02}"), 10, 10)).collect();
        files.push(f("/l/behind", 1000, 10));
        let st = files_state(files);
        assert_eq!((st.total, st.unshipped_bytes), (31, 990));
        assert_eq!(st.shown.len(), FILES_SHOWN);
        assert_eq!(st.shown[0].path, "/l/behind");
    }
}
