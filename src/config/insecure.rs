//! Settings that work but expose something, said out loud: `sqscale check` prints them
//! on standard error and `sqscale run` logs them once at start. None of them is an
//! error: each has a setup where it is the right choice (a container's 0.0.0.0 behind
//! `-p 127.0.0.1:...`, a lab's emulator), so the operator decides.

use std::collections::HashSet;
use std::path::Path;

use kube::config::Kubeconfig;

use super::Config;

/// Every insecure setting of `config`, one sentence each: a `[server] listen` address
/// that is not loopback, an `http://` SQS endpoint to a host that is not loopback, and,
/// in the kubeconfig that will be used for the contexts the rules use, a cluster with
/// `insecure-skip-tls-verify: true` or an `http://` server that is not loopback.
///
/// `kubeconfig` is the `--kubeconfig` flag; without it, the kubeconfig is found as the
/// daemon finds it: `[kubernetes] kubeconfig`, `$KUBECONFIG`, `~/.kube/config`. One
/// that cannot be read says nothing here: using it reports the error.
pub fn insecure_settings(config: &Config, kubeconfig: Option<&Path>) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(addr) = config.server.listen.filter(|a| !a.ip().is_loopback()) {
        found.push(format!(
            "[server] listen = \"{addr}\" is not a loopback address: /metrics and /status name every queue and target, and no endpoint asks for authentication. Keep it on 127.0.0.1; in a container, publish the port on the host's loopback only (-p 127.0.0.1:{port}:{port}), not on all addresses and not with --network host",
            port = addr.port()
        ));
    }

    let plain = "is plain http:// to a host that is not loopback: the signed SQS requests (with their session token) and the answers cross the network unencrypted; use https://";
    let mut endpoints = HashSet::new();
    if let Some(e) = &config.aws.endpoint_url {
        endpoints.insert(e.as_str());
        if plain_http_off_host(e) {
            found.push(format!("[aws] endpoint_url {e:?} {plain}"));
        }
    }
    let triggers = config.rules.iter().map(|r| (format!("rule {:?}", r.name), &r.triggers));
    let triggers = triggers.chain(config.jobs.iter().map(|j| (format!("job {:?}", j.name), &j.triggers)));
    for (owner, queues) in triggers {
        for (i, q) in queues.iter().enumerate() {
            // Each endpoint once: a trigger that inherits [aws] endpoint_url is covered.
            if let Some(e) = q.endpoint.as_deref()
                && endpoints.insert(e)
                && plain_http_off_host(e)
            {
                found.push(format!("{owner}: trigger {}: aws_endpoint {e:?} {plain}", i + 1));
            }
        }
    }

    found.extend(kubeconfig_findings(config, kubeconfig));
    found
}

/// `http://` to a host that is not loopback (`localhost` counts as loopback).
fn plain_http_off_host(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else { return false };
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        Some(url::Host::Domain(d)) => d != "localhost" && !d.ends_with(".localhost"),
        None => false,
    }
}

/// The kubeconfig's clusters that the rules' contexts use, when they skip TLS
/// verification or speak plain http to a remote host.
fn kubeconfig_findings(config: &Config, kubeconfig: Option<&Path>) -> Vec<String> {
    let (kc, origin) = match kubeconfig.or(config.kubernetes.kubeconfig.as_deref()) {
        Some(path) => match Kubeconfig::read_from(path) {
            Ok(kc) => (kc, path.display().to_string()),
            Err(_) => return Vec::new(),
        },
        None => match Kubeconfig::read() {
            Ok(kc) => {
                let origin = std::env::var("KUBECONFIG").ok().filter(|k| !k.is_empty());
                (kc, origin.unwrap_or_else(|| "~/.kube/config".to_owned()))
            }
            Err(_) => return Vec::new(),
        },
    };
    // The contexts in the rules' order, each once; `None` is the current-context.
    let mut contexts: Vec<Option<&str>> = Vec::new();
    for rule in &config.rules {
        let context = rule.context.as_deref().or(config.kubernetes.context.as_deref());
        if !contexts.contains(&context) {
            contexts.push(context);
        }
    }
    let mut clusters_seen = HashSet::new();
    let mut found = Vec::new();
    for context in contexts {
        let Some(name) = context.or(kc.current_context.as_deref()) else { continue };
        let Some(cluster_name) =
            kc.contexts.iter().find(|c| c.name == name).and_then(|c| c.context.as_ref()).map(|c| c.cluster.as_str())
        else {
            continue;
        };
        if !clusters_seen.insert(cluster_name) {
            continue;
        }
        let Some(cluster) = kc.clusters.iter().find(|c| c.name == cluster_name).and_then(|c| c.cluster.as_ref()) else {
            continue;
        };
        let at = format!("kubeconfig {origin}: cluster {cluster_name:?} (context {name:?})");
        if cluster.insecure_skip_tls_verify == Some(true) {
            found.push(format!(
                "{at} sets insecure-skip-tls-verify: true: the API server's certificate is not checked, so anyone on the network path can pose as it and take the credentials sent to it; give certificate-authority-data instead"
            ));
        }
        if let Some(server) = cluster.server.as_deref().filter(|s| plain_http_off_host(s)) {
            found.push(format!(
                "{at} has server {server:?}: plain http:// to a host that is not loopback, so the credentials and every write cross the network unencrypted; use https://"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_counts_only_off_the_host() {
        for (endpoint, off) in [
            ("http://10.0.0.5:4566", true),
            ("http://sqs.internal.example:9324", true),
            ("http://[2001:db8::1]:4566", true),
            ("http://127.0.0.1:4566", false),
            ("http://127.8.9.10:4566", false),
            ("http://[::1]:4566", false),
            ("http://localhost:4566", false),
            ("http://sqs.localhost:4566", false),
            ("https://10.0.0.5:4566", false),
            ("https://sqs.us-east-1.amazonaws.com", false),
        ] {
            assert_eq!(plain_http_off_host(endpoint), off, "{endpoint}");
        }
    }

    /// A job rule's trigger reads SQS as a rule's does: its plain-http endpoint is said,
    /// naming the job rule.
    #[test]
    fn a_job_rules_plain_http_endpoint_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("t.yaml");
        std::fs::write(
            &template,
            "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: b}]\n",
        )
        .unwrap();
        let toml = format!(
            "[[job]]\nname = \"encode\"\ntemplate = {:?}\n[[job.trigger]]\nqueue_url = \"http://10.0.0.5:4566/000000000000/q\"\naws_region = \"us-east-1\"\naws_endpoint = \"http://10.0.0.5:4566\"\n",
            template.display().to_string()
        );
        let config = crate::config::from_str(&toml).unwrap();
        let found = insecure_settings(&config, Some(Path::new("/nonexistent/kubeconfig")));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("job \"encode\": trigger 1: aws_endpoint \"http://10.0.0.5:4566\" is plain http://"),
            "{found:#?}"
        );
    }
}
