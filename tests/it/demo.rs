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
