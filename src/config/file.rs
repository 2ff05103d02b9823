//! Reading the rule file, bounded: at start, by `check` and on every reload the file is
//! read on a thread of its own, at most [`MAX_BYTES`] of it, within a deadline. A rule
//! file that is a FIFO nobody writes to, or that lies on a hung mount, fails the load
//! instead of blocking it (and, before, the daemon's SIGTERM); a symlink to
//! `/dev/zero` fails at the cap instead of exhausting memory.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// The largest rule file read: ten thousand rules take about 3 MiB.
pub const MAX_BYTES: u64 = 16 << 20;

/// How long reading the file may take (not parsing it, which the cap bounds): a local
/// file is read in milliseconds.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Why the rule file could not be read. The file is named by the caller (the
/// [`super::ConfigErrors`] origin).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error("larger than {} MiB: not a rule file (a device such as /dev/zero?)", MAX_BYTES >> 20)]
    TooLarge,
    #[error(
        "not read within {}s (a FIFO nobody writes to, or a hung mount?); the read was abandoned",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    #[error("cannot start a thread to read it")]
    Thread(#[source] std::io::Error),
}

/// Reads the file at `path` as text, at most [`MAX_BYTES`], within `within`. The read
/// runs on a thread of its own: one that does not return in time is left behind
/// (blocked in the kernel, it holds no lock and no memory to speak of) and ends with
/// the process.
pub fn read(path: &Path, within: Duration) -> Result<String, ReadError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("sqscale-read".to_owned())
        .spawn(move || {
            let _ = tx.send(read_capped(&owned));
        })
        .map_err(ReadError::Thread)?;
    match rx.recv_timeout(within) {
        Ok(result) => result,
        Err(_) => Err(ReadError::Timeout(within)),
    }
}

fn read_capped(path: &Path) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO with no writer blocks open(2) forever: the read gives up at its deadline
    /// and says why; the next read of a regular file works.
    #[test]
    fn a_fifo_nobody_writes_to_fails_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("sqscale.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        let e = read(&fifo, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ReadError::Timeout(_)), "{e:?}");
        assert!(e.to_string().contains("not read within 0.2s (a FIFO"), "{e}");
        assert!(started.elapsed() < READ_DEADLINE, "gave up at its own deadline");
        let file = dir.path().join("good.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert_eq!(read(&file, Duration::from_secs(5)).unwrap(), "x = 1\n");
    }

    /// `/dev/zero` never ends: the read stops past the cap instead of eating memory.
    #[test]
    fn an_endless_file_fails_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("sqscale.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read(&link, READ_DEADLINE).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge), "{e:?}");
        assert_eq!(e.to_string(), "larger than 16 MiB: not a rule file (a device such as /dev/zero?)");
    }
}
