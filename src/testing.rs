//! Test helpers shared by unit tests: an independent SigV4 computation, written from the
//! specification with aws-lc-rs, to check the signatures the daemon sends (its own for
//! SQS, aws-sigv4's for EKS tokens); and [`TinyServer`], scripted HTTP answers on
//! 127.0.0.1 for the SQS adapter.

pub const ACCESS_KEY: &str = "AKIDEXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

pub fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data.as_bytes()).as_ref().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

pub fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The hex signature of `canonical_request` made at `amz_date` (`YYYYMMDDTHHMMSSZ`)
/// with [`SECRET_KEY`] for `region` and `service`.
pub fn signature(canonical_request: &str, amz_date: &str, region: &str, service: &str) -> String {
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let mut key = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date);
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    hex(&hmac(&key, &string_to_sign))
}

/// A scripted HTTP/1.1 server on 127.0.0.1: the `n`-th request (from 0) gets `answer(n)`,
/// a status and an AWS JSON body, or no answer at all (`None`: the connection is held
/// open and silent). Keeps each request's `User-Agent` and body.
pub struct TinyServer {
    pub url: String,
    agents: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

type Answer = dyn Fn(usize) -> Option<(u16, String)> + Send + Sync;

impl TinyServer {
    pub async fn start(answer: impl Fn(usize) -> Option<(u16, String)> + Send + Sync + 'static) -> TinyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let agents = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer: std::sync::Arc<Answer> = std::sync::Arc::new(answer);
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, kept) = (agents.clone(), bodies.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(conn, answer.clone(), seen.clone(), kept.clone()));
            }
        });
        TinyServer { url, agents, bodies }
    }

    /// The `User-Agent` of every request so far, in order.
    pub fn agents(&self) -> Vec<String> {
        self.agents.lock().unwrap().clone()
    }

    /// The body of every request so far, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    async fn serve(
        mut conn: tokio::net::TcpStream,
        answer: std::sync::Arc<Answer>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        kept: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        loop {
            // One request: its head, then as many body bytes as it says.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let header = |name: &str| {
                head.split("\r\n").find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
            };
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
            buf.drain(..head_end + length);
            let n = {
                let mut agents = seen.lock().unwrap();
                agents.push(header("user-agent").unwrap_or_default());
                kept.lock().unwrap().push(body);
                agents.len() - 1
            };
            let Some((status, body)) = answer(n) else {
                std::future::pending::<()>().await;
                return;
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
