//! The HPA vectors of `../shared/spec/hpa.md` §9, one test per vector id.
//!
//! Metric units are whole messages here; the functions take milli-units, so every usage
//! and target is multiplied by 1000 (ratios are unchanged). Ages are relative to `NOW`.

use super::*;

const NOW: Time = Time(1_000_000_000);

fn ago(secs: f64) -> Time {
    Time(NOW.0 - (secs * 1000.0).round() as i64)
}

fn milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

fn p(usage: f64, target: f64, status: u32) -> u32 {
    average_value_replicas(milli(usage), milli(target), status, Tolerances::default())
}

fn rec(replicas: u32, at: Time) -> Recommendation {
    Recommendation { replicas, at }
}

fn ev(change: u32, at: Time) -> ScaleEvent {
    ScaleEvent { change, at, outdated: false }
}

fn pods(value: u32, period: i64) -> ScalingPolicy {
    ScalingPolicy { kind: PolicyKind::Pods, value, period_ms: period * 1000 }
}

fn percent(value: u32, period: i64) -> ScalingPolicy {
    ScalingPolicy { kind: PolicyKind::Percent, value, period_ms: period * 1000 }
}

fn rules(window: i64, select_policy: SelectPolicy, policies: Vec<ScalingPolicy>) -> ScalingRules {
    ScalingRules { stabilization_window_ms: window * 1000, select_policy, policies }
}

fn default_behavior() -> Behavior {
    Behavior { scale_up: ScalingRules::default_scale_up(), scale_down: ScalingRules::default_scale_down(300_000) }
}

/// The whole behavior path: stabilize, then limit. Returns (stabilized, final, limit).
#[allow(clippy::too_many_arguments)]
fn normalize(
    b: &Behavior,
    recs: &mut History,
    current: u32,
    desired: u32,
    min: u32,
    max: u32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
) -> (u32, u32, Limit) {
    let s = stabilize_with_behavior(recs, current, desired, NOW, b);
    let (f, limit) = limit_with_behavior(current, s, min, max, up, down, b, NOW);
    (s, f, limit)
}

// === replica calculator and tolerance ===

#[test]
fn t1_scale_up_per_pod_external() {
    assert_eq!(p(8.6, 2.15, 3), 4);
    let (_, f, limit) = normalize(&default_behavior(), &mut History::default(), 3, 4, 1, 10, &[], &[]);
    assert_eq!((f, limit), (4, Limit::DesiredWithinRange));
}

#[test]
fn t2_within_tolerance_holds() {
    assert_eq!(p(8.6, 2.9, 3), 3);
}

#[test]
fn t3_configurable_tolerance() {
    let tol = Tolerances { up: 0.01, down: 0.1 };
    assert_eq!(average_value_replicas(8600, 2800, 3, tol), 4);
    assert_eq!(p(8.6, 2.8, 3), 3);
}

#[test]
fn t4_upper_boundary_is_inclusive() {
    assert_eq!(p(11.0, 1.0, 10), 10);
}

#[test]
fn t5_lower_boundary_is_inclusive() {
    assert_eq!(p(9.0, 1.0, 10), 10);
}

#[test]
fn t6_just_outside_then_stabilized() {
    assert_eq!(p(8.9, 1.0, 10), 9);
    let b = default_behavior();
    let (_, f, _) = normalize(&b, &mut History::from_iter([rec(10, ago(30.0))]), 10, 9, 1, 100, &[], &[]);
    assert_eq!(f, 10);
    let (_, f, _) = normalize(&b, &mut History::from_iter([rec(10, ago(301.0))]), 10, 9, 1, 100, &[], &[]);
    assert_eq!(f, 9);
}

#[test]
fn t7_asymmetric_tolerances() {
    let tol = Tolerances { up: 0.05, down: 0.5 };
    let q = |usage: i64, status| average_value_replicas(usage * 1000, 100_000, status, tol);
    assert_eq!(q(3700, 35), 37);
    assert_eq!(q(3800, 37), 37);
    assert_eq!(q(1000, 37), 10);
    assert_eq!(q(800, 10), 10);
}

#[test]
fn t8_zero_status_replicas() {
    assert_eq!(p(25.0, 10.0, 0), 3);
    assert_eq!(p(0.0, 10.0, 0), 0);
}

#[test]
fn t9_ratio_uses_status_not_spec() {
    // spec 5, status 3: the proposal is 5 = spec, so no rescale.
    assert_eq!(p(50.0, 10.0, 3), 5);
    assert_eq!(p(44.0, 10.0, 3), 5);
    assert_eq!(p(44.0, 10.0, 5), 5);
}

#[test]
fn t10_sqs_legacy_path() {
    assert_eq!(p(95.0, 10.0, 2), 10);
    assert_eq!(limit_legacy(2, 10, 1, 20), (4, Limit::ScaleUpLimit));
    assert_eq!(limit_legacy(4, 10, 1, 20).0, 8);
    assert_eq!(limit_legacy(8, 10, 1, 20).0, 10);
}

#[test]
fn t11_sqs_default_behavior() {
    let b = default_behavior();
    assert_eq!(limit_with_behavior(2, 10, 1, 20, &[], &[], &b, NOW), (6, Limit::ScaleUpLimit));
    let later = Time(NOW.0 + 15_200);
    let up = [ev(4, NOW)];
    assert_eq!(limit_with_behavior(6, 10, 1, 20, &up, &[], &b, later).0, 10);
}

/// T12 and T13: the Value target (`GetExternalMetricReplicas`).
#[test]
fn t12_t13_value_target() {
    let tol = Tolerances::default();
    assert_eq!(value_replicas(milli(8.6), milli(4.4), 3, 3, 1, tol), Some(2));
    assert_eq!(value_replicas(milli(8.6), milli(8.888), 3, 3, 3, tol), Some(3));
    // From zero: the ratio, no tolerance.
    assert_eq!(value_replicas(milli(10.5), milli(10.0), 0, 0, 0, tol), Some(2));
    // Replicas but no pods: the HPA's error.
    assert_eq!(value_replicas(milli(30.0), milli(5.0), 2, 0, 0, tol), None);
}

#[test]
fn t14_average_value_is_the_only_branch() {
    assert_eq!(average_value_replicas(3_700_000, 100_000, 35, Tolerances { up: 0.05, down: 0.5 }), 37);
}

// === several metrics, failures, preconditions (through the engine) ===

fn engine_policy(min: u32, max: u32, triggers: Vec<u64>) -> crate::engine::Policy {
    crate::engine::Policy {
        min,
        max,
        idle: None,
        cooldown: std::time::Duration::from_secs(300),
        initial_cooldown: std::time::Duration::from_secs(3600),
        fallback: None,
        behavior: Some(Box::new(default_behavior())),
        legacy_downscale_window: std::time::Duration::ZERO,
        tolerances: Tolerances::default(),
        activation_polls: 1,
        triggers: triggers
            .into_iter()
            .map(|t| crate::engine::TriggerPolicy {
                name: None,
                queue_length: t,
                activation_queue_length: 0,
                scale_on_in_flight: true,
                scale_on_delayed: false,
                metric_type: crate::engine::MetricType::AverageValue,
            })
            .collect(),
        schedules: Box::default(),
        modifiers: None,
    }
}

fn observe(replicas: u32, queues: &[Option<u64>]) -> crate::engine::Observation {
    crate::engine::Observation {
        replicas,
        status_replicas: replicas,
        ready_replicas: replicas,
        pause: crate::engine::Pause::No,
        overrides: crate::engine::Overrides::default(),
        queues: queues.iter().map(|q| q.map(|v| crate::engine::Counts { visible: v, ..Default::default() })).collect(),
    }
}

#[test]
fn t15_max_of_metrics() {
    let policy = engine_policy(1, 100, vec![10, 10]);
    let (_, d) =
        crate::engine::decide(&policy, &crate::engine::State::new(NOW), &observe(3, &[Some(30), Some(70)]), NOW);
    assert_eq!((d.proposal, d.write), (Some(7), Some(7)));
}

#[test]
fn t16_no_scale_down_when_one_metric_fails() {
    let policy = engine_policy(2, 6, vec![10, 10]);
    let (next, d) =
        crate::engine::decide(&policy, &crate::engine::State::new(NOW), &observe(5, &[None, Some(10)]), NOW);
    assert_eq!((d.write, d.reason), (None, crate::engine::Reason::PollFailed));
    assert_eq!(next.recommendations.len(), 1, "only the seed: no recommendation stored");
}

#[test]
fn t17_scale_up_with_one_metric_failing() {
    let policy = engine_policy(2, 6, vec![10, 10]);
    let (_, d) = crate::engine::decide(&policy, &crate::engine::State::new(NOW), &observe(3, &[None, Some(40)]), NOW);
    assert_eq!(d.write, Some(4));
}

#[test]
fn t18_all_metrics_fail() {
    let policy = engine_policy(1, 10, vec![10, 10]);
    let (_, d) = crate::engine::decide(&policy, &crate::engine::State::new(NOW), &observe(3, &[None, None]), NOW);
    assert_eq!((d.write, d.reason), (None, crate::engine::Reason::PollFailed));
}

#[test]
fn t19_preconditions() {
    let state = crate::engine::State::new(NOW);
    let (_, d) = crate::engine::decide(&engine_policy(1, 10, vec![10]), &state, &observe(0, &[None]), NOW);
    assert_eq!(d.write, None, "spec 0: scaling disabled");
    let (_, d) = crate::engine::decide(&engine_policy(1, 10, vec![10]), &state, &observe(12, &[Some(1)]), NOW);
    assert_eq!((d.write, d.reason), (Some(10), crate::engine::Reason::ScaledToMax));
    let (_, d) = crate::engine::decide(&engine_policy(2, 10, vec![10]), &state, &observe(1, &[Some(1)]), NOW);
    assert_eq!((d.write, d.reason), (Some(2), crate::engine::Reason::ScaledToMin));
}

// === legacy normalization ===

#[test]
fn t20_legacy_pulls_up_to_the_window_maximum() {
    let mut recs = History::from_iter([rec(10, ago(60.0))]);
    let s = stabilize_legacy(&mut recs, 5, NOW, 300_000);
    assert_eq!(limit_legacy(5, s, 1, 100).0, 10);
    let (_, f, _) =
        normalize(&default_behavior(), &mut History::from_iter([rec(10, ago(60.0))]), 5, 5, 1, 100, &[], &[]);
    assert_eq!(f, 5);
}

#[test]
fn t21_legacy_down_stabilization() {
    let mut recs = History::from_iter([rec(10, ago(200.0)), rec(8, ago(100.0))]);
    assert_eq!(stabilize_legacy(&mut recs, 3, NOW, 300_000), 10);
}

#[test]
fn t22_legacy_reuses_the_last_old_slot() {
    let mut recs = History::from_iter([rec(10, ago(600.0)), rec(4, ago(60.0)), rec(5, ago(120.0)), rec(9, ago(540.0))]);
    assert_eq!(stabilize_legacy(&mut recs, 3, NOW, 300_000), 5);
    assert_eq!(recs.iter().map(|r| r.replicas).collect::<Vec<_>>(), [10, 4, 5, 3]);
}

#[test]
fn t23_legacy_cap() {
    assert_eq!(limit_legacy(10, 25, 1, 50), (20, Limit::ScaleUpLimit));
    assert_eq!(limit_legacy(10, 25, 1, 15), (15, Limit::TooManyReplicas));
}

// === stabilization windows (behavior) ===

fn windows(up: i64, down: i64) -> Behavior {
    Behavior {
        scale_up: rules(up, SelectPolicy::Max, ScalingRules::default_scale_up().policies),
        scale_down: rules(down, SelectPolicy::Max, ScalingRules::default_scale_down(0).policies),
    }
}

#[test]
fn t24_scale_up_stabilization() {
    let mut recs = History::from_iter([rec(4, ago(120.0)), rec(5, ago(60.0))]);
    assert_eq!(stabilize_with_behavior(&mut recs, 1, 7, NOW, &windows(300, 300)), 4);
}

#[test]
fn t25_scale_down_stabilization() {
    let mut recs = History::from_iter([rec(4, ago(120.0)), rec(5, ago(60.0))]);
    assert_eq!(stabilize_with_behavior(&mut recs, 100, 3, NOW, &windows(0, 180)), 5);
}

#[test]
fn t26_no_scale_down_and_no_scale_up() {
    let mut recs = History::from_iter([rec(2, ago(6000.0)), rec(3, ago(180.0))]);
    assert_eq!(stabilize_with_behavior(&mut recs, 2, 1, NOW, &windows(300, 300)), 2);
}

#[test]
fn t27_no_scale_up_past_the_window_minimum() {
    let mut recs = History::from_iter([rec(2, ago(6000.0)), rec(1, ago(180.0))]);
    assert_eq!(stabilize_with_behavior(&mut recs, 2, 3, NOW, &windows(300, 300)), 2);
}

#[test]
fn t28_reuses_an_obsolete_slot() {
    let mut recs =
        History::from_iter([rec(10, ago(6000.0)), rec(6, ago(60.0)), rec(5, ago(120.0)), rec(9, ago(180.0))]);
    assert_eq!(stabilize_with_behavior(&mut recs, 1, 100, NOW, &windows(300, 0)), 5);
    assert_eq!(recs.iter().map(|r| r.replicas).collect::<Vec<_>>(), [100, 6, 5, 9]);
}

#[test]
fn t29_restart_seeding_with_an_up_window() {
    let b = Behavior {
        scale_up: rules(60, SelectPolicy::Max, ScalingRules::default_scale_up().policies),
        ..default_behavior()
    };
    let (s, f, _) = normalize(&b, &mut History::from_iter([rec(3, ago(5.0))]), 3, 8, 1, 100, &[], &[]);
    assert_eq!((s, f), (3, 3));
    let mut recs = History::from_iter([
        rec(3, ago(65.0)),
        rec(8, ago(50.0)),
        rec(8, ago(35.0)),
        rec(8, ago(20.0)),
        rec(8, ago(5.0)),
    ]);
    let (s, f, limit) = normalize(&b, &mut recs, 3, 8, 1, 100, &[], &[]);
    assert_eq!((s, f, limit), (8, 7, Limit::ScaleUpLimit));
}

#[test]
fn t30_exact_period_cutoff() {
    let up = rules(0, SelectPolicy::Max, ScalingRules::default_scale_up().policies);
    assert_eq!(scale_up_limit(8, &[ev(4, ago(15.0))], &[], &up, NOW), 16);
    assert_eq!(scale_up_limit(8, &[ev(4, ago(14.999))], &[], &up, NOW), 8);
    let b = default_behavior();
    assert_eq!(limit_with_behavior(8, 50, 1, 100, &[ev(4, ago(14.999))], &[], &b, NOW).0, 8);
}

// === policies and selectPolicy ===

#[test]
fn t31_default_scale_up() {
    assert_eq!(limit_with_behavior(10, 50, 1, 100, &[], &[], &default_behavior(), NOW), (20, Limit::ScaleUpLimit));
}

#[test]
fn t32_pods_and_percent_over_60s() {
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Max, vec![pods(100, 60), percent(100, 60)]);
    assert_eq!(limit_with_behavior(10, 500, 1, 1000, &[], &[], &b, NOW).0, 110);
    b.scale_up = rules(0, SelectPolicy::Max, vec![pods(2, 60), percent(100, 60)]);
    assert_eq!(limit_with_behavior(10, 500, 1, 1000, &[], &[], &b, NOW).0, 20);
}

#[test]
fn t33_select_policy_min_scale_up() {
    let r = rules(0, SelectPolicy::Min, vec![pods(2, 60), percent(50, 60)]);
    assert_eq!(scale_up_limit(1, &[], &[], &r, NOW), 2);
}

#[test]
fn t34_select_policy_min_scale_down() {
    let r = rules(0, SelectPolicy::Min, vec![pods(2, 60), percent(50, 60)]);
    assert_eq!(scale_down_limit(5, &[], &[], &r, NOW), 3);
}

#[test]
fn t35_docs_example_scale_down() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Max, vec![pods(4, 60), percent(10, 60)]);
    assert_eq!(limit_with_behavior(80, 10, 1, 100, &[], &[], &b, NOW).0, 72);
    let later = Time(NOW.0 + 15_000);
    assert_eq!(limit_with_behavior(72, 10, 1, 100, &[], &[ev(8, NOW)], &b, later).0, 72);
    let much_later = Time(NOW.0 + 60_000);
    assert_eq!(limit_with_behavior(72, 10, 1, 100, &[], &[ev(8, NOW)], &b, much_later).0, 64);
}

#[test]
fn t36_scale_from_zero_with_percent_only_is_stuck() {
    assert_eq!(p(25.0, 10.0, 0), 3);
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Max, vec![percent(100, 15)]);
    assert_eq!(limit_with_behavior(0, 3, 0, 100, &[], &[], &b, NOW).0, 0);
    assert_eq!(limit_with_behavior(0, 3, 0, 100, &[], &[], &default_behavior(), NOW).0, 3);
    assert_eq!(limit_legacy(0, 3, 0, 100).0, 3);
}

#[test]
fn t37_select_policy_min_down() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Min, vec![percent(10, 60), pods(5, 60)]);
    assert_eq!(limit_with_behavior(80, 10, 1, 100, &[], &[], &b, NOW).0, 75);
}

#[test]
fn t38_disabled_scale_down() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Disabled, vec![percent(100, 15)]);
    assert_eq!(limit_with_behavior(10, 2, 1, 100, &[], &[], &b, NOW), (10, Limit::ScaleDownLimit));
    assert_eq!(limit_with_behavior(10, 12, 1, 100, &[], &[], &b, NOW).0, 12);
}

#[test]
fn t39_disabled_scale_up() {
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Disabled, vec![pods(4, 15)]);
    assert_eq!(limit_with_behavior(3, 8, 1, 100, &[], &[], &b, NOW), (3, Limit::ScaleUpLimit));
}

#[test]
fn t40_percent_300_with_history() {
    let r = rules(0, SelectPolicy::Max, vec![percent(300, 300)]);
    assert_eq!(scale_up_limit(6, &[ev(4, ago(60.0))], &[ev(2, ago(60.0))], &r, NOW), 16);
}

#[test]
fn t41_percent_50_down_with_history() {
    let r = rules(0, SelectPolicy::Max, vec![percent(50, 180)]);
    assert_eq!(scale_down_limit(10, &[ev(2, ago(60.0))], &[ev(4, ago(60.0))], &r, NOW), 6);
}

#[test]
fn t42_previous_events_prevent_further_scale_down() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Max, vec![percent(10, 120)]);
    let down = [ev(10, ago(30.0)), ev(10, ago(60.0)), ev(10, ago(90.0))];
    assert_eq!(limit_with_behavior(100, 0, 1, 1000, &[], &down, &b, NOW), (100, Limit::ScaleDownLimit));
}

#[test]
fn t43_limit_raised_to_current() {
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Max, vec![pods(5, 120)]);
    let up = [ev(1, ago(30.0)), ev(5, ago(60.0)), ev(9, ago(90.0))];
    assert_eq!(limit_with_behavior(100, 500, 1, 1000, &up, &[], &b, NOW), (100, Limit::ScaleUpLimit));
}

#[test]
fn t44_f64_artifact_down() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Max, vec![percent(80, 60)]);
    assert_eq!(limit_with_behavior(10, 1, 1, 100, &[], &[], &b, NOW), (1, Limit::DesiredWithinRange));
}

#[test]
fn t45_f64_artifact_up() {
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Max, vec![percent(12, 60)]);
    assert_eq!(limit_with_behavior(25, 100, 1, 1000, &[], &[], &b, NOW).0, 29);
}

// === min/max clamps (behavior) ===

#[test]
fn t46_max_clamp() {
    assert_eq!(limit_with_behavior(8, 1000, 1, 10, &[], &[], &default_behavior(), NOW), (10, Limit::TooManyReplicas));
}

#[test]
fn t47_min_clamp() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Max, vec![percent(100, 60)]);
    assert_eq!(limit_with_behavior(10, 2, 5, 100, &[], &[], &b, NOW), (5, Limit::TooFewReplicas));
}

#[test]
fn t48_min_one() {
    let mut b = default_behavior();
    b.scale_down = rules(0, SelectPolicy::Max, vec![pods(100, 60)]);
    assert_eq!(limit_with_behavior(10, 0, 1, 100, &[], &[], &b, NOW), (1, Limit::TooFewReplicas));
}

#[test]
fn t49_store_scale_events_reuses_the_last_outdated_slot() {
    let mut b = default_behavior();
    b.scale_up = rules(0, SelectPolicy::Max, vec![pods(10, 60), percent(100, 30)]);
    let mut up = vec![ev(8, ago(29.0)), ev(6, ago(59.0)), ev(7, ago(61.0)), ev(9, ago(61.0))];
    assert_eq!(change_in_period(&up, 60_000, NOW), 14);
    store_scale_event(&b, &mut up, &mut vec![], 10, 15, NOW);
    assert_eq!(
        up.iter().map(|e| (e.change, e.outdated)).collect::<Vec<_>>(),
        [(8, false), (6, false), (7, true), (5, false)]
    );
}

// === the history's storage ===

/// Packed to 8 bytes a slot, and still the controller's slots in the controller's order
/// with their exact times, on either side of `base`.
#[test]
fn the_history_keeps_every_slot_exactly_in_eight_bytes() {
    assert_eq!(std::mem::size_of::<Slot>(), 8);
    let slots = [rec(3, ago(0.001)), rec(7, ago(300.0)), rec(1, Time(NOW.0 + 5)), rec(2, ago(3600.0))];
    let recs = History::from_iter(slots);
    assert_eq!(recs.iter().collect::<Vec<_>>(), slots);
    assert_eq!(recs.len(), 4);
    // Equality is the slots', wherever `base` sits.
    assert_eq!(recs, History::from_iter(slots.iter().rev().copied().rev()));
    assert_ne!(recs, History::from_iter(slots[1..].iter().copied()));
}

/// A time weeks from `base` moves it; a slot then beyond the span is clamped to its edge,
/// which keeps it outside every window (at most an hour) as it was; the rest stay exact.
#[test]
fn the_history_moves_its_base_without_changing_a_decision() {
    const DAY: i64 = 86_400_000;
    let old = rec(50, Time(NOW.0 - 20 * DAY));
    let recent = rec(6, ago(120.0));
    let mut recs = History::from_iter([old, recent]);
    assert_eq!(recs.iter().collect::<Vec<_>>(), [old, recent], "20 days fit either side of the first slot");

    // Ten days later, the history having sat still (the target was gone, say), the new
    // slot is out of reach of the old base.
    let later = Time(NOW.0 + 10 * DAY);
    for window in [0, 300_000, 3_600_000] {
        let mut recs = recs.clone();
        assert_eq!(stabilize_legacy(&mut recs, 4, later, window), 4, "window {window} ms");
        let kept: Vec<_> = recs.iter().collect();
        // The old slot (30 days before) is clamped to 24.8 days before, still outside
        // every window; `recent` was the last old slot found, so it is the one reused.
        assert_eq!(kept[0], rec(50, Time(later.0 + i64::from(i32::MIN))));
        assert_eq!(kept[1], rec(4, later));
    }
    assert_eq!(stabilize_legacy(&mut recs, 4, Time(NOW.0 + 1), 300_000), 6, "in reach: nothing moved");
}

/// Against the plain list it packs: the same stores (appends and overwrites; the clock
/// mostly ticking, sometimes an hour back, sometimes weeks ahead, so `base` moves often)
/// leave the same slots.
#[test]
fn the_history_stores_as_a_plain_list_does() {
    const DAY: i64 = 86_400_000;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let (mut plain, mut packed) = (Vec::<Recommendation>::new(), History::default());
    let mut now = NOW.0;
    for step in 0..5_000 {
        now += match next(10) {
            0 => next(40 * DAY as u64) as i64,
            1 => -(next(3_600_000) as i64),
            _ => next(15_000) as i64,
        };
        let r = rec(next(1_000) as u32, Time(now));
        let reuse = (!plain.is_empty() && next(3) > 0).then(|| next(plain.len() as u64) as usize);
        store(&mut plain, reuse, r);
        packed.store(reuse, r);
        // Every slot within 20 days of now is exact; an older one may have been clamped
        // (as the type says), but is still weeks older than now.
        for (a, b) in plain.iter().zip(packed.iter()) {
            if (a.at.0 - now).abs() <= 20 * DAY {
                assert_eq!(a, &b, "step {step}");
            } else {
                assert!(
                    (b.at.0 - now).abs() > 20 * DAY && (b.at.0 < now) == (a.at.0 < now),
                    "step {step}: {a:?} {b:?}"
                );
            }
        }
        assert_eq!(plain.len(), packed.len());
    }
}
