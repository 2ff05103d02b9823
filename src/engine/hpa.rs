//! The HorizontalPodAutoscaler's arithmetic, as kube-controller-manager does it.
//!
//! Each function is one step of `reconcileAutoscaler` for an External metric with an
//! AverageValue target (`../shared/spec/hpa.md`). Ratios and policy limits are computed in
//! `f64` in the same order of operations as the Go code, because integer arithmetic gives
//! different answers at the edges (vectors T44, T45). Histories are stored with the same
//! slot-reuse scheme as the controller so results stay bit-exact when windows change.
//! Nothing here reads a clock: `now` is always an argument.

use super::Time;

/// The controller's `--horizontal-pod-autoscaler-tolerance` (0.1), or per-direction
/// tolerances from `behavior` (Kubernetes 1.33+ `HPAConfigurableTolerance`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    pub up: f64,
    pub down: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { up: 0.1, down: 0.1 }
    }
}

impl Tolerances {
    /// `Tolerances.isWithin`: inclusive on both ends (v1.33+; the older `abs()` form
    /// scaled up at exactly 1.1, vector T4). NaN is never within.
    pub fn is_within(&self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

/// `GetExternalPerPodMetricReplicas`: the replica proposal for an AverageValue target.
///
/// `usage` and `target` are in milli-units. The ratio uses the target's *status*
/// replicas; the proposal outside the tolerance does not depend on them at all.
pub fn average_value_replicas(usage: i64, target: i64, status_replicas: u32, tol: Tolerances) -> u32 {
    let ratio = usage as f64 / (target as f64 * f64::from(status_replicas));
    if tol.is_within(ratio) {
        return status_replicas;
    }
    let proposal = (usage as f64 / target as f64).ceil();
    if proposal > f64::from(i32::MAX) { i32::MAX as u32 } else { proposal.max(0.0) as u32 }
}

/// `GetExternalMetricReplicas`: the replica proposal for a Value target, where
/// `target` is a total, not per pod. With replicas the proposal scales the ready pods by
/// the ratio (so it can shrink a target whose pods are not ready, vector T12); from zero
/// it is the ratio itself, without tolerance. `None` when the target has replicas but no
/// pods at all (the HPA's "no pods returned by selector": the metric is invalid).
pub fn value_replicas(
    usage: i64,
    target: i64,
    spec_replicas: u32,
    status_replicas: u32,
    ready_pods: u32,
    tol: Tolerances,
) -> Option<u32> {
    let ratio = usage as f64 / target as f64;
    let cap = |p: f64| if p > f64::from(i32::MAX) { i32::MAX as u32 } else { p.max(0.0) as u32 };
    if spec_replicas == 0 {
        return Some(cap(ratio.ceil()));
    }
    if tol.is_within(ratio) {
        return Some(spec_replicas);
    }
    if status_replicas == 0 {
        return None;
    }
    Some(cap((ratio * f64::from(ready_pods)).ceil()))
}

/// One entry of the recommendation history (`timestampedRecommendation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub replicas: u32,
    pub at: Time,
}

/// The recommendation history of one target, slot for slot as the controller keeps it
/// (§5.3: one slot per reconcile, the last slot older than every window overwritten,
/// nothing ever deleted), but in 8 bytes a slot instead of 16: each time is kept as
/// milliseconds from `base`.
///
/// Why packed: with the default 300 s window a busy rule polled every 10 s holds 31
/// slots for as long as it runs, so ten thousand busy rules kept 5 MiB of history
/// (PERFORMANCE.md, "Busy rules and HTTPS"); why not pruned: an old slot counts again
/// when a reload makes a window longer, as it would upstream.
///
/// An `i32` of milliseconds spans 24.8 days either side of `base`. When a time falls
/// outside that span, `base` moves to it and any slot now beyond the span is clamped
/// to its edge: such a slot is weeks older (or newer) than the newest, and no window
/// is longer than an hour, so it is outside (or inside) every window before and after.
/// Only a wall clock that later jumps by weeks could tell the two apart.
#[derive(Clone, Default)]
pub struct History {
    base: i64,
    slots: Vec<Slot>,
}

#[derive(Clone, Copy)]
struct Slot {
    replicas: u32,
    /// Milliseconds from [`History::base`].
    offset: i32,
}

impl History {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slots in storage order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Recommendation> + '_ {
        self.slots
            .iter()
            .map(|s| Recommendation { replicas: s.replicas, at: Time(self.base.saturating_add(i64::from(s.offset))) })
    }

    /// Appends a slot.
    pub fn push(&mut self, rec: Recommendation) {
        self.store(None, rec);
    }

    /// Overwrites slot `reuse`, or appends when there is none to reuse.
    fn store(&mut self, reuse: Option<usize>, rec: Recommendation) {
        if self.slots.is_empty() {
            self.base = rec.at.0;
        }
        let offset = match i32::try_from(rec.at.0.saturating_sub(self.base)) {
            Ok(offset) => offset,
            Err(_) => {
                self.rebase(rec.at.0);
                0
            }
        };
        let slot = Slot { replicas: rec.replicas, offset };
        match reuse {
            Some(i) => self.slots[i] = slot,
            None => self.slots.push(slot),
        }
    }

    /// Moves `base` to `to`, clamping slots that fall outside the span (see the type).
    fn rebase(&mut self, to: i64) {
        for s in &mut self.slots {
            let at = self.base.saturating_add(i64::from(s.offset));
            s.offset = at.saturating_sub(to).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        }
        self.base = to;
    }
}

impl FromIterator<Recommendation> for History {
    fn from_iter<I: IntoIterator<Item = Recommendation>>(iter: I) -> History {
        let mut history = History::default();
        for rec in iter {
            history.push(rec);
        }
        history
    }
}

/// Equal when the slots are: where `base` sits is storage, not history.
impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One successful rescale, kept for the behavior policies (`timestampedScaleEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    /// Absolute change in replicas.
    pub change: u32,
    pub at: Time,
    /// Only marks the slot as reusable; limits filter on `at` alone.
    pub outdated: bool,
}

/// Why the final count differs (or not) from the stabilized recommendation
/// (the HPA's `ScalingLimited` condition reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    DesiredWithinRange,
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
}

/// `stabilizeRecommendation` (legacy path, `behavior` unset): the maximum over the
/// downscale window including this proposal. An entry exactly at the cutoff still counts;
/// the last entry older than the cutoff is overwritten, otherwise the list grows.
pub fn stabilize_legacy(recs: &mut History, desired: u32, now: Time, window_ms: i64) -> u32 {
    let cutoff = now.0 - window_ms;
    let mut max = desired;
    let mut reuse = None;
    for (i, rec) in recs.iter().enumerate() {
        if rec.at.0 < cutoff {
            reuse = Some(i);
        } else if rec.replicas > max {
            max = rec.replicas;
        }
    }
    recs.store(reuse, Recommendation { replicas: desired, at: now });
    max
}

/// `convertDesiredReplicasWithRules` (legacy path): clamp to `[min, min(max, limit)]`
/// with the scale-up limit `max(2 * current, 4)`.
pub fn limit_legacy(current: u32, stabilized: u32, min: u32, max: u32) -> (u32, Limit) {
    let scale_up_limit = (2.0 * f64::from(current)).max(4.0) as u32;
    let (upper, upper_reason) =
        if max > scale_up_limit { (scale_up_limit, Limit::ScaleUpLimit) } else { (max, Limit::TooManyReplicas) };
    if stabilized < min {
        (min, Limit::TooFewReplicas)
    } else if stabilized > upper {
        (upper, upper_reason)
    } else {
        (stabilized, Limit::DesiredWithinRange)
    }
}

/// `selectPolicy` of one direction of `behavior`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// `HPAScalingPolicy.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// One rate-limit policy: at most `value` pods or percent per `period_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period_ms: i64,
}

/// `HPAScalingRules` with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_ms: i64,
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
}

impl ScalingRules {
    /// The API server's scale-up defaults: no window, 4 pods or 100 % per 15 s, Max.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window_ms: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy { kind: PolicyKind::Pods, value: 4, period_ms: 15_000 },
                ScalingPolicy { kind: PolicyKind::Percent, value: 100, period_ms: 15_000 },
            ],
        }
    }

    /// The scale-down defaults: the controller's window (300 s unless changed), 100 % per 15 s.
    pub fn default_scale_down(window_ms: i64) -> Self {
        ScalingRules {
            stabilization_window_ms: window_ms,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy { kind: PolicyKind::Percent, value: 100, period_ms: 15_000 }],
        }
    }

    fn longest_period_ms(&self) -> i64 {
        self.policies.iter().map(|p| p.period_ms).max().unwrap_or(0)
    }
}

/// `HorizontalPodAutoscalerBehavior` with both directions filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

/// `stabilizeRecommendationWithBehaviors`: scale up only to the lowest recommendation in
/// the up-window, down only to the highest in the down-window. Entries must be strictly
/// newer than a cutoff to count. Stores the *unstabilized* proposal. Returns the
/// stabilized count, which always lies between `current` and `desired`.
pub fn stabilize_with_behavior(recs: &mut History, current: u32, desired: u32, now: Time, behavior: &Behavior) -> u32 {
    let up_cut = now.0 - behavior.scale_up.stabilization_window_ms;
    let down_cut = now.0 - behavior.scale_down.stabilization_window_ms;
    let (mut up, mut down) = (desired, desired);
    let mut reuse = None;
    for (i, rec) in recs.iter().enumerate() {
        if rec.at.0 > up_cut {
            up = up.min(rec.replicas);
        }
        if rec.at.0 > down_cut {
            down = down.max(rec.replicas);
        }
        if rec.at.0 < up_cut && rec.at.0 < down_cut {
            reuse = Some(i);
        }
    }
    let stabilized = current.max(up).min(down);
    recs.store(reuse, Recommendation { replicas: desired, at: now });
    stabilized
}

fn store<T>(list: &mut Vec<T>, reuse: Option<usize>, item: T) {
    match reuse {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

/// `getReplicasChangePerPeriod`: the sum of changes strictly newer than `now - period`.
pub fn change_in_period(events: &[ScaleEvent], period_ms: i64, now: Time) -> i64 {
    let cutoff = now.0 - period_ms;
    events.iter().filter(|e| e.at.0 > cutoff).map(|e| i64::from(e.change)).sum()
}

fn period_start(current: u32, up: &[ScaleEvent], down: &[ScaleEvent], period_ms: i64, now: Time) -> i64 {
    i64::from(current) - change_in_period(up, period_ms, now) + change_in_period(down, period_ms, now)
}

/// `calculateScaleUpLimitWithScalingRules`.
pub fn scale_up_limit(current: u32, up: &[ScaleEvent], down: &[ScaleEvent], rules: &ScalingRules, now: Time) -> i64 {
    let (mut limit, pick): (i64, fn(i64, i64) -> i64) = match rules.select_policy {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => (i64::from(i32::MAX), i64::min),
        SelectPolicy::Max => (i64::from(i32::MIN), i64::max),
    };
    for policy in &rules.policies {
        let start = period_start(current, up, down, policy.period_ms, now);
        let proposed = match policy.kind {
            PolicyKind::Pods => start + i64::from(policy.value),
            PolicyKind::Percent => (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64,
        };
        limit = pick(limit, proposed);
    }
    limit
}

/// `calculateScaleDownLimitWithBehaviors`. `Min` means the least change (highest floor).
pub fn scale_down_limit(current: u32, up: &[ScaleEvent], down: &[ScaleEvent], rules: &ScalingRules, now: Time) -> i64 {
    let (mut limit, pick): (i64, fn(i64, i64) -> i64) = match rules.select_policy {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => (i64::from(i32::MIN), i64::max),
        SelectPolicy::Max => (i64::from(i32::MAX), i64::min),
    };
    for policy in &rules.policies {
        let start = period_start(current, up, down, policy.period_ms, now);
        let proposed = match policy.kind {
            PolicyKind::Pods => start - i64::from(policy.value),
            // Go's int32() truncates toward zero.
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)).trunc() as i64,
        };
        limit = pick(limit, proposed);
    }
    limit
}

/// `convertDesiredReplicasWithBehaviorRate`: rate limits and min/max, only in the
/// direction of movement.
#[allow(clippy::too_many_arguments)]
pub fn limit_with_behavior(
    current: u32,
    stabilized: u32,
    min: u32,
    max: u32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    behavior: &Behavior,
    now: Time,
) -> (u32, Limit) {
    let cur = i64::from(current);
    let s = i64::from(stabilized);
    if s > cur {
        let limit = scale_up_limit(current, up, down, &behavior.scale_up, now).max(cur);
        let (allowed, reason) = if i64::from(max) > limit {
            (limit, Limit::ScaleUpLimit)
        } else {
            (i64::from(max), Limit::TooManyReplicas)
        };
        if s > allowed {
            return (allowed as u32, reason);
        }
    } else if s < cur {
        let limit = scale_down_limit(current, up, down, &behavior.scale_down, now).min(cur);
        let (allowed, reason) = if i64::from(min) < limit {
            (limit, Limit::ScaleDownLimit)
        } else {
            (i64::from(min), Limit::TooFewReplicas)
        };
        if s < allowed {
            return (allowed as u32, reason);
        }
    }
    (stabilized, Limit::DesiredWithinRange)
}

/// `storeScaleEvent` + `markScaleEventsOutdated`: record a successful rescale in the
/// history of its direction, reusing the last slot older than that direction's longest
/// policy period.
pub fn store_scale_event(
    behavior: &Behavior,
    up: &mut Vec<ScaleEvent>,
    down: &mut Vec<ScaleEvent>,
    from: u32,
    to: u32,
    now: Time,
) {
    let (events, rules) = if to > from { (up, &behavior.scale_up) } else { (down, &behavior.scale_down) };
    let cutoff = now.0 - rules.longest_period_ms();
    let mut reuse = None;
    for (i, e) in events.iter_mut().enumerate() {
        if e.at.0 < cutoff {
            e.outdated = true;
        }
        if e.outdated {
            reuse = Some(i);
        }
    }
    let event = ScaleEvent { change: from.abs_diff(to), at: now, outdated: false };
    store(events, reuse, event);
}

#[cfg(test)]
#[path = "hpa_tests.rs"]
mod tests;
