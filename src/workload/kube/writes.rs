//! The port's implementation for Kubernetes: reads (the cache, plus the stored state),
//! `/scale` writes under the context's write budget, last-active in the state ConfigMap,
//! and Events.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::Kube;
use super::cache::{Scalable, Seen};
use crate::config::{TargetKind, TargetRef};
use crate::engine::Time;
use crate::error::chain;
use crate::sync::lock;
use crate::workload::state::StateError;
use crate::workload::{FIELD_MANAGER, ScaleTarget, TargetError, TargetErrorKind, TargetEvent, TargetView};

impl Kube {
    /// Takes the stored last-active into `view` when it is newer than the annotation an
    /// older sqscale left on the target (read, never written again).
    async fn add_state(&self, context: Option<&str>, t: &TargetRef, view: &mut TargetView) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        let stored = Box::pin(connection.state.get(t)).await.map_err(|e| state_error(t, e))?;
        view.last_active = view.last_active.max(stored);
        view.stored_last_active = stored;
        Ok(())
    }
}

impl ScaleTarget for Kube {
    async fn read(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let mut view = self.read_target(context, t).await?;
        self.add_state(context, t, &mut view).await?;
        Ok(view)
    }

    async fn read_fresh(&self, context: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let api = self.api(context, t).await?;
        let (_, seen) = Seen::of(self.call(t, "reading the target", api.get(&t.name)).await?);
        let mut view = seen.view();
        self.add_state(context, t, &mut view).await?;
        Ok(view)
    }

    async fn scale(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        replicas: u32,
        resource_version: Option<&str>,
    ) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        let api: Api<Scalable> = Api::namespaced_with(connection.client.clone(), &t.namespace, &t.kind);
        if tokio::time::timeout_at(deadline, connection.limit.wait()).await.is_err() {
            let message = format!(
                "patching /scale: no write allowed within {}s by [kubernetes] qps and burst",
                self.timeout.as_secs_f64()
            );
            return Err(TargetError::new(t.to_string(), TargetErrorKind::Throttled, message));
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        // The version the decision was made on: a change since (a `kubectl scale`, a
        // pause annotation) makes this a 409, and the worker decides again on what is
        // there now instead of overwriting it.
        let mut body = json!({ "spec": { "replicas": replicas } });
        if let Some(v) = resource_version {
            body["metadata"] = json!({ "resourceVersion": v });
        }
        let patch = Patch::Merge(&body);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.call_within(left, t, "patching /scale", api.patch_scale(&t.name, &params, &patch)).await.map(drop)
    }

    async fn set_last_active(&self, context: Option<&str>, t: &TargetRef, at: Time) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        connection.state.set(t, at).await.map_err(|e| state_error(t, e))
    }

    async fn publish(&self, context: Option<&str>, t: &TargetRef, event: &TargetEvent) -> Result<(), TargetError> {
        let recorder = self.connection(context).await.map_err(|e| e.at(t))?.recorder.clone();
        let reference = ObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: Some(t.kind.as_str().to_owned()),
            name: Some(t.name.clone()),
            namespace: Some(t.namespace.clone()),
            ..ObjectReference::default()
        };
        let ev = Event {
            type_: if event.warning { EventType::Warning } else { EventType::Normal },
            reason: event.reason.to_owned(),
            note: Some(event.note.chars().take(1000).collect()),
            action: if event.reason.starts_with("Failed") { "Poll" } else { "Scale" }.to_owned(),
            secondary: None,
        };
        self.call(t, "recording an event", recorder.publish(&ev, &reference)).await
    }

    /// Drops the watch caches of every (context, namespace, kind) that no target in
    /// `used` has: the last handle of a cache aborts its watch, and with it the
    /// connection the watch held open.
    fn retain(&self, used: &[(Option<&str>, &TargetRef)]) {
        let used: std::collections::HashSet<(&str, &str, TargetKind)> =
            used.iter().map(|(context, t)| (self.context_key(*context), t.namespace.as_str(), t.kind)).collect();
        lock(&self.caches).retain(|namespace, caches| {
            caches.retain(|c| used.contains(&(c.context.as_str(), namespace.as_str(), c.kind)));
            !caches.is_empty()
        });
    }
}

fn state_error(t: &TargetRef, e: StateError) -> TargetError {
    TargetError::new(t.to_string(), TargetErrorKind::State, chain(&e)).caused_by(e)
}
