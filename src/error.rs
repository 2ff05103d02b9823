//! Rendering typed errors for people. Each module's error type says what failed in its
//! `Display` and keeps the cause in [`std::error::Error::source`] (never both); the
//! boundary that turns an error into text for a log line, `/status` or the terminal
//! renders the whole chain with [`chain`], as anyhow's `{:#}` does.

use std::error::Error;
use std::fmt::Write;

/// `error: cause: cause's cause: …`. A cause whose text the rendering already ends with
/// is skipped: some libraries print their source in their own message too, and the
/// line should say it once.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            let _ = write!(text, ": {said}");
        }
        source = cause.source();
    }
    text
}

/// Whether `error` or any error in its source chain is a `T` that satisfies `test`:
/// classification by type, whatever the layers in between.
pub fn any_cause<T: Error + 'static>(error: &(dyn Error + 'static), test: impl Fn(&T) -> bool) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<T>().is_some_and(&test) {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Reading(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("loading: {0}")]
    struct Loud(#[source] std::io::Error);

    #[test]
    fn the_chain_is_rendered_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::TimedOut, "too slow");
        assert_eq!(chain(&Reading("the file", io())), "reading the file: too slow");
        // A library that prints its cause itself: said once.
        assert_eq!(chain(&Loud(io())), "loading: too slow");
        assert!(any_cause::<std::io::Error>(&Reading("x", io()), |e| e.kind() == std::io::ErrorKind::TimedOut));
        assert!(!any_cause::<std::io::Error>(&Reading("x", io()), |e| e.kind() == std::io::ErrorKind::NotFound));
    }
}
