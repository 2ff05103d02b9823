//! The live demo, and its test: the real `sqscale run` with `config/demo.toml` against
//! moto's SQS and a local API server on 127.0.0.1. 30 messages arrive: the Deployment
//! goes 0 -> 1 -> 4 -> 5; the queue is purged: it goes to 0 after the cooldown.
//!
//! `scripts/demo` runs it at the demo's own speed (`SQSCALE_DEMO=1`: 10 s polls, 30 s
//! cooldown, about 90 s) and narrates; in the test suite the same flow runs with 1 s
//! polls and a 3 s cooldown.

use std::time::{Duration, Instant};

use crate::support::daemon::wait_until;
use crate::support::fake_kube::{FakeKube, Kind};
use crate::support::jobs::{Behaviour, JobController};
use crate::support::process::{free_port, signal, spawn};
use crate::support::sqs;

const QUEUE: &str = "keda-demo-queue";
/// The demo queue's region, from config/demo.toml's queue URL.
const REGION: &str = "ap-northeast-2";

async fn sqs_client() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(sqs::endpoint())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_demo() {
    let narrate = std::env::var_os("SQSCALE_DEMO").is_some();
    let say = |msg: String| {
        if narrate {
            println!("{msg}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let config = if narrate {
        demo
    } else {
        demo.replace("polling_interval = 10", "polling_interval = 1")
            .replace("cooldown_period = 30", "cooldown_period = 3")
    };
    let config_path = dir.path().join("demo.toml");
    std::fs::write(&config_path, &config).unwrap();

    let kube = FakeKube::start().await;
    kube.add_deployment("default", "demo-worker", 0);
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    say(format!("local API server at {} with Deployment default/demo-worker at 0 replicas", kube.url()));

    let client = sqs_client().await;
    let url = client.create_queue().queue_name(QUEUE).send().await.unwrap().queue_url().unwrap().to_owned();
    client.purge_queue().queue_url(&url).send().await.unwrap();
    say(format!("SQS emulator at {} with queue {QUEUE}", sqs::endpoint()));

    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("sqscale.log");
    let env = [("SQSCALE_AWS__ENDPOINT_URL", sqs::endpoint()), ("SQSCALE_SERVER__LISTEN", listen.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["run", "--config", config_path.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()];
    let mut child = spawn(&args, &env, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    say(format!("sqscale run --config config/demo.toml (metrics and status at http://{listen})"));

    let start = Instant::now();
    let replicas = || kube.replicas(Kind::Deployment, "default", "demo-worker").unwrap();
    let mut seen = vec![0];
    let mut watch = |until: u32, limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let r = replicas();
            if *seen.last().unwrap() != r {
                say(format!("  t={:>3}s  replicas {} -> {r}", start.elapsed().as_secs(), seen.last().unwrap()));
                seen.push(r);
            }
            if r == until {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };

    say("sending 30 messages".to_owned());
    sqs::send_with(&client, &url, 30).await;
    let poll = if narrate { 10 } else { 1 };
    let reached = tokio::task::block_in_place(|| watch(5, Duration::from_secs(6 * poll + 10)));
    assert!(reached, "never reached 5: {seen:?}\n{}", logs());
    // Stay at the max for a poll, then empty the queue.
    tokio::time::sleep(Duration::from_secs(poll)).await;
    say(format!("  t={:>3}s  purging the queue", start.elapsed().as_secs()));
    client.purge_queue().queue_url(&url).send().await.unwrap();
    let zero = tokio::task::block_in_place(|| watch(0, Duration::from_secs(6 * poll + 30)));
    assert!(zero, "never back to 0: {seen:?}\n{}", logs());
    assert_eq!(seen, [0, 1, 4, 5, 0], "{}", logs());

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert!(wait_until(Duration::from_secs(1), || true).await);
    say(format!("done in {}s: 0 -> 1 -> 4 -> 5 -> 0; sqscale stopped cleanly", start.elapsed().as_secs()));
}

/// The demo's job story: the real `sqscale run` with `config/demo-jobs.toml` (a job rule,
/// KEDA's ScaledJob) against moto and the local API server, whose Job controller runs
/// each Job's pod: it takes one message of `keda-demo-jobs`, works for a few seconds,
/// deletes it and succeeds. 12 messages arrive: 4 Jobs, then more as they finish, never
/// more than 4 at once, until the queue is empty; the finished Jobs are cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_job_demo() {
    const JOB_QUEUE: &str = "keda-demo-jobs";
    let narrate = std::env::var_os("SQSCALE_DEMO").is_some();
    let say = |msg: String| {
        if narrate {
            println!("{msg}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let demo = std::fs::read_to_string(root.join("demo-jobs.toml")).unwrap();
    // The test suite polls every second; the demo at its own pace.
    let config = if narrate { demo } else { demo.replace("polling_interval = 2", "polling_interval = 1") };
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    std::fs::copy(root.join("jobs/demo-job.yaml"), dir.path().join("jobs/demo-job.yaml")).unwrap();
    let config_path = dir.path().join("demo-jobs.toml");
    std::fs::write(&config_path, &config).unwrap();

    let kube = FakeKube::start().await;
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let client = sqs_client().await;
    let url = client.create_queue().queue_name(JOB_QUEUE).send().await.unwrap().queue_url().unwrap().to_owned();
    client.purge_queue().queue_url(&url).send().await.unwrap();
    let work = Duration::from_secs(if narrate { 4 } else { 2 });
    let controller =
        JobController::start(&kube, Some(url.clone()), Behaviour::default().work(work).region(REGION)).await;
    say(format!(
        "the job story: job rule demo-job on {JOB_QUEUE}, at most 4 Jobs at once, each works off one message in {}s",
        work.as_secs()
    ));

    let port = free_port().to_string();
    let env = [("SQSCALE_AWS__ENDPOINT_URL", sqs::endpoint()), ("SQSCALE_SERVER__LISTEN", format!("127.0.0.1:{port}"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = dir.path().join("sqscale.log");
    let args = ["run", "--config", config_path.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()];
    let mut child = spawn(&args, &env, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    say("sqscale run --config config/demo-jobs.toml".to_owned());

    let start = Instant::now();
    say("sending 12 messages".to_owned());
    sqs::send_with(&client, &url, 12).await;
    let visible = |c: &aws_sdk_sqs::Client| {
        let (c, url) = (c.clone(), url.clone());
        async move { sqs::counts(&c, &url).await }
    };
    let (mut last, mut max_running) = ((usize::MAX, usize::MAX, usize::MAX), 0);
    let deadline = Instant::now() + Duration::from_secs(if narrate { 90 } else { 60 });
    loop {
        let counts = kube.job_counts("default");
        let created = kube.job_creations("default").len();
        max_running = max_running.max(counts.running);
        let now = (counts.running, created, kube.jobs("default").len());
        if now != last {
            let (v, f) = visible(&client).await;
            say(format!(
                "  t={:>3}s  Jobs running {}, created {}, kept {}; queue {} visible, {} in flight",
                start.elapsed().as_secs(),
                now.0,
                now.1,
                now.2,
                v,
                f
            ));
            last = now;
        }
        // Done: every message worked off, every Job finished and cleaned up.
        if created >= 12 && now.0 == 0 && now.2 == 0 && visible(&client).await == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the job story did not finish: {last:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = kube.job_creations("default").len();
    let at_once = kube.max_jobs_at_once("default", "sqscale.io/job=demo-job");
    controller.stop();
    assert_eq!(created, 12, "one Job per message\n{}", logs());
    assert!(at_once <= 4 && max_running <= 4, "at most 4 at once, saw {at_once}\n{}", logs());
    assert_eq!(controller.stats().deleted, 12, "every message worked off");

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    say(format!(
        "done in {}s: 12 messages, 12 Jobs, at most {at_once} at once, finished Jobs cleaned up; sqscale stopped cleanly",
        start.elapsed().as_secs()
    ));
}
