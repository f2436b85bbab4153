//! The admin listener (axum): a JSON API, Prometheus `/metrics`, `/healthz` and a status page.
//!
//! It binds loopback only (an SSH tunnel reaches it from elsewhere) and every route but the
//! status page's static shell needs `Authorization: Bearer TOKEN`, the admin token kept in
//! `DATA_DIR/admin.token` (0600, created on first start; `periscope admin-token` prints it).
//! The shell holds no data: it reads the token from the URL fragment (never sent to a server)
//! and calls the API with it. No cookies, so no CSRF.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{access::bans::BanFile, identity, RelayConfig, RelayError, Shared};

/// Path of the admin token.
pub fn token_path(config: &RelayConfig) -> PathBuf {
    config.data_dir.join("admin.token")
}

/// The admin token, created (random, 0600) on first use.
pub fn load_or_create_token(config: &RelayConfig) -> Result<String, RelayError> {
    let t = identity::load_or_create_secret(&token_path(config), || {
        Ok(identity::random_hex(32)?.into_bytes())
    })?;
    Ok(String::from_utf8_lossy(&t).trim().to_string())
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    /// SHA-256 of the token: requests are compared digest to digest, so the comparison's
    /// timing says nothing about the token.
    token_digest: Arc<[u8]>,
}

fn digest(s: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, s)
        .as_ref()
        .to_vec()
}

/// Serve the admin API on `listener` until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    token: String,
    shutdown: CancellationToken,
) {
    let state = AdminState {
        shared,
        token_digest: digest(token.as_bytes()).into(),
    };
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/agents", get(agents))
        .route("/api/tunnels", get(tunnels))
        .route("/api/bans", get(bans))
        .route("/api/users", get(users))
        .route("/api/tokens", axum::routing::post(issue_token))
        .route(
            "/api/tokens/{jti}/revoke",
            axum::routing::post(revoke_token),
        )
        .route("/api/bans/{ip}", axum::routing::delete(unban))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .merge(api)
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!("admin listener failed: {e}");
    }
}

async fn auth(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim().as_bytes()));
    if given.as_deref() == Some(&st.token_digest[..]) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin token required (periscope admin-token)\n",
        )
            .into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> impl IntoResponse {
    let s = &st.shared;
    s.metrics
        .agents_connected
        .set(i64::try_from(s.registry.len()).unwrap_or(i64::MAX));
    s.metrics
        .http_routes
        .set(i64::try_from(s.routes.len()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// One connected agent.
#[derive(Serialize)]
struct AgentView {
    name: String,
    version: String,
    session: u64,
    transport: String,
    remote: String,
    connected_since: String,
    connected_secs: u64,
    rtt_ms: f64,
    tunnels: Vec<String>,
    token_id: String,
    token_expires: String,
}

async fn agents(State(st): State<AdminState>) -> Json<Vec<AgentView>> {
    let now = SystemTime::now();
    let mut out: Vec<AgentView> = st
        .shared
        .registry
        .sessions()
        .into_iter()
        .map(|s| AgentView {
            name: s.agent.clone(),
            version: s.version.clone(),
            session: s.id,
            transport: s.transport().to_string(),
            remote: s.remote_addr().to_string(),
            connected_since: humantime::format_rfc3339_seconds(s.since).to_string(),
            connected_secs: now.duration_since(s.since).map_or(0, |d| d.as_secs()),
            rtt_ms: s.rtt().as_secs_f64() * 1000.0,
            tunnels: s.public.clone(),
            token_id: s.jti.clone(),
            token_expires: humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s.exp),
            )
            .to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(out)
}

/// One published tunnel.
#[derive(Serialize)]
struct TunnelView {
    agent: String,
    public: String,
}

async fn tunnels(State(st): State<AdminState>) -> Json<Vec<TunnelView>> {
    let mut out: Vec<TunnelView> = st
        .shared
        .registry
        .sessions()
        .into_iter()
        .flat_map(|s| {
            let agent = s.agent.clone();
            s.public.into_iter().map(move |public| TunnelView {
                agent: agent.clone(),
                public,
            })
        })
        .collect();
    out.sort_by(|a, b| a.public.cmp(&b.public));
    Json(out)
}

/// `POST /api/tokens`: what `periscope token issue` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    agent: String,
    /// Default: `AGENT.DOMAIN`.
    #[serde(default)]
    hosts: Vec<String>,
    /// Ports or ranges, e.g. `"2222"`, `"8000-8100"`.
    #[serde(default)]
    tcp_ports: Vec<String>,
    #[serde(default)]
    udp_ports: Vec<String>,
    /// Lifetime, e.g. `"90d"`.
    ttl: String,
}

#[derive(Serialize)]
struct IssuedView {
    token: String,
    id: String,
    agent: String,
    expires: String,
}

/// Issue an agent token (signed by the relay's key, like the CLI).
async fn issue_token(
    State(st): State<AdminState>,
    Json(body): Json<IssueBody>,
) -> Result<Json<IssuedView>, (StatusCode, String)> {
    let bad = |e: String| (StatusCode::BAD_REQUEST, e);
    let ports = |v: &[String]| {
        v.iter()
            .map(|p| p.parse::<crate::PortRange>())
            .collect::<Result<Vec<_>, _>>()
    };
    let ttl = humantime::parse_duration(&body.ttl)
        .map_err(|e| bad(format!("ttl `{}`: {e} (use e.g. 90d, 12h)", body.ttl)))?;
    let domain = &st.shared.config.domain;
    let hosts = if body.hosts.is_empty() {
        vec![format!("{}.{domain}", body.agent)]
    } else {
        body.hosts
    };
    let (token, claims) = st
        .shared
        .keys
        .issue(
            &crate::IssueRequest {
                agent: body.agent,
                hosts,
                tcp_ports: ports(&body.tcp_ports).map_err(bad)?,
                udp_ports: ports(&body.udp_ports).map_err(bad)?,
                ttl,
            },
            SystemTime::now(),
        )
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(agent = %claims.sub, id = %claims.jti, "token issued through the admin API");
    Ok(Json(IssuedView {
        token,
        id: claims.jti,
        agent: claims.sub,
        expires: humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp),
        )
        .to_string(),
    }))
}

/// Revoke a token by id; a connected agent using it is disconnected within seconds.
async fn revoke_token(
    State(st): State<AdminState>,
    axum::extract::Path(jti): axum::extract::Path<String>,
) -> Result<StatusCode, (StatusCode, String)> {
    let revoked =
        crate::token::Revocations::revoke(&st.shared.config.data_dir, &jti, SystemTime::now())
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if revoked {
        tracing::info!(id = %jti, "token revoked through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Ok(StatusCode::CONFLICT)
    }
}

/// One visitor account (never its hash).
#[derive(Serialize)]
struct UserView {
    name: String,
    hosts: Vec<String>,
    disabled: bool,
}

/// The users file's accounts.
async fn users(State(st): State<AdminState>) -> Result<Json<Vec<UserView>>, (StatusCode, String)> {
    let file = crate::access::users::UsersFile::load(&st.shared.config.users_file())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        file.users
            .into_iter()
            .map(|u| UserView {
                name: u.name,
                hosts: u.hosts,
                disabled: u.disabled,
            })
            .collect(),
    ))
}

/// One banned address.
#[derive(Serialize)]
struct BanView {
    ip: String,
    since: String,
    /// RFC 3339, or `forever`.
    until: String,
    last_user: String,
}

/// Active bans (the same `DATA_DIR/bans.json` `periscope ban list` reads).
async fn bans(State(st): State<AdminState>) -> Result<Json<Vec<BanView>>, (StatusCode, String)> {
    let file = BanFile::load(&st.shared.config.data_dir)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = crate::token::unix_now(SystemTime::now());
    let at = |s: u64| {
        humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string()
    };
    Ok(Json(
        file.bans
            .iter()
            .filter(|b| b.until == 0 || b.until > now)
            .map(|b| BanView {
                ip: b.ip.to_string(),
                since: at(b.since),
                until: if b.until == 0 {
                    "forever".into()
                } else {
                    at(b.until)
                },
                last_user: b.user.clone(),
            })
            .collect(),
    ))
}

/// Lift the ban of one address; the relay follows within a second (it re-reads the file).
async fn unban(
    State(st): State<AdminState>,
    axum::extract::Path(ip): axum::extract::Path<std::net::IpAddr>,
) -> Result<StatusCode, (StatusCode, String)> {
    let dir = &st.shared.config.data_dir;
    let err = |e: RelayError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut file = BanFile::load(dir).map_err(err)?;
    let before = file.bans.len();
    file.bans.retain(|b| b.ip != ip);
    if file.bans.len() == before {
        return Ok(StatusCode::NOT_FOUND);
    }
    file.save(dir).map_err(err)?;
    tracing::info!(%ip, "ban lifted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// The status page: static, no third-party assets; polls the API with the token from the URL
/// fragment (`http://127.0.0.1:9090/#TOKEN`).
const STATUS_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Periscope relay</title>
<style>body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%;margin-bottom:1.5rem}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;font-size:.9rem}
th{background:#f4f4f4}.ok{color:#180}.err{color:#b00}code{font-size:.85rem}</style></head>
<body><h1>Periscope relay</h1><p id="state">loading…</p>
<h2>Agents</h2><table id="agents"><tr><th>agent</th><th>transport</th><th>address</th><th>RTT</th><th>connected</th><th>tunnels</th></tr></table>
<script>
const token = decodeURIComponent(location.hash.slice(1));
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function dur(s){const h=Math.floor(s/3600),m=Math.floor(s%3600/60);return h?h+" h "+m+" min":m?m+" min":s+" s";}
async function tick(){
  const st=document.getElementById("state");
  if(!token){st.innerHTML='Open this page as <code>http://ADDRESS/#TOKEN</code> (<code>periscope admin-token</code> prints the token).';return;}
  try{
    const r=await fetch("/api/agents",{headers:{Authorization:"Bearer "+token}});
    if(!r.ok){st.className="err";st.textContent="API answered "+r.status;return;}
    const agents=await r.json();
    st.className="ok";st.textContent=agents.length+" agent(s) connected · updated "+new Date().toLocaleTimeString();
    const t=document.getElementById("agents");
    t.querySelectorAll("tr.row").forEach(e=>e.remove());
    for(const a of agents){
      const tr=document.createElement("tr");tr.className="row";
      tr.innerHTML="<td>"+esc(a.name)+" <small>"+esc(a.version)+"</small></td><td>"+esc(a.transport)+"</td><td>"+esc(a.remote)+"</td><td>"+a.rtt_ms.toFixed(1)+" ms</td><td>"+dur(a.connected_secs)+"</td><td>"+a.tunnels.map(u=>"<code>"+esc(u)+"</code>").join("<br>")+"</td>";
      t.appendChild(tr);
    }
  }catch(e){st.className="err";st.textContent="relay unreachable: "+e;}
}
tick();setInterval(tick,2000);
</script></body></html>"#;
