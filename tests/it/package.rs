//! What the Debian package takes from the binary (scripts/package): `sqscale completions
//! SHELL` and the hidden `sqscale man DIR`, both made from the clap definitions behind
//! `--help`. The package itself is built, installed and purged by scripts/test-package.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::process::sqscale;

/// Each command `sqscale --help` lists, with the long flags its own `--help` lists.
fn visible_commands() -> Vec<(String, Vec<String>)> {
    let mut cli = sqscale::cli::command();
    cli.build();
    cli.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .map(|c| {
            let flags = c
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .map(str::to_owned)
                .collect();
            (c.get_name().to_owned(), flags)
        })
        .collect()
}

#[test]
fn completions_offer_every_command_and_flag_in_bash_zsh_and_fish() {
    let commands = visible_commands();
    assert!(commands.iter().any(|(c, _)| c == "completions"), "{commands:?}");
    for (shell, marker) in
        [("bash", "complete -F _sqscale"), ("zsh", "#compdef sqscale"), ("fish", "complete -c sqscale")]
    {
        let out = sqscale(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?} in\n{script}");
        for (command, flags) in &commands {
            assert!(script.contains(command.as_str()), "{shell}: no command {command}");
            for flag in flags {
                assert!(script.contains(flag.as_str()), "{shell}: no --{flag} of {command}");
            }
        }
    }
}

#[test]
fn completions_for_an_unknown_shell_name_the_known_ones() {
    let out = sqscale(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tcsh") && stderr.contains("bash") && stderr.contains("fish"), "{stderr}");
}

#[test]
fn man_writes_a_page_per_command_with_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("share/man/man1");
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["man", man1.to_str().unwrap()])
        .env("SOURCE_DATE_EPOCH", "1000000000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let commands = visible_commands();
    let written: BTreeSet<String> =
        std::fs::read_dir(&man1).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut expected: BTreeSet<String> = commands.iter().map(|(c, _)| format!("sqscale-{c}.1")).collect();
    expected.insert("sqscale.1".to_owned());
    assert_eq!(written, expected, "one page per command that --help lists; none for the hidden `man`");

    // roff escapes every '-' in the text.
    let roff = |s: &str| s.replace('-', "\\-");
    let top = std::fs::read_to_string(man1.join("sqscale.1")).unwrap();
    // Title, section, date, source, manual: a missing date would make man read the
    // source as the date.
    let version = env!("CARGO_PKG_VERSION");
    assert!(top.contains(&format!(".TH sqscale 1 2001-09-09 \"sqscale {version}\" \"sqscale manual\"")), "{top}");
    for (command, flags) in &commands {
        assert!(top.contains(&roff(&format!("sqscale-{command}(1)"))), "sqscale(1) does not list {command}");
        let page = std::fs::read_to_string(man1.join(format!("sqscale-{command}.1"))).unwrap();
        assert!(page.contains(&format!(".TH sqscale-{command} 1 ")), "{page}");
        for flag in flags {
            assert!(page.contains(&roff(&format!("--{flag}"))), "sqscale-{command}(1) does not show --{flag}:\n{page}");
        }
    }
    let run = std::fs::read_to_string(man1.join("sqscale-run.1")).unwrap();
    assert!(run.contains("SQSCALE_CONFIG"), "the pages name the environment variables, as --help does:\n{run}");
}

#[test]
fn man_into_a_folder_that_cannot_be_made_fails_naming_it() {
    let out = sqscale(&["man", "/dev/null/man1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: writing the man pages to /dev/null/man1: "), "{stderr}");
}
