//! Outages of shared services: Elasticsearch stopped for 60 s in the middle
//! of a transfer (issue #6, test 3); etcd restarted under logagent's
//! collect-entry watcher; logagent started while etcd is down (issue #5,
//! test 3); the Kafka broker stopped for 60 s under logagent (issue #5,
//! test 5); a crash read-back that cannot finish while Kafka was stopped
//! (issue #12 item 5); PostgreSQL, MariaDB and Redis stopped for 60 s under the
//! SQL and Redis sinks (issue #20). Its own test binary: these stop services the other
//! integration tests use (cargo runs test binaries one after another), and
//! they take a lock so they run one at a time here too.

use integration::agent_run::{append_lines as append, etcd_put, fixture, kafka_keys, wait_for};
use integration::kafka_read::{read_topic, tally_in, tally_numbered};
use integration::transfer_run::{config, start};
use integration::{unique, Stack};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The tests here stop shared services: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stack_cmd(args: &[&str]) {
    assert!(
        integration::stack_cmd(args),
        "scripts/stack {args:?} failed"
    );
}

/// The group's committed offsets for partitions 0..4 of `topic`.
fn committed(stack: &Stack, group: &str, topic: &str) -> Vec<i64> {
    stack.committed(group, topic, 4)
}

fn lines(from: u64, to: u64) -> Vec<String> {
    (from..to)
        .map(|i| {
            format!(r#"{{"@timestamp":"2026-11-21T00:00:00Z","message":"line {i}","seq":{i}}}"#)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_for_60_s_loses_nothing_and_commits_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let topic = unique("it-outage");
    let pattern = format!("{topic}-*,-*-deadletter");
    stack.create_topic(&topic, 4).await;
    let group = unique("g");
    let running = start(config(&stack, &[&topic], &group, ""));

    for p in 0..4 {
        stack
            .produce(&topic, p, &lines(p as u64 * 1000, p as u64 * 1000 + 500))
            .await;
    }
    assert_eq!(
        stack
            .wait_count(&pattern, 2000, Duration::from_secs(120))
            .await,
        2000
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    stack_cmd(&["stop", "elasticsearch"]);
    for p in 0..4 {
        stack
            .produce(
                &topic,
                p,
                &lines(p as u64 * 1000 + 500, p as u64 * 1000 + 1000),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = committed(&stack, &group, &topic);
    tokio::time::sleep(Duration::from_secs(55)).await;
    let end_of_outage = committed(&stack, &group, &topic);
    assert_eq!(
        during, end_of_outage,
        "nothing was committed while Elasticsearch was down"
    );
    assert!(
        during.iter().all(|o| *o <= 500),
        "commits stay at what was written: {during:?}"
    );

    stack_cmd(&["start", "elasticsearch"]);
    let got = stack
        .wait_count(&pattern, 4000, Duration::from_secs(180))
        .await;
    running.stop().await;
    assert_eq!(got, 4000);
    let after = committed(&stack, &group, &topic);
    assert_eq!(after, vec![1000; 4], "everything committed once written");
}

/// etcd restarted under logagent's collect-entry watcher: the update made
/// while the watch was down is picked up by the re-get (issue #5 groundwork).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collect_watch_survives_an_etcd_restart_without_missing_an_update() {
    use agent::collect::host_key;
    use agent::etcd_config::{run, ConfigEvent, WatchSpec};
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let prefix = format!("/{}", unique("it-etcd-restart"));
    let key = host_key(&prefix, "h1");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let _task = tokio::spawn(run(
        WatchSpec {
            endpoints: stack.etcd_endpoints.clone(),
            user: None,
            prefix: prefix.clone(),
            host_id: "h1".into(),
            allowed_roots: vec![std::path::PathBuf::from("/var/log")],
            static_entries: Vec::new(),
            tls: Default::default(),
        },
        tx,
    ));
    let applied = |ev: ConfigEvent| match ev {
        ConfigEvent::Applied(e) => Some(e.iter().map(|c| c.path.clone()).collect::<Vec<_>>()),
        _ => None,
    };
    let first = loop {
        let ev = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("first event")
            .expect("watcher running");
        if !matches!(ev, ConfigEvent::Connected | ConfigEvent::KeySeen { .. }) {
            break applied(ev);
        }
    };
    assert_eq!(first, Some(vec![]));

    stack_cmd(&["stop", "etcd"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack_cmd(&["start", "etcd"]);
    // Written right after the restart, possibly before the watch is back.
    let mut client = etcd_client::Client::connect(&stack.etcd_endpoints, None)
        .await
        .expect("etcd back");
    client
        .put(
            key.as_str(),
            r#"[{"path":"/var/log/after-restart.log","topic":"t"}]"#,
            None,
        )
        .await
        .expect("put");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the update arrives within 60 s")
            .expect("watcher running");
        if let Some(paths) = applied(ev) {
            assert_eq!(paths, vec!["/var/log/after-restart.log".to_string()]);
            break;
        }
    }
}

/// logagent started while etcd is down uses the config cached in its
/// checkpoint store, and reconnects (and registers) once etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_starts_from_the_cached_config_when_etcd_is_down() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let a = &fx.agent;
    let topic = unique("it-agent-cache");
    stack.create_topic(&topic, 1).await;
    let entries = format!(
        r#"[{{"path":"{}/*.log","topic":"{topic}"}}]"#,
        fx.logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let log = fx.logs.join("c.log");
    std::fs::write(&log, "before-1\nbefore-2\n").unwrap();
    let mut agent = a.start();
    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let got =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &t, 2, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(got.len(), 2, "{}", a.log_text());
    agent.terminate_ok(a);

    stack_cmd(&["stop", "etcd"]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "during-1").unwrap();
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    writeln!(f, "during-2").unwrap();
    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let got =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &t, 4, Duration::from_secs(60)))
            .await
            .unwrap();
    let connected_while_down = a.metric("logagent_etcd_connected");
    stack_cmd(&["start", "etcd"]);
    let msgs: Vec<&str> = got
        .iter()
        .filter_map(|m| m.value["message"].as_str())
        .collect();
    assert_eq!(
        msgs,
        ["before-1", "before-2", "during-1", "during-2"],
        "{}",
        a.log_text()
    );
    assert!(a.log_text().contains("cached collect config"));
    assert_eq!(connected_while_down, 0.0);

    // etcd back: the agent reconnects and registers itself with a lease.
    let start = std::time::Instant::now();
    while a.metric("logagent_etcd_connected") < 1.0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.metric("logagent_etcd_connected"), 1.0, "{}", a.log_text());
    let mut client = etcd_client::Client::connect(&stack.etcd_endpoints, None)
        .await
        .unwrap();
    let reg_key = format!("{}/agents/{}", a.prefix, a.host_id);
    let mut reg = None;
    while reg.is_none() && start.elapsed() < Duration::from_secs(60) {
        let r = client.get(reg_key.as_str(), None).await.unwrap();
        reg = r.kvs().first().map(|kv| {
            (
                serde_json::from_slice::<serde_json::Value>(kv.value()).unwrap(),
                kv.lease(),
            )
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (info, lease) = reg.expect("the agent registered");
    assert_ne!(lease, 0, "held by a lease");
    assert_eq!(info["metrics"], a.metrics.as_str());
    assert_eq!(info["ip"], "127.0.0.1");
    agent.terminate_ok(a);
}

/// The Kafka broker stopped for 60 s while lines are written and the file is
/// rotated three times; the WAL is small, so it fills and harvesting pauses. After
/// the broker is back, every line arrives — also the lines of two rotated
/// files deleted during the pause, one of them made during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_for_60_s_with_rotations_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let fx = fixture(
        &stack,
        "[wal]\nmax_bytes = 1048576\nsegment_bytes = 131072\n",
    );
    let a = &fx.agent;
    let topic = unique("it-agent-kafka-down");
    stack.create_topic(&topic, 2).await;
    let entries = format!(
        r#"[{{"path":"{}/app.log*","topic":"{topic}"}}]"#,
        fx.logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());

    let path = fx.logs.join("app.log");
    let stop_writing = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop_writing);
    let rotations = Arc::new(AtomicU64::new(0));
    let rot = Arc::clone(&rotations);
    // ~40 KB/s of numbered lines; rotation by rename when asked.
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        let mut done_rot = 0;
        let mut i: u64 = 0;
        while !flag.load(Ordering::SeqCst) {
            for _ in 0..20 {
                writeln!(f, "seq {i} {}", "y".repeat(180)).unwrap();
                i += 1;
            }
            let want = rot.load(Ordering::SeqCst);
            while done_rot < want {
                done_rot += 1;
                drop(f);
                std::fs::rename(&path, path.with_extension(format!("log.{done_rot}"))).unwrap();
                f = std::fs::File::create(&path).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        i
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack_cmd(&["stop", "kafka"]);
    let down_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    rotations.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    rotations.fetch_add(1, Ordering::SeqCst);
    // Paused by now. The file made at this rotation is opened while paused
    // (issue #12 item 9); a third rotation, then both rotated files the
    // harvester has not finished are deleted (logrotate's `rotate N`): their
    // handles keep them readable.
    tokio::time::sleep(Duration::from_secs(10)).await;
    rotations.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in [1, 3] {
        let rotated = fx.logs.join(format!("app.log.{n}"));
        std::fs::remove_file(&rotated).unwrap_or_else(|e| panic!("{}: {e}", rotated.display()));
    }
    while down_at.elapsed() < Duration::from_secs(58) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // By now the 1 MiB WAL is full: harvesting is paused and /health says so.
    let paused = a.metric("logagent_paused");
    let health = a.http_get("/health").map(|h| h.0);
    let unacked = a.metric("logagent_wal_unacked_records");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack_cmd(&["start", "kafka"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_writing.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    println!("kafka outage: written={written} paused={paused} health={health:?} unacked_records={unacked}");
    assert_eq!(paused, 1.0, "{}", a.log_text());
    assert_eq!(health, Some(503));
    assert!(unacked > 0.0);

    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let tally = tokio::task::spawn_blocking(move || {
        tally_numbered(&brokers, &t, written, Duration::from_secs(180))
    })
    .await
    .unwrap();
    println!("kafka outage: {tally:?}");
    let lost = tally.lost;
    assert!(
        lost.is_empty(),
        "lost {} lines, first {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        a.log_text()
    );
    assert_eq!(a.metric("logagent_paused"), 0.0);
    let health = a.http_get("/health");
    assert_eq!(
        health.as_ref().map(|h| h.0),
        Some(200),
        "{health:?}\n{}",
        a.log_text()
    );
    agent.terminate_ok(a);
}

/// Issue #12 item 5: after a crash with unacknowledged records, a read-back that cannot
/// finish (here: fetches the broker holds back longer than the bound) gives
/// up after `readback_timeout_secs`; the records are sent anyway, counted as
/// unchecked, and `/health` names the read-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_that_cannot_finish_gives_up_and_ships() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-edge-readback");
    stack.create_topic(&topic, 1).await;
    etcd_put(
        &stack,
        &a.collect_key(),
        &format!(
            r#"[{{"path":"{}/app.log","topic":"{topic}"}}]"#,
            logs.display()
        ),
    )
    .await;
    let lines: Vec<String> = (0..200).map(|i| format!("seq {i} readback")).collect();
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    append(&logs.join("app.log"), &lines[..100]);
    assert!(
        wait_for(Duration::from_secs(60), || a
            .metric("logagent_lines_acked_total")
            >= 100.0),
        "{}",
        a.log_text()
    );
    // Kafka down: the next lines are spooled, unacknowledged; then kill -9.
    stack_cmd(&["stop", "kafka"]);
    append(&logs.join("app.log"), &lines[100..]);
    let spooled = wait_for(Duration::from_secs(30), || {
        a.metric("logagent_lines_read_total") >= 200.0
    });
    agent.kill9();
    stack_cmd(&["start", "kafka"]);
    assert!(spooled, "{}", a.log_text());
    // A message newer than the unacknowledged records: the read-back has to
    // scan from there (as after a crash whose records Kafka partly took).
    stack
        .produce(&topic, 0, &["{\"message\":\"someone else\"}".to_string()])
        .await;

    // The read-back consumer's fetches wait for 100 MB that never come.
    kafka_keys(
        a,
        "readback_timeout_secs = 3\n[kafka.producer]\n\"fetch.min.bytes\" = \"100000000\"\n\"fetch.wait.max.ms\" = \"30000\"",
    );
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let tally = tokio::task::spawn_blocking(move || {
        tally_numbered(&brokers, &t, 200, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(
        tally.lost.is_empty(),
        "lost: {:?} {}",
        tally.lost,
        a.log_text()
    );
    assert!(
        a.metric("logagent_lines_unchecked_total") >= 100.0,
        "unchecked lines are counted: {}",
        a.log_text()
    );
    let log = a.log_text();
    assert!(
        log.contains("read-back") && log.contains("gave up"),
        "{log}"
    );
    let (code, body) = a.http_get("/health").expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("readback"), "{body}");
    agent.terminate_ok(a);
}

/// Issue #12 item 10: with no broker reachable and lines waiting, `/health`
/// turns degraded naming Kafka (503) within about `STALL_AFTER` (30 s) —
/// before, it stayed 200 while the WAL had room — and healthy again once
/// Kafka acknowledges; every line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_kafka_while_nothing_is_acknowledged() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let a = &fx.agent;
    let topic = unique("it-agent-stall");
    stack.create_topic(&topic, 1).await;
    let entries = format!(
        r#"[{{"path":"{}/app.log","topic":"{topic}"}}]"#,
        fx.logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    let path = fx.logs.join("app.log");
    let lines: Vec<String> = (0..20).map(|i| format!("seq {i} stall")).collect();
    append(&path, &lines[..10]);
    assert!(wait_for(Duration::from_secs(60), || a
        .metric("logagent_lines_acked_total")
        >= 10.0));
    assert_eq!(a.http_get("/health").map(|h| h.0), Some(200));

    stack_cmd(&["stop", "kafka"]);
    append(&path, &lines[10..]);
    let degraded = wait_for(Duration::from_secs(60), || {
        a.http_get("/health")
            .is_some_and(|(code, body)| code == 503 && body.contains("kafka"))
    });
    let body = a.http_get("/health").map(|h| h.1).unwrap_or_default();
    stack_cmd(&["start", "kafka"]);
    assert!(
        degraded,
        "health while Kafka is down: {body}\n{}",
        a.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(90), || a
            .http_get("/health")
            .is_some_and(|(code, _)| code == 200)),
        "healthy again once Kafka acks: {}",
        a.log_text()
    );
    let tally = tally_in(&stack.kafka_brokers, &topic, 20, Duration::from_secs(60)).await;
    assert!(tally.lost.is_empty(), "lost {:?}", tally.lost);
    agent.terminate_ok(a);
}

/// Issue #13 item 5: after a Kafka restart, how long until a message
/// produced once the broker accepts connections again is searchable
/// (target ≤ 10 s; before: 52 s in the black-box run, and more than 120 s
/// on a CI run, 122 s here once in six runs: librdkafka left without any
/// broker by the starting broker's metadata, see `transfer::kafka`).
/// Measured from the moment the broker's port accepts a TCP connection,
/// split into "in Kafka" (the test's producer acked) and "searchable".
/// Static membership, as by default (`group_instance_id = "auto"`; the
/// test's metrics port 0 would turn it off): a dynamic member also waits,
/// after the restart, for its old self's session to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_restart_delays_new_messages_by_seconds() {
    let _serial = SERIAL.lock().await;
    common::init_tracing();
    let stack = Stack::from_env();
    let topic = unique("it-kafka-restart");
    let pattern = format!("{topic}-*,-*-deadletter");
    stack.create_topic(&topic, 2).await;
    let mut cfg = config(&stack, &[&topic], &unique("g"), "");
    cfg.kafka.group_instance_id = unique("it-kafka-restart-instance");
    let running = start(cfg);
    for p in 0..2 {
        stack
            .produce(&topic, p, &lines(p as u64, p as u64 + 1))
            .await;
    }
    assert_eq!(
        stack.wait_count(&pattern, 2, Duration::from_secs(60)).await,
        2
    );
    stack_cmd(&["stop", "kafka"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let starter = std::thread::spawn(|| integration::stack_cmd(&["start", "kafka"]));
    let accepting =
        integration::wait_accepting(&stack.kafka_brokers, Duration::from_secs(180)).await;
    // Produced at once (the producer waits for the broker to answer),
    // while `scripts/stack start` checks the broker's readiness.
    for p in 0..2 {
        stack
            .produce(&topic, p, &lines(p as u64 + 2, p as u64 + 3))
            .await;
    }
    let acked = accepting.elapsed();
    let started = tokio::task::spawn_blocking(move || starter.join().unwrap_or(false))
        .await
        .unwrap_or(false);
    assert!(started, "scripts/stack start kafka");
    let ready = accepting.elapsed();
    let got = stack
        .wait_count(&pattern, 4, Duration::from_secs(120))
        .await;
    let took = accepting.elapsed();
    let rebootstraps =
        integration::transfer_run::metric(&running.metrics, "logtransfer_rebootstraps_total");
    running.stop().await;
    eprintln!(
        "kafka restart: port accepting → produced and acked {acked:?}, → `stack start` returned {ready:?}, → searchable {took:?} (rebootstraps {rebootstraps})"
    );
    assert_eq!(got, 4);
    assert!(took <= Duration::from_secs(10), "took {took:?}");
}

/// Issue #13 item 4: while Elasticsearch is down and the instance is
/// paused, the group changes twice: a second logtransfer (a process, in the
/// group since before the outage) is killed (-9), so its partitions move to
/// the first; then another member joins (a plain consumer of the group:
/// a logtransfer started while Elasticsearch is down waits for its index
/// template and does not join) and leaves again. Before, the batches of the
/// partitions taken away kept their in-flight slots (and their bytes), and
/// librdkafka resumed every partition a rebalance assigned, so the buffer
/// grew without bound. Now the revoked batches are cancelled, newly
/// assigned partitions stay paused, the buffered bytes
/// (`logtransfer_buffered_bytes`) stay under `bulk.max_buffered_bytes`, and
/// once Elasticsearch is back every message is indexed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_elasticsearch_is_down_keeps_the_buffer_bounded() {
    use integration::transfer_run::{config_text, metric, spawn, tail};
    use integration::wait_until;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const N: u64 = 12_000;
    const BOUND: f64 = 262_144.0;
    const MAX_BYTES: f64 = 65_536.0;
    let _serial = SERIAL.lock().await;
    common::init_tracing();
    let stack = Stack::from_env();
    let topic = unique("it-rebalance");
    let pattern = format!("{topic}-*,-*-deadletter");
    stack.create_topic(&topic, 4).await;
    let group = unique("g");
    let text = |listen: &str| {
        config_text(&stack, &[&topic], &group, listen, "").replace(
            "max_docs = 2000",
            &format!("max_docs = 200\nmax_bytes = {MAX_BYTES}\nmax_buffered_bytes = {BOUND}"),
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let a_path = dir.path().join("a.toml");
    std::fs::write(&a_path, text("127.0.0.1:0")).expect("config a");
    let a = start(transfer::config::TransferConfig::load(&a_path).expect("config a loads"));
    let m = Arc::clone(&a.metrics);
    let assigned = |m: &transfer::metrics::Metrics| metric(m, "logtransfer_assigned_partitions");
    let in_flight = |m: &transfer::metrics::Metrics| metric(m, "logtransfer_batches_in_flight");
    assert!(
        wait_until(Duration::from_secs(60), || assigned(&m) == 4.0).await,
        "the first member got every partition"
    );
    let b_path = dir.path().join("b.toml");
    let b_listen = format!("127.0.0.1:{}", integration::agent_run::free_port());
    std::fs::write(&b_path, text(&b_listen)).expect("config b");
    let b_log = dir.path().join("b.log");
    let mut b = spawn(&b_path, &b_log);
    let shared = wait_until(Duration::from_secs(60), || {
        (1.0..4.0).contains(&assigned(&m))
    })
    .await;
    assert!(
        shared,
        "the second logtransfer took partitions\n{}",
        tail(&b_log)
    );

    stack_cmd(&["stop", "elasticsearch"]);
    let padded = |from: u64, to: u64| -> Vec<String> {
        lines(from, to)
            .into_iter()
            .map(|l| {
                l.replace(
                    "\"message\":\"",
                    &format!("\"pad\":\"{}\",\"message\":\"", "p".repeat(200)),
                )
            })
            .collect()
    };
    let per = N / 4;
    for p in 0..4 {
        stack
            .produce(&topic, p as i32, &padded(p * per, (p + 1) * per))
            .await;
    }
    let paused = wait_until(Duration::from_secs(60), || {
        metric(&m, "logtransfer_paused") == 1.0
    })
    .await;
    // The largest buffer seen from here on, sampled every 20 ms.
    let max_seen = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (m, max_seen, on) = (Arc::clone(&m), Arc::clone(&max_seen), Arc::clone(&sampling));
        tokio::spawn(async move {
            while on.load(Ordering::SeqCst) {
                let b = metric(&m, "logtransfer_buffered_bytes");
                max_seen.fetch_max(b as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The second logtransfer dies: its partitions come over after its
    // session times out (6 s), assigned while this instance is paused.
    b.kill().expect("SIGKILL");
    let _ = b.wait();
    let took_over = wait_until(Duration::from_secs(60), || assigned(&m) == 4.0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Another member joins and takes partitions away; then it leaves.
    let joined = Arc::new(AtomicBool::new(true));
    let member = {
        let (brokers, group, topic, on) = (
            stack.kafka_brokers.clone(),
            group.clone(),
            topic.clone(),
            Arc::clone(&joined),
        );
        std::thread::spawn(move || {
            let c: BaseConsumer = rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "6000")
                .create()
                .expect("consumer");
            c.subscribe(&[&topic]).expect("subscribe");
            while on.load(Ordering::SeqCst) {
                let _ = c.poll(Duration::from_millis(100));
            }
            c.unsubscribe();
            let _ = c.poll(Duration::from_millis(500));
        })
    };
    let shared_again = wait_until(Duration::from_secs(60), || {
        (1.0..4.0).contains(&assigned(&m))
    })
    .await;
    // The batches of the partitions taken away give their slots back.
    let slots_freed = wait_until(Duration::from_secs(10), || in_flight(&m) <= assigned(&m)).await;
    let (in_flight_then, assigned_then) = (in_flight(&m), assigned(&m));
    tokio::time::sleep(Duration::from_secs(5)).await;
    joined.store(false, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || member.join()).await;
    let back = wait_until(Duration::from_secs(60), || assigned(&m) == 4.0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    let max_buffered = max_seen.load(Ordering::SeqCst) as f64;
    let cancelled = metric(&m, "logtransfer_batches_cancelled_total");
    let during = committed(&stack, &group, &topic);

    stack_cmd(&["start", "elasticsearch"]);
    let got = stack
        .wait_count(&pattern, N, Duration::from_secs(240))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = stack.es_count(&pattern).await;
    a.stop().await;
    eprintln!(
        "rebalance under an outage: max buffered {max_buffered} bytes (bound {BOUND}), \
         {in_flight_then} batches in flight for {assigned_then} partitions, \
         {cancelled} batches cancelled, committed during {during:?}, indexed {got}"
    );
    assert!(paused, "paused while Elasticsearch is down");
    assert!(took_over, "the killed member's partitions came over");
    assert!(shared_again, "the new member took partitions");
    assert!(
        slots_freed,
        "revoked partitions' batches keep no slot: {in_flight_then} in flight for {assigned_then} partitions"
    );
    assert!(back, "the partitions came back after the member left");
    assert!(
        max_buffered <= BOUND + MAX_BYTES,
        "buffered {max_buffered} bytes, bound {BOUND}"
    );
    assert!(
        during.iter().all(|o| *o <= 0),
        "nothing committed while Elasticsearch was down: {during:?}"
    );
    assert_eq!((got, settled), (N, N));
    let seqs = stack.all_values(&pattern, "seq").await;
    assert_eq!(
        seqs,
        (0..N as i64).collect::<Vec<i64>>(),
        "each message once"
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The alerts Prometheus has firing (name → state).
fn prometheus_alerts(addr: &str) -> Vec<(String, String)> {
    let Some((200, body)) = integration::agent_run::http_get(addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                        x["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue #19 items 3 and 4: Debian's Prometheus scrapes a running agent and
/// transfer with deploy/prometheus/alerts.yml; Kafka stopped → AgentPaused
/// fires (the WAL fills), and resolves once Kafka is back; then every query
/// of deploy/grafana's dashboards answers without error and not empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_agent_paused_during_a_kafka_outage_and_dashboards_have_data() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let fx = fixture(&stack, "[wal]\nmax_bytes = 262144\nsegment_bytes = 65536\n");
    let a = &fx.agent;
    let topic = unique("it-prometheus");
    stack.create_topic(&topic, 1).await;
    etcd_put(
        &stack,
        &a.collect_key(),
        &format!(
            r#"[{{"path":"{}/app.log","topic":"{topic}"}}]"#,
            fx.logs.display()
        ),
    )
    .await;
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    let transfer_metrics = format!("127.0.0.1:{}", integration::agent_run::free_port());
    let text = integration::transfer_run::config_text(
        &stack,
        &[&topic],
        &unique("g"),
        &transfer_metrics,
        "",
    );
    let tconfig = fx.tmp.path().join("transfer.toml");
    std::fs::write(&tconfig, text).expect("transfer.toml");
    // The binary: it serves /metrics (the in-process pipeline does not).
    let mut transfer =
        integration::transfer_run::spawn(&tconfig, &fx.tmp.path().join("transfer.log"));

    // Prometheus: 1 s scrapes and evaluations, the repository's rules.
    let prom_dir = fx.tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let rules = integration::repo_root().join("deploy/prometheus/alerts.yml");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: logagent\n    static_configs: [{{targets: [\"{}\"]}}]\n  - job_name: logtransfer\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            rules.display(),
            a.metrics,
            transfer_metrics
        ),
    )
    .expect("prometheus.yml");
    let prom = format!("127.0.0.1:{}", integration::agent_run::free_port());
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("start prometheus (Debian package prometheus)");
    let prom_log = || std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(30), || {
            integration::agent_run::http_get(&prom, "/-/ready").is_some_and(|(s, _)| s == 200)
        }),
        "prometheus ready: {}",
        prom_log()
    );

    // Lines flow, then Kafka stops while they keep coming: the WAL fills.
    let log = fx.logs.join("app.log");
    let stop_writing = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop_writing);
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !flag.load(Ordering::SeqCst) {
            append(
                &log,
                &(i..i + 50)
                    .map(|n| format!("seq {n} {}", "p".repeat(150)))
                    .collect::<Vec<_>>(),
            );
            i += 50;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack_cmd(&["stop", "kafka"]);
    let fired = wait_for(Duration::from_secs(120), || {
        prometheus_alerts(&prom)
            .iter()
            .any(|(n, s)| n == "AgentPaused" && s == "firing")
    });
    let paused = a.metric("logagent_paused");
    stop_writing.store(true, Ordering::SeqCst);
    stack_cmd(&["start", "kafka"]);
    writer.join().expect("writer");
    assert!(
        fired,
        "AgentPaused did not fire (logagent_paused {paused}): {:?}\n{}",
        prometheus_alerts(&prom),
        prom_log()
    );
    let resolved = wait_for(Duration::from_secs(180), || {
        !prometheus_alerts(&prom)
            .iter()
            .any(|(n, _)| n == "AgentPaused")
    });
    assert!(
        resolved,
        "AgentPaused still active after Kafka came back: {:?}",
        prometheus_alerts(&prom)
    );

    // Every dashboard query answers with data.
    let mut failures = Vec::new();
    for entry in
        std::fs::read_dir(integration::repo_root().join("deploy/grafana")).expect("deploy/grafana")
    {
        let p = entry.expect("entry").path();
        let d: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("dashboard")).expect("dashboard JSON");
        for panel in d["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                let r = integration::agent_run::http_get(
                    &prom,
                    &format!("/api/v1/query?query={}", url_encode(expr)),
                );
                let v: serde_json::Value = r
                    .as_ref()
                    .and_then(|(_, b)| serde_json::from_str(b).ok())
                    .unwrap_or_default();
                let n = v["data"]["result"].as_array().map_or(0, Vec::len);
                if v["status"] != "success" || n == 0 {
                    failures.push(format!("{}: {} → {:?}", p.display(), expr, r));
                }
            }
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = transfer.kill();
    let _ = transfer.wait();
    agent.terminate_ok(a);
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}",
        failures.join("\n")
    );
}

/// PostgreSQL, MariaDB and Redis stopped together for 60 s under a transfer
/// writing a topic to each (issue #20 item 4): nothing is committed past
/// what the servers confirmed, nothing is lost, and writing resumes by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_redis_servers_down_for_60_s_lose_nothing_and_resume_by_themselves() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let (t_pg, t_my, t_rd) = (unique("it-pgout"), unique("it-myout"), unique("it-rdout"));
    let (pg_table, my_table) = (t_pg.replace('-', "_"), t_my.replace('-', "_"));
    let key = format!("{t_rd}:stream");
    let all = [&t_pg, &t_my, &t_rd];
    for t in all {
        stack.create_topic(t, 4).await;
    }
    let extra = format!(
        "[postgres]\nurl = \"{}\"\n[mariadb]\nurl = \"{}\"\n[redis]\nurl = \"{}\"\n\
         [[route]]\ntopics = [\"{t_pg}\"]\nsink = \"postgres\"\ntable = \"{pg_table}\"\n\
         [[route]]\ntopics = [\"{t_my}\"]\nsink = \"mariadb\"\ntable = \"{my_table}\"\n\
         [[route]]\ntopics = [\"{t_rd}\"]\nsink = \"redis\"\nkey = \"{key}\"\n",
        stack.postgres_url(),
        stack.mariadb_url(),
        stack.redis_url()
    );
    let group = unique("g");
    let running = start(config(&stack, &all.map(String::as_str), &group, &extra));
    let counts = || {
        [
            stack.rows("postgres", &pg_table),
            stack.rows("mariadb", &my_table),
            stack.redis_len(&key),
        ]
    };
    let wait_rows = |n: u64, limit: Duration| wait_for(limit, || counts().iter().all(|c| *c >= n));
    for t in all {
        for p in 0..4 {
            stack
                .produce(t, p, &lines(p as u64 * 1000, p as u64 * 1000 + 500))
                .await;
        }
    }
    assert!(
        wait_rows(2000, Duration::from_secs(60)),
        "the first 2,000 each: {:?}",
        counts()
    );

    for s in ["postgres", "mariadb", "redis"] {
        stack_cmd(&["stop", s]);
    }
    for t in all {
        for p in 0..4 {
            stack
                .produce(t, p, &lines(p as u64 * 1000 + 500, p as u64 * 1000 + 1000))
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = all.map(|t| committed(&stack, &group, t));
    tokio::time::sleep(Duration::from_secs(55)).await;
    let end = all.map(|t| committed(&stack, &group, t));
    assert_eq!(during, end, "nothing committed while the servers were down");
    assert!(
        during.iter().flatten().all(|o| *o <= 500),
        "commits stay at what was written: {during:?}"
    );

    for s in ["postgres", "mariadb", "redis"] {
        stack_cmd(&["start", s]);
    }
    let resumed = wait_rows(4000, Duration::from_secs(120));
    // Per-sink metrics: each sink's writes timed, and its failed ones counted.
    for s in ["postgres", "mariadb", "redis"] {
        let sink = format!("sink=\"{s}\"");
        let failures = running.metric_sum("logtransfer_sink_write_failures_total", &sink);
        let writes = running.metric_sum("logtransfer_bulk_seconds_count", &sink);
        assert!(
            failures >= 1.0 && writes >= 1.0,
            "{s}: failures {failures}, writes {writes}"
        );
    }
    running.stop().await;
    assert!(resumed, "all of it after the outage: {:?}", counts());
    assert_eq!(
        counts(),
        [4000; 3],
        "each message once (postgres, mariadb, redis)"
    );
    for t in all {
        assert_eq!(committed(&stack, &group, t), vec![1000; 4], "{t}");
    }
}
