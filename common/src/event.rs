//! The event schema on the Kafka wire: one JSON object per log line.
//!
//! Field names follow the Elastic Common Schema where one exists, so Kibana's
//! Discover and the index template in `logtransfer` agree without set-up:
//!
//! ```json
//! {"@timestamp":"2026-11-21T04:33:32.123Z","message":"GET / 200",
//!  "host":{"name":"web-1","id":"10.0.0.5-web-1"},
//!  "log":{"file":{"path":"/var/log/nginx/access.log","device":2049,"inode":1234,
//!         "fingerprint":"9f86d081"},"offset":4096,"flags":[]},
//!  "agent":{"type":"logagent","version":"0.1.0"},
//!  "fields":{"env":"prod"}}
//! ```
//!
//! `log.offset` is the byte offset of the line's first byte in the source file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version carried in Kafka message headers (`logpipe-schema`).
pub const SCHEMA_VERSION: u32 = 1;

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub id: String,
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
}

/// The Elasticsearch `_id` of the document made from a Kafka message.
///
/// Deterministic in (topic, partition, offset), so consuming the same message
/// again after a crash targets the same document and a `create` answers 409
/// instead of making a duplicate.
pub fn document_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}-{partition}-{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_id_is_topic_partition_offset() {
        assert_eq!(document_id("web_log", 3, 42), "web_log-3-42");
    }

    #[test]
    fn event_round_trips_with_ecs_names() {
        let ev = LogEvent {
            timestamp: "2026-11-21T04:33:32.123Z".into(),
            message: "hello".into(),
            host: Host {
                name: "h".into(),
                id: "i".into(),
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
            },
            fields: BTreeMap::new(),
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
