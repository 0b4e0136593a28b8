//! Turning WAL records into Kafka messages (pure).
//!
//! Each line becomes one JSON event (schema in [`common::event`]) plus
//! headers with its source coordinates. Everything the encoding depends on
//! is in the WAL record: the lines, when they were read (`read_ms`), the
//! entry's output settings ([`ShipSpec`]) and who read them ([`Identity`]:
//! host id, name, ip, agent version), both kept in the record's `meta`. So a
//! record sent again after a crash yields the same events, even when the
//! agent restarted as a new version or the host's name or address changed.
//!
//! `meta` layout (frozen; a WAL may hold records of every version):
//!
//! ```text
//! format 1: bincode(ShipSpec)                         (first byte < 0xFF)
//! format 2: 0xFF, bincode(ShipSpec), bincode(Identity)
//! ```
//!
//! bincode's variable-length integers never start with 0xFF, so the first
//! byte tells the formats apart. A format-1 record ships with the current
//! identity.
//!
//! Size: an event larger than `max_event_bytes` (the producer's
//! `message.max.bytes` less headroom) has its `message` cut until it fits and
//! carries the flag `truncated`. JSON escaping can make an event several
//! times larger than its line (a NUL byte becomes `\u0000`), so the cut is
//! made on the encoded size, not on the line's.

use crate::collect::PartitionMode;
use crate::harvester::container::{self, CONTAINER, MALFORMED};
use crate::harvester::lines::{INVALID_UTF8, PARTIAL, TRUNCATED};
use common::event::{file_coordinate, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wal::{Batch, Line};

/// A collect entry's output settings, stored with every WAL record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipSpec {
    pub fields: BTreeMap<String, String>,
    /// `Some(key)`: parse lines as JSON objects and put them under `key`.
    pub json_key: Option<String>,
    pub partition: PartitionMode,
}

/// The first byte of a format-2 `meta` (module docs).
const META_V2: u8 = 0xFF;

/// What a WAL record's `meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordMeta {
    pub spec: ShipSpec,
    /// Who read the lines; `None` in a format-1 record.
    pub identity: Option<Identity>,
}

impl RecordMeta {
    /// The bytes stored in a WAL record's `meta` (format 2).
    pub fn encode(spec: &ShipSpec, identity: &Identity) -> Vec<u8> {
        let cfg = bincode::config::standard();
        let mut out = vec![META_V2];
        // Encoding plain data into a Vec cannot fail.
        let _ = bincode::serde::encode_into_std_write(spec, &mut out, cfg);
        let _ = bincode::serde::encode_into_std_write(identity, &mut out, cfg);
        out
    }

    /// Decodes a record's `meta` of either format; empty or unreadable
    /// meta ships with the defaults.
    pub fn decode(meta: &[u8]) -> Self {
        let cfg = bincode::config::standard();
        match meta.split_first() {
            Some((&META_V2, rest)) => {
                let Ok((spec, used)) = bincode::serde::decode_from_slice::<ShipSpec, _>(rest, cfg)
                else {
                    return Self::default();
                };
                let identity = bincode::serde::decode_from_slice(&rest[used..], cfg)
                    .ok()
                    .map(|(i, _)| i);
                Self { spec, identity }
            }
            _ => Self {
                spec: bincode::serde::decode_from_slice(meta, cfg)
                    .map(|(s, _)| s)
                    .unwrap_or_default(),
                identity: None,
            },
        }
    }
}

/// Who is shipping: the same for every event of this agent run, and
/// stored in every WAL record it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub host_id: String,
    pub host_name: String,
    pub host_ip: String,
    pub version: String,
}

/// Where a message goes within its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Key(String),
    Partition(i32),
    Any,
}

/// The route of a record's messages.
pub fn route(id: &Identity, spec: &ShipSpec, path: &str) -> Route {
    match &spec.partition {
        PartitionMode::ByFile => Route::Key(format!("{}:{}", id.host_id, path)),
        PartitionMode::ByHost => Route::Key(id.host_id.clone()),
        PartitionMode::Key(k) => Route::Key(k.clone()),
        PartitionMode::Fixed(p) => Route::Partition(*p),
        PartitionMode::RoundRobin => Route::Any,
    }
}

/// `@timestamp` of a record: RFC 3339 in UTC with milliseconds.
pub fn timestamp(read_ms: u64) -> String {
    let ms = i64::try_from(read_ms).unwrap_or(0);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The value of the `logpipe-file` header for a record's source.
pub fn file_header(batch: &Batch) -> String {
    file_coordinate(
        batch.source.device,
        batch.source.inode,
        batch.source.fingerprint,
    )
}

/// The schema header value.
pub fn schema_header() -> String {
    SCHEMA_VERSION.to_string()
}

#[derive(Serialize)]
struct EventRef<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    message: &'a str,
    host: HostRef<'a>,
    log: LogRef<'a>,
    agent: AgentRef<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: &'a BTreeMap<String, String>,
    #[serde(flatten)]
    extra: BTreeMap<&'a str, serde_json::Value>,
}

#[derive(Serialize)]
struct HostRef<'a> {
    name: &'a str,
    id: &'a str,
    ip: &'a str,
}

#[derive(Serialize)]
struct LogRef<'a> {
    file: FileRef<'a>,
    offset: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<&'static str>,
}

#[derive(Serialize)]
struct FileRef<'a> {
    path: &'a str,
    device: u64,
    inode: u64,
    fingerprint: Fingerprint,
}

/// A fingerprint as 16 hex digits, written without an intermediate String.
struct Fingerprint(u64);

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            let nib = (self.0 >> (60 - 4 * i)) & 0xf;
            *b = b"0123456789abcdef"[nib as usize];
        }
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or("0000000000000000"))
    }
}

#[derive(Serialize)]
struct AgentRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    version: &'a str,
    id: &'a str,
}

fn flag_names(flags: u8, json_error: bool, cut: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if flags & TRUNCATED != 0 || cut {
        out.push("truncated");
    }
    if flags & PARTIAL != 0 {
        out.push("partial");
    }
    if flags & INVALID_UTF8 != 0 {
        out.push("invalid_utf8");
    }
    if flags & MALFORMED != 0 {
        out.push("malformed");
    }
    if json_error {
        out.push("json_error");
    }
    out
}

/// A runtime's RFC 3339 time as `@timestamp` (UTC, milliseconds).
fn utc_millis(time: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Encodes one line as an event into `out` (cleared first).
pub fn encode(
    id: &Identity,
    spec: &ShipSpec,
    batch: &Batch,
    ts: &str,
    line: &Line,
    max_event_bytes: usize,
    out: &mut Vec<u8>,
) {
    // Valid UTF-8 (the common case) is checked by the fast validator and
    // borrowed; only invalid lines pay for the lossy conversion.
    let mut extra = BTreeMap::new();
    let mut bytes: &[u8] = &line.bytes;
    let mut runtime_ts = None;
    if line.flags & CONTAINER != 0 {
        if let Some((time, stream, msg)) = container::split_stored(&line.bytes) {
            bytes = msg;
            runtime_ts = utc_millis(time);
            extra.insert("stream", serde_json::Value::from(stream));
        }
    }
    // Every line of a container entry, in its format or not, carries the
    // names its file's name gives.
    if line.flags & (CONTAINER | MALFORMED) != 0 {
        if let Some(k) = container::KubeRef::from_path(std::path::Path::new(&batch.source.path)) {
            extra.extend(k.fields());
        }
    }
    let ts = runtime_ts.as_deref().unwrap_or(ts);
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let mut json_error = false;
    if let Some(key) = &spec.json_key {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes) {
            Ok(obj) => {
                extra.insert(key.as_str(), serde_json::Value::Object(obj));
            }
            Err(_) => json_error = true,
        }
    }
    let mut message: &str = &text;
    let mut cut = false;
    loop {
        let ev = EventRef {
            timestamp: ts,
            message,
            host: HostRef {
                name: &id.host_name,
                id: &id.host_id,
                ip: &id.host_ip,
            },
            log: LogRef {
                file: FileRef {
                    path: &batch.source.path,
                    device: batch.source.device,
                    inode: batch.source.inode,
                    fingerprint: Fingerprint(batch.source.fingerprint),
                },
                offset: line.offset,
                flags: flag_names(line.flags, json_error, cut),
            },
            agent: AgentRef {
                kind: "logagent",
                version: &id.version,
                id: &id.host_id,
            },
            fields: &spec.fields,
            extra: extra.clone(),
        };
        out.clear();
        if serde_json::to_writer(&mut *out, &ev).is_err() {
            // Serialising strings and numbers cannot fail; keep a valid event.
            out.clear();
            out.extend_from_slice(b"{}");
            return;
        }
        if out.len() <= max_event_bytes || message.is_empty() {
            return;
        }
        // Too big: drop the parsed copy first, then cut the message in
        // proportion to the excess (on a char boundary) and try again.
        if let Some(key) = &spec.json_key {
            if extra.remove(key.as_str()).is_some() {
                continue;
            }
        }
        let fixed = out
            .len()
            .saturating_sub(message.len() * 6)
            .min(max_event_bytes);
        let budget = (max_event_bytes - fixed) as f64;
        let ratio = budget / (out.len() - fixed.min(out.len())).max(1) as f64;
        let keep = ((message.len() as f64 * ratio * 0.97) as usize).min(message.len() - 1);
        let mut at = keep;
        while at > 0 && !message.is_char_boundary(at) {
            at -= 1;
        }
        message = &message[..at];
        cut = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::LogEvent;
    use wal::SourceId;

    fn ident() -> Identity {
        Identity {
            host_id: "web-1-10.0.0.5".into(),
            host_name: "web-1".into(),
            host_ip: "10.0.0.5".into(),
            version: "0.1.0".into(),
        }
    }

    fn batch(lines: Vec<Line>, spec: &ShipSpec) -> Batch {
        Batch {
            source: SourceId {
                device: 2049,
                inode: 77,
                fingerprint: 0xabc,
                path: "/var/log/app/a.log".into(),
            },
            topic: "app".into(),
            end_offset: 100,
            read_ms: 1_795_000_000_123,
            meta: RecordMeta::encode(spec, &ident()),
            lines,
        }
    }

    fn line(bytes: &[u8], flags: u8) -> Line {
        Line {
            offset: 42,
            bytes: bytes.to_vec(),
            flags,
        }
    }

    fn decode(spec: &ShipSpec, l: Line, max: usize) -> (LogEvent, usize) {
        let b = batch(vec![l], spec);
        let spec = RecordMeta::decode(&b.meta).spec;
        let mut out = Vec::new();
        encode(
            &ident(),
            &spec,
            &b,
            &timestamp(b.read_ms),
            &b.lines[0],
            max,
            &mut out,
        );
        (serde_json::from_slice(&out).unwrap(), out.len())
    }

    #[test]
    fn events_carry_the_ecs_fields() {
        let spec = ShipSpec {
            fields: [("env".to_string(), "prod".to_string())].into(),
            ..ShipSpec::default()
        };
        let (ev, _) = decode(&spec, line(b"GET / 200", 0), 1 << 20);
        assert_eq!(ev.timestamp, "2026-11-18T11:06:40.123Z");
        assert_eq!(ev.message, "GET / 200");
        assert_eq!(ev.host.name, "web-1");
        assert_eq!(ev.host.ip, "10.0.0.5");
        assert_eq!(ev.agent.id, "web-1-10.0.0.5");
        assert_eq!(ev.log.file.path, "/var/log/app/a.log");
        assert_eq!(ev.log.offset, 42);
        assert_eq!(ev.fields["env"], "prod");
        assert!(ev.log.flags.is_empty());
    }

    #[test]
    fn json_lines_go_under_the_key_and_bad_ones_are_flagged() {
        let spec = ShipSpec {
            json_key: Some("app".into()),
            ..ShipSpec::default()
        };
        let (ev, _) = decode(&spec, line(br#"{"status":200,"path":"/x"}"#, 0), 1 << 20);
        assert_eq!(ev.extra["app"]["status"], 200);
        let (ev, _) = decode(&spec, line(b"not json", 0), 1 << 20);
        assert_eq!(ev.log.flags, vec!["json_error"]);
        assert_eq!(ev.message, "not json");
    }

    #[test]
    fn container_lines_carry_stream_runtime_time_and_kubernetes_names() {
        let spec = ShipSpec {
            json_key: Some("app".into()),
            ..ShipSpec::default()
        };
        let id = "c".repeat(64);
        let mut b = batch(
            vec![
                line(
                    br#"2026-12-01T19:00:00.123456789+09:00 stderr {"level":"warn"}"#,
                    CONTAINER,
                ),
                line(b"not a container line", MALFORMED),
            ],
            &spec,
        );
        b.source.path = format!("/var/log/containers/web-1_shop_nginx-{id}.log");
        let mut out = Vec::new();
        encode(
            &ident(),
            &spec,
            &b,
            "2026-12-01T11:00:00.000Z",
            &b.lines[0],
            1 << 20,
            &mut out,
        );
        let ev: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(ev["@timestamp"], "2026-12-01T10:00:00.123Z");
        assert_eq!(ev["message"], r#"{"level":"warn"}"#);
        assert_eq!(ev["stream"], "stderr");
        assert_eq!(ev["app"]["level"], "warn");
        assert_eq!(ev["kubernetes"]["namespace"], "shop");
        assert_eq!(ev["kubernetes"]["pod"]["name"], "web-1");
        assert_eq!(ev["kubernetes"]["container"]["name"], "nginx");
        assert_eq!(ev["container"]["id"], id.as_str());
        assert!(ev["log"].get("flags").is_none());
        encode(
            &ident(),
            &spec,
            &b,
            "2026-12-01T11:00:00.000Z",
            &b.lines[1],
            1 << 20,
            &mut out,
        );
        let ev: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(ev["@timestamp"], "2026-12-01T11:00:00.000Z");
        assert_eq!(ev["message"], "not a container line");
        assert_eq!(
            ev["log"]["flags"],
            serde_json::json!(["malformed", "json_error"])
        );
        assert!(ev.get("stream").is_none());
        assert_eq!(
            ev["kubernetes"]["pod"]["name"], "web-1",
            "the file's names all the same"
        );
    }

    #[test]
    fn invalid_utf8_and_nul_are_kept_readable() {
        let (ev, _) = decode(
            &ShipSpec::default(),
            line(b"a\xffb\0c", INVALID_UTF8),
            1 << 20,
        );
        assert_eq!(ev.message, "a\u{fffd}b\0c");
        assert_eq!(ev.log.flags, vec!["invalid_utf8"]);
    }

    #[test]
    fn oversized_events_are_cut_to_fit() {
        let big = vec![0u8; 300_000]; // 6 bytes each once escaped
        let (ev, len) = decode(&ShipSpec::default(), line(&big, TRUNCATED), 100_000);
        assert!(len <= 100_000, "{len}");
        assert!(ev.message.len() > 10_000, "{}", ev.message.len());
        assert_eq!(ev.log.flags, vec!["truncated"]);
        let multibyte = "é".repeat(200_000);
        let (ev, len) = decode(&ShipSpec::default(), line(multibyte.as_bytes(), 0), 50_000);
        assert!(len <= 50_000);
        assert!(ev.message.chars().all(|c| c == 'é'));
        assert_eq!(ev.log.flags, vec!["truncated"]);
    }

    #[test]
    fn routes_follow_the_partition_mode() {
        let id = ident();
        let mut spec = ShipSpec::default();
        assert_eq!(
            route(&id, &spec, "/a"),
            Route::Key("web-1-10.0.0.5:/a".into())
        );
        spec.partition = PartitionMode::Fixed(3);
        assert_eq!(route(&id, &spec, "/a"), Route::Partition(3));
        spec.partition = PartitionMode::RoundRobin;
        assert_eq!(route(&id, &spec, "/a"), Route::Any);
        assert_eq!(RecordMeta::decode(&[]), RecordMeta::default());
    }

    /// Issue #12 item 6: a record carries who read it; format-1 metas (a
    /// bare ShipSpec) still decode.
    #[test]
    fn record_meta_round_trips_and_reads_format_1() {
        let spec = ShipSpec {
            fields: [("env".to_string(), "prod".to_string())].into(),
            json_key: Some("j".into()),
            partition: PartitionMode::Key("k".into()),
        };
        let m = RecordMeta::decode(&RecordMeta::encode(&spec, &ident()));
        assert_eq!(m.spec, spec);
        assert_eq!(m.identity, Some(ident()));
        let v1 = bincode::serde::encode_to_vec(&spec, bincode::config::standard()).unwrap();
        assert_ne!(v1[0], META_V2);
        assert_eq!(
            RecordMeta::decode(&v1),
            RecordMeta {
                spec,
                identity: None
            }
        );
    }
}
