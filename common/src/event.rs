//! The event schema on the Kafka wire: one JSON object per log line.
//!
//! Field names follow the Elastic Common Schema where one exists, so Kibana's
//! Discover and the index template in `logtransfer` agree without set-up:
//!
//! ```json
//! {"@timestamp":"2026-11-21T04:33:32.123Z","message":"GET / 200",
//!  "host":{"name":"web-1","id":"web-1-10.0.0.5","ip":"10.0.0.5"},
//!  "log":{"file":{"path":"/var/log/nginx/access.log","device":2049,"inode":1234,
//!         "fingerprint":"9f86d081"},"offset":4096,"flags":["truncated"]},
//!  "agent":{"type":"logagent","version":"0.1.0","id":"web-1-10.0.0.5"},
//!  "fields":{"env":"prod"},
//!  "json":{"status":200}}
//! ```
//!
//! `log.offset` is the byte offset of the line's first byte in the source file.
//! `@timestamp` is when the agent read the line. For entries with `json`,
//! the parsed object of each line sits under the entry's `json_key`
//! (default `json`); a line that does not parse as an object is shipped with
//! the flag `json_error`.
//!
//! For entries with `container` (Kubernetes' CRI files, Docker's json-file),
//! `message` is the decoded line (partial pieces joined), `stream` is
//! `stdout` or `stderr`, `@timestamp` is the runtime's time, and
//! `kubernetes.{namespace, pod.name, pod.uid, container.name}` and
//! `container.id` come from the file's name; a line not in the format is
//! shipped as read with the flag `malformed`.
//!
//! Kafka headers carry the line's source coordinates, so downstream (and the
//! agent itself after a crash) can recognise a line it already has:
//! `logpipe-host` (host id), `logpipe-file` (`device:inode:fingerprint` in
//! hex), `logpipe-offset` (decimal), `logpipe-schema` ([`SCHEMA_VERSION`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version carried in Kafka message headers (`logpipe-schema`).
pub const SCHEMA_VERSION: u32 = 1;
/// Header names of the source coordinates.
pub const HEADER_HOST: &str = "logpipe-host";
pub const HEADER_FILE: &str = "logpipe-file";
pub const HEADER_OFFSET: &str = "logpipe-offset";
pub const HEADER_SCHEMA: &str = "logpipe-schema";

/// The `logpipe-file` header value of a file identity.
pub fn file_coordinate(device: u64, inode: u64, fingerprint: u64) -> String {
    format!("{device:x}:{inode:x}:{fingerprint:016x}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub message: String,
    pub host: Host,
    pub log: LogInfo,
    pub agent: Agent,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Parsed JSON lines, under the entry's `json_key`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogInfo {
    pub file: FileInfo,
    pub offset: u64,
    /// Markers such as `truncated`, `invalid_utf8`, `partial` (see the harvester).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub device: u64,
    pub inode: u64,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    #[serde(default)]
    pub id: String,
}

/// The Elasticsearch `_id` of the document made from a Kafka message (the one
/// place ids are made, with [`distinct_document_id`]).
///
/// Deterministic in (topic, partition, offset), so consuming the same message
/// again after a crash targets the same document and a `create` answers 409
/// instead of making a duplicate.
pub fn document_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}-{partition}-{offset}")
}

/// The `_id` of a message whose [`document_id`] is already taken by a
/// *different* document: another incarnation of the topic (deleted and
/// recreated, a rebuilt cluster, two clusters writing to one Elasticsearch)
/// reused the offset. `{topic}-{partition}-{offset}-{hash}`, where `hash` is
/// the FNV-1a 64 of `content` (the document's source) in 16 hex digits, so
/// consuming the same message again targets the same document.
pub fn distinct_document_id(topic: &str, partition: i32, offset: i64, content: &[u8]) -> String {
    format!(
        "{}-{:016x}",
        document_id(topic, partition, offset),
        fnv1a64(content)
    )
}

/// FNV-1a, 64 bits: stable across releases and platforms (ids are stored).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_id_is_topic_partition_offset() {
        assert_eq!(document_id("web_log", 3, 42), "web_log-3-42");
    }

    #[test]
    fn distinct_ids_depend_on_the_content_only() {
        // FNV-1a 64 reference value of "a".
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = distinct_document_id("t", 0, 5, b"{\"m\":1}");
        assert_eq!(a, distinct_document_id("t", 0, 5, b"{\"m\":1}"));
        assert_ne!(a, distinct_document_id("t", 0, 5, b"{\"m\":2}"));
        assert!(
            a.starts_with("t-0-5-") && a.len() == "t-0-5-".len() + 16,
            "{a}"
        );
    }

    #[test]
    fn event_round_trips_with_ecs_names() {
        let ev = LogEvent {
            timestamp: "2026-11-21T04:33:32.123Z".into(),
            message: "hello".into(),
            host: Host {
                name: "h".into(),
                id: "i".into(),
                ip: "10.0.0.5".into(),
            },
            log: LogInfo {
                file: FileInfo {
                    path: "/var/log/a.log".into(),
                    device: 1,
                    inode: 2,
                    fingerprint: "ab".into(),
                },
                offset: 7,
                flags: vec![],
            },
            agent: Agent {
                kind: "logagent".into(),
                version: "0.1.0".into(),
                id: "i".into(),
            },
            fields: BTreeMap::new(),
            extra: BTreeMap::new(),
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["@timestamp"], "2026-11-21T04:33:32.123Z");
        assert_eq!(json["log"]["offset"], 7);
        assert_eq!(json["agent"]["type"], "logagent");
        assert!(json.get("fields").is_none());
        let back: LogEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
}
