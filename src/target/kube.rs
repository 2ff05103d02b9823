//! The Kubernetes adapter: one client per kube context for the life of the process,
//! built from the kubeconfig the way kubectl resolves it, with credentials that refresh
//! ([`super::auth`]); Deployments and StatefulSets read from watch-backed caches and
//! scaled through their `/scale` subresource with a merge patch.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::client::ClientBuilder;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::auth::{self, AuthLayer, Bearer, ConfigSource, Credentials};
use super::eks::Minter;
use super::state::Store;
use super::{FIELD_MANAGER, ScaleTarget, TargetError, TargetEvent, TargetView, count, view_of};
use crate::config::{TargetKind, TargetRef};
use crate::engine::Time;
use crate::source::lock;

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
struct Unconnected {
    timeout: bool,
    message: String,
}

impl Unconnected {
    fn at(self, t: &TargetRef) -> TargetError {
        let kind = if self.timeout { "timeout" } else { "config" };
        TargetError { target: t.to_string(), kind, message: self.message }
    }
}

/// A Deployment or StatefulSet as sqscale reads it. Deserializing into this skips
/// everything else (pod templates, conditions), so the watch's list of ten thousand
/// targets never holds them.
#[derive(Clone, Debug, serde::Deserialize)]
struct Scalable {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<Replicas>,
    #[serde(default)]
    status: Option<Replicas>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct Replicas {
    #[serde(default)]
    replicas: serde_json::Value,
}

impl kube::Resource for Scalable {
    /// The kind is all that varies: both are `apps/v1`.
    type DynamicType = TargetKind;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(kind: &TargetKind) -> Cow<'_, str> {
        kind.as_str().into()
    }
    fn group(_: &TargetKind) -> Cow<'_, str> {
        "apps".into()
    }
    fn version(_: &TargetKind) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(kind: &TargetKind) -> Cow<'_, str> {
        kind.plural().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the cache keeps of one target: what a poll reads, nothing else.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    replicas: Option<u32>,
    status_replicas: Option<u32>,
    resource_version: Option<Arc<str>>,
    /// The `sqscale.io/` annotations only (usually none, and then no allocation).
    annotations: Vec<(String, String)>,
}

impl Seen {
    /// The object's name and what the cache keeps of it.
    fn of(obj: Scalable) -> (String, Seen) {
        let meta = obj.metadata;
        let annotations =
            meta.annotations.unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with("sqscale.io/"));
        let seen = Seen {
            replicas: obj.spec.and_then(|s| count(&s.replicas)),
            status_replicas: obj.status.and_then(|s| count(&s.replicas)),
            resource_version: meta.resource_version.map(Arc::from),
            annotations: annotations.collect(),
        };
        (meta.name.unwrap_or_default(), seen)
    }

    fn view(&self) -> TargetView {
        let annotation = |k: &str| self.annotations.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
        view_of(self.replicas, self.status_replicas, annotation, self.resource_version.clone())
    }
}

/// The targets of one kind in one namespace, kept current by a watch: reads cost no
/// API call, so an idle round makes none.
///
/// The watch is kube's `watcher` (list, then watch, resuming and relisting as the API
/// server requires); its events are applied here the way kube's reflector applies them
/// to its store (a relist replaces the whole map at `InitDone`), but into a map of
/// [`Seen`]: about a tenth of the memory of a store of objects.
struct Cache {
    /// The context's key ([`Kube::context_key`]).
    context: String,
    kind: TargetKind,
    targets: Arc<Mutex<HashMap<String, Seen>>>,
    /// True once the initial list is in, false again while the watch is failing
    /// (reads then go to the API server, which reports the real error).
    ready: Arc<AtomicBool>,
    /// True once the first list has succeeded or failed. Until then reads wait for it
    /// instead of each making a GET: at start-up thousands of rules would otherwise
    /// open a connection each while the list is in flight.
    settled: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cache {
    fn start(api: Api<Scalable>, context: String, kind: TargetKind) -> Cache {
        let targets: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let ready = Arc::new(AtomicBool::new(false));
        let (settle, settled) = tokio::sync::watch::channel(false);
        let events = watcher(api, watcher::Config::default()).default_backoff();
        let (map, flag) = (targets.clone(), ready.clone());
        let task = tokio::spawn(async move {
            let mut listed = false;
            // A (re)list in progress: it replaces the map when complete.
            let mut listing: Option<HashMap<String, Seen>> = None;
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
                    Ok(watcher::Event::InitApply(obj)) => {
                        let (name, seen) = Seen::of(obj);
                        listing.get_or_insert_default().insert(name, seen);
                    }
                    Ok(watcher::Event::InitDone) => {
                        *lock(&map) = listing.take().unwrap_or_default();
                        listed = true;
                        flag.store(true, Ordering::SeqCst);
                        settle.send_replace(true);
                    }
                    Ok(watcher::Event::Apply(obj)) => {
                        let (name, seen) = Seen::of(obj);
                        lock(&map).insert(name, seen);
                        flag.store(listed, Ordering::SeqCst);
                    }
                    Ok(watcher::Event::Delete(obj)) => {
                        lock(&map).remove(obj.metadata.name.as_deref().unwrap_or_default());
                        flag.store(listed, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "target watch failed; reading directly until it recovers");
                        flag.store(false, Ordering::SeqCst);
                        settle.send_replace(true);
                    }
                }
            }
        });
        Cache { context, kind, targets, ready, settled, task }
    }

    /// Waits (at most `timeout`) for the first list to succeed or fail.
    async fn settle(&self, timeout: Duration) {
        let mut settled = self.settled.clone();
        let _ = tokio::time::timeout(timeout, settled.wait_for(|s| *s)).await;
    }

    fn get(&self, name: &str) -> Option<TargetView> {
        lock(&self.targets).get(name).map(Seen::view)
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
    pub async fn client(&self, context: Option<&str>) -> Result<Client, String> {
        self.connection(context).await.map(|c| c.client.clone()).map_err(|e| e.message)
    }

    async fn connection(&self, context: Option<&str>) -> Result<Arc<Connection>, Unconnected> {
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
                    Err(_) => Err(Unconnected {
                        timeout: true,
                        message: format!(
                            "{}: no Kubernetes client within {} (kubeconfig, credentials)",
                            display_context(key),
                            humantime::format_duration(self.timeout)
                        ),
                    }),
                }
            })
        };
        cell.get_or_try_init(connect).await.cloned()
    }

    /// Builds the client of the context kept under `key`.
    async fn connect(&self, key: &str) -> Result<Connection, Unconnected> {
        let failed = |message: String| Unconnected { timeout: false, message };
        let source =
            ConfigSource { kubeconfig: self.kubeconfig.clone(), context: (!key.is_empty()).then(|| key.to_owned()) };
        let mut config = source.load().await.map_err(failed)?;
        // Watches hold their request open for minutes: no read timeout. Every call has
        // its own deadline instead ([`Kube::call`]).
        config.read_timeout = None;
        config.connect_timeout = Some(self.timeout);
        let eks = key == self.context_key(None) && (self.eks.is_some() || self.minter.is_some());
        let bearer = if eks {
            let minter = match (&self.minter, &self.eks) {
                (Some(m), _) => m.clone(),
                (None, Some(e)) => {
                    Arc::new(Minter::load(&e.cluster, e.region.as_deref(), e.profile.as_deref()).await.map_err(failed)?)
                }
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
            let token =
                bearer.fetch(self.timeout).await.map_err(|e| failed(format!("{}: {e}", display_context(key))))?;
            let cell = Arc::new(Credentials::new(display_context(key)));
            cell.set(&token.value).map_err(failed)?;
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
        .map_err(|e| failed(format!("building the Kubernetes client: {e}")))?
        .map_err(|e| failed(format!("building the Kubernetes client for {}: {e}", display_context(key))))?;
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        let state =
            Store::new(Api::namespaced(client.clone(), &self.state_namespace), &self.state_namespace, self.timeout);
        let limit = Arc::new(WriteLimit::new(self.qps, self.burst));
        let writer = AbortOnDrop(tokio::spawn(state.clone().write_loop(limit.clone())));
        Ok(Connection { client, recorder, state, limit, _refresher: refresher, _writer: writer })
    }

    async fn api(&self, context: Option<&str>, t: &TargetRef) -> Result<Api<Scalable>, TargetError> {
        let client = self.connection(context).await.map_err(|e| e.at(t))?.client.clone();
        Ok(Api::namespaced_with(client, &t.namespace, &t.kind))
    }

    /// The running cache of `t`'s namespace and kind, if there is one.
    fn cached(&self, context: Option<&str>, t: &TargetRef) -> Option<Arc<Cache>> {
        let context = self.context_key(context);
        let caches = lock(&self.caches);
        caches.get(&t.namespace)?.iter().find(|c| c.kind == t.kind && c.context == context).cloned()
    }

    /// The cache of `t`'s namespace and kind, started on first use.
    async fn cache(&self, context: Option<&str>, t: &TargetRef) -> Result<Arc<Cache>, TargetError> {
        if let Some(c) = self.cached(context, t) {
            return Ok(c);
        }
        let api = self.api(context, t).await?;
        // Another poll may have started it meanwhile.
        if let Some(c) = self.cached(context, t) {
            return Ok(c);
        }
        let cache = Arc::new(Cache::start(api, self.context_key(context).to_owned(), t.kind));
        lock(&self.caches).entry(t.namespace.clone()).or_default().push(cache.clone());
        Ok(cache)
    }

    /// Starts the watch of each (context, namespace, kind) of `targets` and waits for
    /// their first lists, each at most the call timeout. Failures are left to the polls
    /// to report.
    pub async fn watch<'a>(&self, targets: impl IntoIterator<Item = (Option<&'a str>, &'a TargetRef)>) {
        let mut started = Vec::new();
        for (context, t) in targets {
            if self.cached(context, t).is_none()
                && let Ok(cache) = self.cache(context, t).await
            {
                started.push(cache);
            }
        }
        futures::future::join_all(started.iter().map(|c| c.settle(self.timeout))).await;
    }

    /// The target as the watch cache has it (the API server's answer while the watch is
    /// failing), without the stored state.
    async fn read_target(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let cache = match self.cached(context, t) {
            Some(c) => c,
            // Boxed, like every rare path here: building a client is a large future,
            // and a poll's future is allocated whole when the poll starts.
            None => Box::pin(self.cache(context, t)).await?,
        };
        // One deadline for the whole read: waiting for the first list and then asking the
        // API server directly must not add up to two timeouts against a dead endpoint.
        let deadline = tokio::time::Instant::now() + self.timeout;
        if !cache.ready.load(Ordering::SeqCst) {
            cache.settle(self.timeout).await;
        }
        if cache.ready.load(Ordering::SeqCst) {
            return cache.get(&t.name).ok_or_else(|| TargetError {
                target: t.to_string(),
                kind: "not_found",
                message: format!("{} {:?} not found in namespace {:?}", t.kind.plural(), t.name, t.namespace),
            });
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Box::pin(self.read_directly(context, t, &cache, left)).await
    }

    /// Takes the stored last-active into `view` when it is newer than the annotation an
    /// older sqscale left on the target (read, never written again).
    async fn add_state(&self, context: Option<&str>, t: &TargetRef, view: &mut TargetView) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        let stored = Box::pin(connection.state.get(t)).await.map_err(|message| TargetError {
            target: t.to_string(),
            kind: "state",
            message,
        })?;
        view.last_active = view.last_active.max(stored);
        view.stored_last_active = stored;
        Ok(())
    }

    /// Reads the target from the API server (while its watch is failing).
    async fn read_directly(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        cache: &Cache,
        within: Duration,
    ) -> Result<TargetView, TargetError> {
        let api = self.api(context, t).await?;
        let (_, seen) = Seen::of(self.call_within(within, t, "reading the target", api.get(&t.name)).await?);
        // The watch resumed without a change since: the cache holds this very version.
        if lock(&cache.targets).get(&t.name).is_some_and(|c| c.resource_version == seen.resource_version) {
            cache.ready.store(true, Ordering::SeqCst);
        }
        Ok(seen.view())
    }

    /// Runs a call under the adapter's timeout, mapping errors to [`TargetError`]. (A 401
    /// has already woken the context's credential refresher: see [`super::auth`].)
    async fn call<T>(
        &self,
        t: &TargetRef,
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        self.call_within(self.timeout, t, what, fut).await
    }

    /// [`Kube::call`] with what is left of a deadline.
    async fn call_within<T>(
        &self,
        within: Duration,
        t: &TargetRef,
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(within, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(error(t, what, &e)),
            Err(_) => Err(TargetError {
                target: t.to_string(),
                kind: "timeout",
                message: format!("{what}: no answer within {}s", self.timeout.as_secs_f64()),
            }),
        }
    }
}

/// A context's name for messages.
fn display_context(key: &str) -> String {
    if key.is_empty() { "the in-cluster context".to_owned() } else { format!("kube context {key:?}") }
}

/// One permission the daemon needs, as a SelfSubjectAccessReview asks about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    /// The API group (`""` for core).
    pub group: &'static str,
    pub resource: String,
    pub subresource: Option<&'static str>,
    pub namespace: String,
    /// `None`: any object (list, watch and create cannot name one).
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        write!(f, " in namespace {}", self.namespace)
    }
}

impl Kube {
    /// Everything the daemon does about `t`, as permissions: read and watch it, get and
    /// patch its `scale`, record events next to it, read and write its state in
    /// sqscale's namespace. No write of the whole object.
    pub fn needs(&self, t: &TargetRef) -> Vec<Access> {
        let on_target = |verb, resource: &str, subresource, name: bool| Access {
            verb,
            group: "apps",
            resource: resource.to_owned(),
            subresource,
            namespace: t.namespace.clone(),
            name: name.then(|| t.name.clone()),
        };
        let plural = t.kind.plural();
        let state = |verb, name: bool| Access {
            verb,
            group: "",
            resource: "configmaps".to_owned(),
            subresource: None,
            namespace: self.state_namespace.clone(),
            name: name.then(|| super::state::STATE_CONFIGMAP.to_owned()),
        };
        vec![
            on_target("get", plural, None, true),
            on_target("list", plural, None, false),
            on_target("watch", plural, None, false),
            on_target("get", plural, Some("scale"), true),
            on_target("patch", plural, Some("scale"), true),
            Access {
                verb: "create",
                group: "events.k8s.io",
                resource: "events".to_owned(),
                subresource: None,
                namespace: t.namespace.clone(),
                name: None,
            },
            state("get", true),
            state("patch", true),
            state("create", false),
        ]
    }

    /// Whether this identity is allowed `access`: a SelfSubjectAccessReview, which every
    /// authenticated user may make.
    pub async fn may(&self, context: Option<&str>, t: &TargetRef, access: &Access) -> Result<bool, String> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let client = self.client(context).await?;
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(access.group.to_owned()),
                    resource: Some(access.resource.clone()),
                    subresource: access.subresource.map(str::to_owned),
                    verb: Some(access.verb.to_owned()),
                    namespace: Some(access.namespace.clone()),
                    name: access.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client);
        let answer = self
            .call(t, "asking for access", api.create(&kube::api::PostParams::default(), &review))
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

impl ScaleTarget for Kube {
    async fn read(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let mut view = self.read_target(context, t).await?;
        self.add_state(context, t, &mut view).await?;
        Ok(view)
    }

    async fn read_fresh(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let api = self.api(context, t).await?;
        let (_, seen) = Seen::of(self.call(t, "reading the target", api.get(&t.name)).await?);
        let mut view = seen.view();
        self.add_state(context, t, &mut view).await?;
        Ok(view)
    }

    async fn scale(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        replicas: u32,
        resource_version: Option<&str>,
    ) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        let api: Api<Scalable> = Api::namespaced_with(connection.client.clone(), &t.namespace, &t.kind);
        if tokio::time::timeout_at(deadline, connection.limit.wait()).await.is_err() {
            return Err(TargetError {
                target: t.to_string(),
                kind: "throttled",
                message: format!(
                    "patching /scale: no write allowed within {}s by [kubernetes] qps and burst",
                    self.timeout.as_secs_f64()
                ),
            });
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        // The version the decision was made on: a change since (a `kubectl scale`, a
        // pause annotation) makes this a 409, and the worker decides again on what is
        // there now instead of overwriting it.
        let mut body = json!({ "spec": { "replicas": replicas } });
        if let Some(v) = resource_version {
            body["metadata"] = json!({ "resourceVersion": v });
        }
        let patch = Patch::Merge(&body);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.call_within(left, t, "patching /scale", api.patch_scale(&t.name, &params, &patch)).await.map(drop)
    }

    async fn set_last_active(&self, context: Option<&str>, t: &TargetRef, at: Time) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        connection.state.set(t, at).await.map_err(|message| TargetError {
            target: t.to_string(),
            kind: "state",
            message,
        })
    }

    async fn publish(&self, context: Option<&str>, t: &TargetRef, event: &TargetEvent) -> Result<(), TargetError> {
        let recorder = self.connection(context).await.map_err(|e| e.at(t))?.recorder.clone();
        let reference = ObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: Some(t.kind.as_str().to_owned()),
            name: Some(t.name.clone()),
            namespace: Some(t.namespace.clone()),
            ..ObjectReference::default()
        };
        let ev = Event {
            type_: if event.warning { EventType::Warning } else { EventType::Normal },
            reason: event.reason.to_owned(),
            note: Some(event.note.chars().take(1000).collect()),
            action: if event.reason.starts_with("Failed") { "Poll" } else { "Scale" }.to_owned(),
            secondary: None,
        };
        self.call(t, "recording an event", recorder.publish(&ev, &reference)).await
    }

    /// Drops the watch caches of every (context, namespace, kind) that no target in
    /// `used` has: the last handle of a cache aborts its watch, and with it the
    /// connection the watch held open.
    fn retain(&self, used: &[(Option<&str>, &TargetRef)]) {
        let used: std::collections::HashSet<(&str, &str, TargetKind)> =
            used.iter().map(|(context, t)| (self.context_key(*context), t.namespace.as_str(), t.kind)).collect();
        lock(&self.caches).retain(|namespace, caches| {
            caches.retain(|c| used.contains(&(c.context.as_str(), namespace.as_str(), c.kind)));
            !caches.is_empty()
        });
    }
}

/// Classifies a kube error with a stable kind; the message keeps the API's own words.
fn error(t: &TargetRef, what: &str, e: &kube::Error) -> TargetError {
    let kind = match e {
        kube::Error::Api(s) => match s.code {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "other",
        },
        _ if timed_out(e) => "timeout",
        kube::Error::HyperError(_) | kube::Error::Service(_) => "unreachable",
        kube::Error::Auth(_) => "unauthorized",
        _ => "other",
    };
    let message = match e {
        kube::Error::Api(s) => format!("{what}: {} ({}, {})", s.message, s.reason, s.code),
        other => {
            let mut m = format!("{what}: {other}");
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                m.push_str(&format!(": {s}"));
                source = s.source();
            }
            m
        }
    };
    TargetError { target: t.to_string(), kind, message }
}

fn timed_out(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || s.to_string().contains("timed out")
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache keeps what a poll reads and nothing else, and reads it back the same as
    /// the full object.
    #[test]
    fn what_the_cache_keeps_reads_as_the_full_object() {
        let full = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "worker", "namespace": "jobs", "resourceVersion": "42", "uid": "u-1",
                "labels": {"app": "worker"},
                "annotations": {
                    "sqscale.io/last-active": "2026-11-27T12:00:00Z",
                    "sqscale.io/paused-replicas": "2",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"
                },
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
            "status": {"replicas": 2, "readyReplicas": 2}
        });
        let annotations = full["metadata"]["annotations"].as_object().unwrap().clone();
        let want = view_of(
            count(&full["spec"]["replicas"]),
            count(&full["status"]["replicas"]),
            |k| annotations.get(k).and_then(|v| v.as_str()),
            Some("42".into()),
        );
        let (name, seen) = Seen::of(serde_json::from_value(full).unwrap());
        assert_eq!(name, "worker");
        assert_eq!(seen.view(), want);
        assert_eq!((want.replicas, want.status_replicas), (3, Some(2)));
        assert!(want.last_active.is_some());
        assert_eq!(seen.resource_version.as_deref(), Some("42"));
        let kept: Vec<&str> = seen.annotations.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kept, ["sqscale.io/last-active", "sqscale.io/paused-replicas"]);
        // No replicas at all (a Deployment created without spec.replicas, no status
        // yet, or a null status): 1, as the API defaults.
        for bare in [
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}}),
            json!({"metadata": {"name": "b"}, "spec": {}, "status": null}),
        ] {
            let (_, seen) = Seen::of(serde_json::from_value(bare).unwrap());
            assert_eq!((seen.view().replicas, seen.view().status_replicas), (1, None));
            assert!(seen.annotations.is_empty());
        }
    }
}
