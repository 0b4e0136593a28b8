//! logtransfer against the real Kafka and Elasticsearch (issue #6, tests 1,
//! 2, 4, 5; the Elasticsearch outage is in `tests/outage.rs`).

use integration::transfer_run::{config, spawn, start, tail};
use integration::{unique, Stack};
use rand::Rng;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn event(seq: u64) -> String {
    json!({
        "@timestamp": "2026-11-21T04:33:32.123Z",
        "message": format!("GET /item/{seq} 200"),
        "seq": seq,
        "host": {"name": "web-1", "id": "10.0.0.5-web-1"},
        "log": {"file": {"path": "/var/log/nginx/access.log", "device": 1, "inode": 2, "fingerprint": "ab"}, "offset": seq * 100},
        "agent": {"type": "logagent", "version": "0.1.0"}
    })
    .to_string()
}

/// Produces `n` events round-robin over `partitions`; returns (partition,
/// offset, seq) of each.
async fn produce_events(
    stack: &Stack,
    topic: &str,
    partitions: i32,
    n: u64,
) -> Vec<(i32, i64, u64)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let seqs: Vec<u64> = (0..n)
            .filter(|s| (*s % partitions as u64) as i32 == p)
            .collect();
        let values: Vec<String> = seqs.iter().map(|s| event(*s)).collect();
        let offsets = stack.produce(topic, p, &values).await;
        out.extend(offsets.into_iter().zip(seqs).map(|(o, s)| (p, o, s)));
    }
    out
}

fn main_indices(topic: &str) -> String {
    format!("{topic}-*,-*-deadletter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_four_partitions_are_searchable_with_id_index_and_mapping() {
    let stack = Stack::from_env();
    let topic = unique("it-transfer");
    stack.create_topic(&topic, 4).await;
    let produced = produce_events(&stack, &topic, 4, 400).await;

    let running = start(config(&stack, &[&topic], &unique("g"), ""));
    let got = stack
        .wait_count(&main_indices(&topic), 400, Duration::from_secs(120))
        .await;
    running.stop().await;
    assert_eq!(got, 400);

    let es = stack.es();
    let index = format!("{topic}-2026.11.21");
    let (p, o, seq) = produced[123];
    let id = format!("{topic}-{p}-{o}");
    let doc: Value = es
        .get(elasticsearch::GetParts::IndexId(&index, &id))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("get body");
    assert_eq!(doc["found"], true, "{doc}");
    assert_eq!(doc["_source"]["seq"], seq);

    let mapping: Value = es
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            &index,
        ]))
        .send()
        .await
        .expect("mapping")
        .json()
        .await
        .expect("mapping body");
    let props = &mapping[&index]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date");
    assert_eq!(props["message"]["type"], "text");
    assert_eq!(props["host"]["properties"]["name"]["type"], "keyword");
    assert_eq!(props["log"]["properties"]["offset"]["type"], "long");
    assert_eq!(
        props["log"]["properties"]["file"]["properties"]["path"]["type"],
        "keyword"
    );
    // Unknown strings: text with a keyword sub-field (Kibana aggregates on it).
    assert_eq!(props["agent"]["properties"]["type"]["type"], "keyword");

    // A search finds a line by its words.
    let found = stack
        .search(
            &index,
            json!({"query": {"match": {"message": format!("/item/{seq}")}}}),
        )
        .await;
    assert!(
        found["hits"]["total"]["value"].as_u64().unwrap_or(0) >= 1,
        "{found}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_is_dead_lettered_and_the_partition_moves_on() {
    let stack = Stack::from_env();
    let topic = unique("it-deadletter");
    stack.create_topic(&topic, 1).await;
    let values = vec![
        event(0),
        // log.offset is a long in the template: this cannot be indexed.
        json!({"@timestamp": "2026-11-21T04:33:32Z", "message": "bad", "seq": 1, "log": {"offset": "not-a-number"}}).to_string(),
        event(2),
        "a plain text line, not JSON".to_string(),
    ];
    let offsets = stack.produce(&topic, 0, &values).await;

    let running = start(config(&stack, &[&topic], &unique("g"), ""));
    let main = stack
        .wait_count(&main_indices(&topic), 3, Duration::from_secs(120))
        .await;
    let dead = stack
        .wait_count(&format!("{topic}-*-deadletter"), 1, Duration::from_secs(60))
        .await;
    let dead_lettered = running
        .metrics
        .encode()
        .lines()
        .any(|l| l.starts_with("logtransfer_dead_lettered_total 1"));
    running.stop().await;
    assert_eq!((main, dead), (3, 1));
    assert!(dead_lettered, "the dead letter is counted in the metrics");

    let dl = stack
        .get_doc(
            &format!("{topic}-2026.11.21-deadletter"),
            &format!("{topic}-0-{}", offsets[1]),
        )
        .await;
    assert_eq!(dl["found"], true, "{dl}");
    assert_eq!(dl["_source"]["error"]["status"], 400);
    assert!(dl["_source"]["original"]
        .as_str()
        .unwrap_or("")
        .contains("not-a-number"));
    assert_eq!(dl["_source"]["kafka"]["offset"], offsets[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_split_partitions_and_index_everything_once() {
    let stack = Stack::from_env();
    let topic = unique("it-group");
    stack.create_topic(&topic, 4).await;
    let group = unique("g");
    let a = start(config(&stack, &[&topic], &group, ""));
    let b = start(config(&stack, &[&topic], &group, ""));
    // Let both join before the data arrives, so both get partitions.
    tokio::time::sleep(Duration::from_secs(8)).await;
    produce_events(&stack, &topic, 4, 2000).await;
    let got = stack
        .wait_count(&main_indices(&topic), 2000, Duration::from_secs(120))
        .await;
    let (wa, wb) = (a.docs_written(), b.docs_written());
    a.stop().await;
    b.stop().await;
    assert_eq!(got, 2000);
    assert!(wa > 0 && wb > 0, "both instances wrote: {wa} and {wb}");
    assert_eq!(wa + wb, 2000, "each message written once: {wa} + {wb}");
    let seqs = stack.all_values(&main_indices(&topic), "seq").await;
    assert_eq!(seqs, (0..2000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    const N: u64 = 100_000;
    const KILLS: usize = 10;
    let stack = Stack::from_env();
    let topic = unique("it-kill9");
    stack.create_topic(&topic, 4).await;
    produce_events(&stack, &topic, 4, N).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("transfer.toml");
    let group = unique("g");
    // Static membership: a restarted instance takes its partitions back at
    // once instead of waiting for the killed one's session to time out.
    let text = format!(
        r#"
[kafka]
brokers = "{}"
group_id = "{group}"
topics = ["{topic}"]
[kafka.consumer]
"group.instance.id" = "kill9-instance"
"session.timeout.ms" = "6000"
[elasticsearch]
url = "{}"
[bulk]
max_docs = 1000
flush_interval_ms = 100
[metrics]
listen = "127.0.0.1:0"
"#,
        stack.kafka_brokers, stack.es_url
    );
    std::fs::write(&cfg_path, text).expect("write config");

    let log = dir.path().join("transfer.log");
    let mut rng = rand::rng();
    let mut child = spawn(&cfg_path, &log);
    let mut counts_at_kills = Vec::new();
    for _ in 0..KILLS {
        let wait = rng.random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
        let _ = child.wait();
        counts_at_kills.push(stack.es_count(&main_indices(&topic)).await);
        child = spawn(&cfg_path, &log);
    }
    eprintln!("documents indexed at each kill: {counts_at_kills:?}");
    let mid_stream = counts_at_kills.iter().filter(|c| **c < N).count();
    assert!(
        mid_stream >= KILLS / 2,
        "kills must hit a running transfer: {counts_at_kills:?}"
    );
    let got = stack
        .wait_count(&main_indices(&topic), N, Duration::from_secs(240))
        .await;
    // Let it settle, then make sure nothing more arrives (no duplicates).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = stack.es_count(&main_indices(&topic)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(got, N, "logtransfer's log:\n{}", tail(&log));
    assert_eq!(settled, N);
    let seqs = stack.all_values(&main_indices(&topic), "seq").await;
    assert_eq!(seqs.len() as u64, N);
    assert!(
        seqs.iter().copied().eq(0..N as i64),
        "every message exactly once"
    );
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

/// Issue #13 item 5: after a kill -9 and a restart with the same config, a
/// new message is searchable within seconds — static membership (the
/// default `group_instance_id = "auto"`) gives the restarted instance its
/// partitions back at once; before, it waited for the killed member's
/// session to time out (45 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_takes_its_partitions_back_at_once() {
    let stack = Stack::from_env();
    let topic = unique("it-failover");
    stack.create_topic(&topic, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("transfer.toml");
    let port = integration::agent_run::free_port();
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ntopics = [\"{topic}\"]\n[elasticsearch]\nurl = \"{}\"\n[bulk]\nflush_interval_ms = 100\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        stack.kafka_brokers,
        unique("g"),
        stack.es_url
    );
    std::fs::write(&cfg_path, text).expect("write config");
    let log = dir.path().join("transfer.log");
    let idx = main_indices(&topic);
    let mut child = spawn(&cfg_path, &log);
    for p in 0..2 {
        stack
            .produce(&topic, p, &[format!(r#"{{"seq":{p}}}"#)])
            .await;
    }
    assert_eq!(
        stack.wait_count(&idx, 2, Duration::from_secs(60)).await,
        2,
        "{}",
        tail(&log)
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let mut child = spawn(&cfg_path, &log);
    let start = std::time::Instant::now();
    for p in 0..2 {
        stack
            .produce(&topic, p, &[format!(r#"{{"seq":{}}}"#, p + 2)])
            .await;
    }
    let got = stack.wait_count(&idx, 4, Duration::from_secs(90)).await;
    let took = start.elapsed();
    eprintln!("failover: restart → both partitions' new messages searchable in {took:?}");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    assert_eq!(got, 4, "{}", tail(&log));
    assert!(
        took <= Duration::from_secs(20),
        "took {took:?}, the session timeout's wait (45 s) is what static membership avoids\n{}",
        tail(&log)
    );
}
