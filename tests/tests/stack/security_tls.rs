//! Real TLS and SASL (issue #14 item 5) against the stack's secure parts:
//! the agent and the transfer deliver through Kafka's SASL_SSL (SCRAM-SHA-512)
//! and mTLS listeners; a wrong password, an untrusted CA and a wrong host
//! name each fail naming the cause and lose nothing; an agent's etcd role
//! reads only its own keys and is enough to run it; logtransfer writes
//! through a TLS endpoint with basic auth or an API key (es-tls, nginx: the
//! integ-test-zip has no security module), and wrong credentials or an
//! untrusted CA commit nothing.

use integration::agent_run::{
    append_lines as append, fixture, free_port, http_get, setup, wait_for, AgentSetup,
};
use integration::kafka_read::tally_in;
use integration::secure::Secure;
use integration::transfer_run::{config_text, start};
use integration::{unique, workspace_bin, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

type Settings = Vec<(&'static str, String)>;

/// A TOML table of librdkafka settings.
fn table(name: &str, settings: &Settings) -> String {
    let mut t = format!("[{name}]\n");
    for (k, v) in settings {
        t.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    t
}

/// The first line of `log` that holds `what` (printed: what an operator sees).
fn first_line_with(log: &str, what: &str) -> String {
    log.lines()
        .find(|l| l.contains(what))
        .unwrap_or_default()
        .to_string()
}

/// The stack with `brokers` as its Kafka (the agent's and transfer's configs
/// take them from there).
fn via(stack: &Stack, brokers: &str) -> Stack {
    Stack {
        kafka_brokers: brokers.to_string(),
        ..stack.clone()
    }
}

/// Numbered lines `seq from … seq to-1`.
fn numbered(from: u64, to: u64) -> Vec<String> {
    (from..to).map(|i| format!("seq {i} tls")).collect()
}

/// A logtransfer config (TOML) reading `topic` in `group` through
/// `stack`'s brokers with `consumer` settings, writing to `es_url` with the
/// `es` keys.
fn transfer_toml(
    stack: &Stack,
    topic: &str,
    group: &str,
    consumer: &Settings,
    es_url: &str,
    es: &str,
) -> String {
    let metrics = format!("127.0.0.1:{}", free_port());
    let text = config_text(stack, &[topic], group, &metrics, "");
    let consumer = table("kafka.consumer", consumer);
    text.replacen("[kafka.consumer]\n", &consumer, 1).replacen(
        &format!("url = \"{}\"", stack.es_url),
        &format!("url = \"{es_url}\"\n{es}"),
        1,
    )
}

fn transfer_config(text: &str) -> transfer::config::TransferConfig {
    let path = std::path::Path::new("test-transfer.toml");
    let cfg: transfer::config::TransferConfig =
        common::config::parse_config(path, text, |_| None).expect("test config parses");
    cfg.validate(path).expect("test config is valid");
    cfg
}

/// The agent collects `logs/app.log` into a new topic through `brokers`
/// with `producer` settings; `n` numbered lines are written. Returns the
/// fixture, the topic and the agent.
async fn agent_via(
    stack: &Stack,
    brokers: &str,
    producer: &Settings,
    n: u64,
) -> (
    integration::agent_run::Fixture,
    String,
    integration::agent_run::Agent,
) {
    let fx = fixture(&via(stack, brokers), &table("kafka.producer", producer));
    let topic = unique("it-tls");
    stack.create_topic(&topic, 1).await;
    let entry = format!(
        r#"[{{"path":"{}/app.log","topic":"{topic}"}}]"#,
        fx.logs.display()
    );
    integration::agent_run::etcd_put(stack, &fx.agent.collect_key(), &entry).await;
    append(&fx.logs.join("app.log"), &numbered(0, n));
    let agent = fx.agent.start();
    assert!(
        fx.agent.wait_up(Duration::from_secs(30)),
        "{}",
        fx.agent.log_text()
    );
    (fx, topic, agent)
}

/// Line to ES through one listener: the agent produces and the transfer
/// consumes with the same settings.
async fn deliver_through(brokers: &str, settings: Settings) {
    let stack = Stack::from_env();
    let (fx, topic, mut agent) = agent_via(&stack, brokers, &settings, 200).await;
    let cfg = transfer_config(&transfer_toml(
        &via(&stack, brokers),
        &topic,
        &unique("g"),
        &settings,
        &stack.es_url,
        "",
    ));
    let running = start(cfg);
    let got = stack
        .wait_count(
            &format!("{topic}-*,-*-deadletter"),
            200,
            Duration::from_secs(120),
        )
        .await;
    running.stop().await;
    agent.terminate_ok(&fx.agent);
    assert_eq!(got, 200, "{}", fx.agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_transfer_deliver_through_sasl_ssl_scram() {
    let sec = Secure::from_env();
    let settings = sec.sasl_settings(&sec.scram_password);
    deliver_through(&sec.sasl_brokers, settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_transfer_deliver_through_mtls() {
    let sec = Secure::from_env();
    let settings = sec.mtls_settings("ca.pem");
    deliver_through(&sec.mtls_brokers, settings).await;
}

/// The agent starts with a broken Kafka setting: its log names the cause,
/// nothing reaches Kafka; restarted with the right setting, every line
/// written before and after arrives.
async fn agent_fails_clearly_then_delivers(
    brokers: &str,
    bad: Settings,
    good_brokers: &str,
    good: Settings,
    cause: &[&str],
    health_too: bool,
) {
    let stack = Stack::from_env();
    let (fx, topic, mut agent) = agent_via(&stack, brokers, &bad, 50).await;
    let a = &fx.agent;
    let named = wait_for(Duration::from_secs(60), || {
        let log = a.log_text();
        cause.iter().all(|c| log.contains(c))
    });
    assert!(named, "the log names {cause:?}:\n{}", a.log_text());
    eprintln!("{}", first_line_with(&a.log_text(), cause[0]));
    if health_too {
        // After `STALL_AFTER` (30 s) with nothing acknowledged, /health
        // names the client error too.
        let mut last = None;
        let named = wait_for(Duration::from_secs(60), || {
            last = a.http_get("/health");
            last.as_ref()
                .is_some_and(|(st, body)| *st == 503 && body.contains(cause[0]))
        });
        assert!(named, "/health names {}: {last:?}", cause[0]);
        eprintln!("{last:?}");
    }
    let sent = a.metric("logagent_lines_acked_total");
    assert_eq!(sent, 0.0, "nothing acknowledged by Kafka yet");
    agent.terminate(Duration::from_secs(30));
    append(&fx.logs.join("app.log"), &numbered(50, 100));
    let text = std::fs::read_to_string(&a.config).expect("config");
    let text = text
        .replacen(
            &table("kafka.producer", &bad),
            &table("kafka.producer", &good),
            1,
        )
        .replacen(
            &format!("brokers = \"{brokers}\""),
            &format!("brokers = \"{good_brokers}\""),
            1,
        );
    std::fs::write(&a.config, text).expect("config");
    let mut agent = a.start();
    let tally = tally_in(&stack.kafka_brokers, &topic, 100, Duration::from_secs(90)).await;
    agent.terminate_ok(a);
    assert!(
        tally.lost.is_empty(),
        "lost {:?}\n{}",
        tally.lost,
        a.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_fails_clearly_and_loses_nothing() {
    let sec = Secure::from_env();
    agent_fails_clearly_then_delivers(
        &sec.sasl_brokers,
        sec.sasl_settings("not-the-password"),
        &sec.sasl_brokers,
        sec.sasl_settings(&sec.scram_password),
        &["SASL authentication error", "invalid credentials"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_fails_clearly_and_loses_nothing() {
    let sec = Secure::from_env();
    agent_fails_clearly_then_delivers(
        &sec.mtls_brokers,
        sec.mtls_settings("other-ca.pem"),
        &sec.mtls_brokers,
        sec.mtls_settings("ca.pem"),
        &["certificate verify failed"],
        false,
    )
    .await;
}

/// The broker's certificate names 127.0.0.1 only: reached as `localhost`,
/// the host name check (`ssl.endpoint.identification.algorithm=https`,
/// librdkafka's default) refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_fails_clearly_and_loses_nothing() {
    let sec = Secure::from_env();
    let wrong = sec.sasl_brokers.replace("127.0.0.1", "localhost");
    let settings = sec.sasl_settings(&sec.scram_password);
    agent_fails_clearly_then_delivers(
        &wrong,
        settings.clone(),
        &sec.sasl_brokers,
        settings,
        &["certificate verify failed"],
        false,
    )
    .await;
}

/// What `group` has committed on `topic`'s partition 0 (None: nothing).
fn committed(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.find_partition(topic, 0).map(|p| p.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// The `[metrics] listen` address of a transfer config.
fn metrics_addr(toml: &str) -> Option<String> {
    let rest = toml.split("[metrics]\nlisten = \"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// logtransfer as a process (its log is what an operator reads).
fn spawn_transfer(dir: &std::path::Path, text: &str) -> (Child, std::path::PathBuf) {
    let cfg = dir.join(format!("{}.toml", unique("transfer")));
    std::fs::write(&cfg, text).expect("config");
    let log = cfg.with_extension("log");
    let err = std::fs::File::create(&log).expect("log file");
    let child = Command::new(workspace_bin("logtransfer"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn logtransfer");
    (child, log)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

async fn produce_numbered(stack: &Stack, topic: &str, n: u64) {
    stack.create_topic(topic, 1).await;
    let values: Vec<String> = (0..n)
        .map(|i| {
            json!({"@timestamp": "2026-11-21T04:33:32.123Z", "message": format!("seq {i}")})
                .to_string()
        })
        .collect();
    stack.produce(topic, 0, &values).await;
}

/// logtransfer with a broken setting (Kafka or Elasticsearch): its log
/// names `cause` and nothing is committed nor written; then, same group,
/// with the right setting, every message is written.
async fn transfer_fails_clearly_then_writes(
    bad: String,
    good: String,
    group: &str,
    topic: &str,
    cause: &[&str],
    health_names: bool,
) {
    let stack = Stack::from_env();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, log) = spawn_transfer(tmp.path(), &bad);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let named = wait_for(Duration::from_secs(60), || {
        let t = text();
        cause.iter().all(|c| t.contains(c))
    });
    let mut health = None;
    let health_ok = !health_names
        || wait_for(Duration::from_secs(10), || {
            health = metrics_addr(&bad).and_then(|m| http_get(&m, "/health"));
            health
                .as_ref()
                .is_some_and(|(st, body)| *st == 503 && body.contains(cause[0]))
        });
    stop(&mut child);
    assert!(named, "the log names {cause:?}:\n{}", text());
    assert!(health_ok, "/health names {}: {health:?}", cause[0]);
    eprintln!("{}", first_line_with(&text(), cause[0]));
    let pattern = format!("{topic}-*,-*-deadletter");
    assert_eq!(stack.es_count(&pattern).await, 0, "nothing written");
    let (b, g, t) = (
        stack.kafka_brokers.clone(),
        group.to_string(),
        topic.to_string(),
    );
    let c = tokio::task::spawn_blocking(move || committed(&b, &g, &t))
        .await
        .expect("committed");
    assert_eq!(c, None, "nothing committed");
    let (mut child, log) = spawn_transfer(tmp.path(), &good);
    let got = stack
        .wait_count(&pattern, 100, Duration::from_secs(120))
        .await;
    stop(&mut child);
    assert_eq!(
        got,
        100,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_with_a_wrong_scram_password_commits_nothing_then_delivers() {
    let (stack, sec) = (Stack::from_env(), Secure::from_env());
    let (topic, group) = (unique("it-tls-tr"), unique("g"));
    produce_numbered(&stack, &topic, 100).await;
    let s = via(&stack, &sec.sasl_brokers);
    let bad = transfer_toml(
        &s,
        &topic,
        &group,
        &sec.sasl_settings("wrong"),
        &stack.es_url,
        "",
    );
    let good = transfer_toml(
        &s,
        &topic,
        &group,
        &sec.sasl_settings(&sec.scram_password),
        &stack.es_url,
        "",
    );
    transfer_fails_clearly_then_writes(
        bad,
        good,
        &group,
        &topic,
        &["SASL authentication error", "invalid credentials"],
        false,
    )
    .await;
}

/// The es-tls keys of a transfer config: its CA and one way to log in.
fn es_keys(sec: &Secure, ca: &str, login: &str) -> String {
    format!("ca_file = \"{}\"\n{login}", sec.file(ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_writes_through_tls_with_basic_auth_and_with_an_api_key() {
    let (stack, sec) = (Stack::from_env(), Secure::from_env());
    for login in [
        format!(
            "username = \"{}\"\npassword = \"{}\"",
            sec.es_user, sec.es_password
        ),
        format!("api_key = \"{}\"", sec.es_api_key),
    ] {
        let topic = unique("it-tls-es");
        produce_numbered(&stack, &topic, 100).await;
        let cfg = transfer_config(&transfer_toml(
            &stack,
            &topic,
            &unique("g"),
            &Vec::new(),
            &sec.es_url,
            &es_keys(&sec, "ca.pem", &login),
        ));
        let running = start(cfg);
        let got = stack
            .wait_count(
                &format!("{topic}-*,-*-deadletter"),
                100,
                Duration::from_secs(120),
            )
            .await;
        running.stop().await;
        assert_eq!(got, 100, "{login}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_es_credentials_or_an_untrusted_ca_commit_nothing_then_deliver() {
    let (stack, sec) = (Stack::from_env(), Secure::from_env());
    let basic = format!(
        "username = \"{}\"\npassword = \"{}\"",
        sec.es_user, sec.es_password
    );
    for (ca, login, cause) in [
        (
            "ca.pem",
            format!("username = \"{}\"\npassword = \"wrong\"", sec.es_user),
            vec!["HTTP 401", "security_exception"],
        ),
        (
            "ca.pem",
            "api_key = \"d3Jvbmc6a2V5\"".to_string(),
            vec!["HTTP 401", "security_exception"],
        ),
        (
            "other-ca.pem",
            basic.clone(),
            vec!["certificate verify failed"],
        ),
    ] {
        let (topic, group) = (unique("it-tls-esbad"), unique("g"));
        produce_numbered(&stack, &topic, 100).await;
        let text = |ca: &str, login: &str| {
            transfer_toml(
                &stack,
                &topic,
                &group,
                &Vec::new(),
                &sec.es_url,
                &es_keys(&sec, ca, login),
            )
        };
        transfer_fails_clearly_then_writes(
            text(ca, &login),
            text("ca.pem", &basic),
            &group,
            &topic,
            &cause,
            true,
        )
        .await;
    }
}

/// An agent's etcd user, with its role (read `collect/<host>` and
/// `collect/_all`, write `agents/<host>`), over client-certificate TLS:
/// another host's entry, the whole `collect/` prefix and another host's
/// state are refused by etcd; its own entries apply (also hot-reloaded)
/// and its state is published with the revisions it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_role_reads_only_its_own_keys_and_is_enough_to_run() {
    let (stack, sec) = (Stack::from_env(), Secure::from_env());
    let tmp = tempfile::tempdir().expect("tempdir");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let prefix = format!("/{}", unique("p"));
    let (host, other) = (unique("host"), unique("other"));
    let s = Stack {
        etcd_endpoints: sec.etcd_endpoints.clone(),
        ..stack.clone()
    };
    let a: AgentSetup = setup(&s, tmp.path(), &host, &prefix, &[&logs], "");
    let (user, password) = sec.etcd_agent_user(&prefix, &host).await;
    let text = std::fs::read_to_string(&a.config).expect("config");
    let text = text.replacen(
        &format!("prefix = \"{prefix}\"\n"),
        &format!(
            "prefix = \"{prefix}\"\nusername = \"{user}\"\npassword = \"{password}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            sec.file("ca.pem"),
            sec.file("client.pem"),
            sec.file("client.key")
        ),
        1,
    );
    std::fs::write(&a.config, text).expect("config");

    let topic = unique("it-tls-etcd");
    stack.create_topic(&topic, 1).await;
    let mut root = sec.etcd_root().await;
    let own_key = a.collect_key();
    let all_key = format!("{prefix}/collect/_all");
    let entry = |file: &str| {
        format!(
            r#"[{{"path":"{}/{file}","topic":"{topic}"}}]"#,
            logs.display()
        )
    };
    let rev = root
        .put(own_key.as_str(), entry("a.log"), None)
        .await
        .expect("put")
        .header()
        .map_or(0, |h| h.revision());
    root.put(
        format!("{prefix}/collect/{other}"),
        entry("other.log"),
        None,
    )
    .await
    .expect("put");

    // What the agent's credentials may and may not do.
    let mut c = sec
        .etcd_as(&user, &password)
        .await
        .expect("etcd as the agent");
    let got = c.get(own_key.as_str(), None).await.expect("its own entry");
    assert_eq!(got.kvs().len(), 1);
    c.get(all_key.as_str(), None).await.expect("_all");
    let denied = |r: Result<(), etcd_client::Error>, what: &str| {
        let e = r.expect_err(what).to_string();
        assert!(e.contains("permission denied"), "{what}: {e}");
    };
    denied(
        c.get(format!("{prefix}/collect/{other}"), None)
            .await
            .map(|_| ()),
        "another host's entry",
    );
    denied(
        c.get(
            format!("{prefix}/collect/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map(|_| ()),
        "the collect/ prefix",
    );
    denied(
        c.put(format!("{prefix}/agents/{other}"), "{}", None)
            .await
            .map(|_| ()),
        "another host's state",
    );
    denied(
        c.put(own_key.as_str(), "[]", None).await.map(|_| ()),
        "writing its own entry",
    );
    let wrong = sec
        .etcd_as(&user, "wrong")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        wrong.contains("authentication failed"),
        "a wrong etcd password: {wrong}"
    );

    append(&logs.join("a.log"), &numbered(0, 20));
    append(&logs.join("b.log"), &numbered(20, 40));
    append(&logs.join("other.log"), &["seq 999 not ours".to_string()]);
    let mut agent = a.start();
    assert!(a.wait_up(Duration::from_secs(30)), "{}", a.log_text());
    // Hot reload through the per-key watch: `_all` adds b.log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_rev = root
        .put(all_key.as_str(), entry("b.log"), None)
        .await
        .expect("put _all")
        .header()
        .map_or(0, |h| h.revision());
    let tally = tally_in(&stack.kafka_brokers, &topic, 40, Duration::from_secs(90)).await;
    assert!(
        tally.lost.is_empty(),
        "lost {:?}\n{}",
        tally.lost,
        a.log_text()
    );
    assert_eq!(tally.in_kafka, 40, "other.log is not this host's");

    let state_key = format!("{prefix}/agents/{host}");
    let mut state = Value::Null;
    let published = {
        let mut ok = false;
        for _ in 0..60 {
            if let Some(kv) = root
                .get(state_key.as_str(), None)
                .await
                .expect("get state")
                .kvs()
                .first()
            {
                state = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
                let applied = |k: &str| state["collect"][k]["applied_revision"].as_i64();
                if applied(&own_key) == Some(rev) && applied(&all_key) == Some(all_rev) {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ok
    };
    agent.terminate_ok(&a);
    assert!(
        published,
        "state with revisions {rev} and {all_rev} applied: {state}\n{}",
        a.log_text()
    );
    let log = a.log_text();
    assert!(!log.contains("permission denied"), "{log}");
}
