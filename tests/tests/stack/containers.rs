//! Container logs (issue #19 item 7): a Kubernetes node's layout — the
//! kubelet's symlinks in `containers/` to CRI files under `pods/` — collected
//! with `"container": "cri"` and `follow_symlinks`, through Kafka and
//! logtransfer into Elasticsearch.

use integration::agent_run::{etcd_put, fixture};
use integration::transfer_run::{config, start};
use integration::{unique, Stack};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_logs_arrive_whole_with_their_pod_namespace_and_container() {
    let stack = Stack::from_env();
    let fx = fixture(&stack, "");
    let topic = unique("it-k8s");
    stack.create_topic(&topic, 1).await;
    let uid = "0f1e2d3c-aaaa-bbbb-cccc-1234567890ab";
    let id = "0123456789abcdef".repeat(4);
    let pod_dir = fx.logs.join(format!("pods/shop_web-7d9f_{uid}/nginx"));
    let links = fx.logs.join("containers");
    std::fs::create_dir_all(&pod_dir).expect("pod dir");
    std::fs::create_dir_all(&links).expect("containers dir");
    let file = pod_dir.join("0.log");
    let t = "2026-12-01T19:00:00.123456789+09:00";
    let long = "x".repeat(40_000);
    let text = format!(
        "{t} stdout F GET / 200\n\
         {t} stderr P {a}\n\
         {t} stderr P {b}\n\
         {t} stderr F {c}\n\
         this line is not CRI\n\
         {t} stdout F done\n",
        a = &long[..16_384],
        b = &long[16_384..32_768],
        c = &long[32_768..],
    );
    std::fs::write(&file, text).expect("write");
    std::os::unix::fs::symlink(&file, links.join(format!("web-7d9f_shop_nginx-{id}.log")))
        .expect("symlink");
    etcd_put(
        &stack,
        &fx.agent.collect_key(),
        &format!(
            r#"[{{"path":"{}/containers/*.log","topic":"{topic}","container":"cri","follow_symlinks":true}}]"#,
            fx.logs.display()
        ),
    )
    .await;
    let mut agent = fx.agent.start();
    let transfer = start(config(&stack, &[&topic], &unique("g"), ""));
    let docs = format!("{topic}-*");
    let n = stack.wait_count(&docs, 4, Duration::from_secs(60)).await;
    assert_eq!(n, 4, "GET, the joined long line, the non-CRI line, done");

    let hits = stack
        .search(
            &docs,
            json!({"size": 10, "sort": [{"log.offset": "asc"}],
                   "query": {"bool": {"filter": [
                       {"term": {"kubernetes.namespace": "shop"}},
                       {"term": {"kubernetes.pod.name": "web-7d9f"}},
                       {"term": {"kubernetes.container.name": "nginx"}},
                       {"term": {"container.id": id}}]}}}),
        )
        .await;
    let src: Vec<&Value> = hits["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| &h["_source"])
        .collect();
    assert_eq!(
        src.len(),
        4,
        "every line carries the file name's names: {}",
        hits["hits"]["total"]
    );
    assert_eq!(src[0]["message"], "GET / 200");
    assert_eq!(src[0]["stream"], "stdout");
    assert_eq!(
        src[0]["@timestamp"], "2026-12-01T10:00:00.123Z",
        "the runtime's time, in UTC"
    );
    assert_eq!(src[1]["message"], long.as_str(), "three pieces, one line");
    assert_eq!(src[1]["stream"], "stderr");
    assert!(src[1]["log"].get("flags").is_none(), "{}", src[1]["log"]);
    assert_eq!(src[2]["message"], "this line is not CRI");
    assert_eq!(src[2]["log"]["flags"], json!(["malformed"]));
    assert!(src[2].get("stream").is_none());
    assert_eq!(src[3]["message"], "done");
    assert!(
        src.iter().all(|s| s["log"]["file"]["path"]
            .as_str()
            .is_some_and(|p| p.contains("/containers/web-7d9f_shop_nginx-"))),
        "the event names the kubelet's link"
    );
    // A keyword field: the stream is a filter.
    let c = stack
        .search(
            &docs,
            json!({"size": 0, "track_total_hits": true,
                   "query": {"term": {"stream": "stderr"}}}),
        )
        .await;
    assert_eq!(c["hits"]["total"]["value"], 1);
    transfer.stop().await;
    agent.terminate_ok(&fx.agent);
}
