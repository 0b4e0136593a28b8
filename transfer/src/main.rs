use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use transfer::config::TransferConfig;

/// Consumes log events from Kafka and bulk-writes them to Elasticsearch.
#[derive(Debug, Parser)]
#[command(name = "logtransfer", version)]
struct Cli {
    /// The transfer's TOML config file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/logtransfer/transfer.toml"
    )]
    config: PathBuf,
    /// Validate the config, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
    /// On SIGTERM/SIGINT, how long in-flight batches may take to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    shutdown_grace: u64,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested");
}

fn main() -> ExitCode {
    common::init_tracing();
    let cli = Cli::parse();
    let cfg = match TransferConfig::load(&cli.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("logtransfer: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print!("{}", cfg.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logtransfer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let metrics = transfer::metrics::Metrics::new();
        if let Err(e) = transfer::metrics::serve(&cfg.metrics.listen, metrics.clone()).await {
            eprintln!("logtransfer: metrics.listen {}: {e}", cfg.metrics.listen);
            return ExitCode::from(2);
        }
        let grace = Duration::from_secs(cli.shutdown_grace);
        match transfer::pipeline::run(cfg, metrics, shutdown_signal(), grace).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("logtransfer: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
