//! Faults, with the real adapters and the real binary: the SQS emulator killed and
//! restarted, the API server failing (500, 429, 409), slow or dropping connections, the
//! target deleted and created again, the bearer token rotated, a storm of SIGHUPs, a
//! half-written rule file, SIGKILL and restart. In every case nothing is lost (the target
//! ends at the count the queue asks for), nothing scales in wrongly (`scale_history` of
//! the fake API server only ever holds the right steps), and the failures show.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto); polls run every second.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::daemon::{Daemon, demo_rule, header, wait_until, write};
use crate::support::fake_kube::{FakeKube, Kind};
use crate::support::moto::Moto;
use crate::support::process::{free_port, signal, spawn};
use crate::support::sqs;
use sqscale::config::TargetRef;
use sqscale::engine::Time;
use sqscale::leader::Leadership;
use sqscale::status::{Observer, RuleStatus};
use sqscale::workload::kube::Kube;
use sqscale::workload::{ScaleTarget, TargetError, TargetEvent, TargetView};

const NS: &str = "default";

// === helpers ===

/// A fake API server with the Deployment `default/demo` at 0 replicas, and its kubeconfig.
async fn cluster(dir: &Path) -> (Arc<FakeKube>, PathBuf) {
    let (kube, kubeconfig) = crate::support::daemon::cluster(dir, "demo", 0).await;
    (Arc::new(kube), kubeconfig)
}

/// The in-process daemon's rule file: SQS at `endpoint`, the demo rule on `queue`.
fn rule_file(dir: &Path, endpoint: &str, queue: &str, extra: &str) -> PathBuf {
    write(dir, "sqscale.toml", &format!("{}{}", header(endpoint), demo_rule("demo", queue, extra)))
}

fn replicas(kube: &FakeKube) -> u32 {
    kube.replicas(Kind::Deployment, NS, "demo").unwrap_or(u32::MAX)
}

fn history(kube: &FakeKube) -> Vec<u32> {
    kube.scale_history(Kind::Deployment, NS, "demo")
}

fn status(d: &Daemon) -> RuleStatus {
    d.observer.statuses().into_iter().next().expect("one rule")
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition; absent is 0.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

const KUBE_ERRORS: &str = "sqscale_poll_errors_total{rule=\"demo\",source=\"kubernetes\"}";
const SQS_ERRORS: &str = "sqscale_poll_errors_total{rule=\"demo\",source=\"sqs\"}";

/// What the fake API server does to the next `/scale` patch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Answer the first `n` attempts with this status (kube itself retries 429).
    Status(u16, usize),
    /// 409 Conflict on the first `n` attempts (the adapter retries on a fresh version).
    Conflict(usize),
    /// Reset the connection without an answer.
    Drop,
    /// Answer this late.
    Slow(Duration),
    /// Another writer scales the target to this many replicas (a `kubectl scale`) after
    /// the poll read it and before its patch: the patch meets a real 409.
    Manual(u32),
    /// Another writer annotates the target `sqscale.io/paused: "true"` in the same gap.
    Pause,
}

/// The real Kubernetes adapter, with a fault armed on the fake just before each of the
/// first scale calls, so that it hits exactly the `/scale` patch whatever reads come
/// before, and cleared when the call returns. Logs each armed call's outcome.
struct Armed {
    kube: Kube,
    fake: Arc<FakeKube>,
    plan: Mutex<VecDeque<Fault>>,
    log: FaultLog,
}

/// One armed scale call: how long it took, and its error kind and message.
#[derive(Clone, Debug)]
struct Outcome {
    fault: Fault,
    took: Duration,
    result: Result<(), &'static str>,
    message: String,
}

type FaultLog = Arc<Mutex<Vec<Outcome>>>;

/// No Jobs: these faults are the `/scale` port's.
impl sqscale::workload::jobs::JobTarget for Armed {}

impl ScaleTarget for Armed {
    async fn read(&self, ctx: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        self.kube.read(ctx, t).await
    }

    async fn read_fresh(&self, ctx: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        self.kube.read_fresh(ctx, t).await
    }

    async fn scale(&self, ctx: Option<&str>, t: &TargetRef, to: u32, rv: Option<&str>) -> Result<(), TargetError> {
        let fault = self.plan.lock().unwrap().pop_front();
        match fault {
            Some(Fault::Status(code, n)) => self.fake.fail_next(n, code),
            Some(Fault::Conflict(n)) => self.fake.conflict_next(n),
            Some(Fault::Drop) => self.fake.drop_next(1),
            Some(Fault::Slow(d)) => self.fake.set_latency(d),
            Some(Fault::Manual(n)) => self.fake.set_replicas(Kind::Deployment, NS, "demo", n),
            Some(Fault::Pause) => self.fake.annotate(Kind::Deployment, NS, "demo", "sqscale.io/paused", Some("true")),
            None => {}
        }
        let started = tokio::time::Instant::now();
        let result = self.kube.scale(ctx, t, to, rv).await;
        if let Some(fault) = fault {
            self.fake.clear_faults();
            self.log.lock().unwrap().push(Outcome {
                fault,
                took: started.elapsed(),
                result: result.as_ref().map(drop).map_err(|e| e.kind()),
                message: result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            });
        }
        result
    }

    async fn set_last_active(
        &self,
        ctx: Option<&str>,
        t: &TargetRef,
        at: Time,
        lead: &Leadership,
    ) -> Result<(), TargetError> {
        self.kube.set_last_active(ctx, t, at, lead).await
    }

    async fn publish(&self, ctx: Option<&str>, t: &TargetRef, event: &TargetEvent) -> Result<(), TargetError> {
        self.kube.publish(ctx, t, event).await
    }
}

/// Runs 30 messages through a rule with max 10 (0 -> 1 -> 4 -> 6) while the scale
/// patches meet `plan`, with a Kubernetes call timeout of 2 s. Returns the fake, the
/// fault log and the metrics once the target is at 6.
async fn scale_through(plan: &[Fault]) -> (Arc<FakeKube>, Vec<Outcome>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("armed").await;
    sqs::send(&queue, 30).await;
    let config = rule_file(dir.path(), &sqs::endpoint(), &queue, "max_replica_count = 10");
    let log = FaultLog::default();
    let cfg = sqscale::config::load(&config).unwrap();
    let armed = Armed {
        kube: Kube::from_config(&cfg, Some(kubeconfig), Duration::from_secs(2)),
        fake: kube.clone(),
        plan: Mutex::new(plan.iter().copied().collect()),
        log: log.clone(),
    };
    let daemon = Daemon::start_with(&config, armed);
    let done = wait_until(Duration::from_secs(18), || replicas(&kube) == 6).await;
    assert!(done, "at {} after {:?}; history {:?}", replicas(&kube), log.lock().unwrap(), history(&kube));
    // Settle: a write that timed out may still land; nothing else may follow.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics = daemon.observer.encode_metrics();
    assert_eq!(daemon.stop().await, Ok(()));
    let log = log.lock().unwrap().clone();
    (kube, log, metrics)
}

/// No wrong scale: the writes only step up through the expected counts (a write that
/// timed out and landed late may repeat a count, never go back).
fn assert_steps(kube: &FakeKube, steps: &[u32]) {
    let h = history(kube);
    let mut d = h.clone();
    d.dedup();
    assert_eq!(d, steps, "history {h:?}");
}

// === SQS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_emulator_killed_and_restarted_never_scales_in_and_scaling_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let mut moto = Moto::start().await;
    let name = format!("killed-{}", std::process::id());
    let queue = moto.create_queue(&name).await;
    sqs::send_with(&moto.client().await, &queue, 20).await;
    let config = rule_file(dir.path(), &moto.url(), &queue, "max_replica_count = 10");
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(10), || replicas(&kube) == 4).await, "at {}", replicas(&kube));

    // SIGKILL: connections refused. Well past the 3 s cooldown, nothing moves.
    moto.kill().await;
    let killed = tokio::time::Instant::now();
    let failing = wait_until(Duration::from_secs(12), || {
        status(&daemon).consecutive_failures >= 2 && killed.elapsed() >= Duration::from_secs(5)
    })
    .await;
    assert!(failing, "{:?}", status(&daemon));
    assert_eq!(history(&kube), [1, 4], "no scale-in while SQS is down");
    let down_errors = metric(&daemon.observer.encode_metrics(), SQS_ERRORS);
    assert!(down_errors >= 2.0, "failed polls are counted: {down_errors}");

    // Back on the same port, but empty: the queue does not exist. Still no scale-in.
    moto.restart().await;
    let gone = |s: &RuleStatus| s.last_error.as_deref().is_some_and(|e| e.contains("exist"));
    assert!(wait_until(Duration::from_secs(10), || gone(&status(&daemon))).await, "{:?}", status(&daemon));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(gone(&status(&daemon)), "{:?}", status(&daemon));
    assert_eq!(history(&kube), [1, 4], "no scale-in while the queue is missing");
    assert!(metric(&daemon.observer.encode_metrics(), SQS_ERRORS) >= down_errors + 2.0);

    // The queue is back with a bigger backlog: scaling resumes where it was. A poll
    // between the create and the send would rightly read an empty queue long past the
    // cooldown and scale to zero (CI saw it once), so both go in right after a poll,
    // with the 1 s polling interval to spare.
    let polls = status(&daemon).polls;
    assert!(wait_until(Duration::from_secs(3), || status(&daemon).polls > polls).await);
    assert_eq!(moto.create_queue(&name).await, queue);
    sqs::send_with(&moto.client().await, &queue, 50).await;
    assert!(wait_until(Duration::from_secs(10), || replicas(&kube) == 10).await, "at {}", replicas(&kube));
    assert_eq!(history(&kube), [1, 4, 8, 10]);
    assert_eq!(status(&daemon).consecutive_failures, 0);
    assert_eq!(daemon.stop().await, Ok(()));
}

// === the API server ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_on_the_scale_patch_lose_no_write() {
    use Fault::*;
    let plan = [Status(500, 1), Status(429, 1), Conflict(1), Conflict(1), Conflict(1), Conflict(1)];
    let (kube, log, metrics) = scale_through(&plan).await;
    let outcomes: Vec<_> = log.iter().map(|o| (o.fault, o.result)).collect();
    assert_eq!(
        outcomes,
        [
            (Status(500, 1), Err("server_error")),
            // kube honours Retry-After: the write lands in the same call, a second later.
            (Status(429, 1), Ok(())),
            // A 409 makes the poll read the target again and decide again, three times
            // at most; then the poll reports the conflict...
            (Conflict(1), Err("conflict")),
            (Conflict(1), Err("conflict")),
            (Conflict(1), Err("conflict")),
            // ...and the next poll's first decision is a conflict again, its second lands.
            (Conflict(1), Err("conflict")),
        ]
    );
    assert!(log[1].took >= Duration::from_secs(1), "Retry-After respected: {:?}", log[1]);
    assert!(log[0].message.contains("InternalError") && log[2].message.contains("Conflict"), "{log:#?}");
    assert_eq!(history(&kube), [1, 4, 6], "every write once, none lost");
    assert_eq!(metric(&metrics, KUBE_ERRORS), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "sqscale_scale_total{rule=\"demo\",direction=\"up\"}"), 3.0, "{metrics}");
    assert!(kube.events().iter().any(|e| e["reason"] == "FailedRescale" && e["type"] == "Warning"));
}

/// A `kubectl scale` lands between the poll's read and its write: the patch, carrying the
/// version the decision was made on, meets a 409, and the poll decides again on the new
/// replicas instead of sending its stale count (which would undo the manual scale). At 3
/// with a backlog asking for 6, the next step is 6 at once (the HPA's limit from 3 is 6),
/// never the activation to 1 that the stale view asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_scale_between_read_and_write_is_decided_on_again() {
    use Fault::*;
    let (kube, log, _) = scale_through(&[Manual(3)]).await;
    assert_eq!(log.iter().map(|o| o.result).collect::<Vec<_>>(), [Err("conflict")], "{log:#?}");
    assert_eq!(history(&kube), [6], "the stale activation to 1 was never written");
}

/// A pause annotation lands between the read and the write: after the 409 the fresh
/// read shows the pause, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_between_read_and_write_stops_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("paused-meanwhile").await;
    sqs::send(&queue, 30).await;
    let config = rule_file(dir.path(), &sqs::endpoint(), &queue, "");
    let cfg = sqscale::config::load(&config).unwrap();
    let log = FaultLog::default();
    let armed = Armed {
        kube: Kube::from_config(&cfg, Some(kubeconfig), Duration::from_secs(2)),
        fake: kube.clone(),
        plan: Mutex::new([Fault::Pause].into_iter().collect()),
        log: log.clone(),
    };
    let daemon = Daemon::start_with(&config, armed);
    assert!(wait_until(Duration::from_secs(5), || !log.lock().unwrap().is_empty()).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(daemon.stop().await, Ok(()));
    assert_eq!(log.lock().unwrap()[0].result, Err("conflict"));
    assert_eq!((history(&kube), replicas(&kube)), (vec![], 0), "nothing written to a paused target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_throttled_and_slow_patches_time_out_and_the_write_lands_later() {
    use Fault::*;
    let plan = [Drop, Status(429, 20), Slow(Duration::from_millis(2500))];
    let (kube, log, metrics) = scale_through(&plan).await;
    let kinds: Vec<_> = log.iter().map(|o| (o.fault, o.result.err())).collect();
    assert!(kinds.len() == 3 && kinds.iter().all(|(_, e)| e.is_some()), "{log:#?}");
    for o in &log[1..] {
        assert!(o.took < Duration::from_secs(4), "bounded by the 2 s timeout: {o:?}");
    }
    assert_steps(&kube, &[1, 4, 6]);
    assert_eq!(metric(&metrics, KUBE_ERRORS), 3.0, "{metrics}");
    // What /status and the logs say tells a reset from a call that ran out of time.
    let says = |o: &Outcome, kind, words: &[&str]| {
        o.result == Err(kind) && words.iter().any(|w| o.message.to_lowercase().contains(w))
    };
    assert!(says(&log[0], "unreachable", &["reset", "closed"]), "a reset says so: {:?}", log[0]);
    for o in &log[1..] {
        assert!(says(o, "timeout", &["timed out", "within"]), "a timeout says so: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_target_created_again_is_scaled_again() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("recreated").await;
    sqs::send(&queue, 30).await;
    let config = rule_file(dir.path(), &sqs::endpoint(), &queue, "");
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(10), || replicas(&kube) == 5).await, "at {}", replicas(&kube));

    assert!(kube.delete(Kind::Deployment, NS, "demo"));
    let missing = |s: &RuleStatus| {
        s.consecutive_failures >= 2 && s.last_error.as_deref().is_some_and(|e| e.contains("not found"))
    };
    assert!(wait_until(Duration::from_secs(10), || missing(&status(&daemon))).await, "{:?}", status(&daemon));
    assert!(metric(&daemon.observer.encode_metrics(), KUBE_ERRORS) >= 2.0);

    // Created again by name, fresh at 0 replicas and without annotations.
    kube.add_deployment(NS, "demo", 0);
    assert!(wait_until(Duration::from_secs(10), || replicas(&kube) == 5).await, "at {}", replicas(&kube));
    assert_eq!(history(&kube), [1, 4, 5, 1, 4, 5]);
    let obj = kube.object(Kind::Deployment, NS, "demo").unwrap();
    assert!(obj["metadata"]["annotations"]["sqscale.io/last-active"].is_null(), "nothing written on the target: {obj}");
    assert_eq!(status(&daemon).consecutive_failures, 0);
    assert_eq!(daemon.stop().await, Ok(()));
}

/// Target reads come from the watch, also after the watch failed once (a 500 when it
/// resumes) and for longer than the call timeout (5 s here) without a change. kube's read
/// timeout is the call timeout, so a silent watch dies after it; and a watch that resumes
/// from its resourceVersion sends no `InitDone`, which alone marks the cache ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_reads_come_from_the_watch_again_after_it_failed_and_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("idle").await;
    let config = rule_file(dir.path(), &sqs::endpoint(), &queue, "");
    let daemon = Daemon::start(&config, &kubeconfig).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // An idle poll makes no call, so the next request is the watch resuming: it fails.
    kube.fail_next(1, 500);
    kube.close_watches();
    let calls = || {
        let watched = kube.requests().iter().filter(|r| watches(r.query.as_deref())).count();
        (kube.count("GET", "/deployments/demo"), watched)
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (before, polls) = (calls(), status(&daemon).polls);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (after, polls) = (calls(), status(&daemon).polls - polls);
    assert_eq!(daemon.stop().await, Ok(()));
    let requests: Vec<_> = kube.requests().into_iter().map(|r| (r.method, r.path, r.query, r.status)).collect();
    assert!(
        polls >= 3 && after == before,
        "{polls} idle polls made (GETs, watches) {before:?} -> {after:?}: {requests:#?}"
    );
}

/// The bearer token is rotated on the server first: polls fail with 401 (the kubeconfig
/// read again after each 401 still has the old token) until a new kubeconfig appears at
/// the same path, which the daemon then reads without a restart. Events resume too.
async fn token_rotation(kubernetes_section: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("rotated").await;
    let text = format!("{kubernetes_section}{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, ""));
    let config = write(dir.path(), "sqscale.toml", &text);
    // A call timeout longer than the test, so no watch dies of silence on the way: only
    // the 401s themselves may make the adapter read the kubeconfig again.
    let cfg = sqscale::config::load(&config).unwrap();
    let adapter = Kube::from_config(&cfg, Some(kubeconfig.clone()), Duration::from_secs(30));
    let daemon = Daemon::start_with(&config, adapter);
    // (`Observer::readiness` is no help: it is Ok before any rule is loaded.)
    let polled = || daemon.observer.statuses().first().is_some_and(|s| s.polls >= 2);
    assert!(wait_until(Duration::from_secs(5), polled).await);
    wait_until(Duration::from_secs(2), || kube.requests().iter().any(|r| watches(r.query.as_deref()))).await;

    kube.set_token("rotated-token");
    sqs::send(&queue, 30).await;
    let rejected = |s: &RuleStatus| {
        s.consecutive_failures >= 2 && s.last_error.as_deref().is_some_and(|e| e.contains("Unauthorized"))
    };
    assert!(wait_until(Duration::from_secs(10), || rejected(&status(&daemon))).await, "{:?}", status(&daemon));
    assert!(history(&kube).is_empty(), "nothing written with a rejected token");
    let events_before = kube.events().len();

    kube.write_kubeconfig(&kubeconfig);
    assert!(
        wait_until(Duration::from_secs(10), || replicas(&kube) == 5).await,
        "at {}: {:?}",
        replicas(&kube),
        status(&daemon)
    );
    assert_eq!(history(&kube), [1, 4, 5]);
    assert_eq!(status(&daemon).consecutive_failures, 0);
    let reasons = || {
        kube.events()[events_before..].iter().map(|e| e["reason"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>()
    };
    let activated = wait_until(Duration::from_secs(3), || reasons().iter().any(|r| r == "ScaleTargetActivated")).await;
    assert!(activated, "events after the rotation: {:?}", reasons());
    assert_eq!(daemon.stop().await, Ok(()));
}

fn watches(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.contains("watch=true"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_read_from_the_new_kubeconfig_without_a_restart() {
    token_rotation("").await;
}

/// With `[kubernetes] context` set, rules without a context of their own use it, and so
/// do the Event recorder and the watch: all of them must follow the new token (a
/// recorder kept under another key once kept sending the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_read_from_the_new_kubeconfig_with_a_default_context() {
    token_rotation("[kubernetes]\ncontext = \"fake\"\n").await;
}

/// EKS tokens: EKS takes a token for 15 minutes after it was signed; this fake API server
/// takes one for 3 s and nothing else. A minter renewing every 2 s never lets a call meet
/// an expired token, over three lifetimes, in writes and in the watch. One that would
/// renew only after 10 minutes meets a 401 once per lifetime, mints again at once, and
/// the very next call goes through: never two failures in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_tokens_are_minted_again_before_they_expire_and_after_a_401() {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use sqscale::workload::eks::Minter;
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    kube.accept_eks_tokens(Duration::from_secs(3));
    kube.set_token("only-eks-tokens-now");
    let target = TargetRef { kind: sqscale::config::TargetKind::Deployment, name: "demo".into(), namespace: NS.into() };
    for refresh_after in [Duration::from_secs(2), Duration::from_secs(600)] {
        let credentials = Credentials::new("AKIDEXAMPLE", "SECRET", None, None, "test");
        let minter = Minter::new("demo-cluster", "us-east-1", SharedCredentialsProvider::new(credentials))
            .with_refresh_after(refresh_after);
        let adapter = Kube::new(Some(kubeconfig.clone()), None, Duration::from_secs(5)).with_minter(minter);
        assert!(adapter.read(None, &target).await.is_ok());
        let mut outcomes = Vec::new();
        let started = tokio::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(9) {
            n += 1;
            // Spaced wider than the refresher's minimum interval (1 s) after a 401.
            let written = adapter.scale(None, &target, n % 3, None).await;
            outcomes.push(written.map_err(|e| (started.elapsed(), e.kind())));
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let failures: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        if refresh_after < Duration::from_secs(3) {
            assert!(failures.is_empty(), "renewed every {refresh_after:?}: {failures:?}");
        } else {
            assert!(!failures.is_empty(), "tokens outlived their 3 s: the 401 path was not taken");
            assert!(failures.iter().all(|(_, kind)| *kind == "unauthorized"), "{failures:?}");
            let in_a_row = outcomes.windows(2).any(|w| w[0].is_err() && w[1].is_err());
            assert!(!in_a_row, "a 401 was not followed by a fresh token: {outcomes:?}");
        }
        // The watch still follows the target after the tokens it started with expired.
        kube.set_replicas(Kind::Deployment, NS, "demo", 7);
        let seen = async {
            loop {
                if adapter.read(None, &target).await.is_ok_and(|v| v.replicas == 7) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(5), seen).await.is_ok(), "the watch saw the change");
    }
}

/// An API server that accepts connections and never answers (a black hole): the rule
/// reports the failure within one call timeout, a reload applies at once, and the
/// daemon stops within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_api_server_fails_the_poll_and_never_hangs_a_reload_or_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    kube.black_hole(true);
    let queue = sqs::queue("black-hole-api").await;
    let config = rule_file(dir.path(), &sqs::endpoint(), &queue, "");
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let failed = || daemon.observer.statuses().first().is_some_and(|s| s.consecutive_failures >= 1);
    // The call timeout of the in-process daemon is 5 s.
    assert!(wait_until(Duration::from_secs(8), failed).await, "{:?}", daemon.observer.statuses());
    let error = status(&daemon).last_error.unwrap_or_default();
    assert!(error.contains("no answer within"), "{error}");

    let text =
        format!("{}{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, ""), demo_rule("other", &queue, ""));
    write(dir.path(), "sqscale.toml", &text);
    daemon.reload().await;
    // Within 4 s, less than the 5 s call timeout: a reload that waited on the black hole
    // would take at least that; the margin is for a loaded machine.
    assert!(wait_until(Duration::from_secs(4), || daemon.observer.statuses().len() == 2).await, "the reload applied");

    let stopping = tokio::time::Instant::now();
    assert_eq!(daemon.stop().await, Ok(()));
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopped after {:?}", stopping.elapsed());
}

/// `/readyz` and READY=1 wait for every rule's first poll, but an Observer that has not
/// been given the rules yet answers ready: `sqscale run` spawns the HTTP server and the
/// sd_notify task before `Supervisor::start` loads the rules, so a probe in that window
/// gets 200, and READY=1 may go out with "0 rules running".
#[test]
fn an_observer_without_rules_is_not_ready() {
    let observer = Observer::new();
    assert!(observer.first_round().is_err(), "first round done before any rule was loaded");
    assert!(observer.readiness().is_err(), "ready before any rule was loaded");
}

// === the binary ===

/// `GET path` on the daemon's listener every 100 ms until `check(status, body)` holds;
/// the last body, if it did within `timeout`.
async fn http_until(port: u16, path: &str, timeout: Duration, check: impl Fn(u16, &str) -> bool) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            if s.write_all(request.as_bytes()).await.is_ok() && s.read_to_string(&mut out).await.is_ok() {
                let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                if check(code, body) {
                    return Some(body.to_owned());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn ready(port: u16) -> bool {
    http_until(port, "/readyz", Duration::from_secs(10), |code, _| code == 200).await.is_some()
}

async fn metrics_until(port: u16, check: impl Fn(&str) -> bool) -> Option<String> {
    http_until(port, "/metrics", Duration::from_secs(5), |code, m| code == 200 && check(m)).await
}

/// A rule file for the binary: moto, the demo rule, HTTP on `port` (0: none).
fn rules(queue: &str, port: u16, extra: &str) -> String {
    let listen = if port == 0 { String::new() } else { format!("127.0.0.1:{port}") };
    format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"{listen}\"\n{}",
        sqs::endpoint(),
        demo_rule("demo", queue, extra)
    )
}

fn run(config: &Path, kubeconfig: &Path, log: &Path) -> crate::support::process::Daemon {
    spawn(&["run", "--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()], &[], log)
}

const RELOAD_OK: &str = "sqscale_config_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "sqscale_config_reloads_total{result=\"failure\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sighups_in_a_second_and_it_keeps_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("storm").await;
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &rules(&queue, port, ""));
    let log = dir.path().join("sqscale.log");
    let mut child = run(&config, &kubeconfig, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready(port).await, "{}", logs());

    sqs::send(&queue, 30).await;
    let pid = child.id().to_string();
    let sent = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        for i in 0..100u32 {
            let ok = std::process::Command::new("kill").args(["-HUP", &pid]).status().is_ok_and(|s| s.success());
            if !ok {
                return i;
            }
            std::thread::sleep(
                (start + Duration::from_millis(10) * i).saturating_duration_since(std::time::Instant::now()),
            );
        }
        100
    })
    .await
    .unwrap();
    assert_eq!(sent, 100, "the daemon died during the storm:\n{}", logs());
    assert!(child.try_wait().unwrap().is_none(), "{}", logs());

    assert!(wait_until(Duration::from_secs(15), || replicas(&kube) == 5).await, "at {}\n{}", replicas(&kube), logs());
    assert_eq!(history(&kube), [1, 4, 5], "unchanged rules kept their state through the reloads");
    let m = metrics_until(port, |m| metric(m, RELOAD_OK) >= 1.0).await.expect("reloaded at least once");
    assert!(metric(&m, RELOAD_OK) <= 100.0 && metric(&m, RELOAD_FAILED) == 0.0, "{m}");
    assert_eq!(metric(&m, "sqscale_rules"), 1.0);

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert!(logs().contains("stopped cleanly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_on_a_half_written_rule_file_keeps_the_old_rules_until_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("half").await;
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &rules(&queue, port, ""));
    let log = dir.path().join("sqscale.log");
    let mut child = run(&config, &kubeconfig, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready(port).await, "{}", logs());

    // The new version raises max to 10; it is caught being written three ways: truncated
    // to nothing, cut in the middle of a string, cut before the trigger.
    let full = rules(&queue, port, "max_replica_count = 10");
    let mid_string = full.find("queue_url = \"").unwrap() + 20;
    let before_trigger = full.find("[[rule.trigger]]").unwrap();
    for (n, cut) in [&full[..0], &full[..mid_string], &full[..before_trigger]].into_iter().enumerate() {
        std::fs::write(&config, cut).unwrap();
        signal(&child, "-HUP");
        let counted = metrics_until(port, |m| metric(m, RELOAD_FAILED) == (n + 1) as f64).await;
        assert!(counted.is_some(), "cut {n} rejected and counted\n{}", logs());
    }
    assert!(logs().contains("keeping the running rules"), "{}", logs());

    // The old rules keep running: max 5.
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas(&kube) == 5).await, "at {}\n{}", replicas(&kube), logs());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(history(&kube), [1, 4, 5]);

    // The file is complete: max 10 applies, ceil(30 / 5) = 6.
    std::fs::write(&config, &full).unwrap();
    signal(&child, "-HUP");
    assert!(wait_until(Duration::from_secs(10), || replicas(&kube) == 6).await, "at {}\n{}", replicas(&kube), logs());
    assert_eq!(history(&kube), [1, 4, 5, 6]);
    let m = metrics_until(port, |m| metric(m, RELOAD_OK) == 1.0).await.expect("the complete file counted");
    assert_eq!(metric(&m, RELOAD_FAILED), 3.0, "{m}");
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keep_last_active_no_early_scale_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("sigkill").await;
    let port = free_port();
    let with_cooldown = |port| rules(&queue, port, "").replace("cooldown_period = 3", "cooldown_period = 6");
    let config_a = write(dir.path(), "a.toml", &with_cooldown(port));
    let config_b = write(dir.path(), "b.toml", &with_cooldown(0));
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let logs = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut a = run(&config_a, &kubeconfig, &log_a);
    assert!(ready(port).await, "{}", logs(&log_a));
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas(&kube) == 5).await, "{}", logs(&log_a));

    // The queue empties; once a poll has seen it empty, last-active is final, and stored
    // in sqscale's state ConfigMap (never on the target).
    sqs::purge(&queue).await;
    let annotation = || {
        let state = kube.config_map("sqscale", "sqscale-state")?;
        state["data"]["deployment.default.demo"].as_str().map(str::to_owned)
    };
    let inactive = |_, body: &str| {
        let s: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let rule = &s["rules"][0];
        rule["active"] == false && rule["last_active"].as_str().is_some_and(|t| Some(t) == annotation().as_deref())
    };
    assert!(http_until(port, "/status", Duration::from_secs(5), inactive).await.is_some(), "{}", logs(&log_a));
    let last_active = sqscale::workload::parse_time(&annotation().unwrap()).unwrap();

    signal(&a, "-KILL");
    a.wait().unwrap();
    let mut b = run(&config_b, &kubeconfig, &log_b);
    let cooldown_ends = last_active.0 + 6000;
    assert!(cooldown_ends - unix_ms(SystemTime::now()) >= 2000, "restarted well inside the cooldown");

    // The new process knows nothing but the stored time: zero only once the cooldown ran out.
    let mut zero_seen = 0;
    let zero = wait_until(Duration::from_secs(15), || {
        let zero = replicas(&kube) == 0;
        zero_seen = unix_ms(SystemTime::now());
        zero
    })
    .await;
    assert!(zero, "never scaled to zero\n{}", logs(&log_b));
    assert!(zero_seen >= cooldown_ends, "scaled to zero {} ms before the cooldown ran out", cooldown_ends - zero_seen);
    assert_eq!(history(&kube), [1, 4, 5, 0]);
    signal(&b, "-TERM");
    assert_eq!(b.wait().unwrap().code(), Some(0), "{}", logs(&log_b));
}

// === black holes ===

/// When a black hole accepted each connection.
type Accepted = Arc<Mutex<Vec<std::time::Instant>>>;

/// A listening socket that accepts every connection and never answers.
async fn black_hole() -> (u16, Accepted) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Accepted::default();
    let log = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            log.lock().unwrap().push(std::time::Instant::now());
            held.push(conn);
        }
    });
    (port, accepted)
}

/// The binary's bound on each remote call (`CALL_TIMEOUT` in src/cli.rs).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the daemon on `rules` (with `env`) against a black-holed endpoint: the rule
/// reports the failure within one call timeout of its first poll, a reload that changes
/// the rule completes, and SIGTERM stops the daemon in time. Returns the failure, how
/// many connections the black hole had accepted a second before it was first reported
/// (the next poll starts as the failed one ends), and the metrics after the reload.
async fn black_holed(rules: &str, env: &[(&str, &str)], accepted: &Accepted) -> (String, usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let port = free_port();
    let with_listener =
        |r: &str| r.replace("[server]\nlisten = \"\"", &format!("[server]\nlisten = \"127.0.0.1:{port}\""));
    let config = write(dir.path(), "sqscale.toml", &with_listener(rules));
    let log = dir.path().join("sqscale.log");
    let started = std::time::Instant::now();
    let args = ["run", "--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()];
    let mut child = spawn(&args, env, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let failed = |_, body: &str| {
        let s: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        s["rules"][0]["consecutive_failures"].as_u64().unwrap_or(0) >= 1
    };
    let status = http_until(port, "/status", CALL_TIMEOUT * 2, failed).await;
    let status = status.unwrap_or_else(|| panic!("no failure reported\n{}", logs()));
    let before = std::time::Instant::now() - Duration::from_secs(1);
    let connections = accepted.lock().unwrap().iter().filter(|at| **at < before).count();
    // Start-up, the first poll (at most one call timeout), and the report.
    assert!(started.elapsed() < CALL_TIMEOUT + Duration::from_secs(4), "{:?}\n{}", started.elapsed(), logs());
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    let error = s["rules"][0]["last_error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(replicas(&kube), 0, "a failed poll never scales");

    // A reload that restarts the rule (its in-flight poll is cancelled) completes.
    write(dir.path(), "sqscale.toml", &with_listener(&rules.replace("max_replica_count = 5", "max_replica_count = 6")));
    signal(&child, "-HUP");
    let metrics = metrics_until(port, |m| metric(m, RELOAD_OK) == 1.0).await;
    let metrics = metrics.unwrap_or_else(|| panic!("no reload\n{}", logs()));

    let stopping = std::time::Instant::now();
    signal(&child, "-TERM");
    while child.try_wait().unwrap().is_none() {
        assert!(stopping.elapsed() < CALL_TIMEOUT + Duration::from_secs(2), "still running\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    (error, connections, metrics)
}

/// SQS accepts connections and never answers: the direct call gives up with half the
/// deadline, the SDK is asked with the rest, and the poll fails within the deadline
/// (before, the direct path's timeout failed the poll without asking the SDK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_sqs_endpoint_fails_the_poll_on_time_after_asking_the_sdk_too() {
    let (hole, accepted) = black_hole().await;
    let endpoint = format!("http://127.0.0.1:{hole}");
    let rules = format!("{}{}", header(&endpoint), demo_rule("demo", &format!("{endpoint}/123456789012/q"), ""));
    let (error, connections, metrics) = black_holed(&rules, &[], &accepted).await;
    assert!(error.contains("no answer within"), "{error}");
    // The first poll: the direct call's connection, then (half the deadline later) the SDK's.
    assert_eq!(connections, 2);
    assert!(metric(&metrics, "sqscale_sqs_fallbacks_total{reason=\"timeout\"}") >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "sqscale_sqs_fallbacks_total{reason=\"transport\"}"), 0.0, "{metrics}");
}

/// STS (for the trigger's `role_arn`, at `AWS_ENDPOINT_URL_STS`) accepts connections and
/// never answers: the poll fails within the deadline, and reload and shutdown stay on
/// time. (Before, AssumeRole went to `[aws] endpoint_url`, SQS's endpoint.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_sts_endpoint_fails_the_poll_on_time() {
    let (hole, accepted) = black_hole().await;
    let queue = sqs::queue("sts-hole").await;
    let rule = demo_rule("demo", &queue, "")
        .replace("[[rule.trigger]]\n", "[[rule.trigger]]\nrole_arn = \"arn:aws:iam::123456789012:role/sqscale\"\n");
    let rules = format!("{}{rule}", header(&sqs::endpoint()));
    let sts = format!("http://127.0.0.1:{hole}");
    let (error, connections, _) = black_holed(&rules, &[("AWS_ENDPOINT_URL_STS", &sts)], &accepted).await;
    assert!(error.contains("no answer within"), "{error}");
    // AssumeRole went to STS's endpoint, not to `endpoint_url` (SQS's).
    assert!(connections >= 1);
}

/// A new leader reads the stored state again: while another instance led, that one
/// stored newer last-active times, and a copy read before would let a target scale to
/// zero early. Until told, reads keep the copy (one GET per context, not per poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_state_is_read_again_when_this_instance_starts_to_lead() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let adapter = Kube::new(Some(kubeconfig), None, Duration::from_secs(5));
    let target = TargetRef { kind: sqscale::config::TargetKind::Deployment, name: "demo".into(), namespace: NS.into() };
    let stored = |at: &str| {
        kube.put_config_map("sqscale", "sqscale-state", serde_json::json!({ "deployment.default.demo": at }))
    };
    let read = || async { adapter.read(None, &target).await.unwrap().last_active.map(sqscale::workload::format_time) };
    stored("2026-12-02T07:00:00Z");
    assert_eq!(read().await.as_deref(), Some("2026-12-02T07:00:00Z"));
    stored("2026-12-02T07:05:00Z");
    assert_eq!(read().await.as_deref(), Some("2026-12-02T07:00:00Z"), "the copy read once");
    adapter.reread_state(None);
    assert_eq!(read().await.as_deref(), Some("2026-12-02T07:05:00Z"), "read again");
    let gets =
        kube.requests().iter().filter(|r| r.method == "GET" && r.path.ends_with("/configmaps/sqscale-state")).count();
    assert_eq!(gets, 2);
}

/// Issue 25, item 5: the original replica count of a rule that restores is kept in the
/// state ConfigMap beside last-active, so a restarted daemon (a new adapter) reads it
/// back; forgetting it removes its key and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_replica_count_is_kept_in_the_state_configmap() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let target = TargetRef { kind: sqscale::config::TargetKind::Deployment, name: "demo".into(), namespace: NS.into() };
    let adapter = Kube::new(Some(kubeconfig.clone()), None, Duration::from_secs(5));
    assert_eq!(adapter.original_replicas(None, &target).await.unwrap(), None);
    adapter.set_last_active(None, &target, Time(1_795_000_000_000), &Leadership::unelected()).await.unwrap();
    adapter.set_original_replicas(None, &target, Some(3), &Leadership::unelected()).await.unwrap();
    let data = || kube.config_map("sqscale", "sqscale-state").unwrap()["data"].clone();
    assert_eq!(data()["original-replicas.deployment.default.demo"], "3", "{}", data());

    let restarted = Kube::new(Some(kubeconfig), None, Duration::from_secs(5));
    assert_eq!(restarted.original_replicas(None, &target).await.unwrap(), Some(3));
    let view = restarted.read(None, &target).await.unwrap();
    assert_eq!(view.last_active, Some(Time(1_795_000_000_000)), "the count is no time, nor hides one");
    restarted.set_original_replicas(None, &target, None, &Leadership::unelected()).await.unwrap();
    assert!(data().get("original-replicas.deployment.default.demo").is_none(), "{}", data());
    assert!(data().get("deployment.default.demo").is_some(), "{}", data());
    assert_eq!(restarted.original_replicas(None, &target).await.unwrap(), None);
}

/// Last-active writes that arrive in a stream (a busy fleet refreshing its times) go out
/// together, at most one PATCH a second: each PATCH is answered with the whole ConfigMap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_state_writes_is_folded_into_one_patch_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let adapter = Arc::new(Kube::new(Some(kubeconfig), None, Duration::from_secs(5)));
    let started = tokio::time::Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    // Forty writes over 0.8 s, one every 20 ms.
    for i in 0..40u64 {
        let adapter = adapter.clone();
        writes.spawn(async move {
            tokio::time::sleep_until(started + Duration::from_millis(20 * i)).await;
            let t = TargetRef {
                kind: sqscale::config::TargetKind::Deployment,
                name: format!("d-{i}"),
                namespace: NS.into(),
            };
            adapter.set_last_active(None, &t, Time(1_795_000_000_000 + i as i64), &Leadership::unelected()).await
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }
    let patches =
        kube.requests().iter().filter(|r| r.path.ends_with("/configmaps/sqscale-state") && r.method != "GET").count();
    assert!(patches <= 3, "{patches} writes of the state for 40 times over 0.8 s");
    let data = kube.config_map("sqscale", "sqscale-state").unwrap()["data"].clone();
    assert_eq!(data.as_object().unwrap().len(), 40, "every time stored: {data}");
}

/// Issue 26: a last-active older than the one stored is never written over it. Here
/// another instance stored a newer time (read again when this one started to lead), and
/// this one's write of the older time it still had succeeds without being sent: the
/// newer time stays, and the next read gives it. A newer time is written as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_last_active_never_overwrites_a_newer_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let adapter = Kube::new(Some(kubeconfig), None, Duration::from_secs(5));
    let target = TargetRef { kind: sqscale::config::TargetKind::Deployment, name: "demo".into(), namespace: NS.into() };
    let lead = Leadership::unelected();
    let stored = || {
        kube.config_map("sqscale", "sqscale-state")
            .and_then(|m| m["data"]["deployment.default.demo"].as_str().map(str::to_owned))
    };
    let at = |text: &str| Time(text.parse::<jiff::Timestamp>().unwrap().as_millisecond());
    adapter.set_last_active(None, &target, at("2026-12-02T07:00:00Z"), &lead).await.unwrap();
    assert_eq!(stored().as_deref(), Some("2026-12-02T07:00:00Z"));
    // Another instance stores a newer time; this one reads it.
    kube.put_config_map(
        "sqscale",
        "sqscale-state",
        serde_json::json!({ "deployment.default.demo": "2026-12-02T07:05:00Z" }),
    );
    adapter.reread_state(None);
    let read = adapter.read(None, &target).await.unwrap();
    assert_eq!(read.stored_last_active, Some(at("2026-12-02T07:05:00Z")));
    let patches = || {
        kube.requests().iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/configmaps/sqscale-state")).count()
    };
    let before = patches();
    adapter.set_last_active(None, &target, at("2026-12-02T07:01:00Z"), &lead).await.unwrap();
    assert_eq!(stored().as_deref(), Some("2026-12-02T07:05:00Z"), "the older time was written over the newer one");
    assert_eq!(patches(), before, "nothing to send");
    let read = adapter.read(None, &target).await.unwrap();
    assert_eq!(read.last_active, Some(at("2026-12-02T07:05:00Z")));
    // A newer one is written.
    adapter.set_last_active(None, &target, at("2026-12-02T07:06:00Z"), &lead).await.unwrap();
    assert_eq!(stored().as_deref(), Some("2026-12-02T07:06:00Z"));
}
