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
        if let Some(s) = daemon.observer.statuses().into_iter().next()
            && let Some(reason) = s.last_reason
            && seen.last().is_none_or(|(polls, _)| *polls != s.polls)
        {
            seen.push((s.polls, reason));
        }
        if done() {
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

    let reasons = reasons_until(&daemon, Duration::from_secs(15), || replicas() > 0).await;
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
