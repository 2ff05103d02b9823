//! Bearer credentials that refresh, for the life of the process.
//!
//! Every request of a kube context goes through one [`Client`](kube::Client): the lease,
//! the watches, reads, `/scale` writes and events. kube builds its `Authorization`
//! header once from the kubeconfig's user, so a rotated token (a kubeconfig rewritten by
//! `aws eks update-kubeconfig`, a projected ServiceAccount token, an exec plugin's
//! credential, an EKS token after 15 minutes) would leave every clone of that client
//! sending a dead token until a restart. So sqscale takes bearer tokens over: the
//! client's stack gets [`AuthLayer`], which stamps each request with the context's
//! current token from a shared [`Credentials`] cell, and a refresher task per context
//! replaces the token
//!
//! - before it expires: an exec credential's `expirationTimestamp`, an EKS token's
//!   [`eks::REFRESH_AFTER`](super::eks::REFRESH_AFTER);
//! - every [`FILE_REREAD`] for a `tokenFile` (as client-go re-reads it);
//! - and after any 401 with the token in force (at most once per [`MIN_REFRESH`]): the
//!   kubeconfig is read again, so a static token that was replaced in the file, a new
//!   `tokenFile`, or a re-run exec plugin takes effect on the next request.
//!
//! A burst of 401s is one refresh, and nothing the credential source does turns into a
//! loop: a fetch that fails, a new token that is refused before any request got through
//! with it (a user the cluster does not map), and a token that has already expired (or
//! is about to) are each fetched again after a backoff (1 s, doubling to 30 s), with one
//! warning per step naming the context.
//!
//! The request path never waits for a refresh and holds no lock across I/O: it reads the
//! current header, and a request that meets a 401 only wakes the refresher. Client
//! certificates, basic auth and auth providers stay with kube (nothing to take over).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Request, Response, StatusCode};
use kube::Config;
use kube::config::{AuthInfo, ExecConfig, KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::eks::Minter;

/// How often a `tokenFile` is read again (client-go caches it for a minute).
pub const FILE_REREAD: Duration = Duration::from_secs(60);
/// Repeated 401s refresh at most this often: a token that the new one cannot fix must
/// not turn into a loop of exec plugins.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A failed refresh is tried again after this, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// An exec plugin prints one small JSON object; more than this is not a credential (and
/// must not grow the daemon's memory without bound).
const MAX_EXEC_OUTPUT: usize = 64 * 1024;
/// Of a failed plugin's standard error, the first line, cut to this many characters, is
/// what goes into errors (and so into logs, `/status` and Events): enough to say why,
/// too little to carry a dump of its environment or a prompt's transcript.
const MAX_EXEC_STDERR: usize = 200;

/// How the refresher paces itself: [`MIN_REFRESH`] between fetches, and a backoff from
/// [`FIRST_RETRY`] doubling to [`MAX_RETRY`]. Tests shrink it.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub min_refresh: Duration,
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace { min_refresh: MIN_REFRESH, first_retry: FIRST_RETRY, max_retry: MAX_RETRY }
    }
}

/// Why a context's config or bearer token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("kubeconfig {}", .0.display())]
    ReadKubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    /// The kubeconfig has no usable context (`None`: its current-context).
    #[error("{}", match .0 { Some(c) => format!("kube context {c:?}"), None => "kubeconfig".to_owned() })]
    Context(Option<String>, #[source] kube::config::KubeconfigError),
    /// Neither a kubeconfig nor a cluster to be in: both reasons, side by side.
    #[error("no kubeconfig ({0}; set KUBECONFIG or [kubernetes] kubeconfig) and not in a cluster ({1})")]
    Nowhere(kube::config::KubeconfigError, kube::config::InClusterError),
    #[error(transparent)]
    Eks(#[from] super::eks::EksError),
    #[error("no credential within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("tokenFile {0}")]
    ReadTokenFile(String, #[source] std::io::Error),
    #[error("tokenFile {0} is empty")]
    EmptyTokenFile(String),
    #[error("the kubeconfig's user no longer has a token, tokenFile or exec plugin")]
    NoToken,
    #[error("exec plugin without a command")]
    ExecWithoutCommand,
    #[error("exec plugin {0}")]
    ExecInfo(String, #[source] serde_json::Error),
    #[error("exec plugin {0}: no answer within {within}", within = humantime::format_duration(*.1))]
    ExecTimeout(String, Duration),
    #[error("exec plugin {0}")]
    ExecStart(String, #[source] std::io::Error),
    #[error("exec plugin {0} failed ({1}): {2}")]
    ExecFailed(String, std::process::ExitStatus, String),
    #[error("exec plugin {0}: more than {kib} KiB of output", kib = MAX_EXEC_OUTPUT / 1024)]
    ExecOutputTooLarge(String),
    #[error("exec plugin {0}: reading its output")]
    ExecRead(String, #[source] std::io::Error),
    #[error("exec plugin {0}: its output is not an ExecCredential")]
    ExecOutput(String, #[source] serde_json::Error),
    #[error("exec plugin {0}: no status in its output")]
    ExecNoStatus(String),
    #[error("exec plugin {0} gave {1}; sqscale needs a bearer token from it")]
    ExecNoToken(String, &'static str),
    #[error("exec plugin {0}: expiry {1:?}")]
    ExecExpiry(String, String, #[source] jiff::Error),
    #[error("{0}: the token is not a valid header value")]
    InvalidToken(String),
}

/// Where a context's kube config comes from: the file (or `$KUBECONFIG`, or in-cluster)
/// and the context in it. Read again on every refresh.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// `None`: `$KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `None`: the kubeconfig's current-context.
    pub context: Option<String>,
}

impl ConfigSource {
    /// Loads the context's config the way kubectl resolves it.
    pub async fn load(&self) -> Result<Config, AuthError> {
        let context = self.context.as_deref();
        let options = KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
        let named = |e| AuthError::Context(self.context.clone(), e);
        // The proxy is chosen again for the API server (see `proxy::set_kube_proxy`: kube's
        // loader checks NO_PROXY against the proxy, not the server).
        // The file(s) are read once: the config is built from what was read, and the
        // proxy chosen from the same.
        let kc = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).map_err(|e| AuthError::ReadKubeconfig(path.clone(), e))?,
            // `$KUBECONFIG` (merged) or `~/.kube/config`, as `Config::from_kubeconfig` reads.
            None => match Kubeconfig::read() {
                Ok(kc) => kc,
                // No kubeconfig at all and no context asked for: in-cluster, as kubectl.
                Err(e) if context.is_none() => return Config::incluster().map_err(|ie| AuthError::Nowhere(e, ie)),
                Err(e) => return Err(named(e)),
            },
        };
        let mut config = match Config::from_custom_kubeconfig(kc.clone(), &options).await {
            Ok(config) => config,
            // As before: without a file named and a context asked for, a kubeconfig that
            // names no usable context falls back to in-cluster too.
            Err(e) if self.kubeconfig.is_none() && context.is_none() => {
                return Config::incluster().map_err(|ie| AuthError::Nowhere(e, ie));
            }
            Err(e) => return Err(named(e)),
        };
        crate::proxy::set_kube_proxy(&mut config, Some(&kc), context);
        Ok(config)
    }
}

/// How a context authenticates, once sqscale has taken its bearer token over.
pub enum Bearer {
    /// The kubeconfig's user: a `token`, a `tokenFile` or a token-giving exec plugin.
    Kubeconfig(ConfigSource),
    /// `[kubernetes] eks_cluster`: tokens minted in-process.
    Eks(Arc<Minter>),
}

/// Whether sqscale refreshes this user's credential itself (a bearer token of some kind)
/// or leaves it to kube (client certificates, basic auth, auth providers, none).
pub fn takes_over(user: &AuthInfo) -> bool {
    user.token.is_some() || user.token_file.is_some() || user.exec.is_some()
}

/// Removes what [`AuthLayer`] provides from a user, keeping impersonation and the rest.
pub fn strip(user: &mut AuthInfo) {
    user.token = None;
    user.token_file = None;
    user.exec = None;
}

/// A token and when it must be replaced.
#[derive(Debug)]
pub struct Token {
    pub value: String,
    /// Replace it at this time (before it expires), if it has a lifetime.
    pub refresh_at: Option<SystemTime>,
}

impl Bearer {
    /// Fetches a fresh token, within `timeout` (a kubeconfig is read again).
    pub async fn fetch(&self, timeout: Duration) -> Result<Token, AuthError> {
        self.fetch_with(None, timeout).await
    }

    /// Fetches a token, within `timeout`, from `loaded` when given: the config the client
    /// is being built from, so a first token does not read the kubeconfig twice.
    pub async fn fetch_with(&self, loaded: Option<&Config>, timeout: Duration) -> Result<Token, AuthError> {
        let fetch = async {
            match (self, loaded) {
                (Bearer::Eks(minter), _) => {
                    let value = minter.mint().await?;
                    Ok(Token { value, refresh_at: Some(SystemTime::now() + minter.refresh_after()) })
                }
                (Bearer::Kubeconfig(_), Some(config)) => {
                    token_of(&config.auth_info, &config.cluster_url, timeout).await
                }
                (Bearer::Kubeconfig(source), None) => {
                    let config = source.load().await?;
                    token_of(&config.auth_info, &config.cluster_url, timeout).await
                }
            }
        };
        tokio::time::timeout(timeout, fetch).await.unwrap_or(Err(AuthError::Timeout(timeout)))
    }
}

/// The bearer token of a kubeconfig user: its `token`, its `tokenFile` read now, or its
/// exec plugin run now (killed if it outlives `timeout`).
async fn token_of(user: &AuthInfo, server: &hyper::Uri, timeout: Duration) -> Result<Token, AuthError> {
    if let Some(exec) = &user.exec {
        return run_exec(exec, server, timeout).await;
    }
    if let Some(file) = &user.token_file {
        let value = tokio::fs::read_to_string(file).await.map_err(|e| AuthError::ReadTokenFile(file.clone(), e))?;
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(AuthError::EmptyTokenFile(file.clone()));
        }
        return Ok(Token { value, refresh_at: Some(SystemTime::now() + FILE_REREAD) });
    }
    match &user.token {
        Some(token) => Ok(Token { value: token.expose_secret().trim().to_owned(), refresh_at: None }),
        None => Err(AuthError::NoToken),
    }
}

/// What an exec plugin prints (client.authentication.k8s.io ExecCredential).
#[derive(serde::Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
    client_certificate_data: Option<String>,
}

/// Runs a kubeconfig exec plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`, …) as
/// client-go does, never interactively: a daemon has no one to answer a prompt.
async fn run_exec(exec: &ExecConfig, server: &hyper::Uri, timeout: Duration) -> Result<Token, AuthError> {
    let command = exec.command.as_deref().ok_or(AuthError::ExecWithoutCommand)?;
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(exec.args.iter().flatten());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    for name in exec.drop_env.iter().flatten() {
        cmd.env_remove(name);
    }
    let mut spec = serde_json::json!({ "interactive": false });
    if exec.provide_cluster_info {
        spec["cluster"] = match &exec.cluster {
            Some(cluster) => serde_json::to_value(cluster).map_err(|e| AuthError::ExecInfo(command.to_owned(), e))?,
            None => serde_json::json!({ "server": server.to_string() }),
        };
    }
    let info = serde_json::json!({
        "apiVersion": exec.api_version.as_deref().unwrap_or("client.authentication.k8s.io/v1"),
        "kind": "ExecCredential",
        "spec": spec,
    });
    cmd.env("KUBERNETES_EXEC_INFO", info.to_string());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, capped_output(command, cmd))
        .await
        .map_err(|_| AuthError::ExecTimeout(command.to_owned(), timeout))??;
    if !output.status.success() {
        let stderr = first_line(&String::from_utf8_lossy(&output.stderr), MAX_EXEC_STDERR);
        return Err(AuthError::ExecFailed(command.to_owned(), output.status, stderr));
    }
    let credential: ExecCredential =
        serde_json::from_slice(&output.stdout).map_err(|e| AuthError::ExecOutput(command.to_owned(), e))?;
    let status = credential.status.ok_or_else(|| AuthError::ExecNoStatus(command.to_owned()))?;
    let Some(value) = status.token.filter(|t| !t.is_empty()) else {
        let what = if status.client_certificate_data.is_some() { "a client certificate" } else { "no token" };
        return Err(AuthError::ExecNoToken(command.to_owned(), what));
    };
    let refresh_at = match status.expiration_timestamp {
        Some(at) => {
            let parsed = at.parse::<jiff::Timestamp>();
            let at = parsed.map_err(|e| AuthError::ExecExpiry(command.to_owned(), at.clone(), e))?;
            Some(refresh_time(SystemTime::from(at), SystemTime::now()))
        }
        None => None,
    };
    Ok(Token { value, refresh_at })
}

/// Runs `cmd` to its end, keeping at most [`MAX_EXEC_OUTPUT`] of its standard output and
/// of its standard error, both read at once so a plugin that fills one pipe cannot block
/// on it. More than that on standard output is an error at once (the plugin is killed
/// on drop); standard error beyond it is read and thrown away.
async fn capped_output(command: &str, mut cmd: tokio::process::Command) -> Result<std::process::Output, AuthError> {
    use tokio::io::{AsyncRead, AsyncReadExt};
    /// Reads `pipe` to its end, keeping [`MAX_EXEC_OUTPUT`] bytes; `Ok(None)`: more came.
    async fn keep(pipe: Option<impl AsyncRead + Unpin>, drain: bool) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let Some(mut pipe) = pipe else { return Ok(Some(buf)) };
        // One byte over the cap tells "exactly at the cap" from "more".
        (&mut pipe).take(MAX_EXEC_OUTPUT as u64 + 1).read_to_end(&mut buf).await?;
        if buf.len() <= MAX_EXEC_OUTPUT {
            return Ok(Some(buf));
        }
        if !drain {
            return Ok(None);
        }
        tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await?;
        buf.truncate(MAX_EXEC_OUTPUT);
        Ok(Some(buf))
    }
    let mut child = cmd.spawn().map_err(|e| AuthError::ExecStart(command.to_owned(), e))?;
    let read = |e| AuthError::ExecRead(command.to_owned(), e);
    let stdout = keep(child.stdout.take(), false);
    let stderr = keep(child.stderr.take(), true);
    tokio::pin!(stdout, stderr);
    // Standard output first to its end (or its cap), standard error alongside it.
    let (stdout, stderr) = match futures::future::select(stdout, stderr).await {
        futures::future::Either::Left((out, stderr)) => match out.map_err(read)? {
            Some(out) => (out, stderr.await.map_err(read)?),
            None => return Err(AuthError::ExecOutputTooLarge(command.to_owned())),
        },
        futures::future::Either::Right((err, stdout)) => match stdout.await.map_err(read)? {
            Some(out) => (out, err.map_err(read)?),
            None => return Err(AuthError::ExecOutputTooLarge(command.to_owned())),
        },
    };
    let status = child.wait().await.map_err(read)?;
    Ok(std::process::Output { status, stdout, stderr: stderr.unwrap_or_default() })
}

/// The first non-empty line of `text`, trimmed and cut to `max` characters (marked `…`).
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// When to replace a credential that expires at `expiry`: a fifth of its remaining
/// lifetime early, at most a minute early, and never in the past.
fn refresh_time(expiry: SystemTime, now: SystemTime) -> SystemTime {
    let left = expiry.duration_since(now).unwrap_or_default();
    expiry - (left / 5).min(Duration::from_secs(60))
}

/// A context's current token, shared by its client's requests and its refresher.
pub struct Credentials {
    /// What is being authenticated, for logs: the context's name.
    pub name: String,
    current: RwLock<Option<(HeaderValue, u64)>>,
    generation: AtomicU64,
    /// The newest generation a request met a 401 with while it was in force.
    rejected_generation: AtomicU64,
    /// The newest generation a request got an answer other than 401 with.
    accepted_generation: AtomicU64,
    /// Woken by a request that met a 401 with the token in force.
    rejected: tokio::sync::Notify,
}

impl Credentials {
    pub fn new(name: String) -> Credentials {
        Credentials {
            name,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            rejected_generation: AtomicU64::new(0),
            accepted_generation: AtomicU64::new(0),
            rejected: Default::default(),
        }
    }

    /// Puts `token` in force for every request from now on.
    pub fn set(&self, token: &str) -> Result<(), AuthError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| AuthError::InvalidToken(self.name.clone()))?;
        value.set_sensitive(true);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((value, generation));
        Ok(())
    }

    fn current(&self) -> Option<(HeaderValue, u64)> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A request sent with `generation` got a 401: if that token is still in force, it
    /// is dead, so wake the refresher (a request that raced a refresh changes nothing).
    fn rejected(&self, generation: u64) {
        if generation == self.generation.load(Ordering::SeqCst) {
            self.rejected_generation.fetch_max(generation, Ordering::SeqCst);
            self.rejected.notify_one();
        }
    }

    /// A request sent with `generation` got through (any answer but a 401).
    fn accepted(&self, generation: u64) {
        self.accepted_generation.fetch_max(generation, Ordering::SeqCst);
    }
}

/// Keeps `credentials` fresh from `bearer` until dropped (the context's client is gone).
/// `first` is the token fetched when the client was built.
pub async fn refresh(credentials: Arc<Credentials>, bearer: Bearer, first: Token, timeout: Duration) {
    refresh_paced(credentials, bearer, first, timeout, Pace::default()).await
}

/// [`refresh`] at `pace`.
pub async fn refresh_paced(credentials: Arc<Credentials>, bearer: Bearer, first: Token, timeout: Duration, pace: Pace) {
    let name = &credentials.name;
    let mut backoff = Backoff { pace, next: pace.first_retry, until: Instant::now() };
    let mut refresh_at = backoff.usable_until(name, first.refresh_at);
    // When the last fetch ran, and whether it gave the token in force.
    let mut last = Instant::now();
    let mut fetched = true;
    loop {
        let due = async {
            match refresh_at {
                Some(at) => tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = due => "due",
            _ = credentials.rejected.notified() => "rejected",
        };
        let in_force = credentials.generation.load(Ordering::SeqCst);
        let accepted = fetched && credentials.accepted_generation.load(Ordering::SeqCst) >= in_force;
        if accepted {
            // The token in force got through: whatever went wrong before is over.
            backoff.reset();
        }
        if why == "rejected" {
            if credentials.rejected_generation.load(Ordering::SeqCst) < in_force {
                // 401s of a burst that outlasted the refresh they woke, met with the
                // token already replaced: nothing more to do.
                continue;
            }
            if fetched && !accepted && !backoff.waiting() {
                // Refused before any request got through with it (a user the cluster
                // does not map, a plugin that hands out a dead token): fetching again
                // at once would give the same.
                let wait = backoff.step();
                tracing::warn!(context = %name, retry_in = ?wait, "the API server rejected the new Kubernetes credential (401); fetching another after a pause");
            }
        }
        // A burst of 401s (every watch and poll at once) is one refresh.
        tokio::time::sleep_until((last + pace.min_refresh).max(backoff.until)).await;
        last = Instant::now();
        let fetch = bearer.fetch(timeout).await;
        match fetch.and_then(|token| credentials.set(&token.value).map(|()| token)) {
            Ok(token) => {
                fetched = true;
                tracing::debug!(context = %name, why, "refreshed the Kubernetes credential");
                refresh_at = backoff.usable_until(name, token.refresh_at);
            }
            Err(e) => {
                fetched = false;
                let error = crate::error::chain(&e);
                let wait = backoff.step();
                tracing::warn!(context = %name, why, %error, retry_in = ?wait, "refreshing the Kubernetes credential failed; the old one stays in use");
                refresh_at = Some(SystemTime::now() + wait);
            }
        }
    }
}

/// The refresher's backoff: each step waits twice the last, up to the pace's cap; no
/// fetch starts before `until`.
struct Backoff {
    pace: Pace,
    next: Duration,
    until: Instant,
}

impl Backoff {
    /// Takes a step: no fetch for its length (returned).
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.pace.max_retry);
        self.until = Instant::now() + wait;
        wait
    }

    fn reset(&mut self) {
        self.next = self.pace.first_retry;
    }

    fn waiting(&self) -> bool {
        self.until > Instant::now()
    }

    /// When to fetch again a token due at `refresh_at`: then, unless that is sooner than
    /// the next backoff step (an `expirationTimestamp` already past, or about to be),
    /// which would run the plugin in a loop: then after a step, with a warning.
    fn usable_until(&mut self, name: &str, refresh_at: Option<SystemTime>) -> Option<SystemTime> {
        let now = SystemTime::now();
        match refresh_at {
            Some(at) if at < now + self.next => {
                let wait = self.step();
                tracing::warn!(context = %name, retry_in = ?wait, "the new Kubernetes credential has expired or is about to (its expirationTimestamp); using it, and fetching another after a pause");
                Some(now + wait)
            }
            other => other,
        }
    }
}

/// The tower layer that stamps requests with the context's current token.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Credentials>);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, credentials: self.0.clone() }
    }
}

pub struct Auth<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S, B, ReqBody> tower_service::Service<Request<ReqBody>> for Auth<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // No token yet (the first fetch failed): send none; the 401 wakes the refresher.
        let generation = match self.credentials.current() {
            Some((value, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, value);
                generation
            }
            None => 0,
        };
        let credentials = self.credentials.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                credentials.rejected(generation);
            } else {
                credentials.accepted(generation);
            }
            Ok(response)
        })
    }
}

/// The context a kubeconfig makes current (for naming the default context).
pub fn current_context(kubeconfig: Option<&Path>) -> Option<String> {
    let kc = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).ok()?,
        None => Kubeconfig::read().ok()?,
    };
    kc.current_context.filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_replaced_a_little_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // An hour left: a minute early (the cap). 100 s left: a fifth of it, 20 s early.
        assert_eq!(refresh_time(now + Duration::from_secs(3600), now), now + Duration::from_secs(3540));
        assert_eq!(refresh_time(now + Duration::from_secs(100), now), now + Duration::from_secs(80));
        // Already expired: now.
        assert_eq!(refresh_time(now - Duration::from_secs(5), now), now - Duration::from_secs(5));
    }

    #[test]
    fn a_401_wakes_the_refresher_only_for_the_token_in_force() {
        let c = Credentials::new("ctx".into());
        c.set("a").unwrap();
        let (value, generation) = c.current().unwrap();
        assert_eq!(value, "Bearer a");
        assert!(value.is_sensitive());
        c.set("b").unwrap();
        // A request sent with "a" answered 401 after "b" is in force: no refresh.
        c.rejected(generation);
        let woken = futures::FutureExt::now_or_never(c.rejected.notified());
        assert!(woken.is_none());
        c.rejected(generation + 1);
        assert!(futures::FutureExt::now_or_never(c.rejected.notified()).is_some());
    }

    #[tokio::test]
    async fn an_exec_plugin_is_run_with_exec_info_and_its_expiry_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let script = dir.join("plugin.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$KUBERNETES_EXEC_INFO\" > \"$(dirname \"$0\")/info.json\"\n\
             printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
             \"status\":{\"token\":\"t-%s\",\"expirationTimestamp\":\"2099-01-01T00:00:00Z\"}}' \"$FLAVOUR\"\n",
        )
        .unwrap();
        let exec: ExecConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "sh",
            "args": [script.to_str().unwrap()],
            "env": [{"name": "FLAVOUR", "value": "mint"}],
            "interactiveMode": "Never",
        }))
        .unwrap();
        let server: hyper::Uri = "https://127.0.0.1:6443".parse().unwrap();
        let token = run_exec(&exec, &server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(token.value, "t-mint");
        let expiry = SystemTime::from("2099-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap());
        assert_eq!(token.refresh_at, Some(expiry - Duration::from_secs(60)));
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("info.json")).unwrap()).unwrap();
        assert_eq!(info["kind"], "ExecCredential");
        assert_eq!(info["spec"]["interactive"], false);

        // A plugin that hangs is killed at the deadline; one that fails says why.
        let hang: ExecConfig = serde_json::from_value(serde_json::json!({"command": "sleep", "args": ["30"]})).unwrap();
        let started = std::time::Instant::now();
        let e = run_exec(&hang, &server, Duration::from_millis(300)).await.unwrap_err().to_string();
        assert!(e.contains("no answer within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let fail: ExecConfig =
            serde_json::from_value(serde_json::json!({"command": "sh", "args": ["-c", "echo denied >&2; exit 3"]}))
                .unwrap();
        let e = run_exec(&fail, &server, Duration::from_secs(10)).await.unwrap_err().to_string();
        assert!(e.contains("denied") && e.contains("failed"), "{e}");
    }

    #[tokio::test]
    async fn an_exec_plugins_output_is_capped_and_only_the_first_line_of_its_stderr_kept() {
        let server: hyper::Uri = "https://127.0.0.1:6443".parse().unwrap();
        let exec = |script: &str| -> ExecConfig {
            serde_json::from_value(serde_json::json!({"command": "sh", "args": ["-c", script]})).unwrap()
        };
        // 100 KiB of output, then an exit: too much, whatever it says.
        let big = exec("head -c 102400 /dev/zero | tr '\\0' x");
        let e = run_exec(&big, &server, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(e, AuthError::ExecOutputTooLarge(_)), "{e}");
        assert!(e.to_string().contains("more than 64 KiB of output"), "{e}");
        // Output without end: the same error, at once rather than at the deadline.
        let e = run_exec(&exec("yes"), &server, Duration::from_secs(60)).await.unwrap_err();
        assert!(matches!(e, AuthError::ExecOutputTooLarge(_)), "{e}");
        // Exactly 64 KiB is read (and is not JSON).
        let at_cap = exec("head -c 65536 /dev/zero | tr '\\0' ' '");
        let e = run_exec(&at_cap, &server, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(e, AuthError::ExecOutput(..)), "{e}");
        // A failure's standard error: its first line, cut short; never the rest.
        let long = "x".repeat(5000);
        let noisy = exec(&format!(
            "printf '\\n  no such profile: {long}\\nAWS_SECRET_ACCESS_KEY=hunter2\\n' >&2; head -c 200000 /dev/zero >&2; exit 3"
        ));
        let e = run_exec(&noisy, &server, Duration::from_secs(10)).await.unwrap_err().to_string();
        assert!(e.contains("failed") && e.contains("no such profile: xxx"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
    }
}

/// The refresher against an exec plugin that counts its runs: what a burst of 401s, a
/// token the server always refuses and an expired `expirationTimestamp` cost. Real
/// processes, so real time, at a shrunk pace (tokio's paused clock would jump the
/// plugin's own timeout while it runs).
#[cfg(test)]
mod refresher_tests {
    use super::*;

    const PACE: Pace = Pace {
        min_refresh: Duration::from_millis(20),
        first_retry: Duration::from_millis(100),
        max_retry: Duration::from_millis(800),
    };

    /// A kubeconfig whose user runs a plugin that appends a line to `runs` per run and
    /// gives the token `t-N` expiring at `expiry`.
    struct Plugin {
        _dir: tempfile::TempDir,
        runs: PathBuf,
        bearer: Option<Bearer>,
    }

    impl Plugin {
        fn new(expiry: &str) -> Plugin {
            let dir = tempfile::tempdir().unwrap();
            let runs = dir.path().join("runs");
            let script = dir.path().join("plugin.sh");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh
echo run >> '{runs}'
n=$(wc -l < '{runs}')
\
                     printf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
                     \"status\":{{\"token\":\"t-%s\",\"expirationTimestamp\":\"{expiry}\"}}}}' $n\n",
                    runs = runs.display()
                ),
            )
            .unwrap();
            let kubeconfig = dir.path().join("kubeconfig");
            let kc = serde_json::json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "sh", "args": [script.to_str().unwrap()], "interactiveMode": "Never"
                }}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx"
            });
            std::fs::write(&kubeconfig, kc.to_string()).unwrap();
            let bearer = Bearer::Kubeconfig(ConfigSource { kubeconfig: Some(kubeconfig), context: None });
            Plugin { _dir: dir, runs, bearer: Some(bearer) }
        }

        fn runs(&self) -> usize {
            std::fs::read_to_string(&self.runs).map(|t| t.lines().count()).unwrap_or(0)
        }

        /// Starts the refresher with `t-0` in force (fetched at build time, due at `due`).
        fn start(&mut self, due: Option<SystemTime>) -> (Arc<Credentials>, tokio::task::JoinHandle<()>) {
            let credentials = Arc::new(Credentials::new("ctx".into()));
            credentials.set("t-0").unwrap();
            let first = Token { value: "t-0".into(), refresh_at: due };
            let bearer = self.bearer.take().unwrap();
            let task = tokio::spawn(refresh_paced(credentials.clone(), bearer, first, Duration::from_secs(10), PACE));
            (credentials, task)
        }
    }

    fn token(c: &Credentials) -> String {
        c.current().unwrap().0.to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_burst_of_401s_runs_the_plugin_once() {
        let mut plugin = Plugin::new("2099-01-01T00:00:00Z");
        let (c, task) = plugin.start(None);
        // The token worked for a while, then every request sent with it meets a 401,
        // their answers coming in over 400 ms: before, during and after the refresh.
        c.accepted(1);
        for _ in 0..40 {
            c.rejected(1);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(plugin.runs(), 1);
        assert_eq!(token(&c), "Bearer t-1");
        task.abort();
    }

    #[tokio::test]
    async fn a_token_the_server_always_refuses_is_fetched_again_with_a_backoff() {
        let mut plugin = Plugin::new("2099-01-01T00:00:00Z");
        let (c, task) = plugin.start(None);
        // Every request meets a 401, whatever token it carries (a user aws-auth does not
        // map): 2 s of requests every 10 ms.
        for _ in 0..200 {
            c.rejected(c.generation.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Steps of 0.1, 0.2, 0.4, 0.8, 0.8 s: 4 or 5 runs (20 ms apart, it was ~100).
        let runs = plugin.runs();
        assert!((2..=6).contains(&runs), "{runs} runs");
        task.abort();
    }

    #[tokio::test]
    async fn an_expired_expiration_timestamp_is_fetched_again_with_a_backoff() {
        let mut plugin = Plugin::new("2000-01-01T00:00:00Z");
        // The first token is already past its time too.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
        let (c, task) = plugin.start(Some(past));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let runs = plugin.runs();
        assert!((2..=6).contains(&runs), "{runs} runs");
        // Each new token is put in force all the same (the server may still take it).
        assert!(token(&c).starts_with("Bearer t-") && token(&c) != "Bearer t-0", "{}", token(&c));
        task.abort();
    }
}

/// The layer in front of a mock service: the header it stamps, and what a 401 does.
#[cfg(test)]
mod layer_tests {
    use super::*;
    use tower_layer::Layer;
    use tower_service::Service;

    #[tokio::test]
    async fn the_layer_stamps_the_token_in_force_and_a_401_wakes_the_refresher() {
        let credentials = Arc::new(Credentials::new("ctx".into()));
        credentials.set("one").unwrap();
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
        let mut service = AuthLayer(credentials.clone()).layer(mock);
        for (token, code) in [("one", 401), ("two", 200)] {
            futures::future::poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
            let response = service.call(Request::new(()));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.headers()[AUTHORIZATION], format!("Bearer {token}").as_str());
            send.send_response(Response::builder().status(code).body(()).unwrap());
            assert_eq!(response.await.unwrap().status(), code);
            let woken = futures::FutureExt::now_or_never(credentials.rejected.notified()).is_some();
            assert_eq!(woken, code == 401, "token {token}");
            // The refresher's new token is in force for the next request.
            credentials.set("two").unwrap();
        }
    }
}
