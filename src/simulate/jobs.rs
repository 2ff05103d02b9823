//! `simulate` for job rules: each job rule polls the trace like a rule, and its Jobs live
//! in a virtual cluster.
//!
//! Every Job created runs `--job-duration` and then completes (never pending, never
//! failed): at a poll, `U` is the Jobs started and not yet ended. Each poll hands
//! [`engine::job::decide`] one snapshot of that cluster, creates what it decides, and
//! runs the history cleanup ([`engine::job::cleanup`]) on the same snapshot, as the
//! daemon's job worker does. Creates and deletes succeed at once.

use crate::config::JobRule;
use crate::engine::Time;
use crate::engine::job::{self as engine, JobStatus, JobView, Snapshot};

use super::{Options, Row, RowReason, RunError, Trace};

/// The most Jobs a virtual cluster holds, finished ones included. Each poll looks at
/// every one; `custom` (whose total has no cap) or a large min with long Jobs could
/// otherwise grow it without end.
pub(super) const MAX_JOBS: usize = 10_000;

/// One Job of the virtual cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VirtualJob {
    name: String,
    started: Time,
    /// `started + --job-duration`: from then on the Job is Complete, with this as its
    /// completion time.
    ends: Time,
}

impl VirtualJob {
    fn view(&self, now: Time) -> JobView<'_> {
        let complete = self.ends <= now;
        JobView {
            name: &self.name,
            status: if complete { JobStatus::Complete } else { JobStatus::Unfinished { pending: false } },
            finished_at: complete.then_some(self.ends),
            created_at: Some(self.started),
        }
    }
}

/// One job rule's virtual cluster across its polls.
#[derive(Debug)]
pub(super) struct Timeline<'a> {
    job: &'a JobRule,
    /// The Jobs not yet deleted by the cleanup, in creation order.
    cluster: Vec<VirtualJob>,
    /// Jobs created so far: their names' suffix.
    created: u64,
}

impl<'a> Timeline<'a> {
    pub(super) fn new(job: &'a JobRule) -> Timeline<'a> {
        Timeline { job, cluster: Vec::new(), created: 0 }
    }

    /// The poll at trace time `t` (the engine's clock reads `--start + t`).
    pub(super) fn poll(&mut self, trace: &Trace, options: &Options, t: Time) -> Result<Row, RunError> {
        let job = self.job;
        let now = Time(options.start.0.saturating_add(t.0));
        // Each trigger's backlog counts in-flight and delayed messages as it says; a
        // trace's `error` row is a failed read.
        let backlogs: Vec<Option<u64>> = job
            .triggers
            .iter()
            .zip(&job.trigger_policies)
            .map(|(queue, trigger)| trace.at(&queue.name, t).map(|c| trigger.backlog(&c)))
            .collect();

        let snapshot = Snapshot { jobs: self.cluster.iter().map(|j| j.view(now)).collect(), created_unseen: 0 };
        // The open `[[job.schedule]]` windows' min, max and pause, as the daemon applies them.
        let policy = crate::job_worker::policy_at(job, now);
        let decision = engine::decide(&policy, &backlogs, Some(&snapshot), now);
        // Deleted after the creates, as the daemon does; the new Jobs are unfinished, so
        // the snapshot taken before them picks the same ones.
        let deleted: Vec<String> = engine::cleanup(&policy, &snapshot, now).into_iter().map(str::to_owned).collect();
        drop(snapshot);
        self.cluster.retain(|j| !deleted.contains(&j.name));
        let ends = Time(now.0.saturating_add(options.job_duration_ms()));
        if self.cluster.len().saturating_add(decision.create as usize) > MAX_JOBS {
            return Err(RunError::TooManyJobs(job.name.clone(), t.0 / 1000));
        }
        for _ in 0..decision.create {
            self.created += 1;
            self.cluster.push(VirtualJob { name: format!("{}-{}", job.name, self.created), started: now, ends });
        }

        Ok(Row {
            time: t,
            rule: job.name.clone(),
            backlog: decision.backlog,
            active: decision.active,
            desired: Some(decision.create),
            replicas: self.unfinished(now),
            reason: RowReason::Job(decision.reason),
        })
    }

    /// The Jobs started and not yet ended at `now`.
    fn unfinished(&self, now: Time) -> u32 {
        let n = self.cluster.iter().filter(|j| j.ends > now).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// How long after the trace ends a job rule needs to settle: its last Jobs to end, plus
/// two polls to show it.
pub(super) fn settle_time(job: &JobRule, options: &Options) -> i64 {
    let poll = i64::try_from(job.polling_interval.as_millis()).unwrap_or(i64::MAX);
    options.job_duration_ms().saturating_add(poll.saturating_mul(2))
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
