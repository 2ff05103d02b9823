//! Outbound HTTP proxies, as the environment sets them (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, each also in lower case), for every AWS connection: the
//! SDK's clients (SQS, STS, the credential chain, EKS token minting) through
//! [`sdk_http_client`], and the direct SQS path through [`Connector`]. Both read the
//! variables with hyper-util's `Matcher::from_env`, so they take the same decision for
//! the same URL; [`set_kube_proxy`] makes it for the Kubernetes API server too.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{Builder, ConnectorBuilder, tls};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// The HTTP client for every AWS SDK client and credentials provider sqscale builds:
/// the SDK's own hyper client (rustls with aws-lc and the platform's roots, the SDK's
/// timeouts), with the proxies the environment names. Set it on each `aws_config`
/// loader (`.http_client(..)`), so STS (AssumeRole, web identity) and the credential
/// chain use it too.
///
/// Built fresh per call: its connection pool lives on the runtime that first uses it.
pub fn sdk_http_client() -> SharedHttpClient {
    // As aws-smithy-runtime builds its default client, with the proxy configuration
    // explicit rather than dependent on the behavior version.
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Sets the proxy of `config` (built from `kubeconfig`'s `context`, or in-cluster when
/// `kubeconfig` is `None`) for its API server, as kubectl picks one: the context's
/// cluster `proxy-url` if set, else the environment's, by the rules the AWS clients
/// here follow (`HTTPS_PROXY` for an https server, `HTTP_PROXY` for http, `ALL_PROXY`,
/// and `NO_PROXY` checked against the API server's host).
///
/// Why: kube-client 5's loader (`ConfigLoader::proxy_url`) checks `NO_PROXY` against the
/// proxy's own URL rather than the server's, so `NO_PROXY=10.0.0.0/8` does not bypass
/// the proxy for an API server at 10.0.0.1, and `NO_PROXY=.corp` bypasses it for every
/// server when the proxy is `proxy.corp`; and it drops a kubeconfig's `proxy-url` the
/// same way.
pub fn set_kube_proxy(config: &mut kube::Config, kubeconfig: Option<&kube::config::Kubeconfig>, context: Option<&str>) {
    let configured = kubeconfig.and_then(|kc| kubeconfig_proxy_url(kc, context));
    config.proxy_url = kube_proxy_url(&Matcher::from_env(), &config.cluster_url, configured.as_deref());
}

/// The `proxy-url` of `context`'s cluster (the current context's when `None`).
fn kubeconfig_proxy_url(kc: &kube::config::Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context.or(kc.current_context.as_deref())?;
    let cluster = &kc.contexts.iter().find(|c| c.name == name)?.context.as_ref()?.cluster;
    let cluster = kc.clusters.iter().find(|c| &c.name == cluster)?.cluster.as_ref()?;
    cluster.proxy_url.clone().filter(|p| !p.is_empty())
}

fn kube_proxy_url(proxies: &Matcher, server: &Uri, configured: Option<&str>) -> Option<Uri> {
    // An unparsable `proxy-url` was already refused by kube's loader.
    if let Some(url) = configured {
        return url.parse().ok();
    }
    let proxy = proxies.intercept(server)?;
    // The matcher keeps the proxy's credentials apart (as a header value); kube reads
    // them from the URL's user info.
    let credentials = proxy.basic_auth().and_then(|v| {
        use base64::Engine;
        let encoded = v.to_str().ok()?.strip_prefix("Basic ")?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()
    });
    let Some((user, password)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
        return Some(proxy.uri().clone());
    };
    let mut url = url::Url::parse(&proxy.uri().to_string()).ok()?;
    url.set_username(user).ok()?;
    url.set_password(Some(password)).ok()?;
    url.as_str().parse().ok()
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the direct path could not reach SQS through a proxy. The cause stays typed, so a
/// timeout behind the proxy is still told from a refused connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {0}: only http:// proxies are supported here")]
    Scheme(Uri),
    #[error("proxy {0}")]
    Connect(Uri, #[source] BoxError),
}

/// A TCP connector for hyper-util's client that follows the proxy settings: straight
/// to the host when no proxy applies (or `NO_PROXY` covers it), a `CONNECT` tunnel
/// through the proxy for `https` destinations (TLS then runs end to end inside it),
/// and a connection to the proxy itself for `http` destinations, marked as proxied so
/// the client sends absolute-form requests. Wrap it in a TLS connector.
#[derive(Clone, Debug)]
pub struct Connector {
    tcp: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Connector {
    /// Proxies as the environment says.
    pub fn from_env() -> Connector {
        Connector::new(Matcher::from_env())
    }

    pub fn new(proxies: Matcher) -> Connector {
        let mut tcp = HttpConnector::new();
        // The TLS connector around this one checks the scheme.
        tcp.enforce_http(false);
        Connector { tcp, proxies: Arc::new(proxies) }
    }

    /// The `Proxy-Authorization` an `http` request to `dst` must carry: the proxy's
    /// credentials when one with credentials carries it in absolute form. (Through a
    /// tunnel they go in the `CONNECT` instead.)
    pub fn http_proxy_authorization(&self, dst: &Uri) -> Option<hyper::header::HeaderValue> {
        if dst.scheme_str() != Some("http") {
            return None;
        }
        self.proxies.intercept(dst)?.basic_auth().cloned()
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // HttpConnector is always ready, so its clones can be called without waiting.
        let mut tcp = self.tcp.clone();
        let proxy = self.proxies.intercept(&dst);
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return Ok(Conn { io: tcp.call(dst).await?, proxied: false });
            };
            if proxy.uri().scheme_str() != Some("http") {
                return Err(ProxyError::Scheme(proxy.uri().clone()).into());
            }
            if dst.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst).await.map_err(|e| ProxyError::Connect(proxy.uri().clone(), e.into()))?;
                Ok(Conn { io, proxied: false })
            } else {
                let io = tcp
                    .call(proxy.uri().clone())
                    .await
                    .map_err(|e| ProxyError::Connect(proxy.uri().clone(), e.into()))?;
                Ok(Conn { io, proxied: true })
            }
        })
    }
}

/// A connection made by [`Connector`]: TCP, and whether requests on it go to a proxy.
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The first line each connection to `listener` sends; answers CONNECTs with 200.
    async fn first_lines(listener: TcpListener) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.starts_with("CONNECT ") {
                        let _ = conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
                    }
                    let _ = tx.send(text.lines().next().unwrap_or_default().to_owned());
                    std::future::pending::<()>().await;
                });
            }
        });
        rx
    }

    #[test]
    fn the_api_servers_proxy_is_chosen_for_the_server() {
        let env = |no: &str| {
            Matcher::builder().https("http://u%40x:p%3Aw@proxy.corp:3128").http("http://plain.corp:80").no(no).build()
        };
        let server = |u: &str| u.parse::<Uri>().unwrap();
        let pick = |no: &str, s: &str, configured: Option<&str>| {
            kube_proxy_url(&env(no), &server(s), configured).map(|u| u.to_string())
        };
        // NO_PROXY is matched against the API server, not the proxy.
        assert_eq!(pick("10.0.0.0/8", "https://10.0.0.1:6443", None), None);
        assert_eq!(
            pick(".corp", "https://api.example.com", None).as_deref(),
            Some("http://u%40x:p%3Aw@proxy.corp:3128/")
        );
        assert_eq!(pick("", "https://127.0.0.1:6443", None).as_deref(), Some("http://u%40x:p%3Aw@proxy.corp:3128/"));
        assert_eq!(pick("", "http://api.example.com", None).as_deref(), Some("http://plain.corp:80/"));
        // A kubeconfig's proxy-url is used as written, NO_PROXY or not.
        assert_eq!(
            pick("*", "https://10.0.0.1", Some("http://kc-proxy:8080")).as_deref(),
            Some("http://kc-proxy:8080/")
        );

        let kc: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
            "clusters": [
                {"name": "a", "cluster": {"server": "https://a", "proxy-url": "http://pa:1"}},
                {"name": "b", "cluster": {"server": "https://b"}}
            ],
            "contexts": [
                {"name": "ca", "context": {"cluster": "a"}},
                {"name": "cb", "context": {"cluster": "b"}}
            ],
            "current-context": "ca"
        }))
        .unwrap();
        assert_eq!(kubeconfig_proxy_url(&kc, None).as_deref(), Some("http://pa:1"));
        assert_eq!(kubeconfig_proxy_url(&kc, Some("cb")), None);
        assert_eq!(kubeconfig_proxy_url(&kc, Some("nope")), None);
    }

    #[tokio::test]
    async fn connections_follow_the_proxy_settings() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let mut at_proxy = first_lines(proxy).await;
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_port = server.local_addr().unwrap().port();
        let mut at_server = first_lines(server).await;
        let matcher = Matcher::builder().http(proxy_url.clone()).https(proxy_url).no("127.0.0.1").build();
        let mut connector = Connector::new(matcher);

        // https: a CONNECT tunnel, through which the client then speaks TLS.
        let conn = connector.call("https://kube.test:6443/".parse().unwrap()).await.unwrap();
        assert!(!conn.connected().is_proxied());
        assert_eq!(at_proxy.recv().await.unwrap(), "CONNECT kube.test:6443 HTTP/1.1");

        // http: a connection to the proxy, marked so that requests go in absolute form.
        let mut conn = connector.call("http://sqs.test:5000/".parse().unwrap()).await.unwrap();
        assert!(conn.connected().is_proxied());
        conn.io.inner_mut().write_all(b"POST http://sqs.test:5000/ HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(at_proxy.recv().await.unwrap(), "POST http://sqs.test:5000/ HTTP/1.1");

        // NO_PROXY: straight to the server.
        let dst = format!("http://127.0.0.1:{server_port}/");
        let mut conn = connector.call(dst.parse().unwrap()).await.unwrap();
        assert!(!conn.connected().is_proxied());
        conn.io.inner_mut().write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(at_server.recv().await.unwrap(), "GET / HTTP/1.1");
        assert!(at_proxy.try_recv().is_err());
    }
}
