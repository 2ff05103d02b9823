//! Logging: tracing-subscriber with an `SQSCALE_LOG` filter (EnvFilter syntax, default
//! `info`) and a plain or JSON format. In JSON every line carries its span fields, so
//! each line names its rule.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The log format; `auto` is plain on a terminal and JSON otherwise (journald, docker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Plain,
    Json,
}

/// The default filter keeps the AWS SDK and hyper quiet unless asked.
const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,hyper=warn,kube_client=warn";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("SQSCALE_LOG ({0:?})")]
    Filter(String, #[source] tracing_subscriber::filter::ParseError),
    #[error("installing the log subscriber")]
    Install(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match std::env::var("SQSCALE_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec)
            .map_err(|e| TelemetryError::Filter(spec.clone(), e))?
            // aws_sigv4 logs canonical requests at trace, presigned query (session
            // token, credential scope) included: never let a filter turn that on.
            .add_directive("aws_sigv4=info".parse().expect("a constant, valid directive")),
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Plain => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr).with_span_list(true).with_current_span(false))
            .try_init()
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal())).try_init()
    };
    result.map_err(TelemetryError::Install)
}
