//! logtransfer at production edges (issue #13 items 1, 2, 3, 6), against the
//! real Kafka and Elasticsearch. Each test is named after its item.

use elasticsearch::indices::{IndicesCreateParts, IndicesPutSettingsParts};
use integration::transfer_run::{config_text, start};
use integration::{unique, wait_until, Stack};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use transfer::config::TransferConfig;

fn event(seq: u64, message: &str) -> String {
    json!({"@timestamp": "2026-11-21T04:33:32.123Z", "message": message, "seq": seq}).to_string()
}

fn events(seqs: std::ops::Range<u64>) -> Vec<String> {
    seqs.map(|s| event(s, &format!("line {s}"))).collect()
}

/// The test config, with `replace` (pairs of old, new) applied to its TOML.
fn cfg(
    stack: &Stack,
    topics: &[&str],
    group: &str,
    extra: &str,
    replace: &[(&str, &str)],
) -> TransferConfig {
    let mut text = config_text(stack, topics, group, "127.0.0.1:0", extra);
    for (old, new) in replace {
        assert!(text.contains(old), "`{old}` is in the test config");
        text = text.replace(old, new);
    }
    let path = Path::new("test-transfer.toml");
    let cfg: TransferConfig =
        common::config::parse_config(path, &text, |_| None).expect("test config parses");
    cfg.validate(path).expect("test config is valid");
    cfg
}

fn main_indices(topic: &str) -> String {
    format!("{topic}-*,-*-deadletter")
}

fn dead_indices(topic: &str) -> String {
    format!("{topic}-*-deadletter")
}

fn admin(stack: &Stack) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()
        .expect("admin client")
}

/// Deletes `topic` and creates it again (empty, offsets from 0): a new
/// incarnation under the same name.
async fn recreate_topic(stack: &Stack, topic: &str) {
    let admin = admin(stack);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[topic], &opts).await.expect("delete") {
        r.expect("topic deleted");
    }
    let start = Instant::now();
    loop {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        let res = admin.create_topics(&[new], &opts).await.expect("create");
        match res.into_iter().next() {
            Some(Ok(_)) => return,
            // The deletion is still under way.
            Some(Err((_, e))) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("recreating {topic}: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("recreating {topic}: {other:?}"),
        }
    }
}

/// Issue #13 item 1: `_id = topic-partition-offset` collided across topic
/// incarnations; the 409 counted as written and the new message was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_1_a_recreated_topic_reuses_offsets_and_loses_nothing() {
    let stack = Stack::from_env();
    let topic = unique("it-recreate");
    let group = unique("g");
    stack.create_topic(&topic, 1).await;
    let first = stack.produce(&topic, 0, &events(0..10)).await;
    let running = start(cfg(&stack, &[&topic], &group, "", &[]));
    let got = stack
        .wait_count(&main_indices(&topic), 10, Duration::from_secs(120))
        .await;
    running.stop().await;
    assert_eq!(got, 10);

    recreate_topic(&stack, &topic).await;
    let second = stack.produce(&topic, 0, &events(10..20)).await;
    assert_eq!(first, second, "the new incarnation reuses the offsets");
    // A new group: the old one's offsets may outlive the topic.
    let running = start(cfg(&stack, &[&topic], &unique("g"), "", &[]));
    let got = stack
        .wait_count(&main_indices(&topic), 20, Duration::from_secs(60))
        .await;
    let distinct = running
        .metrics
        .encode()
        .lines()
        .any(|l| l.starts_with("logtransfer_distinct_ids_total 10"));
    running.stop().await;
    assert_eq!(got, 20, "10 + 10 messages at the same offsets");
    assert!(distinct, "10 documents written under distinct ids");

    // Replays stay idempotent: consuming the new incarnation again (another
    // group) makes no document.
    let again = start(cfg(&stack, &[&topic], &unique("g"), "", &[]));
    let replayed = wait_until(Duration::from_secs(60), || again.docs_written() >= 10).await;
    again.stop().await;
    assert!(replayed, "the replay ran");
    assert_eq!(stack.es_count(&main_indices(&topic)).await, 20);
    let seqs = stack.all_values(&main_indices(&topic), "seq").await;
    assert_eq!(seqs, (0..20).collect::<Vec<i64>>());
}

/// Issue #13 item 2: a topic whose index (and so its dead-letter index) is
/// illegal looped on "dead letter refused; retrying" without end, silently,
/// and SIGTERM waited the whole grace. Now the partition stops, `/health`
/// names it, other topics flow, and a stop does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_2_a_refused_dead_letter_stops_its_partition_loudly_and_briefly() {
    let stack = Stack::from_env();
    let bad = format!("_{}", unique("itbad"));
    let good = unique("it-good");
    stack.create_topic(&bad, 1).await;
    stack.create_topic(&good, 1).await;
    stack.produce(&bad, 0, &events(0..3)).await;
    stack.produce(&good, 0, &events(0..3)).await;
    // A regex: explicit topics with illegal indices are refused at start.
    let regex = format!("^{bad}$");
    let running = start(cfg(&stack, &[&good, &regex], &unique("g"), "", &[]));
    let got = stack
        .wait_count(&main_indices(&good), 3, Duration::from_secs(120))
        .await;
    let m = std::sync::Arc::clone(&running.metrics);
    let named = wait_until(Duration::from_secs(60), || {
        m.health()
            .is_err_and(|b| b.contains(&format!("stopped:{bad}/0")))
    })
    .await;
    let body = m.health().err().unwrap_or_default();
    let stopped = m
        .encode()
        .lines()
        .any(|l| l.starts_with("logtransfer_stopped_partitions 1"));
    let t = Instant::now();
    running.stop().await;
    let stop_took = t.elapsed();
    eprintln!("stop took {stop_took:?}; /health: {body}");
    assert_eq!(got, 3, "the other topic flows");
    assert!(named, "/health names the stopped partition: {body}");
    let v: Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(v["status"], "degraded");
    assert!(stopped, "the stopped partition is counted");
    assert!(
        stop_took < Duration::from_secs(5),
        "a stop does not wait the grace (10 s) on it: {stop_took:?}"
    );
}

/// Issue #13 item 3: a 413 retried the whole batch forever. A batch larger
/// than Elasticsearch's `http.max_content_length` (16 MB on the stack) is
/// split and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_3_a_413_splits_the_batch_and_every_document_is_written() {
    let stack = Stack::from_env();
    let settings: Value = stack
        .es()
        .nodes()
        .info(elasticsearch::nodes::NodesInfoParts::Metric(&["settings"]))
        .send()
        .await
        .expect("nodes info")
        .json()
        .await
        .expect("nodes body");
    let limit = settings["nodes"]
        .as_object()
        .and_then(|n| n.values().next())
        .and_then(|n| n["settings"]["http"]["max_content_length"].as_str())
        .map(str::to_string);
    assert_eq!(
        limit.as_deref(),
        Some("16mb"),
        "the stack's Elasticsearch runs with http.max_content_length=16mb \
         (restart it: scripts/stack stop elasticsearch && scripts/stack up)"
    );
    let topic = unique("it-413");
    stack.create_topic(&topic, 1).await;
    // 32 documents of 600 KB: one 19 MB batch, more than ES takes at once.
    let filler = "x".repeat(600 << 10);
    let values: Vec<String> = (0..32).map(|s| event(s, &filler)).collect();
    stack.produce(&topic, 0, &values).await;
    let running = start(cfg(
        &stack,
        &[&topic],
        &unique("g"),
        "",
        &[
            (
                "flush_interval_ms = 200",
                "flush_interval_ms = 5000\nmax_bytes = 67108864\nmax_buffered_bytes = 134217728",
            ),
            (
                "\"session.timeout.ms\"",
                "\"max.partition.fetch.bytes\" = \"33554432\"\n\"session.timeout.ms\"",
            ),
        ],
    ));
    let got = stack
        .wait_count(&main_indices(&topic), 32, Duration::from_secs(90))
        .await;
    running.stop().await;
    assert_eq!(got, 32, "every document of the split batch is written");
    assert_eq!(stack.es_count(&dead_indices(&topic)).await, 0);
}

/// Issue #13 item 3: a document larger than `bulk.max_bytes` is
/// dead-lettered (keeping its first 32 KiB), the rest flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_3_a_document_larger_than_bulk_max_bytes_is_dead_lettered() {
    let stack = Stack::from_env();
    let topic = unique("it-oversize");
    stack.create_topic(&topic, 1).await;
    let mut values = events(0..3);
    values.insert(1, event(99, &"y".repeat(40 << 10)));
    let offsets = stack.produce(&topic, 0, &values).await;
    let running = start(cfg(
        &stack,
        &[&topic],
        &unique("g"),
        "",
        &[(
            "flush_interval_ms = 200",
            "flush_interval_ms = 200\nmax_bytes = 4096",
        )],
    ));
    let main = stack
        .wait_count(&main_indices(&topic), 3, Duration::from_secs(60))
        .await;
    let dead = stack
        .wait_count(&dead_indices(&topic), 1, Duration::from_secs(60))
        .await;
    running.stop().await;
    assert_eq!((main, dead), (3, 1));
    let dl = stack
        .get_doc(
            &format!("{topic}-2026.11.21-deadletter"),
            &format!("{topic}-0-{}", offsets[1]),
        )
        .await;
    assert_eq!(dl["_source"]["error"]["status"], 413, "{dl}");
    assert_eq!(dl["_source"]["error"]["type"], "document_too_large");
    assert_eq!(dl["_source"]["original_truncated"], true);
    assert_eq!(
        dl["_source"]["original"].as_str().map(str::len),
        Some(32 << 10)
    );
}

/// Issue #13 items 3 and 6: a write block (403 `cluster_block_exception`)
/// dead-lettered good documents; now they wait for the block to go, and
/// meanwhile `/health` answers 503 naming the stuck partition (it stayed 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_3_6_a_write_block_is_waited_out_and_health_names_the_stuck_partition() {
    let stack = Stack::from_env();
    let topic = unique("it-block");
    stack.create_topic(&topic, 1).await;
    let index = format!("{topic}-2026.11.21");
    let es = stack.es();
    let r = es
        .indices()
        .create(IndicesCreateParts::Index(&index))
        .body(json!({"settings": {"index": {"blocks": {"write": true}}}}))
        .send()
        .await
        .expect("create index");
    assert!(r.status_code().is_success(), "{:?}", r.text().await);
    stack.produce(&topic, 0, &events(0..5)).await;
    let running = start(cfg(
        &stack,
        &[&topic],
        &unique("g"),
        "[health]\nstuck_after_secs = 3\n",
        &[],
    ));
    let m = std::sync::Arc::clone(&running.metrics);
    let key = format!("stuck:{topic}/0");
    let named = wait_until(Duration::from_secs(60), || {
        m.health().is_err_and(|b| b.contains(&key))
    })
    .await;
    let body = m.health().err().unwrap_or_default();
    let dead_while_blocked = stack.es_count(&dead_indices(&topic)).await;
    let r = es
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[&index]))
        .body(json!({"index": {"blocks": {"write": false}}}))
        .send()
        .await
        .expect("lift block");
    assert!(r.status_code().is_success());
    let main = stack
        .wait_count(&main_indices(&topic), 5, Duration::from_secs(60))
        .await;
    let healthy_again = wait_until(Duration::from_secs(30), || m.health().is_ok()).await;
    running.stop().await;
    assert!(named, "/health names the stuck partition: {body}");
    let v: Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(v["status"], "degraded");
    assert_eq!(dead_while_blocked, 0, "a write block makes no dead letters");
    assert_eq!(main, 5, "the documents arrive once the block is lifted");
    assert_eq!(stack.es_count(&dead_indices(&topic)).await, 0);
    assert!(healthy_again, "/health recovers: {:?}", m.health());
}

/// Issue #13 item 3: with auto-creation off for the topic's indices, the
/// 404 `index_not_found_exception` dead-lettered good documents (and then
/// looped on the dead letters); now they wait for the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_3_a_missing_index_with_auto_create_off_is_waited_out() {
    let stack = Stack::from_env();
    let topic = unique("it-noauto");
    stack.create_topic(&topic, 1).await;
    let es = stack.es();
    let set_auto_create = |value: Value| {
        let es = es.clone();
        async move {
            let r = es
                .cluster()
                .put_settings()
                .body(json!({"persistent": {"action.auto_create_index": value}}))
                .send()
                .await
                .expect("cluster settings");
            assert!(r.status_code().is_success(), "{:?}", r.text().await);
        }
    };
    set_auto_create(json!(format!("-{topic}*,+*"))).await;
    stack.produce(&topic, 0, &events(0..5)).await;
    let running = start(cfg(&stack, &[&topic], &unique("g"), "", &[]));
    // Long enough for several attempts (backoff 100 ms … 2 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let retried = running
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("logtransfer_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    set_auto_create(Value::Null).await;
    let main = stack
        .wait_count(&main_indices(&topic), 5, Duration::from_secs(60))
        .await;
    running.stop().await;
    assert!(retried >= 5.0, "the documents were retried: {retried}");
    assert_eq!(main, 5, "the documents arrive once the index may be made");
    assert_eq!(stack.es_count(&dead_indices(&topic)).await, 0);
}

async fn get_json(stack: &Stack, path: &str) -> (u16, Value) {
    let r = stack
        .es()
        .send(
            elasticsearch::http::Method::Get,
            path,
            elasticsearch::http::headers::HeaderMap::new(),
            Option::<&()>::None,
            Option::<elasticsearch::http::request::JsonBody<Value>>::None,
            None,
        )
        .await
        .expect("es");
    let code = r.status_code().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Item 7: the template is named after the deployment (its group), its
/// patterns come from the configured topics (an index of someone else that
/// the old `*-*.*.*` matched gets nothing of ours), a second deployment on
/// the same topic installs its own beside it, and `retention_days` deletes
/// our indices created before the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_7_templates_are_per_deployment_and_old_indices_are_retired() {
    let stack = Stack::from_env();
    let topic = unique("it-tpl");
    stack.create_topic(&topic, 1).await;
    let (g1, g2) = (unique("ga"), unique("gb"));
    let metrics = || format!("127.0.0.1:{}", integration::agent_run::free_port());
    let cfg = |g: &str, retention_days: u32| -> TransferConfig {
        let text = config_text(&stack, &[&topic], g, &metrics(), "");
        let mut c: TransferConfig =
            common::config::parse_config(Path::new("t.toml"), &text, |_| None).expect("config");
        c.elasticsearch.retention_days = retention_days;
        c
    };
    // An index that is not ours, of 2020, matched by `*-*.*.*`.
    let other = format!("{}-other-2020.01.01", unique("x"));
    // One of ours of 2020 (and its dead letters), one of today.
    let old_ours = format!("{topic}-2020.01.01");
    let old_dead = format!("{topic}-2020.01.01-deadletter");
    let today = format!("{topic}-{}", chrono::Utc::now().format("%Y.%m.%d"));
    for idx in [&other, &old_ours, &old_dead, &today] {
        let r = stack
            .es()
            .indices()
            .create(IndicesCreateParts::Index(idx))
            .send()
            .await
            .expect("create");
        assert!(r.status_code().is_success(), "{idx}: {:?}", r.text().await);
    }
    let a = start(cfg(&g1, 0));
    // The first deployment's template is in place before the second's.
    let t0 = Instant::now();
    while get_json(&stack, &format!("/_index_template/logtransfer-{g1}"))
        .await
        .0
        != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no template for {g1}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = start(cfg(&g2, 30));
    let deadline = Instant::now() + Duration::from_secs(30);
    let gone = loop {
        let (code, _) = get_json(&stack, &format!("/{old_ours}")).await;
        let (dcode, _) = get_json(&stack, &format!("/{old_dead}")).await;
        if (code == 404 && dcode == 404) || Instant::now() > deadline {
            break code == 404 && dcode == 404;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (c1, t1) = get_json(&stack, &format!("/_index_template/logtransfer-{g1}")).await;
    let (c2, t2) = get_json(&stack, &format!("/_index_template/logtransfer-{g2}")).await;
    let (co, _) = get_json(&stack, &format!("/{other}")).await;
    let (ct, _) = get_json(&stack, &format!("/{today}")).await;
    assert_eq!(ct, 200, "today's index stays");
    b.stop().await;
    a.stop().await;
    assert!(gone, "retention deleted {old_ours}");
    assert_eq!(co, 200, "retention left {other} (not ours) alone");
    assert_eq!((c1, c2), (200, 200), "{t1} {t2}");
    let pats = t2["index_templates"][0]["index_template"]["index_patterns"].clone();
    assert_eq!(pats, json!([format!("{topic}-*.*.*")]), "{t2}");
    let p1 = &t1["index_templates"][0]["index_template"]["priority"];
    let p2 = &t2["index_templates"][0]["index_template"]["priority"];
    assert_ne!(p1, p2, "overlapping templates got distinct priorities");
}

/// Issue #13 item 8: a document Elasticsearch refuses for good whose dead
/// letter is refused too (a regex topic whose name makes an illegal index)
/// stopped its partition; with `dead_letter.kafka_topic` the dead letter
/// goes to that topic instead, naming its origin, and the offset is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue13_8_a_dead_letter_its_index_refuses_goes_to_the_dead_letter_topic() {
    use integration::kafka_read::read_topic;
    let stack = Stack::from_env();
    let bad = format!("_{}", unique("itbad8"));
    let dlq = unique("it-dlq");
    stack.create_topic(&bad, 1).await;
    stack.create_topic(&dlq, 1).await;
    let offsets = stack.produce(&bad, 0, &events(0..3)).await;
    let group = unique("g");
    let regex = format!("^{bad}$");
    let running = start(cfg(
        &stack,
        &[&regex],
        &group,
        &format!("[dead_letter]\nkafka_topic = \"{dlq}\"\n"),
        &[],
    ));
    let brokers = stack.kafka_brokers.clone();
    let t = dlq.clone();
    let letters =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &t, 3, Duration::from_secs(120)))
            .await
            .expect("read the dead-letter topic");
    let committed = {
        let mut c = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            c = stack.committed(&group, &bad, 1);
            if c == [3] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        c
    };
    let m = std::sync::Arc::clone(&running.metrics);
    let health = m.health();
    let text = m.encode();
    running.stop().await;
    assert_eq!(letters.len(), 3, "three dead letters in {dlq}");
    for (l, offset) in letters.iter().zip(&offsets) {
        let h = &l.headers;
        assert_eq!(h.get("logpipe-dlq-topic"), Some(&bad), "{h:?}");
        assert_eq!(
            h.get("logpipe-dlq-partition").map(String::as_str),
            Some("0")
        );
        assert_eq!(h.get("logpipe-dlq-offset"), Some(&offset.to_string()));
        assert_eq!(
            h.get("logpipe-dlq-error").map(String::as_str),
            Some("invalid_index_name_exception"),
            "{h:?}"
        );
        assert!(
            h.get("logpipe-dlq-index-error")
                .is_some_and(|e| e.contains("invalid_index_name_exception")),
            "the dead-letter index's refusal is named: {h:?}"
        );
        assert_eq!(l.value["kafka"]["topic"], bad.as_str());
        assert_eq!(l.value["kafka"]["offset"], *offset);
        assert_eq!(l.value["error"]["type"], "invalid_index_name_exception");
        assert!(l.value["original"].as_str().unwrap_or("").contains("line"));
    }
    assert_eq!(
        committed,
        vec![3],
        "the offset is committed past the dead letters"
    );
    assert_eq!(health, Ok("ok\n".into()), "no partition stopped");
    assert!(
        text.lines()
            .any(|l| l == "logtransfer_dead_letters_kafka_total 3"),
        "{text}"
    );
}

/// A foreign index template of a higher priority on our indices wins
/// silently in Elasticsearch (composable templates do not merge): the
/// transfer tells (and warns at start, pipeline.rs) when the mapping that
/// would apply is not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_template_on_our_indices_is_detected() {
    use elasticsearch::indices::{IndicesDeleteIndexTemplateParts, IndicesPutIndexTemplateParts};
    let stack = Stack::from_env();
    let es = stack.es();
    let topic = format!("{}_log", unique("shadow"));
    let ours = unique("logtransfer-shadow");
    let pattern = transfer::doc::IndexPattern::new("{topic}-%Y.%m.%d").expect("pattern");
    let topics = vec![topic.clone()];
    transfer::es::install_template(&es, &ours, &pattern, &topics)
        .await
        .expect("install");
    let samples = transfer::es::sample_indices(&pattern, &topics);
    assert_eq!(samples.len(), 1);
    assert!(samples[0].starts_with(&format!("{topic}-")), "{samples:?}");
    // Ours applies, or another logtransfer's with the same mapping (the
    // stack holds other tests' broad templates).
    assert_eq!(
        transfer::es::shadowed(&es, &pattern, &topics, &samples[0])
            .await
            .expect("simulate"),
        None,
        "our mapping applies"
    );
    let foreign = unique("foreign");
    let r = es
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(&foreign))
        .body(json!({
            "index_patterns": [format!("{topic}-*")],
            "priority": 5000,
            "template": {"mappings": {"properties": {"host": {"properties": {"id": {"type": "text"}}}}}}
        }))
        .send()
        .await
        .expect("put foreign");
    assert_eq!(r.status_code().as_u16(), 200);
    let shadow = transfer::es::shadowed(&es, &pattern, &topics, &samples[0])
        .await
        .expect("simulate");
    for name in [&foreign, &ours] {
        let _ = es
            .indices()
            .delete_index_template(IndicesDeleteIndexTemplateParts::Name(name))
            .send()
            .await;
    }
    let shadow = shadow.expect("ours is shadowed by the foreign template");
    assert!(shadow.contains(&ours), "{shadow:?}");
}
