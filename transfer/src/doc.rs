//! From a Kafka message to an Elasticsearch document: index name, `_id`,
//! source. Pure functions.
//!
//! - A JSON object value is indexed as it is; `@timestamp` is added from the
//!   Kafka timestamp when the object has none.
//! - Any other value (not JSON, or JSON that is not an object) is indexed as
//!   `{"message": <value as text, lossy UTF-8>, "@timestamp": <Kafka timestamp>}`.
//! - The index name is the configured pattern with `{topic}` replaced and
//!   strftime fields taken from the document's `@timestamp` (UTC), or from
//!   the Kafka timestamp when `@timestamp` is not RFC 3339; lowercased, as
//!   Elasticsearch requires.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use std::borrow::Cow;

/// One document ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub index: String,
    pub id: String,
    /// The JSON object to index.
    pub source: Vec<u8>,
    /// A dead letter standing in for a document Elasticsearch refused.
    pub dead_letter: bool,
}

/// A validated index-name pattern.
#[derive(Debug, Clone)]
pub struct IndexPattern {
    pattern: String,
}

impl IndexPattern {
    /// # Errors
    /// A message naming what is wrong with the pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        use chrono::format::{Item, StrftimeItems};
        if pattern.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
            return Err(format!("`{pattern}` has an invalid strftime field"));
        }
        let made = Self {
            pattern: pattern.to_string(),
        };
        let probe = made.render("topic", probe_time());
        if probe.starts_with('.') {
            return Err(format!(
                "`{pattern}` gives `{probe}`, not a valid index name: starts with `.`"
            ));
        }
        check_index_name(&probe)
            .map_err(|e| format!("`{pattern}` gives `{probe}`, not a valid index name: {e}"))?;
        Ok(made)
    }

    /// Whether the indices `topic` makes, and their dead-letter indices
    /// (`suffix`), are names Elasticsearch takes.
    ///
    /// # Errors
    /// The index name at fault and the rule it breaks.
    pub fn check_topic(&self, topic: &str, suffix: &str) -> Result<(), String> {
        let index = self.render(topic, probe_time());
        for name in [index.clone(), format!("{index}{suffix}")] {
            check_index_name(&name).map_err(|e| {
                format!("makes the index `{name}`, which Elasticsearch refuses: {e}")
            })?;
        }
        Ok(())
    }

    /// The index for `topic` at `ts`.
    pub fn render(&self, topic: &str, ts: DateTime<Utc>) -> String {
        // `{topic}` first (a topic cannot contain `%`), then strftime.
        let with_topic = self.pattern.replace("{topic}", topic);
        let mut out = String::with_capacity(with_topic.len() + 8);
        use std::fmt::Write;
        if write!(out, "{}", ts.format(&with_topic)).is_err() {
            out = with_topic;
        }
        out.to_lowercase()
    }

    /// Index-template patterns that match every index this pattern makes
    /// for `topics` (the config's: names, or regexes starting with `^`),
    /// their dead-letter indices included — and as little else as can be:
    /// a name gives `web_log-*`, a regex its literal prefix (`^app_.*` →
    /// `app_*`). A regex without a literal prefix falls back to the
    /// pattern with `*` for the topic (which may match other indices:
    /// [`IndexPattern::template_is_broad`] says so).
    pub fn template_patterns(&self, topics: &[String]) -> Vec<String> {
        let mut out: Vec<String> = topics
            .iter()
            .map(|t| match t.strip_prefix('^') {
                None => self.glob(Some(t)),
                Some(re) => {
                    let lit: String = re
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
                        .collect();
                    // `^app_.*`: the prefix only; `^web_log$`: the name.
                    let exact = re.strip_prefix(lit.as_str()) == Some("$");
                    if exact {
                        self.glob(Some(&lit))
                    } else if lit.is_empty() {
                        self.glob(None)
                    } else {
                        self.glob(Some(&format!("{lit}*")))
                    }
                }
            })
            .collect();
        // A topic whose indices Elasticsearch refuses (`_x`) has nothing to
        // template, and its pattern would make the whole template refused.
        out.retain(|p| {
            !p.starts_with(['_', '-', '+'])
                && !p.contains(['\\', '/', '?', '"', '<', '>', '|', ' ', ',', '#'])
        });
        out.sort();
        out.dedup();
        if out.is_empty() || out.iter().any(|p| p.starts_with('*')) {
            out = vec![self.glob(None)];
        }
        out
    }

    /// The day of an index this pattern made (its dead-letter index too):
    /// the part after `{topic}` parsed as a date. `None` for another index.
    pub fn date_of(&self, index: &str, dead_letter_suffix: &str) -> Option<chrono::NaiveDate> {
        let (_, fmt) = self.pattern.split_once("{topic}")?;
        let name = index.strip_suffix(dead_letter_suffix).unwrap_or(index);
        name.char_indices()
            .find_map(|(i, _)| chrono::NaiveDate::parse_from_str(&name[i..], fmt).ok())
    }

    /// Whether indices carry their day after `{topic}` (`%Y`, `%m`, `%d`),
    /// which retention needs.
    pub fn is_daily(&self) -> bool {
        self.pattern
            .split_once("{topic}")
            .is_some_and(|(_, f)| f.contains("%Y") && f.contains("%m") && f.contains("%d"))
    }

    /// Whether the template patterns for `topics` start with `*` (may match
    /// indices of others: `.monitoring-…`, another deployment's).
    pub fn template_is_broad(&self, topics: &[String]) -> bool {
        self.template_patterns(topics)
            .iter()
            .any(|p| p.starts_with('*'))
    }

    /// The pattern as a glob: `{topic}` → `topic` (or `*`), `%X` → `*`.
    fn glob(&self, topic: Option<&str>) -> String {
        let mut p = String::new();
        let mut rest = self.pattern.as_str();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{topic}") {
                p.push_str(&topic.unwrap_or("*").to_ascii_lowercase());
                rest = r;
            } else if rest.starts_with('%') {
                p.push('*');
                rest = rest.get(2..).unwrap_or("");
            } else if let Some(c) = rest.chars().next() {
                p.push(c.to_ascii_lowercase());
                rest = &rest[c.len_utf8()..];
            }
        }
        while p.contains("**") {
            p = p.replace("**", "*");
        }
        // Dead-letter indices add a suffix: the pattern must end open.
        if !p.ends_with('*') {
            p.push('*');
        }
        p
    }
}

/// The longest month and weekday names, so a probe's length is an upper bound.
fn probe_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 9, 27, 23, 59, 59)
        .single()
        .unwrap_or_default()
}

/// Elasticsearch's rules for an index name: lowercase, not empty, `.` or
/// `..`, not starting with `_`, `-` or `+`, at most 255 bytes, none of
/// `\ / * ? " < > | , # :` or a space.
///
/// # Errors
/// The rule `name` breaks.
pub fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("empty, `.` or `..`".into());
    }
    if name.starts_with(['_', '-', '+']) {
        return Err("starts with `_`, `-` or `+`".into());
    }
    if name.len() > 255 {
        return Err(format!("{} bytes long, more than 255", name.len()));
    }
    if name.chars().any(char::is_uppercase) {
        return Err("has upper-case letters".into());
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        return Err(format!("contains `{c}`"));
    }
    Ok(())
}

/// Whether `stored` (the source Elasticsearch holds at `doc`'s index and
/// `_id`) is `doc` itself: a replay of the same message. A document is
/// compared as JSON; a dead letter (whose time and error text are its own)
/// by the message it stands in for, its `original` and `kafka` fields.
pub fn same_document(doc: &Doc, stored: &serde_json::Value) -> bool {
    let Ok(ours) = serde_json::from_slice::<serde_json::Value>(&doc.source) else {
        return false;
    };
    if doc.dead_letter {
        ours.get("original") == stored.get("original") && ours.get("kafka") == stored.get("kafka")
    } else {
        ours == *stored
    }
}

impl Doc {
    /// Whether the `_id` is the one [`common::distinct_document_id`] gives.
    pub fn has_distinct_id(&self) -> bool {
        self.id != common::document_id(&self.topic, self.partition, self.offset)
    }

    /// Moves the document to the `_id` of its content, for when its plain
    /// `_id` holds a different document (another topic incarnation).
    pub fn use_distinct_id(&mut self) {
        let content = if self.dead_letter {
            serde_json::from_slice::<serde_json::Value>(&self.source)
                .ok()
                .and_then(|v| {
                    v.get("original")
                        .and_then(|o| o.as_str())
                        .map(|o| o.as_bytes().to_vec())
                })
                .unwrap_or_else(|| self.source.clone())
        } else {
            self.source.clone()
        };
        self.id = common::distinct_document_id(&self.topic, self.partition, self.offset, &content);
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    /// Absent: `None`. Present, it must be a string (`null` or a number
    /// fails the probe, so the payload is wrapped as a message: adding a
    /// second `@timestamp` would make a document Elasticsearch refuses).
    #[serde(rename = "@timestamp", borrow, default, deserialize_with = "present")]
    timestamp: Option<Cow<'a, str>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Text::deserialize(d).map(|t| Some(t.0))
}

/// The Kafka timestamp as a time. Deterministic, so a message consumed
/// again makes the same document: one beyond chrono's range (years
/// ±262143) is clamped to it. Only a message without a timestamp gets the
/// clock's time.
fn kafka_time(ts_millis: Option<i64>) -> DateTime<Utc> {
    match ts_millis {
        Some(ms) => Utc.timestamp_millis_opt(ms).single().unwrap_or(if ms < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        }),
        None => Utc::now(),
    }
}

/// Builds the document for the message at (topic, partition, offset).
pub fn make_doc(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: Option<&[u8]>,
    kafka_ts_millis: Option<i64>,
    pattern: &IndexPattern,
) -> Doc {
    let payload = payload.unwrap_or_default();
    let is_object = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let probe = if is_object {
        serde_json::from_slice::<Probe<'_>>(payload).ok()
    } else {
        None
    };
    let (source, ts) = match probe {
        Some(Probe { timestamp: Some(t) }) => {
            let ts = DateTime::parse_from_rfc3339(&t)
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(|_| kafka_time(kafka_ts_millis));
            (payload.to_vec(), ts)
        }
        Some(Probe { timestamp: None }) => {
            let ts = kafka_time(kafka_ts_millis);
            (with_timestamp(payload, ts), ts)
        }
        None => {
            let ts = kafka_time(kafka_ts_millis);
            let text = String::from_utf8_lossy(payload);
            let v = serde_json::json!({
                "@timestamp": ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                "message": text,
            });
            (serde_json::to_vec(&v).unwrap_or_default(), ts)
        }
    };
    Doc {
        topic: topic.to_string(),
        partition,
        offset,
        index: pattern.render(topic, ts),
        id: common::document_id(topic, partition, offset),
        source,
        dead_letter: false,
    }
}

/// Inserts `"@timestamp"` as the first member of a JSON object's bytes.
fn with_timestamp(object: &[u8], ts: DateTime<Utc>) -> Vec<u8> {
    let open = object.iter().position(|b| *b == b'{').unwrap_or(0);
    let rest = &object[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'}');
    let mut out = Vec::with_capacity(object.len() + 48);
    out.extend_from_slice(b"{\"@timestamp\":\"");
    out.extend_from_slice(ts.to_rfc3339_opts(SecondsFormat::Millis, true).as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// A dead letter keeps at most this much of the refused document, so that
/// one too large for Elasticsearch still has a dead letter it takes.
pub const DEAD_LETTER_ORIGINAL_MAX: usize = 32 << 10;

/// The dead letter standing in for `doc`, which Elasticsearch refused with
/// `error` (the item's error object) and `status`. Its `original` is the
/// document as text, cut to [`DEAD_LETTER_ORIGINAL_MAX`] bytes (then
/// `original_truncated` is true and `original_bytes` the full size).
pub fn dead_letter(doc: &Doc, status: u16, error: &serde_json::Value, suffix: &str) -> Doc {
    let text = String::from_utf8_lossy(&doc.source);
    let mut cut = text.len().min(DEAD_LETTER_ORIGINAL_MAX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let original = &text[..cut];
    let mut v = serde_json::json!({
        "@timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "message": format!("document refused by its sink: {}", error.get("reason").and_then(|r| r.as_str()).unwrap_or("unknown reason")),
        "error": {
            "status": status,
            "type": error.get("type").and_then(|t| t.as_str()).unwrap_or("unknown"),
            "reason": error.get("reason").and_then(|r| r.as_str()).unwrap_or(""),
        },
        "kafka": {"topic": doc.topic, "partition": doc.partition, "offset": doc.offset},
        "original": original,
        "original_index": doc.index,
    });
    if cut < text.len() {
        v["original_truncated"] = true.into();
        v["original_bytes"] = doc.source.len().into();
    }
    Doc {
        topic: doc.topic.clone(),
        partition: doc.partition,
        offset: doc.offset,
        index: format!("{}{suffix}", doc.index),
        id: doc.id.clone(),
        source: serde_json::to_vec(&v).unwrap_or_default(),
        dead_letter: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn pat() -> IndexPattern {
        IndexPattern::new("{topic}-%Y.%m.%d").unwrap()
    }

    #[test]
    fn object_with_timestamp_is_indexed_as_is() {
        let p = br#"{"@timestamp":"2026-11-21T04:33:32.123Z","message":"hi"}"#;
        let d = make_doc("Web_log", 3, 42, Some(p), Some(0), &pat());
        assert_eq!(d.source, p.to_vec());
        assert_eq!(d.index, "web_log-2026.11.21");
        assert_eq!(d.id, "Web_log-3-42");
    }

    #[test]
    fn object_without_timestamp_gets_the_kafka_one() {
        let d = make_doc(
            "t",
            0,
            1,
            Some(br#" {"a":1}"#),
            Some(1_700_000_000_000),
            &pat(),
        );
        let v: Value = serde_json::from_slice(&d.source).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["@timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(d.index, "t-2023.11.14");
        let e = make_doc("t", 0, 1, Some(b"{ }"), Some(0), &pat());
        let v: Value = serde_json::from_slice(&e.source).unwrap();
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn non_objects_become_message_documents() {
        for raw in [
            &b"plain text line"[..],
            b"[1,2]",
            b"\"str\"",
            b"{broken",
            b"\xff\xfe",
            b"",
        ] {
            let d = make_doc("t", 0, 7, Some(raw), Some(0), &pat());
            let v: Value = serde_json::from_slice(&d.source).unwrap();
            assert_eq!(
                v["message"],
                String::from_utf8_lossy(raw).as_ref(),
                "{raw:?}"
            );
            assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000Z");
        }
    }

    #[test]
    fn patterns_are_validated_and_give_template_patterns() {
        assert!(IndexPattern::new("{topic}-%Q").is_err());
        assert!(IndexPattern::new("").is_err());
        assert!(IndexPattern::new("logs {topic}").is_err());
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Issue #13 item 7: derived from the topics, not `*-*.*.*` (which
        // also matches `.monitoring-es-7-2026.12.01`).
        assert_eq!(
            pat().template_patterns(&t(&["web_log", "App"])),
            vec!["app-*.*.*", "web_log-*.*.*"]
        );
        assert_eq!(
            pat().template_patterns(&t(&["^app_.*"])),
            vec!["app_*-*.*.*"]
        );
        assert_eq!(pat().template_patterns(&t(&["^web$"])), vec!["web-*.*.*"]);
        assert_eq!(pat().template_patterns(&t(&["^.*"])), vec!["*-*.*.*"]);
        // A topic that makes illegal indices is left out of the template.
        assert_eq!(
            pat().template_patterns(&t(&["web", "^_bad$"])),
            vec!["web-*.*.*"]
        );
        assert!(pat().template_is_broad(&t(&["web_log", "^(a|b)"])));
        let day = chrono::NaiveDate::from_ymd_opt(2020, 1, 2);
        assert_eq!(pat().date_of("web-log-2020.01.02", "-deadletter"), day);
        assert_eq!(
            pat().date_of("web-log-2020.01.02-deadletter", "-deadletter"),
            day
        );
        assert_eq!(pat().date_of("web-log", "-deadletter"), None);
        assert!(pat().is_daily() && !IndexPattern::new("{topic}-%Y.%m").unwrap().is_daily());
        assert!(!pat().template_is_broad(&t(&["web_log"])));
        assert_eq!(
            IndexPattern::new("Logs-{topic}")
                .unwrap()
                .template_patterns(&t(&["x"])),
            vec!["logs-x*"]
        );
    }

    #[test]
    fn dead_letters_keep_the_original_and_the_id() {
        let d = make_doc(
            "t",
            1,
            9,
            Some(br#"{"@timestamp":"2026-01-01T00:00:00Z","x":1}"#),
            None,
            &pat(),
        );
        let err = serde_json::json!({"type": "mapper_parsing_exception", "reason": "bad"});
        let dl = dead_letter(&d, 400, &err, "-deadletter");
        assert_eq!(dl.index, "t-2026.01.01-deadletter");
        assert_eq!(dl.id, d.id);
        let v: Value = serde_json::from_slice(&dl.source).unwrap();
        assert_eq!(v["error"]["type"], "mapper_parsing_exception");
        assert_eq!(v["kafka"]["offset"], 9);
        assert!(v["original"].as_str().unwrap().contains("\"x\":1"));
    }

    #[test]
    fn index_names_follow_elasticsearch_rules() {
        assert!(check_index_name("web_log-2026.11.21").is_ok());
        for bad in ["", ".", "_x", "-x", "+x", "a b", "a,b", "a#b", "a*", "A"] {
            assert!(check_index_name(bad).is_err(), "{bad}");
        }
        assert!(check_index_name(&"a".repeat(255)).is_ok());
        assert!(check_index_name(&"a".repeat(256))
            .unwrap_err()
            .contains("256"));
        assert!(pat().check_topic("web_log", "-deadletter").is_ok());
        assert!(pat().check_topic("_x", "-deadletter").is_err());
        let long = "a".repeat(240);
        let e = pat().check_topic(&long, "-deadletter").unwrap_err();
        assert!(e.contains("-deadletter"), "{e}");
    }

    #[test]
    fn a_replay_is_the_same_document_another_incarnation_is_not() {
        let p = br#"{"@timestamp":"2026-01-01T00:00:00Z","seq":1}"#;
        let d = make_doc("t", 0, 5, Some(p), None, &pat());
        let stored: Value = serde_json::from_slice(p).unwrap();
        assert!(same_document(&d, &stored));
        let other: Value = serde_json::json!({"@timestamp": "2026-01-01T00:00:00Z", "seq": 2});
        assert!(!same_document(&d, &other));
        // A dead letter is the same by what it stands in for, whatever its time.
        let err = serde_json::json!({"type": "x", "reason": "y"});
        let dl = dead_letter(&d, 400, &err, "-deadletter");
        let mut stored_dl: Value = serde_json::from_slice(&dl.source).unwrap();
        stored_dl["@timestamp"] = "2020-01-01T00:00:00Z".into();
        assert!(same_document(&dl, &stored_dl));
        stored_dl["original"] = "something else".into();
        assert!(!same_document(&dl, &stored_dl));

        let mut moved = d.clone();
        assert!(!moved.has_distinct_id());
        moved.use_distinct_id();
        assert!(moved.has_distinct_id());
        assert!(moved.id.starts_with("t-0-5-"), "{}", moved.id);
        let mut again = d.clone();
        again.use_distinct_id();
        assert_eq!(moved.id, again.id, "a replay gets the same distinct id");
        let mut dl2 = dl.clone();
        dl2.use_distinct_id();
        assert_eq!(
            dl2.id, moved.id,
            "a dead letter's distinct id is its original's"
        );
    }

    #[test]
    fn dead_letters_of_huge_documents_are_cut_on_a_char_boundary() {
        let big = format!("{{\"m\":\"{}\"}}", "é".repeat(DEAD_LETTER_ORIGINAL_MAX));
        let d = make_doc("t", 0, 1, Some(big.as_bytes()), Some(0), &pat());
        let dl = dead_letter(&d, 413, &serde_json::json!({}), "-deadletter");
        let v: Value = serde_json::from_slice(&dl.source).unwrap();
        let original = v["original"].as_str().unwrap();
        assert!(
            original.len() <= DEAD_LETTER_ORIGINAL_MAX
                && original.len() > DEAD_LETTER_ORIGINAL_MAX - 4
        );
        assert_eq!(v["original_truncated"], true);
        assert_eq!(v["original_bytes"], d.source.len());
    }

    /// Issue #14 item 6 (fuzzing, doc_convert): a Kafka timestamp beyond
    /// chrono's range took the clock's time, so a replayed message made a
    /// different document (and a duplicate under a distinct `_id`).
    #[test]
    fn issue14_6_out_of_range_kafka_times_are_deterministic() {
        for ts in [i64::MAX, i64::MIN, 8_300_000_000_000_000] {
            let a = make_doc("t", 0, 1, Some(b"text"), Some(ts), &pat());
            std::thread::sleep(std::time::Duration::from_millis(2));
            let b = make_doc("t", 0, 1, Some(b"text"), Some(ts), &pat());
            assert_eq!(a, b, "{ts}");
        }
    }

    /// Issue #14 item 6 (fuzzing, doc_convert): `"@timestamp": null` got a
    /// second `@timestamp` inserted before it, a document with a repeated
    /// key (Elasticsearch refuses it; JSON readers keep the null).
    #[test]
    fn issue14_6_a_null_timestamp_is_not_repeated() {
        for p in [&br#"{"@timestamp":null,"a":1}"#[..], br#"{"@timestamp":5}"#] {
            let d = make_doc("t", 0, 1, Some(p), Some(0), &pat());
            let text = String::from_utf8_lossy(&d.source);
            assert_eq!(text.matches("\"@timestamp\"").count(), 1, "{text}");
            let v: Value = serde_json::from_slice(&d.source).unwrap();
            assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000Z");
            assert_eq!(v["message"], String::from_utf8_lossy(p).as_ref());
        }
        let with = make_doc(
            "t",
            0,
            1,
            Some(br#"{"@timestamp":"2026-01-01T00:00:00Z"}"#),
            None,
            &pat(),
        );
        assert_eq!(with.index, "t-2026.01.01");
    }

    proptest::proptest! {
        #[test]
        fn any_payload_makes_a_json_object(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), ts in proptest::option::of(proptest::num::i64::ANY)) {
            let d = make_doc("t", 0, 0, Some(&bytes), ts, &pat());
            let is_valid_json_object = serde_json::from_slice::<Value>(&d.source).map(|v| v.is_object()).unwrap_or(false);
            // Objects are passed through as they are; everything else is wrapped.
            let passthrough = d.source == bytes;
            proptest::prop_assert!(is_valid_json_object || passthrough);
        }
    }
}
