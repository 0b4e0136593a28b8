//! Failover figures of the torture run (issue #13 item 5): how long after
//! a fault the pipeline delivers again, measured on the probe lines
//! (write → searchable).
//!
//! For each fault the figure is the *resume time*: from the fault's moment
//! (a logtransfer restarted after its kill -9; the Kafka broker accepting
//! TCP connections again after its restart) until the first probe written
//! at or after that moment is searchable. Targets: ≤ 10 s for both.
//!
//! Two probes: the torture's probe lines (file → agent → Kafka → transfer →
//! Elasticsearch, `probe=agent`), and [`kafka_probe`]'s messages produced
//! straight to their own topic every 250 ms (Kafka → transfer →
//! Elasticsearch, `probe=kafka`), which isolates the transfer's failover
//! from the agent's backlog.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The target of both figures.
pub const TARGET: Duration = Duration::from_secs(10);

/// A fault whose recovery is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// logtransfer killed (-9) and started again: the moment of the start.
    TransferRestart,
    /// The Kafka broker restarted: the moment its port accepts again.
    KafkaBack,
    /// Cluster mode (issue #18): the leader broker of the run topic's
    /// partition 0 killed (-9): the moment of the kill.
    LeaderKill,
    /// One broker cut off (its link down for 60 s): the moment of the cut.
    BrokerCut,
    /// The etcd leader killed (-9): the moment of the kill.
    EtcdLeaderKill,
    /// One Elasticsearch node killed (-9): the moment of the kill.
    EsNodeKill,
}

/// Every kind, in the report's order.
const KINDS: [Failover; 6] = [
    Failover::TransferRestart,
    Failover::KafkaBack,
    Failover::LeaderKill,
    Failover::BrokerCut,
    Failover::EtcdLeaderKill,
    Failover::EsNodeKill,
];

impl Failover {
    fn label(self) -> &'static str {
        match self {
            Failover::TransferRestart => "transfer_kill",
            Failover::KafkaBack => "kafka_back",
            Failover::LeaderKill => "leader_kill",
            Failover::BrokerCut => "broker_cut",
            Failover::EtcdLeaderKill => "etcd_leader_kill",
            Failover::EsNodeKill => "es_node_kill",
        }
    }
}

/// A service's outage: which, from when, until when (`None`: not over).
type Outage = (&'static str, Duration, Option<Duration>);

/// Failover moments, as offsets from the probe's epoch.
pub struct Failovers {
    epoch: Instant,
    at: Mutex<Vec<(Failover, Duration)>>,
    /// Other services' outages (stopped → ready again), to tell a failover
    /// measured alone from one that overlapped them.
    outages: Mutex<Vec<Outage>>,
}

impl Failovers {
    /// `epoch` is the probe's: probe write times are offsets from it too.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            at: Mutex::new(Vec::new()),
            outages: Mutex::new(Vec::new()),
        }
    }

    /// `service` (`elasticsearch`, `kafka`, `etcd`) goes down now; returns
    /// the outage's index for [`Failovers::outage_ended`].
    pub fn outage_began(&self, service: &'static str) -> usize {
        let mut o = self.outages.lock().unwrap_or_else(|p| p.into_inner());
        o.push((service, self.epoch.elapsed(), None));
        o.len() - 1
    }

    /// The outage `i` ended now (the service is ready again).
    pub fn outage_ended(&self, i: usize) {
        let now = self.epoch.elapsed();
        if let Some(o) = self
            .outages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            o.2 = Some(now);
        }
    }

    /// Records `fault` as happening now.
    pub fn record(&self, fault: Failover) {
        let at = self.epoch.elapsed();
        self.at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((fault, at));
    }

    /// Polls `addr` (host:port) every 50 ms, for at most `limit`, and
    /// records [`Failover::KafkaBack`] once it accepts a TCP connection. Run it
    /// on its own thread while the broker starts.
    pub fn record_when_accepting(&self, addr: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::net::TcpStream::connect(addr).is_ok() {
                self.record(Failover::KafkaBack);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("torture: {addr} accepted no connection within {limit:?}");
    }

    /// One line per kind of fault: `failover <kind> n=… max_ms=… each_ms=[…]
    /// target_ms=10000 met=<bool> delay_before_ms=[…]` — the last, per fault,
    /// the latency of the last probe found from the 10 s before it (`-`:
    /// none): a backlog the pipeline already had. `probes[i]` is probe `i`'s write time
    /// and, when it was found, its write → searchable latency. A fault
    /// after which no probe was found counts as unmet (`never`).
    pub fn report(&self, probe: &str, probes: &[(Duration, Option<Duration>)]) -> Vec<String> {
        let at = self.at.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let outages = self
            .outages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        KINDS
            .into_iter()
            .filter(|kind| {
                // The two single-stack kinds always (a run without them says
                // n=0); the cluster's only when they happened.
                matches!(kind, Failover::TransferRestart | Failover::KafkaBack)
                    || at.iter().any(|(k, _)| k == kind)
            })
            .map(|kind| {
                // This kind's faults: (moment, resume time).
                let faults: Vec<(Duration, Option<Duration>)> = at
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, t)| (*t, resume_after(*t, probes)))
                    .collect();
                let each: Vec<Option<Duration>> = faults.iter().map(|(_, r)| *r).collect();
                let before: Vec<String> = faults
                    .iter()
                    .map(|(t, _)| {
                        delay_before(*t, probes)
                            .map_or("-".to_string(), |d| d.as_millis().to_string())
                    })
                    .collect();
                let shown: Vec<String> = each
                    .iter()
                    .map(|r| r.map_or("never".to_string(), |d| d.as_millis().to_string()))
                    .collect();
                let max = each.iter().flatten().max().copied().unwrap_or_default();
                let met = each.iter().all(|r| r.is_some_and(|d| d <= TARGET));
                // Alone: no other service was down from 10 s before the
                // fault until its probe was searchable (Kafka's own outage
                // is the fault of `kafka_back`).
                let others: Vec<Outage> = outages
                    .iter()
                    .filter(|o| kind != Failover::KafkaBack || o.0 != "kafka")
                    .copied()
                    .collect();
                let alone: Vec<Option<Duration>> = faults
                    .iter()
                    .filter(|(t, r)| {
                        let end = *t + r.unwrap_or(Duration::from_secs(3600));
                        !overlaps(&others, t.saturating_sub(Duration::from_secs(10)), end)
                    })
                    .map(|(_, r)| *r)
                    .collect();
                let alone_max = alone.iter().flatten().max().copied().unwrap_or_default();
                let met_alone = if alone.is_empty() {
                    "n/a" // every fault overlapped another outage
                } else if alone.iter().all(|r| r.is_some_and(|d| d <= TARGET)) {
                    "true"
                } else {
                    "false"
                };
                format!(
                    "failover {} probe={probe} n={} max_ms={} each_ms=[{}] target_ms={} met={met} delay_before_ms=[{}] alone n={} max_ms={} met={met_alone}",
                    kind.label(),
                    each.len(),
                    max.as_millis(),
                    shown.join(","),
                    TARGET.as_millis(),
                    before.join(","),
                    alone.len(),
                    alone_max.as_millis(),
                )
            })
            .collect()
    }
}

/// The probe producer's callbacks: statistics tell when librdkafka lost
/// every broker (a starting Kafka's metadata, see `transfer::kafka`), so
/// the probe cannot be held back by its own client.
struct ProbeContext {
    watch: std::sync::Arc<transfer::kafka::BrokerWatch>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        self.watch.observe(&stats);
    }
}

/// Produces `{"message":"failover probe <n>","failover_probe":<n>}` to
/// `topic` every 250 ms (one producer, bootstrapped again like
/// logtransfer's when librdkafka lost every broker) until `stop`,
/// and looks for them in `index` every 100 ms; then keeps looking for up
/// to `grace`. Returns, per probe, when its send began (from `epoch`) and
/// its send → searchable latency if found.
pub async fn kafka_probe(
    stack: crate::Stack,
    topic: String,
    index: String,
    epoch: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    grace: Duration,
) -> Vec<(Duration, Option<Duration>)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::atomic::Ordering;
    let watch = std::sync::Arc::new(transfer::kafka::BrokerWatch::default());
    let producer: FutureProducer<ProbeContext> = match ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("message.timeout.ms", "0")
        .set(
            "statistics.interval.ms",
            transfer::kafka::STATISTICS_INTERVAL_MS,
        )
        .set(
            "reconnect.backoff.max.ms",
            transfer::kafka::RECONNECT_BACKOFF_MAX_MS,
        )
        .create_with_context(ProbeContext {
            watch: std::sync::Arc::clone(&watch),
        }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("torture: no failover probe producer: {e}");
            return Vec::new();
        }
    };
    let mut sent: Vec<Duration> = Vec::new();
    let mut found: Vec<Option<Duration>> = Vec::new();
    let mut stopped_at: Option<Instant> = None;
    let mut last_send = Instant::now() - Duration::from_secs(1);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping {
            stopped_at.get_or_insert_with(Instant::now);
        }
        if !stopping && last_send.elapsed() >= Duration::from_millis(250) {
            last_send = Instant::now();
            let n = sent.len() as u64;
            let value = format!(r#"{{"message":"failover probe {n}","failover_probe":{n}}}"#);
            watch.repair(
                rdkafka::producer::Producer::client(&producer),
                &stack.kafka_brokers,
            );
            sent.push(epoch.elapsed());
            found.push(None);
            // Delivery is seen in Elasticsearch; the future is not needed.
            let _ = producer.send_result(FutureRecord::<(), _>::to(&topic).payload(&value));
        }
        let q = serde_json::json!({"size": 200, "_source": ["failover_probe"],
            "sort": [{"failover_probe": "desc"}], "query": {"exists": {"field": "failover_probe"}}});
        if let Ok(r) = stack
            .es()
            .search(elasticsearch::SearchParts::Index(&[&index]))
            .body(q)
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                for h in v["hits"]["hits"].as_array().into_iter().flatten() {
                    let Some(n) = h["_source"]["failover_probe"].as_u64() else {
                        continue;
                    };
                    let i = n as usize;
                    if let (Some(at), Some(slot)) = (sent.get(i), found.get_mut(i)) {
                        if slot.is_none() {
                            *slot = Some(epoch.elapsed().saturating_sub(*at));
                        }
                    }
                }
            }
        }
        let all = found.iter().all(Option::is_some);
        if stopped_at.is_some_and(|t| all || t.elapsed() > grace) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent.into_iter().zip(found).collect()
}

/// From `at` until the first probe written at or after it was searchable.
/// Whether an outage (`end` `None`: not over) intersects `from..=to`.
fn overlaps(outages: &[Outage], from: Duration, to: Duration) -> bool {
    outages
        .iter()
        .any(|(_, b, e)| *b <= to && e.is_none_or(|e| e >= from))
}

/// The pipeline's delay just before a fault at `at`: the latency of the
/// last probe written in the 10 s before it that was found (a backlog
/// shows here, and in every resume time after it).
fn delay_before(at: Duration, probes: &[(Duration, Option<Duration>)]) -> Option<Duration> {
    probes
        .iter()
        .rev()
        .filter(|(w, _)| *w < at && at - *w <= Duration::from_secs(10))
        .find_map(|(_, l)| *l)
}

fn resume_after(at: Duration, probes: &[(Duration, Option<Duration>)]) -> Option<Duration> {
    let (written, latency) = probes.iter().find(|(w, _)| *w >= at)?;
    Some(*written + (*latency)? - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_probe_after_a_fault_gives_its_resume_time() {
        let ms = Duration::from_millis;
        let probes = vec![
            (ms(0), Some(ms(900))),
            (ms(250), Some(ms(9_000))),
            (ms(500), Some(ms(8_800))),
            (ms(750), None),
        ];
        assert_eq!(resume_after(ms(100), &probes), Some(ms(9_150)));
        assert_eq!(resume_after(ms(600), &probes), None, "never found");
        assert_eq!(resume_after(ms(800), &probes), None, "no probe after it");
        assert_eq!(delay_before(ms(600), &probes), Some(ms(8_800)));
        assert_eq!(delay_before(ms(0), &probes), None, "nothing before");
        let f = Failovers::new(Instant::now());
        f.at.lock()
            .unwrap()
            .push((Failover::TransferRestart, ms(100)));
        f.at.lock().unwrap().push((Failover::KafkaBack, ms(600)));
        let lines = f.report("agent", &probes);
        assert_eq!(
            lines[0],
            "failover transfer_kill probe=agent n=1 max_ms=9150 each_ms=[9150] target_ms=10000 met=true delay_before_ms=[900] alone n=1 max_ms=9150 met=true"
        );
        assert!(lines[1].contains("each_ms=[never]") && lines[1].contains("met=false"));
        assert!(lines[1].contains("delay_before_ms=[8800]"), "{}", lines[1]);
        // An outage from 50 ms to 200 ms overlaps the restart at 100 ms.
        let i = f.outage_began("elasticsearch");
        f.outages.lock().unwrap()[i] = ("elasticsearch", ms(50), Some(ms(200)));
        let lines = f.report("agent", &probes);
        assert!(
            lines[0].ends_with("alone n=0 max_ms=0 met=n/a"),
            "{}",
            lines[0]
        );
    }
}
