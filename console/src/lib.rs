//! logconsole: the web console of logpipe. A JSON API ([`api`]) over the
//! control library (the one `logctl` uses: nothing is written twice) and
//! one page ([`web`]: HTML, CSS and a script, embedded in the binary) that
//! uses only that API.

pub mod api;
pub mod auth;
pub mod config;
pub mod web;

use std::sync::Arc;

/// Errors of logconsole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] common::ConfigError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// What every request shares.
pub struct App {
    pub cfg: config::ConsoleConfig,
    pub auth: auth::Auth,
    pub logs: control::explore::Logs,
    control: tokio::sync::Mutex<Option<control::Control>>,
    /// Live views open now (each is a Kafka consumer): at most
    /// [`api::MAX_LIVE_VIEWS`].
    pub live_views: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// # Errors
    /// `elasticsearch.url` is not a URL.
    pub fn new(cfg: config::ConsoleConfig) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            auth: auth::Auth::new(&cfg),
            logs: control::explore::Logs::new(&cfg.control)?,
            control: tokio::sync::Mutex::new(None),
            live_views: Arc::new(tokio::sync::Semaphore::new(api::MAX_LIVE_VIEWS)),
            cfg,
        }))
    }

    /// The etcd connection, made at the first need (so the console starts
    /// while etcd is down) and kept.
    ///
    /// # Errors
    /// etcd unreachable.
    pub async fn control(&self) -> control::Result<control::Control> {
        let mut c = self.control.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let made = control::Control::connect(&self.cfg.control).await?;
        *c = Some(made.clone());
        Ok(made)
    }
}

/// The whole router: the API and the page.
pub fn router(app: Arc<App>) -> axum::Router {
    api::routes(app).merge(web::routes())
}

/// Serves until `stop` completes.
///
/// # Errors
/// The address cannot be bound, or serving fails.
pub async fn serve(
    app: Arc<App>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = app.cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(url = %format!("http://{local}/"), auth = app.auth.required(), "logconsole listening");
    // The URL on stdout, for scripts (demo, tests) that started us on port 0.
    println!("logconsole: http://{local}/");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(stop)
        .await
        .map_err(Error::Serve)
}
