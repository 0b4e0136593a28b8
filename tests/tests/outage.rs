//! Outages of shared services: Elasticsearch stopped for 60 s in the middle
//! of a transfer (issue #6, test 3), and etcd restarted under logagent's
//! collect-entry watcher. Its own test binary: these stop services the other
//! integration tests use (cargo runs test binaries one after another), and
//! they take a lock so they run one at a time here too.

use integration::transfer_run::{config, start};
use integration::{repo_root, unique, Stack};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::process::Command;
use std::time::Duration;

/// The tests here stop shared services: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stack_cmd(args: &[&str]) {
    let status = Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .status()
        .expect("run scripts/stack");
    assert!(status.success(), "scripts/stack {args:?} failed");
}

/// The group's committed offsets for partitions 0..4 of `topic`.
fn committed(stack: &Stack, group: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..4)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
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
        },
        tx,
    ));
    let applied = |ev: ConfigEvent| match ev {
        ConfigEvent::Applied(e) => Some(e.iter().map(|c| c.path.clone()).collect::<Vec<_>>()),
        _ => None,
    };
    let first = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("first event")
        .and_then(applied);
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
