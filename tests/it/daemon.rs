//! The daemon against real protocols: the real aws-sdk-sqs against moto's SQS server and
//! the real kube client against the fake API server over HTTPS with a bearer token.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto). Polls run every second.

use std::time::Duration;

use crate::support::daemon::{Daemon, cluster, demo_rule, header, wait_until, write};
use crate::support::fake_kube::{FakeKube, Kind, write_multi_kubeconfig};
use crate::support::proxy::Proxy;
use crate::support::sqs;

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
    let state = kube.config_map("sqscale", "sqscale-state").expect("the state ConfigMap");
    let last_active = state["data"]["deployment.default.demo"].as_str().expect("last-active stored");
    assert!(last_active.ends_with('Z'), "{last_active}");
    let obj = kube.object(Kind::Deployment, NS, "demo").unwrap();
    assert!(obj["metadata"]["annotations"]["sqscale.io/last-active"].is_null(), "nothing written on the target");
    assert_eq!(daemon.stop().await, Ok(()));
}

/// Issue 14: `sqscale.io/paused-replicas` deletes the HPA (KEDA's `handlePause`), so
/// unpausing starts a fresh one seeded at the pinned size. A backlog that asks for 2
/// (10 messages at 5 per replica: ratio exactly 1) then keeps the target at 2; the old
/// history (6 within the last 300 s) pulled it back up, 2 -> 4 -> 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpausing_starts_a_fresh_hpa_that_does_not_pull_back_to_the_old_size() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("unpause").await;
    let rule = demo_rule("demo", &queue, "max_replica_count = 10");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 6).await, "at {}", replicas());

    kube.annotate(Kind::Deployment, NS, "demo", "sqscale.io/paused-replicas", Some("2"));
    assert!(wait_until(Duration::from_secs(10), || replicas() == 2).await, "at {}", replicas());
    sqs::purge(&queue).await;
    sqs::send(&queue, 10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let polls = daemon.observer.statuses()[0].polls;
    kube.annotate(Kind::Deployment, NS, "demo", "sqscale.io/paused-replicas", None);

    // Three unpaused polls (one per second) see the 10 messages and hold at 2.
    assert!(wait_until(Duration::from_secs(10), || daemon.observer.statuses()[0].polls >= polls + 4).await);
    let status = &daemon.observer.statuses()[0];
    assert_eq!(status.last_reason.as_deref(), Some("unchanged"), "{status:?}");
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 6, 2]);
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
async fn a_reload_ends_unused_watches_and_says_what_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    kube.add_deployment("other", "batch", 0);
    let queue = sqs::queue("unused-watch").await;
    let demo = demo_rule("demo", &queue, "");
    let batch =
        demo_rule("batch", &queue, "").replace("{ name = \"batch\" }", "{ name = \"batch\", namespace = \"other\" }");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{demo}{batch}", header(&sqs::endpoint())));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    assert!(wait_until(Duration::from_secs(10), || daemon.observer.readiness().is_ok()).await);
    assert!(wait_until(Duration::from_secs(5), || kube.open_watches() == 2).await, "one watch per namespace and kind");

    // The rule in "other" goes, and the lease gets another name: the watch of "other"
    // ends; the lease name waits for a restart, and the reload says so.
    let renamed = format!("{}[leader_election]\nlease_name = \"renamed\"\n{demo}", header(&sqs::endpoint()));
    write(dir.path(), "sqscale.toml", &renamed);
    daemon.reload().await;
    assert!(wait_until(Duration::from_secs(10), || kube.open_watches() == 1).await, "{} open", kube.open_watches());
    assert_eq!(daemon.observer.restart_required(), ["leader_election.lease_name"]);
    let metrics = daemon.observer.encode_metrics();
    assert!(metrics.contains("sqscale_config_reloads_total{result=\"partial\"} 1"), "{metrics}");
    assert!(!metrics.contains("result=\"success\""), "{metrics}");
    // The remaining rule reads from its watch: no GET of the target.
    kube.clear_requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kube.count("GET", "/deployments/demo"), 0);
    assert_eq!(kube.open_watches(), 1);
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
    // (A failed poll may take up to the call timeout, 5 s, as the SDK retries: wait for two
    // of them, and for twice the cooldown, whichever is later.)
    proxy.set_down(true);
    sqs::purge(&queue).await;
    let down = tokio::time::Instant::now();
    let failed_twice = || daemon.observer.statuses()[0].consecutive_failures >= 2;
    assert!(wait_until(Duration::from_secs(20), failed_twice).await, "{:?}", daemon.observer.statuses());
    tokio::time::sleep_until(down + Duration::from_secs(6)).await;
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 5], "no scale-in during the outage");
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
    // A conflicting write between our read and our patch: decided again on a fresh read
    // and sent again, once.
    kube.conflict_next(1);
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}", replicas());
    let patches: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/scale"))
        .map(|r| r.status)
        .collect();
    assert_eq!(patches.iter().filter(|s| **s == Some(409)).count(), 1, "{patches:?}");
    assert_eq!(kube.scale_history(Kind::Deployment, NS, "demo"), [1, 4, 5], "{patches:?}");
    assert!(daemon.observer.encode_metrics().contains("source=\"kubernetes\""));
    assert_eq!(daemon.stop().await, Ok(()));
}

/// The write budget: a busy rule whose replicas hold steady writes nothing, neither to its
/// target (sqscale writes workloads only through `/scale`) nor to its state, which is
/// stored once when the rule turns active and then at most once a minute; the edge to
/// inactive is stored at once, in one write to the state ConfigMap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_busy_rule_writes_nothing_and_its_state_on_the_edges() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("steady").await;
    let config =
        write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), demo_rule("demo", &queue, "")));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await);
    // Writes that took effect (a PATCH of a missing ConfigMap answered 404 is followed
    // by the POST that creates it: one write).
    let writes = |kube: &FakeKube| -> Vec<(String, String)> {
        kube.requests()
            .into_iter()
            .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
            .map(|r| (r.method, r.path))
            .collect()
    };
    let whole_workload = |w: &(String, String)| w.1.contains("/deployments/") && !w.1.ends_with("/scale");
    assert!(!writes(&kube).iter().any(whole_workload), "{:?}", writes(&kube));
    let state_writes = |kube: &FakeKube| writes(kube).iter().filter(|w| w.1.contains("/configmaps")).count();
    assert_eq!(state_writes(&kube), 1, "stored when the rule turned active: {:?}", writes(&kube));

    // Eight polls at a steady backlog and steady replicas: not one write.
    kube.clear_requests();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(writes(&kube), [] as [(String, String); 0]);
    assert!(daemon.observer.statuses()[0].polls >= 10);

    // The queue empties: the first inactive poll stores last-active, once, and the
    // step to zero follows the cooldown.
    sqs::purge(&queue).await;
    assert!(wait_until(Duration::from_secs(10), || replicas() == 0).await);
    assert_eq!(state_writes(&kube), 1, "{:?}", writes(&kube));
    let stored = kube.config_map("sqscale", "sqscale-state").expect("the state ConfigMap");
    let at = stored["data"]["deployment.default.demo"].as_str().expect("the target's key");
    assert_eq!(
        sqscale::workload::parse_time(at),
        daemon.observer.statuses()[0].last_active.as_deref().and_then(sqscale::workload::parse_time)
    );
    assert!(!writes(&kube).iter().any(whole_workload));
    assert_eq!(daemon.stop().await, Ok(()));
}

/// An older sqscale kept last-active in the target's `sqscale.io/last-active` annotation.
/// After the upgrade it is still read (the cooldown holds), copied into the state
/// ConfigMap at the first poll, and never written on the target again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_active_annotation_left_by_an_older_version_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 3).await;
    let last_active = sqscale::engine::Time(jiff::Timestamp::now().as_millisecond() - 1000);
    let written = sqscale::workload::format_time(last_active);
    kube.annotate(Kind::Deployment, NS, "demo", "sqscale.io/last-active", Some(&written));
    let queue = sqs::queue("migrated").await;
    let rule = demo_rule("demo", &queue, "").replace("cooldown_period = 3", "cooldown_period = 6");
    let config = write(dir.path(), "sqscale.toml", &format!("{}{}", header(&sqs::endpoint()), rule));
    let daemon = Daemon::start(&config, &kubeconfig).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    let stored = || kube.config_map("sqscale", "sqscale-state").map(|c| c["data"]["deployment.default.demo"].clone());
    assert!(wait_until(Duration::from_secs(3), || stored().is_some()).await, "copied into the state ConfigMap");
    assert_eq!(stored().unwrap(), serde_json::json!(written));
    assert_eq!(replicas(), 3, "the cooldown counts from the annotation");
    assert!(wait_until(Duration::from_secs(10), || replicas() == 0).await);
    let now = jiff::Timestamp::now().as_millisecond();
    assert!(now - last_active.0 >= 6000, "zero {} ms after last-active", now - last_active.0);
    let target_writes =
        kube.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/demo"));
    assert_eq!(target_writes.count(), 0);
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

    // A new process knows nothing but the state ConfigMap: it must still wait out the
    // cooldown (a clean stop stored the last active poll's time).
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
    // Both counts once the daemon has stopped, so they describe the same polls.
    let observer = daemon.observer.clone();
    assert_eq!(daemon.stop().await, Ok(()));
    let polls: Vec<u64> = observer.statuses().iter().map(|s| s.polls).collect();
    let calls = proxy.count("GetQueueAttributes") as u64;
    assert_eq!(polls[0], polls[1], "the two rules poll in step");
    assert_eq!(calls, polls[0], "one call per round of two rules: {calls} calls, polls {polls:?}");
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
    // The baseline right after a poll has reported (its call made long before, the next
    // one a second away), so that calls and polls count the same rounds.
    let polls = || daemon.observer.statuses()[0].polls;
    let reported = polls();
    assert!(wait_until(Duration::from_secs(3), || polls() > reported).await);
    kube.clear_requests();
    let (before, polls_before) = (proxy.count("GetQueueAttributes"), polls());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let observer = daemon.observer.clone();
    let requests = kube.requests();
    assert_eq!(daemon.stop().await, Ok(()));
    let rounds = observer.statuses()[0].polls - polls_before;
    let calls = proxy.count("GetQueueAttributes") - before;
    assert!(rounds >= 2, "{rounds} rounds");
    assert_eq!(calls as u64, rounds, "one GetQueueAttributes per round");
    // ... and it took the direct path, not the SDK (whose user agent is aws-sdk-rust).
    let agents = proxy.agents("GetQueueAttributes");
    assert!(agents[before..].iter().all(|a| a.starts_with("sqscale/")), "{agents:?}");
    assert!(requests.is_empty(), "idle rounds read the watch cache, not the API server: {requests:?}");
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
        external_id: None,
        direct: true,
    };
    let reader = Sqs::new(Duration::from_secs(5));
    let both = Attrs { in_flight: true, delayed: true };
    let counts = reader.read(&source(&url), both).await.unwrap();
    assert_eq!((counts.visible, counts.in_flight, counts.delayed), (7, 0, 0));
    assert_eq!(proxy.agents("GetQueueAttributes").len(), 1);

    let ghost = url.replace("direct", "no-such-queue");
    let err = reader.read(&source(&ghost), Attrs::default()).await.unwrap_err();
    assert_eq!(err.kind(), "not_found", "{err}");
    let agents = proxy.agents("GetQueueAttributes");
    assert_eq!(agents.len(), 3, "{agents:?}");
    assert!(agents[1].starts_with("sqscale/") && agents[2].starts_with("aws-sdk-rust/"), "{agents:?}");
}
