//! The console's search latency (issue #16) on the local Elasticsearch.
//!
//! 1. Installs logtransfer's index template for the topic
//!    `bench_console_log` (indices `bench_console_log-%Y.%m.%d`; its priority
//!    raised if an overlapping template would win) and, unless
//!    those indices already hold exactly N documents, deletes them and
//!    bulk-loads N documents made as logtransfer makes them
//!    (`transfer::doc::make_doc`, `_id` `topic-partition-offset`, `create`
//!    bulk bodies of 5,000 documents): 20 hosts × 5 files (nginx access and
//!    error logs, an application and a worker log, syslog), `fields.env` and
//!    `fields.service`, offsets increasing per file, timestamps spread evenly
//!    over the 24 hours before the load; then refreshes.
//! 2. Runs R searches exactly as the console's `GET /api/search` does
//!    (`control::explore::Logs::explore`: `_field_caps` for the `fields.*`
//!    names, then one `_search` for a page of 100 lines with highlight, the
//!    histogram and the sidebar's top values) over a random 15-minute window
//!    inside the loaded day, with a mix of queries (all, words, phrases,
//!    `field:value`), half of them with a `host.name` filter, after
//!    warm-up searches. Prints the wall-clock latency of `explore`
//!    (p50/p95/p99/max, nearest rank) and Elasticsearch's `took`.
//! 3. With `--split`: the same windows and queries again as raw `_search`
//!    requests (`request_cache=false`) of the console's body with and without
//!    highlight and aggregations, and the `_field_caps` request alone, to
//!    show which part costs.
//!
//! Run on the local stack:
//!   ES_URL=http://127.0.0.1:29200 cargo run --release -p benches --bin console_search -- [N] [R] [--split] [--seed S]
//!   # N = 1000000 documents, R = 200 searches; S (windows and queries): from the clock

use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use common::event::{Agent, FileInfo, Host, LogInfo};
use common::LogEvent;
use control::config::ControlConfig;
use control::explore::{Explore, FieldFilter, Logs};
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{
    IndicesDeleteParts, IndicesGetIndexTemplateParts, IndicesGetParts,
    IndicesPutIndexTemplateParts, IndicesRefreshParts, IndicesSimulateIndexTemplateParts,
};
use elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;
use transfer::bulk::build_body;
use transfer::doc::{make_doc, IndexPattern};

const TOPIC: &str = "bench_console_log";
const INDICES: &str = "bench_console_log-*";
const PER_REQUEST: usize = 5_000;
const IN_FLIGHT: usize = 2;
const PARTITIONS: i32 = 4;
const HOSTS: usize = 20;
const FILES: [&str; 5] = [
    "/var/log/nginx/access.log",
    "/var/log/nginx/error.log",
    "/var/log/app/app.log",
    "/var/log/app/worker.log",
    "/var/log/syslog",
];
const WARM_UP: usize = 10;
const PAGE: usize = 100;
const WINDOW_MINUTES: i64 = 15;

const WORDS: &[&str] = &[
    "laptop",
    "monitor",
    "keyboard",
    "mouse",
    "headphones",
    "camera",
    "tablet",
    "charger",
    "backpack",
    "speaker",
    "router",
    "printer",
    "lamp",
    "chair",
    "desk",
    "bottle",
    "jacket",
    "sneakers",
    "watch",
    "wallet",
    "umbrella",
    "blender",
    "kettle",
    "toaster",
    "guitar",
    "bicycle",
    "helmet",
    "tent",
    "novel",
    "puzzle",
];
const QUEUES: &[&str] = &["emails", "invoices", "thumbnails", "exports", "webhooks"];
const PROVIDERS: &[&str] = &["stripe", "adyen", "paypal"];

fn host_name(h: usize) -> String {
    match h {
        0..8 => format!("web-{:02}", h + 1),
        8..14 => format!("api-{:02}", h - 7),
        14..17 => format!("db-{:02}", h - 13),
        _ => format!("batch-{:02}", h - 16),
    }
}

fn env_of(h: usize) -> &'static str {
    match h % 10 {
        0..7 => "prod",
        7 | 8 => "staging",
        _ => "dev",
    }
}

fn service_of(h: usize) -> &'static str {
    ["shop", "billing", "search", "accounts"][h % 4]
}

fn ip(rng: &mut StdRng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.random_range(0..4),
        rng.random_range(0..256),
        rng.random_range(1..255)
    )
}

/// One line of file `file` of host `host` at `ts`.
fn message(rng: &mut StdRng, host: &str, file: usize, ts: DateTime<Utc>) -> String {
    let word = *WORDS.choose(rng).unwrap_or(&"thing");
    let id: u32 = rng.random_range(10_000..999_999);
    let ms: u32 = rng.random_range(1..2_500);
    match file {
        0 => {
            let (method, path) = match rng.random_range(0..10) {
                0..3 => ("GET", format!("/api/orders/{id}")),
                3 => ("POST", "/api/cart".to_string()),
                4 => ("GET", format!("/search?q={word}")),
                5 => ("GET", format!("/static/app.{:08x}.js", id)),
                6 => ("POST", "/checkout".to_string()),
                7 => ("GET", format!("/api/users/{}/profile", id % 5000)),
                8 => ("GET", "/health".to_string()),
                _ => ("GET", "/".to_string()),
            };
            let status = match rng.random_range(0..100) {
                0..85 => 200,
                85..91 => 304,
                91..96 => 404,
                96..98 => 500,
                98 => 502,
                _ => 503,
            };
            format!(
                r#"{} - - [{}] "{method} {path} HTTP/1.1" {status} {} "https://shop.example.com/" "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" rt={:.3}"#,
                ip(rng),
                ts.format("%d/%b/%Y:%H:%M:%S +0000"),
                rng.random_range(200..90_000),
                f64::from(ms) / 1000.0
            )
        }
        1 => {
            let head = format!(
                "{} [{}] {}#0: *{}",
                ts.format("%Y/%m/%d %H:%M:%S"),
                if rng.random_range(0..4) == 0 {
                    "warn"
                } else {
                    "error"
                },
                rng.random_range(1000..9999),
                id
            );
            let client = ip(rng);
            match rng.random_range(0..4) {
                0 => format!("{head} upstream timed out (110: Connection timed out) while reading response header from upstream, client: {client}, server: shop.example.com, request: \"GET /api/cart HTTP/1.1\", upstream: \"http://10.0.2.5:8080/api/cart\""),
                1 => format!("{head} connect() failed (111: Connection refused) while connecting to upstream, client: {client}, server: shop.example.com, request: \"POST /checkout HTTP/1.1\""),
                2 => format!("{head} open() \"/srv/www/img/{word}.png\" failed (2: No such file or directory), client: {client}, server: shop.example.com"),
                _ => format!("{head} an upstream response is buffered to a temporary file /var/cache/nginx/proxy_temp/{} while reading upstream, client: {client}", id % 100),
            }
        }
        2 => {
            let t = ts.to_rfc3339_opts(SecondsFormat::Millis, true);
            let cid = id % 50_000;
            let (level, module, text) = match rng.random_range(0..20) {
                0..4 => ("INFO", "orders", format!("order {id} created for customer {cid} total={}.{:02} EUR", id % 500, id % 100)),
                4..6 => ("INFO", "cart", format!("customer {cid} added {word} to cart")),
                6..8 => ("INFO", "payments", format!("payment {id} authorised by {} in {ms} ms", PROVIDERS.choose(rng).unwrap_or(&"stripe"))),
                8 => ("WARN", "payments", format!("payment {id} declined by {}: insufficient funds", PROVIDERS.choose(rng).unwrap_or(&"stripe"))),
                9..11 => ("DEBUG", "catalog", format!("cache miss for key product:{word}:{id}, loading from db")),
                11 => ("WARN", "db", format!("slow query took {ms} ms: SELECT * FROM orders WHERE customer_id = $1")),
                12 => ("WARN", "inventory", format!("retrying request to inventory service (attempt {}/3): connection reset by peer", rng.random_range(1..4))),
                13..15 => ("INFO", "auth", format!("user {cid} logged in from {}", ip(rng))),
                15 => ("INFO", "auth", format!("session {:016x} expired", rng.random::<u64>())),
                16 => ("ERROR", "mailer", format!("failed to send email to customer {cid}: smtp timeout after 30000 ms")),
                17 => ("ERROR", "orders", format!("order {id} failed: inventory reservation for {word} timed out")),
                _ => ("INFO", "http", format!("GET /api/orders/{id} completed 200 in {ms} ms")),
            };
            format!("{t} {level:<5} [{module}] {text}")
        }
        3 => {
            let t = ts.to_rfc3339_opts(SecondsFormat::Millis, true);
            let queue = QUEUES.choose(rng).unwrap_or(&"emails");
            match rng.random_range(0..10) {
                0..6 => format!("{t} INFO job {id} ({queue}) finished in {ms} ms"),
                6 => format!(
                    "{t} ERROR job {id} ({queue}) failed: upstream returned 503, will retry in {}s",
                    rng.random_range(5..120)
                ),
                7 | 8 => format!(
                    "{t} INFO picked up {} jobs from queue {queue}",
                    rng.random_range(1..50)
                ),
                _ => format!(
                    "{t} DEBUG heartbeat ok, {} workers idle",
                    rng.random_range(0..8)
                ),
            }
        }
        _ => {
            let t = ts.format("%b %e %H:%M:%S");
            let pid = rng.random_range(300..65_000);
            match rng.random_range(0..6) {
                0 => format!("{t} {host} systemd[1]: Started Session {} of user deploy.", id % 1000),
                1 => format!("{t} {host} CRON[{pid}]: (root) CMD (/usr/local/bin/backup.sh --target s3://backups/{host})"),
                2 => format!("{t} {host} sshd[{pid}]: Accepted publickey for deploy from {} port {} ssh2", ip(rng), rng.random_range(30_000..60_000)),
                3 => format!("{t} {host} kernel: [{}.{:06}] TCP: request_sock_TCP: Possible SYN flooding on port 443. Sending cookies.", id, ms),
                4 => format!("{t} {host} dockerd[{pid}]: time=\"{}\" level=info msg=\"container {:012x} health status healthy\"", ts.to_rfc3339_opts(SecondsFormat::Secs, true), rng.random::<u64>() & 0xffff_ffff_ffff),
                _ => format!("{t} {host} systemd-journald[{pid}]: Data hash table of /var/log/journal/system.journal has a fill level at 75.0, suggesting rotation."),
            }
        }
    }
}

/// The N documents, made into `_bulk` bodies of [`PER_REQUEST`] as
/// logtransfer makes them; timestamps from `start` over 24 h.
struct Generator {
    rng: StdRng,
    n: u64,
    next: u64,
    start: DateTime<Utc>,
    file_offsets: Vec<u64>,
    kafka_offsets: Vec<i64>,
    pattern: IndexPattern,
}

impl Generator {
    fn body(&mut self) -> Option<Vec<u8>> {
        if self.next >= self.n {
            return None;
        }
        let end = (self.next + PER_REQUEST as u64).min(self.n);
        let mut docs = Vec::with_capacity((end - self.next) as usize);
        for i in self.next..end {
            let f = (i % (HOSTS * FILES.len()) as u64) as usize;
            let (h, file) = (f / FILES.len(), f % FILES.len());
            let ts =
                self.start + Span::milliseconds((i as i128 * 86_400_000 / self.n as i128) as i64);
            let host = host_name(h);
            let msg = message(&mut self.rng, &host, file, ts);
            let ipaddr = format!("10.0.{}.{}", h / 10, 10 + h);
            let ev = LogEvent {
                timestamp: ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                host: Host {
                    id: format!("{host}-{ipaddr}"),
                    name: host.clone(),
                    ip: ipaddr.clone(),
                },
                log: LogInfo {
                    file: FileInfo {
                        path: FILES[file].to_string(),
                        device: 2049,
                        inode: 1_000_000 + f as u64 * 7919,
                        fingerprint: format!(
                            "{:016x}",
                            (f as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ),
                    },
                    offset: self.file_offsets[f],
                    flags: if self.rng.random_range(0..2000) == 0 {
                        vec!["truncated".into()]
                    } else {
                        Vec::new()
                    },
                },
                agent: Agent {
                    kind: "logagent".into(),
                    version: "0.1.0".into(),
                    id: format!("{host}-{ipaddr}"),
                },
                fields: BTreeMap::from([
                    ("env".to_string(), env_of(h).to_string()),
                    ("service".to_string(), service_of(h).to_string()),
                ]),
                extra: BTreeMap::new(),
                message: msg,
            };
            self.file_offsets[f] += ev.message.len() as u64 + 1;
            let partition = (h as i32) % PARTITIONS;
            let offset = self.kafka_offsets[partition as usize];
            self.kafka_offsets[partition as usize] += 1;
            let payload = serde_json::to_vec(&ev).expect("an event serialises");
            docs.push(make_doc(
                TOPIC,
                partition,
                offset,
                Some(&payload),
                None,
                &self.pattern,
            ));
        }
        self.next = end;
        let mut body = Vec::with_capacity(docs.len() * 700);
        build_body(&docs, &mut body);
        Some(body)
    }
}

/// Installs logtransfer's template for [`TOPIC`] (`transfer::es`), then
/// makes sure it is the one a new bench index gets: an overlapping template
/// of a higher priority (another test's `*-*.*.*`) would win otherwise. Its
/// body stays logtransfer's; only the priority is raised above all others.
async fn install_template(es: &Elasticsearch, pattern: &IndexPattern) {
    let topics = [TOPIC.to_string()];
    transfer::es::install_template(es, TOPIC, pattern, &topics)
        .await
        .expect("install the template");
    let probe = pattern.render(TOPIC, Utc::now());
    let sim: Value = es
        .indices()
        .simulate_index_template(IndicesSimulateIndexTemplateParts::Name(&probe))
        .send()
        .await
        .expect("simulate the template")
        .json()
        .await
        .expect("simulate JSON");
    // `overlapping` lists the matching templates that lose.
    let loses = sim["overlapping"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["name"] == TOPIC));
    if !loses {
        return;
    }
    let all: Value = es
        .indices()
        .get_index_template(IndicesGetIndexTemplateParts::None)
        .send()
        .await
        .expect("list templates")
        .json()
        .await
        .expect("templates JSON");
    let top = all["index_templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["index_template"]["priority"].as_u64())
        .max()
        .unwrap_or(200);
    let mut body = transfer::es::template_body(pattern, &topics);
    body["priority"] = json!(top + 1);
    let r = es
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(TOPIC))
        .body(body)
        .send()
        .await
        .expect("raise the template's priority");
    assert!(
        r.status_code().is_success(),
        "raise the template's priority: {}",
        r.text().await.unwrap_or_default()
    );
    println!(
        "template {TOPIC}: priority raised to {} above an overlapping template",
        top + 1
    );
}

async fn delete_bench_indices(es: &Elasticsearch) {
    let v: Value = es
        .indices()
        .get(IndicesGetParts::Index(&[INDICES]))
        .send()
        .await
        .expect("list the bench indices")
        .json()
        .await
        .expect("index list");
    let names: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    // Only the bench's own indices, by name.
    let names: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(&format!("{TOPIC}-")))
        .collect();
    if names.is_empty() {
        return;
    }
    println!("deleting {}", names.join(", "));
    let r = es
        .indices()
        .delete(IndicesDeleteParts::Index(&names))
        .send()
        .await
        .expect("delete the bench indices");
    assert!(r.status_code().is_success(), "delete: {}", r.status_code());
}

async fn load(es: &Elasticsearch, n: u64, pattern: IndexPattern) -> f64 {
    delete_bench_indices(es).await;
    let start = Utc::now() - Span::hours(24);
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(16),
        n,
        next: 0,
        start,
        file_offsets: vec![0; HOSTS * FILES.len()],
        kafka_offsets: vec![0; PARTITIONS as usize],
        pattern,
    };
    let bodies = std::iter::from_fn(move || generator.body());
    let t0 = Instant::now();
    let loaded = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<(), String>> = stream::iter(bodies)
        .map(|body| {
            let loaded = &loaded;
            async move {
                let r = es
                    .bulk(BulkParts::None)
                    .body(vec![body])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status_code().as_u16();
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                if status != 200 || v["errors"].as_bool() != Some(false) {
                    let first = v["items"]
                        .as_array()
                        .and_then(|items| items.iter().find(|i| i["create"]["error"].is_object()))
                        .map(|i| i["create"]["error"].to_string())
                        .unwrap_or_else(|| v.to_string().chars().take(500).collect());
                    return Err(format!("bulk HTTP {status}: {first}"));
                }
                let done = loaded
                    .fetch_add(PER_REQUEST as u64, std::sync::atomic::Ordering::Relaxed)
                    + PER_REQUEST as u64;
                if done.is_multiple_of(100_000) {
                    println!("  {done} docs in {:.0} s", t0.elapsed().as_secs_f64());
                }
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        panic!("loading failed: {e}");
    }
    let _ = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[INDICES]))
        .send()
        .await
        .expect("refresh");
    t0.elapsed().as_secs_f64()
}

/// The first and last `@timestamp` of the bench indices.
async fn span(es: &Elasticsearch) -> (DateTime<Utc>, DateTime<Utc>) {
    let v: Value = es
        .search(SearchParts::Index(&[INDICES]))
        .body(json!({"size": 0, "aggs": {
            "min": {"min": {"field": "@timestamp"}},
            "max": {"max": {"field": "@timestamp"}}
        }}))
        .send()
        .await
        .expect("span")
        .json()
        .await
        .expect("span JSON");
    let at = |k: &str| {
        DateTime::from_timestamp_millis(v["aggregations"][k]["value"].as_f64().unwrap_or(0.0) as i64)
            .expect("a timestamp")
    };
    (at("min"), at("max"))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    All,
    Words,
    Phrase,
    Field,
}

const QUERIES: &[(Kind, &str)] = &[
    (Kind::All, ""),
    (Kind::All, "*"),
    (Kind::Words, "error"),
    (Kind::Words, "timeout"),
    (Kind::Words, "payment declined"),
    (Kind::Words, "laptop"),
    (Kind::Words, "500"),
    (Kind::Phrase, "\"connection timed out\""),
    (Kind::Phrase, "\"cache miss\""),
    (Kind::Phrase, "\"connection reset by peer\""),
    (Kind::Field, "fields.env:staging"),
    (Kind::Field, "host.name:web-03"),
    (
        Kind::Field,
        "log.file.path:\"/var/log/app/app.log\" AND ERROR",
    ),
];

struct Case {
    kind: Kind,
    filtered: bool,
    explore: Explore,
}

fn cases(count: usize, from: DateTime<Utc>, to: DateTime<Utc>, seed: u64) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let window = Span::minutes(WINDOW_MINUTES);
    let room = (to - window - from).num_milliseconds().max(1);
    (0..count)
        .map(|_| {
            let start = from + Span::milliseconds(rng.random_range(0..room));
            let (kind, query) = QUERIES[rng.random_range(0..QUERIES.len())];
            let filtered = rng.random_bool(0.5);
            let filters = if filtered {
                vec![FieldFilter::parse("host.name:api-02").expect("a filter")]
            } else {
                Vec::new()
            };
            Case {
                kind,
                filtered,
                explore: Explore {
                    query: query.to_string(),
                    from: start,
                    to: start + window,
                    filters,
                    size: PAGE,
                    after: None,
                    aggregations: true,
                },
            }
        })
        .collect()
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn summary(samples: &[f64]) -> String {
    let s = sorted(samples.to_vec());
    format!(
        "p50 {:7.1}  p95 {:7.1}  p99 {:7.1}  max {:7.1}",
        pct(&s, 50.0),
        pct(&s, 95.0),
        pct(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN)
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `_search` with `body`, bypassing the request cache; (wall ms, took ms).
async fn raw_search(es: &Elasticsearch, body: Value) -> (f64, f64) {
    let t = Instant::now();
    let r = es
        .search(SearchParts::Index(&[INDICES]))
        .request_cache(false)
        .body(body)
        .send()
        .await
        .expect("search");
    let ok = r.status_code().is_success();
    let v: Value = r.json().await.expect("search JSON");
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    assert!(ok, "search failed: {v}");
    (wall, v["took"].as_f64().unwrap_or(f64::NAN))
}

async fn split(es: &Elasticsearch, logs: &Logs, cases: &[Case]) {
    let extra = logs.custom_fields().await.expect("field caps");
    let variants: [(&str, bool, bool, bool); 5] = [
        // (name, hits, highlight, aggregations)
        ("console body (hits+highlight+aggs)", true, true, true),
        ("no highlight", true, false, true),
        ("no aggregations", true, true, false),
        ("hits only (no highlight, no aggs)", true, false, false),
        ("aggs only (size 0)", false, false, true),
    ];
    let mut wall = vec![Vec::new(); variants.len()];
    let mut took = vec![Vec::new(); variants.len()];
    let mut caps = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let t = Instant::now();
        logs.custom_fields().await.expect("field caps");
        caps.push(t.elapsed().as_secs_f64() * 1000.0);
        for k in 0..variants.len() {
            // Rotate the order so no variant always comes first.
            let j = (i + k) % variants.len();
            let (_, hits, highlight, aggs) = variants[j];
            let e = Explore {
                aggregations: aggs,
                ..c.explore.clone()
            };
            let mut body = e.body(&extra).expect("a body");
            body["size"] = if hits { (PAGE + 1).into() } else { 0.into() };
            if !highlight {
                body.as_object_mut().map(|b| b.remove("highlight"));
            }
            let (w, tk) = raw_search(es, body).await;
            wall[j].push(w);
            took[j].push(tk);
        }
    }
    println!();
    println!(
        "split: the same {} windows and queries, raw _search (request_cache=false), ms:",
        cases.len()
    );
    for (j, (name, ..)) in variants.iter().enumerate() {
        println!("  {name:<38} wall {}", summary(&wall[j]));
        println!("  {:<38} took {}", "", summary(&took[j]));
    }
    println!("  {:<38} wall {}", "_field_caps (fields.*)", summary(&caps));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let do_split = args.iter().any(|a| a == "--split");
    // Windows and queries from a seed: a new one each run (printed), so a
    // run does not repeat the searches, and caches, of the one before.
    let seed: u64 = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros().unsigned_abs());
    let mut nums = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--seed"))
        .map(|(_, a)| a);
    let n: u64 = nums
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = nums.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let es_url = benches::stack_env("ES_URL");
    let es = Elasticsearch::new(Transport::single_node(&es_url).expect("ES_URL"));

    let pattern = IndexPattern::new("{topic}-%Y.%m.%d").expect("pattern");
    install_template(&es, &pattern).await;

    let have = benches::es_count(&es, INDICES).await;
    if have == n {
        println!("{INDICES} already holds {n} docs: reusing them");
    } else {
        println!("{INDICES} holds {have} docs, not {n}: loading {n} ({PER_REQUEST} docs per _bulk, {IN_FLIGHT} in flight)");
        let secs = load(&es, n, pattern).await;
        println!(
            "loaded {n} docs in {secs:.1} s ({:.0} docs/s, refresh included)",
            n as f64 / secs
        );
    }
    let count = benches::es_count(&es, INDICES).await;
    assert_eq!(count, n, "{INDICES} holds {count} docs after the load");
    let stats: Value = es
        .indices()
        .stats(elasticsearch::indices::IndicesStatsParts::IndexMetric(
            &[INDICES],
            &["docs", "store", "segments"],
        ))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    let p = &stats["_all"]["primaries"];
    let (from, to) = span(&es).await;
    println!(
        "docs: {count} in {} indices, {:.0} MiB, {} segments, {from} .. {to}",
        stats["indices"].as_object().map_or(0, |m| m.len()),
        p["store"]["size_in_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        p["segments"]["count"]
    );

    let mut cfg = ControlConfig::from_env(|k| std::env::var(k).ok());
    cfg.elasticsearch.index = INDICES.to_string();
    let logs = Logs::new(&cfg).expect("control config");

    let all = cases(WARM_UP + rounds, from, to, seed);
    let (warm, measured) = all.split_at(WARM_UP);
    for c in warm {
        logs.explore(&c.explore).await.expect("warm-up search");
    }
    println!(
        "{WARM_UP} warm-up searches done; measuring {rounds} (seed {seed}, load average {})",
        loadavg()
    );
    let mut wall = Vec::with_capacity(rounds);
    let mut took = Vec::with_capacity(rounds);
    let mut totals = Vec::with_capacity(rounds);
    let mut by_kind: BTreeMap<(Kind, bool), Vec<f64>> = BTreeMap::new();
    for c in measured {
        let t = Instant::now();
        let page = logs.explore(&c.explore).await.expect("search");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        wall.push(ms);
        took.push(page.took_ms as f64);
        totals.push(page.total as f64);
        by_kind.entry((c.kind, c.filtered)).or_default().push(ms);
        assert!(page.histogram.is_some(), "no histogram");
    }
    println!("load average after: {}", loadavg());
    println!();
    println!(
        "console search (Logs::explore: _field_caps + _search, size {PAGE}, highlight, histogram + sidebar aggs), {WINDOW_MINUTES}-minute windows, {rounds} searches, ms:"
    );
    println!("  wall clock around explore  {}", summary(&wall));
    let tk = sorted(took);
    println!(
        "  Elasticsearch took         p50 {:7.1}  p95 {:7.1}",
        pct(&tk, 50.0),
        pct(&tk, 95.0)
    );
    let tot = sorted(totals);
    println!(
        "  matching lines per search: p50 {:.0}, max {:.0}",
        pct(&tot, 50.0),
        tot.last().copied().unwrap_or(0.0)
    );
    println!("  by query kind (wall clock):");
    for ((kind, filtered), v) in &by_kind {
        let s = sorted(v.clone());
        println!(
            "    {:<7} {:<14} n={:3}  p50 {:7.1}  p95 {:7.1}  max {:7.1}",
            format!("{kind:?}"),
            if *filtered { "+host filter" } else { "" },
            v.len(),
            pct(&s, 50.0),
            pct(&s, 95.0),
            s.last().copied().unwrap_or(f64::NAN)
        );
    }
    let p95 = pct(&sorted(wall), 95.0);
    println!(
        "target p95 <= 300 ms for a {WINDOW_MINUTES}-minute range: {} (p95 {p95:.1} ms)",
        if p95 <= 300.0 { "met" } else { "NOT met" }
    );

    if do_split {
        split(&es, &logs, measured).await;
    }
}
