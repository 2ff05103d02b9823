//! The command line: argument parsing, and mapping every outcome to an exit code.
//!
//! Exit codes follow sysexits(3), as the contract fixes them: 0 success, 64 bad usage,
//! 65 bad input data (a trace), 78 bad configuration, 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Config};
use crate::simulate;
use crate::source::{Shared, sqs::Sqs};
use crate::status::Observer;
use crate::target::kube::Kube;
use crate::telemetry::{self, LogFormat};
use crate::worker::{Clock, Deps};
use crate::{server, signals, supervisor};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bound on every remote call of a poll (SQS, Kubernetes).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
        /// target exists, and this identity may get and patch its scale.
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
    /// Replay a queue-length trace through the decision engine and print the timeline CSV.
    Simulate {
        #[command(flatten)]
        config: ConfigArg,
        /// Trace CSV: time,queue,visible,in_flight,delayed.
        #[arg(long, value_name = "CSV")]
        trace: PathBuf,
        /// Simulate only this rule (default: every rule).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Last poll time in seconds (default: the trace's end plus time to settle).
        #[arg(long, value_name = "SECONDS")]
        until: Option<f64>,
        /// Replicas before the first poll (default: each rule's min_replica_count).
        #[arg(long, value_name = "N")]
        initial_replicas: Option<u32>,
        /// Also draw backlog and replicas over time as an SVG chart.
        #[arg(long, value_name = "OUT.svg")]
        chart: Option<PathBuf>,
    },
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
        Command::Simulate { config, trace, rule, until, initial_replicas, chart } => {
            simulate(&config.config, &trace, rule.as_deref(), until, initial_replicas, chart.as_deref())
        }
    }
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
    eprintln!("{}: ok, {} rule{}", path.display(), config.rules.len(), if config.rules.len() == 1 { "" } else { "s" });
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
    use crate::target::ScaleTarget;
    let sqs = Sqs::new(CALL_TIMEOUT);
    let kube = Kube::from_settings(&config.kubernetes, &config.aws, kubeconfig, CALL_TIMEOUT);
    let mut failed = 0;
    for rule in &config.rules {
        let ctx = rule.context.as_deref();
        let mut problems = Vec::new();
        let mut facts = Vec::new();
        for (t, q) in rule.policy.triggers.iter().zip(&rule.triggers) {
            match sqs.read(q, Attrs::of(t)).await {
                Ok(c) => facts.push(format!("queue {} has {} messages", q.name, t.backlog(&c))),
                Err(e) => problems.push(format!("{e} [{}]", e.kind)),
            }
        }
        match kube.read(ctx, &rule.target).await {
            Ok(v) => facts.push(format!("{} has {} replicas", rule.target, v.replicas)),
            Err(e) => problems.push(format!("{e} [{}]", e.kind)),
        }
        for (verb, sub) in [("get", Some("scale")), ("patch", Some("scale")), ("patch", None)] {
            let what = format!(
                "{verb} {}{}",
                rule.target.kind.as_str().to_lowercase(),
                sub.map_or(String::new(), |s| format!("s/{s}"))
            );
            match kube.can_i(ctx, &rule.target, verb, sub).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!("not allowed to {what} in namespace {}", rule.target.namespace)),
                Err(e) => problems.push(format!("cannot check access ({what}): {e}")),
            }
        }
        if problems.is_empty() {
            println!("ok    {}: {}; may get and patch its scale", rule.name, facts.join("; "));
        } else {
            failed += 1;
            println!("FAIL  {}: {}", rule.name, problems.join("; "));
        }
    }
    failed
}

fn simulate(
    path: &Path,
    trace_path: &Path,
    rule: Option<&str>,
    until: Option<f64>,
    initial_replicas: Option<u32>,
    chart: Option<&Path>,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules: Vec<_> = config.rules.iter().filter(|r| rule.is_none_or(|n| r.name == n)).collect();
    if rules.is_empty() {
        let names: Vec<_> = config.rules.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "error: --rule {:?}: no such rule in {} (rules: {})",
            rule.unwrap_or_default(),
            path.display(),
            names.join(", ")
        );
        return ExitCode::from(EX_USAGE);
    }
    if let Some(u) = until.filter(|u| !u.is_finite() || *u < 0.0) {
        eprintln!("error: --until {u}: must be a number of seconds >= 0");
        return ExitCode::from(EX_USAGE);
    }
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
    let options =
        simulate::Options { until: until.map(|u| crate::engine::Time((u * 1000.0).round() as i64)), initial_replicas };
    let rows = match simulate::run(&rules, &trace, &options) {
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
        let written =
            simulate::chart::render(&rows).and_then(|svg| std::fs::write(out, svg).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("error: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn run(path: &Path, kubeconfig: Option<PathBuf>, dry_run: bool, grace: Duration, log_format: LogFormat) -> ExitCode {
    if let Err(e) = telemetry::init(log_format) {
        eprintln!("error: {e}");
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
        let kube = Kube::from_settings(&config.kubernetes, &config.aws, kubeconfig, CALL_TIMEOUT);
        // Build every context's client now: a broken kubeconfig is a start-up error,
        // not a warning on every poll.
        let mut contexts: Vec<Option<&str>> = config.rules.iter().map(|r| r.context.as_deref()).collect();
        contexts.dedup();
        for context in contexts {
            if let Err(e) = kube.client(context).await {
                tracing::error!(error = %e, "cannot reach Kubernetes");
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        // Start the targets' watches and wait for their first lists (at most the call
        // timeout), so the first polls read the caches instead of queueing behind the
        // lists: at ten thousand rules that queue held thousands of polls at once.
        kube.watch(config.rules.iter().map(|r| (r.context.as_deref(), &r.target))).await;
        let mut observer = Observer::new();
        let stop_electors = CancellationToken::new();
        let mut electors = Vec::new();
        if config.leader_election.enabled {
            let mut contexts: Vec<Option<String>> = config.rules.iter().map(|r| r.context.clone()).collect();
            contexts.sort();
            contexts.dedup();
            observer.enable_leader_election(contexts.clone());
            let identity = crate::leader::identity();
            for context in contexts {
                let client = match kube.client(context.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                electors.push(crate::leader::Elector {
                    api: kube::Api::namespaced(client, &config.leader_election.namespace),
                    settings: config.leader_election.clone(),
                    identity: identity.clone(),
                    context,
                });
            }
            tracing::info!(%identity, lease = %config.leader_election.lease_name, "leader election on; starting as a standby");
        }
        let observer = Arc::new(observer);
        let election = TaskTracker::new();
        for elector in electors {
            election.spawn(elector.run(observer.clone(), stop_electors.clone()));
        }
        election.close();
        let stop_server = CancellationToken::new();
        if let Some(addr) = config.server.listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, %addr, "cannot listen");
                    eprintln!("error: [server] listen {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
            tokio::spawn(server::serve(listener, observer.clone(), stop_server.clone()));
        }
        tokio::spawn(crate::systemd::run(observer.clone(), stop_server.clone()));
        let deps = Deps {
            queues: Arc::new(Shared::new(Sqs::new(CALL_TIMEOUT).with_fallbacks(observer.sqs_fallbacks()))),
            targets: Arc::new(kube),
            clock: Clock::system(),
            dry_run,
            call_timeout: CALL_TIMEOUT,
            observer,
        };
        let reload_path = path.to_owned();
        let outcome = supervisor::run(config, deps, control, move || config::load_compact(&reload_path), grace).await;
        // Release the leases only once no worker can write any more.
        stop_electors.cancel();
        election.wait().await;
        stop_server.cancel();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "shutdown aborted");
                ExitCode::FAILURE
            }
        }
    })
}

fn status(server: Option<String>, path: &Path) -> ExitCode {
    // Without --server, ask the rule file where the daemon listens; a missing or broken
    // file is no reason to fail here, so fall back to the default address.
    let base = server.unwrap_or_else(|| {
        let listen = config::load(path).ok().and_then(|c| c.server.listen);
        format!("http://{}", listen.map_or_else(|| config::DEFAULT_LISTEN.to_owned(), |a| a.to_string()))
    });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::status::fetch(&base)) {
        Ok(rules) => {
            print!("{}", crate::status::table(&rules));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: daemon unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}
