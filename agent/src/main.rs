use agent::config::AgentConfig;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Tails log files, spools every line to a local write-ahead log and produces
/// it to Kafka.
#[derive(Debug, Parser)]
#[command(name = "logagent", version)]
struct Cli {
    /// The agent's TOML config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/logagent/agent.toml")]
    config: PathBuf,
    /// Validate the config, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    common::init_tracing();
    let cli = Cli::parse();
    let cfg = match AgentConfig::load(&cli.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("logagent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print!("{}", cfg.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    tracing::error!(
        "logagent {}: the config is valid, but the harvesting pipeline is not built yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(1)
}
