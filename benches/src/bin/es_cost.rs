//! Elasticsearch's CPU per indexed document (issue #17), by index template.
//!
//! Agent-shaped events (as logagent encodes a 100-byte access-log line:
//! host, log.file, agent, …) are produced to a fresh 4-partition topic.
//! For each configuration the ideal loader posts pre-built `_bulk` bodies
//! of exactly the documents logtransfer would write (same `_id`, source,
//! `create` ops, 5000 docs per request, 4 in flight) into indices its
//! template matches; timed until every request was answered, then one
//! `_refresh` (searchable), then until no merge runs. Elasticsearch's CPU
//! (user+sys of its process, from its pid file in the stack directory) is
//! taken over that whole window, so refreshes and merges the load caused
//! are counted. Nothing polls with `_refresh` meanwhile (counting uses the
//! indexing stats), so the template's `refresh_interval` is what refreshes.
//!
//! Configurations: `before` (the template as of issues #6/#7, kept here),
//! `after` (transfer::es::template_body, today's), `lt` (logtransfer itself,
//! in process, with today's template; its time is compared to `after`'s
//! ideal loader of the same round), and diagnostic variants that split the
//! cost (`no-refresh`, `auto-id`, `msg-noindex`, `min-fields`, …; see
//! `variant`). The order rotates with `round`, so repeated invocations
//! interleave.
//!
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin es_cost -- N ROUND CONFIG,CONFIG,…
//!   # e.g. es_cost 300000 0 before,after,lt

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{
    IndicesDeleteIndexTemplateParts, IndicesDeleteParts, IndicesPutIndexTemplateParts,
    IndicesRefreshParts, IndicesStatsParts,
};
use elasticsearch::{BulkParts, CountParts, Elasticsearch};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use transfer::bulk::build_body;
use transfer::doc::IndexPattern;

/// The template logtransfer installed before issue #17 (es.rs at d31c6f2).
fn before_template(pattern: &IndexPattern, topics: &[String]) -> Value {
    json!({
        "index_patterns": pattern.template_patterns(topics),
        "priority": 200,
        "template": {
            "settings": {"index": {"number_of_shards": 1, "refresh_interval": "1s"}},
            "mappings": {
                "dynamic_templates": [{
                    "host_metrics_as_double": {
                        "path_match": "host_metrics.*",
                        "match_mapping_type": "long",
                        "mapping": {"type": "double"}
                    }
                }, {
                    "strings_as_text_and_keyword": {
                        "match_mapping_type": "string",
                        "mapping": {
                            "type": "text",
                            "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}
                        }
                    }
                }],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "message": {"type": "text"},
                    "host": {"properties": {
                        "name": {"type": "keyword"},
                        "id": {"type": "keyword"}
                    }},
                    "agent": {"properties": {
                        "type": {"type": "keyword"},
                        "version": {"type": "keyword"}
                    }},
                    "log": {"properties": {
                        "offset": {"type": "long"},
                        "flags": {"type": "keyword"},
                        "file": {"properties": {
                            "path": {"type": "keyword"},
                            "device": {"type": "long"},
                            "inode": {"type": "long"},
                            "fingerprint": {"type": "keyword"}
                        }}
                    }},
                    "stream": {"type": "keyword"},
                    "container": {"properties": {"id": {"type": "keyword"}}},
                    "kubernetes": {"properties": {
                        "namespace": {"type": "keyword"},
                        "pod": {"properties": {
                            "name": {"type": "keyword"},
                            "uid": {"type": "keyword"}
                        }},
                        "container": {"properties": {"name": {"type": "keyword"}}}
                    }},
                    "kafka": {"properties": {
                        "topic": {"type": "keyword"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "long"}
                    }},
                    "error": {"properties": {
                        "status": {"type": "integer"},
                        "type": {"type": "keyword"},
                        "reason": {"type": "text"}
                    }},
                    "original": {"type": "text", "index": false},
                    "original_index": {"type": "keyword"}
                }
            }
        }
    })
}

/// What a configuration loads with: its template, and whether the ideal
/// loader leaves `_id` to Elasticsearch (a diagnostic only: logtransfer's
/// ids must stay topic-partition-offset).
struct Variant {
    template: Value,
    auto_id: bool,
}

fn settings(t: &mut Value) -> &mut Value {
    &mut t["template"]["settings"]["index"]
}

fn props(t: &mut Value) -> &mut Value {
    &mut t["template"]["mappings"]["properties"]
}

/// The configuration `name` for indices of `pattern`.
fn variant(name: &str, pattern: &IndexPattern, topics: &[String]) -> Variant {
    let mut auto_id = false;
    let parts: Vec<&str> = name.split('+').collect();
    // `before`/`after`, then changes; a bare change applies to `before`.
    let (base, changes) = match parts[0] {
        "before" | "after" => (parts[0], &parts[1..]),
        _ => ("before", &parts[..]),
    };
    let mut t = if base == "after" {
        transfer::es::template_body(pattern, topics)
    } else {
        before_template(pattern, topics)
    };
    for part in changes.iter().copied() {
        match part {
            // Refresh only at the end (the window's one `_refresh`).
            "no-refresh" => settings(&mut t)["refresh_interval"] = json!("-1"),
            "refresh5" => settings(&mut t)["refresh_interval"] = json!("5s"),
            "refresh10" => settings(&mut t)["refresh_interval"] = json!("10s"),
            "refresh30" => settings(&mut t)["refresh_interval"] = json!("30s"),
            // Elasticsearch's default: 1 s, but none while no search came for
            // `index.search.idle.after` (30 s; 1 s here to see it in a short run).
            "search-idle" => {
                if let Some(s) = settings(&mut t).as_object_mut() {
                    s.remove("refresh_interval");
                    s.insert("search".into(), json!({"idle": {"after": "1s"}}));
                }
            }
            "auto-id" => auto_id = true,
            // The agent's host.ip and agent.id as keywords (dynamic: text + keyword).
            "kw" => {
                let p = props(&mut t);
                p["host"]["properties"]["ip"] = json!({"type": "keyword"});
                p["agent"]["properties"]["id"] = json!({"type": "keyword"});
            }
            // No doc values where nothing sorts or aggregates.
            "nodv" => {
                let p = props(&mut t);
                p["agent"]["properties"]["type"]["doc_values"] = json!(false);
                p["agent"]["properties"]["version"]["doc_values"] = json!(false);
                let file = &mut p["log"]["properties"]["file"]["properties"];
                file["device"]["doc_values"] = json!(false);
                file["fingerprint"]["doc_values"] = json!(false);
            }
            "norms" => props(&mut t)["message"]["norms"] = json!(false),
            "msg-noindex" => props(&mut t)["message"] = json!({"type": "text", "index": false}),
            // Only @timestamp and message mapped, nothing else indexed.
            "min-fields" => {
                let m = props(&mut t)["message"].clone();
                let ts = props(&mut t)["@timestamp"].clone();
                t["template"]["mappings"] = json!({
                    "dynamic": false,
                    "properties": {"@timestamp": ts, "message": m}
                });
            }
            "merge-1thread" => {
                settings(&mut t)["merge"] = json!({"scheduler": {"max_thread_count": 1}});
            }
            "floor16mb" => {
                settings(&mut t)["merge"] = json!({"policy": {"floor_segment": "16mb"}});
            }
            "tier20" => {
                settings(&mut t)["merge"] = json!({"policy": {"segments_per_tier": 20}});
            }
            "flush1gb" => {
                settings(&mut t)["translog"] = json!({"flush_threshold_size": "1gb"});
            }
            "best-compression" => settings(&mut t)["codec"] = json!("best_compression"),
            other => panic!("unknown variant part `{other}`"),
        }
    }
    Variant {
        template: t,
        auto_id,
    }
}

async fn json_of(
    r: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
) -> Value {
    match r {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Index operations done in indices matching `pattern` (no refresh).
async fn indexed(es: &Elasticsearch, pattern: &str) -> u64 {
    let v = json_of(
        es.indices()
            .stats(IndicesStatsParts::IndexMetric(&[pattern], &["indexing"]))
            .send()
            .await,
    )
    .await;
    v["_all"]["primaries"]["indexing"]["index_total"]
        .as_u64()
        .unwrap_or(0)
}

async fn refresh_and_count(es: &Elasticsearch, pattern: &str) -> u64 {
    let _ = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[pattern]))
        .send()
        .await;
    let v = json_of(es.count(CountParts::Index(&[pattern])).send().await).await;
    v["count"].as_u64().unwrap_or(0)
}

/// Waits until no merge runs in `pattern` (two looks 500 ms apart), at most 60 s.
async fn merges_idle(es: &Elasticsearch, pattern: &str) {
    let start = Instant::now();
    let mut quiet = 0;
    while quiet < 2 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = json_of(
            es.indices()
                .stats(IndicesStatsParts::IndexMetric(&[pattern], &["merge"]))
                .send()
                .await,
        )
        .await;
        let current = v["_all"]["total"]["merges"]["current"]
            .as_u64()
            .unwrap_or(0);
        quiet = if current == 0 { quiet + 1 } else { 0 };
    }
}

struct Segments {
    count: u64,
    merged_docs: u64,
    refreshes: u64,
}

async fn segments(es: &Elasticsearch, pattern: &str) -> Segments {
    let v = json_of(
        es.indices()
            .stats(IndicesStatsParts::IndexMetric(
                &[pattern],
                &["segments", "merge", "refresh"],
            ))
            .send()
            .await,
    )
    .await;
    let p = &v["_all"]["primaries"];
    Segments {
        count: p["segments"]["count"].as_u64().unwrap_or(0),
        merged_docs: p["merges"]["total_docs"].as_u64().unwrap_or(0),
        refreshes: p["refresh"]["total"].as_u64().unwrap_or(0),
    }
}

struct Measured {
    secs: f64,
}

fn es_cpu_now() -> f64 {
    benches::pid_file(&benches::stack_dir().join("elasticsearch/elasticsearch.pid"))
        .map_or(0.0, benches::process_cpu_seconds)
}

/// After a load of `n` docs into `pattern` (started at `start`, ES CPU
/// `cpu0` then): refresh, count, wait for merges; prints and returns.
async fn finish(
    es: &Elasticsearch,
    label: &str,
    pattern: &str,
    n: u64,
    start: Instant,
    cpu0: f64,
    extra: &str,
) -> Measured {
    let got = refresh_and_count(es, pattern).await;
    assert_eq!(got, n, "{label}: {got} of {n} documents searchable");
    let secs = start.elapsed().as_secs_f64();
    let es_cpu_searchable = es_cpu_now() - cpu0;
    merges_idle(es, pattern).await;
    let es_cpu = es_cpu_now() - cpu0;
    let s = segments(es, pattern).await;
    let m = 1e6 / n as f64;
    println!(
        "{label:<28} {:>6.0} docs/s ({secs:5.2} s to searchable)  ES CPU {:5.1} s/M docs (searchable: {:5.1}; +merges after)  segments {} refreshes {} merged docs {}{extra}",
        n as f64 / secs,
        es_cpu * m,
        es_cpu_searchable * m,
        s.count,
        s.refreshes,
        s.merged_docs,
    );
    Measured { secs }
}

async fn put_template(es: &Elasticsearch, name: &str, body: &Value) {
    let r = es
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(name))
        .body(body.clone())
        .send()
        .await
        .expect("template");
    let status = r.status_code().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "template {name}: {text}");
}

async fn cleanup(es: &Elasticsearch, pattern: &str, template: Option<&str>) {
    let _ = es
        .indices()
        .delete(IndicesDeleteParts::Index(&[pattern]))
        .send()
        .await;
    if let Some(t) = template {
        let _ = es
            .indices()
            .delete_index_template(IndicesDeleteIndexTemplateParts::Name(t))
            .send()
            .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn ideal(
    es: &Elasticsearch,
    config: &str,
    topic: &str,
    offsets: &[(i32, i64, usize)],
    payloads: &[String],
    per_request: usize,
    in_flight: usize,
    tag: &str,
) -> Measured {
    let prefix = format!("ec{tag}");
    let pattern = IndexPattern::new(&format!("{prefix}-{{topic}}-%Y.%m.%d")).expect("pattern");
    let topics = vec![topic.to_string()];
    let v = variant(config, &pattern, &topics);
    let tname = format!("{prefix}-{topic}");
    put_template(es, &tname, &v.template).await;
    let docs = benches::ideal_docs(topic, offsets, payloads, &pattern);
    let bodies: Vec<Vec<u8>> = docs
        .chunks(per_request)
        .map(|c| {
            let mut b = Vec::new();
            if v.auto_id {
                for d in c {
                    b.extend_from_slice(b"{\"create\":{\"_index\":");
                    let _ = serde_json::to_writer(&mut b, &d.index);
                    b.extend_from_slice(b"}}\n");
                    b.extend_from_slice(&d.source);
                    b.push(b'\n');
                }
            } else {
                build_body(c, &mut b);
            }
            b
        })
        .collect();
    let idx = format!("{prefix}-{topic}-*");
    let n = docs.len() as u64;
    let cpu0 = es_cpu_now();
    let start = Instant::now();
    let results: Vec<String> = stream::iter(bodies)
        .map(|body| async move {
            match es
                .bulk(BulkParts::None)
                .filter_path(&["errors", "items.*.error"])
                .body(vec![body])
                .send()
                .await
            {
                Ok(r) if r.status_code().as_u16() == 200 => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if v["errors"] == json!(false) {
                        String::new()
                    } else {
                        v.to_string().chars().take(300).collect()
                    }
                }
                Ok(r) => format!("HTTP {}", r.status_code()),
                Err(e) => e.to_string(),
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let bad: Vec<_> = results.iter().filter(|r| !r.is_empty()).collect();
    assert!(bad.is_empty(), "{config}: bulk failures: {bad:?}");
    let label = format!("ideal {config} ({per_request}x{in_flight})");
    let m = finish(es, &label, &idx, n, start, cpu0, "").await;
    cleanup(es, &idx, Some(&tname)).await;
    m
}

/// logtransfer with today's template and `bulk` settings (TOML lines).
async fn logtransfer(
    es: &Elasticsearch,
    brokers: &str,
    es_url: &str,
    topic: &str,
    n: u64,
    tag: &str,
    bulk: &str,
) -> Measured {
    let group = format!("ec-{tag}-{topic}");
    let cfg_text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[elasticsearch]
url = "{es_url}"
index_pattern = "lt{tag}-{{topic}}-%Y.%m.%d"
[bulk]
{bulk}
[metrics]
listen = "127.0.0.1:0"
"#
    );
    let idx = format!("lt{tag}-{topic}-*");
    let cpu0 = es_cpu_now();
    let start = Instant::now();
    let run = benches::run_transfer(&cfg_text, n, || indexed(es, &idx)).await;
    let label = format!(
        "logtransfer {}",
        if bulk.is_empty() { "defaults" } else { bulk }
    );
    let extra = format!(
        "  transfer CPU {:.1} s/M, first doc at {:.2} s",
        run.cpu / n as f64 * 1e6,
        run.first_secs
    );
    let m = finish(es, &label, &idx, n, start, cpu0, &extra).await;
    cleanup(es, &idx, Some(&format!("logtransfer-{group}"))).await;
    m
}

/// ~100-byte access-log lines as logagent encodes them (one host, 4 files).
fn agent_event(seq: u64, base_ms: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(base_ms + (seq / 40) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let f = seq % 4;
    let line = format!(
        "10.0.0.{} - - [21/Nov/2026:07:00:00 +0000] \"GET /item/{seq:010} HTTP/1.1\" 200 512 \"-\" \"bench\"",
        seq % 250
    );
    json!({
        "@timestamp": ts,
        "message": line,
        "host": {"name": "bench", "id": "bench", "ip": "10.0.0.5"},
        "log": {
            "file": {
                "path": format!("/var/log/app/app{f}.log"),
                "device": 2049,
                "inode": 1_234_560 + f,
                "fingerprint": format!("{:016x}", 0x9f86_d081_0000_0000u64 + f),
            },
            "offset": (seq / 4) * 101,
        },
        "agent": {"type": "logagent", "version": "0.1.0", "id": "bench"},
    })
    .to_string()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let round: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let configs: Vec<String> = args
        .next()
        .unwrap_or_else(|| "before,after,lt".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let es_url = benches::stack_env("ES_URL");
    let es = Elasticsearch::new(Transport::single_node(&es_url).expect("ES_URL"));
    let run = std::process::id();
    let topic = format!("escost-{run}");
    let partitions = 4;

    let base_ms = chrono::Utc::now().timestamp_millis();
    let payloads: Vec<String> = (0..n).map(|s| agent_event(s, base_ms)).collect();
    let offsets = benches::produce_topic(&brokers, &topic, partitions, &payloads).await;
    let avg = payloads.iter().map(String::len).sum::<usize>() as f64 / n.max(1) as f64;
    println!("round {round}: {n} agent-shaped events of {avg:.0} bytes on average, topic {topic} ({partitions} partitions)");

    // The ES process's idle rate (other processes of the stack aside).
    let c0 = es_cpu_now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("ES idle: {:.3} cores over 3 s", (es_cpu_now() - c0) / 3.0);
    // JVM warm-up, not reported.
    let warm = offsets.len().min(50_000);
    let _ = ideal(
        &es,
        "after",
        &topic,
        &offsets[..warm],
        &payloads,
        5000,
        4,
        "warm",
    )
    .await;

    let k = configs.len();
    let mut ideal_after = None;
    let mut lt = None;
    for i in 0..k {
        let c = &configs[(i + round) % k];
        let tag = format!("{i}");
        if let Some(bulk) = c.strip_prefix("lt") {
            // `lt`, or `lt:max_docs=10000;max_in_flight=2`
            let bulk = bulk.trim_start_matches(':').replace(';', "\n");
            lt = Some(
                logtransfer(&es, &brokers, &es_url, &topic, n, &tag, &bulk)
                    .await
                    .secs,
            );
        } else if let Some((name, shape)) = c.split_once('@') {
            // `after@10000x2`: docs per request x in flight
            let (d, f) = shape.split_once('x').expect("NxM");
            let _ = ideal(
                &es,
                name,
                &topic,
                &offsets,
                &payloads,
                d.parse().expect("docs"),
                f.parse().expect("in flight"),
                &tag,
            )
            .await;
        } else {
            let m = ideal(&es, c, &topic, &offsets, &payloads, 5000, 4, &tag).await;
            if c == "after" {
                ideal_after = Some(m.secs);
            }
        }
    }
    if let (Some(i), Some(l)) = (ideal_after, lt) {
        println!(
            "logtransfer reached {:.0}% of the ideal loader with today's template (this round)",
            100.0 * i / l
        );
    }
    benches::delete_topic(&brokers, &topic).await;
}
