//! `logctl search`: the documents logtransfer wrote, newest first.
//!
//! A query is an Elasticsearch `query_string` whose default field is
//! `message` and whose terms must all match (so `timeout`, `"connection reset"`, `error AND db` and
//! `host.name:web-1` all work; empty or `*` matches everything), within a
//! time range on `@timestamp`, optionally for one host and one file
//! ([`Filter`], which `tail` applies to Kafka events the same way).
//! Documents are sorted by `@timestamp` (the agent's read time), then by
//! `log.offset`, both descending.

use crate::config::ControlConfig;
use crate::es::{hits, Es};
use crate::{Error, Result};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Duration;

/// Which documents or events: a host and a file.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `host.name` or `host.id`, exactly.
    pub host: Option<String>,
    /// `log.file.path`: exactly, or a glob when it has `*` or `?` (`*`
    /// matches `/` too).
    pub file: Option<String>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Filter {
    /// Elasticsearch `filter` clauses.
    pub fn clauses(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(h) = &self.host {
            out.push(json!({"bool": {"should": [
                {"term": {"host.name": h}}, {"term": {"host.id": h}}
            ], "minimum_should_match": 1}}));
        }
        if let Some(f) = &self.file {
            out.push(if is_glob(f) {
                json!({"wildcard": {"log.file.path": {"value": f}}})
            } else {
                json!({"term": {"log.file.path": f}})
            });
        }
        out
    }

    /// A matcher for event sources (JSON) with the same meaning as
    /// [`Filter::clauses`].
    ///
    /// # Errors
    /// The file glob does not compile (`--file`).
    pub fn matcher(&self) -> Result<Matcher> {
        let file = match &self.file {
            Some(f) if is_glob(f) => Some(FileMatch::Glob(
                globset::GlobBuilder::new(f)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| Error::BadArgument {
                        arg: "--file".into(),
                        message: format!("`{f}`: {e}"),
                    })?
                    .compile_matcher(),
            )),
            Some(f) => Some(FileMatch::Exact(f.clone())),
            None => None,
        };
        Ok(Matcher {
            host: self.host.clone(),
            file,
        })
    }
}

enum FileMatch {
    Exact(String),
    Glob(globset::GlobMatcher),
}

/// [`Filter`] applied to one event's JSON.
pub struct Matcher {
    host: Option<String>,
    file: Option<FileMatch>,
}

impl Matcher {
    pub fn matches(&self, source: &Value) -> bool {
        let host_ok = self.host.as_deref().is_none_or(|h| {
            source["host"]["name"].as_str() == Some(h) || source["host"]["id"].as_str() == Some(h)
        });
        let path = source["log"]["file"]["path"].as_str();
        let file_ok = match (&self.file, path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(FileMatch::Exact(f)), Some(p)) => f == p,
            (Some(FileMatch::Glob(g)), Some(p)) => g.is_match(p),
        };
        host_ok && file_ok
    }
}

/// A time range on `@timestamp` (either end open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// From `--since` (`90s`, `15m`, `1h`, `2d`, `1h30m`) or `--from` /
    /// `--to` (RFC 3339, or a date: its midnight UTC), as logctl takes them.
    ///
    /// # Errors
    /// The argument at fault and why ([`Error::BadArgument`]).
    pub fn from_args(
        since: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let bad = |arg: &str, message: String| Error::BadArgument {
            arg: arg.into(),
            message,
        };
        if let Some(s) = since {
            if from.is_some() {
                return Err(bad("--since", "give either --since or --from".into()));
            }
            let d = parse_duration(s).map_err(|m| bad("--since", m))?;
            let d = chrono::Duration::from_std(d).map_err(|e| bad("--since", e.to_string()))?;
            return Ok(Self {
                from: Some(now - d),
                to: to
                    .map(|t| parse_time(t).map_err(|m| bad("--to", m)))
                    .transpose()?,
            });
        }
        let r = Self {
            from: from
                .map(|t| parse_time(t).map_err(|m| bad("--from", m)))
                .transpose()?,
            to: to
                .map(|t| parse_time(t).map_err(|m| bad("--to", m)))
                .transpose()?,
        };
        if let (Some(f), Some(t)) = (r.from, r.to) {
            if f > t {
                return Err(bad("--from", format!("{f} is after --to {t}")));
            }
        }
        Ok(r)
    }

    pub(crate) fn clause(&self) -> Option<Value> {
        if self.from.is_none() && self.to.is_none() {
            return None;
        }
        let mut r = serde_json::Map::new();
        if let Some(f) = self.from {
            r.insert("gte".into(), rfc3339(f).into());
        }
        if let Some(t) = self.to {
            r.insert("lte".into(), rfc3339(t).into());
        }
        Some(json!({"range": {"@timestamp": r}}))
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `90s`, `15m`, `1h`, `2d`, `1h30m` (units s, m, h, d; each a whole number).
///
/// # Errors
/// What is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("`{s}`: `{c}` is not a unit (s, m, h, d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}`: a number must come before `{c}`"))?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("`{s}` is too long"))?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(format!(
            "`{s}`: expected a duration such as 90s, 15m, 1h, 2d"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// RFC 3339 (`2026-11-21T04:33:32Z`), or a date (`2026-11-21`, midnight UTC).
///
/// # Errors
/// What is wrong with `s`.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| format!("`{s}`: expected RFC 3339 (2026-11-21T04:33:32Z) or a date"))
}

/// One log line as a document (search, context) or an event (tail).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    /// The Elasticsearch `_id`; for a Kafka event, the `_id` logtransfer
    /// gives it (`topic-partition-offset`), so `context` takes it.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub timestamp: String,
    pub host: String,
    pub file: String,
    pub offset: Option<u64>,
    pub message: String,
    /// The whole document.
    pub source: Value,
}

impl Line {
    /// From an event's JSON (the document logtransfer indexes).
    pub fn from_source(id: String, source: Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let host = source["host"]["name"]
            .as_str()
            .or_else(|| source["host"]["id"].as_str())
            .unwrap_or_default()
            .to_string();
        Self {
            id,
            index: None,
            topic: None,
            timestamp: s(&source["@timestamp"]),
            host,
            file: s(&source["log"]["file"]["path"]),
            offset: source["log"]["offset"].as_u64(),
            message: s(&source["message"]),
            source,
        }
    }

    /// From a search hit.
    pub(crate) fn from_hit(hit: &Value) -> Self {
        let mut l = Self::from_source(
            hit["_id"].as_str().unwrap_or_default().to_string(),
            hit["_source"].clone(),
        );
        l.index = hit["_index"].as_str().map(str::to_string);
        l
    }
}

/// The query clause of a search (logctl's and the console's): a
/// `query_string` on `message` whose terms must all match (`error db` is
/// `error AND db`); empty or `*`: every document.
pub fn query_clause(query: &str) -> Value {
    let q = query.trim();
    if q.is_empty() || q == "*" {
        json!({"match_all": {}})
    } else {
        json!({"query_string": {"query": q, "default_field": "message", "default_operator": "AND"}})
    }
}

/// A search: query, range, filter, how many.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
    pub range: TimeRange,
    pub filter: Filter,
    pub limit: usize,
}

impl Search {
    /// The `_search` body: query, filters, newest first.
    pub fn body(&self) -> Value {
        let mut filter = self.filter.clauses();
        filter.extend(self.range.clause());
        let must = query_clause(&self.query);
        json!({
            "size": self.limit,
            "query": {"bool": {"must": [must], "filter": filter}},
            "sort": [
                {"@timestamp": {"order": "desc", "unmapped_type": "date"}},
                {"log.offset": {"order": "desc", "unmapped_type": "long"}}
            ],
        })
    }
}

/// The largest `-n` (Elasticsearch's default `max_result_window`).
pub const MAX_LIMIT: usize = 10_000;

/// The documents matching `s` in the configured indices
/// (`elasticsearch.index`), newest first.
///
/// # Errors
/// A query Elasticsearch cannot parse ([`Error::BadArgument`] naming it),
/// `-n` out of range, or Elasticsearch unreachable or failing.
pub async fn search(cfg: &ControlConfig, s: &Search) -> Result<Vec<Line>> {
    if s.limit == 0 || s.limit > MAX_LIMIT {
        return Err(Error::BadArgument {
            arg: "-n".into(),
            message: format!("{} is not within 1..={MAX_LIMIT}", s.limit),
        });
    }
    let es = Es::new(&cfg.elasticsearch)?;
    let v = es
        .search_query(&cfg.elasticsearch.index, "QUERY", &s.query, s.body())
        .await?;
    Ok(hits(&v).iter().map(Line::from_hit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "1", "h", "1x", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_name_the_argument_at_fault() {
        let now = parse_time("2026-11-21T12:00:00Z").unwrap();
        let r = TimeRange::from_args(Some("1h"), None, None, now).unwrap();
        assert_eq!(r.from, Some(parse_time("2026-11-21T11:00:00Z").unwrap()));
        let e = TimeRange::from_args(None, Some("yesterday"), None, now).unwrap_err();
        assert!(e.to_string().starts_with("--from:"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = TimeRange::from_args(None, Some("2026-11-22"), Some("2026-11-21"), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("after"), "{e}");
    }

    #[test]
    fn the_matcher_means_what_the_clauses_mean() {
        let f = Filter {
            host: Some("web-1".into()),
            file: Some("/var/log/*.log".into()),
        };
        let m = f.matcher().unwrap();
        let ev = |host: &str, path: &str| json!({"host": {"name": host, "id": "x"}, "log": {"file": {"path": path}}});
        assert!(m.matches(&ev("web-1", "/var/log/a/b.log")));
        assert!(!m.matches(&ev("web-2", "/var/log/a.log")));
        assert!(!m.matches(&ev("web-1", "/var/log/a.txt")));
        assert_eq!(f.clauses().len(), 2);
        assert!(f.clauses()[1].get("wildcard").is_some());
    }
}
