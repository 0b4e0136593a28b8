//! Integration tests against the real services of `scripts/stack`.
//!
//! - `agent`: logagent end to end into Kafka (etcd-driven).
//! - `agent_edges`: logagent at production edges (issue #12): refused
//!   messages, a read-back that cannot complete.
//! - `kafka`: produce with acks=all and idempotence, consume it back.
//! - `containers`: Kubernetes CRI logs end to end (issue #19 item 7).
//! - `console`: logconsole in headless Chromium (issue #16).
//! - `elasticsearch`: index a document, find it with a search.
//! - `etcd`: put a key, observe it through a watch.
//! - `etcd_config`: logagent's collect entries followed in etcd.
//! - `logctl`: the operators' CLI against the agent and etcd (issue #15).
//! - `logctl_logs`: logctl search, context, tail, lag and dlq against the
//!   whole pipeline (issue #15).
//! - `sinks`: logtransfer's PostgreSQL and MariaDB sinks (issue #20).
//! - `security`: nothing outside allowed_roots is shipped (issue #14).
//! - `security_tls`: Kafka SASL_SSL and mTLS, etcd TLS with a per-host role,
//!   Elasticsearch behind TLS with basic auth or an API key (issue #14 item 5).
//! - `state`: what an agent publishes about itself in etcd (issue #15).
//! - `transfer`: logtransfer against Kafka and Elasticsearch.
//! - `transfer_edges`: logtransfer at production edges (issue #13): recreated
//!   topics, refused dead letters, 413s, write blocks, honest `/health`.

mod agent;
mod agent_edges;
mod console;
mod containers;
mod elasticsearch;
mod etcd;
mod etcd_config;
mod kafka;
mod logctl;
mod logctl_logs;
mod security;
mod security_tls;
mod sinks;
mod state;
mod transfer;
mod transfer_edges;
