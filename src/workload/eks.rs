//! EKS bearer tokens minted in-process, as `aws eks get-token` and aws-iam-authenticator
//! make them, so a bastion or a distroless image needs no aws CLI.
//!
//! The token is `k8s-aws-v1.` + base64url (no padding) of a presigned STS
//! `GetCallerIdentity` URL whose signature covers the `x-k8s-aws-id: <cluster>` header.
//! EKS accepts it for 15 minutes after its signing time; sqscale mints a new one after
//! [`REFRESH_AFTER`], and after any 401 (see [`super::auth`]).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use base64::Engine;

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// Well inside the 15 minutes EKS accepts a token for.
pub const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);
/// The presigned URL's own validity, as aws-iam-authenticator sets it.
const PRESIGN_EXPIRES: Duration = Duration::from_secs(60);

/// Why no EKS token could be minted.
#[derive(Debug, thiserror::Error)]
pub enum EksError {
    #[error("presigning GetCallerIdentity")]
    Presign(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("eks_cluster {0:?}: no AWS region for STS; set [aws] region or AWS_REGION")]
    NoRegion(String),
    #[error("eks_cluster {0:?}: no AWS credentials provider")]
    NoCredentialsProvider(String),
    #[error("eks_cluster {0:?}: loading AWS credentials")]
    Credentials(String, #[source] aws_credential_types::provider::error::CredentialsError),
}

fn presign(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EksError {
    EksError::Presign(e.into())
}

/// Mints a token for `cluster` with `credentials`, signed for STS in `region` at `at`.
pub fn token(credentials: &Credentials, region: &str, cluster: &str, at: SystemTime) -> Result<String, EksError> {
    let url = format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let host = format!("sts.{region}.amazonaws.com");
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        [("host", host.as_str()), ("x-k8s-aws-id", cluster)].into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(presign)?;
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRES);
    let identity = credentials.clone().into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(at)
        .settings(settings)
        .build()
        .map_err(presign)?
        .into();
    let (instructions, _signature) = sign(request, &params).map_err(presign)?.into_parts();
    let (_, query) = instructions.into_parts();
    let mut presigned = url::Url::parse(&url).map_err(presign)?;
    {
        let mut pairs = presigned.query_pairs_mut();
        for (name, value) in &query {
            pairs.append_pair(name, value);
        }
    }
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned.as_str())))
}

/// Mints tokens for one cluster: the AWS config is loaded once, the credentials come
/// from its provider (which caches them and refreshes them before they expire).
pub struct Minter {
    cluster: String,
    region: String,
    credentials: SharedCredentialsProvider,
    refresh_after: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").field("cluster", &self.cluster).field("region", &self.region).finish()
    }
}

impl Minter {
    /// A minter with the AWS default credential chain (optionally a profile); the
    /// region is STS's, `None` takes the SDK's (AWS_REGION, profile).
    pub async fn load(cluster: &str, region: Option<&str>, profile: Option<&str>) -> Result<Minter, EksError> {
        // Through the environment's proxy, as every AWS call (the credential chain may
        // call STS).
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(crate::proxy::sdk_http_client());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_owned()));
        }
        if let Some(p) = profile {
            loader = loader.profile_name(p);
        }
        let config = loader.load().await;
        let region = config.region().map(|r| r.to_string()).ok_or_else(|| EksError::NoRegion(cluster.to_owned()))?;
        let credentials =
            config.credentials_provider().ok_or_else(|| EksError::NoCredentialsProvider(cluster.to_owned()))?;
        Ok(Minter::new(cluster, &region, credentials))
    }

    /// A minter with the given credentials.
    pub fn new(cluster: &str, region: &str, credentials: SharedCredentialsProvider) -> Minter {
        Minter { cluster: cluster.to_owned(), region: region.to_owned(), credentials, refresh_after: REFRESH_AFTER }
    }

    /// Mints new tokens this often instead of [`REFRESH_AFTER`]: for tests, whose fake
    /// API server accepts tokens for seconds rather than 15 minutes.
    pub fn with_refresh_after(mut self, refresh_after: Duration) -> Minter {
        self.refresh_after = refresh_after;
        self
    }

    pub fn refresh_after(&self) -> Duration {
        self.refresh_after
    }

    /// A token signed now.
    pub async fn mint(&self) -> Result<String, EksError> {
        let cluster = &self.cluster;
        let credentials =
            self.credentials.provide_credentials().await.map_err(|e| EksError::Credentials(cluster.clone(), e))?;
        token(&credentials, &self.region, cluster, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::testing::{ACCESS_KEY, SECRET_KEY, sha256_hex, signature, uri_encode};

    fn at() -> SystemTime {
        // 2026-11-27T12:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_780_800)
    }

    fn decode(token: &str) -> url::Url {
        let b64 = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).expect("base64url without padding");
        url::Url::parse(std::str::from_utf8(&bytes).unwrap()).unwrap()
    }

    #[test]
    fn token_has_the_aws_iam_authenticator_form() {
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let token = token(&creds, "us-east-1", "demo-cluster", at()).unwrap();
        assert!(token.starts_with("k8s-aws-v1."));
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'), "base64url, no padding");
        let url = decode(&token);
        assert_eq!(url.host_str(), Some("sts.us-east-1.amazonaws.com"));
        let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["Action"], "GetCallerIdentity");
        assert_eq!(q["Version"], "2011-06-15");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(q["X-Amz-Credential"], "AKIDEXAMPLE/20261127/us-east-1/sts/aws4_request");
        assert_eq!(q["X-Amz-Date"], "20261127T120000Z");
        assert_eq!(q["X-Amz-Expires"], "60");
        assert_eq!(q["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
    }

    /// The signature, recomputed here by hand from the SigV4 specification, must match:
    /// EKS forwards the URL (with the cluster header) to STS, which checks exactly this.
    #[test]
    fn signature_matches_an_independent_sigv4_computation() {
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let url = decode(&token(&creds, "us-east-1", "demo-cluster", at()).unwrap());
        let mut q: Vec<(String, String)> =
            url.query_pairs().into_owned().filter(|(k, _)| k != "X-Amz-Signature").collect();
        q.sort();
        let canonical_query =
            q.iter().map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v))).collect::<Vec<_>>().join("&");
        let canonical_request = format!(
            "GET\n/\n{canonical_query}\nhost:sts.us-east-1.amazonaws.com\nx-k8s-aws-id:demo-cluster\n\nhost;x-k8s-aws-id\n{}",
            sha256_hex(b"")
        );
        let expected = signature(&canonical_request, "20261127T120000Z", "us-east-1", "sts");
        let got: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(got["X-Amz-Signature"], expected);
        // Fixed clock, fixed keys: the token itself is a stable vector.
        assert_eq!(expected.len(), 64);
    }

    #[test]
    fn session_tokens_travel_in_the_query_and_the_cluster_changes_the_signature() {
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, Some("SESSION".into()), None, "test");
        let a = decode(&token(&creds, "eu-west-1", "a", at()).unwrap());
        let b = decode(&token(&creds, "eu-west-1", "b", at()).unwrap());
        let qa: BTreeMap<String, String> = a.query_pairs().into_owned().collect();
        let qb: BTreeMap<String, String> = b.query_pairs().into_owned().collect();
        assert_eq!(qa["X-Amz-Security-Token"], "SESSION");
        assert_ne!(qa["X-Amz-Signature"], qb["X-Amz-Signature"]);
    }
}
