//! The scale targets: reading a Deployment or StatefulSet's replicas and annotations,
//! and patching its `/scale` subresource. [`ScaleTarget`] is the port the workers use;
//! [`kube`] is the Kubernetes adapter, [`error`] the port's error and its classification.

pub mod auth;
pub mod eks;
pub mod error;
pub mod jobs;
pub mod kube;
pub mod state;

pub use error::{TargetError, TargetErrorKind};

use std::future::Future;
use std::sync::Arc;

use crate::config::TargetRef;
use crate::engine::{Overrides, Pause, Time};
use crate::leader::Leadership;
use state::Running;

/// The field manager of every write, so `kubectl` shows who changed the replicas.
pub const FIELD_MANAGER: &str = "sqscale";
/// KEDA's `lastActiveTime` as an older sqscale kept it, on the target. Still read, so an
/// upgrade keeps the cooldown; never written (the time now lives in [`state`]).
pub const LAST_ACTIVE: &str = "sqscale.io/last-active";
/// `"true"` (or anything but a false value): never patch this target.
pub const PAUSED: &str = "sqscale.io/paused";
/// `"N"`: pin the target to N replicas.
pub const PAUSED_REPLICAS: &str = "sqscale.io/paused-replicas";
/// `"true"`: never scale in (KEDA's `paused-scale-in`).
pub const PAUSED_SCALE_IN: &str = "sqscale.io/paused-scale-in";
/// `"true"`: never scale out (KEDA's `paused-scale-out`).
pub const PAUSED_SCALE_OUT: &str = "sqscale.io/paused-scale-out";
/// `"true"`: active whatever the queues say (KEDA's `force-activation`).
pub const FORCE_ACTIVATION: &str = "sqscale.io/force-activation";

/// What a poll needs to know about the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetView {
    /// `spec.replicas` (an unset value means 1, as the API server defaults it).
    pub replicas: u32,
    /// `status.replicas`, when the object reports it (a Deployment omits it at 0).
    pub status_replicas: Option<u32>,
    /// `status.readyReplicas` (omitted at 0): the pods a `Value` metric counts.
    pub ready_replicas: Option<u32>,
    pub pause: Pause,
    /// The one-way pauses and forced activation its annotations ask for.
    pub overrides: Overrides,
    /// The stored last-active ([`state`]), or the `sqscale.io/last-active` annotation an
    /// older sqscale left on the target, whichever is newer.
    pub last_active: Option<Time>,
    /// The last-active found in sqscale's state (`None` if only the annotation has one):
    /// a value already stored need not be written again.
    pub stored_last_active: Option<Time>,
    /// The object's `metadata.resourceVersion`: the scale patch carries it, so a
    /// change made since this read makes the patch fail with a conflict. Shared with
    /// the cache, so a read copies nothing.
    pub resource_version: Option<Arc<str>>,
}

impl TargetView {
    /// `status.replicas` as the `/scale` subresource reports it, which is what the HPA
    /// reads: 0 when the object omits it (a Deployment at zero pods, or one whose
    /// controller has not written a status yet). Never "same as spec": with pods
    /// missing (a quota, a slow start) the HPA's tolerance ratio is +Inf.
    pub fn scale_status_replicas(&self) -> u32 {
        self.status_replicas.unwrap_or(0)
    }
}

/// Builds the view from a Deployment's or StatefulSet's `spec.replicas` and
/// `status.replicas` (`None` when absent) and its annotations (`annotation` looks one up).
pub fn view_of<'a>(
    spec_replicas: Option<u32>,
    status_replicas: Option<u32>,
    annotation: impl Fn(&str) -> Option<&'a str>,
    resource_version: Option<Arc<str>>,
) -> TargetView {
    TargetView {
        replicas: spec_replicas.unwrap_or(1),
        status_replicas,
        ready_replicas: None,
        pause: Pause::from_annotations(annotation(PAUSED), annotation(PAUSED_REPLICAS)),
        overrides: Overrides::from_annotations(
            annotation(PAUSED_SCALE_IN),
            annotation(PAUSED_SCALE_OUT),
            annotation(FORCE_ACTIVATION),
        ),
        last_active: annotation(LAST_ACTIVE).and_then(parse_time),
        stored_last_active: None,
        resource_version,
    }
}

/// A replica count as the API sends it (JSON, `null` when absent).
pub fn count(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Formats a [`Time`] (Unix milliseconds) as RFC 3339 in UTC.
pub fn format_time(t: Time) -> String {
    match jiff::Timestamp::from_millisecond(t.0) {
        Ok(ts) => ts.to_string(),
        Err(_) => jiff::Timestamp::UNIX_EPOCH.to_string(),
    }
}

/// Parses an RFC 3339 timestamp into a [`Time`].
pub fn parse_time(s: &str) -> Option<Time> {
    s.trim().parse::<jiff::Timestamp>().ok().map(|ts| Time(ts.as_millisecond()))
}

/// The port: one target, addressed by kube context and reference.
pub trait ScaleTarget: Send + Sync + 'static {
    fn read(
        &self,
        context: Option<&str>,
        target: &TargetRef,
    ) -> impl Future<Output = Result<TargetView, TargetError>> + Send;

    /// The target read from the API server now, not from a cache: after a conflict, the
    /// decision is made again on this.
    fn read_fresh(
        &self,
        context: Option<&str>,
        target: &TargetRef,
    ) -> impl Future<Output = Result<TargetView, TargetError>> + Send {
        self.read(context, target)
    }

    /// Sets `spec.replicas` through `/scale`. `resource_version` is the version the
    /// decision was made on: if the target changed since, this fails with a `conflict`
    /// and writes nothing (the caller decides again on a fresh read).
    fn scale(
        &self,
        context: Option<&str>,
        target: &TargetRef,
        replicas: u32,
        resource_version: Option<&str>,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Stores the target's last-active in sqscale's own namespace ([`state`]), never on
    /// the target. `lead` is checked again right before the write is sent (it may wait
    /// for other writes to fold into one), and a lost lease cancels it.
    fn set_last_active(
        &self,
        context: Option<&str>,
        target: &TargetRef,
        at: Time,
        lead: &Leadership,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// The replica count the target had when a rule with
    /// `restore_to_original_replica_count` first took it, kept in sqscale's state
    /// ([`state`]) so a restart does not lose it. Adapters that keep no state have none.
    fn original_replicas(
        &self,
        context: Option<&str>,
        target: &TargetRef,
    ) -> impl Future<Output = Result<Option<u32>, TargetError>> + Send {
        let _ = (context, target);
        async { Ok(None) }
    }

    /// Stores the original replica count (see [`ScaleTarget::original_replicas`]), or
    /// forgets it (`None`), if `lead` still allows it when the write is sent.
    fn set_original_replicas(
        &self,
        context: Option<&str>,
        target: &TargetRef,
        replicas: Option<u32>,
        lead: &Leadership,
    ) -> impl Future<Output = Result<(), TargetError>> + Send {
        let _ = (context, target, replicas, lead);
        async { Ok(()) }
    }

    /// Records a Kubernetes Event on the target (best effort).
    fn publish(
        &self,
        context: Option<&str>,
        target: &TargetRef,
        event: &TargetEvent,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Called after a reload with the (context, target) of every rule now running:
    /// whatever is kept for targets outside `used` (the kube adapter's watch of a
    /// context, namespace and kind no rule reads any more) can go.
    fn retain(&self, used: &[(Option<&str>, &TargetRef)]) {
        let _ = used;
    }

    /// Called at start and after each reload with every rule now running, and per kube
    /// context whether this instance may write there (never in a dry run): the stored
    /// state of targets no rule names any more can go ([`state::Store::keep`]).
    fn keep_state(&self, rules: &Running, lead: &dyn Fn(Option<&str>) -> Leadership) {
        let _ = (rules, lead);
    }
}

/// An Event about a target, named like the HPA's and KEDA's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetEvent {
    pub warning: bool,
    /// `SuccessfulRescale`, `ScaleTargetActivated`, `ScaleTargetDeactivated`,
    /// `FailedGetQueueAttributes`, `FailedGetScale` or `FailedRescale`.
    pub reason: &'static str,
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn view_reads_replicas_pause_and_last_active() {
        let mut ann = BTreeMap::new();
        ann.insert(LAST_ACTIVE.to_owned(), "2026-11-27T21:00:10Z".to_owned());
        let v = view_of(count(&json!(3)), count(&json!(2)), |k| ann.get(k).map(String::as_str), Some("7".into()));
        assert_eq!((v.replicas, v.status_replicas, v.pause), (3, Some(2), Pause::No));
        assert_eq!(v.scale_status_replicas(), 2);
        assert_eq!(v.last_active.map(format_time).as_deref(), Some("2026-11-27T21:00:10Z"));

        ann.insert(PAUSED_REPLICAS.to_owned(), "0".to_owned());
        ann.insert(LAST_ACTIVE.to_owned(), "yesterday".to_owned());
        let v = view_of(count(&json!(null)), count(&json!(null)), |k| ann.get(k).map(String::as_str), None);
        assert_eq!((v.replicas, v.status_replicas, v.pause, v.last_active), (1, None, Pause::Replicas(0), None));
        // /scale reports a missing status.replicas as 0, and so does the view: the HPA's
        // ratio is then +Inf, not "same as spec".
        assert_eq!(v.scale_status_replicas(), 0);
        let v = view_of(count(&json!(5)), count(&json!(null)), |_| None, None);
        assert_eq!((v.replicas, v.scale_status_replicas()), (5, 0));
        assert_eq!(v.overrides, Overrides::default());

        // The one-way pauses and forced activation, read as KEDA reads its annotations.
        ann.insert(PAUSED_SCALE_IN.to_owned(), "true".to_owned());
        ann.insert(FORCE_ACTIVATION.to_owned(), "yes".to_owned());
        ann.insert(PAUSED_SCALE_OUT.to_owned(), "false".to_owned());
        let v = view_of(count(&json!(2)), None, |k| ann.get(k).map(String::as_str), None);
        assert_eq!(v.overrides, Overrides { paused_scale_in: true, paused_scale_out: false, force_activation: true });
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let t = Time(1_795_808_487_735);
        assert_eq!(format_time(t), "2026-11-27T19:41:27.735Z");
        assert_eq!(parse_time(&format_time(t)), Some(t));
    }
}
