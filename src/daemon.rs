//! The composition root of `sqscale run`: builds the adapters, the observer, the
//! electors and the HTTP server from a validated [`Config`], runs the supervisor until
//! it has drained, then stops the helpers. [`run`] takes its control messages as a
//! channel, as mini-redis's `server::run` takes its shutdown future: `cli` passes the
//! signals ([`crate::signals::forward`]), a test can pass its own sender.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::signals::Control;
use crate::source::{Shared, sqs::Sqs};
use crate::status::Observer;
use crate::supervisor::{self, Aborted};
use crate::worker::{Clock, Deps};
use crate::workload::kube::{Kube, KubeError};

/// Bound on every remote call of a poll (SQS, Kubernetes).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the HTTP server may take to finish its answers after the drain.
const HELPERS_GRACE: Duration = Duration::from_secs(2);

/// What `sqscale run` was told besides the rule file.
#[derive(Clone, Debug)]
pub struct Options {
    /// The rule file, read again on every [`Control::Reload`].
    pub config_path: PathBuf,
    /// `--kubeconfig`: instead of `[kubernetes] kubeconfig`, `$KUBECONFIG` or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// Decide and log, never write.
    pub dry_run: bool,
    /// How long polls in flight may take to finish after the first shutdown.
    pub shutdown_grace: Duration,
}

/// Why the daemon stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A context's client could not be built at start-up: a broken kubeconfig is a
    /// start-up error, not a warning on every poll.
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    /// `[server] listen` could not be bound.
    #[error("[server] listen {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The drain did not finish: a second shutdown, or the grace period ran out.
    #[error(transparent)]
    Aborted(#[from] Aborted),
}

/// Runs the daemon on `config` until `control` asks it to shut down (or closes) and
/// every worker has drained.
///
/// # Errors
///
/// A start-up failure ([`Error::Kubernetes`], [`Error::Listen`]) before any worker
/// runs, or [`Error::Aborted`] when the drain was cut short.
pub async fn run(config: Config, options: Options, control: mpsc::Receiver<Control>) -> Result<(), Error> {
    let Options { config_path, kubeconfig, dry_run, shutdown_grace } = options;
    let mut observer = Observer::new();
    let kube = Kube::from_config(&config, kubeconfig, CALL_TIMEOUT).with_state_sizes(observer.state_sizes());
    let mut config = config;
    name_contexts(&mut config, &kube);
    // Build every context's client now: a broken kubeconfig is a start-up error,
    // not a warning on every poll.
    let mut contexts: Vec<Option<&str>> = config.rules.iter().map(|r| r.context.as_deref()).collect();
    contexts.extend(config.jobs.iter().map(|j| j.context.as_deref()));
    contexts.sort_unstable();
    contexts.dedup();
    for context in contexts {
        kube.client(context).await?;
    }
    // Start the targets' watches and wait for their first lists (at most the call
    // timeout), so the first polls read the caches instead of queueing behind the
    // lists: at ten thousand rules that queue held thousands of polls at once.
    kube.watch(config.rules.iter().map(|r| (r.context.as_deref(), &r.target))).await;
    let kube = Arc::new(kube);
    let identity = config.leader_election.enabled.then(crate::leader::identity);
    if let Some(identity) = &identity {
        let le = &config.leader_election;
        observer.enable_leader_election(identity, le.standby);
        tracing::info!(%identity, lease = %le.lease_name, namespace = %le.namespace, standby = le.standby.as_str(), "leader election on; starting as a standby");
    }
    let observer = Arc::new(observer);
    let leader = identity.map(|identity| {
        crate::leader::Electors::new(config.leader_election.clone(), identity, kube.clone(), observer.clone())
    });
    // The HTTP server and the sd_notify task run until the daemon has drained (so
    // /healthz answers during the drain), then stop; see the end of this function.
    let stop_server = CancellationToken::new();
    let helpers = TaskTracker::new();
    if let Some(addr) = config.server.listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, source })?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
        helpers.spawn(crate::server::serve(listener, observer.clone(), stop_server.clone()));
    }
    helpers.spawn(crate::systemd::run(observer.clone(), stop_server.clone()));
    helpers.close();
    let named_by = kube.clone();
    let deps = Deps {
        queues: Arc::new(Shared::new(Sqs::new(CALL_TIMEOUT).with_fallbacks(observer.sqs_fallbacks()))),
        targets: kube,
        clock: Clock::system(),
        dry_run,
        call_timeout: CALL_TIMEOUT,
        observer,
    };
    let load = move || {
        config::load_compact(&config_path).map(|mut c| {
            name_contexts(&mut c, &named_by);
            // As at start (cli::run): a reload may bring a new pairing.
            for warning in config::job_warnings(&c.jobs) {
                tracing::warn!("job rule: {warning}");
            }
            c
        })
    };
    // The supervisor stops the electors after the drain: a lease is handed back
    // only when no worker can write any more.
    let outcome = supervisor::run_electing(config, deps, leader, control, load, shutdown_grace).await;
    stop_server.cancel();
    // Open connections get a moment to finish their answers; then they are cut.
    if tokio::time::timeout(HELPERS_GRACE, helpers.wait()).await.is_err() {
        tracing::warn!("the HTTP server did not stop within {HELPERS_GRACE:?}; closing its connections");
    }
    Ok(outcome?)
}

/// Gives every rule and job rule its kube context by name (`[kubernetes] context`, else the
/// kubeconfig's current-context; `None` only in a cluster without a kubeconfig), so a rule
/// that names the default context and a rule that names none share one client, one
/// watch per namespace and kind, and one elector on the Lease.
fn name_contexts(config: &mut Config, kube: &Kube) {
    for rule in &mut config.rules {
        let name = kube.context_key(rule.context.as_deref());
        rule.context = (!name.is_empty()).then(|| name.to_owned());
    }
    for rule in &mut config.jobs {
        let name = kube.context_key(rule.context.as_deref());
        rule.context = (!name.is_empty()).then(|| name.to_owned());
    }
}
