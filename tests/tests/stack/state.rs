//! What an agent publishes about itself at `<prefix>/agents/<host_id>`
//! (issue #15 item 1), against the real agent and etcd.

use common::agent_state::AgentState;
use integration::agent_run::{append_lines as append, etcd_put, fixture};
use integration::{unique, Stack};
use std::time::{Duration, Instant};

async fn state(stack: &Stack, key: &str) -> Option<AgentState> {
    let mut c = etcd_client::Client::connect(&stack.etcd_endpoints, None)
        .await
        .ok()?;
    let r = c.get(key, None).await.ok()?;
    serde_json::from_slice(r.kvs().first()?.value()).ok()
}

async fn put_rev(stack: &Stack, key: &str, value: &str) -> i64 {
    let mut c = etcd_client::Client::connect(&stack.etcd_endpoints, None)
        .await
        .expect("etcd");
    c.put(key, value, None)
        .await
        .expect("put")
        .header()
        .map_or(0, |h| h.revision())
}

/// Waits until the published state satisfies `f`, for at most `limit`.
async fn wait_state(
    stack: &Stack,
    key: &str,
    limit: Duration,
    f: impl Fn(&AgentState) -> bool,
) -> Option<AgentState> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        last = state(stack, key).await;
        if last.as_ref().is_some_and(&f) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    last
}

/// The revision of a good value is reported applied; a refused one is
/// reported with its reason while the applied revision stays; files and the
/// WAL are reported; the key goes once the agent is killed -9 (lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_revisions_files_and_wal_and_vanishes_when_killed() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-state");
    stack.create_topic(&topic, 1).await;
    let good = format!(
        r#"[{{"path":"{}/*.log","topic":"{topic}"}}]"#,
        logs.display()
    );
    let rev = put_rev(&stack, &a.collect_key(), &good).await;
    append(
        &logs.join("app.log"),
        &["seq 0 state".into(), "seq 1 state".into()],
    );
    let mut agent = a.start();
    let key = format!("{}/agents/{}", a.prefix, a.host_id);
    let ck = a.collect_key();
    let st = wait_state(&stack, &key, Duration::from_secs(30), |s| {
        s.collect
            .get(&ck)
            .is_some_and(|k| k.applied_revision == rev)
            && s.files.total == 1
            && s.files
                .shown
                .first()
                .is_some_and(|f| f.acked_offset == f.size)
    })
    .await;
    let st = st.unwrap_or_else(|| panic!("no state\n{}", a.log_text()));
    // The same state on /metrics (issue #19 item 1): one unit a metric,
    // build info, process metrics, capacity, ack time, per-file lag.
    let (_, text) = a.http_get("/metrics").expect("/metrics");
    let has = |prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    for m in [
        "logagent_build_info{version=\"",
        "logagent_wal_recovery_truncated_bytes_total ",
        "logagent_wal_recovery_records_total{kind=\"replayed\"} ",
        "logagent_wal_recovery_segments_set_aside_total ",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "logagent_host_cpu_seconds_total{mode=\"idle\"} ",
        "logagent_host_load1 ",
        "logagent_host_memory_available_bytes ",
        "logagent_host_filesystem_avail_bytes{fs=\"data_dir\",path=\"",
        "logagent_host_filesystem_size_bytes{fs=\"root\",path=\"",
        "logagent_host_network_receive_bytes_total{device=\"lo\"} ",
    ] {
        assert!(has(m), "{m} on /metrics:\n{text}");
    }
    assert!(
        !has("logagent_wal_recovery_total"),
        "the mixed-unit metric is gone"
    );
    assert!(a.metric("logagent_wal_max_bytes") > 0.0);
    assert!(a.metric("process_resident_memory_bytes") > 1e6);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let acked_at = a.metric("logagent_last_ack_timestamp_seconds");
    assert!(
        (now - acked_at).abs() < 120.0,
        "last ack {acked_at}, now {now}"
    );
    let path = logs.join("app.log").display().to_string();
    assert!(
        integration::agent_run::wait_for(Duration::from_secs(15), || a
            .http_get("/metrics")
            .is_some_and(|(_, t)| t.contains(&format!(
                "logagent_file_unshipped_bytes{{path=\"{path}\"}} 0"
            )))),
        "the file's unshipped bytes on /metrics"
    );
    assert_eq!(a.metric("logagent_wal_oldest_unacked_age_seconds"), 0.0);
    assert_eq!(st.schema, common::agent_state::SCHEMA);
    assert!(st.collect[&ck].applied_revision == rev, "{st:?}");
    assert_eq!(st.files.shown[0].size, 24, "{st:?}");
    assert_eq!(st.allowed_roots, vec![logs.display().to_string()]);
    assert!(
        !st.paused && st.etcd_connected && st.kafka == "ok",
        "{st:?}"
    );
    assert!(st.wal.max_bytes > 0);

    // Refused: reported with its reason, the applied revision stays.
    let bad = put_rev(
        &stack,
        &a.collect_key(),
        r#"[{"path":"/etc/shadow","topic":"t"}]"#,
    )
    .await;
    let st = wait_state(&stack, &key, Duration::from_secs(20), |s| {
        s.collect.get(&ck).is_some_and(|k| k.revision == bad)
    })
    .await
    .expect("state");
    let k = &st.collect[&ck];
    assert_eq!(k.applied_revision, rev, "{k:?}");
    assert!(
        k.error
            .as_deref()
            .is_some_and(|e| e.contains("allowed_roots")),
        "{k:?}"
    );
    etcd_put(&stack, &a.collect_key(), &good).await;

    agent.kill9();
    let gone = Instant::now();
    while state(&stack, &key).await.is_some() && gone.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = gone.elapsed();
    assert!(
        state(&stack, &key).await.is_none(),
        "still registered after {after:?}"
    );
    assert!(
        after <= Duration::from_secs(15),
        "gone after {after:?} (lease TTL 10 s)"
    );
}

/// `[host_metrics] topic` (issue #19 item 2): the host's metrics reach
/// Kafka and Elasticsearch as events of the host, numbers mapped as double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_are_shipped_as_events_when_asked() {
    let stack = Stack::from_env();
    let topic = unique("it-hostm");
    stack.create_topic(&topic, 1).await;
    let fx = fixture(
        &stack,
        &format!("[host_metrics]\ntopic = \"{topic}\"\ninterval_secs = 1\n"),
    );
    let mut agent = fx.agent.start();
    // Samples keep coming: read in short rounds until three are there.
    let start = Instant::now();
    let msgs = loop {
        let m = integration::kafka_read::read_topic(
            &stack.kafka_brokers,
            &topic,
            3,
            Duration::from_secs(3),
        );
        if m.len() >= 3 || start.elapsed() > Duration::from_secs(60) {
            break m;
        }
    };
    assert!(
        msgs.len() >= 3,
        "{} samples in 60 s: {}",
        msgs.len(),
        fx.agent.log_text()
    );
    let v = &msgs[2].value;
    assert_eq!(v["host"]["id"], fx.agent.host_id.as_str());
    let m = &v["host_metrics"];
    assert!(
        m["memory_total_bytes"].as_u64().is_some_and(|b| b > 0),
        "{v}"
    );
    assert!(
        m["cpu_busy_ratio"]
            .as_f64()
            .is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{v}"
    );
    assert!(
        m["filesystems"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["fs"] == "data_dir")),
        "{v}"
    );
    assert!(
        m["network"]
            .as_array()
            .is_some_and(|n| n.iter().any(|d| d["device"] == "lo")),
        "{v}"
    );
    let transfer = integration::transfer_run::start(integration::transfer_run::config(
        &stack,
        &[&topic],
        &unique("g"),
        "",
    ));
    let docs = format!("{topic}-*");
    assert!(stack.wait_count(&docs, 3, Duration::from_secs(60)).await >= 3);
    let mapping: serde_json::Value = stack
        .es()
        .indices()
        .get_field_mapping(
            elasticsearch::indices::IndicesGetFieldMappingParts::IndexFields(
                &[&docs],
                &["host_metrics.load1", "host_metrics.memory_total_bytes"],
            ),
        )
        .send()
        .await
        .expect("field mapping")
        .json()
        .await
        .expect("json");
    let text = mapping.to_string();
    assert!(
        text.contains("\"type\":\"double\"") && !text.contains("\"type\":\"long\""),
        "{text}"
    );
    transfer.stop().await;
    agent.terminate_ok(&fx.agent);
}
