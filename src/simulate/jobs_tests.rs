//! Job rules through `simulate`: the virtual cluster's Jobs, the strategies' numbers, and
//! the trace's failures, in-flight counts and pauses. The job rules are built here (the
//! rule file's `[[job]]` is parsed elsewhere).
//!
//! Unless a test says otherwise: one trigger on queue `q`, `queue_length` 1, min 0, max
//! 10, default strategy, polling every 10 s, Jobs of 60 s.

use std::sync::Arc;
use std::time::Duration;

use super::super::{Options, RowReason, RunError, Trace, format_time, run_all, write_csv};
use crate::config::{JobRule, JobTemplate, QueueSource, Rollout};
use crate::engine::job::{JobPolicy, JobReason, JobTrigger, MultipleScalersCalculation, ScalingStrategy};
use crate::engine::{MetricType, Time, TriggerPolicy};

fn job_rule(name: &str) -> JobRule {
    JobRule {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        context: None,
        polling_interval: Duration::from_secs(10),
        template: Arc::new(JobTemplate {
            path: "jobs/encode.yaml".into(),
            job: serde_json::json!({"apiVersion": "batch/v1", "kind": "Job"}),
            hash: "0123456789".to_owned(),
        }),
        rollout: Rollout::default(),
        group: None,
        priority: 0,
        pending_pod_conditions: Vec::new(),
        policy: JobPolicy {
            min_replica_count: 0,
            max_replica_count: Some(10),
            strategy: ScalingStrategy::Default,
            multiple_scalers_calculation: MultipleScalersCalculation::Max,
            finished_job_grace: Duration::ZERO,
            successful_jobs_history_limit: 100,
            failed_jobs_history_limit: 100,
            paused: false,
            triggers: Vec::new(),
        },
        trigger_policies: Vec::new(),
        triggers: Vec::new(),
        schedules: Vec::new(),
    }
    .with_trigger("q", 1, true)
}

trait Build {
    fn with_trigger(self, queue: &str, queue_length: u64, scale_on_in_flight: bool) -> Self;
    fn with(self, f: impl FnOnce(&mut JobRule)) -> Self;
}

impl Build for JobRule {
    /// Adds a trigger reading `queue` (its name in the trace).
    fn with_trigger(mut self, queue: &str, queue_length: u64, scale_on_in_flight: bool) -> JobRule {
        self.policy.triggers.push(JobTrigger { queue_length, activation_queue_length: 0 });
        self.trigger_policies.push(TriggerPolicy {
            name: None,
            queue_length,
            activation_queue_length: 0,
            scale_on_in_flight,
            scale_on_delayed: false,
            metric_type: MetricType::AverageValue,
        });
        self.triggers.push(QueueSource {
            url: Some(format!("https://sqs.us-east-1.amazonaws.com/123456789012/{queue}")),
            name: queue.to_owned(),
            region: "us-east-1".to_owned(),
            endpoint: None,
            profile: None,
            role_arn: None,
            external_id: None,
            direct: true,
        });
        self
    }

    fn with(mut self, f: impl FnOnce(&mut JobRule)) -> JobRule {
        f(&mut self);
        self
    }
}

fn trace(rows: &str) -> Trace {
    Trace::parse(format!("time,queue,visible,in_flight,delayed\n{rows}").as_bytes()).unwrap()
}

fn options(until: i64, job_duration: u64) -> Options {
    Options {
        until: (until >= 0).then_some(Time::from_secs(until)),
        job_duration: Duration::from_secs(job_duration),
        ..Options::default()
    }
}

/// `(time, created, unfinished, reason)` of each row.
fn timeline(job: &JobRule, trace: &Trace, options: &Options) -> Vec<(String, u32, u32, &'static str)> {
    let rows = run_all(&[], &[job], trace, options).unwrap();
    rows.iter().map(|r| (format_time(r.time), r.desired.unwrap(), r.replicas, r.reason.as_str())).collect()
}

fn rows(want: &[(i64, u32, u32, &'static str)]) -> Vec<(String, u32, u32, &'static str)> {
    want.iter().map(|&(t, n, u, why)| (t.to_string(), n, u, why)).collect()
}

/// The demo's job story: 12 messages, one per Job, at most 4 Jobs, each 20 s, a poll
/// every 10 s. The trace is what SQS shows while the Jobs work: each takes its message
/// (in flight) and deletes it when it ends. 4 start, then 4 more as those end, never
/// more than 4 at once, and none at the end.
#[test]
fn twelve_messages_four_at_a_time() {
    let job = job_rule("encode").with(|j| j.policy.max_replica_count = Some(4));
    let trace = trace("0,q,12,0,0\n1,q,8,4,0\n20,q,8,0,0\n21,q,4,4,0\n40,q,4,0,0\n41,q,0,4,0\n60,q,0,0,0\n");
    // Default --until: the trace's end, the last Jobs' 20 s, two polls.
    let got = timeline(&job, &trace, &options(-1, 20));
    let want = rows(&[
        // 12 and then 8 messages ask for more than 4 Jobs at once.
        (0, 4, 4, "at_max"),
        (10, 0, 4, "at_max"),
        (20, 4, 4, "at_max"),
        (30, 0, 4, "at_max"),
        (40, 4, 4, "created"),
        (50, 0, 4, "jobs_exist"),
        (60, 0, 0, "inactive"),
        (70, 0, 0, "inactive"),
        (80, 0, 0, "inactive"),
        (90, 0, 0, "inactive"),
        (100, 0, 0, "inactive"),
    ]);
    assert_eq!(got, want);
    assert_eq!(got.iter().map(|r| r.1).sum::<u32>(), 12, "one Job per message");

    let mut csv = Vec::new();
    write_csv(&run_all(&[], &[&job], &trace, &options(-1, 20)).unwrap(), &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(lines[0], "time,rule,backlog,active,desired,replicas,reason");
    assert_eq!(lines[1], "0,encode,12,true,4,4,at_max");
    assert_eq!(lines[7], "60,encode,0,false,0,0,inactive");
}

/// A steady backlog of 7 and Jobs that outlast the run (no Job ends, none pending): each
/// strategy's creates per poll, worked out from its formula (spec §5) with `U` the
/// Jobs created so far, `P` = 0, `M` = 10, `maxScale` = `scaleTo` = 7.
#[test]
fn each_strategy_creates_what_its_formula_gives() {
    let trace = trace("0,q,7,0,0\n");
    let cases = [
        // E = maxScale - U: 7, then 0.
        (ScalingStrategy::Default, [7, 0, 0, 0, 0]),
        // E = min(M - U, maxScale - P): 7, then min(3, 7), then 0.
        (ScalingStrategy::Accurate, [7, 3, 0, 0, 0]),
        // E = min(M - U - P, maxScale), n = E: the same numbers as accurate here.
        (ScalingStrategy::Eager, [7, 3, 0, 0, 0]),
        // E = min(maxScale - d - trunc(U × p), M) with d 1, p 0.5: 6; 7-1-3 = 3;
        // 7-1-trunc 4.5 = 2; 7-1-5 = 1; 7-1-6 = 0. 12 Jobs: custom has no total cap.
        (ScalingStrategy::Custom { queue_length_deduction: 1, running_job_percentage: 0.5 }, [6, 3, 2, 1, 0]),
    ];
    for (strategy, want) in cases {
        let job = job_rule("j").with(|j| j.policy.strategy = strategy);
        let got = timeline(&job, &trace, &options(40, 1000));
        let created: Vec<u32> = got.iter().map(|r| r.1).collect();
        assert_eq!(created, want, "{strategy:?}");
        let mut unfinished = 0;
        for (row, n) in got.iter().zip(want) {
            unfinished += n;
            assert_eq!(row.2, unfinished, "{strategy:?} at {}: every Job still runs", row.0);
        }
    }
}

/// Jobs end and are counted out, but a Complete Job within `finished_job_grace` still
/// counts (spec §10.1): with 30 s of grace the 20 s Jobs hold their slot until 50 s.
#[test]
fn finished_job_grace_holds_the_slot_of_a_finished_job() {
    let trace = trace("0,q,2,0,0\n");
    let job = job_rule("j").with(|j| j.policy.finished_job_grace = Duration::from_secs(30));
    let got = timeline(&job, &trace, &options(60, 20));
    let want = rows(&[
        (0, 2, 2, "created"),
        (10, 0, 2, "jobs_exist"),
        // Ended at 20, counted until 20 + 30.
        (20, 0, 0, "jobs_exist"),
        (30, 0, 0, "jobs_exist"),
        (40, 0, 0, "jobs_exist"),
        (50, 2, 2, "created"),
        (60, 0, 2, "jobs_exist"),
    ]);
    assert_eq!(got, want);
}

/// A failed read (`error` in the trace) creates nothing, while the Jobs already created
/// run to their end; the reading comes back and so do the creates.
#[test]
fn a_failed_reading_creates_nothing() {
    let trace = trace("0,q,3,0,0\n5,q,error,,\n35,q,5,0,0\n");
    let got = run_all(&[], &[&job_rule("j")], &trace, &options(40, 20)).unwrap();
    let seen: Vec<_> = got.iter().map(|r| (format_time(r.time), r.backlog, r.desired, r.replicas, r.reason)).collect();
    let failed = RowReason::Job(JobReason::PollFailed);
    let want = [
        ("0", Some(3), Some(3), 3, RowReason::Job(JobReason::Created)),
        ("10", None, Some(0), 3, failed),
        ("20", None, Some(0), 0, failed),
        ("30", None, Some(0), 0, failed),
        ("40", Some(5), Some(5), 5, RowReason::Job(JobReason::Created)),
    ];
    let want: Vec<_> = want.iter().map(|&(t, b, d, u, why)| (t.to_owned(), b, d, u, why)).collect();
    assert_eq!(seen, want);
}

/// The trace's in-flight messages count only where the trigger says so
/// (`scale_on_in_flight`); delayed ones only with `scale_on_delayed`.
#[test]
fn in_flight_and_delayed_count_per_the_triggers_flags() {
    let trace = trace("0,q,3,4,5\n");
    let first = |job: JobRule| {
        let rows = run_all(&[], &[&job], &trace, &options(0, 60)).unwrap();
        (rows[0].backlog, rows[0].desired)
    };
    assert_eq!(first(job_rule("j")), (Some(7), Some(7)), "in flight counted (V1 with U = 0)");
    let visible_only = job_rule("j").with(|j| j.trigger_policies[0].scale_on_in_flight = false);
    assert_eq!(first(visible_only), (Some(3), Some(3)));
    let with_delayed = job_rule("j").with(|j| j.trigger_policies[0].scale_on_delayed = true);
    assert_eq!(first(with_delayed), (Some(12), Some(10)), "12 messages, capped by max 10");
}

/// A paused job rule polls (rows at its times) but reads nothing and creates nothing.
#[test]
fn a_paused_job_rule_creates_nothing() {
    let job = job_rule("j").with(|j| j.policy.paused = true);
    let got = run_all(&[], &[&job], &trace("0,q,9,0,0\n"), &options(30, 60)).unwrap();
    assert_eq!(got.len(), 4);
    for r in &got {
        assert_eq!((r.backlog, r.active, r.desired, r.replicas), (None, false, Some(0), 0), "{r:?}");
        assert_eq!(r.reason, RowReason::Job(JobReason::Paused));
    }
}

/// The history cleanup runs as the daemon's: with a limit of 2, the cluster keeps the 2
/// newest Complete Jobs beside the running ones (the rows cannot show it, so the test
/// looks at the cluster).
#[test]
fn the_history_cleanup_keeps_the_newest_finished_jobs() {
    let job = job_rule("j").with(|j| j.policy.successful_jobs_history_limit = 2);
    let trace = trace("0,q,3,0,0\n");
    let options = options(0, 15);
    let mut timeline = super::Timeline::new(&job);
    for t in [0, 10, 20, 30, 40] {
        let row = timeline.poll(&trace, &options, Time::from_secs(t)).unwrap();
        assert!(row.replicas <= 3, "at {t}: {row:?}");
    }
    // Created: j-1..3 at 0 (end 15), j-4..6 at 20 (end 35), j-7..9 at 40. At 20 the
    // cleanup deleted j-1 (oldest; ties by name); at 40 it saw 5 Complete Jobs and kept
    // the 2 newest.
    let names: Vec<_> = timeline.cluster.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["j-5", "j-6", "j-7", "j-8", "j-9"]);
}

/// Rules and job rules interleave by time, then by name; `--rule`'s selection is the
/// caller's. A job rule reading a queue the trace lacks is an error naming it.
#[test]
fn rules_and_job_rules_interleave_by_time_then_name() {
    let config = crate::config::from_str(include_str!("../../config/demo.toml")).unwrap();
    let rule = &config.rules[0];
    let trace = trace("0,keda-demo-queue,3,0,0\n0,q,1,0,0\n");
    let (a, z) = (job_rule("a-job"), job_rule("zz-job"));
    let got = run_all(&[rule], &[&z, &a], &trace, &options(20, 60)).unwrap();
    let order: Vec<_> = got.iter().map(|r| (format_time(r.time), r.rule.as_str())).collect();
    let want = [
        ("0", "a-job"),
        ("0", "demo-worker"),
        ("0", "zz-job"),
        ("10", "a-job"),
        ("10", "demo-worker"),
        ("10", "zz-job"),
        ("20", "a-job"),
        ("20", "demo-worker"),
        ("20", "zz-job"),
    ];
    let want: Vec<_> = want.iter().map(|&(t, n)| (t.to_owned(), n)).collect();
    assert_eq!(order, want);
    assert!(matches!(got[1].reason, RowReason::Rule(_)) && matches!(got[0].reason, RowReason::Job(_)));

    let missing = job_rule("m").with_trigger("nowhere", 1, true);
    let err = run_all(&[rule], &[&missing], &trace, &options(20, 60)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "job rule \"m\" reads queue \"nowhere\", which has no row in the trace (select other rules with --rule)"
    );
}

/// The chart draws a job rule's backlog and unfinished Jobs beside a rule's.
#[test]
fn the_chart_draws_job_rules() {
    let config = crate::config::from_str(include_str!("../../config/demo.toml")).unwrap();
    let trace = trace("0,keda-demo-queue,3,0,0\n0,q,4,0,0\n");
    let job = job_rule("encode");
    let rows = run_all(&[&config.rules[0]], &[&job], &trace, &options(60, 20)).unwrap();
    let svg = super::super::chart::render(&rows).unwrap();
    for text in ["Jobs running (encode)", "replicas (demo-worker)", "backlog (encode)", "replicas, Jobs running"] {
        assert!(svg.contains(text), "missing {text:?}");
    }
}

/// A virtual cluster that would outgrow [`super::MAX_JOBS`] ends the run with an error
/// naming the job rule and the time, rather than slowing every later poll: here `custom`
/// (no total cap) adds 100 Jobs a second that never end.
#[test]
fn a_cluster_that_grows_without_end_is_an_error() {
    let job = job_rule("flood").with(|j| {
        j.polling_interval = Duration::from_secs(1);
        j.policy.max_replica_count = None;
        j.policy.strategy = ScalingStrategy::Custom { queue_length_deduction: 0, running_job_percentage: 0.0 };
    });
    let err = run_all(&[], &[&job], &trace("0,q,5000,0,0\n"), &options(3600, 1_000_000)).unwrap_err();
    assert_eq!(err, RunError::TooManyJobs("flood".to_owned(), 100));
    assert!(err.to_string().contains("more than 10000 Jobs at 100s"), "{err}");
}

/// A `[[job.schedule]]` window replays as the daemon applies it: open from 00:00 for
/// 30 s with min 2, it tops an idle job rule up to 2 Jobs at once; once it has closed,
/// the rule's own min of 0 creates nothing more.
#[test]
fn a_job_schedule_window_replays_as_the_daemon_applies_it() {
    use crate::engine::schedule::{Schedule, parse_cron, time_zone};
    let mut job = job_rule("nightly");
    job.schedules = vec![Schedule {
        pattern: "0 0 * * *".to_owned(),
        cron: parse_cron("0 0 * * *").unwrap(),
        timezone: "UTC".to_owned(),
        tz: time_zone("UTC").unwrap(),
        duration: Duration::from_secs(30),
        min: Some(2),
        max: None,
        paused: false,
    }];
    let got = timeline(&job, &trace("0,q,0,0,0\n"), &options(60, 100));
    let want: Vec<(String, u32, u32, &str)> = vec![
        ("0".into(), 2, 2, "min_top_up"),
        ("10".into(), 0, 2, "jobs_exist"),
        ("20".into(), 0, 2, "jobs_exist"),
        ("30".into(), 0, 2, "inactive"),
        ("40".into(), 0, 2, "inactive"),
        ("50".into(), 0, 2, "inactive"),
        ("60".into(), 0, 2, "inactive"),
    ];
    assert_eq!(got, want);
}
