//! A private moto SQS server for one test, on a port of its own, that the test can kill
//! with SIGKILL and start again on the same port (its queues are gone then, as after a
//! crash of a real emulator). Uses the virtualenv `scripts/moto.sh` installs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Credentials;
use tokio::process::{Child, Command};

pub struct Moto {
    port: u16,
    child: Option<Child>,
}

/// `$MOTO_VENV` (exported by `moto_start`), else where `scripts/moto.sh` installs it.
fn venv() -> PathBuf {
    match std::env::var_os("MOTO_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/sqscale/moto-venv-5.2.5")
        }
    }
}

impl Moto {
    /// Starts moto_server on a free 127.0.0.1 port and waits until it answers.
    pub async fn start() -> Moto {
        let mut moto = Moto { port: super::process::free_port(), child: None };
        moto.restart().await;
        moto
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits until it is gone: no goodbye, connections are cut.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "moto is still running");
        let bin = venv().join("bin/moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (run scripts/test, which installs moto)", bin.display()));
        self.child = Some(child);
        for _ in 0..150 {
            if self.ready().await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("moto_server exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not answer on port {} within 7.5 s", self.port);
    }

    async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        let request = "GET /moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if s.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
    }

    /// A client of this server with static test credentials.
    pub async fn client(&self) -> Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .load()
            .await;
        Client::new(&config)
    }

    /// Creates the queue `name` (again, after a restart) and returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let out = self.client().await.create_queue().queue_name(name).send().await.expect("create queue");
        out.queue_url().expect("queue url").to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
