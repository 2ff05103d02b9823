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
use crate::leader::Leadership;
use crate::sync::lock;
use crate::workload::state::{Running, StateError};
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

    async fn set_last_active(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        at: Time,
        lead: &Leadership,
    ) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        connection.state.set(t, at, lead).await.map_err(|e| state_error(t, e))
    }

    fn keep_state(&self, rules: &Running, lead: &dyn Fn(Option<&str>) -> Leadership) {
        Kube::keep_state(self, rules, lead);
    }

    async fn original_replicas(&self, context: Option<&str>, t: &TargetRef) -> Result<Option<u32>, TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        Box::pin(connection.state.original(t)).await.map_err(|e| state_error(t, e))
    }

    async fn set_original_replicas(
        &self,
        context: Option<&str>,
        t: &TargetRef,
        replicas: Option<u32>,
        lead: &Leadership,
    ) -> Result<(), TargetError> {
        let connection = self.connection(context).await.map_err(|e| e.at(t))?;
        connection.state.set_original(t, replicas, lead).await.map_err(|e| state_error(t, e))
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

/// The requests the adapter sends, answered one by one by the test over a mock service
/// (no server, no TLS): what each carries, and what each answer becomes.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::{Request, Response};
    use kube::Client;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{Handle, SendResponse};

    use super::*;
    use crate::config::TargetKind;

    type Mock = Handle<Request<Body>, Response<Body>>;

    fn adapter() -> (Kube, Mock) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Kube::with_client(Client::new(service, "default"), Duration::from_secs(5)), handle)
    }

    fn target() -> TargetRef {
        TargetRef { kind: TargetKind::Deployment, name: "w".into(), namespace: "shop".into() }
    }

    /// The next request: method, path, query, content type and JSON body.
    async fn next(handle: &mut Mock) -> (String, String, String, Option<String>, Value, SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a request");
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
        let content_type = parts.headers.get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let query = parts.uri.query().unwrap_or_default().to_owned();
        (parts.method.to_string(), parts.uri.path().to_owned(), query, content_type, json, send)
    }

    fn answer(code: u16, body: Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
    }

    #[tokio::test]
    async fn a_scale_patch_carries_the_version_decided_on_and_a_409_is_a_conflict_not_resent() {
        let (kube, mut handle) = adapter();
        let write = tokio::spawn(async move { kube.scale(None, &target(), 3, Some("7")).await });
        let (method, path, query, content_type, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/w/scale"));
        assert!(query.contains("fieldManager=sqscale"), "{query}");
        assert_eq!(content_type.as_deref(), Some("application/merge-patch+json"));
        assert_eq!(body, json!({"spec": {"replicas": 3}, "metadata": {"resourceVersion": "7"}}));
        send.send_response(answer(409, status(409, "Conflict")));
        // (An adapter that resent the count would now wait for a second answer.)
        let e =
            tokio::time::timeout(Duration::from_secs(5), write).await.expect("answered at once").unwrap().unwrap_err();
        assert_eq!(e.kind(), "conflict");
        // Decided again by the worker, never resent here: no second request.
        assert!(futures::FutureExt::now_or_never(handle.next_request()).flatten().is_none());
    }

    #[tokio::test]
    async fn a_401_is_unauthorized_and_a_403_forbidden() {
        for (code, reason, kind) in [(401, "Unauthorized", "unauthorized"), (403, "Forbidden", "forbidden")] {
            let (kube, mut handle) = adapter();
            let write = tokio::spawn(async move { kube.scale(None, &target(), 1, None).await });
            let (_, _, _, _, body, send) = next(&mut handle).await;
            // Without a version (none was read), the patch sets the replicas alone.
            assert_eq!(body, json!({"spec": {"replicas": 1}}));
            send.send_response(answer(code, status(code, reason)));
            assert_eq!(write.await.unwrap().unwrap_err().kind(), kind);
        }
    }

    #[tokio::test]
    async fn last_active_goes_to_the_state_configmap_created_when_missing() {
        let (kube, mut handle) = adapter();
        let at = Time(1_795_780_800_000);
        let write =
            tokio::spawn(async move { kube.set_last_active(None, &target(), at, &Leadership::unelected()).await });
        let (method, path, _, content_type, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/api/v1/namespaces/sqscale/configmaps/sqscale-state"));
        assert_eq!(content_type.as_deref(), Some("application/merge-patch+json"));
        assert_eq!(body, json!({"data": {"deployment.shop.w": "2026-11-27T12:00:00Z"}}));
        send.send_response(answer(404, status(404, "NotFound")));
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v1/namespaces/sqscale/configmaps"));
        assert_eq!(body["metadata"]["name"], "sqscale-state");
        assert_eq!(body["data"], json!({"deployment.shop.w": "2026-11-27T12:00:00Z"}));
        send.send_response(answer(201, body));
        write.await.unwrap().unwrap();
        // Nothing was written on the target itself.
        assert!(futures::FutureExt::now_or_never(handle.next_request()).flatten().is_none());
    }

    /// A last-active write that waits for the write spacing (a PATCH went out less than
    /// a second ago) and whose caller gives up meanwhile is never sent: nobody waits for
    /// its outcome, and its poll has moved on (issue 26).
    #[tokio::test(start_paused = true)]
    async fn a_state_write_its_caller_gave_up_on_is_not_sent() {
        let (kube, mut handle) = adapter();
        let kube = std::sync::Arc::new(kube);
        let lead = Leadership::unelected();
        let first = {
            let (kube, lead) = (kube.clone(), lead.clone());
            tokio::spawn(async move { kube.set_last_active(None, &target(), Time(1_795_780_800_000), &lead).await })
        };
        let (method, _, _, _, _, send) = next(&mut handle).await;
        assert_eq!(method, "PATCH");
        let map = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "sqscale-state"}});
        send.send_response(answer(200, map));
        first.await.unwrap().unwrap();
        let t = target();
        let second = kube.set_last_active(None, &t, Time(1_795_780_860_000), &lead);
        assert!(tokio::time::timeout(Duration::from_millis(100), second).await.is_err(), "held by the spacing");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            futures::FutureExt::now_or_never(handle.next_request()).flatten().is_none(),
            "a write nobody waits for was sent"
        );
    }
}
