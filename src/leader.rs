//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the leader renews every `retry_period`, stops leading if it cannot renew
//! within `renew_deadline` (or sees another holder), and releases the lease on a clean
//! stop; a standby takes over once the lease has not changed for `lease_duration`.
//!
//! Expiry is judged on the local clock from when this instance last saw the record
//! change (client-go's `observedTime`), so clock skew between hosts does not matter.
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
use tracing::{info, warn};

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

/// Whether, and until when, this instance may write to the targets of one kube context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lead {
    /// No leader election: writes are bounded only by the call timeout.
    Unelected,
    /// Holding the lease: a write must end before this instant, the lease's earliest
    /// possible expiry less the write margin.
    Until(Instant),
    /// A standby, or a leader whose lease may be about to expire: no writes.
    Standby,
}

impl Lead {
    /// How long a write that starts now may run: `cap`, or less when the lease's margin
    /// comes first; `None` when no write may start.
    pub fn budget(self, cap: Duration) -> Option<Duration> {
        match self {
            Lead::Unelected => Some(cap),
            Lead::Until(end) => {
                let left = end.saturating_duration_since(Instant::now());
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
}

impl Leadership {
    /// Without leader election: every write may run for its whole call timeout.
    pub fn unelected() -> Leadership {
        Leadership(None)
    }

    fn elected(lead: watch::Receiver<Lead>, standby: Standby) -> Leadership {
        Leadership(Some(Elected { lead, standby }))
    }

    /// A context without an elector under leader election: never writes. (The
    /// supervisor starts an elector for every context before its workers, so this is
    /// only the safe answer to a context that is not known.)
    fn never(standby: Standby) -> Leadership {
        // The sender may go: a receiver keeps the last value.
        Leadership::elected(watch::channel(Lead::Standby).1, standby)
    }

    /// Whether, and until when, this instance may write now.
    pub fn lead(&self) -> Lead {
        let Some(elected) = &self.0 else {
            return Lead::Unelected;
        };
        match *elected.lead.borrow() {
            Lead::Until(until) if until <= Instant::now() => Lead::Standby,
            lead => lead,
        }
    }

    /// How long a write that starts now may run (see [`Lead::budget`]).
    pub fn budget(&self, cap: Duration) -> Option<Duration> {
        self.lead().budget(cap)
    }

    /// Whether the worker should skip its poll: this instance is a cold standby in the
    /// context (see [`Standby::Cold`]).
    pub fn cold_standby(&self) -> bool {
        self.0.as_ref().is_some_and(|e| e.standby == Standby::Cold) && self.lead() == Lead::Standby
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
            Some(c) => Leadership::elected(c.lead.clone(), self.settings.standby),
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
}

/// What this instance last saw of the lease.
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
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
        let mut renewed: Option<Instant> = None;
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
            let started = Instant::now();
            // One deadline for the round: building the client, the read and the write.
            let round = tokio::time::timeout(
                self.settings.retry_period.max(Duration::from_secs(1)),
                self.try_acquire_or_renew(&mut observed),
            );
            let outcome = tokio::select! {
                biased;
                _ = abandon.cancelled() => break false,
                outcome = round => outcome,
            };
            match outcome {
                Ok(Ok(true)) => renewed = Some(started),
                // Another holder, or another instance wrote first: no more writes.
                Ok(Ok(false)) => renewed = None,
                Ok(Err(e)) => {
                    warn!(error = %chain(&e), kind = e.kind(), lease = %self.settings.lease_name, "lease update failed")
                }
                Err(_) => warn!(lease = %self.settings.lease_name, "lease update timed out"),
            }
            let until = renewed.and_then(|r| self.writes_until(r));
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
            let holder = observed.as_ref().and_then(|o| o.holder.as_deref());
            self.observer.set_leading(context, self.generation, until, holder);
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

    /// Until when writes may run after a renewal that started at `renewed`: the lease's
    /// earliest expiry less the write margin. `None` once that has passed, or once
    /// `renew_deadline` has gone by without a renewal (client-go's step-down).
    fn writes_until(&self, renewed: Instant) -> Option<Instant> {
        let now = Instant::now();
        if now >= renewed + self.settings.renew_deadline {
            return None;
        }
        // What the lease says (whole seconds), which is what standbys wait out.
        let lease = Duration::from_secs(self.lease_seconds() as u64).min(self.settings.lease_duration);
        let until = renewed + lease.saturating_sub(write_margin(lease));
        (until > now).then_some(until)
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1)
    }

    async fn api(&self) -> Result<Api<Lease>, LeaseError> {
        let client = self.kube.client(self.context.as_deref()).await.map_err(LeaseError::Client)?;
        Ok(Api::namespaced(client, &self.settings.namespace))
    }

    /// `namespace/name` of the lease, for errors.
    fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.lease_name)
    }

    /// One round of client-go's `tryAcquireOrRenew`. Ok(true) when this instance holds
    /// the lease afterwards.
    async fn try_acquire_or_renew(&self, observed: &mut Option<Observed>) -> Result<bool, LeaseError> {
        let api = self.api().await?;
        let name = &self.settings.lease_name;
        let existing = match api.get(name).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => {
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
                    Ok(_) => Ok(true),
                    // Someone else created it first: not ours this round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(LeaseError::Create(self.lease(), KubeFailure(e))),
                };
            }
            Err(e) => return Err(LeaseError::Read(self.lease(), KubeFailure(e))),
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = observed.as_ref().is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
        if changed {
            *observed = Some(Observed { holder: holder.clone(), renew: spec.renew_time.clone(), at: Instant::now() });
        }
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(self.lease_seconds()).max(1) as u64);
        let expired = holder.is_none() || observed.as_ref().is_some_and(|o| o.at.elapsed() >= duration);
        if !mine && !expired {
            return Ok(false);
        }
        let mut lease = existing;
        let mut next = spec;
        if !mine {
            next.acquire_time = Some(Self::now());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(self.lease_seconds());
        next.renew_time = Some(Self::now());
        lease.spec = Some(next);
        // The PUT carries the resourceVersion we read: if another instance wrote in
        // between, it fails with a conflict and we stay a standby this round.
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                let s = written.spec.unwrap_or_default();
                *observed = Some(Observed { holder: s.holder_identity, renew: s.renew_time, at: Instant::now() });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
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

        let (publish, lead) = watch::channel(Lead::Standby);
        let cold = Leadership::elected(lead.clone(), Standby::Cold);
        let warm = Leadership::elected(lead, Standby::Warm);
        assert!(cold.cold_standby() && !warm.cold_standby());
        assert_eq!(cold.budget(cap), None);

        publish.send_replace(Lead::Until(Instant::now() + Duration::from_secs(3)));
        assert_eq!(cold.budget(cap), Some(Duration::from_secs(3)), "the lease's time left, not the cap");
        assert!(!cold.cold_standby(), "the leader polls");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cold.lead(), Lead::Standby, "the margin has run out, whatever was published");
        assert!(cold.cold_standby());

        publish.send_replace(Lead::Until(Instant::now() + cap));
        drop(publish);
        assert_eq!(warm.budget(cap), Some(cap), "the last word counts after the elector has gone");
    }

    #[test]
    fn the_write_margin_is_two_seconds_or_a_quarter_of_a_short_lease() {
        assert_eq!(write_margin(Duration::from_secs(15)), Duration::from_secs(2));
        assert_eq!(write_margin(Duration::from_secs(3)), Duration::from_millis(750));
    }
}
