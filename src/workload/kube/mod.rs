//! The Kubernetes adapter: one client per kube context for the life of the process,
//! built from the kubeconfig the way kubectl resolves it, with credentials that refresh
//! ([`super::auth`]); Deployments and StatefulSets read from watch-backed caches and
//! scaled through their `/scale` subresource with a merge patch.
//!
//! This file holds the client of each context (its credentials, its write budget, its
//! state ConfigMap and Event recorder); [`cache`] the watch-backed caches of the
//! targets; [`writes`] the port's implementation (reads, `/scale` writes, state,
//! Events); [`job_cache`] and [`jobs`] the same for job rules (the watched Jobs and
//! their pods; creating and deleting Jobs); [`access`] the permissions the daemon needs
//! and the access review.

mod access;
mod cache;
mod job_cache;
mod jobs;
mod writes;

pub use access::Access;
use cache::{Cache, Scalable};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::Client;
use kube::api::Api;
use kube::client::ClientBuilder;

use kube::runtime::events::{Recorder, Reporter};

use super::auth::{self, AuthError, AuthLayer, Bearer, ConfigSource, Credentials};
use super::eks::Minter;
use super::error::kube_error;
use super::state::{Running, Sizes, Store};
use super::{FIELD_MANAGER, TargetError, TargetErrorKind};
use crate::config::TargetRef;
use crate::error::chain;
use crate::leader::Leadership;
use crate::sync::lock;

/// The context's write budget: every `/scale` patch and every state write takes a token
/// first, so ten thousand rules can never flood an API server (API Priority and
/// Fairness would then throttle sqscale's own writes).
pub struct WriteLimit(governor::DefaultDirectRateLimiter);

impl WriteLimit {
    /// `qps` writes per second on average, `burst` at once.
    pub fn new(qps: f64, burst: u32) -> WriteLimit {
        let period = Duration::from_secs_f64(1.0 / qps.max(1e-3));
        let burst = std::num::NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = governor::Quota::with_period(period).expect("a positive period").allow_burst(burst);
        WriteLimit(governor::RateLimiter::direct(quota))
    }

    /// Waits for a token.
    pub async fn wait(&self) {
        use governor::clock::Clock;
        while let Err(later) = self.0.check() {
            let clock = governor::clock::DefaultClock::default();
            tokio::time::sleep(later.wait_time_from(clock.now())).await;
        }
    }
}

/// `[kubernetes] eks_cluster`: mint EKS tokens in-process for the default context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EksAuth {
    pub cluster: String,
    /// STS region; `None` takes the SDK's (AWS_REGION, profile).
    pub region: Option<String>,
    pub profile: Option<String>,
}

/// Kubernetes clients, one per context, created on first use and kept: every user of a
/// context (the lease, the watches, reads, writes, events, access reviews) shares its
/// one client, whose credentials refresh in place, so no task ever holds a client that
/// cannot follow a rotated token.
pub struct Kube {
    /// `None`: `$KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    kubeconfig: Option<PathBuf>,
    /// The context of rules that name none; `None` is the current-context.
    default_context: Option<String>,
    eks: Option<EksAuth>,
    /// A minter given by the caller instead of one loaded from `eks` (tests).
    minter: Option<Arc<Minter>>,
    timeout: Duration,
    /// sqscale's own namespace in every cluster: its state ConfigMap lives there.
    state_namespace: String,
    /// `[kubernetes] qps` and `burst`, for each context's [`WriteLimit`].
    qps: f64,
    burst: u32,
    /// The kubeconfig's current-context, read once ("" without a kubeconfig: in-cluster).
    current_context: OnceLock<String>,
    /// Each context's connection, by [`Kube::context_key`]. The map's lock is only held
    /// to find a cell; a connection is made inside its cell, so concurrent first users
    /// of one context make it once and other contexts never wait for it.
    contexts: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Connection>>>>>,
    /// Watch-backed caches of the targets, one per (context, namespace, kind), by
    /// namespace: a poll finds its cache without building a key.
    caches: Mutex<HashMap<String, Vec<Arc<Cache>>>>,
    /// The Jobs and pods of job rules, one cache per (context, namespace), by namespace
    /// ([`jobs`]).
    job_caches: Mutex<HashMap<String, Vec<Arc<job_cache::JobCache>>>>,
    /// Each context's state ConfigMap size, for `/status`.
    state_sizes: Arc<Sizes>,
    /// The rules to keep state for ([`Store::keep`]), by context key, for contexts
    /// whose connection is not made yet: handed to its store when it is.
    keep: Mutex<HashMap<String, (Running, Leadership)>>,
}

/// One context's client, its Event recorder (which folds repeats into a series), its
/// state ConfigMap, its write budget, and the tasks that keep its credentials fresh and
/// write its state.
struct Connection {
    client: Client,
    recorder: Recorder,
    state: Arc<Store>,
    limit: Arc<WriteLimit>,
    _refresher: Option<AbortOnDrop>,
    _writer: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a context has no client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{0}: no Kubernetes client within {within} (kubeconfig, credentials)", within = humantime::format_duration(*.1))]
    Timeout(String, Duration),
    /// The kubeconfig, the EKS settings, or the token they gave.
    #[error(transparent)]
    Config(#[from] AuthError),
    /// The context's first bearer token (`.0` names the context).
    #[error("{0}")]
    Credential(String, #[source] AuthError),
    #[error("building the Kubernetes client")]
    Spawn(#[source] tokio::task::JoinError),
    #[error("building the Kubernetes client for {0}")]
    Build(String, #[source] kube::Error),
}

impl KubeError {
    pub fn kind(&self) -> TargetErrorKind {
        match self {
            KubeError::Timeout(..) => TargetErrorKind::Timeout,
            _ => TargetErrorKind::Config,
        }
    }

    /// This failure as the failure of a call about `t`.
    fn at(self, t: &(impl std::fmt::Display + ?Sized)) -> TargetError {
        TargetError::new(t.to_string(), self.kind(), chain(&self)).caused_by(self)
    }
}

impl Kube {
    pub fn new(kubeconfig: Option<PathBuf>, default_context: Option<String>, timeout: Duration) -> Kube {
        Kube {
            kubeconfig,
            default_context,
            eks: None,
            minter: None,
            timeout,
            state_namespace: crate::config::DEFAULT_NAMESPACE.to_owned(),
            qps: crate::config::DEFAULT_QPS,
            burst: crate::config::DEFAULT_BURST,
            current_context: OnceLock::new(),
            contexts: Default::default(),
            caches: Default::default(),
            job_caches: Default::default(),
            state_sizes: Default::default(),
            keep: Default::default(),
        }
    }

    /// Reports each context's state ConfigMap size to `sizes` (the observer's, for
    /// `/status`).
    pub fn with_state_sizes(mut self, sizes: Arc<Sizes>) -> Kube {
        self.state_sizes = sizes;
        self
    }

    /// The rules now running, and per context whether this instance may write there:
    /// the stored state of targets none of them names goes (see [`Store::keep`]). For a
    /// context without a connection yet, when its connection is made.
    pub fn keep_state(&self, rules: &Running, lead: &dyn Fn(Option<&str>) -> Leadership) {
        let mut contexts: Vec<Option<&str>> = rules.iter().map(|r| r.context.as_deref()).collect();
        contexts.sort_unstable();
        contexts.dedup();
        // Held throughout: a context whose connection is being made either is seen
        // made here, or finds what is left here once it is (see [`Kube::connection`]);
        // and an older set left for it never comes after a newer one.
        let mut pending = lock(&self.keep);
        for context in contexts {
            let key = self.context_key(context);
            let cell = lock(&self.contexts).get(key).cloned();
            match cell.as_ref().and_then(|c| c.get()) {
                Some(connection) => {
                    pending.remove(key);
                    connection.state.keep(rules.clone(), lead(context));
                }
                None => {
                    pending.insert(key.to_owned(), (rules.clone(), lead(context)));
                }
            }
        }
    }

    /// Authenticates the default context with tokens minted from the AWS credentials
    /// instead of the kubeconfig's user (which usually runs `aws eks get-token`).
    pub fn with_eks(mut self, eks: Option<EksAuth>) -> Kube {
        self.eks = eks;
        self
    }

    /// Authenticates the default context with tokens from `minter` (tests give one with
    /// fixed credentials and a short lifetime).
    pub fn with_minter(mut self, minter: Minter) -> Kube {
        self.minter = Some(Arc::new(minter));
        self
    }

    /// Keeps the state ConfigMap in `namespace` (sqscale's own: `[leader_election]
    /// namespace`).
    pub fn with_state_namespace(mut self, namespace: &str) -> Kube {
        self.state_namespace = namespace.to_owned();
        self
    }

    /// The adapter for a rule file's `[kubernetes]` and `[aws]` settings; `kubeconfig`
    /// (the `--kubeconfig` flag) wins over `[kubernetes] kubeconfig`.
    pub fn from_settings(
        k: &crate::config::KubernetesSettings,
        aws: &crate::config::AwsSettings,
        kubeconfig: Option<PathBuf>,
        timeout: Duration,
    ) -> Kube {
        let eks = k.eks_cluster.clone().map(|cluster| EksAuth {
            cluster,
            region: aws.region.clone(),
            profile: aws.profile.clone(),
        });
        let mut kube = Kube::new(kubeconfig.or_else(|| k.kubeconfig.clone()), k.context.clone(), timeout).with_eks(eks);
        (kube.qps, kube.burst) = (k.qps, k.burst);
        kube
    }

    /// The adapter for a whole rule file: [`Kube::from_settings`], with the state kept in
    /// `[leader_election] namespace`.
    pub fn from_config(config: &crate::config::Config, kubeconfig: Option<PathBuf>, timeout: Duration) -> Kube {
        Kube::from_settings(&config.kubernetes, &config.aws, kubeconfig, timeout)
            .with_state_namespace(&config.leader_election.namespace)
    }

    /// The name a context is kept under: a rule's `context`, else `[kubernetes]
    /// context`, else the kubeconfig's current-context ("" when there is none, as in a
    /// cluster). So a rule that names the default context explicitly shares its client,
    /// caches and lease with the rules that name none.
    pub fn context_key<'a>(&'a self, context: Option<&'a str>) -> &'a str {
        match context.or(self.default_context.as_deref()) {
            Some(c) => c,
            None => self
                .current_context
                .get_or_init(|| auth::current_context(self.kubeconfig.as_deref()).unwrap_or_default()),
        }
    }

    /// The stored state of `context` is read again before its next use: another
    /// instance may have written it (called when this one starts to lead).
    pub fn reread_state(&self, context: Option<&str>) {
        let cell = lock(&self.contexts).get(self.context_key(context)).cloned();
        if let Some(connection) = cell.as_ref().and_then(|c| c.get()) {
            connection.state.reread();
        }
    }

    /// The client for `context` (`None`: the default context), built on first use.
    pub async fn client(&self, context: Option<&str>) -> Result<Client, KubeError> {
        self.connection(context).await.map(|c| c.client.clone())
    }

    async fn connection(&self, context: Option<&str>) -> Result<Arc<Connection>, KubeError> {
        let key = self.context_key(context);
        let cell = lock(&self.contexts).entry(key.to_owned()).or_default().clone();
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        // Boxed inside the closure: an async block is as large as its largest state even
        // before it starts, and connecting is a large future, taken once per context;
        // built outside, it would sit inline in every read's future.
        let connect = || {
            Box::pin(async move {
                match tokio::time::timeout(self.timeout, self.connect(key)).await {
                    Ok(connected) => connected.map(Arc::new),
                    Err(_) => Err(KubeError::Timeout(display_context(key), self.timeout)),
                }
            })
        };
        let connection = cell.get_or_try_init(connect).await.cloned()?;
        // `keep_state` may have left the rules for this context while it was being made
        // (after `connection_of` looked): hand them over now. Only on this slow path,
        // taken while a context is first connected.
        let mut pending = lock(&self.keep);
        if let Some((rules, lead)) = pending.remove(key) {
            connection.state.keep(rules, lead);
        }
        drop(pending);
        Ok(connection)
    }

    /// Builds the client of the context kept under `key`.
    async fn connect(&self, key: &str) -> Result<Connection, KubeError> {
        let source =
            ConfigSource { kubeconfig: self.kubeconfig.clone(), context: (!key.is_empty()).then(|| key.to_owned()) };
        let mut config = source.load().await?;
        // Watches hold their request open for minutes: no read timeout. Every call has
        // its own deadline instead ([`Kube::call`]).
        config.read_timeout = None;
        config.connect_timeout = Some(self.timeout);
        let eks = key == self.context_key(None) && (self.eks.is_some() || self.minter.is_some());
        let bearer = if eks {
            let minter = match (&self.minter, &self.eks) {
                (Some(m), _) => m.clone(),
                (None, Some(e)) => Arc::new(
                    Minter::load(&e.cluster, e.region.as_deref(), e.profile.as_deref())
                        .await
                        .map_err(AuthError::from)?,
                ),
                (None, None) => unreachable!("eks is set"),
            };
            Some(Bearer::Eks(minter))
        } else if auth::takes_over(&config.auth_info) {
            Some(Bearer::Kubeconfig(source))
        } else {
            None
        };
        let mut credentials = None;
        let mut refresher = None;
        if let Some(bearer) = bearer {
            let token = bearer
                .fetch_with(Some(&config), self.timeout)
                .await
                .map_err(|e| KubeError::Credential(display_context(key), e))?;
            let cell = Arc::new(Credentials::new(display_context(key)));
            cell.set(&token.value)?;
            auth::strip(&mut config.auth_info);
            let task = tokio::spawn(auth::refresh(cell.clone(), bearer, token, self.timeout));
            refresher = Some(AbortOnDrop(task));
            credentials = Some(cell);
        }
        // Loading root certificates is blocking work; keep it off the runtime.
        let client = tokio::task::spawn_blocking(move || {
            let builder = ClientBuilder::try_from(config)?;
            Ok::<_, kube::Error>(match credentials {
                Some(c) => builder.with_layer(&AuthLayer(c)).build(),
                None => builder.build(),
            })
        })
        .await
        .map_err(KubeError::Spawn)?
        .map_err(|e| KubeError::Build(display_context(key), e))?;
        Ok(self.connection_of(key, client, refresher))
    }

    /// The connection around a built client: its Event recorder, state ConfigMap, write
    /// budget and state writer.
    fn connection_of(&self, key: &str, client: Client, refresher: Option<AbortOnDrop>) -> Connection {
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        let state = Store::new(
            Api::namespaced(client.clone(), &self.state_namespace),
            &self.state_namespace,
            self.timeout,
            key,
            self.state_sizes.clone(),
        );
        if let Some((rules, lead)) = lock(&self.keep).remove(key) {
            state.keep(rules, lead);
        }
        let limit = Arc::new(WriteLimit::new(self.qps, self.burst));
        let writer = AbortOnDrop(tokio::spawn(state.clone().write_loop(limit.clone())));
        Connection { client, recorder, state, limit, _refresher: refresher, _writer: writer }
    }

    /// An adapter whose default context (`test`) is served by `client`: unit tests give a
    /// client over a mock service and answer each request themselves.
    #[cfg(test)]
    pub(crate) fn with_client(client: Client, timeout: Duration) -> Kube {
        let kube = Kube::new(None, Some("test".to_owned()), timeout);
        let connection = Arc::new(kube.connection_of("test", client, None));
        let cell = Arc::new(tokio::sync::OnceCell::new_with(Some(connection)));
        lock(&kube.contexts).insert("test".to_owned(), cell);
        kube
    }

    async fn api(&self, context: Option<&str>, t: &TargetRef) -> Result<Api<Scalable>, TargetError> {
        let client = self.connection(context).await.map_err(|e| e.at(t))?.client.clone();
        Ok(Api::namespaced_with(client, &t.namespace, &t.kind))
    }

    /// Runs a call under the adapter's timeout, mapping errors to [`TargetError`]. (A 401
    /// has already woken the context's credential refresher: see [`super::auth`].)
    async fn call<T>(
        &self,
        t: &(impl std::fmt::Display + ?Sized),
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        self.call_within(self.timeout, t, what, fut).await
    }

    /// [`Kube::call`] with what is left of a deadline.
    async fn call_within<T>(
        &self,
        within: Duration,
        t: &(impl std::fmt::Display + ?Sized),
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(within, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(kube_error(t, what, e)),
            Err(_) => Err(TargetError::new(
                t.to_string(),
                TargetErrorKind::Timeout,
                format!("{what}: no answer within {}s", self.timeout.as_secs_f64()),
            )),
        }
    }
}

fn display_context(key: &str) -> String {
    if key.is_empty() { "the in-cluster context".to_owned() } else { format!("kube context {key:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget lets `burst` writes go at once and then holds the next one back (at
    /// 0.5 a second, for two seconds: far more than this test takes to ask).
    #[tokio::test]
    async fn the_write_budget_holds_writes_beyond_the_burst() {
        let limit = WriteLimit::new(0.5, 2);
        assert!(limit.0.check().is_ok() && limit.0.check().is_ok());
        assert!(limit.0.check().is_err(), "a third write within the burst's second");
        // `wait` returns at once while a token is there.
        let fresh = WriteLimit::new(0.5, 1);
        assert!(futures::FutureExt::now_or_never(fresh.wait()).is_some());
        assert!(futures::FutureExt::now_or_never(fresh.wait()).is_none(), "the second waits");
    }
}
