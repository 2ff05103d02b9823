//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the leader renews every `retry_period`, stops leading if it cannot renew
//! within `renew_deadline` (or sees another holder), and releases the lease on a clean
//! stop; a standby takes over once the lease has not changed for `lease_duration`.
//!
//! Expiry is judged on the local clock from when this instance last saw the record
//! change (client-go's `observedTime`), so clock skew between hosts does not matter.
//! With rules in several clusters, one lease per context.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::LeaderElection;
use crate::status::Observer;

/// This instance's name in the lease: host and process.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "sqscale".to_owned() } else { host };
    format!("{host}_{}", std::process::id())
}

/// One election: a lease in one cluster.
pub struct Elector {
    pub api: Api<Lease>,
    pub settings: LeaderElection,
    pub identity: String,
    /// The kube context this lease guards (`None`: the default context).
    pub context: Option<String>,
}

/// What this instance last saw of the lease.
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

impl Elector {
    /// Campaigns and renews until `stop`; reports leadership to `observer`.
    pub async fn run(self, observer: Arc<Observer>, stop: CancellationToken) {
        let mut observed: Option<Observed> = None;
        let mut last_renew: Option<Instant> = None;
        let mut leading = false;
        let mut tick = tokio::time::interval(self.settings.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let outcome = tokio::time::timeout(
                self.settings.retry_period.max(Duration::from_secs(1)),
                self.try_acquire_or_renew(&mut observed),
            )
            .await;
            let now_leading = match outcome {
                Ok(Ok(held)) => {
                    if held {
                        last_renew = Some(Instant::now());
                    }
                    held
                }
                Ok(Err(e)) => {
                    warn!(error = %e, lease = %self.settings.lease_name, "lease update failed");
                    // Keep leading only while the last renewal is within the deadline.
                    leading && last_renew.is_some_and(|t| t.elapsed() < self.settings.renew_deadline)
                }
                Err(_) => {
                    warn!(lease = %self.settings.lease_name, "lease update timed out");
                    leading && last_renew.is_some_and(|t| t.elapsed() < self.settings.renew_deadline)
                }
            };
            if now_leading != leading {
                leading = now_leading;
                if leading {
                    info!(lease = %self.settings.lease_name, identity = %self.identity, "became the leader");
                } else {
                    warn!(lease = %self.settings.lease_name, "lost the lease; no more writes");
                }
                observer.set_leading(self.context.as_deref(), leading);
            }
        }
        if leading {
            observer.set_leading(self.context.as_deref(), false);
            self.release().await;
        }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1)
    }

    /// One round of client-go's `tryAcquireOrRenew`. Ok(true) when this instance holds
    /// the lease afterwards.
    async fn try_acquire_or_renew(&self, observed: &mut Option<Observed>) -> Result<bool, kube::Error> {
        let name = &self.settings.lease_name;
        let existing = match self.api.get(name).await {
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
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Someone else created it first: not ours this round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
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
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                let s = written.spec.unwrap_or_default();
                *observed = Some(Observed { holder: s.holder_identity, renew: s.renew_time, at: Instant::now() });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// On a clean stop, hand the lease back so a standby need not wait it out.
    async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.settings.lease_name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(Self::now());
        match self.api.replace(&self.settings.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.settings.lease_name, "released the lease"),
            Err(e) => warn!(error = %e, "releasing the lease failed"),
        }
    }
}
