//! `logctl` against the real agent and etcd (issue #15 item 4): everything
//! an operator did with etcdctl, validated, compare-and-swapped and
//! confirmed by the agent's own report.

use integration::agent_run::{fixture, AgentSetup};
use integration::{unique, workspace_bin, Stack};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs logctl against the stack with the agent's prefix; `stdin` is fed.
fn logctl(stack: &Stack, a: &AgentSetup, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(workspace_bin("logctl"))
        .args(args)
        .env("ETCD_ENDPOINTS", stack.etcd_endpoints.join(","))
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("ES_URL", &stack.es_url)
        .env("LOGAGENT_PREFIX", &a.prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("logctl")
}

/// The path of the first entry stored for `host`, as `collect get` shows it.
fn stored_path(stack: &Stack, a: &AgentSetup, host: &str) -> String {
    let o = logctl(stack, a, &["-o", "json", "collect", "get", host], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["value"][0]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn revision_of(o: &Output) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["revision"].as_i64().expect("revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logctl_manages_entries_the_agent_confirms() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let (logs, a) = (fx.logs.clone(), &fx.agent);
    let host = a.host_id.as_str();
    let topic = unique("it-logctl");
    stack.create_topic(&topic, 1).await;
    let v1 = format!(
        r#"[{{"path":"{}/a.log","topic":"{topic}"}}]"#,
        logs.display()
    );
    let v2 = format!(
        r#"[{{"path":"{}/b.log","topic":"{topic}"}}]"#,
        logs.display()
    );
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    // Registered (its allowed_roots published) before entries are validated.
    let start = Instant::now();
    while logctl(&stack, a, &["agents", "show", host], "")
        .status
        .code()
        != Some(0)
        || !text(&logctl(&stack, a, &["agents", "show", host], "")).contains("(up)")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never registered\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Put: diff, CAS write, then the agent's own report says applied.
    let o = logctl(
        &stack,
        a,
        &["collect", "put", host, "-f", "-", "--wait", "20"],
        &v1,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("+") && out.contains("a.log"), "a diff: {out}");
    assert!(out.contains(&format!("applied by {host}")), "{out}");
    let o = logctl(&stack, a, &["-o", "json", "collect", "get", host], "");
    let r1 = revision_of(&o);
    let o = logctl(&stack, a, &["-o", "json", "agents", "show", host], "");
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let key = format!("{}/collect/{host}", a.prefix);
    assert_eq!(shown["liveness"], "up", "{}", text(&o));
    assert_eq!(shown["state"]["collect"][&key]["applied_revision"], r1);

    // Refused before the write, naming the field; etcd unchanged.
    for (bad, names) in [
        (
            r#"[{"path":"/etc/shadow","topic":"t"}]"#.to_string(),
            "allowed_roots",
        ),
        (
            format!(
                r#"[{{"path":"{}/x.log","topic":"t","colour":1}}]"#,
                logs.display()
            ),
            "colour",
        ),
        (
            format!(
                r#"[{{"path":"{}/x.log","topic":"no spaces"}}]"#,
                logs.display()
            ),
            "topic",
        ),
    ] {
        let o = logctl(&stack, a, &["collect", "put", host, "-f", "-"], &bad);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(names), "{}", text(&o));
        let o = logctl(
            &stack,
            a,
            &["collect", "validate", "--host", host, "-f", "-"],
            &bad,
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    assert_eq!(
        revision_of(&logctl(
            &stack,
            a,
            &["-o", "json", "collect", "get", host],
            ""
        )),
        r1
    );

    // Two writers that read the same revision: one wins, one gets a conflict.
    let r1s = r1.to_string();
    let args = [
        "collect",
        "put",
        host,
        "-f",
        "-",
        "--expect-revision",
        &r1s,
        "--wait",
        "0",
    ];
    let first = logctl(&stack, a, &args, &v2);
    let second = logctl(&stack, a, &args, &v1);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(text(&second).contains("conflict"), "{}", text(&second));

    // History has both; rollback to r1 restores v1 and the agent applies it.
    let o = logctl(&stack, a, &["-o", "json", "collect", "history", host], "");
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let revs: Vec<i64> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert!(revs.len() >= 2 && revs.contains(&r1), "{revs:?}");
    let o = logctl(
        &stack,
        a,
        &["collect", "rollback", host, "--rev", &r1s, "--wait", "20"],
        "",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let now = stored_path(&stack, a, host);
    assert!(now.ends_with("/a.log"), "{now}");

    // Edit: $EDITOR changes the file, the value is validated and written;
    // an edit that makes it invalid reopens the editor, and leaving it
    // unchanged then writes nothing.
    let edit = |editor: &str| {
        Command::new(workspace_bin("logctl"))
            .args(["collect", "edit", host, "--wait", "0"])
            .env("ETCD_ENDPOINTS", stack.etcd_endpoints.join(","))
            .env("LOGAGENT_PREFIX", &a.prefix)
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .output()
            .expect("logctl edit")
    };
    let o = edit("sed -i s/a.log/c.log/");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let now = stored_path(&stack, a, host);
    assert!(now.ends_with("/c.log"), "{now}");
    let o = edit("sed -i s@/c.log@/../../etc/passwd@");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("refused") && text(&o).contains("nothing written"),
        "{}",
        text(&o)
    );

    // The table lists the agent up; killed -9, it is down within the TTL.
    let o = logctl(&stack, a, &["agents", "list"], "");
    assert!(
        text(&o).contains(host) && text(&o).contains(" up "),
        "{}",
        text(&o)
    );
    agent.kill9();
    let start = Instant::now();
    let down = loop {
        let o = logctl(&stack, a, &["-o", "json", "agents", "list"], "");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let l = v
            .as_array()
            .and_then(|x| x.iter().find(|g| g["host_id"] == host).cloned());
        if l.is_some_and(|g| g["liveness"] == "down") || start.elapsed() > Duration::from_secs(30) {
            break start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(down <= Duration::from_secs(15), "down after {down:?}");

    // Not found and usage errors have their exit codes.
    assert_eq!(
        logctl(&stack, a, &["collect", "get", "no-such-host"], "")
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        logctl(&stack, a, &["collect", "frobnicate"], "")
            .status
            .code(),
        Some(2)
    );
}
