//! The HTTP listener at `[server] listen`: `/metrics` (Prometheus text), `/healthz`
//! (every rule keeps polling), `/readyz` (rules loaded, first round done, leading) and
//! `/status` (every rule's figures, and the changed keys that wait for a restart, as
//! JSON). It shares the daemon's shutdown.
//!
//! On a shared bastion any local user can connect, so the listener bounds what a
//! connection may hold ([`Limits`]): a request's head must arrive within
//! [`HEADER_READ_TIMEOUT`], which is also as long as a kept-alive connection may sit idle,
//! and at most [`MAX_CONNECTIONS`] are served at once; one more is closed as soon as it
//! is accepted. A flood of idle or half-sent connections thus cannot use up the
//! daemon's file descriptors (which its watches and SQS connections need) or hold its
//! runtime. hyper's own HTTP/1 settings do the timing (axum's `serve` sets no timer, so
//! hyper's header timeout never fired there).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::Observer;

/// How late beyond two polling intervals a rule may be before `/healthz` fails: two
/// call timeouts plus margin.
pub const HEALTH_SLACK: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's head, and may keep a connection idle
/// between requests. A scrape or `sqscale status` sends its head at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: scrapers, health checks and `sqscale status` need a
/// handful.
pub const MAX_CONNECTIONS: usize = 64;
/// After an accept error (out of file descriptors, say), wait this long before the next
/// accept rather than spin on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What one connection, and all of them, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For a request's head to arrive, and for a kept-alive connection to sit idle.
    pub header_read: Duration,
    /// Connections served at once; more are closed when accepted.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { header_read: HEADER_READ_TIMEOUT, connections: MAX_CONNECTIONS }
    }
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    observer: Arc<Observer>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router(observer), shutdown, Limits::default()).await
}

/// Serves `app` within `limits` until `shutdown` fires, then lets the requests in
/// progress finish (for at most `limits.header_read`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timeout runs from the moment hyper waits for a request's head, so it
    // also closes a connection left idle between requests.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a connection to the listener");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once, which a client sees as a reset or an empty
            // answer and may try again.
            tracing::debug!(max = limits.connections, "too many connections to the listener; closing one");
            drop(stream);
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(limits.header_read, connections.wait()).await;
    Ok(())
}

pub fn router(observer: Arc<Observer>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(observer)
}

async fn metrics(State(o): State<Arc<Observer>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], o.encode_metrics())
        .into_response()
}

fn check(result: Result<(), crate::status::NotReady>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(o): State<Arc<Observer>>) -> Response {
    check(o.health(HEALTH_SLACK))
}

async fn readyz(State(o): State<Arc<Observer>>) -> Response {
    check(o.readiness())
}

async fn status(State(o): State<Arc<Observer>>) -> Response {
    let mut body = serde_json::json!({
        "rules": o.statuses(),
        "restart_required": o.restart_required(),
        "state": o.state(),
    });
    if let Some(election) = o.election() {
        body["leader_election"] = serde_json::json!(election);
    }
    if let Some(rejected) = o.rejected_reload() {
        body["reload_rejected"] = serde_json::json!(rejected);
    }
    let groups = o.group_statuses();
    if !groups.is_empty() {
        body["groups"] = serde_json::json!(groups);
    }
    let jobs = o.job_statuses();
    if !jobs.is_empty() {
        body["jobs"] = serde_json::json!(jobs);
    }
    let orphans = o.orphaned_jobs();
    if !orphans.is_empty() {
        body["orphaned_jobs"] = serde_json::json!(orphans);
    }
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Whether the server has closed `conn` (EOF or a reset) within `within`.
    async fn closed(conn: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, conn.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                // An answer (a 408, say): read on to the close.
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    /// A flood of idle and half-sent connections: those over the cap are closed at once,
    /// the rest once the header timeout passes; a task on the same (single) thread keeps
    /// its pace, and the listener answers again afterwards.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flood_of_slow_connections_is_capped_and_timed_out() {
        let limits = Limits { header_read: Duration::from_secs(3), connections: 8 };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_with(listener, app, shutdown.clone(), limits));
        // A stand-in for the polls: a tick every 10 ms on the same thread.
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });

        // 8 connections that send half a head, and 32 more that send nothing.
        let mut held = Vec::new();
        for _ in 0..limits.connections {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            held.push(conn);
        }
        // Let the server take them all before the extra ones come.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = Vec::new();
        for _ in 0..32 {
            extra.push(TcpStream::connect(addr).await.unwrap());
        }
        // The extra ones are closed at once, not at the header timeout (3 s).
        for conn in &mut extra {
            assert!(closed(conn, Duration::from_secs(1)).await, "a connection over the cap stayed open");
        }
        let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
        // The half-sent ones are closed once the header timeout passes.
        for conn in &mut held {
            assert!(closed(conn, Duration::from_secs(10)).await, "a half-sent head kept its connection");
        }
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > before, "the ticker stalled");

        // A kept-alive connection is closed once idle for the header timeout.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert!(closed(&mut kept, Duration::from_secs(10)).await, "an idle kept-alive connection stayed open");

        // With the flood gone, requests are answered.
        drop(held);
        assert!(fetch(addr, "/ok").await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
        server.await.unwrap().unwrap();
        ticker.abort();
    }
}
