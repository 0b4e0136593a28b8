//! Collect entries: which files go to which topic. They live in etcd as JSON
//! at `<prefix>/collect/<host_id>` (and `<prefix>/collect/_all` for every
//! host), in the seeds' format extended with optional fields:
//!
//! ```json
//! [{"path": "/var/log/nginx/*.log", "topic": "web_log"},
//!  {"path": "/var/log/app/**/*.log", "topic": "app_log",
//!   "exclude": ["/var/log/app/**/debug*.log"],
//!   "multiline": {"start": "^\\d{4}-\\d{2}-\\d{2} ", "max_lines": 500, "flush_timeout_ms": 5000},
//!   "json": true, "fields": {"env": "prod"}, "partition": "by_file",
//!   "max_line_bytes": 1048576},
//!  {"path": "/var/log/containers/*.log", "topic": "k8s_log",
//!   "container": "cri", "follow_symlinks": true}]
//! ```
//!
//! A value is accepted or refused as a whole: bad JSON, an unknown field, an
//! empty or relative path, a path outside `allowed_roots`, an invalid topic
//! or regex — the error names the etcd key and what is wrong, and the agent
//! keeps its previous config. Pure functions; the etcd client is elsewhere.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The largest `max_line_bytes` an entry may ask for.
pub const MAX_LINE_BYTES_LIMIT: usize = 8 << 20;

/// How lines of an entry are spread over the topic's partitions — the
/// seeds' three modes (hash of a key, an explicit partition, round robin).
/// JSON: `"by_file"`, `"by_host"`, `"round_robin"`, `{"key": "k"}`,
/// `{"fixed": 2}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionMode {
    /// Keyed by host id + file path: all lines of one file go to one
    /// partition, so per-file order is kept in Kafka.
    #[default]
    ByFile,
    /// Keyed by host id: one host's lines stay in order across its files.
    ByHost,
    /// Keyed by this fixed string.
    Key(String),
    /// Always this partition.
    Fixed(i32),
    /// No key: the producer spreads messages (no order guarantee).
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineSpec {
    /// A line matching this regex starts a new event.
    pub start: String,
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    #[serde(default = "default_flush_ms")]
    pub flush_timeout_ms: u64,
}

fn default_max_lines() -> usize {
    500
}
fn default_flush_ms() -> u64 {
    5000
}

/// One collect entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectEntry {
    /// An absolute glob (`*`, `?`, `[..]`, `**`).
    pub path: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<MultilineSpec>,
    /// Parse each line as a JSON object and put it under `json_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
    /// Where parsed JSON lines go in the event (default `json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
    /// Static fields added to every event of this entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub partition: PartitionMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line_bytes: Option<usize>,
    /// Follow symlinked files the globs match (Kubernetes'
    /// `/var/log/containers/*.log`) when the target is a regular file inside
    /// `allowed_roots`. Default off: symlinks are skipped, logged once and
    /// counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_symlinks: bool,
    /// The files are container runtime logs (`"cri"`, `"docker"` or
    /// `"auto"`): each line is decoded, partial pieces are joined, and the
    /// event gets `stream`, the runtime's time as `@timestamp`, and
    /// `kubernetes.*` / `container.id` from the file name
    /// ([`crate::harvester::container`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::harvester::container::ContainerFormat>,
}

/// Why a collect value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("etcd key {key}: invalid collect entries: {message}")]
    Parse { key: String, message: String },
    #[error("etcd key {key}: entry {index} (`{path}`): {message}")]
    Invalid {
        key: String,
        index: usize,
        path: String,
        message: String,
    },
}

/// The etcd key holding `host_id`'s entries.
pub fn host_key(prefix: &str, host_id: &str) -> String {
    format!("{}/collect/{host_id}", prefix.trim_end_matches('/'))
}

/// The etcd key holding entries for every host.
pub fn all_key(prefix: &str) -> String {
    host_key(prefix, "_all")
}

/// The directory a glob reads from: its part before the first metacharacter,
/// cut back to a whole directory.
fn literal_dir(glob: &str) -> PathBuf {
    let meta = glob.find(['*', '?', '[', '{']).unwrap_or(glob.len());
    let literal = &glob[..meta];
    match literal.rfind('/') {
        Some(0) | None => PathBuf::from("/"),
        Some(i) => PathBuf::from(&literal[..i]),
    }
}

/// Whether a glob can only match files under one of `roots`.
pub fn within_roots(glob: &str, roots: &[PathBuf]) -> bool {
    let path = Path::new(glob);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return false;
    }
    let dir = literal_dir(glob);
    roots.iter().any(|root| dir.starts_with(root))
}

/// Checks one entry (from etcd or a static `[[collect]]` one): what is
/// wrong with it, in words, or nothing.
///
/// # Errors
/// The first problem found.
pub fn validate(entry: &CollectEntry, allowed_roots: &[PathBuf]) -> Result<(), String> {
    if entry.path.trim().is_empty() {
        return Err("the path is empty".into());
    }
    if !entry.path.starts_with('/') {
        return Err("the path is not absolute".into());
    }
    if !within_roots(&entry.path, allowed_roots) {
        return Err(format!(
            "outside allowed_roots {:?}; refused",
            allowed_roots
        ));
    }
    if let Err(e) = globset::Glob::new(&entry.path) {
        return Err(format!("invalid glob: {e}"));
    }
    for x in &entry.exclude {
        if !x.starts_with('/') {
            return Err(format!("exclude `{x}` is not absolute"));
        }
        if let Err(e) = globset::Glob::new(x) {
            return Err(format!("exclude `{x}`: invalid glob: {e}"));
        }
    }
    if !crate::config::valid_topic(&entry.topic) {
        return Err(format!("`{}` is not a valid Kafka topic name", entry.topic));
    }
    if let Some(m) = &entry.multiline {
        if let Err(e) = crate::harvester::multiline::start_regex(&m.start) {
            return Err(format!("multiline.start: {e}"));
        }
        if m.max_lines == 0 {
            return Err("multiline.max_lines must be at least 1".into());
        }
    }
    if let Some(k) = &entry.json_key {
        const TAKEN: &[&str] = &[
            "@timestamp",
            "message",
            "host",
            "log",
            "agent",
            "fields",
            "stream",
            "container",
            "kubernetes",
        ];
        if k.is_empty() || TAKEN.contains(&k.as_str()) {
            return Err(format!("json_key `{k}` is empty or an event field"));
        }
    }
    if let PartitionMode::Fixed(p) = entry.partition {
        if p < 0 {
            return Err(format!("partition {{\"fixed\": {p}}} is negative"));
        }
    }
    if entry.max_line_bytes == Some(0) {
        return Err("max_line_bytes must be at least 1".into());
    }
    if entry
        .max_line_bytes
        .is_some_and(|n| n > MAX_LINE_BYTES_LIMIT)
    {
        return Err(format!(
            "max_line_bytes must be at most {MAX_LINE_BYTES_LIMIT} (a WAL record holds at most {} bytes)",
            wal::MAX_RECORD_BYTES
        ));
    }
    Ok(())
}

/// Parses and validates one etcd value.
///
/// # Errors
/// [`CollectError`] naming `key` and the first problem; nothing of the value
/// is used then.
pub fn parse(
    key: &str,
    value: &[u8],
    allowed_roots: &[PathBuf],
) -> Result<Vec<CollectEntry>, CollectError> {
    let mut de = serde_json::Deserializer::from_slice(value);
    let entries: Vec<CollectEntry> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner().to_string();
        CollectError::Parse {
            key: key.to_string(),
            message: if at == "." {
                inner
            } else {
                format!("{at}: {inner}")
            },
        }
    })?;
    de.end().map_err(|e| CollectError::Parse {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    for (index, entry) in entries.iter().enumerate() {
        validate(entry, allowed_roots).map_err(|message| CollectError::Invalid {
            key: key.to_string(),
            index,
            path: entry.path.clone(),
            message,
        })?;
    }
    Ok(entries)
}

/// The entries in force: the host's, then `_all`'s and the static ones from
/// the local config, without repeating a (path, topic) pair.
pub fn merge(lists: &[&[CollectEntry]]) -> Vec<CollectEntry> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for list in lists {
        for e in *list {
            if seen.insert((e.path.clone(), e.topic.clone())) {
                out.push(e.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<PathBuf> {
        vec![PathBuf::from("/var/log"), PathBuf::from("/srv/app/logs")]
    }

    #[test]
    fn the_seeds_format_parses() {
        let v = br#"[{"path":"/var/log/nginx/*.log","topic":"web_log"},{"path":"/var/log/xy.log","topic":"web_log"}]"#;
        let e = parse("/logagent/collect/h1", v, &roots()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].partition, PartitionMode::ByFile);
        assert!(!e[0].json);
    }

    #[test]
    fn extended_fields_parse() {
        let v = br#"[{"path":"/var/log/app/**/*.log","topic":"app_log","exclude":["/var/log/app/**/debug*.log"],
            "multiline":{"start":"^\\d{4}-"},"json":true,"fields":{"env":"prod"},"partition":"round_robin","max_line_bytes":4096},
            {"path":"/var/log/b.log","topic":"b","partition":{"fixed":2}},
            {"path":"/var/log/c.log","topic":"c","partition":{"key":"k1"},"json":true,"json_key":"app"}]"#;
        let e = parse("k", v, &roots()).unwrap();
        assert_eq!(e[1].partition, PartitionMode::Fixed(2));
        assert_eq!(e[2].partition, PartitionMode::Key("k1".into()));
        assert_eq!(e[2].json_key.as_deref(), Some("app"));
        assert_eq!(e[0].multiline.as_ref().unwrap().max_lines, 500);
        assert_eq!(e[0].fields["env"], "prod");
        assert_eq!(e[0].partition, PartitionMode::RoundRobin);
    }

    #[test]
    fn container_formats_parse_and_a_wrong_one_is_named() {
        use crate::harvester::container::ContainerFormat;
        let v = br#"[{"path":"/var/log/containers/*.log","topic":"k8s","container":"cri","follow_symlinks":true},
            {"path":"/var/log/d/*.log","topic":"d","container":"docker"},
            {"path":"/var/log/e/*.log","topic":"e","container":"auto"}]"#;
        let e = parse("k", v, &roots()).unwrap();
        assert_eq!(e[0].container, Some(ContainerFormat::Cri));
        assert_eq!(e[1].container, Some(ContainerFormat::Docker));
        assert_eq!(e[2].container, Some(ContainerFormat::Auto));
        let err = parse(
            "k",
            br#"[{"path":"/var/log/a.log","topic":"t","container":"podman"}]"#,
            &roots(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("podman") && err.contains("cri"), "{err}");
        let err = parse(
            "k",
            br#"[{"path":"/var/log/a.log","topic":"t","json":true,"json_key":"kubernetes"}]"#,
            &roots(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("json_key"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "expected"),
            (
                br#"[{"path":"/var/log/a.log","topic":"t","colour":"red"}]"#,
                "colour",
            ),
            (br#"[{"path":"","topic":"t"}]"#, "empty"),
            (br#"[{"path":"var/log/a.log","topic":"t"}]"#, "not absolute"),
            (
                br#"[{"path":"/etc/shadow","topic":"t"}]"#,
                "outside allowed_roots",
            ),
            (
                br#"[{"path":"/var/log/../../etc/shadow","topic":"t"}]"#,
                "outside allowed_roots",
            ),
            (
                br#"[{"path":"/var/logs-evil/a.log","topic":"t"}]"#,
                "outside allowed_roots",
            ),
            (
                br#"[{"path":"/var/log/a.log","topic":"bad topic"}]"#,
                "topic",
            ),
            (
                br#"[{"path":"/var/log/a.log","topic":"t","multiline":{"start":"("}}]"#,
                "multiline.start",
            ),
            (
                br#"[{"path":"/var/log/[.log","topic":"t"}]"#,
                "invalid glob",
            ),
            (
                br#"[{"path":"/var/log/a.log","topic":"t"}] trailing"#,
                "trailing",
            ),
            (
                br#"[{"path":"/var/log/a.log","topic":"t","json":true,"json_key":"message"}]"#,
                "json_key",
            ),
            (
                br#"[{"path":"/var/log/a.log","topic":"t","partition":{"fixed":-1}}]"#,
                "negative",
            ),
        ];
        for (value, want) in cases {
            let err = parse("/logagent/collect/h1", value, &roots())
                .unwrap_err()
                .to_string();
            assert!(err.contains("/logagent/collect/h1"), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    /// Issue #14 item 6 (fuzzing, collect_entry): a huge repetition in a
    /// multiline start was accepted (a 5 MB regex per harvester) or took
    /// seconds to refuse on every etcd update.
    #[test]
    fn issue14_6_huge_multiline_patterns_are_refused() {
        for start in ["a{200000}", r"^\\d{111112}-\\d{2}"] {
            let v = format!(
                r#"[{{"path":"/var/log/a.log","topic":"t","multiline":{{"start":"{start}"}}}}]"#
            );
            let err = parse("k", v.as_bytes(), &roots()).unwrap_err().to_string();
            assert!(
                err.contains("multiline.start") && err.contains("size limit"),
                "{err}"
            );
        }
        assert!(parse(
            "k",
            br#"[{"path":"/var/log/a.log","topic":"t","multiline":{"start":"^\\d{4}-\\d{2}-\\d{2} "}}]"#,
            &roots()
        )
        .is_ok());
    }

    #[test]
    fn roots_are_whole_directories() {
        let r = roots();
        assert!(within_roots("/var/log/*.log", &r));
        assert!(within_roots("/var/log/**/x.log", &r));
        assert!(within_roots("/srv/app/logs/a/*.txt", &r));
        assert!(
            !within_roots("/var/*/x.log", &r),
            "the glob can reach /var/lib"
        );
        assert!(!within_roots("/*.log", &r));
    }

    #[test]
    fn merge_keeps_the_first_of_each_path_and_topic() {
        let a = parse("a", br#"[{"path":"/var/log/a.log","topic":"t"}]"#, &roots()).unwrap();
        let b = parse("b", br#"[{"path":"/var/log/a.log","topic":"t","json":true},{"path":"/var/log/b.log","topic":"t"}]"#, &roots()).unwrap();
        let m = merge(&[&a, &b]);
        assert_eq!(m.len(), 2);
        assert!(!m[0].json);
        assert_eq!(host_key("/logagent/", "h1"), "/logagent/collect/h1");
        assert_eq!(all_key("/logagent"), "/logagent/collect/_all");
    }
}
