//! The daemon against real protocols: the real aws-sdk-sqs against moto's SQS server and
//! the real kube client against the fake API server over HTTPS with a bearer token.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto). Polls run every second.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, cluster, demo_rule, header, wait_until, write};
use support::fake_kube::{FakeKube, Kind, write_multi_kubeconfig};
use support::proxy::Proxy;
use support::sqs;

const NS: &str = "default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_0_1_4_5_then_sighup_to_max_10_gives_6_then_0_after_the_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("story").await;
    let rules = |extra: &str| format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, extra));
    let config = write(dir.path(), "sqscale.toml", &rules(""));
    let daemon = Daemon::start(&config, &kubeconfig).await;

    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}", replicas());
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 5]);

    // SIGHUP with max raised to 10: ceil(30 / 5) = 6.
    write(dir.path(), "sqscale.toml", &rules("max_replica_count = 10"));
    daemon.reload().await;
    assert!(wait_until(Duration::from_secs(10), || replicas() == 6).await, "at {}", replicas());

    sqs::purge(&queue).await;
    let purged = tokio::time::Instant::now();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 0).await, "at {}", replicas());
    assert!(purged.elapsed() >= Duration::from_secs(2), "not before the cooldown: {:?}", purged.elapsed());
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 5, 6, 0]);

    // The wire: merge patches on /scale with the field manager, last-active annotated.
    // (Counting the accepted ones: a read from the watch cache can trail our own last
    // write, and the patch built on it then meets a 409 and is sent again.)
    let patches: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/scale") && r.status == Some(200))
        .collect();
    assert_eq!(patches.len(), 5);
    for p in &patches {
        assert_eq!(p.content_type.as_deref(), Some("application/merge-patch+json"));
        assert!(p.query.as_deref().unwrap_or_default().contains("fieldManager=sqscale"), "{:?}", p.query);
        assert!(p.authorized);
    }
    let obj = kube.object(Kind::Deployment, NS, "demo").unwrap();
    let last_active = obj["metadata"]["annotations"]["sqscale.io/last-active"].as_str().expect("annotated");
    assert!(last_active.ends_with('Z'), "{last_active}");
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_file_on_sighup_keeps_the_old_rules_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("broken").await;
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(5), || daemon.observer.readiness().is_ok()).await);

    write(dir.path(), "sqscale.toml", "[[rule]]\nname = \"demo\"\nmax_replica_count = \"lots\"\n");
    daemon.reload().await;
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}", replicas());
    let metrics = daemon.observer.encode_metrics();
    assert!(metrics.contains("sqscale_config_reloads_total{result=\"failure\"} 1"), "{metrics}");
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_outage_never_scales_in_and_recovery_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let proxy = Proxy::start(&sqs::endpoint()).await;
    let queue = sqs::queue("outage").await;
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&proxy.url()), demo_rule("demo", &queue, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}", replicas());

    // The queue empties while SQS is unreachable: well past the cooldown, nothing moves.
    proxy.set_down(true);
    sqs::purge(&queue).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 5], "no scale-in during the outage");
    let status = &daemon.observer.statuses()[0];
    assert!(status.consecutive_failures >= 2, "{status:?}");
    assert!(daemon.observer.encode_metrics().contains("sqscale_poll_errors_total{rule=\"demo\",source=\"sqs\"}"));

    // SQS is back and reports the empty queue: the cooldown ran long ago, so it goes to 0.
    proxy.set_down(false);
    assert!(wait_until(Duration::from_secs(10), || replicas() == 0).await, "at {}", replicas());
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_errors_and_conflicts_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("retry").await;
    sqs::send(&queue, 30).await;
    kube.fail_next(3, 500);
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() >= 1).await);
    // A conflicting write between our read and our patch: retried on a fresh version.
    kube.conflict_next(1);
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}", replicas());
    let conflicts = kube.requests().iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/scale")).count();
    assert!(conflicts >= 4, "the conflicted patch was sent again ({conflicts} patches)");
    assert!(daemon.observer.encode_metrics().contains("source=\"kubernetes\""));
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_last_active_no_early_scale_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("restart").await;
    let rule = demo_rule("demo", &queue, "").replace("cooldown_period = 3", "cooldown_period = 6");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await);
    sqs::purge(&queue).await;
    assert_eq!(daemon.stop().await, Ok(()));
    let stopped = tokio::time::Instant::now();

    // A new process knows nothing but the annotation: it must still wait out the cooldown.
    let daemon = Daemon::start(&config, &kubeconfig).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(replicas(), 5, "no scale to zero right after the restart");
    assert!(wait_until(Duration::from_secs(15), || replicas() == 0).await);
    assert!(stopped.elapsed() >= Duration::from_secs(4), "zero only once the cooldown ran out");
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_target() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.add_statefulset(NS, "db-worker", 1);
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let queue = sqs::queue("sts").await;
    let rule = demo_rule("db-worker", &queue, "")
        .replace("{ name = \"db-worker\" }", "{ kind = \"StatefulSet\", name = \"db-worker\" }");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    sqs::send(&queue, 20).await;
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(15), || kube.replicas(Kind::StatefulSet, NS, "db-worker") == Some(4)).await);
    assert!(
        kube.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path == "/apis/apps/v1/namespaces/default/statefulsets/db-worker/scale")
    );
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rules_on_one_queue_make_one_get_queue_attributes_per_round() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.add_deployment(NS, "a", 0);
    kube.add_deployment(NS, "b", 0);
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let proxy = Proxy::start(&sqs::endpoint()).await;
    let queue = sqs::queue("shared").await;
    sqs::send(&queue, 10).await;
    // Rule b also counts delayed messages (a trigger key, so it goes after the trigger
    // table header): the one call asks for the union of the attributes.
    let b = demo_rule("b", &queue, "") + "scale_on_delayed = true\n";
    let text = format!("{}{}{}", header(&proxy.url()), demo_rule("a", &queue, ""), b);
    let config = write(dir.path(), "sqscale.toml", &text);
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let both =
        || kube.replicas(Kind::Deployment, NS, "a") == Some(2) && kube.replicas(Kind::Deployment, NS, "b") == Some(2);
    assert!(wait_until(Duration::from_secs(10), both).await);
    let statuses = daemon.observer.statuses();
    let polls: u64 = statuses.iter().map(|s| s.polls).max().unwrap();
    assert_eq!(daemon.stop().await, Ok(()));
    let calls = proxy.count("GetQueueAttributes");
    assert!(calls as u64 <= polls + 1 && calls >= 2, "{calls} calls for {polls} rounds of two rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contexts_two_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let east = FakeKube::start().await;
    let west = FakeKube::start().await;
    east.add_deployment(NS, "worker", 0);
    west.add_deployment(NS, "worker", 0);
    let kubeconfig = dir.path().join("kubeconfig");
    write_multi_kubeconfig(&kubeconfig, &[("east", &east), ("west", &west)], "east");
    let (qe, qw) = (sqs::queue("east").await, sqs::queue("west").await);
    sqs::send(&qe, 10).await;
    sqs::send(&qw, 20).await;
    let text = format!(
        "{}{}{}",
        header(&sqs::endpoint()),
        demo_rule("east-worker", &qe, "").replace("{ name = \"east-worker\" }", "{ name = \"worker\" }"),
        demo_rule("west-worker", &qw, "context = \"west\"")
            .replace("{ name = \"west-worker\" }", "{ name = \"worker\" }"),
    );
    let config = write(dir.path(), "sqscale.toml", &text);
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let done = || {
        east.replicas(Kind::Deployment, NS, "worker") == Some(2)
            && west.replicas(Kind::Deployment, NS, "worker") == Some(4)
    };
    assert!(wait_until(Duration::from_secs(10), done).await);
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_cluster_mints_the_token_instead_of_running_the_exec_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.add_deployment(NS, "demo", 0);
    // An EKS-style kubeconfig whose user runs a CLI that is not installed.
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let mut kc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    kc["users"][0]["user"] = serde_json::json!({
        "exec": { "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "/nonexistent/aws",
                  "args": ["eks", "get-token", "--cluster-name", "demo-cluster"], "interactiveMode": "Never" }
    });
    std::fs::write(&kubeconfig, kc.to_string()).unwrap();
    let queue = sqs::queue("eks").await;
    let text = format!(
        "[kubernetes]\neks_cluster = \"demo-cluster\"\n{}{}",
        header(&sqs::endpoint()),
        demo_rule("demo", &queue, "")
    );
    let config = write(dir.path(), "sqscale.toml", &text);
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(
        wait_until(Duration::from_secs(10), || !kube.requests().is_empty()).await,
        "no request reached the API server"
    );
    let auth = kube.requests()[0].headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone());
    let auth = auth.expect("an Authorization header");
    assert!(auth.starts_with("Bearer k8s-aws-v1."), "{auth}");
    // The fake only knows its own token, so it answers 401: the poll fails and says why.
    assert!(wait_until(Duration::from_secs(5), || daemon.observer.statuses()[0].consecutive_failures >= 1).await);
    let error = daemon.observer.statuses()[0].last_error.clone().unwrap();
    assert!(error.contains("Unauthorized") && !error.contains("k8s-aws-v1"), "{error}");
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_round_costs_one_sqs_call_and_no_kubernetes_call() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let proxy = Proxy::start(&sqs::endpoint()).await;
    let queue = sqs::queue("idle").await;
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&proxy.url()), demo_rule("demo", &queue, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(5), || daemon.observer.readiness().is_ok()).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kube.clear_requests();
    let before = proxy.count("GetQueueAttributes");
    let polls_before = daemon.observer.statuses()[0].polls;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rounds = daemon.observer.statuses()[0].polls - polls_before;
    let calls = proxy.count("GetQueueAttributes") - before;
    assert!(rounds >= 2, "{rounds} rounds");
    assert_eq!(calls as u64, rounds, "one GetQueueAttributes per round");
    // ... and it took the direct path, not the SDK (whose user agent is aws-sdk-rust).
    let agents = proxy.agents("GetQueueAttributes");
    assert!(agents[before..].iter().all(|a| a.starts_with("sqscale/")), "{agents:?}");
    let requests = kube.requests();
    assert!(requests.is_empty(), "idle rounds read the watch cache, not the API server: {requests:?}");
    assert_eq!(daemon.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_given_by_name_is_resolved_once_with_get_queue_url() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let proxy = Proxy::start(&sqs::endpoint()).await;
    let url = sqs::queue("byname").await;
    let name = url.rsplit('/').next().unwrap().to_owned();
    sqs::send(&url, 10).await;
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&proxy.url()), demo_rule("demo", &name, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(10), || kube.replicas(Kind::Deployment, NS, "demo") == Some(2)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.count("GetQueueUrl"), 1, "resolved once");
    assert!(proxy.count("GetQueueAttributes") >= 3);
    assert_eq!(daemon.stop().await, Ok(()));
}

/// Polls take the direct path; anything but a clean answer is asked again through the
/// SDK, which retries and names the error. A queue that does not exist: one direct call
/// (HTTP 400), then the SDK's, and the error is `not_found`, never a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_miss_is_asked_again_through_the_sdk_which_names_the_error() {
    use sqscale::config::QueueSource;
    use sqscale::source::sqs::Sqs;
    use sqscale::source::{Attrs, QueueReader};

    let proxy = Proxy::start(&sqs::endpoint()).await;
    let url = sqs::queue("direct").await;
    sqs::send(&url, 7).await;
    let source = |url: &str| QueueSource {
        url: Some(url.to_owned()),
        name: url.rsplit('/').next().unwrap().to_owned(),
        region: "us-east-1".to_owned(),
        endpoint: Some(proxy.url()),
        profile: None,
        role_arn: None,
        direct: true,
    };
    let reader = Sqs::new(Duration::from_secs(5));
    let both = Attrs { in_flight: true, delayed: true };
    let counts = reader.read(&source(&url), both).await.unwrap();
    assert_eq!((counts.visible, counts.in_flight, counts.delayed), (7, 0, 0));
    assert_eq!(proxy.agents("GetQueueAttributes").len(), 1);

    let ghost = url.replace("direct", "no-such-queue");
    let err = reader.read(&source(&ghost), Attrs::default()).await.unwrap_err();
    assert_eq!(err.kind, "not_found", "{err}");
    let agents = proxy.agents("GetQueueAttributes");
    assert_eq!(agents.len(), 3, "{agents:?}");
    assert!(agents[1].starts_with("sqscale/") && agents[2].starts_with("aws-sdk-rust/"), "{agents:?}");
}
