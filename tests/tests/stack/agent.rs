//! logagent against the real Kafka and etcd (issue #5, tests 1, 2, 4 and 6;
//! the outage tests 3 and 5 are in `tests/outage.rs`).

use etcd_client::Client;
use integration::agent_run::{append_lines as append, etcd_put, fixture};
use integration::kafka_read::{read_topic, tally_numbered};
use integration::{unique, Stack};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

async fn etcd_delete(stack: &Stack, key: &str) {
    let mut c = Client::connect(&stack.etcd_endpoints, None)
        .await
        .expect("etcd");
    c.delete(key, None).await.expect("delete");
}

/// Test 1: two globbed files, two topics, every event field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_two_globbed_files_reach_their_topics() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    std::fs::create_dir_all(logs.join("web")).unwrap();
    std::fs::create_dir_all(logs.join("app/svc")).unwrap();
    let web = unique("it-agent-web");
    let app = unique("it-agent-app");
    stack.create_topic(&web, 1).await;
    stack.create_topic(&app, 3).await;
    let entries = format!(
        r#"[{{"path":"{l}/web/*.log","topic":"{web}"}},
            {{"path":"{l}/app/**/*.log","topic":"{app}","json":true,"fields":{{"env":"test"}}}}]"#,
        l = logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let web_lines: Vec<String> = (0..500).map(|i| format!("GET /page/{i} 200")).collect();
    let app_lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"level":"info","n":{i}}}"#))
        .collect();
    append(&logs.join("web/access.log"), &web_lines[..250]);
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    append(&logs.join("web/access.log"), &web_lines[250..]);
    append(&logs.join("app/svc/app.log"), &app_lines);

    let brokers = stack.kafka_brokers.clone();
    let (w, p) = (web.clone(), app.clone());
    let got_web =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &w, 500, Duration::from_secs(60)))
            .await
            .unwrap();
    let brokers = stack.kafka_brokers.clone();
    let got_app =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &p, 300, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(got_web.len(), 500, "{}", a.log_text());
    assert_eq!(got_app.len(), 300, "{}", a.log_text());
    let msgs: Vec<&str> = got_web
        .iter()
        .map(|m| m.value["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        web_lines.iter().map(String::as_str).collect::<Vec<_>>(),
        "one partition keeps file order"
    );
    let ev = &got_web[0].value;
    assert!(!ev["host"]["name"].as_str().unwrap().is_empty());
    assert_eq!(ev["host"]["ip"], "127.0.0.1");
    assert_eq!(ev["agent"]["id"], a.host_id.as_str());
    assert_eq!(ev["agent"]["type"], "logagent");
    assert_eq!(
        ev["log"]["file"]["path"],
        logs.join("web/access.log").display().to_string()
    );
    assert_eq!(ev["log"]["offset"], 0);
    assert_eq!(
        got_web[1].value["log"]["offset"],
        web_lines[0].len() as u64 + 1
    );
    let ts = ev["@timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z'),
        "RFC 3339 with ms: {ts}"
    );
    let h = &got_web[0].headers;
    assert_eq!(h["logpipe-host"], a.host_id);
    assert_eq!(h["logpipe-offset"], "0");
    assert!(h.contains_key("logpipe-file"));
    // The app entry: JSON parsed under `json`, static fields, keyed by file.
    let mut ns: Vec<i64> = got_app
        .iter()
        .map(|m| m.value["json"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..300).collect::<Vec<_>>());
    assert!(got_app.iter().all(|m| m.value["fields"]["env"] == "test"));
    let parts: HashSet<i32> = got_app.iter().map(|m| m.partition).collect();
    assert_eq!(
        parts.len(),
        1,
        "by_file keys keep one file in one partition"
    );
    agent.terminate_ok(a);
}

/// Test 2: hot reload from etcd — add, remove, malformed, outside the roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_changes_apply_without_a_restart() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let t1 = unique("it-reload-a");
    let t2 = unique("it-reload-b");
    stack.create_topic(&t1, 1).await;
    stack.create_topic(&t2, 1).await;
    let key = a.collect_key();
    let first = format!(r#"[{{"path":"{}/a.log","topic":"{t1}"}}]"#, logs.display());
    etcd_put(&stack, &key, &first).await;
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    append(&logs.join("a.log"), &["a-1".to_string()]);
    append(&logs.join("b.log"), &["b-1".to_string(), "b-2".to_string()]);

    // Add b.log: its lines arrive within 2 s of the put.
    let both = format!(
        r#"[{{"path":"{l}/a.log","topic":"{t1}"}},{{"path":"{l}/b.log","topic":"{t2}"}}]"#,
        l = logs.display()
    );
    let put_at = Instant::now();
    etcd_put(&stack, &key, &both).await;
    let brokers = stack.kafka_brokers.clone();
    let tb = t2.clone();
    let got = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let got = read_topic(&brokers, &tb, 2, Duration::from_millis(300));
            if got.len() >= 2 || start.elapsed() > Duration::from_secs(30) {
                return got;
            }
        }
    })
    .await
    .unwrap();
    let took = put_at.elapsed();
    assert_eq!(got.len(), 2, "{}", a.log_text());
    println!("new entry's lines in Kafka {took:?} after the put");
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(2300),
        "took {took:?} (read_topic settles for 2 s)"
    );

    // Remove it: b.log's new lines stop.
    etcd_put(&stack, &key, &first).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    append(&logs.join("b.log"), &["b-3".to_string()]);
    append(&logs.join("a.log"), &["a-2".to_string()]);

    // Malformed JSON and a path outside allowed_roots are refused; a.log
    // keeps being collected.
    let rejected_before = a.metric("logagent_config_rejections_total");
    etcd_put(&stack, &key, "[{not json").await;
    etcd_put(&stack, &key, r#"[{"path":"/etc/passwd","topic":"stolen"}]"#).await;
    let start = Instant::now();
    while a.metric("logagent_config_rejections_total") < rejected_before + 2.0
        && start.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        a.metric("logagent_config_rejections_total"),
        rejected_before + 2.0,
        "{}",
        a.log_text()
    );
    append(&logs.join("a.log"), &["a-3".to_string()]);
    let brokers = stack.kafka_brokers.clone();
    let ta = t1.clone();
    let got_a =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &ta, 3, Duration::from_secs(30)))
            .await
            .unwrap();
    let a_msgs: Vec<String> = got_a
        .iter()
        .map(|m| m.value["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(a_msgs, ["a-1", "a-2", "a-3"], "{}", a.log_text());
    let brokers = stack.kafka_brokers.clone();
    let got_b =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &t2, 2, Duration::from_secs(5)))
            .await
            .unwrap();
    assert_eq!(
        got_b.len(),
        2,
        "b-3 was written after b.log's entry was removed"
    );
    let log = a.log_text();
    assert!(log.contains(&key) && log.contains("allowed_roots"), "{log}");
    assert!(!log.contains("stolen\" harvesting"));
    etcd_delete(&stack, &key).await;
    agent.terminate_ok(a);
}

/// Test 4: kill -9 at random moments while a writer appends numbered lines
/// and rotates by rename. Every line arrives; duplicates are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_and_rotation_loses_nothing() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-agent-kill");
    stack.create_topic(&topic, 2).await;
    let entries = format!(
        r#"[{{"path":"{}/app.log*","topic":"{topic}"}}]"#,
        logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;

    const N: u64 = 30_000;
    let path = logs.join("app.log");
    let writer = std::thread::spawn(move || {
        // ~3000 lines/s; rotation by rename every 4000 lines.
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..N {
            writeln!(f, "seq {i} {}", "x".repeat(60)).unwrap();
            if i % 4000 == 3999 {
                drop(f);
                std::fs::rename(&path, path.with_extension(format!("log.{}", i / 4000))).unwrap();
                f = std::fs::File::create(&path).unwrap();
            }
            if i % 30 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut agent = a.start();
    let mut kills = 0;
    while !writer.is_finished() || kills < 10 {
        let wait = rng.random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.kill9();
        kills += 1;
        agent = a.start();
    }
    writer.join().unwrap();
    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let tally = tokio::task::spawn_blocking(move || {
        tally_numbered(&brokers, &t, N, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let lost = &tally.lost;
    println!(
        "kill -9 ×{kills}: written={N} in_kafka={} lost={} duplicated={}",
        tally.in_kafka,
        lost.len(),
        tally.duplicated
    );
    for l in a.log_text().lines().filter(|l| l.contains("read back")) {
        println!("  {l}");
    }
    assert!(
        lost.is_empty(),
        "lost {} lines, first {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        a.log_text()
    );
    agent.terminate_ok(a);
}

/// Test 6: a 5 MB line, invalid UTF-8, NUL bytes and CRLF lines are shipped
/// as documented, and the file keeps flowing after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_lines_are_shipped_without_stalling() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-agent-odd");
    stack.create_topic(&topic, 1).await;
    let entries = format!(
        r#"[{{"path":"{}/odd.log","topic":"{topic}"}}]"#,
        logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let mut data = Vec::new();
    data.extend_from_slice(b"first\n");
    data.extend(std::iter::repeat_n(b'L', 5 << 20));
    data.push(b'\n');
    data.extend_from_slice(b"bad \xff\xfe utf8\n");
    data.extend_from_slice(b"nul \0 byte\n");
    data.extend_from_slice(b"crlf line\r\n");
    data.extend_from_slice(b"last\n");
    std::fs::write(logs.join("odd.log"), &data).unwrap();
    let mut agent = a.start();
    let brokers = stack.kafka_brokers.clone();
    let got = tokio::task::spawn_blocking(move || {
        read_topic(&brokers, &topic, 6, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 6, "{}", a.log_text());
    let msg = |i: usize| got[i].value["message"].as_str().unwrap().to_string();
    let flags = |i: usize| got[i].value["log"]["flags"].clone();
    assert_eq!(msg(0), "first");
    let long = msg(1);
    assert!(
        long.len() > 900_000 && long.len() <= 1 << 20,
        "{}",
        long.len()
    );
    assert!(long.bytes().all(|b| b == b'L'));
    assert_eq!(flags(1), serde_json::json!(["truncated"]));
    assert!(got[1].raw.len() <= 1_000_000);
    assert_eq!(msg(2), "bad \u{fffd}\u{fffd} utf8");
    assert_eq!(flags(2), serde_json::json!(["invalid_utf8"]));
    assert_eq!(msg(3), "nul \0 byte");
    assert_eq!(msg(4), "crlf line");
    assert_eq!(msg(5), "last");
    assert_eq!(got[5].value["log"]["offset"], (data.len() - 5) as u64);
    agent.terminate_ok(a);
}

/// Issue #17: with default settings (`by_file`) the files of a host spread
/// evenly over the topic's partitions (before: `host:path` keys hashed by
/// librdkafka put all 4 files of the benchmark in partition 0), each file
/// in one partition in file order, and a file keeps its partition after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_spread_over_partitions_and_keep_them_after_a_restart() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-agent-spread");
    stack.create_topic(&topic, 4).await;
    let entries = format!(
        r#"[{{"path":"{}/spread/*.log","topic":"{topic}"}}]"#,
        logs.display()
    );
    std::fs::create_dir_all(logs.join("spread")).unwrap();
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let line = |f: usize, i: usize| format!("file {f} line {i}");
    for f in 0..4 {
        let lines: Vec<String> = (0..100).map(|i| line(f, i)).collect();
        append(&logs.join(format!("spread/f{f}.log")), &lines);
    }
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    let read = |want: usize| {
        let (brokers, t) = (stack.kafka_brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || read_topic(&brokers, &t, want, Duration::from_secs(60)))
    };
    let first = read(400).await.unwrap();
    assert_eq!(first.len(), 400, "{}", a.log_text());
    agent.terminate_ok(a);
    // The file of each message, from its `log.file.path`.
    let file_of = |m: &integration::kafka_read::Msg| {
        let p = m.value["log"]["file"]["path"].as_str().unwrap().to_string();
        p.rsplit('/').next().unwrap().to_string()
    };
    let mut partition_of = std::collections::HashMap::new();
    for m in &first {
        let p = *partition_of.entry(file_of(m)).or_insert(m.partition);
        assert_eq!(p, m.partition, "one file, one partition");
    }
    let used: HashSet<i32> = partition_of.values().copied().collect();
    assert_eq!(used.len(), 4, "4 files in 4 partitions: {partition_of:?}");
    for f in 0..4 {
        let msgs: Vec<&str> = first
            .iter()
            .filter(|m| file_of(m) == format!("f{f}.log"))
            .map(|m| m.value["message"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..100).map(|i| line(f, i)).collect();
        assert_eq!(msgs, want, "file order within its partition");
    }

    // After a restart, new lines of each file go to the same partition.
    for f in 0..4 {
        let lines: Vec<String> = (100..150).map(|i| line(f, i)).collect();
        append(&logs.join(format!("spread/f{f}.log")), &lines);
    }
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    let all = read(600).await.unwrap();
    assert_eq!(all.len(), 600, "{}", a.log_text());
    for m in &all {
        assert_eq!(partition_of[&file_of(m)], m.partition, "{}", file_of(m));
    }
    agent.terminate_ok(a);
}
