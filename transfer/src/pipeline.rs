//! The consume → batch → write → commit loop.
//!
//! # Commit rule
//!
//! A partition's offset is committed only after every message below it was
//! written by its sink (created, already present, or dead-lettered):
//!
//! - each partition has at most one batch in flight, and batches of one
//!   partition are cut in offset order, so batches complete in order and the
//!   committed offset (last offset of the batch + 1) only moves forward;
//! - a batch is retried (with exponential backoff and jitter) until every
//!   document in it is written; a document refused for good is replaced by a
//!   dead letter, which must itself be written (to its index, or to the
//!   dead-letter Kafka topic: [`crate::dlq`]) before the batch completes;
//! - a completed batch is committed only if its partition is still assigned
//!   to us in the same assignment epoch; batches of revoked partitions are
//!   dropped, and cancelled when in flight, uncommitted (the next owner
//!   writes them again; deterministic `_id`s make that a no-op);
//! - while too many bytes wait to be written, the assigned partitions are
//!   paused, and partitions assigned meanwhile start paused, so memory stays
//!   bounded whatever the sink's outage and the group's rebalances.

use crate::bulk::Outcome;
use crate::config::{DeadLetterMode, SinkKind, TransferConfig};
use crate::dlq::{DeadLetterTopic, Letter};
use crate::doc::{dead_letter, make_doc, same_document, Doc, IndexPattern};
use crate::es;
use crate::kafka::{self, BrokerWatch};
use crate::metrics::{Metrics, PartitionLabels, SinkLabels};
use crate::sink::{EsSink, FanOut, FileSink, Sink};
use crate::Error;
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Tp = (String, i32);

/// Which partitions are ours, each with the epoch of its assignment.
#[derive(Default)]
struct Assignment {
    epochs: HashMap<Tp, u64>,
    next_epoch: u64,
}

/// Consumer callbacks: rebalances update the assignment (and pause newly
/// assigned partitions while the pipeline is paused), statistics feed the
/// lag gauges, commit results feed the counters.
pub struct TransferContext {
    assignment: Arc<Mutex<Assignment>>,
    metrics: Arc<Metrics>,
    /// True while the pipeline holds consumption paused (too many bytes
    /// wait to be written).
    paused: Arc<AtomicBool>,
    /// Whether librdkafka has lost every broker ([`crate::kafka`]).
    brokers: Arc<BrokerWatch>,
}

impl ClientContext for TransferContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&PartitionLabels {
                            topic: topic.clone(),
                            partition,
                        })
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for TransferContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        match rebalance {
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    a.epochs.remove(&(e.topic().to_string(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    a.next_epoch += 1;
                    let epoch = a.next_epoch;
                    a.epochs
                        .insert((e.topic().to_string(), e.partition()), epoch);
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        self.metrics.assigned_partitions.set(a.epochs.len() as i64);
    }

    /// Newly assigned partitions get the pipeline's pause state, both ways:
    /// paused while it is paused (librdkafka fetches every partition it
    /// assigns, so without this the buffer grew without bound during a sink
    /// outage, issue #13 item 4), resumed otherwise (a partition paused,
    /// revoked and assigned again keeps librdkafka's application pause; the
    /// pipeline may have resumed while it was not assigned, and it would
    /// never be fetched again).
    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        if tpl.count() == 0 {
            return;
        }
        let paused = self.paused.load(Ordering::SeqCst);
        let result = if paused { c.pause(tpl) } else { c.resume(tpl) };
        match result {
            Ok(()) if paused => tracing::info!(
                partitions = tpl.count(),
                "newly assigned partitions paused (the sink has not caught up)"
            ),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, paused, "cannot set the pause state of newly assigned partitions")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.metrics.commits.inc();
            }
            Err(e) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %e, "offset commit failed; the messages will be consumed again");
            }
        };
    }
}

type Consumer_ = StreamConsumer<TransferContext>;

fn build_consumer(cfg: &TransferConfig, ctx: TransferContext) -> Result<Consumer_, Error> {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.kafka.consumer {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    if !cfg.kafka.consumer.contains_key("auto.offset.reset") {
        c.set("auto.offset.reset", "earliest");
    }
    // Issue #13 item 5: see `crate::kafka`.
    kafka::set_defaults(&mut c, &cfg.kafka.consumer);
    if let Some(id) = cfg.instance_id() {
        if !cfg.kafka.consumer.contains_key("group.instance.id") {
            tracing::info!(group_instance_id = %id, "static group membership");
            c.set("group.instance.id", id);
            // A static member leaves no group on close: its partitions move
            // only after the session timeout, so keep that short.
            if !cfg.kafka.consumer.contains_key("session.timeout.ms") {
                c.set("session.timeout.ms", "15000");
            }
        }
    }
    c.create_with_context(ctx)
        .map_err(|e| Error::Setup(format!("kafka consumer: {e}")))
}

/// The sink of each routed topic: one per route (a table, a key), the
/// servers' pools shared; a route to several sinks writes through a
/// [`FanOut`].
fn route_sinks(
    cfg: &TransferConfig,
    es: &Arc<dyn Sink>,
) -> Result<HashMap<String, Arc<dyn Sink>>, Error> {
    use crate::sql::{Dialect, Pool, SqlSink};
    let file: Option<Arc<dyn Sink>> = cfg
        .file_sink
        .as_ref()
        .map(|fs| Arc::new(FileSink::new(fs.dir.clone())) as Arc<dyn Sink>);
    let pool = |d: Dialect, c: &Option<crate::config::SqlConfig>| {
        c.as_ref()
            .map(|c| Pool::lazy(d, c.url.expose(), c.max_connections))
            .transpose()
    };
    let pg = pool(Dialect::Postgres, &cfg.postgres)?;
    let my = pool(Dialect::MariaDb, &cfg.mariadb)?;
    let missing =
        |what: &str| Error::Setup(format!("a route names {what}, which is not configured"));
    let mut by_topic: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    for r in &cfg.route {
        let table = r.table.as_deref().unwrap_or_default();
        let mut members: Vec<Arc<dyn Sink>> = Vec::new();
        for kind in r.kinds() {
            members.push(match kind {
                SinkKind::Elasticsearch => Arc::clone(es),
                SinkKind::File => file.clone().ok_or_else(|| missing("file"))?,
                SinkKind::Postgres => Arc::new(SqlSink::new(
                    pg.clone().ok_or_else(|| missing("postgres"))?,
                    table,
                )?),
                SinkKind::MariaDb => Arc::new(SqlSink::new(
                    my.clone().ok_or_else(|| missing("mariadb"))?,
                    table,
                )?),
                SinkKind::Redis => {
                    let rc = cfg.redis.as_ref().ok_or_else(|| missing("redis"))?;
                    Arc::new(crate::redis_sink::RedisSink::new(
                        rc.url.expose(),
                        r.key.as_deref().unwrap_or_default(),
                        rc.data_type,
                        rc.maxlen,
                    )?)
                }
            });
        }
        let sink: Arc<dyn Sink> = if members.len() == 1 {
            members.remove(0)
        } else {
            Arc::new(FanOut::new(members))
        };
        for t in &r.topics {
            by_topic.insert(t.clone(), Arc::clone(&sink));
        }
    }
    Ok(by_topic)
}

/// Sinks by topic.
struct Router {
    default: Arc<dyn Sink>,
    by_topic: HashMap<String, Arc<dyn Sink>>,
}

impl Router {
    fn sink(&self, topic: &str) -> Arc<dyn Sink> {
        self.by_topic
            .get(topic)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.default))
    }
}

#[derive(Default)]
struct PartBuf {
    docs: VecDeque<Doc>,
    bytes: usize,
    since: Option<Instant>,
    epoch: u64,
}

struct Done {
    tp: Tp,
    /// The sink the batch went to (its in-flight slot).
    sink: &'static str,
    epoch: u64,
    next_offset: i64,
    bytes: usize,
    /// Every document written (false: abandoned at shutdown).
    complete: bool,
}

#[derive(Clone)]
struct WriteCtx {
    metrics: Arc<Metrics>,
    initial_backoff: Duration,
    max_backoff: Duration,
    dead_letter_suffix: String,
    max_bytes: usize,
    /// True once shutdown began: a batch that would wait is abandoned.
    stop: watch::Receiver<bool>,
    /// The dead-letter Kafka topic, when configured, and whether it takes
    /// every dead letter (`dead_letter.mode = "kafka"`) or only those the
    /// dead-letter index refused.
    dead_letter_topic: Option<Arc<DeadLetterTopic>>,
    dead_letter_mode: DeadLetterMode,
    /// Per sink: since when every write has failed, and the last error.
    failing: Arc<Mutex<HashMap<&'static str, (Instant, String)>>>,
}

impl WriteCtx {
    fn sink_failed(&self, sink: &'static str, error: String) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        f.entry(sink)
            .and_modify(|e| e.1.clone_from(&error))
            .or_insert((Instant::now(), error));
    }

    fn sink_ok(&self, sink: &'static str) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sink);
    }

    /// A document refused for good: its dead letter goes into `round.again`
    /// (for the dead-letter index) or `round.to_kafka` (mode `kafka`). A
    /// dead letter the index refused goes to the dead-letter topic when
    /// there is one; otherwise it stays in `again` and sets `stop_reason`:
    /// the partition is stopped (it never advances past a message it cannot
    /// account for).
    fn refuse(&self, doc: Doc, status: u16, error: &serde_json::Value, round: &mut Round) {
        // The error type only: ES's `reason` quotes field values (log
        // content, maybe secrets); it stays in the dead letter.
        let why = error
            .get("type")
            .and_then(|r| r.as_str())
            .unwrap_or("unknown");
        if !doc.dead_letter {
            tracing::warn!(index = %doc.index, id = %doc.id, status, error_type = why, "document refused; writing a dead letter (the reason is in it)");
            self.metrics.dead_lettered.inc();
            self.route_dead_letter(
                dead_letter(&doc, status, error, &self.dead_letter_suffix),
                round,
            );
            return;
        }
        if self.dead_letter_topic.is_some() {
            tracing::warn!(index = %doc.index, id = %doc.id, status, error_type = why, "dead letter refused by its index; sending it to the dead-letter topic");
            round.to_kafka.push(Letter {
                doc,
                index_error: Some(format!("HTTP {status}: {why}")),
            });
            return;
        }
        let reason = format!(
            "Elasticsearch refused even the dead letter of {}/{} offset {} in `{}` (HTTP {status}: {why}); the partition is stopped, retried every {} s",
            doc.topic, doc.partition, doc.offset, doc.index, self.max_backoff.as_secs()
        );
        tracing::error!(index = %doc.index, id = %doc.id, status, error_type = why, "dead letter refused; partition stopped");
        round.stop_reason = Some(reason);
        round.again.push(doc);
    }

    /// A new dead letter: to the topic with mode `kafka`, else to its index.
    fn route_dead_letter(&self, letter: Doc, round: &mut Round) {
        if self.dead_letter_topic.is_some() && self.dead_letter_mode == DeadLetterMode::Kafka {
            round.to_kafka.push(Letter {
                doc: letter,
                index_error: None,
            });
        } else {
            round.again.push(letter);
        }
    }

    /// Sends `round.to_kafka` to the dead-letter topic; what Kafka did not
    /// acknowledge stays there and stops the partition (retried every
    /// `retry.max_backoff_ms`). Returns how many were acknowledged.
    async fn send_dead_letters(&self, round: &mut Round) -> u64 {
        let Some(topic) = self.dead_letter_topic.as_ref() else {
            return 0;
        };
        if round.to_kafka.is_empty() {
            return 0;
        }
        let letters = std::mem::take(&mut round.to_kafka);
        let results = topic.send(&letters).await;
        let mut sent = 0;
        for (l, r) in letters.into_iter().zip(results) {
            match r {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::error!(topic = topic.topic(), id = %l.doc.id, error = %e, "the dead-letter topic did not take a dead letter; partition stopped");
                    round.stop_reason = Some(format!(
                        "the dead letter of {}/{} offset {} could be written neither to Elasticsearch nor to the dead-letter topic `{}` ({e}); the partition is stopped, retried every {} s",
                        l.doc.topic, l.doc.partition, l.doc.offset, topic.topic(), self.max_backoff.as_secs()
                    ));
                    round.to_kafka.push(l);
                }
            }
        }
        self.metrics.dead_letters_kafka.inc_by(sent);
        sent
    }
}

/// What one attempt at a batch leaves to do.
#[derive(Default)]
struct Round {
    /// Documents (and dead letters) to write again.
    again: Vec<Doc>,
    /// Dead letters for the dead-letter topic.
    to_kafka: Vec<Letter>,
    /// Set when the partition cannot advance (a dead letter nobody takes).
    stop_reason: Option<String>,
}

/// While a partition is stopped: its gauge and its `/health` problem;
/// dropping it (batch written, or abandoned) clears both.
struct StopMark {
    metrics: Arc<Metrics>,
    key: String,
    on: bool,
}

impl StopMark {
    fn set(&mut self, reason: String) {
        if !self.on {
            self.on = true;
            self.metrics.stopped_partitions.inc();
        }
        self.metrics.problem(&self.key, reason);
    }

    fn clear(&mut self) {
        if self.on {
            self.on = false;
            self.metrics.stopped_partitions.dec();
            self.metrics.resolved(&self.key);
        }
    }
}

impl Drop for StopMark {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Writes `docs` (one partition's, in offset order) until every one is
/// written or dead-lettered; `false` when shutdown came first (the batch is
/// then not committed).
///
/// - A 409 is checked against the stored document: the same message (a
///   replay) counts as written; a different one (the offset reused by a new
///   incarnation of the topic) is written again under its distinct `_id`.
/// - A request answered 413 is split in halves until it fits; a single
///   document still too large, or larger than `bulk.max_bytes`, is
///   dead-lettered (its dead letter keeps the first 32 KiB).
/// - When even a dead letter is refused, it goes to the dead-letter Kafka
///   topic if there is one (with `dead_letter.mode = "kafka"` every dead
///   letter does); otherwise, or when that topic does not take it, the
///   partition stops: the batch is retried every `retry.max_backoff_ms`,
///   `/health` names the partition.
/// - A revoked partition's batch is cancelled by its caller (dropped at an
///   `.await`); nothing of it is committed.
async fn write_batch(sink: Arc<dyn Sink>, docs: Vec<Doc>, mut w: WriteCtx) -> bool {
    let labels = SinkLabels {
        sink: sink.name().to_string(),
    };
    let mut stop_mark = StopMark {
        metrics: Arc::clone(&w.metrics),
        key: docs
            .first()
            .map(|d| format!("stopped:{}/{}", d.topic, d.partition))
            .unwrap_or_default(),
        on: false,
    };
    let mut first = Round::default();
    for d in docs {
        if d.dead_letter || d.source.len() <= w.max_bytes {
            first.again.push(d);
            continue;
        }
        tracing::warn!(index = %d.index, id = %d.id, bytes = d.source.len(), "document larger than bulk.max_bytes; writing a dead letter");
        w.metrics.dead_lettered.inc();
        let error = serde_json::json!({
            "type": "document_too_large",
            "reason": format!("the document is {} bytes, more than bulk.max_bytes ({})", d.source.len(), w.max_bytes),
        });
        w.route_dead_letter(
            dead_letter(&d, 413, &error, &w.dead_letter_suffix),
            &mut first,
        );
    }
    let mut pending: VecDeque<Doc> = first.again.into();
    let mut to_kafka = first.to_kafka;
    // Documents per request: the whole batch, halved on every 413.
    let mut limit = pending.len().max(1);
    let mut attempt: u32 = 0;
    while !pending.is_empty() || !to_kafka.is_empty() {
        let mut round = Round {
            to_kafka: std::mem::take(&mut to_kafka),
            ..Round::default()
        };
        let mut failure: Option<String> = None;
        let mut written = 0u64;
        while !pending.is_empty() {
            let chunk: Vec<Doc> = pending.drain(..limit.min(pending.len())).collect();
            let started = Instant::now();
            let result = sink.write(&chunk).await;
            w.metrics
                .bulk_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let outcomes = match result {
                Ok(outcomes) => outcomes,
                Err(Error::TooLarge { bytes }) if chunk.len() > 1 => {
                    limit = chunk.len() / 2;
                    tracing::info!(
                        docs = chunk.len(),
                        bytes,
                        limit,
                        "bulk request too large (HTTP 413); splitting it"
                    );
                    for d in chunk.into_iter().rev() {
                        pending.push_front(d);
                    }
                    continue;
                }
                Err(Error::TooLarge { bytes }) => vec![Outcome::Refused {
                    status: 413,
                    error: serde_json::json!({
                        "type": "request_too_large",
                        "reason": format!("a bulk request of this document alone ({bytes} bytes) is larger than Elasticsearch takes"),
                    }),
                }],
                Err(e) => {
                    w.metrics.sink_write_failures.get_or_create(&labels).inc();
                    tracing::warn!(sink = sink.name(), docs = chunk.len(), error = %e, attempt, "write failed; retrying");
                    w.sink_failed(sink.name(), e.to_string());
                    failure = Some(e.to_string());
                    round.again.extend(chunk);
                    continue;
                }
            };
            let mut exists = Vec::new();
            let mut any_taken = false;
            for (doc, outcome) in chunk.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Written => {
                        any_taken = true;
                        written += 1;
                    }
                    Outcome::Exists => {
                        any_taken = true;
                        exists.push(doc);
                    }
                    Outcome::Retry => {
                        failure.get_or_insert_with(|| {
                            "documents answered 429, 5xx, a write block or a missing index".into()
                        });
                        round.again.push(doc);
                    }
                    Outcome::Refused { status, error } => {
                        any_taken = true;
                        w.refuse(doc, status, &error, &mut round);
                    }
                }
            }
            if any_taken {
                w.sink_ok(sink.name());
            } else if let Some(f) = &failure {
                w.sink_failed(sink.name(), f.clone());
            }
            if exists.is_empty() {
                continue;
            }
            match sink.stored(&exists).await {
                Err(e) => {
                    failure = Some(e.to_string());
                    round.again.extend(exists);
                }
                Ok(stored) => {
                    for (mut doc, s) in exists.into_iter().zip(stored) {
                        match s {
                            Some(v) if same_document(&doc, &v) => written += 1,
                            Some(_) if !doc.has_distinct_id() => {
                                doc.use_distinct_id();
                                tracing::info!(index = %doc.index, id = %doc.id, "the _id holds a different message (the topic was recreated?); writing under a distinct _id");
                                w.metrics.distinct_ids.inc();
                                round.again.push(doc);
                            }
                            Some(_) => {
                                let error = serde_json::json!({"type": "id_collision", "reason": "both the plain and the distinct _id hold other documents"});
                                w.refuse(doc, 409, &error, &mut round);
                            }
                            None => {
                                failure.get_or_insert_with(|| {
                                    "409, but no stored document was found".into()
                                });
                                round.again.push(doc);
                            }
                        }
                    }
                }
            }
        }
        w.send_dead_letters(&mut round).await;
        w.metrics
            .docs_written
            .get_or_create(&labels)
            .inc_by(written);
        pending = round.again.into();
        to_kafka = round.to_kafka;
        let cap = match (round.stop_reason, failure) {
            (Some(reason), _) => {
                stop_mark.set(reason);
                w.max_backoff
            }
            (None, Some(_)) => w
                .initial_backoff
                .saturating_mul(1u32 << attempt.min(20))
                .min(w.max_backoff),
            (None, None) => {
                stop_mark.clear();
                continue;
            }
        };
        if *w.stop.borrow() {
            return false;
        }
        w.metrics
            .retries
            .inc_by((pending.len() + to_kafka.len()) as u64);
        let sleep = rand::rng().random_range(cap / 2..=cap);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = w.stop.changed() => return false,
        }
        attempt = attempt.saturating_add(1);
    }
    true
}

/// Runs until `shutdown` resolves, then stops fetching, lets in-flight
/// batches finish for up to `grace`, commits what was written and returns.
///
/// # Errors
/// Set-up failures (bad config, consumer creation, subscription).
pub async fn run(
    cfg: TransferConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), Error> {
    let pattern = IndexPattern::new(&cfg.elasticsearch.index_pattern)
        .map_err(|e| Error::Setup(format!("elasticsearch.index_pattern: {e}")))?;
    let es_sink = Arc::new(EsSink::new(es::transport(&cfg.elasticsearch)?));
    tokio::pin!(shutdown);

    // The template must be in place before the first document creates an index.
    let mut backoff = Duration::from_millis(cfg.retry.initial_backoff_ms);
    loop {
        match es::install_template(
            es_sink.client(),
            &cfg.template_name(),
            &pattern,
            &cfg.kafka.topics,
        )
        .await
        {
            Ok(()) => {
                metrics.resolved("template");
                for index in es::sample_indices(&pattern, &cfg.kafka.topics) {
                    match es::shadowed(es_sink.client(), &pattern, &cfg.kafka.topics, &index).await
                    {
                        Ok(None) => {}
                        Ok(Some(overlapping)) => tracing::warn!(
                            template = %cfg.template_name(),
                            %index,
                            ?overlapping,
                            "another index template of higher priority applies to this index with a different mapping than logtransfer's: keyword host.id and log.file.path and a numeric log.offset, which sorting, context and the console need, may be missing; lower that template's priority or give it logtransfer's mapping"
                        ),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot check which template applies")
                        }
                    }
                }
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the index template yet; retrying");
                metrics.problem("template", e.to_string());
                metrics
                    .healthy
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(cfg.retry.max_backoff_ms));
            }
        }
    }
    metrics
        .healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let patterns = pattern.template_patterns(&cfg.kafka.topics);
    if pattern.template_is_broad(&cfg.kafka.topics) {
        tracing::warn!(?patterns, template = %cfg.template_name(), "a topic regex without a literal prefix: the index template's patterns may match other indices; use explicit topics, a `^prefix` regex or a distinctive elasticsearch.index_pattern");
    }
    // ILM-free retention, hourly; aborted with the pipeline.
    let retention = (cfg.elasticsearch.retention_days > 0).then(|| {
        let client = es_sink.client().clone();
        let days = i64::from(cfg.elasticsearch.retention_days);
        let patterns = patterns.clone();
        let pattern = pattern.clone();
        let suffix = cfg.elasticsearch.dead_letter_suffix.clone();
        tokio::spawn(async move {
            loop {
                let cutoff = chrono::Utc::now().date_naive() - chrono::Duration::days(days);
                match es::delete_older_than(&client, &patterns, &pattern, &suffix, cutoff).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(indices = ?gone, days, "retention: deleted indices older than the limit")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention check failed; next in an hour"),
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        })
    });
    let _retention = AbortOnDrop(retention);

    let es_dyn: Arc<dyn Sink> = es_sink.clone();
    let by_topic = route_sinks(&cfg, &es_dyn)?;
    let router = Router {
        default: es_sink,
        by_topic,
    };

    let assignment = Arc::new(Mutex::new(Assignment::default()));
    let paused = Arc::new(AtomicBool::new(false));
    let brokers = Arc::new(BrokerWatch::default());
    let consumer = build_consumer(
        &cfg,
        TransferContext {
            assignment: Arc::clone(&assignment),
            metrics: Arc::clone(&metrics),
            paused: Arc::clone(&paused),
            brokers: Arc::clone(&brokers),
        },
    )?;
    let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| Error::Setup(format!("subscribing to {topics:?}: {e}")))?;
    tracing::info!(?topics, group = %cfg.kafka.group_id, "consuming");

    let (stop_tx, stop_rx) = watch::channel(false);
    let w = WriteCtx {
        metrics: Arc::clone(&metrics),
        initial_backoff: Duration::from_millis(cfg.retry.initial_backoff_ms),
        max_backoff: Duration::from_millis(cfg.retry.max_backoff_ms),
        dead_letter_suffix: cfg.elasticsearch.dead_letter_suffix.clone(),
        max_bytes: cfg.bulk.max_bytes,
        stop: stop_rx,
        dead_letter_topic: DeadLetterTopic::new(&cfg)?.map(Arc::new),
        dead_letter_mode: cfg.dead_letter.mode,
        failing: Arc::default(),
    };
    let stuck_after = Duration::from_secs(cfg.health.stuck_after_secs);
    let mut health_checked = Instant::now();
    // Per partition: when it last had nothing to do or wrote a batch.
    let mut progress: HashMap<Tp, Instant> = HashMap::new();
    let flush_every = Duration::from_millis(cfg.bulk.flush_interval_ms);
    let mut tick = tokio::time::interval((flush_every / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut bufs: HashMap<Tp, PartBuf> = HashMap::new();
    // Per partition with a batch in flight: the batch's assignment epoch and
    // how to cancel it once the partition is revoked.
    let mut in_flight_parts: HashMap<Tp, (u64, AbortHandle)> = HashMap::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    // Batches in flight per sink: each sink has its own `bulk.max_in_flight`
    // slots, so batches retrying through one sink's outage cannot hold
    // back the routes of the others.
    let mut sink_slots: HashMap<&'static str, usize> = HashMap::new();
    let mut buffered: usize = 0;

    let current_epoch = |tp: &Tp| -> Option<u64> {
        assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epochs
            .get(tp)
            .copied()
    };
    let commit = |done: &Done, mode: CommitMode| {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&done.tp.0, done.tp.1, Offset::Offset(done.next_offset))
            .is_ok()
        {
            // Results (async or not) are counted by the commit callback.
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, topic = %done.tp.0, partition = done.tp.1, "commit failed");
            }
        }
    };

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_parts.remove(&done.tp);
                if let Some(n) = sink_slots.get_mut(done.sink) {
                    *n = n.saturating_sub(1);
                }
                buffered -= done.bytes;
                if done.complete && current_epoch(&done.tp) == Some(done.epoch) {
                    commit(&done, CommitMode::Async);
                    progress.insert(done.tp.clone(), Instant::now());
                }
            }
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    let tp = (m.topic().to_string(), m.partition());
                    if let Some(epoch) = current_epoch(&tp) {
                        let doc = make_doc(&tp.0, tp.1, m.offset(), m.payload(), m.timestamp().to_millis(), &pattern);
                        let b = bufs.entry(tp).or_default();
                        if b.epoch != epoch {
                            buffered -= b.bytes;
                            *b = PartBuf { epoch, ..PartBuf::default() };
                        }
                        b.bytes += doc.source.len();
                        buffered += doc.source.len();
                        b.since.get_or_insert_with(Instant::now);
                        b.docs.push_back(doc);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick() => {}
        }

        if brokers.repair(consumer.client(), &cfg.kafka.brokers) {
            metrics.rebootstraps.inc();
        }
        // Cancel the batches of revoked partitions: they are never committed,
        // and a batch waiting out an outage (or a stopped partition) would
        // keep its in-flight slot and its bytes (issue #13 item 4). The next
        // owner writes them again; the deterministic `_id`s make that a 409.
        for (tp, (epoch, handle)) in &in_flight_parts {
            if !handle.is_aborted() && current_epoch(tp) != Some(*epoch) {
                tracing::info!(topic = %tp.0, partition = tp.1, "partition revoked; its batch in flight is cancelled uncommitted");
                metrics.batches_cancelled.inc();
                handle.abort();
            }
        }
        // Drop what belongs to revoked partitions (never written, never committed).
        bufs.retain(|tp, b| {
            let keep = current_epoch(tp) == Some(b.epoch);
            if !keep {
                buffered -= b.bytes;
            }
            keep
        });

        // Start batches that are due, one per partition at a time.
        let now = Instant::now();
        for (tp, b) in bufs.iter_mut() {
            if b.docs.is_empty() || in_flight_parts.contains_key(tp) {
                continue;
            }
            let due = b.docs.len() >= cfg.bulk.max_docs
                || b.bytes >= cfg.bulk.max_bytes
                || b.since
                    .is_some_and(|s| now.duration_since(s) >= flush_every);
            if !due {
                continue;
            }
            let sink = router.sink(&tp.0);
            let slots = sink_slots.entry(sink.name()).or_insert(0);
            if *slots >= cfg.bulk.max_in_flight {
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(d) = b.docs.front() {
                if !batch.is_empty()
                    && (batch.len() >= cfg.bulk.max_docs
                        || bytes + d.source.len() > cfg.bulk.max_bytes)
                {
                    break;
                }
                bytes += d.source.len();
                if let Some(d) = b.docs.pop_front() {
                    batch.push(d);
                }
            }
            b.bytes -= bytes;
            b.since = if b.docs.is_empty() { None } else { Some(now) };
            let next_offset = batch.last().map_or(0, |d| d.offset + 1);
            *slots += 1;
            let done = Done {
                tp: tp.clone(),
                sink: sink.name(),
                epoch: b.epoch,
                next_offset,
                bytes,
                complete: false,
            };
            let (handle, registration) = AbortHandle::new_pair();
            in_flight_parts.insert(tp.clone(), (b.epoch, handle));
            let w = w.clone();
            let batch = Abortable::new(write_batch(sink, batch, w), registration);
            in_flight.push(Box::pin(async move {
                // Cancelled: not complete, so never committed.
                let complete = batch.await.unwrap_or(false);
                Done { complete, ..done }
            }));
        }

        if now.duration_since(health_checked) >= Duration::from_secs(1) {
            health_checked = now;
            let assigned: Vec<Tp> = assignment
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .epochs
                .keys()
                .cloned()
                .collect();
            progress.retain(|tp, _| assigned.contains(tp));
            let lag_of = |tp: &Tp| {
                metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabels {
                        topic: tp.0.clone(),
                        partition: tp.1,
                    })
                    .get()
            };
            let mut stuck = HashSet::new();
            for tp in assigned {
                let waiting = bufs.get(&tp).is_some_and(|b| !b.docs.is_empty())
                    || in_flight_parts.contains_key(&tp);
                let lag = lag_of(&tp);
                let since = progress.entry(tp.clone()).or_insert(now);
                if lag <= 0 && !waiting {
                    *since = now;
                }
                let idle = now.duration_since(*since);
                if idle >= stuck_after {
                    let key = format!("stuck:{}/{}", tp.0, tp.1);
                    metrics.problem(
                        &key,
                        format!(
                            "partition {}/{} has lag ({} messages uncommitted) and has not advanced for {} s",
                            tp.0,
                            tp.1,
                            lag.max(0),
                            idle.as_secs()
                        ),
                    );
                    stuck.insert(key);
                }
            }
            metrics.retain_problems("stuck:", |k| stuck.contains(k));
            let failing = w.failing.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut refusing = HashSet::new();
            for (name, (since, error)) in failing {
                if since.elapsed() >= stuck_after {
                    let key = format!("sink:{name}");
                    metrics.problem(
                        &key,
                        format!(
                            "every write to {name} has failed for {} s: {error}",
                            since.elapsed().as_secs()
                        ),
                    );
                    refusing.insert(key);
                }
            }
            metrics.retain_problems("sink:", |k| refusing.contains(k));
        }

        // Bound memory: pause fetching while too much waits to be written.
        // The flag is set before the assignment is paused, so a partition
        // assigned meanwhile is paused by `post_rebalance`.
        metrics.buffered_bytes.set(buffered as i64);
        metrics.batches_in_flight.set(in_flight.len() as i64);
        let is_paused = paused.load(Ordering::SeqCst);
        if !is_paused && buffered >= cfg.bulk.max_buffered_bytes {
            paused.store(true, Ordering::SeqCst);
            if let Ok(a) = consumer.assignment() {
                if let Err(e) = consumer.pause(&a) {
                    tracing::warn!(error = %e, "cannot pause the assigned partitions");
                }
            }
            metrics.paused.set(1);
            tracing::warn!(buffered, "pausing consumption until the sink catches up");
        } else if is_paused && buffered < cfg.bulk.max_buffered_bytes / 2 {
            paused.store(false, Ordering::SeqCst);
            if let Ok(a) = consumer.assignment() {
                if let Err(e) = consumer.resume(&a) {
                    tracing::warn!(error = %e, "cannot resume the assigned partitions");
                }
            }
            metrics.paused.set(0);
            tracing::info!(buffered, "resuming consumption");
        }
    }

    // Shutdown: stop fetching, let in-flight batches finish within the grace
    // period, commit what they wrote; buffered, unsent messages are left
    // uncommitted for the next owner.
    // Batches waiting to retry are abandoned at once; requests under way may
    // finish within the grace.
    tracing::info!(in_flight = in_flight.len(), "shutting down");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    let mut finished = Vec::new();
    while !in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some(done)) => finished.push(done),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    abandoned = in_flight.len(),
                    "grace period over; abandoning unfinished batches uncommitted"
                );
                break;
            }
        }
    }
    for done in finished
        .iter()
        .filter(|d| d.complete && current_epoch(&d.tp) == Some(d.epoch))
    {
        commit(done, CommitMode::Sync);
    }
    Ok(())
}

/// Aborts a background task when the pipeline returns.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    //! `write_batch` over a fake sink (pure logic: splitting, dead letters,
    //! abandoning at shutdown); delivery itself is tested against the real
    //! stack in `tests/tests/stack/transfer_edges.rs`.
    use super::*;

    /// Answers 413 to any request above `limit` bytes of sources; refuses
    /// (400) documents in indices starting with `bad` and everything in
    /// `bad…-deadletter` too; records the size of every request.
    struct FakeSink {
        limit: usize,
        requests: Mutex<Vec<usize>>,
    }

    impl Sink for FakeSink {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
            Box::pin(async move {
                let bytes: usize = docs.iter().map(|d| d.source.len()).sum();
                self.requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(docs.len());
                if bytes > self.limit {
                    return Err(Error::TooLarge { bytes });
                }
                Ok(docs
                    .iter()
                    .map(|d| {
                        if d.index.starts_with("bad") {
                            Outcome::Refused {
                                status: 400,
                                error: serde_json::json!({"type": "invalid_index_name_exception", "reason": "bad"}),
                            }
                        } else {
                            Outcome::Written
                        }
                    })
                    .collect())
            })
        }
    }

    fn ctx(metrics: &Arc<Metrics>) -> (watch::Sender<bool>, WriteCtx) {
        let (tx, rx) = watch::channel(false);
        let w = WriteCtx {
            metrics: Arc::clone(metrics),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
            dead_letter_suffix: "-deadletter".into(),
            max_bytes: 100_000,
            stop: rx,
            dead_letter_topic: None,
            dead_letter_mode: DeadLetterMode::IndexThenKafka,
            failing: Arc::default(),
        };
        (tx, w)
    }

    fn doc(index: &str, offset: i64, size: usize) -> Doc {
        Doc {
            topic: "t".into(),
            partition: 0,
            offset,
            index: index.into(),
            id: common::document_id("t", 0, offset),
            source: vec![b'x'; size],
            dead_letter: false,
        }
    }

    #[tokio::test]
    async fn a_413_halves_the_request_until_it_fits_and_a_lone_misfit_is_dead_lettered() {
        let metrics = Metrics::new();
        let (_tx, w) = ctx(&metrics);
        let sink = Arc::new(FakeSink {
            limit: 40_000,
            requests: Mutex::default(),
        });
        // 8 documents of 9000 bytes (72000: too large), one of 50000 (too
        // large alone; its dead letter keeps 32 KiB and fits).
        let mut docs: Vec<Doc> = (0..8).map(|o| doc("ok", o, 9_000)).collect();
        docs.push(doc("ok", 8, 50_000));
        let sink_dyn: Arc<dyn Sink> = sink.clone();
        assert!(write_batch(sink_dyn, docs, w).await);
        let requests = sink.requests.lock().unwrap().clone();
        // 9 → 413; 4 + 4 (36000 each) fit; the big one alone → 413 → its
        // dead letter (1) is written.
        assert_eq!(requests, vec![9, 4, 4, 1, 1]);
        assert_eq!(metrics.dead_lettered.get(), 1, "{requests:?}");
        assert_eq!(
            metrics
                .docs_written
                .get_or_create(&SinkLabels {
                    sink: "fake".into()
                })
                .get(),
            9
        );
    }

    #[tokio::test]
    async fn a_refused_dead_letter_stops_the_partition_until_shutdown_abandons_it() {
        let metrics = Metrics::new();
        let (tx, w) = ctx(&metrics);
        let sink: Arc<dyn Sink> = Arc::new(FakeSink {
            limit: usize::MAX,
            requests: Mutex::default(),
        });
        let task = tokio::spawn(write_batch(
            sink,
            vec![doc("ok", 0, 10), doc("bad", 1, 10)],
            w,
        ));
        let m = Arc::clone(&metrics);
        let mut named = false;
        for _ in 0..200 {
            if m.health().is_err_and(|b| b.contains("stopped:t/0")) {
                named = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(named, "{:?}", m.health());
        assert_eq!(m.stopped_partitions.get(), 1);
        let _ = tx.send(true);
        let complete = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("abandoned at once")
            .expect("task");
        assert!(!complete, "an abandoned batch is not committed");
        assert_eq!(m.stopped_partitions.get(), 0);
        assert_eq!(m.health(), Ok("ok\n".into()));
    }
}
