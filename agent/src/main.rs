use agent::config::AgentConfig;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc for the agent's own allocations: every line is a few short-lived
/// allocations (its bytes, its event, its offset), and glibc's malloc/free
/// were a fifth of the agent's CPU in a backlog profile (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `arena_eager_commit` and `purge_delay` (the positions in
/// its `mi_option_e`; libmimalloc-sys names only v2's options).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed is given back to the OS at once, and arenas are committed
/// as they are used: with mimalloc's defaults a 2M-line catch-up peaked at
/// 165–193 MiB RSS (glibc: 71 MiB), freed pages kept for reuse
/// (docs/BENCHMARKS.md, "logagent beside rsyslog").
///
/// Set before `main` (an ELF constructor of high priority): by `main` the
/// runtime has already allocated, and mimalloc reads `arena_eager_commit`
/// when it makes its first arena (set in `main`, the peak was 123–129 MiB).
extern "C" fn tune_allocator() {
    // SAFETY: plain setters of mimalloc's option table, run by the loader
    // before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[used]
#[unsafe(link_section = ".init_array.00101")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

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
    /// On SIGTERM/SIGINT, how long to wait for Kafka to acknowledge what
    /// was read (the rest is sent at the next start).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    shutdown_grace: u64,
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logagent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = std::time::Duration::from_secs(cli.shutdown_grace);
    match rt.block_on(agent::run::run(cli.config, cfg, grace)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "logagent failed");
            eprintln!("logagent: {e}");
            ExitCode::FAILURE
        }
    }
}
