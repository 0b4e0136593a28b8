//! `logctl context ID`: the lines before and after a document *in its
//! source file*, in file order — not the documents nearest in time, as
//! Kibana shows them.
//!
//! The source file is the one the agent read the line from: the same host
//! (`host.id`) and the same file identity (`log.file.device`, `.inode`,
//! `.fingerprint`, the identity the harvester tracks), ordered by
//! `log.offset`. A file renamed by rotation keeps its identity, so lines
//! read from `app.log` before the rename and from its handle after it are
//! one sequence. One document per offset is shown (`collapse` on
//! `log.offset`): a line delivered twice (at-least-once) appears once.
//!
//! Across rotations: when the file has fewer lines before (after) the
//! document than asked for, context continues with the previous (next)
//! generation of the file at the same path — of the files whose first
//! line was read at that path on that host, the one whose first line was
//! read just before (after) this one's — up to [`MAX_GENERATIONS`].
//!
//! Limits: generations are told apart by the read time of their first
//! line, so a rotation is crossed only if the agent read both files' first
//! lines (from offset 0) at that path; a copytruncated file whose first
//! line is unchanged keeps its identity, so old and new lines at the same
//! offset collapse into one. A document
//! without a file identity (not written by logagent, or an older agent)
//! falls back to `host` + `log.file.path`.

use crate::config::ControlConfig;
use crate::es::{hits, Es};
use crate::search::Line;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::{json, Value};

/// Which file a line came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum SourceFile {
    /// Host and file identity (device, inode, fingerprint).
    Identity {
        host_id: String,
        device: u64,
        inode: u64,
        fingerprint: String,
    },
    /// Host and path only: the document has no file identity.
    Path { host: String, path: String },
}

impl SourceFile {
    /// The file of `source` (a document's JSON), if it names one.
    pub fn of(source: &Value) -> Option<Self> {
        let file = &source["log"]["file"];
        let host_id = source["host"]["id"].as_str().filter(|s| !s.is_empty());
        match (
            host_id,
            file["device"].as_u64(),
            file["inode"].as_u64(),
            file["fingerprint"].as_str(),
        ) {
            (Some(h), Some(device), Some(inode), Some(fp)) => Some(Self::Identity {
                host_id: h.to_string(),
                device,
                inode,
                fingerprint: fp.to_string(),
            }),
            _ => {
                let host = host_id.or_else(|| source["host"]["name"].as_str())?;
                let path = file["path"].as_str()?;
                Some(Self::Path {
                    host: host.to_string(),
                    path: path.to_string(),
                })
            }
        }
    }

    fn clauses(&self) -> Vec<Value> {
        match self {
            Self::Identity {
                host_id,
                device,
                inode,
                fingerprint,
            } => vec![
                json!({"term": {"host.id": host_id}}),
                json!({"term": {"log.file.device": device}}),
                json!({"term": {"log.file.inode": inode}}),
                json!({"term": {"log.file.fingerprint": fingerprint}}),
            ],
            Self::Path { host, path } => vec![
                json!({"bool": {"should": [
                    {"term": {"host.id": host}}, {"term": {"host.name": host}}
                ], "minimum_should_match": 1}}),
                json!({"term": {"log.file.path": path}}),
            ],
        }
    }
}

/// A document and the lines around it in its file, in file order.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub file: SourceFile,
    pub before: Vec<Line>,
    pub line: Line,
    pub after: Vec<Line>,
}

/// The most lines asked for on either side.
pub const MAX_LINES: usize = 10_000;

/// Document `id` and up to `before` / `after` lines of its file around it.
///
/// # Errors
/// [`Error::NotFound`] when no document has that `_id` in the configured
/// indices, or it has no file and offset (not a line logagent read);
/// `-B`/`-A` beyond [`MAX_LINES`]; Elasticsearch unreachable or failing.
pub async fn context(
    cfg: &ControlConfig,
    id: &str,
    before: usize,
    after: usize,
) -> Result<Context> {
    for (arg, n) in [("-B", before), ("-A", after)] {
        if n > MAX_LINES {
            return Err(Error::BadArgument {
                arg: arg.into(),
                message: format!("{n} is more than {MAX_LINES}"),
            });
        }
    }
    let es = Es::new(&cfg.elasticsearch)?;
    let index = &cfg.elasticsearch.index;
    let line = es
        .by_id(index, "document", id)
        .await?
        .as_ref()
        .map(Line::from_hit)
        .ok_or_else(|| Error::NotFound(format!("document `{id}` in `{index}`")))?;
    let (file, offset) = match (SourceFile::of(&line.source), line.offset) {
        (Some(f), Some(o)) => (f, o),
        _ => {
            return Err(Error::NotFound(format!(
                "the source file of document `{id}`: it has no log.file and log.offset \
                 (not a line read by logagent)"
            )))
        }
    };
    let mut lines_before = side(&es, index, &file, Side::Before, Some(offset), before).await?;
    let mut lines_after = side(&es, index, &file, Side::After, Some(offset), after).await?;
    // Across rotations: the previous (next) generation of the file at the
    // same path, while lines are missing.
    for (dir, lines, want) in [
        (Side::Before, &mut lines_before, before),
        (Side::After, &mut lines_after, after),
    ] {
        let mut at = file.clone();
        for _ in 0..MAX_GENERATIONS {
            if lines.len() >= want {
                break;
            }
            let Some(next) = neighbour(&es, index, &at, dir).await? else {
                break;
            };
            let more = side(&es, index, &next, dir, None, want - lines.len()).await?;
            if more.is_empty() {
                break;
            }
            match dir {
                Side::Before => {
                    lines.splice(0..0, more);
                }
                Side::After => lines.extend(more),
            }
            at = next;
        }
    }
    Ok(Context {
        file,
        before: lines_before,
        line,
        after: lines_after,
    })
}

/// How many rotated generations context crosses on either side.
pub const MAX_GENERATIONS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Before,
    After,
}

impl Side {
    fn order(self) -> &'static str {
        match self {
            Self::Before => "desc",
            Self::After => "asc",
        }
    }
}

/// The `n` lines of `file` nearest `offset` on one side (the last or first
/// `n` lines of the file without an offset), in file order.
async fn side(
    es: &Es,
    index: &str,
    file: &SourceFile,
    dir: Side,
    offset: Option<u64>,
    n: usize,
) -> Result<Vec<Line>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut filter = file.clauses();
    if let Some(o) = offset {
        let op = if dir == Side::Before { "lt" } else { "gt" };
        filter.push(json!({"range": {"log.offset": {op: o}}}));
    }
    let body = json!({
        "size": n,
        "query": {"bool": {"filter": filter}},
        "sort": [{"log.offset": {"order": dir.order()}}],
        "collapse": {"field": "log.offset"},
    });
    let v = es.search(index, "lines of a file", body).await?;
    let mut lines: Vec<Line> = hits(&v).iter().map(Line::from_hit).collect();
    if dir == Side::Before {
        lines.reverse();
    }
    Ok(lines)
}

/// The generation of a file before (after) `file` at the same path on the
/// same host: of the files whose first line (offset 0) was read at that
/// path, the one whose first line was read last before (first after)
/// `file`'s first line. `None` for files known by path only.
async fn neighbour(
    es: &Es,
    index: &str,
    file: &SourceFile,
    dir: Side,
) -> Result<Option<SourceFile>> {
    let SourceFile::Identity { host_id, .. } = file else {
        return Ok(None);
    };
    let first = side(es, index, file, Side::After, None, 1).await?;
    let Some(first) = first.first().filter(|l| l.offset == Some(0)) else {
        return Ok(None);
    };
    let op = if dir == Side::Before { "lte" } else { "gte" };
    let body = json!({
        "size": 1,
        "query": {"bool": {
            "filter": [
                {"term": {"host.id": host_id}},
                {"term": {"log.file.path": first.file}},
                {"term": {"log.offset": 0}},
                {"range": {"@timestamp": {op: first.timestamp}}},
            ],
            "must_not": [{"bool": {"filter": file.clauses()}}],
        }},
        "sort": [{"@timestamp": {"order": dir.order()}}],
    });
    let v = es.search(index, "the rotated file", body).await?;
    Ok(hits(&v)
        .first()
        .and_then(|h| SourceFile::of(&h["_source"]))
        .filter(|f| matches!(f, SourceFile::Identity { .. })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_the_event_has_it_else_host_and_path() {
        let full = json!({"host": {"name": "web", "id": "web-1"},
            "log": {"offset": 7, "file": {"path": "/a.log", "device": 2049, "inode": 12, "fingerprint": "ab"}}});
        assert_eq!(
            SourceFile::of(&full),
            Some(SourceFile::Identity {
                host_id: "web-1".into(),
                device: 2049,
                inode: 12,
                fingerprint: "ab".into()
            })
        );
        let bare = json!({"host": {"name": "web"}, "log": {"file": {"path": "/a.log"}}});
        assert_eq!(
            SourceFile::of(&bare),
            Some(SourceFile::Path {
                host: "web".into(),
                path: "/a.log".into()
            })
        );
        assert_eq!(SourceFile::of(&json!({"message": "x"})), None);
    }
}
