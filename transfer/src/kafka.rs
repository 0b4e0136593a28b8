//! librdkafka client settings shared by the consumer and the dead-letter
//! producer, and the repair of a client left with no broker.
//!
//! librdkafka (2.10 and later; here 2.12.1) removes every broker missing
//! from a Metadata answer, bootstrap brokers included. A Kafka broker that
//! is starting (KRaft, not yet unfenced) answers with its topics and no
//! broker: the client is left with no broker at all, sends no request, so
//! its time-based re-bootstrap (`metadata.recovery.rebootstrap.trigger.ms`,
//! armed only by a metadata request) never fires, and it never reconnects
//! (librdkafka issue #5301). That is why logtransfer sometimes did not
//! resume after a Kafka restart for minutes (issue #13 item 5: more than
//! 120 s on a CI run). [`BrokerWatch`] notices it in the client's
//! statistics and adds the configured brokers again — the re-bootstrap
//! librdkafka would have done.

use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};

/// The default `reconnect.backoff.max.ms`: after a broker restart each of
/// librdkafka's connections (the group coordinator's is a separate one)
/// waits out its own reconnect backoff, which grows to librdkafka's 10 s
/// plus up to 50 % jitter; the group rejoined up to 15 s after the broker
/// was back. 1 s caps that.
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// The default `statistics.interval.ms`: how soon a client left with no
/// broker is noticed (the statistics also feed the lag gauges).
pub const STATISTICS_INTERVAL_MS: &str = "1000";

/// Sets logtransfer's defaults ([`STATISTICS_INTERVAL_MS`],
/// [`RECONNECT_BACKOFF_MAX_MS`]) where `user` (`kafka.consumer`) does not.
pub fn set_defaults(c: &mut ClientConfig, user: &common::secret::Settings) {
    for (key, value) in [
        ("statistics.interval.ms", STATISTICS_INTERVAL_MS),
        ("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS),
    ] {
        match user.get(key) {
            Some(v) => c.set(key, v),
            None => c.set(key, value),
        };
    }
}

/// Whether a client has lost every broker (see the module docs).
#[derive(Debug, Default)]
pub struct BrokerWatch {
    lost: AtomicBool,
}

impl BrokerWatch {
    /// Called with each statistics report: only internal and logical
    /// (coordinator) handles left means no connection will be made again.
    pub fn observe(&self, stats: &Statistics) {
        let reachable = stats
            .brokers
            .values()
            .any(|b| matches!(b.source.as_str(), "learned" | "configured"));
        if !reachable {
            self.lost.store(true, Ordering::SeqCst);
        }
    }

    /// When the last statistics found no broker: gives `client` the
    /// configured `brokers` again and returns true.
    pub fn repair<C: ClientContext>(&self, client: &Client<C>, brokers: &str) -> bool {
        if !self.lost.swap(false, Ordering::SeqCst) {
            return false;
        }
        let Ok(list) = std::ffi::CString::new(brokers) else {
            tracing::error!("kafka.brokers holds a NUL byte; cannot bootstrap again");
            return false;
        };
        // SAFETY: the client pointer is valid while `client` lives, and
        // `rd_kafka_brokers_add` is thread-safe and copies the string.
        let added =
            unsafe { rdkafka::bindings::rd_kafka_brokers_add(client.native_ptr(), list.as_ptr()) };
        tracing::warn!(
            brokers = %common::secret::redact_url(brokers),
            added,
            "librdkafka has no broker left (a metadata answer listed none, as a starting broker does); bootstrapping again"
        );
        true
    }
}
