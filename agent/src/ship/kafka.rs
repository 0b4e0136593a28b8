//! The shipper's Kafka: rdkafka's producer, admin client and the read-back
//! consumer behind the [`Kafka`] and [`Produce`] seam.

use super::{
    default_settings, Deliveries, Failed, Kafka, Msg, OwnedMsg, Produce, ReadBackError, Scope,
    Seen, ShipConfig, Track,
};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kafka through librdkafka.
pub(crate) struct RdKafka {
    brokers: String,
    settings: BTreeMap<String, String>,
    host_id: String,
}

impl RdKafka {
    pub fn new(cfg: &ShipConfig) -> Self {
        Self {
            brokers: cfg.brokers.clone(),
            settings: cfg.settings.clone(),
            host_id: cfg.identity.host_id.clone(),
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

/// rdkafka's delivery callback, reporting to the session's [`Deliveries`].
pub(crate) struct Ctx(Arc<Deliveries>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error} {reason}");
        self.0.client_error(Some(reason.to_string()));
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Arc<Track>;

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
    producer: ThreadedProducer<Ctx>,
    admin: AdminClient<DefaultClientContext>,
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
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let spec = [ResourceSpecifier::Topic(topic)];
        let res = futures::executor::block_on(self.admin.describe_configs(&spec, &opts))
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
}

impl Kafka for RdKafka {
    type Producer = RdProducer;

    fn producer(&self, deliveries: Arc<Deliveries>) -> Result<RdProducer, String> {
        let producer = self
            .producer_config()
            .create_with_context(Ctx(deliveries))
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        let admin = self
            .base_config()
            .create()
            .map_err(|e| format!("cannot create the Kafka admin client: {e}"))?;
        Ok(RdProducer { producer, admin })
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
                continue;
            };
            if t.error().is_some() {
                continue; // not created yet: nothing of ours in it
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
            for el in offsets.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, el.partition(), timeout)
                    .map_err(|e| retry(format!("watermarks of {topic}: {e}")))?;
                if let Offset::Offset(o) = el.offset() {
                    if o < high {
                        tpl.add_partition_offset(topic, el.partition(), Offset::Offset(o))
                            .map_err(|e| retry(e.to_string()))?;
                        ends.insert((topic.clone(), el.partition()), high);
                    }
                }
            }
        }
        if ends.is_empty() {
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
