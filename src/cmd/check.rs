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
            cert_files(&c)?;
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

/// `tls.cert` / `tls.key`: read and matched as at start; names and expiry shown, with a
/// warning when the hostnames under `domain` would not be covered or expiry is near.
fn cert_files(c: &relay::RelayConfig) -> anyhow::Result<()> {
    let Some(files) = relay::identity::check_cert_files(c)? else {
        return Ok(());
    };
    let left = files
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let names = if files.names.is_empty() {
        "no DNS name".to_string()
    } else {
        files.names.join(", ")
    };
    eprintln!(
        "tls.cert: certificate for {names} valid until {} ({} days left), tls.key matches it",
        humantime::format_rfc3339_seconds(files.not_after),
        left.as_secs() / 86_400
    );
    if left.is_zero() {
        eprintln!("warning: tls.cert has expired: browsers will refuse it");
    } else if left < std::time::Duration::from_secs(14 * 86_400) {
        eprintln!("warning: tls.cert expires in less than 14 days: renew the files (the relay reads them at start)");
    }
    let domain = c.domain.trim_end_matches('.').to_ascii_lowercase();
    let wildcard = format!("*.{domain}");
    if !files
        .names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&wildcard))
    {
        eprintln!(
            "note: tls.cert does not cover {wildcard}: browsers refuse it for hostnames under {domain} that it does not list"
        );
    }
    Ok(())
}
