//! `logconsole`: the web console. `logconsole [--config FILE] [--listen ADDR]`
//! serves it; `logconsole hash-password` prints a hash for a user's
//! `password_hash` (the password read from stdin).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "logconsole", version, about = "The web console of logpipe")]
struct Args {
    /// The config (TOML: [etcd], [kafka], [elasticsearch], [console]);
    /// without it, the local stack's defaults and ETCD_ENDPOINTS,
    /// KAFKA_BROKERS, ES_URL from the environment.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen here instead of console.listen (IP:PORT; port 0: any free).
    #[arg(long)]
    listen: Option<String>,
    /// Check the config and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print an argon2id hash of the password on stdin (one line).
    HashPassword,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::HashPassword) = args.command {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim_end().is_empty() {
            eprintln!("logconsole: give the password on stdin");
            return ExitCode::from(2);
        }
        return match console::auth::hash_password(line.trim_end_matches(['\n', '\r'])) {
            Ok(h) => {
                println!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("logconsole: {e}");
                ExitCode::FAILURE
            }
        };
    }
    common::init_tracing();
    let cfg = match console::config::ConsoleConfig::load(
        args.config.as_deref(),
        args.listen.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("logconsole: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "logconsole: config OK (listen {}, auth {})",
            cfg.listen,
            if cfg.auth_required() {
                "required"
            } else {
                "off: loopback only"
            }
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logconsole: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        let app = console::App::new(cfg)?;
        console::serve(app, async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logconsole: {e}");
            ExitCode::FAILURE
        }
    }
}
