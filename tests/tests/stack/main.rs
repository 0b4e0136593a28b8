//! Integration tests against the real services of `scripts/stack`.
//!
//! - `kafka`: produce with acks=all and idempotence, consume it back.
//! - `elasticsearch`: index a document, find it with a search.
//! - `etcd`: put a key, observe it through a watch.

mod elasticsearch;
mod etcd;
mod kafka;
mod transfer;
