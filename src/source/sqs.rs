//! The SQS adapter: `GetQueueAttributes`, asking only for the attributes the rules need.
//! One client per (region, endpoint, profile, role), built on first use and reused;
//! queue names are resolved once with `GetQueueUrl`. Polls take the direct path
//! ([`super::direct`], unless `[aws] direct_path = false`) and fall back to aws-sdk-sqs
//! for anything but a clean answer, within the same deadline; each fallback is counted
//! by its reason. Every connection (SQS, STS, the credential chain) goes through
//! [`crate::proxy::sdk_http_client`], so the environment's proxy settings apply.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_types::request_id::RequestId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::direct::{self, CredentialsCache, Direct, FALLBACK_REASONS, HttpClient, Miss};
use super::wire::{attribute_names, parse_counts};
use super::{Attrs, QueueReader, SourceError, SourceErrorKind};
use crate::config::QueueSource;
use crate::engine::Counts;
use crate::error::{any_cause, chain};
use crate::sync::lock;

/// What makes two triggers need different clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    region: String,
    endpoint: Option<String>,
    profile: Option<String>,
    role_arn: Option<String>,
    external_id: Option<String>,
}

impl ClientKey {
    fn of(q: &QueueSource) -> ClientKey {
        ClientKey {
            region: q.region.clone(),
            endpoint: q.endpoint.clone(),
            profile: q.profile.clone(),
            role_arn: q.role_arn.clone(),
            external_id: q.external_id.clone(),
        }
    }

    /// Whether `q` uses this key's client (compared in place: a poll clones nothing).
    fn serves(&self, q: &QueueSource) -> bool {
        self.region == q.region
            && self.endpoint == q.endpoint
            && self.profile == q.profile
            && self.role_arn == q.role_arn
            && self.external_id == q.external_id
    }
}

/// The SDK client of one key, and the direct path to the same endpoint with the same
/// credentials (`None` if the endpoint could not be resolved: the SDK then does it all).
#[derive(Clone)]
struct Endpoint {
    client: Client,
    direct: Option<Arc<Direct>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// One of [`FALLBACK_REASONS`].
    pub reason: &'static str,
}

/// `sqscale_sqs_fallbacks_total`: direct calls left to the SDK, by reason.
pub type Fallbacks = Family<FallbackLabels, Counter>;

/// A fallback counter with every reason's series present (at 0 until it happens).
pub fn fallbacks() -> Fallbacks {
    let family = Fallbacks::default();
    seed(&family);
    family
}

fn seed(family: &Fallbacks) {
    for reason in FALLBACK_REASONS {
        let _ = family.get_or_create(&FallbackLabels { reason });
    }
}

/// The SQS reader. Cheap to share; clients and resolved URLs are cached inside.
pub struct Sqs {
    /// A handful at most (one per region, endpoint, profile and role): a short list.
    clients: Mutex<Vec<(ClientKey, Endpoint)>>,
    /// Held while a client is built, so concurrent first polls build it once.
    building: tokio::sync::Mutex<()>,
    urls: Mutex<HashMap<QueueSource, String>>,
    fifo_noted: Mutex<HashSet<String>>,
    /// The direct path's HTTP client; `None` if no root certificates could be loaded.
    http: Option<HttpClient>,
    /// The SDK's HTTP client, shared by every SDK client and credentials provider.
    sdk_http: SharedHttpClient,
    fallbacks: Fallbacks,
    timeout: Duration,
}

impl Sqs {
    /// `timeout` bounds each SQS operation, retries included.
    pub fn new(timeout: Duration) -> Sqs {
        let http = direct::http_client()
            .inspect_err(|e| {
                tracing::warn!("no root certificates for direct SQS calls ({e}); using the SDK for every call")
            })
            .ok();
        Sqs {
            clients: Default::default(),
            building: Default::default(),
            urls: Default::default(),
            fifo_noted: Default::default(),
            http,
            sdk_http: crate::proxy::sdk_http_client(),
            fallbacks: fallbacks(),
            timeout,
        }
    }

    /// Counts fallbacks into `family` (the observer's, so `/metrics` shows them).
    pub fn with_fallbacks(mut self, family: Fallbacks) -> Sqs {
        seed(&family);
        self.fallbacks = family;
        self
    }

    fn known(&self, q: &QueueSource) -> Option<Endpoint> {
        lock(&self.clients).iter().find(|(k, _)| k.serves(q)).map(|(_, e)| e.clone())
    }

    async fn endpoint(&self, q: &QueueSource) -> Endpoint {
        match self.known(q) {
            Some(e) => e,
            // Boxed: loading the AWS config is a large future, taken once per client.
            None => Box::pin(self.build(q)).await,
        }
    }

    /// Builds the SDK client and the direct path of `q`'s key (once: a second caller
    /// waits and finds it built).
    async fn build(&self, q: &QueueSource) -> Endpoint {
        let _building = self.building.lock().await;
        if let Some(e) = self.known(q) {
            return e;
        }
        let key = ClientKey::of(q);
        let base = self.loader(&key).load().await;
        let endpoint = self.endpoint_of(&key, &base).await;
        lock(&self.clients).push((key, endpoint.clone()));
        endpoint
    }

    /// The AWS config of `key`: its region, endpoint and profile, the call timeout, and
    /// the proxied HTTP client.
    fn loader(&self, key: &ClientKey) -> ConfigLoader {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(key.region.clone()))
            .http_client(self.sdk_http.clone())
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(TimeoutConfig::builder().operation_timeout(self.timeout).build());
        if let Some(p) = &key.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &key.endpoint {
            loader = loader.endpoint_url(e);
        }
        loader
    }

    /// The SDK client built from `base` (assuming `key`'s role, if any) and the direct
    /// path to the endpoint that client resolves, with the same credentials.
    async fn endpoint_of(&self, key: &ClientKey, base: &SdkConfig) -> Endpoint {
        let mut builder = aws_sdk_sqs::config::Builder::from(base);
        let mut credentials = base.credentials_provider();
        if let Some(arn) = &key.role_arn {
            // STS with the same settings but its own endpoint: `endpoint_url` is SQS's
            // (often a VPC endpoint); on the shared config it would send AssumeRole there
            // too, over `AWS_ENDPOINT_URL_STS` and the profile's sts endpoint.
            let sts = match key.endpoint {
                Some(_) => &self.loader(&ClientKey { endpoint: None, ..key.clone() }).load().await,
                None => base,
            };
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(arn.clone()).session_name("sqscale");
            // A role whose trust policy asks for an ExternalId refuses AssumeRole without it.
            if let Some(id) = &key.external_id {
                provider = provider.external_id(id.clone());
            }
            let provider = provider.configure(sts).build().await;
            credentials = Some(SharedCredentialsProvider::new(provider));
        }
        // One cache for both paths: the SDK client's own identity cache then asks this
        // one, so the two share one fetch (one AssumeRole) rather than make one each.
        let credentials = credentials.map(CredentialsCache::new);
        if let Some(cache) = &credentials {
            builder = builder.credentials_provider(SharedCredentialsProvider::new(cache.clone()));
        }
        let config = builder.build();
        let direct = match credentials {
            Some(credentials) => Direct::new(
                &key.region,
                sqs_endpoint_url(base).as_deref(),
                base.use_fips().unwrap_or(false),
                base.use_dual_stack().unwrap_or(false),
                credentials,
            )
            .await
            .inspect_err(|e| tracing::warn!(region = %key.region, "direct SQS calls disabled: {}", chain(e)))
            .ok()
            .map(Arc::new),
            None => None,
        };
        Endpoint { client: Client::from_conf(config), direct }
    }

    /// The URL of a queue given by name: asked once with `GetQueueUrl`, then remembered.
    async fn resolve_url(&self, client: &Client, q: &QueueSource) -> Result<String, SourceError> {
        if let Some(url) = lock(&self.urls).get(q) {
            return Ok(url.clone());
        }
        let out = client.get_queue_url().queue_name(&q.name).send().await.map_err(|e| error(q, e))?;
        let url = out.queue_url().ok_or_else(|| {
            SourceError::new(&q.name, SourceErrorKind::BadResponse, "GetQueueUrl answered without a QueueUrl")
        })?;
        tracing::info!(queue = %q.name, url, "resolved queue name");
        lock(&self.urls).insert(q.clone(), url.to_owned());
        Ok(url.to_owned())
    }

    fn note_fifo(&self, q: &QueueSource) {
        if q.name.ends_with(".fifo") && lock(&self.fifo_noted).insert(q.name.clone()) {
            tracing::info!(
                queue = %q.display(),
                "FIFO queue: useful parallelism is bounded by the number of active message groups, \
                 which SQS does not report; cap it with max_replica_count"
            );
        }
    }
}

impl QueueReader for Sqs {
    async fn read(&self, q: &QueueSource, attrs: Attrs) -> Result<Counts, SourceError> {
        // One deadline for the poll: the direct call gets half of what is left when it
        // starts, the SDK (if it must ask) the rest.
        let deadline = Instant::now() + self.timeout;
        self.note_fifo(q);
        let Endpoint { client, direct } = self.endpoint(q).await;
        let resolved;
        let url = match &q.url {
            Some(url) => url,
            None => {
                resolved = Box::pin(self.resolve_url(&client, q)).await?;
                &resolved
            }
        };
        if q.direct
            && let (Some(direct), Some(http)) = (&direct, &self.http)
        {
            let share = deadline.saturating_duration_since(Instant::now()) / 2;
            match direct.read(http, url, attrs, share).await {
                Ok(counts) => return Ok(counts),
                Err(Miss::Refused { kind, message }) => {
                    return Err(SourceError::new(q.display(), kind, message));
                }
                Err(Miss::Fallback { reason, message }) => {
                    self.fallbacks.get_or_create(&FallbackLabels { reason }).inc();
                    tracing::debug!(queue = %q.display(), reason, message, "direct GetQueueAttributes missed; asking through the SDK");
                }
            }
        }
        // Boxed: the SDK's request future is large and rarely taken; inline, it would
        // make every poll's future (and its allocation) that much bigger.
        match tokio::time::timeout_at(deadline, Box::pin(read_with_sdk(&client, q, url, attrs))).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::new(
                q.display(),
                SourceErrorKind::Timeout,
                format!("no answer within {}", humantime::format_duration(self.timeout)),
            )),
        }
    }
}

/// The endpoint URL aws-sdk-sqs takes from `config` (its `Config` keeps it private):
/// the same lookups in the same order as `aws_sdk_sqs::config::Builder::from(&SdkConfig)`,
/// so `AWS_ENDPOINT_URL_SQS` and the profile's `services` section apply as they do for
/// the SDK. `None`: the SDK's endpoint rules pick one from the region.
fn sqs_endpoint_url(config: &SdkConfig) -> Option<String> {
    if config.get_origin("endpoint_url").is_client_config() {
        return config.endpoint_url().map(str::to_owned);
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("SQS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("every field is set");
    config.service_config().and_then(|c| c.load_config(key)).or_else(|| config.endpoint_url().map(str::to_owned))
}

/// `GetQueueAttributes` through the SDK: retries, and errors named with their kind.
async fn read_with_sdk(client: &Client, q: &QueueSource, url: &str, attrs: Attrs) -> Result<Counts, SourceError> {
    let req = client.get_queue_attributes().queue_url(url).set_attribute_names(Some(attribute_names(attrs)));
    let out = req.send().await.map_err(|e| error(q, e))?;
    let answer = out.attributes();
    parse_counts(|name| answer?.get(&QueueAttributeName::from(name)).map(String::as_str), attrs)
        .map_err(|e| SourceError::new(q.display(), SourceErrorKind::BadResponse, e.to_string()).caused_by(e))
}

/// Classifies an SDK error into a [`SourceError`] by its variant, the service's error
/// code, and the error types in its source chain.
fn error<E>(q: &QueueSource, e: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = describe(&e);
    let kind = match &e {
        SdkError::TimeoutError(_) => SourceErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => SourceErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_io() => SourceErrorKind::Unreachable,
        // The credentials provider failed: the orchestrator resolves the identity before
        // it sends, and hands the provider's error on as the failure's cause.
        _ if any_cause::<CredentialsError>(&e, |_| true) => SourceErrorKind::Credentials,
        SdkError::ServiceError(s) => kind_of_code(s.err().code().unwrap_or_default()),
        _ => SourceErrorKind::Other,
    };
    SourceError::new(q.display(), kind, message).caused_by(e)
}

/// What a person reads of a failed SDK call, in `/status` and the log: for the service's
/// answer its error code and message, the HTTP status and the request id
/// (`AWS.SimpleQueueService.NonExistentQueue: The specified queue does not exist (HTTP
/// 400, request id ...)`); for any other failure the chain of causes. Never the SDK's
/// `DisplayErrorContext`, which ends with a debug dump of the whole error, the HTTP
/// response's headers and body included.
fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(s) => {
            let meta = s.err().meta();
            let status = s.raw().status().as_u16();
            let request_id = meta
                .request_id()
                .or_else(|| s.raw().headers().get("x-amzn-requestid"))
                .or_else(|| s.raw().headers().get("x-amz-request-id"));
            let mut text = match (meta.code(), meta.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                (None, Some(message)) => message.to_owned(),
                (None, None) => "an error without a code".to_owned(),
            };
            text.push_str(&format!(" (HTTP {status}"));
            if let Some(id) = request_id {
                text.push_str(&format!(", request id {id}"));
            }
            text.push(')');
            text
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            match std::error::Error::source(e) {
                Some(cause) => format!("unreadable answer (HTTP {status}): {}", chain(cause)),
                None => format!("unreadable answer (HTTP {status})"),
            }
        }
        _ => chain(e),
    }
}

/// The kind of an SQS error code (the query protocol's and the JSON protocol's names).
fn kind_of_code(code: &str) -> SourceErrorKind {
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => SourceErrorKind::NotFound,
        "AccessDenied" | "AccessDeniedException" | "InvalidClientTokenId" | "SignatureDoesNotMatch" => {
            SourceErrorKind::Forbidden
        }
        "RequestThrottled" | "ThrottlingException" | "Throttling" => SourceErrorKind::Throttled,
        _ => SourceErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TinyServer;
    use aws_credential_types::Credentials;

    const COUNTS: &str = r#"{"Attributes":{"ApproximateNumberOfMessages":"7"}}"#;

    fn queue(endpoint: &str) -> QueueSource {
        QueueSource {
            url: Some(format!("{endpoint}/123456789012/q")),
            name: "q".to_owned(),
            region: "us-east-1".to_owned(),
            endpoint: Some(endpoint.to_owned()),
            profile: None,
            role_arn: None,
            external_id: None,
            direct: true,
        }
    }

    /// A reader of `q` with its SDK client and direct path made as [`Sqs::build`] makes
    /// them, with static test credentials.
    async fn reader(q: &QueueSource, timeout: Duration) -> Sqs {
        let sqs = Sqs::new(timeout);
        let key = ClientKey::of(q);
        let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
        let base = sqs.loader(&key).credentials_provider(credentials).load().await;
        let endpoint = sqs.endpoint_of(&key, &base).await;
        lock(&sqs.clients).push((key, endpoint));
        sqs
    }

    /// Environment variables as aws-config's service config reads them
    /// (`AWS_ENDPOINT_URL_SQS` for the key `AWS_ENDPOINT_URL` of service `SQS`).
    #[derive(Debug)]
    struct ServiceEnv(&'static str, String);

    impl aws_types::service_config::LoadServiceConfig for ServiceEnv {
        fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
            let name = format!("{}_{}", key.env(), key.service_id().to_uppercase().replace(' ', "_"));
            (name == self.0).then(|| self.1.clone())
        }
    }

    fn fallbacks_of(sqs: &Sqs, reason: &'static str) -> u64 {
        sqs.fallbacks.get_or_create(&FallbackLabels { reason }).get()
    }

    fn total_fallbacks(sqs: &Sqs) -> u64 {
        FALLBACK_REASONS.iter().map(|r| fallbacks_of(sqs, r)).sum()
    }

    /// The direct path goes where the SDK goes: `AWS_ENDPOINT_URL_SQS` over the general
    /// `AWS_ENDPOINT_URL`, and an endpoint set in the rule file over both.
    #[tokio::test]
    async fn the_direct_path_goes_to_the_sdks_endpoint() {
        use aws_types::origin::Origin;
        let general = TinyServer::start(|_| Some((200, COUNTS.to_owned()))).await;
        let specific = TinyServer::start(|_| Some((200, COUNTS.replace('7', "9")))).await;
        let explicit = TinyServer::start(|_| Some((200, COUNTS.replace('7', "5")))).await;
        for (endpoint, want, server) in [(None, 9, &specific), (Some(&explicit.url), 5, &explicit)] {
            let mut q = QueueSource { endpoint: endpoint.cloned(), ..queue(&general.url) };
            let sqs = Sqs::new(Duration::from_secs(5));
            let key = ClientKey::of(&q);
            let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
            let loaded = sqs.loader(&key).credentials_provider(credentials).load().await;
            // As if loaded with AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_SQS set.
            let mut builder =
                loaded.into_builder().service_config(ServiceEnv("AWS_ENDPOINT_URL_SQS", specific.url.clone()));
            if endpoint.is_none() {
                builder.insert_origin("endpoint_url", Origin::shared_environment_variable());
                builder.set_endpoint_url(Some(general.url.clone()));
            }
            let endpoint = sqs.endpoint_of(&key, &builder.build()).await;
            lock(&sqs.clients).push((key, endpoint));

            assert_eq!(sqs.read(&q, Attrs::default()).await.unwrap().visible, want);
            q.direct = false;
            assert_eq!(sqs.read(&q, Attrs::default()).await.unwrap().visible, want);
            let agents = server.agents();
            assert_eq!(agents.len(), 2, "{agents:?}");
            assert!(agents[0].starts_with("sqscale/") && agents[1].starts_with("aws-sdk-rust/"), "{agents:?}");
            assert_eq!(total_fallbacks(&sqs), 0);
        }
        assert!(general.agents().is_empty(), "{:?}", general.agents());
    }

    /// A role's ExternalId goes with AssumeRole (a trust policy that asks for one refuses
    /// AssumeRole without it), and none goes without one. Before, `external_id` was not
    /// a key and AssumeRole never carried one.
    #[tokio::test]
    async fn assume_role_sends_the_external_id() {
        const ASSUMED: &str = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
            <Credentials><AccessKeyId>ASIATEST</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>\
            <SessionToken>token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
            <AssumedRoleUser><AssumedRoleId>AROATEST:sqscale</AssumedRoleId>\
            <Arn>arn:aws:sts::123456789012:assumed-role/reader/sqscale</Arn></AssumedRoleUser>\
            </AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>";
        for external_id in [Some("ext-1234"), None] {
            // One server for STS and SQS: the first request is AssumeRole, the rest reads.
            let server =
                TinyServer::start(|n| Some((200, if n == 0 { ASSUMED.to_owned() } else { COUNTS.to_owned() }))).await;
            let q = QueueSource {
                endpoint: None,
                role_arn: Some("arn:aws:iam::123456789012:role/reader".to_owned()),
                external_id: external_id.map(str::to_owned),
                ..queue(&server.url)
            };
            let sqs = Sqs::new(Duration::from_secs(5));
            let key = ClientKey::of(&q);
            let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
            let base = sqs.loader(&key).credentials_provider(credentials).endpoint_url(&server.url).load().await;
            let endpoint = sqs.endpoint_of(&key, &base).await;
            lock(&sqs.clients).push((key, endpoint));
            assert_eq!(sqs.read(&q, Attrs::default()).await.unwrap().visible, 7);
            let bodies = server.bodies();
            assert!(bodies[0].contains("Action=AssumeRole"), "{bodies:?}");
            assert!(bodies[0].contains("RoleSessionName=sqscale"), "{bodies:?}");
            match external_id {
                Some(id) => assert!(bodies[0].contains(&format!("ExternalId={id}")), "{bodies:?}"),
                None => assert!(!bodies[0].contains("ExternalId"), "{bodies:?}"),
            }
        }
    }

    /// `[aws] direct_path = false`: only the SDK asks.
    #[tokio::test]
    async fn without_the_direct_path_the_sdk_asks() {
        let server = TinyServer::start(|_| Some((200, COUNTS.to_owned()))).await;
        let q = QueueSource { direct: false, ..queue(&server.url) };
        let sqs = reader(&q, Duration::from_secs(5)).await;
        assert_eq!(sqs.read(&q, Attrs::default()).await.unwrap().visible, 7);
        let agents = server.agents();
        assert!(agents.len() == 1 && agents[0].starts_with("aws-sdk-rust/"), "{agents:?}");
    }

    /// A throttled direct call is the poll's answer: one call, not one plus the SDK's three.
    #[tokio::test]
    async fn throttling_is_answered_once() {
        let throttled = r#"{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Rate exceeded"}"#;
        let server = TinyServer::start(move |_| Some((400, throttled.to_owned()))).await;
        let q = queue(&server.url);
        let sqs = reader(&q, Duration::from_secs(5)).await;
        let err = sqs.read(&q, Attrs::default()).await.unwrap_err();
        assert_eq!(err.kind(), "throttled", "{err}");
        assert_eq!(server.agents().len(), 1, "{:?}", server.agents());
        assert_eq!(total_fallbacks(&sqs), 0);
    }

    /// Any other miss is asked again through the SDK and counted with its reason.
    #[tokio::test]
    async fn a_fallback_is_counted_with_its_reason() {
        let server =
            TinyServer::start(|n| Some(if n == 0 { (500, "{}".to_owned()) } else { (200, COUNTS.to_owned()) })).await;
        let q = queue(&server.url);
        let sqs = reader(&q, Duration::from_secs(5)).await;
        assert_eq!(sqs.read(&q, Attrs::default()).await.unwrap().visible, 7);
        assert_eq!(fallbacks_of(&sqs, "http_error"), 1);
        assert_eq!(total_fallbacks(&sqs), 1);
        let agents = server.agents();
        assert!(agents[0].starts_with("sqscale/") && agents[1].starts_with("aws-sdk-rust/"), "{agents:?}");
    }

    /// A service error reads as the service's code and message, the HTTP status and the
    /// request id, whichever path asked: never the SDK's debug dump of the response.
    #[tokio::test]
    async fn a_service_error_is_its_code_message_status_and_request_id() {
        let body =
            r#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#;
        let headers = "x-amzn-requestid: 0f2c5ad6-a8e4-5b12-9a2b-6e1c8a1d7f3e\r\n\
                       x-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender\r\n";
        let server = TinyServer::start_with_headers(headers, move |_| Some((400, body.to_owned()))).await;
        for direct in [false, true] {
            let q = QueueSource { direct, ..queue(&server.url) };
            let sqs = reader(&q, Duration::from_secs(5)).await;
            let err = sqs.read(&q, Attrs::default()).await.unwrap_err();
            assert_eq!(err.kind(), "not_found", "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "reading queue {}: AWS.SimpleQueueService.NonExistentQueue: The specified queue does not \
                     exist. (HTTP 400, request id 0f2c5ad6-a8e4-5b12-9a2b-6e1c8a1d7f3e)",
                    q.display()
                ),
                "direct path: {direct}"
            );
        }
    }

    /// Credentials that cannot be loaded are a `credentials` error, known by the
    /// provider's error type in the SDK error's chain (its text need not say
    /// "credentials"): the direct path leaves it to the SDK, which fails the same way.
    #[tokio::test]
    async fn missing_credentials_are_classified_by_type() {
        use aws_credential_types::provider::{ProvideCredentials, future};
        #[derive(Debug)]
        struct Failing;
        impl ProvideCredentials for Failing {
            fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                future::ProvideCredentials::ready(Err(CredentialsError::not_loaded("no profile, no role")))
            }
        }
        let server = TinyServer::start(|_| Some((200, COUNTS.to_owned()))).await;
        let q = queue(&server.url);
        let sqs = Sqs::new(Duration::from_secs(5));
        let key = ClientKey::of(&q);
        let base = sqs.loader(&key).credentials_provider(Failing).load().await;
        let endpoint = sqs.endpoint_of(&key, &base).await;
        lock(&sqs.clients).push((key, endpoint));
        let err = sqs.read(&q, Attrs::default()).await.unwrap_err();
        assert_eq!(err.kind(), "credentials", "{err}");
        assert!(any_cause::<CredentialsError>(&err, |_| true), "{err:?}");
        assert_eq!(fallbacks_of(&sqs, "credentials"), 1);
        assert!(server.agents().is_empty(), "{:?}", server.agents());
    }

    /// No answer: the direct call gives up with half the deadline, the SDK asks with the
    /// rest, and the poll ends at the deadline, not later.
    #[tokio::test]
    async fn the_direct_call_and_the_sdk_share_one_deadline() {
        let server = TinyServer::start(|_| None).await;
        let q = queue(&server.url);
        let timeout = Duration::from_secs(1);
        let sqs = reader(&q, timeout).await;
        let started = std::time::Instant::now();
        let err = sqs.read(&q, Attrs::default()).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), "timeout", "{err}");
        // Twice the timeout would be the direct call's and the SDK's each in full.
        assert!(took >= timeout && took < timeout + Duration::from_millis(900), "{took:?}");
        let agents = server.agents();
        assert!(agents.len() == 2 && agents[1].starts_with("aws-sdk-rust/"), "{agents:?}");
        assert_eq!(fallbacks_of(&sqs, "timeout"), 1);
    }

    /// Service endpoints as aws-config reads them from the environment, for several
    /// services (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_STS`).
    #[derive(Debug)]
    struct ServiceEnvs(Vec<(&'static str, String)>);

    impl aws_types::service_config::LoadServiceConfig for ServiceEnvs {
        fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
            let name = format!("{}_{}", key.env(), key.service_id().to_uppercase().replace(' ', "_"));
            self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        }
    }

    /// With `role_arn`, a queue that answers 403 (a denied queue, a skewed clock) costs
    /// one STS AssumeRole while the role's credentials are fresh: not one per poll on
    /// the direct path, nor a second one for the SDK's fallback.
    #[tokio::test]
    async fn polls_answered_403_make_one_assume_role_while_its_credentials_are_fresh() {
        let expiry = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
        let assumed = format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
             <AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:sqscale</AssumedRoleId>\
             <Arn>arn:aws:sts::123456789012:assumed-role/reader/sqscale</Arn></AssumedRoleUser>\
             <Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>SECRET</SecretAccessKey>\
             <SessionToken>SESSION</SessionToken><Expiration>{expiry}</Expiration></Credentials>\
             </AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"
        );
        let sts = TinyServer::start(move |_| Some((200, assumed.clone()))).await;
        let denied = r#"{"__type":"com.amazonaws.sqs#AccessDenied","message":"Access to the resource is denied."}"#;
        let server = TinyServer::start(move |_| Some((403, denied.to_owned()))).await;
        let q = QueueSource {
            endpoint: None,
            role_arn: Some("arn:aws:iam::123456789012:role/reader".to_owned()),
            ..queue(&server.url)
        };
        let sqs = Sqs::new(Duration::from_secs(5));
        let key = ClientKey::of(&q);
        let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
        let loaded = sqs.loader(&key).credentials_provider(credentials).load().await;
        let base = loaded
            .into_builder()
            .service_config(ServiceEnvs(vec![
                ("AWS_ENDPOINT_URL_SQS", server.url.clone()),
                ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
            ]))
            .build();
        let endpoint = sqs.endpoint_of(&key, &base).await;
        lock(&sqs.clients).push((key, endpoint));
        for _ in 0..5 {
            let err = sqs.read(&q, Attrs::default()).await.unwrap_err();
            assert_eq!(err.kind(), "forbidden", "{err}");
        }
        // Each poll asked twice (direct, then the SDK), each signed as the role.
        assert_eq!(fallbacks_of(&sqs, "forbidden"), 5);
        let signed = server.header("authorization");
        assert_eq!(signed.len(), 10, "{signed:?}");
        assert!(signed.iter().all(|a| a.as_deref().is_some_and(|a| a.contains("asiaexample/"))), "{signed:?}");
        assert_eq!(sts.agents().len(), 1, "AssumeRole calls: {:?}", sts.agents());
    }
}
