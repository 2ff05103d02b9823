//! The real aws-sdk-sqs against moto's SQS server (started by `scripts/test`, which
//! exports `SQS_ENDPOINT_URL`). Every test makes its own queue, so tests share moto
//! without stepping on each other.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

/// moto's endpoint. Fails loudly when the emulator is not running: these tests exist to
/// talk to a real SQS protocol peer, and skipping them silently would hide that.
pub fn endpoint() -> String {
    std::env::var("SQS_ENDPOINT_URL").expect(
        "SQS_ENDPOINT_URL is not set: run the suite with scripts/test (it installs and starts moto), \
         or start moto_server yourself and export SQS_ENDPOINT_URL",
    )
}

/// A client for moto with static test credentials.
pub async fn client() -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
    Client::new(&config)
}

/// A fresh queue with a name unique to this process and call; returns its URL.
pub async fn queue(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let out = client().await.create_queue().queue_name(name).send().await.expect("create queue");
    out.queue_url().expect("queue url").to_owned()
}

/// Sends `n` messages in batches of ten.
pub async fn send(url: &str, n: usize) {
    send_with(&client().await, url, n).await;
}

/// Sends `n` messages with `c` (a client of the queue's region).
pub async fn send_with(c: &Client, url: &str, n: usize) {
    for start in (0..n).step_by(10) {
        let entries = (start..(start + 10).min(n))
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!("job {i}"))
                    .build()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        c.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await.expect("send batch");
    }
}

pub async fn purge(url: &str) {
    client().await.purge_queue().queue_url(url).send().await.expect("purge");
}

/// The queue's (visible, in flight) messages, as `GetQueueAttributes` reports them.
pub async fn counts(c: &Client, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("get queue attributes");
    let attrs = out.attributes().cloned().unwrap_or_default();
    let n = |a: A| attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0);
    (n(A::ApproximateNumberOfMessages), n(A::ApproximateNumberOfMessagesNotVisible))
}
