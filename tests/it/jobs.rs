//! Job rules live: the real `sqscale run` process with a `[[job]]` rule file, the fake API
//! server with the test Job controller (whose pods work off moto messages), and moto behind
//! a counting proxy. Polls every second, so each story takes seconds.
//!
//! Each test checks what the user sees: the Jobs in the cluster (created, kept, deleted,
//! at most how many at once), the requests the API server received, the SQS calls, and
//! `/status`, `/metrics`, `sqscale status` and the log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fake_kube::{FakeKube, JobEvent};
use crate::support::jobs::{Behaviour, JobController};
use crate::support::process::{Daemon, free_port, http_get, signal, spawn, sqscale};
use crate::support::proxy::Proxy;
use crate::support::sqs;

const NS: &str = "default";

/// A template every test starts from: one container, no retry (a failing pod fails the Job).
const TEMPLATE: &str = "apiVersion: batch/v1
kind: Job
metadata:
  labels:
    app: live
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: work
          image: public.ecr.aws/docker/library/busybox:1.36
";

/// One story's world: the fake API server, moto's queue behind a proxy that counts the
/// daemon's SQS calls, and the daemon as a process.
struct Live {
    dir: tempfile::TempDir,
    kube: FakeKube,
    proxy: Proxy,
    queue: String,
    port: u16,
    config: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<Daemon>,
}

impl Live {
    async fn new(prefix: &str) -> Live {
        let dir = tempfile::tempdir().unwrap();
        let kube = FakeKube::start().await;
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig);
        let proxy = Proxy::start(&sqs::endpoint()).await;
        let queue = sqs::queue(prefix).await;
        let (config, log) = (dir.path().join("sqscale.toml"), dir.path().join("sqscale.log"));
        let live = Live { dir, kube, proxy, queue, port: free_port(), config, kubeconfig, log, child: None };
        live.template(TEMPLATE);
        live
    }

    /// Writes the template `job.yaml` beside the rule file.
    fn template(&self, yaml: &str) {
        std::fs::write(self.dir.path().join("job.yaml"), yaml).unwrap();
    }

    /// Writes the rule file: the `[aws]` and `[server]` tables, then the job rule `name` on
    /// this story's queue polled every second, `keys` (its own keys and tables) before its
    /// trigger, `trigger_keys` in it.
    fn rules(&self, name: &str, keys: &str, trigger_keys: &str) {
        self.rules_text(&self.job(name, &self.queue, keys, trigger_keys));
    }

    fn job(&self, name: &str, queue: &str, keys: &str, trigger_keys: &str) -> String {
        format!(
            "[[job]]\nname = \"{name}\"\nnamespace = \"{NS}\"\ntemplate = \"job.yaml\"\npolling_interval = 1\n{keys}\n[[job.trigger]]\nqueue_url = \"{queue}\"\nqueue_length = 1\n{trigger_keys}\n"
        )
    }

    fn rules_text(&self, jobs: &str) {
        let header = format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{}\"\n",
            self.proxy.url(),
            self.port
        );
        std::fs::write(&self.config, format!("{header}{jobs}")).unwrap();
    }

    /// `sqscale run` on the rule file; waits until its HTTP server answers.
    async fn start(&mut self) {
        let args =
            ["run", "--config", self.config.to_str().unwrap(), "--kubeconfig", self.kubeconfig.to_str().unwrap()];
        self.child = Some(spawn(&args, &[], &self.log));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "sqscale never listened on {}\n{}", self.port, self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGHUP, and waits until the reload counts as a success in `/metrics`.
    async fn reload(&self) {
        let reloads = |m: &str| {
            m.lines()
                .find(|l| l.starts_with("sqscale_config_reloads_total{result=\"success\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = reloads(&self.metrics().await);
        signal(self.child.as_ref().unwrap(), "-HUP");
        self.wait("the reload", Duration::from_secs(10), async || reloads(&self.metrics().await) > before).await;
    }

    async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, "-TERM");
        assert_eq!(child.wait().unwrap().code(), Some(0), "{}", self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        http_get(self.port, "/metrics").await.1
    }

    /// The job rule `name` of `/status`.
    async fn status(&self, name: &str) -> Value {
        let body = http_get(self.port, "/status").await.1;
        let status: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"));
        let jobs = status["jobs"].as_array().cloned().unwrap_or_default();
        jobs.into_iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("no job rule {name} in /status: {body}"))
    }

    /// The polls of job rule `name` so far, as `/status` counts them.
    async fn polls(&self, name: &str) -> u64 {
        self.status(name).await["polls"].as_u64().unwrap_or(0)
    }

    /// Waits until `polls` more polls of `name` have reported.
    async fn wait_polls(&self, name: &str, polls: u64) {
        let until = self.polls(name).await + polls;
        let what = format!("{polls} polls of {name}");
        self.wait(&what, Duration::from_secs(3 * polls + 5), async || self.polls(name).await >= until).await;
    }

    /// Polls `check` every 100 ms; fails with the log after `limit`.
    async fn wait(&self, what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check().await {
            assert!(Instant::now() < deadline, "waited {limit:?} for {what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Jobs created for job rule `name`, in order.
    fn created(&self, name: &str) -> Vec<String> {
        let label = name.to_owned();
        self.kube
            .job_history()
            .into_iter()
            .filter(|r| r.event == JobEvent::Created && r.labels.get("sqscale.io/job") == Some(&label))
            .map(|r| r.name)
            .collect()
    }

    /// The Jobs of `name` in the store now.
    fn jobs_of(&self, name: &str) -> Vec<Value> {
        self.kube
            .jobs(NS)
            .into_iter()
            .filter(|j| j.pointer("/metadata/labels/sqscale.io~1job") == Some(&name.into()))
            .collect()
    }

    /// DELETEs of Jobs the API server received, with their query.
    fn job_deletes(&self) -> Vec<(String, String)> {
        self.kube
            .requests()
            .into_iter()
            .filter(|c| c.method == "DELETE" && c.path.contains("/apis/batch/v1/namespaces/default/jobs/"))
            .map(|c| (c.path.rsplit('/').next().unwrap_or_default().to_owned(), format!("{:?} {}", c.query, c.body)))
            .collect()
    }

    /// POSTs of Jobs the API server received (created or refused).
    fn job_posts(&self) -> usize {
        self.kube.count("POST", "/apis/batch/v1/namespaces/default/jobs")
    }
}

/// The value of the metric line starting with `series` (`name{labels}`), if present.
fn metric(m: &str, series: &str) -> Option<f64> {
    m.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

/// The cap: 20 messages, at most 3 Jobs at once, each works one message off in about a
/// second. Never more than 3 unfinished at once, exactly 20 Jobs (one per message), the
/// queue empty at the end. Then what the story leaves in `/metrics`, `/status` and
/// `sqscale status`: 20 created, none running or pending, 20 deleted by the history
/// cleanup (no history kept), none by rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_the_max_and_one_job_per_message() {
    let mut live = Live::new("jobs-cap").await;
    live.rules("cap", "max_replica_count = 3\nsuccessful_jobs_history_limit = 0", "");
    let controller =
        JobController::start(&live.kube, Some(live.queue.clone()), Behaviour::default().work(Duration::from_secs(1)))
            .await;
    live.start().await;
    sqs::send(&live.queue, 20).await;
    let client = sqs::client().await;
    let mut max_running = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        max_running = max_running.max(live.kube.job_counts(NS).running);
        if controller.stats().deleted >= 20
            && live.kube.job_counts(NS).running == 0
            && live.kube.jobs(NS).is_empty()
            && sqs::counts(&client, &live.queue).await == (0, 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 20 messages were not worked off: {:?}\n{}",
            controller.stats(),
            live.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two more polls: nothing more is created for an empty queue.
    live.wait_polls("cap", 2).await;
    let at_once = live.kube.max_jobs_at_once(NS, "sqscale.io/job=cap");
    assert!(at_once <= 3 && max_running <= 3, "at most 3 at once, saw {at_once} ({max_running})\n{}", live.logs());
    assert_eq!(at_once, 3, "the max is used: 20 messages fill 3 slots");
    assert_eq!(live.created("cap").len(), 20, "one Job per message\n{}", live.logs());
    let stats = controller.stats();
    assert_eq!(
        (stats.received, stats.deleted, stats.found_nothing),
        (20, 20, 0),
        "each Job took one message: {stats:?}"
    );

    let m = live.metrics().await;
    assert_eq!(metric(&m, "sqscale_jobs_created_total{job=\"cap\"}"), Some(20.0), "{m}");
    assert_eq!(metric(&m, "sqscale_jobs_running{job=\"cap\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "sqscale_jobs_pending{job=\"cap\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "sqscale_jobs_deleted_total{job=\"cap\",reason=\"history\"}"), Some(20.0), "{m}");
    assert_eq!(metric(&m, "sqscale_jobs_deleted_total{job=\"cap\",reason=\"rollout\"}"), Some(0.0), "{m}");
    let s = live.status("cap").await;
    assert_eq!((s["created_total"].as_u64(), s["running"].as_u64(), s["cap"].as_u64()), (Some(20), Some(0), Some(3)));
    assert_eq!(s["deleted"]["history"], 20, "{s}");

    let server = format!("http://127.0.0.1:{}", live.port);
    let out = tokio::task::block_in_place(|| sqscale(&["status", "--server", &server]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("job cap ")).unwrap_or_else(|| panic!("no job line: {text}"));
    assert!(
        line.starts_with(
            "job cap (default): backlog 0, running 0 of 3, pending 0, created 20 (last poll 0), deleted 20+0, inactive"
        ),
        "{line}"
    );
    live.stop().await;
}

/// The Jobs of job rule `name` created so far, once it has stopped creating: waits until
/// its count has not moved for three polls.
async fn settled(live: &Live, name: &str) -> usize {
    let mut last = live.created(name).len();
    loop {
        live.wait_polls(name, 3).await;
        let now = live.created(name).len();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Three strategies on three queues of 3 messages each, max 10, in one daemon, with pods
/// that never get scheduled (every Job stays pending, `P = U`, and the messages stay
/// visible): each creates what the engine's formula gives, poll after poll, and then
/// stops.
/// - default, `maxScale - r`: 3, then 0: 3 Jobs.
/// - custom with deduction 1 and percentage 0.5, `min(maxScale - 1 - trunc(r × 0.5), M)`:
///   2, 1 (r = 2), 1 (r = 3), 0 (r = 4): 4 Jobs.
/// - eager, `min(M - r - P, maxScale)`: 3, 3 (10 - 3 - 3 = 4), 0 (10 - 6 - 6 < 0): 6 Jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_strategy_creates_what_its_formula_gives_for_pending_jobs() {
    let mut live = Live::new("jobs-strategy").await;
    let (custom_q, eager_q) = (sqs::queue("jobs-strategy-custom").await, sqs::queue("jobs-strategy-eager").await);
    let custom = "max_replica_count = 10\n[job.scaling_strategy]\nstrategy = \"custom\"\ncustom_scaling_queue_length_deduction = 1\ncustom_scaling_running_job_percentage = 0.5";
    let eager = "max_replica_count = 10\n[job.scaling_strategy]\nstrategy = \"eager\"";
    let rules = [
        live.job("plain", &live.queue, "max_replica_count = 10", ""),
        live.job("custom", &custom_q, custom, ""),
        live.job("eager", &eager_q, eager, ""),
    ];
    live.rules_text(&rules.concat());
    let _controller = JobController::start(&live.kube, None, Behaviour::default().stuck()).await;
    for q in [&live.queue, &custom_q, &eager_q] {
        sqs::send(q, 3).await;
    }
    live.start().await;
    let got = [settled(&live, "plain").await, settled(&live, "custom").await, settled(&live, "eager").await];
    assert_eq!(got, [3, 4, 6], "Jobs created by default, custom, eager\n{}", live.logs());
    let counts = live.kube.job_counts(NS);
    assert_eq!((counts.running, counts.pending), (13, 13), "all pending: {counts:?}");
    for (name, jobs) in [("plain", 3), ("custom", 4), ("eager", 6)] {
        let s = live.status(name).await;
        assert_eq!((s["running"].as_u64(), s["pending"].as_u64()), (Some(jobs), Some(jobs)), "{s}");
        let m = live.metrics().await;
        assert_eq!(metric(&m, &format!("sqscale_jobs_pending{{job=\"{name}\"}}")), Some(jobs as f64), "{m}");
    }
    live.stop().await;
}

/// accurate with `scale_on_in_flight = false` against default with it: Jobs that run (not
/// pending) and hold their messages in flight. 3 messages: each rule creates 3 Jobs, whose
/// pods take them. 2 more arrive while they run: accurate, `min(M - r, maxScale - P)` =
/// `min(10 - 3, 2 - 0)`, creates 2 for them; default, `maxScale - r` = `2 - 3`, none (the
/// new messages wait until Jobs end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accurate_without_in_flight_creates_for_new_messages_while_default_waits() {
    let mut live = Live::new("jobs-accurate").await;
    let default_q = sqs::queue("jobs-accurate-default").await;
    let accurate = "max_replica_count = 10\n[job.scaling_strategy]\nstrategy = \"accurate\"";
    let rules = [
        live.job("acc", &live.queue, accurate, "scale_on_in_flight = false"),
        live.job("dflt", &default_q, "max_replica_count = 10", "scale_on_in_flight = false"),
    ];
    live.rules_text(&rules.concat());
    let work = Behaviour::default().work(Duration::from_secs(30));
    let _acc =
        JobController::start(&live.kube, Some(live.queue.clone()), work.clone().only("sqscale.io/job", "acc")).await;
    let _dflt = JobController::start(&live.kube, Some(default_q.clone()), work.only("sqscale.io/job", "dflt")).await;
    sqs::send(&live.queue, 3).await;
    sqs::send(&default_q, 3).await;
    live.start().await;
    let client = sqs::client().await;
    for q in [&live.queue, &default_q] {
        let what = format!("3 messages of {q} in flight");
        live.wait(&what, Duration::from_secs(20), async || sqs::counts(&client, q).await == (0, 3)).await;
    }
    live.wait("6 Jobs running", Duration::from_secs(10), async || {
        let c = live.kube.job_counts(NS);
        (c.running, c.pending) == (6, 0)
    })
    .await;
    live.wait_polls("acc", 1).await;
    assert_eq!((live.created("acc").len(), live.created("dflt").len()), (3, 3), "{}", live.logs());

    sqs::send(&live.queue, 2).await;
    sqs::send(&default_q, 2).await;
    let (acc, dflt) = (settled(&live, "acc").await, settled(&live, "dflt").await);
    assert_eq!((acc, dflt), (5, 3), "accurate creates for the new messages, default waits\n{}", live.logs());
    assert_eq!(sqs::counts(&client, &default_q).await, (2, 3), "default's new messages wait");
    live.stop().await;
}

/// The template with a label added: another template hash.
fn template_v2() -> String {
    TEMPLATE.replace("    app: live\n", "    app: live\n    version: \"2\"\n")
}

/// Starts a rollout story: job rule `roll` with `rollout`, Jobs that work `work`, and 2
/// messages; returns once its 2 Jobs run (their pods hold the messages).
async fn two_running_jobs(live: &mut Live, rollout: &str, work: Duration) -> JobController {
    live.rules("roll", &format!("max_replica_count = 5\n{rollout}"), "");
    let controller = JobController::start(&live.kube, Some(live.queue.clone()), Behaviour::default().work(work)).await;
    sqs::send(&live.queue, 2).await;
    live.start().await;
    live.wait("2 Jobs running", Duration::from_secs(15), async || {
        let c = live.kube.job_counts(NS);
        (c.running, c.pending) == (2, 0)
    })
    .await;
    controller
}

/// Rollout `default` with foreground propagation: a reload that changes only the max
/// deletes nothing; a reload that changes the template deletes the running Jobs of the
/// old template, each DELETE carrying `propagationPolicy=Foreground`, counts them under
/// `reason="rollout"`, and the messages they held (back in the count as in flight) get
/// Jobs of the new template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_template_deletes_the_old_jobs_and_a_changed_max_does_not() {
    let mut live = Live::new("jobs-rollout").await;
    let rollout = "[job.rollout]\nstrategy = \"default\"\npropagation_policy = \"foreground\"";
    let _controller = two_running_jobs(&mut live, rollout, Duration::from_secs(60)).await;
    let old = live.created("roll");
    assert_eq!(old.len(), 2, "{}", live.logs());

    live.rules("roll", &format!("max_replica_count = 6\n{rollout}"), "");
    live.reload().await;
    live.wait_polls("roll", 3).await;
    assert_eq!(live.job_deletes(), [], "a changed max deletes nothing\n{}", live.logs());
    assert_eq!(live.kube.job_counts(NS).running, 2);
    assert_eq!(live.created("roll"), old, "and creates nothing: the 2 Jobs hold the 2 messages");

    live.template(&template_v2());
    live.reload().await;
    live.wait("the old Jobs gone", Duration::from_secs(15), async || {
        live.kube.jobs(NS).iter().all(|j| !old.iter().any(|o| j.pointer("/metadata/name") == Some(&o.as_str().into())))
    })
    .await;
    let deletes = live.job_deletes();
    let mut names: Vec<&str> = deletes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = old.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(names, want, "each old Job deleted once: {deletes:?}");
    assert!(deletes.iter().all(|(_, options)| options.contains("Foreground")), "{deletes:?}");
    assert!(live.logs().contains("rolled out: deleted the Jobs of the older template"), "{}", live.logs());

    // The messages the deleted pods held are still in flight: Jobs of the new template take over.
    live.wait("2 Jobs of the new template", Duration::from_secs(15), async || {
        let jobs = live.jobs_of("roll");
        jobs.len() == 2 && jobs.iter().all(|j| j.pointer("/metadata/labels/version") == Some(&"2".into()))
    })
    .await;
    // The poll that created them reports after its creates: then, and two polls on, 4 in all.
    live.wait_polls("roll", 2).await;
    assert_eq!(live.created("roll").len(), 4, "2 old, 2 new\n{}", live.logs());
    let m = live.metrics().await;
    assert_eq!(metric(&m, "sqscale_jobs_deleted_total{job=\"roll\",reason=\"rollout\"}"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "sqscale_jobs_created_total{job=\"roll\"}"), Some(4.0), "{m}");
    live.stop().await;
}

/// Rollout `gradual`: a changed template deletes nothing; the old template's Jobs run to
/// their end, and while they run they still count (no Job is created for the messages
/// they hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradual_lets_the_old_jobs_finish() {
    let mut live = Live::new("jobs-gradual").await;
    let rollout = "[job.rollout]\nstrategy = \"gradual\"";
    let controller = two_running_jobs(&mut live, rollout, Duration::from_secs(5)).await;
    let old = live.created("roll");
    live.template(&template_v2());
    live.reload().await;
    live.wait("the old Jobs complete", Duration::from_secs(20), async || live.kube.job_counts(NS).complete == 2).await;
    live.wait_polls("roll", 2).await;
    assert_eq!(live.job_deletes(), [], "gradual deletes nothing\n{}", live.logs());
    assert_eq!(live.created("roll"), old, "the running old Jobs counted: none created beside them");
    assert_eq!(controller.stats().deleted, 2, "the old Jobs worked their messages off");
    let m = live.metrics().await;
    assert_eq!(metric(&m, "sqscale_jobs_deleted_total{job=\"roll\",reason=\"rollout\"}"), Some(0.0), "{m}");
    live.stop().await;
}

/// History limits 2 and 1: 3 Jobs succeed one after another, then Jobs fail (each
/// failed message comes back a second later for a new Job) until 3 have failed; the
/// queue is purged. The Jobs kept are the newest 2 Complete and the newest Failed, by
/// when they finished; the others were deleted (in the background) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_finished_jobs() {
    let mut live = Live::new("jobs-history").await;
    live.rules("hist", "max_replica_count = 1\nsuccessful_jobs_history_limit = 2\nfailed_jobs_history_limit = 1", "");
    // Over a second of work: no two Jobs finish in the same second (the times' resolution).
    let behaviour = Behaviour::default().work(Duration::from_millis(1200)).visibility_timeout(Duration::from_secs(1));
    let controller = JobController::start(&live.kube, Some(live.queue.clone()), behaviour.clone()).await;
    live.start().await;
    sqs::send(&live.queue, 3).await;
    live.wait("3 Jobs complete", Duration::from_secs(30), async || controller.stats().deleted == 3).await;
    controller.set_behaviour(behaviour.failing());
    sqs::send(&live.queue, 1).await;
    let failed = |live: &Live| {
        live.kube.job_history().iter().filter(|r| r.event == (JobEvent::Finished { failed: true })).count()
    };
    live.wait("3 Jobs failed", Duration::from_secs(40), async || failed(&live) >= 3).await;
    sqs::purge(&live.queue).await;
    live.wait("no Job running", Duration::from_secs(10), async || live.kube.job_counts(NS).running == 0).await;
    live.wait_polls("hist", 3).await;

    let history = live.kube.job_history();
    let finished = |want: bool| -> Vec<String> {
        history.iter().filter(|r| r.event == (JobEvent::Finished { failed: want })).map(|r| r.name.clone()).collect()
    };
    let (complete, failed) = (finished(false), finished(true));
    assert!(complete.len() >= 3 && failed.len() >= 3, "{complete:?} {failed:?}");
    let kept = |want: bool| -> Vec<String> {
        let mut names: Vec<String> = live
            .jobs_of("hist")
            .iter()
            .filter(|j| crate::support::fake_kube::finished(j) == Some(want))
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let mut newest_complete = complete[complete.len() - 2..].to_vec();
    newest_complete.sort();
    assert_eq!(kept(false), newest_complete, "the newest 2 Complete kept\n{}", live.logs());
    assert_eq!(kept(true), failed[failed.len() - 1..].to_vec(), "the newest Failed kept\n{}", live.logs());
    let deleted = (complete.len() - 2 + failed.len() - 1) as f64;
    let m = live.metrics().await;
    assert_eq!(metric(&m, "sqscale_jobs_deleted_total{job=\"hist\",reason=\"history\"}"), Some(deleted), "{m}");
    let background = live.job_deletes().iter().all(|(_, options)| options.contains("Background"));
    assert!(background, "{:?}", live.job_deletes());
    live.stop().await;
}

/// `paused = true`: no SQS call and no Job for 3 polls' time, and `/status` and `sqscale
/// status` say paused; a reload with `paused = false` creates the Jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_reads_and_creates_nothing_until_unpaused() {
    let mut live = Live::new("jobs-paused").await;
    live.rules("p", "paused = true", "");
    sqs::send(&live.queue, 3).await;
    live.start().await;
    live.wait_polls("p", 3).await;
    assert_eq!(live.proxy.count("GetQueueAttributes"), 0, "no SQS call while paused");
    assert_eq!(live.job_posts(), 0, "no Job created while paused");
    let s = live.status("p").await;
    assert_eq!((s["paused"].as_bool(), s["last_reason"].as_str()), (Some(true), Some("paused")), "{s}");

    live.rules("p", "paused = false", "");
    live.reload().await;
    live.wait("3 Jobs", Duration::from_secs(10), async || live.created("p").len() == 3).await;
    assert!(live.proxy.count("GetQueueAttributes") > 0);
    assert_eq!(settled(&live, "p").await, 3, "{}", live.logs());
    live.stop().await;
}

/// A create the API server refuses is tried again once per poll, never in a loop: over
/// several polls the POSTs are as many as the polls (1 message: 1 Job a poll), and the
/// refusal shows in `/status`, `sqscale status`, the log and
/// `sqscale_poll_errors_total{source="kubernetes"}`. First a 403 (create denied), then,
/// allowed again, a 422: a template label value the API server refuses and the rule file
/// accepts. Fixed, the Job is created and the error clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_create_is_shown_and_tried_once_per_poll() {
    let mut live = Live::new("jobs-refused").await;
    live.rules("ref", "", "");
    live.template(&TEMPLATE.replace("app: live", "app: \"not a label value\""));
    live.kube.deny("create", "jobs", "");
    sqs::send(&live.queue, 1).await;
    live.start().await;
    let server = format!("http://127.0.0.1:{}", live.port);
    for (code, says) in [("403", "(forbidden, 403)"), ("422", "is invalid: metadata.labels")] {
        live.wait("a refused create", Duration::from_secs(10), async || live.job_posts() > 0).await;
        let (posts, polls) = (live.job_posts(), live.polls("ref").await);
        live.wait_polls("ref", 4).await;
        let (posts, polls) = (live.job_posts() - posts, live.polls("ref").await - polls);
        assert!(posts.abs_diff(polls as usize) <= 1, "{code}: {posts} POSTs in {polls} polls\n{}", live.logs());
        assert!(live.kube.jobs(NS).is_empty());

        let s = live.status("ref").await;
        let error = s["last_create_error"]["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains(says), "{code}: {s}");
        let m = live.metrics().await;
        let errors = metric(&m, "sqscale_poll_errors_total{job=\"ref\",source=\"kubernetes\"}").unwrap_or(0.0);
        assert!(errors >= polls as f64, "{code}: {errors} errors: {m}");
        let out = tokio::task::block_in_place(|| sqscale(&["status", "--server", &server]));
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(text.contains("last create error at") && text.contains(says), "{code}: {text}");
        let logs = live.logs();
        let logged = logs.lines().any(|l| l.contains("creating a Job failed") && l.to_lowercase().contains(says));
        assert!(logged, "{code}: {logs}");
        live.kube.allow_all();
        live.kube.clear_requests();
    }
    live.template(TEMPLATE);
    live.reload().await;
    live.wait("the Job", Duration::from_secs(10), async || live.created("ref").len() == 1).await;
    live.wait_polls("ref", 1).await;
    let s = live.status("ref").await;
    assert!(s["last_create_error"].is_null(), "{s}");
    assert_eq!(settled(&live, "ref").await, 1);
    live.stop().await;
}

/// `sqscale check` takes the demo's job rule file, and `sqscale simulate` replays its
/// trace: 12 messages worked off 4 Jobs at a time.
#[test]
fn the_demo_job_rule_file_checks_and_simulates() {
    let out = sqscale(&["check", "--config", "config/demo-jobs.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("config/demo-jobs.toml: ok, 0 rules, 1 job rule"), "{err}");
    assert!(!err.contains("warning"), "{err}");

    let args = ["simulate", "--config", "config/demo-jobs.toml", "--trace", "config/traces/demo-jobs.csv"];
    let out = sqscale(&[&args[..], &["--job-duration", "5"]].concat());
    let timeline = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = timeline.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert!(!rows.is_empty(), "{timeline}");
    // time,rule,backlog,active,desired,replicas,reason
    let creates: Vec<(&str, &str)> = rows.iter().filter(|r| r[4] != "0").map(|r| (r[0], r[4])).collect();
    assert_eq!(creates, [("2", "4"), ("8", "4"), ("14", "4")], "4 Jobs, then 4 more as each 4 end\n{timeline}");
    let created: u32 = rows.iter().map(|r| r[4].parse::<u32>().unwrap()).sum();
    let most = rows.iter().map(|r| r[5].parse::<u32>().unwrap()).max().unwrap();
    assert_eq!(created, 12, "one Job per message\n{timeline}");
    assert_eq!(most, 4, "4 at a time\n{timeline}");
    let last = rows.last().unwrap();
    assert_eq!((last[2], last[5]), ("0", "0"), "the queue and the Jobs done at the end\n{timeline}");
}
