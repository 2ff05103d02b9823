//! `import-keda --diff`: what the imported rules would change in an existing rule file,
//! rule by rule (matched by name) and key by key, on the resolved forms: a default
//! written out, or a region taken from the queue URL, is no change.

use std::collections::BTreeMap;

use crate::config::Config;

/// A rule's resolved keys (`cooldown_period`, `trigger[0].queue_url`, ...) and their
/// values as TOML writes them.
type Keys = BTreeMap<String, String>;

/// One line per added, removed or changed rule, then a count of the unchanged ones.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (rules(old), rules(new));
    let mut lines = Vec::new();
    let mut unchanged = 0;
    for (name, keys) in &new {
        match old.get(name) {
            None => lines.push(format!("+ {name}: added ({})", target(keys))),
            Some(before) if before == keys => unchanged += 1,
            Some(before) => {
                let mut changes = Vec::new();
                let all: std::collections::BTreeSet<&String> = before.keys().chain(keys.keys()).collect();
                for key in all {
                    let (a, b) = (before.get(key), keys.get(key));
                    if a != b {
                        let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".to_owned());
                        changes.push(format!("{key} {} -> {}", show(a), show(b)));
                    }
                }
                lines.push(format!("~ {name}: {}", changes.join("; ")));
            }
        }
    }
    for (name, keys) in &old {
        if !new.contains_key(name) {
            lines.push(format!("- {name}: removed ({})", target(keys)));
        }
    }
    lines.push(format!("{unchanged} rule{} unchanged", if unchanged == 1 { "" } else { "s" }));
    lines
}

fn target(keys: &Keys) -> String {
    let get = |k: &str| keys.get(k).map(|v| v.trim_matches('"').to_owned()).unwrap_or_default();
    format!("{}/{}/{}", get("target.kind"), get("target.namespace"), get("target.name"))
}

/// Each rule of `config`, by name, with its resolved keys.
fn rules(config: &Config) -> BTreeMap<String, Keys> {
    // The resolved form is the one every default is written out in; reading it back as
    // TOML gives every key of every rule.
    let table: toml::Table = config.resolved_toml().parse().unwrap_or_default();
    let mut out = BTreeMap::new();
    for rule in table.get("rule").and_then(toml::Value::as_array).into_iter().flatten() {
        let Some(rule) = rule.as_table() else { continue };
        let Some(name) = rule.get("name").and_then(toml::Value::as_str) else { continue };
        let mut keys = Keys::new();
        for (k, v) in rule.iter().filter(|(k, _)| *k != "name") {
            flatten(k, v, &mut keys);
        }
        out.insert(name.to_owned(), keys);
    }
    out
}

/// `behavior.scale_up.policies[0].period`: one key per value; a list of tables by index.
fn flatten(prefix: &str, v: &toml::Value, out: &mut Keys) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(toml::Value::is_table) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}
