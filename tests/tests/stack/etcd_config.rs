//! logagent's collect entries followed in the real etcd (groundwork of
//! issue #5): get + watch, merging with `_all`, refusing bad values as a
//! whole while keeping the last good entries.

use agent::collect::{all_key, host_key, CollectEntry};
use agent::etcd_config::{run, ConfigEvent, WatchSpec};
use etcd_client::Client;
use integration::{unique, Stack};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// The next event other than `KeySeen` (its revisions are checked apart).
async fn next(rx: &mut mpsc::Receiver<ConfigEvent>) -> ConfigEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("an event within 15 s")
            .expect("watcher running");
        if !matches!(ev, ConfigEvent::KeySeen { .. }) {
            return ev;
        }
    }
}

async fn next_applied(rx: &mut mpsc::Receiver<ConfigEvent>) -> Vec<CollectEntry> {
    loop {
        if let ConfigEvent::Applied(e) = next(rx).await {
            return e;
        }
    }
}

fn paths(entries: &[CollectEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[tokio::test]
async fn collect_entries_follow_etcd_and_bad_values_are_refused_whole() {
    let stack = Stack::from_env();
    let prefix = format!("/{}", unique("it-agent"));
    let mut client = Client::connect(&stack.etcd_endpoints, None)
        .await
        .expect("etcd");
    let host = host_key(&prefix, "h1");
    client
        .put(
            host.as_str(),
            r#"[{"path":"/var/log/a.log","topic":"web_log"}]"#,
            None,
        )
        .await
        .expect("put");

    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(
        WatchSpec {
            endpoints: stack.etcd_endpoints.clone(),
            user: None,
            prefix: prefix.clone(),
            host_id: "h1".into(),
            allowed_roots: vec![PathBuf::from("/var/log")],
            static_entries: Vec::new(),
            tls: Default::default(),
        },
        tx,
    ));

    assert_eq!(paths(&next_applied(&mut rx).await), vec!["/var/log/a.log"]);

    client
        .put(
            all_key(&prefix),
            r#"[{"path":"/var/log/b.log","topic":"all_log"}]"#,
            None,
        )
        .await
        .expect("put _all");
    assert_eq!(
        paths(&next_applied(&mut rx).await),
        vec!["/var/log/a.log", "/var/log/b.log"]
    );

    // Malformed, then outside allowed_roots: refused, nothing applied.
    client
        .put(host.as_str(), "[{\"path\":", None)
        .await
        .expect("put");
    match next(&mut rx).await {
        ConfigEvent::Rejected { key, .. } => assert_eq!(key, host),
        other => panic!("expected a rejection, got {other:?}"),
    }
    client
        .put(
            host.as_str(),
            r#"[{"path":"/etc/shadow","topic":"t"}]"#,
            None,
        )
        .await
        .expect("put");
    match next(&mut rx).await {
        ConfigEvent::Rejected { error, .. } => assert!(error.contains("allowed_roots"), "{error}"),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A good value again, then the key deleted.
    client
        .put(
            host.as_str(),
            r#"[{"path":"/var/log/c/*.log","topic":"web_log"}]"#,
            None,
        )
        .await
        .expect("put");
    assert_eq!(
        paths(&next_applied(&mut rx).await),
        vec!["/var/log/c/*.log", "/var/log/b.log"]
    );
    client.delete(host.as_str(), None).await.expect("delete");
    assert_eq!(paths(&next_applied(&mut rx).await), vec!["/var/log/b.log"]);

    drop(rx);
    // The watcher ends once nobody listens (at its next event).
    client.put(all_key(&prefix), "[]", None).await.expect("put");
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("watcher stops")
        .expect("watcher task");
}
