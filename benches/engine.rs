//! The decision engine alone: decisions per second on the demo rule, legacy and
//! behavior paths (`cargo bench --bench engine`).

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
        triggers: vec![TriggerPolicy {
            name: None,
            queue_length: 5,
            activation_queue_length: 0,
            scale_on_in_flight: true,
            scale_on_delayed: false,
            metric_type: Default::default(),
        }],
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
}

criterion_group!(benches, engine);
criterion_main!(benches);
