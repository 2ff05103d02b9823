//! sqscale's own controls (issue 27) live: the real daemon, aws-sdk-sqs against moto and
//! the kube client against the fake API server. Polls run every second.

use std::time::Duration;

use crate::support::daemon::{Daemon, cluster, demo_rule, header, wait_until, write};
use crate::support::fake_kube::Kind;
use crate::support::sqs;

const NS: &str = "default";

/// Each poll's reason as the status reports it, sampled until `done` holds or `limit`
/// passes: one entry per poll (by the status's poll count).
async fn reasons_until(daemon: &Daemon, limit: Duration, mut done: impl FnMut() -> bool) -> Vec<String> {
    let mut seen: Vec<(u64, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // Checked before the sample: a poll's write lands before its report, so a `done`
        // read from the target is followed by one more sample that can hold that poll.
        let finished = done();
        if let Some(s) = daemon.observer.statuses().into_iter().next()
            && let Some(reason) = s.last_reason
            && seen.last().is_none_or(|(polls, _)| *polls != s.polls)
        {
            seen.push((s.polls, reason));
        }
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.into_iter().map(|(_, r)| r).collect()
}

/// `activation_polls = 3`: the backlog is there from the first poll, yet the target
/// leaves zero only on the third consecutive active poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_activates_on_the_third_active_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("debounce").await;
    sqs::send(&queue, 10).await;
    let rule = demo_rule("demo", &queue, "activation_polls = 3");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();

    // Until the activating poll has reported (its patch lands before its report).
    let activated = || {
        replicas() > 0
            && daemon.observer.statuses().first().and_then(|s| s.last_reason.clone()).as_deref() == Some("activated")
    };
    let reasons = reasons_until(&daemon, Duration::from_secs(15), activated).await;
    assert_eq!(reasons, ["activation_pending", "activation_pending", "activated"]);
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1]);
    assert_eq!(daemon.stop().await, Ok(()));
}

/// `fallback.behavior = "lastKnown"`: the queue disappears right after activation; the
/// failed polls decide on the last good reading (50 messages) and go on scaling out,
/// 1 -> 4 -> 8 -> 10, where `static` would have gone to its 2 replicas. Past `max_age`
/// the fallback's replicas take over and, being fewer, scale nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_known_keeps_scaling_out_on_the_last_good_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("last-known").await;
    sqs::send(&queue, 50).await;
    let extra = "max_replica_count = 10\n\
                 fallback = { failure_threshold = 0, replicas = 2, behavior = \"lastKnown\", max_age = 6 }";
    let rule = demo_rule("demo", &queue, extra);
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();

    assert!(wait_until(Duration::from_secs(10), || replicas() == 1).await, "at {}", replicas());
    sqs::client().await.delete_queue().queue_url(&queue).send().await.expect("delete the queue");
    assert!(wait_until(Duration::from_secs(15), || replicas() == 10).await, "at {}", replicas());
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 8, 10]);
    let status = daemon.observer.statuses()[0].clone();
    assert!(status.consecutive_failures >= 1, "{status:?}");

    let reasons = reasons_until(&daemon, Duration::from_secs(15), || {
        daemon.observer.statuses()[0].last_reason.as_deref() == Some("fallback")
    })
    .await;
    assert!(reasons.iter().all(|r| r == "last_known" || r == "fallback"), "{reasons:?}");
    assert_eq!(reasons.last().map(String::as_str), Some("fallback"), "{reasons:?}");
    assert_eq!(replicas(), 10, "the fallback's 2 replicas scale nothing in");
    assert_eq!(daemon.stop().await, Ok(()));
}

/// `[[group]]`: two Deployments share 6 replicas. `a` (priority 1) asks for 4, `b` for
/// 5: `a` gets its 4, `b` the 2 left (`group_capped`, 3 denied), and the sum never
/// passes 6 on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_never_runs_more_than_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "a", 0).await;
    kube.add_deployment(NS, "b", 0);
    let (qa, qb) = (sqs::queue("group-a").await, sqs::queue("group-b").await);
    sqs::send(&qa, 20).await;
    sqs::send(&qb, 25).await;
    let rules = format!(
        "{}[[group]]\nname = \"g\"\nmax_replicas = 6\n{}{}",
        header(&sqs::endpoint()),
        demo_rule("a", &qa, "max_replica_count = 10\ngroup = \"g\"\npriority = 1"),
        demo_rule("b", &qb, "max_replica_count = 10\ngroup = \"g\""),
    );
    let config = write(dir.path(), "sqscale.toml", &rules);
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = |name: &str| kube.replicas(Kind::Deployment, NS, name).unwrap();

    let mut most = 0;
    let settled = wait_until(Duration::from_secs(20), || {
        let (a, b) = (replicas("a"), replicas("b"));
        most = most.max(a + b);
        a == 4 && b == 2
    })
    .await;
    assert!(settled, "a at {}, b at {}", replicas("a"), replicas("b"));
    // A few more polls: nothing moves, nothing passes the cap.
    let polls = daemon.observer.statuses()[1].polls;
    assert!(wait_until(Duration::from_secs(10), || daemon.observer.statuses()[1].polls >= polls + 3).await);
    assert_eq!((replicas("a"), replicas("b")), (4, 2));
    assert!(most <= 6, "the group ran {most} at once");
    assert!(kube.scale_history(Kind::Deployment, NS, "b").iter().all(|&r| r <= 6));

    let b = daemon.observer.statuses().into_iter().find(|s| s.rule == "b").unwrap();
    assert_eq!(b.last_reason.as_deref(), Some("group_capped"), "{b:?}");
    let groups = daemon.observer.groups().statuses();
    assert_eq!((groups[0].group.as_str(), groups[0].max_replicas, groups[0].replicas), ("g", 6, 6));
    let denied: Vec<(&str, u32)> = groups[0].members.iter().map(|m| (m.rule.as_str(), m.denied)).collect();
    assert_eq!(denied, [("a", 0), ("b", 3)]);
    let metrics = daemon.observer.encode_metrics();
    for line in [
        "sqscale_group_replicas{group=\"g\"} 6",
        "sqscale_group_max_replicas{group=\"g\"} 6",
        "sqscale_group_denied_replicas{group=\"g\",rule=\"b\"} 3",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    // b's queue drains... a's does: a scales in (after its cooldown) and b takes the room.
    sqs::purge(&qa).await;
    assert!(wait_until(Duration::from_secs(20), || replicas("b") == 5).await, "b at {}", replicas("b"));
    assert!(replicas("a") + replicas("b") <= 6);
    assert_eq!(daemon.stop().await, Ok(()));
}
