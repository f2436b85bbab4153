//! `periscope share --host H --ttl 24h [--user-label L]` and `periscope share revoke ID`

use std::time::SystemTime;

use anyhow::Context;
use relay::{identity, token::Revocations, TokenKeys};

use crate::cli::{ShareArgs, ShareCommand};

/// Run `periscope share`.
pub fn run(args: ShareArgs) -> anyhow::Result<()> {
    if let Some(ShareCommand::Revoke { relay, id }) = args.command {
        let config = super::relay::config_of_ref(&relay)?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            anyhow::bail!("`{id}` is not a link id (the hex id printed by `periscope share`)");
        }
        if Revocations::revoke(&config.data_dir, &id, SystemTime::now())? {
            eprintln!("revoked share link {id}; sessions opened with it end within seconds");
        } else {
            eprintln!("share link {id} was already revoked");
        }
        return Ok(());
    }
    let relay = args
        .relay
        .context("--config relay.toml (or --dev) is required")?;
    let host = args
        .host
        .context("--host is required: the hostname to share")?;
    let config = super::relay::config_of_ref(&relay)?;
    let ttl = humantime::parse_duration(&args.ttl)
        .with_context(|| format!("--ttl `{}`: use e.g. 24h, 7d, 30m", args.ttl))?;
    identity::ensure_data_dir(&config.data_dir)?;
    let key = identity::load_or_create_signing_key(&config.key_file())?;
    let keys = TokenKeys::new(&key, &config.domain)?;
    let (token, claims) = keys.issue_share(&host, &args.user_label, ttl, SystemTime::now())?;
    if let Err(e) =
        relay::ledger::Ledger::record_share(&config.data_dir, &claims, SystemTime::now())
    {
        eprintln!("warning: link not recorded in the ledger (issued.json): {e}");
    }
    if config.is_public(&claims.sub) {
        eprintln!("note: {} is public; it needs no link", claims.sub);
    }
    let port = match config.listen.https.port() {
        443 => String::new(),
        p => format!(":{p}"),
    };
    eprintln!(
        "share link for {} (id {}, expires in {}); revoke with `periscope share revoke {}`",
        claims.sub,
        claims.jti,
        humantime::format_duration(ttl),
        claims.jti
    );
    println!("https://{}{port}/.periscope/share?t={token}", claims.sub);
    Ok(())
}
