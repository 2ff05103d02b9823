//! The Kubernetes adapter: one client per kube context, built from the kubeconfig the
//! way kubectl resolves it; Deployments and StatefulSets read as objects and scaled
//! through their `/scale` subresource with a merge patch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::{FIELD_MANAGER, LAST_ACTIVE, ScaleTarget, TargetError, TargetEvent, TargetView, format_time, view_of};
use crate::config::{TargetKind, TargetRef};
use crate::engine::Time;

/// Attempts at a scale patch when the target keeps changing under it.
const CONFLICT_RETRIES: usize = 3;

/// `[kubernetes] eks_cluster`: mint EKS tokens in-process for the default context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EksAuth {
    pub cluster: String,
    /// STS region; `None` takes the SDK's (AWS_REGION, profile).
    pub region: Option<String>,
    pub profile: Option<String>,
}

/// Kubernetes clients, one per context, created on first use.
pub struct Kube {
    /// `None`: `$KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    kubeconfig: Option<PathBuf>,
    /// The context of rules that name none; `None` is the current-context.
    default_context: Option<String>,
    eks: Option<EksAuth>,
    timeout: Duration,
    /// Each client with the time it was built: EKS clients are rebuilt with a fresh
    /// token before the old one expires.
    clients: tokio::sync::Mutex<HashMap<Option<String>, (Client, tokio::time::Instant)>>,
    /// One recorder per context: it folds repeats of an event into a series.
    recorders: tokio::sync::Mutex<HashMap<Option<String>, Recorder>>,
    /// Watch-backed caches of the targets, one per (context, namespace, kind).
    caches: tokio::sync::Mutex<HashMap<CacheKey, Arc<Cache>>>,
}

type CacheKey = (Option<String>, String, TargetKind);

/// The targets of one kind in one namespace, kept current by a watch: reads cost no
/// API call, so an idle round makes none.
struct Cache {
    store: Store<DynamicObject>,
    resource: ApiResource,
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
    fn start(api: Api<DynamicObject>, resource: ApiResource) -> Cache {
        let writer = Writer::new(resource.clone());
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let (settle, settled) = tokio::sync::watch::channel(false);
        let events = watcher(api, watcher::Config::default()).default_backoff().modify(slim).reflect(writer);
        let task = tokio::spawn(async move {
            let mut listed = false;
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        listed = true;
                        flag.store(true, Ordering::SeqCst);
                        settle.send_replace(true);
                    }
                    Ok(_) if listed => flag.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "target watch failed; reading directly until it recovers");
                        flag.store(false, Ordering::SeqCst);
                        settle.send_replace(true);
                    }
                }
            }
        });
        Cache { store, resource, ready, settled, task }
    }

    /// Waits (at most `timeout`) for the first list to succeed or fail.
    async fn settle(&self, timeout: Duration) {
        let mut settled = self.settled.clone();
        let _ = tokio::time::timeout(timeout, settled.wait_for(|s| *s)).await;
    }

    fn get(&self, t: &TargetRef) -> Option<Arc<DynamicObject>> {
        self.store.get(&ObjectRef::new_with(&t.name, self.resource.clone()).within(&t.namespace))
    }
}

/// Keeps only what a poll reads, so ten thousand cached targets stay small: the name,
/// namespace, version and `sqscale.io/` annotations, and `spec.replicas` and
/// `status.replicas` as a two-element array (see [`view_of_cached`]).
fn slim(obj: &mut DynamicObject) {
    let meta = std::mem::take(&mut obj.metadata);
    let annotations = meta.annotations.map(|mut a| {
        a.retain(|k, _| k.starts_with("sqscale.io/"));
        a
    });
    obj.metadata = kube::api::ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        annotations: annotations.filter(|a| !a.is_empty()),
        ..Default::default()
    };
    let spec = obj.data["spec"]["replicas"].take();
    let status = obj.data["status"]["replicas"].take();
    obj.data = serde_json::Value::Array(vec![spec, status]);
}

/// The view of an object slimmed by [`slim`].
fn view_of_cached(obj: &DynamicObject) -> TargetView {
    let empty = std::collections::BTreeMap::new();
    view_of(
        &obj.data[0],
        &obj.data[1],
        obj.metadata.annotations.as_ref().unwrap_or(&empty),
        obj.metadata.resource_version.clone(),
    )
}

impl Kube {
    pub fn new(kubeconfig: Option<PathBuf>, default_context: Option<String>, timeout: Duration) -> Kube {
        Kube {
            kubeconfig,
            default_context,
            eks: None,
            timeout,
            clients: Default::default(),
            recorders: Default::default(),
            caches: Default::default(),
        }
    }

    /// Authenticates the default context with tokens minted from the AWS credentials
    /// instead of the kubeconfig's user (which usually runs `aws eks get-token`).
    pub fn with_eks(mut self, eks: Option<EksAuth>) -> Kube {
        self.eks = eks;
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
        Kube::new(kubeconfig.or_else(|| k.kubeconfig.clone()), k.context.clone(), timeout).with_eks(eks)
    }

    /// The client for `context` (`None`: the default context), built on first use.
    ///
    /// Building runs exec plugins (`aws eks get-token`) synchronously, so it happens
    /// on a blocking thread.
    pub async fn client(&self, context: Option<&str>) -> Result<Client, String> {
        let context = context.map(str::to_owned).or_else(|| self.default_context.clone());
        let eks = self.eks.as_ref().filter(|_| context == self.default_context);
        let mut clients = self.clients.lock().await;
        if let Some((client, built)) = clients.get(&context)
            && (eks.is_none() || built.elapsed() < super::eks::REFRESH_AFTER)
        {
            return Ok(client.clone());
        }
        let mut config = self.config(context.as_deref()).await?;
        if let Some(eks) = eks {
            let token = super::eks::mint(&eks.cluster, eks.region.as_deref(), eks.profile.as_deref()).await?;
            config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
        }
        config.read_timeout = None;
        config.connect_timeout = Some(self.timeout);
        let client = tokio::task::spawn_blocking(move || Client::try_from(config))
            .await
            .map_err(|e| format!("building the Kubernetes client: {e}"))?
            .map_err(|e| format!("building the Kubernetes client: {e}"))?;
        clients.insert(context, (client.clone(), tokio::time::Instant::now()));
        Ok(client)
    }

    async fn config(&self, context: Option<&str>) -> Result<Config, String> {
        let options = KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
        let named = |e: &dyn std::fmt::Display| match context {
            Some(c) => format!("kube context {c:?}: {e}"),
            None => format!("kubeconfig: {e}"),
        };
        match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| named(&e))
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(c) => Ok(c),
                // No kubeconfig at all and no context asked for: in-cluster, as kubectl.
                Err(e) if context.is_none() => Config::incluster().map_err(|ie| {
                    format!(
                        "no kubeconfig ({e}; set KUBECONFIG or [kubernetes] kubeconfig) and not in a cluster ({ie})"
                    )
                }),
                Err(e) => Err(named(&e)),
            },
        }
    }

    async fn api(&self, context: Option<&str>, t: &TargetRef) -> Result<Api<DynamicObject>, TargetError> {
        let client = self.client(context).await.map_err(|message| TargetError {
            target: t.to_string(),
            kind: "config",
            message,
        })?;
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", t.kind.as_str()), t.kind.plural());
        Ok(Api::namespaced_with(client, &t.namespace, &resource))
    }

    /// Forgets the client of `context`, so the next call builds it again from the
    /// kubeconfig: after a 401 the credentials were rotated (a new token in the file)
    /// or expired.
    async fn forget(&self, context: Option<&str>) {
        let context = context.map(str::to_owned).or_else(|| self.default_context.clone());
        self.clients.lock().await.remove(&context);
        self.recorders.lock().await.remove(&context);
        self.caches.lock().await.retain(|(c, _, _), _| *c != context);
    }

    /// The cache of `t`'s namespace and kind, started on first use.
    async fn cache(&self, context: Option<&str>, t: &TargetRef) -> Result<Arc<Cache>, TargetError> {
        let ctx = context.map(str::to_owned).or_else(|| self.default_context.clone());
        let key = (ctx, t.namespace.clone(), t.kind);
        if let Some(c) = self.caches.lock().await.get(&key) {
            return Ok(c.clone());
        }
        let api = self.api(context, t).await?;
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", t.kind.as_str()), t.kind.plural());
        let cache = Arc::new(Cache::start(api, resource));
        Ok(self.caches.lock().await.entry(key).or_insert(cache).clone())
    }

    /// Runs a call to `context` under the adapter's timeout, mapping errors to
    /// [`TargetError`]. A 401 forgets the context's client (see [`Kube::forget`]).
    async fn call<T>(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let e = error(t, what, &e);
                if e.kind == "unauthorized" {
                    self.forget(context).await;
                }
                Err(e)
            }
            Err(_) => Err(TargetError {
                target: t.to_string(),
                kind: "timeout",
                message: format!("{what}: no answer within {}s", self.timeout.as_secs_f64()),
            }),
        }
    }
}

impl Kube {
    /// Whether this identity may `verb` the target's `resource` (plural, apps group) in
    /// its namespace: a SelfSubjectAccessReview, which every authenticated user may make.
    pub async fn can_i(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        verb: &str,
        subresource: Option<&str>,
    ) -> Result<bool, String> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let client = self.client(context).await?;
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("apps".to_owned()),
                    resource: Some(t.kind.plural().to_owned()),
                    subresource: subresource.map(str::to_owned),
                    verb: Some(verb.to_owned()),
                    namespace: Some(t.namespace.clone()),
                    name: Some(t.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client);
        let answer = self
            .call(context, t, "asking for access", api.create(&kube::api::PostParams::default(), &review))
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

impl ScaleTarget for Kube {
    async fn read(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let cache = self.cache(context, t).await?;
        if !cache.ready.load(Ordering::SeqCst) {
            cache.settle(self.timeout).await;
        }
        if cache.ready.load(Ordering::SeqCst) {
            return match cache.get(t) {
                Some(obj) => Ok(view_of_cached(&obj)),
                None => Err(TargetError {
                    target: t.to_string(),
                    kind: "not_found",
                    message: format!("{} {:?} not found in namespace {:?}", t.kind.plural(), t.name, t.namespace),
                }),
            };
        }
        let api = self.api(context, t).await?;
        let obj = self.call(context, t, "reading the target", api.get(&t.name)).await?;
        // The watch resumed without a change since: the cache holds this very version.
        if cache.get(t).is_some_and(|c| c.metadata.resource_version == obj.metadata.resource_version) {
            cache.ready.store(true, Ordering::SeqCst);
        }
        let annotations = obj.metadata.annotations.clone().unwrap_or_default();
        let (spec, status) = (&obj.data["spec"]["replicas"], &obj.data["status"]["replicas"]);
        Ok(view_of(spec, status, &annotations, obj.metadata.resource_version.clone()))
    }

    async fn scale(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        replicas: u32,
        resource_version: Option<&str>,
    ) -> Result<(), TargetError> {
        let api = self.api(context, t).await?;
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        let mut version = resource_version.map(str::to_owned);
        for attempt in 1..=CONFLICT_RETRIES {
            let mut body = json!({ "spec": { "replicas": replicas } });
            if let Some(v) = &version {
                body["metadata"] = json!({ "resourceVersion": v });
            }
            match self
                .call(context, t, "patching /scale", api.patch_scale(&t.name, &params, &Patch::Merge(&body)))
                .await
            {
                Err(e) if e.kind == "conflict" && attempt < CONFLICT_RETRIES => {
                    tracing::debug!(attempt, "scale patch conflicted; retrying on a fresh version");
                    let scale = self.call(context, t, "reading /scale", api.get_scale(&t.name)).await?;
                    version = scale.metadata.resource_version;
                }
                other => return other.map(drop),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn set_last_active(&self, context: Option<&str>, t: &TargetRef, at: Time) -> Result<(), TargetError> {
        let api = self.api(context, t).await?;
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        let body = json!({ "metadata": { "annotations": { LAST_ACTIVE: format_time(at) } } });
        self.call(context, t, "annotating last-active", api.patch(&t.name, &params, &Patch::Merge(&body)))
            .await
            .map(drop)
    }

    async fn publish(&self, context: Option<&str>, t: &TargetRef, event: &TargetEvent) -> Result<(), TargetError> {
        let client = self.client(context).await.map_err(|message| TargetError {
            target: t.to_string(),
            kind: "config",
            message,
        })?;
        let recorder = {
            let mut recorders = self.recorders.lock().await;
            let key = context.map(str::to_owned).or_else(|| self.default_context.clone());
            recorders.entry(key).or_insert_with(|| Recorder::new(client, Reporter::from(FIELD_MANAGER))).clone()
        };
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
        self.call(context, t, "recording an event", recorder.publish(&ev, &reference)).await
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
    /// from the full object.
    #[test]
    fn a_slimmed_object_reads_as_the_full_one() {
        let full: DynamicObject = serde_json::from_value(json!({
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
        }))
        .unwrap();
        let annotations = full.metadata.annotations.clone().unwrap();
        let want = view_of(
            &full.data["spec"]["replicas"],
            &full.data["status"]["replicas"],
            &annotations,
            full.metadata.resource_version.clone(),
        );
        let mut slimmed = full.clone();
        slim(&mut slimmed);
        assert_eq!(view_of_cached(&slimmed), want);
        assert_eq!((want.replicas, want.status_replicas), (3, Some(2)));
        assert!(want.last_active.is_some());
        let kept = serde_json::to_value(&slimmed.metadata).unwrap();
        assert_eq!(
            kept,
            json!({"name": "worker", "namespace": "jobs", "resourceVersion": "42", "annotations": {
                "sqscale.io/last-active": "2026-11-27T12:00:00Z", "sqscale.io/paused-replicas": "2"
            }})
        );
        // No replicas at all (a Deployment created without spec.replicas): 1, as the API defaults.
        let mut bare: DynamicObject =
            serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}}))
                .unwrap();
        slim(&mut bare);
        assert_eq!((view_of_cached(&bare).replicas, view_of_cached(&bare).status_replicas), (1, None));
    }
}
