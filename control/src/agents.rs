//! The agents: what each publishes at `<prefix>/agents/<host_id>`
//! ([`common::agent_state`]) and whether it is alive. The key is kept by a
//! 10 s lease, so an agent that died is gone from the list within that
//! TTL; hosts that have collect entries but no registration are listed as
//! `down`.

use crate::{Control, Result};
use common::agent_state::{AgentState, REFRESH_SECS};
use etcd_client::GetOptions;

/// Whether an agent is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Registered and refreshed recently.
    Up,
    /// Registered (the lease holds) but its state is older than 3 refreshes:
    /// the agent is wedged or its clock is off.
    Stale,
    /// Not registered, but it has collect entries.
    Down,
}

/// One agent as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agent {
    pub host_id: String,
    pub liveness: Liveness,
    /// Seconds since its last refresh (`None`: down or unknown).
    pub age_secs: Option<i64>,
    pub state: AgentState,
}

/// Seconds between an RFC 3339 time and now (`None` if it does not parse).
fn age_secs(at: &str, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(at).ok()?;
    Some((now - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// Liveness from a registration's age.
pub fn liveness_of(age: Option<i64>) -> Liveness {
    match age {
        Some(a) if a > 3 * REFRESH_SECS as i64 => Liveness::Stale,
        _ => Liveness::Up,
    }
}

impl Control {
    /// Registered agents, then hosts with collect entries and no agent.
    ///
    /// # Errors
    /// etcd errors.
    pub async fn agents(&mut self) -> Result<Vec<Agent>> {
        let dir = format!("{}/agents/", self.prefix);
        let r = self
            .etcd
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.etcd_err(e))?;
        let now = chrono::Utc::now();
        let mut out: Vec<Agent> = r
            .kvs()
            .iter()
            .filter_map(|kv| {
                let host_id = kv.key_str().ok()?.strip_prefix(&dir)?.to_string();
                // An unreadable value is still an agent that is there.
                let state: AgentState = serde_json::from_slice(kv.value()).unwrap_or_default();
                let age =
                    age_secs(&state.updated_at, now).or_else(|| age_secs(&state.started_at, now));
                Some(Agent {
                    host_id,
                    liveness: liveness_of(age),
                    age_secs: age,
                    state,
                })
            })
            .collect();
        let collect = format!("{}/collect/", self.prefix);
        let keys = self
            .etcd
            .get(
                collect.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| self.etcd_err(e))?;
        for kv in keys.kvs() {
            let Some(host) = kv.key_str().ok().and_then(|k| k.strip_prefix(&collect)) else {
                continue;
            };
            if host != crate::collect::ALL && !out.iter().any(|a| a.host_id == host) {
                out.push(Agent {
                    host_id: host.to_string(),
                    liveness: Liveness::Down,
                    age_secs: None,
                    state: AgentState::default(),
                });
            }
        }
        out.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(out)
    }

    /// One agent (or a down host with entries).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] when neither exists; etcd errors.
    pub async fn agent(&mut self, host: &str) -> Result<Agent> {
        self.agents()
            .await?
            .into_iter()
            .find(|a| a.host_id == host)
            .ok_or_else(|| {
                crate::Error::NotFound(format!("agent {host} (not registered, no collect entries)"))
            })
    }
}

/// Prometheus file-based service discovery (`file_sd_configs`) of the
/// agents: one target group an agent, at the `/metrics` address it
/// publishes (an unspecified IP, `0.0.0.0:9101`, is replaced by the address
/// it reaches etcd from), labelled `host_id` and `hostname`. A host that is
/// down keeps its group from `previous` (the file as written before), so
/// its target stays scraped and `up == 0` (the AgentDown alert) fires
/// instead of the target silently vanishing. Sorted by host.
pub fn prometheus_targets(agents: &[Agent], previous: &serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let mut out: Vec<serde_json::Value> = Vec::new();
    for a in agents {
        if a.liveness == Liveness::Down || a.state.metrics.is_empty() {
            if let Some(old) = previous.as_array().and_then(|groups| {
                groups
                    .iter()
                    .find(|g| g["labels"]["host_id"].as_str() == Some(&a.host_id))
            }) {
                out.push(old.clone());
            }
            continue;
        }
        let addr = match a.state.metrics.parse::<std::net::SocketAddr>() {
            Ok(sa) if sa.ip().is_unspecified() && !a.state.ip.is_empty() => {
                match a.state.ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", sa.port()),
                    _ => format!("{}:{}", a.state.ip, sa.port()),
                }
            }
            _ => a.state.metrics.clone(),
        };
        out.push(json!({
            "targets": [addr],
            "labels": {"host_id": a.host_id, "hostname": a.state.hostname},
        }));
    }
    out.sort_by(|x, y| {
        x["labels"]["host_id"]
            .as_str()
            .cmp(&y["labels"]["host_id"].as_str())
    });
    serde_json::Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_targets_keep_down_hosts_and_resolve_unspecified_ips() {
        let agent = |host: &str, liveness: Liveness, metrics: &str| {
            let state = AgentState {
                metrics: metrics.into(),
                ip: "10.0.0.5".into(),
                hostname: format!("{host}.example"),
                ..Default::default()
            };
            Agent {
                host_id: host.into(),
                liveness,
                age_secs: Some(1),
                state,
            }
        };
        let first = prometheus_targets(
            &[
                agent("web-2", Liveness::Up, "127.0.0.1:9101"),
                agent("web-1", Liveness::Up, "0.0.0.0:9101"),
            ],
            &serde_json::Value::Null,
        );
        assert_eq!(first[0]["targets"][0], "10.0.0.5:9101");
        assert_eq!(first[0]["labels"]["host_id"], "web-1");
        assert_eq!(first[1]["targets"][0], "127.0.0.1:9101");
        // web-1 died: its target stays (so `up` goes 0); web-3 never had one.
        let down = Agent {
            state: AgentState::default(),
            ..agent("web-1", Liveness::Down, "")
        };
        let next = prometheus_targets(
            &[
                down,
                agent("web-2", Liveness::Up, "127.0.0.1:9101"),
                agent("web-3", Liveness::Down, ""),
            ],
            &first,
        );
        assert_eq!(next.as_array().map(Vec::len), Some(2));
        assert_eq!(next[0]["targets"][0], "10.0.0.5:9101");
    }

    #[test]
    fn an_old_refresh_is_stale() {
        assert_eq!(liveness_of(Some(2)), Liveness::Up);
        assert_eq!(liveness_of(Some(60)), Liveness::Stale);
        let now = chrono::Utc::now();
        let at = (now - chrono::Duration::seconds(30)).to_rfc3339();
        assert_eq!(age_secs(&at, now), Some(30));
    }
}
