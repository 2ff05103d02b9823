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
//! write to a target must end [`write_margin`] before that (see
//! [`crate::status::Lead`]). A write that
//! would run past it is not started, or is abandoned.
//!
//! [`Electors`] owns the electors, one per kube context the running rules use. The
//! supervisor tells it the contexts on start and on each reload, and tracks each
//! context's workers with [`Electors::users`], so that a context no rule uses any more
//! hands its lease back only once its last worker has stopped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::LeaderElection;
use crate::status::Observer;
use crate::workload::kube::Kube;

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
        let campaign = Campaign { users: TaskTracker::new(), done: CancellationToken::new() };
        self.observer.campaign(context.as_deref(), self.generation);
        let elector = Elector {
            kube: self.kube.clone(),
            settings: self.settings.clone(),
            identity: self.identity.clone(),
            context: context.clone(),
            generation: self.generation,
            observer: self.observer.clone(),
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
    observer: Arc<Observer>,
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
                Ok(Err(e)) => warn!(error = %e, lease = %self.settings.lease_name, "lease update failed"),
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
            let holder = observed.as_ref().and_then(|o| o.holder.as_deref());
            self.observer.set_leading(context, self.generation, until, holder);
        };
        self.observer.set_leading(context, self.generation, None, None);
        if clean && renewed.is_some() {
            self.release().await;
        }
        self.observer.forget(context, self.generation);
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

    async fn api(&self) -> Result<Api<Lease>, String> {
        let client = self.kube.client(self.context.as_deref()).await.map_err(|e| crate::error::chain(&e))?;
        Ok(Api::namespaced(client, &self.settings.namespace))
    }

    /// One round of client-go's `tryAcquireOrRenew`. Ok(true) when this instance holds
    /// the lease afterwards.
    async fn try_acquire_or_renew(&self, observed: &mut Option<Observed>) -> Result<bool, String> {
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
                    Err(e) => Err(e.to_string()),
                };
            }
            Err(e) => return Err(e.to_string()),
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
            Err(e) => Err(e.to_string()),
        }
    }

    /// On a clean stop, hand the lease back so a standby need not wait it out. Within
    /// [`RELEASE_TIMEOUT`]: past it, the lease expires on its own.
    async fn release(&self) {
        let name = &self.settings.lease_name;
        let work = async {
            let api = self.api().await?;
            let mut lease = api.get(name).await.map_err(|e| e.to_string())?;
            let Some(spec) = lease.spec.as_mut() else { return Ok(false) };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(Self::now());
            api.replace(name, &PostParams::default(), &lease).await.map_err(|e| e.to_string())?;
            Ok::<bool, String>(true)
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, work).await {
            Ok(Ok(true)) => info!(lease = %name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, lease = %name, "releasing the lease failed; it expires on its own"),
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

    #[test]
    fn the_write_margin_is_two_seconds_or_a_quarter_of_a_short_lease() {
        assert_eq!(write_margin(Duration::from_secs(15)), Duration::from_secs(2));
        assert_eq!(write_margin(Duration::from_secs(3)), Duration::from_millis(750));
    }
}
