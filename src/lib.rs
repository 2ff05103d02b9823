//! sqscale: KEDA's `aws-sqs-queue` scaling, from outside the cluster.
//!
//! One process reads a TOML rule file, polls each SQS queue's attributes on its rule's
//! polling interval, runs KEDA's activation and cooldown state machine and the HPA's
//! replica arithmetic, and patches the `/scale` subresource of Deployments and
//! StatefulSets over a kubeconfig. Nothing is installed in the cluster.
//!
//! # Layout
//!
//! - [`cli`]: the commands: parses arguments, runs one, maps its outcome to an exit code.
//! - [`daemon`]: the composition root of `sqscale run`: adapters, observer, electors,
//!   server, then the supervisor until it has drained.
//! - [`config`]: the rule file: `raw` mirrors the TOML, `validate` collects every problem
//!   with its rule and key into a [`config::Config`], `insecure` names exposing settings.
//! - [`engine`]: the pure decision engine (KEDA's phase, `engine::hpa` the HPA's
//!   arithmetic): no I/O, no clock reads, no logging.
//! - [`simulate`]: replays a queue-length trace through the engine on a virtual clock;
//!   `simulate::jobs` runs a job rule's Jobs in a virtual cluster, `simulate::chart`
//!   draws it.
//! - [`import`]: `sqscale import-keda`, KEDA ScaledObjects to rules: a pure core,
//!   `command` reads files or the cluster, `diff` compares with an existing file.
//! - [`supervisor`]: one worker per rule and one task per job rule, reloads applied as
//!   a diff (of both kinds), the drain on shutdown.
//! - [`worker`]: one task per rule: read the target and the queues, decide, write.
//! - [`job_worker`]: one task per job rule: read the queues and one snapshot of its
//!   Jobs, decide, create Jobs, clean up the history; the rollout of a changed template.
//! - [`leader`]: Lease election per kube context. Each context's elector publishes on a
//!   `watch` channel; every worker holds its context's [`leader::Leadership`] and writes
//!   only within what it last said.
//! - [`signals`]: the only place that knows Unix signals; turns them into `Control`.
//! - [`source`]: the queue port and shared reads; `sqs` the AWS adapter, `direct` its
//!   hot path, `wire` the `GetQueueAttributes` format both use.
//! - [`workload`]: the target port; `kube` the Kubernetes adapter (its client per
//!   context, `kube::cache` the watch-backed caches, `kube::writes` the port's reads and
//!   writes, `kube::job_cache` and `kube::jobs` the job rules' watched Jobs and pods and
//!   their creates and deletes, `kube::access` the permissions and the access review),
//!   `jobs` the job rules' port, `auth` refreshing
//!   bearer tokens, `eks` EKS tokens, `state` the last-active ConfigMap, `error` the
//!   port's error and how kube errors are classified.
//! - [`status`]: each rule's and job rule's record (`status::jobs`), readiness and
//!   health; `status::metrics` the
//!   Prometheus side, `status::leadership` the election as `/status` and
//!   `sqscale_is_leader` show it, `status::client` the `sqscale status` and `sqscale health` client.
//! - [`server`]: the HTTP listener for `/metrics`, `/healthz`, `/readyz` and `/status`.
//! - [`systemd`]: sd_notify readiness, reloads, stopping and the watchdog.
//! - [`telemetry`]: logging (`SQSCALE_LOG`, plain or JSON).
//! - [`proxy`]: outbound HTTP proxies from the environment, for every AWS connection.
//! - [`group`]: the groups' ledger: what each member of a `[[group]]` runs and wants,
//!   so a scale-up is granted only from the group's free capacity.
//! - [`error`]: renders an error's chain once, and finds typed causes in it.
//! - `sync`: the lock helper for std mutexes that guard plain maps.
//! - `testing` (unit tests only): an independent SigV4 computation and a scripted
//!   HTTP server.
//!
//! Data flows one way: config -> engine policy; observation -> engine -> decision; the
//! callers (simulate, the daemon) own all I/O and time.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod group;
pub mod import;
pub mod job_worker;
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
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod worker;
pub mod workload;
