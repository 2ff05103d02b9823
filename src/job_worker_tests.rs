//! The job worker against in-memory ports: queues by name, and a job rule's Jobs that
//! are created, finish and are deleted as the test says, with every call recorded.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::config::{Config, JobTemplate, QueueSource, Rollout, Standby, TargetRef};
use crate::engine::job::{JobPolicy, JobStatus, JobTrigger, MultipleScalersCalculation, ScalingStrategy};
use crate::engine::{Counts, TriggerPolicy};
use crate::leader::LeadSwitch;
use crate::source::Shared;
use crate::status::Observer;
use crate::supervisor::{ReloadOutcome, Supervisor};
use crate::worker::Clock;
use crate::workload::jobs::SeenJob;
use crate::workload::{ScaleTarget, TargetEvent, TargetView};

/// Queues by name: (visible, in flight), or `None` for "fails"; counts the reads.
#[derive(Default)]
struct FakeQueues {
    counts: Mutex<HashMap<String, Option<(u64, u64)>>>,
    reads: Mutex<u32>,
    /// What each read asked for.
    attrs: Mutex<Vec<Attrs>>,
}

impl FakeQueues {
    fn set(&self, queue: &str, visible: u64, in_flight: u64) {
        self.counts.lock().unwrap().insert(queue.to_owned(), Some((visible, in_flight)));
    }

    fn reads(&self) -> u32 {
        *self.reads.lock().unwrap()
    }
}

impl QueueReader for FakeQueues {
    async fn read(&self, q: &QueueSource, attrs: Attrs) -> Result<Counts, SourceError> {
        *self.reads.lock().unwrap() += 1;
        self.attrs.lock().unwrap().push(attrs);
        match self.counts.lock().unwrap().get(&q.name).copied().flatten() {
            Some((visible, in_flight)) => Ok(Counts { visible, in_flight, delayed: 0 }),
            None => Err(SourceError::new(&q.name, SourceErrorKind::Unreachable, "scripted failure")),
        }
    }
}

/// The Jobs of every job rule, as a synced cache would show them (or not: `untrusted`).
#[derive(Default)]
struct FakeJobs(Mutex<Jobs>);

#[derive(Default)]
struct Jobs {
    /// (job rule, Job), in creation order.
    jobs: Vec<(String, SeenJob)>,
    untrusted: bool,
    /// The Jobs cannot be read at all.
    fail_reads: bool,
    fail_creates: bool,
    /// Creates fail as throttled (the write budget had no token in time).
    throttle_creates: bool,
    create_calls: u32,
    created: u32,
    /// Every delete asked for: (Job, propagation).
    deletes: Vec<(String, Propagation)>,
    fail_delete: Option<String>,
    /// After this many creates, the lease is lost.
    lose_after: Option<(u32, LeadSwitch)>,
    /// The job rules of each `watch_jobs`.
    watched: Vec<Vec<String>>,
}

impl FakeJobs {
    fn with<R>(&self, f: impl FnOnce(&mut Jobs) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }

    fn add(&self, rule: &str, name: &str, hash: &str, status: JobStatus, finished_at: Option<i64>) {
        let job = SeenJob {
            name: name.to_owned(),
            template_hash: Some(hash.to_owned()),
            status,
            finished_at: finished_at.map(Time),
            created_at: None,
        };
        self.with(|s| s.jobs.push((rule.to_owned(), job)));
    }

    fn unfinished(&self, rule: &str) -> u32 {
        self.with(|s| {
            s.jobs.iter().filter(|(r, j)| r == rule && matches!(j.status, JobStatus::Unfinished { .. })).count() as u32
        })
    }

    /// Finishes the `n` oldest unfinished Jobs of `rule` (Complete at `at`).
    fn finish(&self, rule: &str, n: u32, at: i64) -> u32 {
        self.with(|s| {
            let mut done = 0;
            for (r, j) in &mut s.jobs {
                if done < n && r == rule && matches!(j.status, JobStatus::Unfinished { .. }) {
                    (j.status, j.finished_at) = (JobStatus::Complete, Some(Time(at)));
                    done += 1;
                }
            }
            done
        })
    }

    fn names(&self, rule: &str) -> Vec<String> {
        self.with(|s| s.jobs.iter().filter(|(r, _)| r == rule).map(|(_, j)| j.name.clone()).collect())
    }
}

impl JobTarget for FakeJobs {
    async fn jobs(&self, rule: &JobRule) -> Result<Option<JobsSnapshot>, TargetError> {
        let s = self.0.lock().unwrap();
        if s.fail_reads {
            return Err(TargetError::new("Jobs of jobs/encode", TargetErrorKind::Unreachable, "connection refused"));
        }
        if s.untrusted {
            return Ok(None);
        }
        let jobs = s.jobs.iter().filter(|(r, _)| *r == rule.name).map(|(_, j)| j.clone()).collect();
        Ok(Some(JobsSnapshot { jobs, created_unseen: 0 }))
    }

    async fn create_job(&self, rule: &JobRule, lead: &Leadership) -> Result<String, TargetError> {
        let mut s = self.0.lock().unwrap();
        s.create_calls += 1;
        // The adapter's fence: nothing is sent without the lease.
        if lead.budget(Duration::from_secs(1)).is_none() {
            return Err(TargetError::new("jobs", TargetErrorKind::Other, "not leading"));
        }
        if s.throttle_creates {
            let message = "creating a Job: no write allowed within 5s by [kubernetes] qps and burst";
            return Err(TargetError::new("jobs", TargetErrorKind::Throttled, message));
        }
        if s.fail_creates {
            let message = "jobs.batch is forbidden: User \"sqscale\" cannot create resource \"jobs\"";
            return Err(TargetError::new(
                format!("Jobs of {}/{}", rule.namespace, rule.name),
                TargetErrorKind::Forbidden,
                message,
            ));
        }
        s.created += 1;
        let name = format!("{}-{}", rule.name, s.created);
        let job = SeenJob {
            name: name.clone(),
            template_hash: Some(rule.template.hash.clone()),
            status: JobStatus::Unfinished { pending: true },
            finished_at: None,
            created_at: None,
        };
        s.jobs.push((rule.name.clone(), job));
        if let Some((n, switch)) = &s.lose_after
            && s.created >= *n
        {
            switch.lose();
        }
        Ok(name)
    }

    async fn delete_job(
        &self,
        rule: &JobRule,
        name: &str,
        propagation: Propagation,
        _lead: &Leadership,
    ) -> Result<(), TargetError> {
        let mut s = self.0.lock().unwrap();
        s.deletes.push((name.to_owned(), propagation));
        if s.fail_delete.as_deref() == Some(name) {
            return Err(TargetError::new(
                format!("Job {name}"),
                TargetErrorKind::ServerError,
                "etcdserver: request timed out",
            ));
        }
        s.jobs.retain(|(r, j)| !(*r == rule.name && j.name == name));
        Ok(())
    }

    fn watch_jobs(&self, rules: &[&JobRule]) {
        self.with(|s| s.watched.push(rules.iter().map(|r| r.name.clone()).collect()));
    }

    fn orphaned_jobs(&self, running: &[&JobRule]) -> Vec<(String, String, String, bool)> {
        self.with(|s| {
            s.jobs
                .iter()
                .filter(|(r, _)| !running.iter().any(|j| j.name == *r))
                .map(|(r, j)| {
                    ("jobs".to_owned(), r.clone(), j.name.clone(), !matches!(j.status, JobStatus::Unfinished { .. }))
                })
                .collect()
        })
    }
}

/// No `/scale` targets here: the supervisor needs the port, no rule uses it.
impl ScaleTarget for FakeJobs {
    async fn read(&self, _: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        Err(TargetError::new(t.to_string(), TargetErrorKind::NotFound, "no targets in this test"))
    }

    async fn scale(&self, _: Option<&str>, t: &TargetRef, _: u32, _: Option<&str>) -> Result<(), TargetError> {
        Err(TargetError::new(t.to_string(), TargetErrorKind::NotFound, "no targets in this test"))
    }

    async fn set_last_active(
        &self,
        _: Option<&str>,
        _: &TargetRef,
        _: Time,
        _: &Leadership,
    ) -> Result<(), TargetError> {
        Ok(())
    }

    async fn publish(&self, _: Option<&str>, _: &TargetRef, _: &TargetEvent) -> Result<(), TargetError> {
        Ok(())
    }
}

const INTERVAL: Duration = Duration::from_secs(10);

/// A job rule reading queue `queue` (one message per Job, in-flight counted), at most
/// `max` Jobs, template hash `h1`, history limits of 100.
fn job_rule(name: &str, queue: &str, max: u32) -> JobRule {
    JobRule {
        name: name.to_owned(),
        namespace: "jobs".to_owned(),
        context: None,
        polling_interval: INTERVAL,
        template: Arc::new(JobTemplate {
            path: "encode.yaml".into(),
            job: json!({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": []}}}}),
            hash: "h1".to_owned(),
        }),
        rollout: Rollout::default(),
        group: None,
        priority: 0,
        pending_pod_conditions: Vec::new(),
        policy: JobPolicy {
            min_replica_count: 0,
            max_replica_count: Some(max),
            strategy: ScalingStrategy::Default,
            multiple_scalers_calculation: MultipleScalersCalculation::Max,
            finished_job_grace: Duration::ZERO,
            successful_jobs_history_limit: 100,
            failed_jobs_history_limit: 100,
            paused: false,
            triggers: vec![JobTrigger { queue_length: 1, activation_queue_length: 0 }],
        },
        trigger_policies: vec![TriggerPolicy {
            name: None,
            queue_length: 1,
            activation_queue_length: 0,
            scale_on_in_flight: true,
            scale_on_delayed: false,
            metric_type: Default::default(),
        }],
        triggers: vec![QueueSource {
            url: Some(format!("https://sqs.us-east-1.amazonaws.com/1/{queue}")),
            name: queue.to_owned(),
            region: "us-east-1".to_owned(),
            endpoint: None,
            profile: None,
            role_arn: None,
            external_id: None,
            direct: false,
        }],
        schedules: Vec::new(),
    }
}

fn fakes(dry_run: bool) -> Deps<FakeQueues, FakeJobs> {
    Deps {
        queues: Arc::new(Shared::new(FakeQueues::default())),
        targets: Arc::new(FakeJobs::default()),
        clock: Clock::tokio(),
        dry_run,
        call_timeout: Duration::from_secs(5),
        observer: Arc::new(Observer::new()),
    }
}

/// A worker of `rule` on `deps`, with no rollout owed unless `rollout`.
fn worker(
    rule: JobRule,
    deps: &Arc<Deps<FakeQueues, FakeJobs>>,
    lead: Leadership,
    rollout: bool,
) -> JobWorker<FakeQueues, FakeJobs> {
    let rule = Arc::new(rule);
    deps.observer.jobs_loaded(std::slice::from_ref(&rule));
    deps.queues.set_needs_of(&[], std::slice::from_ref(&rule));
    JobWorker::new(rule, deps.clone(), lead, Arc::new(AtomicBool::new(rollout)))
}

/// One tick, then the polling interval (so the next read is not the shared one).
async fn tick(w: &mut JobWorker<FakeQueues, FakeJobs>) {
    w.turn().await;
    tokio::time::advance(INTERVAL).await;
}

fn series(metrics: &str, prefix: &str) -> Vec<String> {
    metrics.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
}

/// Twelve messages, one per Job, at most four at a time; Jobs finish one or two per
/// poll, each taking its message with it. Over the whole run no poll leaves more than
/// the cap unfinished, every message gets exactly one Job, and history cleanup keeps
/// two Complete Jobs.
#[tokio::test(start_paused = true)]
async fn the_cap_holds_over_many_polls_as_jobs_finish() {
    let deps = Arc::new(fakes(false));
    let mut rule = job_rule("encode", "q", 4);
    rule.policy.successful_jobs_history_limit = 2;
    let mut w = worker(rule, &deps, Leadership::unelected(), false);
    let (queues, jobs) = (deps.queues.inner(), deps.targets.clone());
    let mut remaining = 12u64;
    for round in 0..40 {
        // Unfinished Jobs hold their message in flight.
        let held = u64::from(jobs.unfinished("encode")).min(remaining);
        queues.set("q", remaining - held, held);
        tick(&mut w).await;
        let unfinished = jobs.unfinished("encode");
        assert!(unfinished <= 4, "round {round}: {unfinished} unfinished Jobs, the cap is 4");
        let done = jobs.finish("encode", 1 + round % 2, 1_000 + i64::from(round));
        remaining -= u64::from(done);
    }
    assert_eq!(remaining, 0);
    let status = &deps.observer.job_statuses()[0];
    assert_eq!(status.created_total, 12, "one Job per message: {status:?}");
    assert_eq!(status.deleted.history, 10, "twelve Complete, two kept");
    assert_eq!(jobs.names("encode").len(), 2);
    assert!(jobs.with(|s| s.deletes.iter().all(|(_, p)| *p == Propagation::Background)));
    assert_eq!(status.cap, 4);
    let m = deps.observer.encode_metrics();
    assert_eq!(series(&m, "sqscale_jobs_created_total{"), ["sqscale_jobs_created_total{job=\"encode\"} 12"]);
    assert_eq!(series(&m, "sqscale_jobs_running{"), ["sqscale_jobs_running{job=\"encode\"} 0"]);
    assert!(m.contains("sqscale_jobs_deleted_total{job=\"encode\",reason=\"history\"} 10"), "{m}");
    assert!(m.contains("sqscale_job_rules 1"), "{m}");
}

/// Each strategy once, through the worker, on one situation: 5 messages, 3 Jobs
/// unfinished of which 1 pending, a max of 10. Default: 5 - 3 = 2; custom (d = 1,
/// p = 0.5): 5 - 1 - 1 = 3; accurate: min(10 - 3, 5 - 1) = 4; eager: min(10 - 3 - 1, 5)
/// = 5 (spec §5).
#[tokio::test(start_paused = true)]
async fn each_strategy_creates_what_the_spec_says() {
    let custom = ScalingStrategy::Custom { queue_length_deduction: 1, running_job_percentage: 0.5 };
    for (strategy, want) in
        [(ScalingStrategy::Default, 2), (custom, 3), (ScalingStrategy::Accurate, 4), (ScalingStrategy::Eager, 5)]
    {
        let deps = Arc::new(fakes(false));
        let mut rule = job_rule("encode", "q", 10);
        rule.policy.strategy = strategy;
        deps.queues.inner().set("q", 5, 0);
        let jobs = &deps.targets;
        jobs.add("encode", "encode-a", "h1", JobStatus::Unfinished { pending: false }, None);
        jobs.add("encode", "encode-b", "h1", JobStatus::Unfinished { pending: false }, None);
        jobs.add("encode", "encode-c", "h1", JobStatus::Unfinished { pending: true }, None);
        let mut w = worker(rule, &deps, Leadership::unelected(), false);
        tick(&mut w).await;
        assert_eq!(jobs.with(|s| s.create_calls), want, "{strategy:?}");
        let status = &deps.observer.job_statuses()[0];
        assert_eq!((status.created_last_poll, status.running, status.pending), (want, Some(3 + want), Some(1 + want)));
        assert_eq!(status.backlog.values().copied().collect::<Vec<_>>(), [Some(5)]);
    }
}

/// Counts the caches cannot vouch for create nothing and delete nothing, whatever the
/// backlog and the history (spec §10.5a).
#[tokio::test(start_paused = true)]
async fn an_untrusted_snapshot_creates_and_deletes_nothing() {
    let deps = Arc::new(fakes(false));
    let mut rule = job_rule("encode", "q", 10);
    rule.policy.successful_jobs_history_limit = 0;
    deps.queues.inner().set("q", 7, 0);
    deps.targets.add("encode", "encode-old", "h1", JobStatus::Complete, Some(1_000));
    deps.targets.with(|s| s.untrusted = true);
    let mut w = worker(rule, &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.deletes.len())), (0, 0));
    let status = &deps.observer.job_statuses()[0];
    assert_eq!((status.last_reason.as_deref(), status.running), (Some("counts_untrusted"), None));
    assert_eq!(status.polls, 2);

    // Once synced, the same poll creates and cleans up.
    deps.targets.with(|s| s.untrusted = false);
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.deletes.len())), (7, 1));
}

/// A create the API server refuses is logged, shown in `/status` and counted, the
/// poll's other creates are still tried, and nothing is tried again until the next
/// poll, which decides again.
#[tokio::test(start_paused = true)]
async fn a_failed_create_is_reported_and_tried_again_at_the_next_poll_only() {
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 3, 0);
    deps.targets.with(|s| s.fail_creates = true);
    let mut w = worker(job_rule("encode", "q", 10), &deps, Leadership::unelected(), false);
    w.turn().await;
    assert_eq!(deps.targets.with(|s| s.create_calls), 3, "each of the poll's creates once");
    let status = &deps.observer.job_statuses()[0];
    let error = status.last_create_error.as_ref().expect("the create error is shown");
    assert!(error.error.contains("jobs.batch is forbidden"), "{error:?}");
    assert_eq!((status.created_total, status.consecutive_failures), (0, 1));
    let m = deps.observer.encode_metrics();
    assert_eq!(
        series(&m, "sqscale_poll_errors_total{"),
        ["sqscale_poll_errors_total{job=\"encode\",source=\"kubernetes\"} 3"]
    );

    // Half an interval later: still three calls, nothing retried in between.
    tokio::time::advance(INTERVAL / 2).await;
    assert_eq!(deps.targets.with(|s| s.create_calls), 3);
    tokio::time::advance(INTERVAL / 2).await;
    deps.targets.with(|s| s.fail_creates = false);
    w.turn().await;
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.created)), (6, 3));
    let status = &deps.observer.job_statuses()[0];
    assert_eq!((status.created_total, status.last_create_error.as_ref()), (3, None));
}

/// A create throttled by the write budget ends the poll's creates: the next would wait
/// as long for a token and fail the same way. The next poll tries again.
#[tokio::test(start_paused = true)]
async fn a_throttled_create_leaves_the_polls_other_creates_to_the_next_poll() {
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 3, 0);
    deps.targets.with(|s| s.throttle_creates = true);
    let mut w = worker(job_rule("encode", "q", 10), &deps, Leadership::unelected(), false);
    w.turn().await;
    assert_eq!(deps.targets.with(|s| s.create_calls), 1, "one throttled create, then none in this poll");
    let status = &deps.observer.job_statuses()[0];
    let error = status.last_create_error.as_ref().expect("the throttled create is shown");
    assert!(error.error.contains("qps and burst"), "{error:?}");
    tokio::time::advance(INTERVAL).await;
    deps.targets.with(|s| s.throttle_creates = false);
    w.turn().await;
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.created)), (4, 3), "the next poll creates all three");
}

/// A lease lost in the middle of a poll's creates ends them (spec §12.10): the next
/// leader counts again.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_creates() {
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 5, 0);
    let mut rule = job_rule("encode", "q", 10);
    rule.policy.successful_jobs_history_limit = 0;
    deps.targets.add("encode", "encode-done", "h1", JobStatus::Complete, Some(1_000));
    let (switch, lead) = LeadSwitch::new(Standby::Warm);
    switch.lead_for(Duration::from_secs(60));
    // The fake loses the lease after the second create.
    deps.targets.with(|s| s.lose_after = Some((2, switch)));
    let mut w = worker(rule, &deps, lead, false);
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| s.create_calls), 2, "no create after the lease was lost");
    assert!(deps.targets.with(|s| s.deletes.is_empty()), "nor any delete");
    assert_eq!(deps.observer.job_statuses()[0].created_total, 2);
}

/// A paused job rule reads no queue, creates nothing and deletes nothing (spec §8); a
/// dry run reads and decides but writes nothing.
#[tokio::test(start_paused = true)]
async fn paused_makes_no_call_and_a_dry_run_no_write() {
    for dry_run in [false, true] {
        let deps = Arc::new(fakes(dry_run));
        let mut rule = job_rule("encode", "q", 10);
        rule.policy.paused = !dry_run;
        rule.policy.successful_jobs_history_limit = 0;
        deps.queues.inner().set("q", 5, 0);
        deps.targets.add("encode", "encode-done", "h1", JobStatus::Complete, Some(1_000));
        let mut w = worker(rule, &deps, Leadership::unelected(), true);
        tick(&mut w).await;
        tick(&mut w).await;
        assert_eq!(deps.targets.with(|s| (s.create_calls, s.deletes.len())), (0, 0), "dry run {dry_run}");
        let status = &deps.observer.job_statuses()[0];
        if dry_run {
            assert_eq!(deps.queues.inner().reads(), 2);
            assert_eq!(status.last_reason.as_deref(), Some("created"), "decided, not written");
        } else {
            assert_eq!(deps.queues.inner().reads(), 0, "no SQS call while paused");
            assert!(status.paused);
            assert_eq!((status.last_reason.as_deref(), status.polls), (Some("paused"), 2));
        }
    }
}

/// Rollout `default` (spec §7): before the first poll, once the counts are trusted,
/// every Job of another template (or none) goes, finished ones included, with the rule's
/// propagation; Jobs of the running template stay. `gradual` deletes none, and a
/// standby leaves the rollout to the leader.
#[tokio::test(start_paused = true)]
async fn a_rollout_deletes_the_old_templates_jobs_with_the_rules_propagation() {
    let setup = |deps: &Deps<FakeQueues, FakeJobs>| {
        let jobs = &deps.targets;
        jobs.add("encode", "encode-old-running", "h0", JobStatus::Unfinished { pending: false }, None);
        jobs.add("encode", "encode-old-done", "h0", JobStatus::Complete, Some(1_000));
        jobs.add("encode", "encode-current", "h1", JobStatus::Unfinished { pending: false }, None);
        jobs.with(|s| {
            s.jobs.push((
                "encode".to_owned(),
                SeenJob {
                    name: "encode-unlabelled".to_owned(),
                    template_hash: None,
                    status: JobStatus::Failed,
                    finished_at: None,
                    created_at: None,
                },
            ))
        });
        deps.queues.inner().set("q", 0, 0);
    };
    let mut rule = job_rule("encode", "q", 10);
    rule.rollout = Rollout { strategy: RolloutStrategy::Default, propagation_policy: Propagation::Foreground };

    let deps = Arc::new(fakes(false));
    setup(&deps);
    deps.targets.with(|s| s.untrusted = true);
    let mut w = worker(rule.clone(), &deps, Leadership::unelected(), true);
    tick(&mut w).await;
    assert!(deps.targets.with(|s| s.deletes.is_empty()), "waits for trusted counts");
    assert_eq!(deps.queues.inner().reads(), 0, "and polls nothing meanwhile");
    deps.targets.with(|s| s.untrusted = false);
    tick(&mut w).await;
    let deletes = deps.targets.with(|s| s.deletes.clone());
    assert_eq!(
        deletes,
        [
            ("encode-old-running".to_owned(), Propagation::Foreground),
            ("encode-old-done".to_owned(), Propagation::Foreground),
            ("encode-unlabelled".to_owned(), Propagation::Foreground),
        ]
    );
    assert_eq!(deps.targets.names("encode"), ["encode-current"]);
    assert_eq!(deps.queues.inner().reads(), 1, "then the first poll");
    assert_eq!(deps.observer.job_statuses()[0].deleted.rollout, 3);
    assert!(!w.rollout.load(Ordering::Acquire));
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| s.deletes.len()), 3, "once");

    rule.rollout.strategy = RolloutStrategy::Gradual;
    let deps = Arc::new(fakes(false));
    setup(&deps);
    let mut w = worker(rule.clone(), &deps, Leadership::unelected(), true);
    tick(&mut w).await;
    assert!(deps.targets.with(|s| s.deletes.is_empty()), "gradual lets them finish");
    assert_eq!(deps.observer.job_statuses()[0].running, Some(2), "and they still count");

    rule.rollout.strategy = RolloutStrategy::Default;
    let deps = Arc::new(fakes(false));
    setup(&deps);
    let (switch, lead) = LeadSwitch::new(Standby::Warm);
    let mut w = worker(rule, &deps, lead, true);
    tick(&mut w).await;
    assert!(deps.targets.with(|s| s.deletes.is_empty()), "a standby deletes nothing");
    assert!(w.rollout.load(Ordering::Acquire), "the rollout is still owed");
    switch.lead_for(Duration::from_secs(60));
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| s.deletes.len()), 3, "the new leader rolls out");
}

/// History cleanup keeps each kind's newest `*_jobs_history_limit` Jobs and deletes the
/// rest with Background propagation, Complete ones first; the first failed delete ends
/// it (KEDA's order, spec §4.1), and shows in `/status` and the metrics.
#[tokio::test(start_paused = true)]
async fn cleanup_deletes_by_the_limits_and_stops_at_the_first_failure() {
    let setup = |deps: &Deps<FakeQueues, FakeJobs>| {
        let jobs = &deps.targets;
        jobs.add("encode", "c3", "h1", JobStatus::Complete, Some(3_000));
        jobs.add("encode", "c1", "h1", JobStatus::Complete, Some(1_000));
        jobs.add("encode", "c2", "h1", JobStatus::Complete, Some(2_000));
        jobs.add("encode", "f1", "h1", JobStatus::Failed, Some(1_500));
        jobs.add("encode", "f2", "h1", JobStatus::Failed, Some(2_500));
        jobs.add("encode", "running", "h1", JobStatus::Unfinished { pending: false }, None);
        deps.queues.inner().set("q", 0, 1);
    };
    let mut rule = job_rule("encode", "q", 10);
    (rule.policy.successful_jobs_history_limit, rule.policy.failed_jobs_history_limit) = (1, 0);

    let deps = Arc::new(fakes(false));
    setup(&deps);
    let mut w = worker(rule.clone(), &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    let deletes: Vec<(String, Propagation)> = deps.targets.with(|s| s.deletes.clone());
    let names: Vec<&str> = deletes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "f1", "f2"]);
    assert!(deletes.iter().all(|(_, p)| *p == Propagation::Background));
    assert_eq!(deps.targets.names("encode"), ["c3", "running"]);
    assert_eq!(deps.observer.job_statuses()[0].deleted.history, 4);

    let deps = Arc::new(fakes(false));
    setup(&deps);
    deps.targets.with(|s| s.fail_delete = Some("c1".to_owned()));
    let mut w = worker(rule, &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| s.deletes.len()), 1, "stopped at the first failure");
    let status = &deps.observer.job_statuses()[0];
    assert!(status.last_delete_error.as_ref().is_some_and(|e| e.error.contains("etcdserver")), "{status:?}");
    assert_eq!(status.deleted.history, 0);
    let m = deps.observer.encode_metrics();
    assert!(m.contains("sqscale_poll_errors_total{job=\"encode\",source=\"kubernetes\"} 1"), "{m}");
    // The next poll tries again, from the oldest.
    deps.targets.with(|s| s.fail_delete = None);
    tick(&mut w).await;
    assert_eq!(deps.targets.names("encode"), ["c3", "running"]);
    assert_eq!(deps.observer.job_statuses()[0].last_delete_error, None);
}

fn config(jobs: Vec<JobRule>) -> Config {
    let mut config = crate::config::from_str(
        "[[rule]]\nname = \"r\"\ntarget = { kind = \"Deployment\", name = \"d\" }\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\nqueue_length = 5\n",
    )
    .unwrap();
    config.rules.clear();
    config.jobs = jobs;
    config
}

/// A reload matches job rules by name, as rules: an unchanged one keeps its task and
/// its schedule (no poll at the reload); a removed one stops, its Jobs are left alone
/// and `/status` names them as orphaned; a changed template restarts the job rule and
/// rolls out before its first poll.
#[tokio::test(start_paused = true)]
async fn a_reload_keeps_unchanged_job_rules_and_leaves_a_removed_ones_jobs() {
    let deps = fakes(false);
    let (queues, jobs, observer) = (deps.queues.clone(), deps.targets.clone(), deps.observer.clone());
    queues.inner().set("qa", 0, 0);
    queues.inner().set("qb", 1, 0);
    let (a, b) = (job_rule("a", "qa", 10), job_rule("b", "qb", 10));
    let mut sup = Supervisor::start(config(vec![a.clone(), b.clone()]), deps);
    assert_eq!(sup.job_count(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls = |name: &str| observer.job_statuses().iter().find(|s| s.name == name).map(|s| s.polls);
    assert_eq!((polls("a"), polls("b")), (Some(1), Some(1)));
    assert_eq!(jobs.names("b"), ["b-1"], "b made a Job for its message");
    // a's template changes on a later reload: a Job of it from before.
    jobs.add("a", "a-old", "h1", JobStatus::Unfinished { pending: false }, None);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = sup.reload(Ok(config(vec![a.clone()])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 1, changed: 0, unchanged: 1 });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(polls("a"), Some(1), "unchanged: no restart, no poll at the reload");
    assert_eq!(polls("b"), None, "b's record is gone");
    assert_eq!(jobs.names("b"), ["b-1"], "b's Job is left to finish");
    assert!(jobs.with(|s| s.deletes.is_empty()));
    let orphans = observer.orphaned_jobs();
    assert_eq!(orphans.len(), 1);
    assert_eq!((orphans[0].job_rule.as_str(), orphans[0].name.as_str(), orphans[0].finished), ("b", "b-1", false));
    assert_eq!(jobs.with(|s| s.watched.last().cloned()), Some(vec!["a".to_owned()]));
    let lines = crate::status::job_lines(&observer.job_statuses(), &orphans);
    assert!(lines.contains("orphaned Job jobs/b-1 of removed job rule b (running)"), "{lines}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(polls("a"), Some(2), "on its old schedule");

    // A change of another key (the max) restarts the job rule but kills nothing, even
    // a Job of another template (spec §12.6).
    jobs.add("a", "a-h0", "h0", JobStatus::Unfinished { pending: false }, None);
    let mut a_max = a.clone();
    a_max.policy.max_replica_count = Some(5);
    let outcome = sup.reload(Ok(config(vec![a_max.clone()])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(polls("a"), Some(3), "the changed rule polls at once");
    assert!(jobs.with(|s| s.deletes.is_empty()), "no rollout for a change of the max");

    let mut a2 = a_max.clone();
    a2.template = Arc::new(JobTemplate { hash: "h2".to_owned(), ..(*a.template).clone() });
    let outcome = sup.reload(Ok(config(vec![a2])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        jobs.with(|s| s.deletes.clone()),
        [("a-old".to_owned(), Propagation::Background), ("a-h0".to_owned(), Propagation::Background)]
    );
    assert_eq!(polls("a"), Some(4), "the changed template polls at once, after its rollout");
    let (_tx, mut rx) = tokio::sync::mpsc::channel(1);
    sup.shutdown(Duration::from_secs(5), &mut rx).await.unwrap();
}

/// Idle job rules hold their task's future for good, as rules do: it stays small.
#[tokio::test]
async fn a_job_task_is_small() {
    let rule = Arc::new(job_rule("encode", "q", 10));
    let deps = Arc::new(Deps {
        queues: Arc::new(Shared::new(crate::source::sqs::Sqs::new(Duration::from_secs(5)))),
        targets: Arc::new(crate::workload::kube::Kube::new(None, None, Duration::from_secs(5))),
        clock: Clock::system(),
        dry_run: false,
        call_timeout: Duration::from_secs(5),
        observer: Arc::new(Observer::new()),
    });
    let task = run(
        rule.clone(),
        deps.clone(),
        Leadership::unelected(),
        CancellationToken::new(),
        Instant::now(),
        Arc::new(AtomicBool::new(true)),
    );
    let size = std::mem::size_of_val(&task);
    println!("job task future: {size} bytes");
    assert!(size <= 512, "a job rule's task future is {size} bytes");
    let mut worker = JobWorker::new(rule, deps, Leadership::unelected(), Arc::new(AtomicBool::new(false)));
    let size = std::mem::size_of_val(&worker.turn());
    println!("turn future: {size} bytes");
    assert!(size <= 1536, "a job rule's turn future is {size} bytes");
}

/// An open `[[job.schedule]]` window's max caps the creates and its pause stops the
/// polls, as a rule's schedules do; with the window closed, the rule's own numbers.
#[tokio::test(start_paused = true)]
async fn an_open_schedule_window_sets_the_max_and_the_pause() {
    use crate::engine::schedule::{Schedule, parse_cron, time_zone};
    let window = |max: Option<u32>, paused: bool| Schedule {
        pattern: "* * * * *".to_owned(),
        cron: parse_cron("* * * * *").unwrap(),
        timezone: "UTC".to_owned(),
        tz: time_zone("UTC").unwrap(),
        duration: Duration::from_secs(3600),
        min: None,
        max,
        paused,
    };
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 5, 0);
    let mut rule = job_rule("encode", "q", 10);
    rule.schedules = vec![window(Some(2), false)];
    let mut w = worker(rule.clone(), &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| s.create_calls), 2, "the window's max");

    rule.schedules = vec![window(None, true)];
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 5, 0);
    let mut w = worker(rule.clone(), &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    assert_eq!((deps.queues.inner().reads(), deps.targets.with(|s| s.create_calls)), (0, 0), "paused by the window");

    rule.schedules.clear();
    assert!(matches!(policy_at(&rule, Time(0)), std::borrow::Cow::Borrowed(_)), "no window: the rule's own");
}

/// Job rules in a `[[group]]`: their unfinished Jobs are their replicas in its ledger,
/// and their creates are a step up the group must grant. Nobody grows until every
/// member has reported; then the higher priority takes the free capacity first, and
/// the group's Jobs never exceed its max.
#[tokio::test(start_paused = true)]
async fn a_job_rule_in_a_group_creates_what_the_group_grants() {
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("qa", 10, 0);
    deps.queues.inner().set("qb", 10, 0);
    let (mut a, mut b) = (job_rule("a", "qa", 10), job_rule("b", "qb", 10));
    (a.group, a.priority, b.group) = (Some("gpu".to_owned()), 10, Some("gpu".to_owned()));
    let group = crate::config::Group { name: "gpu".to_owned(), max_replicas: 6 };
    deps.observer.groups().configure_with_jobs(&[group], [], [&a, &b]);
    let mut wa = worker(a, &deps, Leadership::unelected(), false);
    // `worker` loads one record at a time: b's record replaces a's, so report to both.
    let rb = Arc::new(b);
    deps.observer.jobs_loaded(&[wa.rule.clone(), rb.clone()]);
    deps.queues.set_needs_of(&[], &[wa.rule.clone(), rb.clone()]);
    wa.record = deps.observer.job_record("a");
    let mut wb = JobWorker::new(rb, deps.clone(), Leadership::unelected(), Arc::new(AtomicBool::new(false)));

    wa.turn().await;
    assert_eq!(deps.targets.unfinished("a"), 0, "b has not reported yet");
    wb.turn().await;
    assert_eq!(deps.targets.unfinished("b"), 0, "a's claim comes first");
    tokio::time::advance(INTERVAL).await;
    wa.turn().await;
    assert_eq!(deps.targets.unfinished("a"), 6, "the group's free capacity");
    wb.turn().await;
    assert_eq!(deps.targets.unfinished("b"), 0);
    let reasons: Vec<Option<String>> = deps.observer.job_statuses().into_iter().map(|j| j.last_reason).collect();
    // a asked for 10 and got 6, b asked for 10 and got none.
    assert_eq!(reasons, [Some("group_capped".to_owned()), Some("group_capped".to_owned())]);
    let status = &deps.observer.groups().statuses()[0];
    assert_eq!(status.replicas, 6);
    let members: Vec<(&str, Option<u32>)> = status.members.iter().map(|m| (m.rule.as_str(), m.replicas)).collect();
    assert_eq!(members, [("job a", Some(6)), ("job b", Some(0))]);

    // Two of a's Jobs finish: b (lower priority) may take them once a's claim is met.
    deps.targets.finish("a", 2, 1_000);
    deps.queues.inner().set("qa", 4, 0);
    tokio::time::advance(INTERVAL).await;
    wa.turn().await;
    wb.turn().await;
    assert_eq!(deps.targets.unfinished("a") + deps.targets.unfinished("b"), 6, "never above the group's max");
    assert_eq!(deps.targets.unfinished("b"), 2);
}

/// What `/status` serves of a job rule is what `sqscale status` reads and prints: one
/// line per job rule with its counts, reason and last errors, then the orphaned Jobs.
#[tokio::test(start_paused = true)]
async fn status_shows_a_job_rule_as_sqscale_status_prints_it() {
    let deps = Arc::new(fakes(false));
    deps.queues.inner().set("q", 3, 2);
    deps.targets.add("encode", "encode-a", "h1", JobStatus::Unfinished { pending: false }, None);
    deps.targets.add("gone", "gone-1", "h1", JobStatus::Complete, Some(1_000));
    let mut w = worker(job_rule("encode", "q", 4), &deps, Leadership::unelected(), false);
    tick(&mut w).await;
    deps.queues.inner().set("q", 6, 3);
    tick(&mut w).await;
    deps.observer.set_orphans({
        let jobs = deps.targets.clone();
        let rule = w.rule.clone();
        move || {
            jobs.orphaned_jobs(&[&*rule])
                .into_iter()
                .map(|(namespace, job_rule, name, finished)| crate::status::OrphanedJob {
                    namespace,
                    job_rule,
                    name,
                    finished,
                })
                .collect()
        }
    });
    let body =
        json!({"rules": [], "jobs": deps.observer.job_statuses(), "orphaned_jobs": deps.observer.orphaned_jobs()});
    let status: crate::status::Status = serde_json::from_value(body).unwrap();
    let j = &status.jobs[0];
    // Poll 1: 5 messages (3 visible, 2 in flight), 1 Job: 3 more, to the cap of 4.
    assert_eq!((j.created_total, j.created_last_poll, j.running, j.pending), (3, 0, Some(4), Some(3)));
    assert_eq!(j.last_reason.as_deref(), Some("at_max"));
    let lines = crate::status::job_lines(&status.jobs, &status.orphaned_jobs);
    assert!(
        lines.starts_with(
            "job encode (jobs): backlog 9, running 4 of 4, pending 3, created 3 (last poll 0), deleted 0+0, at_max"
        ),
        "{lines}"
    );
    // Poll 2 created nothing: at the cap already, so no create was even tried.
    assert_eq!(deps.targets.with(|s| s.create_calls), 3);
    assert!(lines.contains("orphaned Job jobs/gone-1 of removed job rule gone (finished)"), "{lines}");
}

/// A failed queue read creates nothing (a Job cannot be taken back) but cleanup still
/// runs; both kinds of failed read count under the job rule's name; a cold standby
/// reads nothing at all until it leads.
#[tokio::test(start_paused = true)]
async fn failed_reads_create_nothing_and_a_cold_standby_reads_nothing() {
    let deps = Arc::new(fakes(false));
    let mut rule = job_rule("encode", "q", 10);
    rule.policy.successful_jobs_history_limit = 0;
    deps.targets.add("encode", "encode-done", "h1", JobStatus::Complete, Some(1_000));
    // "q" is not set: its reads fail.
    let (switch, lead) = LeadSwitch::new(Standby::Cold);
    let mut w = worker(rule, &deps, lead, false);
    tick(&mut w).await;
    assert_eq!(deps.queues.inner().reads(), 0, "a cold standby reads no queue");
    assert_eq!(deps.observer.job_statuses()[0].polls, 0);

    switch.lead_for(Duration::from_secs(600));
    tick(&mut w).await;
    assert_eq!(deps.queues.inner().reads(), 1);
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.deletes.len())), (0, 1), "no create, the cleanup");
    let status = &deps.observer.job_statuses()[0];
    assert_eq!(status.last_reason.as_deref(), Some("poll_failed"));
    assert!(status.last_poll_error.as_ref().is_some_and(|e| e.error.contains("scripted failure")), "{status:?}");
    assert_eq!(status.backlog.values().copied().collect::<Vec<_>>(), [None]);
    let m = deps.observer.encode_metrics();
    assert_eq!(
        series(&m, "sqscale_poll_errors_total{"),
        ["sqscale_poll_errors_total{job=\"encode\",source=\"sqs\"} 1"]
    );

    // The Jobs cannot be read: nothing is created or deleted on a guess.
    deps.queues.inner().set("q", 4, 0);
    deps.targets.add("encode", "encode-done-2", "h1", JobStatus::Complete, Some(2_000));
    deps.targets.with(|s| s.fail_reads = true);
    tick(&mut w).await;
    assert_eq!(deps.targets.with(|s| (s.create_calls, s.deletes.len())), (0, 1));
    let status = &deps.observer.job_statuses()[0];
    assert_eq!(status.last_reason.as_deref(), Some("counts_untrusted"));
    assert!(status.last_poll_error.as_ref().is_some_and(|e| e.error.contains("connection refused")), "{status:?}");
    let m = deps.observer.encode_metrics();
    assert!(m.contains("sqscale_poll_errors_total{job=\"encode\",source=\"kubernetes\"} 1"), "{m}");
}

/// A rule and a job rule reading one queue share its slot: one read a round serves
/// both, and it fetches what either counts (the job rule's in-flight messages here).
#[tokio::test(start_paused = true)]
async fn a_rule_and_a_job_rule_on_one_queue_share_its_reads() {
    let deps = fakes(false);
    let rules: Vec<Arc<crate::config::Rule>> = crate::config::from_str(
        "[[rule]]\nname = \"r\"\ntarget = { kind = \"Deployment\", name = \"d\" }\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\nqueue_length = 5\n\
         scale_on_in_flight = false\n",
    )
    .unwrap()
    .rules
    .into_iter()
    .map(Arc::new)
    .collect();
    let mut job = job_rule("encode", "q", 10);
    // The rule's queue, as the rule file resolves it.
    job.triggers = rules[0].triggers.clone();
    let job = Arc::new(job);
    deps.queues.set_needs_of(&rules, std::slice::from_ref(&job));
    let (a, b) = (deps.queues.slot(&rules[0], 0), deps.queues.job_slot(&job, 0));
    assert!(Arc::ptr_eq(&a, &b), "one slot for the queue");
    deps.queues.inner().set("q", 3, 2);
    let rule_read = deps.queues.read(&a, &rules[0].triggers[0], Attrs::default()).await.unwrap();
    let job_read = deps.queues.read(&b, &job.triggers[0], Attrs::of(&job.trigger_policies[0])).await.unwrap();
    assert_eq!(deps.queues.inner().reads(), 1, "one read for both");
    let asked = deps.queues.inner().attrs.lock().unwrap().clone();
    assert_eq!(asked, [Attrs { in_flight: true, delayed: false }], "the rule's read fetched the job rule's part too");
    assert_eq!(rule_read, job_read);
    assert_eq!(job.trigger_policies[0].backlog(&job_read), 5, "in flight counted for the job rule");
}
