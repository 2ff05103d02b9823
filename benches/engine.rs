//! The decision engine alone: decisions per second on the demo rule, legacy and
//! behavior paths, and the legacy path with a schedule, whose window is found by a cron
//! search in a time zone at every decision; and one round of a 1,000-rule fleet, in one
//! `[[group]]` and in none, so the group's cost per poll shows next to the decisions'
//! (`cargo bench --bench engine`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sqscale::engine::hpa::{Behavior, ScalingRules, Tolerances};
use sqscale::engine::{Counts, Observation, Pause, Policy, State, Time, TriggerPolicy, decide};

fn policy(behavior: bool) -> Policy {
    Policy {
        min: 0,
        max: 100,
        idle: None,
        cooldown: Duration::from_secs(30),
        initial_cooldown: Duration::ZERO,
        fallback: None,
        behavior: behavior.then(|| {
            Box::new(Behavior {
                scale_up: ScalingRules::default_scale_up(),
                scale_down: ScalingRules::default_scale_down(300_000),
            })
        }),
        legacy_downscale_window: Duration::from_secs(300),
        tolerances: Tolerances::default(),
        activation_polls: 1,
        triggers: vec![TriggerPolicy {
            name: None,
            queue_length: 5,
            activation_queue_length: 0,
            scale_on_in_flight: true,
            scale_on_delayed: false,
            metric_type: Default::default(),
        }],
        schedules: Box::default(),
        modifiers: None,
    }
}

/// One rule polled every 10 s for an hour of a sawtooth backlog: 360 decisions.
fn hour(policy: &Policy) -> u32 {
    let mut state = State::new(Time(0));
    let mut replicas = 0;
    for i in 0..360i64 {
        let backlog = ((i % 60) * 7) as u64;
        let obs = Observation {
            replicas,
            status_replicas: replicas,
            ready_replicas: replicas,
            pause: Pause::No,
            overrides: Default::default(),
            queues: vec![Some(Counts { visible: backlog, in_flight: 3, delayed: 0 })],
        };
        let now = Time(i * 10_000);
        let (mut next, d) = decide(policy, &state, &obs, now);
        if let Some(to) = d.write {
            next.record_scale(policy, &d, now);
            replicas = to;
        }
        state = next;
    }
    replicas
}

fn engine(c: &mut Criterion) {
    for (name, behavior) in [("legacy", false), ("behavior", true)] {
        let p = policy(behavior);
        c.bench_function(&format!("decide x360 ({name} path)"), |b| b.iter(|| black_box(hour(black_box(&p)))));
    }
    // Weekdays 08:00 for 10 h in Seoul: the hour polled (from 1970-01-01T00:00:00Z, a
    // Thursday, 09:00 in Seoul) lies inside a window, so every decision searches back
    // to its opening.
    let mut p = policy(false);
    let pattern = "0 8 * * 1-5";
    p.schedules = Box::new([sqscale::engine::schedule::Schedule {
        pattern: pattern.to_owned(),
        cron: sqscale::engine::schedule::parse_cron(pattern).expect("a valid pattern"),
        timezone: "Asia/Seoul".to_owned(),
        tz: sqscale::engine::schedule::time_zone("Asia/Seoul").expect("a known zone"),
        duration: Duration::from_secs(10 * 3600),
        min: Some(3),
        max: None,
        paused: false,
    }]);
    c.bench_function("decide x360 (legacy path, a schedule)", |b| b.iter(|| black_box(hour(black_box(&p)))));
}

/// 1,000 rules, all in one group of `cap` when `grouped`.
fn fleet(grouped: bool, cap: u32) -> sqscale::config::Config {
    let mut toml = String::new();
    if grouped {
        toml.push_str(&format!("[[group]]\nname = \"g\"\nmax_replicas = {cap}\n"));
    }
    for i in 0..1000 {
        let group = if grouped { format!("group = \"g\"\npriority = {}\n", i % 3) } else { String::new() };
        toml.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\ntarget = {{ name = \"r{i}\" }}\nmax_replica_count = 50\n{group}\
             [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q{i}\"\n"
        ));
    }
    sqscale::config::from_str(&toml).expect("a valid fleet")
}

/// One round of the fleet: each rule decides on a backlog that asks it to grow (half
/// of them to 8, half to 40), and asks the ledger as the worker does.
fn round(config: &sqscale::config::Config, groups: &sqscale::group::Groups, states: &[State]) -> u32 {
    let mut total = 0;
    for (i, (rule, state)) in config.rules.iter().zip(states).enumerate() {
        let backlog = if i % 2 == 0 { 40 } else { 200 };
        let obs = Observation {
            replicas: 2,
            status_replicas: 2,
            ready_replicas: 2,
            pause: Pause::No,
            overrides: Default::default(),
            queues: vec![Some(Counts { visible: backlog, in_flight: 0, delayed: 0 })],
        };
        let (_, d) = decide(&rule.policy, state, &obs, Time(10_000));
        // As the worker decides: a rule in no group is not asked about.
        total += groups.limit(rule, d).replicas();
    }
    total
}

fn groups(c: &mut Criterion) {
    for grouped in [false, true] {
        // Room for every member's 2 and a quarter of what they ask beyond: every poll
        // that asks runs the allocation over all 1,000 members.
        let config = fleet(grouped, 2_000 + 5_000);
        let ledger = sqscale::group::Groups::default();
        ledger.configure(&config.groups, &config.rules);
        let states: Vec<State> = config.rules.iter().map(|_| State::new(Time(0))).collect();
        // Every member reports once, so the allocation runs from the first timed poll.
        round(&config, &ledger, &states);
        let name = if grouped { "1,000 rules in one group" } else { "1,000 rules, no group" };
        c.bench_function(&format!("one round of polls ({name})"), |b| {
            b.iter(|| black_box(round(black_box(&config), &ledger, &states)))
        });
    }
}

criterion_group!(benches, engine, groups);
criterion_main!(benches);
