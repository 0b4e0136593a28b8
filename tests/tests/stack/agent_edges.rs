//! logagent at production edges (issue #12), against the real Kafka and etcd.
//!
//! - item 4: messages Kafka refuses for good go to the dead-letter topic, the
//!   rest of the host keeps flowing, `/health` says degraded naming the topic;
//!   a topic whose `max.message.bytes` is below ours gets events cut to fit.
//! - item 5 (a read-back that cannot complete) stops Kafka: it is in
//!   `tests/outage.rs`.

use integration::agent_run::{
    append_lines as append, etcd_put, fixture, fixture_one_entry, kafka_keys, wait_for,
};
use integration::kafka_read::{read_topic, tally_in, tally_numbered};
use integration::{unique, Stack};
use std::time::Duration;

/// Item 4: a `{"fixed": 5}` partition on a one-partition topic is refused for
/// good; its lines go to the dead-letter topic with their origin in headers,
/// a healthy entry's lines all arrive, the WAL empties, and `/health` is
/// degraded naming the topic. A line too large for its topic's own
/// `max.message.bytes` is cut to fit instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let good = unique("it-edge-good");
    let bad = unique("it-edge-bad");
    let small = unique("it-edge-small");
    let dlq = unique("it-edge-dlq");
    stack.create_topic(&good, 1).await;
    stack.create_topic(&bad, 1).await;
    stack
        .create_topic_with(&small, 1, &[("max.message.bytes", "20000")])
        .await;
    stack.create_topic(&dlq, 1).await;
    kafka_keys(
        a,
        &format!("dead_letter_topic = \"{dlq}\"\ndead_letter_after_secs = 3"),
    );
    let entries = format!(
        r#"[{{"path":"{l}/good.log","topic":"{good}"}},
            {{"path":"{l}/bad.log","topic":"{bad}","partition":{{"fixed":5}}}},
            {{"path":"{l}/big.log","topic":"{small}"}}]"#,
        l = logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let good_lines: Vec<String> = (0..200).map(|i| format!("seq {i} good")).collect();
    let bad_lines: Vec<String> = (0..20).map(|i| format!("poison {i}")).collect();
    append(&logs.join("good.log"), &good_lines[..100]);
    append(&logs.join("bad.log"), &bad_lines);
    append(&logs.join("big.log"), &["B".repeat(100_000)]);
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    append(&logs.join("good.log"), &good_lines[100..]);

    let brokers = stack.kafka_brokers.clone();
    let g = good.clone();
    let tally = tokio::task::spawn_blocking(move || {
        tally_numbered(&brokers, &g, 200, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(tally.lost.is_empty(), "good lines lost: {:?}", tally.lost);
    assert_eq!(tally.duplicated, 0);

    let brokers = stack.kafka_brokers.clone();
    let d = dlq.clone();
    let dead =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &d, 20, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(dead.len(), 20, "dead letters: {}", a.log_text());
    let mut msgs: Vec<String> = dead
        .iter()
        .map(|m| m.value["message"].as_str().unwrap_or_default().to_string())
        .collect();
    msgs.sort();
    let mut want = bad_lines.clone();
    want.sort();
    assert_eq!(msgs, want, "the dead letters are the refused events");
    for m in &dead {
        assert_eq!(m.headers["logpipe-dlq-topic"], bad);
        assert_eq!(m.headers["logpipe-dlq-partition"], "5");
        assert_eq!(m.headers["logpipe-dlq-error"], "UnknownPartition");
        assert_eq!(m.headers["logpipe-host"], a.host_id, "origin headers kept");
    }

    let brokers = stack.kafka_brokers.clone();
    let s = small.clone();
    let cut =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &s, 1, Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(cut.len(), 1, "the long line reached its small topic");
    assert!(cut[0].raw.len() <= 20_000, "{} bytes", cut[0].raw.len());
    let flags = cut[0].value["log"]["flags"].to_string();
    assert!(flags.contains("truncated"), "{flags}");

    // Nothing holds the WAL back: every record is acknowledged.
    assert!(
        wait_for(Duration::from_secs(30), || a
            .metric("logagent_wal_unacked_records")
            == 0.0),
        "the WAL is not acknowledged past the refused records: {}",
        a.log_text()
    );
    assert_eq!(a.metric("logagent_dead_letters_total"), 20.0);
    let (code, body) = a.http_get("/health").expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("degraded") && body.contains(&bad) && body.contains("UnknownPartition"),
        "{body}"
    );
    agent.terminate_ok(a);
}

/// Item 6: the read-back recognises lines that an earlier run under another
/// host id (or version) sent: each record carries the identity that read it.
/// kill -9 at random moments while a writer appends, and every restart comes
/// up with a new `host_id` (the entry is in `_all`): every line arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_new_host_id_at_every_restart_duplicates_nothing() {
    use rand::{Rng, SeedableRng};
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let topic = unique("it-edge-rehost");
    stack.create_topic(&topic, 2).await;
    etcd_put(
        &stack,
        &format!("{}/collect/_all", a.prefix),
        &format!(
            r#"[{{"path":"{}/app.log","topic":"{topic}"}}]"#,
            logs.display()
        ),
    )
    .await;
    const N: u64 = 15_000;
    let path = logs.join("app.log");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..N {
            std::io::Write::write_all(&mut f, format!("seq {i} {}\n", "y".repeat(60)).as_bytes())
                .unwrap();
            if i % 30 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let rename = |k: u32| {
        let text = std::fs::read_to_string(&a.config).expect("config");
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("host_id = ") {
                    format!("host_id = \"{}-run{k}\"", a.host_id)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&a.config, text).expect("config");
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut agent = a.start();
    let mut kills = 0;
    while !writer.is_finished() || kills < 8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        agent.kill9();
        kills += 1;
        rename(kills);
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
    println!(
        "kill -9 ×{kills} with a new host id each time: written={N} in_kafka={} lost={} duplicated={}",
        tally.in_kafka,
        tally.lost.len(),
        tally.duplicated
    );
    assert!(
        tally.lost.is_empty(),
        "lost {:?}",
        &tally.lost[..tally.lost.len().min(10)]
    );
    assert_eq!(tally.duplicated, 0, "{}", a.log_text());
    agent.terminate_ok(a);
}

fn messages(brokers: &str, topic: &str, want: usize) -> Vec<String> {
    read_topic(brokers, topic, want, Duration::from_secs(40))
        .iter()
        .map(|m| {
            m.value["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_default()
        })
        .collect()
}

/// Item 1: lines never leak between entries after a restart. `D/*.log` →
/// topic a and `D/sub/*.jsonl` → topic b; lines appended to the jsonl file
/// while the agent is stopped go to b only; once entry b is removed, its file
/// stays unread (it is not "a file rotated while stopped" of entry a).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_never_leak_between_entries_after_a_restart() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    let (ta, tb) = (unique("it-leak-a"), unique("it-leak-b"));
    stack.create_topic(&ta, 1).await;
    stack.create_topic(&tb, 1).await;
    let both = format!(
        r#"[{{"path":"{l}/*.log","topic":"{ta}"}},
            {{"path":"{l}/sub/*.jsonl","topic":"{tb}","json":true}}]"#,
        l = logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &both).await;
    let json = |i: u32| format!(r#"{{"n":{i}}}"#);
    let (log, jsonl) = (logs.join("app.log"), logs.join("sub/app.jsonl"));
    append(
        &log,
        &(0..10).map(|i| format!("plain {i}")).collect::<Vec<_>>(),
    );
    append(&jsonl, &(0..10).map(json).collect::<Vec<_>>());
    let mut agent = a.start();
    let brokers = stack.kafka_brokers.clone();
    let (b1, ta1, tb1) = (brokers.clone(), ta.clone(), tb.clone());
    let (got_a, got_b) =
        tokio::task::spawn_blocking(move || (messages(&b1, &ta1, 10), messages(&b1, &tb1, 10)))
            .await
            .unwrap();
    assert_eq!((got_a.len(), got_b.len()), (10, 10), "{}", a.log_text());
    agent.terminate_ok(a);

    // Stopped: the jsonl file grows. Restarted: b gets it, a does not.
    append(&jsonl, &(10..20).map(json).collect::<Vec<_>>());
    let mut agent = a.start();
    let (b2, ta2, tb2) = (brokers.clone(), ta.clone(), tb.clone());
    let (got_a, got_b) =
        tokio::task::spawn_blocking(move || (messages(&b2, &tb2, 20), messages(&b2, &ta2, 10)))
            .await
            .map(|(b, a)| (a, b))
            .unwrap();
    assert_eq!(got_b.len(), 20, "{}", a.log_text());
    assert_eq!(got_a.len(), 10, "jsonl lines leaked into a: {got_a:?}");
    agent.terminate_ok(a);

    // Entry b removed: its file stays unread, also after a restart.
    etcd_put(
        &stack,
        &a.collect_key(),
        &format!(r#"[{{"path":"{}/*.log","topic":"{ta}"}}]"#, logs.display()),
    )
    .await;
    append(&jsonl, &(20..30).map(json).collect::<Vec<_>>());
    append(
        &log,
        &(10..20).map(|i| format!("plain {i}")).collect::<Vec<_>>(),
    );
    let mut agent = a.start();
    let (b3, ta3) = (brokers.clone(), ta.clone());
    let got_a = tokio::task::spawn_blocking(move || messages(&b3, &ta3, 20))
        .await
        .unwrap();
    assert!(
        got_a.iter().all(|m| m.starts_with("plain ")),
        "a removed entry's file was read into a: {got_a:?}\n{}",
        a.log_text()
    );
    assert_eq!(got_a.len(), 20);
    agent.terminate_ok(a);
}

/// Item 2: overlapping entries never share a file. The host's entry
/// `D/app/*.log` → x and `_all`'s `D/**/*.log` → y: a file both match is
/// collected by the first (the host's) only, the others by `_all`, each line
/// once, also across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_entries_never_share_a_file() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    std::fs::create_dir_all(logs.join("app")).unwrap();
    std::fs::create_dir_all(logs.join("other")).unwrap();
    let (tx, ty) = (unique("it-overlap-x"), unique("it-overlap-y"));
    stack.create_topic(&tx, 1).await;
    stack.create_topic(&ty, 1).await;
    etcd_put(
        &stack,
        &a.collect_key(),
        &format!(
            r#"[{{"path":"{}/app/*.log","topic":"{tx}"}}]"#,
            logs.display()
        ),
    )
    .await;
    etcd_put(
        &stack,
        &format!("{}/collect/_all", a.prefix),
        &format!(
            r#"[{{"path":"{}/**/*.log","topic":"{ty}"}}]"#,
            logs.display()
        ),
    )
    .await;
    let (app, other) = (logs.join("app/a.log"), logs.join("other/b.log"));
    append(
        &app,
        &(0..50).map(|i| format!("seq {i} app")).collect::<Vec<_>>(),
    );
    append(
        &other,
        &(0..50)
            .map(|i| format!("seq {i} other"))
            .collect::<Vec<_>>(),
    );
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    append(
        &app,
        &(50..100)
            .map(|i| format!("seq {i} app"))
            .collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.terminate_ok(a);
    append(
        &app,
        &(100..150)
            .map(|i| format!("seq {i} app"))
            .collect::<Vec<_>>(),
    );
    append(
        &other,
        &(50..100)
            .map(|i| format!("seq {i} other"))
            .collect::<Vec<_>>(),
    );
    let mut agent = a.start();
    let brokers = stack.kafka_brokers.clone();
    let (x, y) = (tx.clone(), ty.clone());
    let (got_x, got_y) = tokio::task::spawn_blocking(move || {
        (
            tally_numbered(&brokers, &x, 150, Duration::from_secs(60)),
            messages(&brokers, &y, 100),
        )
    })
    .await
    .unwrap();
    assert!(got_x.lost.is_empty(), "x lost {:?}", got_x.lost);
    assert_eq!(
        (got_x.in_kafka, got_x.duplicated),
        (150, 0),
        "{}",
        a.log_text()
    );
    assert_eq!(got_y.len(), 100, "y: {got_y:?}");
    assert!(got_y.iter().all(|m| m.ends_with(" other")), "y: {got_y:?}");
    assert!(a
        .log_text()
        .contains("also matched by an earlier collect entry"));
    agent.terminate_ok(a);
}

/// Item 7: the checkpoint store garbled on disk after 100 files were
/// shipped (every sled file overwritten, agent killed -9) comes back from
/// its snapshot: the files resume where they were, so Kafka gets each line
/// once — before, the store was set aside empty and all 500 lines were
/// shipped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_checkpoint_store_re_ships_nothing() {
    let stack = Stack::from_env();
    let (fx, topic) = fixture_one_entry(&stack, "it-edge-garbled").await;
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let file = |i: u64| logs.join(format!("f{i:03}.log"));
    for i in 0..100 {
        let lines: Vec<String> = (0..5).map(|j| format!("seq {} f{i}", i * 6 + j)).collect();
        append(&file(i), &lines);
    }
    let mut agent = a.start();
    assert!(
        wait_for(Duration::from_secs(90), || a
            .metric("logagent_lines_acked_total")
            >= 500.0),
        "{}",
        a.log_text()
    );
    // Let the snapshot catch up with the last acks (it lags ≤ 5 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    agent.kill9();
    let cp = a.dir.join("data/checkpoints");
    let garbled = garble(&cp);
    assert!(garbled > 0, "no sled files under {}", cp.display());
    for i in 0..100 {
        append(&file(i), &[format!("seq {} f{i}", i * 6 + 5)]);
    }
    let mut agent = a.start();
    let tally = tally_in(&stack.kafka_brokers, &topic, 600, Duration::from_secs(90)).await;
    assert!(
        tally.lost.is_empty(),
        "lost {:?}\n{}",
        tally.lost,
        a.log_text()
    );
    assert_eq!(
        tally.duplicated,
        0,
        "re-shipped after the store was garbled\n{}",
        a.log_text()
    );
    assert!(a.log_text().contains("restored"), "{}", a.log_text());
    agent.terminate_ok(a);
}

/// A file born and rotated away while the agent is down (a size-based
/// rotation, twice, during a restart): no checkpoint knows it and it is at
/// no path of the globs when the agent comes back. Its lines arrive, read
/// from its rotated name; a rotated file that was there before the agent
/// ever ran is not read, nor a compressed one. Before the fix gen1 never
/// arrived (a CI torture run lost 1,304 lines this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_born_and_rotated_away_while_the_agent_is_down_arrives() {
    let stack = Stack::from_env();
    let (fx, topic) = fixture_one_entry(&stack, "it-edge-born-down").await;
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let gen = |g: u64| -> Vec<String> {
        (0..10)
            .map(|j| format!("seq {} gen{g}", g * 10 + j))
            .collect()
    };
    std::fs::write(logs.join("old.log.1"), "history, before the agent\n").unwrap();
    let f = logs.join("app.log");
    append(&f, &gen(0));
    let mut agent = a.start();
    let t0 = tally_in(&stack.kafka_brokers, &topic, 10, Duration::from_secs(60)).await;
    assert!(t0.lost.is_empty(), "gen0: {:?}\n{}", t0.lost, a.log_text());
    agent.kill9();
    // Down: gen0 → app.log.2; gen1 born at app.log, then app.log.1; gen2
    // at app.log; a compressed generation beside them.
    std::fs::rename(&f, logs.join("app.log.1")).unwrap();
    append(&f, &gen(1));
    std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
    std::fs::rename(&f, logs.join("app.log.1")).unwrap();
    append(&f, &gen(2));
    std::fs::write(logs.join("app.log.3.gz"), b"\x1f\x8b\x08 not text\n").unwrap();
    let mut agent = a.start();
    let tally = tally_in(&stack.kafka_brokers, &topic, 30, Duration::from_secs(60)).await;
    assert!(
        tally.lost.is_empty(),
        "lost {:?} (gen1 is 10..20)\n{}",
        tally.lost,
        a.log_text()
    );
    assert_eq!(tally.duplicated, 0, "{}", a.log_text());
    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let all = tokio::task::spawn_blocking(move || messages(&brokers, &t, 30))
        .await
        .unwrap();
    assert_eq!(all.len(), 30, "only the three generations: {all:?}");
    assert!(
        a.log_text().contains("made and rotated away"),
        "{}",
        a.log_text()
    );
    agent.terminate_ok(a);
}

/// Overwrites every file under `dir` (recursively) with 0xA5 bytes; how many.
fn garble(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += garble(&p);
        } else {
            let len = e.metadata().map_or(0, |m| m.len()).max(64) as usize;
            std::fs::write(&p, vec![0xA5u8; len]).unwrap();
            n += 1;
        }
    }
    n
}
