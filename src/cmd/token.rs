//! `periscope token issue|revoke`

use std::time::SystemTime;

use anyhow::Context;
use relay::{identity, token::Revocations, IssueRequest, PortRange, TokenKeys};

use crate::cli::TokenCommand;

fn ports(specs: &[String]) -> anyhow::Result<Vec<PortRange>> {
    specs
        .iter()
        .map(|s| s.parse::<PortRange>().map_err(anyhow::Error::msg))
        .collect()
}

/// Run a token subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue {
            relay,
            agent,
            hosts,
            tcp_ports,
            udp_ports,
            ttl,
        } => {
            let config = super::relay::config_of_ref(&relay)?;
            identity::ensure_data_dir(&config.data_dir)?;
            let key = identity::load_or_create_signing_key(&config.key_file())?;
            let keys = TokenKeys::new(&key, &config.domain)?;
            let hosts = if hosts.is_empty() {
                vec![format!("{agent}.{}", config.domain)]
            } else {
                hosts
            };
            let ttl = humantime::parse_duration(&ttl)
                .with_context(|| format!("--ttl `{ttl}`: use e.g. 90d, 12h, 30m"))?;
            let (token, claims) = keys.issue(
                &IssueRequest {
                    agent,
                    hosts,
                    tcp_ports: ports(&tcp_ports)?,
                    udp_ports: ports(&udp_ports)?,
                    ttl,
                },
                SystemTime::now(),
            )?;
            if let Err(e) =
                relay::ledger::Ledger::record_token(&config.data_dir, &claims, SystemTime::now())
            {
                eprintln!("warning: token not recorded in the ledger (issued.json): {e}");
            }
            eprintln!(
                "token for agent `{}` (id {}, expires in {}): hosts [{}], tcp [{}], udp [{}]",
                claims.sub,
                claims.jti,
                humantime::format_duration(ttl),
                claims.hosts.join(", "),
                join(&claims.tcp_ports),
                join(&claims.udp_ports),
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::Revoke { relay, jti } => {
            let config = super::relay::config_of_ref(&relay)?;
            if !jti.chars().all(|c| c.is_ascii_hexdigit()) || jti.is_empty() {
                anyhow::bail!("`{jti}` is not a token id (the hex id printed by `token issue`)");
            }
            if Revocations::revoke(&config.data_dir, &jti, SystemTime::now())? {
                eprintln!(
                    "revoked {jti}; a connected agent using it is disconnected within seconds"
                );
            } else {
                eprintln!("{jti} was already revoked");
            }
            Ok(())
        }
    }
}

fn join(p: &[PortRange]) -> String {
    p.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
