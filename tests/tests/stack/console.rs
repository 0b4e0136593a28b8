//! logconsole in a real browser (issue #16): an agent, Kafka, logtransfer,
//! Elasticsearch and etcd run as in production; two consoles serve them
//! (one open on loopback, one with users and a token); then
//! `tests/browser/console.test.mjs` drives headless Chromium (Debian's
//! `/usr/bin/chromium`, through `playwright-core`) through every item of
//! the issue and saves screenshots in `target/console-screenshots/`.

use integration::agent_run::append_lines;
use integration::transfer_run::{config, start};
use integration::{repo_root, unique, workspace_bin, Stack};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running logconsole and its URL.
struct Console {
    child: Child,
    url: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn console(
    stack: &Stack,
    prefix: &str,
    config: Option<&std::path::Path>,
    log: &std::path::Path,
) -> Console {
    let mut c = Command::new(workspace_bin("logconsole"));
    c.args(["--listen", "127.0.0.1:0"]);
    if let Some(p) = config {
        c.arg("--config").arg(p);
    }
    let mut child = c
        .env("ETCD_ENDPOINTS", stack.etcd_endpoints.join(","))
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("ES_URL", &stack.es_url)
        .env("LOGAGENT_PREFIX", prefix)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("console log"))
        .spawn()
        .expect("spawn logconsole");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the console's URL");
    let url = first
        .trim()
        .strip_prefix("logconsole: ")
        .unwrap_or_else(|| {
            panic!(
                "logconsole printed `{first}`: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .trim_end_matches('/')
        .to_string();
    Console { child, url }
}

/// A console config for the stack, etcd prefix and transfer group; `extra`
/// is appended (users, tokens).
fn console_config(stack: &Stack, prefix: &str, group: &str, extra: &str) -> String {
    let etcd: Vec<String> = stack
        .etcd_endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    format!(
        "[etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\n[kafka]\nbrokers = \"{}\"\n[elasticsearch]\nurl = \"{}\"\n[console]\ngroup = \"{group}\"\n{extra}",
        etcd.join(","),
        stack.kafka_brokers,
        stack.es_url
    )
}

fn npm_ready() -> std::path::PathBuf {
    let dir = repo_root().join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let o = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("run npm ci in tests/browser");
        assert!(
            o.status.success(),
            "npm ci: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let stack = Stack::from_env();
    let browser_dir = npm_ready();
    // Tail follows `^.*_log$` topics by default, as logtransfer does.
    let topic = format!("{}_log", unique("console"));
    stack.create_topic(&topic, 2).await;
    let fx = integration::agent_run::fixture(&stack, "");
    let (app, other) = (fx.logs.join("app.log"), fx.logs.join("other.log"));
    integration::agent_run::etcd_put(
        &stack,
        &fx.agent.collect_key(),
        &format!(
            r#"[{{"path":"{}","topic":"{topic}","fields":{{"env":"console"}}}}]"#,
            app.display()
        ),
    )
    .await;
    // 300 lines: every 10th an error; every line names its number.
    let lines: Vec<String> = (0..300)
        .map(|i| {
            if i % 10 == 0 {
                format!("alpha {i} ERROR db timeout after {i} ms")
            } else {
                format!("alpha {i} GET /item/{i} 200")
            }
        })
        .collect();
    append_lines(&app, &lines);
    let mut agent = fx.agent.start();
    assert!(
        fx.agent.wait_up(Duration::from_secs(30)),
        "{}",
        fx.agent.log_text()
    );
    let group = unique("g");
    let transfer = start(config(&stack, &[&topic], &group, ""));
    let docs = format!("{topic}-*");
    assert_eq!(
        stack.wait_count(&docs, 300, Duration::from_secs(60)).await,
        300
    );

    // The open console (loopback, no users) and a second one with users and
    // a token (password "s3cret-pass"); both show the transfer's group.
    let open_cfg = fx.tmp.path().join("console.toml");
    std::fs::write(
        &open_cfg,
        console_config(&stack, &fx.agent.prefix, &group, ""),
    )
    .expect("write console.toml");
    let open = console(
        &stack,
        &fx.agent.prefix,
        Some(&open_cfg),
        &fx.tmp.path().join("console.log"),
    );
    let hash_out = Command::new(workspace_bin("logconsole"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b"s3cret-pass\n")?;
            c.wait_with_output()
        })
        .expect("hash-password");
    let hash = String::from_utf8_lossy(&hash_out.stdout).trim().to_string();
    let auth_cfg = fx.tmp.path().join("console-auth.toml");
    let users = format!(
        r#"[[console.users]]
name = "ann"
password_hash = "{hash}"
role = "admin"
[[console.users]]
name = "vic"
password_hash = "{hash}"
role = "viewer"
[[console.tokens]]
name = "reader"
token = "viewer-token-0123456789"
role = "viewer"
"#
    );
    std::fs::write(
        &auth_cfg,
        console_config(&stack, &fx.agent.prefix, &group, &users),
    )
    .expect("write console-auth.toml");
    let guarded = console(
        &stack,
        &fx.agent.prefix,
        Some(&auth_cfg),
        &fx.tmp.path().join("console-auth.log"),
    );

    let shots = repo_root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let agent_pid = agent.child.id().to_string();
    let out = tokio::task::spawn_blocking({
        let (url, auth_url) = (open.url.clone(), guarded.url.clone());
        let env: Vec<(&str, String)> = vec![
            ("CONSOLE_URL", url),
            ("CONSOLE_AUTH_URL", auth_url),
            ("ES_URL", stack.es_url.clone()),
            ("INDEX", docs.clone()),
            ("HOST_ID", fx.agent.host_id.clone()),
            ("TOPIC", topic.clone()),
            ("APP_LOG", app.display().to_string()),
            ("OTHER_LOG", other.display().to_string()),
            ("AGENT_PID", agent_pid),
            ("SCREENSHOTS", shots.display().to_string()),
        ];
        move || {
            Command::new("node")
                .arg("console.test.mjs")
                .current_dir(&browser_dir)
                .envs(env)
                .stdin(Stdio::null())
                .output()
                .expect("run node")
        }
    })
    .await
    .expect("node");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    // The browser test killed the agent (a killed agent must show down).
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    transfer.stop().await;
    assert!(
        out.status.success(),
        "the browser test failed:\n{text}\nconsole log:\n{}",
        std::fs::read_to_string(fx.tmp.path().join("console.log")).unwrap_or_default()
    );
    drop((open, guarded));
}
