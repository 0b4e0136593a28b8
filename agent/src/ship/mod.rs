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
//! record, after the read-back below. So does a failure that librdkafka
//! marks "possibly persisted": the message may be in Kafka, and only the
//! read-back can tell before it is sent again.
//!
//! # A producer that hears nothing
//!
//! librdkafka retries forever on its own, and a broker that comes back is
//! normally taken up again within seconds. Should a producer stay silent
//! (no delivery report at all, not even a failure) for [`ShipConfig::restart_stalled_after`],
//! the last half of it while the broker answers a client made for the question (an admin
//! client's `DescribeConfigs` of the oldest waiting record's topic; a new
//! one each time, since a client made with the producer can be stuck the
//! same way: librdkafka 2.12 can be left without brokers by a restarting
//! broker's metadata and never reconnect, its issue #5301), the session
//! ends as for a fatal error: a new producer, after the read-back. Only
//! the time Kafka answers counts: a producer that waited out an outage has
//! half the wait after Kafka returns to reconnect by itself. The wait
//! doubles with each such replacement in a row (a broker that answers
//! metadata but cannot take writes, e.g. too few in-sync replicas, is not
//! a reason to churn) and resets once acknowledgements flow.
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
//! would mean reading whole topics) and count as unchecked too. The
//! dead-letter topic is read back as well (a dead letter carries the CRC of
//! the message it replaces), so a line dead-lettered just before a crash is
//! not dead-lettered twice. What is kept of the read-back is bounded: a
//! 128-bit hash per message of this host, at most [`Seen::MAX_KEYS`]
//! (32 MiB); beyond that the read-back gives up as above.
//!
//! # Flow control
//!
//! At most `max_in_flight_lines` / `max_in_flight_bytes` of messages are
//! handed to the producer and not yet delivered. A delivered record leaves
//! that budget at once, even while an older record still holds the WAL's
//! acknowledgement back (a message refused until it is dead-lettered), so
//! one slow message does not stop the others.
//!
//! # The seam
//!
//! The session speaks to Kafka through two small traits, [`Kafka`] (make a
//! producer, read back) and [`Produce`] (send, the topic's size limit, fatal
//! errors); deliveries come back through [`Deliveries`]. [`kafka::RdKafka`]
//! is the real one; the model tests (`model.rs`) drive sessions against an
//! in-memory broker through refusals, crashes and read-backs.

mod kafka;
#[cfg(test)]
mod model;

use kafka::RdKafka;

use crate::collect::PartitionMode;
use crate::event::{self, encode, Identity, RecordMeta, Route};
use crate::metrics::Metrics;
use crate::refusal;
use crate::spool::Shared;
use crate::spread;
use checkpoint::FileId;
use common::event::{HEADER_FILE, HEADER_HOST, HEADER_OFFSET, HEADER_SCHEMA};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
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
    /// Most lines handed to the producer and not yet delivered.
    pub max_in_flight_lines: usize,
    /// Most bytes of messages handed to the producer and not yet
    /// delivered (bounds memory during a backlog or an outage).
    pub max_in_flight_bytes: usize,
    /// Where messages refused for good go; `None`: retried forever.
    pub dead_letter_topic: Option<String>,
    /// How long a "missing topic/partition" refusal must last to be final.
    pub dead_letter_after: Duration,
    /// The bound of the read-back after a crash.
    pub readback_timeout: Duration,
    /// How often the done prefix is recorded ([`ACK_EVERY`]).
    pub ack_every: Duration,
    /// How long a refused message waits before it is sent again
    /// ([`RETRY_EVERY`]).
    pub retry_every: Duration,
    /// How long a producer may report on no message while Kafka answers
    /// another client before it is replaced ([`RESTART_STALLED_AFTER`];
    /// module docs, "A producer that hears nothing").
    pub restart_stalled_after: Duration,
}

/// Room left in a message for headers, key and record overhead.
pub const EVENT_HEADROOM: usize = 2048;
/// Events are never cut below this, whatever a topic's limit says.
const MIN_EVENT_BYTES: usize = 1024;
/// The checkpoint store's meta key of the refusal ledger.
const LEDGER_KEY: &str = "refusals";

/// How often a topic's `max.message.bytes` is read again.
const TOPIC_LIMIT_TTL: Duration = Duration::from_secs(300);
/// The default of [`ShipConfig::ack_every`].
pub const ACK_EVERY: Duration = Duration::from_millis(100);
/// The default of [`ShipConfig::retry_every`].
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The default of [`ShipConfig::restart_stalled_after`].
pub const RESTART_STALLED_AFTER: Duration = Duration::from_secs(60);
/// Consecutive replacements of a stalled producer double the wait, up to
/// 2^this times [`ShipConfig::restart_stalled_after`] (16 min by default).
const MAX_STALL_DOUBLINGS: u32 = 4;

/// Our producer defaults; `kafka.producer` entries override them, except the
/// pinned ones set last.
pub fn default_settings() -> BTreeMap<String, String> {
    [
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("batch.size", "1000000"),
        ("message.timeout.ms", "0"),
        ("queue.buffering.max.messages", "200000"),
        ("queue.buffering.max.kbytes", "8192"),
        ("message.max.bytes", "1000000"),
        ("socket.keepalive.enable", "true"),
        ("reconnect.backoff.max.ms", "2000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Per record in flight.
pub(crate) struct Track {
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

/// A message as handed to the producer.
pub(crate) struct Msg<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: OwnedHeaders,
    pub timestamp: Option<i64>,
}

impl Msg<'_> {
    fn into_owned(self) -> OwnedMsg {
        OwnedMsg {
            topic: self.topic.to_string(),
            partition: self.partition,
            key: self.key.map(<[u8]>::to_vec),
            payload: self.payload.to_vec(),
            headers: self.headers,
            timestamp: self.timestamp,
        }
    }
}

/// A message kept to be sent again.
#[derive(Clone)]
pub(crate) struct OwnedMsg {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
    pub timestamp: Option<i64>,
}

impl OwnedMsg {
    fn as_msg(&self) -> Msg<'_> {
        Msg {
            topic: &self.topic,
            partition: self.partition,
            key: self.key.as_deref(),
            payload: &self.payload,
            headers: self.headers.clone(),
            timestamp: self.timestamp,
        }
    }
}

/// A message Kafka (or the producer) refused, with the record it belongs to.
pub(crate) struct Failed {
    pub msg: OwnedMsg,
    pub code: RDKafkaErrorCode,
    pub track: Arc<Track>,
}

/// Where a producer reports each message's fate: rdkafka's delivery
/// callback, or the model tests' broker.
pub(crate) struct Deliveries {
    done: Mutex<Sender<Seq>>,
    failed: Mutex<Vec<Failed>>,
    /// A failed message may be in Kafka all the same (librdkafka's
    /// "possibly persisted"): sending it again blindly could duplicate it.
    ambiguous: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// The client's last error (a failed TLS handshake, SASL
    /// authentication, an unreachable broker): `/health` names it while
    /// nothing is acknowledged.
    last_error: Mutex<Option<String>>,
}

impl Deliveries {
    fn new(metrics: Arc<Metrics>) -> (Arc<Self>, Receiver<Seq>) {
        let (done, rx) = mpsc::channel();
        let d = Self {
            done: Mutex::new(done),
            failed: Mutex::new(Vec::new()),
            ambiguous: AtomicBool::new(false),
            metrics,
            last_error: Mutex::new(None),
        };
        (Arc::new(d), rx)
    }

    /// The client reports an error not tied to one message (librdkafka's
    /// error callback); `None` once acknowledgements flow again.
    pub fn client_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    fn last_client_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One message of `track`'s record is in Kafka.
    pub fn delivered(&self, track: &Track) {
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

    /// A message was refused: the session sends it again (or dead-letters it).
    pub fn refused(&self, f: Failed) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// A message failed but may be in Kafka: the session ends and the next
    /// one reads back before sending anything again (module docs).
    pub fn refused_maybe_persisted(&self, f: Failed) {
        self.ambiguous.store(true, Ordering::SeqCst);
        self.refused(f);
    }

    fn take_refused(&self) -> Vec<Failed> {
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A producer (see "The seam" in the module docs).
pub(crate) trait Produce {
    /// Hands a message over; its fate reaches the [`Deliveries`] the
    /// producer was made with. `Err`: not taken — `QueueFull` means try
    /// again soon, any other code counts as a refusal.
    fn send<'a>(&self, m: Msg<'a>, track: &Arc<Track>) -> Result<(), (RDKafkaErrorCode, Msg<'a>)>;
    /// A fatal error (an idempotence fence): the session must end.
    fn fatal_error(&self) -> Option<String>;
    /// The topic's `max.message.bytes`; `Ok(None)`: no such topic (yet).
    fn topic_max_message_bytes(&self, topic: &str) -> Result<Option<usize>, String>;
    /// Whether Kafka describes `topic` to a client made just now (module
    /// docs, "A producer that hears nothing").
    fn kafka_answers(&self, topic: &str) -> bool;
}

/// Kafka as the shipper sees it (see "The seam" in the module docs).
pub(crate) trait Kafka {
    type Producer: Produce;
    fn producer(&self, deliveries: Arc<Deliveries>) -> Result<Self::Producer, String>;
    /// This host's messages in `scope` (the read-back after a crash).
    fn read_back(
        &self,
        scope: &Scope,
        stop: &AtomicBool,
        deadline: Instant,
    ) -> Result<Seen, ReadBackError>;
}

/// What a read-back scans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The topics of the unacknowledged records, and the dead-letter topic.
    pub topics: BTreeSet<String>,
    /// Messages from this timestamp (Unix ms) on.
    pub since_ms: i64,
    /// The identities whose messages count as this host's.
    pub hosts: HashSet<String>,
}

/// Why a read-back did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadBackError {
    /// Kafka failed (unreachable, no permission…): try again until the bound.
    Retry(String),
    /// Trying again cannot help (too many messages to compare).
    GiveUp(String),
}

impl std::fmt::Display for ReadBackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry(e) | Self::GiveUp(e) => f.write_str(e),
        }
    }
}

/// What Kafka already has of this host's messages: a 128-bit hash of (file
/// coordinate, offset, CRC of the value) per message, bounded.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    keys: HashSet<u128>,
}

impl Seen {
    /// At most this many keys (16 bytes each, 32 MiB with the table's
    /// overhead): a read-back that finds more gives up.
    pub const MAX_KEYS: usize = 1 << 21;

    /// Adds a message read back, if it is this host's (`hosts`).
    pub fn insert<H: Headers>(
        &mut self,
        headers: Option<&H>,
        payload: &[u8],
        hosts: &HashSet<String>,
    ) -> Result<(), ReadBackError> {
        let Some(key) = message_key(headers, payload, hosts) else {
            return Ok(());
        };
        if self.keys.len() >= Self::MAX_KEYS {
            return Err(ReadBackError::GiveUp(format!(
                "more than {} messages of this host to compare",
                Self::MAX_KEYS
            )));
        }
        self.keys.insert(key);
        Ok(())
    }

    /// Whether Kafka has this line as encoded (and forgets it: each message
    /// skips one line).
    fn take(&mut self, file: &str, offset: u64, payload: &[u8]) -> bool {
        !self.keys.is_empty()
            && self
                .keys
                .remove(&seen_key(file, offset, crc32fast::hash(payload)))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The hash a [`Seen`] keeps: two 64-bit SipHashes of the triple.
fn seen_key(file: &str, offset: u64, crc: u32) -> u128 {
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (salt, file, offset, crc).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// A message's key if one of `hosts` sent it (the headers name host, file
/// and offset); a dead letter counts with the CRC of the message it replaced.
fn message_key<H: Headers>(
    headers: Option<&H>,
    payload: &[u8],
    hosts: &HashSet<String>,
) -> Option<u128> {
    let headers = headers?;
    let (mut host, mut file, mut offset, mut crc) = (None, None, None, None);
    for h in headers.iter() {
        let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
        match h.key {
            HEADER_HOST => host = v,
            HEADER_FILE => file = v,
            HEADER_OFFSET => offset = v.and_then(|v| v.parse::<u64>().ok()),
            refusal::HEADER_DLQ_CRC => crc = v.and_then(|v| v.parse::<u32>().ok()),
            _ => {}
        }
    }
    if !hosts.contains(host?) {
        return None;
    }
    Some(seen_key(
        file?,
        offset?,
        crc.unwrap_or_else(|| crc32fast::hash(payload)),
    ))
}

/// A record handed to the producer, until it is acknowledged in the WAL.
struct InFlight {
    id: FileId,
    end_offset: u64,
    topic: String,
    lines: u64,
    bytes: usize,
    sent: Instant,
    /// All its messages are in Kafka (it left the in-flight budget).
    delivered: bool,
}

/// Records waiting this long for Kafka with no acknowledgement meanwhile
/// make `/health` degraded (problem `kafka`) until acks flow again.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// How often a silent producer's session asks whether Kafka answers others
/// (at most; a quarter of the wait when that is shorter).
const STALL_PROBE_EVERY: Duration = Duration::from_secs(10);

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
            stall_restarts: AtomicU32::new(0),
        };
        let handle = std::thread::Builder::new()
            .name("shipper".into())
            .spawn(move || {
                let kafka = RdKafka::new(&cfg, Arc::clone(&deps.spread));
                let mut backoff = Duration::from_millis(500);
                while !flags.stop.load(Ordering::SeqCst) {
                    let ended = Session::open(&kafka, &cfg, &deps, &flags.stop)
                        .and_then(|mut s| s.run(&flags));
                    match ended {
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
#[derive(Default)]
struct Flags {
    stop: Arc<AtomicBool>,
    finishing: Arc<AtomicBool>,
    /// Stalled producers replaced in a row (module docs, "A producer that
    /// hears nothing"); 0 once a session hears acknowledgements.
    stall_restarts: AtomicU32,
}

/// What the read-back looks for: the records from `from` on (module docs).
/// `None`: nothing of them can be in Kafka yet.
fn readback_scope(cfg: &ShipConfig, wal: &Wal, from: Seq) -> Result<Option<Scope>, String> {
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
    if topics.is_empty() {
        return Ok(None);
    }
    if let Some(dlq) = &cfg.dead_letter_topic {
        topics.insert(dlq.clone());
    }
    Ok(Some(Scope {
        topics,
        since_ms: i64::try_from(oldest.saturating_sub(1000)).unwrap_or(0),
        hosts,
    }))
}

struct Session<'a, P: Produce> {
    cfg: &'a ShipConfig,
    deps: &'a Shared,
    producer: P,
    deliveries: Arc<Deliveries>,
    done_rx: Receiver<Seq>,
    /// What Kafka already has of the records up to `readback_upto`.
    seen: Seen,
    /// The last record that was unacknowledged when the session started.
    readback_upto: Seq,
    /// Whether `seen` is complete (the read-back did not give up).
    readback_complete: bool,
    /// Per topic: the largest event it takes, and when to read that again.
    limits: HashMap<String, (usize, Instant)>,
    /// Per topic: messages refused for good so far (for the log and /health).
    refusals: HashMap<String, u64>,
    /// How long each kind of refusal has lasted, across restarts.
    ledger: refusal::Ledger,
    reader: wal::Reader,
    /// The seq the reader yields next.
    expect: Seq,
    window: AckWindow,
    in_flight: BTreeMap<Seq, InFlight>,
    /// Lines and bytes of the records in flight not yet delivered.
    in_flight_lines: usize,
    in_flight_bytes: usize,
    last_ack: Instant,
    /// When Kafka last completed a record.
    last_done: Instant,
    stall_checked: Instant,
    /// Whether the `kafka` problem is raised.
    stall_reported: bool,
    /// When a stalled producer last asked whether Kafka answers others.
    stall_probed: Option<Instant>,
    /// Since when Kafka has answered those questions without a miss (the
    /// first answer of the streak); `None` after a miss.
    answering_since: Option<Instant>,
    /// When the producer last reported on a message (delivered or failed).
    last_heard: Instant,
    /// Whether Kafka acknowledged a record in this session.
    acked_any: bool,
    buf: Vec<u8>,
    retry_at: Option<Instant>,
}

impl<'a, P: Produce> Session<'a, P> {
    /// One producer's lifetime starts: the read-back (module docs), then a
    /// producer.
    fn open<K: Kafka<Producer = P>>(
        kafka: &K,
        cfg: &'a ShipConfig,
        deps: &'a Shared,
        stop: &AtomicBool,
    ) -> Result<Self, String> {
        let wal = &deps.wal;
        let start = wal.acked_seq() + 1;
        let readback_upto = wal.last_seq();
        let deadline = Instant::now() + cfg.readback_timeout;
        let scope = readback_scope(cfg, wal, start)?;
        let (seen, readback_complete) = loop {
            let Some(scope) = &scope else {
                break (Seen::default(), true);
            };
            match kafka.read_back(scope, stop, deadline) {
                Ok(seen) => {
                    deps.metrics.resolved("readback");
                    break (seen, true);
                }
                Err(e) if stop.load(Ordering::SeqCst) => return Err(format!("stopped: {e}")),
                Err(e) if Instant::now() >= deadline || matches!(e, ReadBackError::GiveUp(_)) => {
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
                    break (Seen::default(), false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read back what Kafka already has; retrying before sending");
                    std::thread::sleep(Duration::from_secs(2).min(cfg.readback_timeout));
                }
            }
        };
        let (deliveries, done_rx) = Deliveries::new(Arc::clone(&deps.metrics));
        let producer = kafka.producer(Arc::clone(&deliveries))?;
        Ok(Session {
            cfg,
            deps,
            producer,
            deliveries,
            done_rx,
            seen,
            readback_upto,
            readback_complete,
            limits: HashMap::new(),
            refusals: HashMap::new(),
            ledger: deps
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .load_meta(LEDGER_KEY)
                .map(|b| refusal::Ledger::decode(&b))
                .unwrap_or_default(),
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
            // A stall the previous session raised (and ended the session
            // for: a producer replaced) is this one's to clear once Kafka
            // acknowledges; else /health stayed degraded for minutes after.
            stall_reported: deps.metrics.has_problem("kafka"),
            stall_probed: None,
            answering_since: None,
            last_heard: Instant::now(),
            acked_any: false,
            buf: Vec::new(),
            retry_at: None,
        })
    }

    /// `Ok(())`: stopped; `Err`: start a new session.
    fn run(&mut self, flags: &Flags) -> Result<(), String> {
        while !self.step(flags)? {}
        Ok(())
    }

    /// One turn of the loop; `Ok(true)` when the session is over.
    fn step(&mut self, flags: &Flags) -> Result<bool, String> {
        let stop = &*flags.stop;
        if let Some(reason) = self.producer.fatal_error() {
            self.ack(true);
            return Err(format!("fatal producer error: {reason}"));
        }
        let mut progressed = self.collect_done();
        if self.deliveries.ambiguous.load(Ordering::SeqCst) {
            self.ack(true);
            return Err(
                "a failed message may be in Kafka all the same (possibly persisted); reading back before sending again".into(),
            );
        }
        if self.last_ack.elapsed() >= self.cfg.ack_every {
            self.ack(false);
            self.save_spread();
        }
        progressed |= self.resend_failed();
        self.check_stall(flags)?;
        if stop.load(Ordering::SeqCst) {
            self.ack(true);
            return Ok(true);
        }
        if flags.finishing.load(Ordering::SeqCst)
            && self.in_flight.is_empty()
            && self.expect > self.deps.wal.last_seq()
        {
            self.ack(true);
            return Ok(true);
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
                    self.record_delivered(seq);
                    self.last_done = Instant::now();
                    self.last_heard = self.last_done;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the delivery channel closed".into())
                }
            }
        }
        Ok(false)
    }

    /// Records between `expect` and `seq` that the reader passed over
    /// silently were acknowledged already.
    fn gap_done(&mut self, seq: Seq) {
        if seq > self.expect {
            self.window.done(self.expect, seq - 1);
        }
    }

    /// Every message of record `seq` is in Kafka: it is done, and leaves the
    /// in-flight budget (module docs, "Flow control").
    fn record_delivered(&mut self, seq: Seq) {
        self.window.done(seq, seq);
        self.acked_any = true;
        if let Some(r) = self.in_flight.get_mut(&seq) {
            if !r.delivered {
                r.delivered = true;
                self.in_flight_lines -= r.lines as usize;
                self.in_flight_bytes -= r.bytes;
            }
        }
    }

    fn collect_done(&mut self) -> bool {
        let mut any = false;
        while let Ok(seq) = self.done_rx.try_recv() {
            self.record_delivered(seq);
            any = true;
        }
        if any {
            self.last_done = Instant::now();
            self.last_heard = self.last_done;
        }
        any
    }

    /// Once a second: records sent [`STALL_AFTER`] ago or longer and no
    /// acknowledgement since then (no broker reachable, no leader, not
    /// enough replicas) raise the `kafka` problem; acks clear it at once.
    /// An idle agent with Kafka down risks nothing and stays healthy.
    ///
    /// `Err`: the producer has been silent too long while Kafka answers
    /// (module docs, "A producer that hears nothing"): replace it.
    fn check_stall(&mut self, flags: &Flags) -> Result<(), String> {
        if self.stall_checked.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        self.stall_checked = Instant::now();
        let oldest = self
            .in_flight
            .values()
            .find(|r| !r.delivered)
            .map(|r| r.sent.elapsed());
        let stalled =
            oldest.is_some_and(|age| age >= STALL_AFTER && self.last_done.elapsed() >= STALL_AFTER);
        let m = &self.deps.metrics;
        if stalled {
            let quiet = self.last_done.elapsed().min(oldest.unwrap_or_default());
            let last_error = self
                .deliveries
                .last_client_error()
                .map(|e| format!("; last client error: {e}"))
                .unwrap_or_default();
            m.problem(
                "kafka",
                format!(
                    "no acknowledgement from Kafka for {}s; {} records ({} lines) wait in the WAL{last_error}",
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
        } else if self.last_done.elapsed() < Duration::from_secs(1) {
            // Acknowledgements flow: an older client error is history.
            self.deliveries.client_error(None);
        }
        if !stalled && self.stall_reported {
            m.clear_problem("kafka");
            self.stall_reported = false;
            tracing::info!("Kafka acknowledges again");
        }
        if self.acked_any {
            flags.stall_restarts.store(0, Ordering::SeqCst);
        }
        self.replace_if_silent(flags)
    }

    /// A producer silent for its wait, while Kafka answered others for at
    /// least the last half of it, is replaced (module docs, "A producer
    /// that hears nothing"). Kafka is asked from half the wait on, at most
    /// every [`STALL_PROBE_EVERY`] (a quarter of the wait if shorter).
    fn replace_if_silent(&mut self, flags: &Flags) -> Result<(), String> {
        let restarts = flags.stall_restarts.load(Ordering::SeqCst);
        let wait = self
            .cfg
            .restart_stalled_after
            .saturating_mul(1 << restarts.min(MAX_STALL_DOUBLINGS));
        // Failures are news too: only a producer that reports nothing at
        // all is suspect.
        let quiet = self.last_heard.elapsed();
        let oldest = self.in_flight.values().find(|r| !r.delivered);
        let Some(oldest) = oldest.filter(|r| quiet >= wait / 2 && r.sent.elapsed() >= wait / 2)
        else {
            self.answering_since = None;
            return Ok(());
        };
        let every = STALL_PROBE_EVERY.min(wait / 4);
        if self.stall_probed.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        self.stall_probed = Some(Instant::now());
        let topic = oldest.topic.clone();
        if !self.producer.kafka_answers(&topic) {
            // Unreachable (or the topic is gone, which refusals handle):
            // the producer is right to wait.
            self.answering_since = None;
            return Ok(());
        }
        // Silence counts only while Kafka answers: after an outage the
        // producer has half the wait to reconnect on its own (its reconnect
        // backoff grows to 10 s) before it is judged stuck.
        let answering = *self.answering_since.get_or_insert_with(Instant::now);
        let heard_since = self.last_heard > answering;
        if quiet < wait || heard_since || answering.elapsed() < wait / 2 {
            return Ok(());
        }
        flags.stall_restarts.store(restarts + 1, Ordering::SeqCst);
        self.ack(true);
        let max = self
            .cfg
            .restart_stalled_after
            .saturating_mul(1 << MAX_STALL_DOUBLINGS);
        Err(format!(
            "Kafka answers (topic {topic} described, for {}s now) but the producer has reported on no message for {}s; replacing it (next wait {}s)",
            answering.elapsed().as_secs(),
            quiet.as_secs(),
            wait.saturating_mul(2).min(max).as_secs()
        ))
    }

    /// Advances the done prefix; with `now` (or every 100 ms) records it.
    fn ack(&mut self, flush: bool) {
        self.collect_done();
        let m = &self.deps.metrics;
        let mut acked_offsets: Vec<(FileId, u64)> = Vec::new();
        let upto = self.window.advance();
        let rest = self.in_flight.split_off(&(upto + 1));
        for (_, r) in std::mem::replace(&mut self.in_flight, rest) {
            if !r.delivered {
                self.in_flight_lines -= r.lines as usize;
                self.in_flight_bytes -= r.bytes;
            }
            m.topic(&m.lines_acked, &r.topic).inc_by(r.lines);
            acked_offsets.push((r.id, r.end_offset));
        }
        self.last_ack = Instant::now();
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            m.last_ack_timestamp_seconds
                .set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        }
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
        let fixed = match (&route, &spec.partition) {
            (Route::Key(k), PartitionMode::ByFile) => self
                .deps
                .spread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .route(
                    &batch.topic,
                    k.as_bytes(),
                    spread::day_of(checkpoint::now_ms()),
                ),
            _ => None,
        };
        let ts = event::timestamp(batch.read_ms);
        let file = event::file_header(batch);
        let track = Arc::new(Track::new(seq));
        let max_event_bytes = self.event_limit(&batch.topic);
        if seq > self.readback_upto && self.seen.len() > 0 {
            // Past the records the read-back was for: free its set.
            self.seen = Seen::default();
        }
        let unchecked =
            seq <= self.readback_upto && (!self.readback_complete || batch.read_ms == 0);
        let mut sent: u32 = 0;
        let mut bytes = 0;
        let mut buf = std::mem::take(&mut self.buf);
        for line in &batch.lines {
            encode(who, spec, batch, &ts, line, max_event_bytes, &mut buf);
            if self.seen.take(&file, line.offset, &buf) {
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
            let mut msg = Msg {
                topic: &batch.topic,
                partition: None,
                key: None,
                payload: &buf[..],
                headers,
                timestamp: (batch.read_ms > 0)
                    .then(|| i64::try_from(batch.read_ms).unwrap_or(i64::MAX)),
            };
            match &route {
                Route::Key(k) => {
                    msg.key = Some(k.as_bytes());
                    msg.partition = fixed;
                }
                Route::Partition(p) => msg.partition = Some(*p),
                Route::Any => {}
            }
            sent += 1;
            bytes += buf.len();
            loop {
                match self.producer.send(msg, &track) {
                    Ok(()) => break,
                    Err((RDKafkaErrorCode::QueueFull, m)) => {
                        msg = m;
                        self.collect_done();
                        if stop.load(Ordering::SeqCst) {
                            // Unsent: the record stays unacknowledged.
                            self.buf = buf;
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((code, m)) => {
                        self.deps.metrics.delivery_errors.inc();
                        tracing::debug!(topic = %batch.topic, error = ?code, "cannot hand a message to the producer");
                        self.deliveries.refused(Failed {
                            msg: m.into_owned(),
                            code,
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
                delivered: false,
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
            self.record_delivered(seq);
        }
    }

    /// Sends failed messages again, at most once per `retry_every`; those
    /// refused for good go to the dead-letter topic instead (module docs).
    fn resend_failed(&mut self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let failed = self.deliveries.take_refused();
        if failed.is_empty() {
            self.retry_at = None;
            return false;
        }
        self.retry_at = Some(Instant::now() + self.cfg.retry_every);
        self.last_heard = Instant::now();
        for f in failed {
            let failing_for = self.failing_for(&f);
            if refusal::is_final(f.code, failing_for, self.cfg.dead_letter_after) {
                match self.cfg.dead_letter_topic.clone() {
                    Some(dlq) if dlq != f.msg.topic => {
                        self.dead_letter(f, &dlq);
                        continue;
                    }
                    dlq => self.stuck(&f, dlq.as_deref()),
                }
            }
            if let Err((e, _)) = self.producer.send(f.msg.as_msg(), &f.track) {
                tracing::debug!(error = ?e, "resend refused; trying again later");
                let code = if e == RDKafkaErrorCode::QueueFull {
                    f.code
                } else {
                    e
                };
                self.deliveries.refused(Failed { code, ..f });
            }
        }
        true
    }

    /// Saves the partition plan when it changed (module [`crate::spread`]).
    fn save_spread(&mut self) {
        let bytes = {
            let mut plan = self.deps.spread.lock().unwrap_or_else(|p| p.into_inner());
            if !plan.take_changed() {
                return;
            }
            plan.encode()
        };
        let st = self.deps.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = st.save_meta(spread::META_KEY, &bytes) {
            tracing::warn!(error = %e, "cannot save which partition each file goes to; after a restart a new file may be given another");
        }
    }

    /// How long `f`'s kind of refusal has lasted: in this process, or since
    /// the ledger first saw it (across restarts) for refusals that count
    /// only if they last.
    fn failing_for(&mut self, f: &Failed) -> Duration {
        let local = f.track.refused_since().elapsed();
        if refusal::classify(f.code) != refusal::Kind::PermanentIfItLasts {
            return local;
        }
        let key = refusal::Ledger::key(&f.msg.topic, f.msg.partition, f.code);
        // A kind not refused for this long starts again: longer than a
        // read-back between two sessions (which sends nothing) may take.
        let stale = (self.cfg.dead_letter_after * 2).max(Duration::from_secs(300));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (failing, save) = self
            .ledger
            .note(&key, checkpoint::now_ms(), ms(local), ms(stale));
        if save {
            let st = self.deps.store.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = st.save_meta(LEDGER_KEY, &self.ledger.encode()) {
                tracing::warn!(error = %e, "cannot save the refusal ledger; a restart counts refusals from then");
            }
        }
        Duration::from_millis(failing).max(local)
    }

    /// Sends a message refused for good to the dead-letter topic, in place
    /// of the original (it completes the same record).
    fn dead_letter(&mut self, f: Failed, dlq: &str) {
        let (payload, original_bytes) =
            refusal::dead_letter_payload(&f.msg.payload, self.cfg.max_event_bytes);
        let partition = f.msg.partition.map(|p| p.to_string()).unwrap_or_default();
        let error = format!("{:?}", f.code);
        let crc = crc32fast::hash(&f.msg.payload).to_string();
        let mut headers = f
            .msg
            .headers
            .clone()
            .insert(Header {
                key: refusal::HEADER_DLQ_TOPIC,
                value: Some(f.msg.topic.as_str()),
            })
            .insert(Header {
                key: refusal::HEADER_DLQ_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: refusal::HEADER_DLQ_ERROR,
                value: Some(error.as_str()),
            })
            .insert(Header {
                key: refusal::HEADER_DLQ_CRC,
                value: Some(crc.as_str()),
            });
        if let Some(n) = original_bytes {
            headers = headers.insert(Header {
                key: refusal::HEADER_DLQ_ORIGINAL_BYTES,
                value: Some(n.to_string().as_str()),
            });
        }
        let topic = &f.msg.topic;
        let m = &self.deps.metrics;
        m.topic(&m.dead_letters, topic).inc();
        let n = {
            let n = self.refusals.entry(topic.clone()).or_insert(0);
            *n += 1;
            *n
        };
        m.problem(
            &format!("topic:{topic}"),
            format!(
                "Kafka refuses messages to `{topic}` for good ({error}); {n} sent to the dead-letter topic `{dlq}`"
            ),
        );
        if n.is_power_of_two() {
            tracing::warn!(topic = %topic, error = %error, dead_letter_topic = dlq, count = n, "Kafka refuses messages for good; sent to the dead-letter topic");
        }
        let letter = Msg {
            topic: dlq,
            partition: None,
            key: f.msg.key.as_deref(),
            payload,
            headers,
            timestamp: f.msg.timestamp,
        };
        if let Err((code, m)) = self.producer.send(letter, &f.track) {
            tracing::debug!(error = ?code, "dead letter not taken yet; trying again later");
            let msg = m.into_owned();
            self.deliveries.refused(Failed {
                msg,
                code,
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
        let key = format!("topic:{}", f.msg.topic);
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
                f.msg.topic, f.code
            ),
        );
        if fresh {
            tracing::error!(topic = %f.msg.topic, error = ?f.code, "Kafka refuses a message for good and {why}; it is retried and holds the WAL back");
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
        let (limit, ttl) = match self.producer.topic_max_message_bytes(topic) {
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
