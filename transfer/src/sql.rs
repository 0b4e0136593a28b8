//! SQL sinks (issue #20): PostgreSQL and MariaDB/MySQL, through sqlx. Each
//! route names a table, created at the first write if missing:
//!
//! ```text
//! topic            TEXT / VARCHAR(249)   ┐
//! kafka_partition  INTEGER               ├ primary key: a replay writes nothing twice
//! kafka_offset     BIGINT                ┘
//! ts               TIMESTAMPTZ / DATETIME(3)   the event's @timestamp (UTC)
//! host             VARCHAR(255)                host.name
//! file             TEXT                        log.file.path
//! file_offset      BIGINT                      log.offset
//! flags            VARCHAR(255)                log.flags, comma-separated
//! message          TEXT / MEDIUMTEXT           message
//! doc              JSON                        the whole document, as indexed in Elasticsearch
//! ```
//!
//! and `<table>_deadletter` (the same key, `ts`, `error_type`, `reason`,
//! `original`) for what the table refused for good.
//!
//! Writes are multi-row `INSERT`s in autocommit (durable when they return:
//! PostgreSQL's `synchronous_commit`, InnoDB's log flush), ignoring a row
//! whose key exists (`ON CONFLICT DO NOTHING`; MariaDB `ON DUPLICATE KEY
//! UPDATE` of nothing — not `INSERT IGNORE`, which would turn a too-long
//! value into a silent cut). A statement refused for a row's data (SQLSTATE
//! class 22 or 23) is retried row by row: the rows refused are
//! [`Outcome::Refused`] and become dead letters, the others are written. Any
//! other failure (connection lost, server down, a timeout) fails the batch
//! as a whole, which the pipeline retries with backoff until it goes through.
//!
//! Not told apart: a *different* message at a key already taken (a topic
//! deleted and recreated reuses offsets) — it is ignored as a replay. Text
//! columns of PostgreSQL cannot hold NUL: `message` has them as U+FFFD, `doc`
//! (type `json`, kept as written) has them exactly.

use crate::bulk::Outcome;
use crate::doc::Doc;
use crate::Error;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::{MySql, Postgres, QueryBuilder};
use std::sync::atomic::{AtomicBool, Ordering};

/// The SQL server kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MariaDb,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::MariaDb => "mariadb",
        }
    }
}

/// A connection pool of either kind.
#[derive(Debug, Clone)]
pub enum Pool {
    Postgres(sqlx::PgPool),
    MariaDb(sqlx::MySqlPool),
}

impl Pool {
    /// A lazy pool: nothing connects until the first write, so a server
    /// down at start delays writing instead of failing the start.
    ///
    /// # Errors
    /// The URL does not parse.
    pub fn lazy(dialect: Dialect, url: &str, max_connections: u32) -> Result<Self, Error> {
        let bad = |e: sqlx::Error| {
            Error::Setup(format!(
                "{}.url: {}",
                dialect.name(),
                redact(&e.to_string())
            ))
        };
        let timeout = std::time::Duration::from_secs(10);
        Ok(match dialect {
            Dialect::Postgres => Self::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy(url)
                    .map_err(bad)?,
            ),
            Dialect::MariaDb => Self::MariaDb(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy(url)
                    .map_err(bad)?,
            ),
        })
    }

    fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::MariaDb(_) => Dialect::MariaDb,
        }
    }

    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Self::MariaDb(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
    }
}

use common::secret::redact_url as redact;

/// Whether `name` may be a table name here: `[A-Za-z_][A-Za-z0-9_]*`, at
/// most 48 characters (room for `_deadletter` within both servers' limits).
pub fn valid_table(name: &str) -> bool {
    let mut b = name.bytes();
    name.len() <= 48
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The columns of one document (pure).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub ts: Option<chrono::DateTime<chrono::Utc>>,
    pub host: Option<String>,
    pub file: Option<String>,
    pub file_offset: Option<i64>,
    pub flags: Option<String>,
    pub message: String,
    /// The document's JSON as indexed.
    pub doc: String,
}

fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

impl Row {
    /// The row of a document: the event's fields where it has them.
    pub fn of(d: &Doc) -> Self {
        let v: Value = serde_json::from_slice(&d.source).unwrap_or(Value::Null);
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(no_nul);
        let flags = v.pointer("/log/flags").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        });
        Self {
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            ts: v
                .get("@timestamp")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
            host: text("/host/name"),
            file: text("/log/file/path"),
            file_offset: v.pointer("/log/offset").and_then(Value::as_i64),
            flags: flags.filter(|f| !f.is_empty()),
            message: text("/message").unwrap_or_default(),
            doc: String::from_utf8_lossy(&d.source).into_owned(),
        }
    }
}

/// A dead letter's columns (pure).
#[derive(Debug, Clone, PartialEq)]
pub struct LetterRow {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error_type: String,
    pub reason: String,
    pub original: String,
}

impl LetterRow {
    pub fn of(d: &Doc) -> Self {
        let v: Value = serde_json::from_slice(&d.source).unwrap_or(Value::Null);
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .map(no_nul)
                .unwrap_or_default()
        };
        Self {
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            error_type: text("/error/type").chars().take(255).collect(),
            reason: text("/error/reason"),
            original: text("/original"),
        }
    }
}

/// The `CREATE TABLE IF NOT EXISTS` statements of a route's tables.
pub fn create_tables(dialect: Dialect, table: &str) -> [String; 2] {
    match dialect {
        Dialect::Postgres => [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL, \
                 ts TIMESTAMPTZ, host VARCHAR(255), file TEXT, file_offset BIGINT, flags VARCHAR(255), \
                 message TEXT NOT NULL, doc JSON NOT NULL, \
                 PRIMARY KEY (topic, kafka_partition, kafka_offset))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {table}_deadletter (\
                 topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL, \
                 ts TIMESTAMPTZ NOT NULL DEFAULT now(), error_type TEXT NOT NULL, reason TEXT NOT NULL, \
                 original TEXT NOT NULL, PRIMARY KEY (topic, kafka_partition, kafka_offset))"
            ),
        ],
        Dialect::MariaDb => [
            format!(
                "CREATE TABLE IF NOT EXISTS `{table}` (\
                 topic VARCHAR(249) NOT NULL, kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, \
                 ts DATETIME(3) NULL, host VARCHAR(255) NULL, file TEXT NULL, file_offset BIGINT NULL, \
                 flags VARCHAR(255) NULL, message MEDIUMTEXT NOT NULL, doc JSON NOT NULL, \
                 PRIMARY KEY (topic, kafka_partition, kafka_offset)) \
                 ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS `{table}_deadletter` (\
                 topic VARCHAR(249) NOT NULL, kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, \
                 ts DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), error_type VARCHAR(255) NOT NULL, \
                 reason TEXT NOT NULL, original MEDIUMTEXT NOT NULL, \
                 PRIMARY KEY (topic, kafka_partition, kafka_offset)) \
                 ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            ),
        ],
    }
}

const COLUMNS: &str =
    "(topic, kafka_partition, kafka_offset, ts, host, file, file_offset, flags, message, doc)";
const LETTER_COLUMNS: &str = "(topic, kafka_partition, kafka_offset, error_type, reason, original)";

/// A failure of a statement, as the pipeline needs it.
#[derive(Debug)]
enum Failure {
    /// The server refused a row's data (SQLSTATE class 22 or 23).
    Data { sqlstate: String, reason: String },
    /// Anything else: the batch is retried.
    Other(String),
}

fn classify(e: sqlx::Error) -> Failure {
    if let sqlx::Error::Database(db) = &e {
        if let Some(code) = db.code() {
            if code.starts_with("22") || code.starts_with("23") {
                return Failure::Data {
                    sqlstate: code.into_owned(),
                    reason: db.message().to_string(),
                };
            }
        }
    }
    Failure::Other(redact(&e.to_string()))
}

/// A multi-row `INSERT` on either server: `head`, the rows' values bound by
/// `bind`, then `tail`.
macro_rules! run_insert {
    ($db:ty, $pool:expr, $head:expr, $rows:expr, $tail:expr, |$b:ident, $r:ident| $bind:block) => {{
        let mut q: QueryBuilder<$db> = QueryBuilder::new($head);
        q.push_values($rows, |mut $b, $r| $bind);
        q.push($tail);
        q.build().execute($pool).await.map(|_| ()).map_err(classify)
    }};
}

/// Binds a [`Row`]'s columns in [`COLUMNS`] order, `ts` as the server takes it.
macro_rules! bind_row {
    ($b:ident, $r:ident, $ts:expr) => {
        $b.push_bind(&$r.topic)
            .push_bind($r.partition)
            .push_bind($r.offset)
            .push_bind($ts)
            .push_bind(&$r.host)
            .push_bind(&$r.file)
            .push_bind($r.file_offset)
            .push_bind(&$r.flags)
            .push_bind(&$r.message)
            .push_bind(&$r.doc)
    };
}

/// Binds a [`LetterRow`]'s columns in [`LETTER_COLUMNS`] order.
macro_rules! bind_letter {
    ($b:ident, $r:ident) => {
        $b.push_bind(&$r.topic)
            .push_bind($r.partition)
            .push_bind($r.offset)
            .push_bind(&$r.error_type)
            .push_bind(&$r.reason)
            .push_bind(&$r.original)
    };
}

/// One route's table on one server.
pub struct SqlSink {
    pool: Pool,
    table: String,
    created: AtomicBool,
}

impl SqlSink {
    /// # Errors
    /// An invalid table name.
    pub fn new(pool: Pool, table: &str) -> Result<Self, Error> {
        if !valid_table(table) {
            return Err(Error::Setup(format!(
                "table `{table}`: not a table name ([A-Za-z_][A-Za-z0-9_]*, at most 48)"
            )));
        }
        Ok(Self {
            pool,
            table: table.to_string(),
            created: AtomicBool::new(false),
        })
    }

    async fn ensure_tables(&self) -> Result<(), Error> {
        if self.created.load(Ordering::Acquire) {
            return Ok(());
        }
        for sql in create_tables(self.pool.dialect(), &self.table) {
            self.pool.execute(&sql).await.map_err(|e| {
                Error::Sink(format!(
                    "{} table {}: {}",
                    self.pool.dialect().name(),
                    self.table,
                    redact(&e.to_string())
                ))
            })?;
        }
        self.created.store(true, Ordering::Release);
        Ok(())
    }

    /// The table's name as the server wants it, and the clause that makes
    /// a taken key a no-op.
    fn names(&self, suffix: &str) -> (String, &'static str) {
        match self.pool.dialect() {
            Dialect::Postgres => (format!("{}{suffix}", self.table), " ON CONFLICT DO NOTHING"),
            Dialect::MariaDb => (
                format!("`{}{suffix}`", self.table),
                " ON DUPLICATE KEY UPDATE kafka_offset = kafka_offset",
            ),
        }
    }

    async fn insert(&self, rows: &[Row]) -> Result<(), Failure> {
        let (table, conflict) = self.names("");
        let head = format!("INSERT INTO {table} {COLUMNS} ");
        match &self.pool {
            Pool::Postgres(p) => {
                run_insert!(Postgres, p, head, rows, conflict, |b, r| {
                    bind_row!(b, r, r.ts).push_unseparated("::json");
                })
            }
            Pool::MariaDb(p) => run_insert!(MySql, p, head, rows, conflict, |b, r| {
                bind_row!(b, r, r.ts.map(|t| t.naive_utc()));
            }),
        }
    }

    async fn insert_letters(&self, rows: &[LetterRow]) -> Result<(), Failure> {
        let (table, conflict) = self.names("_deadletter");
        let head = format!("INSERT INTO {table} {LETTER_COLUMNS} ");
        match &self.pool {
            Pool::Postgres(p) => run_insert!(Postgres, p, head, rows, conflict, |b, r| {
                bind_letter!(b, r);
            }),
            Pool::MariaDb(p) => run_insert!(MySql, p, head, rows, conflict, |b, r| {
                bind_letter!(b, r);
            }),
        }
    }

    fn failed(&self, what: &str, why: String) -> Error {
        Error::Sink(format!(
            "{} {}{what}: {why}",
            self.pool.dialect().name(),
            self.table
        ))
    }

    async fn write_all(&self, docs: &[Doc]) -> Result<Vec<Outcome>, Error> {
        self.ensure_tables().await?;
        let mut out = vec![Outcome::Written; docs.len()];
        type Indexed<'d> = Vec<(usize, &'d Doc)>;
        let (letters, rows): (Indexed<'_>, Indexed<'_>) =
            docs.iter().enumerate().partition(|(_, d)| d.dead_letter);
        if !letters.is_empty() {
            let lr: Vec<LetterRow> = letters.iter().map(|(_, d)| LetterRow::of(d)).collect();
            // A dead letter's columns take anything; a failure is the server's.
            if let Err(Failure::Data { reason, .. } | Failure::Other(reason)) =
                self.insert_letters(&lr).await
            {
                return Err(self.failed("_deadletter", reason));
            }
        }
        if rows.is_empty() {
            return Ok(out);
        }
        let all: Vec<Row> = rows.iter().map(|(_, d)| Row::of(d)).collect();
        match self.insert(&all).await {
            Ok(()) => Ok(out),
            Err(Failure::Other(why)) => Err(self.failed("", why)),
            Err(Failure::Data { .. }) => {
                // Some row's data is refused: find which, one by one.
                for ((i, _), row) in rows.iter().zip(all) {
                    match self.insert(std::slice::from_ref(&row)).await {
                        Ok(()) => {}
                        Err(Failure::Data { sqlstate, reason }) => {
                            out[*i] = Outcome::Refused {
                                status: 400,
                                error: serde_json::json!({
                                    "type": format!("sqlstate_{sqlstate}"),
                                    "reason": reason,
                                }),
                            };
                        }
                        Err(Failure::Other(why)) => return Err(self.failed("", why)),
                    }
                }
                Ok(out)
            }
        }
    }
}

impl crate::sink::Sink for SqlSink {
    fn name(&self) -> &'static str {
        self.pool.dialect().name()
    }

    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(self.write_all(docs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(source: &str) -> Doc {
        Doc {
            topic: "web_log".into(),
            partition: 2,
            offset: 7,
            index: "web_log-2026.12.01".into(),
            id: "web_log-2,7".into(),
            source: source.as_bytes().to_vec(),
            dead_letter: false,
        }
    }

    #[test]
    fn an_event_becomes_its_columns() {
        let r = Row::of(&doc(
            r#"{"@timestamp":"2026-12-01T10:00:00.123Z","message":"GET /\u0000","host":{"name":"web-1"},
                "log":{"file":{"path":"/var/log/a.log"},"offset":42,"flags":["truncated","partial"]}}"#,
        ));
        assert_eq!((r.topic.as_str(), r.partition, r.offset), ("web_log", 2, 7));
        assert_eq!(r.ts.unwrap().to_rfc3339(), "2026-12-01T10:00:00.123+00:00");
        assert_eq!(r.host.as_deref(), Some("web-1"));
        assert_eq!(r.file.as_deref(), Some("/var/log/a.log"));
        assert_eq!(r.file_offset, Some(42));
        assert_eq!(r.flags.as_deref(), Some("truncated,partial"));
        assert_eq!(r.message, "GET /\u{fffd}", "no NUL in a text column");
        assert!(r.doc.contains("\\u0000"), "the document as it was");
        let other = Row::of(&doc(r#"{"anything":1}"#));
        assert_eq!(
            (other.ts, other.host, other.message.as_str()),
            (None, None, "")
        );
    }

    #[test]
    fn table_names_are_checked_and_urls_never_printed_with_passwords() {
        assert!(valid_table("web_log") && valid_table("_x1"));
        for bad in ["", "1x", "a-b", "a;drop", "a b", &"a".repeat(49)] {
            assert!(!valid_table(bad), "{bad}");
        }
        assert_eq!(
            redact("error with url mysql://logpipe:secret@127.0.0.1:3306/logpipe"),
            "error with url mysql://***@127.0.0.1:3306/logpipe"
        );
    }

    #[test]
    fn dead_letters_keep_the_reason_and_the_original() {
        let d = Doc {
            dead_letter: true,
            source:
                br#"{"error":{"type":"sqlstate_22001","reason":"too long"},"original":"{\"m\":1}"}"#
                    .to_vec(),
            ..doc("{}")
        };
        let l = LetterRow::of(&d);
        assert_eq!(l.error_type, "sqlstate_22001");
        assert_eq!(l.reason, "too long");
        assert_eq!(l.original, "{\"m\":1}");
    }
}
