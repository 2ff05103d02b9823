//! Runs the daemon in-process with the real adapters (aws-sdk-sqs, kube) and drives it
//! through Control messages, the way SIGHUP and SIGTERM do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqscale::config::Config;
use sqscale::signals::Control;
use sqscale::source::{Shared, sqs::Sqs};
use sqscale::status::Observer;
use sqscale::supervisor::{self, Aborted};
use sqscale::worker::{Clock, Deps};
use sqscale::workload::ScaleTarget;
use sqscale::workload::jobs::JobTarget;
use sqscale::workload::kube::Kube;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The bound on each remote call of a poll.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Daemon {
    pub control: mpsc::Sender<Control>,
    pub handle: JoinHandle<Result<(), Aborted>>,
    pub observer: Arc<Observer>,
}

impl Daemon {
    /// Starts on the rule file at `config` and the kubeconfig at `kubeconfig`.
    pub async fn start(config: &Path, kubeconfig: &Path) -> Daemon {
        let cfg = sqscale::config::load(config).expect("valid rule file");
        let kube = Kube::from_config(&cfg, Some(kubeconfig.to_owned()), TIMEOUT);
        Daemon::spawn(cfg, config, kube)
    }

    /// Starts on the rule file at `config` with `targets` (the real adapter, or the real
    /// adapter wrapped), the real SQS adapter and the system clock.
    pub fn start_with<T: ScaleTarget + JobTarget>(config: &Path, targets: T) -> Daemon {
        Daemon::spawn(sqscale::config::load(config).expect("valid rule file"), config, targets)
    }

    fn spawn<T: ScaleTarget + JobTarget>(cfg: Config, config: &Path, targets: T) -> Daemon {
        let observer = Arc::new(Observer::new());
        let deps = Deps {
            queues: Arc::new(Shared::new(Sqs::new(TIMEOUT).with_fallbacks(observer.sqs_fallbacks()))),
            targets: Arc::new(targets),
            clock: Clock::system(),
            dry_run: false,
            call_timeout: TIMEOUT,
            observer: observer.clone(),
        };
        let (control, rx) = mpsc::channel(16);
        let path = config.to_owned();
        let handle =
            tokio::spawn(supervisor::run(cfg, deps, rx, move || sqscale::config::load(&path), Duration::from_secs(10)));
        Daemon { control, handle, observer }
    }

    pub async fn reload(&self) {
        self.control.send(Control::Reload).await.unwrap();
    }

    pub async fn stop(self) -> Result<(), Aborted> {
        self.control.send(Control::Shutdown).await.unwrap();
        self.handle.await.unwrap()
    }
}

/// A fake API server with one Deployment `name` at `replicas` in `default`, and its
/// kubeconfig written into `dir`.
pub async fn cluster(dir: &Path, name: &str, replicas: u32) -> (super::fake_kube::FakeKube, PathBuf) {
    let kube = super::fake_kube::FakeKube::start().await;
    kube.add_deployment("default", name, replicas);
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    (kube, kubeconfig)
}

/// Writes a rule file into `dir` and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The demo rule at test speed: polls every second, 3 s cooldown.
pub fn demo_rule(name: &str, queue_url: &str, extra: &str) -> String {
    let max = if extra.contains("max_replica_count") { "" } else { "max_replica_count = 5" };
    format!(
        "[[rule]]\nname = \"{name}\"\ntarget = {{ name = \"{name}\" }}\npolling_interval = 1\ncooldown_period = 3\n{max}\n{extra}\n[[rule.trigger]]\nqueue_url = \"{queue_url}\"\nqueue_length = 5\n"
    )
}

/// `[aws]` pointing at `endpoint`, no HTTP listener.
pub fn header(endpoint: &str) -> String {
    format!("[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n[server]\nlisten = \"\"\n")
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
