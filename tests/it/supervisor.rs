//! The supervisor and its workers with in-memory fakes on tokio's paused clock: reload
//! semantics, shutdown and drain, dry run, failures. Fast and deterministic; the same
//! behaviours against real protocols are in `tests/it/daemon.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::fakes::{FakeQueues, FakeTargets};
use sqscale::config::{self, Config, ConfigErrors};
use sqscale::signals::Control;
use sqscale::source::Shared;
use sqscale::supervisor::{self, Aborted, ReloadOutcome, Supervisor};
use sqscale::worker::{Clock, Deps};
use tokio::sync::mpsc;
use tokio::time::sleep;

/// A rule like the demo's (P=10, C=30, max 5); `extra` adds or overrides keys.
fn rule(name: &str, queue: &str, extra: &str) -> String {
    let max = if extra.contains("max_replica_count") { "" } else { "max_replica_count = 5" };
    format!(
        "[[rule]]\nname = \"{name}\"\ntarget = {{ name = \"{name}\" }}\npolling_interval = 10\ncooldown_period = 30\n{max}\n{extra}\n[[rule.trigger]]\nqueue_url = \"{queue}\"\n"
    )
}

fn config(rules: &[String]) -> Config {
    config::from_str(&format!("[aws]\nregion = \"us-east-1\"\n{}", rules.join("\n"))).unwrap()
}

struct World {
    queues: FakeQueues,
    targets: FakeTargets,
    /// One clock for every daemon of a test: a restarted daemon must read the same
    /// (virtual) Unix time as the one before it.
    clock: Clock,
}

impl World {
    fn new() -> World {
        World { queues: FakeQueues::default(), targets: FakeTargets::default(), clock: Clock::tokio() }
    }

    fn deps(&self, dry_run: bool) -> Deps<FakeQueues, FakeTargets> {
        Deps {
            queues: Arc::new(Shared::new(self.queues.clone())),
            targets: Arc::new(self.targets.clone()),
            clock: self.clock,
            dry_run,
            call_timeout: Duration::from_secs(5),
            observer: Arc::new(sqscale::status::Observer::new()),
        }
    }
}

/// Runs the daemon on one rule, `demo` reading queue `q`, draining within `grace` on
/// shutdown; control messages go through the sender.
fn run_demo(w: &World, grace: Duration) -> (mpsc::Sender<Control>, tokio::task::JoinHandle<Result<(), Aborted>>) {
    let (tx, rx) = mpsc::channel(4);
    let daemon =
        tokio::spawn(supervisor::run(config(&[rule("demo", "q", "")]), w.deps(false), rx, || unreachable!(), grace));
    (tx, daemon)
}

/// Sleeps to just after the poll at `t` seconds (polls run at 0, 10, 20, ... from start).
async fn after_poll(start: tokio::time::Instant, t: u64) {
    tokio::time::sleep_until(start + Duration::from_secs(t) + Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn the_story_then_a_reload_raising_max_gives_six() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    after_poll(start, 30).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4, 5]);

    let outcome = sup.reload(Ok(config(&[rule("demo", "q", "max_replica_count = 10")])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.replicas("demo"), 6, "the changed rule polls at once with max 10");

    w.queues.set("q", Some(0));
    after_poll(start, 60).await;
    assert_eq!(w.targets.replicas("demo"), 6, "cooling down");
    after_poll(start, 70).await;
    assert_eq!(w.targets.replicas("demo"), 0, "30 s after the last active poll (t=30.1)");
}

/// Issue 14: editing a rule updates KEDA's HPA in place, so a reload that changes
/// `max_replica_count` and `cooldown_period` keeps the engine state: the 300 s window
/// still ends 300 s after the last high recommendation (t=30), not 300 s after the
/// reload (a re-seed at t=100 would hold 10 until t=410); the new cooldown applies.
#[tokio::test(start_paused = true)]
async fn a_reload_editing_max_and_cooldown_keeps_the_scale_down_window() {
    let w = World::new();
    w.queues.set("q", Some(50));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("demo", "q", "max_replica_count = 10")]), w.deps(false));
    after_poll(start, 30).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4, 8, 10]);
    // From now on the queue asks for 2; the legacy 300 s window holds 10.
    w.queues.set("q", Some(10));

    after_poll(start, 100).await;
    let edited = rule("demo", "q", "max_replica_count = 12").replace("cooldown_period = 30", "cooldown_period = 60");
    let outcome = sup.reload(Ok(config(&[edited])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 });
    assert_eq!(sup.rule("demo").unwrap().policy.max, 12);
    after_poll(start, 325).await; // polls at 100.1, 110.1, ..., 320.1
    assert_eq!(w.targets.replicas("demo"), 10, "inside the window of the polls at 10..30");
    after_poll(start, 335).await;
    assert_eq!(w.targets.replicas("demo"), 2, "the window of t=30 ended at the poll at 330.1: no re-seed");

    // The edited cooldown applies: 60 s after the last active poll (330.1).
    w.queues.set("q", Some(0));
    after_poll(start, 385).await;
    assert_eq!(w.targets.replicas("demo"), 2, "cooling down for 60 s, not 30");
    after_poll(start, 395).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4, 8, 10, 2, 0]);
}

/// A reload while the old worker's patch is in flight: the new worker waits for that
/// poll to finish and carries on from its state, never polling alongside it (which
/// would read the old replicas and activate a second time).
#[tokio::test(start_paused = true)]
async fn a_reload_mid_poll_hands_over_once_the_poll_is_done() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    *w.targets.scale_delay.lock().unwrap() = Duration::from_secs(3);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    sleep(Duration::from_secs(1)).await; // the patch to 1 lands at 3
    sup.reload(Ok(config(&[rule("demo", "q", "max_replica_count = 10")])));
    tokio::time::sleep_until(start + Duration::from_millis(5900)).await;
    assert_eq!(w.targets.get("demo").writes, [1], "one activation; the new worker's patch lands at 6");
    tokio::time::sleep_until(start + Duration::from_millis(6100)).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4]);
}

/// A poll is done when it has read, decided and scaled: storing last-active, which
/// waits for the state PATCH it joins (up to a second of write spacing), comes after the
/// poll is reported, so a busy rule's first poll (and `/readyz`) does not wait for it and
/// the poll's duration does not count it. The store still lands, and the next poll comes
/// on time.
#[tokio::test(start_paused = true)]
async fn a_busy_rule_is_reported_polled_before_its_last_active_is_stored() {
    let w = World::new();
    w.queues.set("q", Some(10));
    w.targets.add("demo", 2);
    *w.targets.state_delay.lock().unwrap() = Duration::from_secs(3);
    let deps = w.deps(false);
    let observer = deps.observer.clone();
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("demo", "q", "")]), deps);
    sleep(Duration::from_millis(100)).await;
    let status = observer.statuses().remove(0);
    assert_eq!((status.polls, status.active), (1, true), "{status:?}");
    assert!(observer.first_round().is_ok(), "ready before the store is answered");
    assert_eq!(w.targets.get("demo").last_active, None, "the store is still in flight");
    assert!(observer.encode_metrics().contains("sqscale_poll_duration_seconds_bucket{le=\"0.005\"} 1"));
    after_poll(start, 3).await;
    assert!(w.targets.get("demo").last_active.is_some(), "the store lands");
    after_poll(start, 10).await;
    assert_eq!(observer.statuses()[0].polls, 2, "the next poll on time");
    assert_eq!(w.targets.get("demo").writes, Vec::<u32>::new(), "2 replicas for 10 messages: nothing to scale");
}

/// The state belongs to the workload: a reload that points a rule at another target
/// starts it afresh, as a new rule. Target b has never been active and the queue is
/// empty, so (initial cooldown 0) it goes to zero at the first poll; the last-active of
/// target a, 5 s old, would have held it for the 30 s cooldown.
#[tokio::test(start_paused = true)]
async fn a_reload_moving_the_rule_to_another_target_starts_fresh() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("a", 0);
    w.targets.add("b", 3);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("a", "q", "")]), w.deps(false));
    after_poll(start, 20).await;
    assert_eq!(w.targets.replicas("a"), 5);
    w.queues.set("q", Some(0));
    // Mid-interval, so the new worker reads the queue afresh (not the round's shared read).
    tokio::time::sleep_until(start + Duration::from_secs(25)).await;
    let moved = rule("a", "q", "").replace("target = { name = \"a\" }", "target = { name = \"b\" }");
    let outcome = sup.reload(Ok(config(&[moved])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.get("b").writes, [0]);
    assert_eq!(w.targets.replicas("a"), 5, "a is left as it was");
}

/// `rule.paused` deletes the HPA as the annotations do: while paused someone scales the
/// target to 2 by hand; once unpaused, a backlog that asks for 2 keeps it at 2. The old
/// history (10 in the last 300 s) would pull it back up, 2 -> 4 -> 8 -> 10. Also when
/// the rule is paused and unpaused by two reloads before its paused worker ever polled.
#[tokio::test(start_paused = true)]
async fn unpausing_a_rule_by_reload_starts_a_fresh_hpa() {
    for paused_polls in [true, false] {
        let w = World::new();
        w.queues.set("q", Some(50));
        w.targets.add("demo", 0);
        let start = tokio::time::Instant::now();
        let running = || config(&[rule("demo", "q", "max_replica_count = 10")]);
        let paused = || config(&[rule("demo", "q", "max_replica_count = 10\npaused = true")]);
        let mut sup = Supervisor::start(running(), w.deps(false));
        after_poll(start, 30).await;
        assert_eq!(w.targets.get("demo").writes, [1, 4, 8, 10]);
        w.queues.set("q", Some(10));

        // Mid-interval, so the restarted workers read the queue afresh.
        tokio::time::sleep_until(start + Duration::from_secs(35)).await;
        sup.reload(Ok(paused()));
        w.targets.with("demo", |o| o.replicas = 2);
        if paused_polls {
            after_poll(start, 45).await; // the paused worker polled at 35 and 45
        }
        assert_eq!(
            sup.reload(Ok(running())),
            ReloadOutcome::Applied { added: 0, removed: 0, changed: 1, unchanged: 0 }
        );
        after_poll(start, 120).await;
        assert_eq!(w.targets.get("demo").writes, [1, 4, 8, 10], "paused polls: {paused_polls}");
        assert_eq!(w.targets.replicas("demo"), 2, "paused polls: {paused_polls}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_reload_keeps_the_old_rules_running() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    after_poll(start, 0).await;
    let broken = config::from_str("[[rule]]\nname = \"demo\"\nmax_replica_count = -1\n").unwrap_err();
    let outcome = sup.reload(Err(broken));
    assert!(matches!(outcome, ReloadOutcome::Rejected(ref p) if p.len() >= 2), "{outcome:?}");
    after_poll(start, 20).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4, 5], "still scaling with the old rules");
    assert_eq!(sup.rule_count(), 1);
    assert_eq!(sup.rule("demo").unwrap().policy.max, 5);
}

#[tokio::test(start_paused = true)]
async fn unchanged_rules_keep_their_state_and_schedule_across_reloads() {
    let w = World::new();
    w.queues.set("qa", None);
    w.queues.set("qb", Some(0));
    w.targets.add("a", 3);
    w.targets.add("b", 0);
    let fallback = "fallback = { failure_threshold = 2, replicas = 4 }";
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("a", "qa", fallback)]), w.deps(false));
    after_poll(start, 10).await;
    assert_eq!(w.queues.reads_of("qa"), 2);

    // Two failures so far; the reload must not reset the count.
    let outcome = sup.reload(Ok(config(&[rule("a", "qa", fallback), rule("b", "qb", "")])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 1, removed: 0, changed: 0, unchanged: 1 });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.queues.reads_of("qa"), 2, "an unchanged rule keeps its schedule: no extra poll");
    assert_eq!(w.queues.reads_of("qb"), 1, "an added rule polls at once");

    after_poll(start, 20).await;
    assert_eq!(w.targets.replicas("a"), 4, "the third failure crosses the threshold: fallback");
}

#[tokio::test(start_paused = true)]
async fn removed_rules_stop_and_leave_their_target_alone() {
    let w = World::new();
    w.queues.set("qa", Some(10));
    w.queues.set("qb", Some(10));
    w.targets.add("a", 0);
    w.targets.add("b", 0);
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("a", "qa", ""), rule("b", "qb", "")]), w.deps(false));
    after_poll(start, 10).await;
    let outcome = sup.reload(Ok(config(&[rule("a", "qa", "")])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 1, changed: 0, unchanged: 1 });
    let reads = w.queues.reads_of("qb");
    let replicas = w.targets.replicas("b");
    after_poll(start, 60).await;
    assert_eq!(w.queues.reads_of("qb"), reads);
    assert_eq!(w.targets.replicas("b"), replicas);
}

#[tokio::test(start_paused = true)]
async fn a_reload_names_what_waits_for_a_restart_and_which_targets_remain() {
    let w = World::new();
    w.queues.set("qa", Some(0));
    w.queues.set("qb", Some(0));
    w.targets.add("a", 0);
    w.targets.add("b", 0);
    let deps = w.deps(false);
    let observer = deps.observer.clone();
    let file = |head: &str, rules: &[String]| {
        config::from_str(&format!("[aws]\nregion = \"us-east-1\"\n{head}\n{}", rules.join("\n"))).unwrap()
    };
    let mut sup = Supervisor::start(file("", &[rule("a", "qa", ""), rule("b", "qb", "")]), deps);

    // Settings that only a restart applies change, and rule b goes.
    let head = "[kubernetes]\ncontext = \"other\"\n[server]\nlisten = \"127.0.0.1:9999\"\n[leader_election]\nlease_name = \"renamed\"\n";
    let outcome = sup.reload(Ok(file(head, &[rule("a", "qa", "")])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 1, changed: 0, unchanged: 1 });
    assert_eq!(observer.restart_required(), ["kubernetes.context", "server.listen", "leader_election.lease_name"]);
    let metrics = observer.encode_metrics();
    assert!(metrics.contains("sqscale_config_reloads_total{result=\"partial\"} 1"), "{metrics}");
    assert!(!metrics.contains("result=\"success\""), "{metrics}");
    assert_eq!(*w.targets.retained.lock().unwrap(), [vec!["/Deployment/default/a".to_owned()]]);

    // Back to the settings the daemon started with: nothing waits any more.
    sup.reload(Ok(file("", &[rule("a", "qa", "")])));
    assert!(observer.restart_required().is_empty());
    assert!(observer.encode_metrics().contains("sqscale_config_reloads_total{result=\"success\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_queue_never_scales_in() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    after_poll(start, 20).await;
    w.queues.set("q", None);
    after_poll(start, 600).await;
    assert_eq!(w.targets.get("demo").writes, [1, 4, 5], "no write at all while SQS fails");
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_last_active_from_the_annotation() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let cfg = config(&[rule("demo", "q", "")]);
    let (tx, rx) = mpsc::channel(4);
    let daemon =
        tokio::spawn(supervisor::run(cfg.clone(), w.deps(false), rx, || unreachable!(), Duration::from_secs(5)));
    after_poll(start, 20).await;
    w.queues.set("q", Some(0));
    tx.send(Control::Shutdown).await.unwrap();
    assert_eq!(daemon.await.unwrap(), Ok(()));
    let last_active = w.targets.get("demo").last_active.expect("annotated");

    // A new daemon 5 s later: its first poll sees an empty queue, but the cooldown counts
    // from the annotation (t=20), not from "never active".
    sleep(Duration::from_secs(5)).await;
    let restart = tokio::time::Instant::now();
    let _sup = Supervisor::start(cfg, w.deps(false));
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.replicas("demo"), 5, "no early scale to zero");
    assert_eq!(w.targets.get("demo").last_active, Some(last_active));
    tokio::time::sleep_until(restart + Duration::from_secs(30) + Duration::from_millis(100)).await;
    assert_eq!(w.targets.replicas("demo"), 0, "zero once 30 s have passed since t=20");
}

#[tokio::test(start_paused = true)]
async fn dry_run_decides_but_never_writes() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(true));
    after_poll(start, 40).await;
    let o = w.targets.get("demo");
    assert!(o.writes.is_empty() && o.last_active.is_none(), "{o:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_patch_in_flight_finish() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    *w.targets.scale_delay.lock().unwrap() = Duration::from_secs(3);
    let (tx, daemon) = run_demo(&w, Duration::from_secs(10));
    sleep(Duration::from_secs(1)).await;
    tx.send(Control::Shutdown).await.unwrap();
    assert_eq!(daemon.await.unwrap(), Ok(()));
    assert_eq!(w.targets.get("demo").writes, [1], "the patch in flight completed");
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_or_the_deadline_aborts_the_drain() {
    for (second_signal, expect) in [(true, Aborted::Signal), (false, Aborted::Deadline)] {
        let w = World::new();
        w.queues.set("q", Some(30));
        w.targets.add("demo", 0);
        // The patch would take a minute; the worker gives up on it after the call
        // timeout (5 s), which is past the grace (3 s).
        *w.targets.scale_delay.lock().unwrap() = Duration::from_secs(60);
        let (tx, daemon) = run_demo(&w, Duration::from_secs(3));
        sleep(Duration::from_secs(1)).await;
        tx.send(Control::Shutdown).await.unwrap();
        if second_signal {
            sleep(Duration::from_secs(1)).await;
            tx.send(Control::Shutdown).await.unwrap();
        }
        assert_eq!(daemon.await.unwrap(), Err(expect));
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_reloads_reads_the_file_once() {
    let w = World::new();
    w.queues.set("q", Some(0));
    w.targets.add("demo", 0);
    let cfg = config(&[rule("demo", "q", "")]);
    let loads = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel(128);
    for _ in 0..100 {
        tx.send(Control::Reload).await.unwrap();
    }
    let counted = loads.clone();
    let again = cfg.clone();
    let load = move || -> Result<Config, ConfigErrors> {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(again.clone())
    };
    let daemon = tokio::spawn(supervisor::run(cfg, w.deps(false), rx, load, Duration::from_secs(5)));
    // The load runs on a thread of its own, which the paused clock does not wait for:
    // without this, the clock jumps the second below at once and the shutdown may come
    // before the thread has even started (0 loads, the reload abandoned).
    for _ in 0..10_000 {
        if loads.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    sleep(Duration::from_secs(1)).await;
    tx.send(Control::Shutdown).await.unwrap();
    assert_eq!(daemon.await.unwrap(), Ok(()));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn two_rules_on_one_queue_share_one_read_per_round() {
    let w = World::new();
    w.queues.set("shared", Some(10));
    w.targets.add("a", 0);
    w.targets.add("b", 0);
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("a", "shared", ""), rule("b", "shared", "")]), w.deps(false));
    after_poll(start, 40).await;
    assert_eq!(w.queues.reads_of("shared"), 5, "five rounds, one read each");
    assert_eq!((w.targets.replicas("a"), w.targets.replicas("b")), (2, 2));
}

#[test]
fn first_polls_spread_over_the_interval_and_rules_on_one_queue_stay_in_step() {
    use sqscale::supervisor::start_offset;
    let many: Vec<String> = (0..2000).map(|i| rule(&format!("r{i}"), &format!("q{i}"), "")).collect();
    let cfg = config(&many);
    let offsets: Vec<Duration> = cfg.rules.iter().map(|r| start_offset(r, 10_000)).collect();
    assert!(offsets.iter().all(|o| *o < Duration::from_secs(10)));
    let seconds: std::collections::BTreeSet<u64> = offsets.iter().map(|o| o.as_secs()).collect();
    assert_eq!(seconds.len(), 10, "spread over the whole 10 s interval");
    // On the grid: the rules of one step share a timer (one wake-up for all of them).
    let grid = sqscale::supervisor::START_GRID.as_millis();
    assert!(offsets.iter().all(|o| o.as_millis() % grid == 0), "{offsets:?}");
    let steps: std::collections::BTreeSet<Duration> = offsets.iter().copied().collect();
    assert!(steps.len() > 900 && steps.len() <= 1250, "2,000 rules over 1,250 steps: {}", steps.len());
    // A few rules start at once; two rules on one queue share an offset.
    let small = config(&[rule("a", "shared", ""), rule("b", "shared", ""), rule("c", "other", "")]);
    let o: Vec<Duration> = small.rules.iter().map(|r| start_offset(r, 3)).collect();
    assert!(o.iter().all(|d| *d < Duration::from_millis(3)), "{o:?}");
    assert_eq!(o[0], o[1]);
    let big = config(&[rule("a", "shared", ""), rule("b", "shared", "")]);
    assert_eq!(start_offset(&big.rules[0], 10_000), start_offset(&big.rules[1], 10_000));
}

#[tokio::test(start_paused = true)]
async fn a_failure_streak_is_one_event_not_one_per_poll() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    after_poll(start, 20).await;
    w.queues.set("q", None);
    after_poll(start, 250).await; // 23 failed polls
    let events = w.targets.events.lock().unwrap().clone();
    let reasons: Vec<&str> = events.iter().map(|(_, e)| e.reason).collect();
    assert_eq!(reasons.iter().filter(|r| **r == "FailedGetQueueAttributes").count(), 1, "{reasons:?}");
    assert_eq!(&reasons[..3], ["ScaleTargetActivated", "SuccessfulRescale", "SuccessfulRescale"]);
    let warning = &events.iter().find(|(_, e)| e.reason == "FailedGetQueueAttributes").unwrap().1;
    assert!(warning.warning && warning.note.contains("(1 failed polls in a row)"), "{warning:?}");
    after_poll(start, 330).await; // five minutes after the first report: one more
    let count = w.targets.events.lock().unwrap().iter().filter(|(_, e)| e.reason == "FailedGetQueueAttributes").count();
    assert_eq!(count, 2);
}

/// Issue 18: a closed control channel (the signal task gone) must not make the drain wait
/// forever: it ends once the patch in flight has finished.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_when_the_control_channel_closes() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    *w.targets.scale_delay.lock().unwrap() = Duration::from_secs(3);
    let (tx, daemon) = run_demo(&w, Duration::from_secs(10));
    sleep(Duration::from_secs(1)).await;
    drop(tx);
    let outcome = tokio::time::timeout(Duration::from_secs(60), daemon).await.expect("the drain ends");
    assert_eq!(outcome.unwrap(), Ok(()));
    assert_eq!(w.targets.get("demo").writes, [1], "the patch in flight completed");
}

/// Issue 18: an Event being published when shutdown starts is a write in flight too: the
/// drain waits for it.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_events_being_published() {
    let w = World::new();
    w.queues.set("q", Some(30));
    w.targets.add("demo", 0);
    *w.targets.publish_delay.lock().unwrap() = Duration::from_secs(3);
    let (tx, daemon) = run_demo(&w, Duration::from_secs(10));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(w.targets.get("demo").writes, [1]);
    assert!(w.targets.events.lock().unwrap().is_empty(), "the Event is still on its way");
    tx.send(Control::Shutdown).await.unwrap();
    assert_eq!(daemon.await.unwrap(), Ok(()));
    let reasons: Vec<&str> = w.targets.events.lock().unwrap().iter().map(|(_, e)| e.reason).collect();
    assert_eq!(reasons, ["ScaleTargetActivated"], "published before the daemon stopped");
}

/// Issue 12: a last-active time in the future (written by a host whose clock ran ahead)
/// is taken as now, so the cooldown runs from now instead of from that future time.
#[tokio::test(start_paused = true)]
async fn a_last_active_time_in_the_future_is_taken_as_now() {
    let w = World::new();
    w.queues.set("q", Some(0));
    w.targets.add("demo", 3);
    let hour_ahead = sqscale::engine::Time(w.clock.now().0 + 3_600_000);
    w.targets.with("demo", |o| o.last_active = Some(hour_ahead));
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(config(&[rule("demo", "q", "")]), w.deps(false));
    after_poll(start, 0).await;
    assert_eq!(w.targets.replicas("demo"), 3, "cooling down from the first poll");
    let written = w.targets.get("demo").last_active.unwrap();
    assert!(written < hour_ahead, "the clamped time is written back: {written:?}");
    after_poll(start, 30).await;
    assert_eq!(w.targets.replicas("demo"), 0, "30 s after the first poll, not an hour and 30 s");
}

/// Issue 25, item 5 (TV-35): a removed rule with `restore_to_original_replica_count`
/// puts its target back to the replicas it had when the rule first took it (3; the rule
/// took it to 5), and forgets that count. Before, a removed rule always left the target
/// as it was (`removed_rules_stop_and_leave_their_target_alone` is the `false` case).
#[tokio::test(start_paused = true)]
async fn a_removed_rule_that_restores_puts_its_target_back() {
    let w = World::new();
    w.queues.set("qa", Some(0));
    w.queues.set("qb", Some(50));
    w.targets.add("a", 0);
    w.targets.add("b", 3);
    let restore = "restore_to_original_replica_count = true";
    let start = tokio::time::Instant::now();
    let mut sup = Supervisor::start(config(&[rule("a", "qa", ""), rule("b", "qb", restore)]), w.deps(false));
    after_poll(start, 10).await;
    assert_eq!(w.targets.replicas("b"), 5);
    assert_eq!(w.targets.originals.lock().unwrap().get("b"), Some(&3), "recorded before the first write");
    let outcome = sup.reload(Ok(config(&[rule("a", "qa", "")])));
    assert_eq!(outcome, ReloadOutcome::Applied { added: 0, removed: 1, changed: 0, unchanged: 1 });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.replicas("b"), 3);
    assert_eq!(w.targets.get("b").writes, [5, 3]);
    assert!(w.targets.originals.lock().unwrap().is_empty(), "forgotten once restored");
    // A rule added again records the count of its own time.
    sup.reload(Ok(config(&[rule("a", "qa", ""), rule("b", "qb", restore)])));
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.originals.lock().unwrap().get("b"), Some(&3));
}

/// The original count is stored (the state ConfigMap, here the fake's), so a restart
/// does not lose it: the new daemon finds the target at 5 and still restores 3.
#[tokio::test(start_paused = true)]
async fn the_original_count_survives_a_restart() {
    let w = World::new();
    w.queues.set("qa", Some(0));
    w.queues.set("qb", Some(50));
    w.targets.add("a", 0);
    w.targets.add("b", 3);
    let both = config(&[rule("a", "qa", ""), rule("b", "qb", "restore_to_original_replica_count = true")]);
    let start = tokio::time::Instant::now();
    let (tx, rx) = mpsc::channel(4);
    let daemon =
        tokio::spawn(supervisor::run(both.clone(), w.deps(false), rx, || unreachable!(), Duration::from_secs(5)));
    after_poll(start, 10).await;
    tx.send(Control::Shutdown).await.unwrap();
    assert_eq!(daemon.await.unwrap(), Ok(()));
    assert_eq!(w.targets.replicas("b"), 5, "a shutdown restores nothing");

    let mut sup = Supervisor::start(both, w.deps(false));
    sleep(Duration::from_secs(15)).await;
    assert_eq!(w.targets.originals.lock().unwrap().get("b"), Some(&3), "kept, not replaced by 5");
    sup.reload(Ok(config(&[rule("a", "qa", "")])));
    sleep(Duration::from_millis(100)).await;
    assert_eq!(w.targets.replicas("b"), 3);
}

/// A dry run records nothing and restores nothing.
#[tokio::test(start_paused = true)]
async fn a_dry_run_neither_records_nor_restores() {
    let w = World::new();
    w.queues.set("qb", Some(50));
    w.targets.add("b", 3);
    w.targets.originals.lock().unwrap().insert("b".to_owned(), 1);
    let start = tokio::time::Instant::now();
    let mut sup =
        Supervisor::start(config(&[rule("b", "qb", "restore_to_original_replica_count = true")]), w.deps(true));
    after_poll(start, 10).await;
    sup.reload(Ok(config(&[rule("a", "qa", "")])));
    sleep(Duration::from_millis(100)).await;
    assert_eq!((w.targets.replicas("b"), w.targets.get("b").writes.len()), (3, 0));
    assert_eq!(w.targets.originals.lock().unwrap().get("b"), Some(&1));
}

/// Issue 25, items 2 and 3 through the worker: the rule's `paused_scale_in` holds a
/// target the empty queue would take to zero, and `force_activation` activates one at
/// zero whatever the queue says.
#[tokio::test(start_paused = true)]
async fn rule_keys_pause_scale_in_and_force_activation() {
    let w = World::new();
    w.queues.set("qa", Some(0));
    w.queues.set("qb", Some(0));
    w.targets.add("a", 3);
    w.targets.add("b", 0);
    let start = tokio::time::Instant::now();
    let _sup = Supervisor::start(
        config(&[rule("a", "qa", "paused_scale_in = true"), rule("b", "qb", "force_activation = true")]),
        w.deps(false),
    );
    after_poll(start, 60).await;
    assert_eq!((w.targets.replicas("a"), w.targets.get("a").writes.len()), (3, 0), "held: no step to zero");
    assert_eq!(w.targets.get("b").writes, [1], "activated from zero, and kept there");
}
