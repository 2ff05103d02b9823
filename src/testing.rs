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
/// open and silent). Keeps each request's head (lower-cased) and body.
pub struct TinyServer {
    pub url: String,
    /// Per request, its head and its body.
    heads: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

type Answer = dyn Fn(usize) -> Option<(u16, String)> + Send + Sync;

impl TinyServer {
    pub async fn start(answer: impl Fn(usize) -> Option<(u16, String)> + Send + Sync + 'static) -> TinyServer {
        TinyServer::start_with_headers("", answer).await
    }

    /// [`TinyServer::start`], with `headers` (lines ending in `\r\n`) in every answer.
    pub async fn start_with_headers(
        headers: &str,
        answer: impl Fn(usize) -> Option<(u16, String)> + Send + Sync + 'static,
    ) -> TinyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer: std::sync::Arc<Answer> = std::sync::Arc::new(answer);
        let headers: std::sync::Arc<str> = headers.into();
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(conn, answer.clone(), headers.clone(), seen.clone()));
            }
        });
        TinyServer { url, heads }
    }

    /// The `User-Agent` of every request so far, in order.
    pub fn agents(&self) -> Vec<String> {
        self.header("user-agent").into_iter().map(Option::unwrap_or_default).collect()
    }

    /// The header `name` (lower case) of every request so far, in order.
    pub fn header(&self, name: &str) -> Vec<Option<String>> {
        self.heads.lock().unwrap().iter().map(|(head, _)| header_in(head, name)).collect()
    }

    /// The body of every request so far, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.heads.lock().unwrap().iter().map(|(_, body)| body.clone()).collect()
    }

    async fn serve(
        mut conn: tokio::net::TcpStream,
        answer: std::sync::Arc<Answer>,
        headers: std::sync::Arc<str>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
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
            let length: usize = header_in(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
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
                let mut heads = seen.lock().unwrap();
                heads.push((head, body));
                heads.len() - 1
            };
            let Some((status, body)) = answer(n) else {
                std::future::pending::<()>().await;
                return;
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.0\r\n{headers}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// The value of header `name` in a lower-cased request head.
fn header_in(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}
