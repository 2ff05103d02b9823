//! sqscale: KEDA's `aws-sqs-queue` scaling, from outside the cluster.
//!
//! One process reads a TOML rule file, polls each SQS queue's attributes on its rule's
//! polling interval, runs KEDA's activation and cooldown state machine and the HPA's
//! replica arithmetic, and patches the `/scale` subresource of Deployments and
//! StatefulSets over a kubeconfig. Nothing is installed in the cluster.
//!
//! # Layout
//!
//! - [`config`]: the rule file. `raw` mirrors the TOML; `validate` turns it into
//!   [`config::Config`], collecting every problem with its rule and key;
//!   `insecure` names the settings that expose something (`check` and `run` warn).
//! - [`engine`]: the decision engine, a pure function of (policy, state, observation,
//!   now). No I/O, no clock reads, no logging. `engine::hpa` is the HPA's arithmetic.
//! - [`simulate`]: replays a queue-length trace through the engine on a virtual clock
//!   (`sqscale simulate`), and draws the chart.
//! - [`import`]: `sqscale import-keda`, KEDA ScaledObjects to rules (a pure core; the
//!   command reads files or the cluster).
//! - [`cli`]: the command line; `main.rs` only calls it.
//! - [`proxy`]: outbound HTTP proxies from the environment, for the AWS SDK's clients
//!   and the direct SQS path.
//!
//! Data flows one way: config -> engine policy; observation -> engine -> decision; the
//! callers (simulate, the daemon) own all I/O and time.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod import;
pub mod leader;
pub mod proxy;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod source;
pub mod status;
pub mod supervisor;
mod sync;
pub mod systemd;
pub mod target;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod worker;
