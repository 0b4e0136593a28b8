use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
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
    tracing::error!(
        "logtransfer {}: the config is valid, but the consumer is not built yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(1)
}
