//! The shipper's Kafka: rdkafka's producer, admin client and the read-back
//! consumer behind the [`Kafka`] and [`Produce`] seam.

use super::{
    default_settings, Deliveries, Failed, Kafka, Msg, OwnedMsg, Produce, ReadBackError, Scope,
    Seen, ShipConfig, Track,
};
use crate::spread::Plan;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kafka through librdkafka.
pub(crate) struct RdKafka {
    brokers: String,
    settings: BTreeMap<String, String>,
    host_id: String,
    /// Per topic: since when the broker has said it does not exist, over
    /// read-back attempts ([`UNKNOWN_TOPIC_SETTLE`]).
    unknown_since: std::sync::Mutex<HashMap<String, Instant>>,
    /// The partitioner of `by_file` keys; `None` when the user chose
    /// librdkafka's `partitioner`.
    spread: Option<Arc<Mutex<Plan>>>,
}

/// How long a broker must keep saying a topic does not exist before the
/// read-back believes it (and finds nothing of ours there). A broker that
/// is starting or shutting down can say so of a topic it has.
pub(crate) const UNKNOWN_TOPIC_SETTLE: Duration = Duration::from_secs(4);

/// What one partition's answers mean for the read-back (pure): scan it
/// from an offset up to its high watermark (`Some((from, high))`), nothing
/// of ours can be there (`None`: no message since the scope's time, or
/// none left before the high watermark), or ask again (`Err`: the broker
/// did not answer for it — a partition without a leader while a broker
/// stops or starts). Before, an unanswered partition counted as empty, and
/// a read-back during a Kafka restart found nothing and sent every
/// unacknowledged record again (a torture run: 37,511 duplicates).
pub(crate) fn partition_plan(
    offset: Offset,
    error: Option<String>,
    high: i64,
) -> Result<Option<(i64, i64)>, String> {
    if let Some(e) = error {
        return Err(e);
    }
    match offset {
        Offset::Offset(o) if o < high => Ok(Some((o, high))),
        Offset::Offset(_) | Offset::End => Ok(None),
        other => Err(format!("no offset for the time ({other:?})")),
    }
}

/// What a topic's metadata means for the read-back (pure): scan its
/// partitions (`Ok(true)`), nothing of ours is there (`Ok(false)`: the
/// broker has said for [`UNKNOWN_TOPIC_SETTLE`] that it does not exist), or
/// ask again. `unknown_for`: how long it has said so, `None` when it does
/// not say so now.
pub(crate) fn topic_plan(
    error: Option<RDKafkaErrorCode>,
    partition_errors: &[(i32, RDKafkaErrorCode)],
    partitions: usize,
    unknown_for: Option<Duration>,
) -> Result<bool, String> {
    match error {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            match unknown_for {
                Some(d) if d >= UNKNOWN_TOPIC_SETTLE => Ok(false),
                _ => Err("the broker says the topic does not exist (yet); asking again".into()),
            }
        }
        Some(e) => Err(format!("topic error {e:?}")),
        None if partitions == 0 => Err("no partitions in the answer".into()),
        None => match partition_errors.first() {
            Some((p, e)) => Err(format!("partition {p}: {e:?}")),
            None => Ok(true),
        },
    }
}

impl RdKafka {
    pub fn new(cfg: &ShipConfig, spread: Arc<Mutex<Plan>>) -> Self {
        Self {
            brokers: cfg.brokers.clone(),
            settings: cfg.settings.clone(),
            host_id: cfg.identity.host_id.clone(),
            unknown_since: std::sync::Mutex::new(HashMap::new()),
            spread: (!cfg.settings.contains_key("partitioner")).then_some(spread),
        }
    }

    /// How long the broker has said `topic` does not exist (`None`: it
    /// does not say so now, which also resets the clock).
    fn unknown_for(&self, topic: &str, unknown: bool) -> Option<Duration> {
        let mut m = self.unknown_since.lock().unwrap_or_else(|p| p.into_inner());
        if unknown {
            Some(
                m.entry(topic.to_string())
                    .or_insert_with(Instant::now)
                    .elapsed(),
            )
        } else {
            m.remove(topic);
            None
        }
    }

    /// The user's settings that are not producer tuning (TLS, SASL…): for
    /// the read-back consumer and the admin client.
    fn base_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        let ours = default_settings();
        for (k, v) in &self.settings {
            if !ours.contains_key(k) {
                cc.set(k, v);
            }
        }
        cc.set("bootstrap.servers", &self.brokers);
        cc
    }

    fn producer_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in &self.settings {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true");
        cc
    }
}

/// rdkafka's delivery callback, reporting to the session's [`Deliveries`],
/// and the partitioner of `by_file` files ([`crate::spread`]).
pub(crate) struct Ctx(Arc<Deliveries>, Option<Spread>);

/// [`Plan::partition`] as librdkafka's partitioner.
pub(crate) struct Spread(Arc<Mutex<Plan>>);

impl Partitioner for Spread {
    fn partition(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        count: i32,
        _available: impl Fn(i32) -> bool,
    ) -> i32 {
        // A file's partition does not depend on its leader being up: its
        // order in Kafka would not hold (the message waits for the leader).
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partition(topic, key, count)
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error} {reason}");
        self.0.client_error(Some(reason.to_string()));
    }
}

impl ProducerContext<Spread> for Ctx {
    type DeliveryOpaque = Arc<Track>;

    fn get_custom_partitioner(&self) -> Option<&Spread> {
        self.1.as_ref()
    }

    fn delivery(&self, result: &DeliveryResult<'_>, track: Arc<Track>) {
        match result {
            Ok(_) => self.0.delivered(&track),
            Err((e, msg)) => {
                self.0.metrics.delivery_errors.inc();
                tracing::debug!(topic = msg.topic(), error = %e, seq = track.seq, "delivery failed");
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                let failed = Failed {
                    msg: owned(msg),
                    code,
                    track,
                };
                // SAFETY: the message pointer is valid for the duration of
                // the callback; the call only reads its status field.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(msg.ptr()) };
                if status
                    == rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED
                {
                    self.0.refused(failed);
                } else {
                    tracing::warn!(topic = msg.topic(), error = %e, "a failed message may be in Kafka all the same; the session restarts with a read-back");
                    self.0.refused_maybe_persisted(failed);
                }
            }
        }
    }
}

fn owned(msg: &BorrowedMessage<'_>) -> OwnedMsg {
    let m = msg.detach();
    OwnedMsg {
        topic: m.topic().to_string(),
        partition: (m.partition() >= 0).then_some(m.partition()),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: m.headers().cloned().unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
    }
}

/// A producer and the admin client that reads topics' limits.
pub(crate) struct RdProducer {
    producer: ThreadedProducer<Ctx, Spread>,
    admin: AdminClient<DefaultClientContext>,
    /// For [`Produce::kafka_answers`]' fresh clients.
    base: ClientConfig,
}

/// A topic's `max.message.bytes` as `admin` reads it; `Ok(None)`: no such topic.
fn describe_max_message_bytes(
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

impl Produce for RdProducer {
    fn send<'a>(&self, m: Msg<'a>, track: &Arc<Track>) -> Result<(), (RDKafkaErrorCode, Msg<'a>)> {
        let mut rec =
            BaseRecord::<[u8], [u8], Arc<Track>>::with_opaque_to(m.topic, Arc::clone(track))
                .payload(m.payload)
                .headers(m.headers);
        if let Some(k) = m.key {
            rec = rec.key(k);
        }
        if let Some(p) = m.partition {
            rec = rec.partition(p);
        }
        if let Some(t) = m.timestamp {
            rec = rec.timestamp(t);
        }
        self.producer.send(rec).map_err(|(e, r)| {
            let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
            let back = Msg {
                topic: r.topic,
                partition: r.partition,
                key: r.key,
                payload: r.payload.unwrap_or_default(),
                headers: r.headers.unwrap_or_default(),
                timestamp: r.timestamp,
            };
            (code, back)
        })
    }

    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    fn topic_max_message_bytes(&self, topic: &str) -> Result<Option<usize>, String> {
        describe_max_message_bytes(&self.admin, topic)
    }

    fn kafka_answers(&self, topic: &str) -> bool {
        // A new client: one made with the producer may share its fate (a
        // client left without brokers by a restarting broker's metadata,
        // librdkafka issue #5301, never reconnects).
        match self.base.create::<AdminClient<DefaultClientContext>>() {
            Ok(admin) => matches!(describe_max_message_bytes(&admin, topic), Ok(Some(_))),
            Err(_) => false,
        }
    }
}

impl Kafka for RdKafka {
    type Producer = RdProducer;

    fn producer(&self, deliveries: Arc<Deliveries>) -> Result<RdProducer, String> {
        let producer = self
            .producer_config()
            .create_with_context(Ctx(deliveries, self.spread.clone().map(Spread)))
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        let admin = self
            .base_config()
            .create()
            .map_err(|e| format!("cannot create the Kafka admin client: {e}"))?;
        Ok(RdProducer {
            producer,
            admin,
            base: self.base_config(),
        })
    }

    fn read_back(
        &self,
        scope: &Scope,
        stop: &AtomicBool,
        deadline: Instant,
    ) -> Result<Seen, ReadBackError> {
        let retry = |e: String| ReadBackError::Retry(e);
        let mut seen = Seen::default();
        let consumer: BaseConsumer = {
            let mut cc = self.base_config();
            cc.set("group.id", format!("logagent-readback-{}", self.host_id))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_uncommitted")
                .set("log_level", "3");
            cc.create().map_err(|e| retry(e.to_string()))?
        };
        let timeout = Duration::from_secs(10);
        let since = scope.since_ms;
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        for topic in &scope.topics {
            let md = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| retry(format!("metadata of {topic}: {e}")))?;
            let Some(t) = md.topics().first() else {
                return Err(retry(format!(
                    "metadata of {topic}: the topic is not in the answer"
                )));
            };
            let error = t.error().map(RDKafkaErrorCode::from);
            let unknown = matches!(
                error,
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
            );
            let partition_errors: Vec<(i32, RDKafkaErrorCode)> = t
                .partitions()
                .iter()
                .filter_map(|p| p.error().map(|e| (p.id(), RDKafkaErrorCode::from(e))))
                .collect();
            let scan = topic_plan(
                error,
                &partition_errors,
                t.partitions().len(),
                self.unknown_for(topic, unknown),
            )
            .map_err(|e| retry(format!("metadata of {topic}: {e}")))?;
            if !scan {
                continue; // it does not exist: nothing of ours in it
            }
            let mut times = TopicPartitionList::new();
            for p in t.partitions() {
                times
                    .add_partition_offset(topic, p.id(), Offset::Offset(since))
                    .map_err(|e| retry(e.to_string()))?;
            }
            let offsets = consumer
                .offsets_for_times(times, timeout)
                .map_err(|e| retry(format!("offsets of {topic} at {since}: {e}")))?;
            if offsets.count() != t.partitions().len() {
                return Err(retry(format!(
                    "offsets of {topic}: {} of {} partitions answered",
                    offsets.count(),
                    t.partitions().len()
                )));
            }
            for el in offsets.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, el.partition(), timeout)
                    .map_err(|e| retry(format!("watermarks of {topic}: {e}")))?;
                let plan =
                    partition_plan(el.offset(), el.error().err().map(|e| e.to_string()), high)
                        .map_err(|e| {
                            retry(format!("offsets of {topic}/{}: {e}", el.partition()))
                        })?;
                if let Some((from, high)) = plan {
                    tpl.add_partition_offset(topic, el.partition(), Offset::Offset(from))
                        .map_err(|e| retry(e.to_string()))?;
                    ends.insert((topic.clone(), el.partition()), high);
                }
            }
        }
        if ends.is_empty() {
            tracing::info!(
                topics = scope.topics.len(),
                "read back: Kafka has nothing of ours since the oldest unacknowledged record"
            );
            return Ok(seen);
        }
        consumer.assign(&tpl).map_err(|e| retry(e.to_string()))?;
        let mut scanned: u64 = 0;
        while !ends.is_empty() {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                return Err(retry(format!(
                    "read-back incomplete after {scanned} messages ({} partitions left)",
                    ends.len()
                )));
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
                    seen.insert(m.headers(), m.payload().unwrap_or_default(), &scope.hosts)?;
                }
            }
        }
        tracing::info!(
            topics = scope.topics.len(),
            scanned,
            ours = seen.len(),
            "read back what Kafka has of the unacknowledged WAL records"
        );
        Ok(seen)
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn an_unanswered_partition_is_asked_again_never_taken_for_empty() {
        assert_eq!(
            partition_plan(Offset::Offset(5), None, 10),
            Ok(Some((5, 10)))
        );
        assert_eq!(partition_plan(Offset::Offset(10), None, 10), Ok(None));
        assert_eq!(
            partition_plan(Offset::End, None, 10),
            Ok(None),
            "nothing since"
        );
        assert!(
            partition_plan(Offset::Offset(5), Some("NotLeaderForPartition".into()), 10).is_err()
        );
        assert!(partition_plan(Offset::Invalid, None, 10).is_err());
        assert!(partition_plan(Offset::Beginning, None, 10).is_err());
    }

    #[test]
    fn a_topic_without_leaders_or_said_missing_for_a_moment_is_asked_again() {
        use RDKafkaErrorCode as C;
        assert_eq!(topic_plan(None, &[], 4, None), Ok(true));
        assert!(topic_plan(None, &[(2, C::LeaderNotAvailable)], 4, None).is_err());
        assert!(topic_plan(None, &[], 0, None).is_err());
        assert!(topic_plan(Some(C::LeaderNotAvailable), &[], 0, None).is_err());
        let unknown = Some(C::UnknownTopicOrPartition);
        assert!(topic_plan(unknown, &[], 0, Some(Duration::from_secs(1))).is_err());
        assert_eq!(
            topic_plan(unknown, &[], 0, Some(UNKNOWN_TOPIC_SETTLE)),
            Ok(false),
            "missing for long enough: nothing of ours there"
        );
    }
}
