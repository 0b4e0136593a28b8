//! logtransfer's SQL and Redis sinks (issue #20) against the stack's real
//! PostgreSQL, MariaDB and Redis: a topic routed to each, the transfer killed with SIGKILL
//! ten times while it writes 100,000 messages to each, then every message is a row exactly
//! once; a row a table refuses (a host name too long for its column) is a
//! dead letter and its partition goes on. Redis refuses nothing: all of its
//! topic's messages are entries, each once.

use integration::secure::Secure;
use integration::transfer_run::{config_text, spawn, spawn_with_env, tail};
use integration::{unique, Stack};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const N: usize = 100_000;
/// Every this many messages, one whose host name is too long for its column.
const REFUSED_EVERY: usize = 20_000;

fn event(i: usize) -> String {
    let host = if i % REFUSED_EVERY == 1 {
        "h".repeat(300)
    } else {
        format!("web-{}", i % 7)
    };
    format!(
        r#"{{"@timestamp":"2026-12-01T10:00:00.000Z","message":"seq {i}","host":{{"name":"{host}"}},"log":{{"file":{{"path":"/var/log/a.log"}},"offset":{i}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_redis_sinks_write_every_message_once_across_kill_9_and_dead_letter_refused_rows() {
    let stack = Stack::from_env();
    let (t_pg, t_my, t_rd) = (unique("it-pg"), unique("it-my"), unique("it-rd"));
    let table = |t: &str| t.replace('-', "_");
    let (pg_table, my_table) = (table(&t_pg), table(&t_my));
    let key = format!("{t_rd}:stream");
    for t in [&t_pg, &t_my, &t_rd] {
        stack.create_topic(t, 2).await;
    }
    let values: Vec<String> = (0..N).map(event).collect();
    for t in [&t_pg, &t_my, &t_rd] {
        stack.produce(t, 0, &values[..N / 2]).await;
        stack.produce(t, 1, &values[N / 2..]).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("transfer.toml");
    let extra = format!(
        r#"[postgres]
url = "{pg}"
[mariadb]
url = "{my}"
[redis]
url = "{rd}"
[[route]]
topics = ["{t_rd}"]
sink = "redis"
key = "{key}"
[[route]]
topics = ["{t_pg}"]
sink = "postgres"
table = "{pg_table}"
[[route]]
topics = ["{t_my}"]
sink = "mariadb"
table = "{my_table}"
"#,
        pg = stack.postgres_url(),
        my = stack.mariadb_url(),
        rd = stack.redis_url(),
    );
    std::fs::write(
        &cfg,
        config_text(
            &stack,
            &[&t_pg, &t_my, &t_rd],
            &unique("g"),
            "127.0.0.1:0",
            &extra,
        )
        .replace("max_docs = 2000", "max_docs = 500"),
    )
    .expect("config");
    let log = dir.path().join("transfer.log");

    // Kill -9 ten times while it writes: each instance is killed a moment
    // (uneven) after rows were seen growing, so every kill lands mid-write.
    let total = |stack: &Stack| -> usize {
        stack.rows("postgres", &pg_table) as usize
            + stack.rows("mariadb", &my_table) as usize
            + stack.redis_len(&key) as usize
    };
    for k in 0..10u64 {
        let before = total(&stack);
        let mut child = spawn(&cfg, &log);
        let seen = Instant::now();
        while total(&stack) == before && seen.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(100 + 90 * k));
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let refused = 2 * (N / REFUSED_EVERY);
    let partial = [("postgres", &pg_table), ("mariadb", &my_table)]
        .map(|(server, t)| stack.rows(server, t) as usize);
    eprintln!(
        "sinks: rows (postgres, mariadb) after the 10 kills: {partial:?} of {}",
        N - refused / 2
    );
    assert!(
        partial.iter().any(|n| *n < N - refused / 2),
        "rows were still to be written after the kills: {partial:?}"
    );
    let mut child = spawn(&cfg, &log);
    let want = N - refused / 2;
    let start = Instant::now();
    let done = |server: &str, t: &str| stack.rows(server, t) as usize >= want;
    let xlen = || stack.redis_len(&key) as usize;
    while !(done("postgres", &pg_table) && done("mariadb", &my_table) && xlen() >= N)
        && start.elapsed() < Duration::from_secs(240)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    // What is there is all there will be: a little longer, then count.
    std::thread::sleep(Duration::from_secs(2));
    for (server, t) in [("postgres", &pg_table), ("mariadb", &my_table)] {
        let rows = stack.rows(server, t) as usize;
        assert_eq!(rows, want, "{server}: rows in {t}; log:\n{}", tail(&log));
        let messages: Vec<String> = stack
            .sql(server, &format!("SELECT message FROM {t}"))
            .lines()
            .map(str::to_string)
            .collect();
        let distinct: BTreeSet<&String> = messages.iter().collect();
        assert_eq!(distinct.len(), want, "{server}: each message once");
        let expected: BTreeSet<String> = (0..N)
            .filter(|i| i % REFUSED_EVERY != 1)
            .map(|i| format!("seq {i}"))
            .collect();
        assert_eq!(
            distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{server}: exactly the messages not refused"
        );
        let letters = stack.sql(
            server,
            &format!("SELECT kafka_partition, kafka_offset, error_type FROM {t}_deadletter ORDER BY 1, 2"),
        );
        let letters: Vec<&str> = letters.lines().collect();
        assert_eq!(
            letters.len(),
            refused / 2,
            "{server}: dead letters: {letters:?}"
        );
        assert!(
            letters.iter().all(|l| l.contains("sqlstate_22001")),
            "{server}: refused for the value's length: {letters:?}"
        );
        // The columns of a row.
        let row = stack.sql(
            server,
            &format!("SELECT host, file, file_offset FROM {t} WHERE message = 'seq 10'"),
        );
        assert_eq!(row, "web-3\t/var/log/a.log\t10", "{server}");
    }
    // Redis: every message an entry, once, in each partition's order.
    assert_eq!(xlen(), N, "redis: entries in {key}; log:\n{}", tail(&log));
    let entries = stack.redis(&["XRANGE", &key, "-", "+"]).expect("XRANGE");
    let lines: Vec<&str> = entries.lines().collect();
    let mut by_partition: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for e in lines.chunks(5) {
        // id, "kafka", "<topic>/<partition>/<offset>", "doc", the document
        let at: Vec<&str> = e[2].rsplitn(3, '/').collect();
        let p: usize = at[1].parse().expect("partition");
        by_partition[p].push(at[0].parse().expect("offset"));
    }
    for (p, offsets) in by_partition.iter().enumerate() {
        let want: Vec<i64> = (0..(N / 2) as i64).collect();
        assert_eq!(
            offsets, &want,
            "redis: partition {p}'s offsets, once each, in order"
        );
    }
    assert_eq!(
        stack
            .redis(&["HGET", &format!("{key}:offsets"), &format!("{t_rd}/0")])
            .ok(),
        Some(format!("{}", N / 2 - 1)),
        "redis: the last offset written"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The README's example: one topic to Elasticsearch and MariaDB at once,
/// another to Redis; the transfer killed three times while writing. Every
/// message is once in each of its sinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_to_elasticsearch_and_mariadb_and_another_to_redis() {
    const M: usize = 3_000;
    let stack = Stack::from_env();
    let (t_both, t_rd) = (unique("it-both"), unique("it-rd2"));
    let table = t_both.replace('-', "_");
    let key = format!("{t_rd}:stream");
    for t in [&t_both, &t_rd] {
        stack.create_topic(t, 2).await;
    }
    // No refusals here: every host name fits.
    let values: Vec<String> = (0..M).map(|i| event(i * 2)).collect();
    for t in [&t_both, &t_rd] {
        stack.produce(t, 0, &values[..M / 2]).await;
        stack.produce(t, 1, &values[M / 2..]).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("transfer.toml");
    let extra = format!(
        "[mariadb]\nurl = \"{}\"\n[redis]\nurl = \"{}\"\n\
         [[route]]\ntopics = [\"{t_both}\"]\nsinks = [\"elasticsearch\", \"mariadb\"]\ntable = \"{table}\"\n\
         [[route]]\ntopics = [\"{t_rd}\"]\nsink = \"redis\"\nkey = \"{key}\"\n",
        stack.mariadb_url(),
        stack.redis_url()
    );
    std::fs::write(
        &cfg,
        config_text(
            &stack,
            &[&t_both, &t_rd],
            &unique("g"),
            "127.0.0.1:0",
            &extra,
        )
        .replace("max_docs = 2000", "max_docs = 100"),
    )
    .expect("config");
    let log = dir.path().join("transfer.log");
    for k in 0..3u64 {
        let mut child = spawn(&cfg, &log);
        std::thread::sleep(Duration::from_millis(2000 + 700 * k));
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let mut child = spawn(&cfg, &log);
    let docs = format!("{t_both}-*");
    let es = stack
        .wait_count(&docs, M as u64, Duration::from_secs(120))
        .await;
    let start = Instant::now();
    let xlen = || stack.redis_len(&key) as usize;
    while ((stack.rows("mariadb", &table) as usize) < M || xlen() < M)
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(es, M as u64, "elasticsearch; log:\n{}", tail(&log));
    assert_eq!(
        stack.es_count(&docs).await,
        M as u64,
        "elasticsearch, once each"
    );
    assert_eq!(
        stack.rows("mariadb", &table) as usize,
        M,
        "mariadb; log:\n{}",
        tail(&log)
    );
    assert_eq!(xlen(), M, "redis");
}

/// TLS to each server (issue #20 item 3), verified against the stack's CA:
/// PostgreSQL `sslmode=verify-full&sslrootcert=`, MariaDB
/// `ssl-mode=VERIFY_IDENTITY&ssl-ca=` (both in the URL), Redis `rediss://`
/// to its TLS port against the system's trusted CAs (`SSL_CERT_FILE` names
/// them here). Every message arrives once in each, and PostgreSQL says the
/// connections are encrypted. With a CA that signed nothing (and, for Redis,
/// a trust store without the stack's CA) nothing is written: each write
/// fails, is counted, and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_redis_sinks_speak_tls_and_refuse_a_certificate_they_cannot_verify() {
    const M: usize = 500;
    let stack = Stack::from_env();
    let sec = Secure::from_env();
    let topic = unique("it-tls");
    let table = topic.replace('-', "_");
    let key = format!("{topic}:stream");
    stack.create_topic(&topic, 2).await;
    let values: Vec<String> = (0..M).map(|i| event(i * 2)).collect();
    stack.produce(&topic, 0, &values[..M / 2]).await;
    stack.produce(&topic, 1, &values[M / 2..]).await;
    let sql_urls = |ca: &str| {
        (
            format!(
                "{}?sslmode=verify-full&sslrootcert={ca}",
                stack.postgres_url()
            ),
            format!(
                "{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}",
                stack.mariadb_url()
            ),
        )
    };
    let extra = |ca: &str| {
        let (pg, my) = sql_urls(ca);
        format!(
            "[postgres]\nurl = \"{pg}\"\n[mariadb]\nurl = \"{my}\"\n[redis]\nurl = \"{}\"\n\
             [[route]]\ntopics = [\"{topic}\"]\nsinks = [\"postgres\", \"mariadb\", \"redis\"]\n\
             table = \"{table}\"\nkey = \"{key}\"\n",
            sec.redis_tls_url
        )
    };

    // Refused: a CA that signed nothing for the SQL servers; for Redis, a
    // trust store without the stack's CA. A route per sink, so that each
    // one's failure shows.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = ["pg", "my", "rd"].map(|s| unique(&format!("it-tlsbad-{s}")));
    for t in &bad {
        stack.create_topic(t, 1).await;
        stack.produce(t, 0, &values[..10]).await;
    }
    let bad_table = |t: &str| t.replace('-', "_");
    let bad_key = format!("{}:stream", bad[2]);
    let (pg, my) = sql_urls(&sec.file("other-ca.pem"));
    let bad_extra = format!(
        "[postgres]\nurl = \"{pg}\"\n[mariadb]\nurl = \"{my}\"\n[redis]\nurl = \"{}\"\n\
         [[route]]\ntopics = [\"{}\"]\nsink = \"postgres\"\ntable = \"{}\"\n\
         [[route]]\ntopics = [\"{}\"]\nsink = \"mariadb\"\ntable = \"{}\"\n\
         [[route]]\ntopics = [\"{}\"]\nsink = \"redis\"\nkey = \"{bad_key}\"\n",
        sec.redis_tls_url,
        bad[0],
        bad_table(&bad[0]),
        bad[1],
        bad_table(&bad[1]),
        bad[2],
    );
    let cfg = dir.path().join("bad.toml");
    let bad_topics: Vec<&str> = bad.iter().map(String::as_str).collect();
    std::fs::write(
        &cfg,
        config_text(&stack, &bad_topics, &unique("g"), "127.0.0.1:0", &bad_extra),
    )
    .expect("config");
    let log = dir.path().join("bad.log");
    let mut refused = spawn_with_env(
        &cfg,
        &log,
        &[
            ("SSL_CERT_FILE", sec.file("other-ca.pem").as_str()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    let failed = |sink: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("write failed; retrying") && l.contains(&format!("sink=\"{sink}\""))
            })
    };
    let start = Instant::now();
    while !["postgres", "mariadb", "redis"].iter().all(|s| failed(s))
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = refused.kill();
    let _ = refused.wait();
    for sink in ["postgres", "mariadb", "redis"] {
        assert!(
            failed(sink),
            "{sink}: no failed write in the log:\n{}",
            tail(&log)
        );
    }
    assert_eq!(
        [
            stack.rows("postgres", &bad_table(&bad[0])),
            stack.rows("mariadb", &bad_table(&bad[1])),
            stack.redis_len(&bad_key)
        ],
        [0; 3],
        "written through a certificate nobody could verify (postgres, mariadb, redis)"
    );

    // Verified: every message once in each.
    let cfg = dir.path().join("good.toml");
    std::fs::write(
        &cfg,
        config_text(
            &stack,
            &[&topic],
            &unique("g"),
            "127.0.0.1:0",
            &extra(&sec.file("ca.pem")),
        ),
    )
    .expect("config");
    let log = dir.path().join("good.log");
    let mut good = spawn_with_env(
        &cfg,
        &log,
        &[
            ("SSL_CERT_FILE", sec.file("ca.pem").as_str()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    let start = Instant::now();
    let counts = || {
        [
            stack.rows("postgres", &table),
            stack.rows("mariadb", &table),
            stack.redis_len(&key),
        ]
    };
    while counts() != [M as u64; 3] && start.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let encrypted = stack
        .sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND usename = 'logpipe' AND pid <> pg_backend_pid()",
        )
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    let _ = good.kill();
    let _ = good.wait();
    assert_eq!(
        counts(),
        [M as u64; 3],
        "postgres, mariadb, redis over TLS; log:\n{}",
        tail(&log)
    );
    assert!(
        encrypted >= 1,
        "no encrypted PostgreSQL connection of logtransfer"
    );
}
