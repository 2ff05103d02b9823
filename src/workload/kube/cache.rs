//! The targets as sqscale reads them: one watch per (context, namespace, kind), kept in
//! a map of what a poll needs, so an idle round makes no API call.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};

use super::Kube;
use crate::config::{TargetKind, TargetRef};
use crate::sync::lock;
use crate::workload::{TargetError, TargetErrorKind, TargetView, count, view_of};

/// A Deployment or StatefulSet as sqscale reads it. Deserializing into this skips
/// everything else (pod templates, conditions), so the watch's list of ten thousand
/// targets never holds them.
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct Scalable {
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
    /// In `status` only: what a `Value` metric counts as ready pods.
    #[serde(default, rename = "readyReplicas")]
    ready_replicas: serde_json::Value,
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
pub(super) struct Seen {
    replicas: Option<u32>,
    status_replicas: Option<u32>,
    ready_replicas: Option<u32>,
    resource_version: Option<Arc<str>>,
    /// The `sqscale.io/` annotations only (usually none, and then no allocation).
    annotations: Vec<(String, String)>,
}

impl Seen {
    /// The object's name and what the cache keeps of it.
    pub(super) fn of(obj: Scalable) -> (String, Seen) {
        let meta = obj.metadata;
        let annotations =
            meta.annotations.unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with("sqscale.io/"));
        let status = obj.status.unwrap_or_default();
        let seen = Seen {
            replicas: obj.spec.and_then(|s| count(&s.replicas)),
            status_replicas: count(&status.replicas),
            ready_replicas: count(&status.ready_replicas),
            resource_version: meta.resource_version.map(Arc::from),
            annotations: annotations.collect(),
        };
        (meta.name.unwrap_or_default(), seen)
    }

    pub(super) fn view(&self) -> TargetView {
        let annotation = |k: &str| self.annotations.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
        let view = view_of(self.replicas, self.status_replicas, annotation, self.resource_version.clone());
        TargetView { ready_replicas: self.ready_replicas, ..view }
    }
}

/// The targets of one kind in one namespace, kept current by a watch: reads cost no
/// API call, so an idle round makes none.
///
/// The watch is kube's `watcher` (list, then watch, resuming and relisting as the API
/// server requires); its events are applied here the way kube's reflector applies them
/// to its store (a relist replaces the whole map at `InitDone`), but into a map of
/// [`Seen`]: about a tenth of the memory of a store of objects.
pub(super) struct Cache {
    /// The context's key ([`Kube::context_key`]).
    pub(super) context: String,
    pub(super) kind: TargetKind,
    pub(super) targets: Arc<Mutex<HashMap<String, Seen>>>,
    /// True once the initial list is in, false again while the watch is failing
    /// (reads then go to the API server, which reports the real error).
    pub(super) ready: Arc<AtomicBool>,
    /// True once the first list has succeeded or failed. Until then reads wait for it
    /// instead of each making a GET: at start-up thousands of rules would otherwise
    /// open a connection each while the list is in flight.
    pub(super) settled: tokio::sync::watch::Receiver<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cache {
    pub(super) fn start(api: Api<Scalable>, context: String, kind: TargetKind) -> Cache {
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
    /// The running cache of `t`'s namespace and kind, if there is one.
    pub(super) fn cached(&self, context: Option<&str>, t: &TargetRef) -> Option<Arc<Cache>> {
        let context = self.context_key(context);
        let caches = lock(&self.caches);
        caches.get(&t.namespace)?.iter().find(|c| c.kind == t.kind && c.context == context).cloned()
    }

    /// The cache of `t`'s namespace and kind, started on first use.
    pub(super) async fn cache(&self, context: Option<&str>, t: &TargetRef) -> Result<Arc<Cache>, TargetError> {
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
    pub(super) async fn read_target(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
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
            return cache.get(&t.name).ok_or_else(|| {
                let message = format!("{} {:?} not found in namespace {:?}", t.kind.plural(), t.name, t.namespace);
                TargetError::new(t.to_string(), TargetErrorKind::NotFound, message)
            });
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Box::pin(self.read_directly(context, t, &cache, left)).await
    }

    /// Reads the target from the API server (while its watch is failing).
    pub(super) async fn read_directly(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            "status": {"replicas": 2, "readyReplicas": 1}
        });
        let annotations = full["metadata"]["annotations"].as_object().unwrap().clone();
        let want = view_of(
            count(&full["spec"]["replicas"]),
            count(&full["status"]["replicas"]),
            |k| annotations.get(k).and_then(|v| v.as_str()),
            Some("42".into()),
        );
        // The ready pods, which a `Value` metric counts.
        let want = TargetView { ready_replicas: Some(1), ..want };
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
