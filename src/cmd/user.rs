//! `periscope user add|remove|list|passwd|disable|enable`

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use relay::access::users::{hash_password, valid_user_name, User, UsersFile};

use crate::cli::UserCommand;

/// Shortest password accepted.
const MIN_PASSWORD: usize = 8;

/// Run a user subcommand.
pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { relay, name, hosts } => {
            let config = super::relay::config_of_ref(&relay)?;
            let path = config.users_file();
            let mut file = UsersFile::load(&path)?;
            if !valid_user_name(&name) {
                anyhow::bail!("user name `{name}`: use 1-64 letters, digits and ._@-");
            }
            if file.get(&name).is_some() {
                anyhow::bail!("user `{name}` exists; use `periscope user passwd {name}`");
            }
            let hash = hash_password(&read_new_password(&name)?)?;
            file.users.push(User {
                name: name.clone(),
                hash,
                hosts: hosts
                    .iter()
                    .map(|h| relay::token::normalize_host(h))
                    .collect(),
                disabled: false,
            });
            file.save(&path)?;
            eprintln!("added user `{name}` to {}", path.display());
        }
        UserCommand::Remove { relay, name } => {
            let config = super::relay::config_of_ref(&relay)?;
            let path = config.users_file();
            let mut file = UsersFile::load(&path)?;
            let before = file.users.len();
            file.users.retain(|u| u.name != name);
            if file.users.len() == before {
                anyhow::bail!("no user `{name}` in {}", path.display());
            }
            file.save(&path)?;
            eprintln!("removed user `{name}`; their sessions end within seconds");
        }
        UserCommand::List { relay } => {
            let config = super::relay::config_of_ref(&relay)?;
            let file = UsersFile::load(&config.users_file())?;
            if file.users.is_empty() {
                eprintln!("no users in {}", config.users_file().display());
            }
            for u in &file.users {
                let hosts = if u.hosts.is_empty() {
                    "all hostnames".to_string()
                } else {
                    u.hosts.join(", ")
                };
                let state = if u.disabled { " (disabled)" } else { "" };
                println!("{}{state}\t{hosts}", u.name);
            }
        }
        UserCommand::Passwd { relay, name } => {
            edit(&relay, &name, |u| {
                u.hash = hash_password(&read_new_password(&u.name)?)?;
                Ok("password changed")
            })?;
        }
        UserCommand::Disable { relay, name } => {
            edit(&relay, &name, |u| {
                u.disabled = true;
                Ok("disabled; their sessions end within seconds")
            })?;
        }
        UserCommand::Enable { relay, name } => {
            edit(&relay, &name, |u| {
                u.disabled = false;
                Ok("enabled")
            })?;
        }
    }
    Ok(())
}

fn edit(
    relay: &crate::cli::RelayRef,
    name: &str,
    f: impl FnOnce(&mut User) -> anyhow::Result<&'static str>,
) -> anyhow::Result<()> {
    let config = super::relay::config_of_ref(relay)?;
    let path = config.users_file();
    let mut file = UsersFile::load(&path)?;
    let user = file
        .get_mut(name)
        .with_context(|| format!("no user `{name}` in {}", path.display()))?;
    let what = f(user)?;
    file.save(&path)?;
    eprintln!("user `{name}`: {what}");
    Ok(())
}

/// A new password: from the terminal (asked twice, echo off) or one line of stdin.
fn read_new_password(name: &str) -> anyhow::Result<String> {
    let pw = if std::io::stdin().is_terminal() {
        let a = prompt(&format!("New password for `{name}`: "))?;
        let b = prompt("Again: ")?;
        if a != b {
            anyhow::bail!("the passwords differ");
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if pw.chars().count() < MIN_PASSWORD {
        anyhow::bail!("the password needs at least {MIN_PASSWORD} characters");
    }
    Ok(pw)
}

/// Read one line from the terminal with echo off.
fn prompt(text: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).context("reading terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
