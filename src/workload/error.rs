//! The target port's error, and how the Kubernetes adapter classifies kube's errors:
//! by the API's `Status` code, kube's error variant and the error types in its source
//! chain (`std::io::ErrorKind::TimedOut`, hyper's timeouts), never by message text.

use std::error::Error;
use std::sync::Arc;

use crate::error::any_cause;

/// A failed read or write of a target. [`TargetError::kind`] is a stable label for logs
/// and metrics, and the worker's decisions (a conflict is decided again).
///
/// Cheap to clone. Its `Display` is the whole story as logs and `/status` show it (the
/// cause's chain included); [`Error::source`] is the typed cause for code that inspects
/// it, so a chain walker would print the cause twice: print this with `{}`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{target}: {message}")]
pub struct TargetError {
    /// `Kind/namespace/name`.
    pub target: String,
    kind: TargetErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn Error + Send + Sync>>,
}

/// What kind of failure a [`TargetError`] is; [`TargetErrorKind::as_str`] is its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetErrorKind {
    NotFound,
    Forbidden,
    /// The API server refused the credentials (a 401, or kube could not authenticate).
    Unauthorized,
    /// The target changed since the version the decision was made on (a 409).
    Conflict,
    /// A 429, or no write allowed in time by `[kubernetes] qps` and `burst`.
    Throttled,
    ServerError,
    Timeout,
    Unreachable,
    /// No client for the context: the kubeconfig, its credentials.
    Config,
    /// sqscale's own state ConfigMap could not be read or written.
    State,
    /// Not sent: this instance does not hold its context's lease (or the lease is too
    /// close to expiring for the write to end within it).
    NotLeading,
    Other,
}

impl TargetErrorKind {
    /// The stable label: `not_found`, `forbidden`, `unauthorized`, `conflict`,
    /// `throttled`, `server_error`, `timeout`, `unreachable`, `config`, `state`,
    /// `not_leading` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetErrorKind::NotFound => "not_found",
            TargetErrorKind::Forbidden => "forbidden",
            TargetErrorKind::Unauthorized => "unauthorized",
            TargetErrorKind::Conflict => "conflict",
            TargetErrorKind::Throttled => "throttled",
            TargetErrorKind::ServerError => "server_error",
            TargetErrorKind::Timeout => "timeout",
            TargetErrorKind::Unreachable => "unreachable",
            TargetErrorKind::Config => "config",
            TargetErrorKind::State => "state",
            TargetErrorKind::NotLeading => "not_leading",
            TargetErrorKind::Other => "other",
        }
    }
}

impl TargetError {
    /// A failure of `target` (`Kind/namespace/name`) described by `message`.
    pub fn new(target: impl Into<String>, kind: TargetErrorKind, message: impl Into<String>) -> TargetError {
        TargetError { target: target.into(), kind, message: message.into(), source: None }
    }

    /// The same failure with its typed cause, for [`Error::source`].
    pub fn caused_by(mut self, cause: impl Error + Send + Sync + 'static) -> TargetError {
        self.source = Some(Arc::new(cause));
        self
    }

    /// The stable label of [`TargetErrorKind`].
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    pub fn error_kind(&self) -> TargetErrorKind {
        self.kind
    }
}

/// A kube client error in sqscale's words: the API's own (`message (reason, code)`) for
/// a `Status` answer, kube's text and causes otherwise.
#[derive(Debug)]
pub struct KubeFailure(pub kube::Error);

impl std::fmt::Display for KubeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            kube::Error::Api(s) => write!(f, "{} ({}, {})", s.message, s.reason, s.code),
            other => other.fmt(f),
        }
    }
}

impl Error for KubeFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.0 {
            // The Status is the whole answer: nothing more to say.
            kube::Error::Api(_) => None,
            other => other.source(),
        }
    }
}

/// The kind of a kube client error.
pub fn kind_of(e: &kube::Error) -> TargetErrorKind {
    match e {
        kube::Error::Api(s) => match s.code {
            401 => TargetErrorKind::Unauthorized,
            403 => TargetErrorKind::Forbidden,
            404 => TargetErrorKind::NotFound,
            409 => TargetErrorKind::Conflict,
            429 => TargetErrorKind::Throttled,
            500..=599 => TargetErrorKind::ServerError,
            _ => TargetErrorKind::Other,
        },
        _ if timed_out(e) => TargetErrorKind::Timeout,
        kube::Error::HyperError(_) | kube::Error::Service(_) => TargetErrorKind::Unreachable,
        kube::Error::Auth(_) => TargetErrorKind::Unauthorized,
        _ => TargetErrorKind::Other,
    }
}

/// Whether a timeout anywhere in the chain ended the call: an I/O timeout (a connect
/// timeout, the OS's `ETIMEDOUT`, hyper-timeout's), hyper's own, or a tokio deadline.
fn timed_out(e: &(dyn Error + 'static)) -> bool {
    any_cause::<std::io::Error>(e, |io| io.kind() == std::io::ErrorKind::TimedOut)
        || any_cause::<hyper::Error>(e, hyper::Error::is_timeout)
        || any_cause::<tokio::time::error::Elapsed>(e, |_| true)
}

/// A [`TargetError`] for a failed kube call about `t` (a target, or a Job's
/// `Job/namespace/name`): `what` failed, in the API's words.
pub fn kube_error(t: &(impl std::fmt::Display + ?Sized), what: &str, e: kube::Error) -> TargetError {
    let kind = kind_of(&e);
    let failure = KubeFailure(e);
    let message = format!("{what}: {}", crate::error::chain(&failure));
    TargetError::new(t.to_string(), kind, message).caused_by(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("the object has been modified", "Conflict").with_code(code).boxed(),
        )
    }

    #[test]
    fn api_errors_are_classified_by_code_and_told_in_the_apis_words() {
        let t: crate::config::TargetRef = crate::config::TargetRef {
            kind: crate::config::TargetKind::Deployment,
            name: "d".into(),
            namespace: "n".into(),
        };
        let e = kube_error(&t, "patching /scale", status(409));
        assert_eq!(e.error_kind(), TargetErrorKind::Conflict);
        assert_eq!(e.to_string(), "Deployment/n/d: patching /scale: the object has been modified (Conflict, 409)");
        let kinds: Vec<_> = [401, 403, 404, 429, 503, 418].map(|c| kind_of(&status(c)).as_str()).into();
        assert_eq!(kinds, ["unauthorized", "forbidden", "not_found", "throttled", "server_error", "other"]);
    }

    /// A timeout is known by the I/O error's kind however deep it sits, whatever the
    /// text says; a reset is not a timeout.
    #[test]
    fn timeouts_are_known_by_type_not_text() {
        let wrapped = |io: std::io::Error| kube::Error::Service(Box::new(io));
        let silent = std::io::Error::new(std::io::ErrorKind::TimedOut, "gave up");
        assert_eq!(kind_of(&wrapped(silent)), TargetErrorKind::Timeout);
        let misleading = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "timed out? no: reset");
        assert_eq!(kind_of(&wrapped(misleading)), TargetErrorKind::Unreachable);
    }
}
