//! The decision engine: KEDA's ScaledObject executor plus the HPA it drives, as one pure
//! function of (policy, state, observation, now).
//!
//! No I/O, no clock reads, no logging: the daemon and `simulate` both call [`decide`],
//! the first with Unix time, the second with a virtual clock, and get the same answers.
//! The references are `../shared/spec/keda.md` (phase K) and `../shared/spec/hpa.md`
//! (phase H); every vector of both is a test in `tests.rs` and `hpa_tests.rs`.

pub mod formula;
pub mod group;
pub mod hpa;
pub mod job;
pub mod schedule;

use std::time::Duration;

use hpa::{Behavior, History, Limit, Recommendation, ScaleEvent, Tolerances};

/// A point in time in milliseconds. The daemon uses Unix time, so `last_active` can be
/// kept on the target as RFC 3339; `simulate` counts from the start of the trace. The
/// engine only subtracts and compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub i64);

impl Time {
    pub fn from_secs(secs: i64) -> Time {
        Time(secs * 1000)
    }

    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn since(self, earlier: Time) -> i64 {
        self.0 - earlier.0
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the engine needs of a rule: the validated numbers, nothing about where the
/// queue or the target live.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `min_replica_count`; KEDA's own floor. The HPA phase uses `max(min, 1)`.
    pub min: u32,
    /// `max_replica_count`.
    pub max: u32,
    /// `idle_replica_count`: where an inactive target rests after the cooldown.
    pub idle: Option<u32>,
    /// `cooldown_period`: from the last active poll to the scale to zero or idle.
    pub cooldown: Duration,
    /// `initial_cooldown_period`: applies while the rule has never been active.
    pub initial_cooldown: Duration,
    pub fallback: Option<Fallback>,
    /// `behavior` from the rule, defaults filled in; `None` selects the HPA's legacy path.
    /// Boxed: most rules have none, and ten thousand rules would carry its size inline.
    pub behavior: Option<Box<Behavior>>,
    /// The HPA controller's `--horizontal-pod-autoscaler-downscale-stabilization`
    /// (300 s). Not a rule-file key; the KEDA vectors use 0 unless they say otherwise.
    pub legacy_downscale_window: Duration,
    pub tolerances: Tolerances,
    /// `activation_polls`: consecutive active polls before a rule at zero (or below min
    /// at idle) activates. 1 is KEDA (the first active poll activates); more debounces
    /// SQS's approximate counts, which can show phantom messages on an idle queue
    /// (kedacore/keda#7845).
    pub activation_polls: u32,
    /// One entry per trigger, in rule order; observations use the same order.
    pub triggers: Vec<TriggerPolicy>,
    /// `[[rule.schedule]]`: windows whose values apply over `min`, `max` and `paused`
    /// while they are open (see [`schedule`]). Boxed: most rules have none.
    pub schedules: Box<[schedule::Schedule]>,
    /// `scaling_modifiers`: one composite metric instead of one per trigger.
    pub modifiers: Option<Box<Modifiers>>,
}

/// KEDA's `scalingModifiers` (`../shared/spec/keda.md` §2.11): a formula over the named
/// triggers' metrics gives one composite metric, which alone decides activity and what
/// the HPA proposes.
#[derive(Clone, Debug, PartialEq)]
pub struct Modifiers {
    pub formula: formula::Formula,
    /// The composite's target: per replica (AverageValue) or in total (Value).
    pub target: f64,
    /// Active when the composite is strictly above it.
    pub activation_target: f64,
    pub metric_type: MetricType,
}

/// The per-trigger numbers of an `aws-sqs-queue` trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerPolicy {
    /// The trigger's `name`: its variable in a `scaling_modifiers` formula.
    pub name: Option<String>,
    /// `queue_length`: messages per replica (the HPA AverageValue target), > 0.
    pub queue_length: u64,
    /// `activation_queue_length`: active when the backlog is strictly above it.
    pub activation_queue_length: i64,
    pub scale_on_in_flight: bool,
    pub scale_on_delayed: bool,
    /// The HPA target type KEDA gives the trigger's metric (`metricType`).
    pub metric_type: MetricType,
}

/// `metricType` of a trigger: how the HPA turns the backlog into replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricType {
    /// `ceil(backlog / queue_length)`: `queue_length` messages per replica (KEDA's default).
    #[default]
    AverageValue,
    /// `queue_length` is a total: `ceil(backlog / queue_length * ready pods)`, which keeps
    /// growing while the backlog stays above it (vector TV-36).
    Value,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::AverageValue => "AverageValue",
            MetricType::Value => "Value",
        }
    }
}

impl TriggerPolicy {
    /// KEDA's queue length: visible + in flight (if counted) + delayed (if counted).
    pub fn backlog(&self, c: &Counts) -> u64 {
        let mut q = c.visible;
        if self.scale_on_in_flight {
            q = q.saturating_add(c.in_flight);
        }
        if self.scale_on_delayed {
            q = q.saturating_add(c.delayed);
        }
        q
    }
}

/// KEDA's `fallback`: what to do after `failure_threshold` consecutive failed polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub failure_threshold: u32,
    pub replicas: u32,
    pub behavior: FallbackBehavior,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FallbackBehavior {
    #[default]
    Static,
    CurrentReplicas,
    CurrentReplicasIfHigher,
    CurrentReplicasIfLower,
    /// sqscale's own (kedacore/keda#965): past the threshold a failed trigger decides on
    /// its last successful reading while that reading is at most `max_age` old (never
    /// scaling in on it), then on `replicas` as `Static` does.
    LastKnown {
        max_age: Duration,
    },
}

impl Fallback {
    fn replicas_for(&self, current: u32) -> u32 {
        match self.behavior {
            FallbackBehavior::Static | FallbackBehavior::LastKnown { .. } => self.replicas,
            FallbackBehavior::CurrentReplicas => current,
            FallbackBehavior::CurrentReplicasIfHigher => current.max(self.replicas),
            FallbackBehavior::CurrentReplicasIfLower => current.min(self.replicas),
        }
    }
}

/// The three SQS counts of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `ApproximateNumberOfMessages`.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`.
    pub in_flight: u64,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: u64,
}

/// The pause state of a target, from the rule and the target's annotations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pause {
    #[default]
    No,
    /// `paused = true` in the rule or `sqscale.io/paused` truthy: replicas frozen.
    Frozen,
    /// `sqscale.io/paused-replicas: "N"`: pinned to N (wins over `paused`).
    Replicas(u32),
    /// `sqscale.io/paused-replicas` present but not a count: paused, nothing written.
    InvalidReplicas,
}

impl Pause {
    /// Reads the two annotations the way KEDA reads its own: `paused` absent is false,
    /// unparseable is true (`"yes"` pauses); `paused-replicas` pauses by its presence.
    pub fn from_annotations(paused: Option<&str>, paused_replicas: Option<&str>) -> Pause {
        if let Some(v) = paused_replicas {
            return match v.trim().parse::<u32>() {
                Ok(n) => Pause::Replicas(n),
                Err(_) => Pause::InvalidReplicas,
            };
        }
        match paused {
            Some(v) if go_parse_bool(v) != Some(false) => Pause::Frozen,
            _ => Pause::No,
        }
    }
}

/// One-way pauses and forced activation (KEDA's `paused-scale-in`, `paused-scale-out`
/// and `force-activation` annotations, `../shared/spec/keda.md` §2.9): a rule key and an
/// annotation on the target each suffice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// No step to zero or idle, and the HPA's scale-down is `Disabled`.
    pub paused_scale_in: bool,
    /// No activation from zero or idle, and the HPA's scale-up is `Disabled`.
    pub paused_scale_out: bool,
    /// Active whatever the queues say.
    pub force_activation: bool,
}

impl Overrides {
    /// Reads the annotations as KEDA's `getBoolAnnotation` does: absent is false, a value
    /// that is not a Go bool is true.
    pub fn from_annotations(scale_in: Option<&str>, scale_out: Option<&str>, force: Option<&str>) -> Overrides {
        let truthy = |v: Option<&str>| v.is_some_and(|v| go_parse_bool(v) != Some(false));
        Overrides {
            paused_scale_in: truthy(scale_in),
            paused_scale_out: truthy(scale_out),
            force_activation: truthy(force),
        }
    }

    /// Either one's setting.
    pub fn union(self, other: Overrides) -> Overrides {
        Overrides {
            paused_scale_in: self.paused_scale_in || other.paused_scale_in,
            paused_scale_out: self.paused_scale_out || other.paused_scale_out,
            force_activation: self.force_activation || other.force_activation,
        }
    }
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// What one poll saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The target's `spec.replicas`.
    pub replicas: u32,
    /// The target's `status.replicas` as its `/scale` subresource reports it (0 when the
    /// object omits it), used only for the tolerance ratio, as the HPA does: with 0 the
    /// ratio is +Inf, no tolerance applies and the proposal is `ceil(backlog / target)`.
    pub status_replicas: u32,
    /// The target's ready pods (`status.readyReplicas`): what a `Value` metric multiplies
    /// its ratio by, as the HPA counts Running and Ready pods.
    pub ready_replicas: u32,
    pub pause: Pause,
    /// The rule's keys and the target's annotations, together.
    pub overrides: Overrides,
    /// One entry per trigger, in rule order: the counts, or `None` if the poll failed.
    pub queues: Vec<Option<Counts>>,
}

/// What one rule remembers between polls. Small and plain: the worker owns it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// When the rule was first seen; `initial_cooldown` counts from here.
    pub created_at: Time,
    /// Start of the last poll that was active (KEDA's `lastActiveTime`). Persisted on
    /// the target by the daemon so a restart does not scale to zero early.
    pub last_active: Option<Time>,
    /// Consecutive failed polls, per trigger (KEDA counts per metric).
    pub failures: Vec<u32>,
    /// The HPA recommendation history; seeded with the current replicas at first sight.
    pub recommendations: History,
    /// The HPA phase's successful scale-ups and scale-downs, for `behavior` policies only.
    pub scale_up_events: Vec<ScaleEvent>,
    pub scale_down_events: Vec<ScaleEvent>,
    /// Whether the recommendation history has been seeded.
    pub seeded: bool,
    /// Consecutive active polls while waiting to activate (`activation_polls`).
    pub active_polls: u32,
    /// Per trigger, its last successful reading; kept only with a `lastKnown` fallback
    /// (empty otherwise: a boxed slice, so every other rule's state carries 16 bytes).
    pub last_good: Box<[Option<Reading>]>,
}

/// A trigger's successful reading and the start of the poll that read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub at: Time,
    pub counts: Counts,
}

impl State {
    pub fn new(created_at: Time) -> State {
        State { created_at, ..State::default() }
    }

    /// Records that the target confirmed `decision`'s write. Only the HPA phase's own
    /// rescales are scale events: upstream, KEDA writes `/scale` itself (activation, the
    /// step to zero or idle, the step to min, `paused-replicas`) and the HPA's
    /// `storeScaleEvent` runs only after the HPA's own update succeeded. So KEDA's writes
    /// and failed patches never count against the `behavior` policies.
    pub fn record_scale(&mut self, policy: &Policy, decision: &Decision, now: Time) {
        // The behavior the HPA ran with: a one-way pause gives a legacy rule one.
        if let (Some(b), Some(to), Phase::Hpa) =
            (effective_behavior(policy, decision.overrides), decision.write, decision.phase)
            && to != decision.current
        {
            hpa::store_scale_event(
                &b,
                &mut self.scale_up_events,
                &mut self.scale_down_events,
                decision.current,
                to,
                now,
            );
        }
    }

    /// Forgets the HPA phase, as deleting the HPA does (KEDA's `handlePause` deletes it,
    /// and the controller drops its recommendations and scale events with it): the next
    /// unpaused poll seeds the history afresh. KEDA's own state (`last_active`, failure
    /// counts, `created_at`) stays.
    pub fn reset_hpa(&mut self) {
        self.recommendations = History::default();
        self.scale_up_events = Vec::new();
        self.scale_down_events = Vec::new();
        self.seeded = false;
    }
}

/// Which part of a poll decided, and so who writes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The pause annotations or `rule.paused` (KEDA's reconciler, with no HPA).
    Pause,
    /// KEDA's executor: activation, the step to zero or idle or min, or a hold while
    /// the HPA is disabled (at zero or idle).
    Keda,
    /// The HPA: its precheck clamps and its metric path. Only its rescales are scale
    /// events for `behavior` policies.
    Hpa,
}

/// Why the engine decided what it did: a stable snake_case token for logs, metrics,
/// the simulation timeline and Kubernetes events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// From zero (or from idle) to `max(min, 1)` (or min) because a trigger is active.
    Activated,
    ScaledUp,
    ScaledDown,
    /// The cooldown after the last active poll ran out.
    ScaledToZero,
    ScaledToIdle,
    /// Below `min`: raised at once.
    ScaledToMin,
    /// Above `max`: lowered at once.
    ScaledToMax,
    /// Inactive, waiting for `cooldown_period` before scaling to zero or idle.
    Cooldown,
    /// A stabilization window held the replicas.
    Stabilized,
    /// The scale-up limit (`max(2r, 4)` or a behavior policy) or a scale-down policy
    /// limited the step.
    RateLimited,
    /// The queue asks for more than `max_replica_count`.
    AtMax,
    /// The queue asks for fewer than the floor.
    AtMin,
    /// Fallback replicas are in effect after too many failed polls.
    Fallback,
    /// A failed trigger's last good reading decided (`fallback.behavior = "lastKnown"`).
    LastKnown,
    /// Active, but fewer consecutive active polls than `activation_polls` so far.
    ActivationPending,
    /// An open schedule window's value decided: its min raised the floor (or held the
    /// target there), its max capped it, or it paused the rule.
    Scheduled,
    /// The rule's `[[group]]` had less free capacity than the scale-up asked for: the
    /// step was cut to what it could grant (set by the caller, which holds the ledger).
    GroupCapped,
    /// A trigger failed: nothing scales in, nothing changes until the fallback threshold.
    PollFailed,
    Paused,
    PausedReplicas,
    /// `paused_scale_in` held the target where it would have scaled in.
    PausedScaleIn,
    /// `paused_scale_out` held the target where it would have scaled out.
    PausedScaleOut,
    /// Holding at `idle_replica_count` while inactive.
    Idle,
    Unchanged,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Activated => "activated",
            Reason::ScaledUp => "scaled_up",
            Reason::ScaledDown => "scaled_down",
            Reason::ScaledToZero => "scaled_to_zero",
            Reason::ScaledToIdle => "scaled_to_idle",
            Reason::ScaledToMin => "scaled_to_min",
            Reason::ScaledToMax => "scaled_to_max",
            Reason::Cooldown => "cooldown",
            Reason::Stabilized => "stabilized",
            Reason::RateLimited => "rate_limited",
            Reason::AtMax => "at_max",
            Reason::AtMin => "at_min",
            Reason::Fallback => "fallback",
            Reason::LastKnown => "last_known",
            Reason::ActivationPending => "activation_pending",
            Reason::Scheduled => "scheduled",
            Reason::GroupCapped => "group_capped",
            Reason::PollFailed => "poll_failed",
            Reason::Paused => "paused",
            Reason::PausedReplicas => "paused_replicas",
            Reason::PausedScaleIn => "paused_scale_in",
            Reason::PausedScaleOut => "paused_scale_out",
            Reason::Idle => "idle",
            Reason::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one poll.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The target's replicas when the poll started.
    pub current: u32,
    /// Which phase decided (and writes `write`, if any).
    pub phase: Phase,
    /// The replica count to write, if it differs from `current`.
    pub write: Option<u32>,
    pub reason: Reason,
    /// Whether any trigger was active (KEDA's `isActive`).
    pub active: bool,
    /// Sum of the backlogs the poll read; `None` if every trigger failed.
    pub backlog: Option<u64>,
    /// What the queues ask for: the largest `ceil(backlog / queue_length)` over the
    /// triggers (after the tolerance), before stabilization, limits and clamps.
    pub proposal: Option<u32>,
    /// The schedule windows open at this poll and what they imposed, if any is open.
    pub schedule: Option<schedule::Override>,
    /// The one-way pauses and forced activation in force (the HPA's `behavior`, and so
    /// which scale events it keeps, depends on them).
    pub overrides: Overrides,
}

impl Decision {
    /// The replica count after this poll if the write (if any) succeeds.
    pub fn replicas(&self) -> u32 {
        self.write.unwrap_or(self.current)
    }

    /// What the rule asks of a `[[group]]`: what the queues ask for within min and max,
    /// or this poll's replicas if more (a step can go beyond the proposal, to min say).
    /// A step limited by the HPA's rate claims its whole way up, so that capacity is
    /// kept for it between its steps.
    pub fn claim(&self, policy: &Policy) -> u32 {
        let (min, max) = self.bounds(policy);
        let asked = self.proposal.map_or(0, |p| p.clamp(min, max));
        asked.max(self.replicas())
    }

    /// The min and max this poll decided within: the rule's, or an open schedule
    /// window's over them (its max never below its min).
    pub fn bounds(&self, policy: &Policy) -> (u32, u32) {
        let o = self.schedule.as_ref();
        let min = o.and_then(|o| o.min).unwrap_or(policy.min);
        let max = o.and_then(|o| o.max).unwrap_or(policy.max).max(min);
        (min, max)
    }
}

/// Decides what one rule does at `now`, given what it remembers and what it just saw.
///
/// Each poll runs:
/// 0. **Schedules**: the windows open at `now` ([`schedule::in_force`]) stand in for the
///    rule's min, max and pause for this poll (the largest min, the smallest max but
///    never below that min, paused if any pauses); `Reason::Scheduled` when that decided.
/// 1. **Pause**: a paused target is left alone, or pinned to `paused-replicas`, and the
///    HPA phase is forgotten (KEDA deletes the HPA while paused).
/// 2. **Triggers**: each trigger's backlog and activity; failures are counted per
///    trigger, and after more than `failure_threshold` of them the fallback replaces the
///    failed trigger's metric with `queue_length * R` (KEDA's synthetic metric).
/// 3. **Phase K** (KEDA's executor): from zero to `max(min, 1)` on activation; to idle,
///    min or zero once `now - last_active >= cooldown_period`; up to min at once.
/// 4. **Phase H** (the HPA), only when phase K wrote nothing and replicas > 0: the
///    precheck clamps, `ceil(backlog / queue_length)` with the 0.1 tolerance, the
///    maximum over triggers (no scale-in on partial data), then the legacy or the
///    `behavior` normalization.
///
/// [`Decision::phase`] says which step decided; once the write succeeds, the caller
/// hands the decision to [`State::record_scale`], which keeps only the HPA's rescales.
///
/// A failed trigger never makes the rule scale in before the fallback applies.
pub fn decide(policy: &Policy, state: &State, obs: &Observation, now: Time) -> (State, Decision) {
    let mut next = state.clone();
    let r = obs.replicas;
    let scheduled = schedule::in_force(&policy.schedules, now);
    let b = Bounds::of(policy, scheduled.as_ref());
    let mut decision = Decision {
        current: r,
        phase: Phase::Keda,
        write: None,
        reason: Reason::Unchanged,
        active: false,
        backlog: None,
        proposal: None,
        schedule: scheduled,
        overrides: obs.overrides,
    };

    // 1. Pause. KEDA deletes the HPA while paused, so unpausing starts a fresh one. The
    // rule's own pause and the target's annotations come first: a window's pause only
    // adds one.
    if obs.pause != Pause::No || b.paused {
        next.reset_hpa();
        decision.phase = Phase::Pause;
        match obs.pause {
            Pause::Replicas(n) => {
                decision.reason = Reason::PausedReplicas;
                decision.write = (n != r).then_some(n);
            }
            Pause::No => decision.reason = Reason::Scheduled,
            _ => decision.reason = Reason::Paused,
        }
        return (next, decision);
    }

    // The HPA seeds its history at first sight of the target, whatever the replicas. It
    // does so earlier in the same reconcile than its stabilization reads the clock, so
    // the seed is a hair older than `now`: a zero window must not see it.
    if !next.seeded {
        next.recommendations.push(Recommendation { replicas: r, at: Time(now.0 - 1) });
        next.seeded = true;
    }

    // 2. Triggers.
    let triggers = evaluate_triggers(policy, &mut next, obs, now);
    let backlog =
        triggers.iter().filter(|t| !t.failed && !t.fallback && !t.stale).map(|t| t.backlog).reduce(u64::saturating_add);
    let triggers = match &policy.modifiers {
        Some(m) => vec![composite(policy, m, &triggers, obs)],
        None => triggers,
    };
    let held = obs.overrides;
    // KEDA's `isActive || force-activation`: the executor's active branch, whatever the
    // queues say; the HPA still sizes on them (raw 0 is clamped to max(min, 1)).
    let is_active = triggers.iter().any(|t| t.active) || held.force_activation;
    let is_error = triggers.iter().any(|t| t.failed);
    let fallback_active = triggers.iter().any(|t| t.fallback);
    // A last good reading may scale out but is not news: like a failure, it neither
    // renews `last_active` nor lets the cooldown scale in.
    let stale = triggers.iter().any(|t| t.stale);
    let unsure = is_error || stale;
    decision.active = is_active;
    decision.backlog = backlog;

    // 3. Phase K. Activation waits for `activation_polls` consecutive active polls; any
    // other poll starts the count again.
    let activating = is_active && ((b.idle.is_some() && r < b.min) || r == 0);
    next.active_polls = if activating { next.active_polls.saturating_add(1) } else { 0 };
    let mut cooling_down = false;
    // A step phase K would take but a one-way pause holds back (KEDA's executor returns
    // early; the HPA then runs with that direction `Disabled`).
    let mut held_back = None;
    // A window's floor is the calendar's, not the queues': it holds on failed polls and
    // does not wait for the debounce. A one-way pause of scale-out holds it back too.
    let below_scheduled_floor = b.min_scheduled && r < b.min;
    let keda = if is_active {
        if activating && held.paused_scale_out {
            // `scaleFromZeroOrIdle` returns before it scales or refreshes last-active.
            held_back = Some(Reason::PausedScaleOut);
            None
        } else if activating && next.active_polls < policy.activation_polls && !below_scheduled_floor {
            decision.reason = Reason::ActivationPending;
            decision.proposal = proposal(&triggers);
            return (next, decision);
        } else if activating {
            next.active_polls = 0;
            Some((b.min.max(1), Reason::Activated))
        } else {
            if !unsure {
                next.last_active = Some(now);
            }
            None
        }
    } else if below_scheduled_floor && !held.paused_scale_out {
        Some((b.min, Reason::ScaledToMin))
    } else if unsure {
        None
    } else if (b.idle.is_some_and(|idle| r > idle)) || (r > 0 && b.min == 0) {
        if held.paused_scale_in {
            // `scaleToZeroOrIdle` returns at once: no cooldown runs either.
            held_back = Some(Reason::PausedScaleIn);
            None
        } else if cooldown_expired(policy, &next, now) {
            let to = b.idle.unwrap_or(b.min);
            Some((to, if to == 0 { Reason::ScaledToZero } else { Reason::ScaledToIdle }))
        } else {
            cooling_down = true;
            None
        }
    } else if b.idle.is_none() && r < b.min {
        Some((b.min, Reason::ScaledToMin))
    } else {
        None
    };
    if let Some((to, reason)) = keda {
        if reason == Reason::Activated {
            next.last_active = Some(now);
        }
        decision.write = (to != r).then_some(to);
        decision.reason = if to == r { Reason::Unchanged } else { b.credit(reason) };
        decision.proposal = proposal(&triggers);
        return (next, decision);
    }

    // 4. Phase H. The HPA is "disabled" at zero; at idle there is no HPA to pull the
    // target back up to min (KEDA+HPA flap there, vector TV-14).
    let at_idle = b.idle.is_some_and(|idle| r <= idle) && !is_active;
    if r == 0 || at_idle {
        decision.reason = if let Some(reason) = held_back {
            reason
        } else if at_idle && r > 0 {
            Reason::Idle
        } else if is_error {
            Reason::PollFailed
        } else if stale {
            Reason::LastKnown
        } else {
            Reason::Unchanged
        };
        decision.proposal = proposal(&triggers);
        return (next, decision);
    }
    decision.phase = Phase::Hpa;
    let (to, reason) = phase_h(policy, &b, &mut next, obs, &triggers, now, &mut decision);
    decision.write = (to != r).then_some(to);
    decision.reason = if fallback_active {
        Reason::Fallback
    } else if stale && reason != Reason::PollFailed {
        Reason::LastKnown
    } else if decision.write.is_none() && cooling_down {
        Reason::Cooldown
    } else if let Some(held) = held_back.filter(|_| decision.write.is_none()) {
        held
    } else {
        b.credit(reason)
    };
    (next, decision)
}

/// The bounds a poll decides within: the rule's, with the open schedule windows'
/// values over them.
struct Bounds {
    min: u32,
    max: u32,
    /// `idle_replica_count`, unless a window sets a min: a scheduled floor holds while
    /// the queues are quiet, where an idle count would let the target rest below it.
    idle: Option<u32>,
    paused: bool,
    min_scheduled: bool,
    max_scheduled: bool,
}

impl Bounds {
    fn of(policy: &Policy, o: Option<&schedule::Override>) -> Bounds {
        let (smin, smax) = o.map_or((None, None), |o| (o.min, o.max));
        let min = smin.unwrap_or(policy.min);
        // Never below the floor: one window's min may meet another's max.
        let max = smax.unwrap_or(policy.max).max(min);
        Bounds {
            min,
            max,
            idle: if smin.is_some() { None } else { policy.idle },
            paused: o.is_some_and(|o| o.paused),
            min_scheduled: smin.is_some(),
            max_scheduled: smax.is_some() || (smin.is_some() && max != policy.max),
        }
    }

    /// `scheduled` for a step to (or a hold at) a bound that a window set.
    fn credit(&self, reason: Reason) -> Reason {
        match reason {
            Reason::ScaledToMin | Reason::AtMin if self.min_scheduled && self.min >= 1 => Reason::Scheduled,
            Reason::ScaledToMax | Reason::AtMax if self.max_scheduled => Reason::Scheduled,
            other => other,
        }
    }
}

/// The `behavior` the HPA runs with: the rule's, with a direction KEDA's one-way pause
/// annotation sets to `Disabled` (its `hpa.go`). With no `behavior` in the rule KEDA
/// creates one for the pause, so the HPA leaves its legacy path for the API's defaults.
fn effective_behavior<'a>(policy: &'a Policy, held: Overrides) -> Option<std::borrow::Cow<'a, Behavior>> {
    use std::borrow::Cow;
    if !held.paused_scale_in && !held.paused_scale_out {
        return policy.behavior.as_deref().map(Cow::Borrowed);
    }
    let mut b = match policy.behavior.as_deref() {
        Some(b) => b.clone(),
        None => Behavior {
            scale_up: hpa::ScalingRules::default_scale_up(),
            scale_down: hpa::ScalingRules::default_scale_down(millis(policy.legacy_downscale_window)),
        },
    };
    if held.paused_scale_in {
        b.scale_down.select_policy = hpa::SelectPolicy::Disabled;
    }
    if held.paused_scale_out {
        b.scale_up.select_policy = hpa::SelectPolicy::Disabled;
    }
    Some(Cow::Owned(b))
}

/// One trigger's part of a poll.
struct TriggerResult {
    /// The backlog, real or (with the fallback) synthetic.
    backlog: u64,
    active: bool,
    /// Failed with no fallback in effect: its metric is invalid.
    failed: bool,
    /// Failed, and the fallback's synthetic metric stands in.
    fallback: bool,
    /// Failed, and its last good reading stands in (`lastKnown`).
    stale: bool,
    /// The HPA's proposal for this trigger; `None` when the metric is invalid.
    proposal: Option<u32>,
}

impl TriggerResult {
    /// A trigger whose metric is invalid: it counts for nothing and holds scale-in.
    const FAILED: TriggerResult =
        TriggerResult { backlog: 0, active: false, failed: true, fallback: false, stale: false, proposal: None };
}

fn evaluate_triggers(policy: &Policy, next: &mut State, obs: &Observation, now: Time) -> Vec<TriggerResult> {
    let n = policy.triggers.len();
    next.failures.resize(n, 0);
    let max_age = match policy.fallback.map(|f| f.behavior) {
        Some(FallbackBehavior::LastKnown { max_age }) => {
            if next.last_good.len() != n {
                let mut kept = std::mem::take(&mut next.last_good).into_vec();
                kept.resize(n, None);
                next.last_good = kept.into_boxed_slice();
            }
            Some(millis(max_age))
        }
        _ => {
            next.last_good = Box::default();
            None
        }
    };
    let mut last_good = next.last_good.iter_mut();
    let status = obs.status_replicas;
    policy
        .triggers
        .iter()
        .zip(&obs.queues)
        .zip(next.failures.iter_mut())
        .map(|((trigger, counts), failures)| {
            let last_good = last_good.next();
            let target = i64::try_from(trigger.queue_length).unwrap_or(i64::MAX / 1000) * 1000;
            let propose_milli = |usage: i64| match trigger.metric_type {
                MetricType::AverageValue => Some(hpa::average_value_replicas(usage, target, status, policy.tolerances)),
                MetricType::Value => {
                    hpa::value_replicas(usage, target, obs.replicas, status, obs.ready_replicas, policy.tolerances)
                }
            };
            let propose = |q: u64| propose_milli(i64::try_from(q).unwrap_or(i64::MAX / 1000).saturating_mul(1000));
            match counts {
                Some(c) => {
                    *failures = 0;
                    if let Some(slot) = last_good {
                        *slot = Some(Reading { at: now, counts: *c });
                    }
                    let q = trigger.backlog(c);
                    // A Value metric with no pods to count is the HPA's error: invalid.
                    TriggerResult {
                        backlog: q,
                        active: i128::from(q) > i128::from(trigger.activation_queue_length),
                        failed: false,
                        fallback: false,
                        stale: false,
                        proposal: propose(q),
                    }
                }
                None => {
                    *failures = failures.saturating_add(1);
                    let fresh = |r: &&Reading| max_age.is_some_and(|age| now.since(r.at) <= age);
                    match policy.fallback {
                        Some(fb) if *failures > fb.failure_threshold => {
                            if let Some(reading) = last_good.and_then(|r| r.as_ref()).filter(fresh) {
                                let q = trigger.backlog(&reading.counts);
                                return TriggerResult {
                                    backlog: q,
                                    active: i128::from(q) > i128::from(trigger.activation_queue_length),
                                    failed: false,
                                    fallback: false,
                                    stale: true,
                                    proposal: propose(q),
                                };
                            }
                            let replicas = fb.replicas_for(obs.replicas);
                            let q = trigger.queue_length.saturating_mul(u64::from(replicas));
                            let proposal = match trigger.metric_type {
                                MetricType::AverageValue => propose(q),
                                // KEDA's synthetic Value metric is target * R / ready pods,
                                // and an error when no pod is ready.
                                MetricType::Value if obs.ready_replicas == 0 => None,
                                MetricType::Value => propose_milli(
                                    (target as f64 * f64::from(replicas) / f64::from(obs.ready_replicas)).round()
                                        as i64,
                                ),
                            };
                            match proposal {
                                Some(p) => TriggerResult {
                                    backlog: q,
                                    active: true,
                                    failed: false,
                                    fallback: true,
                                    stale: false,
                                    proposal: Some(p),
                                },
                                None => TriggerResult::FAILED,
                            }
                        }
                        _ => TriggerResult::FAILED,
                    }
                }
            }
        })
        .collect()
}

/// KEDA's `composite-metric`: the formula over the triggers' metrics, one metric for the
/// HPA, and the only one activity looks at (strictly above `activation_target`). A failed
/// trigger makes it fail (KEDA: `isActive = !isError && ...`); with the fallback in
/// effect the formula is skipped and the composite is `target * R`. A formula that fails
/// at run time fails the poll: nothing scales in on it.
fn composite(policy: &Policy, m: &Modifiers, triggers: &[TriggerResult], obs: &Observation) -> TriggerResult {
    let failed = TriggerResult::FAILED;
    if triggers.iter().any(|t| t.failed) {
        return failed;
    }
    let fallback = triggers.iter().any(|t| t.fallback);
    let value = if fallback {
        m.target * f64::from(policy.fallback.map_or(0, |fb| fb.replicas_for(obs.replicas)))
    } else {
        let vars =
            policy.triggers.iter().zip(triggers).filter_map(|(p, t)| Some((p.name.as_deref()?, t.backlog as f64)));
        match m.formula.eval(vars) {
            // KEDA reports NaN, infinities and negative values as 0 (since 2.20.2).
            Ok(v) if v.is_finite() => v.max(0.0),
            Ok(_) => 0.0,
            Err(_) => return failed,
        }
    };
    // In milli-units, as KEDA hands metrics (and the target) to the HPA.
    let usage = (value * 1000.0).round() as i64;
    let target = (m.target * 1000.0) as i64;
    let proposal = match m.metric_type {
        MetricType::AverageValue => {
            Some(hpa::average_value_replicas(usage, target, obs.status_replicas, policy.tolerances))
        }
        MetricType::Value => {
            hpa::value_replicas(usage, target, obs.replicas, obs.status_replicas, obs.ready_replicas, policy.tolerances)
        }
    };
    TriggerResult {
        backlog: value.ceil() as u64,
        active: value > m.activation_target,
        failed: false,
        fallback,
        // On a last good reading of any trigger, the composite is no fresher.
        stale: triggers.iter().any(|t| t.stale),
        proposal,
    }
}

fn proposal(triggers: &[TriggerResult]) -> Option<u32> {
    triggers.iter().filter_map(|t| t.proposal).max()
}

/// KEDA's `scaleToZeroOrIdle` test, with `>=` measured from the start of the last active
/// poll (`../shared/spec/keda.md` §2.4: what users see, and what the vectors use).
fn cooldown_expired(policy: &Policy, state: &State, now: Time) -> bool {
    match state.last_active {
        Some(at) => now.since(at) >= millis(policy.cooldown),
        None => now.since(state.created_at) >= millis(policy.initial_cooldown),
    }
}

/// The HPA's reconcile for a target with replicas > 0. Returns the new count and why.
fn phase_h(
    policy: &Policy,
    b: &Bounds,
    next: &mut State,
    obs: &Observation,
    triggers: &[TriggerResult],
    now: Time,
    decision: &mut Decision,
) -> (u32, Reason) {
    let r = obs.replicas;
    let min = b.min.max(1);
    let max = b.max;

    // Precheck: outside [min, max] the HPA moves without reading metrics.
    if r > max {
        decision.proposal = proposal(triggers);
        return (max, Reason::ScaledToMax);
    }
    if r < min {
        decision.proposal = proposal(triggers);
        return (min, Reason::ScaledToMin);
    }

    // computeReplicasForMetrics: max over valid metrics; no scaling at all if every
    // metric is invalid, no scale-in if any is.
    let invalid = triggers.iter().filter(|t| t.proposal.is_none()).count();
    let Some(desired) = proposal(triggers) else {
        return (r, Reason::PollFailed);
    };
    decision.proposal = Some(desired);
    if invalid > 0 && desired < r {
        return (r, Reason::PollFailed);
    }
    // A last good reading is older than this poll: it may scale out, never in.
    if triggers.iter().any(|t| t.stale) && desired < r {
        return (r, Reason::LastKnown);
    }

    let behavior = effective_behavior(policy, obs.overrides);
    let (stabilized, (to, limit)) = match behavior.as_deref() {
        None => {
            let s =
                hpa::stabilize_legacy(&mut next.recommendations, desired, now, millis(policy.legacy_downscale_window));
            (s, hpa::limit_legacy(r, s, min, max))
        }
        Some(b) => {
            let s = hpa::stabilize_with_behavior(&mut next.recommendations, r, desired, now, b);
            let limited =
                hpa::limit_with_behavior(r, s, min, max, &next.scale_up_events, &next.scale_down_events, b, now);
            (s, limited)
        }
    };
    let reason = match limit {
        // Held by a one-way pause, not by a rate.
        Limit::ScaleUpLimit if obs.overrides.paused_scale_out && to == r => Reason::PausedScaleOut,
        Limit::ScaleDownLimit if obs.overrides.paused_scale_in && to == r => Reason::PausedScaleIn,
        Limit::ScaleUpLimit | Limit::ScaleDownLimit => Reason::RateLimited,
        Limit::TooManyReplicas => Reason::AtMax,
        Limit::TooFewReplicas => Reason::AtMin,
        Limit::DesiredWithinRange if to > r => Reason::ScaledUp,
        Limit::DesiredWithinRange if to < r => Reason::ScaledDown,
        Limit::DesiredWithinRange if stabilized != desired => Reason::Stabilized,
        Limit::DesiredWithinRange => Reason::Unchanged,
    };
    (to, reason)
}

#[cfg(test)]
mod tests;
