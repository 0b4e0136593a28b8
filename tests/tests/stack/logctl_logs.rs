//! `logctl search|context|tail|lag|dlq` against a real agent, Kafka,
//! logtransfer and Elasticsearch (issue #15 items 3 and 4): the exact
//! lines come back, context follows the file (not the clock), tail sees
//! what arrives after it started, lag is the group's committed offsets.

use super::logctl::text;
use integration::agent_run::append_lines;
use integration::transfer_run::{config, config_text, start};
use integration::{unique, workspace_bin, Stack};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn logctl_cmd(stack: &Stack, args: &[&str]) -> Command {
    let mut c = Command::new(workspace_bin("logctl"));
    c.args(args)
        .env("ETCD_ENDPOINTS", stack.etcd_endpoints.join(","))
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("ES_URL", &stack.es_url)
        .stdin(Stdio::null());
    c
}

fn logctl(stack: &Stack, args: &[&str]) -> Output {
    logctl_cmd(stack, args).output().expect("run logctl")
}

/// `logctl -o json ARGS`, which must exit 0.
fn json(stack: &Stack, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let o = logctl(stack, &all);
    assert_eq!(o.status.code(), Some(0), "logctl {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn messages(lines: &Value) -> Vec<String> {
    lines
        .as_array()
        .expect("an array")
        .iter()
        .map(|l| l["message"].as_str().expect("message").to_string())
        .collect()
}

fn numbered(word: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{word} {i}")).collect()
}

/// An agent collecting `<logs>/*.log` into a new topic and a transfer
/// writing that topic to Elasticsearch.
struct Pipeline {
    fx: integration::agent_run::Fixture,
    topic: String,
    agent: integration::agent_run::Agent,
    transfer: integration::transfer_run::Running,
}

impl Pipeline {
    async fn start(stack: &Stack, name: &str) -> Self {
        let (fx, topic) = integration::agent_run::fixture_one_entry(stack, name).await;
        let agent = fx.agent.start();
        let a = &fx.agent;
        assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
        let transfer = start(config(stack, &[&topic], &unique("g"), ""));
        Self {
            fx,
            topic,
            agent,
            transfer,
        }
    }

    /// Waits until the topic's indices hold `n` documents.
    async fn wait_docs(&self, stack: &Stack, n: u64) {
        let docs = format!("{}-*", self.topic);
        let got = stack.wait_count(&docs, n, Duration::from_secs(60)).await;
        assert_eq!(got, n, "documents in {docs}");
    }

    async fn stop(mut self) {
        self.transfer.stop().await;
        self.agent.terminate_ok(&self.fx.agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logctl_search_context_and_tail_return_exactly_the_agents_lines() {
    let stack = Stack::from_env();
    let p = Pipeline::start(&stack, "it-logs").await;
    let (logs, topic, host) = (&p.fx.logs, p.topic.clone(), p.fx.agent.host_id.as_str());
    let (app, other) = (logs.join("app.log"), logs.join("other.log"));
    let app_s = app.display().to_string();
    let wait = |n: u64| p.wait_docs(&stack, n);

    // app.log 0..10, then other.log, then app.log 10..20: by time, the
    // other file's lines sit between app.log's 9 and 10.
    append_lines(&app, &numbered("alpha", 0..10));
    wait(10).await;
    append_lines(&other, &numbered("beta", 0..5));
    wait(15).await;
    append_lines(&app, &numbered("alpha", 10..20));
    wait(25).await;

    // search: exactly the app's lines, newest first (time, then offset).
    let found = json(&stack, &["search", "alpha", "--host", host, "-n", "100"]);
    let mut want = numbered("alpha", 0..20);
    want.reverse();
    assert_eq!(messages(&found), want);
    assert!(found
        .as_array()
        .expect("array")
        .iter()
        .all(|l| { l["file"] == app_s.as_str() && l["host"].is_string() && l["id"].is_string() }));
    // --file (exact and glob), a phrase, -n, a time range.
    let beta = json(
        &stack,
        &["search", "*", "--host", host, "--file", "*/other.log"],
    );
    let mut want = numbered("beta", 0..5);
    want.reverse();
    assert_eq!(messages(&beta), want);
    let one = json(
        &stack,
        &["search", "\"alpha 7\"", "--host", host, "--file", &app_s],
    );
    assert_eq!(messages(&one), ["alpha 7"]);
    let three = json(&stack, &["search", "alpha", "--host", host, "-n", "3"]);
    assert_eq!(messages(&three), ["alpha 19", "alpha 18", "alpha 17"]);
    let recent = json(
        &stack,
        &["search", "*", "--host", host, "--since", "1h", "-n", "50"],
    );
    assert_eq!(recent.as_array().map(Vec::len), Some(25));
    let old = json(
        &stack,
        &[
            "search",
            "*",
            "--host",
            host,
            "--from",
            "2000-01-01",
            "--to",
            "2000-01-02",
        ],
    );
    assert_eq!(old.as_array().map(Vec::len), Some(0));
    let o = logctl(&stack, &["search", "*", "--host", host]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("ID") && out.contains("alpha 19") && out.contains(&app_s),
        "a table: {out}"
    );
    // Bad input: exit 2 naming what is at fault.
    for (args, names) in [
        (vec!["search", "message:(", "--host", host], "QUERY"),
        (vec!["search", "x", "--since", "1y"], "--since"),
        (vec!["search", "x", "--from", "yesterday"], "--from"),
        (vec!["search", "x", "-n", "0"], "-n"),
    ] {
        let o = logctl(&stack, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(names), "{args:?}: {}", text(&o));
    }

    // context: the lines around alpha 10 in app.log, by offset — not the
    // beta lines read between alpha 9 and alpha 10.
    let id = found[9]["id"].as_str().expect("id").to_string();
    assert_eq!(found[9]["message"], "alpha 10");
    let c = json(&stack, &["context", &id, "-B", "3", "-A", "2"]);
    assert_eq!(messages(&c["before"]), ["alpha 7", "alpha 8", "alpha 9"]);
    assert_eq!(c["line"]["message"], "alpha 10");
    assert_eq!(messages(&c["after"]), ["alpha 11", "alpha 12"]);
    assert_eq!(c["file"]["by"], "identity", "{c}");
    assert_eq!(c["file"]["host_id"], host);
    // At the file's edges: what there is.
    let first = found[19]["id"].as_str().expect("id").to_string();
    let c = json(&stack, &["context", &first, "-B", "5", "-A", "1"]);
    assert_eq!(messages(&c["before"]), Vec::<String>::new());
    assert_eq!(messages(&c["after"]), ["alpha 1"]);
    let o = logctl(&stack, &["context", &id]);
    let out = text(&o);
    assert!(
        out.contains(">  ") && out.contains("alpha 5") && !out.contains("beta"),
        "{out}"
    );
    let o = logctl(&stack, &["context", "no-such-document-0-0"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not found"), "{}", text(&o));

    // tail: assigned at the end, so only what comes after it started;
    // filtered by host, file and regex; stops after --max.
    let mut child = logctl_cmd(
        &stack,
        &[
            "-o",
            "json",
            "tail",
            "--topic",
            &topic,
            "--host",
            host,
            "--file",
            &app_s,
            "--grep",
            "^gamma [024]$",
            "--max",
            "3",
            "--for",
            "60",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn logctl tail");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut started = String::new();
    err.read_line(&mut started).expect("tail's start line");
    assert!(
        started.contains(&format!("tailing {topic}/0@25")),
        "{started}"
    );
    append_lines(&other, &["gamma 0".into()]);
    append_lines(&app, &numbered("gamma", 0..6));
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("tail");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(60), "stopped by --max");
    let tailed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let got: Vec<&str> = tailed
        .iter()
        .map(|l| l["message"].as_str().expect("message"))
        .collect();
    assert_eq!(got, ["gamma 0", "gamma 2", "gamma 4"]);
    assert!(tailed.iter().all(|l| l["file"] == app_s.as_str()));
    // A tailed id is the document's: context takes it once it is written.
    wait(32).await;
    let id = tailed[1]["id"].as_str().expect("id").to_string();
    let c = json(&stack, &["context", &id, "-B", "1", "-A", "1"]);
    assert_eq!(c["line"]["message"], "gamma 2");
    assert_eq!(messages(&c["before"]), ["gamma 1"]);
    assert_eq!(messages(&c["after"]), ["gamma 3"]);
    // --since starts that far back: the old lines too, in offset order.
    let o = logctl(
        &stack,
        &[
            "-o",
            "json",
            "tail",
            "--topic",
            &topic,
            "--host",
            host,
            "--grep",
            "^alpha 1[789]$",
            "--since",
            "1h",
            "--max",
            "3",
            "--for",
            "30",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["message"].to_string())
        .collect();
    assert_eq!(got, ["\"alpha 17\"", "\"alpha 18\"", "\"alpha 19\""]);
    // Ctrl-C (SIGINT) stops a tail, exit 0.
    let mut child = logctl_cmd(&stack, &["tail", "--topic", &topic])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logctl tail");
    let mut started = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut started)
        .expect("tail's start line");
    assert!(started.contains("tailing"), "{started}");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let t0 = Instant::now();
    let status = child.wait().expect("tail");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // --for stops a tail that sees nothing; a bad --grep is named.
    let o = logctl(&stack, &["tail", "--topic", &topic, "--for", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = logctl(&stack, &["tail", "--topic", &topic, "--grep", "("]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--grep"), "{}", text(&o));
    let o = logctl(&stack, &["tail", "--topic", "no-such-topic-x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no-such-topic-x"), "{}", text(&o));

    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logctl_lag_and_dlq_show_what_the_transfer_group_committed_and_refused() {
    let stack = Stack::from_env();
    let topic = unique("it-lag");
    stack.create_topic(&topic, 2).await;
    let group = unique("g");
    stack.produce(&topic, 0, &numbered("p0", 0..10)).await;
    let mut values = numbered("p1", 0..3);
    values.push("y".repeat(8 << 10));
    stack.produce(&topic, 1, &values).await;
    // Documents over bulk.max_bytes (4 KiB) are dead-lettered.
    let text_cfg = config_text(&stack, &[&topic], &group, "127.0.0.1:0", "").replace(
        "flush_interval_ms = 200",
        "flush_interval_ms = 200\nmax_bytes = 4096",
    );
    let path = std::path::Path::new("test-transfer.toml");
    let cfg: transfer::config::TransferConfig =
        common::config::parse_config(path, &text_cfg, |_| None).expect("config");
    cfg.validate(path).expect("valid config");
    let transfer = start(cfg);
    let lags = |stack: &Stack| {
        let o = logctl(
            stack,
            &["-o", "json", "lag", "--group", &group, "--topic", &topic],
        );
        serde_json::from_slice::<Value>(&o.stdout).ok()
    };
    let caught_up = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|p| p["lag"] == 0))
    };
    let start_t = Instant::now();
    let mut last = None;
    while start_t.elapsed() < Duration::from_secs(60) {
        last = lags(&stack);
        if last.as_ref().is_some_and(caught_up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v = last.expect("logctl lag answered");
    assert!(caught_up(&v), "{v}");
    transfer.stop().await;
    stack.produce(&topic, 0, &numbered("p0", 10..13)).await;
    let v = lags(&stack).expect("lag");
    let rows: Vec<(i64, i64, i64, i64)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap_or(-1),
                p["committed"].as_i64().unwrap_or(-1),
                p["high"].as_i64().unwrap_or(-1),
                p["lag"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(rows, [(0, 10, 13, 3), (1, 4, 4, 0)], "{v}");
    let o = logctl(&stack, &["lag", "--group", &group, "--topic", &topic]);
    let out = text(&o);
    assert!(
        out.contains("TOPIC") && out.contains("3 messages behind"),
        "{out}"
    );
    let o = logctl(
        &stack,
        &["lag", "--group", &unique("never"), "--topic", &topic],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not found"), "{}", text(&o));

    // dlq: the one oversize document, listed and shown.
    let dead_index = format!("{topic}-*-deadletter");
    let list = json(&stack, &["dlq", "list", "--index", &dead_index]);
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    let id = format!("{topic}-1-3");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], 413);
    assert_eq!(list[0]["topic"], topic.as_str());
    let shown = json(&stack, &["dlq", "show", &id, "--index", &dead_index]);
    assert_eq!(shown["offset"], 3);
    assert!(
        shown["original"]
            .as_str()
            .is_some_and(|o| o.contains(&"y".repeat(8 << 10))),
        "{shown}"
    );
    let o = logctl(&stack, &["dlq", "show", "nope-0-0", "--index", &dead_index]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// Context crosses a rotation by rename: before the new file's first
/// lines come the old file's last ones, and after the old file's last
/// lines the new file's first ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logctl_context_continues_across_a_rotation_by_rename() {
    let stack = Stack::from_env();
    let p = Pipeline::start(&stack, "it-rotate").await;
    let (logs, host) = (&p.fx.logs, p.fx.agent.host_id.as_str());
    let app = logs.join("app.log");
    append_lines(&app, &numbered("old", 0..6));
    p.wait_docs(&stack, 6).await;
    std::fs::rename(&app, logs.join("app.log.1")).expect("rotate");
    append_lines(&app, &numbered("new", 0..6));
    p.wait_docs(&stack, 12).await;

    let found = json(&stack, &["search", "*", "--host", host, "-n", "20"]);
    let id_of = |m: &str| {
        found
            .as_array()
            .and_then(|a| a.iter().find(|l| l["message"] == m))
            .and_then(|l| l["id"].as_str())
            .unwrap_or_else(|| panic!("{m} in {found}"))
            .to_string()
    };
    let c = json(&stack, &["context", &id_of("new 1"), "-B", "4", "-A", "1"]);
    assert_eq!(
        messages(&c["before"]),
        ["old 3", "old 4", "old 5", "new 0"],
        "{c}"
    );
    assert_eq!(messages(&c["after"]), ["new 2"]);
    let c = json(&stack, &["context", &id_of("old 4"), "-B", "1", "-A", "4"]);
    assert_eq!(messages(&c["before"]), ["old 3"]);
    assert_eq!(
        messages(&c["after"]),
        ["old 5", "new 0", "new 1", "new 2"],
        "{c}"
    );
    // Not past the first generation, nor the last.
    let c = json(&stack, &["context", &id_of("old 0"), "-B", "3", "-A", "0"]);
    assert_eq!(messages(&c["before"]), Vec::<String>::new());
    let o = logctl(&stack, &["context", &id_of("new 0"), "-B", "2"]);
    let out = text(&o);
    assert!(out.contains("-- ") && out.contains("old 5"), "{out}");

    p.stop().await;
}
