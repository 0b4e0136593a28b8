//! Why a search may not show every line written yet: an agent down,
//! stale, paused (Kafka unreachable: its lines wait in its WAL), not
//! shipping for a while, or logtransfer behind on a partition. The console
//! shows these above its results ("results may be incomplete: web-3
//! paused since 12:04"); none of the usual tools says it.

use crate::agents::{Agent, Liveness};
use crate::lag::PartitionLag;
use serde::Serialize;

/// A WAL whose oldest unacknowledged line is older than this is behind.
pub const WAL_LAG_SECS: u64 = 60;
/// A partition this many messages behind the transfer's committed offset.
pub const TRANSFER_LAG: i64 = 1000;

/// One reason results may be incomplete.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gap {
    AgentDown {
        host: String,
    },
    AgentStale {
        host: String,
        age_secs: i64,
    },
    AgentPaused {
        host: String,
        since: Option<String>,
    },
    AgentBehind {
        host: String,
        lag_secs: u64,
        unacked: u64,
    },
    TransferBehind {
        topic: String,
        partitions: usize,
        lag: i64,
    },
    /// The state could not be read (etcd or Kafka down).
    Unknown {
        what: String,
    },
}

impl Gap {
    /// The sentence shown (times as given, RFC 3339).
    pub fn text(&self) -> String {
        match self {
            Self::AgentDown { host } => format!("{host} is down"),
            Self::AgentStale { host, age_secs } => {
                format!("{host} has not reported for {age_secs} s")
            }
            Self::AgentPaused { host, since } => match since {
                Some(s) => format!("{host} paused since {s}"),
                None => format!("{host} paused"),
            },
            Self::AgentBehind {
                host,
                lag_secs,
                unacked,
            } => {
                format!("{host} has {unacked} lines not yet in Kafka, the oldest {lag_secs} s old")
            }
            Self::TransferBehind {
                topic,
                partitions,
                lag,
            } => format!(
                "logtransfer is {lag} messages behind on {topic} ({partitions} partition{})",
                if *partitions == 1 { "" } else { "s" }
            ),
            Self::Unknown { what } => format!("cannot tell: {what}"),
        }
    }
}

/// The gaps of a fleet and a transfer group's lag.
pub fn gaps(agents: &[Agent], lag: &[PartitionLag]) -> Vec<Gap> {
    let mut out = Vec::new();
    for a in agents {
        let host = a.host_id.clone();
        match a.liveness {
            Liveness::Down => {
                out.push(Gap::AgentDown { host });
                continue;
            }
            Liveness::Stale => out.push(Gap::AgentStale {
                host: host.clone(),
                age_secs: a.age_secs.unwrap_or_default(),
            }),
            Liveness::Up => {}
        }
        if a.state.paused {
            out.push(Gap::AgentPaused {
                host,
                since: a.state.paused_since.clone(),
            });
        } else if let Some(l) = a.state.wal.lag_secs.filter(|l| *l >= WAL_LAG_SECS) {
            out.push(Gap::AgentBehind {
                host,
                lag_secs: l,
                unacked: a.state.wal.unacked_records,
            });
        }
    }
    let mut by_topic: std::collections::BTreeMap<&str, (usize, i64)> = Default::default();
    for p in lag.iter().filter(|p| p.lag >= TRANSFER_LAG) {
        let e = by_topic.entry(&p.topic).or_default();
        e.0 += 1;
        e.1 += p.lag;
    }
    out.extend(
        by_topic
            .into_iter()
            .map(|(topic, (partitions, lag))| Gap::TransferBehind {
                topic: topic.to_string(),
                partitions,
                lag,
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::agent_state::AgentState;

    fn agent(host: &str, liveness: Liveness, f: impl FnOnce(&mut AgentState)) -> Agent {
        let mut state = AgentState::default();
        f(&mut state);
        Agent {
            host_id: host.into(),
            liveness,
            age_secs: Some(1),
            state,
        }
    }

    #[test]
    fn down_paused_behind_and_lagging_are_reported() {
        let agents = vec![
            agent("web-1", Liveness::Up, |_| {}),
            agent("web-2", Liveness::Down, |_| {}),
            agent("web-3", Liveness::Up, |s| {
                s.paused = true;
                s.paused_since = Some("2026-12-01T12:04:00Z".into());
            }),
            agent("web-4", Liveness::Up, |s| {
                s.wal.lag_secs = Some(120);
                s.wal.unacked_records = 5000;
            }),
        ];
        let lag = vec![
            PartitionLag {
                topic: "a_log".into(),
                partition: 0,
                committed: 0,
                high: 5000,
                lag: 5000,
            },
            PartitionLag {
                topic: "a_log".into(),
                partition: 1,
                committed: 0,
                high: 10,
                lag: 10,
            },
        ];
        let texts: Vec<String> = gaps(&agents, &lag).iter().map(Gap::text).collect();
        assert_eq!(
            texts,
            [
                "web-2 is down",
                "web-3 paused since 2026-12-01T12:04:00Z",
                "web-4 has 5000 lines not yet in Kafka, the oldest 120 s old",
                "logtransfer is 5000 messages behind on a_log (1 partition)",
            ]
        );
        assert!(gaps(&agents[..1], &lag[1..]).is_empty());
    }
}
