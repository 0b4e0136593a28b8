//! Registration: the lease-kept key under `<prefix>/agents/<host>` and the
//! agent state published there (`common::agent_state`).

use crate::etcd_config::{self, WatchSpec};
use crate::metrics::Metrics;
use checkpoint::Store;
use common::agent_state::{AgentState, ProblemState};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wal::Wal;

/// Keeps the registration key alive with a lease until the task is aborted.
pub(super) async fn register(spec: WatchSpec, key: String, info: Arc<Mutex<AgentState>>) {
    use etcd_client::PutOptions;
    let mut backoff = Duration::from_millis(500);
    loop {
        let res: Result<(), etcd_client::Error> = async {
            let mut client =
                etcd_config::connect_to(&spec.endpoints, spec.user.as_ref(), &spec.tls).await?;
            let lease = client.lease_grant(10, None).await?.id();
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            let mut last = String::new();
            loop {
                let body = {
                    let i = info.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_string(&*i).unwrap_or_default()
                };
                if body != last {
                    client
                        .put(
                            key.as_str(),
                            body.as_str(),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                        .await?;
                    last = body;
                }
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        return Err(etcd_client::Error::LeaseKeepAliveError(
                            "lease expired".into(),
                        ))
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, key = %key, "registration lost; registering again");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// `allowed_roots` as published.
pub(super) fn roots_text(roots: &[PathBuf]) -> Vec<String> {
    roots.iter().map(|r| r.display().to_string()).collect()
}

/// The slower parts of the published state: files (a stat each), the WAL,
/// problems (a blocking thread, every `REFRESH_SECS`).
pub(super) fn refresh_state(
    store: &Mutex<Store>,
    wal: &Wal,
    max_bytes: u64,
    metrics: &Metrics,
    reg: &Mutex<AgentState>,
) {
    let files = crate::report::files(store);
    let files = common::agent_state::files_state(files);
    let wal_state = crate::report::wal_state(wal, max_bytes, checkpoint::now_ms());
    let problems: Vec<ProblemState> = metrics
        .current_problems()
        .into_iter()
        .map(|(key, reason, for_secs)| ProblemState {
            key,
            reason,
            for_secs,
        })
        .collect();
    metrics.wal_oldest_unacked_age_seconds.set(
        wal_state
            .lag_secs
            .map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
    );
    // The gauge per file holds just the files shown now (bounded labels).
    metrics.file_unshipped_bytes.clear();
    for f in &files.shown {
        metrics
            .file_unshipped_bytes
            .get_or_create(&crate::metrics::PathLabels {
                path: f.path.clone(),
            })
            .set(i64::try_from(f.unshipped()).unwrap_or(i64::MAX));
    }
    let mut r = reg.lock().unwrap_or_else(|p| p.into_inner());
    r.kafka = if problems.iter().any(|p| p.key == "kafka") {
        "stalled".into()
    } else {
        "ok".into()
    };
    r.etcd_connected = metrics.etcd_connected.get() == 1;
    r.problems = problems;
    r.files = files;
    r.wal = wal_state;
    r.updated_at = crate::event::timestamp(checkpoint::now_ms());
}
