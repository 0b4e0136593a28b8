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
//!   dead letter, which must itself be written before the batch completes;
//! - a completed batch is committed only if its partition is still assigned
//!   to us in the same assignment epoch; batches of revoked partitions are
//!   dropped uncommitted (the next owner writes them again; deterministic
//!   `_id`s make that a no-op);
//! - while too many bytes wait to be written, the assigned partitions are
//!   paused, so memory stays bounded whatever the sink's outage.

use crate::bulk::Outcome;
use crate::config::{SinkKind, TransferConfig};
use crate::doc::{dead_letter, make_doc, Doc, IndexPattern};
use crate::es;
use crate::metrics::{Metrics, PartitionLabels, SinkLabels};
use crate::sink::{EsSink, FileSink, Sink};
use crate::Error;
use futures::future::BoxFuture;
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Tp = (String, i32);

/// Which partitions are ours, each with the epoch of its assignment.
#[derive(Default)]
struct Assignment {
    epochs: HashMap<Tp, u64>,
    next_epoch: u64,
}

/// Consumer callbacks: rebalances update the assignment, statistics feed the
/// lag gauges, commit results feed the counters.
pub struct TransferContext {
    assignment: Arc<Mutex<Assignment>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for TransferContext {
    fn stats(&self, stats: Statistics) {
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
    if !cfg.kafka.consumer.contains_key("statistics.interval.ms") {
        c.set("statistics.interval.ms", "5000");
    }
    c.create_with_context(ctx)
        .map_err(|e| Error::Setup(format!("kafka consumer: {e}")))
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
    epoch: u64,
    next_offset: i64,
    bytes: usize,
}

#[derive(Clone)]
struct WriteCtx {
    metrics: Arc<Metrics>,
    initial_backoff: Duration,
    max_backoff: Duration,
    dead_letter_suffix: String,
}

/// Writes `docs` until every one is written or dead-lettered.
async fn write_batch(sink: Arc<dyn Sink>, docs: Vec<Doc>, w: WriteCtx) {
    let mut pending = docs;
    let mut attempt: u32 = 0;
    let labels = SinkLabels {
        sink: sink.name().to_string(),
    };
    while !pending.is_empty() {
        let started = Instant::now();
        let result = sink.write(&pending).await;
        w.metrics
            .bulk_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut again = Vec::new();
        let mut must_wait = false;
        match result {
            Err(e) => {
                tracing::warn!(sink = sink.name(), docs = pending.len(), error = %e, attempt, "write failed; retrying");
                must_wait = true;
                again = pending;
            }
            Ok(outcomes) => {
                let mut written = 0u64;
                for (doc, outcome) in pending.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Written => written += 1,
                        Outcome::Retry => {
                            must_wait = true;
                            again.push(doc);
                        }
                        Outcome::Refused { status, error } if !doc.dead_letter => {
                            tracing::warn!(index = %doc.index, id = %doc.id, status, %error, "document refused; writing a dead letter");
                            w.metrics.dead_lettered.inc();
                            again.push(dead_letter(&doc, status, &error, &w.dead_letter_suffix));
                        }
                        Outcome::Refused { status, error } => {
                            // A refused dead letter: never drop it, keep trying.
                            tracing::error!(index = %doc.index, id = %doc.id, status, %error, "dead letter refused; retrying");
                            must_wait = true;
                            again.push(doc);
                        }
                    }
                }
                w.metrics
                    .docs_written
                    .get_or_create(&labels)
                    .inc_by(written);
            }
        }
        if must_wait {
            w.metrics.retries.inc_by(again.len() as u64);
            let cap = w
                .initial_backoff
                .saturating_mul(1u32 << attempt.min(20))
                .min(w.max_backoff);
            let sleep = rand::rng().random_range(cap / 2..=cap);
            tokio::time::sleep(sleep).await;
            attempt = attempt.saturating_add(1);
        }
        pending = again;
    }
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
        match es::install_template(es_sink.client(), &pattern).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the index template yet; retrying");
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

    let mut by_topic: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    if let Some(fs) = &cfg.file_sink {
        let file: Arc<dyn Sink> = Arc::new(FileSink::new(fs.dir.clone()));
        for r in cfg.route.iter().filter(|r| r.sink == SinkKind::File) {
            for t in &r.topics {
                by_topic.insert(t.clone(), Arc::clone(&file));
            }
        }
    }
    let router = Router {
        default: es_sink,
        by_topic,
    };

    let assignment = Arc::new(Mutex::new(Assignment::default()));
    let consumer = build_consumer(
        &cfg,
        TransferContext {
            assignment: Arc::clone(&assignment),
            metrics: Arc::clone(&metrics),
        },
    )?;
    let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| Error::Setup(format!("subscribing to {topics:?}: {e}")))?;
    tracing::info!(?topics, group = %cfg.kafka.group_id, "consuming");

    let w = WriteCtx {
        metrics: Arc::clone(&metrics),
        initial_backoff: Duration::from_millis(cfg.retry.initial_backoff_ms),
        max_backoff: Duration::from_millis(cfg.retry.max_backoff_ms),
        dead_letter_suffix: cfg.elasticsearch.dead_letter_suffix.clone(),
    };
    let flush_every = Duration::from_millis(cfg.bulk.flush_interval_ms);
    let mut tick = tokio::time::interval((flush_every / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut bufs: HashMap<Tp, PartBuf> = HashMap::new();
    let mut in_flight_parts: HashSet<Tp> = HashSet::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut buffered: usize = 0;
    let mut paused = false;

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
                buffered -= done.bytes;
                if current_epoch(&done.tp) == Some(done.epoch) {
                    commit(&done, CommitMode::Async);
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
            if in_flight.len() >= cfg.bulk.max_in_flight {
                break;
            }
            if b.docs.is_empty() || in_flight_parts.contains(tp) {
                continue;
            }
            let due = b.docs.len() >= cfg.bulk.max_docs
                || b.bytes >= cfg.bulk.max_bytes
                || b.since
                    .is_some_and(|s| now.duration_since(s) >= flush_every);
            if !due {
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
            let done = Done {
                tp: tp.clone(),
                epoch: b.epoch,
                next_offset,
                bytes,
            };
            in_flight_parts.insert(tp.clone());
            let sink = router.sink(&tp.0);
            let w = w.clone();
            in_flight.push(Box::pin(async move {
                write_batch(sink, batch, w).await;
                done
            }));
        }

        // Bound memory: pause fetching while too much waits to be written.
        metrics.buffered_bytes.set(buffered as i64);
        if !paused && buffered >= cfg.bulk.max_buffered_bytes {
            if let Ok(a) = consumer.assignment() {
                if consumer.pause(&a).is_ok() {
                    paused = true;
                    metrics.paused.set(1);
                    tracing::warn!(buffered, "pausing consumption until the sink catches up");
                }
            }
        } else if paused && buffered < cfg.bulk.max_buffered_bytes / 2 {
            if let Ok(a) = consumer.assignment() {
                if consumer.resume(&a).is_ok() {
                    paused = false;
                    metrics.paused.set(0);
                    tracing::info!(buffered, "resuming consumption");
                }
            }
        }
    }

    // Shutdown: stop fetching, let in-flight batches finish within the grace
    // period, commit what they wrote; buffered, unsent messages are left
    // uncommitted for the next owner.
    tracing::info!(in_flight = in_flight.len(), "shutting down");
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
        .filter(|d| current_epoch(&d.tp) == Some(d.epoch))
    {
        commit(done, CommitMode::Sync);
    }
    Ok(())
}
