//! Windows on the calendar (DST included), what overlapping windows impose, and the
//! engine deciding with them.

use super::*;
use crate::engine::{Counts, Observation, Pause, Policy, Reason, State, TriggerPolicy, decide};
use proptest::prelude::*;

fn at(rfc3339: &str) -> Time {
    Time(rfc3339.parse::<Timestamp>().unwrap().as_millisecond())
}

fn utc(t: Time) -> String {
    Timestamp::from_millisecond(t.0).unwrap().to_string()
}

fn schedule(pattern: &str, timezone: &str, duration_s: u64) -> Schedule {
    Schedule {
        pattern: pattern.to_owned(),
        cron: parse_cron(pattern).unwrap(),
        timezone: timezone.to_owned(),
        tz: time_zone(timezone).unwrap(),
        duration: Duration::from_secs(duration_s),
        min: None,
        max: None,
        paused: false,
    }
}

fn min(mut s: Schedule, n: u32) -> Schedule {
    s.min = Some(n);
    s
}

fn windows(s: &Schedule, from: &str, n: usize) -> Vec<(String, String)> {
    s.next_windows(at(from)).take(n).map(|w| (utc(w.opens), utc(w.closes))).collect()
}

fn open_at(s: &Schedule, t: &str) -> Option<(String, String)> {
    s.window_at(at(t)).map(|w| (utc(w.opens), utc(w.closes)))
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// The example: weekdays 08:00-18:00 in Seoul (UTC+9, no DST), so 23:00-09:00
/// UTC from Sunday night to Friday morning; half-open, and nothing at the weekend.
#[test]
fn weekday_office_hours_in_seoul() {
    let s = schedule("0 8 * * 1-5", "Asia/Seoul", 10 * 3600);
    assert_eq!(open_at(&s, "2026-12-06T22:59:59Z"), None, "Monday 07:59:59 in Seoul");
    let monday = pair("2026-12-06T23:00:00Z", "2026-12-07T09:00:00Z");
    assert_eq!(open_at(&s, "2026-12-06T23:00:00Z"), Some(monday.clone()));
    assert_eq!(open_at(&s, "2026-12-07T08:59:59.999Z"), Some(monday));
    assert_eq!(open_at(&s, "2026-12-07T09:00:00Z"), None, "18:00 closes it");
    assert_eq!(open_at(&s, "2026-12-12T03:00:00Z"), None, "Saturday noon");
    assert_eq!(
        windows(&s, "2026-12-10T12:00:00Z", 2),
        [pair("2026-12-10T23:00:00Z", "2026-12-11T09:00:00Z"), pair("2026-12-13T23:00:00Z", "2026-12-14T09:00:00Z")],
        "Friday, then Monday"
    );
    assert_eq!(s.local(at("2026-12-06T23:00:00Z")), "2026-12-07T08:00:00+09:00");
}

/// New York springs forward on 2026-03-08: 02:00 EST becomes 03:00 EDT, so 02:30 never
/// happens. The 02:30 window opens at the first instant after the gap (03:00 EDT, as
/// Vixie cron runs such a job) and stays open its full hour; the days around it open at
/// 02:30 on their own offsets.
#[test]
fn a_window_in_the_spring_forward_gap_opens_after_the_gap() {
    let s = schedule("30 2 * * *", "America/New_York", 3600);
    assert_eq!(
        windows(&s, "2026-03-07T00:00:00Z", 3),
        [
            pair("2026-03-07T07:30:00Z", "2026-03-07T08:30:00Z"),
            pair("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"),
            pair("2026-03-09T06:30:00Z", "2026-03-09T07:30:00Z"),
        ]
    );
    assert_eq!(open_at(&s, "2026-03-08T06:59:59Z"), None, "01:59:59 EST");
    assert_eq!(open_at(&s, "2026-03-08T07:00:00Z"), Some(pair("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z")));
    assert_eq!(open_at(&s, "2026-03-08T07:59:00Z"), Some(pair("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z")));
    assert_eq!(open_at(&s, "2026-03-08T08:00:00Z"), None);
    assert_eq!(s.local(at("2026-03-08T07:00:00Z")), "2026-03-08T03:00:00-04:00");
}

/// New York falls back on 2026-11-01: 01:00-02:00 happens twice (EDT, then EST). A
/// fixed 01:30 opens once, on the first pass; the second 01:30 opens nothing.
#[test]
fn a_window_in_the_repeated_hour_opens_once() {
    let s = schedule("30 1 * * *", "America/New_York", 1800);
    assert_eq!(
        windows(&s, "2026-10-31T12:00:00Z", 2),
        [pair("2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z"), pair("2026-11-02T06:30:00Z", "2026-11-02T07:00:00Z")]
    );
    assert_eq!(open_at(&s, "2026-11-01T05:45:00Z"), Some(pair("2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z")));
    assert_eq!(open_at(&s, "2026-11-01T06:45:00Z"), None, "01:45 EST, the second pass");
    assert_eq!(s.local(at("2026-11-01T05:30:00Z")), "2026-11-01T01:30:00-04:00");
}

/// A duration is elapsed time: a 6 h window from midnight on the spring-forward day
/// closes at 07:00 EDT on the wall clock, 6 real hours later.
#[test]
fn a_duration_is_elapsed_time_across_a_change() {
    let s = schedule("0 0 * * *", "America/New_York", 6 * 3600);
    let w = s.window_at(at("2026-03-08T10:59:00Z")).unwrap();
    assert_eq!((utc(w.opens), utc(w.closes)), pair("2026-03-08T05:00:00Z", "2026-03-08T11:00:00Z"));
    assert_eq!(s.local(w.closes), "2026-03-08T07:00:00-04:00");
}

/// Windows longer than the pattern's period overlap: the latest opening counts, so the
/// rule stays covered without a gap.
#[test]
fn overlapping_openings_of_one_schedule_chain() {
    let s = schedule("0 * * * *", "UTC", 90 * 60);
    assert_eq!(open_at(&s, "2026-01-01T01:20:00Z"), Some(pair("2026-01-01T01:00:00Z", "2026-01-01T02:30:00Z")));
}

/// Patterns and zones that cannot be used are refused, each with the value named.
#[test]
fn bad_patterns_and_zones_are_refused() {
    for bad in ["0 8 * *", "0 0 8 * * *", "61 * * * *", "0 8 * * 1-5 2026", "often"] {
        let e = parse_cron(bad).unwrap_err();
        assert!(matches!(e, ScheduleError::Cron(..)), "{bad}: {e:?}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    let e = parse_cron("0 0 30 2 *").unwrap_err();
    assert!(matches!(e, ScheduleError::NeverMatches(_)), "{e:?}");
    assert!(parse_cron("@daily").is_ok() && parse_cron("*/15 9-17 * JAN-MAR mon-fri").is_ok());
    let e = time_zone("Asia/Sooul").unwrap_err();
    assert!(e.to_string().contains("\"Asia/Sooul\""), "{e}");
    assert!(time_zone("UTC").is_ok() && time_zone("Europe/Paris").is_ok());
}

/// What overlapping windows impose: any pause pauses, the largest min, the smallest max.
#[test]
fn overlapping_schedules_combine() {
    let mut a = min(schedule("0 8 * * *", "UTC", 3600), 2);
    a.max = Some(8);
    let mut b = schedule("30 8 * * *", "UTC", 3600);
    b.max = Some(4);
    let c = min(schedule("45 8 * * *", "UTC", 600), 5);
    let mut night = schedule("0 22 * * *", "UTC", 3600);
    night.paused = true;
    let all = [a, b, c, night];
    let o = |t: &str| in_force(&all, at(t));
    assert_eq!(o("2026-01-01T07:00:00Z"), None);
    let first = o("2026-01-01T08:10:00Z").unwrap();
    assert_eq!((first.min, first.max, first.paused), (Some(2), Some(8), false));
    assert_eq!(first.open_schedules().collect::<Vec<_>>(), [1]);
    let two = o("2026-01-01T08:40:00Z").unwrap();
    assert_eq!((two.min, two.max, two.open), (Some(2), Some(4), 0b11));
    assert_eq!(utc(two.until), "2026-01-01T09:30:00Z", "the last to close");
    let three = o("2026-01-01T08:50:00Z").unwrap();
    assert_eq!((three.min, three.max), (Some(5), Some(4)), "the engine lifts max to min");
    assert!(o("2026-01-01T22:30:00Z").unwrap().paused);
}

// === the engine with schedules ===

fn policy(schedules: Vec<Schedule>) -> Policy {
    Policy {
        min: 0,
        max: 10,
        idle: None,
        cooldown: Duration::from_secs(60),
        initial_cooldown: Duration::ZERO,
        fallback: None,
        behavior: None,
        legacy_downscale_window: Duration::ZERO,
        tolerances: Default::default(),
        activation_polls: 1,
        triggers: vec![TriggerPolicy {
            name: None,
            queue_length: 5,
            activation_queue_length: 0,
            scale_on_in_flight: true,
            scale_on_delayed: false,
            metric_type: crate::engine::MetricType::AverageValue,
        }],
        schedules: schedules.into(),
        modifiers: None,
    }
}

/// A rule on a target whose writes all succeed.
struct Sim {
    policy: Policy,
    state: State,
    replicas: u32,
}

impl Sim {
    fn new(policy: Policy, replicas: u32) -> Sim {
        Sim { policy, state: State::new(Time(0)), replicas }
    }

    fn poll(&mut self, now: Time, backlog: Option<u64>) -> crate::engine::Decision {
        let queues = vec![backlog.map(|visible| Counts { visible, ..Counts::default() })];
        let obs = Observation {
            replicas: self.replicas,
            status_replicas: self.replicas,
            ready_replicas: self.replicas,
            pause: Pause::No,
            overrides: Default::default(),
            queues,
        };
        let (next, d) = decide(&self.policy, &self.state, &obs, now);
        self.state = next;
        if let Some(to) = d.write {
            self.state.record_scale(&self.policy, &d, now);
            self.replicas = to;
        }
        d
    }
}

/// Office hours with a floor of 3: an idle target goes to 3 when the window opens and
/// stays there on an empty queue (reason `scheduled`); when it closes the cooldown
/// takes it back to zero, as the rule's own min of 0 says.
#[test]
fn a_window_raises_an_idle_target_to_its_min_and_lets_go_after() {
    let mut sim = Sim::new(policy(vec![min(schedule("0 8 * * 1-5", "Asia/Seoul", 10 * 3600), 3)]), 0);
    let d = sim.poll(at("2026-12-06T22:59:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason, d.schedule), (0, Reason::Unchanged, None));
    let d = sim.poll(at("2026-12-06T23:00:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason), (3, Reason::Scheduled));
    let o = d.schedule.unwrap();
    assert_eq!((o.min, utc(o.until)), (Some(3), "2026-12-07T09:00:00Z".to_owned()));
    let d = sim.poll(at("2026-12-07T04:00:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason), (3, Reason::Scheduled), "held at the scheduled floor");
    let d = sim.poll(at("2026-12-07T04:01:00Z"), Some(60));
    assert_eq!((d.replicas(), d.reason), (6, Reason::RateLimited), "the queue still scales it out");
    let d = sim.poll(at("2026-12-07T09:00:00Z"), Some(0));
    assert_eq!((d.schedule, d.reason), (None, Reason::ScaledToZero), "closed: min 0 and the cooldown has run");
}

/// A window's floor does not wait for the queues: it holds on a failed poll and skips
/// the debounce.
#[test]
fn a_scheduled_floor_holds_on_failed_polls_and_skips_the_debounce() {
    let mut p = policy(vec![min(schedule("0 8 * * *", "UTC", 3600), 2)]);
    p.activation_polls = 3;
    let d = Sim::new(p.clone(), 0).poll(at("2026-01-01T08:00:00Z"), None);
    assert_eq!((d.replicas(), d.reason), (2, Reason::Scheduled));
    let d = Sim::new(p, 0).poll(at("2026-01-01T08:00:00Z"), Some(50));
    assert_eq!((d.replicas(), d.reason), (2, Reason::Activated));
}

/// A window's max scales a busy target in at once and caps it; a paused window holds it
/// whatever the queue says.
#[test]
fn a_window_caps_and_a_window_pauses() {
    let mut cap = schedule("0 0 * * *", "UTC", 3600);
    cap.max = Some(2);
    let mut sim = Sim::new(policy(vec![cap]), 6);
    let d = sim.poll(at("2026-01-01T00:00:00Z"), Some(100));
    assert_eq!((d.replicas(), d.reason), (2, Reason::Scheduled));
    let d = sim.poll(at("2026-01-01T00:01:00Z"), Some(100));
    assert_eq!((d.replicas(), d.reason), (2, Reason::Scheduled));
    let d = sim.poll(at("2026-01-01T01:00:00Z"), Some(100));
    assert_eq!((d.replicas(), d.reason), (4, Reason::RateLimited), "closed: the queue takes over");

    let mut night = schedule("0 22 * * *", "UTC", 3600);
    night.paused = true;
    let mut sim = Sim::new(policy(vec![night]), 1);
    let d = sim.poll(at("2026-01-01T22:30:00Z"), Some(500));
    assert_eq!((d.replicas(), d.reason, d.write), (1, Reason::Scheduled, None));
    let d = sim.poll(at("2026-01-01T23:00:00Z"), Some(500));
    assert_eq!(d.replicas(), 4);
}

/// An idle count gives way to a scheduled floor: the target rests at the window's min,
/// not at idle.
#[test]
fn a_scheduled_min_overrides_the_idle_count() {
    let mut p = policy(vec![min(schedule("0 8 * * *", "UTC", 3600), 3)]);
    p.min = 1;
    p.idle = Some(0);
    let mut sim = Sim::new(p, 0);
    let d = sim.poll(at("2026-01-01T08:00:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason), (3, Reason::Scheduled));
    let d = sim.poll(at("2026-01-01T08:30:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason), (3, Reason::Scheduled));
    let d = sim.poll(at("2026-01-01T09:00:00Z"), Some(0));
    assert_eq!((d.replicas(), d.reason), (0, Reason::ScaledToZero), "closed: idle (0) again after the cooldown");
}

/// 2024-01-01T00:00:00Z, a Monday: the start of the property tests' clock.
const ORIGIN: i64 = 1_704_067_200_000;

proptest! {
    /// A schedule's min is never undercut while its window is open (and nothing pauses
    /// the rule): whatever the rule, the backlog, failed polls, the replicas at start,
    /// and another window's max.
    #[test]
    fn a_schedules_min_is_never_undercut_while_in_effect(
        rule_min in 0u32..4,
        span in 1u32..20,
        idle in any::<bool>(),
        activation_polls in 1u32..4,
        behavior in any::<bool>(),
        every in 2u32..30,
        duration_min in 1u64..45,
        floor in 0u32..25,
        cap in prop::option::of((1u32..25, 1u32..20, 1u64..30)),
        start in 0u32..30,
        polls in prop::collection::vec((5i64..90, prop::option::weighted(0.8, 0u64..400)), 1..80),
    ) {
        let max = rule_min + span;
        let floor = floor.min(max);
        let mut s = vec![min(schedule(&format!("*/{every} * * * *"), "UTC", duration_min * 60), floor)];
        if let Some((cap, every, minutes)) = cap {
            let mut c = schedule(&format!("*/{every} * * * *"), "UTC", minutes * 60);
            c.max = Some(cap.max(rule_min));
            s.push(c);
        }
        let mut p = policy(s);
        (p.min, p.max, p.activation_polls) = (rule_min, max, activation_polls);
        if idle && rule_min > 0 {
            p.idle = Some(rule_min - 1);
        }
        if behavior {
            p.behavior = Some(Box::new(crate::engine::hpa::Behavior {
                scale_up: crate::engine::hpa::ScalingRules::default_scale_up(),
                scale_down: crate::engine::hpa::ScalingRules::default_scale_down(300_000),
            }));
        }
        let floor_schedule = p.schedules[0].clone();
        let mut sim = Sim::new(p, start.min(max));
        let mut now = Time(ORIGIN);
        for (step, backlog) in polls {
            now = Time(now.0 + step * 1000);
            let d = sim.poll(now, backlog);
            if floor_schedule.window_at(now).is_some() {
                prop_assert!(d.replicas() >= floor, "at {}: {} < {floor} ({:?})", utc(now), d.replicas(), d);
            }
        }
    }
}
