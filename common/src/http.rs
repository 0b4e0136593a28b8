//! The `/metrics` and `/health` endpoints both binaries serve.

use axum::http::StatusCode;
use axum::routing::get;
use std::sync::Arc;

/// Renders the Prometheus text exposition.
pub type EncodeFn = Arc<dyn Fn() -> String + Send + Sync>;
/// `Ok(text)` → 200, `Err(text)` → 503.
pub type HealthFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// `text` (an OpenMetrics exposition ending in `# EOF`) with the standard
/// `process_*` metrics of this process added: CPU seconds, resident
/// memory, open and maximum file descriptors, start time (from `/proc`;
/// nothing is added where it cannot be read).
pub fn with_process_metrics(text: String) -> String {
    with_metrics(text, &process_metrics())
}

/// `text` (an OpenMetrics exposition ending in `# EOF`) with the families
/// in `more` added before its end.
pub fn with_metrics(text: String, more: &str) -> String {
    let body = text.strip_suffix("# EOF\n").unwrap_or(&text);
    let mut out = String::with_capacity(body.len() + more.len() + 8);
    out.push_str(body);
    out.push_str(more);
    out.push_str("# EOF\n");
    out
}

fn process_metrics() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Ok(me) = procfs::process::Process::myself() else {
        return out;
    };
    let mut metric = |name: &str, kind: &str, help: &str, sample: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {v}"
        );
    };
    if let Ok(stat) = me.stat() {
        let tps = procfs::ticks_per_second() as f64;
        metric(
            "process_cpu_seconds",
            "counter",
            "User and system CPU time spent, in seconds.",
            "process_cpu_seconds_total",
            (stat.utime + stat.stime) as f64 / tps,
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            "process_resident_memory_bytes",
            (stat.rss * procfs::page_size()) as f64,
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                "process_start_time_seconds",
                boot as f64 + stat.starttime as f64 / tps,
            );
        }
    }
    if let Ok(n) = me.fd_count() {
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            "process_open_fds",
            n as f64,
        );
    }
    if let Ok(limits) = me.limits() {
        if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
            metric(
                "process_max_fds",
                "gauge",
                "The most file descriptors the process may open.",
                "process_max_fds",
                v as f64,
            );
        }
    }
    out
}

/// Serves `/metrics` and `/health` on `listen` until the process ends.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(listen: &str, encode: EncodeFn, health: HealthFn) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let encode = Arc::clone(&encode);
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        encode(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    match health() {
                        Ok(t) => (StatusCode::OK, t),
                        Err(t) => (StatusCode::SERVICE_UNAVAILABLE, t),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_metrics_come_before_the_end_marker() {
        let t = super::with_process_metrics("# TYPE x gauge\nx 1\n# EOF\n".into());
        assert!(t.starts_with("# TYPE x gauge\nx 1\n"), "{t}");
        assert!(t.ends_with("\n# EOF\n"), "{t}");
        for m in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(t.contains(m), "{m} in {t}");
        }
        assert_eq!(t.matches("# EOF").count(), 1);
    }
}
