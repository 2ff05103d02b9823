//! The daemon under load: one `sqscale run` process (the release binary named by
//! `SQSCALE_BIN`) with N rules at a 10 s polling interval, against an in-process SQS
//! endpoint and the fake Kubernetes API server. Run it with `scripts/bench`; it is
//! ignored by `cargo test`.
//!
//! For every N of `SQSCALE_BENCH_RULES` (default `10,1000,10000`) it measures:
//!
//! * start-up: spawn until every rule has made its first SQS call (seen at the SQS
//!   endpoint), and until `/readyz` answers 200 and `READY=1` arrives on NOTIFY_SOCKET
//!   (the daemon's own claims, printed next to it);
//! * after a warm-up of one and a half intervals, over a window of
//!   `SQSCALE_BENCH_SECONDS` (default 60) in which every queue is empty: the daemon's
//!   VmRSS (at the end, and the range of once-a-second samples) and VmHWM
//!   (/proc/PID/status), its CPU time (utime + stime of /proc/PID/stat),
//!   poll lateness (each SQS arrival against its queue's ideal schedule, first arrival
//!   plus k x 10 s, see [`lateness`]), and the SQS and Kubernetes calls counted at the two
//!   servers, per round;
//! * then a backlog of 1000 messages on a few dozen queues: for every replica change
//!   the daemon writes, the time from the SQS answer of the poll that saw the backlog to
//!   the change reaching the fake API server, and the time from the first answer with a
//!   backlog to the target at `max_replica_count` (10);
//! * the reload of the whole N-rule file with every `max_replica_count` changed:
//!   SIGHUP, then RELOADING=1 -> READY=1 on NOTIFY_SOCKET, and when each restarted rule
//!   polls again;
//! * the drain on SIGTERM.
//!
//! Each N runs the cases of `SQSCALE_BENCH_CASES` (default `idle,busy,tls-idle,tls-busy`;
//! also `jobs-idle`, `jobs-busy`), each with a daemon of its own:
//!
//! * `idle`: everything above (empty queues, plain HTTP);
//! * `busy`: every queue holds 10 messages from the start and every target runs the 2
//!   replicas that asks for (`queue_length = 5`), so every rule is active and nothing
//!   scales after start-up: start-up and the measured window only, which starts after
//!   the HPA's 300 s downscale window has filled every rule's recommendation history
//!   (see [`BUSY_WARM_UP`]) and lasts at least 80 s (one refresh of every rule's stored
//!   last-active, see [`BUSY_WINDOW`]);
//! * `tls-idle`, `tls-busy`: the same over HTTPS. The SQS endpoint serves a fresh
//!   self-signed certificate for 127.0.0.1, and the daemon trusts it (and only it)
//!   through `SSL_CERT_FILE`, as it would a corporate CA.
//! * `jobs-idle`, `jobs-busy` (issue 24): N job rules (`[[job]]`, one template file)
//!   instead of rules, one queue each, spread round robin over 10 namespaces (`jobs-0`
//!   ...), so the adapter's per-namespace Jobs and pods watches are exercised; no
//!   Deployments. `jobs-idle`: empty queues, no Job. `jobs-busy`: every queue holds 2
//!   messages at `queue_length = 1` and `max_replica_count = 2`, so each job rule
//!   creates 2 Jobs in its first rounds; nothing runs them (no Job controller here), so
//!   they stay unfinished and pending, and every later poll finds them in the watch
//!   caches and creates nothing. The 2 x N creates take the default write budget's
//!   time (`qps = 20`: 100 s at 1,000), so the window starts after a longer warm-up
//!   (see [`Case::warm_up`]: 185 s more at 1,000 job rules). Both then print the Jobs created against those needed
//!   (2 per job rule in `jobs-busy`), reload every job rule (`max_replica_count`
//!   raised by one, the template unchanged: no rollout) and count the Jobs created and
//!   the Kubernetes calls until each has polled again, then drain. Any Job beyond those
//!   needed fails the run once the figures are printed. Kubernetes reads in the window
//!   should be 0 (counts come from the watches) and writes 0 (no create at steady state).
//!
//! A busy case whose idle case (of the same kind, over the same transport) is also
//! selected runs with it as a pair: the idle daemon starts a minute after the busy one's first round (see
//! [`PAIR_STAGGER`]), warms up until the busy one's window, and both are measured over
//! those same seconds, each for at least 80 s. The busy-against-idle CPU ratio then
//! compares two daemons on one host at one time, not the host a few minutes apart; the
//! ratio is also printed per 10 s slice. The idle half's backlog phase, reload and drain
//! follow its window, while the busy daemon drains.
//!
//! Every case prints the Kubernetes reads (GET, LIST, WATCH) and writes (PATCH, POST,
//! PUT) per rule per minute in its window, the last-active times the state writes
//! carried, the replica changes seen, and the CPU of the SQS endpoint's own thread (it
//! runs on a thread and runtime of its own, so its CPU is read from
//! `/proc/self/task/TID/stat`: far below a core means it keeps up and the figures are
//! the daemon's; for a pair, "this process" serves both daemons). After the table: busy
//! against idle over the same transport, CPU ratio and RSS difference in the same run,
//! and job rules against rules at the same N (`jobs-idle` against `idle`, `jobs-busy`
//! against `busy`: different windows, so the host's drift is in the CPU ratio).
//!
//! Knobs: `SQSCALE_BENCH_LOG` sets the daemon's `SQSCALE_LOG` (default `info`);
//! `SQSCALE_BENCH_KEEP=1` keeps each size's rule file and daemon log.
//!
//! It prints a Markdown table (one row per N) for PERFORMANCE.md, then the details.
//!
//! How the servers are kept honest: they run in this process, whose own CPU is printed
//! next to the daemon's; the daemon's figures come from /proc/PID only. The fake API
//! server answers with zero added latency. Replica changes are timed by a watch this
//! process holds on the Deployments (its requests carry `x-sqscale-bench` and are not
//! counted as the daemon's); the watch's own delivery delay is calibrated with writes
//! to a Deployment no rule targets and printed, so it can be subtracted by eye.

// Its re-exports of the Jobs helpers serve the integration tests; the bench uses a few.
#[allow(unused_imports)]
#[path = "it/support/fake_kube.rs"]
mod fake_kube;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use fake_kube::{FakeKube, Kind};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const NS: &str = "bench";
/// A Deployment no rule targets: writes to it calibrate the watch's delivery delay.
const PROBE: &str = "bench-probe";
/// The header on this process's own Kubernetes requests (the watch).
const OWN: &str = "x-sqscale-bench";
const INTERVAL: Duration = Duration::from_secs(10);
/// Queues given a backlog in the second phase (all of them when there are fewer).
const ACTIVE_QUEUES: usize = 40;
/// How long the backlog phase runs: activation plus three HPA steps.
const ACTIVE_PHASE: Duration = Duration::from_secs(45);
const MAX_REPLICAS: u32 = 10;

// ---------------------------------------------------------------------------------------------
// The SQS endpoint: AWS JSON 1.0, GetQueueAttributes and GetQueueUrl
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Poll {
    /// When the request reached the handler.
    arrived: Instant,
    /// When the answer was ready to go back.
    answered: Instant,
    backlog: u64,
}

#[derive(Default)]
struct Queue {
    backlog: AtomicU64,
    polls: Mutex<Vec<Poll>>,
}

struct Sqs {
    queues: Vec<Queue>,
    /// `http://127.0.0.1:PORT`, set once bound.
    url: Mutex<String>,
    /// Requests that were not a GetQueueAttributes of a known queue.
    other: AtomicU64,
    connections: AtomicU64,
}

impl Sqs {
    fn new(n: usize) -> Sqs {
        Sqs {
            queues: (0..n).map(|_| Queue::default()).collect(),
            url: Mutex::new(String::new()),
            other: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn queue_url(&self, i: usize) -> String {
        format!("{}/000000000000/q-{i}", self.url.lock().unwrap())
    }

    fn polls(&self, i: usize) -> Vec<Poll> {
        self.queues[i].polls.lock().unwrap().clone()
    }

    fn set_backlog(&self, i: usize, backlog: u64) {
        self.queues[i].backlog.store(backlog, Ordering::SeqCst);
    }

    /// Calls that arrived in `[from, to)`, every queue.
    fn calls_between(&self, from: Instant, to: Instant) -> u64 {
        self.queues
            .iter()
            .map(|q| q.polls.lock().unwrap().iter().filter(|p| p.arrived >= from && p.arrived < to).count() as u64)
            .sum()
    }
}

/// `q-17` at the end of a queue URL (or a bare name) -> 17.
fn queue_index(url: &str) -> Option<usize> {
    url.rsplit('/').next()?.strip_prefix("q-")?.parse().ok()
}

/// The SQS endpoint's server: its own thread and runtime, so its CPU can be read apart
/// from the fake API server's (`/proc/self/task/TID/stat`), and stopped with the size.
struct SqsServer {
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// PEM of the server's self-signed certificate (the throwaway CA the daemon trusts
    /// through `SSL_CERT_FILE`); `None` over plain HTTP.
    ca_pem: Option<String>,
}

impl SqsServer {
    /// CPU seconds the server's thread has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).unwrap_or_default();
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / procfs::ticks_per_second() as f64
    }
}

impl Drop for SqsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the SQS endpoint for `n` queues on a thread of its own: plain HTTP, or with
/// `tls` HTTPS with a fresh self-signed certificate for 127.0.0.1, as real SQS speaks.
fn start_sqs(n: usize, tls: bool) -> (Arc<Sqs>, SqsServer) {
    let sqs = Arc::new(Sqs::new(n));
    let (acceptor, ca_pem) = if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generate a certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("TLS certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), Some(ck.cert.pem()))
    } else {
        (None, None)
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, bound) = std::sync::mpsc::channel();
    let state = sqs.clone();
    let thread = std::thread::Builder::new()
        .name("bench-sqs".to_owned())
        .spawn(move || {
            // "/proc/thread-self" links to "<pid>/task/<tid>".
            let tid: u32 = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                .unwrap_or(0);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                started.send((tid, listener.local_addr().unwrap())).unwrap();
                let app = Router::new().fallback(sqs_handler).with_state(state.clone());
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        let _ = tcp.set_nodelay(true);
                        state.connections.fetch_add(1, Ordering::Relaxed);
                        let (app, acceptor) = (app.clone(), acceptor.clone());
                        tokio::spawn(async move {
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            let builder =
                                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                            match acceptor {
                                Some(acceptor) => {
                                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                                    let io = hyper_util::rt::TokioIo::new(tls);
                                    let _ = builder.serve_connection(io, service).await;
                                }
                                None => {
                                    let io = hyper_util::rt::TokioIo::new(tcp);
                                    let _ = builder.serve_connection(io, service).await;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        })
        .expect("start the SQS endpoint's thread");
    let (tid, addr) = bound.recv().expect("the SQS endpoint started");
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    *sqs.url.lock().unwrap() = format!("{scheme}://{addr}");
    (sqs, SqsServer { tid, stop: Some(stop), thread: Some(thread), ca_pem })
}

async fn sqs_handler(State(sqs): State<Arc<Sqs>>, request: Request) -> Response {
    let arrived = Instant::now();
    let target = request.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match target.as_str() {
        "AmazonSQS.GetQueueAttributes" => {
            let Some(i) = input["QueueUrl"].as_str().and_then(queue_index).filter(|i| *i < sqs.queues.len()) else {
                return sqs_error(&sqs);
            };
            let queue = &sqs.queues[i];
            let backlog = queue.backlog.load(Ordering::SeqCst);
            let mut attributes = serde_json::Map::new();
            for name in input["AttributeNames"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let all = name == "All";
                if all || name == "ApproximateNumberOfMessages" {
                    attributes.insert("ApproximateNumberOfMessages".into(), json!(backlog.to_string()));
                }
                if all || name == "ApproximateNumberOfMessagesNotVisible" {
                    attributes.insert("ApproximateNumberOfMessagesNotVisible".into(), json!("0"));
                }
                if all || name == "ApproximateNumberOfMessagesDelayed" {
                    attributes.insert("ApproximateNumberOfMessagesDelayed".into(), json!("0"));
                }
            }
            let response = sqs_answer(json!({ "Attributes": attributes }));
            let answered = Instant::now();
            queue.polls.lock().unwrap().push(Poll { arrived, answered, backlog });
            response
        }
        "AmazonSQS.GetQueueUrl" => {
            let Some(i) = input["QueueName"].as_str().and_then(queue_index).filter(|i| *i < sqs.queues.len()) else {
                return sqs_error(&sqs);
            };
            sqs.other.fetch_add(1, Ordering::Relaxed);
            sqs_answer(json!({ "QueueUrl": sqs.queue_url(i) }))
        }
        _ => sqs_error(&sqs),
    }
}

fn sqs_answer(body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.0"));
    headers.insert("x-amzn-requestid", HeaderValue::from_static("00000000-0000-0000-0000-000000000000"));
    response
}

/// What SQS answers for an unknown queue (in the JSON protocol, with the query-mode
/// error code the SDK asks for).
fn sqs_error(sqs: &Sqs) -> Response {
    sqs.other.fetch_add(1, Ordering::Relaxed);
    let body = json!({
        "__type": "com.amazonaws.sqs#QueueDoesNotExist",
        "message": "The specified queue does not exist.",
    });
    let mut response = sqs_answer(body);
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert("x-amzn-query-error", HeaderValue::from_static("AWS.SimpleQueueService.NonExistentQueue;Sender"));
    response
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: counting the daemon's calls, and timing replica changes with a watch
// ---------------------------------------------------------------------------------------------

/// The daemon's Kubernetes requests by kind, cumulative.
#[derive(Clone, Debug, Default)]
struct KubeCounts {
    by_kind: BTreeMap<&'static str, u64>,
    /// Answered with an error status (seen only if answered before the drain).
    failed: u64,
    /// This process's own requests (the watch), not counted above.
    own: u64,
    /// Targets' last-active times carried by the state writes (one write folds many).
    state_keys: u64,
}

impl KubeCounts {
    fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// Requests that change something at the API server (PATCH, POST, PUT, DELETE: a
    /// Job create is a write).
    fn writes(&self) -> u64 {
        self.by_kind
            .iter()
            .filter(|(k, _)| !k.starts_with("GET") && !k.starts_with("LIST") && **k != "WATCH")
            .map(|(_, v)| v)
            .sum()
    }

    fn reads(&self) -> u64 {
        self.total() - self.writes()
    }

    fn minus(&self, earlier: &KubeCounts) -> KubeCounts {
        let by_kind = self
            .by_kind
            .iter()
            .map(|(k, v)| (*k, v - earlier.by_kind.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        KubeCounts {
            by_kind,
            failed: self.failed - earlier.failed,
            own: self.own - earlier.own,
            state_keys: self.state_keys - earlier.state_keys,
        }
    }

    fn describe(&self, per: f64) -> String {
        let parts: Vec<String> = self.by_kind.iter().map(|(k, v)| format!("{k} {:.1}", *v as f64 / per)).collect();
        if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
    }
}

fn classify(method: &str, path: &str, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let collection = path.trim_end_matches('/').ends_with("/deployments");
    match method {
        "GET" if watch => "WATCH",
        "GET" if path.ends_with("/scale") => "GET scale",
        "GET" if path.contains("/deployments") && collection => "LIST deployments",
        "GET" if path.contains("/deployments/") => "GET deployment",
        "PATCH" if path.ends_with("/scale") => "PATCH scale",
        "PATCH" if path.contains("/deployments/") => "PATCH deployment",
        "POST" if path.ends_with("/events") => "POST event",
        "PATCH" if path.contains("/configmaps/") => "PATCH state",
        "POST" if path.ends_with("/configmaps") => "POST state",
        "GET" if path.contains("/configmaps") => "GET state",
        // Job rules: the Jobs and pods watches' lists, and the Jobs' creates and deletes.
        "GET" if path.ends_with("/jobs") => "LIST jobs",
        "GET" if path.ends_with("/pods") => "LIST pods",
        "GET" if path.contains("/jobs/") => "GET job",
        "POST" if path.ends_with("/jobs") => "POST job",
        "DELETE" if path.contains("/jobs/") => "DELETE job",
        "GET" => "GET other",
        _ => "other",
    }
}

/// Moves the fake's captured requests into counters. The fake keeps every request in a
/// list it scans on each answer, so it is emptied often (every 100 ms) to keep that
/// scan, and the fake's CPU, small. A request captured between the copy and the clear
/// is lost; the GET count is checked against the SQS count to show it does not matter.
struct KubeMeter {
    fake: Arc<FakeKube>,
    counts: Mutex<KubeCounts>,
}

impl KubeMeter {
    fn drain(&self) -> KubeCounts {
        let mut counts = self.counts.lock().unwrap();
        let requests = self.fake.requests();
        self.fake.clear_requests();
        for r in requests {
            if r.headers.iter().any(|(k, _)| k == OWN) {
                counts.own += 1;
                continue;
            }
            let kind = classify(&r.method, &r.path, r.query.as_deref());
            *counts.by_kind.entry(kind).or_default() += 1;
            if kind == "PATCH state" || kind == "POST state" {
                let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                counts.state_keys += body["data"].as_object().map_or(0, |d| d.len() as u64);
            }
            if r.status.is_some_and(|s| s >= 400) {
                counts.failed += 1;
            }
        }
        counts.clone()
    }
}

/// A replica change seen on the watch.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    replicas: i32,
    at: Instant,
}

/// Watches the Deployments of the namespace from `rv` on and records every change of
/// `spec.replicas`, re-watching when the server ends a watch.
async fn watch_replicas(kubeconfig: PathBuf, mut rv: String, seen: Arc<Mutex<Vec<Seen>>>) {
    let kc = Kubeconfig::read_from(&kubeconfig).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
    config.headers.push((header::HeaderName::from_static(OWN), HeaderValue::from_static("watch")));
    let client = kube::Client::try_from(config).expect("kube client");
    let api: Api<Deployment> = Api::namespaced(client, NS);
    let mut last: HashMap<String, i32> = HashMap::new();
    loop {
        let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench watch: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        futures::pin_mut!(stream);
        while let Ok(Some(event)) = stream.try_next().await {
            let at = Instant::now();
            match event {
                WatchEvent::Added(d) | WatchEvent::Modified(d) => {
                    if let Some(v) = &d.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let replicas = d.spec.replicas.unwrap_or(1);
                    if last.insert(name.clone(), replicas) != Some(replicas) {
                        seen.lock().unwrap().push(Seen { name, replicas, at });
                    }
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Deleted(_) => {}
                WatchEvent::Error(e) => {
                    eprintln!("bench watch: {}", e.message);
                    break;
                }
            }
        }
    }
}

/// Writes `PROBE`'s replicas `count` times, 100 ms apart, and returns how long each
/// write took to come back on the watch: the delay included in every patch timing.
async fn calibrate_watch(fake: &FakeKube, seen: &Mutex<Vec<Seen>>, count: usize) -> Vec<f64> {
    let mut delays = Vec::new();
    for _ in 0..count {
        let next = fake.replicas(Kind::Deployment, NS, PROBE).unwrap() as i32 + 1;
        let written = Instant::now();
        fake.set_replicas(Kind::Deployment, NS, PROBE, next as u32);
        let deadline = written + Duration::from_secs(5);
        while Instant::now() < deadline {
            let hit = seen.lock().unwrap().iter().rev().find(|s| s.name == PROBE && s.replicas == next).map(|s| s.at);
            if let Some(at) = hit {
                delays.push(ms(at.saturating_duration_since(written)));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delays
}

// ---------------------------------------------------------------------------------------------
// The daemon process
// ---------------------------------------------------------------------------------------------

/// CPU, memory, threads and descriptors of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu_ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: i64,
    fds: usize,
}

/// Sleeps for `window`, sampling `pid` once a second (the first sample at once, the last
/// at the end). The RSS range of the samples is the figure a single sample at the end
/// cannot give (it can land on a passing allocation, such as the half-megabyte answer to
/// a state write at ten thousand rules); the CPU per [`SLICE`] shows how much the host
/// moves the CPU figure within one window.
async fn watch_window(pid: i32, window: Duration) -> Vec<ProcSample> {
    let end = tokio::time::Instant::now() + window;
    let mut samples = Vec::new();
    loop {
        samples.push(sample(pid));
        let now = tokio::time::Instant::now();
        if now >= end {
            return samples;
        }
        tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
    }
}

/// The CPU seconds of each whole [`SLICE`] of a window's once-a-second samples.
fn cpu_slices(samples: &[ProcSample]) -> Vec<f64> {
    let step = SLICE.as_secs() as usize;
    samples.iter().step_by(step).collect::<Vec<_>>().windows(2).map(|w| cpu_seconds(w[0], w[1])).collect()
}

fn sample(pid: i32) -> ProcSample {
    let Ok(p) = procfs::process::Process::new(pid) else {
        return ProcSample::default();
    };
    let stat = p.stat().ok();
    let status = p.status().ok();
    ProcSample {
        cpu_ticks: stat.as_ref().map_or(0, |s| s.utime + s.stime),
        rss_kib: status.as_ref().and_then(|s| s.vmrss).unwrap_or(0),
        hwm_kib: status.as_ref().and_then(|s| s.vmhwm).unwrap_or(0),
        threads: stat.as_ref().map_or(0, |s| s.num_threads),
        fds: p.fd_count().unwrap_or(0),
    }
}

fn cpu_seconds(from: &ProcSample, to: &ProcSample) -> f64 {
    (to.cpu_ticks - from.cpu_ticks) as f64 / procfs::ticks_per_second() as f64
}

/// The HTTP status of `GET path` on the daemon's listener, if it answers in time.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.ok().flatten()
}

/// sd_notify messages received, with their arrival times.
type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen_notify(path: &Path) -> Notes {
    let socket = tokio::net::UnixDatagram::bind(path).expect("bind the notify socket");
    let notes: Notes = Arc::default();
    let sink = notes.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = socket.recv(&mut buf).await {
            let at = Instant::now();
            sink.lock().unwrap().push((at, String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    });
    notes
}

/// The first note after `after` that has `line` among its lines.
fn note_after(notes: &Notes, after: Instant, line: &str) -> Option<Instant> {
    notes.lock().unwrap().iter().find(|(at, m)| *at >= after && m.lines().any(|l| l == line)).map(|(at, _)| *at)
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

/// Where job rule `i` creates its Jobs.
fn job_namespace(i: usize) -> String {
    format!("jobs-{}", i % JOB_NAMESPACES)
}

/// The job rules' template, beside the rule file: what `config/jobs/demo-job.yaml` holds.
const JOB_TEMPLATE: &str = "bench-job.yaml";
const JOB_TEMPLATE_TEXT: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  labels:
    app.kubernetes.io/name: bench
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: work
          image: public.ecr.aws/docker/library/busybox:1.36
          command: ["sh", "-c", "echo working off one message; sleep 5"]
"#;

/// The rule file of `case`: `n` rules `r-i` on queue `q-i`, each sizing Deployment `d-i`,
/// or (job cases) `n` job rules `j-i` on queue `q-i` in namespace `jobs-(i mod 10)`, at
/// most `max` replicas or Jobs.
fn rule_file(case: Case, n: usize, sqs: &Sqs, listen: SocketAddr, kubeconfig: &Path, max: u32) -> String {
    let mut text = format!(
        "# {n} {} for tests/bench_daemon.rs\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
         [server]\nlisten = \"{listen}\"\n\n[kubernetes]\nkubeconfig = \"{}\"\n",
        if case.jobs() { "job rules" } else { "rules" },
        sqs.url.lock().unwrap(),
        kubeconfig.display()
    );
    if case.jobs() {
        for i in 0..n {
            let _ = write!(
                text,
                "\n[[job]]\nname = \"j-{i}\"\nnamespace = \"{}\"\ntemplate = \"{JOB_TEMPLATE}\"\n\
                 polling_interval = 10\nmax_replica_count = {max}\n\
                 [[job.trigger]]\nqueue_url = \"{}\"\nqueue_length = {JOBS_QUEUE_LENGTH}\n",
                job_namespace(i),
                sqs.queue_url(i)
            );
        }
        return text;
    }
    for i in 0..n {
        let _ = write!(
            text,
            "\n[[rule]]\nname = \"r-{i}\"\ntarget = {{ kind = \"Deployment\", name = \"d-{i}\", namespace = \"{NS}\" }}\n\
             polling_interval = 10\nmin_replica_count = 0\nmax_replica_count = {max}\ncooldown_period = 300\n\
             [[rule.trigger]]\nqueue_url = \"{}\"\nqueue_length = 5\n",
            sqs.queue_url(i)
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (0..=1) by nearest rank; NaN for no data.
fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v.abs() >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Poll lateness: per queue, each arrival in the window minus its ideal time, the
/// queue's first arrival since `anchor` + k x interval, k the poll's round. Rounds are
/// counted from the gaps between arrivals (a gap of about two intervals is a skipped
/// round; an arrival less than half an interval after the previous one is a retry and
/// left out), so a schedule that drifts shows as growing lateness rather than wrapping
/// round. `anchor` is the end of start-up: a rule's very first poll also builds the SQS
/// client and opens connections, so it is a poor zero. Also: each gap between two polls
/// minus the interval (jitter, without the drift), the rounds skipped, and the most SQS
/// arrivals in any 100 ms (all rules firing at once shows here).
struct Lateness {
    late_ms: Vec<f64>,
    gap_excess_ms: Vec<f64>,
    missed: u64,
    peak_per_100ms: usize,
}

fn lateness(sqs: &Sqs, anchor: Instant, from: Instant, to: Instant) -> Lateness {
    let mut out = Lateness { late_ms: Vec::new(), gap_excess_ms: Vec::new(), missed: 0, peak_per_100ms: 0 };
    let period = INTERVAL.as_secs_f64();
    let mut buckets: HashMap<u64, usize> = HashMap::new();
    for i in 0..sqs.queues.len() {
        let polls: Vec<Instant> =
            sqs.polls(i).into_iter().map(|p| p.arrived).filter(|t| *t >= anchor && *t < to).collect();
        for t in polls.iter().filter(|t| **t >= from) {
            *buckets.entry((*t - from).as_millis() as u64 / 100).or_default() += 1;
        }
        let Some(&first) = polls.first() else {
            out.missed += (to - from).as_secs_f64().div_euclid(period) as u64;
            continue;
        };
        let (mut k, mut previous) = (0i64, first);
        for &t in &polls[1..] {
            let gap = (t - previous).as_secs_f64();
            if gap < period / 2.0 {
                continue;
            }
            let rounds = (gap / period).round().max(1.0) as i64;
            k += rounds;
            previous = t;
            if t >= from {
                out.late_ms.push(((t - first).as_secs_f64() - k as f64 * period) * 1000.0);
                out.gap_excess_ms.push((gap / rounds as f64 - period) * 1000.0);
                out.missed += (rounds - 1) as u64;
            }
        }
    }
    out.peak_per_100ms = buckets.values().copied().max().unwrap_or(0);
    out
}

/// Warnings and errors the daemon logged (JSON lines) after byte `from`, by message
/// and kind.
fn log_problems(log: &Path, from: u64, to: Option<u64>) -> BTreeMap<String, u64> {
    let text = std::fs::read(log).unwrap_or_default();
    let end = to.map_or(text.len(), |t| (t as usize).min(text.len()));
    let start = (from as usize).min(end);
    let mut problems = BTreeMap::new();
    for line in String::from_utf8_lossy(&text[start..end]).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let level = v["level"].as_str().unwrap_or_default();
        if level == "WARN" || level == "ERROR" {
            let kind = v["fields"]["kind"].as_str().map(|k| format!(" [{k}]")).unwrap_or_default();
            let key = format!("{level} {}{kind}", v["fields"]["message"].as_str().unwrap_or("?"));
            *problems.entry(key).or_default() += 1;
        }
    }
    problems
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What the queues hold and how SQS is spoken to, for one run of the daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Case {
    /// Every queue empty, plain HTTP; then a backlog on a few queues, a reload and the
    /// drain (the figures PERFORMANCE.md has had from the start).
    #[default]
    Idle,
    /// Every queue holds [`BUSY_BACKLOG`] messages from the start and every target
    /// runs [`BUSY_REPLICAS`], which is what the backlog asks for: active rules whose
    /// replicas hold steady.
    Busy,
    TlsIdle,
    TlsBusy,
    /// N job rules (`[[job]]`) instead of rules, spread over [`JOB_NAMESPACES`]
    /// namespaces, every queue empty: no Job is created.
    JobsIdle,
    /// N job rules, every queue holding [`JOBS_BACKLOG`] messages at `queue_length = 1`
    /// and `max_replica_count = 2`: each job rule creates 2 Jobs in its first rounds.
    /// Nothing here runs Jobs (no Job controller), so they stay unfinished and pending,
    /// and every later poll finds them and creates nothing.
    JobsBusy,
}

impl Case {
    /// Every case `SQSCALE_BENCH_CASES` may name.
    const ALL: [Case; 6] = [Case::Idle, Case::Busy, Case::TlsIdle, Case::TlsBusy, Case::JobsIdle, Case::JobsBusy];
    /// The cases run when `SQSCALE_BENCH_CASES` is unset.
    const DEFAULT: [Case; 4] = [Case::Idle, Case::Busy, Case::TlsIdle, Case::TlsBusy];

    fn name(self) -> &'static str {
        match self {
            Case::Idle => "idle",
            Case::Busy => "busy",
            Case::TlsIdle => "tls-idle",
            Case::TlsBusy => "tls-busy",
            Case::JobsIdle => "jobs-idle",
            Case::JobsBusy => "jobs-busy",
        }
    }

    fn busy(self) -> bool {
        matches!(self, Case::Busy | Case::TlsBusy | Case::JobsBusy)
    }

    fn tls(self) -> bool {
        matches!(self, Case::TlsIdle | Case::TlsBusy)
    }

    /// Job rules rather than rules.
    fn jobs(self) -> bool {
        matches!(self, Case::JobsIdle | Case::JobsBusy)
    }

    /// The case of the same kind (rules or job rules) over the same transport with
    /// empty queues.
    fn idle(self) -> Case {
        if self.jobs() {
            Case::JobsIdle
        } else if self.tls() {
            Case::TlsIdle
        } else {
            Case::Idle
        }
    }

    /// The case of the same kind over the same transport with busy queues.
    fn busy_twin(self) -> Case {
        if self.jobs() {
            Case::JobsBusy
        } else if self.tls() {
            Case::TlsBusy
        } else {
            Case::Busy
        }
    }

    /// How long after start-up its window starts, with `n` rules: one and a half
    /// intervals, and for busy rules the HPA's downscale window ([`BUSY_WARM_UP`]). Busy
    /// job rules keep no history, but their 2 x N creates take the write budget's time
    /// (`[kubernetes] qps`, 20 a second by default: 100 s for 1,000 job rules), with a
    /// quarter more and a minute to spare; and at least [`JOBS_BUSY_WARM_UP`], for the
    /// idle half of a pair to start and warm up.
    fn warm_up(self, n: usize) -> Duration {
        let base = INTERVAL + INTERVAL / 2;
        match self {
            Case::Busy | Case::TlsBusy => base + BUSY_WARM_UP,
            Case::JobsBusy => {
                let creates = (self.jobs_needed() * n as u64) as f64 / DEFAULT_QPS * 1.25;
                base + JOBS_BUSY_WARM_UP.max(Duration::from_secs(60) + Duration::from_secs_f64(creates))
            }
            _ => base,
        }
    }

    /// The replicas each target runs from the start (rules only).
    fn replicas(self) -> u32 {
        if self.busy() && !self.jobs() { BUSY_REPLICAS } else { 0 }
    }

    /// The messages each queue holds from the start.
    fn backlog(self) -> u64 {
        match self {
            Case::Busy | Case::TlsBusy => BUSY_BACKLOG,
            Case::JobsBusy => JOBS_BACKLOG,
            _ => 0,
        }
    }

    /// The Jobs each job rule should create: what its backlog asks for.
    fn jobs_needed(self) -> u64 {
        if self == Case::JobsBusy { JOBS_BACKLOG.div_ceil(JOBS_QUEUE_LENGTH).min(JOBS_MAX.into()) } else { 0 }
    }
}

/// Job rules spread over this many namespaces (`jobs-0` ...), round robin: the Kubernetes
/// adapter keeps one Jobs watch and one pods watch per namespace, shared by its job rules.
const JOB_NAMESPACES: usize = 10;
/// A busy job rule's queue: 2 messages at 1 message per Job, at most 2 Jobs.
const JOBS_BACKLOG: u64 = 2;
const JOBS_QUEUE_LENGTH: u64 = 1;
const JOBS_MAX: u32 = 2;
/// See [`Case::warm_up`]: past [`PAIR_STAGGER`] plus the idle half's start-up and its own
/// one and a half intervals, with room for a 10,000-rule start-up.
const JOBS_BUSY_WARM_UP: Duration = Duration::from_secs(90);
/// The daemon's default `[kubernetes] qps`, which Job creates also spend.
const DEFAULT_QPS: f64 = 20.0;

/// A busy queue's backlog and its targets' replicas: 10 messages at `queue_length = 5`
/// ask for exactly 2 (the HPA's ratio is 1.0), so nothing scales after start-up.
const BUSY_BACKLOG: u64 = 10;
const BUSY_REPLICAS: u32 = 2;
/// A busy rule stores its last-active every max(60 s, cooldown / 4) = 75 s, i.e. on
/// every 8th poll: a busy window is at least those 80 s, so that it holds exactly one
/// refresh of every rule and its writes per minute are the long-run rate.
const BUSY_WINDOW: Duration = Duration::from_secs(80);
/// A busy rule's HPA keeps one recommendation per poll for its downscale window (the
/// default 300 s, as the bench's rules have it), and only then holds still: a busy case
/// warms up that long plus one and a half intervals, so its window shows the memory it
/// keeps for good, not a history still growing.
const BUSY_WARM_UP: Duration = Duration::from_secs(300);

/// The CPU of a window is also read per slice this long (one polling interval: every
/// rule polls once in each).
const SLICE: Duration = INTERVAL;
/// A busy case and the idle case over the same transport run as a pair, their windows
/// on the same seconds of the same host: CPU time per unit of work moves by tens of
/// percent over minutes on a shared machine (10 s slices of one steady 10,000-rule
/// daemon ran from 3.7 % to 8.4 % of a core), so windows minutes apart compare the host
/// as much as the daemon. The idle daemon starts this long after the busy one's first
/// round, so their start-ups do not overlap and their ages in the window are close.
const PAIR_STAGGER: Duration = Duration::from_secs(60);

/// Below this many CPU seconds in a window (a tenth of it in a slice) busy and idle are
/// not compared: the kernel counts CPU in 10 ms ticks.
const MIN_CPU_TO_COMPARE: f64 = 0.5;

/// When a case's measured window starts.
enum Schedule {
    /// On its own: after the warm-up.
    Alone,
    /// The busy half of a pair: after the warm-up, telling the idle half when.
    Leads(tokio::sync::oneshot::Sender<Instant>),
    /// The idle half of a pair: its daemon starts [`PAIR_STAGGER`] after the busy one's
    /// first round and is measured over the busy one's window.
    Follows(tokio::sync::oneshot::Receiver<Instant>),
}

/// One size's results.
#[derive(Default)]
struct Row {
    rules: usize,
    case: Case,
    /// Kubernetes requests per rule per minute in the window: reads (GET, LIST, WATCH)
    /// and writes (PATCH, POST, PUT), and the last-active times the writes carried.
    kube_reads_per_rule_min: f64,
    kube_writes_per_rule_min: f64,
    state_keys_per_rule_min: f64,
    /// Replica changes seen in the window (a steady case has none).
    changes_in_window: usize,
    /// CPU of the load driver's SQS endpoint thread in the window, % of one core.
    sqs_cpu_pct: f64,
    startup_ms: f64,
    first_round_ms: f64,
    ready1_ms: f64,
    rss_kib: u64,
    /// The smallest and largest RSS of the window's once-a-second samples.
    rss_range_kib: (u64, u64),
    /// CPU seconds in each [`SLICE`] of the window.
    cpu_slices: Vec<f64>,
    /// Measured over the same seconds as the other half of its pair.
    paired: bool,
    hwm_kib: u64,
    cpu_s_per_min: f64,
    late_p50: f64,
    late_p99: f64,
    late_max: f64,
    sqs_per_round: f64,
    kube_per_round: f64,
    patch_p50: f64,
    patch_p99: f64,
    patch_n: usize,
    reload_ms: f64,
    problems_in_window: u64,
    /// Job cases: the Jobs created against those needed.
    jobs: Option<JobTally>,
    details: String,
}

/// The Jobs of a job case, as the fake API server recorded their creates.
#[derive(Clone, Copy, Debug, Default)]
struct JobTally {
    /// What the backlogs ask for: [`Case::jobs_needed`] per job rule.
    needed: u64,
    /// Created by the end of the window, all told.
    created: u64,
    /// Created within the window (steady state: none).
    in_window: u64,
    /// Created from the reload's SIGHUP until each restarted job rule has polled again.
    after_reload: u64,
    /// Created over the whole run, up to the drain.
    total: u64,
    /// The most Jobs any one job rule holds at the end, and how many job rules hold more
    /// than they need.
    most_per_rule: u64,
    rules_over: u64,
}

impl JobTally {
    /// Jobs created beyond those needed (duplicates), or short of them.
    fn excess(&self) -> i64 {
        self.total as i64 - self.needed as i64
    }
}

/// Per job rule (its `sqscale.io/job` label), the Jobs the fake holds in `jobs-0` ...
fn jobs_per_rule(fake: &FakeKube) -> HashMap<String, u64> {
    let mut per_rule: HashMap<String, u64> = HashMap::new();
    for ns in 0..JOB_NAMESPACES {
        for job in fake.jobs(&job_namespace(ns)) {
            let rule = job["metadata"]["labels"]["sqscale.io/job"].as_str().unwrap_or("?").to_owned();
            *per_rule.entry(rule).or_default() += 1;
        }
    }
    per_rule
}

/// When each Job was created, in every job namespace.
fn job_creations(fake: &FakeKube) -> Vec<Instant> {
    (0..JOB_NAMESPACES)
        .flat_map(|ns| fake.job_creations(&job_namespace(ns)))
        .map(|(_, at)| Instant::from_std(at))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn run_size(bin: &str, n: usize, window: Duration, case: Case, schedule: Schedule) -> Row {
    let mut row = Row { rules: n, case, ..Row::default() };
    let mut details = String::new();
    // The window of a pair: the busy half sends its start when its first round is done.
    let (lead, follow) = match schedule {
        Schedule::Alone => (None, None),
        Schedule::Leads(tx) => (Some(tx), None),
        Schedule::Follows(rx) => {
            let pair_at = rx.await.expect("the busy half of the pair reached its warm-up");
            tokio::time::sleep(PAIR_STAGGER).await;
            (None, Some(pair_at))
        }
    };
    row.paired = lead.is_some() || follow.is_some();
    let dir = tempfile::tempdir().unwrap();
    let (sqs, sqs_server) = start_sqs(n, case.tls());
    if case.backlog() > 0 {
        for i in 0..n {
            sqs.set_backlog(i, case.backlog());
        }
    }

    let fake = Arc::new(FakeKube::start().await);
    let made = Instant::now();
    // Job rules target no Deployment; their Jobs are the daemon's to create.
    let targets = if case.jobs() { 0 } else { n };
    for i in 0..targets {
        fake.add_deployment(NS, &format!("d-{i}"), case.replicas());
    }
    fake.add_deployment(NS, PROBE, 0);
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig);
    let _ = writeln!(details, "fake API server: {targets} Deployments created in {}", fmt_ms(ms(made.elapsed())));

    let meter = Arc::new(KubeMeter { fake: fake.clone(), counts: Mutex::default() });
    let draining = {
        let meter = meter.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                meter.drain();
            }
        })
    };
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rv = fake.resource_version(Kind::Deployment, NS, PROBE).unwrap();
    let watcher = tokio::spawn(watch_replicas(kubeconfig.clone(), rv, seen.clone()));
    let quiet = calibrate_watch(&fake, &seen, 10).await;

    let listen: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = dir.path().join("sqscale.toml");
    std::fs::write(dir.path().join(JOB_TEMPLATE), JOB_TEMPLATE_TEXT).unwrap();
    let max = if case.jobs() { JOBS_MAX } else { MAX_REPLICAS };
    std::fs::write(&config, rule_file(case, n, &sqs, listen, &kubeconfig, max)).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notes = listen_notify(&notify_path);
    let log = dir.path().join("sqscale.log");
    // Empty AWS config and credentials files: only the environment's test keys count.
    let aws_files = dir.path().join("aws-empty");
    std::fs::write(&aws_files, "").unwrap();
    // Over TLS the daemon trusts the endpoint's certificate through SSL_CERT_FILE (read
    // by rustls-native-certs), and nothing else.
    let ca_file = dir.path().join("sqs-ca.pem");
    if let Some(pem) = &sqs_server.ca_pem {
        std::fs::write(&ca_file, pem).unwrap();
    }

    // --- start-up ---
    let spawned = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--log-format", "json"])
        .env("SQSCALE_LOG", std::env::var("SQSCALE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned()))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", &aws_files)
        .env("AWS_SHARED_CREDENTIALS_FILE", &aws_files)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("SSL_CERT_FILE", if case.tls() { ca_file.as_os_str() } else { std::ffi::OsStr::new("/dev/null") })
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let pid = child.id().expect("pid") as i32;
    let ready_limit = Duration::from_secs(120).max(Duration::from_millis(30 * n as u64));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            panic!("sqscale exited during start-up ({status}); last log lines:\n{}", tail.join("\n"));
        }
        if http_status(listen, "/readyz").await == Some(200) {
            row.startup_ms = ms(spawned.elapsed());
            break;
        }
        if spawned.elapsed() > ready_limit {
            row.startup_ms = f64::INFINITY;
            let _ = writeln!(details, "NOT READY within {} s; measuring anyway", ready_limit.as_secs());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // READY=1 follows the first round within the daemon's 100 ms check.
    for _ in 0..100 {
        if note_after(&notes, spawned, "READY=1").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row.ready1_ms = note_after(&notes, spawned, "READY=1").map_or(f64::NAN, |at| ms(at - spawned));
    let ready_status = notes
        .lock()
        .unwrap()
        .iter()
        .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .and_then(|(_, m)| m.lines().find_map(|l| l.strip_prefix("STATUS=")).map(str::to_owned))
        .unwrap_or_default();
    // The truth, seen from outside: when has every rule made its first SQS call?
    let round_limit = Instant::now() + ready_limit;
    let first_round = loop {
        let last =
            (0..n).map(|i| sqs.polls(i).first().map(|p| p.arrived)).try_fold(spawned, |acc, t| t.map(|t| acc.max(t)));
        if let Some(t) = last {
            break Some(t);
        }
        if Instant::now() > round_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    row.first_round_ms = first_round.map_or(f64::INFINITY, |t| ms(t - spawned));
    let after_start = sample(pid);
    let _ = writeln!(
        details,
        "start-up: every rule's first SQS call by {}; /readyz 200 after {}, READY=1 after {} (STATUS={ready_status:?}); \
         at that point: RSS {}, peak {}, {} threads, {} fds",
        fmt_ms(row.first_round_ms),
        fmt_ms(row.startup_ms),
        fmt_ms(row.ready1_ms),
        mib(after_start.rss_kib),
        mib(after_start.hwm_kib),
        after_start.threads,
        after_start.fds
    );

    // --- warm-up, then the idle window ---
    let warm = Instant::now();
    let warmed = warm + case.warm_up(n);
    if let Some(tx) = lead {
        let _ = tx.send(warmed);
    }
    match follow {
        // The idle half still warms up at least as long as it would alone.
        Some(pair_at) if pair_at >= warmed => tokio::time::sleep_until(pair_at).await,
        Some(_) => {
            let _ = writeln!(details, "NOT PAIRED: start-up ended too late for the busy half's window");
            row.paired = false;
            tokio::time::sleep_until(warmed).await;
        }
        None => tokio::time::sleep_until(warmed).await,
    }
    let me = std::process::id() as i32;
    let (w0, d0, h0, k0, log0) = (Instant::now(), sample(pid), sample(me), meter.drain(), file_len(&log));
    let s0 = sqs_server.cpu_seconds();
    let samples = watch_window(pid, if case.busy() || row.paired { window.max(BUSY_WINDOW) } else { window }).await;
    let rss = samples.iter().fold((u64::MAX, 0), |(low, high), s| (low.min(s.rss_kib), high.max(s.rss_kib)));
    row.cpu_slices = cpu_slices(&samples);
    let (w1, d1, h1, k1, log1) = (Instant::now(), sample(pid), sample(me), meter.drain(), file_len(&log));
    let s1 = sqs_server.cpu_seconds();
    let minutes = (w1 - w0).as_secs_f64() / 60.0;
    let rounds = (w1 - w0).as_secs_f64() / INTERVAL.as_secs_f64();
    row.rss_kib = d1.rss_kib;
    row.rss_range_kib = rss;
    row.hwm_kib = d1.hwm_kib;
    row.cpu_s_per_min = cpu_seconds(&d0, &d1) / minutes;
    let late = lateness(&sqs, warm, w0, w1);
    row.late_p50 = quantile(&late.late_ms, 0.5);
    row.late_p99 = quantile(&late.late_ms, 0.99);
    row.late_max = quantile(&late.late_ms, 1.0);
    let sqs_calls = sqs.calls_between(w0, w1);
    row.sqs_per_round = sqs_calls as f64 / rounds;
    let kube = k1.minus(&k0);
    row.kube_per_round = kube.total() as f64 / rounds;
    let per_rule_min = |v: u64| v as f64 / n as f64 / minutes;
    row.kube_reads_per_rule_min = per_rule_min(kube.reads());
    row.kube_writes_per_rule_min = per_rule_min(kube.writes());
    row.state_keys_per_rule_min = per_rule_min(kube.state_keys);
    row.changes_in_window = seen.lock().unwrap().iter().filter(|s| s.at >= w0 && s.at < w1 && s.name != PROBE).count();
    row.sqs_cpu_pct = (s1 - s0) / (w1 - w0).as_secs_f64() * 100.0;
    let problems = log_problems(&log, log0, Some(log1));
    row.problems_in_window = problems.values().sum();
    let _ = writeln!(
        details,
        "window {:.1} s ({rounds:.1} rounds): RSS {} -> {} (each second: {} to {}), peak {}; {} threads, {} fds; \
         CPU {:.2} s ({:.2} s/min, {:.1}% of one core); this process (SQS + fake API server + watch): {:.2} s/min",
        (w1 - w0).as_secs_f64(),
        mib(d0.rss_kib),
        mib(d1.rss_kib),
        mib(rss.0),
        mib(rss.1),
        mib(d1.hwm_kib),
        d1.threads,
        d1.fds,
        cpu_seconds(&d0, &d1),
        row.cpu_s_per_min,
        row.cpu_s_per_min / 60.0 * 100.0,
        cpu_seconds(&h0, &h1) / minutes
    );
    let _ = writeln!(
        details,
        "load average at the end of the window (every process on the host): {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        details,
        "lateness over {} polls: p50 {}, p90 {}, p99 {}, max {}; gap between polls minus 10 s: p50 {}, p99 {}; \
         rounds with no poll: {}; most SQS arrivals in 100 ms: {}",
        late.late_ms.len(),
        fmt_ms(row.late_p50),
        fmt_ms(quantile(&late.late_ms, 0.9)),
        fmt_ms(row.late_p99),
        fmt_ms(row.late_max),
        fmt_ms(quantile(&late.gap_excess_ms, 0.5)),
        fmt_ms(quantile(&late.gap_excess_ms, 0.99)),
        late.missed,
        late.peak_per_100ms
    );
    let _ = writeln!(
        details,
        "calls per round: SQS {:.1} ({:.3} per rule; {} connections accepted so far, {} other requests), \
         Kubernetes {:.1} ({:.3} per rule: {}; {} answered with an error)",
        row.sqs_per_round,
        row.sqs_per_round / n as f64,
        sqs.connections.load(Ordering::Relaxed),
        sqs.other.load(Ordering::Relaxed),
        row.kube_per_round,
        row.kube_per_round / n as f64,
        kube.describe(rounds),
        kube.failed
    );
    let _ = writeln!(
        details,
        "per rule per minute: Kubernetes reads {:.3}, writes {:.4} (last-active times carried {:.3}); \
         replica changes in the window {}; the SQS endpoint's own thread: {:.1}% of one core ({} answering over {})",
        row.kube_reads_per_rule_min,
        row.kube_writes_per_rule_min,
        row.state_keys_per_rule_min,
        row.changes_in_window,
        row.sqs_cpu_pct,
        n,
        if case.tls() { "HTTPS" } else { "HTTP" },
    );
    if !problems.is_empty() {
        let _ = writeln!(details, "daemon warnings/errors in the window: {problems:?}");
    }
    if case.jobs() {
        // No Deployment to patch: the backlog phase is the rule cases'.
        (row.patch_p50, row.patch_p99) = (f64::NAN, f64::NAN);
        let run = JobsRun {
            child,
            spawned,
            sqs_server,
            sqs,
            fake,
            meter,
            watcher,
            draining,
            dir,
            log,
            config,
            listen,
            kubeconfig,
            notes,
        };
        return run_jobs_tail(row, details, (w0, w1), run).await;
    }
    if case != Case::Idle {
        (row.patch_p50, row.patch_p99, row.reload_ms) = (f64::NAN, f64::NAN, f64::NAN);
        // The steady cases end here: the backlog phase and the reload are the idle
        // case's (the figures PERFORMANCE.md has had from the start).
        return finish(row, details, child, sqs_server, fake, watcher, draining, dir, &log).await;
    }

    // --- backlog on a few dozen queues: observation -> patch ---
    let active: Vec<usize> = (0..ACTIVE_QUEUES.min(n)).map(|j| j * n / ACTIVE_QUEUES.min(n)).collect();
    let a0 = Instant::now();
    let ka = meter.drain();
    for &i in &active {
        sqs.set_backlog(i, 1000);
    }
    tokio::time::sleep(ACTIVE_PHASE / 2).await;
    let loaded = calibrate_watch(&fake, &seen, 10).await;
    tokio::time::sleep(ACTIVE_PHASE.saturating_sub(a0.elapsed())).await;
    let a1 = Instant::now();
    let kb = meter.drain().minus(&ka);
    let mut latencies = Vec::new();
    let mut steps: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for s in seen.lock().unwrap().iter().filter(|s| s.at >= a0 && s.at < a1) {
        let Some(i) = s.name.strip_prefix("d-").and_then(|x| x.parse::<usize>().ok()) else { continue };
        steps.entry(s.name.clone()).or_default().push(s.replicas);
        let polls = sqs.polls(i);
        if let Some(p) = polls.iter().rev().find(|p| p.answered <= s.at)
            && p.backlog > 0
            && s.at - p.answered < INTERVAL
        {
            latencies.push(ms(s.at - p.answered));
        }
    }
    // From the first SQS answer that showed the backlog to the target at its maximum.
    let mut full: Vec<f64> = Vec::new();
    for &i in &active {
        let name = format!("d-{i}");
        let observed = sqs.polls(i).iter().find(|p| p.backlog > 0).map(|p| p.answered);
        let at_max = seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && s.replicas == MAX_REPLICAS as i32 && s.at >= a0)
            .map(|s| s.at);
        if let (Some(o), Some(m)) = (observed, at_max) {
            full.push(ms(m - o));
        }
    }
    row.patch_p50 = quantile(&latencies, 0.5);
    row.patch_p99 = quantile(&latencies, 0.99);
    row.patch_n = latencies.len();
    let scaled = steps.len();
    let example = steps.iter().next().map(|(k, v)| format!("{k}: 0 -> {v:?}")).unwrap_or_default();
    let _ = writeln!(
        details,
        "backlog phase ({} queues at 1000 messages, {:.0} s): {} replica changes on {scaled} targets (e.g. {example}); \
         SQS answer -> change at the API server: p50 {}, p99 {}, max {}; first backlog seen -> at {MAX_REPLICAS} replicas: \
         p50 {}, max {} ({} targets); Kubernetes calls {:.1} per round ({})",
        active.len(),
        (a1 - a0).as_secs_f64(),
        latencies.len(),
        fmt_ms(row.patch_p50),
        fmt_ms(row.patch_p99),
        fmt_ms(quantile(&latencies, 1.0)),
        fmt_ms(quantile(&full, 0.5)),
        fmt_ms(quantile(&full, 1.0)),
        full.len(),
        kb.total() as f64 / ((a1 - a0).as_secs_f64() / 10.0),
        kb.describe((a1 - a0).as_secs_f64() / 10.0)
    );
    let _ = writeln!(
        details,
        "watch delivery (write at the fake -> event here), included in the figure above: quiet p50 {} max {}; \
         under load p50 {} max {}",
        fmt_ms(quantile(&quiet, 0.5)),
        fmt_ms(quantile(&quiet, 1.0)),
        fmt_ms(quantile(&loaded, 0.5)),
        fmt_ms(quantile(&loaded, 1.0))
    );

    // --- reload every rule (max_replica_count changed) ---
    std::fs::write(&config, rule_file(case, n, &sqs, listen, &kubeconfig, MAX_REPLICAS + 10)).unwrap();
    reload(&mut row, &mut details, &sqs, n, child.id().unwrap(), &notes).await;

    finish(row, details, child, sqs_server, fake, watcher, draining, dir, &log).await
}

/// What a job case holds on to after its window.
struct JobsRun {
    child: tokio::process::Child,
    spawned: Instant,
    sqs_server: SqsServer,
    sqs: Arc<Sqs>,
    fake: Arc<FakeKube>,
    meter: Arc<KubeMeter>,
    watcher: tokio::task::JoinHandle<()>,
    draining: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    log: PathBuf,
    config: PathBuf,
    listen: SocketAddr,
    kubeconfig: PathBuf,
    notes: Notes,
}

/// A job case after its window `(w0, w1)`, in place of the rule cases' backlog phase
/// (there is no Deployment to patch): the Jobs created against those the backlogs ask
/// for, then the reload of every job rule (`max_replica_count` raised by one; the
/// template unchanged, so no rollout, and the backlog still asks for as many Jobs): the
/// restarted job rules must find their Jobs in the caches, create none and read nothing.
/// Then the drain.
async fn run_jobs_tail(mut row: Row, mut details: String, (w0, w1): (Instant, Instant), run: JobsRun) -> Row {
    let JobsRun {
        child,
        spawned,
        sqs_server,
        sqs,
        fake,
        meter,
        watcher,
        draining,
        dir,
        log,
        config,
        listen,
        kubeconfig,
        notes,
    } = run;
    let (n, case) = (row.rules, row.case);
    let created = job_creations(&fake);
    let mut tally = JobTally {
        needed: case.jobs_needed() * n as u64,
        created: created.iter().filter(|t| **t < w1).count() as u64,
        in_window: created.iter().filter(|t| **t >= w0 && **t < w1).count() as u64,
        ..JobTally::default()
    };
    let last = created.iter().filter(|t| **t < w1).max().map_or(f64::NAN, |t| ms(*t - spawned));
    let first = created.iter().min().map_or(f64::NAN, |t| ms(*t - spawned));
    let _ = writeln!(
        details,
        "Jobs: {} created by the end of the window for {} needed ({} per job rule; excess {:+}), {} of them in the \
         window; first created {} after spawn, last {}",
        tally.created,
        tally.needed,
        case.jobs_needed(),
        tally.created as i64 - tally.needed as i64,
        tally.in_window,
        fmt_ms(first),
        fmt_ms(last)
    );

    // --- reload every job rule (max_replica_count changed) ---
    std::fs::write(&config, rule_file(case, n, &sqs, listen, &kubeconfig, JOBS_MAX + 1)).unwrap();
    let k0 = meter.drain();
    let hup = reload(&mut row, &mut details, &sqs, n, child.id().unwrap(), &notes).await;
    let (k1, at) = (meter.drain(), Instant::now());
    let kube = k1.minus(&k0);
    let created = job_creations(&fake);
    tally.after_reload = created.iter().filter(|t| **t >= hup).count() as u64;
    tally.total = created.len() as u64;
    let per_rule = jobs_per_rule(&fake);
    tally.most_per_rule = per_rule.values().copied().max().unwrap_or(0);
    tally.rules_over = per_rule.values().filter(|c| **c > case.jobs_needed()).count() as u64;
    let _ = writeln!(
        details,
        "after the reload ({:.1} s from SIGHUP): {} Jobs created; Kubernetes calls {} ({} reads); \
         the most Jobs held by one job rule {}, job rules holding more than {}: {}; excess over the whole run {:+}",
        (at - hup).as_secs_f64(),
        tally.after_reload,
        kube.describe(1.0),
        kube.reads(),
        tally.most_per_rule,
        case.jobs_needed(),
        tally.rules_over,
        tally.excess()
    );
    row.jobs = Some(tally);
    drop(sqs);
    finish(row, details, child, sqs_server, fake, watcher, draining, dir, &log).await
}

/// SIGHUP with a rule file in which every rule changed (written by the caller): the
/// time from RELOADING=1 to READY=1 on NOTIFY_SOCKET, and when each restarted rule (or
/// job rule) polls again. Returns when the SIGHUP was sent.
async fn reload(row: &mut Row, details: &mut String, sqs: &Sqs, n: usize, pid: u32, notes: &Notes) -> Instant {
    let jobs = row.case.jobs();
    // A restarted rule whose queue was read less than 0.5 s before (the daemon's share
    // window) reuses that read and calls SQS only a round later. Rules polling in step
    // (few rules) would all do so if the SIGHUP followed their round, so wait for a
    // quiet second first (at most 2 s: spread rules are never quiet, and ~5% of them
    // show a full interval as their next call).
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < Duration::from_secs(2) {
        let last = (0..n).filter_map(|i| sqs.polls(i).last().map(|p| p.arrived)).max();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hup = Instant::now();
    signal(pid, "-HUP");
    let deadline = hup + Duration::from_secs(120);
    let mut reloading = None;
    let mut ready = None;
    while Instant::now() < deadline && ready.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        reloading = reloading.or_else(|| note_after(&notes, hup, "RELOADING=1"));
        if let Some(r) = reloading {
            ready = note_after(&notes, r, "READY=1");
        }
    }
    match (reloading, ready) {
        (Some(r), Some(d)) => {
            row.reload_ms = ms(d - r);
            // Every changed rule restarts: when has each polled again?
            tokio::time::sleep(INTERVAL + INTERVAL / 2).await;
            // From the SIGHUP: a restarted rule may poll before READY=1 goes out, or even
            // before this process has read RELOADING=1. (An old rule's last poll can land
            // before the restart; that only lowers the p50, never the max.)
            let again: Vec<f64> = (0..n)
                .filter_map(|i| sqs.polls(i).iter().find(|p| p.arrived >= hup).map(|p| ms(p.arrived - hup)))
                .collect();
            let _ = writeln!(
                details,
                "reload of {n} changed {}: SIGHUP -> RELOADING=1 {}, RELOADING=1 -> READY=1 {}; \
                 SIGHUP -> each rule's next SQS call: p50 {}, p90 {}, max {} ({} of {n} within 15 s)",
                if jobs { "job rules" } else { "rules" },
                fmt_ms(ms(r - hup)),
                fmt_ms(row.reload_ms),
                fmt_ms(quantile(&again, 0.5)),
                fmt_ms(quantile(&again, 0.9)),
                fmt_ms(quantile(&again, 1.0)),
                again.len()
            );
        }
        _ => {
            row.reload_ms = f64::NAN;
            let _ = writeln!(details, "reload: no RELOADING=1 -> READY=1 within 120 s");
        }
    }

    hup
}

/// SIGTERM and the drain, then the servers stop.
#[allow(clippy::too_many_arguments)]
async fn finish(
    mut row: Row,
    mut details: String,
    mut child: tokio::process::Child,
    sqs_server: SqsServer,
    fake: Arc<FakeKube>,
    watcher: tokio::task::JoinHandle<()>,
    draining: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    log: &Path,
) -> Row {
    let pid = child.id().expect("pid") as i32;
    // --- drain on SIGTERM ---
    let after = sample(pid);
    let term = Instant::now();
    signal(child.id().unwrap(), "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = writeln!(
        details,
        "SIGTERM -> exit: {} ({}); peak RSS over the whole run {}",
        fmt_ms(ms(term.elapsed())),
        match exit {
            Ok(Ok(s)) => s.to_string(),
            _ => "still running after 60 s; killed".to_owned(),
        },
        mib(after.hwm_kib)
    );
    let problems = log_problems(log, 0, None);
    if !problems.is_empty() {
        let _ = writeln!(details, "daemon warnings/errors over the whole run: {problems:?}");
    }

    watcher.abort();
    draining.abort();
    drop(sqs_server);
    fake.shutdown();
    if std::env::var_os("SQSCALE_BENCH_KEEP").is_some() {
        let _ = writeln!(details, "kept: rule file and daemon log in {}", dir.keep().display());
    }
    row.details = details;
    row
}

fn host() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({model}), {:.0} GiB RAM, Linux {}", mem as f64 / 1048576.0, kernel.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with scripts/bench"]
async fn daemon_under_load() {
    let bin = std::env::var("SQSCALE_BIN").unwrap_or_default();
    assert!(
        !bin.is_empty() && Path::new(&bin).is_file(),
        "SQSCALE_BIN must name the release binary (got {bin:?}): run scripts/bench, or \
         `cargo build --release --locked --bin sqscale` and set SQSCALE_BIN=$CARGO_TARGET_DIR/release/sqscale"
    );
    let sizes: Vec<usize> = std::env::var("SQSCALE_BENCH_RULES")
        .unwrap_or_else(|_| "10,1000,10000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().expect("SQSCALE_BENCH_RULES: comma-separated rule counts"))
        .collect();
    let seconds: u64 = std::env::var("SQSCALE_BENCH_SECONDS")
        .map_or(60, |s| s.trim().parse().expect("SQSCALE_BENCH_SECONDS: whole seconds"));
    let window = Duration::from_secs(seconds);
    let cases: Vec<Case> = std::env::var("SQSCALE_BENCH_CASES").map_or_else(
        |_| Case::DEFAULT.to_vec(),
        |v| {
            v.split(',')
                .map(|c| {
                    let c = c.trim();
                    *Case::ALL.iter().find(|k| k.name() == c).unwrap_or_else(|| {
                        let all: Vec<&str> = Case::ALL.iter().map(|k| k.name()).collect();
                        panic!("SQSCALE_BENCH_CASES: {c:?} is not one of {}", all.join(", "))
                    })
                })
                .collect()
        },
    );
    let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("").split_whitespace().nth(3);

    println!("host: {}", host());
    println!("binary: {bin}, {size} bytes ({:.1} MiB)", size as f64 / 1048576.0);
    println!("open-file limit (soft) of this process and the daemon: {}", nofile.unwrap_or("?"));
    let names: Vec<&str> = cases.iter().map(|c| c.name()).collect();
    println!("sizes: {sizes:?}; cases: {names:?}; measured window {seconds} s per case; polling_interval 10 s\n");

    let mut rows = Vec::new();
    for &n in &sizes {
        for &case in &cases {
            if !case.busy() && cases.contains(&case.busy_twin()) {
                continue; // runs with its busy twin, below
            }
            if case.busy() && cases.contains(&case.idle()) {
                println!(
                    "=== {n} rules, {} and {} as a pair (the idle daemon starts {} s after the busy one's first round; \
                     one window, the same seconds) ===",
                    case.name(),
                    case.idle().name(),
                    PAIR_STAGGER.as_secs()
                );
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (busy, idle) = tokio::join!(
                    run_size(&bin, n, window, case, Schedule::Leads(tx)),
                    run_size(&bin, n, window, case.idle(), Schedule::Follows(rx)),
                );
                for row in [idle, busy] {
                    println!("--- {} ---", row.case.name());
                    print!("{}", row.details);
                    rows.push(row);
                }
                println!();
                continue;
            }
            println!("=== {n} rules, {} ===", case.name());
            let row = run_size(&bin, n, window, case, Schedule::Alone).await;
            print!("{}", row.details);
            println!();
            rows.push(row);
        }
    }

    println!(
        "| rules | case | start-up: every rule polled (/readyz 200) | RSS after warm-up | peak RSS (VmHWM) | CPU s/min (% of a core) | poll lateness p50 / p99 (max) | SQS calls / round | Kubernetes calls / round | Kubernetes reads / writes per rule per minute | replica changes in window | SQS endpoint CPU | SQS answer -> patch p50 / p99 (n) | reload (RELOADING -> READY) | warnings in window | Jobs created / needed (in window; after reload) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} ({}) | {} | {} | {:.2} ({:.1}%) | {} / {} ({}) | {:.0} | {:.0} | {:.3} / {:.4} | {} | {:.1}% | {} / {} ({}) | {} | {} | {} |",
            r.rules,
            r.case.name(),
            fmt_ms(r.first_round_ms),
            fmt_ms(r.startup_ms),
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.cpu_s_per_min,
            r.cpu_s_per_min / 60.0 * 100.0,
            fmt_ms(r.late_p50),
            fmt_ms(r.late_p99),
            fmt_ms(r.late_max),
            r.sqs_per_round,
            r.kube_per_round,
            r.kube_reads_per_rule_min,
            r.kube_writes_per_rule_min,
            r.changes_in_window,
            r.sqs_cpu_pct,
            fmt_ms(r.patch_p50),
            fmt_ms(r.patch_p99),
            r.patch_n,
            fmt_ms(r.reload_ms),
            r.problems_in_window,
            r.jobs.map_or_else(
                || "-".to_owned(),
                |j| format!("{} / {} ({}; {})", j.created, j.needed, j.in_window, j.after_reload)
            )
        );
    }
    // Job rules against rules at the same N, same queues (empty, or busy). Not the same
    // seconds: the host's drift is in the CPU ratio.
    for jobs in rows.iter().filter(|r| r.case.jobs()) {
        let twin = if jobs.case.busy() { Case::Busy } else { Case::Idle };
        if let Some(rules) = rows.iter().find(|r| r.rules == jobs.rules && r.case == twin) {
            println!(
                "\n{} job rules ({}) against {} rules ({}): RSS {:+.1} MiB ({:+.2} KiB per job rule), peak {:+.1} MiB; \
                 CPU x{:.2} (different windows); Kubernetes reads {:.3} against {:.3} and writes {:.4} against {:.4} \
                 per rule per minute",
                jobs.rules,
                jobs.case.name(),
                rules.rules,
                rules.case.name(),
                (jobs.rss_kib as f64 - rules.rss_kib as f64) / 1024.0,
                (jobs.rss_kib as f64 - rules.rss_kib as f64) / jobs.rules as f64,
                (jobs.hwm_kib as f64 - rules.hwm_kib as f64) / 1024.0,
                jobs.cpu_s_per_min / rules.cpu_s_per_min,
                jobs.kube_reads_per_rule_min,
                rules.kube_reads_per_rule_min,
                jobs.kube_writes_per_rule_min,
                rules.kube_writes_per_rule_min
            );
        }
    }
    // Busy against idle over the same transport, in this run.
    for busy in rows.iter().filter(|r| r.case.busy()) {
        if let Some(idle) = rows.iter().find(|r| r.rules == busy.rules && r.case == busy.case.idle()) {
            // A ratio of a few clock ticks says nothing (10 rules use 0.01 s a minute);
            // slice by slice (10 s each) only when both were measured over the same seconds.
            let cpu = if idle.cpu_slices.iter().sum::<f64>() < MIN_CPU_TO_COMPARE {
                format!("too little CPU to compare (under {MIN_CPU_TO_COMPARE} s in the idle window)")
            } else if busy.paired && idle.paired {
                let r: Vec<f64> = busy
                    .cpu_slices
                    .iter()
                    .zip(&idle.cpu_slices)
                    .filter(|(_, i)| **i >= MIN_CPU_TO_COMPARE / 10.0)
                    .map(|(b, i)| b / i)
                    .collect();
                format!(
                    "CPU x{:.2} (same seconds; per {} s slice: median x{:.2}, x{:.2} to x{:.2} over {} slices)",
                    busy.cpu_s_per_min / idle.cpu_s_per_min,
                    SLICE.as_secs(),
                    quantile(&r, 0.5),
                    quantile(&r, 0.0),
                    quantile(&r, 1.0),
                    r.len()
                )
            } else {
                format!(
                    "CPU x{:.2} (windows at different times: the host's drift is in the ratio)",
                    busy.cpu_s_per_min / idle.cpu_s_per_min
                )
            };
            println!(
                "\n{} rules, {} against {}: {cpu}, RSS {:+.1} MiB at the ends of the windows, {:+.1} MiB between \
                 the largest of each second's samples; Kubernetes writes {:.4} per rule per minute, replica changes {}",
                busy.rules,
                busy.case.name(),
                idle.case.name(),
                (busy.rss_kib as f64 - idle.rss_kib as f64) / 1024.0,
                (busy.rss_range_kib.1 as f64 - idle.rss_range_kib.1 as f64) / 1024.0,
                busy.kube_writes_per_rule_min,
                busy.changes_in_window
            );
        }
    }
    let idle_rows: Vec<&Row> = rows.iter().filter(|r| r.case == Case::Idle).collect();
    if idle_rows.len() >= 2 {
        let (a, b) = (idle_rows[0], idle_rows[idle_rows.len() - 1]);
        let extra = (b.rules - a.rules) as f64;
        println!(
            "\nper extra rule, idle ({} -> {} rules): RSS {:.1} KiB, CPU {:.3} ms per minute, SQS calls {:.3} and Kubernetes calls {:.3} per round",
            a.rules,
            b.rules,
            (b.rss_kib as f64 - a.rss_kib as f64) / extra,
            (b.cpu_s_per_min - a.cpu_s_per_min) * 1000.0 / extra,
            (b.sqs_per_round - a.sqs_per_round) / extra,
            (b.kube_per_round - a.kube_per_round) / extra
        );
    }
    // A Job cannot be taken back: any Job beyond what the backlogs asked for is a
    // duplicate, and fails the run (after the figures are out).
    let excess: Vec<String> = rows
        .iter()
        .filter_map(|r| r.jobs.map(|j| (r, j)))
        .filter(|(_, j)| j.excess() != 0 || j.rules_over > 0)
        .map(|(r, j)| format!("{} {}: {:+} Jobs, {} job rules over", r.rules, r.case.name(), j.excess(), j.rules_over))
        .collect();
    assert!(excess.is_empty(), "job rules created other than the Jobs needed: {excess:?}");
}
