//! Security (issue #14) against the real agent, etcd and Kafka: nothing
//! outside `allowed_roots` is ever shipped — not through a symlinked
//! directory named in an etcd entry, not through a file swapped for a
//! symlink while the agent polls, not through a static entry.

use integration::agent_run::{append_lines as append, etcd_put, fixture};
use integration::kafka_read::{read_topic, tally_numbered};
use integration::{unique, workspace_bin, Stack};
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Items 1 and 2. The root holds `etcdir -> <outside>` and a `swap/app.log`
/// that a loop replaces, as fast as it can, by a new regular file and by a
/// symlink to the secret, for `SECURITY_RACE_SECS` (60 s by default) while
/// the agent collects `etcdir/secret`, `etcdir/*`, `swap/*.log` and a
/// numbered `ok.log`. Every numbered line arrives, the agent counts its
/// refusals, and no message holds a byte of the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_allowed_roots_reaches_kafka() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let outside = fx.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = unique("SECRET");
    std::fs::write(outside.join("secret"), format!("{secret} root:x:0:0\n")).unwrap();
    symlink(&outside, logs.join("etcdir")).unwrap();
    std::fs::create_dir_all(logs.join("swap")).unwrap();
    let topic = unique("it-sec");
    stack.create_topic(&topic, 1).await;
    let entries = format!(
        r#"[{{"path":"{l}/etcdir/secret","topic":"{topic}"}},
            {{"path":"{l}/etcdir/*","topic":"{topic}","follow_symlinks":true}},
            {{"path":"{l}/swap/*.log","topic":"{topic}"}},
            {{"path":"{l}/ok.log","topic":"{topic}"}}]"#,
        l = logs.display()
    );
    etcd_put(&stack, &a.collect_key(), &entries).await;
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());

    let secs: u64 = std::env::var("SECURITY_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (dir, target, stop) = (logs.join("swap"), outside.join("secret"), stop.clone());
        std::thread::spawn(move || {
            let path = dir.join("app.log");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = dir.join(".f");
                std::fs::write(&f, format!("swapped-in {n}\n")).unwrap();
                std::fs::rename(&f, &path).unwrap();
                let l = dir.join(".l");
                let _ = std::fs::remove_file(&l);
                symlink(&target, &l).unwrap();
                std::fs::rename(&l, &path).unwrap();
                n += 1;
            }
            n
        })
    };
    let ok = logs.join("ok.log");
    let until = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        append(&ok, &[format!("seq {n} ok")]);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();

    let brokers = stack.kafka_brokers.clone();
    let t = topic.clone();
    let (tally, all) = tokio::task::spawn_blocking(move || {
        let tally = tally_numbered(&brokers, &t, n, Duration::from_secs(90));
        let all = read_topic(&brokers, &t, tally.in_kafka, Duration::from_secs(30));
        (tally, all)
    })
    .await
    .unwrap();
    assert!(
        tally.lost.is_empty(),
        "lost {:?}\n{}",
        tally.lost,
        a.log_text()
    );
    let leaked: Vec<&str> = all
        .iter()
        .map(|m| std::str::from_utf8(&m.raw).unwrap_or(""))
        .filter(|v| v.contains(&secret))
        .collect();
    assert!(leaked.is_empty(), "read outside allowed_roots: {leaked:?}");
    let refused = a.metric("logagent_files_refused_total");
    assert!(
        refused >= 2.0,
        "refusals counted: {refused}\n{}",
        a.log_text()
    );
    eprintln!(
        "race {secs}s: {swaps} swaps, {n} numbered lines, {} messages, 0 from outside, {refused} refusals",
        all.len()
    );
    agent.terminate_ok(a);
}

/// Item 1: a static `[[collect]]` entry outside `allowed_roots` (or with
/// `..`) is refused at `--check-config` and at start, naming the entry.
#[test]
fn a_static_entry_outside_the_roots_is_refused() {
    let stack = Stack::from_env();
    for path in ["/etc/passwd", "LOGS/../../etc/passwd"] {
        let fx = fixture(&stack, "");
        let path = path.replace("LOGS", &fx.logs.display().to_string());
        let text = std::fs::read_to_string(&fx.agent.config).unwrap();
        std::fs::write(
            &fx.agent.config,
            format!("{text}\n[[collect]]\npath = \"{path}\"\ntopic = \"t\"\n"),
        )
        .unwrap();
        for args in [&["--check-config"][..], &[][..]] {
            let out = std::process::Command::new(workspace_bin("logagent"))
                .arg("--config")
                .arg(&fx.agent.config)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{path} {args:?}: {err}");
            assert!(
                err.contains("collect[0]") && err.contains("allowed_roots"),
                "{err}"
            );
        }
    }
}

/// Item 4: secrets planted in every secret-carrying setting (the etcd
/// password, librdkafka settings the allow-list does not know) appear in no
/// output: not in `--check-config`, not in the agent's log at debug level
/// while it runs and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_in_no_output() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let a = &fx.agent;
    let text = std::fs::read_to_string(&a.config).unwrap();
    let text = text
        .replacen(
            "[etcd]\n",
            "[kafka.producer]\n\"sasl.password\" = \"PLANTED-A\"\n\"ssl.key.password\" = \"PLANTED-B\"\n\"sasl.oauthbearer.config\" = \"k=PLANTED-C\"\n[etcd]\nallow_plaintext_credentials = true\nusername = \"\"\npassword = \"PLANTED-D\"\n",
            1,
        );
    std::fs::write(&a.config, text).unwrap();
    let check = std::process::Command::new(workspace_bin("logagent"))
        .arg("--config")
        .arg(&a.config)
        .arg("--check-config")
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(0), "{shown}");
    assert!(shown.contains("sasl.password"), "{shown}");
    let mut agent = a.start_logging("debug");
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.terminate(Duration::from_secs(30));
    let log = a.log_text();
    assert!(log.contains("DEBUG"), "ran at debug level");
    for out in [&shown, &log] {
        for p in ["PLANTED-A", "PLANTED-B", "PLANTED-C", "PLANTED-D"] {
            assert!(!out.contains(p), "{p} printed:\n{out}");
        }
    }
}
