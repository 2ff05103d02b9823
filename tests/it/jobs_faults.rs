//! Job rules when things fail, with the real adapters against the fake API server, the
//! test Job controller and moto: the daemon killed with SIGKILL and started again, two
//! instances under leader election and a failover, a queue that cannot be read and the
//! SQS emulator killed and restarted, Jobs that cannot be listed after a broken watch, a
//! removed job rule, `check --remote` allowed and denied, a broken template on reload, a
//! rotated bearer token. In every case no Job is created twice for one message (the
//! fake's creation log is the judge), never more than the max run at once, and the
//! failure shows.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto); job rules poll every second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, header, wait_until, write};
use crate::support::fake_kube::{Captured, FakeKube};
use crate::support::jobs::{Behaviour, JobController};
use crate::support::process::{free_port, http_get, signal, spawn};
use crate::support::sqs;
use sqscale::status::JobRuleStatus;

const NS: &str = "default";
const LEASE: &str = "sqscale-jobs";

// === helpers ===

/// The Job template every job rule here uses, written to `dir/jobs/work.yaml`.
fn write_template(dir: &Path) {
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    write(
        dir,
        "jobs/work.yaml",
        "apiVersion: batch/v1\nkind: Job\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: work\n          image: busybox\n",
    );
}

/// A job rule `name` on `queue`: one Job per message, at most `max` at once, a poll a second.
fn job_rule(name: &str, queue: &str, max: u32, extra: &str) -> String {
    format!(
        "[[job]]\nname = \"{name}\"\nnamespace = \"{NS}\"\ntemplate = \"jobs/work.yaml\"\npolling_interval = 1\nmax_replica_count = {max}\n{extra}\n[[job.trigger]]\nqueue_url = \"{queue}\"\nqueue_length = 1\n"
    )
}

/// A rule file for `sqscale run` as a process: the kubeconfig, moto, `/status` on `port`,
/// then `body` (leader election and job rules).
fn process_config(dir: &Path, file: &str, kubeconfig: &Path, port: u16, body: &str) -> PathBuf {
    write_template(dir);
    let text = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{body}",
        kubeconfig.display(),
        sqs::endpoint(),
    );
    write(dir, file, &text)
}

/// Leader election at test speed (lease 3 s, renew deadline 2 s, retry 500 ms).
fn election() -> String {
    format!(
        "[leader_election]\nenabled = true\nnamespace = \"{NS}\"\nlease_name = \"{LEASE}\"\nlease_duration = 3\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n"
    )
}

/// A rule file for the in-process daemon (no HTTP listener): SQS at `endpoint`, `body`.
fn in_process_config(dir: &Path, endpoint: &str, body: &str) -> PathBuf {
    write_template(dir);
    write(dir, "sqscale.toml", &format!("{}{body}", header(endpoint)))
}

async fn cluster(dir: &Path) -> (FakeKube, PathBuf) {
    let kube = FakeKube::start().await;
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    (kube, kubeconfig)
}

/// Jobs created in the namespace, as the fake's log has them (each once).
fn created(kube: &FakeKube) -> usize {
    kube.job_creations(NS).len()
}

/// Jobs of job rule `rule` created so far.
fn created_for(kube: &FakeKube, rule: &str) -> usize {
    kube.job_creations(NS).iter().filter(|(name, _)| name.starts_with(&format!("{rule}-"))).count()
}

/// The Job creations (POSTs to `.../jobs`) the API server received.
fn job_posts(kube: &FakeKube) -> Vec<Captured> {
    kube.requests().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/jobs")).collect()
}

/// The Job deletions the API server received.
fn job_deletes(kube: &FakeKube) -> usize {
    kube.requests().iter().filter(|r| r.method == "DELETE" && r.path.contains("/jobs")).count()
}

/// The `Host` a request was sent to, without its port.
fn host_of(r: &Captured) -> &str {
    let host = r.headers.iter().find(|(k, _)| k == "host").map_or("", |(_, v)| v.as_str());
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.lease(NS, LEASE).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn job_status(d: &Daemon, name: &str) -> JobRuleStatus {
    d.observer.job_statuses().into_iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job rule {name}"))
}

/// `/status` of a daemon process, as JSON.
async fn status_json(port: u16) -> serde_json::Value {
    let (code, body) = http_get(port, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of one series in `/metrics` (absent: 0).
async fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Holds for `d`, checking `check` every 100 ms; false as soon as it fails.
async fn holds_for(d: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if !check() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

// === 1. SIGKILL and restart ===

/// 6 messages, at most 3 Jobs, each working 5 s. The daemon is killed with SIGKILL once
/// it has created the first 3 (they still run, holding their messages in flight) and
/// started again: it counts those 3 from the cluster and waits for them, creating the
/// other 3 only as they finish. A restart that forgot them would create 3 more at once
/// (6 unfinished, 9 created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_and_restarted_counts_the_running_jobs_and_creates_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("jobs-kill").await;
    let work = Behaviour::default().work(Duration::from_secs(5));
    let controller = JobController::start(&kube, Some(queue.clone()), work).await;
    let port = free_port();
    let cfg = process_config(dir.path(), "a.toml", &kubeconfig, port, &job_rule("work", &queue, 3, ""));
    let (log1, log2) = (dir.path().join("1.log"), dir.path().join("2.log"));
    sqs::send(&queue, 6).await;

    let mut first = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log1);
    assert!(wait_until(Duration::from_secs(20), || created(&kube) == 3).await, "{}", read(&log1));
    signal(&first, "-KILL");
    first.wait().unwrap();
    let at_kill = kube.job_counts(NS);
    assert_eq!(at_kill.running, 3, "killed mid-story, with 3 Jobs running: {at_kill:?}");

    let mut second = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log2);
    let done = || controller.stats().deleted == 6 && kube.job_counts(NS).running == 0;
    assert!(wait_until(Duration::from_secs(60), done).await, "{:?}\n{}", controller.stats(), read(&log2));
    // A few more polls on the empty queue: nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(created(&kube), 6, "one Job per message across the restart\n{}", read(&log2));
    assert!(kube.max_jobs_at_once(NS, "sqscale.io/job=work") <= 3, "never more than 3 at once\n{}", read(&log2));
    let status = status_json(port).await;
    assert_eq!(status["jobs"][0]["created_total"], 3, "the restarted daemon created the other 3: {status}");

    signal(&second, "-TERM");
    assert_eq!(second.wait().unwrap().code(), Some(0), "{}", read(&log2));
    controller.stop();
}

// === 2. leader election ===

/// Two instances on one context, A reaching the API server as `127.0.0.1` and B as
/// `localhost` (so the fake tells their requests apart). 8 messages, at most 3 Jobs of 3 s
/// each. Only the leader A creates; it is killed with SIGKILL mid-story, and the standby B
/// takes over after the lease: it counts A's running Jobs and creates the rest. 8 Jobs in
/// all, never more than 3 at once across the failover, and no create of B's before A died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_creates_jobs_and_a_standby_takes_over_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig_a) = cluster(dir.path()).await;
    let kubeconfig_b = dir.path().join("kubeconfig-b");
    std::fs::write(&kubeconfig_b, read(&kubeconfig_a).replace("https://127.0.0.1:", "https://localhost:")).unwrap();
    let queue = sqs::queue("jobs-leader").await;
    let controller =
        JobController::start(&kube, Some(queue.clone()), Behaviour::default().work(Duration::from_secs(3))).await;
    let body = format!("{}{}", election(), job_rule("work", &queue, 3, ""));
    let (port_a, port_b) = (free_port(), free_port());
    let a_cfg = process_config(dir.path(), "a.toml", &kubeconfig_a, port_a, &body);
    let b_cfg = process_config(dir.path(), "b.toml", &kubeconfig_b, port_b, &body);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));

    let mut a = spawn(&["run", "--config", a_cfg.to_str().unwrap()], &[], &log_a);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await, "{}", read(&log_a));
    let mut b = spawn(&["run", "--config", b_cfg.to_str().unwrap()], &[], &log_b);
    // B is up (it logs its campaign) before the story starts.
    assert!(
        wait_until(Duration::from_secs(10), || read(&log_b).contains("leader election on")).await,
        "{}",
        read(&log_b)
    );
    sqs::send(&queue, 8).await;
    assert!(wait_until(Duration::from_secs(20), || created(&kube) >= 3).await, "{}", read(&log_a));
    // Let A run a little into the second round, then kill it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_a: Vec<_> = job_posts(&kube);
    assert!(by_a.iter().all(|r| host_of(r) == "127.0.0.1"), "only the leader creates: {by_a:?}");
    signal(&a, "-KILL");
    a.wait().unwrap();
    let posts_before = job_posts(&kube).len();

    let done = || controller.stats().deleted == 8 && kube.job_counts(NS).running == 0;
    assert!(
        wait_until(Duration::from_secs(60), done).await,
        "{:?} created {}\n{}",
        controller.stats(),
        created(&kube),
        read(&log_b)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = job_posts(&kube);
    assert!(posts[..posts_before].iter().all(|r| host_of(r) == "127.0.0.1"), "B created while A led");
    assert!(posts[posts_before..].iter().all(|r| host_of(r) == "localhost"), "only B creates after A died");
    assert!(posts.len() > posts_before, "B took over and created the rest\n{}", read(&log_b));
    assert_eq!(created(&kube), 8, "one Job per message across the failover\n{}", read(&log_b));
    assert!(kube.max_jobs_at_once(NS, "sqscale.io/job=work") <= 3, "never more than 3 at once");
    assert_eq!(job_deletes(&kube), 0);

    signal(&b, "-TERM");
    assert_eq!(b.wait().unwrap().code(), Some(0), "{}", read(&log_b));
    controller.stop();
}

// === 3. a queue that cannot be read ===

/// Two triggers (max of the two): `main` has the backlog, `side` is deleted. KEDA leaves a
/// failed trigger out and scales on the rest; sqscale creates nothing on a count it does
/// not know: no Job while `side` cannot be read (the reason `poll_failed`, the error
/// naming the queue), and the Jobs `main` asks for once it can be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_created_while_a_queue_cannot_be_read_and_creates_resume_after() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let main = sqs::queue("jobs-main").await;
    let side = sqs::queue("jobs-side").await;
    // The Jobs hold nothing and run long: each message stays visible, and the count of
    // unfinished Jobs only grows by what the daemon creates.
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let mut rule = job_rule("work", &main, 10, "");
    rule.push_str(&format!("[[job.trigger]]\nqueue_url = \"{side}\"\nqueue_length = 1\n"));
    let cfg = in_process_config(dir.path(), &sqs::endpoint(), &rule);
    sqs::send(&main, 2).await;
    let d = Daemon::start(&cfg, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 2).await, "{:?}", job_status(&d, "work"));

    let client = sqs::client().await;
    client.delete_queue().queue_url(&side).send().await.unwrap();
    sqs::send(&main, 3).await;
    let failed = || job_status(&d, "work").last_reason.as_deref() == Some("poll_failed");
    assert!(wait_until(Duration::from_secs(10), failed).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(4), || created(&kube) == 2).await, "created on an unknown count");
    let s = job_status(&d, "work");
    assert_eq!(s.last_reason.as_deref(), Some("poll_failed"), "{s:?}");
    let error = s.last_poll_error.as_ref().map(|e| e.error.clone()).unwrap_or_default();
    let side_name = side.rsplit('/').next().unwrap();
    assert!(error.contains(side_name), "the error names the queue: {s:?}");
    assert!(s.consecutive_failures >= 2, "{s:?}");

    // The queue is back (empty): `main`'s 5 ask for 3 more.
    let name = side_name.to_owned();
    client.create_queue().queue_name(&name).send().await.unwrap();
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 5).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 5).await, "no more than the backlog");
    let s = job_status(&d, "work");
    assert_eq!(s.consecutive_failures, 0, "{s:?}");
    assert_eq!(s.running, Some(5), "{s:?}");
    d.stop().await.unwrap();
}

/// The SQS emulator is killed with SIGKILL while 2 Jobs run: polls fail (`poll_failed`,
/// the error in the status) and create nothing; it starts again, empty, the queue is made
/// again and 4 messages arrive: the daemon reads it again with the same client and
/// creates the 2 more Jobs the backlog asks for beside the 2 running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_created_again_after_the_sqs_endpoint_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let mut moto = crate::support::moto::Moto::start().await;
    let queue = moto.create_queue("jobs-outage").await;
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let cfg = in_process_config(dir.path(), &moto.url(), &job_rule("work", &queue, 10, ""));
    sqs::send_with(&moto.client().await, &queue, 2).await;
    let d = Daemon::start(&cfg, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 2).await, "{:?}", job_status(&d, "work"));

    moto.kill().await;
    let failed = || job_status(&d, "work").last_reason.as_deref() == Some("poll_failed");
    assert!(wait_until(Duration::from_secs(15), failed).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 2).await, "created during the outage");
    let s = job_status(&d, "work");
    assert!(s.last_poll_error.is_some() && s.backlog.values().all(Option::is_none), "{s:?}");

    moto.restart().await;
    assert_eq!(moto.create_queue("jobs-outage").await, queue);
    sqs::send_with(&moto.client().await, &queue, 4).await;
    assert!(wait_until(Duration::from_secs(20), || created(&kube) == 4).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 4).await, "no more than the backlog");
    let s = job_status(&d, "work");
    assert_eq!((s.running, s.consecutive_failures), (Some(4), 0), "{s:?}");
    d.stop().await.unwrap();
}

// === 4. broken watch, failed Jobs list ===

/// How the Jobs watch breaks in [`no_job_on_untrusted_counts`].
#[derive(Clone, Copy, Debug)]
enum Break {
    /// The watch history is compacted past the cache's resource version and every watch
    /// ends: resuming gets 410 Expired, and the cache must list again, which is denied.
    Compacted,
    /// Every watch ends and neither watching nor listing Jobs is allowed any more.
    Refused,
}

/// Two Jobs run (long). Then the Jobs watch breaks (`how`) and the Jobs cannot be listed:
/// while they cannot, 3 new messages create nothing (`counts_untrusted`, the failure in
/// the status, not even a create tried); once listing is allowed again, the 3 Jobs are
/// created, and no more. (A watch that merely ends and resumes where it was loses
/// nothing, and its counts stay trusted: that is not this case.)
async fn no_job_on_untrusted_counts(how: Break) {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("jobs-watch").await;
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let cfg = in_process_config(dir.path(), &sqs::endpoint(), &job_rule("work", &queue, 10, ""));
    sqs::send(&queue, 2).await;
    let d = Daemon::start(&cfg, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 2).await, "{:?}", job_status(&d, "work"));
    let steady = || job_status(&d, "work").last_reason.as_deref() == Some("jobs_exist");
    assert!(wait_until(Duration::from_secs(10), steady).await, "{:?}", job_status(&d, "work"));

    kube.deny("list", "jobs", "");
    match how {
        Break::Compacted => {
            // A write the cache does not watch moves the API server's resource version
            // past the cache's, so the compaction leaves the cache behind.
            kube.add_deployment(NS, "unrelated", 1);
            kube.compact_watch_history();
        }
        Break::Refused => kube.deny("watch", "jobs", ""),
    }
    kube.close_watches();
    sqs::send(&queue, 3).await;
    let untrusted = || job_status(&d, "work").last_reason.as_deref() == Some("counts_untrusted");
    assert!(wait_until(Duration::from_secs(15), untrusted).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(4), || created(&kube) == 2).await, "created on untrusted counts");
    let s = job_status(&d, "work");
    assert_eq!(s.last_reason.as_deref(), Some("counts_untrusted"), "{s:?}");
    let error = s.last_poll_error.as_ref().map(|e| e.error.clone()).unwrap_or_default();
    assert!(error.contains("Jobs in") && error.contains("403"), "the failed list shows, naming what failed: {s:?}");
    assert_eq!(job_posts(&kube).len(), 2, "no create was even tried");

    kube.allow_all();
    assert!(wait_until(Duration::from_secs(20), || created(&kube) == 5).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 5).await, "no duplicate after the re-list");
    let s = job_status(&d, "work");
    assert_eq!(s.running, Some(5), "{s:?}");
    assert_eq!(s.consecutive_failures, 0, "{s:?}");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_created_while_a_compacted_watch_cannot_list_the_jobs_again() {
    no_job_on_untrusted_counts(Break::Compacted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_created_while_an_ended_watch_may_neither_watch_nor_list_again() {
    no_job_on_untrusted_counts(Break::Refused).await;
}

// === 5. a removed job rule ===

/// Job rules `gone` (2 Jobs running) and `kept` (1). A reload drops `gone`: its Jobs are
/// not deleted, `sqscale status` lists them as orphaned, and `kept` does not count them:
/// a second message on its queue makes a second Job of its own (counting `gone`'s
/// 2 would have made 3 running for a backlog of 2, and no create).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_job_rule_leaves_its_jobs_running_listed_as_orphaned_and_counted_for_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let (qa, qb) = (sqs::queue("jobs-gone").await, sqs::queue("jobs-kept").await);
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let port = free_port();
    let both = format!("{}{}", job_rule("gone", &qa, 5, ""), job_rule("kept", &qb, 5, ""));
    let cfg = process_config(dir.path(), "a.toml", &kubeconfig, port, &both);
    let log = dir.path().join("a.log");
    sqs::send(&qa, 2).await;
    sqs::send(&qb, 1).await;
    let mut child = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let ready = || created_for(&kube, "gone") == 2 && created_for(&kube, "kept") == 1;
    assert!(wait_until(Duration::from_secs(20), ready).await, "{}", read(&log));

    process_config(dir.path(), "a.toml", &kubeconfig, port, &job_rule("kept", &qb, 5, ""));
    signal(&child, "-HUP");
    let reloaded = || read(&log).contains("rules reloaded");
    assert!(wait_until(Duration::from_secs(10), reloaded).await, "{}", read(&log));
    sqs::send(&qb, 1).await;
    assert!(wait_until(Duration::from_secs(10), || created_for(&kube, "kept") == 2).await, "{}", read(&log));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 4).await, "{}", read(&log));
    assert_eq!(job_deletes(&kube), 0, "the removed job rule's Jobs are left alone");
    assert_eq!(kube.job_counts(NS).running, 4);

    let status = status_json(port).await;
    let jobs: Vec<&str> = status["jobs"].as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["kept"], "{status}");
    assert_eq!(status["jobs"][0]["running"], 2, "kept counts its own 2 only: {status}");
    let orphans = status["orphaned_jobs"].as_array().unwrap();
    assert_eq!(orphans.len(), 2, "{status}");
    assert!(orphans.iter().all(|o| o["job_rule"] == "gone" && o["finished"] == false), "{status}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .env_remove("SQSCALE_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for (name, _) in kube.job_creations(NS).iter().filter(|(n, _)| n.starts_with("gone-")) {
        let line = format!("orphaned Job {NS}/{name} of removed job rule gone (running)");
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("of removed job rule kept"), "{text}");

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", read(&log));
}

// === 6. check --remote ===

/// `sqscale check --remote ARGS`, off the runtime (the fake API server runs on it).
async fn check_remote(cfg: &Path, kubeconfig: &Path) -> (bool, String) {
    let args = ["check", "--remote", "--config", cfg.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sqscale")).args(&args).env_remove("SQSCALE_CONFIG").output()
    })
    .await
    .unwrap()
    .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `check --remote` asks the API server for each permission a job rule's Jobs need: ok
/// when all are allowed, FAIL naming the verb, resource and namespace when creating Jobs
/// is denied (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_remote_fails_naming_the_denied_create_on_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("jobs-check").await;
    sqs::send(&queue, 2).await;
    let cfg = in_process_config(dir.path(), &sqs::endpoint(), &job_rule("work", &queue, 3, ""));

    let (ok, out) = check_remote(&cfg, &kubeconfig).await;
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.contains("job work:")).unwrap_or_default();
    assert!(line.starts_with("ok    job work:") && line.contains("has 2 messages"), "{out}");

    kube.deny("create", "jobs", "");
    let (ok, out) = check_remote(&cfg, &kubeconfig).await;
    assert!(!ok, "{out}");
    let line = out.lines().find(|l| l.contains("job work:")).unwrap_or_default();
    assert!(line.starts_with("FAIL  job work:"), "{out}");
    assert!(line.contains("not allowed to create jobs in namespace default"), "{out}");
    assert!(!line.contains("not allowed to delete"), "only the denied verb is named: {out}");
    assert_eq!(created(&kube), 0, "check creates nothing");
}

// === 7. a broken template on reload ===

/// A reload whose template is not valid YAML is rejected, naming the template's file and
/// line, and the running job rule keeps creating Jobs from the old template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_on_reload_keeps_the_old_job_rule_creating() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path()).await;
    let queue = sqs::queue("jobs-template").await;
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let port = free_port();
    let cfg = process_config(dir.path(), "a.toml", &kubeconfig, port, &job_rule("work", &queue, 5, ""));
    let log = dir.path().join("a.log");
    sqs::send(&queue, 1).await;
    let mut child = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 1).await, "{}", read(&log));
    let hash = |kube: &FakeKube| {
        kube.jobs(NS).iter().map(|j| j["metadata"]["labels"]["sqscale.io/template-hash"].clone()).collect::<Vec<_>>()
    };
    let before = hash(&kube);

    write(dir.path(), "jobs/work.yaml", "apiVersion: batch/v1\nkind: Job\nspec:\n  template: [unclosed\n");
    signal(&child, "-HUP");
    let failure = "sqscale_config_reloads_total{result=\"failure\"}";
    let mut rejected = false;
    for _ in 0..100 {
        if metric(port, failure).await == 1.0 {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejected, "{}", read(&log));
    let logs = read(&log);
    let line = logs.lines().find(|l| l.contains("work.yaml")).unwrap_or_else(|| panic!("no template named:\n{logs}"));
    assert!(line.contains("work.yaml line 4"), "the file and line are named: {line}");

    sqs::send(&queue, 2).await;
    assert!(wait_until(Duration::from_secs(10), || created(&kube) == 3).await, "{}", read(&log));
    assert!(holds_for(Duration::from_secs(2), || created(&kube) == 3).await);
    let after = hash(&kube);
    assert!(after.iter().all(|h| h == &before[0]), "the old template's Jobs: {after:?}");
    assert_eq!(job_deletes(&kube), 0, "no rollout");
    let status = status_json(port).await;
    assert_eq!(status["jobs"][0]["name"], "work");
    // `/status` and `sqscale status` say the reload was rejected, and why.
    let rejected = &status["reload_rejected"];
    assert!(rejected["file"].as_str().is_some_and(|f| f.ends_with("a.toml")), "{status}");
    assert!(rejected["problems"].to_string().contains("work.yaml line 4"), "{status}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .env_remove("SQSCALE_CONFIG")
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("was rejected; the rules from before run on") && notes.contains("work.yaml line 4"),
        "{notes}"
    );

    // The template mended: the reload applies (the same template: no rollout), and the
    // rejection is no longer shown.
    write_template(dir.path());
    signal(&child, "-HUP");
    let mut cleared = false;
    for _ in 0..100 {
        if status_json(port).await.get("reload_rejected").is_none() {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cleared, "{}", read(&log));
    assert_eq!(job_deletes(&kube), 0, "the mended template is the old one: no rollout");

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", read(&log));
}

// === 8. a rotated bearer token ===

/// The kubeconfig's user is an exec plugin printing the token of a file. The token is
/// rotated (the file first, then the API server, which ends every watch): Jobs are still
/// created for new messages, with the new token, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_exec_plugin_token_does_not_stop_job_creation() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.set_token("token-one");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one").unwrap();
    let script = write(
        dir.path(),
        "get-token.sh",
        &format!(
            "#!/bin/sh\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}' \"$(cat {})\"\n",
            token_file.display()
        ),
    );
    let user = json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh", "args": [script], "interactiveMode": "Never"}});
    let kubeconfig = dir.path().join("kubeconfig");
    crate::support::fake_kube::write_kubeconfig_with_users(&kubeconfig, &[("fake", &kube)], &[user], "fake");
    let queue = sqs::queue("jobs-token").await;
    let _controller = JobController::start(&kube, None, Behaviour::default().work(Duration::from_secs(600))).await;
    let cfg = in_process_config(dir.path(), &sqs::endpoint(), &job_rule("work", &queue, 10, ""));
    sqs::send(&queue, 1).await;
    let d = Daemon::start(&cfg, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(15), || created(&kube) == 1).await, "{:?}", job_status(&d, "work"));

    std::fs::write(&token_file, "token-two").unwrap();
    kube.rotate_token("token-two");
    let rotated = kube.requests().len();
    sqs::send(&queue, 2).await;
    assert!(wait_until(Duration::from_secs(20), || created(&kube) == 3).await, "{:?}", job_status(&d, "work"));
    assert!(holds_for(Duration::from_secs(3), || created(&kube) == 3).await, "{:?}", job_status(&d, "work"));
    let after = kube.requests()[rotated..].to_vec();
    let created_after: Vec<_> =
        after.iter().filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.status == Some(201)).collect();
    assert_eq!(created_after.len(), 2, "created with the new token");
    assert!(created_after.iter().all(|r| r.authorized));
    assert_eq!(job_status(&d, "work").running, Some(3));
    d.stop().await.unwrap();
}
