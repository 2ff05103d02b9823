//! The Jobs of job rules and their pods as sqscale reads them: per (context, namespace)
//! one watch of the Jobs sqscale manages and one of their pods, each kept as a map of
//! what counting needs, so a poll's counts cost no API call; and the Jobs this process
//! created that the watch has not shown yet (spec §10.1 item 1).
//!
//! Counts are only given out while both watches are in step with the API server: from
//! their first complete list until a watch breaks, and again once it has listed anew
//! (spec §10.5a). A broken watch always lists again, rather than resuming, so "in step"
//! is known by an event of our own (`InitDone`), never guessed from silence. Until it
//! has, reads report why it broke; an expired resource version (410, routine on a long
//! watch) is no failure: the watch lists again at once, and reads find no counts
//! meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ObjectMeta};
use kube::runtime::watcher;
use tokio::time::Instant;

use super::display_context;
use crate::config::JobRule;
use crate::engine::Time;
use crate::engine::job::JobStatus;
use crate::error::chain;
use crate::sync::lock;
use crate::workload::TargetErrorKind;
use crate::workload::error::{KubeFailure, kind_of};
use crate::workload::jobs::{JOB_LABEL, JobsSnapshot, MANAGED_BY, SeenJob, TEMPLATE_HASH};
use crate::workload::parse_time;

/// How long a Job this process created may stay unseen by the watch before it is no
/// longer counted. A watch shows a new Job within a second or two; one that has not in
/// this long was most likely deleted while the watch was down (and missed by the list
/// that followed only if the list was already under way), and counting it for ever
/// would hold the rule below its demand.
pub(super) const UNSEEN_LIMIT: Duration = Duration::from_secs(600);

/// How many deleted Job names the watch remembers, for a create whose answer comes back
/// after the watch has already shown the Job come and go.
const DELETED_KEPT: usize = 256;

// === the objects as read ===

/// A batch/v1 Job as the cache reads it: its metadata and status. The spec (the pod
/// template) is never deserialised.
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct WatchedJob {
    pub(super) metadata: ObjectMeta,
    #[serde(default)]
    status: Option<WatchedJobStatus>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchedJobStatus {
    #[serde(default)]
    conditions: Option<Vec<Condition>>,
    #[serde(default)]
    completion_time: Option<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default)]
    last_transition_time: Option<String>,
}

/// A core/v1 Pod as the cache reads it: metadata (labels, owner) and its phase and
/// conditions; never its spec.
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct WatchedPod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<WatchedPodStatus>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct WatchedPodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    conditions: Option<Vec<Condition>>,
}

macro_rules! namespaced_resource {
    ($t:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

namespaced_resource!(WatchedJob, "Job", "batch", "v1", "jobs");
namespaced_resource!(WatchedPod, "Pod", "", "v1", "pods");

// === what the cache keeps ===

/// Where a Job stands by its conditions (KEDA's `isJobFinished`, spec §4 step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// Neither `Complete=True` nor `Failed=True` (`SuccessCriteriaMet` or
    /// `FailureTarget` alone is still unfinished, spec §12.9).
    Unfinished,
    Complete,
    Failed,
}

/// What the cache keeps of one Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CachedJob {
    /// Its `sqscale.io/job` label: the job rule it belongs to ("" if missing).
    pub(super) rule: String,
    pub(super) template_hash: Option<String>,
    pub(super) uid: Option<String>,
    pub(super) finish: Finish,
    /// Complete: `status.completionTime` (or the Complete condition's
    /// `lastTransitionTime` if the time is missing); Failed: the Failed condition's
    /// `lastTransitionTime`.
    pub(super) finished_at: Option<Time>,
    pub(super) created_at: Option<Time>,
}

impl CachedJob {
    /// The Job's name and what the cache keeps of it.
    pub(super) fn of(job: WatchedJob) -> (String, CachedJob) {
        let meta = job.metadata;
        let mut labels = meta.labels.unwrap_or_default();
        let status = job.status.unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        // The first condition that finished the Job decides, as KEDA reads it.
        let first = conditions.iter().find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"));
        let transition = |c: &Condition| c.last_transition_time.as_deref().and_then(parse_time);
        let (finish, finished_at) = match first {
            None => (Finish::Unfinished, None),
            Some(c) if c.type_ == "Complete" => {
                (Finish::Complete, status.completion_time.as_deref().and_then(parse_time).or_else(|| transition(c)))
            }
            Some(c) => (Finish::Failed, transition(c)),
        };
        let seen = CachedJob {
            rule: labels.remove(JOB_LABEL).unwrap_or_default(),
            template_hash: labels.remove(TEMPLATE_HASH),
            uid: meta.uid,
            finish,
            finished_at,
            created_at: meta.creation_timestamp.map(|t| Time(t.0.as_millisecond())),
        };
        (meta.name.unwrap_or_default(), seen)
    }

    /// Whether it carries sqscale's managed-by label: the watch asks for those only,
    /// but a relabelled Job leaves through an update, not a delete.
    fn managed(job: &WatchedJob) -> bool {
        job.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).is_some_and(|v| v == "sqscale")
    }

    fn seen(&self, name: &str, pending: bool) -> SeenJob {
        let status = match self.finish {
            Finish::Unfinished => JobStatus::Unfinished { pending },
            Finish::Complete => JobStatus::Complete,
            Finish::Failed => JobStatus::Failed,
        };
        SeenJob {
            name: name.to_owned(),
            template_hash: self.template_hash.clone(),
            status,
            finished_at: self.finished_at,
            created_at: self.created_at,
        }
    }
}

/// A pod's phase, as far as pending counts need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// What the cache keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CachedPod {
    /// Its `sqscale.io/job` label (from the Job's pod template).
    pub(super) rule: String,
    /// Its Job's uid: the `batch.kubernetes.io/controller-uid` (or older
    /// `controller-uid`) label, else its controlling Job owner reference.
    pub(super) job_uid: Option<String>,
    /// Its Job's name: `batch.kubernetes.io/job-name` (or `job-name`), else the owner's.
    pub(super) job_name: Option<String>,
    pub(super) phase: Phase,
    /// The types of its conditions whose status is True.
    pub(super) conditions: Vec<String>,
}

impl CachedPod {
    pub(super) fn of(pod: WatchedPod) -> (String, CachedPod) {
        let meta = pod.metadata;
        let mut labels = meta.labels.unwrap_or_default();
        let owner = meta
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.kind == "Job" && o.controller == Some(true));
        let label = |labels: &mut std::collections::BTreeMap<String, String>, new: &str, old: &str| {
            labels.remove(new).or_else(|| labels.remove(old))
        };
        let job_uid = label(&mut labels, "batch.kubernetes.io/controller-uid", "controller-uid")
            .or_else(|| owner.as_ref().map(|o| o.uid.clone()));
        let job_name = label(&mut labels, "batch.kubernetes.io/job-name", "job-name").or_else(|| owner.map(|o| o.name));
        let status = pod.status.unwrap_or_default();
        let phase = match status.phase.as_deref() {
            Some("Pending") | None => Phase::Pending,
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some(_) => Phase::Unknown,
        };
        let conditions =
            status.conditions.unwrap_or_default().into_iter().filter(|c| c.status == "True").map(|c| c.type_).collect();
        let seen =
            CachedPod { rule: labels.remove(JOB_LABEL).unwrap_or_default(), job_uid, job_name, phase, conditions };
        (meta.name.unwrap_or_default(), seen)
    }

    /// Whether this pod alone ends its Job's pending state (spec §4 step 3): with no
    /// `pending_pod_conditions`, being Running or Succeeded; otherwise having every
    /// listed condition True. KEDA counts the distinct listed types the pod meets
    /// against the list's length, so a type listed twice can never be met (§12.9).
    pub(super) fn releases(&self, wanted: &[String]) -> bool {
        if wanted.is_empty() {
            return matches!(self.phase, Phase::Running | Phase::Succeeded);
        }
        let met: HashSet<&str> =
            wanted.iter().filter(|w| self.conditions.iter().any(|c| c == *w)).map(String::as_str).collect();
        met.len() == wanted.len()
    }
}

// === created, not seen yet ===

/// The Jobs this process created that the watch has not shown yet, so a lagging watch
/// never makes a poll create twice (spec §10.1 item 1).
#[derive(Debug, Default)]
pub(super) struct Unseen {
    /// Job name -> (its job rule, when its create was answered).
    created: HashMap<String, (String, Instant)>,
    /// Jobs the watch saw deleted lately, newest last: a create answered after the watch
    /// showed its Job come and go must not be counted.
    deleted: VecDeque<String>,
    /// When the Jobs watch last began a list.
    list_started: Option<Instant>,
}

impl Unseen {
    /// `name` was just created for `rule`; `cached` says whether the watch has shown it
    /// already (its event can come before the create's answer).
    pub(super) fn created(&mut self, name: &str, rule: &str, now: Instant, cached: bool) {
        if cached || self.deleted.iter().any(|d| d == name) {
            return;
        }
        self.created.insert(name.to_owned(), (rule.to_owned(), now));
    }

    /// The watch shows `name`.
    pub(super) fn seen(&mut self, name: &str) {
        if !self.created.is_empty() {
            self.created.remove(name);
        }
    }

    /// `name` is gone (a watch event, or this process deleted it).
    pub(super) fn deleted(&mut self, name: &str) {
        self.created.remove(name);
        if self.deleted.len() == DELETED_KEPT {
            self.deleted.pop_front();
        }
        self.deleted.push_back(name.to_owned());
    }

    pub(super) fn list_started(&mut self, now: Instant) {
        self.list_started = Some(now);
    }

    /// A list is complete: Jobs in it are seen, and Jobs created before it began but
    /// missing from it were deleted meanwhile (while the watch was down).
    pub(super) fn listed<T>(&mut self, jobs: &HashMap<String, T>) {
        let started = self.list_started;
        self.created.retain(|name, (_, at)| !jobs.contains_key(name) && started.is_none_or(|s| *at >= s));
    }

    /// How many of `rule`'s Jobs are created and unseen at `now`. Entries older than
    /// [`UNSEEN_LIMIT`] go, with a warning.
    pub(super) fn count(&mut self, rule: &str, namespace: &str, now: Instant) -> u32 {
        self.created.retain(|name, (r, at)| {
            let keep = now.saturating_duration_since(*at) < UNSEEN_LIMIT;
            if !keep {
                tracing::warn!(job = %r, namespace, name = %name, waited = ?UNSEEN_LIMIT, "a created Job never showed in the watch; no longer counted");
            }
            keep
        });
        let n = self.created.values().filter(|(r, _)| r == rule).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

// === the cache ===

/// One watched kind: its map, and whether it can be trusted.
pub(super) struct Side<T> {
    pub(super) map: Mutex<HashMap<String, T>>,
    /// True from a complete list until the watch breaks.
    pub(super) ready: AtomicBool,
    /// Why the watch broke, until it has listed again: what a read reports meanwhile.
    failure: Mutex<Option<(TargetErrorKind, String)>>,
    /// True once the first list has succeeded or failed (a first read waits for it).
    settled: tokio::sync::watch::Sender<bool>,
}

impl<T> Default for Side<T> {
    fn default() -> Self {
        Side {
            map: Mutex::default(),
            ready: AtomicBool::new(false),
            failure: Mutex::default(),
            settled: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// The Jobs and pods of one (context, namespace), with the Jobs created and not yet
/// seen there. The watches start on first use ([`JobCache::start`]); dropping the cache
/// stops them.
pub(super) struct JobCache {
    pub(super) context: String,
    pub(super) namespace: String,
    pub(super) jobs: Arc<Side<CachedJob>>,
    pub(super) pods: Arc<Side<CachedPod>>,
    pub(super) unseen: Arc<Mutex<Unseen>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for JobCache {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
    }
}

impl JobCache {
    pub(super) fn new(context: String, namespace: String) -> JobCache {
        JobCache {
            context,
            namespace,
            jobs: Arc::default(),
            pods: Arc::default(),
            unseen: Arc::default(),
            tasks: Mutex::default(),
        }
    }

    pub(super) fn started(&self) -> bool {
        !lock(&self.tasks).is_empty()
    }

    /// Starts the two watches (once) with `client`.
    pub(super) fn start(&self, client: &Client) {
        let mut tasks = lock(&self.tasks);
        if !tasks.is_empty() {
            return;
        }
        let jobs_api: Api<WatchedJob> = Api::namespaced(client.clone(), &self.namespace);
        let pods_api: Api<WatchedPod> = Api::namespaced(client.clone(), &self.namespace);
        let managed = format!("{MANAGED_BY}=sqscale");
        let where_ = format!("{}/{}", display_context(&self.context), self.namespace);
        let unseen = self.unseen.clone();
        // A list is a quorum read (kube's default, said here because [`Unseen::listed`]
        // relies on it): a Job whose create was answered before the list began is in
        // it, unless it was deleted since.
        let mut jobs_config = watcher::Config::default().labels(&managed);
        jobs_config.list_semantic = watcher::ListSemantic::MostRecent;
        let jobs_watch = keep(
            jobs_api,
            jobs_config,
            self.jobs.clone(),
            move |job| CachedJob::managed(&job).then(|| CachedJob::of(job)),
            move |happened| {
                let mut unseen = lock(&unseen);
                match happened {
                    Happened::ListStarted => unseen.list_started(Instant::now()),
                    Happened::Listed(map) => unseen.listed(map),
                    Happened::Applied(name) => unseen.seen(name),
                    Happened::Deleted(name) => unseen.deleted(name),
                }
            },
            format!("Jobs in {where_}"),
        );
        let pods_watch = keep(
            pods_api,
            watcher::Config::default().labels(JOB_LABEL),
            self.pods.clone(),
            |pod| Some(CachedPod::of(pod)),
            |_| {},
            format!("pods of Jobs in {where_}"),
        );
        tasks.push(tokio::spawn(jobs_watch));
        tasks.push(tokio::spawn(pods_watch));
    }

    /// Whether both first lists are in (or failed).
    pub(super) fn settled(&self) -> bool {
        *self.jobs.settled.borrow() && *self.pods.settled.borrow()
    }

    /// Waits (at most `timeout`) for both first lists to succeed or fail.
    pub(super) async fn settle(&self, timeout: Duration) {
        if self.settled() {
            return;
        }
        let (mut jobs, mut pods) = (self.jobs.settled.subscribe(), self.pods.settled.subscribe());
        let both = async {
            let _ = jobs.wait_for(|s| *s).await;
            let _ = pods.wait_for(|s| *s).await;
        };
        let _ = tokio::time::timeout(timeout, both).await;
    }

    /// Why a watch is broken, if one is (until it has listed again).
    pub(super) fn failure(&self) -> Option<(TargetErrorKind, String)> {
        lock(&self.jobs.failure).clone().or_else(|| lock(&self.pods.failure).clone())
    }

    /// Whether both watches are in step with the API server.
    pub(super) fn ready(&self) -> bool {
        self.jobs.ready.load(Ordering::SeqCst) && self.pods.ready.load(Ordering::SeqCst)
    }

    /// `rule`'s Jobs now, or `None` while the counts cannot be trusted.
    pub(super) fn snapshot(&self, rule: &JobRule, now: Instant) -> Option<JobsSnapshot> {
        if !self.ready() {
            return None;
        }
        let jobs = lock(&self.jobs.map);
        let pods = lock(&self.pods.map);
        let seen = snapshot_of(&rule.name, &rule.pending_pod_conditions, &jobs, &pods);
        drop(pods);
        // Under the Jobs map's lock, as the watch updates both (see [`JobCache::created`]).
        let created_unseen = lock(&self.unseen).count(&rule.name, &self.namespace, now);
        drop(jobs);
        Some(JobsSnapshot { jobs: seen, created_unseen })
    }

    /// A create for `rule` was answered with `name`.
    pub(super) fn created(&self, name: &str, rule: &str, now: Instant) {
        // Lock order: the Jobs map, then the set (the watch takes them in this order
        // too), so the Job's event is either already in the map or removes it after.
        let jobs = lock(&self.jobs.map);
        lock(&self.unseen).created(name, rule, now, jobs.contains_key(name));
    }

    /// This process deleted `name` (or found it gone).
    pub(super) fn deleted(&self, name: &str) {
        let _jobs = lock(&self.jobs.map);
        lock(&self.unseen).deleted(name);
    }

    /// Each managed Job here: (its job rule, its name, finished).
    pub(super) fn managed_jobs(&self) -> Vec<(String, String, bool)> {
        let jobs = lock(&self.jobs.map);
        jobs.iter().map(|(name, j)| (j.rule.clone(), name.clone(), j.finish != Finish::Unfinished)).collect()
    }
}

/// `rule`'s Jobs among `jobs`, in name order, each unfinished one pending unless one of
/// its pods releases it ([`CachedPod::releases`] with `conditions`).
pub(super) fn snapshot_of(
    rule: &str,
    conditions: &[String],
    jobs: &HashMap<String, CachedJob>,
    pods: &HashMap<String, CachedPod>,
) -> Vec<SeenJob> {
    let mut mine: Vec<(&String, &CachedJob)> = jobs.iter().filter(|(_, j)| j.rule == rule).collect();
    mine.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut by_uid = HashMap::new();
    let mut by_name = HashMap::new();
    for (i, (name, job)) in mine.iter().enumerate() {
        if job.finish == Finish::Unfinished {
            if let Some(uid) = &job.uid {
                by_uid.insert(uid.as_str(), i);
            }
            by_name.insert(name.as_str(), i);
        }
    }
    let mut released = vec![false; mine.len()];
    if !by_name.is_empty() {
        for pod in pods.values().filter(|p| p.rule == rule) {
            // The Job's uid when the pod names one (a Job of the same name made again
            // is another Job); its name otherwise, or when the Job shows no uid.
            let by_job_name = || pod.job_name.as_deref().and_then(|n| by_name.get(n).copied());
            let job = match pod.job_uid.as_deref() {
                Some(uid) => by_uid.get(uid).copied().or_else(|| by_job_name().filter(|&i| mine[i].1.uid.is_none())),
                None => by_job_name(),
            };
            if let Some(i) = job
                && !released[i]
                && pod.releases(conditions)
            {
                released[i] = true;
            }
        }
    }
    mine.iter().zip(released).map(|((name, job), released)| job.seen(name, !released)).collect()
}

/// What the Jobs watch tells the created-not-seen set.
pub(super) enum Happened<'a, T> {
    ListStarted,
    Listed(&'a HashMap<String, T>),
    Applied(&'a str),
    Deleted(&'a str),
}

/// Keeps `side` in step with a watch of `api`: kube's `watcher` (list, then watch),
/// applied into a map the way kube's reflector applies events to its store (a list
/// replaces the whole map when complete). `of` turns an object into its entry (`None`:
/// not ours, removed). After an error the watch is dropped and, after a backoff, listed
/// again from the start: until then the side is not ready.
async fn keep<K, T>(
    api: Api<K>,
    config: watcher::Config,
    side: Arc<Side<T>>,
    of: impl Fn(K) -> Option<(String, T)> + Send + 'static,
    mut hook: impl FnMut(Happened<'_, T>) + Send + 'static,
    what: String,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    T: Send + 'static,
{
    let mut backoff = watcher::DefaultBackoff::default();
    'watch: loop {
        let events = watcher(api.clone(), config.clone());
        futures::pin_mut!(events);
        let mut listing: Option<HashMap<String, T>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(HashMap::new());
                    hook(Happened::ListStarted);
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    if let Some((name, entry)) = of(obj) {
                        listing.get_or_insert_default().insert(name, entry);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let mut map = lock(&side.map);
                    *map = listing.take().unwrap_or_default();
                    hook(Happened::Listed(&map));
                    drop(map);
                    side.ready.store(true, Ordering::SeqCst);
                    *lock(&side.failure) = None;
                    side.settled.send_replace(true);
                    backoff = watcher::DefaultBackoff::default();
                }
                Ok(watcher::Event::Apply(obj)) => {
                    let name = obj.meta().name.clone().unwrap_or_default();
                    let mut map = lock(&side.map);
                    match of(obj) {
                        Some((name, entry)) => {
                            map.insert(name.clone(), entry);
                            hook(Happened::Applied(&name));
                        }
                        None => {
                            map.remove(&name);
                            hook(Happened::Deleted(&name));
                        }
                    }
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let name = obj.meta().name.clone().unwrap_or_default();
                    let mut map = lock(&side.map);
                    map.remove(&name);
                    hook(Happened::Deleted(&name));
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    // The resource version expired (the API server's window moved on):
                    // routine on a long watch, not a failure. List again at once.
                    side.ready.store(false, Ordering::SeqCst);
                    tracing::debug!(watch = %what, "watch expired; listing again");
                    continue 'watch;
                }
                Err(e) => {
                    let (kind, message) = failure_of(&what, e);
                    if side.ready.swap(false, Ordering::SeqCst) {
                        tracing::warn!(error = %message, kind = kind.as_str(), "watch failed");
                    } else {
                        tracing::debug!(error = %message, kind = kind.as_str(), "watch failed again");
                    }
                    *lock(&side.failure) = Some((kind, message));
                    side.settled.send_replace(true);
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))).await;
    }
}

/// A watch's failure in sqscale's words: its kind, and what failed, in the API's words.
fn failure_of(what: &str, e: watcher::Error) -> (TargetErrorKind, String) {
    let (step, error) = match e {
        watcher::Error::InitialListFailed(e) => ("listing", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watching", e),
        watcher::Error::WatchError(status) => ("watching", kube::Error::Api(status)),
        watcher::Error::NoResourceVersion => {
            let message = format!("watching {what}: an event without metadata.resourceVersion");
            return (TargetErrorKind::Other, message);
        }
    };
    let kind = kind_of(&error);
    let message = format!(
        "{step} {what} failed (no Job is created or deleted there until it has listed again): {}",
        chain(&KubeFailure(error))
    );
    (kind, message)
}

#[cfg(test)]
#[path = "job_cache_tests.rs"]
mod tests;
