//! `periscope relay`

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use relay::{IssueRequest, Relay, RelayConfig};

use crate::cli::{RelayArgs, RelayRef};

/// Data directory of `--dev`.
pub const DEV_DATA_DIR: &str = "periscope-dev-data";

/// The config a relay command acts on: `--config FILE` or `--dev`.
pub fn config_of(config: Option<&PathBuf>, dev: bool) -> anyhow::Result<RelayConfig> {
    match (config, dev) {
        (Some(path), _) => crate::config_file::load_relay(path),
        (None, true) => {
            let mut c = RelayConfig::dev(PathBuf::from(DEV_DATA_DIR));
            // Loopback only: raw ports need no web login, so `ssh -p 2222 127.0.0.1` just works.
            c.port_access.push(relay::config::PortAccessRule {
                ports: relay::PortRange { lo: 1, hi: 65535 },
                mode: relay::config::PortMode::Open,
                allow_ips: vec![],
                deny_ips: vec![],
            });
            Ok(c)
        }
        (None, false) => anyhow::bail!("give --config relay.toml (or --dev)"),
    }
}

/// Same, for token commands.
pub fn config_of_ref(r: &RelayRef) -> anyhow::Result<RelayConfig> {
    config_of(r.config.as_ref(), r.dev)
}

/// Run the relay until SIGINT/SIGTERM.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let mut config = config_of(args.config.as_ref(), args.dev)?;
    if let Some(d) = args.data_dir.clone() {
        config.data_dir = d;
    }
    if let Some(q) = args.quic {
        config.listen.quic = q;
    }
    let shutdown = crate::signal::shutdown_token()?;
    crate::signal::raise_nofile_limit();
    let relay = Relay::bind(config.clone())
        .await
        .context("starting the relay")?;
    if let Some(path) = args.config.clone() {
        let (data_dir, quic) = (args.data_dir.clone(), args.quic);
        tokio::spawn(watch(
            path,
            move |c| {
                if let Some(d) = &data_dir {
                    c.data_dir = d.clone();
                }
                if let Some(q) = quic {
                    c.listen.quic = q;
                }
            },
            relay.reloader(),
            shutdown.clone(),
        ));
    }
    if args.dev {
        print_dev_banner(&relay, &config)?;
    } else {
        let verify = match config.tls.source() {
            relay::config::CertSource::Acme => format!(
                "certificates by ACME from {}; agents verify the relay with the web PKI (no fingerprint)",
                config.tls.acme_directory
            ),
            _ => format!("certificate fingerprint {}", relay.fingerprint()),
        };
        eprintln!(
            "relay listening on {} (QUIC), {} (HTTPS) and {} (HTTP); {verify}",
            relay.quic_addr(),
            relay.https_addr(),
            relay.http_addr(),
        );
    }
    relay.run(shutdown).await?;
    Ok(())
}

/// Re-read `path` on SIGHUP and when it changes, and apply its access rules to the running
/// relay; `adjust` re-applies the command line's overrides. A file that does not parse or
/// validate is logged (file:line and key, as at start) and the old rules stay.
pub async fn watch(
    path: PathBuf,
    adjust: impl Fn(&mut RelayConfig) + Send + 'static,
    reloader: relay::Reloader,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let shown = path.display().to_string();
    let watched = crate::reload::watch(path.clone(), shutdown, move |why| {
        reload_once(&path, &shown, why, &adjust, &reloader);
        std::future::ready(())
    });
    if let Err(e) = watched.await {
        tracing::warn!("cannot watch the config for changes: {e:#}");
    }
}

fn reload_once(
    path: &std::path::Path,
    shown: &str,
    why: crate::reload::Trigger,
    adjust: &impl Fn(&mut RelayConfig),
    reloader: &relay::Reloader,
) {
    {
        let mut config = match crate::config_file::load_relay(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("not reloading {shown} ({why}): {e:#}; the previous settings stay");
                return;
            }
        };
        adjust(&mut config);
        match reloader.apply(config) {
            Ok(r) if r.is_unchanged() => {
                tracing::info!("reloaded {shown} ({why}): nothing changed")
            }
            Ok(r) if r.applied.is_empty() => tracing::warn!("reloaded {shown} ({why}): {r}"),
            Ok(r) if !r.need_restart.is_empty() => tracing::warn!("reloaded {shown} ({why}): {r}"),
            Ok(r) => tracing::info!("reloaded {shown} ({why}): {r}"),
            Err(e) => {
                tracing::error!("not reloading {shown} ({why}): {e}; the previous settings stay")
            }
        }
    }
}

fn print_dev_banner(relay: &Relay, config: &RelayConfig) -> anyhow::Result<()> {
    let (token, claims) = relay.keys().issue(
        &IssueRequest {
            agent: "dev".into(),
            hosts: vec![format!("*.{}", config.domain)],
            tcp_ports: vec!["1024-65535".parse().map_err(anyhow::Error::msg)?],
            udp_ports: vec!["1024-65535".parse().map_err(anyhow::Error::msg)?],
            ttl: Duration::from_secs(30 * 86400),
        },
        std::time::SystemTime::now(),
    )?;
    let exe = std::env::args()
        .next()
        .unwrap_or_else(|| "periscope".into());
    eprintln!(
        "\nperiscope relay (dev mode) on {quic} (QUIC) and https://{https} (loopback only)\n\
         data directory: {data}\n\
         certificate fingerprint: {fp}\n\n\
         Run an agent (token for agent \"dev\", tcp/udp ports 1024-65535, valid 30 days, id {jti}):\n\n  \
         {exe} agent --relay {quic} --relay-https {https} --fingerprint {fp} --token {token} --tcp ssh=127.0.0.1:22:2222\n\n\
         then: ssh -p 2222 127.0.0.1\n\n         http tunnels (--http cam=127.0.0.1:8080) answer at https://cam.{domain}:{port}/ with a\n         certificate from the development CA: curl --cacert {ca} ...\n         They ask for a login: `{exe} user add --dev NAME` (raw tcp ports are open in dev mode).\n",
        domain = config.domain,
        port = relay.https_addr().port(),
        ca = relay.dev_ca().unwrap_or_default().display(),
        quic = relay.quic_addr(),
        https = relay.https_addr(),
        data = config.data_dir.display(),
        fp = relay.fingerprint(),
        jti = claims.jti,
    );
    Ok(())
}
