//! Accounts, groups and quotas.

use anyhow::Result;

use crate::bus::*;
use crate::cli::*;
use crate::tables::*;
use docklet::dbus_api::{GroupPatchDict, GroupRow, QuotaPatchDict, UserPatchDict};
use docklet::master::actions::Me;
use docklet::model::account::AccountStatus;
use docklet::model::quota::Group;

/// A password from standard input: the first line, so `echo pw | docklet-admin ...` works and
/// the password never shows in the process list. On a terminal it is asked for twice, without
/// echo, as `passwd` does.
pub(crate) fn read_password() -> Result<String, Failure> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden(&stdin, "New password: ")?;
        let again = prompt_hidden(&stdin, "Again: ")?;
        if first != again {
            return Err(usage("the two passwords differ: nothing changed".into()));
        }
        first
    } else {
        read_line(&stdin)?
    };
    if password.is_empty() {
        return Err(usage("give the password on standard input".into()));
    }
    Ok(password)
}

fn read_line(stdin: &std::io::Stdin) -> Result<String, Failure> {
    let mut line = String::new();
    stdin.read_line(&mut line).map_err(|e| Failure {
        code: 2,
        message: format!("cannot read the password from standard input: {e}"),
    })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// One line from the terminal with echo off (restored whatever happens).
fn prompt_hidden(stdin: &std::io::Stdin, prompt: &str) -> Result<String, Failure> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    eprint!("{prompt}");
    let saved = tcgetattr(stdin).map_err(|e| usage(format!("reading the terminal: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(stdin, SetArg::TCSAFLUSH, &quiet)
        .map_err(|e| usage(format!("turning the terminal's echo off: {e}")))?;
    let line = read_line(stdin);
    let _ = tcsetattr(stdin, SetArg::TCSAFLUSH, &saved);
    line
}

pub(crate) async fn user(action: UserAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let reply = match action {
        UserAction::Add { name, group, pam } => {
            let password = if pam { String::new() } else { read_password()? };
            master
                .create_user(
                    &name,
                    group.as_deref().unwrap_or(""),
                    if pam { "pam" } else { "local" },
                    &password,
                )
                .await
                .map_err(bus)?
        }
        UserAction::Set {
            name,
            group,
            status,
            password,
        } => {
            if group.is_none() && status.is_none() && !password {
                return Err(usage(
                    "nothing to change: give --group, --status or --password".into(),
                ));
            }
            // Checked here, so that a typo is a usage error like any other.
            let status = status
                .map(|s| s.parse::<AccountStatus>())
                .transpose()
                .map_err(usage)?;
            let patch = UserPatchDict {
                group,
                status: status.map(|s| s.as_str().to_owned()),
                password: if password {
                    Some(read_password()?)
                } else {
                    None
                },
            };
            master.set_user(&name, &patch).await.map_err(bus)?
        }
        UserAction::Delete { name } => {
            master.delete_user(&name).await.map_err(bus)?;
            println!("User {name} deleted.");
            return Ok(());
        }
    };
    let user: Me = from_single(reply)?;
    print!("{}", users_table(&[user]));
    Ok(())
}

pub(crate) async fn group(action: GroupAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    match action {
        GroupAction::Add { name, from, admin } => {
            let groups: Vec<Group> = all_from_wire(master.groups().await.map_err(bus)?)?;
            let from = from.unwrap_or_else(|| docklet::model::quota::DEFAULT_GROUP.to_owned());
            let template = groups
                .iter()
                .find(|g| g.name == from)
                .ok_or_else(|| Failure {
                    code: 7,
                    message: format!("no group {from} to copy the quota from"),
                })?;
            let group = Group {
                name,
                admin,
                ..template.clone()
            };
            let reply = master
                .create_group(&GroupRow::from(group))
                .await
                .map_err(bus)?;
            print!("{}", groups_table(&[from_single(reply)?], ""));
        }
        GroupAction::Delete { name } => {
            master.delete_group(&name).await.map_err(bus)?;
            println!("Group {name} deleted.");
        }
        GroupAction::Default { name } => {
            master.set_default_group(&name).await.map_err(bus)?;
            println!("New users join group {name}.");
        }
        GroupAction::Egress { name, allow } => {
            let rules = docklet::model::egress::parse_rules(&allow).map_err(|e| Failure {
                code: 2,
                message: e.to_string(),
            })?;
            // Parsed here for the usage error; sent in their canonical spelling.
            let patch = GroupPatchDict {
                egress_allow: Some(rules.iter().map(ToString::to_string).collect()),
                ..GroupPatchDict::default()
            };
            let reply = master.set_group(&name, &patch).await.map_err(bus)?;
            print!("{}", groups_table(&[from_single(reply)?], ""));
        }
    }
    Ok(())
}

/// `1`, `0.5`, `2.25` cores → thousandths of a core.
pub(crate) fn parse_cpu(text: &str) -> Result<u32, String> {
    let cores: f64 = text
        .parse()
        .map_err(|_| format!("--cpu {text:?}: expected a number of cores such as 1 or 0.5"))?;
    if !(0.0..=4096.0).contains(&cores) {
        return Err(format!("--cpu {text:?}: out of range"));
    }
    Ok((cores * 1000.0).round() as u32)
}

/// `512M`, `2G`, `1048576` → bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 30),
        Some('T' | 't') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?}: expected bytes or a number with K, M, G or T"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// `docklet-admin quota`: a group's quota, shown or changed; or one user's own vnode count.
pub(crate) async fn quota(args: QuotaArgs) -> Result<(), Failure> {
    let QuotaArgs {
        group,
        user,
        cpu,
        memory,
        disk,
        vnodes,
        images,
        image_size,
        port_mappings,
        idle,
        json,
    } = args;
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    if let Some(user) = user {
        let vnodes = vnodes
            .ok_or_else(|| usage("--user sets a user's own vnode count: give --vnodes".into()))?;
        return master
            .set_vnode_quota(&user, vnodes)
            .await
            .map_err(|e| failure(e, "master"));
    }
    let group = group.expect("clap requires a group without --user");
    let unchanged = [&cpu, &memory, &disk, &image_size]
        .iter()
        .all(|a| a.is_none())
        && [vnodes, images, port_mappings].iter().all(Option::is_none)
        && idle.is_none();
    let size = |text: Option<String>| text.map(|t| parse_size(&t)).transpose().map_err(usage);
    let quota = QuotaPatchDict {
        cpu_millis: cpu
            .map(|c| parse_cpu(&c).map(u64::from))
            .transpose()
            .map_err(usage)?,
        memory_bytes: size(memory)?,
        disk_bytes: size(disk)?,
        vnodes,
        images,
        image_bytes: size(image_size)?,
        port_mappings,
        idle_secs: idle,
    };
    let group: Group = if unchanged {
        let groups: Vec<Group> =
            all_from_wire(master.groups().await.map_err(|e| failure(e, "master"))?)?;
        groups
            .into_iter()
            .find(|g| g.name == group)
            .ok_or_else(|| Failure {
                code: 7,
                message: format!("no group {group}"),
            })?
    } else {
        let patch = GroupPatchDict {
            quota: Some(quota),
            ..GroupPatchDict::default()
        };
        from_single(
            master
                .set_group(&group, &patch)
                .await
                .map_err(|e| failure(e, "master"))?,
        )?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&group).expect("JSON"));
    } else {
        print!("{}", groups_table(&[group], ""));
    }
    Ok(())
}

/// `docklet-admin groups`: every group with its quota and defaults.
pub(crate) async fn groups(json: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let groups: Vec<Group> =
        all_from_wire(master.groups().await.map_err(|e| failure(e, "master"))?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups).expect("JSON"));
    } else {
        let default = master
            .default_group()
            .await
            .map_err(|e| failure(e, "master"))?;
        print!("{}", groups_table(&groups, &default));
    }
    Ok(())
}
