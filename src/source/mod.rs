//! Reading queue counts. [`QueueReader`] is the port the workers use; [`sqs`] is the
//! AWS adapter; [`Shared`] sits in front of any reader so that rules reading the same
//! queue in the same round share one call.

pub mod direct;
pub mod sqs;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, QueueSource};
use crate::engine::Counts;

/// Which optional attributes a read must fetch (`ApproximateNumberOfMessages` always).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// `ApproximateNumberOfMessagesNotVisible`.
    pub in_flight: bool,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: bool,
}

impl Attrs {
    pub fn union(self, other: Attrs) -> Attrs {
        Attrs { in_flight: self.in_flight || other.in_flight, delayed: self.delayed || other.delayed }
    }

    fn covers(self, need: Attrs) -> bool {
        self.union(need) == self
    }
}

/// A failed read. `kind` is a stable low-cardinality label for logs and metrics.
#[derive(Clone, Debug, thiserror::Error)]
#[error("reading queue {queue}: {message}")]
pub struct SourceError {
    pub queue: String,
    /// `not_found`, `forbidden`, `credentials`, `throttled`, `timeout`, `unreachable`,
    /// `bad_response` or `other`.
    pub kind: &'static str,
    pub message: String,
}

/// The port: the counts of one queue, now.
pub trait QueueReader: Send + Sync + 'static {
    fn read(&self, queue: &QueueSource, attrs: Attrs) -> impl Future<Output = Result<Counts, SourceError>> + Send;
}

/// Results younger than this (counted from the start of the call) are shared between
/// rules reading the same queue: rules that start together poll together, so one call
/// serves the whole round. Shorter than the shortest polling interval (1 s), so a rule
/// never reuses its own previous read.
pub const SHARE_WINDOW: Duration = Duration::from_millis(500);

/// Single-flight, short-lived sharing of reads per queue, and the union of the
/// attributes every rule on that queue needs (so one call serves all of them).
pub struct Shared<R> {
    inner: R,
    needs: Mutex<HashMap<QueueSource, Attrs>>,
    slots: Mutex<HashMap<QueueSource, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

struct Cached {
    at: Instant,
    attrs: Attrs,
    result: Result<Counts, SourceError>,
}

impl<R: QueueReader> Shared<R> {
    pub fn new(inner: R) -> Shared<R> {
        Shared { inner, needs: Mutex::default(), slots: Mutex::default() }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Records which attributes each queue's readers need; called on start and reload.
    pub fn set_needs(&self, config: &Config) {
        let mut needs: HashMap<QueueSource, Attrs> = HashMap::new();
        for rule in &config.rules {
            for (t, q) in rule.policy.triggers.iter().zip(&rule.triggers) {
                let a = Attrs { in_flight: t.scale_on_in_flight, delayed: t.scale_on_delayed };
                needs.entry(q.clone()).and_modify(|n| *n = n.union(a)).or_insert(a);
            }
        }
        let mut slots = lock(&self.slots);
        slots.retain(|q, _| needs.contains_key(q));
        *lock(&self.needs) = needs;
    }

    /// Reads `queue`, sharing a result younger than [`SHARE_WINDOW`] that covers `need`.
    pub async fn read(&self, queue: &QueueSource, need: Attrs) -> Result<Counts, SourceError> {
        let slot = {
            let mut slots = lock(&self.slots);
            // Look up before inserting: `entry` would clone the key on every poll.
            match slots.get(queue) {
                Some(slot) => slot.clone(),
                None => slots.entry(queue.clone()).or_default().clone(),
            }
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < SHARE_WINDOW
            && c.attrs.covers(need)
        {
            return c.result.clone();
        }
        let attrs = lock(&self.needs).get(queue).copied().unwrap_or_default().union(need);
        let at = Instant::now();
        let result = self.inner.read(queue, attrs).await;
        *cached = Some(Cached { at, attrs, result: result.clone() });
        result
    }
}

/// Locks a std mutex that guards plain maps: no code panics while holding it, so a
/// poisoned lock still holds consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
