//! `periscope agent`

use agent::{
    config::{Kind, TunnelConfig},
    Agent, AgentConfig,
};
use anyhow::Context;

use crate::cli::AgentArgs;

/// Parse `NAME=HOST:PORT` (http) or `NAME=HOST:PORT:REMOTEPORT` (tcp/udp).
pub fn parse_tunnel(kind: Kind, spec: &str) -> anyhow::Result<TunnelConfig> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected NAME=ADDR"))?;
    let (target, remote_port) = match kind {
        Kind::Http => (rest.to_string(), None),
        Kind::Tcp | Kind::Udp => {
            let (target, port) = rest
                .rsplit_once(':')
                .with_context(|| format!("`{spec}`: expected NAME=HOST:PORT:REMOTEPORT"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("`{spec}`: `{port}` is not a port"))?;
            (target.to_string(), Some(port))
        }
    };
    Ok(TunnelConfig {
        remote_port,
        ..TunnelConfig::new(name, kind, &target)
    })
}

/// Build the agent config from the file (if any) and flags; flags win.
pub fn config_from(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &args.config {
        Some(path) => crate::config_file::load_agent(path)?,
        None => AgentConfig {
            relay: String::new(),
            token: None,
            token_file: None,
            fingerprint: None,
            ca_file: None,
            server_name: None,
            transport: Default::default(),
            relay_https: None,
            quic_probe_interval: agent::config::default_quic_probe_interval(),
            connect_timeout: std::time::Duration::from_secs(10),
            quic: Default::default(),
            tunnels: Vec::new(),
        },
    };
    if let Some(r) = &args.relay {
        cfg.relay = r.clone();
    }
    if let Some(t) = &args.token {
        cfg.token = Some(proto::Secret::new(t.clone()));
        cfg.token_file = None;
    }
    if let Some(t) = &args.token_file {
        cfg.token_file = Some(t.clone());
        cfg.token = None;
    }
    if let Some(f) = &args.fingerprint {
        cfg.fingerprint = Some(f.clone());
        cfg.ca_file = None;
    }
    if let Some(c) = &args.ca_file {
        cfg.ca_file = Some(c.clone());
        cfg.fingerprint = None;
    }
    if let Some(t) = &args.transport {
        cfg.transport = match t.as_str() {
            "quic" => agent::config::TransportChoice::Quic,
            "tcp" => agent::config::TransportChoice::Tcp,
            _ => agent::config::TransportChoice::Auto,
        };
    }
    if let Some(h) = &args.relay_https {
        cfg.relay_https = Some(h.clone());
    }
    if let Some(k) = args.keep_alive {
        cfg.quic.keep_alive = k;
    }
    if let Some(c) = &args.congestion {
        cfg.quic.congestion = match c.as_str() {
            "bbr" => agent::config::Congestion::Bbr,
            _ => agent::config::Congestion::Cubic,
        };
    }
    if let Some(s) = &args.server_name {
        cfg.server_name = Some(s.clone());
    }
    for (kind, specs) in [
        (Kind::Tcp, &args.tcp),
        (Kind::Http, &args.http),
        (Kind::Udp, &args.udp),
    ] {
        for s in specs {
            let t = parse_tunnel(kind, s)?;
            cfg.tunnels.retain(|x| x.name != t.name);
            cfg.tunnels.push(t);
        }
    }
    if cfg.relay.is_empty() {
        anyhow::bail!("no relay given: use --relay HOST:PORT or --config agent.toml");
    }
    Ok(cfg)
}

/// Re-read the agent's config (with `load`: the file plus the command line's flags) on
/// SIGHUP and when `path` changes, and apply its tunnel list to the running agent, which
/// sends it to the relay. A file that does not parse or validate is logged and the old
/// tunnels stay.
pub async fn watch(
    path: std::path::PathBuf,
    load: impl Fn() -> anyhow::Result<AgentConfig> + Send + 'static,
    reloader: agent::Reloader,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let shown = path.display().to_string();
    let watched = crate::reload::watch(path, shutdown, move |why| {
        let loaded = load();
        let reloader = reloader.clone();
        let shown = shown.clone();
        async move {
            let applied = match loaded {
                Ok(c) => reloader.apply(c).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match applied {
                Ok(r) if r.tunnels_unchanged() && r.need_restart.is_empty() => {
                    tracing::info!("reloaded {shown} ({why}): nothing changed")
                }
                Ok(r) if !r.need_restart.is_empty() => {
                    tracing::warn!("reloaded {shown} ({why}): {r}")
                }
                Ok(r) => tracing::info!("reloaded {shown} ({why}): {r}"),
                Err(e) => tracing::error!(
                    "not reloading {shown} ({why}): {e:#}; the previous tunnels stay"
                ),
            }
        }
    });
    if let Err(e) = watched.await {
        tracing::warn!("cannot watch the config for changes: {e:#}");
    }
}

/// Run the agent until SIGINT/SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let status_file = super::agent_status::path(args.status_file.as_ref());
    if let Some(crate::cli::AgentAction::Status) = args.action {
        let connected = super::agent_status::show(&status_file)?;
        std::process::exit(if connected { 0 } else { 1 });
    }
    let cfg = config_from(&args)?;
    let shutdown = crate::signal::shutdown_token()?;
    crate::signal::raise_nofile_limit();
    let agent = Agent::new(cfg).await.context("starting the agent")?;
    if let Some(path) = args.config.clone() {
        let reloader = agent.reloader();
        let args = args.clone();
        tokio::spawn(watch(
            path,
            move || config_from(&args),
            reloader,
            shutdown.clone(),
        ));
    }
    let writer = tokio::spawn(super::agent_status::keep_written(
        agent.status(),
        agent.rtt_probe(),
        status_file,
        shutdown.clone(),
    ));
    let result = agent.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = writer.await;
    result?;
    Ok(())
}
