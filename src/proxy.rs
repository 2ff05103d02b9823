//! Outbound HTTP proxies, as the environment sets them (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, each also in lower case), for every AWS connection: the
//! SDK's clients (SQS, STS, the credential chain, EKS token minting) through
//! [`sdk_http_client`], and the direct SQS path through [`Connector`]. Both read the
//! variables through [`Proxies`], so they take the same decision for the same URL;
//! [`set_kube_proxy`] makes it for the Kubernetes API server too. `NO_PROXY` is read as
//! Go's `net/http` (and so kubectl) reads it ([`NoProxy`]): hyper-util's matcher takes
//! `*.corp.example`, `host:port` and `[::1]` for literal names that match nothing.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{Builder, ConnectorBuilder, tls};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector as SdkHttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
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
    sdk_http_client_with(Proxies::from_env())
}

fn sdk_http_client_with(proxies: Proxies) -> SharedHttpClient {
    // The SDK's client applies NO_PROXY by hyper-util's rules, so it is given no
    // NO_PROXY at all: one client per way out (direct, the http proxy, the https one),
    // and each request takes the one `proxies` picks for its URL.
    let via = |proxy: Option<&str>| {
        let config = match proxy {
            None => Some(ProxyConfig::disabled()),
            Some(url) if url.contains("://") => ProxyConfig::all(url).ok(),
            // hyper-util's reading: a proxy without a scheme is an http one.
            Some(url) => ProxyConfig::all(format!("http://{url}")).ok(),
        }?;
        Some(sdk_client(config))
    };
    let http = proxies.http.as_deref().and_then(|p| via(Some(p)));
    let https = proxies.https.as_deref().and_then(|p| via(Some(p)));
    let direct = via(None).expect("a disabled proxy config is always built");
    SharedHttpClient::new(SdkClient { proxies: Arc::new(proxies), direct, http, https })
}

/// The SDK's default client, with the proxy configuration explicit rather than
/// dependent on the behavior version.
fn sdk_client(proxy: ProxyConfig) -> SharedHttpClient {
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(proxy.clone()));
        connector.build()
    })
}

/// The SDK's clients, one per way out, and the rules that pick one per request.
#[derive(Debug)]
struct SdkClient {
    proxies: Arc<Proxies>,
    direct: SharedHttpClient,
    http: Option<SharedHttpClient>,
    https: Option<SharedHttpClient>,
}

impl HttpClient for SdkClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        let connector = |c: &SharedHttpClient| c.http_connector(settings, components);
        SharedHttpConnector::new(SdkConnector {
            proxies: self.proxies.clone(),
            direct: connector(&self.direct),
            http: self.http.as_ref().map(connector),
            https: self.https.as_ref().map(connector),
        })
    }
}

#[derive(Debug)]
struct SdkConnector {
    proxies: Arc<Proxies>,
    direct: SharedHttpConnector,
    http: Option<SharedHttpConnector>,
    https: Option<SharedHttpConnector>,
}

impl SdkHttpConnector for SdkConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let proxied = request.uri().parse::<Uri>().ok().filter(|uri| !self.proxies.no.covers(uri));
        let via = match proxied.as_ref().and_then(Uri::scheme_str) {
            Some("http") => self.http.as_ref(),
            Some("https") => self.https.as_ref(),
            _ => None,
        };
        via.unwrap_or(&self.direct).call(request)
    }
}

/// The proxies the environment names, as Go programs (kubectl) read them: `HTTPS_PROXY`
/// for `https` URLs, `HTTP_PROXY` for `http` ones, `ALL_PROXY` for either when the
/// specific one is unset, and `NO_PROXY`; each also in lower case, the upper-case one
/// winning when both are set (even if empty).
#[derive(Clone, Debug)]
pub struct Proxies {
    /// The proxy of each scheme, without `NO_PROXY` (which is `no`'s).
    matcher: Arc<Matcher>,
    http: Option<String>,
    https: Option<String>,
    no: NoProxy,
}

impl Proxies {
    pub fn from_env() -> Proxies {
        let env = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok()).unwrap_or_default();
        // Under CGI, HTTP_PROXY may come from a request's `Proxy:` header ("httpoxy"):
        // hyper-util ignores the variables there, and so does this.
        if std::env::var_os("REQUEST_METHOD").is_some() {
            return Proxies::new("", "", "");
        }
        let all = env(["ALL_PROXY", "all_proxy"]);
        let or_all = |v: String| if v.is_empty() { all.clone() } else { v };
        Proxies::new(
            &or_all(env(["HTTP_PROXY", "http_proxy"])),
            &or_all(env(["HTTPS_PROXY", "https_proxy"])),
            &env(["NO_PROXY", "no_proxy"]),
        )
    }

    /// `http` and `https`: the proxy of each scheme (empty: none); `no`: `NO_PROXY`.
    pub fn new(http: &str, https: &str, no: &str) -> Proxies {
        let matcher = Matcher::builder().http(http.to_owned()).https(https.to_owned()).build();
        // The raw values, for the SDK's clients; only those hyper-util can use.
        let usable =
            |probe: &'static str, raw: &str| matcher.intercept(&Uri::from_static(probe)).map(|_| raw.to_owned());
        let http = usable("http://x", http);
        let https = usable("https://x", https);
        Proxies { matcher: Arc::new(matcher), http, https, no: NoProxy::parse(no) }
    }

    /// The proxy for `dst`, if any.
    pub fn intercept(&self, dst: &Uri) -> Option<Intercept> {
        if self.no.covers(dst) {
            return None;
        }
        self.matcher.intercept(dst)
    }
}

/// `NO_PROXY`, as Go's `golang.org/x/net/http/httpproxy` reads it: comma-separated,
/// case-insensitive entries, each
///
/// - `*`: every host;
/// - an IP range (`10.0.0.0/8`, `fd00::/8`);
/// - an IP address, optionally with a port (`10.0.0.1`, `10.0.0.1:6443`, `::1`,
///   `[::1]`, `[::1]:6443`);
/// - a domain, optionally with a port: `corp.example` covers it and its subdomains,
///   `.corp.example` and `*.corp.example` only its subdomains.
///
/// An entry with a port covers only that port (a URL without one has its scheme's).
/// Unlike Go, loopback is not covered unless listed (see the README, "Proxies").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoProxy {
    all: bool,
    nets: Vec<ipnet::IpNet>,
    ips: Vec<(std::net::IpAddr, Option<u16>)>,
    domains: Vec<Domain>,
}

#[derive(Clone, Debug, PartialEq)]
struct Domain {
    /// With its leading dot: what a covered host ends with.
    suffix: String,
    /// The domain itself is covered too (it was written without a leading dot).
    exact: bool,
    port: Option<u16>,
}

impl NoProxy {
    pub fn parse(list: &str) -> NoProxy {
        let mut no = NoProxy::default();
        for entry in list.split(',') {
            let entry = entry.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                no.all = true;
                continue;
            }
            if let Ok(net) = entry.parse::<ipnet::IpNet>() {
                no.nets.push(net);
                continue;
            }
            let Some((host, port)) = split_host_port(&entry) else { continue };
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                no.ips.push((ip, port));
                continue;
            }
            let host = host.strip_prefix('*').filter(|h| h.starts_with('.')).unwrap_or(host);
            match host.strip_prefix('.') {
                Some("") => {}
                Some(_) => no.domains.push(Domain { suffix: host.to_owned(), exact: false, port }),
                None => no.domains.push(Domain { suffix: format!(".{host}"), exact: true, port }),
            }
        }
        no
    }

    /// Whether `dst` is reached without a proxy.
    pub fn covers(&self, dst: &Uri) -> bool {
        if self.all {
            return true;
        }
        let Some(host) = dst.host() else { return false };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_ascii_lowercase();
        let port = dst.port_u16().or(match dst.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        let port_ok = |want: Option<u16>| want.is_none() || want == port;
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return self.nets.iter().any(|n| n.contains(&ip)) || self.ips.iter().any(|(i, p)| *i == ip && port_ok(*p));
        }
        let host = host.strip_suffix('.').unwrap_or(&host);
        self.domains
            .iter()
            .any(|d| (host.ends_with(&d.suffix) || (d.exact && host == &d.suffix[1..])) && port_ok(d.port))
    }
}

/// An entry's host and port: `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6
/// address (more than one colon, no brackets). `None`: a port that is not a number, or
/// no host, which match nothing.
fn split_host_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (entry, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(port) => Some((host, Some(port.parse().ok()?))),
    }
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
    config.proxy_url = kube_proxy_url(&Proxies::from_env(), &config.cluster_url, configured.as_deref());
}

/// The `proxy-url` of `context`'s cluster (the current context's when `None`).
fn kubeconfig_proxy_url(kc: &kube::config::Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context.or(kc.current_context.as_deref())?;
    let cluster = &kc.contexts.iter().find(|c| c.name == name)?.context.as_ref()?.cluster;
    let cluster = kc.clusters.iter().find(|c| &c.name == cluster)?.cluster.as_ref()?;
    cluster.proxy_url.clone().filter(|p| !p.is_empty())
}

fn kube_proxy_url(proxies: &Proxies, server: &Uri, configured: Option<&str>) -> Option<Uri> {
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
    proxies: Arc<Proxies>,
}

impl Connector {
    /// Proxies as the environment says.
    pub fn from_env() -> Connector {
        Connector::new(Proxies::from_env())
    }

    pub fn new(proxies: Proxies) -> Connector {
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
    use std::time::Duration;
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
        let env = |no: &str| Proxies::new("http://plain.corp:80", "http://u%40x:p%3Aw@proxy.corp:3128", no);
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

    /// NO_PROXY as kubectl (Go's httpproxy) reads it: each form, with URLs it covers
    /// and URLs it does not.
    #[test]
    fn no_proxy_reads_the_forms_kubectl_accepts() {
        #[rustfmt::skip]
        let table: &[(&str, &[&str], &[&str])] = &[
            // A name: itself and its subdomains, not a longer name.
            ("corp.example", &["https://corp.example", "https://api.corp.example:6443", "http://a.b.corp.example"],
                &["https://notcorp.example", "https://corp.example.org"]),
            // A leading dot or `*.`: subdomains only.
            (".corp.example", &["https://api.corp.example"], &["https://corp.example", "https://xcorp.example"]),
            ("*.corp.example", &["https://api.corp.example", "https://a.b.corp.example"],
                &["https://corp.example", "https://xcorp.example"]),
            // `*` alone: everything; inside a list too.
            ("*", &["https://anything.example", "http://10.1.2.3:8080", "https://[fd00::1]"], &[]),
            ("other.example, *", &["https://anything.example"], &[]),
            // host:port: that port only (a URL without one has its scheme's).
            ("api.corp.example:6443", &["https://api.corp.example:6443"],
                &["https://api.corp.example", "https://api.corp.example:443"]),
            ("sqs.example:443", &["https://sqs.example", "https://x.sqs.example:443"],
                &["http://sqs.example", "https://sqs.example:8443"]),
            ("*.corp.example:8443", &["https://api.corp.example:8443"], &["https://api.corp.example"]),
            // IPv4 addresses, with and without a port; CIDR ranges.
            ("10.0.0.1", &["https://10.0.0.1:6443", "http://10.0.0.1"], &["https://10.0.0.2"]),
            ("10.0.0.1:6443", &["https://10.0.0.1:6443"], &["https://10.0.0.1"]),
            ("10.0.0.0/8", &["https://10.200.3.4:6443"], &["https://11.0.0.1", "https://ten.example"]),
            // IPv6: bare, bracketed, bracketed with a port, ranges.
            ("::1", &["http://[::1]:5000"], &["http://[::2]"]),
            ("[::1]", &["http://[::1]:5000", "https://[0:0:0:0:0:0:0:1]"], &["http://127.0.0.1"]),
            ("[fd00::1]:6443", &["https://[fd00::1]:6443"], &["https://[fd00::1]"]),
            ("fd00::/8", &["https://[fd12:3456::1]"], &["https://[fe80::1]"]),
            // Case and spaces do not matter; empty entries are skipped.
            (" Corp.EXAMPLE ,, ", &["https://API.corp.example"], &["https://example"]),
            // Malformed entries match nothing.
            ("corp.example:https, :443, [::1", &[], &["https://corp.example", "https://x.example:443", "http://[::1]"]),
        ];
        for (no, covered, proxied) in table {
            let no_proxy = NoProxy::parse(no);
            for url in *covered {
                assert!(no_proxy.covers(&url.parse().unwrap()), "NO_PROXY={no:?} should cover {url}");
            }
            for url in *proxied {
                assert!(!no_proxy.covers(&url.parse().unwrap()), "NO_PROXY={no:?} should not cover {url}");
            }
        }
        // Every way out takes the same decision: the direct path's connector and the
        // API server's proxy (the SDK's client asks the same `NoProxy`).
        let proxies = Proxies::new("http://proxy:3128", "http://proxy:3128", "*.corp.example,[::1],api.example:6443");
        for (url, proxied) in [
            ("https://api.corp.example", false),
            ("http://[::1]:9000", false),
            ("https://api.example:6443", false),
            ("https://api.example", true),
            ("https://corp.example", true),
        ] {
            let uri: Uri = url.parse().unwrap();
            assert_eq!(proxies.intercept(&uri).is_some(), proxied, "{url}");
            assert_eq!(kube_proxy_url(&proxies, &uri, None).is_some(), proxied, "{url}");
        }
    }

    /// The AWS SDK's client takes the way out the same `NO_PROXY` rules pick: through
    /// the proxy, straight to an address listed, and not through the proxy for a name a
    /// `*.` entry covers.
    #[tokio::test]
    async fn the_sdks_client_follows_the_same_rules() {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig};
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let mut at_proxy = first_lines(proxy).await;
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_port = server.local_addr().unwrap().port();
        let mut at_server = first_lines(server).await;
        let http = sdk_http_client_with(Proxies::new(&proxy_url, &proxy_url, "127.0.0.1, *.corp.test"));
        let ask = |endpoint: String| {
            let config = aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
                .endpoint_url(endpoint)
                .http_client(http.clone())
                .retry_config(RetryConfig::disabled())
                .timeout_config(TimeoutConfig::builder().operation_timeout(Duration::from_millis(500)).build())
                .build();
            async move {
                // Neither listener answers: the call times out, having been sent.
                let call = aws_sdk_sqs::Client::from_conf(config).get_queue_attributes().queue_url("http://x/1/q");
                assert!(call.send().await.is_err());
            }
        };
        ask("http://sqs.test:5000".to_owned()).await;
        assert_eq!(at_proxy.recv().await.unwrap(), "POST http://sqs.test:5000/ HTTP/1.1");
        ask(format!("http://127.0.0.1:{server_port}")).await;
        assert_eq!(at_server.recv().await.unwrap(), "POST / HTTP/1.1");
        // Covered by `*.corp.test`: straight to the name (which nothing resolves).
        ask("http://sqs.corp.test:5000".to_owned()).await;
        assert!(at_proxy.try_recv().is_err(), "went through the proxy");
    }

    #[tokio::test]
    async fn connections_follow_the_proxy_settings() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let mut at_proxy = first_lines(proxy).await;
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_port = server.local_addr().unwrap().port();
        let mut at_server = first_lines(server).await;
        let mut connector = Connector::new(Proxies::new(&proxy_url, &proxy_url, "127.0.0.1"));

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
