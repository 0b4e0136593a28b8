//! logtransfer throughput on the local stack, beside an ideal loader.
//!
//! 1. Produces N events of about 200 bytes to a fresh 4-partition topic.
//! 2. Ideal loader: builds the `_bulk` bodies of exactly the documents
//!    logtransfer would write (same index, `_id`, source, batch size) before
//!    timing, then posts them with the same number of requests in flight,
//!    and times until every document is created.
//! 3. logtransfer (this crate's pipeline, in process, release build) consumes
//!    the topic into another index set; timed from start until ES counts N,
//!    with the process CPU time (user+sys) it used meanwhile.
//!
//! Run on the local stack:
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin transfer_throughput [N]   # N = 200000

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::IndicesDeleteParts;
use elasticsearch::{BulkParts, Elasticsearch};
use futures::stream::{self, StreamExt};
use std::time::{Duration, Instant};
use transfer::bulk::build_body;
use transfer::doc::IndexPattern;

async fn wait_count(es: &Elasticsearch, pattern: &str, n: u64) {
    let start = Instant::now();
    while benches::es_count(es, pattern).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "timed out waiting for {n} docs in {pattern}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts pre-built `_bulk` bodies of the documents logtransfer would make
/// (into `<prefix>-<topic>-…`); returns the seconds until all are searchable.
async fn ideal_run(
    es: &Elasticsearch,
    topic: &str,
    offsets: &[(i32, i64, usize)],
    payloads: &[String],
    prefix: &str,
    per_request: usize,
    in_flight: usize,
) -> f64 {
    let n = offsets.len() as u64;
    let pattern = IndexPattern::new(&format!("{prefix}-{{topic}}-%Y.%m.%d")).expect("pattern");
    let docs = benches::ideal_docs(topic, offsets, payloads, &pattern);
    let bodies: Vec<Vec<u8>> = docs
        .chunks(per_request)
        .map(|c| {
            let mut b = Vec::new();
            build_body(c, &mut b);
            b
        })
        .collect();
    let start = Instant::now();
    let results: Vec<u16> = stream::iter(bodies)
        .map(|body| async move {
            es.bulk(BulkParts::None)
                .body(vec![body])
                .send()
                .await
                .map(|r| r.status_code().as_u16())
                .unwrap_or(0)
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    assert!(
        results.iter().all(|s| *s == 200),
        "ideal loader bulk failed: {results:?}"
    );
    wait_count(es, &format!("{prefix}-{topic}-*"), n).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ideal loader {prefix} (pre-built _bulk bodies, {per_request} docs/request, {in_flight} in flight): {:.0} docs/s ({secs:.2} s)",
        n as f64 / secs
    );
    secs
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let es_url = benches::stack_env("ES_URL");
    let es = Elasticsearch::new(Transport::single_node(&es_url).expect("ES_URL"));
    let run = std::process::id();
    let topic = format!("bench-{run}");
    let partitions = 4;

    let (payloads, offsets) = benches::access_topic(&brokers, &topic, partitions, n).await;

    // Same settings as the transfer's defaults: 5000 docs per request, 4 in flight.
    let per_request = 5000usize;
    let in_flight = 4usize;

    let ideal_first = ideal_run(
        &es,
        &topic,
        &offsets,
        &payloads,
        "ideal1",
        per_request,
        in_flight,
    )
    .await;

    // logtransfer.
    let cfg_text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "bench-{run}"
topics = ["{topic}"]
[elasticsearch]
url = "{es_url}"
index_pattern = "lt-{{topic}}-%Y.%m.%d"
[metrics]
listen = "127.0.0.1:0"
"#
    );
    let lt_pattern = format!("lt-{topic}-*");
    let lt_run = benches::run_transfer(&cfg_text, n, || benches::es_count(&es, &lt_pattern)).await;
    let (lt_secs, cpu) = (lt_run.secs, lt_run.cpu);
    println!(
        "logtransfer (Kafka -> ES, defaults): {:.0} docs/s ({lt_secs:.2} s); CPU {:.1} s per million docs (user+sys of the process while it ran)",
        n as f64 / lt_secs,
        cpu / n as f64 * 1e6
    );
    let ideal_second = ideal_run(
        &es,
        &topic,
        &offsets,
        &payloads,
        "ideal2",
        per_request,
        in_flight,
    )
    .await;
    let ideal_secs = (ideal_first + ideal_second) / 2.0;
    println!(
        "logtransfer reached {:.0}% of the ideal loader (mean of the runs before and after it: {:.0} docs/s)",
        100.0 * ideal_secs / lt_secs,
        n as f64 / ideal_secs
    );

    for p in [
        format!("ideal1-{topic}-*"),
        format!("ideal2-{topic}-*"),
        lt_pattern,
    ] {
        let _ = es
            .indices()
            .delete(IndicesDeleteParts::Index(&[&p]))
            .send()
            .await;
    }
    benches::delete_topic(&brokers, &topic).await;
}
