//! One task per rule: on each tick, read the target and the queues, decide, patch.
//!
//! The worker owns its rule's engine state; nothing else touches it, so there are no
//! locks. Cancellation is only observed between polls: a poll in flight finishes (every
//! remote call has a timeout), so shutdown never cuts a patch in half.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Rule;
use crate::engine::Reason;
use crate::engine::{self, Counts, Observation, Pause, State, Time};
use crate::source::{Attrs, QueueReader, Shared, SourceError};
use crate::status::{Observer, PollReport};
use crate::target::{ScaleTarget, TargetEvent, TargetView, format_time};

/// A failing streak is reported as an Event at its first failure, then at most this
/// often, so a broken rule does not flood the API server.
const EVENT_REPEAT: Duration = Duration::from_secs(300);

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

/// Unix time for the engine, advanced by tokio's clock (so tests can pause it).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_unix_ms: i64,
    base: Instant,
}

impl Clock {
    /// A clock reading the system time now and advancing with tokio's `Instant`.
    pub fn system() -> Clock {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { base_unix_ms: unix.as_millis() as i64, base: Instant::now() }
    }

    pub fn now(&self) -> Time {
        Time(self.base_unix_ms + self.base.elapsed().as_millis() as i64)
    }
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

impl<Q, T> Clone for Deps<Q, T> {
    fn clone(&self) -> Self {
        Deps {
            queues: self.queues.clone(),
            targets: self.targets.clone(),
            clock: self.clock,
            dry_run: self.dry_run,
            call_timeout: self.call_timeout,
            observer: self.observer.clone(),
        }
    }
}

/// Runs `rule` until `cancel` fires: the first poll after `first_poll`, then every
/// `polling_interval`; a late poll delays the next one, never bursts.
pub async fn run<Q: QueueReader, T: ScaleTarget>(
    rule: Arc<Rule>,
    deps: Deps<Q, T>,
    cancel: CancellationToken,
    first_poll: Duration,
) {
    let span = info_span!("rule", rule = %rule.name, target = %rule.target);
    async move {
        let mut worker = Worker {
            state: State::new(deps.clock.now()),
            persisted_last_active: None,
            rule,
            deps,
            read_failures: Streak::default(),
            queue_failures: Streak::default(),
            scale_failures: Streak::default(),
        };
        let mut tick = tokio::time::interval_at(Instant::now() + first_poll, worker.rule.polling_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Boxed: a poll's future holds the HTTP clients' request futures, kilobytes;
            // inline, every idle task would carry that size for good.
            Box::pin(worker.poll()).await;
        }
        debug!("stopped");
    }
    .instrument(span)
    .await
}

struct Worker<Q, T> {
    rule: Arc<Rule>,
    deps: Deps<Q, T>,
    state: State,
    /// The last `last_active` written to (or read from) the target's annotation.
    persisted_last_active: Option<Time>,
    read_failures: Streak,
    queue_failures: Streak,
    scale_failures: Streak,
}

impl<Q: QueueReader, T: ScaleTarget> Worker<Q, T> {
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
        let view = match self.deps.targets.read(ctx, &rule.target).await {
            Ok(v) => Some(v),
            Err(e) => {
                // Without the current replicas there is nothing to decide (KEDA aborts too).
                warn!(error = %e, kind = e.kind, "reading the target failed");
                if self.read_failures.fail() {
                    let failures = self.read_failures.failures;
                    self.event(true, "FailedGetScale", format!("{e} ({failures} failed polls in a row)"));
                }
                report.target_error = Some(e.to_string());
                None
            }
        };
        let decision;
        if let Some(view) = view {
            self.read_failures.ok();
            self.adopt_last_active(&view);
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
            report.queues = rule
                .triggers
                .iter()
                .zip(&rule.policy.triggers)
                .zip(&queues)
                .map(|((q, t), r)| {
                    (q.display().to_owned(), r.as_ref().map(|c| t.backlog(c)).map_err(|e| e.to_string()))
                })
                .collect();
            let obs = Observation {
                replicas: view.replicas,
                status_replicas: view.status_replicas,
                pause: if rule.paused { Pause::Frozen } else { view.pause },
                queues: queues.into_iter().map(Result::ok).collect(),
            };
            let (next, d) = engine::decide(&rule.policy, &self.state, &obs, now);
            self.state = next;
            decision = d;
            self.apply(&decision, &view, now, &mut report).await;
            self.persist_last_active().await;
            report.decision = Some(&decision);
        }
        report.last_active = self.state.last_active;
        report.duration = started.elapsed();
        self.deps.observer.polled(&rule.name, &report);
    }

    /// Writes the decision to the target (unless dry run) and logs it.
    async fn apply(&mut self, d: &engine::Decision, view: &TargetView, now: Time, report: &mut PollReport<'_>) {
        let rule = &self.rule;
        let from = d.current;
        match d.write {
            Some(to) if self.deps.dry_run => {
                info!(from, to, reason = %d.reason, backlog = d.backlog, "dry run: would scale");
            }
            // A standby decides (so its windows stay warm) but only the leader writes.
            Some(to) if !self.leads() => {
                debug!(from, to, reason = %d.reason, backlog = d.backlog, "standby: not scaling");
            }
            Some(to) => {
                match self
                    .deps
                    .targets
                    .scale(rule.context.as_deref(), &rule.target, to, view.resource_version.as_deref())
                    .await
                {
                    Ok(()) => {
                        self.state.record_scale(&rule.policy, from, to, now);
                        report.scaled = Some((from, to));
                        self.scale_failures.ok();
                        info!(from, to, reason = %d.reason, backlog = d.backlog, "scaled");
                        let reason = match d.reason {
                            Reason::Activated => "ScaleTargetActivated",
                            Reason::ScaledToZero | Reason::ScaledToIdle => "ScaleTargetDeactivated",
                            _ => "SuccessfulRescale",
                        };
                        let backlog = d.backlog.map_or_else(|| "unknown".to_owned(), |b| b.to_string());
                        self.event(false, reason, format!("New size: {to}; reason: {}; backlog: {backlog}", d.reason));
                    }
                    Err(e) => {
                        warn!(error = %e, kind = e.kind, from, to, reason = %d.reason, "scaling failed");
                        if self.scale_failures.fail() {
                            self.event(
                                true,
                                "FailedRescale",
                                format!("New size: {to}; reason: {}; error: {e}", d.reason),
                            );
                        }
                        report.scale_error = Some(e.to_string());
                    }
                }
            }
            None => debug!(replicas = from, reason = %d.reason, backlog = d.backlog, "holding"),
        }
    }

    fn leads(&self) -> bool {
        self.deps.observer.leads(self.rule.context.as_deref())
    }

    /// Publishes an Event on the target without holding up the poll; a failure to
    /// record it is only logged (at debug: the API server's own problems show elsewhere).
    fn event(&self, warning: bool, reason: &'static str, note: String) {
        if self.deps.dry_run || !self.leads() {
            return;
        }
        let targets = self.deps.targets.clone();
        let rule = self.rule.clone();
        let event = TargetEvent { warning, reason, note };
        tokio::spawn(
            async move {
                if let Err(e) = targets.publish(rule.context.as_deref(), &rule.target, &event).await {
                    debug!(error = %e, reason = event.reason, "recording an event failed");
                }
            }
            .in_current_span(),
        );
    }

    /// Takes the annotation's `last_active` when it is newer than ours: after a restart
    /// (so the cooldown is kept) or when another instance was leading.
    fn adopt_last_active(&mut self, view: &TargetView) {
        if let Some(at) = view.last_active {
            if self.state.last_active.is_none_or(|mine| at > mine) {
                self.state.last_active = Some(at);
            }
            self.persisted_last_active = self.persisted_last_active.max(Some(at));
        }
    }

    async fn persist_last_active(&mut self) {
        let Some(at) = self.state.last_active else {
            return;
        };
        if self.deps.dry_run || !self.leads() || self.persisted_last_active == Some(at) {
            return;
        }
        match self.deps.targets.set_last_active(self.rule.context.as_deref(), &self.rule.target, at).await {
            Ok(()) => self.persisted_last_active = Some(at),
            Err(e) => {
                warn!(error = %e, kind = e.kind, last_active = %format_time(at), "recording last-active failed")
            }
        }
    }

    /// Reads every trigger's queue concurrently.
    async fn read_queues(&self) -> Vec<Result<Counts, SourceError>> {
        let reads = self.rule.policy.triggers.iter().zip(&self.rule.triggers).map(|(t, q)| {
            let need = Attrs { in_flight: t.scale_on_in_flight, delayed: t.scale_on_delayed };
            async move {
                let result = match tokio::time::timeout(self.deps.call_timeout, self.deps.queues.read(q, need)).await {
                    Ok(r) => r,
                    Err(_) => Err(SourceError {
                        queue: q.display().to_owned(),
                        kind: "timeout",
                        message: format!("no answer within {}s", self.deps.call_timeout.as_secs_f64()),
                    }),
                };
                if let Err(e) = &result {
                    warn!(error = %e, kind = e.kind, "reading the queue failed");
                }
                result
            }
        });
        futures::future::join_all(reads).await
    }
}
