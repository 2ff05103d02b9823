//! The command line: argument parsing, and mapping every outcome to an exit code.
//!
//! Exit codes follow sysexits(3), as the contract fixes them: 0 success, 64 bad usage,
//! 65 bad input data (a trace), 78 bad configuration, 1 anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::simulate;

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "sqscale",
    version,
    about = "Queue-driven autoscaling for Kubernetes from outside the cluster"
)]
struct Cli {
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
    /// Validate the rule file and print every rule with its defaults filled in.
    Check {
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
        Command::Check { config } => check(&config.config),
        Command::Simulate {
            config,
            trace,
            rule,
            until,
            initial_replicas,
            chart,
        } => simulate(
            &config.config,
            &trace,
            rule.as_deref(),
            until,
            initial_replicas,
            chart.as_deref(),
        ),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print!("{}", config.resolved_toml());
    eprintln!(
        "{}: ok, {} rule{}",
        path.display(),
        config.rules.len(),
        if config.rules.len() == 1 { "" } else { "s" }
    );
    ExitCode::SUCCESS
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
    let rules: Vec<_> = config
        .rules
        .iter()
        .filter(|r| rule.is_none_or(|n| r.name == n))
        .collect();
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
    let options = simulate::Options {
        until: until.map(|u| crate::engine::Time((u * 1000.0).round() as i64)),
        initial_replicas,
    };
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
        let written = simulate::chart::render(&rows)
            .and_then(|svg| std::fs::write(out, svg).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("error: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
