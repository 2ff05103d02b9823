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
use crate::engine::{self, Counts, Observation, Pause, State, Time};
use crate::source::{Attrs, QueueReader, Shared};
use crate::target::{ScaleTarget, TargetView, format_time};

/// Unix time for the engine, advanced by tokio's clock (so tests can pause it).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_unix_ms: i64,
    base: Instant,
}

impl Clock {
    /// A clock reading the system time now and advancing with tokio's `Instant`.
    pub fn system() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            base_unix_ms: unix.as_millis() as i64,
            base: Instant::now(),
        }
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
}

impl<Q, T> Clone for Deps<Q, T> {
    fn clone(&self) -> Self {
        Deps {
            queues: self.queues.clone(),
            targets: self.targets.clone(),
            clock: self.clock,
            dry_run: self.dry_run,
            call_timeout: self.call_timeout,
        }
    }
}

/// Runs `rule` until `cancel` fires: the first poll at once, then every
/// `polling_interval`; a late poll delays the next one, never bursts.
pub async fn run<Q: QueueReader, T: ScaleTarget>(
    rule: Arc<Rule>,
    deps: Deps<Q, T>,
    cancel: CancellationToken,
) {
    let span = info_span!("rule", rule = %rule.name, target = %rule.target);
    async move {
        let mut worker = Worker {
            state: State::new(deps.clock.now()),
            persisted_last_active: None,
            rule,
            deps,
        };
        let mut tick = tokio::time::interval(worker.rule.polling_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            worker.poll().await;
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
}

impl<Q: QueueReader, T: ScaleTarget> Worker<Q, T> {
    async fn poll(&mut self) {
        let now = self.deps.clock.now();
        let rule = self.rule.clone();
        let ctx = rule.context.as_deref();
        let view = match self.deps.targets.read(ctx, &rule.target).await {
            Ok(v) => v,
            Err(e) => {
                // Without the current replicas there is nothing to decide (KEDA aborts too).
                warn!(error = %e, kind = e.kind, "reading the target failed");
                return;
            }
        };
        self.adopt_last_active(&view);

        let queues = self.read_queues().await;
        let obs = Observation {
            replicas: view.replicas,
            status_replicas: view.status_replicas,
            pause: if rule.paused {
                Pause::Frozen
            } else {
                view.pause
            },
            queues,
        };
        let (next, decision) = engine::decide(&rule.policy, &self.state, &obs, now);
        self.state = next;

        match decision.write {
            Some(to) if self.deps.dry_run => {
                info!(from = decision.current, to, reason = %decision.reason, backlog = decision.backlog, "dry run: would scale");
            }
            Some(to) => {
                let from = decision.current;
                match self
                    .deps
                    .targets
                    .scale(ctx, &rule.target, to, view.resource_version.as_deref())
                    .await
                {
                    Ok(()) => {
                        self.state.record_scale(&rule.policy, from, to, now);
                        info!(from, to, reason = %decision.reason, backlog = decision.backlog, "scaled");
                    }
                    Err(e) => {
                        warn!(error = %e, kind = e.kind, from, to, reason = %decision.reason, "scaling failed")
                    }
                }
            }
            None => {
                debug!(replicas = decision.current, reason = %decision.reason, backlog = decision.backlog, "holding")
            }
        }
        self.persist_last_active().await;
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
        if self.deps.dry_run || self.persisted_last_active == Some(at) {
            return;
        }
        match self
            .deps
            .targets
            .set_last_active(self.rule.context.as_deref(), &self.rule.target, at)
            .await
        {
            Ok(()) => self.persisted_last_active = Some(at),
            Err(e) => {
                warn!(error = %e, kind = e.kind, last_active = %format_time(at), "recording last-active failed")
            }
        }
    }

    /// Reads every trigger's queue concurrently; a failed read is `None`.
    async fn read_queues(&self) -> Vec<Option<Counts>> {
        let reads = self.rule.policy.triggers.iter().zip(&self.rule.triggers).map(|(t, q)| {
            let need = Attrs { in_flight: t.scale_on_in_flight, delayed: t.scale_on_delayed };
            async move {
                match tokio::time::timeout(self.deps.call_timeout, self.deps.queues.read(q, need)).await {
                    Ok(Ok(counts)) => Some(counts),
                    Ok(Err(e)) => {
                        warn!(error = %e, kind = e.kind, queue = %q.display(), "reading the queue failed");
                        None
                    }
                    Err(_) => {
                        warn!(kind = "timeout", queue = %q.display(), "reading the queue timed out");
                        None
                    }
                }
            }
        });
        futures::future::join_all(reads).await
    }
}
