//! The transfer's Kafka message → Elasticsearch document conversion, with
//! a fuzzed index pattern, topic, Kafka timestamp and payload.
//!
//! Invariants checked:
//! - the source is a JSON object with a string `@timestamp` (Elasticsearch
//!   refuses a document whose keys repeat, so it must not get a second one);
//!   an object that has a string `@timestamp` is kept byte for byte;
//! - the `_id` is `topic-partition-offset`, and the conversion is
//!   deterministic (a replay is the same document, `same_document` says so);
//! - the index is the pattern rendered for the topic at the document's time;
//! - the dead letter of the document is valid JSON, keeps at most 32 KiB of
//!   it and is recognised as the same document by what it stands in for,
//!   and its distinct `_id` is the document's.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use transfer::doc::{dead_letter, make_doc, same_document, IndexPattern, DEAD_LETTER_ORIGINAL_MAX};

const PATTERNS: &[&str] = &[
    "{topic}-%Y.%m.%d",
    "logs-{topic}",
    "{topic}-%Y-%W",
    "{topic}%%-%b-%j",
];

struct Input<'a> {
    pattern: IndexPattern,
    topic: String,
    partition: i32,
    offset: i64,
    kafka_ts: Option<i64>,
    payload: Option<&'a [u8]>,
}

impl Input<'_> {
    fn convert(&self) -> transfer::doc::Doc {
        make_doc(
            &self.topic,
            self.partition,
            self.offset,
            self.payload,
            self.kafka_ts,
            &self.pattern,
        )
    }
}

fn input<'a>(u: &mut Unstructured<'a>) -> Result<Input<'a>> {
    let pattern = if u.ratio(1, 4)? {
        let p: String = u.arbitrary()?;
        IndexPattern::new(&p).ok()
    } else {
        None
    };
    let pattern = match pattern {
        Some(p) => p,
        None => IndexPattern::new(u.choose(PATTERNS)?).expect("a valid pattern"),
    };
    // A Kafka topic name: [a-zA-Z0-9._-], 1 to 249 bytes.
    let len = u.int_in_range(1..=40)?;
    let mut topic = String::new();
    for _ in 0..len {
        let c = *u.choose(b"abcXYZ019._-")?;
        topic.push(char::from(c));
    }
    let partition = u.int_in_range(0..=i32::MAX)?;
    let offset = u.int_in_range(0..=i64::MAX)?;
    // Always a timestamp (a message without one gets the clock's, which no
    // replay reproduces).
    let kafka_ts = Some(u.arbitrary()?);
    let payload = if u.ratio(1, 32)? {
        None
    } else {
        Some(u.bytes(u.len())?)
    };
    Ok(Input {
        pattern,
        topic,
        partition,
        offset,
        kafka_ts,
        payload,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(i) = input(&mut Unstructured::new(data)) else {
        return;
    };
    let doc = i.convert();
    assert_eq!(doc.id, common::document_id(&i.topic, i.partition, i.offset));
    assert!(!doc.dead_letter);
    let v: Value = serde_json::from_slice(&doc.source).expect("the source is JSON");
    let obj = v.as_object().expect("the source is an object");
    let ts = obj
        .get("@timestamp")
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            panic!(
                "no string @timestamp: {}",
                String::from_utf8_lossy(&doc.source)
            )
        });
    // The conversion adds no repeated key: what it changed repeats only
    // what the payload repeated.
    let payload = i.payload.unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(payload).ok();
    if doc.source != payload {
        let before = match &parsed {
            Some(p) if p.is_object() => repeats(payload, p),
            _ => 0,
        };
        assert_eq!(
            repeats(&doc.source, &v),
            before,
            "a key repeats: {}",
            String::from_utf8_lossy(&doc.source)
        );
    }
    let has_ts = parsed
        .as_ref()
        .and_then(|v| v.get("@timestamp"))
        .is_some_and(Value::is_string);
    if has_ts && repeats(payload, parsed.as_ref().unwrap_or(&Value::Null)) == 0 {
        assert_eq!(
            doc.source, payload,
            "an object with a @timestamp is kept as it is"
        );
    }
    let when = chrono::DateTime::parse_from_rfc3339(ts)
        .map(|d| d.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            i.kafka_ts
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms))
        });
    if let Some(when) = when {
        assert_eq!(doc.index, i.pattern.render(&i.topic, when));
    }

    let again = i.convert();
    assert_eq!(again, doc, "not deterministic");
    assert!(same_document(&doc, &v));

    let err = serde_json::json!({"type": "mapper_parsing_exception", "reason": "fuzz"});
    let dl = dead_letter(&doc, 400, &err, "-deadletter");
    assert_eq!(dl.index, format!("{}-deadletter", doc.index));
    assert_eq!(dl.id, doc.id);
    let dv: Value = serde_json::from_slice(&dl.source).expect("the dead letter is JSON");
    let original = dv["original"].as_str().expect("original is a string");
    assert!(original.len() <= DEAD_LETTER_ORIGINAL_MAX);
    assert!(doc.source.starts_with(original.as_bytes()));
    assert_eq!(
        dv["original_truncated"] == true,
        original.len() < doc.source.len()
    );
    assert!(same_document(&dl, &dv));

    let (mut a, mut b) = (doc.clone(), dl.clone());
    a.use_distinct_id();
    b.use_distinct_id();
    assert!(a.has_distinct_id());
    if !dv["original_truncated"].as_bool().unwrap_or(false) {
        assert_eq!(a.id, b.id, "a dead letter's distinct id is its document's");
    }
});

/// How many keys of `text` (parsed as `v`) repeat one before them.
fn repeats(text: &[u8], v: &Value) -> usize {
    count_keys(text).saturating_sub(count_members(v))
}

/// Members of every object in `v`, nested ones included.
fn count_members(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.len() + m.values().map(count_members).sum::<usize>(),
        Value::Array(a) => a.iter().map(count_members).sum(),
        _ => 0,
    }
}

/// Keys in the JSON text, repeated ones included (a streaming count).
fn count_keys(text: &[u8]) -> usize {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<usize, A::Error> {
            let mut n = 0;
            while m.next_key::<IgnoredAny>()?.is_some() {
                n += 1 + m.next_value_seed(CountSeed)?;
            }
            Ok(n)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<usize, A::Error> {
            let mut n = 0;
            while let Some(k) = s.next_element_seed(CountSeed)? {
                n += k;
            }
            Ok(n)
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<usize, E> {
            Ok(0)
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<usize, E> {
            Ok(0)
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<usize, E> {
            Ok(0)
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<usize, E> {
            Ok(0)
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<usize, E> {
            Ok(0)
        }
        fn visit_unit<E>(self) -> std::result::Result<usize, E> {
            Ok(0)
        }
    }
    struct CountSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for CountSeed {
        type Value = usize;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<usize, D::Error> {
            d.deserialize_any(Count)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    serde::de::DeserializeSeed::deserialize(CountSeed, &mut de).unwrap_or(usize::MAX)
}
