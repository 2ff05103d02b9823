//! One task per rule: on each tick, read the target and the queues, decide, patch.
//!
//! The worker owns its rule's engine state; nothing else touches it, so there are no
//! locks. Cancellation is only observed between polls: a poll in flight finishes (every
//! remote call has a timeout), so shutdown never cuts a patch in half.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Rule;
use crate::engine::Reason;
use crate::engine::{self, Counts, Observation, Pause, State, Time};
use crate::leader::Leadership;
use crate::source::{Attrs, QueueReader, Shared, Slot, SourceError, SourceErrorKind};
use crate::status::{Observer, PollReport, RecordHandle};
use crate::workload::{ScaleTarget, TargetError, TargetErrorKind, TargetEvent, TargetView, format_time};

/// A failing streak is reported as an Event at its first failure, then at most this
/// often, so a broken rule does not flood the API server.
const EVENT_REPEAT: Duration = Duration::from_secs(300);

/// Decisions per poll when the target keeps changing between the read and the write
/// (each one on a fresh read); after the last the poll reports the conflict.
const DECIDE_AGAIN: u32 = 3;

/// While a rule stays active, its last-active is stored at most this often (or a
/// quarter of its cooldown, if longer); the edge to inactive is always stored at once.
/// So a crash in the middle of an active period can bring the step to zero forward by
/// at most this much, and a busy rule costs one state write a minute at most.
pub const LAST_ACTIVE_EVERY: Duration = Duration::from_secs(60);

/// What a poll's write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// No write was due (or allowed: dry run, standby).
    Nothing,
    Scaled(u32, u32),
    /// The target changed since it was read: nothing was written.
    Conflict,
    Failed,
}

/// Consecutive failures of one kind, and when they were last reported as an Event.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    reported: Option<Instant>,
}

impl Streak {
    /// Counts a failure; true when it should be reported.
    fn fail(&mut self) -> bool {
        self.failures += 1;
        let due = self.reported.is_none_or(|at| at.elapsed() >= EVENT_REPEAT);
        if due {
            self.reported = Some(Instant::now());
        }
        due
    }

    fn ok(&mut self) {
        *self = Streak::default();
    }
}

/// Unix time for the engine, and for the timestamps written to the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// `None`: the wall clock. `Some`: Unix time at a tokio instant, advanced by
    /// tokio's clock.
    virtual_base: Option<(i64, Instant)>,
}

impl Clock {
    /// The wall clock, read at every call. Timestamps written to the cluster are read
    /// by other hosts (and by a restarted daemon), so they must be the time now, not
    /// the time at start plus how long this process has run: the monotonic clock
    /// does not count a suspended VM, and NTP may have stepped the wall clock since.
    pub fn system() -> Clock {
        Clock { virtual_base: None }
    }

    /// Unix time now, advanced from here on by tokio's clock: for tests that pause
    /// tokio's time.
    pub fn tokio() -> Clock {
        Clock { virtual_base: Some((unix_ms_now(), Instant::now())) }
    }

    pub fn now(&self) -> Time {
        match self.virtual_base {
            None => Time(unix_ms_now()),
            Some((unix_ms, at)) => Time(unix_ms + at.elapsed().as_millis() as i64),
        }
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// Runs a write for at most `budget` (the call timeout, or less when the lease's write
/// margin comes first); past it the write is abandoned. `target` names what was written
/// to (a rule's target, a job rule's Jobs), in the error only.
pub(crate) async fn bounded<R>(
    target: impl std::fmt::Display,
    budget: Duration,
    write: impl Future<Output = Result<R, TargetError>>,
) -> Result<R, TargetError> {
    tokio::time::timeout(budget, write).await.unwrap_or_else(|_| {
        let message = format!(
            "no answer within {}s (the call timeout, or the time left on the lease less its margin)",
            budget.as_secs_f64()
        );
        Err(TargetError::new(target.to_string(), TargetErrorKind::Timeout, message))
    })
}

/// What every worker shares: the adapters, the clock and the run options.
pub struct Deps<Q, T> {
    pub queues: Arc<Shared<Q>>,
    pub targets: Arc<T>,
    pub clock: Clock,
    /// Decide and log, never write.
    pub dry_run: bool,
    /// Bound on each remote call of a poll.
    pub call_timeout: Duration,
    pub observer: Arc<Observer>,
}

/// Runs `rule` until `cancel` fires: the first poll at `first_poll`, then every
/// `polling_interval`; a late poll delays the next one, never bursts. Starts from
/// `state` (a previous worker's, handed over on reload) or fresh, and returns the state
/// it ends with, including the poll that was in flight when `cancel` fired. `lead` says
/// whether this instance may write to the rule's context.
///
/// Not an `async fn`: one keeps its arguments for its whole life, beside the worker
/// built from them, and every idle rule's task would carry both. The worker is built
/// here and only it, the token and the timer live in the task.
pub fn run<Q: QueueReader, T: ScaleTarget>(
    rule: Arc<Rule>,
    deps: Arc<Deps<Q, T>>,
    lead: Leadership,
    cancel: CancellationToken,
    first_poll: Instant,
    state: Option<Box<State>>,
) -> impl Future<Output = State> + Send {
    let mut worker = Worker::new(rule, deps, lead, state);
    async move {
        let mut tick = tokio::time::interval_at(first_poll, worker.rule.polling_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Boxed: a poll's future holds the HTTP clients' request futures; inline,
            // every idle task would carry that size for good.
            Box::pin(worker.poll()).await;
        }
        // A clean stop stores what the budget held back, so a restart keeps the cooldown
        // exactly (only a crash can cost up to the budget's interval).
        Box::pin(worker.store_last_active()).await;
        // Events still being published are writes too: the drain waits for them (each
        // is bounded like any write).
        worker.events.close();
        worker.events.wait().await;
        debug!(rule = %worker.rule.name, target = %worker.rule.target, "stopped");
        worker.state
    }
}

struct Worker<Q, T> {
    rule: Arc<Rule>,
    /// Where polls are reported (`None` only if the observer does not know the rule).
    record: Option<RecordHandle>,
    /// Per trigger, its queue's shared reads.
    slots: Box<[Arc<Slot>]>,
    deps: Arc<Deps<Q, T>>,
    /// Whether this instance may write to the rule's context, as its elector says.
    lead: Leadership,
    state: State,
    /// The last `last_active` written to (or read from) the target's annotation.
    persisted_last_active: Option<Time>,
    read_failures: Streak,
    queue_failures: Streak,
    scale_failures: Streak,
    /// Events being published, in tasks of their own.
    events: TaskTracker,
    /// The last turn was skipped as a cold standby.
    standing_by: bool,
    /// The target's original replica count is stored (`restore_to_original_replica_count`).
    original_recorded: bool,
}

impl<Q: QueueReader, T: ScaleTarget> Worker<Q, T> {
    /// A new worker, on `state` or a fresh one: its record and its queues' slots are
    /// taken once, here.
    fn new(rule: Arc<Rule>, deps: Arc<Deps<Q, T>>, lead: Leadership, state: Option<Box<State>>) -> Self {
        Worker {
            lead,
            state: state.map_or_else(|| State::new(deps.clock.now()), |s| *s),
            persisted_last_active: None,
            record: deps.observer.record(&rule.name),
            slots: (0..rule.triggers.len()).map(|i| deps.queues.slot(&rule, i)).collect(),
            rule,
            deps,
            read_failures: Streak::default(),
            queue_failures: Streak::default(),
            scale_failures: Streak::default(),
            events: TaskTracker::new(),
            standing_by: false,
            original_recorded: false,
        }
    }

    async fn poll(&mut self) {
        let started = Instant::now();
        let now = self.deps.clock.now();
        let rule = self.rule.clone();
        let ctx = rule.context.as_deref();
        let mut report = PollReport {
            at: now,
            next_poll: Time(now.0 + rule.polling_interval.as_millis() as i64),
            ..PollReport::default()
        };
        if self.lead.cold_standby() {
            // Another instance leads: no queue read, no target read, until this one does.
            self.standing_by = true;
            if let Some(record) = &self.record {
                self.deps.observer.stood_by(record, report.next_poll);
            }
            return;
        }
        if std::mem::take(&mut self.standing_by) {
            // Taking over from a cold standby: the HPA phase starts afresh (seeded with
            // the replicas at first sight), as a controller-manager's HPAs do after a
            // failover; last-active comes from the stored state, read below (the
            // elector had it read again), so the cooldown the last leader ran is kept.
            self.state.reset_hpa();
            debug!(rule = %rule.name, target = %rule.target, "leading: polling again, the HPA phase afresh");
        }
        let view = match self.deps.targets.read(ctx, &rule.target).await {
            Ok(v) => Some(v),
            Err(e) => {
                // Without the current replicas there is nothing to decide (KEDA aborts too).
                warn!(rule = %rule.name, target = %rule.target, error = %e, kind = e.kind(), "reading the target failed");
                if self.read_failures.fail() {
                    let failures = self.read_failures.failures;
                    self.event(true, "FailedGetScale", format!("{e} ({failures} failed polls in a row)"));
                }
                report.target_error = Some(e.to_string());
                None
            }
        };
        let decision;
        if let Some(mut view) = view {
            self.read_failures.ok();
            self.adopt_last_active(&view, now);
            if rule.restore_to_original_replica_count && !self.original_recorded {
                // Before this poll can write: the count sqscale found, not one it made.
                Box::pin(self.record_original(view.replicas)).await;
            }
            let queues = self.read_queues().await;
            match queues.iter().find_map(|r| r.as_ref().err()) {
                Some(e) => {
                    if self.queue_failures.fail() {
                        let failures = self.queue_failures.failures;
                        self.event(true, "FailedGetQueueAttributes", format!("{e} ({failures} failed polls in a row)"));
                    }
                }
                None => self.queue_failures.ok(),
            }
            report.queues =
                rule.policy.triggers.iter().zip(&queues).map(|(t, r)| r.as_ref().ok().map(|c| t.backlog(c))).collect();
            report.queue_errors = queues.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
            let mut obs = Observation {
                replicas: view.replicas,
                status_replicas: view.scale_status_replicas(),
                ready_replicas: view.ready_replicas.unwrap_or(0),
                pause: if rule.paused { Pause::Frozen } else { view.pause },
                overrides: view.overrides.union(rule.overrides),
                queues: queues.into_iter().map(Result::ok).collect(),
            };
            let mut round = 1;
            decision = loop {
                let (next, d) = engine::decide(&rule.policy, &self.state, &obs, now);
                let d = self.deps.observer.groups().limit(&rule, d);
                let written = self.apply(&d, &view, &mut report).await;
                // A 409: the target changed between the read and the write (a `kubectl
                // scale`, a pause annotation). Resending the same count would overwrite
                // that change; decide again on what is there now.
                if written == Written::Conflict && round < DECIDE_AGAIN {
                    round += 1;
                    // Boxed, as every rare path: a poll's future is allocated whole.
                    match Box::pin(self.deps.targets.read_fresh(ctx, &rule.target)).await {
                        Ok(fresh) => {
                            debug!(rule = %rule.name, target = %rule.target, round, "the target changed under the write; deciding again");
                            self.adopt_last_active(&fresh, now);
                            (obs.replicas, obs.status_replicas) = (fresh.replicas, fresh.scale_status_replicas());
                            obs.ready_replicas = fresh.ready_replicas.unwrap_or(0);
                            obs.pause = if rule.paused { Pause::Frozen } else { fresh.pause };
                            obs.overrides = fresh.overrides.union(rule.overrides);
                            view = fresh;
                            report.scale_error = None;
                            continue;
                        }
                        Err(e) => report.scale_error = Some(e.to_string()),
                    }
                }
                self.state = next;
                if let Written::Scaled(_, to) = written {
                    self.state.record_scale(&rule.policy, &d, now);
                    self.deps.observer.groups().ran(&rule, to);
                }
                break d;
            };
            report.decision = Some(&decision);
        }
        report.last_active = self.state.last_active;
        report.duration = started.elapsed();
        if let Some(record) = &self.record {
            self.deps.observer.polled(record, &report);
        }
        // The poll is done and reported; storing last-active may wait up to the state's
        // write spacing (a second) for the PATCH it joins. Counted in the poll, it made a
        // busy rule's first poll, and so `/readyz`, wait for it, and put that second into
        // `sqscale_poll_duration_seconds` every 8th poll.
        if let Some(active) = report.decision.map(|d| d.active) {
            self.persist_last_active(active).await;
        }
    }

    /// Writes the decision to the target (unless dry run) and logs it.
    async fn apply(&mut self, d: &engine::Decision, view: &TargetView, report: &mut PollReport<'_>) -> Written {
        let rule = &self.rule;
        let from = d.current;
        match d.write {
            Some(to) if self.deps.dry_run => {
                info!(rule = %rule.name, target = %rule.target, from, to, reason = %d.reason, backlog = d.backlog, "dry run: would scale");
                Written::Nothing
            }
            Some(to) => {
                // Checked right before the write, not only before the poll: the poll's
                // reads may have taken most of what was left of the lease.
                let Some(budget) = self.write_budget() else {
                    // A standby decides (so its windows stay warm) but only the leader writes.
                    debug!(rule = %rule.name, target = %rule.target, from, to, reason = %d.reason, backlog = d.backlog, "standby: not scaling");
                    return Written::Nothing;
                };
                let write = self.deps.targets.scale(
                    rule.context.as_deref(),
                    &rule.target,
                    to,
                    view.resource_version.as_deref(),
                );
                // Boxed, as every write: a poll's future is allocated whole when it
                // starts, and most polls write nothing.
                match Box::pin(bounded(&rule.target, budget, write)).await {
                    Ok(()) => {
                        report.scaled = Some((from, to));
                        self.scale_failures.ok();
                        info!(rule = %rule.name, target = %rule.target, from, to, reason = %d.reason, backlog = d.backlog, "scaled");
                        let reason = match d.reason {
                            Reason::Activated => "ScaleTargetActivated",
                            Reason::ScaledToZero | Reason::ScaledToIdle => "ScaleTargetDeactivated",
                            _ => "SuccessfulRescale",
                        };
                        let backlog = d.backlog.map_or_else(|| "unknown".to_owned(), |b| b.to_string());
                        self.event(false, reason, format!("New size: {to}; reason: {}; backlog: {backlog}", d.reason));
                        Written::Scaled(from, to)
                    }
                    Err(e) if e.error_kind() == TargetErrorKind::Conflict => {
                        info!(rule = %rule.name, target = %rule.target, from, to, reason = %d.reason, "the target changed since it was read; not scaling on a stale view");
                        report.scale_error = Some(e.to_string());
                        Written::Conflict
                    }
                    Err(e) => {
                        warn!(rule = %rule.name, target = %rule.target, error = %e, kind = e.kind(), from, to, reason = %d.reason, "scaling failed");
                        if self.scale_failures.fail() {
                            self.event(
                                true,
                                "FailedRescale",
                                format!("New size: {to}; reason: {}; error: {e}", d.reason),
                            );
                        }
                        report.scale_error = Some(e.to_string());
                        Written::Failed
                    }
                }
            }
            None => {
                debug!(rule = %rule.name, target = %rule.target, replicas = from, reason = %d.reason, backlog = d.backlog, "holding");
                Written::Nothing
            }
        }
    }

    /// How long a write to the target that starts now may run; `None` when none may
    /// start: in a dry run, on a standby, or when the lease is too close to expiring.
    fn write_budget(&self) -> Option<Duration> {
        if self.deps.dry_run {
            return None;
        }
        self.lead.budget(self.deps.call_timeout)
    }

    /// Publishes an Event on the target without holding up the poll; a failure to
    /// record it is only logged (at debug: the API server's own problems show elsewhere).
    fn event(&self, warning: bool, reason: &'static str, note: String) {
        let Some(budget) = self.write_budget() else {
            return;
        };
        let targets = self.deps.targets.clone();
        let rule = self.rule.clone();
        let event = TargetEvent { warning, reason, note };
        self.events.spawn(async move {
            let publish = targets.publish(rule.context.as_deref(), &rule.target, &event);
            if let Err(e) = bounded(&rule.target, budget, publish).await {
                debug!(rule = %rule.name, target = %rule.target, error = %e, reason = event.reason, "recording an event failed");
            }
        });
    }

    /// Takes the stored `last_active` when it is newer than ours: after a restart (so the
    /// cooldown is kept) or when another instance was leading. A time after `now` (a
    /// clock that ran ahead wrote it) is taken as now: kept as it is, it would hold the
    /// cooldown for as long as the clocks differed.
    fn adopt_last_active(&mut self, view: &TargetView, now: Time) {
        if let Some(at) = view.last_active {
            if at > now {
                let rule = &self.rule;
                warn!(rule = %rule.name, target = %rule.target, last_active = %format_time(at), now = %format_time(now), "the stored last-active time lies in the future; taking it as now");
                // Not recorded as stored: the leader writes the clamped time back.
                self.state.last_active = Some(now);
                return;
            }
            if self.state.last_active.is_none_or(|mine| at > mine) {
                self.state.last_active = Some(at);
            }
        }
        // Only what sqscale's state holds counts as stored: an annotation left by an older
        // version is copied into the state at the next write.
        self.persisted_last_active = self.persisted_last_active.max(view.stored_last_active);
    }

    /// Stores last-active when it matters: on the poll that finds the rule inactive
    /// (the value a restart must see), and while active at most once per
    /// max([`LAST_ACTIVE_EVERY`], cooldown / 4). Nothing else is written while replicas
    /// hold steady.
    async fn persist_last_active(&mut self, active: bool) {
        let Some(at) = self.state.last_active else {
            return;
        };
        let every = LAST_ACTIVE_EVERY.max(self.rule.policy.cooldown / 4).as_millis() as i64;
        let due = !active || self.persisted_last_active.is_none_or(|p| at.0 - p.0 >= every);
        if due {
            self.store_last_active().await;
        }
    }

    /// Stores last-active if it differs from what was stored (as the leader only, never
    /// in a dry run: see [`Worker::write_budget`]).
    async fn store_last_active(&mut self) {
        let Some(at) = self.state.last_active else {
            return;
        };
        if self.persisted_last_active == Some(at) {
            return;
        }
        let Some(budget) = self.write_budget() else {
            return;
        };
        let write = self.deps.targets.set_last_active(self.rule.context.as_deref(), &self.rule.target, at, &self.lead);
        match Box::pin(bounded(&self.rule.target, budget, write)).await {
            Ok(()) => self.persisted_last_active = Some(at),
            Err(e) => {
                let rule = &self.rule;
                warn!(rule = %rule.name, target = %rule.target, error = %e, kind = e.kind(), last_active = %format_time(at), "recording last-active failed")
            }
        }
    }

    /// Stores the target's replica count as its original, unless one is stored already
    /// (by an earlier run, or another instance): KEDA records `originalReplicaCount` once,
    /// when it first finds the target. Only where writes are allowed (not in a dry run,
    /// not on a standby: the leader records it).
    async fn record_original(&mut self, replicas: u32) {
        let Some(budget) = self.write_budget() else {
            return;
        };
        let (ctx, target) = (self.rule.context.as_deref(), &self.rule.target);
        let stored = match self.deps.targets.original_replicas(ctx, target).await {
            Ok(stored) => stored,
            Err(e) => {
                warn!(rule = %self.rule.name, target = %target, error = %e, kind = e.kind(), "reading the original replica count failed");
                return;
            }
        };
        if stored.is_none() {
            let write = self.deps.targets.set_original_replicas(ctx, target, Some(replicas), &self.lead);
            if let Err(e) = bounded(target, budget, write).await {
                warn!(rule = %self.rule.name, target = %target, error = %e, kind = e.kind(), "recording the original replica count failed");
                return;
            }
            info!(rule = %self.rule.name, target = %target, replicas, "recorded the original replica count, restored when the rule is removed");
        }
        self.original_recorded = true;
    }

    /// Reads every trigger's queue concurrently.
    async fn read_queues(&self) -> Vec<Result<Counts, SourceError>> {
        let triggers = &self.rule.policy.triggers;
        if triggers.len() == 1 {
            // Most rules have one trigger: no join, no second copy of the read's future.
            return vec![self.read_queue(0).await];
        }
        futures::future::join_all((0..triggers.len()).map(|i| self.read_queue(i))).await
    }

    async fn read_queue(&self, i: usize) -> Result<Counts, SourceError> {
        let (t, q) = (&self.rule.policy.triggers[i], &self.rule.triggers[i]);
        let read = self.deps.queues.read(&self.slots[i], q, Attrs::of(t));
        let result = match tokio::time::timeout(self.deps.call_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::new(
                q.display(),
                SourceErrorKind::Timeout,
                format!("no answer within {}s", self.deps.call_timeout.as_secs_f64()),
            )),
        };
        if let Err(e) = &result {
            let rule = &self.rule;
            warn!(rule = %rule.name, target = %rule.target, error = %e, kind = e.kind(), "reading the queue failed");
        }
        result
    }
}

/// Puts the target of a removed rule back to its original replica count (KEDA's
/// finalizer with `restoreToOriginalReplicaCount`), then forgets that count, so a rule
/// added later records the count of its own time. Called once the rule's worker has
/// stopped; a failure is logged, as KEDA logs it.
pub async fn restore_original<Q, T: ScaleTarget>(rule: &Rule, deps: &Deps<Q, T>, lead: &Leadership) {
    let (ctx, target) = (rule.context.as_deref(), &rule.target);
    let original = match deps.targets.original_replicas(ctx, target).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            info!(rule = %rule.name, target = %target, "removed; no original replica count stored, so the target stays as it is");
            return;
        }
        Err(e) => {
            warn!(rule = %rule.name, target = %target, error = %e, kind = e.kind(), "removed; reading the original replica count failed, so the target stays as it is");
            return;
        }
    };
    let budget = || if deps.dry_run { None } else { lead.budget(deps.call_timeout) };
    if budget().is_none() {
        info!(rule = %rule.name, target = %target, to = original, "removed; would restore the original replica count, but may not write (dry run or standby)");
        return;
    }
    let view = match deps.targets.read_fresh(ctx, target).await {
        Ok(v) => v,
        Err(e) => {
            warn!(rule = %rule.name, target = %target, error = %e, kind = e.kind(), "removed; reading the target failed, so it stays as it is");
            return;
        }
    };
    if view.replicas != original {
        let Some(left) = budget() else { return };
        let write = deps.targets.scale(ctx, target, original, view.resource_version.as_deref());
        if let Err(e) = bounded(target, left, write).await {
            warn!(rule = %rule.name, target = %target, error = %e, kind = e.kind(), to = original, "removed; restoring the original replica count failed");
            return;
        }
        info!(rule = %rule.name, target = %target, from = view.replicas, to = original, "removed; restored the original replica count");
    }
    let Some(left) = budget() else { return };
    if let Err(e) = bounded(target, left, deps.targets.set_original_replicas(ctx, target, None, lead)).await {
        warn!(rule = %rule.name, target = %target, error = %e, kind = e.kind(), "forgetting the original replica count failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::sqs::Sqs;
    use crate::workload::kube::Kube;

    /// Timestamps written to the cluster come from the wall clock at the time of the
    /// write, however the monotonic clock has run since the start (it stops while a VM
    /// is suspended; NTP steps only the wall clock). Tokio's paused clock stands in for
    /// a monotonic clock that ran an hour more than the wall clock.
    #[tokio::test(start_paused = true)]
    async fn the_system_clock_reads_the_wall_clock_every_time() {
        let (system, virtual_) = (Clock::system(), Clock::tokio());
        tokio::time::advance(Duration::from_secs(3600)).await;
        let wall = unix_ms_now();
        assert!((system.now().0 - wall).abs() < 1000, "{:?} vs {wall}", system.now());
        assert!((virtual_.now().0 - wall - 3_600_000).abs() < 1000, "the test clock follows tokio's");
    }

    /// A poll's future is allocated when the poll starts and lives until it ends; at
    /// start-up thousands of polls wait for the target cache's first list at once. Slow,
    /// rare paths (building clients, the SDK fallback, writes) are boxed where they are
    /// taken, so the common poll stays small.
    #[tokio::test]
    async fn a_poll_and_an_idle_worker_are_small() {
        let config = crate::config::from_str(
            "[[rule]]\nname = \"r\"\ntarget = { kind = \"Deployment\", name = \"d\" }\n\
             [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\nqueue_length = 5\n",
        )
        .unwrap();
        let rule = Arc::new(config.rules.into_iter().next().unwrap());
        let deps = Arc::new(Deps {
            queues: Arc::new(Shared::new(Sqs::new(Duration::from_secs(5)))),
            targets: Arc::new(Kube::new(None, None, Duration::from_secs(5))),
            clock: Clock::system(),
            dry_run: false,
            call_timeout: Duration::from_secs(5),
            observer: Arc::new(Observer::new()),
        });
        // What every idle rule holds for good: its task's future.
        let task =
            run(rule.clone(), deps.clone(), Leadership::unelected(), CancellationToken::new(), Instant::now(), None);
        let size = std::mem::size_of_val(&task);
        println!("worker task future: {size} bytes");
        assert!(size <= 512, "a worker's task future is {size} bytes");
        let mut worker = Worker::new(rule, deps, Leadership::unelected(), None);
        let size = std::mem::size_of_val(&worker.poll());
        println!("poll future: {size} bytes");
        assert!(size <= 1536, "a poll's future is {size} bytes");
    }
}
