//! `docklet-admin generate-manuals --out DIR`: writes the man pages and shell completions the
//! Debian package installs, made from the clap commands the programs themselves parse:
//! `man8/` (docklet-admin(8), a page per subcommand such as docklet-admin-user-add(8),
//! docklet-master(8), docklet-worker(8)), `man5/docklet.toml.5`, and
//! `completions/{bash,zsh,fish}/` for the three programs.

use std::io;
use std::path::Path;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, roman};
use docklet::daemon::{DaemonName, MASTER, WORKER};

use crate::bus::Failure;
use crate::cli::{Args, EXEC_EXIT, EXIT_CODES};

pub(crate) fn generate(out: &Path) -> Result<(), Failure> {
    write_all(out, &date()).map_err(|e| Failure {
        code: 1,
        message: format!("cannot write the manuals to {}: {e}", out.display()),
    })
}

/// The pages' date: the package's (`SOURCE_DATE_EPOCH`, so that a rebuild writes the same
/// pages), else today.
fn date() -> String {
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|secs| secs.trim().parse().ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc)
        .date();
    format!(
        "{}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn write_all(out: &Path, date: &str) -> io::Result<()> {
    let write = |dir: &str, name: &str, text: &[u8]| {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), text)
    };
    let mut pages = admin_pages(date);
    pages.extend([MASTER, WORKER].map(|daemon| daemon_page(daemon, date)));
    for (name, text) in pages {
        write("man8", &name, finish(&text).as_bytes())?;
    }
    let config = finish(&crate::config_manual::page(date));
    write("man5", "docklet.toml.5", config.as_bytes())?;
    let programs = [
        ("docklet-admin", completed()),
        (MASTER.identifier, docklet::daemon::daemon_command(MASTER)),
        (WORKER.identifier, docklet::daemon::daemon_command(WORKER)),
    ];
    for (name, command) in programs {
        for (shell, dir, file) in [
            (Shell::Bash, "completions/bash", name.to_owned()),
            (Shell::Zsh, "completions/zsh", format!("_{name}")),
            (Shell::Fish, "completions/fish", format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name, &mut script);
            write(dir, &file, &script)?;
        }
    }
    Ok(())
}

/// The last touches to a page: where it comes from; no hyphenation and a ragged right
/// margin, so that paths, options and values stay whole and evenly spaced; characters beyond
/// ASCII as groff's escapes, which every formatter reads whatever the locale.
fn finish(page: &str) -> String {
    let mut out = String::with_capacity(page.len() + 100);
    out.push_str(
        ".\\\" Made by docklet-admin generate-manuals from Docklet's source; edit that.\n",
    );
    for line in page.lines() {
        for c in line.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
            }
        }
        out.push('\n');
        if line.starts_with(".TH ") {
            out.push_str(".nh\n.ad l\n");
        }
    }
    out
}

/// docklet-admin's command without its hidden subcommands (`generate-manuals`), which
/// completions would offer otherwise: clap cannot take a subcommand out, so the top level is
/// made anew around the others.
fn completed() -> Command {
    let command = Args::command();
    let mut out = Command::new("docklet-admin")
        .version(docklet::VERSION)
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        );
    if let Some(about) = command.get_about() {
        out = out.about(about.clone());
    }
    out
}

/// The page of one command, `extra` (roff sections) after its own.
fn page(command: &Command, date: &str, extra: &Roff) -> (String, String) {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name());
    let man = Man::new(command.clone())
        .title(name.to_uppercase())
        .section("8")
        .date(date)
        .source(format!("Docklet {}", docklet::VERSION));
    type Part = fn(&Man, &mut dyn io::Write) -> io::Result<()>;
    let mut parts: Vec<Part> = vec![
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ];
    if command.get_subcommands().any(|s| !s.is_hide_set()) {
        parts.push(Man::render_subcommands_section);
    }
    // Each part starts with roff's preamble (a string definition); the page needs it once.
    let preamble = Roff::new().render();
    let mut text = preamble.clone();
    for part in parts {
        let mut roff = Vec::new();
        part(&man, &mut roff).expect("writing to memory");
        let roff = String::from_utf8(roff).expect("roff from UTF-8 is UTF-8");
        text.push_str(roff.strip_prefix(&preamble).unwrap_or(&roff));
    }
    text.push_str(&extra.to_roff());
    (man.get_filename(), text)
}

/// `name(section)` references, comma-separated.
fn references(pages: &[&str]) -> Vec<Inline> {
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let (name, section) = page.split_once('(').expect("name(section)");
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(name));
        line.push(roman(format!("({section}")));
    }
    line
}

/// Text with `code` in bold.
fn with_code(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

/// docklet-admin(8) and a page for each of its subcommands, nested ones included, named as
/// clap_mangen names them (docklet-admin-user-add.8).
fn admin_pages(date: &str) -> Vec<(String, String)> {
    // `help` is --help here; building names the pages and their synopses (bin names).
    let mut command = Args::command().disable_help_subcommand(true);
    command.build();

    let mut top = Roff::new();
    top.control("SH", ["EXIT STATUS"]);
    for (code, _, text) in EXIT_CODES {
        top.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(text)]);
    }
    top.control("PP", []).text(with_code(EXEC_EXIT));
    top.control("SH", ["SEE ALSO"]).text(references(&[
        "docklet-master(8)",
        "docklet-worker(8)",
        "docklet.toml(5)",
    ]));
    let mut pages = vec![page(&command, date, &top)];

    fn walk(parent: &Command, date: &str, pages: &mut Vec<(String, String)>) {
        let parent_name = parent
            .get_display_name()
            .unwrap_or_else(|| parent.get_name());
        for sub in parent.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut see_also = vec!["docklet-admin(8)".to_owned()];
            if parent_name != "docklet-admin" {
                see_also.push(format!("{parent_name}(8)"));
            }
            let mut extra = Roff::new();
            let mut status = vec![roman("0 on success, else one of those listed in ")];
            status.extend(references(&["docklet-admin(8)"]));
            status.push(roman("."));
            if sub.get_name() == "exec" {
                status.push(roman(" "));
                status.extend(with_code(EXEC_EXIT));
            }
            extra
                .control("SH", ["EXIT STATUS"])
                .text(status)
                .control("SH", ["SEE ALSO"])
                .text(references(
                    &see_also.iter().map(String::as_str).collect::<Vec<_>>(),
                ));
            pages.push(page(sub, date, &extra));
            walk(sub, date, pages);
        }
    }
    walk(&command, date, &mut pages);
    pages
}

/// docklet-master(8) or docklet-worker(8).
fn daemon_page(daemon: DaemonName, date: &str) -> (String, String) {
    let mut command = docklet::daemon::daemon_command(daemon);
    command.build();
    let other = if daemon.identifier == MASTER.identifier {
        WORKER.identifier
    } else {
        MASTER.identifier
    };
    let config = docklet::config::DEFAULT_PATH;
    let mut extra = Roff::new();
    extra
        .control("SH", ["EXIT STATUS"])
        .control("TP", [])
        .text([bold("0")])
        .text([roman(
            "Stopped on SIGTERM or SIGINT, or --check-config or --prepare-dirs succeeded.",
        )])
        .control("TP", [])
        .text([bold("1")])
        .text([roman(
            "Failed; the unit restarts it (Restart=on-failure), and etcd is retried meanwhile.",
        )])
        .control("TP", [])
        .text([bold(docklet::daemon::EXIT_CONFIG.to_string())])
        .text([roman(
            "The configuration cannot work here (EX_CONFIG): an invalid configuration file, \
             or one this host contradicts. The unit does not restart on it \
             (RestartPreventExitStatus=78).",
        )])
        .control("SH", ["ENVIRONMENT"])
        .control("TP", [])
        .text([bold("DOCKLET_LOG")])
        .text([roman(
            "What is logged, as a tracing-subscriber EnvFilter (default info, e.g. \
             debug or docklet=debug). The log goes to the journal when it is there, else to \
             standard error; in the journal every field of an event is DOCKLET_<NAME>, so \
             journalctl DOCKLET_USER=alice finds what was done to alice's things, and every \
             entry names its host as DOCKLET_HOST.",
        )])
        .control("TP", [])
        .text([bold("DOCKLET_CONFIG")])
        .text([roman(format!(
            "The configuration file when --config is not given (default {config})."
        ))])
        .control("SH", ["FILES"])
        .control("TP", [])
        .text([bold(config)])
        .text([
            roman("The configuration: "),
            bold("docklet.toml"),
            roman("(5)."),
        ])
        .control("TP", [])
        .text([bold("/etc/docklet/pki")])
        .text([roman(
            "This host's identities (certificates and keys) and the site CA, made by \
             docklet-admin init or join.",
        )])
        .control("SH", ["SEE ALSO"])
        .text(references(&[
            "docklet.toml(5)",
            "docklet-admin(8)",
            &format!("{other}(8)"),
            "systemd.service(5)",
        ]));
    page(&command, date, &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page's text as it reads: roff's escapes and fonts undone, whitespace collapsed.
    fn reads(page: &str) -> String {
        let mut page = page.to_owned();
        while let Some(start) = page.find(r"\[u") {
            let end = start + page[start..].find(']').expect("escape's end");
            let code = u32::from_str_radix(&page[start + 3..end], 16).expect("hex");
            let c = char::from_u32(code).expect("a character").to_string();
            page.replace_range(start..=end, &c);
        }
        page.lines()
            .filter_map(|line| match line.split_once(' ') {
                Some((".SH" | ".SS", heading)) => Some(heading.trim_matches('"')),
                _ if line.starts_with(".TH") => Some(line),
                _ => (!line.starts_with('.')).then_some(line),
            })
            .collect::<Vec<_>>()
            .join(" ")
            .replace(r"\*(Aq", "'")
            .replace(r"\-", "-")
            .replace(r"\fB", "")
            .replace(r"\fI", "")
            .replace(r"\fR", "")
            .replace(r"\&", "")
            .replace(r"\\", r"\")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn one_line(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn generated() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), "2026-01-02").unwrap();
        dir
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// Every command but the hidden ones has its page in man8/, with its name, what it does
    /// and the help of each of its options and arguments.
    #[test]
    fn every_subcommand_has_a_page_with_its_options_help() {
        fn walk(command: &Command, name: &str, dir: &Path, checked: &mut usize) {
            let file = format!("man8/{name}.8");
            let page = read(dir, &file);
            assert!(
                page.contains(&format!(".TH {} 8", name.to_uppercase())),
                "{file}"
            );
            assert!(page.is_ascii(), "{file}");
            let text = reads(&page);
            let about = command.get_about().expect("about").to_string();
            assert!(text.contains(&one_line(&about)), "{file}: {about}\n{text}");
            for arg in command.get_arguments() {
                let help = arg.get_long_help().or(arg.get_help()).expect("help");
                assert!(
                    text.contains(&one_line(&help.to_string())),
                    "{file}: {} {help}\n{text}",
                    arg.get_id()
                );
                if let Some(long) = arg.get_long() {
                    assert!(text.contains(&format!("--{long}")), "{file}: --{long}");
                }
            }
            *checked += 1;
            for sub in command.get_subcommands() {
                let sub_name = format!("{name}-{}", sub.get_name());
                if sub.is_hide_set() {
                    assert!(!dir.join(format!("man8/{sub_name}.8")).exists());
                    assert!(!text.contains(sub.get_name()), "{file} names {sub_name}");
                } else {
                    // The parent's page lists it.
                    assert!(
                        text.contains(&format!("{sub_name}(8)")),
                        "{file}: {sub_name}"
                    );
                    walk(sub, &sub_name, dir, checked);
                }
            }
        }
        let dir = generated();
        let mut checked = 0;
        walk(&Args::command(), "docklet-admin", dir.path(), &mut checked);
        for nested in [
            "docklet-admin-quota",
            "docklet-admin-user-add",
            "docklet-admin-vnode-create",
        ] {
            assert!(
                dir.path().join(format!("man8/{nested}.8")).exists(),
                "{nested}"
            );
        }
        let pages = std::fs::read_dir(dir.path().join("man8")).unwrap().count();
        // docklet-admin's pages and the two daemons', nothing else.
        assert_eq!(pages, checked + 2);
        assert!(checked > 40, "{checked}");
    }

    #[test]
    fn docklet_admin_page_has_the_exit_codes() {
        let dir = generated();
        let page = read(dir.path(), "man8/docklet-admin.8");
        let status = &page[page.find(".SH \"EXIT STATUS\"").expect("EXIT STATUS")..];
        let status = reads(&status[..status[1..].find(".SH").unwrap_or(status.len())]);
        for (code, _, text) in EXIT_CODES {
            assert!(
                status.contains(&format!("{code} {text}")),
                "{code}: {status}"
            );
        }
        assert!(
            status.contains("exec exits with the command's status"),
            "{status}"
        );
        let quota = reads(&read(dir.path(), "man8/docklet-admin-quota.8"));
        assert!(
            quota.contains(
                "EXIT STATUS 0 on success, else one of those listed in docklet-admin(8)."
            ),
            "{quota}"
        );
        assert!(quota.contains("docklet-admin quota"), "{quota}");
        let exec = reads(&read(dir.path(), "man8/docklet-admin-exec.8"));
        assert!(
            exec.contains("exec exits with the command's status"),
            "{exec}"
        );
    }

    #[test]
    fn daemon_pages_have_their_options_and_exit_codes() {
        let dir = generated();
        for daemon in [MASTER, WORKER] {
            let page = reads(&read(dir.path(), &format!("man8/{}.8", daemon.identifier)));
            assert!(
                page.contains(&format!("{} - {}", daemon.identifier, daemon.about)),
                "{page}"
            );
            assert!(page.contains(&one_line(daemon.description)), "{page}");
            for arg in docklet::daemon::daemon_command(daemon).get_arguments() {
                let help = one_line(&arg.get_help().expect("help").to_string());
                assert!(page.contains(&help), "{}: {help}", daemon.identifier);
            }
            for needle in [
                "--check-config",
                "DOCKLET_CONFIG",
                "DOCKLET_LOG",
                "78 The configuration",
            ] {
                assert!(
                    page.contains(needle),
                    "{}: {needle}\n{page}",
                    daemon.identifier
                );
            }
        }
    }

    /// docklet.toml(5) lists every key the configuration accepts under its table, with its
    /// default (or an example when it has none).
    #[test]
    fn config_page_names_every_key_with_its_default() {
        let dir = generated();
        let page = read(dir.path(), "man5/docklet.toml.5");
        for needle in [
            ".TH DOCKLET.TOML 5 2026-01-02",
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH DESCRIPTION",
        ] {
            assert!(page.contains(needle), "{needle}");
        }
        assert!(reads(&page).contains("docklet.toml - configuration of the Docklet daemons"));
        // The top level runs to the first table; each table to the next.
        let section = |table: Option<&str>| -> String {
            let start = match table {
                Some(table) => page
                    .find(&format!(".SS [{table}]\n"))
                    .unwrap_or_else(|| panic!("no section [{table}]")),
                None => page.find(".SH KEYS").expect("KEYS"),
            };
            let rest = &page[start + 1..];
            let end = [rest.find("\n.SS"), rest.find("\n.SH")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(rest.len());
            rest[..end].to_owned()
        };
        let keys = docklet::config::keys();
        assert!(keys.len() > 30, "{keys:?}");
        for key in keys {
            let (table, leaf) = match key.split_once('.') {
                Some((table, leaf)) => (Some(table), leaf),
                None => (None, key.as_str()),
            };
            let section = section(table);
            let lines: Vec<&str> = section.lines().collect();
            let tagged = lines
                .windows(2)
                .any(|w| w[0] == ".TP" && w[1].contains(&format!("\\fB{leaf}\\fR")));
            assert!(tagged, "{key}: no entry");
            assert!(
                section.contains(&format!("Default: \\fB{leaf} = "))
                    || section.contains(&format!("for example: \\fB{leaf} = ")),
                "{key}: no default"
            );
        }
        let etcd = reads(&section(Some("etcd")));
        assert!(etcd.contains("Client URLs of the etcd cluster"), "{etcd}");
        assert!(
            etcd.contains(r#"Default: endpoints = ["http://127.0.0.1:2379"]"#),
            "{etcd}"
        );
    }

    #[test]
    fn completions_name_the_subcommands_but_not_the_hidden_one() {
        let dir = generated();
        for file in [
            "completions/bash/docklet-admin",
            "completions/zsh/_docklet-admin",
            "completions/fish/docklet-admin.fish",
        ] {
            let script = read(dir.path(), file);
            for word in ["quota", "etcd-certificate", "system-image", "valid-for"] {
                assert!(script.contains(word), "{file}: {word}");
            }
            assert!(!script.contains("generate-manuals"), "{file}");
        }
        for daemon in ["docklet-master", "docklet-worker"] {
            for file in [
                format!("completions/bash/{daemon}"),
                format!("completions/zsh/_{daemon}"),
                format!("completions/fish/{daemon}.fish"),
            ] {
                let script = read(dir.path(), &file);
                assert!(script.contains("check-config"), "{file}");
                assert!(script.contains(daemon), "{file}");
            }
        }
    }
}
