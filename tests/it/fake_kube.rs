//! Self-test of the fake Kubernetes API server (`tests/it/support/fake_kube.rs`), driven by the real `kube` client.

use crate::support::daemon::wait_until;
use crate::support::fake_kube;
use crate::support::jobs::{Behaviour, JobController};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fake_kube::{FakeKube, JobCounts, JobEvent, Kind, write_multi_kubeconfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, ObjectReference, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Config, Resource};
use serde_json::{Value, json};

/// Patch params as sqscale sends them.
fn sqscale_params() -> PatchParams {
    PatchParams { field_manager: Some("sqscale".into()), ..Default::default() }
}

async fn config_from(path: &Path, context: Option<&str>) -> Config {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
    Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("kube config from kubeconfig")
}

/// A client built the way the daemon builds one: from a kubeconfig file.
async fn client(fake: &FakeKube) -> Client {
    Client::try_from(config(fake).await).expect("kube client")
}

async fn config(fake: &FakeKube) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path);
    config_from(&path, None).await
}

/// The Status of an `Error::Api`, or a panic naming what came instead.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

fn rv_number(rv: Option<&String>) -> u64 {
    rv.expect("resourceVersion").parse().expect("numeric resourceVersion")
}

/// Next item of a stream, failing the test after 5 s instead of hanging.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("stream stalled")
}

#[tokio::test]
async fn scale_get_and_merge_patch_on_the_wire() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 3);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);

    let scale = api.get_scale("demo").await.unwrap();
    assert_eq!(scale.metadata.name.as_deref(), Some("demo"));
    assert_eq!(scale.metadata.namespace.as_deref(), Some("default"));
    assert!(scale.metadata.uid.is_some() && scale.metadata.creation_timestamp.is_some());
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(3));
    let status = scale.status.as_ref().unwrap();
    assert_eq!((status.replicas, status.selector.as_deref()), (3, Some("app=demo")));
    let rv0 = rv_number(scale.metadata.resource_version.as_ref());

    let patch = Patch::Merge(json!({"spec": {"replicas": 5}}));
    let scale = api.patch_scale("demo", &sqscale_params(), &patch).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(5));
    assert_eq!(scale.status.unwrap().replicas, 5, "status follows at once");
    assert!(rv_number(scale.metadata.resource_version.as_ref()) > rv0);

    let requests = fake.requests();
    let get = &requests[0];
    assert_eq!((get.method.as_str(), get.query.as_deref()), ("GET", None));
    let sent = requests.iter().rfind(|r| r.method == "PATCH").unwrap();
    assert_eq!(sent.path, "/apis/apps/v1/namespaces/default/deployments/demo/scale");
    assert_eq!(sent.query.as_deref(), Some("&fieldManager=sqscale"), "kube's `?&` query");
    assert_eq!(sent.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(serde_json::from_str::<Value>(&sent.body).unwrap(), json!({"spec": {"replicas": 5}}));
    assert!(sent.authorized);
    assert_eq!(sent.status, Some(200));

    // PatchParams::default() sends a bare `?`.
    api.patch_scale("demo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    assert_eq!(fake.requests().last().unwrap().query.as_deref(), Some(""));

    // The Deployment follows the Scale: spec, generation, and the instant rollout in status.
    let deployment = api.get("demo").await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(2));
    assert_eq!(deployment.metadata.generation, Some(3));
    let status = deployment.status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas, status.observed_generation), (Some(2), Some(2), Some(3)));

    // A no-op write is recorded but does not bump the resourceVersion (no etcd write).
    let rv = fake.resource_version(Kind::Deployment, "default", "demo");
    api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    assert_eq!(fake.resource_version(Kind::Deployment, "default", "demo"), rv);

    let strategic = Patch::Strategic(json!({"spec": {"replicas": 4}}));
    let scale = api.patch_scale("demo", &sqscale_params(), &strategic).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    assert_eq!(fake.requests().last().unwrap().content_type.as_deref(), Some("application/strategic-merge-patch+json"));

    // No server-side apply in the fake.
    let apply = Patch::Apply(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 6}}));
    let status = api_error(api.patch_scale("demo", &PatchParams::apply("sqscale").force(), &apply).await);
    assert_eq!((status.code, status.reason.as_str()), (415, "UnsupportedMediaType"));

    assert_eq!(fake.scale_history(Kind::Deployment, "default", "demo"), vec![5, 2, 2, 4]);
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(4));
    assert_eq!(fake.count("PATCH", "/demo/scale"), 5);
}

#[tokio::test]
async fn deployment_annotations_merge_patch_and_replace() {
    let fake = FakeKube::start().await;
    fake.add_deployment("apps", "web", 2);
    fake.annotate(Kind::Deployment, "apps", "web", "sqscale.io/queue", Some("orders"));
    let api: Api<Deployment> = Api::namespaced(client(&fake).await, "apps");

    let d = api.get("web").await.unwrap();
    let annotations = d.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["sqscale.io/queue"], "orders");
    assert_eq!(d.metadata.generation, Some(1));
    let spec = d.spec.clone();
    assert_eq!(spec.selector.match_labels.unwrap()["app"], "web");
    assert_eq!(spec.template.spec.unwrap().containers.len(), 1);
    let rv = d.metadata.resource_version.clone();

    let patch = Patch::Merge(json!({"metadata": {"annotations": {"sqscale.io/paused": "true"}}}));
    let patched = api.patch("web", &sqscale_params(), &patch).await.unwrap();
    let annotations = patched.metadata.annotations.unwrap();
    assert_eq!(
        (annotations["sqscale.io/paused"].as_str(), annotations["sqscale.io/queue"].as_str()),
        ("true", "orders")
    );
    assert_eq!(patched.metadata.generation, Some(1), "metadata changes leave generation alone");
    assert_ne!(patched.metadata.resource_version, rv);

    // null removes a key (RFC 7386).
    let patch = Patch::Merge(json!({"metadata": {"annotations": {"sqscale.io/paused": null}}}));
    let patched = api.patch("web", &sqscale_params(), &patch).await.unwrap();
    assert!(!patched.metadata.annotations.unwrap().contains_key("sqscale.io/paused"));

    // A stale resourceVersion in a patch body is a precondition: 409, the real message, no change.
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": rv, "annotations": {"x": "y"}}}));
    let status = api_error(api.patch("web", &sqscale_params(), &stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    assert!(
        !fake.object(Kind::Deployment, "apps", "web").unwrap()["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key("x")
    );

    // PUT: stale -> 409, current -> replaced (a spec change bumps generation).
    let status = api_error(api.replace("web", &PostParams::default(), &d).await);
    assert_eq!(status.code, 409);
    let mut current = api.get("web").await.unwrap();
    current.spec.replicas = Some(7);
    let replaced = api.replace("web", &PostParams::default(), &current).await.unwrap();
    assert_eq!((replaced.spec.replicas, replaced.metadata.generation), (Some(7), Some(2)));
    assert_eq!(fake.scale_history(Kind::Deployment, "apps", "web"), vec![7]);

    // Lists deserialize into DeploymentList and carry a resourceVersion.
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    // DELETE answers a Success Status and the object is gone.
    let deleted = api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right());
    assert!(fake.object(Kind::Deployment, "apps", "web").is_none());
}

#[tokio::test]
async fn not_found_and_unknown_paths_are_status_404() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());

    let status = api_error(deployments.get_scale("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "deployments.apps \"nope\" not found");
    let details = status.details.unwrap();
    assert_eq!((details.name.as_str(), details.group.as_str(), details.kind.as_str()), ("nope", "apps", "deployments"));

    let patch = Patch::Merge(json!({"spec": {"replicas": 1}}));
    assert_eq!(api_error(deployments.patch_scale("nope", &sqscale_params(), &patch).await).code, 404);
    assert_eq!(api_error(deployments.get("nope").await).code, 404);

    let statefulsets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let status = api_error(statefulsets.get_scale("nope").await);
    assert_eq!(status.message, "statefulsets.apps \"nope\" not found");

    let request = axum::http::Request::get("/apis/example.com/v1/namespaces/default/things/x").body(vec![]).unwrap();
    let status = api_error(client.request_text(request).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn wrong_token_is_401_and_changes_nothing() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);
    api.get_scale("demo").await.unwrap();

    fake.set_token("rotated-token");
    let status =
        api_error(api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 9}}))).await);
    assert_eq!((status.code, status.reason.as_str(), status.message.as_str()), (401, "Unauthorized", "Unauthorized"));
    assert!(!fake.requests().last().unwrap().authorized);
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(1));

    // A kubeconfig written now carries the new token.
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);
    assert_eq!(fake.token(), "rotated-token");
    api.get_scale("demo").await.unwrap();
}

#[tokio::test]
async fn stale_resource_version_on_scale_is_409() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);
    let old = api.get_scale("demo").await.unwrap();
    let old_rv = old.metadata.resource_version.clone().unwrap();

    // Someone else scales in between.
    fake.set_replicas(Kind::Deployment, "default", "demo", 2);
    let patch = Patch::Merge(json!({"metadata": {"resourceVersion": old_rv}, "spec": {"replicas": 5}}));
    let status = api_error(api.patch_scale("demo", &sqscale_params(), &patch).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.starts_with("Operation cannot be fulfilled on deployments.apps \"demo\""));
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(2));

    // PUT of a stale Scale too.
    let status = api_error(api.replace_scale("demo", &PostParams::default(), &old).await);
    assert_eq!(status.code, 409);

    // With the current resourceVersion the same write goes through.
    let current = api.get_scale("demo").await.unwrap();
    let patch = Patch::Merge(
        json!({"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": {"replicas": 5}}),
    );
    api.patch_scale("demo", &sqscale_params(), &patch).await.unwrap();

    // conflict_next: the next write to /scale is refused once.
    fake.conflict_next(1);
    let patch = Patch::Merge(json!({"spec": {"replicas": 6}}));
    assert_eq!(api_error(api.patch_scale("demo", &sqscale_params(), &patch).await).code, 409);
    api.patch_scale("demo", &sqscale_params(), &patch).await.unwrap();
    assert_eq!(fake.scale_history(Kind::Deployment, "default", "demo"), vec![5, 6]);
}

#[tokio::test]
async fn statefulset_scale() {
    let fake = FakeKube::start().await;
    fake.add_statefulset("db", "pg", 1);
    let api: Api<StatefulSet> = Api::namespaced(client(&fake).await, "db");

    let scale = api.get_scale("pg").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=pg"));
    api.patch_scale("pg", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();

    let sts = api.get("pg").await.unwrap();
    assert_eq!(sts.spec.service_name.as_deref(), Some("pg"));
    let status = sts.status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (3, Some(3)));

    // Scaled to zero, the omitempty counts disappear as on a real cluster.
    api.patch_scale("pg", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await.unwrap();
    let status = api.get("pg").await.unwrap().status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (0, None));
    assert_eq!(fake.scale_history(Kind::StatefulSet, "db", "pg"), vec![3, 0]);

    // Negative replicas are invalid.
    let status =
        api_error(api.patch_scale("pg", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": -1}}))).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn injected_failures_and_kube_retries() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let client = client(&fake).await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let patch = Patch::Merge(json!({"spec": {"replicas": 4}}));

    // 500 reaches the caller, changes nothing, and the next request succeeds.
    fake.fail_next(1, 500);
    let status = api_error(api.patch_scale("demo", &sqscale_params(), &patch).await);
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(1));
    api.get_scale("demo").await.unwrap();

    // GET /version is never failed.
    fake.fail_next(1, 403);
    assert_eq!(client.apiserver_version().await.unwrap().git_version, "v1.34.0-fake");
    let status = api_error(api.get_scale("demo").await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(
        status.message.contains("cannot get resource \"deployments/scale\" in API group \"apps\""),
        "{}",
        status.message
    );

    // kube's default client retries 503 (and 429/504) by itself: the caller only sees success.
    fake.clear_requests();
    fake.fail_next(2, 503);
    api.patch_scale("demo", &sqscale_params(), &patch).await.unwrap();
    let statuses: Vec<Option<u16>> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(503), Some(503), Some(200)]);
    assert_eq!(fake.scale_history(Kind::Deployment, "default", "demo"), vec![4]);

    // ... and honours 429's Retry-After: 1.
    fake.fail_next(1, 429);
    let started = Instant::now();
    api.get_scale("demo").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

    // With default_retry off, 503 and 429 reach the caller (429 with its Retry-After header).
    let mut config = config(&fake).await;
    config.default_retry = false;
    let raw = Client::try_from(config).unwrap();
    let no_retry: Api<Deployment> = Api::default_namespaced(raw.clone());
    fake.fail_next(1, 503);
    assert_eq!(api_error(no_retry.get_scale("demo").await).reason, "ServiceUnavailable");
    fake.fail_next(1, 429);
    let request = axum::http::Request::get("/apis/apps/v1/namespaces/default/deployments/demo/scale")
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let response = raw.send(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");

    // drop_next: the connection is reset without an answer; nothing changes; then all is well.
    fake.drop_next(1);
    let err = api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 8}}))).await;
    assert!(matches!(err, Err(ref e) if !matches!(e, kube::Error::Api(_))), "{err:?}");
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(4));
    assert_eq!(fake.requests().last().unwrap().status, None);
    api.get_scale("demo").await.unwrap();

    // Latency delays every answer.
    fake.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    api.get_scale("demo").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.clear_faults();
}

#[tokio::test]
async fn watch_events_on_the_wire() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);

    // From "0": the current state as ADDED, then changes; the stream ends after timeoutSeconds
    // with a BOOKMARK (kube asks for bookmarks by default).
    let mut events = api.watch(&WatchParams::default().timeout(2), "0").await.unwrap().boxed();
    match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Added(d) => assert_eq!(d.metadata.name.as_deref(), Some("demo")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 4}}))).await.unwrap();
    match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Modified(d) => assert_eq!(d.spec.replicas, Some(4)),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    fake.delete(Kind::Deployment, "default", "demo");
    assert!(matches!(next(&mut events).await.unwrap().unwrap(), WatchEvent::Deleted(_)));
    let bookmark_rv = match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => b.metadata.resource_version,
        other => panic!("expected BOOKMARK, got {other:?}"),
    };
    assert!(next(&mut events).await.is_none(), "stream ends at timeoutSeconds");

    // Compaction: a watch from an old resourceVersion gets 410 Expired.
    fake.add_deployment("default", "again", 1);
    fake.compact_watch_history();
    let mut events = api.watch(&WatchParams::default().timeout(5), &bookmark_rv).await.unwrap().boxed();
    match next(&mut events).await.unwrap() {
        Ok(WatchEvent::Error(status)) | Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_watcher_sees_added_then_modified() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let api: Api<Deployment> = Api::namespaced(client, "watched");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();

    // Initial list of an empty namespace.
    assert!(matches!(next(&mut stream).await.unwrap().unwrap(), watcher::Event::Init));
    assert!(matches!(next(&mut stream).await.unwrap().unwrap(), watcher::Event::InitDone));

    fake.add_deployment("watched", "w", 1);
    fake.add_deployment("elsewhere", "x", 1); // another namespace: not seen
    match next(&mut stream).await.unwrap().unwrap() {
        watcher::Event::Apply(d) => assert_eq!((d.metadata.name.as_deref(), d.spec.replicas), (Some("w"), Some(1))),
        other => panic!("expected Apply (ADDED), got {other:?}"),
    }
    api.patch_scale("w", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 4}}))).await.unwrap();
    match next(&mut stream).await.unwrap().unwrap() {
        watcher::Event::Apply(d) => assert_eq!(d.spec.replicas, Some(4)),
        other => panic!("expected Apply (MODIFIED), got {other:?}"),
    }
    let watch =
        fake.requests().into_iter().find(|r| r.query.as_deref().is_some_and(|q| q.contains("watch=true"))).unwrap();
    assert!(watch.query.unwrap().contains("allowWatchBookmarks=true"));
}

#[tokio::test]
async fn list_pagination_and_selectors() {
    let fake = FakeKube::start().await;
    for name in ["a", "b", "c"] {
        fake.add_deployment("default", name, 1);
    }
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);

    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    let names: Vec<_> = page.items.iter().map(|d| d.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(page.metadata.remaining_item_count, Some(1));
    let token = page.metadata.continue_.unwrap();
    let page = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(page.items[0].metadata.name.as_deref(), Some("c"));
    assert!(page.metadata.continue_.is_none());

    assert_eq!(api.list(&ListParams::default().labels("app=b")).await.unwrap().items.len(), 1);
    assert_eq!(api.list(&ListParams::default().labels("app in (a,c)")).await.unwrap().items.len(), 2);
    assert_eq!(api.list(&ListParams::default().fields("metadata.name!=a")).await.unwrap().items.len(), 2);
    let status = api_error(api.list(&ListParams::default().fields("spec.replicas=1")).await);
    assert_eq!(status.code, 400);
}

#[tokio::test]
async fn leases_create_get_and_conflict() {
    let fake = FakeKube::start().await;
    let api: Api<Lease> = Api::namespaced(client(&fake).await, "kube-system");
    let lease = Lease {
        metadata: kube::api::ObjectMeta { name: Some("sqscale".into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };

    let created = api.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("kube-system"));
    let got = api.get("sqscale").await.unwrap();
    assert_eq!(got.spec.as_ref().unwrap().holder_identity.as_deref(), Some("a"));

    let status = api_error(api.create(&PostParams::default(), &lease).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status.message, "leases.coordination.k8s.io \"sqscale\" already exists");

    // Another holder takes over; our stale replace then conflicts.
    fake.put_lease("kube-system", "sqscale", json!({"holderIdentity": "b", "leaseDurationSeconds": 15}));
    let mut mine = got.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let status = api_error(api.replace("sqscale", &PostParams::default(), &mine).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"sqscale\""));
    let stale = Patch::Merge(
        json!({"metadata": {"resourceVersion": got.metadata.resource_version}, "spec": {"holderIdentity": "a3"}}),
    );
    assert_eq!(api_error(api.patch("sqscale", &PatchParams::default(), &stale).await).code, 409);
    assert_eq!(fake.lease("kube-system", "sqscale").unwrap()["spec"]["holderIdentity"], "b");

    let fresh = api.get("sqscale").await.unwrap();
    mine.metadata.resource_version = fresh.metadata.resource_version;
    let replaced = api.replace("sqscale", &PostParams::default(), &mine).await.unwrap();
    assert_eq!(replaced.spec.unwrap().holder_identity.as_deref(), Some("a2"));

    assert_eq!(api_error(api.get("other").await).message, "leases.coordination.k8s.io \"other\" not found");
}

#[tokio::test]
async fn events_through_the_recorder() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let client = client(&fake).await;
    let deployment = Api::<Deployment>::default_namespaced(client.clone()).get("demo").await.unwrap();
    let reporter = Reporter { controller: "sqscale".into(), instance: Some("test-1".into()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some("replicas 1 -> 3".into()),
        action: "Scale".into(),
        secondary: None,
    };

    // First publish POSTs, the repeat PATCHes the series.
    let reference = deployment.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    assert_eq!(fake.count("POST", "/apis/events.k8s.io/v1/namespaces/default/events"), 1);
    assert_eq!(fake.count("PATCH", ""), 1);
    let events = fake.events();
    assert_eq!(events.len(), 1);
    let stored = &events[0];
    assert_eq!((stored["reason"].as_str(), stored["note"].as_str()), (Some("Scaled"), Some("replicas 1 -> 3")));
    assert_eq!(stored["regarding"]["name"], "demo");
    assert_eq!(stored["reportingController"], "sqscale");
    assert_eq!(stored["series"]["count"], 2);

    // Core v1 events are stored alongside.
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let core_event = CoreEvent {
        metadata: kube::api::ObjectMeta { generate_name: Some("demo.".into()), ..Default::default() },
        involved_object: ObjectReference {
            kind: Some("Deployment".into()),
            name: Some("demo".into()),
            ..Default::default()
        },
        reason: Some("Legacy".into()),
        ..Default::default()
    };
    let created = core.create(&PostParams::default(), &core_event).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("demo."));
    assert_eq!(fake.events().len(), 2);

    // An events.k8s.io Event without its required fields is rejected like the real validation does.
    let request = axum::http::Request::post("/apis/events.k8s.io/v1/namespaces/default/events")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"metadata": {"name": "bad"}, "type": "Normal"})).unwrap())
        .unwrap();
    let status = api_error(client.request_text(request).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.starts_with("Event.events.k8s.io \"bad\" is invalid: ["), "{}", status.message);
}

#[tokio::test]
async fn access_reviews_and_deny() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let client = client(&fake).await;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = |verb: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("default".into()),
                verb: Some(verb.into()),
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                subresource: Some("scale".into()),
                name: Some("demo".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };

    let answer = reviews.create(&PostParams::default(), &review("patch")).await.unwrap();
    assert!(answer.status.unwrap().allowed);
    assert_eq!(answer.spec.resource_attributes.unwrap().verb.as_deref(), Some("patch"), "echoed back");

    fake.deny("patch", "deployments", "scale");
    let answer = reviews.create(&PostParams::default(), &review("patch")).await.unwrap().status.unwrap();
    assert!(!answer.allowed);
    assert!(answer.reason.is_some());
    assert!(reviews.create(&PostParams::default(), &review("get")).await.unwrap().status.unwrap().allowed);

    // The denial holds for the real request too.
    let api: Api<Deployment> = Api::default_namespaced(client);
    let status =
        api_error(api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "deployments.apps \"demo\" is forbidden: User \"tester\" cannot patch resource \"deployments/scale\" \
         in API group \"apps\" in the namespace \"default\""
    );
    api.get_scale("demo").await.unwrap();
    fake.allow_all();
    api.patch_scale("demo", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
}

#[tokio::test]
async fn version_discovery_and_multi_cluster_kubeconfig() {
    let one = FakeKube::start().await;
    let two = FakeKube::start().await;
    one.add_deployment("default", "on-one", 1);
    two.add_deployment("default", "on-two", 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    write_multi_kubeconfig(&path, &[("one", &one), ("two", &two)], "two");

    let current = Client::try_from(config_from(&path, None).await).unwrap();
    let api: Api<Deployment> = Api::default_namespaced(current.clone());
    assert_eq!(api.get_scale("on-two").await.unwrap().spec.unwrap().replicas, Some(2));
    assert_eq!(api_error(api.get_scale("on-one").await).code, 404);
    let other = Client::try_from(config_from(&path, Some("one")).await).unwrap();
    Api::<Deployment>::default_namespaced(other).get_scale("on-one").await.unwrap();

    let version = current.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str(), version.git_version.as_str()),
        ("1", "34", "v1.34.0-fake")
    );
    let groups = current.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "apps"));
    let apps = current.list_api_group_resources("apps/v1").await.unwrap();
    assert!(apps.resources.iter().any(|r| r.name == "deployments/scale" && r.kind == "Scale"));
    assert_eq!(current.list_core_api_versions().await.unwrap().versions, ["v1"]);
}

#[tokio::test]
async fn json_patch_and_dry_run() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let client = client(&fake).await;
    let path = "/apis/apps/v1/namespaces/default/deployments/demo/scale";
    let patch = |query: &str, body: Value| {
        axum::http::Request::patch(format!("{path}?{query}"))
            .header("content-type", "application/json-patch+json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };

    let scale: Scale =
        client.request(patch("", json!([{"op": "replace", "path": "/spec/replicas", "value": 7}]))).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(7));
    let failed_test = json!([{"op": "test", "path": "/spec/replicas", "value": 1}, {"op": "replace", "path": "/spec/replicas", "value": 9}]);
    assert_eq!(api_error(client.request::<Scale>(patch("", failed_test)).await).code, 422);

    let dry: Scale = client
        .request(patch("dryRun=All", json!([{"op": "replace", "path": "/spec/replicas", "value": 2}])))
        .await
        .unwrap();
    assert_eq!(dry.spec.unwrap().replicas, Some(2));
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(7));
    assert_eq!(fake.scale_history(Kind::Deployment, "default", "demo"), vec![7]);
}

#[tokio::test]
async fn shutdown_refuses_connections() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);
    api.get_scale("demo").await.unwrap();
    fake.shutdown();
    let result = tokio::time::timeout(Duration::from_secs(5), api.get_scale("demo")).await.expect("fails fast");
    assert!(matches!(result, Err(ref e) if !matches!(e, kube::Error::Api(_))), "{result:?}");
    // State stays readable after shutdown.
    assert_eq!(fake.replicas(Kind::Deployment, "default", "demo"), Some(1));
}

#[tokio::test]
async fn runtime_watcher_recovers_from_closed_watches() {
    let fake = FakeKube::start().await;
    fake.add_deployment("default", "demo", 1);
    let api: Api<Deployment> = Api::default_namespaced(client(&fake).await);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    // Init, InitApply(demo), InitDone
    for _ in 0..3 {
        next(&mut stream).await.unwrap().unwrap();
    }
    // The server ends the watch; kube re-watches from the last resourceVersion and misses nothing.
    fake.close_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_replicas(Kind::Deployment, "default", "demo", 3);
    let applied = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let watcher::Event::Apply(d) = stream.try_next().await.unwrap().unwrap() {
                return d;
            }
        }
    })
    .await
    .expect("watcher delivered the change");
    assert_eq!(applied.spec.replicas, Some(3));
}

/// sqscale's state as the daemon keeps it: one ConfigMap per context, one key per target.
fn state_map(data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some("sqscale-state".into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..Default::default()
    }
}

fn keys(cm: &ConfigMap) -> Vec<&str> {
    cm.data.as_ref().map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default()
}

#[tokio::test]
async fn config_maps_create_patch_replace_and_conflict() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "sqscale");

    let status = api_error(api.get("sqscale-state").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "configmaps \"sqscale-state\" not found");
    let details = status.details.unwrap();
    assert_eq!((details.group.as_str(), details.kind.as_str()), ("", "configmaps"), "core: no group");

    let created =
        api.create(&PostParams::default(), &state_map(&[("deployment.shop.a", "2026-12-02T06:00:00Z")])).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("sqscale"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let status = api_error(api.create(&PostParams::default(), &state_map(&[])).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status.message, "configmaps \"sqscale-state\" already exists");

    // Several keys in one merge patch; the keys not named stay, and null removes one.
    let patch = Patch::Merge(json!({"data": {
        "deployment.shop.b": "2026-12-02T06:01:00Z",
        "statefulset.shop.c": "2026-12-02T06:01:00Z",
    }}));
    let patched = api.patch("sqscale-state", &sqscale_params(), &patch).await.unwrap();
    assert_eq!(keys(&patched), ["deployment.shop.a", "deployment.shop.b", "statefulset.shop.c"]);
    assert_eq!(fake.count("PATCH", "/api/v1/namespaces/sqscale/configmaps/sqscale-state"), 1);
    let request = fake.requests().pop().unwrap();
    assert_eq!(request.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(request.query.as_deref(), Some("&fieldManager=sqscale"));
    let removed = Patch::Merge(json!({"data": {"deployment.shop.b": null}}));
    let patched = api.patch("sqscale-state", &sqscale_params(), &removed).await.unwrap();
    assert_eq!(keys(&patched), ["deployment.shop.a", "statefulset.shop.c"]);
    assert!(
        rv_number(patched.metadata.resource_version.as_ref()) > rv_number(created.metadata.resource_version.as_ref())
    );

    // Writing what is already there is no write: the resourceVersion stays.
    let same = Patch::Merge(json!({"data": {"deployment.shop.a": "2026-12-02T06:00:00Z"}}));
    let unchanged = api.patch("sqscale-state", &sqscale_params(), &same).await.unwrap();
    assert_eq!(unchanged.metadata.resource_version, patched.metadata.resource_version);

    // Strategic merge and JSON patches work on data too.
    let strategic = Patch::Strategic(json!({"data": {"deployment.shop.d": "2026-12-02T06:02:00Z"}}));
    api.patch("sqscale-state", &sqscale_params(), &strategic).await.unwrap();
    let remove = axum::http::Request::patch("/api/v1/namespaces/sqscale/configmaps/sqscale-state")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&json!([{"op": "remove", "path": "/data/deployment.shop.d"}])).unwrap())
        .unwrap();
    let patched: ConfigMap = client.request(remove).await.unwrap();
    assert_eq!(keys(&patched), ["deployment.shop.a", "statefulset.shop.c"]);

    // Optimistic concurrency: another writer lands in between, so our replace from the
    // stale read, and a patch that names the stale resourceVersion, conflict.
    let read = api.get("sqscale-state").await.unwrap();
    fake.put_config_map("sqscale", "sqscale-state", json!({"deployment.shop.a": "2026-12-02T07:00:00Z"}));
    let mut mine = read.clone();
    mine.data.as_mut().unwrap().insert("deployment.shop.e".into(), "2026-12-02T06:03:00Z".into());
    let status = api_error(api.replace("sqscale-state", &PostParams::default(), &mine).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on configmaps \"sqscale-state\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let stale = Patch::Merge(json!({
        "metadata": {"resourceVersion": read.metadata.resource_version},
        "data": {"deployment.shop.e": "2026-12-02T06:03:00Z"},
    }));
    assert_eq!(api_error(api.patch("sqscale-state", &sqscale_params(), &stale).await).code, 409);
    assert_eq!(
        fake.config_map("sqscale", "sqscale-state").unwrap()["data"],
        json!({"deployment.shop.a": "2026-12-02T07:00:00Z"})
    );
    let mut fresh = api.get("sqscale-state").await.unwrap();
    fresh.data.as_mut().unwrap().insert("deployment.shop.e".into(), "2026-12-02T06:03:00Z".into());
    let replaced = api.replace("sqscale-state", &PostParams::default(), &fresh).await.unwrap();
    assert_eq!(keys(&replaced), ["deployment.shop.a", "deployment.shop.e"]);

    // List, watch and delete, as for every other kind.
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let mut watch = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut watch).await, Some(Ok(WatchEvent::Added(_)))));
    api.delete("sqscale-state", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next(&mut watch).await, Some(Ok(WatchEvent::Deleted(_)))));
    assert!(fake.config_map("sqscale", "sqscale-state").is_none());

    let core = client.list_core_api_resources("v1").await.unwrap();
    let configmaps = core.resources.iter().find(|r| r.name == "configmaps").expect("configmaps discovered");
    assert!(configmaps.namespaced && configmaps.kind == "ConfigMap" && configmaps.verbs.contains(&"patch".to_owned()));
}

#[tokio::test]
async fn config_maps_are_validated_like_the_real_server() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "sqscale");
    api.create(&PostParams::default(), &state_map(&[("deployment.shop.a", "t")])).await.unwrap();
    let before = fake.config_map("sqscale", "sqscale-state").unwrap();

    // Keys: what a file name in a volume may be.
    let bad_key = Patch::Merge(json!({"data": {"bad/key": "t"}}));
    let status = api_error(api.patch("sqscale-state", &sqscale_params(), &bad_key).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "ConfigMap \"sqscale-state\" is invalid: data[bad/key]: Invalid value: \"bad/key\": a valid config key \
         must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or \
         'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
    );
    let details = status.details.unwrap();
    assert_eq!((details.name.as_str(), details.kind.as_str()), ("sqscale-state", "ConfigMap"));
    assert_eq!(
        (details.causes[0].field.as_str(), details.causes[0].reason.as_str()),
        ("data[bad/key]", "FieldValueInvalid")
    );
    let status =
        api_error(api.patch("sqscale-state", &sqscale_params(), &Patch::Merge(json!({"data": {"..x": "t"}}))).await);
    assert!(
        status.message.ends_with("data[..x]: Invalid value: \"..x\": must not start with '..'"),
        "{}",
        status.message
    );

    // Values: strings only. A patch that leaves a number is an invalid `patch`; a create
    // with one does not even decode.
    let number = Patch::Merge(json!({"data": {"deployment.shop.b": 1}}));
    let status = api_error(api.patch("sqscale-state", &sqscale_params(), &number).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.starts_with(" \"\" is invalid: patch: Invalid value: \"{"), "{}", status.message);
    assert!(
        status
            .message
            .ends_with("\": json: cannot unmarshal number into Go struct field ConfigMap.data of type string"),
        "{}",
        status.message
    );
    assert_eq!(status.details.unwrap().causes[0].field, "patch");
    let request = axum::http::Request::post("/api/v1/namespaces/sqscale/configmaps")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"metadata": {"name": "other"}, "data": {"k": true}})).unwrap())
        .unwrap();
    let status = api_error(client.request_text(request).await);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        status.message,
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal bool into Go struct \
         field ConfigMap.data of type string"
    );

    // Size: at most 1 MiB of values, data and binaryData together (binaryData decoded).
    let mib = 1 << 20;
    let full =
        Patch::Merge(json!({"data": {"deployment.shop.a": "x".repeat(mib - 8)}, "binaryData": {"b": "AAAAAAAAAAA="}}));
    api.patch("sqscale-state", &sqscale_params(), &full).await.expect("exactly 1 MiB fits");
    let over = Patch::Merge(json!({"data": {"deployment.shop.c": "x"}}));
    let status = api_error(api.patch("sqscale-state", &sqscale_params(), &over).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "ConfigMap \"sqscale-state\" is invalid: []: Too long: may not be more than 1048576 bytes"
    );
    assert_eq!(status.details.unwrap().causes[0].reason, "FieldValueTooLong");
    let too_big = state_map(&[("k", &"x".repeat(mib + 1))]);
    let too_big =
        ConfigMap { metadata: kube::api::ObjectMeta { name: Some("big".into()), ..Default::default() }, ..too_big };
    assert_eq!(api_error(api.create(&PostParams::default(), &too_big).await).code, 422);
    assert!(fake.config_map("sqscale", "big").is_none());

    // Nothing refused was stored.
    let after = fake.config_map("sqscale", "sqscale-state").unwrap();
    assert_eq!(after["data"]["deployment.shop.a"].as_str().map(str::len), Some(mib - 8));
    assert_ne!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
    assert_eq!(after["data"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn config_map_denials_and_write_counts() {
    let fake = FakeKube::start().await;
    fake.add_deployment("shop", "a", 1);
    let client = client(&fake).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "sqscale");
    api.create(&PostParams::default(), &state_map(&[])).await.unwrap();
    assert!(fake.config_map("sqscale", "sqscale-state").unwrap().get("data").is_none(), "empty data is omitted");

    fake.deny("patch", "configmaps", "");
    let patch = Patch::Merge(json!({"data": {"deployment.shop.a": "2026-12-02T06:00:00Z"}}));
    let status = api_error(api.patch("sqscale-state", &sqscale_params(), &patch).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "configmaps \"sqscale-state\" is forbidden: User \"tester\" cannot patch resource \"configmaps\" \
         in API group \"\" in the namespace \"sqscale\""
    );
    api.get("sqscale-state").await.expect("get is still allowed");
    fake.allow_all();
    api.patch("sqscale-state", &sqscale_params(), &patch).await.unwrap();

    // Every write request counts, refused or not, by resource; reads do not.
    let deployments: Api<Deployment> = Api::namespaced(client, "shop");
    deployments.patch_scale("a", &sqscale_params(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    deployments.get("a").await.unwrap();
    assert_eq!(fake.writes_to("configmaps"), 3, "create, refused patch, patch");
    assert_eq!(fake.writes_to("deployments/scale"), 1);
    assert_eq!(fake.writes_to("deployments"), 0, "a scale write is not a write of the whole Deployment");
    assert_eq!(fake.writes_to("leases"), 0);
    api.delete("sqscale-state", &DeleteParams::default()).await.unwrap();
    assert_eq!(fake.writes_to("configmaps"), 4);
}

fn keda(kind: &str, ns: Option<&str>, name: &str) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": kind, "metadata": metadata,
           "spec": {"scaleTargetRef": {"name": name}, "triggers": [{"type": "aws-sqs-queue", "metadata": {"queueURL": "q"}}]}})
}

#[tokio::test]
async fn keda_custom_resources_list_get_and_discovery() {
    let fake = FakeKube::start().await;
    fake.add_keda(keda("ScaledObject", Some("shop"), "orders"));
    fake.add_keda(keda("ScaledObject", Some("billing"), "orders"));
    fake.add_keda(keda("TriggerAuthentication", Some("shop"), "aws-role"));
    // A namespace given to a cluster-scoped object is dropped, as the real server does.
    fake.add_keda(keda("ClusterTriggerAuthentication", Some("keda"), "shared"));
    let client = client(&fake).await;
    let get = |path: &str| {
        let client = client.clone();
        let request = axum::http::Request::get(path).body(vec![]).unwrap();
        async move { client.request_text(request).await.map(|t| serde_json::from_str::<Value>(&t).unwrap()) }
    };

    // A list of custom resources: its kind, the list's resourceVersion, and items that keep
    // kind and apiVersion (unlike built-in types).
    let list = get("/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects").await.unwrap();
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("ScaledObjectList"), Some("keda.sh/v1alpha1"))
    );
    let rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0]["kind"].as_str(), items[0]["apiVersion"].as_str()),
        (Some("ScaledObject"), Some("keda.sh/v1alpha1"))
    );
    assert_eq!(items[0]["metadata"]["namespace"], "shop");
    assert_eq!(items[0]["spec"]["triggers"][0]["type"], "aws-sqs-queue", "stored as given");
    assert!(rv >= items[0]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap());
    let all = get("/apis/keda.sh/v1alpha1/scaledobjects").await.unwrap();
    let namespaces: Vec<&str> =
        all["items"].as_array().unwrap().iter().map(|i| i["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["billing", "shop"]);
    let auths = get("/apis/keda.sh/v1alpha1/namespaces/shop/triggerauthentications").await.unwrap();
    assert_eq!(auths["kind"], "TriggerAuthenticationList");
    assert_eq!(auths["items"][0]["metadata"]["name"], "aws-role");

    // Cluster-scoped: served without a namespace only.
    let ar = kube::core::ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ClusterTriggerAuthentication".into(),
        plural: "clustertriggerauthentications".into(),
    };
    let cluster: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let shared = cluster.get("shared").await.unwrap();
    assert_eq!(shared.metadata.namespace, None);
    assert_eq!(cluster.list(&ListParams::default()).await.unwrap().items.len(), 1);
    assert!(cluster.get_opt("nope").await.unwrap().is_none());
    let status = api_error(cluster.get("nope").await);
    assert_eq!(status.message, "clustertriggerauthentications.keda.sh \"nope\" not found");
    let status = api_error(get("/apis/keda.sh/v1alpha1/namespaces/keda/clustertriggerauthentications").await);
    assert_eq!(status.code, 404);

    // Discovery names the group, its version and the scope of each resource.
    let groups = client.list_api_groups().await.unwrap();
    let keda_group = groups.groups.iter().find(|g| g.name == "keda.sh").expect("keda.sh in /apis");
    assert_eq!(keda_group.preferred_version.as_ref().unwrap().group_version, "keda.sh/v1alpha1");
    let resources = client.list_api_group_resources("keda.sh/v1alpha1").await.unwrap();
    let scope: Vec<(&str, bool)> = resources.resources.iter().map(|r| (r.name.as_str(), r.namespaced)).collect();
    assert_eq!(
        scope,
        [("scaledobjects", true), ("triggerauthentications", true), ("clustertriggerauthentications", false)]
    );

    // Denied like any resource: 403 names the group.
    fake.deny("list", "scaledobjects", "");
    let status = api_error(get("/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects").await);
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("cannot list resource \"scaledobjects\" in API group \"keda.sh\" in the namespace \"shop\""),
        "{}",
        status.message
    );
}

// ---------------------------------------------------------------------------------------------
// batch/v1 Jobs and core Pods, and the test Job controller (tests/it/support/jobs.rs)
// ---------------------------------------------------------------------------------------------

/// A Job manifest as a user writes one: `generateName`, one container, `restartPolicy: Never`.
fn job_manifest(generate_name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": generate_name, "labels": labels},
        "spec": {"template": {
            "metadata": {"labels": {"app": "worker"}},
            "spec": {"containers": [{"name": "work", "image": "busybox:1.36"}], "restartPolicy": "Never"},
        }},
    })
}

fn job_from(manifest: Value) -> Job {
    serde_json::from_value(manifest).expect("a Job manifest")
}

fn labels(job: &Job) -> BTreeMap<String, String> {
    job.metadata.labels.clone().unwrap_or_default()
}

fn condition_types(job: &Job) -> Vec<(String, String)> {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    conditions.into_iter().map(|c| (c.type_, c.status)).collect()
}

fn pod_phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default()
}

/// Messages visible and in flight in `url`.
async fn queue_counts(url: &str) -> (u64, u64) {
    crate::support::sqs::counts(&crate::support::sqs::client().await, url).await
}

#[tokio::test]
async fn jobs_get_generated_names_and_the_real_defaults() {
    let fake = FakeKube::start().await;
    let api: Api<Job> = Api::namespaced(client(&fake).await, "media");

    let created = api.create(&PostParams::default(), &job_from(job_manifest("encode-", json!(null)))).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    let suffix = name.strip_prefix("encode-").expect("the generateName prefix");
    assert_eq!(suffix.len(), 5, "{name}");
    assert!(suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{name}");
    let uid = created.metadata.uid.clone().expect("uid");
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let spec = created.spec.clone().unwrap();
    assert_eq!((spec.completions, spec.parallelism, spec.backoff_limit), (Some(1), Some(1), Some(6)));
    assert_eq!((spec.suspend, spec.completion_mode.as_deref()), (Some(false), Some("NonIndexed")));
    let selector = spec.selector.unwrap().match_labels.unwrap();
    assert_eq!(selector, BTreeMap::from([("batch.kubernetes.io/controller-uid".to_owned(), uid.clone())]));
    let template_labels = spec.template.metadata.unwrap().labels.unwrap();
    let want = BTreeMap::from([
        ("app".to_owned(), "worker".to_owned()),
        ("batch.kubernetes.io/controller-uid".to_owned(), uid.clone()),
        ("batch.kubernetes.io/job-name".to_owned(), name.clone()),
        ("controller-uid".to_owned(), uid.clone()),
        ("job-name".to_owned(), name.clone()),
    ]);
    assert_eq!(template_labels, want);
    assert_eq!(labels(&created), want, "a Job without labels gets its template's");
    assert_eq!(created.status, Some(Default::default()), "status: {{}}");
    let pod_spec = spec.template.spec.unwrap();
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod_spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(api.get(&name).await.unwrap(), created);

    // A Job with labels of its own keeps just those.
    let own = json!({"app.kubernetes.io/managed-by": "sqscale", "sqscale.io/job": "encode"});
    let created = api.create(&PostParams::default(), &job_from(job_manifest("encode-", own))).await.unwrap();
    assert_eq!(labels(&created).keys().collect::<Vec<_>>(), ["app.kubernetes.io/managed-by", "sqscale.io/job"]);

    // A long generateName is cut to 58 characters, so the name fits a label value.
    let long = format!("{}-", "a".repeat(70));
    let created = api.create(&PostParams::default(), &job_from(job_manifest(&long, json!(null)))).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert_eq!(name.len(), 63);
    assert!(name.starts_with(&"a".repeat(58)));

    // Without name or generateName: 422.
    let mut manifest = job_manifest("", json!(null));
    manifest["metadata"] = json!({});
    let status = api_error(api.create(&PostParams::default(), &job_from(manifest)).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    // The same over a cluster-wide list, and fake.jobs().
    let all: Api<Job> = Api::all(client(&fake).await);
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 3);
    assert_eq!(fake.jobs("media").len(), 3);
    assert!(fake.jobs("other").is_empty());
}

#[tokio::test]
async fn jobs_the_real_server_refuses_are_422() {
    let fake = FakeKube::start().await;
    let api: Api<Job> = Api::namespaced(client(&fake).await, "default");
    let create = |manifest: Value| {
        let api = api.clone();
        async move { api_error(api.create(&PostParams::default(), &job_from(manifest)).await) }
    };
    let named = |name: &str| {
        let mut m = job_manifest("", json!(null));
        m["metadata"]["name"] = json!(name);
        m
    };

    // restartPolicy missing (defaulted to Always) or Always.
    let mut manifest = named("bad");
    manifest["spec"]["template"]["spec"].as_object_mut().unwrap().remove("restartPolicy");
    let status = create(manifest).await;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Job.batch \"bad\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    );
    let details = status.details.unwrap();
    assert_eq!((details.name.as_str(), details.group.as_str(), details.kind.as_str()), ("bad", "batch", "Job"));
    assert_eq!(details.causes[0].reason, "FieldValueNotSupported");
    assert_eq!(details.causes[0].field, "spec.template.spec.restartPolicy");
    let mut manifest = named("always");
    manifest["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    assert!(
        create(manifest)
            .await
            .message
            .ends_with("Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"")
    );

    // No template at all: no containers, and the defaulted restartPolicy.
    let mut manifest = named("empty");
    manifest["spec"] = json!({});
    let status = create(manifest).await;
    assert_eq!(status.code, 422);
    let fields: Vec<String> = status.details.unwrap().causes.into_iter().map(|c| c.field).collect();
    assert_eq!(fields, ["spec.template.spec.containers", "spec.template.spec.restartPolicy"]);

    // An invalid name, an invalid label value.
    let status = create(named("Not_A_Name")).await;
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("metadata.name: Invalid value: \"Not_A_Name\": a lowercase RFC 1123 subdomain"),
        "{}",
        status.message
    );
    let status = create(job_manifest("ok-", json!({"sqscale.io/job": "has space"}))).await;
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("metadata.labels: Invalid value: \"has space\": a valid label must be"),
        "{}",
        status.message
    );

    // A template copied from another Job (its controller-uid and selector): not auto-generated.
    let mut manifest = named("copied");
    manifest["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "0000"}});
    manifest["spec"]["template"]["metadata"]["labels"]["controller-uid"] = json!("0000");
    let status = create(manifest).await;
    assert_eq!(status.code, 422);
    assert!(status.message.contains("`selector` not auto-generated"), "{}", status.message);
    assert!(
        status.message.contains("spec.template.metadata.labels[controller-uid]: Invalid value: \"0000\""),
        "{}",
        status.message
    );

    assert!(fake.jobs("default").is_empty(), "nothing refused was stored");

    // The template of a Job is immutable; its labels are not.
    let name = fake.create_job("default", job_manifest("edit-", json!({"a": "1"})));
    let patch =
        Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "work", "image": "busybox:2"}]}}}}));
    let status = api_error(api.patch(&name, &PatchParams::default(), &patch).await);
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.template: Invalid value") && status.message.contains("field is immutable"),
        "{}",
        status.message
    );
    let patched = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "2"}}})))
        .await
        .unwrap();
    assert_eq!(labels(&patched)["a"], "2");
    // A client cannot write status through the Job itself (only through /status).
    let patch = Patch::Merge(json!({"status": {"succeeded": 1}}));
    let patched = api.patch(&name, &PatchParams::default(), &patch).await.unwrap();
    assert_eq!(patched.status.unwrap().succeeded, None);
    let patched = api.patch_status(&name, &PatchParams::default(), &patch).await.unwrap();
    assert_eq!(patched.status.unwrap().succeeded, Some(1));
}

#[tokio::test]
async fn jobs_and_pods_list_and_watch_by_label() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "media");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "media");
    let a = fake.create_job("media", job_manifest("a-", json!({"sqscale.io/job": "a"})));
    fake.create_job("media", job_manifest("a-", json!({"sqscale.io/job": "a"})));
    fake.create_job("media", job_manifest("b-", json!({"sqscale.io/job": "b"})));
    fake.create_job("other", job_manifest("a-", json!({"sqscale.io/job": "a"})));

    let listed = jobs.list(&ListParams::default().labels("sqscale.io/job=a")).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let all: Api<Job> = Api::all(client.clone());
    assert_eq!(all.list(&ListParams::default().labels("sqscale.io/job=a")).await.unwrap().items.len(), 3);
    assert_eq!(
        all.list(&ListParams::default().labels("sqscale.io/job in (a,b)").limit(2)).await.unwrap().items.len(),
        2
    );
    assert_eq!(jobs.list(&ListParams::default().fields("status.successful=0")).await.unwrap().items.len(), 3);
    let rv = listed.metadata.resource_version.unwrap();

    // A watch from the list's resourceVersion sees the selector's changes only.
    let mut events =
        jobs.watch(&WatchParams::default().labels("sqscale.io/job=a").timeout(10), &rv).await.unwrap().boxed();
    let c = fake.create_job("media", job_manifest("a-", json!({"sqscale.io/job": "a"})));
    fake.create_job("media", job_manifest("b-", json!({"sqscale.io/job": "b"})));
    match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Added(job) => assert_eq!(job.metadata.name.as_deref(), Some(c.as_str())),
        other => panic!("expected ADDED, got {other:?}"),
    }
    // Relabelled out of the selector: DELETED for this watch.
    jobs.patch(&a, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sqscale.io/job": "z"}}})))
        .await
        .unwrap();
    match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Deleted(job) => assert_eq!(job.metadata.name.as_deref(), Some(a.as_str())),
        other => panic!("expected DELETED, got {other:?}"),
    }
    fake.set_job_condition("media", &c, "Complete", "True", None);
    match next(&mut events).await.unwrap().unwrap() {
        WatchEvent::Modified(job) => {
            assert_eq!(condition_types(&job), [("Complete".to_owned(), "True".to_owned())]);
            assert!(job.status.unwrap().completion_time.is_some());
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Pods: POST with generateName, Pending at once, selectors on labels and status.phase.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "p-", "labels": {"sqscale.io/job": "a"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = created.status.clone().unwrap();
    assert_eq!((status.phase.as_deref(), status.qos_class.as_deref()), (Some("Pending"), Some("BestEffort")));
    assert_eq!(created.spec.as_ref().unwrap().containers[0].image_pull_policy.as_deref(), Some("Always"));
    let mut pod_events =
        pods.watch(&WatchParams::default().labels("sqscale.io/job=a").timeout(10), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut pod_events).await.unwrap().unwrap(), WatchEvent::Added(_)));
    let name = created.metadata.name.clone().unwrap();
    assert_eq!(pods.list(&ListParams::default().fields("status.phase=Pending")).await.unwrap().items.len(), 1);
    assert_eq!(pods.list(&ListParams::default().fields("status.phase=Running")).await.unwrap().items.len(), 0);
    assert_eq!(pods.list(&ListParams::default().labels("sqscale.io/job=b")).await.unwrap().items.len(), 0);
    let status = api_error(pods.list(&ListParams::default().fields("status.bogus=1")).await);
    assert_eq!(status.code, 400);
    // A pod's spec cannot change; deleting one answers with the pod.
    let patch = Patch::Merge(json!({"spec": {"restartPolicy": "OnFailure"}}));
    assert_eq!(api_error(pods.patch(&name, &PatchParams::default(), &patch).await).code, 422);
    let deleted = pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let deleted = deleted.left().expect("a pod DELETE answers the pod");
    assert_eq!(deleted.metadata.name.as_deref(), Some(name.as_str()));
    assert!(matches!(next(&mut pod_events).await.unwrap().unwrap(), WatchEvent::Deleted(_)));

    // Compaction ends a Job watch from an old resourceVersion with 410 Expired.
    fake.compact_watch_history();
    let mut events = jobs.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    match next(&mut events).await.unwrap() {
        Ok(WatchEvent::Error(status)) | Err(kube::Error::Api(status)) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

/// The names of the pods in `ns` that belong to Job `job` (by their `job-name` label).
fn pods_named_for(fake: &FakeKube, ns: &str, job: &str) -> Vec<Value> {
    fake.pods(ns).into_iter().filter(|p| p.pointer("/metadata/labels/job-name") == Some(&json!(job))).collect()
}

#[tokio::test]
async fn deleting_jobs_honours_propagation_policy() {
    let fake = FakeKube::start().await;
    let api: Api<Job> = Api::namespaced(client(&fake).await, "media");
    // Pods that stay Pending, so only the deletion removes them.
    let _controller = JobController::start(&fake, None, Behaviour::default().stuck()).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let name = fake.create_job("media", job_manifest("d-", json!({"sqscale.io/job": "d"})));
        names.push(name);
    }
    let each_has_a_pod = || names.iter().all(|n| pods_named_for(&fake, "media", n).len() == 1);
    assert!(wait_until(Duration::from_secs(10), each_has_a_pod).await, "{:#?}", fake.pods("media"));
    let [background, foreground, orphan, default] = &names[..] else { unreachable!() };
    let pod = &pods_named_for(&fake, "media", background)[0];
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str(), owner["controller"].as_bool()),
        (Some("Job"), Some(background.as_str()), Some(true))
    );

    // Background: the Job at once (a Status), its pod shortly after.
    let deleted = api.delete(background, &DeleteParams::background()).await.unwrap();
    let status = deleted.right().expect("a Status");
    assert_eq!(status.details.unwrap().name, *background);
    assert_eq!(api_error(api.get(background).await).code, 404);
    assert!(wait_until(Duration::from_secs(5), || pods_named_for(&fake, "media", background).is_empty()).await);

    // Foreground: marked, pods deleted, then the Job.
    let deleted = api.delete(foreground, &DeleteParams::foreground()).await.unwrap();
    let job = deleted.left().expect("the Job being deleted");
    assert!(job.metadata.deletion_timestamp.is_some());
    assert_eq!(job.metadata.finalizers, Some(vec!["foregroundDeletion".to_owned()]));
    assert!(wait_until(Duration::from_secs(5), || fake.job("media", foreground).is_none()).await);
    assert!(pods_named_for(&fake, "media", foreground).is_empty(), "its pods went first");

    // Orphan: the Job goes, its pod stays without an owner.
    let deleted = api.delete(orphan, &DeleteParams::orphan()).await.unwrap();
    let job = deleted.left().expect("the Job being deleted");
    assert_eq!(job.metadata.finalizers, Some(vec!["orphan".to_owned()]));
    assert!(wait_until(Duration::from_secs(5), || fake.job("media", orphan).is_none()).await);
    let left = pods_named_for(&fake, "media", orphan);
    assert_eq!(left.len(), 1);
    assert!(left[0]["metadata"].get("ownerReferences").is_none(), "{:#}", left[0]);

    // No policy: batch/v1's default is Orphan too (with the real server's warning).
    assert!(api.delete(default, &DeleteParams::default()).await.unwrap().is_left());
    assert!(wait_until(Duration::from_secs(5), || fake.job("media", default).is_none()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pods_named_for(&fake, "media", default).len(), 1, "the default orphans the pods");

    // Deleting a missing Job: 404 NotFound Status.
    let status = api_error(api.delete(background, &DeleteParams::background()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, format!("jobs.batch \"{background}\" not found"));

    // The history saw all four created and deleted.
    let history = fake.job_history();
    assert_eq!(history.iter().filter(|r| r.event == JobEvent::Created).count(), 4);
    assert_eq!(history.iter().filter(|r| r.event == JobEvent::Deleted).count(), 4);
    assert_eq!(fake.writes_to("jobs"), 5, "four DELETEs and the 404");
}

#[tokio::test]
async fn a_job_works_off_one_message_and_completes() {
    let fake = FakeKube::start().await;
    let url = crate::support::sqs::queue("jobfake").await;
    crate::support::sqs::send(&url, 3).await;
    let client = client(&fake).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "media");
    let pods: Api<Pod> = Api::namespaced(client, "media");
    let mut job_events = jobs.watch(&WatchParams::default().timeout(30), "0").await.unwrap().boxed();
    let mut pod_events = pods.watch(&WatchParams::default().timeout(30), "0").await.unwrap().boxed();
    let controller = JobController::start(&fake, Some(url.clone()), Behaviour::default()).await;

    let created = jobs.create(&PostParams::default(), &job_from(job_manifest("encode-", json!(null)))).await.unwrap();
    let name = created.metadata.name.unwrap();
    // What watchers see: the Job active, then SuccessCriteriaMet, then Complete.
    let mut seen = Vec::new();
    loop {
        let Some(Ok(event)) = next(&mut job_events).await else { panic!("the Job watch ended: {seen:?}") };
        let job = match event {
            WatchEvent::Added(job) | WatchEvent::Modified(job) => job,
            other => panic!("unexpected {other:?}"),
        };
        let status = job.status.clone().unwrap_or_default();
        seen.push((status.active, status.succeeded, condition_types(&job)));
        if finished_condition(&job) {
            assert!(status.completion_time.is_some() && status.start_time.is_some());
            break;
        }
    }
    let yes = |t: &str| (t.to_owned(), "True".to_owned());
    assert!(seen.contains(&(Some(1), None, vec![])), "{seen:?}");
    assert!(seen.contains(&(None, Some(1), vec![yes("SuccessCriteriaMet")])), "{seen:?}");
    assert_eq!(seen.last().unwrap(), &(None, Some(1), vec![yes("SuccessCriteriaMet"), yes("Complete")]));

    // Its pod went Pending -> Running -> Succeeded, each step a watch event.
    let mut phases = Vec::new();
    while phases.last().map(String::as_str) != Some("Succeeded") {
        let Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) = next(&mut pod_events).await else {
            panic!("the pod watch ended: {phases:?}")
        };
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["job-name"], name);
        assert!(pod.metadata.name.as_ref().unwrap().starts_with(&format!("{name}-")));
        let phase = pod.status.unwrap().phase.unwrap();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
    }
    assert_eq!(phases, ["Pending", "Running", "Succeeded"]);
    let pod = &pods_named_for(&fake, "media", &name)[0];
    assert_eq!(pod_phase(pod), "Succeeded");
    assert_eq!(pod["spec"]["nodeName"], "fake-node");

    assert_eq!(queue_counts(&url).await, (2, 0), "one message worked off, two left");
    let stats = controller.stats();
    assert_eq!((stats.pods_created, stats.received, stats.deleted), (1, 1, 1));
    assert_eq!(fake.job_counts("media"), JobCounts { running: 0, pending: 0, complete: 1, failed: 0 });
    let history: Vec<JobEvent> = fake.job_history().into_iter().map(|r| r.event).collect();
    assert_eq!(history, [JobEvent::Created, JobEvent::Finished { failed: false }]);
}

fn finished_condition(job: &Job) -> bool {
    condition_types(job).iter().any(|(t, s)| (t == "Complete" || t == "Failed") && s == "True")
}

#[tokio::test]
async fn a_failing_job_ends_failed_after_its_backoff_limit() {
    let fake = FakeKube::start().await;
    let url = crate::support::sqs::queue("jobfake").await;
    crate::support::sqs::send(&url, 1).await;
    let controller = JobController::start(&fake, Some(url.clone()), Behaviour::default().failing()).await;
    let mut manifest = job_manifest("crash-", json!(null));
    manifest["spec"]["backoffLimit"] = json!(1);
    let name = fake.create_job("media", manifest);

    assert!(wait_until(Duration::from_secs(15), || fake.failed_jobs("media") == 1).await, "{:#?}", fake.jobs("media"));
    let job: Job = serde_json::from_value(fake.job("media", &name).unwrap()).unwrap();
    let yes = |t: &str| (t.to_owned(), "True".to_owned());
    assert_eq!(condition_types(&job), [yes("FailureTarget"), yes("Failed")]);
    let status = job.status.unwrap();
    assert_eq!((status.failed, status.succeeded, status.active), (Some(2), None, None), "the first pod and one retry");
    assert!(status.completion_time.is_none(), "completionTime is for success only");
    let reason = status.conditions.unwrap()[1].reason.clone();
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let pods = pods_named_for(&fake, "media", &name);
    assert_eq!(pods.iter().map(pod_phase).collect::<Vec<_>>(), ["Failed", "Failed"]);
    // The failed containers deleted nothing: the message is still in the queue.
    let (visible, in_flight) = queue_counts(&url).await;
    assert_eq!(visible + in_flight, 1);
    assert_eq!(controller.stats().deleted, 0);
}

#[tokio::test]
async fn a_stuck_job_stays_pending_until_it_is_scheduled() {
    let fake = FakeKube::start().await;
    let url = crate::support::sqs::queue("jobfake").await;
    crate::support::sqs::send(&url, 1).await;
    let controller = JobController::start(&fake, Some(url.clone()), Behaviour::default().stuck()).await;
    let name = fake.create_job("media", job_manifest("stuck-", json!(null)));

    let unschedulable = || {
        pods_named_for(&fake, "media", &name).first().is_some_and(|p| {
            p["status"]["conditions"][0]["reason"] == "Unschedulable"
                && p["status"]["conditions"][0]["status"] == "False"
        })
    };
    assert!(wait_until(Duration::from_secs(5), unschedulable).await, "{:#?}", fake.pods("media"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pods = pods_named_for(&fake, "media", &name);
    assert_eq!(pods.len(), 1);
    assert_eq!(pod_phase(&pods[0]), "Pending");
    assert_eq!(fake.job_counts("media"), JobCounts { running: 1, pending: 1, complete: 0, failed: 0 });
    let status = &fake.job("media", &name).unwrap()["status"];
    assert_eq!((status["active"].as_i64(), status["ready"].as_i64()), (Some(1), Some(0)));
    assert_eq!(queue_counts(&url).await, (1, 0), "nothing received");

    // Scheduled at last: it runs and completes.
    controller.set_behaviour(Behaviour::default());
    assert!(wait_until(Duration::from_secs(10), || fake.complete_jobs("media") == 1).await);
    assert_eq!(queue_counts(&url).await, (0, 0));
}

#[tokio::test]
async fn suspended_jobs_get_no_pods_and_an_empty_queue_still_completes() {
    let fake = FakeKube::start().await;
    let url = crate::support::sqs::queue("jobfake").await;
    let controller = JobController::start(&fake, Some(url), Behaviour::default()).await;
    let api: Api<Job> = Api::namespaced(client(&fake).await, "media");
    let mut manifest = job_manifest("later-", json!(null));
    manifest["spec"]["suspend"] = json!(true);
    manifest["spec"]["ttlSecondsAfterFinished"] = json!(0);
    let name = fake.create_job("media", manifest);

    let suspended = || fake.job("media", &name).unwrap()["status"]["conditions"][0]["type"] == "Suspended";
    assert!(wait_until(Duration::from_secs(5), suspended).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.pods("media").is_empty(), "a suspended Job gets no pods");
    assert_eq!(controller.stats().pods_created, 0);

    // Resumed: it runs, finds nothing, completes (as a worker exiting 0), and its TTL of 0
    // deletes it, and the garbage collector its pod.
    let patched =
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let gone = || fake.job("media", &name).is_none() && fake.pods("media").is_empty();
    assert!(wait_until(Duration::from_secs(10), gone).await, "{:#?}", fake.jobs("media"));
    let events: Vec<JobEvent> = fake.job_history().into_iter().map(|r| r.event).collect();
    assert_eq!(events, [JobEvent::Created, JobEvent::Finished { failed: false }, JobEvent::Deleted]);
    let stats = controller.stats();
    assert_eq!((stats.pods_created, stats.found_nothing, stats.received), (1, 1, 0));
}

#[tokio::test]
async fn a_backlog_empties_with_per_job_counts_and_the_history_shows_concurrency() {
    let fake = FakeKube::start().await;
    let url = crate::support::sqs::queue("jobfake").await;
    crate::support::sqs::send(&url, 5).await;
    // Two rules' Jobs: only `sqscale.io/job=big` runs here, taking MESSAGES_PER_JOB = 2.
    let behaviour = Behaviour::default().only("sqscale.io/job", "big").work(Duration::from_millis(300));
    let controller = JobController::start(&fake, Some(url.clone()), behaviour).await;
    let mut manifest = job_manifest("big-", json!({"sqscale.io/job": "big"}));
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "MESSAGES_PER_JOB", "value": "2"}]);
    for _ in 0..3 {
        fake.create_job("media", manifest.clone());
    }
    let other = fake.create_job("media", job_manifest("small-", json!({"sqscale.io/job": "small"})));

    assert!(
        wait_until(Duration::from_secs(15), || fake.complete_jobs("media") == 3).await,
        "{:#?}",
        fake.jobs("media")
    );
    assert_eq!(queue_counts(&url).await, (0, 0), "2 + 2 + 1 messages");
    assert_eq!((controller.stats().received, controller.stats().deleted), (5, 5));
    assert!(fake.pods_of("media", &other).is_empty(), "not this controller's Job");
    assert_eq!(fake.job_counts("media"), JobCounts { running: 1, pending: 1, complete: 3, failed: 0 });
    assert_eq!(fake.job_creations("media").len(), 4);
    assert_eq!(fake.max_jobs_at_once("media", "sqscale.io/job=big"), 3);
    assert_eq!(fake.max_jobs_at_once("media", "sqscale.io/job=small"), 1);
    assert_eq!(fake.max_jobs_at_once("media", ""), 4);

    // A planted finished Job of an old template, finished long ago, counts as complete.
    let old = fake.create_job("media", job_manifest("old-", json!({"sqscale.io/template-hash": "old"})));
    let long_ago: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    fake.set_job_condition("media", &old, "Complete", "True", Some(long_ago));
    let job = fake.job("media", &old).unwrap();
    assert_eq!(job["status"]["completionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(fake.complete_jobs("media"), 4);
    assert!(fake.pods_of("media", &old).is_empty(), "planted Jobs outside the selector get no pods");
}

#[tokio::test]
async fn job_delete_options_in_the_query_preconditions_and_the_default_warning() {
    let fake = FakeKube::start().await;
    let client = client(&fake).await;
    let api: Api<Job> = Api::namespaced(client.clone(), "media");
    let names: Vec<String> = (0..3).map(|_| fake.create_job("media", job_manifest("q-", json!(null)))).collect();
    let delete = |name: &str, query: &str| {
        let uri = format!("/apis/batch/v1/namespaces/media/jobs/{name}{query}");
        axum::http::Request::delete(uri).body(kube::client::Body::from(Vec::new())).unwrap()
    };

    // kubectl's form: the policy in the query; no warning.
    let response = client.send(delete(&names[0], "?propagationPolicy=Background")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("warning").is_none());
    assert!(fake.job("media", &names[0]).is_none());

    // An unknown policy: 422, nothing deleted.
    let response = client.send(delete(&names[1], "?propagationPolicy=Sideways")).await.unwrap();
    assert_eq!(response.status(), 422);
    assert!(fake.job("media", &names[1]).is_some());

    // A UID precondition that does not match: 409 Conflict, nothing deleted.
    let preconditions = Preconditions { uid: Some("not-its-uid".into()), resource_version: None };
    let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::background() };
    let status = api_error(api.delete(&names[1], &params).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("Precondition failed: UID in precondition: not-its-uid"), "{}", status.message);
    assert!(fake.job("media", &names[1]).is_some());

    // No policy: orphaned, with the real server's warning.
    let response = client.send(delete(&names[2], "")).await.unwrap();
    assert_eq!(response.status(), 200);
    let warning = response.headers()["warning"].to_str().unwrap().to_owned();
    assert!(warning.contains("child pods are preserved by default when jobs are deleted"), "{warning}");
    assert!(wait_until(Duration::from_secs(5), || fake.job("media", &names[2]).is_none()).await);
}

#[tokio::test]
async fn a_new_controller_takes_over_the_pods_of_a_stopped_one() {
    let fake = FakeKube::start().await;
    let first = JobController::start(&fake, None, Behaviour::default().work(Duration::from_secs(3600))).await;
    let name = fake.create_job("media", job_manifest("long-", json!(null)));
    let running = || pods_named_for(&fake, "media", &name).first().is_some_and(|p| pod_phase(p) == "Running");
    assert!(wait_until(Duration::from_secs(5), running).await, "{:#?}", fake.pods("media"));
    first.stop();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(running(), "a stopped controller leaves its pods as they are");

    let second = JobController::start(&fake, None, Behaviour::default().work(Duration::from_millis(100))).await;
    assert!(wait_until(Duration::from_secs(5), || fake.complete_jobs("media") == 1).await, "{:#?}", fake.jobs("media"));
    assert_eq!(second.stats().pods_created, 0, "the running pod was taken over, not replaced");
    assert_eq!(pods_named_for(&fake, "media", &name).len(), 1);
}
