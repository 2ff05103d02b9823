//! The decision engine for job rules: KEDA's ScaledJob, as pure functions of (policy,
//! readings, one snapshot of the rule's Jobs, now).
//!
//! Each poll, [`decide`] turns the triggers' backlogs into KEDA's `isActive`, `scaleTo`
//! and `maxScale` (`../shared/spec/scaledjob.md` §3), and those with the rule's Jobs into
//! the number of Jobs to create (§4, §5); [`cleanup`] picks the finished Jobs the history
//! limits no longer keep (§4.1). No I/O, no clock reads: the daemon and `simulate` pass
//! `now`. Where sqscale decides otherwise than KEDA (§10, §12), the doc comment says so and
//! why. Every vector of §11 is a test in `job_tests.rs`.

use std::time::Duration;

use super::{Time, millis};

/// KEDA's `defaultScaledJobMaxReplicaCount`: the `M` of a rule without
/// `max_replica_count` (spec §2.2).
pub const DEFAULT_MAX: u32 = 100;

/// What the engine needs of a job rule: the validated numbers, nothing about the
/// template, the queues or the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPolicy {
    /// `min_replica_count` (KEDA's unset is 0, which acts the same).
    pub min_replica_count: u32,
    /// `max_replica_count`. An `Option` because unset is not 100 when min > 0
    /// (spec §2.2, §12.4): see [`JobPolicy::effective_max`].
    pub max_replica_count: Option<u32>,
    pub strategy: ScalingStrategy,
    pub multiple_scalers_calculation: MultipleScalersCalculation,
    /// `finished_job_grace`: how long a Complete Job still counts as unfinished (spec
    /// §10.1, §12.2). Zero is KEDA.
    pub finished_job_grace: Duration,
    /// `successful_jobs_history_limit`: Complete Jobs kept by [`cleanup`].
    pub successful_jobs_history_limit: u32,
    /// `failed_jobs_history_limit`: Failed Jobs kept by [`cleanup`].
    pub failed_jobs_history_limit: u32,
    /// `paused`: no creates and no cleanup (spec §8).
    pub paused: bool,
    /// One entry per trigger, in rule order; readings use the same order.
    pub triggers: Vec<JobTrigger>,
}

impl JobPolicy {
    /// KEDA's `MinReplicaCount()`, `min_e` (spec §2.2): the min, or the max when both are
    /// set and min > max. The rule file rejects min > max (§12.3), but the engine keeps
    /// KEDA's arithmetic so the vectors (V12) and `import-keda` can speak of it.
    pub fn effective_min(&self) -> u32 {
        match self.max_replica_count {
            Some(max) if self.min_replica_count > max => max,
            _ => self.min_replica_count,
        }
    }

    /// KEDA's `MaxReplicaCount()`, `M` (spec §2.2): 100 when max is unset whatever the
    /// min (so V11 allows 100 Jobs beside 5 standby ones); the max when min > max;
    /// otherwise `max - min`, so standby Jobs and queue Jobs share the max (KEDA PR #3425).
    pub fn effective_max(&self) -> u32 {
        match self.max_replica_count {
            None => DEFAULT_MAX,
            Some(max) if self.min_replica_count > max => max,
            Some(max) => max - self.min_replica_count,
        }
    }

    /// The most unfinished Jobs a poll creates up to, `min_e + M` (spec §2.2, derived):
    /// `max` when min ≤ max, `100 + min` when max is unset, `2 × max` when min > max. It
    /// holds for `default`, `accurate` and `eager`; `custom` caps each poll's creates at
    /// `M` but not the total, as KEDA (spec §5.2, V6). A poll never deletes Jobs to get
    /// under it.
    pub fn cap(&self) -> u32 {
        self.effective_min().saturating_add(self.effective_max())
    }
}

/// `scaling_strategy.strategy` and its parameters (spec §5; KEDA
/// `scale_jobs.go:NewScalingStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ScalingStrategy {
    /// `E = maxScale - r`: running Jobs cancel the messages they hold (§5.1).
    #[default]
    Default,
    /// `E = min(maxScale - d - trunc(r × p), M)` (§5.2).
    Custom {
        /// `custom_scaling_queue_length_deduction`, `d`, of any sign.
        queue_length_deduction: i64,
        /// `custom_scaling_running_job_percentage`, `p`; finite (the rule file rejects
        /// NaN and Inf, which KEDA accepts, §10.5f).
        running_job_percentage: f64,
    },
    /// `E = min(M - r, maxScale - P)` (§5.3, KEDA HEAD since v2.19.0; not the older
    /// formula of #7329, §10.3).
    Accurate,
    /// `E = min(M - r - P, maxScale)`, `scaleTo' = M` (§5.4): KEDA's code, not its docs
    /// (§10.4, §12.11).
    Eager,
}

impl ScalingStrategy {
    /// KEDA's selection of `custom` (spec §5, §12.7): custom only with a percentage,
    /// otherwise default, and the deduction alone is ignored (V8); an unset deduction
    /// is 0 (KEDA issue #7798).
    pub fn custom(queue_length_deduction: Option<i64>, running_job_percentage: Option<f64>) -> ScalingStrategy {
        match running_job_percentage {
            Some(p) => ScalingStrategy::Custom {
                queue_length_deduction: queue_length_deduction.unwrap_or(0),
                running_job_percentage: p,
            },
            None => ScalingStrategy::Default,
        }
    }

    /// `GetEffectiveMaxScale`: `(E, scaleTo')` from `maxScale`, `r = U - min_e`, `P`, `M`
    /// and `scaleTo`, in KEDA's int64 arithmetic.
    fn effective_max_scale(self, max_scale: i64, r: i64, p: i64, m: i64, scale_to: i64) -> (i64, i64) {
        match self {
            ScalingStrategy::Default => (max_scale - r, scale_to),
            ScalingStrategy::Custom { queue_length_deduction: d, running_job_percentage: pct } => {
                // Go's `int64(float64(r) * p)` truncates toward zero, as `as` does.
                ((max_scale - d - (r as f64 * pct) as i64).min(m), scale_to)
            }
            // KEDA writes it as `maxScale + r - P > M ? M - r : maxScale - P`: the same.
            ScalingStrategy::Accurate => ((m - r).min(max_scale - p), scale_to),
            ScalingStrategy::Eager => ((m - r - p).min(max_scale), m),
        }
    }
}

/// `multiple_scalers_calculation`: how the triggers combine (spec §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MultipleScalersCalculation {
    /// The active trigger with the largest backlog, first on ties; its `maxScale` comes
    /// with it, even if another trigger's is larger.
    #[default]
    Max,
    /// The active trigger with the smallest backlog, except that one reading 0 is
    /// replaced by the next active one (V16).
    Min,
    /// The means over the active triggers.
    Avg,
    /// The sums over the active triggers.
    Sum,
}

/// The numbers of one `aws-sqs-queue` trigger of a job rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobTrigger {
    /// `queue_length`, `t`: messages per Job (KEDA's AverageValue target).
    pub queue_length: u64,
    /// `activation_queue_length`, `a`: active when the backlog is strictly above it.
    pub activation_queue_length: i64,
}

/// One of the rule's Jobs as the watch caches show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobView<'a> {
    pub name: &'a str,
    pub status: JobStatus,
    /// Complete: `status.completionTime` (Kubernetes sets it on success only). Failed:
    /// the `Failed` condition's `lastTransitionTime`, since the completion time is nil
    /// there (spec §4.1). Unfinished: unused.
    pub finished_at: Option<Time>,
    /// `metadata.creationTimestamp`: a tie-break among Failed Jobs (spec §4.1).
    pub created_at: Option<Time>,
}

/// Where a Job stands, by KEDA's `isJobFinished` (spec §4 step 3, §12.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Neither `Complete=True` nor `Failed=True`: suspended, deleting and old-template
    /// Jobs included. `pending` as §4 step 3 reads the Job's pods and
    /// `pending_pod_conditions`.
    Unfinished { pending: bool },
    /// The first finished condition is `Complete=True`.
    Complete,
    /// The first finished condition is `Failed=True`.
    Failed,
}

/// One snapshot of a job rule's Jobs: one serves the whole poll, so the counts never
/// disagree within it (spec §10.5g).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// The Jobs labelled `sqscale.io/job=<name>` in the cache, any template.
    pub jobs: Vec<JobView<'a>>,
    /// Jobs sqscale created that the cache has not shown yet: counted as unfinished and
    /// pending until it does, so a lagging cache never makes a poll create twice
    /// (spec §10.1 item 1).
    pub created_unseen: u32,
}

/// The counts a poll decides on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Unfinished Jobs, pending included, plus the created ones not yet seen.
    pub unfinished: u32,
    /// Of those, the pending ones, plus the created ones not yet seen (`P ⊆ U`).
    pub pending: u32,
    /// Complete Jobs younger than `finished_job_grace`.
    pub finishing: u32,
}

impl JobCounts {
    /// KEDA's `U` ("running"), with the grace: `unfinished + finishing`.
    pub fn counted(&self) -> u32 {
        self.unfinished.saturating_add(self.finishing)
    }
}

/// Counts the Jobs of `snapshot` at `now` (spec §4 step 3, §10.1).
///
/// A Complete Job younger than `finished_job_grace` still counts in `U`, not in `P`:
/// SQS's approximate counts may still hold the message it deleted for a minute or more
/// (KEDA #7330), and without the grace default creates a Job for it. Failed Jobs never
/// count: their messages return to the queue after the visibility timeout, and a new Job
/// should take them. A Complete Job with no completion time cannot be aged, so it counts
/// as KEDA counts it: finished.
pub fn count(policy: &JobPolicy, snapshot: &Snapshot<'_>, now: Time) -> JobCounts {
    let mut c = JobCounts { unfinished: snapshot.created_unseen, pending: snapshot.created_unseen, finishing: 0 };
    for job in &snapshot.jobs {
        match job.status {
            JobStatus::Unfinished { pending } => {
                c.unfinished = c.unfinished.saturating_add(1);
                c.pending = c.pending.saturating_add(u32::from(pending));
            }
            JobStatus::Complete if in_grace(policy, job, now) => c.finishing = c.finishing.saturating_add(1),
            JobStatus::Complete | JobStatus::Failed => {}
        }
    }
    c
}

fn in_grace(policy: &JobPolicy, job: &JobView<'_>, now: Time) -> bool {
    let grace = millis(policy.finished_job_grace);
    job.status == JobStatus::Complete && grace > 0 && job.finished_at.is_some_and(|at| now.since(at) < grace)
}

/// Why a poll created what it did: a stable snake_case token for logs, metrics, the
/// simulation timeline and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobReason {
    /// `paused = true`: no SQS calls, no creates, no cleanup (spec §8, V21).
    Paused,
    /// The Job counts cannot be trusted (caches unsynced, a watch broken and not yet
    /// re-listed): nothing is created or deleted (spec §10.5a, §12.2, V20).
    CountsUntrusted,
    /// Fewer unfinished Jobs than `min_e`: topped up, the queue ignored (spec §4 step 4, V9).
    MinTopUp,
    /// A trigger's read failed: nothing is created for the backlog (see [`decide`]).
    PollFailed,
    /// No trigger is active and `min_e` is 0 (V13, V17).
    Inactive,
    /// Jobs created for the backlog.
    Created,
    /// The backlog asks for more than `M` Jobs at once: what was created (maybe none)
    /// was capped by the max.
    AtMax,
    /// Active, but the strategy finds enough Jobs already (KEDA's "all requested jobs
    /// already exist").
    JobsExist,
    /// The job rule's `[[group]]` granted fewer Jobs than the poll asked for (set by the
    /// daemon, which holds the group's ledger; [`decide`] never returns it).
    GroupCapped,
}

impl JobReason {
    pub fn as_str(self) -> &'static str {
        match self {
            JobReason::Paused => "paused",
            JobReason::CountsUntrusted => "counts_untrusted",
            JobReason::MinTopUp => "min_top_up",
            JobReason::PollFailed => "poll_failed",
            JobReason::Inactive => "inactive",
            JobReason::Created => "created",
            JobReason::AtMax => "at_max",
            JobReason::JobsExist => "jobs_exist",
            JobReason::GroupCapped => "group_capped",
        }
    }
}

impl std::fmt::Display for JobReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one poll of a job rule.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobDecision {
    /// The number of Jobs to create now.
    pub create: u32,
    pub reason: JobReason,
    /// KEDA's `isActive`: a trigger was selected, or `min_e > 0`.
    pub active: bool,
    /// KEDA's `scaleTo`: `ceil` of the combined backlog, in messages, not Jobs (§3 step 6).
    pub scale_to: i64,
    /// KEDA's `maxScale`: `ceil` of the combined backlog per Job, capped by `M`.
    pub max_scale: i64,
    /// Sum of the backlogs read; `None` if every trigger failed or the rule is paused.
    pub backlog: Option<u64>,
    /// What the poll counted; `None` when the counts were untrusted or the rule paused.
    pub counts: Option<JobCounts>,
}

/// KEDA's per-poll decision for a job rule (spec §3, §4, §5).
///
/// `backlogs` holds one reading per trigger, in rule order: the backlog `Q` (visible,
/// plus in flight and delayed as the trigger counts them), or `None` if the read
/// failed. `snapshot` is `None` while the Job counts cannot be trusted.
///
/// 1. Paused: nothing (V21).
/// 2. The triggers give `isActive`, `scaleTo` and `maxScale` (§3); `min_e > 0` makes the
///    rule active whatever they say.
/// 3. Untrusted counts create nothing. KEDA takes a failed Job list as 0 Jobs and
///    creates duplicates (V20, §10.5a); sqscale never creates a Job on a guess (§12.2).
/// 4. `U < min_e`: `min_e - U` Jobs, the queue ignored (V9), even if every trigger
///    failed (V18).
/// 5. **sqscale:** a failed trigger read creates nothing for the backlog. KEDA leaves
///    the trigger out and combines the rest (§3 step 1); with `max`, `min` or `avg` that
///    can ask for *more* Jobs than the full reading would (another trigger is selected,
///    or the mean moves), and a Job cannot be taken back. It is the job rule's form of
///    "a failed poll never scales in".
/// 6. Inactive: nothing (V13, V17).
/// 7. The strategy's `(E, scaleTo')` on `r = U - min_e`, `P`, `M` (§5); `E < 0` is 0;
///    `n = min(scaleTo', E)`.
pub fn decide(policy: &JobPolicy, backlogs: &[Option<u64>], snapshot: Option<&Snapshot<'_>>, now: Time) -> JobDecision {
    let mut d = JobDecision {
        create: 0,
        reason: JobReason::Paused,
        active: false,
        scale_to: 0,
        max_scale: 0,
        backlog: None,
        counts: None,
    };
    if policy.paused {
        return d;
    }

    let scale = combine(policy, backlogs);
    d.active = scale.active;
    d.scale_to = scale.scale_to;
    d.max_scale = scale.max_scale;
    d.backlog = scale.backlog;

    let Some(snapshot) = snapshot else {
        d.reason = JobReason::CountsUntrusted;
        return d;
    };
    let counts = count(policy, snapshot, now);
    d.counts = Some(counts);
    let u = i64::from(counts.counted());
    let min_e = i64::from(policy.effective_min());

    if u < min_e {
        d.create = to_u32(min_e - u);
        d.reason = JobReason::MinTopUp;
        return d;
    }
    if scale.failed {
        d.reason = JobReason::PollFailed;
        return d;
    }
    if !scale.active {
        d.reason = JobReason::Inactive;
        return d;
    }
    let m = i64::from(policy.effective_max());
    let (e, scale_to) =
        policy.strategy.effective_max_scale(scale.max_scale, u - min_e, i64::from(counts.pending), m, scale.scale_to);
    let e = e.max(0);
    d.create = if e == 0 { 0 } else { to_u32(scale_to.min(e)) };
    d.reason = if scale.above_max {
        JobReason::AtMax
    } else if d.create > 0 {
        JobReason::Created
    } else {
        JobReason::JobsExist
    };
    d
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// §3's result.
struct Scale {
    active: bool,
    scale_to: i64,
    max_scale: i64,
    /// The combined backlog per Job was above `M` before the cap.
    above_max: bool,
    /// A trigger's read failed.
    failed: bool,
    backlog: Option<u64>,
}

/// KEDA's `getScaledJobMetrics` and `IsScaledJobActive` (spec §3): each reading's
/// activity and `min(Q / t, M)`, then the combination over the active triggers.
fn combine(policy: &JobPolicy, backlogs: &[Option<u64>]) -> Scale {
    let m = f64::from(policy.effective_max());
    // (active, Q, Q / t) of each trigger read; a failed read is left out, as KEDA does.
    let readings: Vec<(bool, f64, f64)> = policy
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let q = backlogs.get(i).copied().flatten()?;
            let active = i128::from(q) > i128::from(t.activation_queue_length);
            // A target of 0 gives 0, not a division (KEDA; the rule file rejects it).
            let per_job = if t.queue_length == 0 { 0.0 } else { q as f64 / t.queue_length as f64 };
            Some((active, q as f64, per_job))
        })
        .collect();
    let failed = readings.len() < policy.triggers.len();
    let backlog = backlogs.iter().take(policy.triggers.len()).flatten().copied().reduce(u64::saturating_add);

    // Combined twice: capped per trigger as KEDA does, and uncapped to tell `at_max`.
    let (active, qc, capped) = select(policy.multiple_scalers_calculation, &readings, m);
    let (_, _, raw) = select(policy.multiple_scalers_calculation, &readings, f64::INFINITY);
    let active = active || policy.effective_min() > 0;
    Scale {
        active,
        scale_to: qc.ceil() as i64,
        max_scale: capped.min(m).ceil() as i64,
        above_max: active && raw.ceil() > m,
        failed,
        backlog,
    }
}

/// `(isActive, Qc, mvc)` over `(active, Q, Q / t)` readings, each `Q / t` capped by `cap`.
fn select(how: MultipleScalersCalculation, readings: &[(bool, f64, f64)], cap: f64) -> (bool, f64, f64) {
    let active = readings.iter().filter(|r| r.0).map(|&(_, q, mv)| (q, mv.min(cap)));
    let (mut selected, mut qc, mut mvc) = (false, 0.0, 0.0);
    match how {
        MultipleScalersCalculation::Max => {
            // Strictly greater from 0: ties go to the first, and an active trigger that
            // reads 0 is never selected (V13).
            for (q, mv) in active {
                if q > qc {
                    (selected, qc, mvc) = (true, q, mv);
                }
            }
        }
        MultipleScalersCalculation::Min => {
            // `Qc == 0` lets a later active trigger replace one that read 0 (V16).
            for (q, mv) in active {
                if qc == 0.0 || q < qc {
                    (selected, qc, mvc) = (true, q, mv);
                }
            }
        }
        MultipleScalersCalculation::Avg | MultipleScalersCalculation::Sum => {
            let mut n = 0u32;
            for (q, mv) in active {
                (qc, mvc, n) = (qc + q, mvc + mv, n + 1);
            }
            selected = n > 0;
            if how == MultipleScalersCalculation::Avg && n > 0 {
                (qc, mvc) = (qc / f64::from(n), mvc / f64::from(n));
            }
        }
    }
    (selected, qc, mvc)
}

/// KEDA's history cleanup (spec §4.1; `scale_jobs.go:cleanUp`): the finished Jobs to
/// delete, in order, Complete ones first, each kind oldest first. The caller deletes
/// them with Background propagation, stops at the first failed delete (KEDA's order:
/// a failure among Complete Jobs skips the Failed ones) and takes NotFound as done.
///
/// Unfinished Jobs are never picked. Each kind keeps its `*_jobs_history_limit` newest
/// Jobs (a limit of 0 keeps none). **sqscale** differs from KEDA in two ways:
/// - The order is deterministic (§10.5b): Complete Jobs by completion time, then name;
///   Failed Jobs by their `Failed` condition's time, then creation time, then name. A
///   Job with no time sorts as the oldest: nothing shows it is recent.
/// - A Complete Job within `finished_job_grace` is kept even beyond the limit: it still
///   counts in `U` ([`count`]), and deleting it would end the grace it exists for.
///   It goes at the first poll after its grace. With a grace of 0 this is KEDA.
///
/// Paused rules delete nothing (§8). Call it only with a snapshot the poll trusts: while
/// the counts cannot be trusted, nothing is deleted either (§10.5a).
pub fn cleanup<'a>(policy: &JobPolicy, snapshot: &Snapshot<'a>, now: Time) -> Vec<&'a str> {
    if policy.paused {
        return Vec::new();
    }
    let mut complete: Vec<&JobView<'a>> = snapshot.jobs.iter().filter(|j| j.status == JobStatus::Complete).collect();
    complete.sort_by(|a, b| (a.finished_at, a.name).cmp(&(b.finished_at, b.name)));
    let mut failed: Vec<&JobView<'a>> = snapshot.jobs.iter().filter(|j| j.status == JobStatus::Failed).collect();
    failed.sort_by(|a, b| (a.finished_at, a.created_at, a.name).cmp(&(b.finished_at, b.created_at, b.name)));

    let excess =
        |jobs: &[&JobView<'a>], limit: u32| jobs.len().saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut delete: Vec<&'a str> = complete
        .iter()
        .take(excess(&complete, policy.successful_jobs_history_limit))
        // In time order the Jobs in grace are the newest, so this keeps a prefix.
        .take_while(|j| !in_grace(policy, j, now))
        .map(|j| j.name)
        .collect();
    delete.extend(failed.iter().take(excess(&failed, policy.failed_jobs_history_limit)).map(|j| j.name));
    delete
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
