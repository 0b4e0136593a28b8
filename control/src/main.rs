//! `logctl`: the operators' CLI (collect entries, agents, checks, search,
//! context, tail, lag, dead letters). All the logic is in the `control`
//! library, which the web console uses too.
//!
//! Exit codes: 0 ok; 1 refused, conflict, not found, timed out or a service
//! error; 2 a usage or config error.

use clap::{Parser, Subcommand, ValueEnum};
use control::agents::{Agent, Liveness};
use control::collect::{pretty, Outcome, RootsSource};
use control::config::ControlConfig;
use control::{Control, Error};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "logctl",
    version,
    about = "Manage logpipe's collect entries, see its agents, read its logs"
)]
struct Cli {
    /// Config file (TOML: [etcd], [kafka], [elasticsearch]); without one the
    /// defaults reach the local stack, and ETCD_ENDPOINTS, KAFKA_BROKERS,
    /// ES_URL, LOGAGENT_PREFIX override them.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output: a table for people, or JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// The agents and their state.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Collect entries in etcd.
    #[command(subcommand)]
    Collect(CollectCmd),
    /// Are etcd, Kafka and Elasticsearch reachable, and the transfer
    /// group's lag.
    Check {
        /// The transfer's consumer group.
        #[arg(long, default_value = "logtransfer")]
        group: String,
    },
    /// Search the documents logtransfer wrote, newest first.
    Search(SearchArgs),
    /// The lines before and after a document in its source file.
    Context {
        /// The document's `_id` (as `search` and `tail` print it).
        id: String,
        /// Lines before.
        #[arg(short = 'B', long, default_value_t = 5)]
        before: usize,
        /// Lines after.
        #[arg(short = 'A', long, default_value_t = 5)]
        after: usize,
    },
    /// Events live from Kafka (no consumer group, nothing committed).
    Tail(TailArgs),
    /// A consumer group's lag per topic and partition.
    Lag {
        /// The group (logtransfer's `kafka.group_id`).
        #[arg(long, default_value = control::lag::DEFAULT_GROUP)]
        group: String,
        /// Topics (names, or regexes starting with ^); default: all.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Dead letters: documents Elasticsearch refused for good.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

#[derive(Args)]
struct TimeArgs {
    /// Only this recent (90s, 15m, 1h, 2d).
    #[arg(long, conflicts_with = "from")]
    since: Option<String>,
    /// From this time (RFC 3339, or a date).
    #[arg(long)]
    from: Option<String>,
    /// Up to this time (RFC 3339, or a date).
    #[arg(long)]
    to: Option<String>,
}

impl TimeArgs {
    fn range(&self) -> Result<control::search::TimeRange, Error> {
        control::search::TimeRange::from_args(
            self.since.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
            chrono::Utc::now(),
        )
    }
}

#[derive(Args)]
struct FilterArgs {
    /// Only this host (host.name or host.id).
    #[arg(long)]
    host: Option<String>,
    /// Only this file (log.file.path; a glob with * or ?).
    #[arg(long)]
    file: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> control::search::Filter {
        control::search::Filter {
            host: self.host.clone(),
            file: self.file.clone(),
        }
    }
}

#[derive(Args)]
struct SearchArgs {
    /// A query_string on `message` (`error AND db`, `"conn reset"`); `*`: all.
    query: String,
    #[command(flatten)]
    time: TimeArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// How many documents.
    #[arg(short = 'n', default_value_t = 20)]
    n: usize,
}

#[derive(Args)]
struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Topics (names, or regexes starting with ^); default: ^.*_log$.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Only events whose message matches this regex.
    #[arg(long)]
    grep: Option<String>,
    /// Start this far back (90s, 15m, 1h) instead of at the end.
    #[arg(long)]
    since: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    max: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long = "for")]
    for_secs: Option<u64>,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// The newest dead letters.
    List {
        #[command(flatten)]
        time: TimeArgs,
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// The dead-letter indices.
        #[arg(long, default_value = control::dlq::DEFAULT_INDEX)]
        index: String,
    },
    /// One dead letter and its original document.
    Show {
        /// Its `_id` (the original's, topic-partition-offset).
        id: String,
        #[arg(long, default_value = control::dlq::DEFAULT_INDEX)]
        index: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Every agent: up, stale or down (entries but not registered).
    List {
        /// Only agents that are stale or down.
        #[arg(long)]
        stale: bool,
        /// Also write Prometheus file-based discovery targets to FILE
        /// (atomically; hosts now down keep their target from FILE, so
        /// Prometheus sees them down). Run it every 30 s, e.g. from a timer.
        #[arg(long, value_name = "FILE")]
        prometheus_sd: Option<std::path::PathBuf>,
    },
    /// One agent: its state, collect revisions and the most lagging files.
    Show { host: String },
}

#[derive(Args, Clone)]
struct Roots {
    /// allowed_roots to validate against when the host has not registered
    /// (registered hosts are validated against what they publish).
    #[arg(long, value_delimiter = ',', default_value = "/var/log")]
    roots: Vec<PathBuf>,
}

use clap::Args;

#[derive(Subcommand)]
enum CollectCmd {
    /// Print a host's (or `_all`'s) entries and their revision.
    Get { host: String },
    /// Validate, show the diff, write (compare-and-swap), then wait until
    /// the agent reports the revision applied or refused.
    Put {
        host: String,
        /// The entries (JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Validate and show the diff only.
        #[arg(long)]
        dry_run: bool,
        /// Write only if the key is still at this revision (0: absent).
        #[arg(long)]
        expect_revision: Option<i64>,
        /// Seconds to wait for the agent's report (0: do not wait).
        #[arg(long, default_value_t = 15)]
        wait: u64,
        #[command(flatten)]
        roots: Roots,
    },
    /// Open the entries in $EDITOR, validate on save, write if unchanged
    /// meanwhile.
    Edit {
        host: String,
        #[arg(long, default_value_t = 15)]
        wait: u64,
        #[command(flatten)]
        roots: Roots,
    },
    /// Validate entries without writing them.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Validate for this host (default: `_all`, every registered agent).
        #[arg(long, default_value = "_all")]
        host: String,
        #[command(flatten)]
        roots: Roots,
    },
    /// Delete a host's entries (its agent stops collecting them).
    Rm {
        host: String,
        #[arg(long)]
        expect_revision: Option<i64>,
    },
    /// Every revision etcd still has of a host's entries.
    History { host: String },
    /// Write again the value a host's entries had at a revision.
    Rollback {
        host: String,
        #[arg(long)]
        rev: i64,
        #[arg(long, default_value_t = 15)]
        wait: u64,
        #[command(flatten)]
        roots: Roots,
    },
}

fn read_input(file: &str) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::Io {
        what: format!("reading {file}"),
        message: e.to_string(),
    };
    if file == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).map_err(io)?;
        Ok(v)
    } else {
        std::fs::read(file).map_err(io)
    }
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn json_out(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Up => "up",
        Liveness::Stale => "stale",
        Liveness::Down => "down",
    }
}

fn agent_row(a: &Agent) -> Vec<String> {
    let s = &a.state;
    let lag = s.wal.lag_secs.map_or("-".into(), |l| format!("{l}s"));
    let problems = if s.problems.is_empty() {
        String::new()
    } else {
        s.problems
            .iter()
            .map(|p| p.key.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        a.host_id.clone(),
        liveness(a.liveness).into(),
        s.version.clone(),
        if a.liveness == Liveness::Down {
            "-".into()
        } else if s.paused {
            "paused".into()
        } else {
            "reading".into()
        },
        s.files.total.to_string(),
        format!("{}/{}", human(s.wal.used_bytes), human(s.wal.max_bytes)),
        lag,
        problems,
    ]
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

/// Reports the wait after a write: applied, refused (exit 1) or timed out.
async fn report_wait(
    ctl: &mut Control,
    host: &str,
    revision: i64,
    wait: u64,
    fmt: Format,
) -> Result<(), Error> {
    if wait == 0 {
        return Ok(());
    }
    let outcome = match ctl
        .wait_applied(host, revision, Duration::from_secs(wait))
        .await
    {
        Ok(hosts) => {
            if fmt == Format::Table {
                println!("applied by {}", hosts.join(", "));
            }
            Outcome::Applied
        }
        Err(Error::NotFound(what)) => {
            eprintln!("logctl: written; not waiting: no {what}");
            return Ok(());
        }
        Err(Error::Refused { reason, .. }) => Outcome::Refused(reason),
        Err(e) => return Err(e),
    };
    if fmt == Format::Json {
        json_out(&serde_json::json!({
            "revision": revision,
            "outcome": match &outcome { Outcome::Applied => "applied", Outcome::Refused(_) => "refused" },
            "reason": match &outcome { Outcome::Refused(r) => Some(r), Outcome::Applied => None },
        }));
    }
    match outcome {
        Outcome::Applied => Ok(()),
        Outcome::Refused(reason) => Err(Error::Refused {
            key: ctl.collect_key(host),
            revision,
            reason,
        }),
    }
}

fn print_written(w: &control::collect::Written, fmt: Format) {
    if fmt == Format::Table {
        if w.diff.is_empty() {
            println!("no change");
        } else {
            print!("{}", w.diff);
        }
        match w.revision {
            Some(r) => println!("written {} at revision {r} (was {})", w.key, w.previous),
            None => println!(
                "dry run: nothing written ({} is at revision {})",
                w.key, w.previous
            ),
        }
    } else if w.revision.is_none() {
        json_out(
            &serde_json::json!({"key": w.key, "dry_run": true, "revision": w.previous, "diff": w.diff}),
        );
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let cfg = ControlConfig::load(cli.config.as_deref())?;
    let fmt = cli.output;
    if let Cmd::Check { group } = &cli.cmd {
        let checks = control::check::check(&cfg, group).await;
        if fmt == Format::Json {
            json_out(&checks);
        } else {
            let rows: Vec<Vec<String>> = checks
                .iter()
                .map(|c| {
                    vec![
                        c.service.into(),
                        c.address.clone(),
                        if c.ok { "ok" } else { "FAILED" }.into(),
                        c.detail.clone(),
                    ]
                })
                .collect();
            table(&["SERVICE", "ADDRESS", "STATE", "DETAIL"], &rows);
        }
        return match checks.iter().find(|c| !c.ok) {
            Some(c) => Err(Error::Io {
                what: format!("{} at {}", c.service, c.address),
                message: c.detail.clone(),
            }),
            None => Ok(()),
        };
    }
    let cmd = match cli.cmd {
        Cmd::Search(a) => return search_cmd(&cfg, a, fmt).await,
        Cmd::Context { id, before, after } => {
            return context_cmd(&cfg, &id, before, after, fmt).await
        }
        Cmd::Tail(a) => return tail_cmd(&cfg, a, fmt).await,
        Cmd::Lag { group, topics } => return lag_cmd(&cfg, &group, &topics, fmt).await,
        Cmd::Dlq(d) => return dlq_cmd(&cfg, d, fmt).await,
        other => other,
    };
    let mut ctl = Control::connect(&cfg).await?;
    match cmd {
        Cmd::Check { .. }
        | Cmd::Search(_)
        | Cmd::Context { .. }
        | Cmd::Tail(_)
        | Cmd::Lag { .. }
        | Cmd::Dlq(_) => unreachable!("handled above"),
        Cmd::Agents(AgentsCmd::List {
            stale,
            prometheus_sd,
        }) => {
            let all = ctl.agents().await?;
            if let Some(file) = prometheus_sd {
                write_prometheus_sd(&file, &all)?;
            }
            let agents: Vec<Agent> = all
                .into_iter()
                .filter(|a| !stale || a.liveness != Liveness::Up)
                .collect();
            if fmt == Format::Json {
                json_out(&agents);
            } else {
                let rows: Vec<Vec<String>> = agents.iter().map(agent_row).collect();
                table(
                    &[
                        "HOST", "STATE", "VERSION", "READING", "FILES", "WAL", "LAG", "PROBLEMS",
                    ],
                    &rows,
                );
            }
        }
        Cmd::Agents(AgentsCmd::Show { host }) => {
            let a = ctl.agent(&host).await?;
            if fmt == Format::Json {
                json_out(&a);
                return Ok(());
            }
            let s = &a.state;
            println!("host        {} ({})", a.host_id, liveness(a.liveness));
            if a.liveness == Liveness::Down {
                println!(
                    "            not registered: the agent is not running or cannot reach etcd"
                );
                return Ok(());
            }
            println!(
                "hostname    {}  ip {}  version {}",
                s.hostname, s.ip, s.version
            );
            println!("started     {}  updated {}", s.started_at, s.updated_at);
            println!("metrics     http://{}/metrics", s.metrics);
            println!("roots       {}", s.allowed_roots.join(", "));
            println!(
                "reading     {}",
                if s.paused {
                    format!(
                        "PAUSED since {}",
                        s.paused_since.clone().unwrap_or_default()
                    )
                } else {
                    "yes".into()
                }
            );
            println!(
                "wal         {} of {}, {} unacked records, lag {}",
                human(s.wal.used_bytes),
                human(s.wal.max_bytes),
                s.wal.unacked_records,
                s.wal.lag_secs.map_or("-".into(), |l| format!("{l}s"))
            );
            println!(
                "kafka       {}   etcd {}",
                s.kafka,
                if s.etcd_connected {
                    "connected"
                } else {
                    "DISCONNECTED"
                }
            );
            for p in &s.problems {
                println!("problem     {}: {} (for {}s)", p.key, p.reason, p.for_secs);
            }
            println!();
            let rows: Vec<Vec<String>> = s
                .collect
                .iter()
                .map(|(k, v)| {
                    vec![
                        k.clone(),
                        v.revision.to_string(),
                        v.applied_revision.to_string(),
                        v.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                &["COLLECT KEY", "SEEN", "APPLIED", "REFUSED BECAUSE"],
                &rows,
            );
            println!();
            let rows: Vec<Vec<String>> = s
                .files
                .shown
                .iter()
                .map(|f| {
                    vec![
                        f.path.clone(),
                        f.size.to_string(),
                        f.read_offset.to_string(),
                        f.acked_offset.to_string(),
                        human(f.unshipped()),
                    ]
                })
                .collect();
            table(&["FILE", "SIZE", "READ", "ACKED", "UNSHIPPED"], &rows);
            println!(
                "{} files, {} not yet in Kafka",
                s.files.total,
                human(s.files.unshipped_bytes)
            );
        }
        Cmd::Collect(CollectCmd::Get { host }) => match ctl.get(&host).await? {
            None => return Err(Error::NotFound(ctl.collect_key(&host))),
            Some(s) => {
                if fmt == Format::Json {
                    let value: serde_json::Value = serde_json::from_slice(&s.value)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&s.value).into());
                    json_out(
                        &serde_json::json!({"key": s.key, "revision": s.mod_revision, "value": value}),
                    );
                } else {
                    println!("# {} at revision {}", s.key, s.mod_revision);
                    print!("{}", pretty(&s.value));
                }
            }
        },
        Cmd::Collect(CollectCmd::Put {
            host,
            file,
            dry_run,
            expect_revision,
            wait,
            roots,
        }) => {
            let value = read_input(&file)?;
            let w = ctl
                .put(&host, &value, expect_revision, &roots.roots, dry_run)
                .await?;
            print_written(&w, fmt);
            if let Some(rev) = w.revision {
                report_wait(&mut ctl, &host, rev, wait, fmt).await?;
            }
        }
        Cmd::Collect(CollectCmd::Edit { host, wait, roots }) => {
            let current = ctl.get(&host).await?;
            let rev = current.as_ref().map_or(0, |s| s.mod_revision);
            let text = current
                .map(|s| pretty(&s.value))
                .unwrap_or_else(|| "[]\n".into());
            let edited = edit_loop(&mut ctl, &host, text, &roots.roots).await?;
            let w = ctl
                .put(&host, &edited, Some(rev), &roots.roots, false)
                .await?;
            print_written(&w, fmt);
            if let Some(rev) = w.revision {
                report_wait(&mut ctl, &host, rev, wait, fmt).await?;
            }
        }
        Cmd::Collect(CollectCmd::Validate { file, host, roots }) => {
            let value = read_input(&file)?;
            let v = ctl.validate(&host, &value, &roots.roots).await?;
            let against = match &v.roots {
                RootsSource::Published(hosts) => {
                    format!("the allowed_roots of {}", hosts.join(", "))
                }
                RootsSource::Given => format!(
                    "allowed_roots {} (no registered agent for {host})",
                    roots
                        .roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            if fmt == Format::Json {
                json_out(
                    &serde_json::json!({"valid": true, "entries": v.entries.len(), "against": against}),
                );
            } else {
                println!(
                    "valid: {} entries, checked against {against}",
                    v.entries.len()
                );
            }
        }
        Cmd::Collect(CollectCmd::Rm {
            host,
            expect_revision,
        }) => {
            let w = ctl.remove(&host, expect_revision).await?;
            print_written(&w, fmt);
        }
        Cmd::Collect(CollectCmd::History { host }) => {
            let h = ctl.history(&host).await?;
            if fmt == Format::Json {
                let v: Vec<serde_json::Value> = h
                    .iter()
                    .map(|r| {
                        serde_json::json!({"revision": r.revision, "deleted": r.value.is_none(),
                            "value": r.value.as_ref().map(|v| serde_json::from_slice::<serde_json::Value>(v)
                                .unwrap_or_else(|_| String::from_utf8_lossy(v).into()))})
                    })
                    .collect();
                json_out(&v);
            } else {
                for r in &h {
                    match &r.value {
                        Some(v) => {
                            println!("# revision {}", r.revision);
                            print!("{}", pretty(v));
                        }
                        None => println!("# revision {}: deleted", r.revision),
                    }
                }
            }
        }
        Cmd::Collect(CollectCmd::Rollback {
            host,
            rev,
            wait,
            roots,
        }) => {
            let w = ctl.rollback(&host, rev, &roots.roots).await?;
            print_written(&w, fmt);
            if let Some(r) = w.revision {
                report_wait(&mut ctl, &host, r, wait, fmt).await?;
            }
        }
    }
    Ok(())
}

fn line_row(l: &control::search::Line) -> Vec<String> {
    vec![
        l.id.clone(),
        l.timestamp.clone(),
        l.host.clone(),
        l.file.clone(),
        l.message.clone(),
    ]
}

async fn search_cmd(cfg: &ControlConfig, a: SearchArgs, fmt: Format) -> Result<(), Error> {
    let s = control::search::Search {
        query: a.query,
        range: a.time.range()?,
        filter: a.filter.filter(),
        limit: a.n,
    };
    let lines = control::search::search(cfg, &s).await?;
    if fmt == Format::Json {
        json_out(&lines);
    } else {
        let rows: Vec<Vec<String>> = lines.iter().map(line_row).collect();
        table(&["ID", "TIME", "HOST", "FILE", "MESSAGE"], &rows);
    }
    Ok(())
}

async fn context_cmd(
    cfg: &ControlConfig,
    id: &str,
    before: usize,
    after: usize,
    fmt: Format,
) -> Result<(), Error> {
    let c = control::context::context(cfg, id, before, after).await?;
    if fmt == Format::Json {
        json_out(&c);
        return Ok(());
    }
    match &c.file {
        control::context::SourceFile::Identity {
            host_id,
            device,
            inode,
            fingerprint,
        } => println!(
            "# {host_id} {} (device {device}, inode {inode}, fingerprint {fingerprint})",
            c.line.file
        ),
        control::context::SourceFile::Path { host, path } => {
            println!("# {host} {path} (no file identity in the document: by host and path)")
        }
    }
    let row = |mark: &str, l: &control::search::Line| {
        vec![
            mark.to_string(),
            l.offset.map_or("-".into(), |o| o.to_string()),
            l.message.clone(),
        ]
    };
    let all = c
        .before
        .iter()
        .map(|l| ("", l))
        .chain(std::iter::once((">", &c.line)))
        .chain(c.after.iter().map(|l| ("", l)));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut file = Some(c.file.clone());
    for (mark, l) in all {
        // A line of another generation of the file (across a rotation).
        let this = control::context::SourceFile::of(&l.source);
        if this != file {
            let inode = l.source["log"]["file"]["inode"].as_u64().unwrap_or(0);
            rows.push(vec![
                String::new(),
                String::new(),
                format!("-- {} (inode {inode}) --", l.file),
            ]);
            file = this;
        }
        rows.push(row(mark, l));
    }
    table(&["", "OFFSET", "LINE"], &rows);
    Ok(())
}

async fn tail_cmd(cfg: &ControlConfig, a: TailArgs, fmt: Format) -> Result<(), Error> {
    let t = control::tail::Tail {
        topics: a.topics,
        filter: a.filter.filter(),
        grep: a.grep,
        since: a
            .since
            .as_deref()
            .map(|s| {
                control::search::parse_duration(s).map_err(|message| Error::BadArgument {
                    arg: "--since".into(),
                    message,
                })
            })
            .transpose()?,
        max: a.max,
        duration: a.for_secs.map(Duration::from_secs),
    };
    // Registered now, before "tailing" is printed: a SIGINT right after it
    // must stop the tail (exit 0), not kill the process.
    let sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let stop = async move {
        match sigint {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let started = |p: &[control::tail::Position]| {
        let at: Vec<String> = p
            .iter()
            .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.offset))
            .collect();
        eprintln!("logctl: tailing {}", at.join(" "));
    };
    let print = |l: &control::search::Line| {
        if fmt == Format::Json {
            println!("{}", serde_json::to_string(l).unwrap_or_default());
        } else {
            println!("{}  {}  {}  {}", l.timestamp, l.host, l.file, l.message);
        }
    };
    let warn = |w: &str| eprintln!("logctl: {w} (still tailing)");
    control::tail::tail(cfg, &t, stop, started, print, warn).await?;
    Ok(())
}

async fn lag_cmd(
    cfg: &ControlConfig,
    group: &str,
    topics: &[String],
    fmt: Format,
) -> Result<(), Error> {
    let lags = control::lag::lag(cfg, group, topics).await?;
    if fmt == Format::Json {
        json_out(&lags);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lags
        .iter()
        .map(|l| {
            vec![
                l.topic.clone(),
                l.partition.to_string(),
                l.committed.to_string(),
                l.high.to_string(),
                l.lag.to_string(),
            ]
        })
        .collect();
    table(&["TOPIC", "PARTITION", "COMMITTED", "HIGH", "LAG"], &rows);
    println!(
        "group {group}: {} messages behind",
        lags.iter().map(|l| l.lag).sum::<i64>()
    );
    Ok(())
}

async fn dlq_cmd(cfg: &ControlConfig, d: DlqCmd, fmt: Format) -> Result<(), Error> {
    match d {
        DlqCmd::List { time, n, index } => {
            let list = control::dlq::list(cfg, &index, time.range()?, n).await?;
            if fmt == Format::Json {
                json_out(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.timestamp.clone(),
                        d.index.clone(),
                        d.status.to_string(),
                        d.error_type.clone(),
                        d.reason.chars().take(120).collect(),
                    ]
                })
                .collect();
            table(&["ID", "TIME", "INDEX", "STATUS", "ERROR", "REASON"], &rows);
        }
        DlqCmd::Show { id, index } => {
            let d = control::dlq::show(cfg, &index, &id).await?;
            if fmt == Format::Json {
                json_out(&d);
                return Ok(());
            }
            println!("id          {} in {}", d.id, d.index);
            println!("time        {}", d.timestamp);
            println!(
                "kafka       {}/{} offset {}",
                d.topic, d.partition, d.offset
            );
            println!("meant for   {}", d.original_index);
            println!("error       {} {}: {}", d.status, d.error_type, d.reason);
            if d.original_truncated {
                println!("original    (its first 32 KiB)");
            } else {
                println!("original");
            }
            print!("{}", pretty(d.original.as_bytes()));
        }
    }
    Ok(())
}

/// $EDITOR on `text` until what is saved validates (or is left unchanged:
/// nothing to do).
async fn edit_loop(
    ctl: &mut Control,
    host: &str,
    mut text: String,
    roots: &[PathBuf],
) -> Result<Vec<u8>, Error> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: what.to_string(),
        message: e.to_string(),
    };
    let dir = std::env::temp_dir().join(format!("logctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io("temp dir", e))?;
    let path = dir.join(format!("{}.json", host.replace('/', "_")));
    loop {
        std::fs::write(&path, &text).map_err(|e| io("temp file", e))?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("logctl-edit")
            .arg(&path)
            .status()
            .map_err(|e| io(&format!("running {editor}"), e))?;
        if !status.success() {
            return Err(Error::Io {
                what: editor.clone(),
                message: format!("exited with {status}; nothing written"),
            });
        }
        let saved = std::fs::read_to_string(&path).map_err(|e| io("temp file", e))?;
        if saved == text {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Io {
                what: "edit".into(),
                message: "no change; nothing written".into(),
            });
        }
        match ctl.validate(host, saved.as_bytes(), roots).await {
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(saved.into_bytes());
            }
            Err(Error::Invalid(why)) => {
                eprintln!("logctl: refused: {why}\nlogctl: opening the editor again (save it unchanged to give up)");
                text = saved;
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes the agents' Prometheus targets to `file` (a temporary file
/// renamed over it), keeping down hosts' targets from its previous content.
fn write_prometheus_sd(file: &std::path::Path, agents: &[Agent]) -> control::Result<()> {
    let io = |what: &str, e: std::io::Error| control::Error::Io {
        what: format!("{what} {}", file.display()),
        message: e.to_string(),
    };
    let previous = match std::fs::read(file) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
        Err(e) => return Err(io("reading", e)),
    };
    let targets = control::agents::prometheus_targets(agents, &previous);
    let tmp = file.with_extension("tmp");
    let text = serde_json::to_string_pretty(&targets).unwrap_or_default() + "\n";
    std::fs::write(&tmp, text).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, file).map_err(|e| io("renaming onto", e))
}
