//! One task per job rule (KEDA's ScaledJob loop): on each tick, read the queues, take
//! one snapshot of the rule's Jobs, decide how many to create, create them, clean up
//! the history. Beside [`crate::worker`], which does the same for a `[[rule]]`.
//!
//! Writes (creates and deletes) are made only where the rule worker would write: not in
//! a dry run, not on a standby, and each one within the lease ([`Leadership::budget`]),
//! which the adapter checks again right before sending it. A count that cannot be
//! trusted creates and deletes nothing (spec §10.5a). Cancellation is observed between
//! polls only, as for rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{JobRule, Propagation, RolloutStrategy};
use crate::engine::Time;
use crate::engine::job;
use crate::leader::Leadership;
use crate::source::{Attrs, QueueReader, Slot, SourceError, SourceErrorKind};
use crate::status::{JobPollReport, JobRecordHandle};
use crate::worker::{Deps, bounded};
use crate::workload::jobs::{JobTarget, JobsSnapshot};
use crate::workload::{TargetError, TargetErrorKind};

/// Runs job rule `rule` until `cancel` fires: the first poll at `first_poll`, then every
/// `polling_interval`; a late poll delays the next one, never bursts.
///
/// `rollout` is set while a rollout of a changed template is owed (spec §7): at start,
/// and after a reload that changed the template hash (or while the previous task still
/// owed one). It is paid before the first poll, by the leader, on a trusted snapshot;
/// until it is, each tick tries again and polls nothing. The supervisor shares the flag,
/// so a reload that restarts the task for another key knows whether one is still owed.
///
/// Not an `async fn`, for the reason [`crate::worker::run`] gives: only the worker, the
/// token and the timer live in the task.
pub fn run<Q: QueueReader, T: JobTarget>(
    rule: Arc<JobRule>,
    deps: Arc<Deps<Q, T>>,
    lead: Leadership,
    cancel: CancellationToken,
    first_poll: Instant,
    rollout: Arc<AtomicBool>,
) -> impl Future<Output = ()> + Send {
    let mut worker = JobWorker::new(rule, deps, lead, rollout);
    async move {
        let mut tick = tokio::time::interval_at(first_poll, worker.rule.polling_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Boxed: the poll's future holds the adapters' request futures; inline, every
            // idle task would carry that size for good.
            Box::pin(worker.turn()).await;
        }
        debug!(job = %worker.rule.name, "stopped");
    }
}

struct JobWorker<Q, T> {
    rule: Arc<JobRule>,
    record: Option<JobRecordHandle>,
    /// Per trigger, its queue's shared reads.
    slots: Box<[Arc<Slot>]>,
    deps: Arc<Deps<Q, T>>,
    lead: Leadership,
    /// A rollout is owed (see [`run`]).
    rollout: Arc<AtomicBool>,
}

impl<Q: QueueReader, T: JobTarget> JobWorker<Q, T> {
    fn new(rule: Arc<JobRule>, deps: Arc<Deps<Q, T>>, lead: Leadership, rollout: Arc<AtomicBool>) -> Self {
        JobWorker {
            record: deps.observer.job_record(&rule.name),
            slots: (0..rule.triggers.len()).map(|i| deps.queues.job_slot(&rule, i)).collect(),
            rule,
            deps,
            lead,
            rollout,
        }
    }

    /// One tick: nothing while paused, nothing on a cold standby, the rollout if one is
    /// owed, then the poll.
    async fn turn(&mut self) {
        let now = self.deps.clock.now();
        let next_poll = Time(now.0 + self.rule.polling_interval.as_millis() as i64);
        let rule = self.rule.clone();
        let policy = policy_at(&rule, now);
        if policy.paused {
            // Spec §8: no SQS call, no create, no delete, no rollout (it waits for the
            // reload that unpauses, which keeps the owed flag).
            self.report(JobPollReport {
                at: now,
                next_poll,
                decision: Some(job::decide(&policy, &[], None, now)),
                ..JobPollReport::default()
            });
            return;
        }
        if self.lead.cold_standby() {
            if let Some(record) = &self.record {
                self.deps.observer.job_stood_by(record, next_poll);
            }
            return;
        }
        if self.rollout.load(Ordering::Acquire) && !Box::pin(self.roll_out(now)).await {
            if let Some(record) = &self.record {
                self.deps.observer.job_stood_by(record, next_poll);
            }
            return;
        }
        self.poll(&policy, now, next_poll).await;
    }

    /// Pays an owed rollout (spec §7, §12.6): with the `default` strategy, deletes every
    /// Job of the rule whose template hash is not the running template's, finished ones
    /// included, with the rule's propagation; `gradual` deletes nothing. True when done
    /// (or nothing is to be done by this instance); false when the poll must wait: the
    /// counts are not trusted yet, the Jobs could not be read, or a delete failed.
    async fn roll_out(&mut self, now: Time) -> bool {
        let rule = self.rule.clone();
        if rule.rollout.strategy == RolloutStrategy::Gradual {
            self.rollout.store(false, Ordering::Release);
            return true;
        }
        if self.write_budget().is_none() {
            // Only the leader rolls out; a standby decides without writing, as for rules,
            // and keeps the rollout owed for the day it leads.
            if self.deps.dry_run {
                info!(job = %rule.name, "dry run: the Jobs of an older template would be deleted");
                self.rollout.store(false, Ordering::Release);
            }
            return true;
        }
        let snapshot = match self.snapshot().await {
            Ok(Some(s)) => s,
            Ok(None) => {
                debug!(job = %rule.name, "rollout waits for the Jobs cache to sync");
                return false;
            }
            Err(e) => {
                warn!(job = %rule.name, error = %e, kind = e.kind(), "reading the Jobs for the rollout failed; trying again next poll");
                // Shown and counted as a poll's failed read: no poll happens meanwhile.
                self.report(JobPollReport {
                    at: now,
                    next_poll: Time(now.0 + rule.polling_interval.as_millis() as i64),
                    read_errors: vec![e.to_string()],
                    kubernetes_errors: 1,
                    ..JobPollReport::default()
                });
                return false;
            }
        };
        let hash = &rule.template.hash;
        let old: Vec<&str> = snapshot
            .jobs
            .iter()
            .filter(|j| j.template_hash.as_deref() != Some(hash.as_str()))
            .map(|j| j.name.as_str())
            .collect();
        let propagation = rule.rollout.propagation_policy;
        let (deleted, error) = self.delete_all(&old, propagation).await;
        if (deleted > 0 || error.is_some())
            && let Some(record) = &self.record
        {
            self.deps.observer.job_rolled_out(record, now, deleted, error.as_ref().map(|e| e.to_string()));
        }
        match error {
            None if deleted as usize == old.len() => {
                if deleted > 0 {
                    info!(job = %rule.name, deleted, propagation = propagation.as_str(), "rolled out: deleted the Jobs of the older template");
                }
                self.rollout.store(false, Ordering::Release);
                true
            }
            // The lease ran out between deletes: the next leader rolls out.
            None => false,
            Some(e) => {
                warn!(job = %rule.name, error = %e, kind = e.kind(), deleted, "rollout: deleting a Job of the older template failed; trying again next poll");
                false
            }
        }
    }

    async fn poll(&mut self, policy: &job::JobPolicy, now: Time, next_poll: Time) {
        let started = Instant::now();
        let rule = self.rule.clone();
        let mut report = JobPollReport { at: now, next_poll, ..JobPollReport::default() };

        let queues = self.read_queues().await;
        report.queues =
            rule.trigger_policies.iter().zip(&queues).map(|(t, r)| r.as_ref().ok().map(|c| t.backlog(c))).collect();
        for e in queues.iter().filter_map(|r| r.as_ref().err()) {
            report.read_errors.push(e.to_string());
            report.sqs_errors += 1;
        }
        // After the queues: the snapshot should be as fresh as the backlog it meets.
        let snapshot = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                warn!(job = %rule.name, error = %e, kind = e.kind(), "reading the Jobs failed");
                report.read_errors.push(e.to_string());
                report.kubernetes_errors += 1;
                None
            }
        };
        let view = snapshot.as_ref().map(JobsSnapshot::view);
        let decision = job::decide(policy, &report.queues, view.as_ref(), now);
        report.decision = Some(decision);

        if let Some(view) = &view {
            let create = self.granted(policy, &decision);
            if create < decision.create {
                // What the poll reports is what it may do: the group's share, and why.
                report.decision = Some(job::JobDecision { create, reason: job::JobReason::GroupCapped, ..decision });
            }
            if create > 0 {
                self.create(create, &decision, &mut report).await;
            } else {
                debug!(job = %rule.name, reason = %decision.reason, backlog = decision.backlog, "creating no Jobs");
            }
            if let Some(counts) = decision.counts {
                self.deps.observer.groups().ran_jobs(&rule, counts.counted().saturating_add(report.created));
            }
            // Spec §4.1: every poll, active or not, after the creates.
            let old = job::cleanup(policy, view, now);
            if !old.is_empty() {
                let (deleted, error) = self.delete_all(&old, Propagation::Background).await;
                report.deleted = deleted;
                if deleted > 0 {
                    debug!(job = %rule.name, deleted, "history cleanup");
                }
                if let Some(e) = error {
                    warn!(job = %rule.name, error = %e, kind = e.kind(), deleted, "history cleanup: deleting a Job failed; the rest waits for the next poll");
                    report.delete_error = Some(e.to_string());
                }
            }
        } else if snapshot.is_none() {
            debug!(job = %rule.name, "the Job counts are not trusted yet: creating and deleting nothing");
        }
        report.duration = started.elapsed();
        self.report(report);
    }

    /// Creates `decision.create` Jobs one after another. A failed create is logged and
    /// reported, and the rest are still tried, as KEDA does; none is tried again in
    /// this poll (the next poll decides again, on counts that include what this one
    /// created). A lease that runs out ends the creates (spec §12.10), and so does a
    /// throttled one (the context's `qps`/`burst` budget had no token within the call
    /// timeout, or the API server answered 429): the next create would wait as long and
    /// fail the same way, so it is left to the next poll. With a thousand job rules
    /// starting at once, trying on doubled both the warnings and the polls' length
    /// (PERFORMANCE.md).
    async fn create(&mut self, n: u32, decision: &job::JobDecision, report: &mut JobPollReport) {
        let rule = self.rule.clone();
        for i in 0..n {
            let Some(budget) = self.write_budget() else {
                if report.created + report.create_failures == 0 {
                    debug!(job = %rule.name, create = n, reason = %decision.reason, "not leading (or a dry run): creating no Jobs");
                } else {
                    info!(job = %rule.name, created = report.created, "the lease ran out: the poll's other creates are left to the next leader");
                }
                return;
            };
            let create = self.deps.targets.create_job(&rule, &self.lead);
            match Box::pin(bounded(JobsOf(&rule), budget, create)).await {
                Ok(name) => {
                    report.created += 1;
                    debug!(job = %rule.name, name, "created a Job");
                }
                Err(e) => {
                    let throttled = e.error_kind() == TargetErrorKind::Throttled;
                    let left = n - i - 1;
                    warn!(job = %rule.name, error = %e, kind = e.kind(), "creating a Job failed");
                    report.create_failures += 1;
                    report.create_error = Some(e.to_string());
                    if throttled && left > 0 {
                        info!(job = %rule.name, left, "the write budget is spent: the poll's other creates wait for the next poll");
                        break;
                    }
                }
            }
        }
        info!(job = %rule.name, created = report.created, failed = report.create_failures, reason = %decision.reason, backlog = decision.backlog, "created Jobs");
    }

    /// What of `decision.create` the rule's `[[group]]` grants (all of it outside a
    /// group): its unfinished Jobs are its replicas in the group's ledger, and its
    /// creates a step up weighed against the other members' (item 5 of issue 24).
    fn granted(&self, policy: &job::JobPolicy, decision: &job::JobDecision) -> u32 {
        let Some(counts) = decision.counts else { return 0 };
        if self.rule.group.is_none() {
            return decision.create;
        }
        let running = counts.counted();
        let grant =
            self.deps.observer.groups().grant_jobs(&self.rule, running, decision.create, policy.effective_min());
        if grant.replicas < decision.create {
            debug!(job = %self.rule.name, create = decision.create, granted = grant.replicas, denied = grant.denied, "group_capped");
        }
        grant.replicas.min(decision.create)
    }

    /// Deletes `names` in order with `propagation`, stopping at the first failure (KEDA's
    /// cleanup) or when no write may start any more: how many were deleted, and the
    /// failure.
    async fn delete_all(&mut self, names: &[&str], propagation: Propagation) -> (u32, Option<TargetError>) {
        let rule = self.rule.clone();
        let mut deleted = 0;
        for name in names {
            let Some(budget) = self.write_budget() else {
                return (deleted, None);
            };
            let delete = self.deps.targets.delete_job(&rule, name, propagation, &self.lead);
            match Box::pin(bounded(JobsOf(&rule), budget, delete)).await {
                Ok(()) => deleted += 1,
                Err(e) => return (deleted, Some(e)),
            }
        }
        (deleted, None)
    }

    /// The rule's Jobs, within the call timeout.
    async fn snapshot(&self) -> Result<Option<JobsSnapshot>, TargetError> {
        let read = self.deps.targets.jobs(&self.rule);
        tokio::time::timeout(self.deps.call_timeout, read).await.unwrap_or_else(|_| {
            Err(TargetError::new(
                self.what(),
                TargetErrorKind::Timeout,
                format!("no answer within {}s", self.deps.call_timeout.as_secs_f64()),
            ))
        })
    }

    fn what(&self) -> String {
        format!("Jobs of {}/{}", self.rule.namespace, self.rule.name)
    }

    /// How long a write that starts now may run; `None` in a dry run, on a standby, or
    /// when the lease is too close to expiring.
    fn write_budget(&self) -> Option<Duration> {
        if self.deps.dry_run {
            return None;
        }
        self.lead.budget(self.deps.call_timeout)
    }

    fn report(&self, report: JobPollReport) {
        if let Some(record) = &self.record {
            self.deps.observer.job_polled(record, &report);
        }
    }

    /// Reads every trigger's queue concurrently.
    async fn read_queues(&self) -> Vec<Result<crate::engine::Counts, SourceError>> {
        if self.slots.len() == 1 {
            return vec![self.read_queue(0).await];
        }
        futures::future::join_all((0..self.slots.len()).map(|i| self.read_queue(i))).await
    }

    async fn read_queue(&self, i: usize) -> Result<crate::engine::Counts, SourceError> {
        let (t, q) = (&self.rule.trigger_policies[i], &self.rule.triggers[i]);
        let read = self.deps.queues.read(&self.slots[i], q, Attrs::of(t));
        let result = tokio::time::timeout(self.deps.call_timeout, read).await.unwrap_or_else(|_| {
            Err(SourceError::new(
                q.display(),
                SourceErrorKind::Timeout,
                format!("no answer within {}s", self.deps.call_timeout.as_secs_f64()),
            ))
        });
        if let Err(e) = &result {
            warn!(job = %self.rule.name, error = %e, kind = e.kind(), "reading the queue failed");
        }
        result
    }
}

/// The rule's policy at `now`: its own, or with the open `[[job.schedule]]` windows'
/// min, max and pause in force (the largest min, the smallest max, any pause), as a
/// rule's schedules apply. A window's min above the max in force is taken down to it:
/// the rule file rejects min > max, and KEDA's arithmetic for it (a cap of 2 × max)
/// would surprise a schedule's author.
/// `simulate` replays job rules with it too.
pub(crate) fn policy_at(rule: &JobRule, now: Time) -> std::borrow::Cow<'_, job::JobPolicy> {
    let Some(o) = crate::engine::schedule::in_force(&rule.schedules, now) else {
        return std::borrow::Cow::Borrowed(&rule.policy);
    };
    let mut policy = rule.policy.clone();
    policy.max_replica_count = o.max.or(policy.max_replica_count);
    policy.min_replica_count = o.min.unwrap_or(policy.min_replica_count);
    if let Some(max) = policy.max_replica_count {
        policy.min_replica_count = policy.min_replica_count.min(max);
    }
    policy.paused |= o.paused;
    std::borrow::Cow::Owned(policy)
}

/// A job rule's Jobs, as write errors name them: `Jobs of <namespace>/<name>`.
struct JobsOf<'a>(&'a JobRule);

impl std::fmt::Display for JobsOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jobs of {}/{}", self.0.namespace, self.0.name)
    }
}

#[cfg(test)]
#[path = "job_worker_tests.rs"]
mod tests;
