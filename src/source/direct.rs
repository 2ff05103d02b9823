//! `GetQueueAttributes` without the SDK's per-call machinery: the hot path of the daemon.
//!
//! Why: through aws-sdk-sqs one call costs about 0.4 ms of CPU and ~500 allocations
//! (the orchestrator's config bags, interceptors, endpoint rules, retry bookkeeping),
//! which is 40 % of a core at 10,000 rules polled every 10 s (PERFORMANCE.md). The
//! request itself is one small signed POST. So the happy path is built here from the
//! crates the SDK itself is made of: `aws-sigv4` derives the signing key and signs
//! ([`Direct::sign`] writes out the canonical request of this one request shape), hyper
//! sends, serde_json reads, the SDK's own endpoint resolver picks the URL and the SDK's
//! credentials provider supplies the keys. Anything other than a clean `200` (an AWS
//! error, a refused connection, an odd body, missing credentials, no answer in time) is
//! left to the SDK client, which asks again with its standard retries and classifies
//! the error: the SDK stays the source of truth for every unhappy path. One exception:
//! a throttling answer is the poll's answer, since asking again (three more times,
//! with the SDK's retries) is what a throttled caller must not do.
//!
//! Connections follow the environment's proxy settings ([`crate::proxy::Connector`]),
//! as the SDK's own client does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sqs::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::{SigningParams, calculate_signature, generate_signing_key};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use super::wire::{error_code, parse_answer, request_body};
use super::{Attrs, SourceErrorKind};
use crate::engine::Counts;
use crate::error::chain;
use crate::proxy;
use crate::sync::lock;

/// The HTTP client shared by every endpoint (its pool is keyed by host), and the proxy
/// settings it connects with.
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<proxy::Connector>, Full<Bytes>>,
    proxies: proxy::Connector,
}

/// Calls in flight per endpoint, and so connections per endpoint: a spread-out round
/// needs one or two; a burst (start-up, a reload) waits its turn instead of opening a
/// connection per poll, each with ~30 KiB of buffers, to be closed again right after.
const MAX_IN_FLIGHT: usize = 16;
/// Credentials are refreshed this long before they expire (the SDK's lazy cache uses 10 s).
const CREDENTIALS_BUFFER: Duration = Duration::from_secs(60);
/// How long credentials without an expiry are kept: as long as the SDK's identity
/// cache keeps them (its default expiration), so a rotated key is picked up as soon.
const CREDENTIALS_WITHOUT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// An answer slower than this says little about SQS's clock (the SDK's bound).
const MAX_TRUSTED_ROUND_TRIP: Duration = Duration::from_secs(15 * 60);
/// An answer is a few hundred bytes; anything this large is not one.
const MAX_ANSWER: usize = 64 * 1024;

const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
const TARGET: &str = "AmazonSQS.GetQueueAttributes";
const X_AMZ_TARGET: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-amz-target");
const X_AMZ_DATE: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-amz-security-token");

/// A SigV4 signing key: valid for one day, one region and service, one secret.
struct SigningKey {
    date: String,
    access_key: String,
    secret: String,
    key: Vec<u8>,
}

/// Builds the shared HTTPS client: the platform's root certificates, aws-lc-rs, HTTP/1.1,
/// and the proxies the environment names.
pub fn http_client() -> std::io::Result<HttpClient> {
    http_client_with(proxy::Connector::from_env())
}

fn http_client_with(proxies: proxy::Connector) -> std::io::Result<HttpClient> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)?
        .https_or_http()
        .enable_http1()
        .wrap_connector(proxies.clone());
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(MAX_IN_FLIGHT).build(https);
    Ok(HttpClient { client, proxies })
}

/// Why the direct path could not be set up, or a request not be made.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The SDK's endpoint rules gave no endpoint for these settings.
    #[error(transparent)]
    Endpoint(BoxError),
    #[error("endpoint {0}")]
    BadEndpoint(String, #[source] hyper::http::uri::InvalidUri),
    #[error("loading credentials")]
    Credentials(#[source] aws_credential_types::provider::error::CredentialsError),
    #[error("signing")]
    Signing(#[source] BoxError),
    #[error("building the request")]
    Request(#[source] hyper::http::Error),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn signing(e: impl Into<BoxError>) -> DirectError {
    DirectError::Signing(e.into())
}

/// Why the direct call did not produce counts.
#[derive(Debug, PartialEq)]
pub enum Miss {
    /// An answer that stands: SQS throttled the call.
    Refused { kind: SourceErrorKind, message: String },
    /// Anything else: the SDK asks again and explains. `reason` is one of [`FALLBACK_REASONS`].
    Fallback { reason: &'static str, message: String },
}

/// Why the direct path left a call to the SDK: the `reason` label of
/// `sqscale_sqs_fallbacks_total`.
pub const FALLBACK_REASONS: [&str; 6] =
    ["timeout", "forbidden", "http_error", "bad_answer", "transport", "credentials"];

fn fallback(reason: &'static str, message: impl Into<String>) -> Miss {
    debug_assert!(FALLBACK_REASONS.contains(&reason));
    Miss::Fallback { reason, message: message.into() }
}

/// One SQS endpoint (region, endpoint URL, credentials) for direct calls.
pub struct Direct {
    endpoint: hyper::Uri,
    /// The same URL as text, for the signer.
    endpoint_text: String,
    region: String,
    /// The `host` the signature covers, for [`Direct::sign`]; `None` when the endpoint
    /// has a path (a custom `endpoint_url`): aws-sigv4's general signer then signs.
    signed_host: Option<String>,
    /// The SigV4 signing key of the current day and access key.
    signing_key: Mutex<Option<SigningKey>>,
    credentials: CredentialsCache,
    /// How far SQS's clock is ahead of ours, in milliseconds (negative: behind), from
    /// the `Date` of its last answer: requests are signed at our time plus this.
    skew_ms: AtomicI64,
    in_flight: tokio::sync::Semaphore,
}

impl Direct {
    /// Resolves the endpoint exactly as the SDK would for these settings.
    pub async fn new(
        region: &str,
        endpoint_url: Option<&str>,
        use_fips: bool,
        use_dual_stack: bool,
        credentials: CredentialsCache,
    ) -> Result<Direct, DirectError> {
        let mut params = Params::builder().region(region).use_fips(use_fips).use_dual_stack(use_dual_stack);
        if let Some(e) = endpoint_url {
            params = params.endpoint(e);
        }
        let params = params.build().map_err(|e| DirectError::Endpoint(e.into()))?;
        let endpoint = DefaultResolver::new().resolve_endpoint(&params).await.map_err(DirectError::Endpoint)?;
        let endpoint_text = endpoint.url().to_owned();
        let endpoint: hyper::Uri =
            endpoint_text.parse().map_err(|e| DirectError::BadEndpoint(endpoint_text.clone(), e))?;
        let signed_host = match (endpoint.path(), endpoint.host()) {
            ("" | "/", Some(host)) => {
                let default_port = matches!(
                    (endpoint.scheme_str(), endpoint.port_u16()),
                    (Some("http"), Some(80)) | (Some("https"), Some(443))
                );
                match endpoint.port_u16() {
                    Some(port) if !default_port => Some(format!("{host}:{port}")),
                    _ => Some(host.to_owned()),
                }
            }
            _ => None,
        };
        Ok(Direct {
            endpoint,
            endpoint_text,
            region: region.to_owned(),
            signed_host,
            signing_key: Mutex::new(None),
            credentials,
            skew_ms: AtomicI64::new(0),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// Reads the counts of the queue at `url` within `timeout`; see the module docs for
    /// what a miss means.
    pub async fn read(&self, http: &HttpClient, url: &str, attrs: Attrs, timeout: Duration) -> Result<Counts, Miss> {
        let call = async {
            let _turn = self.in_flight.acquire().await.map_err(|e| fallback("transport", e.to_string()))?;
            // Boxed once it has its turn: a read waiting for one holds only the wait.
            Box::pin(self.send(http, url, attrs)).await
        };
        let body = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                let waited = humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64));
                return Err(fallback("timeout", format!("no answer within {waited}")));
            }
            Ok(result) => result?,
        };
        parse_answer(&body, attrs).map_err(|e| fallback("bad_answer", chain(&e)))
    }

    /// Signs and sends one request; the body of a `200` answer.
    async fn send(&self, http: &HttpClient, url: &str, attrs: Attrs) -> Result<Bytes, Miss> {
        let credentials = self.credentials().await.map_err(|e| fallback("credentials", chain(&e)))?;
        let mut request = self
            .request(url, attrs, &credentials, self.signing_time(SystemTime::now()))
            .map_err(|e| fallback("credentials", chain(&e)))?;
        if let Some(auth) = http.proxies.http_proxy_authorization(&self.endpoint) {
            request.headers_mut().insert(hyper::header::PROXY_AUTHORIZATION, auth);
        }
        let sent = SystemTime::now();
        let response =
            http.client.request(request).await.map_err(|e| fallback("transport", format!("sending: {e}")))?;
        self.measure_skew(&response, sent, SystemTime::now());
        let status = response.status();
        let query_error = response.headers().get("x-amzn-query-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| fallback("transport", format!("reading the answer: {e}")))?
            .to_bytes();
        if status == hyper::StatusCode::OK {
            return Ok(body);
        }
        let code = error_code(query_error.as_deref(), &body);
        let described = match &code {
            Some(code) => format!("HTTP {status}, {code}"),
            None => format!("HTTP {status}"),
        };
        if status == hyper::StatusCode::TOO_MANY_REQUESTS
            || code.as_deref().is_some_and(|c| aws_runtime::retries::classifiers::THROTTLING_ERRORS.contains(&c))
        {
            return Err(Miss::Refused { kind: SourceErrorKind::Throttled, message: format!("throttled: {described}") });
        }
        if status == hyper::StatusCode::FORBIDDEN {
            // Static keys may have been rotated or revoked: fetch them again next time
            // rather than keep signing with them for the cache's whole life. Temporary
            // ones (an assumed role) are kept until near their expiry, as the SDK keeps
            // them: a 403 for a denied queue or a skewed clock would otherwise cost an
            // STS AssumeRole per poll.
            self.credentials.forget_static();
            return Err(fallback("forbidden", described));
        }
        Err(fallback("http_error", described))
    }

    /// The signed request, at `now`.
    fn request(
        &self,
        url: &str,
        attrs: Attrs,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<hyper::Request<Full<Bytes>>, DirectError> {
        let body = request_body(url, attrs);
        let mut request = self.unsigned()?;
        match &self.signed_host {
            Some(host) => self.sign(&mut request, host, &body, credentials, now)?,
            None => self.sign_with_sigv4(&mut request, &body, credentials, now)?,
        }
        Ok(request.map(|()| Full::new(Bytes::from(body))))
    }

    fn unsigned(&self) -> Result<hyper::Request<()>, DirectError> {
        hyper::Request::post(self.endpoint.clone())
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(X_AMZ_TARGET, TARGET)
            .header(hyper::header::USER_AGENT, concat!("sqscale/", env!("CARGO_PKG_VERSION")))
            .body(())
            .map_err(DirectError::Request)
    }

    /// SigV4 for the one request this module sends (a POST to the endpoint's root with
    /// the headers above), written out: aws-sigv4's general signer builds the canonical
    /// request through header maps and formatted strings and derives the signing key on
    /// every call, which was a quarter of the daemon's CPU at ten thousand rules
    /// (PERFORMANCE.md). The key is derived once a day with aws-sigv4's own
    /// `generate_signing_key`, the signature made with its `calculate_signature`, and a
    /// test checks the result against aws-sigv4's full signer.
    fn sign(
        &self,
        request: &mut hyper::Request<()>,
        host: &str,
        body: &[u8],
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<(), DirectError> {
        let time = jiff::Timestamp::try_from(now).map_err(signing)?;
        let amz_date = time.strftime("%Y%m%dT%H%M%SZ").to_string();
        let date = &amz_date[..8];
        let token = credentials.session_token();
        let signed_headers = match token {
            Some(_) => "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
            None => "content-type;host;x-amz-date;x-amz-target",
        };
        let mut canonical = String::with_capacity(512);
        canonical.push_str("POST\n/\n\ncontent-type:");
        canonical.push_str(CONTENT_TYPE);
        canonical.push_str("\nhost:");
        canonical.push_str(host);
        canonical.push_str("\nx-amz-date:");
        canonical.push_str(&amz_date);
        if let Some(token) = token {
            canonical.push_str("\nx-amz-security-token:");
            canonical.push_str(token.trim());
        }
        canonical.push_str("\nx-amz-target:");
        canonical.push_str(TARGET);
        canonical.push_str("\n\n");
        canonical.push_str(signed_headers);
        canonical.push('\n');
        canonical.push_str(&hex::encode(Sha256::digest(body)));
        let scope = format!("{date}/{}/sqs/aws4_request", self.region);
        let string_to_sign =
            format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
        let signature = {
            let mut cached = lock(&self.signing_key);
            let key = match cached.as_ref() {
                Some(k)
                    if k.date == date
                        && k.access_key == credentials.access_key_id()
                        && k.secret == credentials.secret_access_key() =>
                {
                    k
                }
                _ => cached.insert(SigningKey {
                    date: date.to_owned(),
                    access_key: credentials.access_key_id().to_owned(),
                    secret: credentials.secret_access_key().to_owned(),
                    key: generate_signing_key(credentials.secret_access_key(), now, &self.region, "sqs")
                        .as_ref()
                        .to_vec(),
                }),
            };
            calculate_signature(&key.key, string_to_sign.as_bytes())
        };
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id()
        );
        let headers = request.headers_mut();
        let value = |v: &str| hyper::header::HeaderValue::from_str(v).map_err(signing);
        headers.insert(X_AMZ_DATE, value(&amz_date)?);
        if let Some(token) = token {
            headers.insert(X_AMZ_SECURITY_TOKEN, value(token)?);
        }
        headers.insert(hyper::header::AUTHORIZATION, value(&authorization)?);
        Ok(())
    }

    /// Signs with aws-sigv4's general signer (endpoints with a path).
    fn sign_with_sigv4(
        &self,
        request: &mut hyper::Request<()>,
        body: &[u8],
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<(), DirectError> {
        let headers = request.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable =
            SignableRequest::new("POST", &self.endpoint_text, headers, SignableBody::Bytes(body)).map_err(signing)?;
        let identity = credentials.clone().into();
        let params = SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sqs")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(signing)?
            .into();
        let (instructions, _signature) = sign(signable, &params).map_err(signing)?.into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    async fn credentials(&self) -> Result<Credentials, DirectError> {
        self.credentials.get().await.map_err(DirectError::Credentials)
    }

    /// When to sign a request made at `now`: SQS's time, as far as its answers tell.
    fn signing_time(&self, now: SystemTime) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let by = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 { now.checked_add(by) } else { now.checked_sub(by) }.unwrap_or(now)
    }

    /// Learns SQS's clock from an answer's `Date`, as the SDK's clock-skew interceptor
    /// does: against the middle of the round trip, from every answer, and not from a
    /// cached one (`Age`) or one that took too long to say much. A clock hours off (a
    /// host without NTP, a VM resumed from a snapshot) otherwise gets every signature
    /// refused until someone fixes the clock.
    fn measure_skew<B>(&self, response: &hyper::Response<B>, sent: SystemTime, received: SystemTime) {
        if response.headers().contains_key(hyper::header::AGE) {
            return;
        }
        let Some(date) = response.headers().get(hyper::header::DATE).and_then(|d| d.to_str().ok()) else { return };
        let Ok(server) = aws_smithy_types::DateTime::from_str(date, aws_smithy_types::date_time::Format::HttpDate)
        else {
            return;
        };
        let Ok(server) = SystemTime::try_from(server) else { return };
        let elapsed = received.duration_since(sent).unwrap_or_default();
        if elapsed > MAX_TRUSTED_ROUND_TRIP {
            return;
        }
        let midpoint = sent + elapsed / 2;
        let skew = match server.duration_since(midpoint) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        };
        self.skew_ms.store(skew, Ordering::Relaxed);
    }
}

/// A credentials provider's credentials, fetched once and kept until shortly before
/// they expire (credentials without an expiry: as long as the SDK keeps them). One per
/// SQS client key, shared by the direct path and the SDK client, so the two make one
/// fetch (one STS AssumeRole for a `role_arn`) between them, not one each.
#[derive(Clone, Debug)]
pub struct CredentialsCache(Arc<CacheInner>);

#[derive(Debug)]
struct CacheInner {
    provider: SharedCredentialsProvider,
    /// The credentials, and until when to use them.
    cached: Mutex<Option<(Credentials, SystemTime)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl CredentialsCache {
    pub fn new(provider: SharedCredentialsProvider) -> CredentialsCache {
        CredentialsCache(Arc::new(CacheInner { provider, cached: Mutex::new(None), refresh: Default::default() }))
    }

    async fn get(&self) -> Result<Credentials, aws_credential_types::provider::error::CredentialsError> {
        let fresh = |c: &Option<(Credentials, SystemTime)>| {
            c.as_ref().filter(|(_, until)| *until > SystemTime::now()).map(|(c, _)| c.clone())
        };
        if let Some(c) = fresh(&lock(&self.0.cached)) {
            return Ok(c);
        }
        // One refresh at a time; whoever waited finds the new credentials.
        let _refreshing = self.0.refresh.lock().await;
        if let Some(c) = fresh(&lock(&self.0.cached)) {
            return Ok(c);
        }
        let c = self.0.provider.provide_credentials().await?;
        let until = match c.expiry() {
            Some(expiry) => expiry.checked_sub(CREDENTIALS_BUFFER).unwrap_or(SystemTime::UNIX_EPOCH),
            None => SystemTime::now() + CREDENTIALS_WITHOUT_EXPIRY,
        };
        *lock(&self.0.cached) = Some((c.clone(), until));
        Ok(c)
    }

    /// Drops the credentials if they carry no expiry (static keys, which a rotation
    /// replaces in place); temporary ones stay until near their expiry.
    fn forget_static(&self) {
        let mut cached = lock(&self.0.cached);
        if cached.as_ref().is_some_and(|(c, _)| c.expiry().is_none()) {
            *cached = None;
        }
    }
}

impl ProvideCredentials for CredentialsCache {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ACCESS_KEY, SECRET_KEY, sha256_hex, signature};

    fn at() -> SystemTime {
        // 2026-11-27T12:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_780_800)
    }

    fn provider(token: Option<&str>) -> (Credentials, SharedCredentialsProvider) {
        let c = Credentials::new(ACCESS_KEY, SECRET_KEY, token.map(str::to_owned), None, "test");
        (c.clone(), SharedCredentialsProvider::new(c))
    }

    async fn direct(endpoint_url: Option<&str>, fips: bool, dual: bool) -> Direct {
        Direct::new("eu-west-1", endpoint_url, fips, dual, CredentialsCache::new(provider(None).1)).await.unwrap()
    }

    #[tokio::test]
    async fn the_endpoint_is_the_sdks() {
        assert_eq!(direct(None, false, false).await.endpoint_text, "https://sqs.eu-west-1.amazonaws.com");
        assert_eq!(direct(None, true, false).await.endpoint_text, "https://sqs-fips.eu-west-1.amazonaws.com");
        assert_eq!(direct(None, false, true).await.endpoint_text, "https://sqs.eu-west-1.api.aws");
        assert_eq!(direct(Some("http://127.0.0.1:5000"), false, false).await.endpoint_text, "http://127.0.0.1:5000");
    }

    /// What SQS checks: the signature, recomputed from the request as sent (its signed
    /// headers and body) by an independent SigV4 computation, must match.
    #[tokio::test]
    async fn the_request_is_signed_for_sqs_over_what_is_sent() {
        for token in [None, Some("SESSION")] {
            let d = direct(None, false, false).await;
            let (creds, _) = provider(token);
            let request = d.request("https://sqs.eu-west-1.amazonaws.com/1/q", Attrs::default(), &creds, at()).unwrap();
            let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(request.method(), "POST");
            assert_eq!(request.uri(), "https://sqs.eu-west-1.amazonaws.com/");
            assert_eq!(header("x-amz-target").as_deref(), Some("AmazonSQS.GetQueueAttributes"));
            assert_eq!(header("content-type").as_deref(), Some("application/x-amz-json-1.0"));
            assert_eq!(header("x-amz-date").as_deref(), Some("20261127T120000Z"));
            assert_eq!(header("x-amz-security-token").as_deref(), token);

            let auth = header("authorization").unwrap();
            let field = |name: &str| auth.split(&format!("{name}=")).nth(1).unwrap().split(',').next().unwrap();
            assert!(auth.starts_with("AWS4-HMAC-SHA256 "), "{auth}");
            assert_eq!(field("Credential"), "AKIDEXAMPLE/20261127/eu-west-1/sqs/aws4_request");
            let signed = field("SignedHeaders");
            let expected = match token {
                None => "content-type;host;x-amz-date;x-amz-target",
                Some(_) => "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
            };
            assert_eq!(signed, expected);

            let body = request.body().clone().collect().await.unwrap().to_bytes();
            let canonical_headers: String = signed
                .split(';')
                .map(|h| match h {
                    // hyper sends the URI's authority as Host.
                    "host" => format!("host:{}\n", request.uri().authority().unwrap()),
                    _ => format!("{h}:{}\n", header(h).unwrap().trim()),
                })
                .collect();
            let canonical_request = format!("POST\n/\n\n{canonical_headers}\n{signed}\n{}", sha256_hex(&body));
            let want = signature(&canonical_request, "20261127T120000Z", "eu-west-1", "sqs");
            assert_eq!(field("Signature"), want, "token {token:?}");
        }
    }

    /// The signature made here is the one aws-sigv4's general signer makes, header for
    /// header: endpoints with and without a port (a default one is not signed), with
    /// and without a session token, across a change of day (a new signing key).
    #[tokio::test]
    async fn signing_here_matches_aws_sigv4() {
        let endpoints = [
            None,
            Some("http://127.0.0.1:5000"),
            Some("https://sqs.example.com:443"),
            Some("http://localhost:80/"),
            Some("https://vpce-1-abc.sqs.eu-west-1.vpce.amazonaws.com"),
        ];
        for endpoint in endpoints {
            let d = direct(endpoint, false, false).await;
            assert!(d.signed_host.is_some(), "{endpoint:?}");
            for token in [None, Some("SESSION")] {
                let (creds, _) = provider(token);
                for day in 0..2 {
                    let now = at() + Duration::from_secs(86_400 * day + 3_599);
                    let body = request_body("https://sqs.eu-west-1.amazonaws.com/1/q", Attrs::default());
                    let (mut here, mut general) = (d.unsigned().unwrap(), d.unsigned().unwrap());
                    d.sign(&mut here, d.signed_host.as_deref().unwrap(), &body, &creds, now).unwrap();
                    d.sign_with_sigv4(&mut general, &body, &creds, now).unwrap();
                    assert_eq!(here.headers(), general.headers(), "{endpoint:?} {token:?} day {day}");
                }
            }
        }
        // An endpoint with a path is left to aws-sigv4.
        assert!(direct(Some("http://127.0.0.1:5000/sqs"), false, false).await.signed_host.is_none());
    }

    /// A 403 drops the cached credentials (these have no expiry, so they would stay
    /// cached for the cache's whole lifetime otherwise): the next call fetches again.
    #[tokio::test]
    async fn a_403_drops_the_cached_credentials() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Debug)]
        struct Counting(std::sync::Arc<AtomicUsize>);
        impl ProvideCredentials for Counting {
            fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                self.0.fetch_add(1, Ordering::SeqCst);
                let c = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "counting");
                aws_credential_types::provider::future::ProvideCredentials::ready(Ok(c))
            }
        }
        let denied = r#"{"__type":"com.amazonaws.sqs#InvalidClientTokenId"}"#;
        let counts = r#"{"Attributes":{"ApproximateNumberOfMessages":"3"}}"#;
        let server = crate::testing::TinyServer::start(move |n| {
            Some(if n == 0 { (403, denied.to_owned()) } else { (200, counts.to_owned()) })
        })
        .await;
        let server_url = server.url.clone();
        let fetched = std::sync::Arc::new(AtomicUsize::new(0));
        let provider = SharedCredentialsProvider::new(Counting(fetched.clone()));
        let d =
            Direct::new("eu-west-1", Some(&server_url), false, false, CredentialsCache::new(provider)).await.unwrap();
        let http = http_client_with(proxy::Connector::new(proxy::Proxies::new("", "", ""))).unwrap();
        let url = format!("{server_url}/1/q");
        let miss = d.read(&http, &url, Attrs::default(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(miss, Miss::Fallback { reason: "forbidden", .. }), "{miss:?}");
        assert_eq!(d.read(&http, &url, Attrs::default(), Duration::from_secs(5)).await.unwrap().visible, 3);
        assert_eq!(d.read(&http, &url, Attrs::default(), Duration::from_secs(5)).await.unwrap().visible, 3);
        // Fetched for the first call, again after the 403, and kept from then on.
        assert_eq!(fetched.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn credentials_are_fetched_once_until_they_near_expiry() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Debug)]
        struct Counting(std::sync::Arc<AtomicUsize>, Duration);
        impl ProvideCredentials for Counting {
            fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                self.0.fetch_add(1, Ordering::SeqCst);
                let expiry = SystemTime::now() + self.1;
                aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                    ACCESS_KEY,
                    SECRET_KEY,
                    None,
                    Some(expiry),
                    "counting",
                )))
            }
        }
        for (lifetime, fetches) in [(Duration::from_secs(3600), 1), (Duration::from_secs(30), 3)] {
            let count = std::sync::Arc::new(AtomicUsize::new(0));
            let provider = SharedCredentialsProvider::new(Counting(count.clone(), lifetime));
            let d = Direct::new("eu-west-1", None, false, false, CredentialsCache::new(provider)).await.unwrap();
            for _ in 0..3 {
                d.credentials().await.unwrap();
            }
            // An hour: fetched once. 30 s, inside the refresh margin: fetched every time.
            assert_eq!(count.load(Ordering::SeqCst), fetches, "lifetime {lifetime:?}");
        }
    }

    /// A clock two hours behind SQS's: the `Date` of SQS's first answer (a refusal of
    /// the signature's time) sets the time the next request is signed at.
    #[tokio::test]
    async fn the_signing_time_follows_the_servers_date() {
        let ahead = Duration::from_secs(2 * 3600);
        let server_now = jiff::Timestamp::try_from(SystemTime::now() + ahead).unwrap();
        let date = format!("date: {}\r\n", server_now.strftime("%a, %d %b %Y %H:%M:%S GMT"));
        let skewed = r#"{"__type":"com.amazonaws.sqs#InvalidSignatureException","message":"Signature expired"}"#;
        let counts = r#"{"Attributes":{"ApproximateNumberOfMessages":"3"}}"#;
        let server = crate::testing::TinyServer::start_with_headers(&date, move |n| {
            Some(if n == 0 { (403, skewed.to_owned()) } else { (200, counts.to_owned()) })
        })
        .await;
        let d = Direct::new("eu-west-1", Some(&server.url), false, false, CredentialsCache::new(provider(None).1))
            .await
            .unwrap();
        let http = http_client_with(proxy::Connector::new(proxy::Proxies::new("", "", ""))).unwrap();
        let url = format!("{}/1/q", server.url);
        let miss = d.read(&http, &url, Attrs::default(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(miss, Miss::Fallback { reason: "forbidden", .. }), "{miss:?}");
        assert_eq!(d.read(&http, &url, Attrs::default(), Duration::from_secs(5)).await.unwrap().visible, 3);
        let signed_at: Vec<SystemTime> = server
            .header("x-amz-date")
            .into_iter()
            .map(|d| {
                let d = d.unwrap().to_ascii_uppercase();
                let t = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &d).unwrap();
                SystemTime::from(t.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp())
            })
            .collect();
        let off = |t: SystemTime, from: SystemTime| match t.duration_since(from) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        let now = SystemTime::now();
        assert!(off(signed_at[0], now) < Duration::from_secs(60), "first request signed at our time");
        assert!(off(signed_at[1], now + ahead) < Duration::from_secs(60), "second one at the server's");
    }
}
