//! The `sqscale` binary as a child process: start it with its logs in a file, signal it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child that is killed if the test ends without waiting for it (a failed
/// assertion must not leave a daemon running).
pub struct Daemon(Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `sqscale ARGS` with extra environment, stderr (the logs) going to `log`.
pub fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> Daemon {
    spawn_without(args, env, &[], log)
}

/// [`spawn`], with the variables `unset` removed from the inherited environment.
pub fn spawn_without(args: &[&str], env: &[(&str, &str)], unset: &[&str], log: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqscale"));
    for name in unset {
        cmd.env_remove(name);
    }
    cmd.args(args).env("SQSCALE_LOG", "info").envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(log).unwrap());
    Daemon(cmd.spawn().expect("start sqscale"))
}

/// Starts `sqscale ARGS` as PID 1 of a PID namespace of its own (with its own /proc), as
/// a container's entry point runs: `unshare --pid --fork --mount-proc --kill-child=SIGTERM`.
/// The returned child is `unshare`, which ignores SIGTERM; killing it (SIGKILL) sends
/// SIGTERM to the daemon. Panics, loudly,
/// where PID namespaces cannot be made (they need root or CAP_SYS_ADMIN): a test that
/// needs them must not pass without them.
pub fn spawn_as_pid1(args: &[&str], log: &Path) -> Daemon {
    let probe =
        Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "true"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`unshare --pid --fork --mount-proc` failed ({}; {}): this test runs two daemons as PID 1 of \
             their own PID namespaces and needs root (or CAP_SYS_ADMIN); it cannot be skipped",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run `unshare` (util-linux): {e}; this test needs it and cannot be skipped"),
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", env!("CARGO_BIN_EXE_sqscale")]);
    cmd.args(args).env("SQSCALE_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(log).unwrap());
    Daemon(cmd.spawn().expect("start unshare"))
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`: (status code, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Runs `sqscale` with `args` to its end, from the repository (so `config/...` paths
/// resolve), without an inherited `SQSCALE_CONFIG`.
pub fn sqscale(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SQSCALE_CONFIG")
        .output()
        .expect("run sqscale")
}
