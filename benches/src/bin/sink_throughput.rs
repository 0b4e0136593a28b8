//! logtransfer's PostgreSQL, MariaDB and Redis sinks on the local stack,
//! each beside an ideal loader into the same server (issue #20 item 5).
//!
//! 1. Produces N events of about 200 bytes to a fresh 4-partition topic.
//! 2. Ideal loader: the rows (or stream entries) logtransfer would write,
//!    built before timing, loaded in batches of 5000 with 4 in flight (the
//!    transfer's defaults) and nothing else: SQL multi-row `INSERT`s into an
//!    empty table without the duplicate check, Redis pipelines of `XADD`
//!    without the offsets script. Timed until the server counts N.
//! 3. logtransfer (this crate's pipeline, in process, release build)
//!    consumes the topic into another table or key; timed from the first
//!    row the server counts to the N-th (the start-up before it — the
//!    consumer group's join, the first connection, the tables — is printed
//!    apart), with the process CPU (user+sys) from its start.
//! 4. The ideal loader again; the ratio uses the mean of both ideal runs.
//!
//! Run on the local stack:
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin sink_throughput -- postgres|mariadb|redis [N]

use futures::stream::{self, StreamExt};
use redis::AsyncCommands;
use sqlx::QueryBuilder;
use std::time::{Duration, Instant};
use transfer::doc::{Doc, IndexPattern};
use transfer::sql::{create_tables, Dialect, Row};

const PER_BATCH: usize = 5000;
const IN_FLIGHT: usize = 4;
const COLUMNS: &str =
    "(topic, kafka_partition, kafka_offset, ts, host, file, file_offset, flags, message, doc)";

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Postgres,
    MariaDb,
    Redis,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::MariaDb => "mariadb",
            Self::Redis => "redis",
        }
    }
}

/// A connection to the server under test.
enum Conn {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
    Redis(redis::aio::MultiplexedConnection),
}

impl Conn {
    async fn open(server: Server) -> Self {
        match server {
            Server::Postgres => Self::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(IN_FLIGHT as u32)
                    .connect(&benches::stack_env("POSTGRES_URL"))
                    .await
                    .expect("connect to PostgreSQL"),
            ),
            Server::MariaDb => Self::My(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(IN_FLIGHT as u32)
                    .connect(&benches::stack_env("MARIADB_URL"))
                    .await
                    .expect("connect to MariaDB"),
            ),
            Server::Redis => Self::Redis(
                redis::Client::open(benches::stack_env("REDIS_URL"))
                    .expect("REDIS_URL")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to Redis"),
            ),
        }
    }

    async fn sql(&self, sql: &str) {
        match self {
            Self::Pg(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Self::My(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Self::Redis(_) => Ok(()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Rows in the table, or entries in the stream.
    async fn count(&self, name: &str) -> u64 {
        let q = format!("SELECT COUNT(*) FROM {name}");
        match self {
            Self::Pg(p) => sqlx::query_scalar::<_, i64>(&q)
                .fetch_one(p)
                .await
                .unwrap_or(0) as u64,
            Self::My(p) => sqlx::query_scalar::<_, i64>(&q)
                .fetch_one(p)
                .await
                .unwrap_or(0) as u64,
            Self::Redis(c) => redis::cmd("XLEN")
                .arg(name)
                .query_async(&mut c.clone())
                .await
                .unwrap_or(0),
        }
    }

    async fn drop(&self, name: &str) {
        match self {
            Self::Redis(c) => {
                let _: Result<(), _> = c
                    .clone()
                    .del(&[name.to_string(), format!("{name}:offsets")])
                    .await;
            }
            _ => {
                self.sql(&format!("DROP TABLE IF EXISTS {name}")).await;
                self.sql(&format!("DROP TABLE IF EXISTS {name}_deadletter"))
                    .await;
            }
        }
    }

    /// One ideal batch: plain multi-row INSERT, or a pipeline of XADDs.
    async fn load(&self, name: &str, batch: &IdealBatch) {
        let head = format!("INSERT INTO {name} {COLUMNS} ");
        let r = match (self, batch) {
            (Self::Pg(p), IdealBatch::Rows(rows)) => {
                let mut q: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(head);
                q.push_values(rows, |mut b, r| {
                    b.push_bind(&r.topic)
                        .push_bind(r.partition)
                        .push_bind(r.offset)
                        .push_bind(r.ts)
                        .push_bind(&r.host)
                        .push_bind(&r.file)
                        .push_bind(r.file_offset)
                        .push_bind(&r.flags)
                        .push_bind(&r.message)
                        .push_bind(&r.doc)
                        .push_unseparated("::json");
                });
                q.build()
                    .execute(p)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            (Self::My(p), IdealBatch::Rows(rows)) => {
                let mut q: QueryBuilder<sqlx::MySql> = QueryBuilder::new(head);
                q.push_values(rows, |mut b, r| {
                    b.push_bind(&r.topic)
                        .push_bind(r.partition)
                        .push_bind(r.offset)
                        .push_bind(r.ts.map(|t| t.naive_utc()))
                        .push_bind(&r.host)
                        .push_bind(&r.file)
                        .push_bind(r.file_offset)
                        .push_bind(&r.flags)
                        .push_bind(&r.message)
                        .push_bind(&r.doc);
                });
                q.build()
                    .execute(p)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            (Self::Redis(c), IdealBatch::Pipe(pipe)) => pipe
                .query_async::<()>(&mut c.clone())
                .await
                .map_err(|e| e.to_string()),
            _ => Err("batch of the wrong kind".into()),
        };
        r.unwrap_or_else(|e| panic!("ideal loader: {e}"));
    }
}

enum IdealBatch {
    Rows(Vec<Row>),
    Pipe(redis::Pipeline),
}

fn ideal_batches(server: Server, docs: &[Doc], key: &str) -> Vec<IdealBatch> {
    docs.chunks(PER_BATCH)
        .map(|c| match server {
            Server::Redis => {
                let mut p = redis::pipe();
                for d in c {
                    p.cmd("XADD")
                        .arg(key)
                        .arg("*")
                        .arg("kafka")
                        .arg(format!("{}/{}/{}", d.topic, d.partition, d.offset))
                        .arg("doc")
                        .arg(&d.source[..])
                        .ignore();
                }
                IdealBatch::Pipe(p)
            }
            _ => IdealBatch::Rows(c.iter().map(Row::of).collect()),
        })
        .collect()
}

async fn wait_count(conn: &Conn, name: &str, n: u64) {
    let start = Instant::now();
    while conn.count(name).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "timed out waiting for {n} rows in {name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads the pre-built batches into `name`; the seconds until all are there.
async fn ideal_run(server: Server, conn: &Conn, docs: &[Doc], name: &str) -> f64 {
    let n = docs.len() as u64;
    conn.drop(name).await;
    if server != Server::Redis {
        let dialect = match server {
            Server::Postgres => Dialect::Postgres,
            _ => Dialect::MariaDb,
        };
        for sql in create_tables(dialect, name) {
            conn.sql(&sql).await;
        }
    }
    let batches = ideal_batches(server, docs, name);
    let start = Instant::now();
    stream::iter(&batches)
        .for_each_concurrent(IN_FLIGHT, |b| conn.load(name, b))
        .await;
    wait_count(conn, name, n).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ideal loader {name} ({}, pre-built, {PER_BATCH} per batch, {IN_FLIGHT} in flight): {:.0} docs/s ({secs:.2} s)",
        server.name(),
        n as f64 / secs
    );
    secs
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let server = match args.next().as_deref() {
        Some("postgres") => Server::Postgres,
        Some("mariadb") => Server::MariaDb,
        Some("redis") => Server::Redis,
        other => {
            eprintln!("usage: sink_throughput postgres|mariadb|redis [N]; got {other:?}");
            std::process::exit(2)
        }
    };
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let es_url = benches::stack_env("ES_URL");
    let conn = Conn::open(server).await;
    let run = std::process::id();
    let topic = format!("bench-sink-{run}");
    let partitions = 4;
    let (payloads, offsets) = benches::access_topic(&brokers, &topic, partitions, n).await;
    let pattern = IndexPattern::new("lt-{topic}-%Y.%m.%d").expect("pattern");
    let docs: Vec<Doc> = benches::ideal_docs(&topic, &offsets, &payloads, &pattern);

    let name = |what: &str| format!("bench_{what}_{run}");
    let first = ideal_run(server, &conn, &docs, &name("ideal1")).await;

    let lt = name("lt");
    let (section, url, target) = match server {
        Server::Postgres => ("postgres", "POSTGRES_URL", format!("table = \"{lt}\"")),
        Server::MariaDb => ("mariadb", "MARIADB_URL", format!("table = \"{lt}\"")),
        Server::Redis => ("redis", "REDIS_URL", format!("key = \"{lt}\"")),
    };
    let cfg_text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "bench-sink-{run}"
topics = ["{topic}"]
[elasticsearch]
url = "{es_url}"
[{section}]
url = "{url}"
[[route]]
topics = ["{topic}"]
sink = "{section}"
{target}
[metrics]
listen = "127.0.0.1:0"
"#,
        url = benches::stack_env(url),
    );
    conn.drop(&lt).await;
    let lt_run = benches::run_transfer(&cfg_text, n, || conn.count(&lt)).await;
    println!(
        "logtransfer (Kafka -> {}, defaults): {:.0} docs/s from its first row to the last ({:.2} s; {:.2} s from start to the first row; {:.0} docs per write); CPU {:.1} s per million docs (user+sys of the process, start included)",
        server.name(),
        n as f64 / lt_run.loading_secs(),
        lt_run.loading_secs(),
        lt_run.first_secs,
        n as f64 / lt_run.writes.max(1.0),
        lt_run.cpu / n as f64 * 1e6
    );
    let second = ideal_run(server, &conn, &docs, &name("ideal2")).await;
    let ideal = (first + second) / 2.0;
    println!(
        "logtransfer reached {:.0}% of the ideal loader into {} (mean of the runs before and after it: {:.0} docs/s)",
        100.0 * ideal / lt_run.loading_secs(),
        server.name(),
        n as f64 / ideal
    );
    for t in [name("ideal1"), name("ideal2"), lt] {
        conn.drop(&t).await;
    }
    benches::delete_topic(&brokers, &topic).await;
}
