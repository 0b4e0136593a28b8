//! The console's search: one Elasticsearch request that answers a page of
//! lines (newest first, paged with `search_after`, the query's matches
//! highlighted), the histogram of every matching line over the range and
//! the top values of the fields a user filters on — plus export of the
//! whole result up to a cap, and each line's provenance.
//!
//! The query is the one `logctl search` takes ([`crate::search::query_clause`]);
//! field filters ([`FieldFilter`]) include or exclude `field:value` and
//! mean the same on a live event ([`FieldFilter::matches`]).

use crate::config::ControlConfig;
use crate::es::{hits, Es};
use crate::search::{query_clause, Line, TimeRange};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// The fields whose top values the sidebar shows, beside `fields.*`.
pub const SIDEBAR_FIELDS: &[&str] = &["host.name", "log.file.path", "_index", "log.flags"];
/// Fields mapped as `keyword` by logtransfer's template: a filter on them
/// is an exact term. Others (`fields.*`, `json.*`: dynamic text with a
/// `.keyword` sub-field) match either the keyword or a token.
const KEYWORD_FIELDS: &[&str] = &[
    "host.name",
    "host.id",
    "log.file.path",
    "log.file.fingerprint",
    "log.flags",
    "agent.type",
    "agent.version",
    "kafka.topic",
    "_index",
];
/// The most lines in one page.
pub const MAX_PAGE: usize = 500;
/// The most lines one export writes.
pub const EXPORT_CAP: usize = 10_000;
/// The longest range a search takes (the histogram adapts its interval,
/// but a range beyond this is a typing error more often than a wish).
pub const MAX_RANGE_DAYS: i64 = 366 * 5;
/// Histogram buckets wanted at most.
const MAX_BUCKETS: i64 = 120;

/// `field:value` to keep (or, `exclude`, to drop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldFilter {
    pub field: String,
    pub value: String,
    pub exclude: bool,
}

impl FieldFilter {
    /// `field:value`, or `-field:value` to exclude. The value may contain
    /// `:` (the first one separates).
    ///
    /// # Errors
    /// No `:` or an empty field name.
    pub fn parse(s: &str) -> Result<Self> {
        let (exclude, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let bad = |m: &str| Error::BadArgument {
            arg: format!("filter `{s}`"),
            message: m.to_string(),
        };
        let (field, value) = rest
            .split_once(':')
            .ok_or_else(|| bad("expected field:value"))?;
        if field.is_empty()
            || !field
                .chars()
                .all(|c| c.is_alphanumeric() || "._-@".contains(c))
        {
            return Err(bad(
                "the field name is empty or has characters other than letters, digits, . _ - @",
            ));
        }
        Ok(Self {
            field: field.to_string(),
            value: value.to_string(),
            exclude,
        })
    }

    fn clause(&self) -> Value {
        if KEYWORD_FIELDS.contains(&self.field.as_str()) {
            json!({"term": {&self.field: &self.value}})
        } else {
            json!({"bool": {"should": [
                {"term": {format!("{}.keyword", self.field): &self.value}},
                {"match_phrase": {&self.field: &self.value}}
            ], "minimum_should_match": 1}})
        }
    }

    /// Whether `source` (an event's JSON) passes this filter: the field's
    /// value (or one of its values, for an array) equals `value`. A filter
    /// on `_index` passes every event (an event has no index yet).
    pub fn matches(&self, source: &Value) -> bool {
        if self.field == "_index" {
            return true;
        }
        let mut v = source;
        for part in self.field.split('.') {
            v = &v[part];
        }
        let eq = |x: &Value| match x {
            Value::String(s) => s == &self.value,
            Value::Null => false,
            // 200 == "200": numbers and booleans by their JSON text.
            other => {
                let text = other.to_string();
                text == self.value
            }
        };
        let has = match v {
            Value::Array(a) => a.iter().any(eq),
            other => eq(other),
        };
        has != self.exclude
    }
}

/// A page of the console's search.
#[derive(Debug, Clone)]
pub struct Explore {
    pub query: String,
    /// Both ends set (the histogram needs them).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub filters: Vec<FieldFilter>,
    pub size: usize,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Also the histogram and the field values (the first page).
    pub aggregations: bool,
}

/// One line of a page, with its query matches.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    #[serde(flatten)]
    pub line: Line,
    /// `message` with each match between `\u{1}` and `\u{2}` (the page
    /// makes them marks, so no markup comes from a log line); `None`: no
    /// match to show.
    pub highlight: Option<String>,
    pub provenance: Provenance,
}

/// How a line travelled, beside what [`Line`] says (host, file, offset,
/// read time, index): its host id and Kafka coordinates.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Provenance {
    pub host_id: String,
    pub kafka_topic: Option<String>,
    pub kafka_partition: Option<i32>,
    pub kafka_offset: Option<i64>,
}

impl Provenance {
    /// From a line; Kafka coordinates from its `_id`
    /// (`topic-partition-offset`, or with a `-hash` after it).
    pub fn of(line: &Line) -> Self {
        let (topic, partition, offset) = match kafka_coordinates(&line.id) {
            Some((t, p, o)) => (Some(t), Some(p), Some(o)),
            None => (None, None, None),
        };
        Self {
            host_id: line.source["host"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            kafka_topic: topic,
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }
}

/// `(topic, partition, offset)` of a logtransfer `_id`:
/// `topic-partition-offset` or `topic-partition-offset-<16 hex>`.
pub fn kafka_coordinates(id: &str) -> Option<(String, i32, i64)> {
    let mut parts: Vec<&str> = id.rsplitn(4, '-').collect();
    // Drop a content hash suffix.
    if parts.len() == 4 && parts[0].len() == 16 && parts[0].chars().all(|c| c.is_ascii_hexdigit()) {
        let rest = id.rsplit_once('-')?.0;
        parts = rest.rsplitn(3, '-').collect();
    }
    if parts.len() < 3 {
        return None;
    }
    let offset = parts[0].parse().ok()?;
    let partition = parts[1].parse().ok()?;
    let topic = if parts.len() == 3 {
        parts[2].to_string()
    } else {
        format!("{}-{}", parts[3], parts[2])
    };
    (!topic.is_empty()).then_some((topic, partition, offset))
}

/// Lines over time: `count` lines in `[t, t + interval_ms)`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub t: i64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub interval_ms: i64,
    pub buckets: Vec<Bucket>,
}

/// A field's most frequent values among the matching lines.
#[derive(Debug, Clone, Serialize)]
pub struct FieldValues {
    pub field: String,
    pub values: Vec<(String, u64)>,
    /// Matching lines with another value.
    pub others: u64,
}

/// The answer to an [`Explore`].
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Every matching line (not only this page's).
    pub total: u64,
    pub lines: Vec<Hit>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<String>,
    pub histogram: Option<Histogram>,
    pub fields: Vec<FieldValues>,
    /// Elasticsearch's `took`.
    pub took_ms: u64,
    /// Why the result may be partial (shards that failed while others
    /// answered), to be shown with it.
    pub warnings: Vec<String>,
}

/// The histogram interval for a range: the smallest of the usual steps
/// that gives at most [`MAX_BUCKETS`] buckets.
pub fn interval_for(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    const STEPS: &[i64] = &[
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200,
        86_400, 172_800, 604_800, 2_592_000,
    ];
    let span = (to - from).num_milliseconds().max(1);
    STEPS
        .iter()
        .map(|s| s * 1000)
        .find(|ms| span / ms < MAX_BUCKETS)
        .unwrap_or(2_592_000_000)
}

impl Explore {
    /// Checks sizes and the range.
    ///
    /// # Errors
    /// [`Error::BadArgument`] naming `size`, `from`, or the range.
    pub fn check(&self) -> Result<()> {
        if self.size == 0 || self.size > MAX_PAGE {
            return Err(Error::BadArgument {
                arg: "size".into(),
                message: format!("{} is not within 1..={MAX_PAGE}", self.size),
            });
        }
        if self.from >= self.to {
            return Err(Error::BadArgument {
                arg: "from".into(),
                message: format!("{} is not before to ({})", self.from, self.to),
            });
        }
        if (self.to - self.from).num_days() > MAX_RANGE_DAYS {
            return Err(Error::BadArgument {
                arg: "range".into(),
                message: format!(
                    "{} days is longer than the {MAX_RANGE_DAYS} days a search may span",
                    (self.to - self.from).num_days()
                ),
            });
        }
        Ok(())
    }

    fn filter_clauses(&self) -> (Vec<Value>, Vec<Value>) {
        let range = TimeRange {
            from: Some(self.from),
            to: Some(self.to),
        };
        let mut filter: Vec<Value> = range.clause().into_iter().collect();
        let mut not = Vec::new();
        for f in &self.filters {
            if f.exclude {
                not.push(f.clause());
            } else {
                filter.push(f.clause());
            }
        }
        (filter, not)
    }

    /// The `_search` body; `fields` are the `fields.*` names to aggregate.
    ///
    /// # Errors
    /// A cursor that is not one this module made.
    pub fn body(&self, extra_fields: &[String]) -> Result<Value> {
        let (filter, must_not) = self.filter_clauses();
        let mut body = json!({
            "size": self.size,
            "track_total_hits": true,
            "query": {"bool": {"must": [query_clause(&self.query)], "filter": filter, "must_not": must_not}},
            "sort": SORT.clone(),
            "highlight": {
                "pre_tags": ["\u{1}"], "post_tags": ["\u{2}"],
                "fields": {"message": {"number_of_fragments": 0}}
            },
        });
        if let Some(a) = &self.after {
            body["search_after"] = serde_json::from_str::<Value>(a)
                .ok()
                .filter(Value::is_array)
                .ok_or_else(|| Error::BadArgument {
                    arg: "after".into(),
                    message: "not a cursor from a previous page".into(),
                })?;
        }
        if self.aggregations {
            let mut aggs = serde_json::Map::new();
            aggs.insert(
                "histogram".into(),
                json!({"date_histogram": {
                    "field": "@timestamp",
                    "fixed_interval": format!("{}ms", interval_for(self.from, self.to)),
                    "min_doc_count": 0,
                    // Not `hard_bounds`: it drops the documents of the
                    // last bucket when the range ends inside it.
                    "extended_bounds": {"min": self.from.timestamp_millis(), "max": self.to.timestamp_millis()}
                }}),
            );
            for f in SIDEBAR_FIELDS
                .iter()
                .map(|s| s.to_string())
                .chain(extra_fields.iter().cloned())
            {
                let agg_field = if KEYWORD_FIELDS.contains(&f.as_str()) {
                    f.clone()
                } else {
                    format!("{f}.keyword")
                };
                aggs.insert(
                    format!("f:{f}"),
                    json!({"terms": {"field": agg_field, "size": 5}}),
                );
            }
            body["aggs"] = Value::Object(aggs);
        }
        Ok(body)
    }
}

static SORT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    json!([
        {"@timestamp": {"order": "desc", "unmapped_type": "date"}},
        {"log.offset": {"order": "desc", "unmapped_type": "long"}},
        {"host.id": {"order": "asc", "unmapped_type": "keyword"}},
        {"log.file.inode": {"order": "desc", "unmapped_type": "long"}}
    ])
});

/// How long the `fields.*` names of the indices are kept.
const FIELDS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The console's connection to the logs in Elasticsearch.
pub struct Logs {
    es: Es,
    index: String,
    /// The `fields.*` names and when they were read.
    fields: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

impl Logs {
    /// # Errors
    /// `elasticsearch.url` is not a URL.
    pub fn new(cfg: &ControlConfig) -> Result<Self> {
        Ok(Self {
            es: Es::new(&cfg.elasticsearch)?,
            index: cfg.elasticsearch.index.clone(),
            fields: std::sync::Mutex::new(None),
        })
    }

    /// The `fields.*` names (keyword sub-fields) the indices have, read at
    /// most once per [`FIELDS_TTL`].
    ///
    /// # Errors
    /// Elasticsearch unreachable or failing.
    pub async fn custom_fields(&self) -> Result<Vec<String>> {
        let cached = |c: &Option<(std::time::Instant, Vec<String>)>| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < FIELDS_TTL)
                .map(|(_, f)| f.clone())
        };
        if let Some(f) = cached(&self.fields.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(f);
        }
        let fresh = self.read_custom_fields().await?;
        *self.fields.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    async fn read_custom_fields(&self) -> Result<Vec<String>> {
        let v = self
            .es
            .get(&format!(
                "/{}/_field_caps?fields=fields.*&ignore_unavailable=true&allow_no_indices=true",
                self.index
            ))
            .await?;
        let mut out: Vec<String> = v["fields"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_suffix(".keyword"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.truncate(10);
        Ok(out)
    }

    /// A page of lines, with the histogram and field values when asked.
    ///
    /// # Errors
    /// A bad size, range or cursor, a query Elasticsearch cannot parse
    /// ([`Error::BadArgument`] with its reason), Elasticsearch failing.
    pub async fn explore(&self, e: &Explore) -> Result<Page> {
        e.check()?;
        let extra = if e.aggregations {
            self.custom_fields().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut body = e.body(&extra)?;
        // One more than asked for: whether there is a next page.
        body["size"] = (e.size + 1).into();
        let v = self.search(&e.query, body).await?;
        let all = hits(&v);
        let page = &all[..all.len().min(e.size)];
        let lines: Vec<Hit> = page
            .iter()
            .map(|h| {
                let line = Line::from_hit(h);
                Hit {
                    highlight: h["highlight"]["message"][0].as_str().map(str::to_string),
                    provenance: Provenance::of(&line),
                    line,
                }
            })
            .collect();
        let next = (all.len() > e.size)
            .then(|| page.last().map(|h| h["sort"].to_string()))
            .flatten();
        let histogram = v["aggregations"]["histogram"]["buckets"]
            .as_array()
            .map(|b| Histogram {
                interval_ms: interval_for(e.from, e.to),
                buckets: b
                    .iter()
                    .map(|x| Bucket {
                        t: x["key"].as_i64().unwrap_or_default(),
                        count: x["doc_count"].as_u64().unwrap_or_default(),
                    })
                    .collect(),
            });
        let mut fields = Vec::new();
        if let Some(aggs) = v["aggregations"].as_object() {
            for f in SIDEBAR_FIELDS.iter().map(|s| s.to_string()).chain(extra) {
                let a = &aggs.get(&format!("f:{f}")).cloned().unwrap_or_default();
                let values: Vec<(String, u64)> = a["buckets"]
                    .as_array()
                    .map(|b| {
                        b.iter()
                            .map(|x| {
                                let key = match &x["key"] {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                (key, x["doc_count"].as_u64().unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !values.is_empty() {
                    fields.push(FieldValues {
                        field: f,
                        values,
                        others: a["sum_other_doc_count"].as_u64().unwrap_or_default(),
                    });
                }
            }
        }
        Ok(Page {
            total: v["hits"]["total"]["value"].as_u64().unwrap_or_default(),
            lines,
            next,
            histogram,
            fields,
            took_ms: v["took"].as_u64().unwrap_or_default(),
            warnings: crate::es::partial(&v).into_iter().collect(),
        })
    }

    async fn search(&self, query: &str, body: Value) -> Result<Value> {
        self.es
            .search_query(&self.index, "query", query, body)
            .await
    }

    /// Every matching line of `e` (its `size` and `after` ignored), newest
    /// first, up to `cap` (at most [`EXPORT_CAP`]); and whether more matched.
    ///
    /// # Errors
    /// As [`Logs::explore`].
    pub async fn export(&self, e: &Explore, cap: usize) -> Result<(Vec<Line>, bool)> {
        let cap = cap.clamp(1, EXPORT_CAP);
        let mut page = Explore {
            size: MAX_PAGE,
            after: None,
            aggregations: false,
            ..e.clone()
        };
        page.check()?;
        let mut out = Vec::new();
        loop {
            let mut body = page.body(&[])?;
            body["size"] = (cap - out.len()).min(MAX_PAGE).into();
            body.as_object_mut().map(|b| b.remove("highlight"));
            let v = self.search(&page.query, body).await?;
            let hs = hits(&v);
            let total = v["hits"]["total"]["value"].as_u64().unwrap_or_default();
            out.extend(hs.iter().map(Line::from_hit));
            if out.len() >= cap || hs.is_empty() {
                return Ok((out, total > cap as u64));
            }
            page.after = hs.last().map(|h| h["sort"].to_string());
        }
    }

    /// The document with `_id` `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; Elasticsearch failing.
    pub async fn line(&self, id: &str) -> Result<Hit> {
        let h = self
            .es
            .by_id(&self.index, "document", id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("document {id} in {}", self.index)))?;
        let line = Line::from_hit(&h);
        Ok(Hit {
            highlight: None,
            provenance: Provenance::of(&line),
            line,
        })
    }
}

/// CSV of lines: `@timestamp,host,file,offset,message` (RFC 4180 quoting).
pub fn csv(lines: &[Line]) -> String {
    let q = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("@timestamp,host,file,offset,message\n");
    for l in lines {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            q(&l.timestamp),
            q(&l.host),
            q(&l.file),
            l.offset.map(|o| o.to_string()).unwrap_or_default(),
            q(&l.message)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        crate::search::parse_time(s).unwrap()
    }

    #[test]
    fn filters_parse_and_match_events() {
        let f = FieldFilter::parse("host.name:web-1").unwrap();
        assert!(!f.exclude);
        let x = FieldFilter::parse("-log.flags:truncated").unwrap();
        assert!(x.exclude);
        let ev = json!({"host": {"name": "web-1"}, "log": {"flags": ["truncated"]}, "json": {"status": 200}});
        assert!(f.matches(&ev));
        assert!(!x.matches(&ev));
        assert!(FieldFilter::parse("json.status:200").unwrap().matches(&ev));
        assert!(FieldFilter::parse("url:http://x").unwrap().value == "http://x");
        for bad in ["nocolon", ":v", "a b:c"] {
            let e = FieldFilter::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn kafka_coordinates_come_from_the_id() {
        assert_eq!(
            kafka_coordinates("app_log-3-42"),
            Some(("app_log".into(), 3, 42))
        );
        assert_eq!(
            kafka_coordinates("a-b_log-0-7"),
            Some(("a-b_log".into(), 0, 7))
        );
        assert_eq!(
            kafka_coordinates("app_log-1-9-0123456789abcdef"),
            Some(("app_log".into(), 1, 9))
        );
        assert_eq!(kafka_coordinates("random"), None);
        assert_eq!(kafka_coordinates("x-y"), None);
    }

    #[test]
    fn intervals_give_at_most_120_buckets() {
        let from = t("2026-12-01T00:00:00Z");
        for (span, want) in [(60, 1000), (900, 10_000), (3600, 60_000), (86_400, 900_000)] {
            let to = from + chrono::Duration::seconds(span);
            assert_eq!(interval_for(from, to), want, "{span}");
            assert!((to - from).num_milliseconds() / interval_for(from, to) <= 120);
        }
    }

    #[test]
    fn bad_pages_name_what_is_wrong() {
        let e = Explore {
            query: "x".into(),
            from: t("2026-12-01T00:00:00Z"),
            to: t("2026-11-01T00:00:00Z"),
            filters: vec![],
            size: 10,
            after: None,
            aggregations: true,
        };
        assert!(e.check().unwrap_err().to_string().starts_with("from:"));
        let huge = Explore {
            from: t("2000-01-01T00:00:00Z"),
            to: t("2026-01-01T00:00:00Z"),
            ..e.clone()
        };
        assert!(huge.check().unwrap_err().to_string().starts_with("range:"));
        let big = Explore {
            size: 100_000,
            from: t("2026-11-01T00:00:00Z"),
            to: t("2026-12-01T00:00:00Z"),
            ..e.clone()
        };
        assert!(big.check().unwrap_err().to_string().starts_with("size:"));
        let cursor = Explore {
            after: Some("{}".into()),
            ..big.clone()
        };
        cursor.body(&[]).unwrap_err();
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let l = Line::from_source(
            "i".into(),
            json!({"@timestamp": "t", "message": "a,\"b\"", "host": {"name": "h"}, "log": {"file": {"path": "/f"}, "offset": 3}}),
        );
        assert_eq!(
            csv(&[l]),
            "@timestamp,host,file,offset,message\nt,h,/f,3,\"a,\"\"b\"\"\"\n"
        );
    }
}
