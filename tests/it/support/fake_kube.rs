//! In-process fake Kubernetes API server for integration tests: HTTPS with a self-signed certificate,
//! bearer-token auth, and the real API server's wire format for what `sqscale` touches.
//!
//! What it serves (all namespaced resources also list/watch cluster-wide):
//!
//! * `apps/v1` Deployments and StatefulSets: GET, LIST, WATCH, POST, PUT, PATCH, DELETE, and the
//!   `/scale` subresource (GET, PUT, PATCH) that renders an `autoscaling/v1` `Scale`.
//! * `coordination.k8s.io/v1` Leases, `events.k8s.io/v1` Events and core `v1` Events (the same verbs).
//! * Core `v1` ConfigMaps (the same verbs), validated as the real server does: keys, string values,
//!   and at most 1 MiB of data.
//! * `batch/v1` Jobs and core `v1` Pods (the same verbs, and the `/status` subresource: GET, PUT,
//!   PATCH), with the real server's defaulting, validation and deletion ([`batch`]): a Job gets
//!   `completions`/`parallelism` 1, `backoffLimit` 6, the generated selector
//!   (`batch.kubernetes.io/controller-uid: <uid>`) and the labels `controller-uid`,
//!   `batch.kubernetes.io/controller-uid`, `job-name`, `batch.kubernetes.io/job-name` on its pod
//!   template (and on itself if it has none); 422 Invalid for a `restartPolicy` other than
//!   `OnFailure`/`Never` (a missing one defaults to `Always`), no containers, an invalid name or
//!   label, a selector that is not the generated one, a changed template. A new Pod is `Pending`.
//!   Field selectors `status.successful` (Jobs) and `status.phase`, `spec.nodeName`, ... (Pods).
//!   Nothing runs them unless a test starts the Job controller (`tests/it/support/jobs.rs`).
//! * `authorization.k8s.io/v1` SelfSubjectAccessReviews, `/version`, discovery (`/api`, `/apis`, ...).
//! * KEDA's custom resources `keda.sh/v1alpha1`: ScaledObjects and TriggerAuthentications
//!   (namespaced) and ClusterTriggerAuthentications (cluster-scoped: `/apis/keda.sh/v1alpha1/
//!   clustertriggerauthentications[/NAME]`), with the same verbs. As the real server does for
//!   custom resources, list items keep their `kind` and `apiVersion`.
//!
//! Behaviour copied from the real API server, because client code depends on it:
//!
//! * `metadata.resourceVersion` is one global counter, bumped by every write that changes an object.
//!   A write that changes nothing (a no-op patch) is not stored and does not bump it, as in the real
//!   server (etcd is not written), so it produces no watch event either.
//! * A PUT or PATCH whose (patched) body carries a `metadata.resourceVersion` different from the stored
//!   one fails with 409 Conflict; without one the write is unconditional.
//! * Errors are `metav1.Status` JSON bodies with the real `reason`, `message` and `details`.
//! * List items of built-in types carry no `kind`/`apiVersion` (the real server leaves them out);
//!   items of custom resources, single objects and watch events do.
//! * Deployments and StatefulSets "roll out" instantly: `status` always mirrors `spec.replicas`, with
//!   zero counts left out where the real API types use `omitempty`.
//! * POST with `metadata.generateName` and no name names the object `<generateName><5 random
//!   lowercase alphanumerics>` (the prefix cut to 58 characters; a taken name is generated again).
//! * DELETE of a Job or Pod honours `propagationPolicy` (query parameter or `DeleteOptions` body,
//!   also `orphanDependents`, `preconditions` and `dryRun`): `Background` removes the Job at once
//!   and a garbage collector its pods shortly after ([`FakeKube::set_gc_delay`]); `Foreground`
//!   sets `deletionTimestamp` and the `foregroundDeletion` finalizer, deletes the pods, then the
//!   Job; `Orphan` (also batch/v1's default when none is given, with the real `Warning` header)
//!   takes the Job out of its pods' `ownerReferences`, then deletes it. An object whose last
//!   finalizer is removed while it is being deleted is deleted.
//! * A PUT or PATCH of a Job or Pod keeps the stored `status`: status is written through `/status`.
//!
//! Known deviations are listed in the doc of [`FakeKube`].

// Each integration-test crate includes `mod support;` and uses a different part of this helper.
#![allow(dead_code)]

// A path of its own: `tests/bench_daemon.rs` includes this file by `#[path]` too.
#[path = "fake_kube/batch.rs"]
mod batch;

pub use batch::{
    CONTROLLER_UID, JOB_NAME, JobCounts, JobEvent, LEGACY_CONTROLLER_UID, LEGACY_JOB_NAME, Propagation, Store, finished,
};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The user the fake pretends the token belongs to (appears in 403 messages).
const USER: &str = "tester";
/// The version `GET /version` reports.
const GIT_VERSION: &str = "v1.34.0-fake";

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// A workload kind whose `/scale` subresource the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Captured {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    /// The raw query: `None` without a `?`, `Some("")` for kube's bare trailing `?`.
    pub query: Option<String>,
    pub content_type: Option<String>,
    /// Every header, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the bearer token matched the token accepted at that moment.
    pub authorized: bool,
    /// The HTTP status answered; `None` if the connection was dropped (or the answer is pending).
    pub status: Option<u16>,
    /// When the request arrived.
    pub received: std::time::Instant,
    /// When it was acted on and answered (`None` while `status` is).
    pub answered: Option<std::time::Instant>,
}

/// A fake Kubernetes API server running on `https://127.0.0.1:PORT` inside the test process.
///
/// The server stops when this value is dropped or [`FakeKube::shutdown`] is called. Every method is
/// thread-safe and may be called while clients are talking to the server.
///
/// Known deviations from a real API server:
///
/// * Custom resources (`keda.sh`) are stored as given: no CRD schema validation or pruning, no
///   `status` subresource.
/// * No server-side apply: `application/apply-patch+yaml` gets 415 UnsupportedMediaType. A strategic
///   merge patch is applied as a JSON merge patch (lists are replaced, `$patch` directives dropped).
/// * No `managedFields`, no admission, and validation only where it matters here (replicas >= 0,
///   names, required fields of `events.k8s.io/v1` Events, ConfigMap keys, values and size, what
///   [`batch::finish_job`] and [`batch::finish_pod`] list for Jobs and Pods).
///   Immutable fields such as `spec.selector` can be changed, and so can the data of a
///   ConfigMap with `immutable: true`.
/// * Status: a write to `spec.replicas` updates `status` in the same write (one resourceVersion,
///   one MODIFIED event), where a real cluster has the controller write status later.
/// * Watches: bookmarks are only sent after the initial events of a `sendInitialEvents` watch and
///   when `timeoutSeconds` runs out; a watch without `timeoutSeconds` never times out. A paginated
///   list continues over the current state, not over a snapshot.
/// * Authorization: every request with the right token is allowed unless [`FakeKube::deny`] says
///   otherwise; a missing token gets 401 rather than being treated as `system:anonymous`.
/// * HTTP/1.1 only (ALPN `http/1.1`); kube uses HTTP/1.1 anyway.
/// * Jobs and Pods: no built-in Job controller, scheduler or kubelet: Jobs get pods and status only
///   from the test Job controller (`tests/it/support/jobs.rs`), which has deviations of its own.
///   A deleted Pod is gone at once (no graceful termination, no `terminating` count), and pods
///   carry no `batch.kubernetes.io/job-tracking` finalizer. The garbage collector only knows
///   Jobs owning Pods. A Job's template is immutable even while suspended (the real server
///   lets a suspended Job's scheduling fields change). `status.phase`/`spec.nodeName` and the
///   other pod field selectors compare the stored value as a string.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    server: JoinHandle<()>,
    /// The garbage collector: removes the pods of deleted Jobs (see [`batch::collect_garbage`]).
    gc: JoinHandle<()>,
}

impl FakeKube {
    /// Generates a self-signed certificate for 127.0.0.1, localhost and kube.test (a name
    /// only the test forward proxy resolves), binds 127.0.0.1:0 and serves.
    pub async fn start() -> FakeKube {
        let names = ["127.0.0.1", "localhost", "kube.test"].map(str::to_owned).to_vec();
        let ck = rcgen::generate_simple_self_signed(names).expect("generate self-signed certificate");
        let ca_pem = ck.cert.pem();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("TLS server certificate");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared { state: Mutex::new(State::new(random_token())), addr });
        let server = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        let gc = tokio::spawn(batch::garbage_collector(shared.clone()));
        FakeKube { shared, addr, ca_pem, server, gc }
    }

    /// Stops the server: the listener closes and every open connection (and watch) is cut.
    /// State and captured requests stay readable.
    pub fn shutdown(&self) {
        self.server.abort();
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token accepted right now.
    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// Changes the accepted token; requests with the old one get 401 from now on.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// The server certificate (self-signed, so it is also the CA) in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig (as JSON, which is valid YAML) with cluster, user and context `fake`,
    /// namespace `default`, holding the current token.
    pub fn write_kubeconfig(&self, path: &Path) {
        write_multi_kubeconfig(path, &[("fake", self)], "fake");
    }

    // --- objects ---------------------------------------------------------------------------

    /// Creates a Deployment `ns/name` (labels and selector `app=NAME`). Panics if it exists.
    pub fn add_deployment(&self, ns: &str, name: &str, replicas: u32) {
        self.add_workload(Kind::Deployment, ns, name, replicas);
    }

    /// Creates a StatefulSet `ns/name` (service name NAME). Panics if it exists.
    pub fn add_statefulset(&self, ns: &str, name: &str, replicas: u32) {
        self.add_workload(Kind::StatefulSet, ns, name, replicas);
    }

    fn add_workload(&self, kind: Kind, ns: &str, name: &str, replicas: u32) {
        let obj = workload_manifest(kind, ns, name, replicas);
        self.shared
            .lock()
            .create(kind.res(), ns, obj, false)
            .unwrap_or_else(|f| panic!("add {kind:?} {ns}/{name}: {}", f.message));
    }

    /// Creates a KEDA object (`keda.sh/v1alpha1` ScaledObject, TriggerAuthentication or
    /// ClusterTriggerAuthentication) as `kubectl apply` would: its `kind` picks the resource and
    /// `metadata.namespace` (required unless cluster-scoped) the namespace. Panics if it exists.
    pub fn add_keda(&self, obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let res = Res::ALL
            .into_iter()
            .find(|r| r.group() == "keda.sh" && r.kind() == kind)
            .unwrap_or_else(|| panic!("add_keda: {kind:?} is not a KEDA kind the fake serves"));
        let ns = if res.namespaced() {
            obj["metadata"]["namespace"].as_str().expect("add_keda: metadata.namespace").to_owned()
        } else {
            String::new()
        };
        let name = meta_str(&obj, "name").to_owned();
        self.shared.lock().create(res, &ns, obj, false).unwrap_or_else(|f| panic!("add {kind} {name}: {}", f.message));
    }

    /// Deletes an object as another client would (watchers see DELETED). Returns whether it existed.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> bool {
        self.shared.lock().remove(kind.res(), ns, name).is_some()
    }

    /// The stored object as the API server would return it.
    pub fn object(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(kind.res(), ns, name).cloned()
    }

    /// `spec.replicas` of the stored object.
    pub fn replicas(&self, kind: Kind, ns: &str, name: &str) -> Option<u32> {
        let st = self.shared.lock();
        let obj = st.get(kind.res(), ns, name)?;
        obj.pointer("/spec/replicas").and_then(Value::as_u64).map(|n| n as u32)
    }

    /// `metadata.resourceVersion` of the stored object.
    pub fn resource_version(&self, kind: Kind, ns: &str, name: &str) -> Option<String> {
        let st = self.shared.lock();
        st.get(kind.res(), ns, name).map(|o| meta_str(o, "resourceVersion").to_owned())
    }

    /// Sets `spec.replicas` as another writer (kubectl, an HPA) would: bumps the resourceVersion and
    /// notifies watchers, but is not recorded in [`FakeKube::scale_history`]. Panics if missing.
    pub fn set_replicas(&self, kind: Kind, ns: &str, name: &str, replicas: u32) {
        self.external_write(kind, ns, name, |obj| {
            obj["spec"]["replicas"] = json!(replicas);
        });
    }

    /// Sets (`Some`) or removes (`None`) an annotation as another writer would. Panics if missing.
    pub fn annotate(&self, kind: Kind, ns: &str, name: &str, key: &str, value: Option<&str>) {
        self.external_write(kind, ns, name, |obj| {
            let meta = obj["metadata"].as_object_mut().expect("metadata");
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            match value {
                Some(v) => annotations[key] = json!(v),
                None => {
                    if let Some(map) = annotations.as_object_mut() {
                        map.remove(key);
                    }
                }
            }
        });
    }

    /// Sets a literal `env` value in the first container of the pod template, as another
    /// writer would. Panics if missing.
    pub fn set_env(&self, kind: Kind, ns: &str, name: &str, var: &str, value: &str) {
        self.external_write(kind, ns, name, |obj| {
            let container = &mut obj["spec"]["template"]["spec"]["containers"][0];
            let env = container.as_object_mut().expect("container").entry("env").or_insert_with(|| json!([]));
            env.as_array_mut().expect("env").push(json!({"name": var, "value": value}));
        });
    }

    fn external_write(&self, kind: Kind, ns: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut st = self.shared.lock();
        let mut obj = st.get(kind.res(), ns, name).cloned().unwrap_or_else(|| panic!("no {kind:?} {ns}/{name}"));
        change(&mut obj);
        if let Err(f) = st.update(kind.res(), ns, name, obj, false) {
            panic!("write {kind:?} {ns}/{name}: {}", f.message);
        }
    }

    /// Every replicas value clients wrote: one entry per successful PUT/PATCH of `/scale` (even if
    /// it did not change anything) and per object PUT/PATCH that changed `spec.replicas`.
    /// The initial value and [`FakeKube::set_replicas`] are not included.
    pub fn scale_history(&self, kind: Kind, ns: &str, name: &str) -> Vec<u32> {
        let st = self.shared.lock();
        st.history.get(&(kind, ns.to_owned(), name.to_owned())).cloned().unwrap_or_default()
    }

    /// Stored Events, `events.k8s.io/v1` and core `v1` alike, in creation order.
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut events: Vec<&Stored> = st
            .objects
            .iter()
            .filter(|((res, _, _), _)| matches!(res, Res::Event | Res::CoreEvent))
            .map(|(_, stored)| stored)
            .collect();
        events.sort_by_key(|s| s.seq);
        events.into_iter().map(|s| s.obj.clone()).collect()
    }

    /// The stored Lease `ns/name`.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(Res::Lease, ns, name).cloned()
    }

    /// Creates the Lease `ns/name`, or replaces its spec, as another client would.
    pub fn put_lease(&self, ns: &str, name: &str, spec: Value) {
        let mut st = self.shared.lock();
        let result = match st.get(Res::Lease, ns, name).cloned() {
            Some(mut obj) => {
                obj["spec"] = spec;
                st.update(Res::Lease, ns, name, obj, false)
            }
            None => {
                let obj = json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
                st.create(Res::Lease, ns, obj, false)
            }
        };
        if let Err(f) = result {
            panic!("put lease {ns}/{name}: {}", f.message);
        }
    }

    /// Deletes the Lease `ns/name`, as `kubectl delete lease` would; false if there was none.
    pub fn delete_lease(&self, ns: &str, name: &str) -> bool {
        self.shared.lock().remove(Res::Lease, ns, name).is_some()
    }

    /// The stored ConfigMap `ns/name`.
    pub fn config_map(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(Res::ConfigMap, ns, name).cloned()
    }

    /// Creates the ConfigMap `ns/name` with `data` (a JSON object of strings), or replaces its
    /// data, as another client would (`kubectl apply`, an older version of the daemon).
    /// Panics if the data is invalid.
    pub fn put_config_map(&self, ns: &str, name: &str, data: Value) {
        let mut st = self.shared.lock();
        let result = match st.get(Res::ConfigMap, ns, name).cloned() {
            Some(mut obj) => {
                obj["data"] = data;
                st.update(Res::ConfigMap, ns, name, obj, false)
            }
            None => {
                let obj = json!({"metadata": {"name": name, "namespace": ns}, "data": data});
                st.create(Res::ConfigMap, ns, obj, false)
            }
        };
        if let Err(f) = result {
            panic!("put configmap {ns}/{name}: {}", f.message);
        }
    }

    /// Deletes the ConfigMap `ns/name` as another client would. Returns whether it existed.
    pub fn delete_config_map(&self, ns: &str, name: &str) -> bool {
        self.shared.lock().remove(Res::ConfigMap, ns, name).is_some()
    }

    // --- authorization -----------------------------------------------------------------------

    /// Denies `verb` on `resource`/`subresource` (use `""` for no subresource, `"*"` for any):
    /// SelfSubjectAccessReviews answer `allowed: false`, and matching requests get 403 Forbidden.
    pub fn deny(&self, verb: &str, resource: &str, subresource: &str) {
        let rule = [verb.to_owned(), resource.to_owned(), subresource.to_owned()];
        self.shared.lock().denies.push(rule);
    }

    /// Removes every [`FakeKube::deny`] rule.
    pub fn allow_all(&self) {
        self.shared.lock().denies.clear();
    }

    // --- fault injection -----------------------------------------------------------------------

    /// The next `n` authenticated requests (except `GET /version`) answer `status` with a Status
    /// body (500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests + `Retry-After: 1`,
    /// 403 Forbidden, 401 Unauthorized, ...) and change nothing. Calls queue up in order.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.faults.fail.extend(std::iter::repeat_n(status, n));
    }

    /// The next `n` PUT/PATCH requests to a `/scale` subresource answer 409 Conflict.
    pub fn conflict_next(&self, n: usize) {
        self.shared.lock().faults.conflict += n;
    }

    /// The next `n` PUTs of a Lease meet a hand edit that lands just before them: another
    /// client annotates the Lease (its spec unchanged), so a PUT carrying the
    /// resourceVersion read before gets 409 Conflict, as it would from a real server.
    pub fn edit_lease_before_next_put(&self, n: usize) {
        self.shared.lock().faults.lease_edits += n;
    }

    /// The next `n` requests get no answer: their connection is reset (TCP RST).
    pub fn drop_next(&self, n: usize) {
        self.shared.lock().faults.drop += n;
    }

    /// Delays every answer (before the request is acted on, so a request the client gives up on
    /// while waiting changes nothing).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.latency = latency;
    }

    /// Delays the answers to requests whose path contains `path_part`, as
    /// [`FakeKube::set_latency`] does for all (the longer of the two applies).
    pub fn set_latency_on(&self, path_part: &str, latency: Duration) {
        self.slow(None, path_part, latency);
    }

    /// [`FakeKube::set_latency_on`] for the requests of one client only: those whose `Host`
    /// header names `host` (a kubeconfig that reaches this server as `localhost` and one
    /// that reaches it as `127.0.0.1` are two clients to tell apart).
    pub fn set_latency_from(&self, host: &str, path_part: &str, latency: Duration) {
        self.slow(Some(host), path_part, latency);
    }

    fn slow(&self, host: Option<&str>, path_part: &str, latency: Duration) {
        let mut st = self.shared.lock();
        let host = host.map(str::to_owned);
        st.faults.slow.retain(|(h, p, _)| (h, p.as_str()) != (&host, path_part));
        st.faults.slow.push((host, path_part.to_owned(), latency));
    }

    /// Cancels pending `fail_next`, `conflict_next` and `drop_next`, and sets every latency to zero.
    pub fn clear_faults(&self) {
        self.shared.lock().faults = Faults::default();
    }

    /// Forgets the watch history, as etcd compaction does: a watch from an older resourceVersion
    /// gets an ERROR event with 410 Expired (`too old resource version`), and must re-list.
    pub fn compact_watch_history(&self) {
        let mut st = self.shared.lock();
        st.compacted_rv = st.rv;
        st.log.clear();
        let now = st.rv;
        st.changes.send_replace(now);
    }

    /// How many watch streams are open: each ends when its client hangs up (or on
    /// `close_watches`, or its `timeoutSeconds`).
    pub fn open_watches(&self) -> usize {
        self.shared.lock().changes.receiver_count()
    }

    /// Ends every open watch stream cleanly, as an API server restart or a load balancer does.
    pub fn close_watches(&self) {
        self.shared.lock().closes.send_modify(|epoch| *epoch += 1);
    }

    /// Rotates the credentials as a real cluster does when a token is revoked or replaced:
    /// from now on only `token` is accepted, and every open watch ends (the API server
    /// re-authenticates a client only when it connects again).
    pub fn rotate_token(&self, token: &str) {
        let mut st = self.shared.lock();
        st.token = token.to_owned();
        st.closes.send_modify(|epoch| *epoch += 1);
    }

    /// Also accepts EKS tokens (`k8s-aws-v1.` + a presigned STS GetCallerIdentity URL that
    /// signs the `x-k8s-aws-id` cluster header) whose signing time (`X-Amz-Date`) is at
    /// most `max_age` old, as EKS does with 15 minutes. Nothing is sent to STS, so the
    /// signature itself is not checked (the unit tests of `workload::eks` check it).
    pub fn accept_eks_tokens(&self, max_age: Duration) {
        self.shared.lock().eks = Some(max_age);
    }

    /// From now on, requests are read and never answered (a black-holed endpoint: a
    /// firewall that drops, a hung load balancer). `false` answers again.
    pub fn black_hole(&self, on: bool) {
        self.shared.lock().faults.black_hole = on;
    }

    // --- request capture -------------------------------------------------------------------

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Captured> {
        self.shared.lock().requests.iter().map(|(_, c)| c.clone()).collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// How many write requests (create, update, patch, delete) were sent for `resource`: a
    /// plural as RBAC names it (`"configmaps"`, `"leases"`, `"deployments"`, `"events"` of
    /// either API group) or plural/subresource (`"deployments/scale"`). A subresource is
    /// counted apart: `"deployments"` counts writes of whole Deployments only. Every request
    /// counts whatever its answer (a refused or failed write still reached the API server).
    pub fn writes_to(&self, resource: &str) -> usize {
        let st = self.shared.lock();
        st.requests
            .iter()
            .filter(|(_, c)| {
                let Ok(method) = Method::from_bytes(c.method.as_bytes()) else { return false };
                let route = Route::parse(&c.path, self.addr);
                let params = Params::parse(c.query.as_deref());
                route.attributes(&method, &params).is_some_and(|a| {
                    matches!(a.verb, "create" | "update" | "patch" | "delete") && a.resource() == resource
                })
            })
            .count()
    }

    /// How many requests used `method` on a path ending with `path_suffix`.
    pub fn count(&self, method: &str, path_suffix: &str) -> usize {
        let st = self.shared.lock();
        st.requests
            .iter()
            .filter(|(_, c)| c.method.eq_ignore_ascii_case(method) && c.path.ends_with(path_suffix))
            .count()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        self.gc.abort();
    }
}

/// Writes one kubeconfig holding a cluster, a user and a context named after each entry, with
/// `current` as the current context.
pub fn write_multi_kubeconfig(path: &Path, entries: &[(&str, &FakeKube)], current: &str) {
    let users: Vec<Value> = entries.iter().map(|(_, fake)| json!({"token": fake.token()})).collect();
    write_kubeconfig_with_users(path, entries, &users, current);
}

/// A kubeconfig like [`write_multi_kubeconfig`]'s, with each context's user given (e.g.
/// `{"tokenFile": …}` or `{"exec": …}`).
pub fn write_kubeconfig_with_users(path: &Path, entries: &[(&str, &FakeKube)], user: &[Value], current: &str) {
    let mut clusters = Vec::new();
    let mut users = Vec::new();
    let mut contexts = Vec::new();
    for ((name, fake), user) in entries.iter().zip(user) {
        let ca = base64::engine::general_purpose::STANDARD.encode(fake.ca_pem());
        clusters.push(json!({
            "name": name,
            "cluster": {"server": fake.url(), "certificate-authority-data": ca},
        }));
        users.push(json!({"name": name, "user": user}));
        contexts.push(json!({
            "name": name,
            "context": {"cluster": name, "user": name, "namespace": "default"},
        }));
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": current,
    });
    let text = serde_json::to_string_pretty(&config).expect("serialize kubeconfig");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Kind {
    fn res(self) -> Res {
        match self {
            Kind::Deployment => Res::Deployment,
            Kind::StatefulSet => Res::StatefulSet,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

/// Every resource type the fake stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Res {
    Deployment,
    StatefulSet,
    Lease,
    /// `events.k8s.io/v1`
    Event,
    /// core `v1` Event
    CoreEvent,
    /// core `v1` ConfigMap
    ConfigMap,
    /// `batch/v1` Job
    Job,
    /// core `v1` Pod
    Pod,
    /// `keda.sh/v1alpha1` custom resources
    ScaledObject,
    TriggerAuthentication,
    /// cluster-scoped
    ClusterTriggerAuthentication,
}

impl Res {
    const ALL: [Res; 11] = [
        Res::Deployment,
        Res::StatefulSet,
        Res::Lease,
        Res::Event,
        Res::CoreEvent,
        Res::ConfigMap,
        Res::Job,
        Res::Pod,
        Res::ScaledObject,
        Res::TriggerAuthentication,
        Res::ClusterTriggerAuthentication,
    ];

    fn group(self) -> &'static str {
        match self {
            Res::Deployment | Res::StatefulSet => "apps",
            Res::Lease => "coordination.k8s.io",
            Res::Event => "events.k8s.io",
            Res::CoreEvent | Res::ConfigMap | Res::Pod => "",
            Res::Job => "batch",
            Res::ScaledObject | Res::TriggerAuthentication | Res::ClusterTriggerAuthentication => "keda.sh",
        }
    }

    fn version(self) -> &'static str {
        if self.custom() { "v1alpha1" } else { "v1" }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Deployment | Res::StatefulSet => "apps/v1",
            Res::Lease => "coordination.k8s.io/v1",
            Res::Event => "events.k8s.io/v1",
            Res::CoreEvent | Res::ConfigMap | Res::Pod => "v1",
            Res::Job => "batch/v1",
            Res::ScaledObject | Res::TriggerAuthentication | Res::ClusterTriggerAuthentication => "keda.sh/v1alpha1",
        }
    }

    /// A custom resource (defined by a CRD), not a built-in type.
    fn custom(self) -> bool {
        self.group() == "keda.sh"
    }

    /// Whether objects live in a namespace; cluster-scoped ones are stored under namespace "".
    fn namespaced(self) -> bool {
        self != Res::ClusterTriggerAuthentication
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Deployment => "Deployment",
            Res::StatefulSet => "StatefulSet",
            Res::Lease => "Lease",
            Res::Event | Res::CoreEvent => "Event",
            Res::ConfigMap => "ConfigMap",
            Res::Job => "Job",
            Res::Pod => "Pod",
            Res::ScaledObject => "ScaledObject",
            Res::TriggerAuthentication => "TriggerAuthentication",
            Res::ClusterTriggerAuthentication => "ClusterTriggerAuthentication",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Res::Deployment => "deployments",
            Res::StatefulSet => "statefulsets",
            Res::Lease => "leases",
            Res::Event | Res::CoreEvent => "events",
            Res::ConfigMap => "configmaps",
            Res::Job => "jobs",
            Res::Pod => "pods",
            Res::ScaledObject => "scaledobjects",
            Res::TriggerAuthentication => "triggerauthentications",
            Res::ClusterTriggerAuthentication => "clustertriggerauthentications",
        }
    }

    /// How the API server names the resource in messages: `deployments.apps`, or `events` for core.
    fn qualified(self) -> String {
        qualify(self.plural(), self.group())
    }

    /// How validation errors name the kind: `Deployment.apps`.
    fn qualified_kind(self) -> String {
        qualify(self.kind(), self.group())
    }

    fn workload(self) -> Option<Kind> {
        match self {
            Res::Deployment => Some(Kind::Deployment),
            Res::StatefulSet => Some(Kind::StatefulSet),
            _ => None,
        }
    }

    fn lookup(group: &str, version: &str, plural: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.group() == group && r.version() == version && r.plural() == plural)
    }
}

fn qualify(name: &str, group: &str) -> String {
    if group.is_empty() { name.to_owned() } else { format!("{name}.{group}") }
}

/// The manifest `add_deployment`/`add_statefulset` create: what `kubectl create deployment` makes.
fn workload_manifest(kind: Kind, ns: &str, name: &str, replicas: u32) -> Value {
    let labels = json!({"app": name});
    let template = json!({
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
        },
    });
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": template,
        "revisionHistoryLimit": 10,
    });
    match kind {
        Kind::Deployment => {
            spec["strategy"] = json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            });
            spec["progressDeadlineSeconds"] = json!(600);
        }
        Kind::StatefulSet => {
            spec["serviceName"] = json!(name);
            spec["podManagementPolicy"] = json!("OrderedReady");
            spec["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
            spec["persistentVolumeClaimRetentionPolicy"] = json!({"whenDeleted": "Retain", "whenScaled": "Retain"});
        }
    }
    let mut metadata = json!({"name": name, "namespace": ns, "labels": labels});
    if kind == Kind::Deployment {
        metadata["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
    }
    json!({
        "apiVersion": kind.res().api_version(),
        "kind": kind.res().kind(),
        "metadata": metadata,
        "spec": spec,
    })
}

/// The status a finished rollout of `replicas` has. Zero counts are left out where the Go types
/// say `omitempty`, exactly as the real server serializes them.
fn workload_status(kind: Kind, obj: &Value, replicas: i64, generation: i64) -> Value {
    let name = meta_str(obj, "name");
    let created = meta_str(obj, "creationTimestamp");
    let revision = format!("{name}-{:x}", fnv(name) & 0xffff_ffff);
    let mut status = Map::new();
    status.insert("observedGeneration".into(), json!(generation));
    let counts: &[&str] = match kind {
        Kind::Deployment => &["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"],
        Kind::StatefulSet => &["readyReplicas", "currentReplicas", "updatedReplicas"],
    };
    for field in counts {
        if replicas != 0 {
            status.insert((*field).into(), json!(replicas));
        }
    }
    match kind {
        Kind::Deployment => {
            let condition = |type_: &str, reason: &str, message: String| {
                json!({
                    "type": type_, "status": "True", "reason": reason, "message": message,
                    "lastUpdateTime": created, "lastTransitionTime": created,
                })
            };
            status.insert(
                "conditions".into(),
                json!([
                    condition("Available", "MinimumReplicasAvailable", "Deployment has minimum availability.".into()),
                    condition(
                        "Progressing",
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{revision}\" has successfully progressed."),
                    ),
                ]),
            );
        }
        Kind::StatefulSet => {
            // Not omitempty in apps/v1 StatefulSetStatus.
            status.insert("replicas".into(), json!(replicas));
            status.insert("availableReplicas".into(), json!(replicas));
            status.insert("currentRevision".into(), json!(revision));
            status.insert("updateRevision".into(), json!(revision));
            status.insert("collisionCount".into(), json!(0));
        }
    }
    Value::Object(status)
}

/// `spec.selector` rendered the way `metav1.FormatLabelSelector` does, for `Scale.status.selector`.
fn format_selector(selector: &Value) -> String {
    let mut terms = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            terms.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> =
                e["values"].as_array().map(|vs| vs.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            terms.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_owned(),
                _ => format!("!{key}"),
            });
        }
    }
    terms.join(",")
}

/// The `autoscaling/v1` Scale view of a Deployment or StatefulSet.
fn scale_view(obj: &Value) -> Value {
    let replicas = obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    let status_replicas = obj.pointer("/status/replicas").cloned().unwrap_or(json!(0));
    let selector = obj.pointer("/spec/selector").map(format_selector).unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

type Key = (Res, String, String);

struct Shared {
    state: Mutex<State>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take the fake down with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Stored {
    obj: Value,
    /// Creation order (for `events()`).
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

/// One write, kept for watches that start from an older resourceVersion.
struct LogEntry {
    rv: u64,
    res: Res,
    ns: String,
    change: Change,
    obj: Value,
    prev: Option<Value>,
}

#[derive(Default)]
struct Faults {
    /// Never answer (see [`FakeKube::black_hole`]).
    black_hole: bool,
    fail: VecDeque<u16>,
    conflict: usize,
    /// See [`FakeKube::edit_lease_before_next_put`].
    lease_edits: usize,
    drop: usize,
    latency: Duration,
    /// Extra latency for requests whose path contains the string (from the host named, if one
    /// is).
    slow: Vec<(Option<String>, String, Duration)>,
}

struct State {
    token: String,
    /// EKS tokens accepted too, up to this age (see [`FakeKube::accept_eks_tokens`]).
    eks: Option<Duration>,
    /// The global resourceVersion: that of the latest write.
    rv: u64,
    seq: u64,
    next_request_id: u64,
    objects: BTreeMap<Key, Stored>,
    log: Vec<LogEntry>,
    /// Watches from a resourceVersion below this one get 410 Expired.
    compacted_rv: u64,
    history: HashMap<(Kind, String, String), Vec<u32>>,
    denies: Vec<[String; 3]>,
    faults: Faults,
    requests: Vec<(u64, Captured)>,
    /// Carries the current resourceVersion to open watches after every write.
    changes: watch::Sender<u64>,
    /// Bumped by `close_watches`.
    closes: watch::Sender<u64>,
    /// Like `changes`, for the fake's own controllers (the garbage collector, the test Job
    /// controller), so they do not count as open watches.
    notify: watch::Sender<u64>,
    /// Jobs created, finished and deleted, in order (see [`FakeKube::job_history`]).
    job_log: Vec<batch::JobRecord>,
    /// How long the garbage collector waits before it acts on a change.
    gc_delay: Duration,
}

impl State {
    fn new(token: String) -> State {
        State {
            token,
            eks: None,
            rv: 100,
            seq: 0,
            next_request_id: 0,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted_rv: 0,
            history: HashMap::new(),
            denies: Vec::new(),
            faults: Faults::default(),
            requests: Vec::new(),
            changes: watch::Sender::new(100),
            closes: watch::Sender::new(0),
            notify: watch::Sender::new(100),
            job_log: Vec::new(),
            gc_delay: batch::GC_DELAY,
        }
    }

    fn get(&self, res: Res, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(res, ns.to_owned(), name.to_owned())).map(|s| &s.obj)
    }

    /// Stores `obj` under a new resourceVersion and tells the watches.
    fn commit(&mut self, res: Res, ns: &str, name: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = (res, ns.to_owned(), name.to_owned());
        let prev = self.objects.get(&key).map(|s| (s.obj.clone(), s.seq));
        let seq = match &prev {
            Some((_, seq)) => *seq,
            None => {
                self.seq += 1;
                self.seq
            }
        };
        self.objects.insert(key, Stored { obj: obj.clone(), seq });
        let change = if prev.is_some() { Change::Modified } else { Change::Added };
        if res == Res::Job {
            batch::record_job_write(self, ns, prev.as_ref().map(|(o, _)| o), &obj);
        }
        self.log.push(LogEntry {
            rv: self.rv,
            res,
            ns: ns.to_owned(),
            change,
            obj: obj.clone(),
            prev: prev.map(|(o, _)| o),
        });
        self.changes.send_replace(self.rv);
        self.notify.send_replace(self.rv);
        obj
    }

    fn remove(&mut self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let stored = self.objects.remove(&(res, ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        // A DELETED event carries the last state under the resourceVersion of the deletion.
        let mut obj = stored.obj;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push(LogEntry {
            rv: self.rv,
            res,
            ns: ns.to_owned(),
            change: Change::Deleted,
            obj: obj.clone(),
            prev: None,
        });
        if res == Res::Job {
            batch::record_job_deleted(self, ns, &obj);
        }
        self.changes.send_replace(self.rv);
        self.notify.send_replace(self.rv);
        Some(obj)
    }

    /// POST: creates `body` in `ns`, naming it from `generateName` if needed.
    fn create(&mut self, res: Res, ns: &str, mut body: Value, dry_run: bool) -> Result<Value, Failure> {
        check_type(res, &mut body)?;
        let meta = body["metadata"].as_object_mut().expect("check_type made metadata");
        match meta.get("namespace").and_then(Value::as_str) {
            // The real server drops a namespace given to a cluster-scoped object.
            _ if !res.namespaced() => {
                meta.remove("namespace");
            }
            Some(n) if !n.is_empty() && n != ns => return Err(Failure::namespace_mismatch()),
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
        if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
            return Err(Failure::bad_request("resourceVersion should not be set on objects to be created".into()));
        }
        let mut name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            let prefix = meta.get("generateName").and_then(Value::as_str).unwrap_or_default();
            if prefix.is_empty() {
                return Err(Failure::invalid(
                    res,
                    "",
                    vec![(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            // As `names.SimpleNameGenerator`: the prefix is cut to 58 characters, so the name
            // fits 63; a generated name that is taken is generated again (RetryGenerateName).
            let prefix: String = prefix.chars().take(58).collect();
            name = format!("{prefix}{}", random_suffix());
            while self.get(res, ns, &name).is_some() {
                name = format!("{prefix}{}", random_suffix());
            }
            meta.insert("name".into(), json!(name));
        }
        if self.get(res, ns, &name).is_some() {
            return Err(Failure::already_exists(res, &name));
        }
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"] {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(random_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if res == Res::Event {
            validate_event(&body, &name)?;
        }
        if res == Res::ConfigMap {
            finish_config_map(&mut body, &name)?;
        }
        if let Some(kind) = res.workload() {
            finish_workload(kind, &mut body, None)?;
        }
        if res == Res::Job {
            batch::finish_job(&mut body, None)?;
        }
        if res == Res::Pod {
            batch::finish_pod(&mut body, None)?;
        }
        if dry_run {
            return Ok(body);
        }
        Ok(self.commit(res, ns, &name, body))
    }

    /// PUT, or the result of a PATCH: replaces the stored object with `new`.
    fn update(&mut self, res: Res, ns: &str, name: &str, mut new: Value, dry_run: bool) -> Result<Value, Failure> {
        let cur = self.get(res, ns, name).cloned().ok_or_else(|| Failure::not_found(res, name))?;
        check_type(res, &mut new)?;
        let meta = new["metadata"].as_object_mut().expect("check_type made metadata");
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => {
                return Err(Failure::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        match meta.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => return Err(Failure::namespace_mismatch()),
            _ => {}
        }
        // Optimistic concurrency: a resourceVersion in the body is a precondition.
        let current_rv = meta_str(&cur, "resourceVersion");
        match meta.get("resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() && rv != current_rv => return Err(Failure::conflict(res, name)),
            _ => {}
        }
        let current_uid = meta_str(&cur, "uid");
        match meta.get("uid").and_then(Value::as_str) {
            Some(uid) if !uid.is_empty() && uid != current_uid => {
                return Err(Failure::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}",
                        res.qualified()
                    ),
                    details(res, name),
                ));
            }
            _ => {}
        }
        // What the server owns is kept from the stored object.
        for field in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion", "generation"] {
            match cur["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("managedFields");
        if let Some(kind) = res.workload() {
            finish_workload(kind, &mut new, Some(&cur))?;
        }
        if res == Res::ConfigMap {
            finish_config_map(&mut new, name)?;
        }
        if res == Res::Job {
            batch::finish_job(&mut new, Some(&cur))?;
        }
        if res == Res::Pod {
            batch::finish_pod(&mut new, Some(&cur))?;
        }
        // Nothing changed: the real server skips the etcd write (no new resourceVersion).
        if new == cur || dry_run {
            return Ok(new);
        }
        // The last finalizer of an object being deleted is gone: it is deleted now.
        if batch::deletion_done(&new) {
            self.remove(res, ns, name);
            return Ok(new);
        }
        Ok(self.commit(res, ns, name, new))
    }

    /// `update` for a client's PUT/PATCH: also records a changed `spec.replicas` in the history.
    fn client_update(&mut self, res: Res, ns: &str, name: &str, new: Value, dry_run: bool) -> Result<Value, Failure> {
        let old_replicas = self.get(res, ns, name).and_then(|o| o.pointer("/spec/replicas")).cloned();
        let stored = self.update(res, ns, name, new, dry_run)?;
        if let Some(kind) = res.workload()
            && !dry_run
            && stored.pointer("/spec/replicas").cloned() != old_replicas
        {
            self.record_scale(kind, ns, name, &stored);
        }
        Ok(stored)
    }

    /// PUT/PATCH of `/scale`: `scale` is the (patched) Scale the client wants.
    fn update_scale(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        scale: &Value,
        dry_run: bool,
    ) -> Result<Value, Failure> {
        let res = kind.res();
        let cur = self.get(res, ns, name).cloned().ok_or_else(|| Failure::not_found(res, name))?;
        // The Scale's resourceVersion is the object's: a stale one is a conflict on the object.
        match scale.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() && rv != meta_str(&cur, "resourceVersion") => {
                return Err(Failure::conflict(res, name));
            }
            _ => {}
        }
        // A Scale without spec.replicas means 0 (the Go field is a plain int32).
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(v) => replicas_value(v, "ScaleSpec.spec.replicas")?,
        };
        if replicas < 0 {
            return Err(Failure::invalid_replicas("Scale.autoscaling", name, replicas));
        }
        let mut new = cur.clone();
        new["spec"]["replicas"] = json!(replicas);
        finish_workload(kind, &mut new, Some(&cur))?;
        if dry_run {
            return Ok(scale_view(&new));
        }
        let stored = if new == cur { cur } else { self.commit(res, ns, name, new) };
        self.record_scale(kind, ns, name, &stored);
        Ok(scale_view(&stored))
    }

    fn record_scale(&mut self, kind: Kind, ns: &str, name: &str, obj: &Value) {
        let replicas = obj.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(0) as u32;
        self.history.entry((kind, ns.to_owned(), name.to_owned())).or_default().push(replicas);
    }

    /// LIST, with label/field selectors and `limit`/`continue` pagination.
    fn list(&self, res: Res, ns: Option<&str>, params: &Params) -> Result<Value, Failure> {
        let selector = Selector::from_params(res, params)?;
        let start: Option<(String, String)> = match params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let limit = match params.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => l.parse::<usize>().map_err(|_| Failure::bad_request(format!("invalid limit: {l}")))?,
            None => 0,
        };
        let matching: Vec<(&String, &String, &Value)> = self
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .filter(|((_, n, name), _)| start.as_ref().is_none_or(|(sn, sname)| (n, name) > (sn, sname)))
            .filter(|(_, s)| selector.matches(&s.obj))
            .map(|((_, n, name), s)| (n, name, &s.obj))
            .collect();
        let page = if limit > 0 { &matching[..limit.min(matching.len())] } else { &matching[..] };
        let remaining = matching.len() - page.len();
        let items: Vec<Value> = page.iter().map(|(_, _, obj)| list_item(res, obj)).collect();
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if remaining > 0
            && let Some((n, name, _)) = page.last()
        {
            metadata["continue"] = json!(encode_continue(self.rv, n, name));
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "kind": format!("{}List", res.kind()),
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    fn denied(&self, verb: &str, resource: &str, subresource: &str) -> bool {
        let hit = |rule: &str, value: &str| rule == "*" || rule == value;
        self.denies.iter().any(|[v, r, s]| hit(v, verb) && hit(r, resource) && hit(s, subresource))
    }
}

/// Sets `kind`/`apiVersion` (rejecting the wrong ones) and makes sure `metadata` is an object.
fn check_type(res: Res, obj: &mut Value) -> Result<(), Failure> {
    let Some(map) = obj.as_object_mut() else {
        return Err(Failure::bad_request("the body of the request is not a JSON object".into()));
    };
    for (field, what, want) in [("apiVersion", "API version", res.api_version()), ("kind", "kind", res.kind())] {
        match map.get(field).and_then(Value::as_str) {
            Some(got) if !got.is_empty() && got != want => {
                return Err(Failure::bad_request(format!(
                    "the {what} in the data ({got}) does not match the expected {what} ({want})"
                )));
            }
            _ => {
                map.insert(field.into(), json!(want));
            }
        }
    }
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), json!({}));
    }
    Ok(())
}

/// Defaulting, validation, `generation` and the instant-rollout `status` of a workload.
fn finish_workload(kind: Kind, obj: &mut Value, old: Option<&Value>) -> Result<(), Failure> {
    let name = meta_str(obj, "name").to_owned();
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    // Defaulting: a Deployment/StatefulSet without spec.replicas gets 1.
    let replicas = match obj.pointer("/spec/replicas") {
        None | Some(Value::Null) => 1,
        Some(v) => replicas_value(v, &format!("{}Spec.spec.replicas", kind.res().kind()))?,
    };
    if replicas < 0 {
        return Err(Failure::invalid_replicas(&kind.res().qualified_kind(), &name, replicas));
    }
    obj["spec"]["replicas"] = json!(replicas);
    // generation counts spec changes only.
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            if old.get("spec") == obj.get("spec") { g } else { g + 1 }
        }
    };
    obj["metadata"]["generation"] = json!(generation);
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    for field in ["labels", "annotations"] {
        if meta.get(field).is_some_and(|m| m.as_object().is_some_and(Map::is_empty) || m.is_null()) {
            meta.remove(field);
        }
    }
    obj["status"] = workload_status(kind, obj, replicas, generation);
    Ok(())
}

/// Reads a replicas number the way decoding into an `int32` would accept it.
fn replicas_value(v: &Value, go_field: &str) -> Result<i64, Failure> {
    let bad = |what: String| {
        Failure::bad_request(format!("json: cannot unmarshal {what} into Go struct field {go_field} of type int32"))
    };
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => Ok(i),
            _ => Err(bad(format!("number {n}"))),
        },
        Value::String(_) => Err(bad("string".into())),
        Value::Bool(_) => Err(bad("bool".into())),
        Value::Array(_) => Err(bad("array".into())),
        _ => Err(bad("object".into())),
    }
}

/// The required fields of an `events.k8s.io/v1` Event (what the real validation rejects most).
fn validate_event(obj: &Value, name: &str) -> Result<(), Failure> {
    let mut causes = Vec::new();
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        let empty = match obj.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if empty {
            causes.push((field, "FieldValueRequired", "Required value".to_owned()));
        }
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("Normal" | "Warning") => {}
        other => causes.push((
            "type",
            "FieldValueNotSupported",
            format!("Unsupported value: \"{}\": supported values: \"Normal\", \"Warning\"", other.unwrap_or_default()),
        )),
    }
    if obj.get("note").and_then(Value::as_str).is_some_and(|n| n.len() > 1024) {
        causes.push(("note", "FieldValueTooLong", "Too long: may not be more than 1024 bytes".into()));
    }
    if causes.is_empty() { Ok(()) } else { Err(Failure::invalid(Res::Event, name, causes)) }
}

/// What the real server allows a ConfigMap to hold: data plus binaryData (`core.MaxSecretSize`).
const MAX_CONFIG_MAP_BYTES: usize = 1 << 20;

/// ConfigMap validation (`ValidateConfigMap`): every key a valid config key, no key in both
/// `data` and `binaryData`, and at most [`MAX_CONFIG_MAP_BYTES`] of values. Also what decoding
/// does: a `null` value becomes `""`, and empty maps are left out (`omitempty`).
fn finish_config_map(obj: &mut Value, name: &str) -> Result<(), Failure> {
    let binary_keys: Vec<String> =
        obj.get("binaryData").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let mut causes: Vec<(String, &str, String)> = Vec::new();
    let mut total = 0;
    for field in ["data", "binaryData"] {
        let Some(map) = obj.get_mut(field).and_then(Value::as_object_mut) else {
            if let Some(o) = obj.as_object_mut() {
                o.remove(field);
            }
            continue;
        };
        for (key, value) in map.iter_mut() {
            if value.is_null() {
                *value = json!("");
            }
            let at = format!("{field}[{key}]");
            for problem in config_key_problems(key) {
                causes.push((at.clone(), "FieldValueInvalid", format!("Invalid value: {key:?}: {problem}")));
            }
            if field == "data" && binary_keys.contains(key) {
                let problem = "duplicate of key present in binaryData";
                causes.push((at.clone(), "FieldValueInvalid", format!("Invalid value: {key:?}: {problem}")));
            }
            let text = value.as_str().unwrap_or_default();
            // binaryData is counted decoded, as the Go []byte it is.
            total += if field == "data" { text.len() } else { base64_std().decode(text).map_or(0, |b| b.len()) };
        }
        if map.is_empty()
            && let Some(o) = obj.as_object_mut()
        {
            o.remove(field);
        }
    }
    if total > MAX_CONFIG_MAP_BYTES {
        // The real server reports this on the empty path, rendered `[]`.
        let message = format!("Too long: may not be more than {MAX_CONFIG_MAP_BYTES} bytes");
        causes.push(("[]".to_owned(), "FieldValueTooLong", message));
    }
    if causes.is_empty() {
        return Ok(());
    }
    let causes = causes.iter().map(|(f, r, m)| (f.as_str(), *r, m.clone())).collect();
    Err(Failure::invalid(Res::ConfigMap, name, causes))
}

/// `IsConfigMapKey`: why `key` cannot be a ConfigMap key, in the real messages.
fn config_key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if key.len() > 253 {
        problems.push("must be no more than 253 characters".to_owned());
    }
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        // Go's RegexError, double spaces included.
        problems.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  \
             or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                .to_owned(),
        );
    }
    match key {
        "." => problems.push("must not be '.'".to_owned()),
        ".." => problems.push("must not be '..'".to_owned()),
        k if k.starts_with("..") => problems.push("must not start with '..'".to_owned()),
        _ => {}
    }
    problems
}

fn base64_std() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The Go type `encoding/json` names in "cannot unmarshal X into ...".
fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Why decoding `obj` into the Go type of `res` fails, worded as the decoder does. Only
/// ConfigMaps are checked: they are the one kind tests write with untyped JSON.
fn decode_error(res: Res, obj: &Value) -> Option<String> {
    if res != Res::ConfigMap {
        return None;
    }
    let unmarshal = |v: &Value, field: &str, go_type: &str| {
        format!("json: cannot unmarshal {} into Go struct field ConfigMap.{field} of type {go_type}", json_type_name(v))
    };
    for (field, go_type) in [("data", "string"), ("binaryData", "[]uint8")] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for v in map.values() {
                    match v {
                        Value::Null => {}
                        Value::String(s) if field == "binaryData" => {
                            if let Err(e) = base64_std().decode(s) {
                                let at = match e {
                                    base64::DecodeError::InvalidByte(at, _)
                                    | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                                    _ => s.len(),
                                };
                                return Some(format!("illegal base64 data at input byte {at}"));
                            }
                        }
                        Value::String(_) => {}
                        other => return Some(unmarshal(other, field, go_type)),
                    }
                }
            }
            Some(other) => return Some(unmarshal(other, field, &format!("map[string]{go_type}"))),
        }
    }
    match obj.get("immutable") {
        None | Some(Value::Null | Value::Bool(_)) => None,
        Some(other) => Some(unmarshal(other, "immutable", "bool")),
    }
}

/// POST and PUT bodies that do not decode: 400, as the real server's decoder answers.
fn check_decodes(res: Res, obj: &Value) -> Result<(), Failure> {
    match decode_error(res, obj) {
        None => Ok(()),
        Some(error) => {
            let (version, kind) = (res.api_version(), res.kind());
            Err(Failure::bad_request(format!("{kind} in version \"{version}\" cannot be handled as a {kind}: {error}")))
        }
    }
}

/// A list item: the object without `kind`/`apiVersion`, as the real server lists built-in types;
/// custom resources are listed as stored, with both.
fn list_item(res: Res, obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(map) = item.as_object_mut().filter(|_| !res.custom()) {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(String, String), Failure> {
    let bad = || Failure::bad_request(format!("invalid continue token: {token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let start = v["start"].as_str().ok_or_else(bad)?.trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_owned(), name.to_owned()))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Selectors and query parameters
// ---------------------------------------------------------------------------------------------

/// The decoded query string. kube sends `?` and `?&a=b`; empty pairs are skipped.
#[derive(Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Params {
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        Params(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter as the API server parses it (`true`/`1`).
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True" | "TRUE"))
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Default)]
struct Selector {
    labels: Vec<LabelReq>,
    /// (field, equal?, value): `metadata.name` and `metadata.namespace`, and the fields the
    /// real server adds for some kinds ([`batch::field_labels`]).
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    fn from_params(res: Res, params: &Params) -> Result<Selector, Failure> {
        let mut selector = Selector::default();
        if let Some(s) = params.get("labelSelector") {
            for term in split_terms(s) {
                selector.labels.push(parse_label_term(term)?);
            }
        }
        if let Some(s) = params.get("fieldSelector") {
            for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                    (f, false, v)
                } else if let Some((f, v)) = term.split_once("==") {
                    (f, true, v)
                } else if let Some((f, v)) = term.split_once('=') {
                    (f, true, v)
                } else {
                    return Err(Failure::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
                };
                let field = field.trim();
                if field != "metadata.name"
                    && field != "metadata.namespace"
                    && !batch::field_labels(res).contains(&field)
                {
                    return Err(Failure::bad_request(format!("field label not supported: {field}")));
                }
                selector.fields.push((field.to_owned(), eq, value.trim().to_owned()));
            }
        }
        Ok(selector)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(field, eq, value)| {
            let actual = match field.strip_prefix("metadata.") {
                Some(meta) => meta_str(obj, meta).to_owned(),
                None => batch::field_value(obj, field),
            };
            (actual == *value) == *eq
        });
        labels_ok && fields_ok
    }
}

/// Splits a label selector at the commas that are not inside `in (...)` sets.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_label_term(term: &str) -> Result<LabelReq, Failure> {
    let set = |rest: &str| -> Result<Vec<String>, Failure> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| Failure::bad_request(format!("unable to parse requirement: {term}")))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let owned = |k: &str| k.trim().to_owned();
    Ok(if let Some((k, rest)) = term.split_once(" notin ") {
        LabelReq::NotIn(owned(k), set(rest)?)
    } else if let Some((k, rest)) = term.split_once(" in ") {
        LabelReq::In(owned(k), set(rest)?)
    } else if let Some((k, v)) = term.split_once("!=") {
        LabelReq::NotEq(owned(k), owned(v))
    } else if let Some((k, v)) = term.split_once("==") {
        LabelReq::Eq(owned(k), owned(v))
    } else if let Some((k, v)) = term.split_once('=') {
        LabelReq::Eq(owned(k), owned(v))
    } else if let Some(k) = term.strip_prefix('!') {
        LabelReq::NotExists(owned(k))
    } else {
        LabelReq::Exists(owned(term))
    })
}

// ---------------------------------------------------------------------------------------------
// Errors: metav1.Status bodies
// ---------------------------------------------------------------------------------------------

/// A failed request, answered with a `metav1.Status` body.
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
    retry_after: Option<u32>,
}

/// `details` of a Status about one object: name, group (left out for core) and the plural.
fn details(res: Res, name: &str) -> Option<Value> {
    let mut d = json!({"name": name, "kind": res.plural()});
    if !res.group().is_empty() {
        d["group"] = json!(res.group());
    }
    Some(d)
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Failure {
        Failure { code, reason, message, details, retry_after: None }
    }

    fn not_found(res: Res, name: &str) -> Failure {
        let message = format!("{} \"{name}\" not found", res.qualified());
        Failure::new(404, "NotFound", message, details(res, name))
    }

    fn conflict(res: Res, name: &str) -> Failure {
        // Word for word what the real API server says; clients match on reason, people on this.
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            res.qualified()
        );
        Failure::new(409, "Conflict", message, details(res, name))
    }

    fn already_exists(res: Res, name: &str) -> Failure {
        let message = format!("{} \"{name}\" already exists", res.qualified());
        Failure::new(409, "AlreadyExists", message, details(res, name))
    }

    fn bad_request(message: String) -> Failure {
        Failure::new(400, "BadRequest", message, None)
    }

    fn namespace_mismatch() -> Failure {
        Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request".into(),
        )
    }

    fn unauthorized() -> Failure {
        Failure::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    fn method_not_allowed() -> Failure {
        let message = "the server does not allow this method on the requested resource".into();
        Failure::new(405, "MethodNotAllowed", message, Some(json!({})))
    }

    fn unknown_path() -> Failure {
        let message = "the server could not find the requested resource".into();
        Failure::new(404, "NotFound", message, Some(json!({})))
    }

    fn unsupported_media_type() -> Failure {
        let message = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json".into();
        Failure::new(415, "UnsupportedMediaType", message, None)
    }

    /// 422 with one cause per field: `Deployment.apps "x" is invalid: spec.replicas: Invalid value: ...`.
    fn invalid(res: Res, name: &str, causes: Vec<(&str, &str, String)>) -> Failure {
        let kind = res.qualified_kind();
        Failure::invalid_kind(&kind, res.group(), res.kind(), name, causes)
    }

    fn invalid_kind(
        qualified_kind: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: Vec<(&str, &str, String)>,
    ) -> Failure {
        let parts: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        let joined = if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) };
        let message = format!("{qualified_kind} \"{name}\" is invalid: {joined}");
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, reason, message)| json!({"reason": reason, "message": message, "field": field}))
            .collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        Failure::new(422, "Invalid", message, Some(d))
    }

    /// A patch whose result does not decode: the real server reports the whole patched object
    /// as an invalid value of the field `patch`, with an empty kind and name (so the message
    /// starts with a space). For a strategic merge patch it shows the patch instead.
    fn patch_invalid(patched: &Value, error: &str) -> Failure {
        let body = format!("Invalid value: {:?}: {error}", patched.to_string());
        let cause = json!({"reason": "FieldValueInvalid", "message": body, "field": "patch"});
        Failure::new(422, "Invalid", format!(" \"\" is invalid: patch: {body}"), Some(json!({"causes": [cause]})))
    }

    fn invalid_replicas(qualified_kind: &str, name: &str, replicas: i64) -> Failure {
        let (kind, group) = qualified_kind.split_once('.').unwrap_or((qualified_kind, ""));
        let cause = (
            "spec.replicas",
            "FieldValueInvalid",
            format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        );
        Failure::invalid_kind(qualified_kind, group, kind, name, vec![cause])
    }

    /// 403 as RBAC words it.
    fn forbidden(route: &Route, method: &Method, params: &Params, path: &str) -> Failure {
        let Some(attrs) = route.attributes(method, params) else {
            let message =
                format!("forbidden: User \"{USER}\" cannot {} path \"{}\"", method.as_str().to_lowercase(), path);
            return Failure::new(403, "Forbidden", message, Some(json!({})));
        };
        let resource = attrs.resource();
        let scope = match attrs.ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let subject = match attrs.name {
            Some(name) => format!("{} \"{name}\"", attrs.res.qualified()),
            None => attrs.res.qualified(),
        };
        let message = format!(
            "{subject} is forbidden: User \"{USER}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            attrs.verb,
            attrs.res.group()
        );
        Failure::new(403, "Forbidden", message, details(attrs.res, attrs.name.unwrap_or_default()))
    }

    /// What `fail_next(_, code)` answers.
    fn injected(code: u16, route: &Route, method: &Method, params: &Params, path: &str) -> Failure {
        let name = route.name();
        match code {
            401 => Failure::unauthorized(),
            403 => Failure::forbidden(route, method, params, path),
            404 => match (route.res(), name) {
                (Some(res), Some(name)) => Failure::not_found(res, name),
                _ => Failure::unknown_path(),
            },
            409 => match (route.res(), name) {
                (Some(res), Some(name)) => Failure::conflict(res, name),
                _ => Failure::new(409, "Conflict", "the object has been modified".into(), None),
            },
            429 => Failure {
                retry_after: Some(1),
                ..Failure::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.".into(),
                    Some(json!({"retryAfterSeconds": 1})),
                )
            },
            500 => Failure::new(
                500,
                "InternalError",
                "Internal error occurred: fault injected by FakeKube::fail_next".into(),
                Some(json!({"causes": [{"message": "fault injected by FakeKube::fail_next"}]})),
            ),
            503 => Failure::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
                Some(json!({})),
            ),
            504 => Failure::new(
                504,
                "Timeout",
                "Timeout: request did not complete within the allotted timeout".into(),
                Some(json!({})),
            ),
            _ => {
                let reason = match code {
                    400 => "BadRequest",
                    405 => "MethodNotAllowed",
                    410 => "Expired",
                    415 => "UnsupportedMediaType",
                    422 => "Invalid",
                    // metav1.StatusReasonUnknown
                    _ => "",
                };
                Failure::new(code, reason, format!("fault injected by FakeKube::fail_next (HTTP {code})"), None)
            }
        }
    }

    fn status_body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        body
    }

    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(code, &self.status_body());
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = code;
    set_api_headers(&mut response);
    response
}

/// Headers every API server answer has.
fn set_api_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    if let Ok(id) = HeaderValue::from_str(&random_uid()) {
        headers.insert("audit-id", id);
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

enum Route {
    Version,
    Health,
    /// A discovery document, already built.
    Discovery(Value),
    Collection {
        res: Res,
        ns: Option<String>,
    },
    Object {
        res: Res,
        ns: String,
        name: String,
    },
    Scale {
        kind: Kind,
        ns: String,
        name: String,
    },
    /// The `/status` subresource of a Job or Pod.
    Status {
        res: Res,
        ns: String,
        name: String,
    },
    AccessReview,
    Unknown(String),
}

/// What RBAC would check for a request.
struct Attributes<'a> {
    verb: &'static str,
    res: Res,
    subresource: &'static str,
    ns: Option<&'a str>,
    name: Option<&'a str>,
}

impl Attributes<'_> {
    /// The resource as RBAC rules and messages name it: `deployments` or `deployments/scale`.
    fn resource(&self) -> String {
        if self.subresource.is_empty() {
            self.res.plural().to_owned()
        } else {
            format!("{}/{}", self.res.plural(), self.subresource)
        }
    }
}

impl Route {
    fn parse(path: &str, addr: SocketAddr) -> Route {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let unknown = || Route::Unknown(path.to_owned());
        let (group, rest) = match segs.as_slice() {
            ["version"] => return Route::Version,
            ["healthz" | "livez" | "readyz"] => return Route::Health,
            ["api"] => return Route::Discovery(discovery_api(addr)),
            ["apis"] => return Route::Discovery(discovery_groups()),
            ["api", "v1"] => return Route::Discovery(discovery_resources("", "v1")),
            ["apis", group, version] => {
                return if discovery_group_exists(group, version) {
                    Route::Discovery(discovery_resources(group, version))
                } else {
                    unknown()
                };
            }
            ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => return Route::AccessReview,
            ["api", "v1", rest @ ..] => (("", "v1"), rest),
            ["apis", group, version, rest @ ..] => ((*group, *version), rest),
            _ => return unknown(),
        };
        let lookup = |plural: &str| Res::lookup(group.0, group.1, plural);
        // A namespaced resource is only served under /namespaces/NS (and listed without it); a
        // cluster-scoped one only without, as the real server routes them.
        let namespaced = |plural: &str| lookup(plural).filter(|r| r.namespaced());
        let cluster_scoped = |plural: &str| lookup(plural).filter(|r| !r.namespaced());
        match rest {
            [plural] => match lookup(plural) {
                Some(res) => Route::Collection { res, ns: None },
                None => unknown(),
            },
            [plural, name] => match cluster_scoped(plural) {
                Some(res) => Route::Object { res, ns: String::new(), name: (*name).to_owned() },
                None => unknown(),
            },
            ["namespaces", ns, plural] => match namespaced(plural) {
                Some(res) => Route::Collection { res, ns: Some((*ns).to_owned()) },
                None => unknown(),
            },
            ["namespaces", ns, plural, name] => match namespaced(plural) {
                Some(res) => Route::Object { res, ns: (*ns).to_owned(), name: (*name).to_owned() },
                None => unknown(),
            },
            ["namespaces", ns, plural, name, "scale"] => match lookup(plural).and_then(Res::workload) {
                Some(kind) => Route::Scale { kind, ns: (*ns).to_owned(), name: (*name).to_owned() },
                None => unknown(),
            },
            ["namespaces", ns, plural, name, "status"] => match lookup(plural) {
                Some(res @ (Res::Job | Res::Pod)) => {
                    Route::Status { res, ns: (*ns).to_owned(), name: (*name).to_owned() }
                }
                _ => unknown(),
            },
            _ => unknown(),
        }
    }

    fn res(&self) -> Option<Res> {
        match self {
            Route::Collection { res, .. } | Route::Object { res, .. } | Route::Status { res, .. } => Some(*res),
            Route::Scale { kind, .. } => Some(kind.res()),
            _ => None,
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Route::Object { name, .. } | Route::Scale { name, .. } | Route::Status { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The RBAC attributes of a request to this route, if it is a resource request.
    fn attributes(&self, method: &Method, params: &Params) -> Option<Attributes<'_>> {
        let verb_for_object = |m: &Method| match *m {
            Method::GET => Some("get"),
            Method::PUT => Some("update"),
            Method::PATCH => Some("patch"),
            Method::DELETE => Some("delete"),
            _ => None,
        };
        match self {
            Route::Collection { res, ns } => {
                let verb = match *method {
                    Method::GET if params.flag("watch") => "watch",
                    Method::GET => "list",
                    Method::POST => "create",
                    _ => return None,
                };
                Some(Attributes { verb, res: *res, subresource: "", ns: ns.as_deref(), name: None })
            }
            Route::Object { res, ns, name } => Some(Attributes {
                verb: verb_for_object(method)?,
                res: *res,
                subresource: "",
                ns: res.namespaced().then_some(ns.as_str()),
                name: Some(name),
            }),
            Route::Scale { kind, ns, name } => Some(Attributes {
                verb: verb_for_object(method)?,
                res: kind.res(),
                subresource: "scale",
                ns: Some(ns),
                name: Some(name),
            }),
            Route::Status { res, ns, name } => Some(Attributes {
                verb: verb_for_object(method)?,
                res: *res,
                subresource: "status",
                ns: Some(ns),
                name: Some(name),
            }),
            _ => None,
        }
    }
}

fn discovery_api(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

/// Every API group the fake serves, with its one version.
const GROUPS: [(&str, &str); 6] = [
    ("apps", "v1"),
    ("authorization.k8s.io", "v1"),
    ("batch", "v1"),
    ("coordination.k8s.io", "v1"),
    ("events.k8s.io", "v1"),
    ("keda.sh", "v1alpha1"),
];

fn discovery_group_exists(group: &str, version: &str) -> bool {
    GROUPS.contains(&(group, version))
}

fn discovery_groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn discovery_resources(group: &str, version: &str) -> Value {
    let all_verbs = json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
    let mut resources = Vec::new();
    for res in Res::ALL.into_iter().filter(|r| r.group() == group && r.version() == version) {
        resources.push(json!({
            "name": res.plural(),
            "singularName": res.kind().to_lowercase(),
            "namespaced": res.namespaced(),
            "kind": res.kind(),
            "verbs": all_verbs,
        }));
        if matches!(res, Res::Job | Res::Pod) {
            resources.push(json!({
                "name": format!("{}/status", res.plural()),
                "singularName": "",
                "namespaced": true,
                "kind": res.kind(),
                "verbs": ["get", "patch", "update"],
            }));
        }
        if res.workload().is_some() {
            resources.push(json!({
                "name": format!("{}/scale", res.plural()),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if group == "authorization.k8s.io" {
        resources.push(json!({
            "name": "selfsubjectaccessreviews",
            "singularName": "selfsubjectaccessreview",
            "namespaced": false,
            "kind": "SelfSubjectAccessReview",
            "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting this task cuts every connection too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(tcp, acceptor.clone(), shared.clone()));
    }
}

/// Per-connection context handed to the request handler.
#[derive(Clone)]
struct Conn {
    shared: Arc<Shared>,
    /// Set by a request that `drop_next` picked: the connection is then reset.
    abort: Arc<Notify>,
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // Keep a second handle on the socket, so that `drop_next` can set SO_LINGER=0 and the close
    // becomes a reset (what a crashed server or a dropping load balancer looks like).
    let Ok(std_tcp) = tcp.into_std() else { return };
    let Ok(dup) = std_tcp.try_clone() else { return };
    let Ok(tcp) = TcpStream::from_std(std_tcp) else { return };
    let raw = TcpSocket::from_std_stream(dup);
    let Ok(tls) = acceptor.accept(tcp).await else { return };

    let abort = Arc::new(Notify::new());
    let app = Router::new().fallback(handle).with_state(Conn { shared, abort: abort.clone() });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::select! {
        _ = connection => {}
        _ = abort.notified() => {
            let _ = raw.set_zero_linger();
        }
    }
    // Dropping the connection and `raw` closes the socket (with a reset if aborted).
}

/// Every request goes through here: capture, faults, auth, then the API.
async fn handle(AxumState(conn): AxumState<Conn>, request: Request) -> Response {
    let shared = conn.shared.clone();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let method = parts.method;
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let params = Params::parse(query.as_deref());
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let route = Route::parse(&path, shared.addr);

    // Record the request and decide its fate in one critical section, so concurrent requests
    // consume the injected faults in arrival order.
    let (id, verdict, latency) = {
        let mut st = shared.lock();
        let authorized = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == st.token || st.eks.is_some_and(|age| eks_token_valid(t, age)));
        st.next_request_id += 1;
        let id = st.next_request_id;
        st.requests.push((
            id,
            Captured {
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
                authorized,
                status: None,
                received: std::time::Instant::now(),
                answered: None,
            },
        ));
        let verdict = decide(&mut st, authorized, &method, &route, &params, &path);
        let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let slow = (st.faults.slow.iter())
            .filter(|(h, part, _)| path.contains(part.as_str()) && h.as_deref().is_none_or(|h| h == host))
            .map(|(_, _, d)| *d)
            .max();
        (id, verdict, slow.unwrap_or_default().max(st.faults.latency))
    };

    if shared.lock().faults.black_hole {
        return std::future::pending().await;
    }
    let Some(verdict) = verdict else {
        // drop_next: no answer at all; the connection task resets the socket and drops this future.
        conn.abort.notify_one();
        return std::future::pending().await;
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match verdict {
        Err(failure) => failure.into_response(),
        Ok(()) => serve_api(&shared, &method, route, &params, content_type.as_deref(), &body)
            .unwrap_or_else(Failure::into_response),
    };
    let mut st = shared.lock();
    if let Some((_, c)) = st.requests.iter_mut().find(|(i, _)| *i == id) {
        c.status = Some(response.status().as_u16());
        c.answered = Some(std::time::Instant::now());
    }
    response
}

/// Whether `token` is an EKS token signed at most `max_age` ago.
fn eks_token_valid(token: &str, max_age: Duration) -> bool {
    let Some(b64) = token.strip_prefix("k8s-aws-v1.") else { return false };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64) else { return false };
    let Ok(url) = url::Url::parse(&String::from_utf8_lossy(&bytes)) else { return false };
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let signed_for_cluster =
        query.get("X-Amz-SignedHeaders").is_some_and(|h| h.split(';').any(|h| h == "x-k8s-aws-id"));
    let Some(Ok(signed)) = query.get("X-Amz-Date").map(|d| jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", d)) else {
        return false;
    };
    let Ok(signed) = signed.to_zoned(jiff::tz::TimeZone::UTC) else { return false };
    let age = jiff::Timestamp::now().duration_since(signed.timestamp());
    url.host_str().is_some_and(|h| h.starts_with("sts."))
        && query.get("Action").map(String::as_str) == Some("GetCallerIdentity")
        && signed_for_cluster
        && age.unsigned_abs() <= max_age
}

/// `None`: drop the connection. `Some(Err)`: answer with that failure. `Some(Ok)`: serve it.
fn decide(
    st: &mut State,
    authorized: bool,
    method: &Method,
    route: &Route,
    params: &Params,
    path: &str,
) -> Option<Result<(), Failure>> {
    if st.faults.drop > 0 {
        st.faults.drop -= 1;
        return None;
    }
    if !authorized {
        return Some(Err(Failure::unauthorized()));
    }
    if !matches!(route, Route::Version)
        && let Some(code) = st.faults.fail.pop_front()
    {
        return Some(Err(Failure::injected(code, route, method, params, path)));
    }
    if let Route::Scale { kind, name, .. } = route
        && matches!(*method, Method::PATCH | Method::PUT)
        && st.faults.conflict > 0
    {
        st.faults.conflict -= 1;
        return Some(Err(Failure::conflict(kind.res(), name)));
    }
    if let Route::Object { res: Res::Lease, ns, name } = route
        && *method == Method::PUT
        && st.faults.lease_edits > 0
        && let Some(mut obj) = st.get(Res::Lease, ns, name).cloned()
    {
        st.faults.lease_edits -= 1;
        obj["metadata"]["annotations"]["edited-by-hand"] = json!(st.rv.to_string());
        if let Err(f) = st.update(Res::Lease, ns, name, obj, false) {
            panic!("edit lease {ns}/{name}: {}", f.message);
        }
    }
    if let Some(a) = route.attributes(method, params)
        && st.denied(a.verb, a.res.plural(), a.subresource)
    {
        return Some(Err(Failure::forbidden(route, method, params, path)));
    }
    Some(Ok(()))
}

/// The API proper, once the request is authenticated and authorized.
fn serve_api(
    shared: &Arc<Shared>,
    method: &Method,
    route: Route,
    params: &Params,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response, Failure> {
    let ok = |v: Value| -> Result<Response, Failure> { Ok(json_response(StatusCode::OK, &v)) };
    let dry = params.dry_run();
    match (route, method.clone()) {
        (Route::Version, Method::GET) => ok(json!({
            "major": "1",
            "minor": "34",
            "emulationMajor": "1",
            "emulationMinor": "34",
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": "33",
            "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        (Route::Health, Method::GET) => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(r)
        }
        (Route::Discovery(doc), Method::GET) => ok(doc),
        (Route::AccessReview, Method::POST) => {
            let review = parse_json(body)?;
            let st = shared.lock();
            Ok(json_response(StatusCode::CREATED, &access_review(&st, review)?))
        }
        (Route::Collection { res, ns }, Method::GET) => {
            if params.flag("watch") {
                return start_watch(shared, res, ns, params);
            }
            ok(shared.lock().list(res, ns.as_deref(), params)?)
        }
        (Route::Collection { res, ns: Some(ns) }, Method::POST) => {
            let obj = parse_json(body)?;
            check_decodes(res, &obj)?;
            let created = shared.lock().create(res, &ns, obj, dry)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Route::Collection { res, ns: None }, Method::POST) if !res.namespaced() => {
            let obj = parse_json(body)?;
            let created = shared.lock().create(res, "", obj, dry)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Route::Object { res, ns, name }, Method::GET) => {
            let st = shared.lock();
            ok(st.get(res, &ns, &name).cloned().ok_or_else(|| Failure::not_found(res, &name))?)
        }
        (Route::Object { res, ns, name }, Method::PUT) => {
            check_json_body(content_type)?;
            let new = parse_json(body)?;
            check_decodes(res, &new)?;
            ok(shared.lock().client_update(res, &ns, &name, new, dry)?)
        }
        (Route::Object { res, ns, name }, Method::PATCH) => {
            let mut st = shared.lock();
            let cur = st.get(res, &ns, &name).cloned().ok_or_else(|| Failure::not_found(res, &name))?;
            let patched = apply_patch(&cur, content_type, body)?;
            if let Some(error) = decode_error(res, &patched) {
                return Err(Failure::patch_invalid(&patched, &error));
            }
            ok(st.client_update(res, &ns, &name, patched, dry)?)
        }
        (Route::Object { res: res @ (Res::Job | Res::Pod), ns, name }, Method::DELETE) => {
            batch::delete(shared, res, &ns, &name, params, body)
        }
        (Route::Status { res, ns, name }, Method::GET) => {
            let st = shared.lock();
            ok(st.get(res, &ns, &name).cloned().ok_or_else(|| Failure::not_found(res, &name))?)
        }
        (Route::Status { res, ns, name }, Method::PUT) => {
            check_json_body(content_type)?;
            let new = parse_json(body)?;
            ok(shared.lock().write_status(res, &ns, &name, &new, dry)?)
        }
        (Route::Status { res, ns, name }, Method::PATCH) => {
            let mut st = shared.lock();
            let cur = st.get(res, &ns, &name).cloned().ok_or_else(|| Failure::not_found(res, &name))?;
            let patched = apply_patch(&cur, content_type, body)?;
            ok(st.write_status(res, &ns, &name, &patched, dry)?)
        }
        (Route::Object { res, ns, name }, Method::DELETE) => {
            let mut st = shared.lock();
            let cur = st.get(res, &ns, &name).cloned().ok_or_else(|| Failure::not_found(res, &name))?;
            if !dry {
                st.remove(res, &ns, &name);
            }
            // Deleted at once (no finalizers): the real server answers a Success Status.
            let mut d = details(res, &name).unwrap_or_default();
            d["uid"] = json!(meta_str(&cur, "uid"));
            ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}))
        }
        (Route::Scale { kind, ns, name }, Method::GET) => {
            let st = shared.lock();
            let obj = st.get(kind.res(), &ns, &name).ok_or_else(|| Failure::not_found(kind.res(), &name))?;
            ok(scale_view(obj))
        }
        (Route::Scale { kind, ns, name }, Method::PUT) => {
            check_json_body(content_type)?;
            let scale = parse_json(body)?;
            ok(shared.lock().update_scale(kind, &ns, &name, &scale, dry)?)
        }
        (Route::Scale { kind, ns, name }, Method::PATCH) => {
            let mut st = shared.lock();
            let obj = st.get(kind.res(), &ns, &name).ok_or_else(|| Failure::not_found(kind.res(), &name))?;
            // The patch applies to the Scale view, not to the Deployment.
            let patched = apply_patch(&scale_view(obj), content_type, body)?;
            ok(st.update_scale(kind, &ns, &name, &patched, dry)?)
        }
        (Route::Unknown(_), _) => Err(Failure::unknown_path()),
        _ => Err(Failure::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Failure> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    if v.is_object() { Ok(v) } else { Err(Failure::bad_request("the body of the request is not a JSON object".into())) }
}

/// PUT and POST bodies: JSON (kube always sends `application/json`). YAML is not decoded here.
fn check_json_body(content_type: Option<&str>) -> Result<(), Failure> {
    match media_type(content_type).as_deref() {
        None | Some("application/json") => Ok(()),
        _ => Err(Failure::unsupported_media_type()),
    }
}

fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Applies a PATCH body to `target` according to its content type.
fn apply_patch(target: &Value, content_type: Option<&str>, body: &[u8]) -> Result<Value, Failure> {
    let decode_err = |e: serde_json::Error| Failure::bad_request(format!("error decoding patch: {e}"));
    let mut doc = target.clone();
    match media_type(content_type).as_deref() {
        Some("application/merge-patch+json") => {
            let patch: Value = serde_json::from_slice(body).map_err(decode_err)?;
            if !patch.is_object() {
                return Err(Failure::bad_request("error decoding patch: not a JSON object".into()));
            }
            json_patch::merge(&mut doc, &patch);
        }
        Some("application/strategic-merge-patch+json") => {
            // Close enough for metadata and spec.replicas: lists are replaced instead of merged
            // by key, and `$patch`-style directives are dropped.
            let mut patch: Value = serde_json::from_slice(body).map_err(decode_err)?;
            if !patch.is_object() {
                return Err(Failure::bad_request("error decoding patch: not a JSON object".into()));
            }
            strip_directives(&mut patch);
            json_patch::merge(&mut doc, &patch);
        }
        Some("application/json-patch+json") => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(decode_err)?;
            json_patch::patch(&mut doc, &patch).map_err(|e| Failure::new(422, "Invalid", e.to_string(), None))?;
        }
        // Includes application/apply-patch+yaml: the fake has no server-side apply.
        _ => return Err(Failure::unsupported_media_type()),
    }
    Ok(doc)
}

fn strip_directives(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        map.retain(|k, _| !k.starts_with('$'));
        map.values_mut().for_each(strip_directives);
    }
}

/// Answers a SelfSubjectAccessReview: the request echoed back with `status`.
fn access_review(st: &State, mut review: Value) -> Result<Value, Failure> {
    review["kind"] = json!("SelfSubjectAccessReview");
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["metadata"] = json!({"creationTimestamp": null});
    let attrs = review.pointer("/spec/resourceAttributes").cloned();
    let non_resource = review.pointer("/spec/nonResourceAttributes").is_some();
    let status = match attrs {
        Some(a) => {
            let field = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let (verb, resource, sub) = (field("verb"), field("resource"), field("subresource"));
            if st.denied(&verb, &resource, &sub) {
                json!({
                    "allowed": false,
                    "reason": format!("denied by FakeKube::deny({verb:?}, {resource:?}, {sub:?})"),
                })
            } else {
                json!({"allowed": true, "reason": "allowed by FakeKube"})
            }
        }
        None if non_resource => json!({"allowed": true}),
        None => {
            let cause = (
                "spec.resourceAttributes",
                "FieldValueRequired",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
                    .to_owned(),
            );
            return Err(Failure::invalid_kind(
                "SelfSubjectAccessReview.authorization.k8s.io",
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "",
                vec![cause],
            ));
        }
    };
    review["status"] = status;
    Ok(review)
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

/// One open watch: newline-delimited JSON events on a chunked response that stays open.
struct WatchStream {
    shared: Arc<Shared>,
    res: Res,
    ns: Option<String>,
    selector: Selector,
    /// Everything up to this resourceVersion has been looked at.
    last_rv: u64,
    queue: VecDeque<Bytes>,
    bookmarks: bool,
    deadline: Option<tokio::time::Instant>,
    changes: watch::Receiver<u64>,
    closes: watch::Receiver<u64>,
    done: bool,
}

fn start_watch(shared: &Arc<Shared>, res: Res, ns: Option<String>, params: &Params) -> Result<Response, Failure> {
    let selector = Selector::from_params(res, params)?;
    let bookmarks = params.flag("allowWatchBookmarks");
    let initial_events = params.flag("sendInitialEvents");
    if initial_events && (params.get("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks) {
        return Err(Failure::invalid_kind(
            "ListOptions.meta.k8s.io",
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![(
                "resourceVersionMatch",
                "FieldValueForbidden",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks".into(),
            )],
        ));
    }
    let timeout = match params.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Some(t.parse::<u64>().map_err(|_| Failure::bad_request(format!("invalid timeoutSeconds: {t}")))?),
        None => None,
    };
    let st = shared.lock();
    let mut stream = WatchStream {
        shared: shared.clone(),
        res,
        ns,
        selector,
        last_rv: st.rv,
        queue: VecDeque::new(),
        bookmarks,
        deadline: timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t)),
        changes: st.changes.subscribe(),
        closes: st.closes.subscribe(),
        done: false,
    };
    match params.get("resourceVersion").unwrap_or_default() {
        // "" (most recent) and "0" (any): synthetic ADDED events for what exists now, then changes.
        "" | "0" => stream.send_existing(&st),
        _ if initial_events => stream.send_existing(&st),
        rv => {
            stream.last_rv = rv.parse().map_err(|_| Failure::bad_request(format!("invalid resource version: {rv}")))?;
        }
    }
    if initial_events {
        // Tells the client the initial state is complete (the WatchList protocol).
        let bookmark = stream.bookmark(st.rv, true);
        stream.queue.push_back(bookmark);
    }
    drop(st);

    let events = futures::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    });
    let mut response = Response::new(Body::from_stream(events));
    set_api_headers(&mut response);
    Ok(response)
}

impl WatchStream {
    fn send_existing(&mut self, st: &State) {
        let objects: Vec<Value> = st
            .objects
            .iter()
            .filter(|((r, n, _), s)| *r == self.res && self.in_scope(n) && self.selector.matches(&s.obj))
            .map(|(_, s)| s.obj.clone())
            .collect();
        for obj in objects {
            self.push_event("ADDED", obj);
        }
    }

    fn in_scope(&self, ns: &str) -> bool {
        self.ns.as_deref().is_none_or(|n| n == ns)
    }

    fn push_event(&mut self, kind: &str, object: Value) {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.queue.push_back(Bytes::from(line));
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.res.kind(), "apiVersion": self.res.api_version(), "metadata": metadata});
        let mut line = json!({"type": "BOOKMARK", "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    /// Queues the events written since `last_rv`.
    fn collect(&mut self) {
        let shared = self.shared.clone();
        let st = shared.lock();
        if self.last_rv < st.compacted_rv {
            // etcd has compacted this history away: the client must re-list.
            let status = Failure::new(
                410,
                "Expired",
                format!("too old resource version: {} ({})", self.last_rv, st.compacted_rv),
                None,
            )
            .status_body();
            self.push_event("ERROR", status);
            self.done = true;
            return;
        }
        let start = st.log.partition_point(|e| e.rv <= self.last_rv);
        for entry in &st.log[start..] {
            if entry.res != self.res || !self.in_scope(&entry.ns) {
                continue;
            }
            let now = self.selector.matches(&entry.obj);
            let before = entry.prev.as_ref().is_some_and(|p| self.selector.matches(p));
            // An object entering or leaving the selector is ADDED or DELETED for this watch.
            let kind = match (entry.change, before, now) {
                (Change::Added, _, true) => "ADDED",
                (Change::Deleted, _, true) => "DELETED",
                (Change::Modified, true, true) => "MODIFIED",
                (Change::Modified, false, true) => "ADDED",
                (Change::Modified, true, false) => "DELETED",
                _ => continue,
            };
            let obj = entry.obj.clone();
            self.push_event(kind, obj);
        }
        self.last_rv = st.rv;
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            self.changes.borrow_and_update();
            self.collect();
            if !self.queue.is_empty() || self.done {
                continue;
            }
            let deadline = self.deadline;
            let timeout = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.done = true;
                    }
                }
                _ = self.closes.changed() => self.done = true,
                _ = timeout => {
                    // timeoutSeconds is up: flush what is pending, bookmark, end the response.
                    self.collect();
                    if self.bookmarks && !self.done {
                        let bookmark = self.bookmark(self.last_rv, false);
                        self.queue.push_back(bookmark);
                    }
                    self.done = true;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn random_u64() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn random_token() -> String {
    format!("fake-token-{:016x}", random_u64())
}

/// A v4-looking UUID.
fn random_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// The 5 characters the API server appends to a `generateName`.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// FNV-1a, for stable fake revision hashes.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}
