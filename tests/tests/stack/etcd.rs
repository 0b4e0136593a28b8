use etcd_client::{Client, EventType, WatchOptions};
use integration::{unique, Stack};
use std::time::Duration;

#[tokio::test]
async fn put_a_key_and_observe_it_through_a_watch() {
    let stack = Stack::from_env();
    let mut client = Client::connect(&stack.etcd_endpoints, None)
        .await
        .expect("connect to etcd");
    let key = format!("/logagent-it/{}/collect/host-1", unique("etcd"));
    let value = r#"[{"path":"/var/log/nginx/*.log","topic":"web_log"}]"#;

    let mut stream = client
        .watch(key.as_str(), Some(WatchOptions::new()))
        .await
        .expect("watch");
    client.put(key.as_str(), value, None).await.expect("put");

    let event = loop {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a watch event within 30 s")
            .expect("watch stream")
            .expect("watch stream open");
        if let Some(ev) = resp.events().first() {
            break ev.clone();
        }
    };
    assert_eq!(event.event_type(), EventType::Put);
    let kv = event.kv().expect("kv in put event");
    assert_eq!(kv.key_str().expect("utf-8 key"), key);
    assert_eq!(kv.value_str().expect("utf-8 value"), value);

    client.delete(key.as_str(), None).await.expect("delete");
}
