//! The `/metrics` and `/health` endpoints both binaries serve.

use axum::http::StatusCode;
use axum::routing::get;
use std::sync::Arc;

/// Renders the Prometheus text exposition.
pub type EncodeFn = Arc<dyn Fn() -> String + Send + Sync>;
/// `Ok(text)` → 200, `Err(text)` → 503.
pub type HealthFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

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
