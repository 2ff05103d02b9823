//! The wire format of `GetQueueAttributes`, shared by both SQS paths: which attributes
//! a read asks for, the JSON request body, the counts in an answer and the error code of
//! a refusal. [`super::direct`] builds and reads the raw call with these; [`super::sqs`]
//! asks through the SDK and reads its answer with the same rules, so a count means the
//! same whichever path produced it.

use std::borrow::Cow;

use aws_sdk_sqs::types::QueueAttributeName;

use super::Attrs;
use crate::engine::Counts;

/// An answer without the counts asked for.
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    #[error("attribute {} is missing from the answer", .0.as_str())]
    Missing(QueueAttributeName),
    #[error("attribute {} ({:?}) is not a count", .0.as_str(), .1)]
    NotACount(QueueAttributeName, String),
    #[error("the answer is not JSON")]
    NotJson(#[source] serde_json::Error),
}

/// The attributes a read asks for: the visible count always, the others as `attrs` says.
pub fn attribute_names(attrs: Attrs) -> Vec<QueueAttributeName> {
    let mut names = vec![QueueAttributeName::ApproximateNumberOfMessages];
    if attrs.in_flight {
        names.push(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
    }
    if attrs.delayed {
        names.push(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
    }
    names
}

/// Reads the requested counts out of a GetQueueAttributes answer (`attribute` looks one
/// up by name). A missing or unparsable attribute is an error, never 0 (KEDA does the same).
pub fn parse_counts<'a>(attribute: impl Fn(&str) -> Option<&'a str>, attrs: Attrs) -> Result<Counts, BadAnswer> {
    let get = |name: QueueAttributeName| -> Result<u64, BadAnswer> {
        let v = attribute(name.as_str()).ok_or_else(|| BadAnswer::Missing(name.clone()))?;
        v.trim().parse().map_err(|_| BadAnswer::NotACount(name.clone(), v.to_owned()))
    };
    Ok(Counts {
        visible: get(QueueAttributeName::ApproximateNumberOfMessages)?,
        in_flight: if attrs.in_flight { get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)? } else { 0 },
        delayed: if attrs.delayed { get(QueueAttributeName::ApproximateNumberOfMessagesDelayed)? } else { 0 },
    })
}

/// The error code of an AWS JSON answer: the `x-amzn-query-error` header's code (SQS
/// sends its query-protocol code there), else the body's `__type` without its namespace
/// (`com.amazonaws.sqs#QueueDoesNotExist`) or the `code` field.
pub(crate) fn error_code(query_error: Option<&str>, body: &[u8]) -> Option<String> {
    if let Some(code) = query_error.and_then(|h| h.split(';').next()).filter(|c| !c.is_empty()) {
        return Some(code.to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Error<'a> {
        #[serde(rename = "__type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        code: Option<Cow<'a, str>>,
    }
    let e: Error = serde_json::from_slice(body).ok()?;
    let raw = e.kind.or(e.code)?;
    // `aws.protocoltests#Code:http://...` also occurs: the code sits between `#` and `:`.
    let code = raw.rsplit('#').next().unwrap_or_default().split(':').next().unwrap_or_default();
    (!code.is_empty()).then(|| code.to_owned())
}

/// The JSON body: the queue URL and the attributes wanted.
pub(crate) fn request_body(url: &str, attrs: Attrs) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Body<'a> {
        queue_url: &'a str,
        attribute_names: Vec<&'a str>,
    }
    let wanted = attribute_names(attrs);
    let names = wanted.iter().map(|n| n.as_str()).collect();
    serde_json::to_vec(&Body { queue_url: url, attribute_names: names }).expect("strings serialize")
}

/// A `GetQueueAttributes` answer, read in place: the three counts it can hold, borrowed
/// from the body (a `Cow` copies only a value with escapes), everything else skipped.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(rename = "Attributes", default, borrow)]
    attributes: Counted<'a>,
}

#[derive(Default, serde::Deserialize)]
struct Counted<'a> {
    #[serde(rename = "ApproximateNumberOfMessages", borrow)]
    visible: Option<Cow<'a, str>>,
    #[serde(rename = "ApproximateNumberOfMessagesNotVisible", borrow)]
    in_flight: Option<Cow<'a, str>>,
    #[serde(rename = "ApproximateNumberOfMessagesDelayed", borrow)]
    delayed: Option<Cow<'a, str>>,
}

/// Reads the counts out of a `200` answer's body.
pub(crate) fn parse_answer(body: &[u8], attrs: Attrs) -> Result<Counts, BadAnswer> {
    let answer: Answer = serde_json::from_slice(body).map_err(BadAnswer::NotJson)?;
    let a = &answer.attributes;
    let value = |name: &str| match name {
        "ApproximateNumberOfMessages" => a.visible.as_deref(),
        "ApproximateNumberOfMessagesNotVisible" => a.in_flight.as_deref(),
        "ApproximateNumberOfMessagesDelayed" => a.delayed.as_deref(),
        _ => None,
    };
    parse_counts(value, attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_queue_and_only_the_attributes_needed() {
        let body = |attrs| serde_json::from_slice::<serde_json::Value>(&request_body("https://q/1/a", attrs)).unwrap();
        assert_eq!(
            body(Attrs::default()),
            serde_json::json!({"QueueUrl": "https://q/1/a", "AttributeNames": ["ApproximateNumberOfMessages"]})
        );
        assert_eq!(
            body(Attrs { in_flight: true, delayed: true })["AttributeNames"],
            serde_json::json!([
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"
            ])
        );
    }

    #[test]
    fn answers_are_read_strictly() {
        let both = Attrs { in_flight: true, delayed: false };
        let body =
            br#"{"Attributes":{"ApproximateNumberOfMessages":"30","ApproximateNumberOfMessagesNotVisible":"2"}}"#;
        assert_eq!(parse_answer(body, both).unwrap(), Counts { visible: 30, in_flight: 2, delayed: 0 });
        // Other attributes are skipped; an escaped value is read too (copied, not borrowed).
        let body = br#"{"Attributes":{"QueueArn":"arn:aws:sqs:x","ApproximateNumberOfMessages":"\u00331"}}"#;
        assert_eq!(parse_answer(body, Attrs::default()).unwrap().visible, 31);
        // No Attributes at all, an attribute missing, or not JSON: errors, never 0.
        let text = |e: BadAnswer| crate::error::chain(&e);
        assert!(text(parse_answer(b"{}", Attrs::default()).unwrap_err()).contains("missing"));
        let body = br#"{"Attributes":{"ApproximateNumberOfMessages":"30"}}"#;
        assert!(text(parse_answer(body, both).unwrap_err()).contains("NotVisible"));
        let not_json = parse_answer(b"<html>", Attrs::default()).unwrap_err();
        assert!(matches!(not_json, BadAnswer::NotJson(_)), "{not_json:?}");
        assert!(text(not_json).starts_with("the answer is not JSON: expected value"));
    }

    #[test]
    fn error_codes_are_read_from_the_header_or_the_body() {
        let code = |header, body: &str| error_code(header, body.as_bytes());
        assert_eq!(
            code(Some("AWS.SimpleQueueService.NonExistentQueue;Sender"), "{}").as_deref(),
            Some("AWS.SimpleQueueService.NonExistentQueue")
        );
        assert_eq!(
            code(None, r#"{"__type":"com.amazonaws.sqs#RequestThrottled"}"#).as_deref(),
            Some("RequestThrottled")
        );
        assert_eq!(
            code(None, r#"{"__type":"ThrottlingException:http://internal"}"#).as_deref(),
            Some("ThrottlingException")
        );
        assert_eq!(code(None, r#"{"code":"AccessDenied"}"#).as_deref(), Some("AccessDenied"));
        assert_eq!(code(None, "<html>"), None);
        assert_eq!(code(Some(""), "{}"), None);
    }

    fn answer<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<&'a str> {
        |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn counts_are_read_for_the_requested_attributes_only() {
        let a = [("ApproximateNumberOfMessages", "22"), ("ApproximateNumberOfMessagesNotVisible", "8")];
        let c = parse_counts(answer(&a), Attrs { in_flight: true, delayed: false }).unwrap();
        assert_eq!(c, Counts { visible: 22, in_flight: 8, delayed: 0 });
        // Values above 2^31 are fine.
        let a = [("ApproximateNumberOfMessages", "4294967296")];
        assert_eq!(parse_counts(answer(&a), Attrs::default()).unwrap().visible, 4_294_967_296);
    }

    /// TV-37: a missing or unparsable attribute is an error, never 0.
    #[test]
    fn tv37_missing_or_bad_attribute_is_an_error() {
        let a = [("ApproximateNumberOfMessages", "3")];
        let err = parse_counts(answer(&a), Attrs { in_flight: true, delayed: false }).unwrap_err().to_string();
        assert_eq!(err, "attribute ApproximateNumberOfMessagesNotVisible is missing from the answer");
        let a = [("ApproximateNumberOfMessages", "NotInt")];
        let err = parse_counts(answer(&a), Attrs::default()).unwrap_err().to_string();
        assert_eq!(err, r#"attribute ApproximateNumberOfMessages ("NotInt") is not a count"#);
        assert!(parse_counts(|_| None, Attrs::default()).is_err());
    }
}
