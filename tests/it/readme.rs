//! The README keeps its promises: every `sqscale <command>` it shows is a command of the
//! binary, every flag it shows with one is in that command's `--help`, and every script
//! it names exists and is executable. A renamed command, flag or script then fails the
//! test suite instead of a user's first try.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const README: &str = include_str!("../../README.md");

/// One `sqscale` invocation as the README shows it: the command (empty for the bare
/// binary, as in `sqscale --version`), the flags written after it, and the README line.
#[derive(Debug, PartialEq)]
struct Shown {
    command: String,
    flags: Vec<String>,
    line: usize,
}

/// The shell commands of the README: every line of a `sh`/`bash`/plain fenced block, the
/// `$ ` lines of a `console` block (the rest is output), and every inline code span.
fn commands(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (i, line) in readme.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_owned()),
            };
            continue;
        }
        match fence.as_deref() {
            Some("console") => {
                if let Some(cmd) = trimmed.strip_prefix("$ ") {
                    out.push((n, cmd.to_owned()));
                }
            }
            Some("" | "sh" | "bash" | "shell") => out.push((n, trimmed.to_owned())),
            Some(_) => {}
            None => {
                // Inline code spans: `...`.
                let mut parts = line.split('`');
                parts.next();
                while let (Some(code), Some(_)) = (parts.next(), parts.next()) {
                    out.push((n, code.to_owned()));
                }
            }
        }
    }
    out
}

/// The `sqscale` invocations in one shell command line: a segment (split at pipes, `&&`,
/// `;`, redirections and comments) whose first word, past `sudo` and `VAR=value`, is
/// `sqscale` or a path ending in `/sqscale`.
fn invocations(line: usize, text: &str) -> Vec<Shown> {
    // A table cell escapes its pipe (`[--namespace NS \| --all-namespaces]`).
    let text = text.replace("\\|", " ");
    let text = text.split('#').next().unwrap_or_default();
    let mut shown = Vec::new();
    for segment in text.split(['|', ';', '>', '<']).flat_map(|s| s.split("&&")) {
        let mut words = segment.split_whitespace().skip_while(|w| *w == "sudo" || is_assignment(w)).peekable();
        let Some(first) = words.next() else { continue };
        if first != "sqscale" && !first.ends_with("/sqscale") {
            continue;
        }
        let command = match words.peek() {
            Some(w) if w.chars().next().is_some_and(|c| c.is_ascii_lowercase()) => words.next().unwrap().to_owned(),
            _ => String::new(),
        };
        let flags = words.flat_map(long_flags).collect();
        shown.push(Shown { command, flags, line });
    }
    shown
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

/// The long flags in a word: `--config`, `[--dry-run]`, `--output=FILE`.
fn long_flags(word: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = word;
    while let Some(at) = rest.find("--") {
        let tail = &rest[at + 2..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(tail.len());
        if end > 0 {
            flags.push(format!("--{}", &tail[..end]));
        }
        rest = &tail[end..];
    }
    flags
}

/// Whether `help` lists `flag` as a whole word (`--config` must not match `--config-x`).
fn lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let after = help[at + flag.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

fn help_of(command: &str) -> Result<String, String> {
    let mut args: Vec<&str> = command.split_whitespace().collect();
    args.push("--help");
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale")).args(&args).output().expect("run sqscale");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What the README shows that the binary does not have, one line each.
fn problems(readme: &str) -> Vec<String> {
    let shown: Vec<Shown> = commands(readme).into_iter().flat_map(|(n, text)| invocations(n, &text)).collect();
    let mut problems = Vec::new();
    let names: BTreeSet<&str> = shown.iter().map(|s| s.command.as_str()).collect();
    for name in names {
        let help = match help_of(name) {
            Ok(help) => help,
            Err(err) => {
                let lines: Vec<String> =
                    shown.iter().filter(|s| s.command == name).map(|s| s.line.to_string()).collect();
                problems.push(format!(
                    "README line {}: `sqscale {name}` is not a command: {}",
                    lines.join(", "),
                    err.lines().next().unwrap_or_default()
                ));
                continue;
            }
        };
        for s in shown.iter().filter(|s| s.command == name) {
            for flag in s.flags.iter().filter(|f| !lists(&help, f)) {
                problems.push(format!("README line {}: `sqscale {name}` has no flag {flag}", s.line));
            }
        }
    }
    problems.extend(missing_scripts(readme));
    problems
}

/// Every `scripts/...` and `.ci/...` path the README names: it exists and may be run.
fn missing_scripts(readme: &str) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in readme.lines().enumerate() {
        for prefix in ["scripts/", ".ci/"] {
            for (at, _) in line.match_indices(prefix) {
                // Not a longer path's tail (`foo/scripts/x`).
                if at > 0 && line[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.') {
                    continue;
                }
                let tail = &line[at + prefix.len()..];
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c))).unwrap_or(tail.len());
                let name = tail[..end].trim_end_matches('.');
                if name.is_empty() || !seen.insert(format!("{prefix}{name}")) {
                    continue;
                }
                let path = root.join(prefix).join(name);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
                    Ok(m) if m.is_file() => {
                        problems.push(format!("README line {}: {prefix}{name} is not executable", i + 1))
                    }
                    _ => problems.push(format!("README line {}: {prefix}{name} does not exist", i + 1)),
                }
            }
        }
    }
    problems
}

#[test]
fn every_command_flag_and_script_the_readme_shows_exists() {
    let shown: Vec<Shown> = commands(README).into_iter().flat_map(|(n, text)| invocations(n, &text)).collect();
    // The extraction itself: the README's first commands are found, so an empty list
    // cannot pass for a clean one.
    for command in ["run", "check", "simulate", "status", "health", "import-keda"] {
        assert!(shown.iter().any(|s| s.command == command), "no `sqscale {command}` found in the README");
    }
    let problems = problems(README);
    assert!(problems.is_empty(), "the README shows what does not exist:\n{}", problems.join("\n"));
}

/// The checker finds what it is for: a made-up flag, command or script.
#[test]
fn the_readme_check_catches_a_made_up_flag_command_and_script() {
    let readme = "```sh\nsqscale run --config x --made-up\nsqscale frobnicate\nscripts/nonexistent\n```\n\
                  Use `sqscale check --remote` and `sudo SQSCALE_LOG=debug sqscale check --bogus-flag`.\n";
    let problems = problems(readme);
    let want = [
        "README line 2: `sqscale run` has no flag --made-up",
        "README line 3: `sqscale frobnicate` is not a command",
        "README line 4: scripts/nonexistent does not exist",
        "README line 6: `sqscale check` has no flag --bogus-flag",
    ];
    for w in want {
        assert!(problems.iter().any(|p| p.starts_with(w)), "missing {w:?} in {problems:#?}");
    }
    assert_eq!(problems.len(), want.len(), "{problems:#?}");
}

#[test]
fn commands_are_read_from_code_only() {
    let readme = "```console\n$ sqscale status\nsqscale run --config x (output, not a command)\n```\n\
                  journalctl -u sqscale -f and `journalctl -u sqscale -f`\n\
                  ```sh\nkubectl get so -o yaml | sqscale import-keda - > out.toml  # --not-a-flag\n```\n";
    let shown: Vec<Shown> = commands(readme).into_iter().flat_map(|(n, text)| invocations(n, &text)).collect();
    assert_eq!(
        shown,
        [
            Shown { command: "status".into(), flags: vec![], line: 2 },
            Shown { command: "import-keda".into(), flags: vec![], line: 7 },
        ]
    );
}
