//! What to do with a message Kafka refuses (pure).
//!
//! A refusal is *transient* (a leader election, a full queue, a broker
//! restarting: send it again, however long it takes), *permanent* (the
//! message can never be taken as it is: too large for the topic, an invalid
//! record) or *permanent if it lasts* (the topic or partition does not exist,
//! or we may not write it: metadata may be stale right after a topic is made
//! or an ACL changed, so these count as permanent only after
//! `kafka.dead_letter_after_secs` of the same message failing).
//!
//! A permanently refused message goes to the dead-letter topic
//! (`kafka.dead_letter_topic`) with its original topic, partition and error
//! in headers, so its WAL record completes and the rest of the host keeps
//! flowing. Without a dead-letter topic (or when the dead-letter topic
//! itself refuses for good) the message is retried forever: nothing is
//! dropped, but the WAL cannot be acknowledged past it. Either way the agent
//! reports itself *degraded* on `/health`, naming the topic and the error.
//!
//! How long a refusal has lasted counts across restarts: the [`Ledger`]
//! keeps, per (topic, partition, error), when it was first and last seen,
//! in the checkpoint store (meta key `refusals`, JSON). Before, the clock
//! started again with every process, so an agent restarted more often than
//! `dead_letter_after_secs` (a crash loop, a torture run killing it every
//! 10 s) never dead-lettered a poison message and never acknowledged its
//! WAL past it.

use rdkafka::error::RDKafkaErrorCode as Code;
use std::time::Duration;

/// The headers a dead letter carries besides the original ones.
pub const HEADER_DLQ_TOPIC: &str = "logpipe-dlq-topic";
pub const HEADER_DLQ_PARTITION: &str = "logpipe-dlq-partition";
pub const HEADER_DLQ_ERROR: &str = "logpipe-dlq-error";
/// Present when the dead letter's payload had to be cut: the original size.
pub const HEADER_DLQ_ORIGINAL_BYTES: &str = "logpipe-dlq-original-bytes";
/// The CRC32 of the message a dead letter replaces (decimal): the
/// read-back after a crash recognises the line in the dead-letter topic.
pub const HEADER_DLQ_CRC: &str = "logpipe-dlq-crc";

/// How a refusal is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Send again after a back-off, forever.
    Transient,
    /// Never taken as it is: dead-letter it now.
    Permanent,
    /// Permanent once the same message has failed this way for the grace.
    PermanentIfItLasts,
}

/// Classifies an error code from a delivery report or from `send`.
pub fn classify(code: Code) -> Kind {
    match code {
        Code::MessageSizeTooLarge
        | Code::MessageBatchTooLarge
        | Code::InvalidMessage
        | Code::InvalidMessageSize
        | Code::InvalidRecord
        | Code::PolicyViolation
        | Code::InvalidTopic
        | Code::InvalidArgument
        | Code::InvalidRequiredAcks
        | Code::UnsupportedForMessageFormat
        | Code::BadMessage => Kind::Permanent,
        Code::UnknownTopicOrPartition
        | Code::UnknownTopic
        | Code::UnknownPartition
        | Code::TopicAuthorizationFailed => Kind::PermanentIfItLasts,
        _ => Kind::Transient,
    }
}

/// Whether a message refused with `code`, failing for `failing_for` since
/// its first refusal, is refused for good.
pub fn is_final(code: Code, failing_for: Duration, grace: Duration) -> bool {
    match classify(code) {
        Kind::Transient => false,
        Kind::Permanent => true,
        Kind::PermanentIfItLasts => failing_for >= grace,
    }
}

/// Since when refusals of one kind (topic, partition, error) have gone on,
/// across restarts (pure; the session stores it, module docs). A kind not
/// refused for `stale` starts again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Key → (first refused, last refused), Unix ms.
    kinds: std::collections::BTreeMap<String, (u64, u64)>,
    /// When [`Ledger::note`] last asked for a save (not stored).
    #[serde(skip)]
    saved_ms: u64,
}

/// Most kinds a ledger keeps (the oldest-refreshed go first).
const LEDGER_MAX: usize = 1024;
/// The ledger is saved again (a kind's `last` refreshed on disk) at most
/// this often.
pub const LEDGER_SAVE_EVERY_MS: u64 = 5_000;

impl Ledger {
    /// The key of a refusal kind.
    pub fn key(topic: &str, partition: Option<i32>, code: Code) -> String {
        match partition {
            Some(p) => format!("{topic}\u{1f}{p}\u{1f}{code:?}"),
            None => format!("{topic}\u{1f}\u{1f}{code:?}"),
        }
    }

    /// A refusal of kind `key` at `now_ms`, of a message this process has
    /// seen refused for `local_ms`: how long the kind has been refused
    /// (ms), and whether the ledger should be saved now.
    pub fn note(&mut self, key: &str, now_ms: u64, local_ms: u64, stale_ms: u64) -> (u64, bool) {
        let first_local = now_ms.saturating_sub(local_ms);
        match self.kinds.get_mut(key) {
            Some((first, last)) if now_ms.saturating_sub(*last) <= stale_ms => {
                *first = (*first).min(first_local);
                *last = (*last).max(now_ms);
                let failing = now_ms.saturating_sub(*first);
                let save = now_ms.saturating_sub(self.saved_ms) >= LEDGER_SAVE_EVERY_MS;
                if save {
                    self.saved_ms = now_ms;
                }
                (failing, save)
            }
            _ => {
                self.kinds.insert(key.to_string(), (first_local, now_ms));
                self.kinds
                    .retain(|_, (_, l)| now_ms.saturating_sub(*l) <= stale_ms);
                while self.kinds.len() > LEDGER_MAX {
                    let oldest = self
                        .kinds
                        .iter()
                        .min_by_key(|(_, (_, l))| *l)
                        .map(|(k, _)| k.clone());
                    match oldest {
                        Some(k) => self.kinds.remove(&k),
                        None => break,
                    };
                }
                self.saved_ms = now_ms;
                (local_ms, true)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored ledger; an unreadable one is empty (refusals then count
    /// from now, as before the ledger existed).
    pub fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// The payload of a dead letter: the original event, cut to `max` bytes
/// when it is larger (a dead letter must fit where the original did not).
/// Returns the payload and, when cut, the original size.
pub fn dead_letter_payload(payload: &[u8], max: usize) -> (&[u8], Option<usize>) {
    if payload.len() <= max {
        (payload, None)
    } else {
        (&payload[..max], Some(payload.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_format_refusals_are_final_at_once() {
        for c in [
            Code::MessageSizeTooLarge,
            Code::InvalidRecord,
            Code::PolicyViolation,
        ] {
            assert!(
                is_final(c, Duration::ZERO, Duration::from_secs(60)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_missing_topic_or_partition_is_final_only_if_it_lasts() {
        let grace = Duration::from_secs(60);
        for c in [
            Code::UnknownPartition,
            Code::UnknownTopicOrPartition,
            Code::UnknownTopic,
            Code::TopicAuthorizationFailed,
        ] {
            assert!(!is_final(c, Duration::from_secs(59), grace), "{c:?}");
            assert!(is_final(c, grace, grace), "{c:?}");
        }
    }

    /// A poison message refused across restarts every 4 s with a 10 s
    /// grace: each process alone sees it refused for under 4 s, the ledger
    /// for the whole time.
    #[test]
    fn the_ledger_counts_a_refusal_across_restarts() {
        let mut l = Ledger::default();
        let key = Ledger::key("t", Some(99), Code::UnknownPartition);
        let stale = 60_000;
        let mut t = 1_000_000;
        assert_eq!(l.note(&key, t, 0, stale), (0, true), "first refusal: saved");
        for _ in 0..3 {
            t += 4_000; // restarted: this process saw it refused just now
            l = Ledger::decode(&l.encode());
            let (failing, _) = l.note(&key, t, 0, stale);
            assert_eq!(failing, t - 1_000_000);
        }
        assert!(l.note(&key, t, 0, stale).0 >= 10_000, "final by now");
        // Refused every 100 ms: saved every LEDGER_SAVE_EVERY_MS, so what a
        // restart reads is never older than that.
        let saves = (1..=100)
            .filter(|i| l.note(&key, t + i * 100, 0, stale).1)
            .count();
        assert_eq!(saves, 2, "10 s of refusals, one save per 5 s");
        t += 10_000;
        // Not refused for longer than `stale`: it starts again.
        assert_eq!(l.note(&key, t + stale + 1, 500, stale), (500, true));
        // Other kinds do not mix.
        let other = Ledger::key("t", Some(3), Code::UnknownPartition);
        assert_eq!(l.note(&other, t + stale + 2, 0, stale).0, 0);
        assert_eq!(Ledger::decode(b"not json"), Ledger::default());
    }

    #[test]
    fn outages_are_never_final() {
        for c in [
            Code::NotLeaderForPartition,
            Code::LeaderNotAvailable,
            Code::RequestTimedOut,
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::QueueFull,
            Code::NotEnoughReplicas,
            Code::NotEnoughReplicasAfterAppend,
            Code::MessageTimedOut,
        ] {
            assert!(
                !is_final(c, Duration::from_secs(86_400), Duration::from_secs(60)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_dead_letter_is_cut_to_fit() {
        let big = vec![b'x'; 100];
        assert_eq!(dead_letter_payload(&big, 200), (&big[..], None));
        let (p, orig) = dead_letter_payload(&big, 10);
        assert_eq!((p.len(), orig), (10, Some(100)));
    }
}
