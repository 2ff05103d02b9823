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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqscale"));
    cmd.args(args).env("SQSCALE_LOG", "info").envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(log).unwrap());
    Daemon(cmd.spawn().expect("start sqscale"))
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}
