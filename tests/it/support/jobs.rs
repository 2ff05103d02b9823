//! A Job controller and kubelet for the fake API server ([`super::fake_kube`]): it runs the
//! fake's batch/v1 Jobs the way a cluster does, and their "containers" work off messages of
//! the SQS emulator (moto) with the real aws-sdk-sqs.
//!
//! For each Job it runs (unfinished, not suspended, not being deleted) it creates pods
//! (`generateName: <job>-`, the template's labels, which carry the Job's controller labels,
//! and an owner reference to the Job), up to `parallelism` at once and `completions` in all,
//! and a new one for each failed pod until `backoffLimit` failures are exceeded. A pod is
//! `Pending`, after the scheduling delay scheduled and `Running` (conditions
//! `PodScheduled`, `Initialized`, `ContainersReady`, `Ready` True), then its container
//! receives up to N messages (the first container's `MESSAGES_PER_JOB` env value, else
//! [`Behaviour::messages_per_job`]) from the queue, holds them for the work duration,
//! deletes them and exits 0 (`Succeeded`); a failing container exits 1 without deleting
//! them (`Failed`). A container that finds no message still exits 0, as a real worker does.
//! The Job's status follows as Kubernetes >= 1.31 writes it: `startTime`, `active`, `ready`,
//! `succeeded`, `failed`, then `SuccessCriteriaMet` and, with no pod left running,
//! `Complete` with `completionTime`; or `FailureTarget` then `Failed` (no
//! `completionTime`). A suspended Job (`spec.suspend: true`) gets no pods and a
//! `Suspended` condition. `spec.ttlSecondsAfterFinished` deletes a finished Job (as the TTL
//! controller, in the background).
//!
//! Honest by construction: it reads the fake's store on every change (no private state
//! about Jobs), and every write goes through the store, so watchers see each step.
//!
//! Deviations: no exponential back-off before a replacement pod; `restartPolicy:
//! OnFailure` gets a new pod too (a real kubelet restarts the container in the same pod);
//! no pod finalizers (`batch.kubernetes.io/job-tracking`), no `terminating` pods (a deleted
//! pod is gone at once), no `activeDeadlineSeconds`, no Indexed completion mode.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Credentials;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fake_kube::{FakeKube, Propagation, Store, finished};

/// The node every scheduled pod lands on.
const NODE: &str = "fake-node";

/// How the controller's pods behave; may be changed while it runs ([`JobController::set_behaviour`]).
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// From a pod's creation to its scheduling. `None`: never scheduled (the pod stays
    /// `Pending` with `PodScheduled` False, reason `Unschedulable`, until the behaviour
    /// changes).
    pub scheduling_delay: Option<Duration>,
    /// How long a container holds its messages before it deletes them and exits.
    pub work: Duration,
    /// Containers exit 1 after their work, leaving their messages undeleted.
    pub fail: bool,
    /// Messages a container takes when its Job does not say (`MESSAGES_PER_JOB`).
    pub messages_per_job: u32,
    /// The receive's `VisibilityTimeout` (`None`: the queue's): how soon the messages of a
    /// failed container are visible again.
    pub visibility_timeout: Option<Duration>,
    /// Only Jobs with all these labels run here (`None`: all Jobs).
    pub labels: Option<Vec<(String, String)>>,
    /// The queue's region: moto keeps queues per region, and a queue URL on 127.0.0.1
    /// does not say which (default `us-east-1`, as `support::sqs`).
    pub region: String,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            scheduling_delay: Some(Duration::from_millis(50)),
            work: Duration::from_millis(200),
            fail: false,
            messages_per_job: 1,
            visibility_timeout: None,
            labels: None,
            region: "us-east-1".to_owned(),
        }
    }
}

impl Behaviour {
    pub fn work(mut self, work: Duration) -> Behaviour {
        self.work = work;
        self
    }

    pub fn scheduling_delay(mut self, delay: Duration) -> Behaviour {
        self.scheduling_delay = Some(delay);
        self
    }

    /// Pods are never scheduled.
    pub fn stuck(mut self) -> Behaviour {
        self.scheduling_delay = None;
        self
    }

    pub fn failing(mut self) -> Behaviour {
        self.fail = true;
        self
    }

    pub fn messages_per_job(mut self, n: u32) -> Behaviour {
        self.messages_per_job = n;
        self
    }

    pub fn visibility_timeout(mut self, timeout: Duration) -> Behaviour {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// The region of the queue the containers read.
    pub fn region(mut self, region: &str) -> Behaviour {
        self.region = region.to_owned();
        self
    }

    /// Runs only the Jobs labelled `key=value` (again for more labels).
    pub fn only(mut self, key: &str, value: &str) -> Behaviour {
        self.labels.get_or_insert_with(Vec::new).push((key.to_owned(), value.to_owned()));
        self
    }

    fn runs(&self, job: &Value) -> bool {
        self.labels.as_ref().is_none_or(|want| {
            want.iter().all(|(k, v)| job.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(&json!(v)))
        })
    }
}

/// What the containers did, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub pods_created: u64,
    /// Messages received.
    pub received: u64,
    /// Messages deleted (worked off).
    pub deleted: u64,
    /// Containers that received no message.
    pub found_nothing: u64,
    /// SQS calls that failed (the container then exits 1).
    pub sqs_errors: u64,
}

struct Inner {
    store: Store,
    behaviour: Mutex<Behaviour>,
    /// Bumped by `set_behaviour`, so stuck pods look again.
    behaviour_changed: watch::Sender<u64>,
    stats: Mutex<Stats>,
    sqs: Option<(Client, String)>,
}

impl Inner {
    fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running controller; stops (and its pods' containers with it) when dropped.
pub struct JobController {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl JobController {
    /// Starts running the Jobs of `fake`. With `queue_url` (a moto queue on 127.0.0.1), the
    /// containers work off its messages; without, they only wait the work duration.
    pub async fn start(fake: &FakeKube, queue_url: Option<String>, behaviour: Behaviour) -> JobController {
        let sqs = match queue_url {
            Some(url) => Some((sqs_client(&url, &behaviour.region).await, url)),
            None => None,
        };
        let inner = Arc::new(Inner {
            store: fake.store(),
            behaviour: Mutex::new(behaviour),
            behaviour_changed: watch::Sender::new(0),
            stats: Mutex::new(Stats::default()),
            sqs,
        });
        let task = tokio::spawn(run(inner.clone()));
        JobController { inner, task }
    }

    /// Changes the behaviour: new pods follow it at once, stuck pods look again, and running
    /// containers use it for what they have not done yet.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.inner.behaviour) = behaviour;
        self.inner.behaviour_changed.send_modify(|n| *n += 1);
    }

    pub fn stats(&self) -> Stats {
        *self.inner.stats()
    }

    /// Stops the controller and every container (their pods stay as they are).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for JobController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client of the moto server that serves `queue_url`: only one on this machine.
async fn sqs_client(queue_url: &str, region: &str) -> Client {
    let url = url::Url::parse(queue_url).unwrap_or_else(|e| panic!("queue URL {queue_url}: {e}"));
    let host = url.host_str().unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost"),
        "queue URL {queue_url}: the test Job controller only talks to an emulator on 127.0.0.1"
    );
    let endpoint = format!("{}://{}:{}", url.scheme(), host, url.port_or_known_default().unwrap_or(80));
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
    Client::new(&config)
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).unwrap_or_default()
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default()
}

fn has_condition(obj: &Value, type_: &str, status: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == status))
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn owned_by(pod: &Value, uid: &str) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid && r["controller"] == true))
}

/// The controller's loop: one pass over every Job after each change of the store (and when
/// a TTL runs out).
async fn run(inner: Arc<Inner>) {
    let mut changes = inner.store.changes();
    let mut containers: HashMap<String, Container> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let behaviour = inner.behaviour();
        let pods = inner.store.pods(None);
        // A pod that is gone takes its container with it (its messages stay in flight).
        let live: HashSet<&str> = pods.iter().map(|p| meta(p, "uid")).collect();
        containers.retain(|uid, _| live.contains(uid.as_str()));
        let mut wake: Option<Duration> = None;
        for job in inner.store.jobs(None).iter().filter(|j| behaviour.runs(j)) {
            if let Some(due) = sync_job(&inner, job, &pods, &mut containers) {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
            // Pods left by a controller stopped since (or created by a test) are taken over.
            let uid = meta(job, "uid");
            for pod in pods.iter().filter(|p| owned_by(p, uid) && meta(p, "namespace") == meta(job, "namespace")) {
                if matches!(phase(pod), "Pending" | "Running")
                    && !deleting(pod)
                    && !containers.contains_key(meta(pod, "uid"))
                {
                    start(&inner, job, pod, &mut containers);
                }
            }
        }
        let ttl = async move {
            match wake {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = ttl => {}
        }
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastProbeTime": at, "lastTransitionTime": at,
    })
}

/// Sets (or replaces, if its status differs) a condition.
fn set_condition(conditions: &mut Vec<Value>, new: Value) {
    match conditions.iter_mut().find(|c| c["type"] == new["type"]) {
        Some(c) if c["status"] == new["status"] => {}
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

fn count(status: &mut serde_json::Map<String, Value>, key: &str, n: usize) {
    // `active`, `succeeded` and `failed` are omitempty.
    if n == 0 {
        status.remove(key);
    } else {
        status.insert(key.into(), json!(n));
    }
}

/// One Job's step. Returns how long until its TTL runs out, if it has one pending.
fn sync_job(
    inner: &Arc<Inner>,
    job: &Value,
    pods: &[Value],
    containers: &mut HashMap<String, Container>,
) -> Option<Duration> {
    let (ns, name, uid) = (meta(job, "namespace"), meta(job, "name"), meta(job, "uid"));
    let store = &inner.store;
    if let Some(failed) = finished(job) {
        return ttl(store, job, failed);
    }
    if deleting(job) {
        return None;
    }
    let mine: Vec<&Value> = pods.iter().filter(|p| meta(p, "namespace") == ns && owned_by(p, uid)).collect();
    let active: Vec<&Value> =
        mine.iter().copied().filter(|p| matches!(phase(p), "Pending" | "Running") && !deleting(p)).collect();
    let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count();
    let failed = mine.iter().filter(|p| phase(p) == "Failed").count();
    let spec = &job["spec"];
    let int = |key: &str, default: i64| spec[key].as_i64().unwrap_or(default).max(0) as usize;
    let parallelism = int("parallelism", 1);
    let completions = spec["completions"].as_i64().map(|c| c.max(0) as usize);
    let backoff_limit = int("backoffLimit", 6);
    let suspended = spec["suspend"].as_bool() == Some(true);
    let at = now();

    let mut status = job["status"].as_object().cloned().unwrap_or_default();
    let mut conditions: Vec<Value> = status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut delete_active = false;
    let mut active_count = active.len();
    if suspended {
        // Suspending deletes the running pods and forgets the start.
        delete_active = true;
        active_count = 0;
        status.remove("startTime");
        set_condition(&mut conditions, condition("Suspended", "True", "JobSuspended", "Job suspended", &at));
    } else {
        if has_condition(job, "Suspended", "True") {
            set_condition(&mut conditions, condition("Suspended", "False", "JobResumed", "Job resumed", &at));
        }
        status.entry("startTime").or_insert(json!(at));
        let has = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
        if has("SuccessCriteriaMet") {
            if active.is_empty() {
                let message = "Reached expected number of succeeded pods";
                conditions.push(condition("Complete", "True", "CompletionsReached", message, &at));
                status.insert("completionTime".into(), json!(at));
            } else {
                delete_active = true;
            }
        } else if has("FailureTarget") {
            if active.is_empty() {
                let message = "Job has reached the specified backoff limit";
                conditions.push(condition("Failed", "True", "BackoffLimitExceeded", message, &at));
            } else {
                delete_active = true;
            }
        } else if failed > backoff_limit {
            let message = "Job has reached the specified backoff limit";
            conditions.push(condition("FailureTarget", "True", "BackoffLimitExceeded", message, &at));
            delete_active = true;
        } else if completions.map_or(succeeded > 0 && active.is_empty(), |c| succeeded >= c) {
            let message = "Reached expected number of succeeded pods";
            conditions.push(condition("SuccessCriteriaMet", "True", "CompletionsReached", message, &at));
        } else {
            let want = parallelism.min(completions.map_or(parallelism, |c| c - succeeded));
            for _ in active.len()..want {
                if create_pod(inner, job, containers) {
                    active_count += 1;
                }
            }
        }
    }
    if delete_active {
        for pod in &active {
            store.delete_pod(ns, meta(pod, "name"), meta(pod, "uid"));
        }
        active_count = 0;
    }
    let ready = if delete_active { 0 } else { active.iter().filter(|p| has_condition(p, "Ready", "True")).count() };
    count(&mut status, "active", active_count);
    count(&mut status, "succeeded", succeeded);
    count(&mut status, "failed", failed);
    status.insert("ready".into(), json!(ready));
    status.insert("terminating".into(), json!(0));
    status.insert("uncountedTerminatedPods".into(), json!({}));
    if !conditions.is_empty() {
        status.insert("conditions".into(), json!(conditions));
    }
    let status = Value::Object(status);
    store.write_job_status(ns, name, uid, |s| *s = status);
    None
}

/// The TTL-after-finished controller: deletes a finished Job `ttlSecondsAfterFinished`
/// after it finished; otherwise says how long until then.
fn ttl(store: &Store, job: &Value, failed: bool) -> Option<Duration> {
    let secs = job.pointer("/spec/ttlSecondsAfterFinished").and_then(Value::as_i64)?;
    let finished_at = if failed {
        let conditions = job.pointer("/status/conditions").and_then(Value::as_array)?;
        conditions.iter().find(|c| c["type"] == "Failed")?["lastTransitionTime"].as_str()?.to_owned()
    } else {
        job.pointer("/status/completionTime").and_then(Value::as_str)?.to_owned()
    };
    let finished_at: jiff::Timestamp = finished_at.parse().ok()?;
    let due = finished_at + jiff::SignedDuration::from_secs(secs);
    let left = jiff::Timestamp::now().duration_until(due);
    if left.is_positive() {
        return Some(left.unsigned_abs() + Duration::from_millis(10));
    }
    store.delete_job(meta(job, "namespace"), meta(job, "name"), Propagation::Background);
    None
}

/// Creates one pod of `job` and starts its lifecycle; false if the create was refused.
fn create_pod(inner: &Arc<Inner>, job: &Value, containers: &mut HashMap<String, Container>) -> bool {
    let (ns, name, uid) = (meta(job, "namespace"), meta(job, "name"), meta(job, "uid"));
    let template = &job["spec"]["template"];
    let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
    // With a manual selector the template may lack them; the controller adds them anyway.
    for (key, value) in [
        (super::fake_kube::CONTROLLER_UID, uid),
        (super::fake_kube::LEGACY_CONTROLLER_UID, uid),
        (super::fake_kube::JOB_NAME, name),
        (super::fake_kube::LEGACY_JOB_NAME, name),
    ] {
        if labels.get(key).is_none() {
            labels[key] = json!(value);
        }
    }
    let mut metadata = json!({
        "generateName": format!("{name}-"),
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true,
        }],
    });
    if let Some(annotations) = template.pointer("/metadata/annotations") {
        metadata["annotations"] = annotations.clone();
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
    let created = match inner.store.create_pod(ns, pod) {
        Ok(created) => created,
        Err(message) => {
            // A real controller records a FailedCreate event and tries again later.
            eprintln!("test job controller: creating a pod of Job {ns}/{name}: {message}");
            return false;
        }
    };
    inner.stats().pods_created += 1;
    start(inner, job, &created, containers);
    true
}

/// Starts the life of `pod` of `job` (from its current phase: a pod created by a controller
/// stopped since is taken over).
fn start(inner: &Arc<Inner>, job: &Value, pod: &Value, containers: &mut HashMap<String, Container>) {
    let messages = job
        .pointer("/spec/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .and_then(|env| env.iter().find(|e| e["name"] == "MESSAGES_PER_JOB"))
        .and_then(|e| e["value"].as_str())
        .and_then(|v| v.parse::<u32>().ok());
    let pod = PodRef {
        ns: meta(pod, "namespace").to_owned(),
        name: meta(pod, "name").to_owned(),
        uid: meta(pod, "uid").to_owned(),
        messages,
        running: phase(pod) == "Running",
    };
    let uid = pod.uid.clone();
    let inner = inner.clone();
    containers.insert(uid, Container(tokio::spawn(async move { run_pod(inner, pod).await.unwrap_or_default() })));
}

/// A pod's running life (its [`run_pod`] task), killed when dropped: when its pod is gone,
/// or with the controller.
struct Container(JoinHandle<()>);

impl Drop for Container {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct PodRef {
    ns: String,
    name: String,
    uid: String,
    /// The Job's own messages per container, if it says.
    messages: Option<u32>,
    /// Already running (taken over from a controller stopped since): straight to the work.
    running: bool,
}

impl PodRef {
    /// Writes through the store; `None` once the pod is gone.
    fn write(&self, store: &Store, change: impl FnOnce(&mut Value)) -> Option<Value> {
        store.write_pod(&self.ns, &self.name, &self.uid, change)
    }
}

fn container_statuses(pod: &Value, state: Value, ready: bool) -> Value {
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c["name"], "image": c["image"], "imageID": "", "containerID": "containerd://fake",
                "ready": ready, "started": ready, "restartCount": 0, "state": state,
            })
        })
        .collect();
    json!(statuses)
}

/// One pod's life: scheduling, running, the container's work, its exit. `None` once the
/// pod is gone.
async fn run_pod(inner: Arc<Inner>, pod: PodRef) -> Option<()> {
    let created = tokio::time::Instant::now();
    let mut behaviour_changed = inner.behaviour_changed.subscribe();
    if !pod.running {
        schedule(&inner, &pod, created, &mut behaviour_changed).await?;
    }
    let exit_code = work(&inner, &pod).await;
    finish(&inner, &pod, exit_code).await
}

/// Pending until the scheduling delay has passed (forever while the behaviour says stuck),
/// then scheduled and Running.
async fn schedule(
    inner: &Arc<Inner>,
    pod: &PodRef,
    created: tokio::time::Instant,
    behaviour_changed: &mut watch::Receiver<u64>,
) -> Option<()> {
    let store = &inner.store;
    loop {
        behaviour_changed.borrow_and_update();
        match inner.behaviour().scheduling_delay {
            None => {
                let at = now();
                let message = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.";
                pod.write(store, |p| {
                    p["status"]["conditions"] =
                        json!([condition("PodScheduled", "False", "Unschedulable", message, &at)]);
                })?;
                behaviour_changed.changed().await.ok()?;
            }
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(created + delay) => break,
                    changed = behaviour_changed.changed() => changed.ok()?,
                }
            }
        }
    }
    let at = now();
    pod.write(store, |p| {
        p["spec"]["nodeName"] = json!(NODE);
        p["status"]["conditions"] = json!([condition("PodScheduled", "True", "", "", &at)]);
    })?;
    let at = now();
    pod.write(store, |p| {
        let mut conditions = vec![];
        for type_ in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"] {
            let mut c = condition(type_, "True", "", "", &at);
            c.as_object_mut().map(|o| (o.remove("reason"), o.remove("message")));
            conditions.push(c);
        }
        let statuses = container_statuses(p, json!({"running": {"startedAt": at}}), true);
        let status = p["status"].as_object_mut().expect("a pod has a status");
        status.insert("phase".into(), json!("Running"));
        status.insert("conditions".into(), json!(conditions));
        status.insert("hostIP".into(), json!("10.0.0.1"));
        status.insert("hostIPs".into(), json!([{"ip": "10.0.0.1"}]));
        status.insert("podIP".into(), json!("10.244.0.10"));
        status.insert("podIPs".into(), json!([{"ip": "10.244.0.10"}]));
        status.insert("startTime".into(), json!(at));
        status.insert("containerStatuses".into(), statuses);
    })?;
    Some(())
}

/// Ends a pod's life: its container exited with `exit_code`.
async fn finish(inner: &Arc<Inner>, pod: &PodRef, exit_code: i32) -> Option<()> {
    let store = &inner.store;
    let at = now();
    pod.write(store, |p| {
        let (phase, reason) = if exit_code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
        let mut conditions = vec![];
        for (type_, status) in [
            ("PodReadyToStartContainers", "False"),
            ("Initialized", "True"),
            ("Ready", "False"),
            ("ContainersReady", "False"),
            ("PodScheduled", "True"),
        ] {
            let mut c = condition(type_, status, "PodCompleted", "", &at);
            c.as_object_mut().map(|o| o.remove("message"));
            if type_ == "PodScheduled" || type_ == "PodReadyToStartContainers" {
                c.as_object_mut().map(|o| o.remove("reason"));
            }
            conditions.push(c);
        }
        let started = p.pointer("/status/startTime").cloned().unwrap_or(json!(at));
        let state = json!({"terminated": {
            "exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": at,
            "containerID": "containerd://fake",
        }});
        let statuses = container_statuses(p, state, false);
        let status = p["status"].as_object_mut().expect("a pod has a status");
        status.insert("phase".into(), json!(phase));
        status.insert("conditions".into(), json!(conditions));
        status.insert("containerStatuses".into(), statuses);
    })?;
    Some(())
}

/// The container: takes up to N messages, holds them, deletes them (or, failing, not).
/// Returns its exit code.
async fn work(inner: &Arc<Inner>, pod: &PodRef) -> i32 {
    let behaviour = inner.behaviour();
    let mut receipts = Vec::new();
    if let Some((client, url)) = &inner.sqs {
        let want = pod.messages.unwrap_or(behaviour.messages_per_job) as usize;
        while receipts.len() < want {
            let mut receive =
                client.receive_message().queue_url(url).max_number_of_messages((want - receipts.len()).min(10) as i32);
            if let Some(t) = behaviour.visibility_timeout {
                receive = receive.visibility_timeout(t.as_secs() as i32);
            }
            match receive.send().await {
                Ok(out) if out.messages().is_empty() => break,
                Ok(out) => {
                    let handles = out.messages().iter().filter_map(|m| m.receipt_handle().map(str::to_owned));
                    let before = receipts.len();
                    receipts.extend(handles);
                    inner.stats().received += (receipts.len() - before) as u64;
                }
                Err(e) => {
                    eprintln!("test job controller: pod {}/{}: receive from {url}: {e:?}", pod.ns, pod.name);
                    inner.stats().sqs_errors += 1;
                    return 1;
                }
            }
        }
        if receipts.is_empty() {
            inner.stats().found_nothing += 1;
        }
    }
    tokio::time::sleep(behaviour.work).await;
    if inner.behaviour().fail {
        return 1;
    }
    if let Some((client, url)) = &inner.sqs {
        for receipt in receipts {
            match client.delete_message().queue_url(url).receipt_handle(receipt).send().await {
                Ok(_) => inner.stats().deleted += 1,
                Err(e) => {
                    eprintln!("test job controller: pod {}/{}: delete from {url}: {e:?}", pod.ns, pod.name);
                    inner.stats().sqs_errors += 1;
                    return 1;
                }
            }
        }
    }
    0
}
