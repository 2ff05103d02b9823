//! `sqscale status` and `sqscale health`: the running daemon's `/status` and `/healthz`,
//! asked over HTTP and shown as a table.

use super::*;

/// `/status` of a running daemon.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct Status {
    pub rules: Vec<RuleStatus>,
    /// Keys whose change waits for a restart (absent from older daemons).
    #[serde(default)]
    pub restart_required: Vec<String>,
    /// The last reload, if it was rejected (absent when it applied, and from older
    /// daemons).
    #[serde(default)]
    pub reload_rejected: Option<RejectedReload>,
    /// With leader election: who this instance is and who leads (absent from older
    /// daemons, and without leader election).
    #[serde(default)]
    pub leader_election: Option<ElectionStatus>,
    /// Each context's state ConfigMap and its size (absent from older daemons).
    #[serde(default)]
    pub state: Vec<crate::workload::state::StateSize>,
    /// The `[[group]]`s (absent from older daemons, and without groups).
    #[serde(default)]
    pub groups: Vec<crate::group::GroupStatus>,
    /// The `[[job]]` rules (absent from older daemons).
    #[serde(default)]
    pub jobs: Vec<JobRuleStatus>,
    /// Jobs of job rules that no longer run (absent from older daemons).
    #[serde(default)]
    pub orphaned_jobs: Vec<OrphanedJob>,
}

/// Why `sqscale status` or `sqscale health` got no good answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{0}: not a URL")]
    Url(String, #[source] hyper::http::uri::InvalidUri),
    #[error("{0}: only http:// is served")]
    Scheme(String),
    #[error("{0}")]
    Request(String, #[source] hyper_util::client::legacy::Error),
    #[error("{0}: reading the answer")]
    Body(String, #[source] hyper::Error),
    #[error("{0}: no answer within {1}s")]
    Timeout(String, u64),
    /// An answer other than 200: the status line and what the daemon said.
    #[error("{url}: {status}{}", if said.is_empty() { String::new() } else { format!(": {said}") })]
    Refused { url: String, status: hyper::StatusCode, said: String },
    #[error("{0}: not a sqscale /status answer")]
    NotStatus(String, #[source] serde_json::Error),
}

/// GETs `path` from a running daemon at `base` (`http://127.0.0.1:9464`), waiting at
/// most `timeout` for the whole answer: its status and body, and the URL asked.
async fn get(
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<(hyper::StatusCode, hyper::body::Bytes, String), AskError> {
    use http_body_util::BodyExt;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| AskError::Url(url.clone(), e))?;
    if uri.scheme_str() != Some("http") {
        return Err(AskError::Scheme(url));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let answer = async {
        let response = client.get(uri).await.map_err(|e| AskError::Request(url.clone(), e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| AskError::Body(url.clone(), e))?.to_bytes();
        Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| AskError::Timeout(url.clone(), timeout.as_secs()))??;
    Ok((status, body, url))
}

/// Fetches `/status` from a running daemon at `base` (`http://127.0.0.1:9464`).
pub async fn fetch(base: &str) -> Result<Status, AskError> {
    let (status, body, url) = get(base, "/status", Duration::from_secs(5)).await?;
    if !status.is_success() {
        return Err(AskError::Refused { url, status, said: String::from_utf8_lossy(&body).trim().to_owned() });
    }
    serde_json::from_slice::<Status>(&body).map_err(|e| AskError::NotStatus(url, e))
}

/// Asks a running daemon at `base` for `/healthz` within `timeout`: `Ok` with its
/// answer when that is 200, else why not.
pub async fn check_health(base: &str, timeout: Duration) -> Result<String, AskError> {
    let (status, body, url) = get(base, "/healthz", timeout).await?;
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if status == hyper::StatusCode::OK { Ok(text) } else { Err(AskError::Refused { url, status, said: text }) }
}

/// Who this instance is in the leader election and who leads, above the table: a
/// standby's table shows the figures of its last turn as a leader (a cold standby
/// polls nothing), so it must say that it is one.
pub fn election_lines(e: &ElectionStatus) -> String {
    let mut out = String::new();
    let role = if e.standby { format!("a {} standby", e.standby_mode) } else { "the leader".to_owned() };
    out.push_str(&format!("instance {}: {role}\n", e.identity));
    for c in &e.contexts {
        let context = c.context.as_deref().unwrap_or("(default context)");
        let leader = match (&c.leader, c.leading) {
            (_, true) => "this instance".to_owned(),
            (Some(l), false) => l.clone(),
            (None, false) => "no instance yet".to_owned(),
        };
        out.push_str(&format!("  {context}: led by {leader}\n"));
    }
    out
}

/// The groups below the rules' table: each one's cap, use, and who was denied what.
pub fn group_lines(groups: &[crate::group::GroupStatus]) -> String {
    let mut out = String::new();
    for g in groups {
        let denied: Vec<String> =
            g.members.iter().filter(|m| m.denied > 0).map(|m| format!("{} {}", m.rule, m.denied)).collect();
        let denied = if denied.is_empty() { "none".to_owned() } else { denied.join(", ") };
        out.push_str(&format!("group {}: {} of {} replicas; denied: {denied}", g.group, g.replicas, g.max_replicas));
        if !g.waiting_for.is_empty() {
            out.push_str(&format!("; waiting for the first poll of {}", g.waiting_for.join(", ")));
        }
        out.push('\n');
    }
    out
}

/// Renders statuses as a table, one line per rule.
pub fn table(rules: &[RuleStatus]) -> String {
    let header = [
        "RULE",
        "TARGET",
        "REPLICAS",
        "DESIRED",
        "BACKLOG",
        "ACTIVE",
        "REASON",
        "FAILURES",
        "LAST ACTIVE",
        "NEXT POLL",
    ];
    let dash = || "-".to_owned();
    let rows: Vec<[String; 10]> = rules
        .iter()
        .map(|r| {
            let backlog = if r.backlog.is_empty() {
                dash()
            } else {
                r.backlog
                    .values()
                    .map(|b| b.map_or("error".to_owned(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join("+")
            };
            [
                // A marker for the rules an open schedule window governs.
                match &r.schedule {
                    Some(s) => format!(
                        "{} [schedule {}]",
                        r.rule,
                        s.open.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
                    ),
                    None => r.rule.clone(),
                },
                r.target.clone(),
                r.current_replicas.map_or_else(dash, |v| v.to_string()),
                r.desired_replicas.map_or_else(dash, |v| v.to_string()),
                backlog,
                if r.active { "yes" } else { "no" }.to_owned(),
                r.last_reason.clone().unwrap_or_else(dash),
                r.consecutive_failures.to_string(),
                r.last_active.clone().unwrap_or_else(dash),
                r.next_poll.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
