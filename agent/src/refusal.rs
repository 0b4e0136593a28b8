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
