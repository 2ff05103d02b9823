//! What must survive a restart, kept in sqscale's own namespace instead of on the
//! workloads: one ConfigMap per kube context, [`STATE_CONFIGMAP`] in
//! `[leader_election] namespace`, one key per target (`deployment.shop.orders-worker`)
//! holding KEDA's `lastActiveTime` as RFC 3339.
//!
//! Why a ConfigMap of sqscale's: writing an annotation on the target needed `patch` on
//! whole Deployments and StatefulSets, which lets stolen credentials rewrite any pod
//! template; now sqscale writes workloads only through `/scale`. Why one per context:
//! one GET at start reads every target's state, and writes from many rules fold into one
//! PATCH (see [`Store::set`]), so ten thousand busy rules cost a few writes a second at
//! most, not one per rule.
//!
//! An older sqscale kept the time in the target's `sqscale.io/last-active` annotation;
//! it is still read (the newer of the two wins) and never written again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::{Notify, oneshot};

use super::error::KubeFailure;
use super::{FIELD_MANAGER, format_time, parse_time};
use crate::config::{TargetKind, TargetRef};
use crate::engine::Time;
use crate::sync::lock;

/// The ConfigMap's name.
pub const STATE_CONFIGMAP: &str = "sqscale-state";

/// At most one PATCH of the state per context this often: writes that arrive meanwhile
/// wait and go out together. A busy fleet refreshes every rule's last-active once a
/// minute, and the API server answers each PATCH with the whole ConfigMap (half a
/// megabyte at ten thousand targets); one PATCH per token of the write budget would be
/// twenty such answers a second. A write after a quiet second goes out at once.
pub const WRITE_SPACING: Duration = Duration::from_secs(1);

/// The key of `t` in the ConfigMap: `<kind>.<namespace>.<name>`, which is a valid
/// ConfigMap key (names and namespaces are DNS labels or subdomains).
pub fn key(t: &TargetRef) -> String {
    format!("{}.{}.{}", t.kind.as_str().to_ascii_lowercase(), t.namespace, t.name)
}

/// The key of the replica count `t` had when a rule with `restore_to_original_replica_count`
/// first took it (KEDA's `status.originalReplicaCount`): [`key`] behind this prefix, which
/// is no kind, so [`target_of`] never takes it for a last-active key.
const ORIGINAL_PREFIX: &str = "original-replicas.";

pub fn original_key(t: &TargetRef) -> String {
    format!("{ORIGINAL_PREFIX}{}", key(t))
}

/// The target a key names (see [`key`]); `None` for a key sqscale did not write.
/// Namespaces are DNS labels (no dot); a name may hold dots, so it is the rest.
fn target_of(key: &str) -> Option<(TargetKind, &str, &str)> {
    let (kind, rest) = key.split_once('.')?;
    let (namespace, name) = rest.split_once('.')?;
    // The inverse of `key`'s lower-cased kind, from the same names.
    let kind = [TargetKind::Deployment, TargetKind::StatefulSet]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(kind))?;
    (!namespace.is_empty() && !name.is_empty()).then_some((kind, namespace, name))
}

/// Every target's stored time, by namespace, name and kind: a poll looks its target up
/// by the names it has, without building the key. Kept small (a busy fleet has an entry
/// per target): 32 bytes a slot of the table, the names apart.
#[derive(Default)]
struct Times(HashMap<Box<str>, HashMap<Box<str>, Stamps>>);

/// A target's time per kind (see [`Times::slot`]); [`Stamps::NONE`] for none.
#[derive(Clone, Copy)]
struct Stamps([i64; 2]);

impl Default for Stamps {
    fn default() -> Stamps {
        Stamps([Stamps::NONE; 2])
    }
}

impl Stamps {
    /// No time stored. Not a time a poll can have: it would be 292 million years BC.
    const NONE: i64 = i64::MIN;
}

impl Times {
    fn slot(kind: TargetKind) -> usize {
        match kind {
            TargetKind::Deployment => 0,
            TargetKind::StatefulSet => 1,
        }
    }

    fn get(&self, t: &TargetRef) -> Option<Time> {
        let at = self.0.get(t.namespace.as_str())?.get(t.name.as_str())?.0[Self::slot(t.kind)];
        (at != Stamps::NONE).then_some(Time(at))
    }

    /// Keeps the newer of `at` and what is there (what a read of the ConfigMap found).
    fn merge(&mut self, kind: TargetKind, namespace: &str, name: &str, at: Time) {
        let slot = self.slot_mut(kind, namespace, name);
        *slot = (*slot).max(at.0);
    }

    /// Takes `at` as it is (what this instance wrote: possibly older than what was
    /// read, when it clamped a time from the future back to now).
    fn set(&mut self, t: &TargetRef, at: Time) {
        *self.slot_mut(t.kind, &t.namespace, &t.name) = at.0;
    }

    /// (Writes are rare: the owned keys they build cost nothing that matters.)
    fn slot_mut(&mut self, kind: TargetKind, namespace: &str, name: &str) -> &mut i64 {
        let times = self.0.entry(namespace.into()).or_default().entry(name.into()).or_default();
        &mut times.0[Self::slot(kind)]
    }
}

/// Why the state ConfigMap could not be read or written. Cloned to every write that
/// waited for the same PATCH.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {0}")]
    Read(String, #[source] Arc<KubeFailure>),
    #[error("reading {0}: no answer within {1}s")]
    ReadTimeout(String, f64),
    #[error("writing {0}")]
    Write(String, #[source] Arc<KubeFailure>),
    #[error("writing {0}: no answer within {1}s")]
    WriteTimeout(String, f64),
    #[error("writing {0}: the writer stopped")]
    WriterStopped(String),
    #[error("writing {0}: created and deleted again while writing")]
    Vanished(String),
}

/// A write waiting for the next PATCH, and who waits for its outcome.
#[derive(Default)]
struct Batch {
    /// `None` removes the key (a merge patch with `null`).
    data: BTreeMap<String, Option<String>>,
    waiters: Vec<oneshot::Sender<Result<(), StateError>>>,
}

/// One context's state ConfigMap: what it held when first read, what was written since,
/// and the writes waiting for the writer task.
pub struct Store {
    api: Api<ConfigMap>,
    client: kube::Client,
    namespace: String,
    timeout: Duration,
    /// Bumped to have the ConfigMap read again (see [`Store::reread`]).
    wanted: AtomicU64,
    /// The last `wanted` the ConfigMap was read for (a missing one reads as empty);
    /// the lock makes concurrent readers wait for one read.
    loaded: tokio::sync::Mutex<Option<u64>>,
    /// `loaded`, readable without the lock: `u64::MAX` before the first read.
    loaded_at: AtomicU64,
    values: Mutex<Times>,
    /// The original replica counts, by [`key`] (few: only rules that restore have one).
    originals: Mutex<HashMap<String, u32>>,
    batch: Mutex<Batch>,
    wake: Notify,
}

impl Store {
    pub fn new(api: Api<ConfigMap>, namespace: &str, timeout: Duration) -> Arc<Store> {
        Arc::new(Store {
            client: api.clone().into_client(),
            api,
            namespace: namespace.to_owned(),
            timeout,
            wanted: AtomicU64::new(0),
            loaded: Default::default(),
            loaded_at: AtomicU64::new(u64::MAX),
            values: Default::default(),
            originals: Default::default(),
            batch: Default::default(),
            wake: Notify::new(),
        })
    }

    fn name(&self) -> String {
        format!("ConfigMap {}/{STATE_CONFIGMAP}", self.namespace)
    }

    /// The stored last-active of `t`; the ConfigMap is read on the first call and on the
    /// first after each [`Store::reread`] (a failed read fails this call and is tried
    /// again on the next).
    pub async fn get(&self, t: &TargetRef) -> Result<Option<Time>, StateError> {
        let wanted = self.wanted.load(Ordering::Acquire);
        if self.loaded_at.load(Ordering::Acquire) != wanted {
            Box::pin(self.load_once(wanted)).await?;
        }
        Ok(lock(&self.values).get(t))
    }

    /// The stored original replica count of `t` (see [`original_key`]), read as
    /// [`Store::get`] reads.
    pub async fn original(&self, t: &TargetRef) -> Result<Option<u32>, StateError> {
        let wanted = self.wanted.load(Ordering::Acquire);
        if self.loaded_at.load(Ordering::Acquire) != wanted {
            Box::pin(self.load_once(wanted)).await?;
        }
        Ok(lock(&self.originals).get(&key(t)).copied())
    }

    /// Stores `t`'s original replica count, or removes it (`None`), in the next PATCH.
    pub async fn set_original(&self, t: &TargetRef, replicas: Option<u32>) -> Result<(), StateError> {
        self.put(original_key(t), replicas.map(|n| n.to_string())).await?;
        let mut originals = lock(&self.originals);
        match replicas {
            Some(n) => originals.insert(key(t), n),
            None => originals.remove(&key(t)),
        };
        Ok(())
    }

    /// The next [`Store::get`] reads the ConfigMap again (what was read is kept, and
    /// the newer time of each key wins): another instance may have written it since.
    pub fn reread(&self) {
        self.wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the ConfigMap for `wanted`, unless a concurrent caller just did.
    async fn load_once(&self, wanted: u64) -> Result<(), StateError> {
        let mut loaded = self.loaded.lock().await;
        if *loaded == Some(wanted) {
            return Ok(());
        }
        self.load().await?;
        *loaded = Some(wanted);
        self.loaded_at.store(wanted, Ordering::Release);
        Ok(())
    }

    async fn load(&self) -> Result<(), StateError> {
        let read = tokio::time::timeout(self.timeout, self.api.get_opt(STATE_CONFIGMAP))
            .await
            .map_err(|_| StateError::ReadTimeout(self.name(), self.timeout.as_secs_f64()))?
            .map_err(|e| StateError::Read(self.name(), Arc::new(KubeFailure(e))))?;
        let data = read.and_then(|cm| cm.data).unwrap_or_default();
        let mut values = lock(&self.values);
        for (k, v) in data {
            if let Some(target) = k.strip_prefix(ORIGINAL_PREFIX) {
                match (target_of(target), v.trim().parse::<u32>()) {
                    (Some(_), Ok(n)) => {
                        lock(&self.originals).insert(target.to_owned(), n);
                    }
                    _ => {
                        tracing::warn!(configmap = %self.name(), key = %k, value = %v, "not an original replica count; ignored")
                    }
                }
                continue;
            }
            match (target_of(&k), parse_time(&v)) {
                (Some((kind, namespace, name)), Some(at)) => values.merge(kind, namespace, name, at),
                (None, _) => tracing::warn!(configmap = %self.name(), key = %k, "not a key sqscale writes; ignored"),
                (_, None) => {
                    tracing::warn!(configmap = %self.name(), key = %k, value = %v, "not an RFC 3339 time; ignored")
                }
            }
        }
        Ok(())
    }

    /// Stores `at` as `t`'s last-active. Writes that arrive while a PATCH is in flight go
    /// out together in the next one; this returns when the PATCH carrying `at` is
    /// answered (or the adapter's timeout passes).
    pub async fn set(&self, t: &TargetRef, at: Time) -> Result<(), StateError> {
        self.put(key(t), Some(format_time(at))).await?;
        lock(&self.values).set(t, at);
        Ok(())
    }

    /// Writes (or, with `None`, removes) one key in the next PATCH and waits for it.
    async fn put(&self, key: String, value: Option<String>) -> Result<(), StateError> {
        let (done, outcome) = oneshot::channel();
        {
            let mut batch = lock(&self.batch);
            batch.data.insert(key, value);
            batch.waiters.push(done);
        }
        self.wake.notify_one();
        match tokio::time::timeout(self.timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StateError::WriterStopped(self.name())),
            Err(_) => Err(StateError::WriteTimeout(self.name(), self.timeout.as_secs_f64())),
        }
    }

    /// The writer: one PATCH at a time, each carrying every write that arrived since the
    /// last, after a token from `limit` (the context's write budget). Runs until the
    /// context's connection is dropped.
    pub async fn write_loop(self: Arc<Self>, limit: Arc<super::kube::WriteLimit>) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            self.wake.notified().await;
            if let Some(at) = last {
                tokio::time::sleep_until(at + WRITE_SPACING).await;
            }
            limit.wait().await;
            let batch = std::mem::take(&mut *lock(&self.batch));
            if batch.waiters.is_empty() {
                continue;
            }
            last = Some(tokio::time::Instant::now());
            let result = tokio::time::timeout(self.timeout, self.write(&batch.data))
                .await
                .unwrap_or_else(|_| Err(StateError::WriteTimeout(self.name(), self.timeout.as_secs_f64())));
            for waiter in batch.waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// A merge patch of `data` into the ConfigMap, creating it when it is missing.
    async fn write(&self, data: &BTreeMap<String, Option<String>>) -> Result<(), StateError> {
        let failed = |e| StateError::Write(self.name(), Arc::new(KubeFailure(e)));
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        let body = serde_json::json!({ "data": data });
        for _ in 0..2 {
            // The answer is the whole ConfigMap (half a megabyte at ten thousand targets):
            // drain it as it arrives, so the connection can be reused, without holding it
            // whole (kube's `request` copies it twice before parsing) or building a map
            // of every target's time only to drop it.
            let request = kube::core::Request::new(self.api.resource_url())
                .patch(STATE_CONFIGMAP, &params, &Patch::Merge(&body))
                .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
            match self.client.request_stream(request).await {
                Ok(answer) => {
                    futures::io::copy_buf(answer, &mut futures::io::sink())
                        .await
                        .map_err(|e| failed(e.downcast().unwrap_or_else(kube::Error::ReadEvents)))?;
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(failed(e)),
            }
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(STATE_CONFIGMAP.to_owned()),
                    labels: Some([("app.kubernetes.io/name".to_owned(), "sqscale".to_owned())].into()),
                    ..ObjectMeta::default()
                },
                // Created: a key to remove is simply not there.
                data: Some(data.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect()),
                ..ConfigMap::default()
            };
            let post = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
            match self.api.create(&post, &map).await {
                Ok(_) => return Ok(()),
                // Created meanwhile (another instance): patch it.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Err(StateError::Vanished(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_kind_namespace_and_target_in_configmap_syntax() {
        let t = TargetRef { kind: TargetKind::StatefulSet, name: "orders-worker".into(), namespace: "shop".into() };
        let k = key(&t);
        assert_eq!(k, "statefulset.shop.orders-worker");
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        assert_eq!(target_of(&k), Some((TargetKind::StatefulSet, "shop", "orders-worker")));
        // A name may hold dots (a DNS subdomain); a namespace may not.
        assert_eq!(target_of("deployment.shop.api.v2"), Some((TargetKind::Deployment, "shop", "api.v2")));
        assert_eq!(target_of("configmap.shop.x"), None);
        assert_eq!(target_of("deployment.shop"), None);
        // An original replica count's key is never a last-active key.
        let original = original_key(&t);
        assert_eq!(original, "original-replicas.statefulset.shop.orders-worker");
        assert_eq!(target_of(&original), None);
    }

    /// Looked up by the target's names; the newer time wins; the kinds do not mix.
    #[test]
    fn times_keep_the_newest_per_target() {
        let t = |kind, name: &str| TargetRef { kind, name: name.into(), namespace: "shop".into() };
        let mut times = Times::default();
        times.merge(TargetKind::Deployment, "shop", "a", Time(20));
        times.merge(TargetKind::Deployment, "shop", "a", Time(10));
        assert_eq!(times.get(&t(TargetKind::Deployment, "a")), Some(Time(20)));
        assert_eq!(times.get(&t(TargetKind::StatefulSet, "a")), None);
        assert_eq!(times.get(&t(TargetKind::Deployment, "b")), None);
        // This instance's own write stands as written (a future time clamped to now).
        times.set(&t(TargetKind::Deployment, "a"), Time(15));
        assert_eq!(times.get(&t(TargetKind::Deployment, "a")), Some(Time(15)));
    }
}
