//! Schedules (`[[rule.schedule]]`, issue 27 item 2): `check` and `simulate` through the
//! binary, and live: the real daemon, aws-sdk-sqs against moto and the kube client
//! against the fake API server, polling every second.

use std::path::Path;

use crate::support::process::sqscale;
use std::time::Duration;

use crate::support::daemon::{Daemon, cluster, demo_rule, header, wait_until, write};
use crate::support::fake_kube::Kind;
use crate::support::sqs;

const NS: &str = "default";

/// Polls the daemon's one rule has made (0 until the rule is loaded).
fn polls(daemon: &Daemon) -> u64 {
    daemon.observer.statuses().first().map_or(0, |s| s.polls)
}

fn rule_file(dir: &Path, schedules: &str) -> String {
    let text = format!(
        "[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\npolling_interval = 60\ncooldown_period = 60\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/orders\"\n{schedules}"
    );
    write(dir, "sqscale.toml", &text).display().to_string()
}

/// `check` prints the schedule resolved and, as comments after the file, its next three
/// windows in Seoul time and UTC; a bad schedule exits 78 naming the rule and the
/// schedule's number, every problem at once.
#[test]
fn check_prints_the_next_windows_and_rejects_a_bad_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let good = rule_file(
        dir.path(),
        "[[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Seoul\"\nduration = \"10h\"\nmin_replica_count = 3\n",
    );
    let out = sqscale(&["check", "--config", &good]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Seoul\""), "{stdout}");
    assert!(stdout.contains("# rule \"orders\", schedule 1: \"0 8 * * 1-5\" in Asia/Seoul, open 10h"), "{stdout}");
    let next: Vec<_> = stdout.lines().filter(|l| l.starts_with("#   next ")).collect();
    assert_eq!(next.len(), 3, "{stdout}");
    for line in next {
        assert!(line.contains("T08:00:00+09:00 -> ") && line.contains("T18:00:00+09:00  (UTC "), "{line}");
        assert!(line.contains("T23:00:00Z -> ") && line.ends_with("T09:00:00Z)"), "{line}");
    }

    let bad = rule_file(
        dir.path(),
        "[[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Sooul\"\nduration = \"10h\"\nmin_replica_count = 3\n\
         [[rule.schedule]]\ncron = \"0 25 * * *\"\nduration = \"1h\"\npaused = true\n",
    );
    let out = sqscale(&["check", "--config", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains("rule \"orders\": schedule 1: timezone (\"Asia/Sooul\") is not an IANA"), "{stderr}");
    assert!(stderr.contains("rule \"orders\": schedule 2: cron (\"0 25 * * *\")"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// `simulate --start` puts the trace on the calendar: with the trace's 0 at 07:58 in
/// Seoul on a Monday, the window opens at the third poll (t=120) and raises the idle
/// target to 3 on an empty queue; without `--start` (1970, a Thursday at 09:00 in Seoul)
/// the window of that day is open from the first poll.
#[test]
fn simulate_opens_windows_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = rule_file(
        dir.path(),
        "[[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Seoul\"\nduration = \"10h\"\nmin_replica_count = 3\n",
    );
    let trace = write(dir.path(), "trace.csv", "time,queue,visible,in_flight,delayed\n0,orders,0,0,0\n");
    let trace = trace.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["simulate", "--config", &config, "--trace", &trace, "--until", "240"];
        args.extend_from_slice(extra);
        let out = sqscale(&args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let rows = run(&["--start", "2026-12-06T22:58:00Z"]);
    let rows: Vec<_> = rows.lines().skip(1).collect();
    assert_eq!(
        rows,
        [
            "0,orders,0,false,0,0,unchanged",
            "60,orders,0,false,0,0,unchanged",
            "120,orders,0,false,0,3,scheduled",
            "180,orders,0,false,0,3,scheduled",
            "240,orders,0,false,0,3,scheduled",
        ]
    );
    let rows = run(&[]);
    assert!(rows.lines().nth(1).unwrap().ends_with(",3,scheduled"), "{rows}");
    let out = sqscale(&["simulate", "--config", &config, "--trace", &trace, "--start", "yesterday"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A window open now (every minute, for two) with a min of 3 raises an idle target to
/// 3 on an empty queue, with reason `scheduled`; `/status` shows the window and
/// `sqscale status` marks the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_window_raises_an_idle_target_to_its_min() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("schedule-min").await;
    let window = "[[rule.schedule]]\ncron = \"* * * * *\"\nduration = \"2m\"\nmin_replica_count = 3\n";
    let config = write(
        dir.path(),
        "sqscale.toml",
        &format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, window)),
    );
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();

    assert!(wait_until(Duration::from_secs(10), || replicas() == 3).await, "at {}", replicas());
    assert!(wait_until(Duration::from_secs(5), || polls(&daemon) >= 3).await);
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [3], "straight to the floor, and held there");
    let status = daemon.observer.statuses()[0].clone();
    assert_eq!(status.last_reason.as_deref(), Some("scheduled"), "{status:?}");
    assert_eq!(status.backlog.values().copied().collect::<Vec<_>>(), [Some(0)]);
    let s = status.schedule.clone().expect("a window in force");
    assert_eq!((s.open, s.min_replica_count, s.max_replica_count, s.paused), (vec![1], Some(3), None, false));
    let table = sqscale::status::table(&[status]);
    assert!(table.lines().nth(1).unwrap().starts_with("demo [schedule 1]  "), "{table}");
    assert_eq!(daemon.stop().await, Ok(()));
}

/// A paused window holds the target despite a backlog that would scale it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_window_holds_the_target_despite_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 1).await;
    let queue = sqs::queue("schedule-paused").await;
    sqs::send(&queue, 50).await;
    let window = "[[rule.schedule]]\ncron = \"* * * * *\"\nduration = \"2m\"\npaused = true\n";
    let config = write(
        dir.path(),
        "sqscale.toml",
        &format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, window)),
    );
    let daemon = Daemon::start(&config, &kubeconfig).await;

    assert!(wait_until(Duration::from_secs(10), || polls(&daemon) >= 4).await);
    let status = daemon.observer.statuses()[0].clone();
    assert_eq!(status.last_reason.as_deref(), Some("scheduled"), "{status:?}");
    assert!(status.schedule.as_ref().is_some_and(|s| s.paused), "{status:?}");
    assert_eq!(kube.replicas(Kind::Deployment, NS, "demo"), Some(1));
    assert!(kube.scale_history(Kind::Deployment, NS, "demo").is_empty(), "nothing written");
    assert_eq!(daemon.stop().await, Ok(()));
}
