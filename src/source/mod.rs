//! Reading queue counts. [`QueueReader`] is the port the workers use; [`sqs`] is the
//! AWS adapter, [`direct`] its hot path and [`wire`] the request and answer format both
//! share; [`Shared`] sits in front of any reader so that rules reading the same
//! queue in the same round share one call.

pub mod direct;
pub mod sqs;
pub mod wire;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{JobRule, QueueSource, Rule};
use crate::engine::{Counts, TriggerPolicy};
use crate::sync::lock;

/// Which optional attributes a read must fetch (`ApproximateNumberOfMessages` always).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// `ApproximateNumberOfMessagesNotVisible`.
    pub in_flight: bool,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: bool,
}

impl Attrs {
    /// What a trigger needs read.
    pub fn of(t: &TriggerPolicy) -> Attrs {
        Attrs { in_flight: t.scale_on_in_flight, delayed: t.scale_on_delayed }
    }

    pub fn union(self, other: Attrs) -> Attrs {
        Attrs { in_flight: self.in_flight || other.in_flight, delayed: self.delayed || other.delayed }
    }

    fn covers(self, need: Attrs) -> bool {
        self.union(need) == self
    }
}

/// A failed read of one queue. [`SourceError::kind`] is a stable low-cardinality label
/// for logs and metrics, decided from the typed cause where it is made (an SDK error's
/// variant and metadata code, an HTTP status, the error types in its source chain),
/// never from message text.
///
/// Cheap to clone: one read's result is shared by every rule reading that queue. Its
/// `Display` is the whole story, as logs and `/status` show it (the cause's chain
/// included); [`std::error::Error::source`] is the typed cause for code that inspects
/// it, so a chain walker would print the cause twice: print this with `{}`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("reading queue {queue}: {message}")]
pub struct SourceError {
    pub queue: String,
    kind: SourceErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What kind of failure a [`SourceError`] is; [`SourceErrorKind::as_str`] is its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceErrorKind {
    /// The queue does not exist.
    NotFound,
    /// SQS refused this identity.
    Forbidden,
    /// No credentials could be loaded.
    Credentials,
    /// SQS throttled the call.
    Throttled,
    /// No answer in time.
    Timeout,
    /// The connection failed.
    Unreachable,
    /// An answer that is not what `GetQueueAttributes` or `GetQueueUrl` answers.
    BadResponse,
    Other,
}

impl SourceErrorKind {
    /// The stable label: `not_found`, `forbidden`, `credentials`, `throttled`,
    /// `timeout`, `unreachable`, `bad_response` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceErrorKind::NotFound => "not_found",
            SourceErrorKind::Forbidden => "forbidden",
            SourceErrorKind::Credentials => "credentials",
            SourceErrorKind::Throttled => "throttled",
            SourceErrorKind::Timeout => "timeout",
            SourceErrorKind::Unreachable => "unreachable",
            SourceErrorKind::BadResponse => "bad_response",
            SourceErrorKind::Other => "other",
        }
    }
}

impl SourceError {
    /// A failure of `queue` (as [`QueueSource::display`] names it) described by `message`.
    pub fn new(queue: impl Into<String>, kind: SourceErrorKind, message: impl Into<String>) -> SourceError {
        SourceError { queue: queue.into(), kind, message: message.into(), source: None }
    }

    /// The same failure with its typed cause, for [`std::error::Error::source`].
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> SourceError {
        self.source = Some(Arc::new(cause));
        self
    }

    /// The stable label of [`SourceErrorKind`].
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    pub fn error_kind(&self) -> SourceErrorKind {
        self.kind
    }
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
///
/// Each queue has a [`Slot`]; a worker takes its triggers' slots when it starts
/// ([`Shared::slot`]) and reads through them, so a poll looks nothing up.
pub struct Shared<R> {
    inner: R,
    /// The slots by the queue's hash. A slot names its queue by a rule reading it (no
    /// copy of the queue is kept per slot), and is checked against it when handed out.
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
}

/// A rule or a job rule reading a queue, and the trigger's index in it: a slot names
/// its queue through it.
#[derive(Clone)]
enum Owner {
    Rule(Arc<Rule>, usize),
    Job(Arc<JobRule>, usize),
}

impl Owner {
    fn queue(&self) -> Option<&QueueSource> {
        match self {
            Owner::Rule(rule, i) => rule.triggers.get(*i),
            Owner::Job(rule, i) => rule.triggers.get(*i),
        }
    }
}

/// One queue's shared reads.
pub struct Slot {
    /// A rule (or job rule) reading this queue, and the trigger's index in it.
    owner: Mutex<Owner>,
    /// What the rules reading this queue need, together.
    needs: Mutex<Attrs>,
    /// The last read; its lock is held while a read is in flight.
    last: tokio::sync::Mutex<Option<Cached>>,
}

impl Slot {
    fn new(needs: Attrs, owner: Owner) -> Slot {
        Slot { owner: Mutex::new(owner), needs: Mutex::new(needs), last: Default::default() }
    }

    fn reads(&self, queue: &QueueSource) -> bool {
        lock(&self.owner).queue() == Some(queue)
    }
}

struct Cached {
    at: Instant,
    attrs: Attrs,
    result: Result<Counts, SourceError>,
}

fn key(queue: &QueueSource) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(queue)
}

impl<R: QueueReader> Shared<R> {
    pub fn new(inner: R) -> Shared<R> {
        Shared { inner, slots: Mutex::default() }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Records which attributes each queue's readers need; called on start and reload.
    pub fn set_needs(&self, rules: &[Arc<Rule>]) {
        self.set_needs_of(rules, &[]);
    }

    /// [`Shared::set_needs`] for rules and job rules together: a queue read by both
    /// is one slot, read once a round for all of them.
    pub fn set_needs_of(&self, rules: &[Arc<Rule>], jobs: &[Arc<JobRule>]) {
        let mut needs: HashMap<u64, (Attrs, Owner)> = HashMap::new();
        let mut need = |q: &QueueSource, a: Attrs, owner: &dyn Fn() -> Owner| {
            needs.entry(key(q)).and_modify(|n| n.0 = n.0.union(a)).or_insert_with(|| (a, owner()));
        };
        for rule in rules {
            for (i, (t, q)) in rule.policy.triggers.iter().zip(&rule.triggers).enumerate() {
                need(q, Attrs::of(t), &|| Owner::Rule(rule.clone(), i));
            }
        }
        for rule in jobs {
            for (i, (t, q)) in rule.trigger_policies.iter().zip(&rule.triggers).enumerate() {
                need(q, Attrs::of(t), &|| Owner::Job(rule.clone(), i));
            }
        }
        let mut slots = lock(&self.slots);
        slots.retain(|k, _| needs.contains_key(k));
        for (k, (a, owner)) in needs {
            match slots.get(&k) {
                Some(slot) => {
                    *lock(&slot.needs) = a;
                    *lock(&slot.owner) = owner;
                }
                None => {
                    slots.insert(k, Arc::new(Slot::new(a, owner)));
                }
            }
        }
    }

    /// The slot of `rule`'s trigger `i`, shared with every rule reading the same queue.
    pub fn slot(&self, rule: &Arc<Rule>, i: usize) -> Arc<Slot> {
        self.slot_for(&rule.triggers[i], Attrs::of(&rule.policy.triggers[i]), || Owner::Rule(rule.clone(), i))
    }

    /// The slot of job rule `rule`'s trigger `i`, shared with every rule and job rule
    /// reading the same queue.
    pub fn job_slot(&self, rule: &Arc<JobRule>, i: usize) -> Arc<Slot> {
        self.slot_for(&rule.triggers[i], Attrs::of(&rule.trigger_policies[i]), || Owner::Job(rule.clone(), i))
    }

    fn slot_for(&self, queue: &QueueSource, attrs: Attrs, owner: impl FnOnce() -> Owner) -> Arc<Slot> {
        let new = || Arc::new(Slot::new(attrs, owner()));
        match lock(&self.slots).entry(key(queue)) {
            Entry::Occupied(slot) if slot.get().reads(queue) => slot.get().clone(),
            // Two queues with one 64-bit hash: this one reads on its own.
            Entry::Occupied(_) => new(),
            Entry::Vacant(v) => v.insert(new()).clone(),
        }
    }

    /// Reads `queue` through its `slot`, sharing a result younger than [`SHARE_WINDOW`]
    /// that covers `need`.
    pub async fn read(&self, slot: &Slot, queue: &QueueSource, need: Attrs) -> Result<Counts, SourceError> {
        let mut cached = slot.last.lock().await;
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < SHARE_WINDOW
            && c.attrs.covers(need)
        {
            return c.result.clone();
        }
        let attrs = lock(&slot.needs).union(need);
        let at = Instant::now();
        let result = self.inner.read(queue, attrs).await;
        *cached = Some(Cached { at, attrs, result: result.clone() });
        result
    }
}
