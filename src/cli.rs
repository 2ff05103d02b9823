//! The command line: argument parsing, and mapping every outcome to an exit code.
//! `sqscale run` hands over to [`crate::daemon::run`], the composition root.
//!
//! Exit codes follow sysexits(3), as the contract fixes them: 0 success, 64 bad usage,
//! 65 bad input data (a trace, KEDA objects), 78 bad configuration, 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::time::Duration;

use crate::config::{self, Config};
use crate::daemon::{self, CALL_TIMEOUT};
use crate::signals;
use crate::simulate;
use crate::source::sqs::Sqs;
use crate::telemetry::{self, LogFormat};
use crate::workload::kube::Kube;
/// Bound on `sqscale health`: a daemon that cannot answer /healthz this fast is not
/// healthy (and a container health check must not hang).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "sqscale", version, about = "Queue-driven autoscaling for Kubernetes from outside the cluster")]
struct Cli {
    /// Log format: plain, json, or auto (plain on a terminal, json otherwise). The
    /// filter comes from SQSCALE_LOG (EnvFilter syntax), default info.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The rule file.
    #[arg(long, env = "SQSCALE_CONFIG", default_value = config::DEFAULT_PATH, value_name = "PATH")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: poll, decide, patch /scale, until SIGTERM or SIGINT; SIGHUP reloads.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Kubeconfig to use instead of [kubernetes] kubeconfig, $KUBECONFIG or ~/.kube/config.
        #[arg(long, value_name = "PATH")]
        kubeconfig: Option<PathBuf>,
        /// Decide and log what would be done; never patch anything.
        #[arg(long)]
        dry_run: bool,
        /// How long polls in flight may take to finish after SIGTERM.
        #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
        shutdown_grace: Duration,
    },
    /// Validate the rule file and print every rule with its defaults filled in.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check every rule against AWS and Kubernetes: the queue answers, the
        /// target exists, and this identity has every permission the daemon uses.
        #[arg(long)]
        remote: bool,
        /// Kubeconfig for --remote (default: as `run`).
        #[arg(long, value_name = "PATH", requires = "remote")]
        kubeconfig: Option<PathBuf>,
    },
    /// Show a running daemon's rules: replicas, backlog, last decision, one line each.
    Status {
        /// The daemon's HTTP address (default: [server] listen of the rule file, else
        /// http://127.0.0.1:9464).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Exit 0 if a running daemon's /healthz answers 200 (every rule keeps polling), else
    /// 1: a container health check that needs no shell or curl.
    Health {
        /// The daemon's HTTP address (default: [server] listen of the rule file, else
        /// http://127.0.0.1:9464).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Replay a queue-length trace through the decision engine and print the timeline CSV.
    ///
    /// Rules and job rules alike. A job rule's Jobs run in a virtual cluster: each one
    /// runs --job-duration seconds and then completes; none is ever pending or failed.
    /// Its rows give the Jobs created in the poll as `desired` and its unfinished Jobs
    /// as `replicas`.
    Simulate {
        #[command(flatten)]
        config: ConfigArg,
        /// Trace CSV: time,queue,visible,in_flight,delayed.
        #[arg(long, value_name = "CSV")]
        trace: PathBuf,
        /// Simulate only this rule or job rule (default: every rule and job rule).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Last poll time in seconds (default: the trace's end plus time to settle).
        #[arg(long, value_name = "SECONDS")]
        until: Option<f64>,
        /// Replicas before the first poll (default: each rule's min_replica_count). Job
        /// rules start with no Jobs.
        #[arg(long, value_name = "N")]
        initial_replicas: Option<u32>,
        /// How long each Job of a job rule runs before it is Complete (it is never
        /// pending and never fails).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        job_duration: f64,
        /// Also draw backlog and replicas (a job rule's: its running Jobs) over time as an
        /// SVG chart.
        #[arg(long, value_name = "OUT.svg")]
        chart: Option<PathBuf>,
        /// The calendar time of the trace's time 0, for schedules (RFC 3339, e.g.
        /// 2026-03-08T00:00:00Z).
        #[arg(long, value_name = "RFC3339", default_value = "1970-01-01T00:00:00Z", value_parser = parse_start)]
        start: crate::engine::Time,
    },
    /// Turn KEDA ScaledObjects and ScaledJobs (from files, or listed from the cluster) into a
    /// rule file, and each ScaledJob's Job into a template file.
    ImportKeda(crate::import::command::Args),
    /// Print the completion script for SHELL on standard output.
    ///
    /// The Debian package installs them; elsewhere, for example:
    /// `sqscale completions bash > /usr/share/bash-completion/completions/sqscale`,
    /// `sqscale completions zsh > /usr/local/share/zsh/site-functions/_sqscale`,
    /// `sqscale completions fish > ~/.config/fish/completions/sqscale.fish`.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages, sqscale(1) and one per command, into DIR.
    ///
    /// Hidden: a build step (scripts/package), not something an operator runs. The pages
    /// come from these definitions, so they say what --help says.
    #[command(hide = true)]
    Man {
        /// The folder; created if missing.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The command line as clap sees it: what `--help`, the man pages and the completions
/// are made from.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the arguments, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, kubeconfig, dry_run, shutdown_grace } => {
            run(&config.config, kubeconfig, dry_run, shutdown_grace, cli.log_format)
        }
        Command::Check { config, remote, kubeconfig } => check(&config.config, remote, kubeconfig),
        Command::Status { server, config } => status(server, &config.config),
        Command::Health { server, config } => health(server, &config.config),
        Command::Simulate { config, trace, rule, until, initial_replicas, job_duration, chart, start } => {
            let options = SimulateArgs {
                rule: rule.as_deref(),
                until,
                initial_replicas,
                job_duration,
                chart: chart.as_deref(),
                start,
            };
            simulate(&config.config, &trace, options)
        }
        Command::ImportKeda(args) => crate::import::command::main(args),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man(&dir),
    }
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    // Into a buffer first: clap_complete panics on a failed write (a closed pipe), and a
    // failed write is an error message here, not a panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "sqscale", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the {shell} completions: {e}");
            ExitCode::FAILURE
        }
    }
}

fn man(dir: &Path) -> ExitCode {
    // The pages' date: SOURCE_DATE_EPOCH (scripts/package sets it to the last commit's
    // time, so that two builds of one commit make the same pages), else today.
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => match epoch.trim().parse().ok().and_then(|s| jiff::Timestamp::from_second(s).ok()) {
            Some(t) => t,
            None => {
                eprintln!("error: SOURCE_DATE_EPOCH {epoch:?}: not a number of seconds since 1970");
                return ExitCode::from(EX_USAGE);
            }
        },
        Err(_) => jiff::Timestamp::now(),
    };
    match std::fs::create_dir_all(dir).and_then(|()| write_man_pages(dir, &date.strftime("%Y-%m-%d").to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the man pages to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// sqscale(1) and a page per command that `--help` lists. `clap_mangen::generate_to`
/// does the same but leaves the date out, and then man reads the source as the date.
fn write_man_pages(dir: &Path, date: &str) -> std::io::Result<()> {
    let mut cli = command().disable_help_subcommand(true);
    cli.build();
    let source = format!("sqscale {}", env!("CARGO_PKG_VERSION"));
    let commands = cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned();
    for page in std::iter::once(cli.clone()).chain(commands) {
        clap_mangen::Man::new(page).date(date).source(&source).manual("sqscale manual").generate_to(dir)?;
    }
    Ok(())
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn check(path: &Path, remote: bool, kubeconfig: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print!("{}", config.resolved_toml());
    // Each rule's schedules and their next windows, as comments: the clock is read here,
    // at the edge, and the windows computed from it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    print!("{}", config::windows_report(&config.rules, crate::engine::Time(now.as_millis() as i64), 3));
    print!("{}", config::jobs_report(&config.jobs));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (rules, jobs) = (config.rules.len(), config.jobs.len());
    let job_rules = if jobs == 0 { String::new() } else { format!(", {jobs} job rule{}", plural(jobs)) };
    eprintln!("{}: ok, {rules} rule{}{job_rules}", path.display(), plural(rules));
    // Standard output stays the resolved file: warnings go to standard error.
    for warning in config::insecure_settings(&config, kubeconfig.as_deref()) {
        eprintln!("warning: {warning}");
    }
    for warning in config::job_warnings(&config.jobs) {
        eprintln!("warning: {warning}");
    }
    if !remote {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = runtime.block_on(check_remote(&config, kubeconfig));
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `check --remote`: one line per rule on stdout; returns how many rules failed.
async fn check_remote(config: &Config, kubeconfig: Option<PathBuf>) -> usize {
    use crate::source::{Attrs, QueueReader};
    use crate::workload::ScaleTarget;
    let sqs = Sqs::new(CALL_TIMEOUT);
    let kube = Kube::from_config(config, kubeconfig, CALL_TIMEOUT);
    let mut failed = 0;
    for rule in &config.rules {
        let ctx = rule.context.as_deref();
        let mut problems = Vec::new();
        let mut facts = Vec::new();
        for (t, q) in rule.policy.triggers.iter().zip(&rule.triggers) {
            // Whose credentials read it: a role's trust policy (an ExternalId it asks
            // for) is the usual reason one trigger reads and another does not.
            match sqs.read(q, Attrs::of(t)).await {
                Ok(c) => {
                    facts.push(format!("queue {} has {} messages (read as {})", q.name, t.backlog(&c), q.identity()))
                }
                Err(e) => problems.push(format!("{e} [{}] (read as {})", e.kind(), q.identity())),
            }
        }
        match kube.read(ctx, &rule.target).await {
            Ok(v) => facts.push(format!("{} has {} replicas", rule.target, v.replicas)),
            Err(e) => problems.push(format!("{e} [{}]", e.kind())),
        }
        for access in kube.needs(&rule.target) {
            match kube.may(ctx, &rule.target, &access).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!("not allowed to {access}")),
                Err(e) => problems.push(format!("cannot check access ({access}): {e}")),
            }
        }
        if problems.is_empty() {
            println!("ok    {}: {}; may read it, scale it and keep its state", rule.name, facts.join("; "));
        } else {
            failed += 1;
            println!("FAIL  {}: {}", rule.name, problems.join("; "));
        }
    }
    failed + check_remote_jobs(config, &sqs, &kube).await
}

/// `check --remote` for the job rules: their queues, and each permission their Jobs
/// and pods need ([`Kube::job_needs`]); one line per job rule.
async fn check_remote_jobs(config: &Config, sqs: &Sqs, kube: &Kube) -> usize {
    use crate::source::{Attrs, QueueReader};
    let mut failed = 0;
    for rule in &config.jobs {
        let mut problems = Vec::new();
        let mut facts = Vec::new();
        for (t, q) in rule.trigger_policies.iter().zip(&rule.triggers) {
            match sqs.read(q, Attrs::of(t)).await {
                Ok(c) => {
                    facts.push(format!("queue {} has {} messages (read as {})", q.name, t.backlog(&c), q.identity()))
                }
                Err(e) => problems.push(format!("{e} [{}] (read as {})", e.kind(), q.identity())),
            }
        }
        for access in kube.job_needs(rule) {
            match kube.may_for_jobs(rule, &access).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!("not allowed to {access}")),
                Err(e) => problems.push(format!("cannot check access ({access}): {e}")),
            }
        }
        if problems.is_empty() {
            facts.push(format!(
                "may create, delete and watch Jobs and watch their pods in namespace {}",
                rule.namespace
            ));
            println!("ok    job {}: {}", rule.name, facts.join("; "));
        } else {
            failed += 1;
            println!("FAIL  job {}: {}", rule.name, problems.join("; "));
        }
    }
    failed
}

/// `--start`: an RFC 3339 time with its offset, as Unix milliseconds.
fn parse_start(s: &str) -> Result<crate::engine::Time, String> {
    let t: jiff::Timestamp =
        s.parse().map_err(|e| format!("{e}; give an RFC 3339 time such as 2026-03-08T00:00:00Z"))?;
    Ok(crate::engine::Time(t.as_millisecond()))
}

/// The options of `sqscale simulate` beside the rule file and the trace.
struct SimulateArgs<'a> {
    rule: Option<&'a str>,
    until: Option<f64>,
    initial_replicas: Option<u32>,
    job_duration: f64,
    chart: Option<&'a Path>,
    start: crate::engine::Time,
}

fn simulate(path: &Path, trace_path: &Path, args: SimulateArgs<'_>) -> ExitCode {
    let SimulateArgs { rule, until, initial_replicas, job_duration, chart, start } = args;
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules: Vec<_> = config.rules.iter().filter(|r| rule.is_none_or(|n| r.name == n)).collect();
    let jobs: Vec<_> = config.jobs.iter().filter(|j| rule.is_none_or(|n| j.name == n)).collect();
    if rules.is_empty() && jobs.is_empty() {
        let names: Vec<_> = config.rules.iter().map(|r| r.name.as_str()).collect();
        let job_names: Vec<_> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        eprintln!(
            "error: --rule {:?}: no such rule or job rule in {} (rules: {}; job rules: {})",
            rule.unwrap_or_default(),
            path.display(),
            names.join(", "),
            job_names.join(", ")
        );
        return ExitCode::from(EX_USAGE);
    }
    if let Some(u) = until.filter(|u| !u.is_finite() || *u < 0.0) {
        eprintln!("error: --until {u}: must be a number of seconds >= 0");
        return ExitCode::from(EX_USAGE);
    }
    // At most 1e10 s, as trace times: a longer Job outlives any timeline.
    if !(0.0..=1e10).contains(&job_duration) {
        eprintln!("error: --job-duration {job_duration}: must be a number of seconds between 0 and 1e10");
        return ExitCode::from(EX_USAGE);
    }
    let job_duration = Duration::from_millis((job_duration * 1000.0).round() as u64);
    let file = match std::fs::File::open(trace_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", trace_path.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    let trace = match simulate::Trace::parse(std::io::BufReader::new(file)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", trace_path.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    let options = simulate::Options {
        until: until.map(|u| crate::engine::Time((u * 1000.0).round() as i64)),
        initial_replicas,
        start,
        groups: config.groups.clone(),
        job_duration,
    };
    let rows = match simulate::run_all(&rules, &jobs, &trace, &options) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {}: {e}", trace_path.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    if let Err(e) = simulate::write_csv(&rows, std::io::stdout().lock()) {
        eprintln!("error: writing the timeline: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(out) = chart {
        let svg = match simulate::chart::render(&rows) {
            Ok(svg) => svg,
            Err(e) => {
                eprintln!("error: {}: {}", out.display(), crate::error::chain(&e));
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(out, svg) {
            eprintln!("error: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn run(path: &Path, kubeconfig: Option<PathBuf>, dry_run: bool, grace: Duration, log_format: LogFormat) -> ExitCode {
    if let Err(e) = telemetry::init(log_format) {
        eprintln!("error: {}", crate::error::chain(&e));
        return ExitCode::from(EX_USAGE);
    }
    let config = match config::load_compact(path) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.problems {
                tracing::error!(file = %e.origin, problem = %problem, "rule file invalid");
            }
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    for warning in config::insecure_settings(&config, kubeconfig.as_deref()) {
        tracing::warn!("insecure setting: {warning}");
    }
    for warning in config::job_warnings(&config.jobs) {
        tracing::warn!("job rule: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let control = match signals::forward() {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot register signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let options = daemon::Options { config_path: path.to_owned(), kubeconfig, dry_run, shutdown_grace: grace };
        match daemon::run(config, options, control).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ daemon::Error::Kubernetes(_)) => {
                let error = crate::error::chain(&e);
                tracing::error!(%error, "cannot reach Kubernetes");
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
            Err(daemon::Error::Listen { addr, source }) => {
                tracing::error!(error = %source, %addr, "cannot listen");
                eprintln!("error: [server] listen {addr}: {source}");
                ExitCode::FAILURE
            }
            Err(daemon::Error::Aborted(e)) => {
                tracing::error!(error = %e, "shutdown aborted");
                ExitCode::FAILURE
            }
        }
    })
}

/// The daemon's base URL: `--server`, else `[server] listen` of the rule file, else the
/// default. A missing or broken file is no reason to fail here. An unspecified address
/// (the image's 0.0.0.0) is reached on loopback.
fn daemon_url(server: Option<String>, path: &Path) -> String {
    server.unwrap_or_else(|| match config::listen_of(path) {
        Some(mut addr) => {
            if addr.ip().is_unspecified() {
                let loopback: std::net::IpAddr = match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                };
                addr.set_ip(loopback);
            }
            format!("http://{addr}")
        }
        None => format!("http://{}", config::DEFAULT_LISTEN),
    })
}

fn current_thread() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

fn status(server: Option<String>, path: &Path) -> ExitCode {
    let base = daemon_url(server, path);
    let runtime = match current_thread() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(crate::status::fetch(&base)) {
        Ok(status) => {
            if let Some(election) = &status.leader_election {
                print!("{}", crate::status::election_lines(election));
            }
            // A file of job rules alone has no rules' table.
            if !status.rules.is_empty() || status.jobs.is_empty() {
                print!("{}", crate::status::table(&status.rules));
            }
            print!("{}", crate::status::group_lines(&status.groups));
            print!("{}", crate::status::job_lines(&status.jobs, &status.orphaned_jobs));
            for g in &status.groups {
                if let Some(note) = &g.note {
                    eprintln!("note: group {}: {note}", g.group);
                }
            }
            for s in status.state.iter().filter(|s| s.near_limit) {
                let context = if s.context.is_empty() { "the in-cluster context" } else { &s.context };
                eprintln!(
                    "note: ConfigMap {} ({context}) holds {} KiB of the API server's 1024 KiB limit",
                    s.configmap,
                    s.bytes / 1024
                );
            }
            if let Some(r) = &status.reload_rejected {
                eprintln!("note: the reload at {} was rejected; the rules from before run on. {}:", r.at, r.file);
                for p in &r.problems {
                    eprintln!("  {p}");
                }
            }
            if !status.restart_required.is_empty() {
                eprintln!(
                    "note: changed in the rule file, applied only on restart: {}",
                    status.restart_required.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: daemon unreachable: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn health(server: Option<String>, path: &Path) -> ExitCode {
    let base = daemon_url(server, path);
    let runtime = match current_thread() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(crate::status::check_health(&base, HEALTH_TIMEOUT)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}
