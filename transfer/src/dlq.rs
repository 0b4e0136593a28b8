//! The dead-letter Kafka topic (issue #13 item 8): where a dead letter goes
//! when Elasticsearch refuses even the dead letter (`dead_letter.mode =
//! "index_then_kafka"`, the default once `dead_letter.kafka_topic` is set),
//! or instead of the dead-letter index (`"kafka"`).
//!
//! Each message is the dead-letter document (`kafka` origin, `error`
//! status/type/reason, `original` cut to 32 KiB), keyed by the document's
//! `_id`, with headers naming its origin: `logpipe-dlq-topic`,
//! `logpipe-dlq-partition`, `logpipe-dlq-offset`, `logpipe-dlq-error` (the
//! error type of the first refusal) and, when the dead-letter index refused
//! too, `logpipe-dlq-index-error`. The offset counts as written once Kafka
//! acknowledged the dead letter (`acks=all`, idempotent).

use crate::config::TransferConfig;
use crate::doc::Doc;
use crate::kafka::BrokerWatch;
use crate::Error;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;

pub const HEADER_TOPIC: &str = "logpipe-dlq-topic";
pub const HEADER_PARTITION: &str = "logpipe-dlq-partition";
pub const HEADER_OFFSET: &str = "logpipe-dlq-offset";
pub const HEADER_ERROR: &str = "logpipe-dlq-error";
pub const HEADER_INDEX_ERROR: &str = "logpipe-dlq-index-error";

/// How long one dead letter may wait for Kafka's acknowledgement before the
/// attempt counts as failed (the partition then stops and is retried).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka settings copied from `kafka.consumer` to the dead-letter
/// producer: how to reach and authenticate to the same cluster.
const SHARED_PREFIXES: &[&str] = &["security.", "sasl.", "ssl.", "client.", "socket."];

/// A dead letter bound for the topic: the dead-letter document and why the
/// dead-letter index did not take it (when it refused it).
pub struct Letter {
    pub doc: Doc,
    pub index_error: Option<String>,
}

/// The producer's callbacks: statistics tell when it lost every broker.
struct DlqContext {
    brokers: Arc<BrokerWatch>,
}

impl ClientContext for DlqContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
    }
}

/// The dead-letter topic's producer.
pub struct DeadLetterTopic {
    producer: FutureProducer<DlqContext>,
    topic: String,
    /// `kafka.brokers`, to bootstrap again ([`crate::kafka`]).
    brokers: String,
    watch: Arc<BrokerWatch>,
}

impl DeadLetterTopic {
    /// The producer for `dead_letter.kafka_topic`, `None` when it is unset.
    ///
    /// # Errors
    /// [`Error::Setup`] when librdkafka refuses the settings.
    pub fn new(cfg: &TransferConfig) -> Result<Option<Self>, Error> {
        let topic = cfg.dead_letter.kafka_topic.trim();
        if topic.is_empty() {
            return Ok(None);
        }
        let mut c = ClientConfig::new();
        for (k, v) in &cfg.kafka.consumer {
            if SHARED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                c.set(k, v);
            }
        }
        c.set("bootstrap.servers", &cfg.kafka.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        crate::kafka::set_defaults(&mut c, &cfg.kafka.consumer);
        let watch = Arc::new(BrokerWatch::default());
        let producer = c
            .create_with_context(DlqContext {
                brokers: Arc::clone(&watch),
            })
            .map_err(|e| Error::Setup(format!("dead-letter producer: {e}")))?;
        Ok(Some(Self {
            producer,
            topic: topic.to_string(),
            brokers: cfg.kafka.brokers.clone(),
            watch,
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `letters`; per letter, in order, `Ok` once Kafka acknowledged
    /// it or the error.
    pub async fn send(&self, letters: &[Letter]) -> Vec<Result<(), String>> {
        self.watch.repair(self.producer.client(), &self.brokers);
        let sends = letters.iter().map(|l| {
            let d = &l.doc;
            let error_type = serde_json::from_slice::<serde_json::Value>(&d.source)
                .ok()
                .and_then(|v| v["error"]["type"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            let (partition, offset) = (d.partition.to_string(), d.offset.to_string());
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_TOPIC,
                    value: Some(d.topic.as_str()),
                })
                .insert(Header {
                    key: HEADER_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: HEADER_OFFSET,
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: HEADER_ERROR,
                    value: Some(error_type.as_str()),
                });
            if let Some(e) = &l.index_error {
                headers = headers.insert(Header {
                    key: HEADER_INDEX_ERROR,
                    value: Some(e.as_str()),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .key(d.id.as_str())
                .payload(d.source.as_slice())
                .headers(headers);
            async move {
                self.producer
                    .send(record, Timeout::After(DELIVERY_TIMEOUT))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            }
        });
        futures::future::join_all(sends).await
    }
}
