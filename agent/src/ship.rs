//! The shipper: WAL → Kafka → WAL acks and Kafka-acked checkpoints.
//!
//! One thread reads durable WAL records in order and produces every line as
//! one message (rdkafka, `acks=all`, `enable.idempotence=true`, no delivery
//! timeout: a message is retried until the broker takes it, however long
//! the outage). A record is *done* when Kafka acknowledged all of its
//! messages. The WAL is acknowledged up to the longest done prefix, but never
//! beyond the writer's checkpointed seq, and only after the checkpoint store
//! (which then holds the records' durable and acked offsets) was flushed.
//!
//! A message Kafka refuses (or that librdkafka fails locally) is sent again
//! after a back-off; the record stays unacknowledged meanwhile, so nothing is
//! dropped. A refusal that is for good ([`crate::refusal`]: too large for
//! the topic, a partition that does not exist…) sends the message to the
//! dead-letter topic instead, so one bad message or entry cannot hold the
//! WAL (and every other file of the host) back; `/health` turns degraded
//! naming the topic. Events are cut to fit the topic's own
//! `max.message.bytes` (read from the broker) when it is below
//! `kafka.max_message_bytes`. A fatal producer error (an idempotence fence) ends the session:
//! a new producer is made and shipping resumes from the first unacknowledged
//! record, after the read-back below.
//!
//! # No blind resend after a crash
//!
//! Records that were sent but not yet acknowledged in the WAL when the agent
//! died would be sent again. Before sending anything a session reads back
//! the topics those records went to, from the oldest such record's read
//! time (message timestamps are the read time) to the end, and collects the
//! messages this host produced: (`logpipe-file`, `logpipe-offset`, CRC of the
//! value). Encoding is deterministic (the record carries the identity that
//! read it, `event` module docs), so a line whose triple is already in
//! Kafka is skipped, and a line with new content at an old offset (a
//! copytruncated file) is not.
//!
//! The read-back is bounded (`kafka.readback_timeout_secs`): when it cannot
//! complete (no READ permission, a topic too busy to scan in time), the
//! records are sent without the check — at-least-once — and their lines are
//! counted in `logagent_lines_unchecked_total`, with a WARN saying why.
//! Records without a read time (WAL format 1) are never scanned for (that
//! would mean reading whole topics) and count as unchecked too.

use crate::event::{self, encode, Identity, RecordMeta, Route};
use crate::metrics::Metrics;
use crate::refusal;
use crate::spool::Shared;
use checkpoint::FileId;
use common::event::{HEADER_FILE, HEADER_HOST, HEADER_OFFSET, HEADER_SCHEMA};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wal::{Batch, ReadItem, Seq, Wal};

/// What the shipper needs to know.
#[derive(Clone)]
pub struct ShipConfig {
    pub brokers: String,
    /// librdkafka settings (defaults of ours merged with the user's).
    pub settings: BTreeMap<String, String>,
    pub identity: Identity,
    pub max_event_bytes: usize,
    /// Read records not yet fsynced (`wal.sync = "none"`).
    pub include_unsynced: bool,
    /// Most lines handed to the producer and not yet acknowledged.
    pub max_in_flight_lines: usize,
    /// Most bytes of messages handed to the producer and not yet
    /// acknowledged (bounds memory during a backlog or an outage).
    pub max_in_flight_bytes: usize,
    /// Where messages refused for good go; `None`: retried forever.
    pub dead_letter_topic: Option<String>,
    /// How long a "missing topic/partition" refusal must last to be final.
    pub dead_letter_after: Duration,
    /// The bound of the read-back after a crash.
    pub readback_timeout: Duration,
}

/// Room left in a message for headers, key and record overhead.
pub const EVENT_HEADROOM: usize = 2048;
/// Events are never cut below this, whatever a topic's limit says.
const MIN_EVENT_BYTES: usize = 1024;
/// How often a topic's `max.message.bytes` is read again.
const TOPIC_LIMIT_TTL: Duration = Duration::from_secs(300);

/// Our producer defaults; `kafka.producer` entries override them, except the
/// pinned ones set last.
pub fn default_settings() -> BTreeMap<String, String> {
    [
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("batch.size", "1000000"),
        ("message.timeout.ms", "0"),
        ("queue.buffering.max.messages", "1000000"),
        ("queue.buffering.max.kbytes", "65536"),
        ("message.max.bytes", "1000000"),
        ("socket.keepalive.enable", "true"),
        ("reconnect.backoff.max.ms", "2000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The dedup key of a message: file coordinate, offset, CRC of the value.
type SeenKey = (String, u64, u32);

/// Per record in flight.
struct Track {
    seq: Seq,
    remaining: AtomicU32,
    sent: Instant,
    /// When one of its messages was first refused.
    refused_since: Mutex<Option<Instant>>,
}

impl Track {
    fn new(seq: Seq) -> Self {
        Self {
            seq,
            remaining: AtomicU32::new(u32::MAX),
            sent: Instant::now(),
            refused_since: Mutex::new(None),
        }
    }

    /// When the first refusal of this record happened (now, if this is it).
    fn refused_since(&self) -> Instant {
        *self
            .refused_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now)
    }
}

struct Failed {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    timestamp: Option<i64>,
    code: RDKafkaErrorCode,
    track: Arc<Track>,
}

struct Ctx {
    done: Mutex<Sender<Seq>>,
    failed: Mutex<Vec<Failed>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Arc<Track>;

    fn delivery(&self, result: &DeliveryResult<'_>, track: Arc<Track>) {
        match result {
            Ok(_) => {
                if track.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // Once per record: when its last message is acked.
                    self.metrics
                        .produce_seconds
                        .observe(track.sent.elapsed().as_secs_f64());
                    let _ = self
                        .done
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(track.seq);
                }
            }
            Err((e, msg)) => {
                self.metrics.delivery_errors.inc();
                tracing::debug!(topic = msg.topic(), error = %e, seq = track.seq, "delivery failed");
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                let failed = failed_from(msg, code, track);
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(failed);
            }
        }
    }
}

fn failed_from(msg: &BorrowedMessage<'_>, code: RDKafkaErrorCode, track: Arc<Track>) -> Failed {
    let owned = msg.detach();
    Failed {
        topic: owned.topic().to_string(),
        partition: (owned.partition() >= 0).then_some(owned.partition()),
        key: owned.key().map(<[u8]>::to_vec),
        payload: owned.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: owned.headers().cloned().unwrap_or_default(),
        timestamp: owned.timestamp().to_millis(),
        code,
        track,
    }
}

/// Which records are done, and the longest done prefix (pure).
///
/// Records finish in any order (partitions are acknowledged independently);
/// the WAL can only be acknowledged up to a prefix. Done records are kept
/// as ranges so that a gap of skipped (corrupt) records costs one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckWindow {
    /// Every record up to here is done.
    upto: Seq,
    /// Done ranges beyond the prefix: start → end (inclusive).
    done: BTreeMap<Seq, Seq>,
}

impl AckWindow {
    /// A window whose records up to `upto` are done.
    pub fn new(upto: Seq) -> Self {
        Self {
            upto,
            done: BTreeMap::new(),
        }
    }

    /// Records `from..=to` are done.
    pub fn done(&mut self, from: Seq, to: Seq) {
        if to <= self.upto || from > to {
            return;
        }
        let from = from.max(self.upto + 1);
        let end = self.done.entry(from).or_insert(to);
        *end = (*end).max(to);
    }

    /// Extends the prefix over the done ranges; returns the new prefix end.
    pub fn advance(&mut self) -> Seq {
        loop {
            // Ranges starting inside the prefix extend it too.
            let Some((&start, &end)) = self.done.first_key_value() else {
                return self.upto;
            };
            if start > self.upto + 1 {
                return self.upto;
            }
            self.done.remove(&start);
            self.upto = self.upto.max(end);
        }
    }

    pub fn upto(&self) -> Seq {
        self.upto
    }
}

/// A record handed to the producer, until it is done and acknowledged.
struct InFlight {
    id: FileId,
    end_offset: u64,
    topic: String,
    lines: u64,
    bytes: usize,
    sent: Instant,
}

/// Records waiting this long for Kafka with no acknowledgement meanwhile
/// make `/health` degraded (problem `kafka`) until acks flow again.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// The running shipper thread.
pub struct Shipper {
    stop: Arc<AtomicBool>,
    finishing: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Shipper {
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(cfg: ShipConfig, deps: Shared) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let finishing = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            stop: Arc::clone(&stop),
            finishing: Arc::clone(&finishing),
        };
        let handle = std::thread::Builder::new()
            .name("shipper".into())
            .spawn(move || {
                let mut backoff = Duration::from_millis(500);
                while !flags.stop.load(Ordering::SeqCst) {
                    match session(&cfg, &deps, &flags) {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "producer session ended; starting a new one");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            finishing,
            handle,
        })
    }

    /// Whether the thread ended (by a panic: it only returns when asked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Asks the shipper to finish: it sends what the WAL holds (the writer
    /// has stopped by then), waits at most `grace` for Kafka's acks, records
    /// them and returns.
    pub fn finish(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        // It returns by itself once everything is acknowledged.
        self.finishing.store(true, Ordering::SeqCst);
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// `stop`: return now (records in flight stay unacknowledged and are
/// resent, after a read-back, at the next start). `finishing`: return once
/// everything in the WAL is acknowledged.
struct Flags {
    stop: Arc<AtomicBool>,
    finishing: Arc<AtomicBool>,
}

/// The user's settings that are not producer tuning (TLS, SASL…): for the
/// read-back consumer and the admin client.
fn base_config(cfg: &ShipConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    let ours = default_settings();
    for (k, v) in &cfg.settings {
        if !ours.contains_key(k) {
            cc.set(k, v);
        }
    }
    cc.set("bootstrap.servers", &cfg.brokers);
    cc
}

fn client_config(cfg: &ShipConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in &cfg.settings {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true");
    cc
}

/// One producer's lifetime. `Ok(())`: stopped; `Err`: start a new one.
fn session(cfg: &ShipConfig, deps: &Shared, flags: &Flags) -> Result<(), String> {
    let stop = &*flags.stop;
    let wal = &deps.wal;
    let start = wal.acked_seq() + 1;
    let readback_upto = wal.last_seq();
    let deadline = Instant::now() + cfg.readback_timeout;
    let (seen, readback_complete) = loop {
        match read_back(cfg, wal, start, stop, deadline) {
            Ok(seen) => {
                deps.metrics.resolved("readback");
                break (seen, true);
            }
            Err(e) if stop.load(Ordering::SeqCst) => return Err(format!("stopped: {e}")),
            Err(e) if Instant::now() >= deadline => {
                let records = (readback_upto + 1).saturating_sub(start);
                tracing::warn!(
                    error = %e,
                    records,
                    timeout_secs = cfg.readback_timeout.as_secs(),
                    "the read-back of what Kafka already has gave up; the unacknowledged records are sent without the duplicate check (at-least-once: lines may arrive twice)"
                );
                deps.metrics.problem(
                    "readback",
                    format!("read-back gave up ({e}); {records} records sent without the duplicate check"),
                );
                break (HashSet::new(), false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read back what Kafka already has; retrying before sending");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    let (done_tx, done_rx) = mpsc::channel();
    let ctx = Ctx {
        done: Mutex::new(done_tx),
        failed: Mutex::new(Vec::new()),
        metrics: Arc::clone(&deps.metrics),
    };
    let producer: ThreadedProducer<Ctx> = client_config(cfg)
        .create_with_context(ctx)
        .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| format!("cannot create the Kafka admin client: {e}"))?;
    let mut s = Session {
        cfg,
        deps,
        producer,
        done_rx,
        seen,
        readback_upto,
        readback_complete,
        admin,
        limits: HashMap::new(),
        refusals: HashMap::new(),
        reader: if cfg.include_unsynced {
            wal.reader_including_unsynced(start)
        } else {
            wal.reader(start)
        },
        expect: start,
        window: AckWindow::new(start - 1),
        in_flight: BTreeMap::new(),
        in_flight_lines: 0,
        in_flight_bytes: 0,
        last_ack: Instant::now(),
        last_done: Instant::now(),
        stall_checked: Instant::now(),
        stall_reported: false,
        buf: Vec::new(),
        retry_at: None,
    };
    s.run(flags)
}

struct Session<'a> {
    cfg: &'a ShipConfig,
    deps: &'a Shared,
    producer: ThreadedProducer<Ctx>,
    done_rx: Receiver<Seq>,
    /// What Kafka already has of the records up to `readback_upto`.
    seen: HashSet<SeenKey>,
    /// The last record that was unacknowledged when the session started.
    readback_upto: Seq,
    /// Whether `seen` is complete (the read-back did not give up).
    readback_complete: bool,
    admin: AdminClient<DefaultClientContext>,
    /// Per topic: the largest event it takes, and when to read that again.
    limits: HashMap<String, (usize, Instant)>,
    /// Per topic: messages refused for good so far (for the log and /health).
    refusals: HashMap<String, u64>,
    reader: wal::Reader,
    /// The seq the reader yields next.
    expect: Seq,
    window: AckWindow,
    in_flight: BTreeMap<Seq, InFlight>,
    in_flight_lines: usize,
    in_flight_bytes: usize,
    last_ack: Instant,
    /// When Kafka last completed a record.
    last_done: Instant,
    stall_checked: Instant,
    /// Whether the `kafka` problem is raised.
    stall_reported: bool,
    buf: Vec<u8>,
    retry_at: Option<Instant>,
}

impl Session<'_> {
    fn run(&mut self, flags: &Flags) -> Result<(), String> {
        let stop = &*flags.stop;
        loop {
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                self.ack(true);
                return Err(format!("fatal producer error {code:?}: {reason}"));
            }
            let mut progressed = self.collect_done();
            if self.last_ack.elapsed() >= Duration::from_millis(100) {
                self.ack(false);
            }
            progressed |= self.resend_failed();
            self.check_stall();
            if stop.load(Ordering::SeqCst) {
                self.ack(true);
                return Ok(());
            }
            if flags.finishing.load(Ordering::SeqCst)
                && self.in_flight.is_empty()
                && self.expect > self.deps.wal.last_seq()
            {
                self.ack(true);
                return Ok(());
            }
            while self.in_flight_lines < self.cfg.max_in_flight_lines
                && self.in_flight_bytes < self.cfg.max_in_flight_bytes
            {
                match self.reader.next_item().map_err(|e| e.to_string())? {
                    Some(ReadItem::Record { seq, batch }) => {
                        self.gap_done(seq);
                        self.expect = seq + 1;
                        self.send_record(seq, &batch, stop);
                        progressed = true;
                    }
                    Some(ReadItem::Skipped { records, .. }) => {
                        tracing::error!(records, "WAL records lost to corruption are skipped");
                        self.window.done(self.expect, self.expect + records - 1);
                        self.expect += records;
                        progressed = true;
                    }
                    None => break,
                }
            }
            if !progressed {
                match self.done_rx.recv_timeout(Duration::from_millis(2)) {
                    Ok(seq) => {
                        self.window.done(seq, seq);
                        self.last_done = Instant::now();
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err("the delivery channel closed".into())
                    }
                }
            }
        }
    }

    /// Records between `expect` and `seq` that the reader passed over
    /// silently were acknowledged already.
    fn gap_done(&mut self, seq: Seq) {
        if seq > self.expect {
            self.window.done(self.expect, seq - 1);
        }
    }

    fn collect_done(&mut self) -> bool {
        let mut any = false;
        while let Ok(seq) = self.done_rx.try_recv() {
            self.window.done(seq, seq);
            any = true;
        }
        if any {
            self.last_done = Instant::now();
        }
        any
    }

    /// Once a second: records sent [`STALL_AFTER`] ago or longer and no
    /// acknowledgement since then (no broker reachable, no leader, not
    /// enough replicas) raise the `kafka` problem; acks clear it at once.
    /// An idle agent with Kafka down risks nothing and stays healthy.
    fn check_stall(&mut self) {
        if self.stall_checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.stall_checked = Instant::now();
        let oldest = self.in_flight.values().next().map(|r| r.sent.elapsed());
        let stalled =
            oldest.is_some_and(|age| age >= STALL_AFTER && self.last_done.elapsed() >= STALL_AFTER);
        let m = &self.deps.metrics;
        if stalled {
            let quiet = self.last_done.elapsed().min(oldest.unwrap_or_default());
            m.problem(
                "kafka",
                format!(
                    "no acknowledgement from Kafka for {}s; {} records ({} lines) wait in the WAL",
                    quiet.as_secs(),
                    self.in_flight.len(),
                    self.in_flight_lines
                ),
            );
            if !self.stall_reported {
                tracing::warn!(
                    records = self.in_flight.len(),
                    "Kafka acknowledges nothing; /health is degraded until it does"
                );
            }
            self.stall_reported = true;
        } else if self.stall_reported {
            m.clear_problem("kafka");
            self.stall_reported = false;
            tracing::info!("Kafka acknowledges again");
        }
    }

    /// Advances the done prefix; with `now` (or every 100 ms) records it.
    fn ack(&mut self, flush: bool) {
        self.collect_done();
        let m = &self.deps.metrics;
        let mut acked_offsets: Vec<(FileId, u64)> = Vec::new();
        let upto = self.window.advance();
        let rest = self.in_flight.split_off(&(upto + 1));
        for (_, r) in std::mem::replace(&mut self.in_flight, rest) {
            self.in_flight_lines -= r.lines as usize;
            self.in_flight_bytes -= r.bytes;
            m.topic(&m.lines_acked, &r.topic).inc_by(r.lines);
            acked_offsets.push((r.id, r.end_offset));
        }
        self.last_ack = Instant::now();
        let wal = &self.deps.wal;
        let upto = upto.min(self.deps.progress.checkpointed.load(Ordering::SeqCst));
        if upto > wal.acked_seq() || flush || !acked_offsets.is_empty() {
            let mut st = self.deps.store.lock().unwrap_or_else(|p| p.into_inner());
            for (id, off) in acked_offsets {
                if let Some(s) = st.get(&id) {
                    let mut s = s.clone();
                    s.acked_offset = off;
                    st.update(id, s);
                }
            }
            if upto > wal.acked_seq() || flush {
                if let Err(e) = st.flush() {
                    tracing::error!(error = %e, "cannot flush checkpoints; the WAL keeps the records");
                    return;
                }
                drop(st);
                if let Err(e) = wal.ack(upto) {
                    tracing::error!(error = %e, "cannot acknowledge WAL records");
                }
            }
        }
        m.wal_unacked_records
            .set(i64::try_from(wal.last_seq().saturating_sub(wal.acked_seq())).unwrap_or(i64::MAX));
        m.wal_unacked_bytes
            .set(i64::try_from(wal.disk_bytes()).unwrap_or(i64::MAX));
    }

    fn send_record(&mut self, seq: Seq, batch: &Batch, stop: &AtomicBool) {
        // Encoded as the agent that read the lines would (module docs).
        let meta = RecordMeta::decode(&batch.meta);
        let (spec, who) = (
            &meta.spec,
            meta.identity.as_ref().unwrap_or(&self.cfg.identity),
        );
        let route = event::route(who, spec, &batch.source.path);
        let ts = event::timestamp(batch.read_ms);
        let file = event::file_header(batch);
        let track = Arc::new(Track::new(seq));
        let max_event_bytes = self.event_limit(&batch.topic);
        if seq > self.readback_upto && self.seen.capacity() > 0 {
            // Past the records the read-back was for: free its set.
            self.seen = HashSet::new();
        }
        let unchecked =
            seq <= self.readback_upto && (!self.readback_complete || batch.read_ms == 0);
        let mut sent: u32 = 0;
        let mut bytes = 0;
        let mut buf = std::mem::take(&mut self.buf);
        for line in &batch.lines {
            encode(who, spec, batch, &ts, line, max_event_bytes, &mut buf);
            if !self.seen.is_empty()
                && self
                    .seen
                    .remove(&(file.clone(), line.offset, crc32fast::hash(&buf)))
            {
                self.deps.metrics.duplicates_skipped.inc();
                continue;
            }
            let offset = line.offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: HEADER_HOST,
                    value: Some(who.host_id.as_str()),
                })
                .insert(Header {
                    key: HEADER_FILE,
                    value: Some(file.as_str()),
                })
                .insert(Header {
                    key: HEADER_OFFSET,
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: HEADER_SCHEMA,
                    value: Some("1"),
                });
            let mut rec = BaseRecord::with_opaque_to(&batch.topic, Arc::clone(&track))
                .payload(&buf[..])
                .headers(headers);
            if batch.read_ms > 0 {
                rec = rec.timestamp(i64::try_from(batch.read_ms).unwrap_or(i64::MAX));
            }
            match &route {
                Route::Key(k) => rec = rec.key(k.as_bytes()),
                Route::Partition(p) => rec = rec.partition(*p),
                Route::Any => {}
            }
            sent += 1;
            bytes += buf.len();
            let mut rec = rec;
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        self.collect_done();
                        if stop.load(Ordering::SeqCst) {
                            // Unsent: the record stays unacknowledged.
                            self.buf = buf;
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, r)) => {
                        self.deps.metrics.delivery_errors.inc();
                        tracing::debug!(topic = %batch.topic, error = %e, "cannot hand a message to the producer");
                        self.ctx_failed(Failed {
                            topic: batch.topic.clone(),
                            partition: r.partition,
                            key: r.key.map(<[u8]>::to_vec),
                            payload: buf.clone(),
                            headers: r.headers.unwrap_or_default(),
                            timestamp: r.timestamp,
                            code: e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
                            track: Arc::clone(&track),
                        });
                        break;
                    }
                }
            }
        }
        self.buf = buf;
        self.in_flight.insert(
            seq,
            InFlight {
                id: FileId {
                    device: batch.source.device,
                    inode: batch.source.inode,
                    fingerprint: batch.source.fingerprint,
                },
                end_offset: batch.end_offset,
                topic: batch.topic.clone(),
                lines: u64::from(sent),
                bytes,
                sent: Instant::now(),
            },
        );
        self.in_flight_lines += sent as usize;
        self.in_flight_bytes += bytes;
        if unchecked {
            self.deps.metrics.lines_unchecked.inc_by(u64::from(sent));
        }
        // Settle the count: deliveries so far subtracted from u32::MAX.
        let before = track.remaining.fetch_sub(u32::MAX - sent, Ordering::AcqRel);
        if before == u32::MAX - sent {
            self.deps
                .metrics
                .produce_seconds
                .observe(track.sent.elapsed().as_secs_f64());
            self.window.done(seq, seq);
        }
    }

    fn ctx_failed(&self, f: Failed) {
        self.producer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// Sends failed messages again, at most once a second; those refused
    /// for good go to the dead-letter topic instead (module docs).
    fn resend_failed(&mut self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let failed: Vec<Failed> = std::mem::take(
            &mut *self
                .producer
                .context()
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if failed.is_empty() {
            self.retry_at = None;
            return false;
        }
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
        for f in failed {
            let since = f.track.refused_since();
            if refusal::is_final(f.code, since.elapsed(), self.cfg.dead_letter_after) {
                match self.cfg.dead_letter_topic.clone() {
                    Some(dlq) if dlq != f.topic => {
                        self.dead_letter(f, &dlq);
                        continue;
                    }
                    dlq => self.stuck(&f, dlq.as_deref()),
                }
            }
            let mut rec = BaseRecord::with_opaque_to(&f.topic, Arc::clone(&f.track))
                .payload(&f.payload[..])
                .headers(f.headers.clone());
            if let Some(k) = &f.key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = f.partition {
                rec = rec.partition(p);
            }
            if let Some(t) = f.timestamp {
                rec = rec.timestamp(t);
            }
            if let Err((e, _)) = self.producer.send(rec) {
                tracing::debug!(error = %e, "resend refused; trying again later");
                let code = e.rdkafka_error_code().unwrap_or(f.code);
                self.ctx_failed(Failed { code, ..f });
            }
        }
        true
    }

    /// Sends a message refused for good to the dead-letter topic, in place
    /// of the original (it completes the same record).
    fn dead_letter(&mut self, f: Failed, dlq: &str) {
        let (payload, original_bytes) =
            refusal::dead_letter_payload(&f.payload, self.cfg.max_event_bytes);
        let partition = f.partition.map(|p| p.to_string()).unwrap_or_default();
        let error = format!("{:?}", f.code);
        let mut headers = f
            .headers
            .clone()
            .insert(Header {
                key: refusal::HEADER_DLQ_TOPIC,
                value: Some(f.topic.as_str()),
            })
            .insert(Header {
                key: refusal::HEADER_DLQ_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: refusal::HEADER_DLQ_ERROR,
                value: Some(error.as_str()),
            });
        if let Some(n) = original_bytes {
            headers = headers.insert(Header {
                key: refusal::HEADER_DLQ_ORIGINAL_BYTES,
                value: Some(n.to_string().as_str()),
            });
        }
        let mut rec = BaseRecord::with_opaque_to(dlq, Arc::clone(&f.track))
            .payload(payload)
            .headers(headers.clone());
        if let Some(k) = &f.key {
            rec = rec.key(&k[..]);
        }
        if let Some(t) = f.timestamp {
            rec = rec.timestamp(t);
        }
        let m = &self.deps.metrics;
        m.topic(&m.dead_letters, &f.topic).inc();
        let n = {
            let n = self.refusals.entry(f.topic.clone()).or_insert(0);
            *n += 1;
            *n
        };
        m.problem(
            &format!("topic:{}", f.topic),
            format!(
                "Kafka refuses messages to `{}` for good ({error}); {n} sent to the dead-letter topic `{dlq}`",
                f.topic
            ),
        );
        if n.is_power_of_two() {
            tracing::warn!(topic = %f.topic, error = %error, dead_letter_topic = dlq, count = n, "Kafka refuses messages for good; sent to the dead-letter topic");
        }
        if let Err((e, _)) = self.producer.send(rec) {
            tracing::debug!(error = %e, "dead letter not taken yet; trying again later");
            self.ctx_failed(Failed {
                topic: dlq.to_string(),
                partition: None,
                key: f.key,
                payload: payload.to_vec(),
                headers,
                timestamp: f.timestamp,
                code: e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
                track: f.track,
            });
        }
    }

    /// A message refused for good with nowhere else to go: it is retried
    /// (nothing is dropped) and `/health` says why the WAL does not move.
    fn stuck(&self, f: &Failed, dlq: Option<&str>) {
        let why = match dlq {
            None => "no dead-letter topic is configured".to_string(),
            Some(d) => format!("the dead-letter topic `{d}` refuses it too"),
        };
        let key = format!("topic:{}", f.topic);
        let fresh = !self
            .deps
            .metrics
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key);
        self.deps.metrics.problem(
            &key,
            format!(
                "Kafka refuses messages to `{}` for good ({:?}) and {why}: retried, the WAL cannot be acknowledged past them",
                f.topic, f.code
            ),
        );
        if fresh {
            tracing::error!(topic = %f.topic, error = ?f.code, "Kafka refuses a message for good and {why}; it is retried and holds the WAL back");
        }
    }

    /// The largest event `topic` takes: `kafka.max_message_bytes` less
    /// headroom, or less if the topic's `max.message.bytes` is smaller (read
    /// from the broker, again every few minutes).
    fn event_limit(&mut self, topic: &str) -> usize {
        let now = Instant::now();
        if let Some((limit, until)) = self.limits.get(topic) {
            if now < *until {
                return *limit;
            }
        }
        let configured = self.cfg.max_event_bytes;
        let (limit, ttl) = match topic_max_message_bytes(&self.admin, topic) {
            Ok(Some(b)) => (
                configured.min(b.saturating_sub(EVENT_HEADROOM).max(MIN_EVENT_BYTES)),
                TOPIC_LIMIT_TTL,
            ),
            // Not created yet (the broker's default applies), or Kafka is
            // unreachable: the configured limit; ask again soon.
            Ok(None) | Err(_) => (
                self.limits.get(topic).map_or(configured, |l| l.0),
                Duration::from_secs(30),
            ),
        };
        let before = self.limits.insert(topic.to_string(), (limit, now + ttl));
        if limit < configured && before.is_none_or(|b| b.0 != limit) {
            tracing::warn!(
                topic,
                limit,
                configured,
                "the topic's max.message.bytes is below kafka.max_message_bytes: its events are cut to fit (flag truncated)"
            );
        }
        limit
    }
}

/// A topic's `max.message.bytes` as the broker reports it; `Ok(None)` when
/// the topic does not exist.
fn topic_max_message_bytes(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Option<usize>, String> {
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let spec = [ResourceSpecifier::Topic(topic)];
    let res = futures::executor::block_on(admin.describe_configs(&spec, &opts))
        .map_err(|e| e.to_string())?;
    match res.into_iter().next() {
        Some(Ok(r)) => Ok(r
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse().ok())),
        Some(Err(RDKafkaErrorCode::UnknownTopicOrPartition)) => Ok(None),
        Some(Err(e)) => Err(format!("{e:?}")),
        None => Err("no answer".into()),
    }
}

/// What this host already has in Kafka among the topics of the records from
/// `from` on (see the module docs). Empty when nothing is unacknowledged.
fn read_back(
    cfg: &ShipConfig,
    wal: &Wal,
    from: Seq,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<HashSet<SeenKey>, String> {
    let mut reader = if cfg.include_unsynced {
        wal.reader_including_unsynced(from)
    } else {
        wal.reader(from)
    };
    let mut topics: BTreeSet<String> = BTreeSet::new();
    // Whose messages to look for: every identity that wrote these records
    // (an agent restarted under a new name still recognises its own).
    let mut hosts: HashSet<String> = HashSet::from([cfg.identity.host_id.clone()]);
    let mut oldest = u64::MAX;
    while let Some(item) = reader.next_item().map_err(|e| e.to_string())? {
        if let ReadItem::Record { batch, .. } = item {
            // A record without a read time (format 1) would mean scanning
            // the whole topic: it is sent unchecked instead.
            if !batch.lines.is_empty() && batch.read_ms > 0 {
                topics.insert(batch.topic.clone());
                oldest = oldest.min(batch.read_ms);
                if let Some(who) = RecordMeta::decode(&batch.meta).identity {
                    hosts.insert(who.host_id);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    if topics.is_empty() {
        return Ok(seen);
    }
    let since = i64::try_from(oldest.saturating_sub(1000)).unwrap_or(0);
    let consumer: BaseConsumer = {
        let mut cc = base_config(cfg);
        cc.set(
            "group.id",
            format!("logagent-readback-{}", cfg.identity.host_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted")
        .set("log_level", "3");
        cc.create().map_err(|e| e.to_string())?
    };
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        let Some(t) = md.topics().first() else {
            continue;
        };
        if t.error().is_some() {
            continue; // not created yet: nothing of ours in it
        }
        let mut times = TopicPartitionList::new();
        for p in t.partitions() {
            times
                .add_partition_offset(topic, p.id(), Offset::Offset(since))
                .map_err(|e| e.to_string())?;
        }
        let offsets = consumer
            .offsets_for_times(times, timeout)
            .map_err(|e| format!("offsets of {topic} at {since}: {e}"))?;
        for el in offsets.elements() {
            let (_, high) = consumer
                .fetch_watermarks(topic, el.partition(), timeout)
                .map_err(|e| format!("watermarks of {topic}: {e}"))?;
            if let Offset::Offset(o) = el.offset() {
                if o < high {
                    tpl.add_partition_offset(topic, el.partition(), Offset::Offset(o))
                        .map_err(|e| e.to_string())?;
                    ends.insert((topic.clone(), el.partition()), high);
                }
            }
        }
    }
    if ends.is_empty() {
        return Ok(seen);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut scanned: u64 = 0;
    while !ends.is_empty() {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return Err(format!(
                "read-back incomplete after {scanned} messages ({} partitions left)",
                ends.len()
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // The EOF names no topic: drop every partition whose
                // position reached its end.
                if let Ok(pos) = consumer.position() {
                    for el in pos.elements() {
                        let key = (el.topic().to_string(), el.partition());
                        if let (Offset::Offset(o), Some(h)) = (el.offset(), ends.get(&key)) {
                            if o >= *h {
                                ends.remove(&key);
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "read-back poll"),
            Some(Ok(m)) => {
                scanned += 1;
                let key = (m.topic().to_string(), m.partition());
                if ends.get(&key).is_some_and(|h| m.offset() + 1 >= *h) {
                    ends.remove(&key);
                }
                if let Some(k) = seen_key(&m, &hosts) {
                    seen.insert(k);
                }
            }
        }
    }
    tracing::info!(
        topics = topics.len(),
        scanned,
        ours = seen.len(),
        "read back what Kafka has of the unacknowledged WAL records"
    );
    Ok(seen)
}

fn seen_key(m: &BorrowedMessage<'_>, hosts: &HashSet<String>) -> Option<SeenKey> {
    let headers = m.headers()?;
    let mut host = None;
    let mut file = None;
    let mut offset = None;
    for h in headers.iter() {
        let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
        match h.key {
            HEADER_HOST => host = v,
            HEADER_FILE => file = v,
            HEADER_OFFSET => offset = v.and_then(|v| v.parse::<u64>().ok()),
            _ => {}
        }
    }
    if !hosts.contains(host?) {
        return None;
    }
    Some((
        file?.to_string(),
        offset?,
        crc32fast::hash(m.payload().unwrap_or_default()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order records finish in (singles and ranges), the prefix
        /// is exactly the longest run of done records from the start.
        #[test]
        fn the_prefix_is_the_longest_done_run(
            start in 0u64..5,
            marks in proptest::collection::vec((1u64..60, 0u64..4, any::<bool>()), 0..80),
        ) {
            let mut w = AckWindow::new(start);
            let mut model: BTreeSet<Seq> = (1..=start).collect();
            for (from, len, advance) in marks {
                let to = from + len;
                w.done(from, to);
                model.extend(from..=to);
                if advance {
                    let upto = w.advance();
                    let want = (1..).take_while(|s| model.contains(s)).last().unwrap_or(0);
                    prop_assert_eq!(upto, want.max(start));
                }
            }
            let upto = w.advance();
            let want = (1..).take_while(|s| model.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(upto, want.max(start));
            prop_assert!(!model.contains(&(upto + 1)));
        }
    }

    #[test]
    fn a_gap_holds_the_prefix_back() {
        let mut w = AckWindow::new(0);
        w.done(2, 5);
        assert_eq!(w.advance(), 0);
        w.done(1, 1);
        assert_eq!(w.advance(), 5);
        w.done(3, 4); // already inside the prefix
        w.done(7, 7);
        assert_eq!(w.advance(), 5);
        assert_eq!(w.upto(), 5);
    }
}
