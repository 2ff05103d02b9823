//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the leader renews every `retry_period`, stops leading if it cannot renew
//! within `renew_deadline` (or sees another holder), and releases the lease on a clean
//! stop; a standby takes over once the lease has not changed for `lease_duration`.
//!
//! Expiry is judged on the local clock from when this instance last saw the record
//! change (client-go's `observedTime`), so clock skew between hosts does not matter;
//! that clock counts the time the host was suspended ([`Clock`]). Beyond client-go, a
//! Lease seen before and then deleted, or emptied without a clean release, is not taken
//! at once: its holder may still be writing (see `Elector::try_acquire_or_renew`).
//! With rules in several clusters, one lease per context.
//!
//! Beyond client-go, a leader fences its own writes: its lease is valid until the start
//! of its last successful renewal plus the lease duration (a standby can only have seen
//! that renewal after the request started, so it cannot take over earlier), and every
//! write to a target must end [`write_margin`] before that (see [`Lead`]). A write that
//! would run past it is not started, or is abandoned.
//!
//! [`Electors`] owns the electors, one per kube context the running rules use. The
//! supervisor tells it the contexts on start and on each reload, hands each worker its
//! context's [`Leadership`] (the receiving end of a `watch` channel the context's
//! elector publishes on), and tracks each context's workers with [`Electors::users`],
//! so that a context no rule uses any more hands its lease back only once its last
//! worker has stopped. The observer only hears of leadership for `/status`, the
//! `sqscale_is_leader` gauge and readiness; no worker asks it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{LeaderElection, Standby};
use crate::error::chain;
use crate::status::Observer;
use crate::workload::error::{KubeFailure, kind_of};
use crate::workload::kube::{Kube, KubeError};

/// How long a clean stop waits for the API server to take the lease back. Past it the
/// lease expires on its own, `lease_duration` after the last renewal.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// This instance's name in the lease: the host name, from gethostname(2), and a random
/// part drawn at each start, as client-go does (`<hostname>_<uuid>`). The PID would not
/// do: two containers of one image, or two PID namespaces, both run as PID 1 under one
/// host name. (Nor would `/proc/sys/kernel/hostname`, which the unit's `ProcSubset=pid`
/// hides.)
pub fn identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sqscale".to_owned());
    // RandomState's keys come from the operating system's random source, drawn once
    // per process: two processes started in the same nanosecond still differ.
    let random = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (std::time::SystemTime::now(), std::process::id()),
    );
    format!("{host}_{random:016x}")
}

/// How long before its lease could expire a leader's writes must have ended: 2 s, or a
/// quarter of a lease shorter than 8 s. The validity already counts from the start of
/// the last successful renewal; the margin covers what that cannot: a write the API
/// server still acts on after the client gave up on it, and a standby whose clock runs
/// faster than ours.
pub fn write_margin(lease_duration: Duration) -> Duration {
    (lease_duration / 4).min(Duration::from_secs(2))
}

/// A point on the lease clock: the time since boot, suspended time included
/// (`CLOCK_BOOTTIME`). Lease validity is measured on it, not on tokio's monotonic clock,
/// which stops while the host sleeps: a leader resumed after a suspend longer than its
/// lease must not trust the lease it held before (a standby has taken over meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(Duration);

impl Moment {
    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Moment {
    type Output = Moment;
    fn add(self, d: Duration) -> Moment {
        Moment(self.0 + d)
    }
}

/// Where [`Moment`]s come from: `CLOCK_BOOTTIME` in the daemon; in unit tests, tokio's
/// (paused) clock plus whatever time a test says the host spent suspended.
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    Boot,
    /// Behind one pointer, so that a test build's worker is no larger than the daemon's
    /// by more than that (`worker::tests::a_poll_and_an_idle_worker_are_small`).
    #[cfg(test)]
    Test(Arc<TestClock>),
}

#[cfg(test)]
#[derive(Debug)]
struct TestClock {
    origin: Instant,
    suspended: Arc<std::sync::Mutex<Duration>>,
}

impl Clock {
    pub fn boot() -> Clock {
        Clock(Source::Boot)
    }

    pub fn now(&self) -> Moment {
        match &self.0 {
            Source::Boot => {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
                // Both fields are non-negative for CLOCK_BOOTTIME.
                Moment(Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32))
            }
            #[cfg(test)]
            Source::Test(t) => Moment(t.origin.elapsed() + *t.suspended.lock().unwrap()),
        }
    }

    /// A clock on tokio's clock, and the handle that "suspends" the host: time added to
    /// it passes on this clock but not on tokio's.
    #[cfg(test)]
    fn test() -> (Clock, Arc<std::sync::Mutex<Duration>>) {
        let suspended = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        (Clock(Source::Test(Arc::new(TestClock { origin: Instant::now(), suspended: suspended.clone() }))), suspended)
    }
}

/// Whether, and until when, this instance may write to the targets of one kube context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lead {
    /// No leader election: writes are bounded only by the call timeout.
    Unelected,
    /// Holding the lease: a write must end before this moment, the lease's earliest
    /// possible expiry less the write margin.
    Until(Moment),
    /// A standby, or a leader whose lease may be about to expire: no writes.
    Standby,
}

impl Lead {
    /// How long a write that starts `now` may run: `cap`, or less when the lease's
    /// margin comes first; `None` when no write may start.
    fn budget(self, now: Moment, cap: Duration) -> Option<Duration> {
        match self {
            Lead::Unelected => Some(cap),
            Lead::Until(end) => {
                let left = end.since(now);
                (!left.is_zero()).then(|| left.min(cap))
            }
            Lead::Standby => None,
        }
    }
}

/// A worker's view of its context's election: the receiving end of the channel the
/// context's elector publishes on, read before every write (no lock shared with other
/// contexts, no allocation), and what to do while another instance leads. Without
/// leader election there is no channel at all: every worker would otherwise hold a
/// channel of its own (an allocation with its notifiers) that nothing ever sends on.
#[derive(Clone, Debug)]
pub struct Leadership(Option<Elected>);

#[derive(Clone, Debug)]
struct Elected {
    lead: watch::Receiver<Lead>,
    standby: Standby,
    /// The elector's clock: what it published is judged on the same clock.
    clock: Clock,
}

impl Leadership {
    /// Without leader election: every write may run for its whole call timeout.
    pub fn unelected() -> Leadership {
        Leadership(None)
    }

    fn elected(lead: watch::Receiver<Lead>, standby: Standby, clock: Clock) -> Leadership {
        Leadership(Some(Elected { lead, standby, clock }))
    }

    /// A context without an elector under leader election: never writes. (The
    /// supervisor starts an elector for every context before its workers, so this is
    /// only the safe answer to a context that is not known.)
    fn never(standby: Standby) -> Leadership {
        // The sender may go: a receiver keeps the last value.
        Leadership::elected(watch::channel(Lead::Standby).1, standby, Clock::boot())
    }

    /// A leadership whose lease is lost: no write may start (tests of fenced writes).
    #[cfg(test)]
    pub(crate) fn lost() -> Leadership {
        Leadership::never(Standby::Warm)
    }

    /// Whether, and until when, this instance may write now.
    pub fn lead(&self) -> Lead {
        self.lead_at().0
    }

    /// [`Leadership::lead`], and the moment it was judged at.
    fn lead_at(&self) -> (Lead, Option<Moment>) {
        let Some(elected) = &self.0 else {
            return (Lead::Unelected, None);
        };
        let lead = *elected.lead.borrow();
        let Lead::Until(until) = lead else {
            return (lead, None);
        };
        let now = elected.clock.now();
        (if until <= now { Lead::Standby } else { lead }, Some(now))
    }

    /// How long a write that starts now may run: the call timeout `cap`, or less when
    /// the lease's margin comes first; `None` when no write may start.
    pub fn budget(&self, cap: Duration) -> Option<Duration> {
        let (lead, now) = self.lead_at();
        lead.budget(now.unwrap_or(Moment(Duration::ZERO)), cap)
    }

    /// Whether the worker should skip its poll: this instance is a cold standby in the
    /// context (see [`Standby::Cold`]).
    pub fn cold_standby(&self) -> bool {
        self.0.as_ref().is_some_and(|e| e.standby == Standby::Cold) && self.lead() == Lead::Standby
    }
}

/// A leadership a unit test decides (on tokio's clock): leading for a while, or lost.
#[cfg(test)]
pub(crate) struct LeadSwitch {
    publish: watch::Sender<Lead>,
    clock: Clock,
}

#[cfg(test)]
impl LeadSwitch {
    /// A switch and the [`Leadership`] it drives, a standby of `standby` to begin with.
    pub(crate) fn new(standby: Standby) -> (LeadSwitch, Leadership) {
        let (clock, _) = Clock::test();
        let (publish, lead) = watch::channel(Lead::Standby);
        (LeadSwitch { publish, clock: clock.clone() }, Leadership::elected(lead, standby, clock))
    }

    /// Holds the lease for `d` from now.
    pub(crate) fn lead_for(&self, d: Duration) {
        self.publish.send_replace(Lead::Until(self.clock.now() + d));
    }

    /// Another instance leads.
    pub(crate) fn lose(&self) {
        self.publish.send_replace(Lead::Standby);
    }
}

/// Why a round of the election failed (it is tried again on the next round).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no Kubernetes client for the lease")]
    Client(#[source] KubeError),
    #[error("reading Lease {0}")]
    Read(String, #[source] KubeFailure),
    #[error("creating Lease {0}")]
    Create(String, #[source] KubeFailure),
    #[error("writing Lease {0}")]
    Write(String, #[source] KubeFailure),
}

impl LeaseError {
    /// The same stable labels as a target's errors (`unauthorized`, `timeout`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::Client(e) => e.kind(),
            LeaseError::Read(_, e) | LeaseError::Create(_, e) | LeaseError::Write(_, e) => kind_of(&e.0),
        }
        .as_str()
    }
}

/// The electors of this instance, one per kube context the running rules use.
pub struct Electors {
    settings: LeaderElection,
    identity: String,
    kube: Arc<Kube>,
    observer: Arc<Observer>,
    campaigns: HashMap<Option<String>, Campaign>,
    /// Electors of contexts no rule uses any more, until they have stopped: one that is
    /// needed again waits for its predecessor to hand the lease back first.
    retiring: HashMap<Option<String>, CancellationToken>,
    generation: u64,
    tasks: TaskTracker,
    /// A clean stop: hand the leases back.
    release: CancellationToken,
    /// A forced stop: keep the leases, so that they expire on their own.
    abandon: CancellationToken,
    /// What lease validity is measured on.
    clock: Clock,
}

/// Dropped without [`Electors::stop`] (the daemon did not drain): the electors stop and
/// keep their leases.
impl Drop for Electors {
    fn drop(&mut self) {
        self.abandon.cancel();
    }
}

/// One context's elector, as [`Electors`] keeps it.
struct Campaign {
    /// What the context's elector publishes; cloned for each worker.
    lead: watch::Receiver<Lead>,
    /// The context's workers. Closed once no rule uses the context; the elector hands
    /// the lease back and stops when it is also empty.
    users: TaskTracker,
    /// Cancelled when the elector has stopped.
    done: CancellationToken,
}

impl Electors {
    /// No elector runs until [`Electors::set_contexts`]. `observer` must have leader
    /// election enabled.
    pub fn new(settings: LeaderElection, identity: String, kube: Arc<Kube>, observer: Arc<Observer>) -> Electors {
        Electors {
            settings,
            identity,
            kube,
            observer,
            campaigns: HashMap::new(),
            retiring: HashMap::new(),
            generation: 0,
            tasks: TaskTracker::new(),
            release: CancellationToken::new(),
            abandon: CancellationToken::new(),
            clock: Clock::boot(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The contexts the rules use now (on start and after each reload): a new context
    /// gets an elector, starting as a standby; the elector of a context that is gone
    /// hands its lease back once the context's workers have stopped.
    pub fn set_contexts(&mut self, contexts: impl IntoIterator<Item = Option<String>>) {
        let wanted: BTreeSet<Option<String>> = contexts.into_iter().collect();
        self.retiring.retain(|_, done| !done.is_cancelled());
        let gone: Vec<Option<String>> = self.campaigns.keys().filter(|c| !wanted.contains(*c)).cloned().collect();
        for context in gone {
            if let Some(c) = self.campaigns.remove(&context) {
                info!(context = context.as_deref().unwrap_or("(default)"), lease = %self.settings.lease_name, "no rule uses this context any more; its lease goes once its workers stop");
                c.users.close();
                self.retiring.insert(context, c.done);
            }
        }
        for context in wanted {
            if !self.campaigns.contains_key(&context) {
                self.start(context);
            }
        }
    }

    fn start(&mut self, context: Option<String>) {
        self.generation += 1;
        let (publish, lead) = watch::channel(Lead::Standby);
        let campaign = Campaign { lead, users: TaskTracker::new(), done: CancellationToken::new() };
        self.observer.campaign(context.as_deref(), self.generation);
        let elector = Elector {
            kube: self.kube.clone(),
            settings: self.settings.clone(),
            identity: self.identity.clone(),
            context: context.clone(),
            generation: self.generation,
            observer: self.observer.clone(),
            lead: publish,
            clock: self.clock.clone(),
        };
        let previous = self.retiring.remove(&context);
        self.tasks.spawn(elector.run(
            previous,
            campaign.users.clone(),
            campaign.done.clone(),
            self.release.clone(),
            self.abandon.clone(),
        ));
        self.campaigns.insert(context, campaign);
    }

    /// The tracker of `context`'s workers; `None` for a context no rule uses.
    pub fn users(&self, context: Option<&str>) -> Option<&TaskTracker> {
        self.campaigns.get(&context.map(str::to_owned)).map(|c| &c.users)
    }

    /// What a worker of `context` reads before it polls and before each write.
    pub fn leadership(&self, context: Option<&str>) -> Leadership {
        match self.campaigns.get(&context.map(str::to_owned)) {
            Some(c) => Leadership::elected(c.lead.clone(), self.settings.standby, self.clock.clone()),
            None => Leadership::never(self.settings.standby),
        }
    }

    /// Stops every elector. `release`: the drain was clean, so no write can be in
    /// flight; hand each lease back (within [`RELEASE_TIMEOUT`]). Otherwise a write may
    /// still be on its way: keep the leases, so that no standby takes over before they
    /// expire.
    pub async fn stop(self, release: bool) {
        if release {
            self.release.cancel()
        } else {
            self.abandon.cancel()
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// One election: a lease in one cluster.
struct Elector {
    kube: Arc<Kube>,
    settings: LeaderElection,
    identity: String,
    /// The kube context this lease guards (`None`: the default context).
    context: Option<String>,
    generation: u64,
    /// Reports to `/status` and the `sqscale_is_leader` gauge.
    observer: Arc<Observer>,
    /// What the context's workers read: published after every round.
    lead: watch::Sender<Lead>,
    clock: Clock,
}

/// What this instance last saw of the lease: client-go's observed record and time.
struct Observed {
    /// The Lease as last read or written (its resourceVersion carries the next
    /// renewal); `None` once it was seen deleted.
    lease: Option<Lease>,
    /// When the record was first seen as it is now. Any change of it (a renewal, a new
    /// holder, a hand edit of any field, a deletion) starts the wait again, so that a
    /// `leaseDurationSeconds` lowered by hand counts from when the edit was seen, not
    /// from an older observation.
    at: Moment,
    /// How long after `at` the lease may be taken from its holder: the record's
    /// `leaseDurationSeconds`; for a deleted lease, that of the record before it.
    duration: Duration,
}

impl Observed {
    fn holder(&self) -> Option<&str> {
        let spec = self.lease.as_ref()?.spec.as_ref()?;
        spec.holder_identity.as_deref().filter(|h| !h.is_empty())
    }
}

/// What one attempt at the lease came to.
#[derive(Debug)]
enum Attempt {
    /// This instance holds the lease: renewed, acquired or created.
    Held,
    /// Another instance holds it, or it may not be taken yet.
    Other,
    /// Another write came first (409): the lease is read again next round. A leader
    /// does not step down for it: the record may still name it (a hand edit of a label,
    /// a renewal of ours whose answer was lost).
    Conflict,
}

/// Until when writes may run, judged at `now`, after a renewal that started at
/// `renewed`: the lease's earliest expiry less the write margin. `None` once that has
/// passed, or once `renew_deadline` has gone by without a renewal (client-go's
/// step-down).
fn writes_until(settings: &LeaderElection, renewed: Moment, now: Moment) -> Option<Moment> {
    if now >= renewed + settings.renew_deadline {
        return None;
    }
    // What the lease says (whole seconds), which is what standbys wait out.
    let lease = Duration::from_secs(lease_seconds(settings) as u64).min(settings.lease_duration);
    let until = renewed + lease.saturating_sub(write_margin(lease));
    (until > now).then_some(until)
}

/// The lease duration as the record carries it: whole seconds, at least one.
fn lease_seconds(settings: &LeaderElection) -> i32 {
    i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1)
}

impl Elector {
    /// Campaigns and renews, reporting to the observer, until a stop or until `users`
    /// is closed and empty. `previous`: the context's former elector, which must have
    /// stopped (and released) first.
    async fn run(
        self,
        previous: Option<CancellationToken>,
        users: TaskTracker,
        done: CancellationToken,
        release: CancellationToken,
        abandon: CancellationToken,
    ) {
        let _done = done.drop_guard();
        let context = self.context.as_deref();
        if let Some(previous) = previous {
            tokio::select! {
                _ = previous.cancelled() => {}
                _ = release.cancelled() => return self.observer.forget(context, self.generation),
                _ = abandon.cancelled() => return self.observer.forget(context, self.generation),
            }
        }
        info!(context = context.unwrap_or("(default)"), lease = %self.settings.lease_name, namespace = %self.settings.namespace, identity = %self.identity, "campaigning for the lease; a standby until it is ours");
        let mut observed: Option<Observed> = None;
        // When the last renewal that succeeded started.
        let mut renewed: Option<Moment> = None;
        let mut leading = false;
        let mut tick = tokio::time::interval(self.settings.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clean = loop {
            tokio::select! {
                biased;
                _ = abandon.cancelled() => break false,
                _ = release.cancelled() => break true,
                _ = users.wait() => break true,
                _ = tick.tick() => {}
            }
            // The client first, outside the round's deadline: building it may run an
            // exec plugin for seconds (it has its own timeout), and cut short by every
            // round it would start again each time and never finish.
            let api = tokio::select! {
                biased;
                _ = abandon.cancelled() => break false,
                _ = release.cancelled() => break true,
                _ = users.wait() => break true,
                api = self.api() => api,
            };
            let started = self.clock.now();
            let valid = renewed.and_then(|r| writes_until(&self.settings, r, started)).is_some();
            // As client-go: each attempt may take until the renew deadline, a leader's
            // counted from its last renewal (past it, it steps down anyway). An answer
            // that comes late is still good: validity counts from the round's start.
            let deadline = match renewed {
                Some(r) if valid => (r + self.settings.renew_deadline).since(started),
                _ => self.settings.renew_deadline,
            };
            let outcome = match api {
                Err(e) => Ok(Err(e)),
                Ok(api) => {
                    let attempt = self.try_acquire_or_renew(&api, &mut observed, valid);
                    tokio::select! {
                        biased;
                        _ = abandon.cancelled() => break false,
                        _ = release.cancelled() => break true,
                        outcome = tokio::time::timeout(deadline, attempt) => outcome,
                    }
                }
            };
            match outcome {
                Ok(Ok(Attempt::Held)) => renewed = Some(started),
                // Another holder: no more writes.
                Ok(Ok(Attempt::Other)) => renewed = None,
                Ok(Ok(Attempt::Conflict)) => {
                    info!(lease = %self.settings.lease_name, "the lease changed during this round; reading it again")
                }
                Ok(Err(e)) => {
                    warn!(error = %chain(&e), kind = e.kind(), lease = %self.settings.lease_name, "lease update failed")
                }
                Err(_) => warn!(lease = %self.settings.lease_name, "lease update timed out"),
            }
            let now = self.clock.now();
            let until = renewed.and_then(|r| writes_until(&self.settings, r, now));
            if until.is_some() != leading {
                leading = until.is_some();
                if leading {
                    // While another instance led, it stored newer last-active times:
                    // the rules read them again before they decide as the leader.
                    self.kube.reread_state(context);
                    info!(lease = %self.settings.lease_name, identity = %self.identity, "became the leader");
                } else {
                    warn!(lease = %self.settings.lease_name, "lost the lease; no more writes");
                }
            }
            self.publish(until.map_or(Lead::Standby, Lead::Until));
            let holder = observed.as_ref().and_then(Observed::holder);
            // `/status` shows it on tokio's clock; only the workers' fence needs the
            // lease clock.
            let shown = until.map(|u| Instant::now() + u.since(now));
            self.observer.set_leading(context, self.generation, shown, holder);
        };
        self.publish(Lead::Standby);
        self.observer.set_leading(context, self.generation, None, None);
        if clean && renewed.is_some() {
            self.release().await;
        }
        self.observer.forget(context, self.generation);
    }

    /// Tells the context's workers, waking none of them when nothing changed.
    fn publish(&self, lead: Lead) {
        self.lead.send_if_modified(|current| std::mem::replace(current, lead) != lead);
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn lease_seconds(&self) -> i32 {
        lease_seconds(&self.settings)
    }

    async fn api(&self) -> Result<Api<Lease>, LeaseError> {
        let client = self.kube.client(self.context.as_deref()).await.map_err(LeaseError::Client)?;
        Ok(Api::namespaced(client, &self.settings.namespace))
    }

    /// `namespace/name` of the lease, for errors.
    fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.lease_name)
    }

    fn holds(&self, lease: &Lease) -> bool {
        lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str())
    }

    /// Records what was just read or written of the lease (`None`: it does not exist).
    /// The observation time moves only when the record changed.
    fn observe(&self, observed: &mut Option<Observed>, lease: Option<Lease>) {
        let spec = |l: &Option<Lease>| l.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let new = spec(&lease);
        if let Some(o) = observed.as_mut().filter(|o| spec(&o.lease) == new) {
            // Unchanged; keep the newest resourceVersion for the next write.
            o.lease = lease;
            return;
        }
        let ours = Duration::from_secs(self.lease_seconds() as u64);
        let duration = match &new {
            Some(s) => s.lease_duration_seconds.filter(|d| *d > 0).map_or(ours, |d| Duration::from_secs(d as u64)),
            None => observed.as_ref().map_or(ours, |o| o.duration),
        };
        *observed = Some(Observed { lease, at: self.clock.now(), duration });
    }

    /// One attempt of client-go's `tryAcquireOrRenew`. `valid`: this instance holds a
    /// lease that has not run out.
    async fn try_acquire_or_renew(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<Observed>,
        valid: bool,
    ) -> Result<Attempt, LeaseError> {
        let name = &self.settings.lease_name;
        // client-go's fast path: a leader renews the record as it last saw it, one
        // request instead of two (which matters when each takes a second). Only if that
        // fails (another write came first, the lease is gone, an error) does it read.
        if valid && let Some(mut lease) = observed.as_ref().and_then(|o| o.lease.clone()).filter(|l| self.holds(l)) {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.lease_duration_seconds = Some(self.lease_seconds());
            spec.renew_time = Some(Self::now());
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(written) => {
                    self.observe(observed, Some(written));
                    return Ok(Attempt::Held);
                }
                Err(e) => {
                    debug!(error = %chain(&LeaseError::Write(self.lease(), KubeFailure(e))), "renewing the lease as last seen failed; reading it")
                }
            }
        }
        let first = observed.is_none();
        let read = api.get_opt(name).await.map_err(|e| LeaseError::Read(self.lease(), KubeFailure(e)))?;
        self.observe(observed, read.clone());
        let waited = observed.as_ref().is_some_and(|o| self.clock.now().since(o.at) >= o.duration);
        let Some(existing) = read else {
            // No lease. On a first look, create it at once, as client-go does. One seen
            // before and now gone was deleted, maybe by hand under a leader that still
            // writes: unless it was ours, wait out a lease duration from when it went.
            if !(first || valid || waited) {
                return Ok(Attempt::Other);
            }
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(observed, Some(created));
                    Ok(Attempt::Held)
                }
                // Someone else created it first: read it next round.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(LeaseError::Create(self.lease(), KubeFailure(e))),
            };
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        let takeable = match holder {
            _ if mine => true,
            // Emptied while our lease runs: no one else may take it before it ends.
            None if valid => true,
            // A clean release (no holder, the lease cut to 1 s, as ours and client-go's
            // are): the releaser has stopped writing.
            None if spec.lease_duration_seconds == Some(1) => true,
            // Held by another, or emptied by hand (its holder may still be writing):
            // once the record has not changed for its lease duration.
            _ => waited,
        };
        if !takeable {
            return Ok(Attempt::Other);
        }
        let mut lease = existing;
        let mut next = spec;
        if !mine && !valid {
            next.acquire_time = Some(Self::now());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(self.lease_seconds());
        next.renew_time = Some(Self::now());
        lease.spec = Some(next);
        // The PUT carries the resourceVersion we read: if another instance wrote in
        // between, it fails with a conflict and the next round reads again.
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(observed, Some(written));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(LeaseError::Write(self.lease(), KubeFailure(e))),
        }
    }

    /// On a clean stop, hand the lease back so a standby need not wait it out. Within
    /// [`RELEASE_TIMEOUT`]: past it, the lease expires on its own.
    async fn release(&self) {
        let name = &self.settings.lease_name;
        let work = async {
            let api = self.api().await?;
            let mut lease = api.get(name).await.map_err(|e| LeaseError::Read(self.lease(), KubeFailure(e)))?;
            let Some(spec) = lease.spec.as_mut() else { return Ok(false) };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(Self::now());
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map_err(|e| LeaseError::Write(self.lease(), KubeFailure(e)))?;
            Ok::<bool, LeaseError>(true)
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, work).await {
            Ok(Ok(true)) => info!(lease = %name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(error = %chain(&e), kind = e.kind(), lease = %name, "releasing the lease failed; it expires on its own")
            }
            Err(_) => warn!(lease = %name, "releasing the lease timed out; it expires on its own"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_per_start_and_name_the_host() {
        let (a, b) = (identity(), identity());
        assert_ne!(a, b, "two starts under one host name and PID must differ");
        let host = hostname::get().unwrap().into_string().unwrap();
        assert!(a.starts_with(&format!("{}_", host.trim())), "{a}");
    }

    /// What a worker reads of its context's election: the whole call timeout without
    /// election; under it, only the lease's time left while the elector says it holds
    /// the lease, nothing once that has run out or the elector says standby (a cold
    /// standby then skips its polls, a warm one polls).
    #[tokio::test(start_paused = true)]
    async fn a_worker_writes_only_within_what_its_elector_last_published() {
        let cap = Duration::from_secs(10);
        let free = Leadership::unelected();
        assert_eq!((free.budget(cap), free.cold_standby()), (Some(cap), false));
        assert_eq!(Leadership::never(Standby::Cold).budget(cap), None);

        let (clock, _) = Clock::test();
        let (publish, lead) = watch::channel(Lead::Standby);
        let cold = Leadership::elected(lead.clone(), Standby::Cold, clock.clone());
        let warm = Leadership::elected(lead, Standby::Warm, clock.clone());
        assert!(cold.cold_standby() && !warm.cold_standby());
        assert_eq!(cold.budget(cap), None);

        publish.send_replace(Lead::Until(clock.now() + Duration::from_secs(3)));
        assert_eq!(cold.budget(cap), Some(Duration::from_secs(3)), "the lease's time left, not the cap");
        assert!(!cold.cold_standby(), "the leader polls");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cold.lead(), Lead::Standby, "the margin has run out, whatever was published");
        assert!(cold.cold_standby());

        publish.send_replace(Lead::Until(clock.now() + cap));
        drop(publish);
        assert_eq!(warm.budget(cap), Some(cap), "the last word counts after the elector has gone");
    }

    fn settings(lease: u64, renew_deadline: u64) -> LeaderElection {
        LeaderElection {
            enabled: true,
            namespace: "sqscale".into(),
            lease_name: "sqscale".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew_deadline),
            retry_period: Duration::from_secs(2),
            standby: Standby::Cold,
        }
    }

    /// Issue 26 item 11: the host sleeps while this instance leads. Tokio's clock (the
    /// monotonic one) does not move while it sleeps, the lease clock does: on waking, a
    /// worker must not write under the lease it held before (a standby has taken over
    /// meanwhile), nor may the elector count its last renewal as still good.
    #[tokio::test(start_paused = true)]
    async fn a_leader_resumed_from_suspend_does_not_trust_its_expired_lease() {
        let cap = Duration::from_secs(10);
        let (clock, suspended) = Clock::test();
        let (publish, lead) = watch::channel(Lead::Standby);
        let worker = Leadership::elected(lead, Standby::Warm, clock.clone());
        let s = settings(15, 10);
        let renewed = clock.now();
        let until = writes_until(&s, renewed, clock.now()).expect("just renewed");
        assert_eq!(until, renewed + Duration::from_secs(13), "lease 15 s less the 2 s margin");
        publish.send_replace(Lead::Until(until));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(worker.budget(cap), Some(cap), "a second after renewing, the whole call timeout");

        // A minute asleep: no tokio time passes, the lease clock moves on.
        *suspended.lock().unwrap() += Duration::from_secs(60);
        assert_eq!(worker.lead(), Lead::Standby, "the published lease ran out while the host slept");
        assert_eq!(worker.budget(cap), None);
        assert_eq!(writes_until(&s, renewed, clock.now()), None, "the elector steps down too");
    }

    /// The elector's fence: writes end the write margin before the lease could expire,
    /// and not at all once the renew deadline has passed without a renewal.
    #[test]
    fn writes_end_before_the_lease_and_stop_at_the_renew_deadline() {
        let s = settings(15, 10);
        let at = Moment(Duration::from_secs(100));
        let secs = |n| Duration::from_secs(n);
        assert_eq!(writes_until(&s, at, at + secs(9)), Some(at + secs(13)));
        assert_eq!(writes_until(&s, at, at + secs(10)), None, "renew deadline");
        let short = settings(3, 10);
        assert_eq!(writes_until(&short, at, at + secs(2)), Some(at + Duration::from_millis(2250)));
        assert_eq!(writes_until(&short, at, at + Duration::from_millis(2250)), None, "lease less margin");
    }

    #[test]
    fn the_lease_clock_counts_from_boot() {
        let (a, b) = (Clock::boot().now(), Clock::boot().now());
        assert!(b >= a && a > Moment(Duration::ZERO));
    }

    #[test]
    fn the_write_margin_is_two_seconds_or_a_quarter_of_a_short_lease() {
        assert_eq!(write_margin(Duration::from_secs(15)), Duration::from_secs(2));
        assert_eq!(write_margin(Duration::from_secs(3)), Duration::from_millis(750));
    }
}
