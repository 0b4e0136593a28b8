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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_refresh_is_stale() {
        assert_eq!(liveness_of(Some(2)), Liveness::Up);
        assert_eq!(liveness_of(Some(60)), Liveness::Stale);
        let now = chrono::Utc::now();
        let at = (now - chrono::Duration::seconds(30)).to_rfc3339();
        assert_eq!(age_secs(&at, now), Some(30));
    }
}
