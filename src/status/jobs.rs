//! What `/status`, `/metrics` and `sqscale status` show of the job rules: one record
//! per job rule, reported by its task ([`crate::job_worker`]), and the Jobs that no
//! running job rule owns any more (a removed or renamed `[[job]]`, spec §12.5).

use super::*;

use crate::config::JobRule;
use crate::engine::job::{JobDecision, JobReason};

/// Everything `/status` shows of one job rule.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct JobRuleStatus {
    pub name: String,
    pub namespace: String,
    pub context: Option<String>,
    pub paused: bool,
    pub last_poll: Option<String>,
    pub next_poll: Option<String>,
    /// Backlog per queue as the trigger counts it; `null` when the last read failed.
    pub backlog: BTreeMap<String, Option<u64>>,
    /// KEDA's `isActive` at the last poll.
    pub active: bool,
    /// `U`: unfinished Jobs (and finished ones within `finished_job_grace`, and created
    /// ones the cache has not shown yet) at the last poll that could count them.
    pub running: Option<u32>,
    /// `P`: of those, the pending ones.
    pub pending: Option<u32>,
    /// Jobs created by the last poll, and since the job rule started.
    pub created_last_poll: u32,
    pub created_total: u64,
    /// Jobs deleted by history cleanup and by rollouts, since the job rule started.
    pub deleted: DeletedJobs,
    /// The engine's reason at the last poll (`created`, `at_max`, `counts_untrusted`...).
    pub last_reason: Option<String>,
    /// The last failed read (SQS or the Jobs), create and delete, with their time; each
    /// stays until the same kind of call succeeds.
    pub last_poll_error: Option<TimedError>,
    pub last_create_error: Option<TimedError>,
    pub last_delete_error: Option<TimedError>,
    /// Polls in a row with an error of any kind.
    pub consecutive_failures: u32,
    /// The most unfinished Jobs it creates up to ([`crate::engine::job::JobPolicy::cap`]).
    pub cap: u32,
    pub polls: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeletedJobs {
    pub history: u64,
    pub rollout: u64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TimedError {
    pub at: String,
    pub error: String,
}

/// A Job sqscale created for a job rule that no longer runs: left to finish (spec
/// §12.5), shown until it is gone.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OrphanedJob {
    pub namespace: String,
    pub job_rule: String,
    pub name: String,
    pub finished: bool,
}

/// One poll of a job rule, as its task reports it.
#[derive(Debug, Default)]
pub struct JobPollReport {
    pub at: Time,
    pub duration: Duration,
    pub next_poll: Time,
    /// Per trigger, in the rule's order: its backlog (`None`: the read failed). Empty
    /// when the queues were not read (paused).
    pub queues: Vec<Option<u64>>,
    /// What the failed reads said (queues, then the Jobs).
    pub read_errors: Vec<String>,
    /// Of `read_errors`, how many came from SQS and from Kubernetes.
    pub sqs_errors: u32,
    pub kubernetes_errors: u32,
    pub decision: Option<JobDecision>,
    pub created: u32,
    /// The failed creates of this poll, and the last one's error.
    pub create_failures: u32,
    pub create_error: Option<String>,
    /// Jobs deleted by history cleanup, and the failed delete that stopped it.
    pub deleted: u32,
    pub delete_error: Option<String>,
}

/// One job rule's record, kept as numbers and rendered when asked.
pub(super) struct JobRecord {
    pub(super) rule: Arc<JobRule>,
    pub(super) since: Instant,
    pub(super) polled: bool,
    polls: u64,
    last_poll: Option<Time>,
    next_poll: Option<Time>,
    backlog: Box<[Option<Option<u64>>]>,
    active: bool,
    pub(super) counts: Option<crate::engine::job::JobCounts>,
    reason: Option<JobReason>,
    created_last_poll: u32,
    pub(super) created: u64,
    pub(super) deleted: DeletedJobs,
    last_poll_error: Option<(Time, String)>,
    last_create_error: Option<(Time, String)>,
    last_delete_error: Option<(Time, String)>,
    consecutive_failures: u32,
    /// Failed reads and writes: SQS, Kubernetes.
    pub(super) errors: [u64; 2],
}

impl JobRecord {
    fn new(rule: Arc<JobRule>) -> JobRecord {
        JobRecord {
            backlog: vec![None; rule.triggers.len()].into(),
            rule,
            since: Instant::now(),
            polled: false,
            polls: 0,
            last_poll: None,
            next_poll: None,
            active: false,
            counts: None,
            reason: None,
            created_last_poll: 0,
            created: 0,
            deleted: DeletedJobs::default(),
            last_poll_error: None,
            last_create_error: None,
            last_delete_error: None,
            consecutive_failures: 0,
            errors: [0; 2],
        }
    }

    fn status(&self) -> JobRuleStatus {
        let r = &self.rule;
        let timed = |e: &Option<(Time, String)>| {
            e.as_ref().map(|(at, e)| TimedError { at: format_time(*at), error: e.clone() })
        };
        JobRuleStatus {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            context: r.context.clone(),
            paused: r.policy.paused,
            last_poll: self.last_poll.map(format_time),
            next_poll: self.next_poll.map(format_time),
            backlog: r
                .triggers
                .iter()
                .zip(&self.backlog)
                .filter_map(|(q, b)| Some((q.display().to_owned(), (*b)?)))
                .collect(),
            active: self.active,
            running: self.counts.map(|c| c.counted()),
            pending: self.counts.map(|c| c.pending),
            created_last_poll: self.created_last_poll,
            created_total: self.created,
            deleted: self.deleted,
            last_reason: self.reason.map(|r| r.as_str().to_owned()),
            last_poll_error: timed(&self.last_poll_error),
            last_create_error: timed(&self.last_create_error),
            last_delete_error: timed(&self.last_delete_error),
            consecutive_failures: self.consecutive_failures,
            cap: r.policy.cap(),
            polls: self.polls,
        }
    }
}

impl std::fmt::Debug for JobRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRecord").field("rule", &self.rule.name).finish_non_exhaustive()
    }
}

/// One job rule's record, shared by its task and the observer.
#[derive(Clone, Debug)]
pub struct JobRecordHandle(pub(super) Arc<Mutex<JobRecord>>);

impl JobRecordHandle {
    fn name(&self) -> String {
        lock(&self.0).rule.name.clone()
    }
}

/// Every job rule's record, sorted by name.
pub(super) type JobRecords = Arc<Mutex<Vec<JobRecordHandle>>>;

/// Lists the orphaned Jobs when `/status` asks (the supervisor sets it to the Jobs
/// adapter's answer for the job rules now running).
pub(super) type Orphans = Box<dyn Fn() -> Vec<OrphanedJob> + Send + Sync>;

impl Observer {
    /// The job rules now running (after a start or a reload): a new one gets a record,
    /// a kept one keeps its counters, a removed one's record and series go.
    pub fn jobs_loaded(&self, running: &[Arc<JobRule>]) {
        let mut jobs = lock(&self.jobs);
        let mut old: std::collections::HashMap<String, JobRecordHandle> =
            std::mem::take(&mut *jobs).into_iter().map(|r| (r.name(), r)).collect();
        jobs.extend(running.iter().map(|rule| match old.remove(&rule.name) {
            Some(handle) => {
                let mut r = lock(&handle.0);
                if r.rule.triggers != rule.triggers {
                    r.backlog = vec![None; rule.triggers.len()].into();
                }
                r.rule = rule.clone();
                drop(r);
                handle
            }
            None => JobRecordHandle(Arc::new(Mutex::new(JobRecord::new(rule.clone())))),
        }));
        jobs.sort_unstable_by_key(JobRecordHandle::name);
        jobs.shrink_to_fit();
        self.metrics.job_rules.set(running.len() as i64);
    }

    /// The record of the running job rule `name`, for its task to report to.
    pub fn job_record(&self, name: &str) -> Option<JobRecordHandle> {
        let jobs = lock(&self.jobs);
        jobs.binary_search_by(|r| lock(&r.0).rule.name.as_str().cmp(name)).ok().map(|i| jobs[i].clone())
    }

    /// A job rule restarted (changed by a reload): not ready until it polls again.
    pub fn job_rule_restarted(&self, name: &str) {
        if let Some(handle) = self.job_record(name) {
            let mut r = lock(&handle.0);
            r.polled = false;
            r.since = Instant::now();
        }
    }

    /// Records one poll of the job rule of `record`.
    pub fn job_polled(&self, record: &JobRecordHandle, report: &JobPollReport) {
        self.metrics.poll_duration.observe(report.duration.as_secs_f64());
        let r = &mut *lock(&record.0);
        r.polled = true;
        r.since = Instant::now();
        r.polls += 1;
        r.last_poll = Some(report.at);
        r.next_poll = Some(report.next_poll);
        for (b, backlog) in r.backlog.iter_mut().zip(&report.queues) {
            *b = Some(*backlog);
        }
        r.errors[SQS] += u64::from(report.sqs_errors);
        r.errors[KUBERNETES] +=
            u64::from(report.kubernetes_errors + report.create_failures + u32::from(report.delete_error.is_some()));
        if let Some(d) = &report.decision {
            r.active = d.active;
            r.reason = Some(d.reason);
            // Untrusted counts keep the last trusted ones (as a failed read keeps a gauge).
            if d.counts.is_some() {
                r.counts = d.counts.map(|mut c| {
                    // What this poll created counts as unfinished and pending until seen.
                    c.unfinished = c.unfinished.saturating_add(report.created);
                    c.pending = c.pending.saturating_add(report.created);
                    c
                });
            }
        }
        r.created_last_poll = report.created;
        r.created += u64::from(report.created);
        r.deleted.history += u64::from(report.deleted);
        if report.read_errors.is_empty() {
            r.last_poll_error = None;
        } else {
            r.last_poll_error = Some((report.at, report.read_errors.join("; ")));
        }
        match &report.create_error {
            Some(e) => r.last_create_error = Some((report.at, e.clone())),
            None if report.created > 0 => r.last_create_error = None,
            None => {}
        }
        match &report.delete_error {
            Some(e) => r.last_delete_error = Some((report.at, e.clone())),
            None if report.deleted > 0 => r.last_delete_error = None,
            None => {}
        }
        let failed = !report.read_errors.is_empty() || report.create_failures > 0 || report.delete_error.is_some();
        r.consecutive_failures = if failed { r.consecutive_failures + 1 } else { 0 };
    }

    /// A rollout of the job rule of `record` deleted `deleted` Jobs of its old template,
    /// and stopped at `error` if one failed.
    pub fn job_rolled_out(&self, record: &JobRecordHandle, at: Time, deleted: u32, error: Option<String>) {
        let r = &mut *lock(&record.0);
        r.deleted.rollout += u64::from(deleted);
        if let Some(e) = error {
            r.errors[KUBERNETES] += 1;
            r.last_delete_error = Some((at, e));
        }
    }

    /// A turn of a job rule that did not poll (a cold standby, a rollout waiting for the
    /// caches): the rule is alive and counts as started.
    pub fn job_stood_by(&self, record: &JobRecordHandle, next_poll: Time) {
        let r = &mut *lock(&record.0);
        r.polled = true;
        r.since = Instant::now();
        r.next_poll = Some(next_poll);
    }

    /// `/status`: every job rule, in name order.
    pub fn job_statuses(&self) -> Vec<JobRuleStatus> {
        lock(&self.jobs).iter().map(|r| lock(&r.0).status()).collect()
    }

    /// Where [`Observer::orphaned_jobs`] asks (set by the supervisor at start and at
    /// each reload).
    pub fn set_orphans(&self, orphans: impl Fn() -> Vec<OrphanedJob> + Send + Sync + 'static) {
        *lock(&self.orphans) = Some(Box::new(orphans));
    }

    /// The Jobs of job rules that no longer run, as the Jobs adapter sees them now.
    pub fn orphaned_jobs(&self) -> Vec<OrphanedJob> {
        lock(&self.orphans).as_ref().map_or_else(Vec::new, |f| f())
    }
}

/// The job rules' families, rendered from their records when scraped.
#[derive(Debug)]
pub(super) struct JobMetrics(pub(super) JobRecords);

impl Collector for JobMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let jobs = lock(&self.0);
        if jobs.is_empty() {
            return Ok(());
        }
        let gauge = |v: u32| ConstGauge::new(i64::from(v));
        {
            let help = "Jobs sqscale created for a job rule";
            let mut family = encoder.encode_descriptor("sqscale_jobs_created", help, None, MetricType::Counter)?;
            for r in jobs.iter().map(|r| lock(&r.0)) {
                ConstCounter::new(r.created).encode(family.encode_family(&[("job", r.rule.name.as_str())])?)?;
            }
        }
        for (metric, help, value) in [
            (
                "sqscale_jobs_running",
                "A job rule's unfinished Jobs (KEDA's running count, pending ones included) at its last counted poll",
                (|c: &crate::engine::job::JobCounts| c.counted()) as fn(&crate::engine::job::JobCounts) -> u32,
            ),
            ("sqscale_jobs_pending", "Of a job rule's running Jobs, the pending ones", |c| c.pending),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for r in jobs.iter().map(|r| lock(&r.0)) {
                if let Some(c) = &r.counts {
                    gauge(value(c)).encode(family.encode_family(&[("job", r.rule.name.as_str())])?)?;
                }
            }
        }
        let help = "Jobs sqscale deleted, by reason (history cleanup or rollout)";
        let mut family = encoder.encode_descriptor("sqscale_jobs_deleted", help, None, MetricType::Counter)?;
        for r in jobs.iter().map(|r| lock(&r.0)) {
            for (reason, n) in [("history", r.deleted.history), ("rollout", r.deleted.rollout)] {
                let labels = [("job", r.rule.name.as_str()), ("reason", reason)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The job rules below the rules' table in `sqscale status`: one line each, then the
/// orphaned Jobs.
pub fn job_lines(jobs: &[JobRuleStatus], orphans: &[OrphanedJob]) -> String {
    let mut out = String::new();
    for j in jobs {
        let n = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let backlog: Vec<String> =
            j.backlog.values().map(|b| b.map_or_else(|| "error".to_owned(), |b| b.to_string())).collect();
        let backlog = if backlog.is_empty() { "-".to_owned() } else { backlog.join("+") };
        out.push_str(&format!(
            "job {} ({}): backlog {backlog}, running {} of {}, pending {}, created {} (last poll {}), deleted {}+{}, {}",
            j.name,
            j.namespace,
            n(j.running),
            j.cap,
            n(j.pending),
            j.created_total,
            j.created_last_poll,
            j.deleted.history,
            j.deleted.rollout,
            if j.paused { "paused" } else { j.last_reason.as_deref().unwrap_or("not polled yet") },
        ));
        for (what, e) in
            [("poll", &j.last_poll_error), ("create", &j.last_create_error), ("delete", &j.last_delete_error)]
        {
            if let Some(e) = e {
                out.push_str(&format!("; last {what} error at {}: {}", e.at, e.error));
            }
        }
        out.push('\n');
    }
    for o in orphans {
        let state = if o.finished { "finished" } else { "running" };
        out.push_str(&format!(
            "orphaned Job {}/{} of removed job rule {} ({state})\n",
            o.namespace, o.name, o.job_rule
        ));
    }
    out
}
