//! A TCP proxy in front of the SQS emulator: counts the SQS operations that pass through
//! (from the `X-Amz-Target` header of each request, with the `User-Agent` that sent it)
//! and can take the "service" down and bring it back, for outage tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    ops: Arc<Mutex<Vec<(String, String)>>>,
    down: Arc<AtomicBool>,
    /// Bumped on every outage: connections of an older generation are cut.
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Proxies 127.0.0.1:<random> to `upstream` (an `http://host:port` URL).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr =
            upstream.trim_start_matches("http://").trim_end_matches('/').parse().expect("upstream addr");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ops = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (ops2, down2, gen_tx) = (ops.clone(), down.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if down2.load(Ordering::SeqCst) {
                    drop(client); // refused: the service is down
                    continue;
                }
                let (ops, mut cut) = (ops2.clone(), gen_tx.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = pipe(client, server, ops) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, ops, down, generation }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests of `operation` (e.g. `GetQueueAttributes`) went through.
    pub fn count(&self, operation: &str) -> usize {
        self.ops.lock().unwrap().iter().filter(|(o, _)| o == operation).count()
    }

    /// The `User-Agent` of every request of `operation`, in order (lowercased).
    pub fn agents(&self, operation: &str) -> Vec<String> {
        self.ops.lock().unwrap().iter().filter(|(o, _)| o == operation).map(|(_, a)| a.clone()).collect()
    }

    /// Takes the service down (refuse and cut connections) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

/// Copies both ways, noting the operation of each request seen going upstream.
async fn pipe(client: TcpStream, server: TcpStream, ops: Arc<Mutex<Vec<(String, String)>>>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            // Every SQS request is a POST; a read holds whole small requests on loopback.
            for request in text.split("post /").skip(1) {
                let header = |name: &str| {
                    let start = request.find(&format!("\r\n{name}: "))? + name.len() + 4;
                    Some(request[start..].split("\r\n").next().unwrap_or_default().to_owned())
                };
                let Some(target) = header("x-amz-target") else { continue };
                let op = target.trim_start_matches("amazonsqs.");
                // Header values are case-insensitive on the wire; restore the API's casing.
                ops.lock().unwrap().push((canonical(op), header("user-agent").unwrap_or_default()));
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    tokio::join!(up, down);
}

fn canonical(lower: &str) -> String {
    for op in ["GetQueueAttributes", "GetQueueUrl", "SendMessageBatch", "SendMessage", "PurgeQueue", "CreateQueue"] {
        if op.eq_ignore_ascii_case(lower) {
            return op.to_owned();
        }
    }
    lower.to_owned()
}
