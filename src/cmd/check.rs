//! `periscope check --config FILE`

use std::path::Path;

use crate::config_file::{load_any, AnyConfig};

/// Validate a config and print its effective settings (secrets masked).
pub fn run(path: &Path) -> anyhow::Result<()> {
    let text = match load_any(path)? {
        AnyConfig::Relay(c) => {
            eprintln!("{}: valid relay configuration", path.display());
            for a in c.access.iter().filter(|a| a.public) {
                eprintln!(
                    "warning: [[access]] {} is public: anyone on the internet can reach it without a login",
                    a.host
                );
            }
            for p in c
                .port_access
                .iter()
                .filter(|p| p.mode == relay::config::PortMode::Open)
            {
                eprintln!(
                    "warning: [[port_access]] {} is open: anyone on the internet can connect without a login",
                    p.ports
                );
            }
            match relay::access::users::UsersFile::load(&c.users_file()) {
                Ok(u) if u.users.is_empty() => eprintln!(
                    "note: no users in {}: nobody can log in to private hostnames yet (`periscope user add`)",
                    c.users_file().display()
                ),
                Ok(u) => {
                    let names: Vec<&str> = u.users.iter().map(|u| u.name.as_str()).collect();
                    for a in &c.access {
                        for n in a.users.iter().filter(|n| !names.contains(&n.as_str())) {
                            eprintln!("warning: [[access]] {} names user `{n}`, who is not in the users file", a.host);
                        }
                    }
                }
                Err(e) => eprintln!("warning: {e}"),
            }
            toml::to_string_pretty(&c)?
        }
        AnyConfig::Agent(mut c) => {
            eprintln!("{}: valid agent configuration", path.display());
            if c.token.is_some() {
                c.token = Some(proto::Secret::new("********"));
            }
            toml::to_string_pretty(&c)?
        }
    };
    println!("{text}");
    Ok(())
}
