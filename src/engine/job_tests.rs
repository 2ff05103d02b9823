//! The job rules' vectors (`../shared/spec/scaledjob.md` §11), KEDA's own unit-test
//! cases for the strategies, the combination and the cleanup (§3, §4.1, §5), sqscale's
//! decisions (§10, §12), and the invariants as property tests.
//!
//! Unless a test says otherwise: one trigger, `a = 0`, min 0, max 10, default strategy,
//! `max` combination, not paused, counts trusted, no grace.

use super::*;
use proptest::prelude::*;

fn trigger(queue_length: u64, activation_queue_length: i64) -> JobTrigger {
    JobTrigger { queue_length, activation_queue_length }
}

fn policy() -> JobPolicy {
    JobPolicy {
        min_replica_count: 0,
        max_replica_count: Some(10),
        strategy: ScalingStrategy::Default,
        multiple_scalers_calculation: MultipleScalersCalculation::Max,
        finished_job_grace: Duration::ZERO,
        successful_jobs_history_limit: 100,
        failed_jobs_history_limit: 100,
        paused: false,
        triggers: vec![trigger(1, 0)],
    }
}

fn with(f: impl FnOnce(&mut JobPolicy)) -> JobPolicy {
    let mut p = policy();
    f(&mut p);
    p
}

/// `u` unfinished Jobs, the first `p` of them pending.
fn unfinished(u: u32, p: u32) -> Snapshot<'static> {
    let jobs = (0..u)
        .map(|i| JobView {
            name: "",
            status: JobStatus::Unfinished { pending: i < p },
            finished_at: None,
            created_at: None,
        })
        .collect();
    Snapshot { jobs, created_unseen: 0 }
}

/// One poll at t = 0 with `u` unfinished Jobs of which `p` pending.
fn poll(policy: &JobPolicy, backlogs: &[Option<u64>], u: u32, p: u32) -> JobDecision {
    decide(policy, backlogs, Some(&unfinished(u, p)), Time(0))
}

fn done(name: &'static str, status: JobStatus, finished_at: Option<i64>) -> JobView<'static> {
    JobView { name, status, finished_at: finished_at.map(Time::from_secs), created_at: None }
}

// === §11 vectors ===

#[test]
fn v01_default_running_jobs_cancel_the_in_flight_messages_they_hold() {
    // Q = 7: 3 visible + 4 in flight, held by the 4 running Jobs.
    let d = poll(&policy(), &[Some(7)], 4, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (7, 7, 3));
    assert_eq!(d.reason, JobReason::Created);
}

#[test]
fn v02_default_rounds_messages_per_job_up() {
    let d = poll(&with(|p| p.triggers = vec![trigger(5, 0)]), &[Some(23)], 2, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (5, 23, 3));
}

#[test]
fn v03_accurate_deducts_only_pending_jobs() {
    let d = poll(&with(|p| p.strategy = ScalingStrategy::Accurate), &[Some(6)], 5, 2);
    assert_eq!(d.create, 4);
}

#[test]
fn v04_accurate_bound_by_the_free_slots() {
    let d = poll(&with(|p| (p.strategy, p.max_replica_count) = (ScalingStrategy::Accurate, Some(8))), &[Some(6)], 5, 2);
    assert_eq!(d.create, 3);
}

#[test]
fn v05_eager_subtracts_pending_twice_as_keda_does() {
    let d = poll(&with(|p| p.strategy = ScalingStrategy::Eager), &[Some(6)], 5, 2);
    assert_eq!(d.create, 3, "min(10 - 5 - 2, 6); 5 slots are free");
}

#[test]
fn v06_custom_deduction_and_percentage_total_not_capped() {
    let p = with(|p| p.strategy = ScalingStrategy::custom(Some(1), Some(0.5)));
    let d = poll(&p, &[Some(9)], 5, 0);
    assert_eq!((d.scale_to, d.create), (9, 6));
    assert!(5 + d.create > p.cap(), "custom caps each poll at M, not the total (§5.2)");
}

#[test]
fn v07_custom_negative_deduction_capped_by_raw_scale_to() {
    let p = with(|p| {
        p.strategy = ScalingStrategy::custom(Some(-3), Some(0.0));
        p.triggers = vec![trigger(2, 0)];
        p.max_replica_count = Some(20);
    });
    let d = poll(&p, &[Some(4)], 0, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (2, 4, 4), "E = 5, capped by scaleTo = 4 messages");
}

#[test]
fn v08_custom_without_percentage_is_default_and_ignores_the_deduction() {
    let strategy = ScalingStrategy::custom(Some(3), None);
    assert_eq!(strategy, ScalingStrategy::Default);
    let d = poll(&with(|p| p.strategy = strategy), &[Some(5)], 1, 0);
    assert_eq!(d.create, 4);
}

#[test]
fn v09_below_min_tops_up_and_ignores_the_queue() {
    let d = poll(&with(|p| p.min_replica_count = 3), &[Some(50)], 1, 0);
    assert_eq!((d.create, d.reason), (2, JobReason::MinTopUp));
}

#[test]
fn v10_standby_jobs_are_not_deducted_keda_7345() {
    let p = with(|p| p.min_replica_count = 2);
    assert_eq!(p.effective_max(), 8);
    let d = poll(&p, &[Some(1)], 2, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (1, 1, 1));
}

#[test]
fn v11_unset_max_is_100_beside_min() {
    let p = with(|p| (p.min_replica_count, p.max_replica_count) = (5, None));
    assert_eq!((p.effective_max(), p.cap()), (100, 105));
    let d = poll(&p, &[Some(200)], 5, 0);
    assert_eq!((d.max_scale, d.create, d.reason), (100, 100, JobReason::AtMax));
}

#[test]
fn v12_min_above_max_allows_twice_max() {
    let p = with(|p| (p.min_replica_count, p.max_replica_count) = (4, Some(2)));
    assert_eq!((p.effective_min(), p.effective_max(), p.cap()), (2, 2, 4));
    let d = poll(&p, &[Some(10)], 2, 0);
    assert_eq!(d.create, 2);
}

#[test]
fn v13_max_never_selects_an_active_trigger_that_reads_zero() {
    let p = with(|p| p.triggers = vec![trigger(1, -1), trigger(1, 5)]);
    let d = poll(&p, &[Some(0), Some(3)], 0, 0);
    assert!(!d.active);
    assert_eq!((d.create, d.reason), (0, JobReason::Inactive));
}

#[test]
fn v14_sum_adds_backlogs_and_jobs_per_trigger() {
    let p = with(|p| {
        p.multiple_scalers_calculation = MultipleScalersCalculation::Sum;
        p.triggers = vec![trigger(2, 0), trigger(1, 0)];
    });
    let d = poll(&p, &[Some(7), Some(2)], 1, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (6, 9, 5));
}

#[test]
fn v15_avg_over_the_active_triggers_only() {
    let p = with(|p| {
        p.multiple_scalers_calculation = MultipleScalersCalculation::Avg;
        p.triggers = vec![trigger(2, 0), trigger(1, 0), trigger(3, 0)];
    });
    let d = poll(&p, &[Some(7), Some(0), Some(4)], 0, 0);
    assert_eq!((d.max_scale, d.scale_to, d.create), (3, 6, 3));
}

#[test]
fn v16_min_replaces_an_active_trigger_that_reads_zero() {
    let p = with(|p| {
        p.multiple_scalers_calculation = MultipleScalersCalculation::Min;
        p.triggers = vec![trigger(1, -1), trigger(1, 0)];
    });
    let d = poll(&p, &[Some(0), Some(5)], 0, 0);
    assert_eq!(d.create, 5);
}

#[test]
fn v17_activation_is_strictly_above_the_threshold() {
    let d = poll(&with(|p| p.triggers = vec![trigger(1, 2)]), &[Some(2)], 0, 0);
    assert_eq!((d.active, d.create), (false, 0));
}

#[test]
fn v18_every_trigger_failed_still_tops_up_to_min() {
    let d = poll(&with(|p| p.min_replica_count = 2), &[None], 0, 0);
    assert!(d.active, "min_e > 0 is active whatever the triggers say");
    assert_eq!((d.create, d.reason, d.backlog), (2, JobReason::MinTopUp, None));
}

#[test]
fn v19_accurate_with_every_job_pending() {
    let d = poll(&with(|p| p.strategy = ScalingStrategy::Accurate), &[Some(12)], 3, 3);
    assert_eq!((d.max_scale, d.create), (10, 7));
}

#[test]
fn v20_untrusted_counts_create_nothing() {
    // What KEDA does: its failed list reads as 0 Jobs and it creates 5 duplicates.
    assert_eq!(poll(&policy(), &[Some(5)], 0, 0).create, 5);
    let d = decide(&policy(), &[Some(5)], None, Time(0));
    assert_eq!((d.create, d.reason, d.counts), (0, JobReason::CountsUntrusted, None));
    assert!(d.active, "the triggers are still read and reported");
}

#[test]
fn v21_paused_creates_and_deletes_nothing() {
    let p = with(|p| (p.paused, p.successful_jobs_history_limit) = (true, 0));
    let d = poll(&p, &[Some(9)], 0, 0);
    assert_eq!((d.create, d.reason), (0, JobReason::Paused));
    let snapshot = Snapshot { jobs: vec![done("old", JobStatus::Complete, Some(1))], created_unseen: 0 };
    assert!(cleanup(&p, &snapshot, Time::from_secs(100)).is_empty());
}

// === KEDA's own cases ===

/// `scaledjob_types_test.go:TestScaledJob` (spec §2.2): (max, min) -> (M, min_e).
#[test]
fn effective_min_and_max_as_keda_scaled_job_test() {
    for (max, min, m, min_e) in
        [(Some(10), 0, 10, 0), (Some(10), 1, 9, 1), (None, 1, 100, 1), (None, 0, 100, 0), (Some(1), 10, 1, 1)]
    {
        let p = with(|p| (p.max_replica_count, p.min_replica_count) = (max, min));
        assert_eq!((p.effective_max(), p.effective_min()), (m, min_e), "max {max:?} min {min}");
    }
}

/// `scale_handler_test.go:TestGetScaledJobState` (spec §3): (Q, t, active) = (20,1,✓)
/// (10,2,✓) (5,3,✓) (7,4,✗).
#[test]
fn combinations_as_keda_get_scaled_job_state() {
    let cases = [
        (MultipleScalersCalculation::Max, None, (20, 20)),
        (MultipleScalersCalculation::Min, None, (5, 2)),
        (MultipleScalersCalculation::Avg, None, (12, 9)),
        (MultipleScalersCalculation::Sum, None, (35, 27)),
        (MultipleScalersCalculation::Sum, Some(25), (35, 25)),
    ];
    for (how, max, expected) in cases {
        let p = with(|p| {
            p.multiple_scalers_calculation = how;
            p.max_replica_count = Some(max.unwrap_or(100));
            p.triggers = vec![trigger(1, 0), trigger(2, 0), trigger(3, 0), trigger(4, 7)];
        });
        let d = poll(&p, &[Some(20), Some(10), Some(5), Some(7)], 0, 0);
        assert_eq!((d.scale_to, d.max_scale), expected, "{how:?} max {max:?}");
    }
}

/// The strategies' upstream unit tests (spec §5): (maxScale, r, P, M) -> E.
#[test]
fn strategies_as_keda_scale_jobs_test() {
    let e =
        |s: ScalingStrategy, (max_scale, r, p, m): (i64, i64, i64, i64)| s.effective_max_scale(max_scale, r, p, m, 0).0;
    assert_eq!(e(ScalingStrategy::Default, (3, 2, 0, 5)), 1);
    assert_eq!(e(ScalingStrategy::Default, (2, 0, 0, 5)), 2);
    let custom = |d, p| ScalingStrategy::custom(d, Some(p));
    assert_eq!(e(custom(Some(1), 0.5), (3, 2, 0, 5)), 1);
    assert_eq!(e(custom(Some(1), 0.5), (10, 0, 0, 10)), 9);
    assert_eq!(e(custom(Some(-2), 0.0), (3, 2, 0, 4)), 4);
    assert_eq!(e(custom(None, 0.5), (10, 2, 0, 100)), 9);
    for (args, want) in [
        ((3, 2, 0, 5), 3),
        ((5, 2, 0, 5), 3),
        ((3, 4, 2, 10), 1),
        ((5, 4, 2, 5), 1),
        ((3, 3, 3, 5), 0),
        ((15, 15, 15, 20), 0),
        ((10, 10, 10, 15), 0),
        ((20, 15, 10, 20), 5),
    ] {
        assert_eq!(e(ScalingStrategy::Accurate, args), want, "accurate {args:?}");
    }
    for (max_scale, r, p, m, want) in
        [(4, 3, 0, 10, 4), (4, 0, 3, 10, 4), (4, 7, 0, 10, 3), (4, 1, 6, 10, 3), (15, 0, 0, 10, 10)]
    {
        assert_eq!(
            ScalingStrategy::Eager.effective_max_scale(max_scale, r, p, m, 0),
            (want, m),
            "eager {:?}",
            (max_scale, r, p, m)
        );
    }
}

/// `scale_jobs_test.go:TestCleanUpMixedCaseWithSortByTime` (spec §4.1), limits 1 and 2.
#[test]
fn cleanup_as_keda_mixed_case_sorted_by_time() {
    let p = with(|p| (p.successful_jobs_history_limit, p.failed_jobs_history_limit) = (1, 2));
    let at = |h: i64, m: i64| Some((h * 60 + m) * 60);
    let jobs = vec![
        done("ok-1537", JobStatus::Complete, at(15, 37)),
        done("ok-1536", JobStatus::Complete, at(15, 36)),
        done("ok-1535", JobStatus::Complete, at(15, 35)),
        done("failed-1537", JobStatus::Failed, at(15, 37)),
        done("failed-1536", JobStatus::Failed, at(15, 36)),
        done("failed-1538", JobStatus::Failed, at(15, 38)),
        JobView {
            name: "running",
            status: JobStatus::Unfinished { pending: false },
            finished_at: None,
            created_at: None,
        },
    ];
    let snapshot = Snapshot { jobs, created_unseen: 0 };
    assert_eq!(cleanup(&p, &snapshot, Time::from_secs(86_400)), ["ok-1535", "ok-1536", "failed-1536"]);
}

// === sqscale's decisions ===

/// #7330 (spec §10.1): the Job that deleted the last message has just completed, and
/// SQS still counts the message. KEDA (grace 0) creates a duplicate; a grace does not.
#[test]
fn finished_job_grace_counts_a_just_completed_job() {
    let snapshot = Snapshot { jobs: vec![done("a", JobStatus::Complete, Some(100))], created_unseen: 0 };
    let now = Time::from_secs(130);
    assert_eq!(decide(&policy(), &[Some(1)], Some(&snapshot), now).create, 1, "KEDA's duplicate");
    let p = with(|p| p.finished_job_grace = Duration::from_secs(60));
    let d = decide(&p, &[Some(1)], Some(&snapshot), now);
    assert_eq!((d.create, d.reason), (0, JobReason::JobsExist));
    assert_eq!(d.counts, Some(JobCounts { unfinished: 0, pending: 0, finishing: 1 }));
    // Once the grace has passed it no longer counts.
    assert_eq!(decide(&p, &[Some(1)], Some(&snapshot), Time::from_secs(160)).create, 1);
}

#[test]
fn finished_job_grace_ignores_failed_jobs_and_jobs_without_a_time() {
    let p = with(|p| p.finished_job_grace = Duration::from_secs(60));
    let snapshot = Snapshot {
        jobs: vec![done("failed", JobStatus::Failed, Some(100)), done("untimed", JobStatus::Complete, None)],
        created_unseen: 0,
    };
    let d = decide(&p, &[Some(2)], Some(&snapshot), Time::from_secs(110));
    assert_eq!(d.counts, Some(JobCounts::default()));
    assert_eq!(d.create, 2);
}

/// §10.1 item 1: a Job created last poll that the cache has not shown yet counts as
/// unfinished and pending, so the next poll does not create it again.
#[test]
fn created_but_unseen_jobs_count_as_unfinished_and_pending() {
    let mut snapshot = unfinished(0, 0);
    assert_eq!(decide(&policy(), &[Some(3)], Some(&snapshot), Time(0)).create, 3);
    snapshot.created_unseen = 3;
    let d = decide(&policy(), &[Some(3)], Some(&snapshot), Time(0));
    assert_eq!((d.create, d.counts), (0, Some(JobCounts { unfinished: 3, pending: 3, finishing: 0 })));
    // accurate deducts them as pending: 6 visible messages, 3 of them theirs.
    let d = decide(&with(|p| p.strategy = ScalingStrategy::Accurate), &[Some(6)], Some(&snapshot), Time(0));
    assert_eq!(d.create, 3);
}

/// KEDA would leave the failed trigger out: `max` then selects T2 alone and asks for 5
/// Jobs, where the full reading (T1's 10 messages, 1 Job) asks for 1.
#[test]
fn a_failed_trigger_creates_nothing_for_the_backlog() {
    let p = with(|p| p.triggers = vec![trigger(10, 0), trigger(1, 0)]);
    assert_eq!(poll(&p, &[Some(10), Some(5)], 0, 0).create, 1);
    let d = poll(&p, &[None, Some(5)], 0, 0);
    assert_eq!((d.max_scale, d.create, d.reason), (5, 0, JobReason::PollFailed));
    assert_eq!(d.backlog, Some(5));
}

/// KEDA's `max` keeps the `maxScale` of the trigger with the largest backlog (spec §3),
/// so more messages on one queue can ask for fewer Jobs. sqscale keeps it; the
/// monotonicity property below holds for one trigger and for `sum`.
#[test]
fn max_takes_the_largest_backlog_not_the_most_jobs() {
    let p = with(|p| p.triggers = vec![trigger(1, 0), trigger(2, 0)]);
    assert_eq!(poll(&p, &[Some(5), Some(4)], 0, 0).create, 5);
    assert_eq!(poll(&p, &[Some(5), Some(6)], 0, 0).create, 3);
}

#[test]
fn reasons() {
    let p = policy();
    assert_eq!(poll(&p, &[Some(3)], 3, 0).reason, JobReason::JobsExist);
    assert_eq!(poll(&p, &[Some(30)], 10, 0).reason, JobReason::AtMax, "at the cap and the queue asks for more");
    assert_eq!(
        poll(&p, &[Some(30)], 4, 0),
        JobDecision {
            create: 6,
            reason: JobReason::AtMax,
            active: true,
            scale_to: 30,
            max_scale: 10,
            backlog: Some(30),
            counts: Some(JobCounts { unfinished: 4, pending: 0, finishing: 0 }),
        }
    );
    let tokens: Vec<&str> = [
        JobReason::Paused,
        JobReason::CountsUntrusted,
        JobReason::MinTopUp,
        JobReason::PollFailed,
        JobReason::Inactive,
        JobReason::Created,
        JobReason::AtMax,
        JobReason::JobsExist,
    ]
    .iter()
    .map(|r| r.as_str())
    .collect();
    assert_eq!(tokens.join(" "), "paused counts_untrusted min_top_up poll_failed inactive created at_max jobs_exist");
}

/// §4.1 sqscale: Failed Jobs by their condition's time, then creation, then name;
/// untimed ones first; ties among Complete Jobs by name.
#[test]
fn cleanup_order_is_deterministic() {
    let p = with(|p| (p.successful_jobs_history_limit, p.failed_jobs_history_limit) = (1, 1));
    let failed = |name, at: Option<i64>, created: i64| JobView {
        name,
        status: JobStatus::Failed,
        finished_at: at.map(Time::from_secs),
        created_at: Some(Time::from_secs(created)),
    };
    let snapshot = Snapshot {
        jobs: vec![
            done("ok-b", JobStatus::Complete, Some(5)),
            done("ok-a", JobStatus::Complete, Some(5)),
            done("ok-c", JobStatus::Complete, Some(9)),
            failed("f-late-created", Some(5), 3),
            failed("f-early-created", Some(5), 2),
            failed("f-untimed", None, 9),
            failed("f-newest", Some(8), 1),
        ],
        created_unseen: 0,
    };
    assert_eq!(
        cleanup(&p, &snapshot, Time::from_secs(100)),
        ["ok-a", "ok-b", "f-untimed", "f-early-created", "f-late-created"]
    );
}

/// A limit of 0 would delete a Complete Job at once, ending the grace that keeps it
/// counted; it goes at the first poll after its grace.
#[test]
fn cleanup_keeps_complete_jobs_within_the_grace() {
    let p = with(|p| (p.successful_jobs_history_limit, p.finished_job_grace) = (0, Duration::from_secs(60)));
    let snapshot = Snapshot {
        jobs: vec![done("old", JobStatus::Complete, Some(10)), done("new", JobStatus::Complete, Some(100))],
        created_unseen: 0,
    };
    assert_eq!(cleanup(&p, &snapshot, Time::from_secs(120)), ["old"]);
    assert_eq!(cleanup(&p, &snapshot, Time::from_secs(160)), ["old", "new"]);
    assert_eq!(
        cleanup(&with(|p| p.successful_jobs_history_limit = 0), &snapshot, Time::from_secs(120)),
        ["old", "new"]
    );
}

// === properties ===

fn arb_strategy() -> impl Strategy<Value = ScalingStrategy> {
    prop_oneof![
        Just(ScalingStrategy::Default),
        Just(ScalingStrategy::Accurate),
        Just(ScalingStrategy::Eager),
        (-5i64..=5, 0.0f64..=2.0).prop_map(|(d, p)| ScalingStrategy::custom(Some(d), Some(p))),
    ]
}

fn arb_calculation() -> impl Strategy<Value = MultipleScalersCalculation> {
    prop_oneof![
        Just(MultipleScalersCalculation::Max),
        Just(MultipleScalersCalculation::Min),
        Just(MultipleScalersCalculation::Avg),
        Just(MultipleScalersCalculation::Sum),
    ]
}

fn arb_policy(triggers: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = JobPolicy> {
    (
        arb_strategy(),
        arb_calculation(),
        0u32..15,
        proptest::option::of(1u32..30),
        prop::collection::vec((1u64..8, -1i64..4), triggers),
    )
        .prop_map(|(strategy, how, min, max, triggers)| JobPolicy {
            min_replica_count: min,
            max_replica_count: max,
            strategy,
            multiple_scalers_calculation: how,
            triggers: triggers.into_iter().map(|(t, a)| trigger(t, a)).collect(),
            ..policy()
        })
}

/// The cache's Jobs as counts: (unfinished, pending of those, created unseen).
fn arb_counts() -> impl Strategy<Value = (u32, u32, u32)> {
    (0u32..140, 0u32..=100, 0u32..5).prop_map(|(u, pct, unseen)| (u, u * pct / 100, unseen))
}

fn snapshot_of((u, p, unseen): (u32, u32, u32)) -> Snapshot<'static> {
    Snapshot { created_unseen: unseen, ..unfinished(u, p) }
}

fn arb_backlogs(n: usize) -> impl Strategy<Value = Vec<Option<u64>>> {
    prop::collection::vec(proptest::option::weighted(0.8, 0u64..400), n)
}

fn arb_finished() -> impl Strategy<Value = Vec<(u8, Option<i64>, i64)>> {
    // (status: 0 unfinished, 1 complete, 2 failed; finished at; created at), times in
    // few distinct seconds so ties happen.
    prop::collection::vec((0u8..3, proptest::option::weighted(0.9, 0i64..20), 0i64..5), 0..40)
}

proptest! {
    #[test]
    fn never_more_than_the_cap_unfinished_after_creating(
        (p, backlogs) in arb_policy(1..=3).prop_flat_map(|p| { let n = p.triggers.len(); (Just(p), arb_backlogs(n)) }),
        counts in arb_counts(),
    ) {
        let snapshot = snapshot_of(counts);
        let d = decide(&p, &backlogs, Some(&snapshot), Time(0));
        let u = d.counts.unwrap().counted();
        match p.strategy {
            ScalingStrategy::Custom { .. } => {
                // KEDA caps custom per poll only (§5.2, V6): at M, or the top-up to min.
                prop_assert!(d.create <= p.effective_max().max(p.effective_min()), "{d:?}");
            }
            _ => prop_assert!(u + d.create <= u.max(p.cap()), "U {u} + {} > cap {} ({d:?})", d.create, p.cap()),
        }
    }

    #[test]
    fn a_failed_or_untrusted_reading_creates_nothing(
        (p, backlogs) in arb_policy(1..=3).prop_flat_map(|p| { let n = p.triggers.len(); (Just(p), arb_backlogs(n)) }),
        counts in arb_counts(),
    ) {
        prop_assert_eq!(decide(&p, &backlogs, None, Time(0)).create, 0);
        if backlogs.iter().any(Option::is_none) {
            let d = decide(&p, &backlogs, Some(&snapshot_of(counts)), Time(0));
            // Only the top-up to min, which never reads the queue (V18).
            let u = d.counts.unwrap().counted();
            prop_assert!(d.create == 0 || (d.reason == JobReason::MinTopUp && u + d.create == p.effective_min()), "{d:?}");
        }
    }

    #[test]
    fn more_backlog_never_creates_fewer_jobs(
        p in arb_policy(1..=1), counts in arb_counts(), q in 0u64..400, more in 0u64..400,
    ) {
        let snapshot = snapshot_of(counts);
        let fewer = decide(&p, &[Some(q)], Some(&snapshot), Time(0)).create;
        let d = decide(&p, &[Some(q + more)], Some(&snapshot), Time(0));
        prop_assert!(d.create >= fewer, "{q} -> {fewer}, {} -> {}", q + more, d.create);
    }

    #[test]
    fn more_backlog_on_any_trigger_never_creates_fewer_jobs_with_sum(
        (p, backlogs, i) in arb_policy(2..=3).prop_flat_map(|p| {
            let n = p.triggers.len();
            (Just(p), prop::collection::vec(0u64..400, n), 0..n)
        }),
        counts in arb_counts(), more in 0u64..400,
    ) {
        let p = JobPolicy { multiple_scalers_calculation: MultipleScalersCalculation::Sum, ..p };
        let snapshot = snapshot_of(counts);
        let mut readings: Vec<Option<u64>> = backlogs.into_iter().map(Some).collect();
        let fewer = decide(&p, &readings, Some(&snapshot), Time(0)).create;
        readings[i] = readings[i].map(|q| q + more);
        prop_assert!(decide(&p, &readings, Some(&snapshot), Time(0)).create >= fewer);
    }

    #[test]
    fn cleanup_never_deletes_an_unfinished_job_and_keeps_exactly_the_limits(
        jobs in arb_finished(), ok_limit in 0u32..8, failed_limit in 0u32..8, grace in 0u64..10, now in 0i64..25,
    ) {
        let names: Vec<String> = (0..jobs.len()).map(|i| format!("job-{i:02}")).collect();
        let views: Vec<JobView<'_>> = jobs.iter().zip(&names).map(|(&(s, at, created), name)| JobView {
            name,
            status: match s { 0 => JobStatus::Unfinished { pending: false }, 1 => JobStatus::Complete, _ => JobStatus::Failed },
            finished_at: at.map(Time::from_secs),
            created_at: Some(Time::from_secs(created)),
        }).collect();
        let p = with(|p| {
            p.successful_jobs_history_limit = ok_limit;
            p.failed_jobs_history_limit = failed_limit;
            p.finished_job_grace = Duration::from_secs(grace);
        });
        let now = Time::from_secs(now);
        let snapshot = Snapshot { jobs: views.clone(), created_unseen: 0 };
        let deleted = cleanup(&p, &snapshot, now);
        let of = |status: JobStatus| views.iter().filter(move |j| j.status == status);
        for (status, limit) in [(JobStatus::Complete, ok_limit), (JobStatus::Failed, failed_limit)] {
            // sqscale's order (§4.1): Complete Jobs by time then name, Failed Jobs by time,
            // creation, name.
            fn key<'a>(j: &JobView<'a>) -> (Option<Time>, Option<Option<Time>>, &'a str) {
                (j.finished_at, (j.status == JobStatus::Failed).then_some(j.created_at), j.name)
            }
            let all = of(status).count();
            let graced = of(status).filter(|j| in_grace(&p, j, now)).count();
            let (gone, kept): (Vec<_>, Vec<_>) = of(status).partition(|j| deleted.contains(&j.name));
            // Complete Jobs within the grace stay whatever the limit; none are Failed.
            prop_assert_eq!(kept.len(), all.min((limit as usize).max(graced)), "{:?} limit {}", status, limit);
            // Oldest first: whatever goes is older than whatever stays.
            for g in &gone {
                prop_assert!(!in_grace(&p, g, now));
                for k in &kept {
                    prop_assert!(key(g) < key(k), "deleted {:?} kept {:?}", key(g), key(k));
                }
            }
        }
        let unfinished = JobStatus::Unfinished { pending: false };
        prop_assert!(of(unfinished).all(|j| !deleted.contains(&j.name)), "deleted {:?}", deleted);
    }
}
