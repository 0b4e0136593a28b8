//! Model tests of the shipper: sessions driven step by step against an
//! in-memory broker through refusals (transient and for good), dead
//! letters, crashes with messages of unknown fate, and read-backs that work
//! or fail. The WAL and the checkpoint store are the real ones (in a
//! temporary directory); only Kafka is modelled.
//!
//! What must hold, after every action:
//! - every line of a record the WAL acknowledged is in Kafka (its topic or
//!   the dead-letter topic) — an acknowledged record is never lost;
//! - no line is in a topic other than its own or the dead-letter topic;
//!
//! and once the broker takes everything again:
//! - every line is in Kafka;
//! - no line is there twice unless a read-back gave up (at-least-once is
//!   then the documented floor).

use super::*;
use crate::event::{Identity, ShipSpec};
use crate::spool::Progress;
use checkpoint::Store;
use proptest::prelude::*;
use std::collections::VecDeque;
use wal::{Append, Line, SourceId, SyncPolicy, WalOptions};

const TOPICS: [&str; 3] = ["t0", "t1", "t2"];
const DLQ: &str = "dlq";

/// A message handed over whose fate the broker has not decided yet.
struct Pending {
    msg: OwnedMsg,
    track: Arc<Track>,
    to: Arc<Deliveries>,
}

#[derive(Default)]
struct Broker {
    logs: BTreeMap<String, Vec<OwnedMsg>>,
    pending: VecDeque<Pending>,
    /// Topics that refuse every message, and with which error.
    refuse: HashMap<String, RDKafkaErrorCode>,
    readback_fails: bool,
    /// This many of the next messages taken are reported failed all the
    /// same ("possibly persisted": a timeout after the broker wrote them).
    ambiguous: usize,
    /// The admin client's describe answers (Kafka is up for other clients).
    describes: bool,
    /// Producers made so far (sessions opened).
    producers: usize,
}

impl Broker {
    /// Decides the fate of the `n` oldest messages handed over.
    fn resolve(&mut self, n: usize) {
        for _ in 0..n {
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            if let Some(code) = self.refuse.get(&p.msg.topic) {
                p.to.refused(Failed {
                    msg: p.msg,
                    code: *code,
                    track: p.track,
                });
            } else {
                self.logs
                    .entry(p.msg.topic.clone())
                    .or_default()
                    .push(p.msg.clone());
                if self.ambiguous > 0 {
                    self.ambiguous -= 1;
                    p.to.refused_maybe_persisted(Failed {
                        msg: p.msg,
                        code: RDKafkaErrorCode::RequestTimedOut,
                        track: p.track,
                    });
                } else {
                    p.to.delivered(&p.track);
                }
            }
        }
    }

    /// The agent died: each message handed over reached Kafka or did not
    /// (bit `i` of `mask` for the `i`-th), and nobody hears of it.
    fn crash(&mut self, mask: u64) {
        for (i, p) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if mask >> (i % 64) & 1 == 1 && !self.refuse.contains_key(&p.msg.topic) {
                self.logs
                    .entry(p.msg.topic.clone())
                    .or_default()
                    .push(p.msg);
            }
        }
    }
}

#[derive(Clone, Default)]
struct FakeKafka(Arc<Mutex<Broker>>);

impl FakeKafka {
    fn broker(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct FakeProducer {
    broker: FakeKafka,
    deliveries: Arc<Deliveries>,
}

impl Produce for FakeProducer {
    fn send<'a>(&self, m: Msg<'a>, track: &Arc<Track>) -> Result<(), (RDKafkaErrorCode, Msg<'a>)> {
        self.broker.broker().pending.push_back(Pending {
            msg: m.into_owned(),
            track: Arc::clone(track),
            to: Arc::clone(&self.deliveries),
        });
        Ok(())
    }

    fn fatal_error(&self) -> Option<String> {
        None
    }

    fn topic_max_message_bytes(&self, _topic: &str) -> Result<Option<usize>, String> {
        Ok(None)
    }

    fn kafka_answers(&self, _topic: &str) -> bool {
        self.broker.broker().describes
    }
}

impl Kafka for FakeKafka {
    type Producer = FakeProducer;

    fn producer(&self, deliveries: Arc<Deliveries>) -> Result<FakeProducer, String> {
        self.broker().producers += 1;
        Ok(FakeProducer {
            broker: self.clone(),
            deliveries,
        })
    }

    fn read_back(
        &self,
        scope: &Scope,
        _stop: &AtomicBool,
        _deadline: Instant,
    ) -> Result<Seen, ReadBackError> {
        let b = self.broker();
        if b.readback_fails {
            return Err(ReadBackError::Retry("no READ permission".into()));
        }
        let mut seen = Seen::default();
        for topic in &scope.topics {
            for m in b.logs.get(topic).into_iter().flatten() {
                if m.timestamp.unwrap_or(0) >= scope.since_ms {
                    seen.insert(Some(&m.headers), &m.payload, &scope.hosts)?;
                }
            }
        }
        Ok(seen)
    }
}

/// The real WAL and checkpoint store, and the shipper's settings.
struct Env {
    _dir: tempfile::TempDir,
    cfg: ShipConfig,
    deps: Shared,
    kafka: FakeKafka,
    flags: Flags,
}

fn identity() -> Identity {
    Identity {
        host_id: "h1".into(),
        host_name: "h1".into(),
        host_ip: "10.0.0.1".into(),
        version: "test".into(),
    }
}

impl Env {
    fn new(max_in_flight_lines: usize, dead_letter: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(
            dir.path().join("wal"),
            WalOptions {
                sync: SyncPolicy::Manual,
                ..WalOptions::default()
            },
        )
        .expect("wal");
        let (store, _) = Store::open(dir.path().join("cp"), Duration::from_secs(1)).expect("store");
        let deps = Shared {
            wal: Arc::new(wal),
            store: Arc::new(Mutex::new(store)),
            progress: Arc::new(Progress::default()),
            metrics: Metrics::new(),
            spread: Arc::default(),
        };
        let cfg = ShipConfig {
            brokers: "fake".into(),
            settings: BTreeMap::new(),
            identity: identity(),
            max_event_bytes: 1 << 20,
            include_unsynced: true,
            max_in_flight_lines,
            max_in_flight_bytes: 1 << 30,
            dead_letter_topic: dead_letter.then(|| DLQ.to_string()),
            dead_letter_after: Duration::from_secs(3600),
            readback_timeout: Duration::ZERO,
            ack_every: Duration::ZERO,
            retry_every: Duration::ZERO,
            restart_stalled_after: Duration::from_secs(3600),
        };
        Self {
            _dir: dir,
            cfg,
            deps,
            kafka: FakeKafka::default(),
            flags: Flags::default(),
        }
    }

    fn open(&self) -> Session<'_, FakeProducer> {
        Session::open(&self.kafka, &self.cfg, &self.deps, &self.flags.stop).expect("session")
    }

    /// One step; a session that ends with an error is replaced, as the
    /// shipper thread does. Returns whether the new one's read-back gave up.
    fn step<'e>(&'e self, s: &mut Session<'e, FakeProducer>) -> bool {
        match s.step(&self.flags) {
            Ok(done) => {
                assert!(!done, "the session ended without being asked to");
                false
            }
            Err(_) => {
                // The old producer is dropped (rdkafka purges what it
                // holds): each message it had handed over reached Kafka or
                // not, before the new session reads back.
                self.kafka.broker().crash(0xAAAA_AAAA_AAAA_AAAA);
                *s = self.open();
                !s.readback_complete
            }
        }
    }
}

/// What was written, to check Kafka against.
#[derive(Default)]
struct Written {
    /// Per record: its lines as (file header, offset), and its topic.
    records: BTreeMap<Seq, (String, Vec<(String, u64)>)>,
    next_inode: u64,
    readback_gave_up: bool,
}

impl Written {
    fn append(&mut self, env: &Env, topic: &str, lines: usize) {
        self.next_inode += 1;
        let read_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1);
        let batch = Batch {
            source: SourceId {
                device: 1,
                inode: self.next_inode,
                fingerprint: 7,
                path: format!("/logs/{}.log", self.next_inode),
            },
            topic: topic.to_string(),
            end_offset: 10 * lines as u64,
            read_ms,
            meta: RecordMeta::encode(&ShipSpec::default(), &identity()),
            lines: (0..lines)
                .map(|i| Line {
                    offset: 10 * i as u64,
                    bytes: format!("line {i} of {}", self.next_inode).into_bytes(),
                    flags: 0,
                })
                .collect(),
        };
        let file = event::file_header(&batch);
        let lines = batch
            .lines
            .iter()
            .map(|l| (file.clone(), l.offset))
            .collect();
        let Append::Appended(seqs) = env.deps.wal.append(&[batch]).expect("append") else {
            panic!("the model's WAL is never full");
        };
        self.records
            .insert(*seqs.start(), (topic.to_string(), lines));
        env.deps
            .progress
            .checkpointed
            .store(env.deps.wal.last_seq(), Ordering::SeqCst);
    }

    /// How often each line is in Kafka; panics on a misrouted one.
    fn in_kafka(&self, env: &Env) -> HashMap<(String, u64), usize> {
        let topic_of: HashMap<&(String, u64), &str> = self
            .records
            .values()
            .flat_map(|(t, ls)| ls.iter().map(move |l| (l, t.as_str())))
            .collect();
        let mut n = HashMap::new();
        for (topic, msgs) in &env.kafka.broker().logs {
            for m in msgs {
                let (mut file, mut offset) = (None, None);
                for h in m.headers.iter() {
                    let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    match h.key {
                        HEADER_FILE => file = v.map(str::to_string),
                        HEADER_OFFSET => offset = v.and_then(|v| v.parse::<u64>().ok()),
                        _ => {}
                    }
                }
                let key = (file.expect("file header"), offset.expect("offset header"));
                let own = topic_of.get(&key).copied();
                assert!(
                    own == Some(topic.as_str()) || topic == DLQ,
                    "line {key:?} of topic {own:?} found in {topic}"
                );
                *n.entry(key).or_insert(0) += 1;
            }
        }
        n
    }

    /// Every line of an acknowledged record is in Kafka.
    fn check_acked(&self, env: &Env) {
        let acked = env.deps.wal.acked_seq();
        let have = self.in_kafka(env);
        for (seq, (_, lines)) in self.records.range(..=acked) {
            for l in lines {
                assert!(
                    have.contains_key(l),
                    "record {seq} is acknowledged but its line {l:?} is not in Kafka"
                );
            }
        }
    }

    /// The broker takes everything; the session runs until the WAL is
    /// acknowledged to its end. Returns the lines found twice.
    fn settle<'e>(&mut self, env: &'e Env, mut s: Session<'e, FakeProducer>) -> usize {
        {
            let mut b = env.kafka.broker();
            b.refuse.clear();
            b.ambiguous = 0;
        }
        for _ in 0..10_000 {
            if env.deps.wal.acked_seq() == env.deps.wal.last_seq()
                && env.kafka.broker().pending.is_empty()
            {
                break;
            }
            self.readback_gave_up |= env.step(&mut s);
            env.kafka.broker().resolve(usize::MAX);
        }
        assert_eq!(
            env.deps.wal.acked_seq(),
            env.deps.wal.last_seq(),
            "the WAL is not acknowledged to its end once Kafka takes everything"
        );
        let have = self.in_kafka(env);
        for (seq, (_, lines)) in &self.records {
            for l in lines {
                assert!(have.contains_key(l), "record {seq}: line {l:?} lost");
            }
        }
        have.values().filter(|&&n| n > 1).count()
    }
}

#[derive(Debug, Clone)]
enum Action {
    Append {
        topic: usize,
        lines: usize,
    },
    Step(u8),
    Resolve(u8),
    /// `None`: the topic takes messages again.
    Refuse {
        topic: usize,
        how: Option<RDKafkaErrorCode>,
    },
    /// The dead-letter topic refuses for good, or takes messages again.
    RefuseDeadLetters(bool),
    Crash(u64),
    ReadBackFails(bool),
    /// The next messages taken are reported failed ("possibly persisted").
    Ambiguous(u8),
}

fn action() -> impl Strategy<Value = Action> {
    let code = prop_oneof![
        Just(None),
        Just(Some(RDKafkaErrorCode::NotEnoughReplicas)),
        Just(Some(RDKafkaErrorCode::MessageSizeTooLarge)),
    ];
    prop_oneof![
        3 => (0..TOPICS.len(), 1usize..6).prop_map(|(topic, lines)| Action::Append { topic, lines }),
        4 => (1u8..8).prop_map(Action::Step),
        4 => (1u8..12).prop_map(Action::Resolve),
        1 => (0..TOPICS.len(), code).prop_map(|(topic, how)| Action::Refuse { topic, how }),
        1 => any::<bool>().prop_map(Action::RefuseDeadLetters),
        1 => any::<u64>().prop_map(Action::Crash),
        1 => any::<bool>().prop_map(Action::ReadBackFails),
        1 => (1u8..4).prop_map(Action::Ambiguous),
    ]
}

/// Runs `actions`; returns the lines found twice at the end and whether a
/// read-back gave up meanwhile.
fn run_model(actions: &[Action], max_in_flight_lines: usize, dead_letter: bool) -> (usize, bool) {
    let env = Env::new(max_in_flight_lines, dead_letter);
    let mut w = Written::default();
    let mut s = env.open();
    for a in actions {
        match a {
            Action::Append { topic, lines } => w.append(&env, TOPICS[*topic], *lines),
            Action::Step(n) => {
                for _ in 0..*n {
                    w.readback_gave_up |= env.step(&mut s);
                }
            }
            Action::Resolve(n) => env.kafka.broker().resolve(usize::from(*n)),
            Action::Refuse { topic, how } => {
                let mut b = env.kafka.broker();
                match how {
                    Some(code) => b.refuse.insert(TOPICS[*topic].to_string(), *code),
                    None => b.refuse.remove(TOPICS[*topic]),
                };
            }
            Action::RefuseDeadLetters(on) => {
                let mut b = env.kafka.broker();
                if *on {
                    b.refuse
                        .insert(DLQ.to_string(), RDKafkaErrorCode::MessageSizeTooLarge);
                } else {
                    b.refuse.remove(DLQ);
                }
            }
            Action::Crash(mask) => {
                drop(s);
                env.kafka.broker().crash(*mask);
                s = env.open();
                w.readback_gave_up |= !s.readback_complete;
            }
            Action::ReadBackFails(on) => env.kafka.broker().readback_fails = *on,
            Action::Ambiguous(n) => env.kafka.broker().ambiguous = usize::from(*n),
        }
        w.check_acked(&env);
    }
    let twice = w.settle(&env, s);
    (twice, w.readback_gave_up)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Refusals, dead letters, crashes and read-backs in any order: an
    /// acknowledged record is always in Kafka, nothing is lost or
    /// misrouted, and nothing is sent twice unless a read-back gave up.
    #[test]
    fn no_loss_and_no_duplicate_through_refusals_and_crashes(
        actions in proptest::collection::vec(action(), 1..80),
        max_in_flight_lines in 1usize..20,
        dead_letter in any::<bool>(),
    ) {
        let (twice, gave_up) = run_model(&actions, max_in_flight_lines, dead_letter);
        prop_assert!(twice == 0 || gave_up, "{twice} lines sent twice with a complete read-back");
    }
}

/// One record refused until it is dead-lettered (here: for the whole test)
/// must not stop the others: the in-flight budget counts undelivered
/// messages, not unacknowledged records.
#[test]
fn a_refused_record_does_not_hold_the_others_back() {
    let env = Env::new(10, true);
    let mut w = Written::default();
    env.kafka
        .broker()
        .refuse
        .insert("t0".into(), RDKafkaErrorCode::NotEnoughReplicas);
    w.append(&env, "t0", 1);
    for _ in 0..20 {
        w.append(&env, "t1", 5);
    }
    let mut s = env.open();
    for _ in 0..200 {
        assert!(!s.step(&env.flags).expect("step"));
        env.kafka.broker().resolve(usize::MAX);
    }
    let have = w.in_kafka(&env);
    let (_, healthy): (Vec<_>, Vec<_>) = w.records.values().partition(|(t, _)| t == "t0");
    let missing = healthy
        .iter()
        .flat_map(|(_, ls)| ls)
        .filter(|l| !have.contains_key(l))
        .count();
    assert_eq!(missing, 0, "lines of t1 held back behind the refused one");
    assert_eq!(
        env.deps.wal.acked_seq(),
        0,
        "the refused record holds the WAL"
    );
    assert_eq!(w.settle(&env, s), 0);
}

/// A message reported failed that Kafka has all the same ("possibly
/// persisted") is not sent again blindly: the session restarts and its
/// read-back finds it.
#[test]
fn a_possibly_persisted_failure_is_read_back_not_resent() {
    let env = Env::new(100, true);
    let mut w = Written::default();
    w.append(&env, "t0", 4);
    env.kafka.broker().ambiguous = 2;
    let mut s = env.open();
    for _ in 0..10 {
        assert!(!env.step(&mut s), "the read-back completes");
        env.kafka.broker().resolve(usize::MAX);
    }
    assert_eq!(
        w.settle(&env, s),
        0,
        "possibly persisted messages sent twice"
    );
}

/// A producer that hears nothing from Kafka while the admin client gets
/// answers is replaced (module docs, "A producer that hears nothing"); its
/// messages of unknown fate are read back, not sent twice. One that hears
/// nothing because Kafka is down for everyone is left to wait.
#[test]
fn a_silent_producer_is_replaced_only_while_kafka_answers_others() {
    for describes in [false, true] {
        let mut env = Env::new(100, true);
        env.cfg.restart_stalled_after = Duration::from_millis(200);
        let mut w = Written::default();
        w.append(&env, "t0", 4);
        env.kafka.broker().describes = describes;
        let mut s = env.open();
        // The producer takes the messages and never reports on them.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) && env.kafka.broker().producers == 1 {
            assert!(!env.step(&mut s), "the read-back completes");
            std::thread::sleep(Duration::from_millis(5));
        }
        let producers = env.kafka.broker().producers;
        if describes {
            assert_eq!(producers, 2, "the silent producer was not replaced");
        } else {
            assert_eq!(
                producers, 1,
                "a producer replaced while Kafka answered nobody"
            );
        }
        assert_eq!(
            w.settle(&env, s),
            0,
            "messages of the silent producer sent twice"
        );
    }
}

/// A producer that waited out an outage everyone saw is not judged by the
/// silence of the outage: once Kafka answers again it has half its wait to
/// reconnect and report by itself, and is not replaced when it does (before,
/// the first answer after an outage longer than the wait replaced it at once:
/// the outage test's producer was replaced 3 s after the broker returned).
#[test]
fn a_producer_that_waited_out_an_outage_gets_time_to_reconnect() {
    let mut env = Env::new(100, true);
    env.cfg.restart_stalled_after = Duration::from_millis(200);
    let mut w = Written::default();
    w.append(&env, "t0", 4);
    env.kafka.broker().describes = false;
    let mut s = env.open();
    let start = Instant::now();
    let mut reported = false;
    // The stall check runs once a second: Kafka is down for everyone through
    // two checks (10 waits), back before the third, and the producer reports
    // after the third, which is the first to get an answer.
    while start.elapsed() < Duration::from_millis(4500) {
        let t = start.elapsed();
        if t >= Duration::from_millis(2500) {
            env.kafka.broker().describes = true;
        }
        if t >= Duration::from_millis(3500) && !reported {
            env.kafka.broker().resolve(usize::MAX);
            reported = true;
        }
        assert!(!env.step(&mut s), "the read-back completes");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        env.kafka.broker().producers,
        1,
        "a producer replaced before it could reconnect"
    );
    assert_eq!(w.settle(&env, s), 0, "messages sent twice");
}

/// A line dead-lettered just before a crash is found by the read-back in
/// the dead-letter topic and not dead-lettered again.
#[test]
fn a_dead_letter_before_a_crash_is_not_sent_twice() {
    let env = Env::new(100, true);
    let mut w = Written::default();
    env.kafka
        .broker()
        .refuse
        .insert("t0".into(), RDKafkaErrorCode::MessageSizeTooLarge);
    w.append(&env, "t0", 3);
    let mut s = env.open();
    // Sent and refused; then dead-lettered, and the dead letters are in
    // Kafka — the agent dies before it records that.
    for _ in 0..2 {
        assert!(!s.step(&env.flags).expect("step"));
        env.kafka.broker().resolve(usize::MAX);
    }
    assert_eq!(env.kafka.broker().logs.get(DLQ).map_or(0, Vec::len), 3);
    assert_eq!(env.deps.wal.acked_seq(), 0);
    drop(s);
    let s = env.open();
    assert!(s.readback_complete);
    assert_eq!(w.settle(&env, s), 0, "dead letters sent twice");
}

/// A poison message (a partition the topic lacks) refused across restarts
/// that come more often than `dead_letter_after`: it is dead-lettered all
/// the same, and the WAL is acknowledged past it. Before the refusal
/// ledger, every process started the clock again: never dead-lettered,
/// the WAL never acknowledged (a torture run killing the agent every 10 s
/// kept 30,000 records unacknowledged, each start reading them back).
#[test]
fn a_poison_message_is_dead_lettered_across_restarts_faster_than_the_grace() {
    let mut env = Env::new(100, true);
    env.cfg.dead_letter_after = Duration::from_millis(400);
    let mut w = Written::default();
    env.kafka
        .broker()
        .refuse
        .insert("t0".into(), RDKafkaErrorCode::UnknownPartition);
    w.append(&env, "t0", 1);
    w.append(&env, "t1", 3);
    for _restart in 0..10 {
        let mut s = env.open();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(150) {
            assert!(!s.step(&env.flags).expect("step"));
            env.kafka.broker().resolve(usize::MAX);
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(s); // killed
        env.kafka.broker().crash(0);
    }
    assert_eq!(
        env.kafka.broker().logs.get(DLQ).map_or(0, Vec::len),
        1,
        "dead-lettered once, although no process lived 400 ms"
    );
    assert_eq!(
        env.deps.wal.acked_seq(),
        2,
        "the WAL is acknowledged past it"
    );
}
