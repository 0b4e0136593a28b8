//! The agent's event encoder: one line, the entry's fields and JSON key and
//! the host identity, through a WAL record's `meta`, into a Kafka message.
//!
//! Invariants checked for every input:
//! - the record's `meta` decodes to the spec and identity encoded in it;
//! - the event is valid JSON and decodes as [`common::LogEvent`] with the
//!   identity, file coordinates, offset and fields it was given;
//! - its `message` is a prefix of the line (lossy UTF-8), and whenever it is
//!   shorter the event is flagged `truncated`;
//! - it is at most `max_event_bytes` unless the message was cut to nothing
//!   (the event without a message does not fit);
//! - the transfer indexes it as it is (its `@timestamp` is kept), in the
//!   index of the line's read day;
//! - a dead letter made of it fits the same limit.
#![no_main]
use agent::collect::PartitionMode;
use agent::event::{encode, timestamp, Identity, RecordMeta, ShipSpec};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use transfer::doc::{make_doc, IndexPattern};
use wal::{Batch, Line, SourceId};

struct Input {
    spec: ShipSpec,
    id: Identity,
    batch: Batch,
    max: usize,
}

fn text(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let s: String = u.arbitrary()?;
    Ok(s.chars().take(max).collect())
}

fn input(u: &mut Unstructured<'_>) -> Result<Input> {
    let mut fields = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        fields.insert(text(u, 16)?, text(u, 64)?);
    }
    // json_key as validation allows it (not empty, not an event field).
    let json_key = if u.arbitrary()? {
        let k = text(u, 12)?;
        let taken = ["@timestamp", "message", "host", "log", "agent", "fields"];
        Some(if k.is_empty() || taken.contains(&k.as_str()) {
            "json".into()
        } else {
            k
        })
    } else {
        None
    };
    let partition = match u.int_in_range(0..=4)? {
        0 => PartitionMode::ByFile,
        1 => PartitionMode::ByHost,
        2 => PartitionMode::Key(text(u, 16)?),
        3 => PartitionMode::Fixed(u.int_in_range(0..=1000)?),
        _ => PartitionMode::RoundRobin,
    };
    let spec = ShipSpec {
        fields,
        json_key,
        partition,
    };
    let id = Identity {
        host_id: text(u, 32)?,
        host_name: text(u, 32)?,
        host_ip: text(u, 40)?,
        version: text(u, 16)?,
    };
    // Limits as the shipper computes them: at least 1024 bytes; smaller
    // ones now and then to exercise the "cannot fit" path.
    let max = if u.ratio(1, 8)? {
        u.int_in_range(0..=1024)?
    } else {
        u.int_in_range(1024..=1 << 16)?
    };
    let source = SourceId {
        device: u.arbitrary()?,
        inode: u.arbitrary()?,
        fingerprint: u.arbitrary()?,
        path: format!("/var/log/{}", text(u, 64)?),
    };
    let read_ms = u.int_in_range(0..=4_102_444_800_000)?; // to 2100
    let offset = u.arbitrary()?;
    let flags = u.arbitrary::<u8>()? & 7;
    // The rest is the line: long lines come from repeating it.
    let repeat = if u.ratio(1, 4)? {
        u.int_in_range(1..=2000)?
    } else {
        1
    };
    let bytes = u.bytes(u.len())?.repeat(repeat);
    let batch = Batch {
        source,
        topic: "fuzz_log".into(),
        end_offset: 0,
        read_ms,
        meta: RecordMeta::encode(&spec, &id),
        lines: vec![Line {
            offset,
            bytes,
            flags,
        }],
    };
    Ok(Input {
        spec,
        id,
        batch,
        max,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Input {
        spec,
        id,
        batch,
        max,
    }) = input(&mut Unstructured::new(data))
    else {
        return;
    };
    let meta = RecordMeta::decode(&batch.meta);
    assert_eq!(meta.spec, spec);
    assert_eq!(meta.identity.as_ref(), Some(&id));

    let ts = timestamp(batch.read_ms);
    let line = &batch.lines[0];
    let mut out = Vec::new();
    encode(&id, &spec, &batch, &ts, line, max, &mut out);

    let ev: common::LogEvent = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("not a LogEvent ({e}): {}", String::from_utf8_lossy(&out)));
    assert_eq!(ev.timestamp, ts);
    assert_eq!(ev.host.id, id.host_id);
    assert_eq!(ev.host.name, id.host_name);
    assert_eq!(ev.host.ip, id.host_ip);
    assert_eq!(ev.agent.version, id.version);
    assert_eq!(ev.agent.id, id.host_id);
    assert_eq!(ev.log.file.path, batch.source.path);
    assert_eq!(ev.log.file.device, batch.source.device);
    assert_eq!(ev.log.file.inode, batch.source.inode);
    assert_eq!(
        ev.log.file.fingerprint,
        format!("{:016x}", batch.source.fingerprint)
    );
    assert_eq!(ev.log.offset, line.offset);
    assert_eq!(ev.fields, spec.fields);

    let full = String::from_utf8_lossy(&line.bytes);
    assert!(
        full.starts_with(&ev.message),
        "the message is not a prefix of the line"
    );
    let truncated = ev.log.flags.iter().any(|f| f == "truncated");
    if ev.message.len() < full.len() || line.flags & 1 != 0 {
        assert!(
            truncated,
            "a cut message is not flagged: {:?}",
            ev.log.flags
        );
    }
    if !ev.message.is_empty() {
        assert!(out.len() <= max, "{} bytes > max {max}", out.len());
    }
    if let Some(key) = &spec.json_key {
        // Parsed lines are under the key (unless dropped to fit), and a
        // line that is not an object is flagged.
        let parsed =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&line.bytes);
        match parsed {
            Ok(obj) => {
                if let Some(v) = ev.extra.get(key) {
                    assert_eq!(v, &serde_json::Value::Object(obj));
                } else if ev.message.len() == full.len() {
                    // Dropped to fit: with it the event was too large.
                    let with = out.len()
                        + serde_json::to_string(key).map_or(0, |k| k.len())
                        + serde_json::to_vec(&obj).map_or(0, |o| o.len())
                        + 2;
                    assert!(with > max, "the parsed line was dropped though it fits");
                }
            }
            Err(_) => assert!(ev.log.flags.iter().any(|f| f == "json_error")),
        }
    } else {
        assert!(ev.extra.is_empty());
    }

    // The transfer keeps the event as it is, in the index of its day.
    let pattern = IndexPattern::new("{topic}-%Y.%m.%d").expect("default pattern");
    let doc = make_doc(&batch.topic, 0, 7, Some(&out), Some(0), &pattern);
    assert_eq!(doc.source, out, "the transfer rewrote the event");
    let day = chrono::DateTime::parse_from_rfc3339(&ts).expect("RFC 3339 @timestamp");
    assert_eq!(doc.index, format!("fuzz_log-{}", day.format("%Y.%m.%d")));

    let (dl, cut) = agent::refusal::dead_letter_payload(&out, max);
    assert!(dl.len() <= max);
    assert_eq!(cut.is_some(), out.len() > max);
});
