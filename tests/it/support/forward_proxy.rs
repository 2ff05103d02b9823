//! A forward HTTP proxy, as bastions run them: `CONNECT host:port` tunnels (for https)
//! and absolute-form requests (`POST http://host:port/ HTTP/1.1`, for http). Host names
//! ending in `.test` resolve to 127.0.0.1 here and nowhere else, so a client that
//! reaches such a name went through this proxy; other names are refused (502). It
//! records what it carried per target host: tunnels, and each plain request with its
//! `User-Agent`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One thing carried: a tunnel (`agent` is `None`) or a plain request.
#[derive(Clone, Debug)]
pub struct Carried {
    pub host: String,
    pub agent: Option<String>,
}

pub struct ForwardProxy {
    addr: SocketAddr,
    carried: Arc<Mutex<Vec<Carried>>>,
}

impl ForwardProxy {
    pub async fn start() -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let carried = Arc::new(Mutex::new(Vec::new()));
        let log = carried.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                tokio::spawn(serve(client, log.clone()));
            }
        });
        ForwardProxy { addr, carried }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tunnels and requests carried to `host` (a name, without the port).
    pub fn count(&self, host: &str) -> usize {
        self.carried.lock().unwrap().iter().filter(|c| c.host == host).count()
    }

    /// Everything carried so far.
    pub fn carried(&self) -> Vec<Carried> {
        self.carried.lock().unwrap().clone()
    }

    /// The `User-Agent` of each plain request carried to `host` (lowercased).
    pub fn agents(&self, host: &str) -> Vec<String> {
        self.carried.lock().unwrap().iter().filter(|c| c.host == host).filter_map(|c| c.agent.clone()).collect()
    }
}

/// Where the proxy connects for `host`: `*.test` is 127.0.0.1, an IP address is itself.
fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if host.ends_with(".test") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Some(SocketAddr::new(host.parse().ok()?, port))
}

/// `host:port` split (lowercased); `default` when no port is given. (No IPv6 here.)
fn host_port(authority: &str, default: u16) -> (String, u16) {
    match authority.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse().ok()?))) {
        Some((h, p)) => (h.to_ascii_lowercase(), p),
        None => (authority.to_ascii_lowercase(), default),
    }
}

async fn serve(mut client: TcpStream, carried: Arc<Mutex<Vec<Carried>>>) {
    // The request head.
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method == "CONNECT" {
        let (host, port) = host_port(target, 443);
        let Some(upstream) = resolve(&host, port) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            return;
        };
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            return;
        };
        carried.lock().unwrap().push(Carried { host, agent: None });
        if client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    // Absolute form: every request on this connection goes to the first one's host
    // (clients pool proxied connections per destination).
    let Some(rest) = target.strip_prefix("http://") else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let (host, port) = host_port(rest.split('/').next().unwrap_or_default(), 80);
    let Some(upstream) = resolve(&host, port) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut chunk = head;
        loop {
            note_requests(&chunk, &carried);
            // Servers must accept absolute-form targets (RFC 9112, 3.2.2); pass them on.
            if sw.write_all(&chunk).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => chunk = buf[..n].to_vec(),
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    tokio::join!(up, down);
}

/// Records each absolute-form request line in `chunk` (small requests on loopback
/// arrive whole) with the `User-Agent` that follows it.
fn note_requests(chunk: &[u8], carried: &Mutex<Vec<Carried>>) {
    let text = String::from_utf8_lossy(chunk);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let mut parts = line.split(' ');
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else { continue };
        if !method.chars().all(|c| c.is_ascii_uppercase()) || method.is_empty() {
            continue;
        }
        let Some(rest) = target.strip_prefix("http://") else { continue };
        let (host, _) = host_port(rest.split('/').next().unwrap_or_default(), 80);
        let mut agent = String::new();
        while let Some(h) = lines.peek() {
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("user-agent")
            {
                agent = value.trim().to_ascii_lowercase();
            }
            lines.next();
        }
        carried.lock().unwrap().push(Carried { host, agent: Some(agent) });
    }
}
