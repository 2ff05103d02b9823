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
//!
//! Every PATCH is fenced like a `/scale` write: the lease is checked right before it is
//! sent and bounds how long it may run, so a PATCH queued by a leader that lost its
//! lease meanwhile is never sent. Keys of targets no rule names any more are removed
//! ([`Store::keep`]), and the ConfigMap's size is watched ([`Sizes`]): past the API
//! server's 1 MiB every PATCH would fail.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::{Notify, oneshot};

use super::error::KubeFailure;
use super::{FIELD_MANAGER, format_time, parse_time};
use crate::config::{Rule, TargetKind, TargetRef};
use crate::engine::Time;
use crate::error::chain;
use crate::leader::Leadership;
use crate::sync::lock;

/// The ConfigMap's name.
pub const STATE_CONFIGMAP: &str = "sqscale-state";

/// At most one PATCH of the state per context this often: writes that arrive meanwhile
/// wait and go out together. A busy fleet refreshes every rule's last-active once a
/// minute, and the API server answers each PATCH with the whole ConfigMap (half a
/// megabyte at ten thousand targets); one PATCH per token of the write budget would be
/// twenty such answers a second. A write after a quiet second goes out at once.
pub const WRITE_SPACING: Duration = Duration::from_secs(1);

/// The API server refuses a ConfigMap whose values pass 1 MiB (and etcd a larger
/// object): every PATCH would fail, and with it every target's last-active.
pub const SIZE_LIMIT: u64 = 1 << 20;

/// Past this size (three quarters of [`SIZE_LIMIT`]) a warning is logged, once each time
/// the size crosses it, while there is time to act (fewer targets per cluster, or
/// removing keys by hand).
pub const SIZE_WARNING: u64 = 768 << 10;

/// How often a removal of unused keys that could not be sent (this instance did not
/// lead, or the API server failed) is tried again, when no write wakes the writer first.
const KEEP_RETRY: Duration = Duration::from_secs(10);

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

    /// The keys of every target with a time whose kind, namespace and name `keep` does
    /// not hold.
    fn unused(&self, keep: &HashSet<(TargetKind, &str, &str)>) -> Vec<String> {
        let mut unused = Vec::new();
        for (namespace, names) in &self.0 {
            for (name, stamps) in names {
                for kind in [TargetKind::Deployment, TargetKind::StatefulSet] {
                    let stored = stamps.0[Self::slot(kind)] != Stamps::NONE;
                    if stored && !keep.contains(&(kind, namespace, name)) {
                        let t = TargetRef { kind, namespace: namespace.to_string(), name: name.to_string() };
                        unused.push(key(&t));
                    }
                }
            }
        }
        unused
    }

    /// Forgets the time of a removed key.
    fn remove(&mut self, kind: TargetKind, namespace: &str, name: &str) {
        let Some(names) = self.0.get_mut(namespace) else { return };
        if let Some(stamps) = names.get_mut(name) {
            stamps.0[Self::slot(kind)] = Stamps::NONE;
            if stamps.0.iter().all(|s| *s == Stamps::NONE) {
                names.remove(name);
            }
        }
        if names.is_empty() {
            self.0.remove(namespace);
        }
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
    /// Checked right before the PATCH: the lease was lost (or nearly ran out) after the
    /// write was queued.
    #[error("writing {0}: not sent, this instance no longer holds the lease")]
    NotLeading(String),
    #[error("writing {0}: no write allowed within {1}s by [kubernetes] qps and burst")]
    Throttled(String, f64),
}

/// What a write stores under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// A target's last-active (never written over a newer one).
    LastActive(Time),
    /// A target's original replica count, or (`None`) its removal.
    Original(Option<u32>),
}

/// A write waiting for the next PATCH, and who waits for its outcome.
struct Write {
    key: String,
    value: Value,
    /// Whether this instance may write the context's state: checked right before the
    /// PATCH, which must also end within what it allows.
    lead: Leadership,
    done: oneshot::Sender<Result<(), StateError>>,
}

/// Every rule now running, shared (not copied) with whoever keeps state for them.
pub type Running = Arc<[Arc<Rule>]>;

/// The rules now running (see [`Store::keep`]): the keys of other targets go with the
/// next PATCH this instance may send.
#[derive(Clone)]
struct Keep {
    rules: Running,
    lead: Leadership,
}

/// What waits for the writer.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    keep: Option<Keep>,
}

/// One PATCH: the times to write, the keys to remove, and who waits for it.
struct Outgoing {
    data: BTreeMap<String, Option<String>>,
    written: Vec<(String, Time)>,
    /// Original replica counts written (or removed), by [`key`].
    originals: Vec<(String, Option<u32>)>,
    removed: Vec<String>,
    waiters: Vec<oneshot::Sender<Result<(), StateError>>>,
    /// The [`Keep`] the removals came from (taken off the batch once they are done).
    keep: Option<Running>,
    /// How long the PATCH may run: the call timeout, or less when a lease's write
    /// margin comes first.
    budget: Duration,
}

/// The size of each context's state ConfigMap, as `/status` shows it: the bytes of the
/// object as the API server last returned it (JSON, so a little more than the values
/// its 1 MiB limit counts).
#[derive(Debug, Default)]
pub struct Sizes(Mutex<BTreeMap<String, (String, u64)>>);

/// One context's state ConfigMap and its size.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateSize {
    /// The kube context (`""`: in-cluster).
    pub context: String,
    /// `namespace/name`.
    pub configmap: String,
    pub bytes: u64,
    /// `bytes` has reached [`SIZE_WARNING`].
    pub near_limit: bool,
}

impl Sizes {
    fn set(&self, context: &str, configmap: String, bytes: u64) {
        lock(&self.0).insert(context.to_owned(), (configmap, bytes));
    }

    /// Every context's state ConfigMap read or written so far, by context.
    pub fn list(&self) -> Vec<StateSize> {
        lock(&self.0)
            .iter()
            .map(|(context, (configmap, bytes))| StateSize {
                context: context.clone(),
                configmap: configmap.clone(),
                bytes: *bytes,
                near_limit: *bytes >= SIZE_WARNING,
            })
            .collect()
    }
}

/// Counts the bytes serde_json writes, keeping none of them.
#[derive(Default)]
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of `cm` as JSON, what the API server answers with.
fn json_size(cm: &ConfigMap) -> u64 {
    let mut counter = Counter::default();
    match serde_json::to_writer(&mut counter, cm) {
        Ok(()) => counter.0,
        Err(_) => 0,
    }
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
    /// Keys in sqscale's form whose value was not a time: not in `values`, but removed
    /// like any other key no rule uses.
    unparsed: Mutex<BTreeSet<String>>,
    /// The original replica counts, by [`key`] (few: only rules that restore have one).
    originals: Mutex<HashMap<String, u32>>,
    batch: Mutex<Batch>,
    wake: Notify,
    /// The context, as [`Sizes`] names it.
    context: String,
    sizes: Arc<Sizes>,
    /// The size is at or past [`SIZE_WARNING`]: warned once, until it falls below again.
    near_limit: AtomicBool,
}

impl Store {
    /// The state of `context` (as [`Sizes`] names it), whose size is reported to `sizes`.
    pub fn new(
        api: Api<ConfigMap>,
        namespace: &str,
        timeout: Duration,
        context: &str,
        sizes: Arc<Sizes>,
    ) -> Arc<Store> {
        Arc::new(Store {
            client: api.clone().into_client(),
            api,
            namespace: namespace.to_owned(),
            timeout,
            wanted: AtomicU64::new(0),
            loaded: Default::default(),
            loaded_at: AtomicU64::new(u64::MAX),
            values: Default::default(),
            unparsed: Default::default(),
            originals: Default::default(),
            batch: Default::default(),
            wake: Notify::new(),
            context: context.to_owned(),
            sizes,
            near_limit: AtomicBool::new(false),
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

    /// Stores `t`'s original replica count, or removes it (`None`), in the next PATCH,
    /// fenced by `lead` as every state write.
    pub async fn set_original(
        &self,
        t: &TargetRef,
        replicas: Option<u32>,
        lead: &Leadership,
    ) -> Result<(), StateError> {
        self.queue(original_key(t), Value::Original(replicas), lead).await
    }

    /// The next [`Store::get`] reads the ConfigMap again (what was read is kept, and
    /// the newer time of each key wins): another instance may have written it since.
    pub fn reread(&self) {
        self.wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// The rules now running (at start and after each reload; `lead` says whether this
    /// instance may write the context's state): the keys of targets none of them names
    /// go with the next PATCH this instance may send, or on their own as soon as it may.
    /// A standby keeps them pending and removes them if it comes to lead. Only keys in
    /// sqscale's form are removed; others are not sqscale's.
    ///
    /// The rules of every context count, not only this one's: two kube contexts may
    /// name one cluster, and so one ConfigMap, and neither may remove the other's keys.
    pub fn keep(&self, rules: Running, lead: Leadership) {
        lock(&self.batch).keep = Some(Keep { rules, lead });
        self.wake.notify_one();
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
        if let Some(cm) = &read {
            self.sized(json_size(cm));
        }
        let data = read.and_then(|cm| cm.data).unwrap_or_default();
        let mut values = lock(&self.values);
        let mut unparsed = lock(&self.unparsed);
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
                    tracing::warn!(configmap = %self.name(), key = %k, value = %v, "not an RFC 3339 time; ignored");
                    unparsed.insert(k);
                }
            }
        }
        Ok(())
    }

    /// Records the ConfigMap's size as the API server last returned it, and warns once
    /// each time it crosses [`SIZE_WARNING`].
    fn sized(&self, bytes: u64) {
        self.sizes.set(&self.context, format!("{}/{STATE_CONFIGMAP}", self.namespace), bytes);
        let near = bytes >= SIZE_WARNING;
        if self.near_limit.swap(near, Ordering::AcqRel) != near && near {
            tracing::warn!(
                configmap = %self.name(),
                bytes,
                limit = SIZE_LIMIT,
                "the state ConfigMap nears the API server's 1 MiB limit; past it no last-active can be stored (fewer targets per cluster, or remove keys sqscale does not own)"
            );
        }
    }

    /// Stores `at` as `t`'s last-active, if `lead` still allows it when the PATCH is
    /// sent. Writes that arrive while a PATCH is in flight go out together in the next
    /// one; this returns when the PATCH carrying `at` is answered (or the adapter's
    /// timeout passes; a write given up on is not sent). A time older than the one
    /// stored is not written (see [`Store::stale`]).
    pub async fn set(&self, t: &TargetRef, at: Time, lead: &Leadership) -> Result<(), StateError> {
        self.queue(key(t), Value::LastActive(at), lead).await
    }

    /// Queues one write for the next PATCH and waits for its outcome.
    async fn queue(&self, key: String, value: Value, lead: &Leadership) -> Result<(), StateError> {
        let (done, outcome) = oneshot::channel();
        lock(&self.batch).writes.push(Write { key, value, lead: lead.clone(), done });
        self.wake.notify_one();
        match tokio::time::timeout(self.timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StateError::WriterStopped(self.name())),
            Err(_) => Err(StateError::WriteTimeout(self.name(), self.timeout.as_secs_f64())),
        }
    }

    /// Whether `at` is older than what is stored for `key` (read from the ConfigMap, or
    /// written since): another instance, or a later write of this one, stored a newer
    /// time. A stored time later than the wall clock is no reason: it came from a
    /// clock that ran ahead, and the worker writes its clamped time over it.
    fn stale(&self, values: &Times, key: &str, at: Time, now: Time) -> bool {
        let Some((kind, namespace, name)) = target_of(key) else { return false };
        let t = TargetRef { kind, namespace: namespace.to_owned(), name: name.to_owned() };
        values.get(&t).is_some_and(|stored| stored > at && stored <= now)
    }

    /// The writer: one PATCH at a time, each carrying every write that arrived since the
    /// last (and the keys to remove, see [`Store::keep`]), after a token from `limit`
    /// (the context's write budget), waited for at most the call timeout. Right before
    /// each PATCH it drops the writes nobody waits for any more, refuses those whose
    /// lease is gone, and skips times older than the stored ones. Runs until the
    /// context's connection is dropped.
    pub async fn write_loop(self: Arc<Self>, limit: Arc<super::kube::WriteLimit>) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            let keeping = lock(&self.batch).keep.is_some();
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(KEEP_RETRY), if keeping => {}
            }
            if let Some(at) = last {
                tokio::time::sleep_until(at + WRITE_SPACING).await;
            }
            if !self.due() {
                continue;
            }
            let token = tokio::time::timeout(self.timeout, limit.wait()).await.is_ok();
            self.load_for_keep().await;
            let Some(patch) = self.take(token) else { continue };
            last = Some(tokio::time::Instant::now());
            let result = tokio::time::timeout(patch.budget, self.write(&patch.data))
                .await
                .unwrap_or_else(|_| Err(StateError::WriteTimeout(self.name(), patch.budget.as_secs_f64())));
            match &result {
                Ok(bytes) => self.written(&patch, *bytes),
                Err(e) if !patch.removed.is_empty() => {
                    tracing::warn!(configmap = %self.name(), error = %chain(e), keys = patch.removed.len(), "removing the keys of targets no rule names failed; tried again later")
                }
                Err(_) => {}
            }
            let result = result.map(drop);
            for waiter in patch.waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// Whether a PATCH may be due: a write someone waits for, or removals while this
    /// instance may write (a standby with removals pending takes no token and reads
    /// nothing).
    fn due(&self) -> bool {
        let mut batch = lock(&self.batch);
        batch.writes.retain(|w| !w.done.is_closed());
        !batch.writes.is_empty() || batch.keep.as_ref().is_some_and(|k| k.lead.budget(self.timeout).is_some())
    }

    /// Reads the ConfigMap before removals are worked out, if it has not been read: at
    /// start the writer may come first, and its read serves the first polls too.
    async fn load_for_keep(&self) {
        let leading = lock(&self.batch).keep.as_ref().is_some_and(|k| k.lead.budget(self.timeout).is_some());
        let wanted = self.wanted.load(Ordering::Acquire);
        if leading
            && self.loaded_at.load(Ordering::Acquire) != wanted
            && let Err(e) = Box::pin(self.load_once(wanted)).await
        {
            tracing::warn!(configmap = %self.name(), error = %chain(&e), "reading the state to remove unused keys failed; tried again later");
        }
    }

    /// The next PATCH, decided right before it is sent: writes nobody waits for are
    /// dropped; without a `token` the others fail as throttled; writes whose lease is
    /// gone fail; times older than the stored ones succeed without being written.
    /// `None` when nothing is left to send.
    fn take(&self, token: bool) -> Option<Outgoing> {
        let now = Time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        );
        let mut batch = lock(&self.batch);
        let writes = std::mem::take(&mut batch.writes);
        let keep = batch.keep.clone();
        drop(batch);
        let mut patch = Outgoing {
            data: BTreeMap::new(),
            written: Vec::new(),
            originals: Vec::new(),
            removed: Vec::new(),
            waiters: Vec::new(),
            keep: None,
            budget: self.timeout,
        };
        let values = lock(&self.values);
        for w in writes {
            if w.done.is_closed() {
                // The worker gave up on it (its own deadline): nobody waits, nothing goes.
                continue;
            }
            if !token {
                let _ = w.done.send(Err(StateError::Throttled(self.name(), self.timeout.as_secs_f64())));
                continue;
            }
            let Some(budget) = w.lead.budget(self.timeout) else {
                let _ = w.done.send(Err(StateError::NotLeading(self.name())));
                continue;
            };
            let at = match w.value {
                Value::LastActive(at) => at,
                Value::Original(replicas) => {
                    patch.budget = patch.budget.min(budget);
                    patch.data.insert(w.key.clone(), replicas.map(|n| n.to_string()));
                    let target = w.key.strip_prefix(ORIGINAL_PREFIX).unwrap_or(&w.key).to_owned();
                    patch.originals.push((target, replicas));
                    patch.waiters.push(w.done);
                    continue;
                }
            };
            if self.stale(&values, &w.key, at, now) || patch.written.iter().any(|(k, t)| *k == w.key && *t > at) {
                tracing::debug!(configmap = %self.name(), key = %w.key, last_active = %format_time(at), "a newer last-active is stored; not written");
                let _ = w.done.send(Ok(()));
                continue;
            }
            patch.budget = patch.budget.min(budget);
            patch.data.insert(w.key.clone(), Some(format_time(at)));
            patch.written.retain(|(k, _)| *k != w.key);
            patch.written.push((w.key, at));
            patch.waiters.push(w.done);
        }
        let loaded = self.loaded_at.load(Ordering::Acquire) != u64::MAX;
        if let Some(keep) = keep.filter(|_| token && loaded)
            && let Some(budget) = keep.lead.budget(self.timeout)
        {
            let used: HashSet<(TargetKind, &str, &str)> = keep
                .rules
                .iter()
                .map(|r| (r.target.kind, r.target.namespace.as_str(), r.target.name.as_str()))
                .collect();
            let mut removed = values.unused(&used);
            for k in lock(&self.unparsed).iter() {
                if target_of(k).is_some_and(|t| !used.contains(&t)) {
                    removed.push(k.clone());
                }
            }
            removed.retain(|k| !patch.data.contains_key(k));
            if !removed.is_empty() {
                patch.budget = patch.budget.min(budget);
                for k in &removed {
                    patch.data.insert(k.clone(), None);
                }
                patch.removed = removed;
            }
            patch.keep = Some(keep.rules);
        }
        drop(values);
        if patch.data.is_empty() {
            // Nothing to remove: the removals are done.
            if let Some(rules) = patch.keep {
                self.kept(&rules);
            }
            return None;
        }
        Some(patch)
    }

    /// After a PATCH succeeded: what it wrote and removed is what is stored now.
    fn written(&self, patch: &Outgoing, bytes: u64) {
        self.sized(bytes);
        let mut values = lock(&self.values);
        for (k, at) in &patch.written {
            if let Some((kind, namespace, name)) = target_of(k) {
                values.set(&TargetRef { kind, namespace: namespace.to_owned(), name: name.to_owned() }, *at);
            }
        }
        let mut originals = lock(&self.originals);
        for (k, replicas) in &patch.originals {
            match replicas {
                Some(n) => originals.insert(k.clone(), *n),
                None => originals.remove(k),
            };
        }
        drop(originals);
        let mut unparsed = lock(&self.unparsed);
        for k in &patch.removed {
            if let Some((kind, namespace, name)) = target_of(k) {
                values.remove(kind, namespace, name);
            }
            unparsed.remove(k);
        }
        drop((values, unparsed));
        if !patch.removed.is_empty() {
            tracing::info!(configmap = %self.name(), keys = patch.removed.len(), "removed the last-active of targets no rule names");
        }
        if let Some(rules) = &patch.keep {
            self.kept(rules);
        }
    }

    /// The removals for `rules` are done (unless a reload has asked for others since).
    fn kept(&self, rules: &Running) {
        let mut batch = lock(&self.batch);
        if batch.keep.as_ref().is_some_and(|k| Arc::ptr_eq(&k.rules, rules)) {
            batch.keep = None;
        }
    }

    /// A merge patch of `data` into the ConfigMap (`None` removes a key), creating it
    /// when it is missing. Returns the size of the ConfigMap the API server answered with.
    async fn write(&self, data: &BTreeMap<String, Option<String>>) -> Result<u64, StateError> {
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
                    // Counted as it drains: the ConfigMap's size, for nothing.
                    return futures::io::copy_buf(answer, &mut futures::io::sink())
                        .await
                        .map_err(|e| failed(e.downcast().unwrap_or_else(kube::Error::ReadEvents)));
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
                // A removal from a ConfigMap that is not there is done already.
                data: Some(data.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect()),
                ..ConfigMap::default()
            };
            let post = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
            match self.api.create(&post, &map).await {
                Ok(created) => return Ok(json_size(&created)),
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
