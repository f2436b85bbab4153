//! ACME (RFC 8555) with instant-acme: one certificate per hostname the relay serves, obtained
//! by http-01 (the http listener) or tls-alpn-01 (the https listener), cached in
//! `DATA_DIR/acme/HOST.pem` (0600) and renewed `tls.acme_renew_before` (30 days) before expiry
//! without a restart: the loop sleeps until the earliest certificate is due (at most an hour).
//!
//! Failures never take a name down: the old certificate stays in use, and a failing name is
//! retried with a growing delay (5 min × 3ⁿ, at most 6 h, and never more than a third of the
//! time the old certificate has left) so the CA's rate limits (5 failed validations per name
//! per hour at Let's Encrypt) are never hit in a loop.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    certs::{self, Cert, CertStore},
    config::{AcmeChallenge, TlsConfig},
    identity,
    metrics::ResultLabel,
    RelayError,
};

/// How often names are re-checked at most when nothing is due sooner.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// A due time is moved later by up to this share of the wait (and at most a minute), so that
/// many relays (and restarts) do not renew in lockstep.
const DUE_SPREAD: f64 = 0.05;
const DUE_SPREAD_MAX: Duration = Duration::from_secs(60);
/// One order may take this long before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
const RETRY_FIRST: Duration = Duration::from_secs(300);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, thiserror::Error)]
enum AcmeError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Relay(#[from] RelayError),
    #[error("{0}")]
    Other(String),
}

/// The account file: credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

/// Keep certificates for every wanted name until `shutdown`.
pub(crate) async fn run(shared: Arc<crate::Shared>, shutdown: CancellationToken) {
    let store = shared.certs.clone();
    let config = shared.config.clone();
    let metrics = &shared.metrics;
    let dir = certs::acme_dir(&config);
    let mut account: Option<Account> = None;
    let mut retry: HashMap<String, (u32, Instant)> = HashMap::new();
    let mut account_retry = RETRY_FIRST / 5;
    let renew_before = config.tls.acme_renew_before;
    loop {
        let mut next = Instant::now() + jitter(CHECK_EVERY);
        if account.is_none() {
            match load_account(&config.tls, &dir).await {
                Ok(a) => account = Some(a),
                Err(e) => {
                    tracing::warn!(
                        directory = %config.tls.acme_directory,
                        "ACME account unavailable, certificates cannot be obtained yet: {e}; retrying in {}",
                        humantime::format_duration(account_retry)
                    );
                    next = Instant::now() + account_retry;
                    account_retry = (account_retry * 2).min(RETRY_MAX);
                }
            }
        }
        if let Some(acct) = &account {
            for host in store.wanted() {
                let wait = due_in(store.get(&host).as_ref(), SystemTime::now(), renew_before);
                if !wait.is_zero() {
                    next = next.min(Instant::now() + spread(wait, rand::thread_rng().gen()));
                    continue;
                }
                if let Some((_, at)) = retry.get(&host) {
                    if *at > Instant::now() {
                        next = next.min(*at);
                        continue;
                    }
                }
                let attempt = tokio::time::timeout(
                    ORDER_TIMEOUT,
                    obtain(acct, &store, &host, config.tls.acme_challenge)
                        .instrument(tracing::info_span!("acme", host = %host)),
                );
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = attempt => r.unwrap_or_else(|_| Err(AcmeError::Other("timed out".into()))),
                };
                match result.and_then(|pem| save(&dir, &host, &pem)) {
                    Ok(cert) => {
                        tracing::info!(
                            host = %host,
                            valid_until = %humantime::format_rfc3339_seconds(cert.not_after),
                            "ACME certificate obtained"
                        );
                        let wait = due_in(Some(&cert), SystemTime::now(), renew_before);
                        next = next.min(Instant::now() + spread(wait, rand::thread_rng().gen()));
                        store.insert(&host, cert);
                        retry.remove(&host);
                        metrics
                            .acme_orders
                            .get_or_create(&ResultLabel {
                                result: "ok".into(),
                            })
                            .inc();
                    }
                    Err(e) => {
                        metrics
                            .acme_orders
                            .get_or_create(&ResultLabel {
                                result: "failed".into(),
                            })
                            .inc();
                        let failures = retry.get(&host).map_or(0, |r| r.0) + 1;
                        let current = store.get(&host);
                        let wait = retry_in(
                            failures,
                            renew_before,
                            current.as_ref().map(|c| c.remaining(SystemTime::now())),
                        );
                        let kept = if current.is_some() {
                            "the current certificate stays in use"
                        } else {
                            "visitors see the fallback certificate until then"
                        };
                        tracing::warn!(
                            host = %host,
                            "ACME certificate for {host} failed: {e}; {kept}; retrying in {}",
                            humantime::format_duration(wait)
                        );
                        let at = Instant::now() + wait;
                        retry.insert(host, (failures, at));
                        next = next.min(at);
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = store.changed() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// How long until a name with certificate `cert` needs an order: zero without a certificate
/// or once less than `renew_before` is left. A certificate whose whole lifetime is shorter
/// than `renew_before` (Let's Encrypt's 6-day certificates under the 30-day default) is
/// renewed with a third of its lifetime left instead of being re-ordered in a loop.
fn due_in(cert: Option<&Cert>, now: SystemTime, renew_before: Duration) -> Duration {
    cert.map_or(Duration::ZERO, |c| {
        let window = if renew_before < c.lifetime {
            renew_before
        } else {
            c.lifetime / 3
        };
        c.remaining(now).saturating_sub(window)
    })
}

/// The wait until a due time `wait` away, moved later by `r` (0..1) of the spread: still well
/// inside the renewal window, never earlier than due.
fn spread(wait: Duration, r: f64) -> Duration {
    wait + wait
        .mul_f64(DUE_SPREAD)
        .min(DUE_SPREAD_MAX)
        .mul_f64(r.clamp(0.0, 1.0))
}

/// The wait before attempt `failures + 1` for a name: 5 min × 3ⁿ⁻¹ (less when the renewal
/// window is shorter than 40 min), at most 6 h, and at most a third of what the current
/// certificate (`remaining`) has left, so several attempts fit before it expires.
fn retry_in(failures: u32, renew_before: Duration, remaining: Option<Duration>) -> Duration {
    let first = RETRY_FIRST
        .min(renew_before / 8)
        .max(Duration::from_secs(1));
    let wait = first
        .saturating_mul(3u32.saturating_pow(failures.saturating_sub(1)))
        .min(RETRY_MAX);
    match remaining {
        Some(left) => wait.min((left / 3).max(first)),
        None => wait,
    }
}

/// ±10 % so that many relays (and restarts) do not renew in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

fn builder(tls: &TlsConfig) -> Result<instant_acme::AccountBuilder, AcmeError> {
    Ok(match &tls.acme_ca_file {
        Some(ca) => Account::builder_with_root(ca)?,
        None => Account::builder()?,
    })
}

/// The saved account for this directory, or a new one.
async fn load_account(tls: &TlsConfig, dir: &Path) -> Result<Account, AcmeError> {
    identity::ensure_data_dir(dir)?;
    let path = dir.join("account.json");
    if let Ok(text) = std::fs::read(&path) {
        match serde_json::from_slice::<AccountFile>(&text) {
            Ok(f) if f.directory == tls.acme_directory => {
                return Ok(builder(tls)?.from_credentials(f.credentials).await?);
            }
            Ok(_) => tracing::info!("ACME directory changed; creating a new account"),
            Err(e) => {
                tracing::warn!(path = %path.display(), "unreadable ACME account ({e}); creating a new one")
            }
        }
    }
    let contact = tls
        .acme_email
        .as_deref()
        .map(|e| format!("mailto:{e}"))
        .into_iter()
        .collect::<Vec<_>>();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(tls)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            tls.acme_directory.clone(),
            None,
        )
        .await?;
    let file = AccountFile {
        directory: tls.acme_directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&file).map_err(|e| AcmeError::Other(e.to_string()))?;
    identity::write_private(&path, &json)?;
    tracing::info!(directory = %tls.acme_directory, "ACME account created");
    Ok(account)
}

/// Run one order for `host`; returns the PEM bundle (chain, then key).
async fn obtain(
    account: &Account,
    store: &CertStore,
    host: &str,
    kind: AcmeChallenge,
) -> Result<String, AcmeError> {
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut tokens = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Other(format!("authorization is {other:?}")));
                }
            }
            let ty = match kind {
                AcmeChallenge::Http01 => ChallengeType::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz.challenge(ty.clone()).ok_or_else(|| {
                AcmeError::Other(format!("the CA offers no {ty:?} challenge for {host}"))
            })?;
            let key_auth = challenge.key_authorization();
            match kind {
                AcmeChallenge::Http01 => {
                    if !valid_token(&challenge.token) {
                        return Err(AcmeError::Other("the CA sent an odd token".into()));
                    }
                    store.set_http_token(&challenge.token, Some(key_auth.as_str().to_string()));
                    tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = certs::alpn_challenge_cert(host, key_auth.digest().as_ref())?;
                    store.set_challenge(host, Some(cert));
                }
            }
            challenge.set_ready().await?;
        }
        let status = order.poll_ready(&RetryPolicy::default()).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map_or_else(String::new, |p| format!(": {p}"));
            return Err(AcmeError::Other(format!(
                "order is {status:?}{detail} (is {host} pointing at this relay, and port {} reachable?)",
                if kind == AcmeChallenge::Http01 { "80" } else { "443" }
            )));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&RetryPolicy::default()).await?;
        Ok(format!("{chain_pem}\n{key_pem}"))
    }
    .await;
    for t in tokens {
        store.set_http_token(&t, None);
    }
    store.set_challenge(host, None);
    result
}

/// http-01 tokens are base64url (RFC 8555 section 8.3); anything else is refused before use.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Check the bundle, write it to `DIR/HOST.pem` (0600) and return it loaded.
fn save(dir: &Path, host: &str, pem: &str) -> Result<Cert, AcmeError> {
    let cert = Cert::from_pem(pem.as_bytes())?;
    let path: PathBuf = dir.join(format!("{host}.pem"));
    identity::write_private(&path, pem.as_bytes())?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "../x", "a/b", "a%2eb", "a\\b", "a\0", &"a".repeat(300)] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn renewal_is_due_renew_before_expiry() {
        let ca = tempfile::tempdir().unwrap();
        // A certificate issued now for 90 days, looked at `days` later.
        let c = certs::tests_support::dev_cert(ca.path(), "cam.example.com");
        let at = |days: u64| SystemTime::now() + DAY * days as u32;
        let month = 30 * DAY;
        assert_eq!(due_in(None, SystemTime::now(), month), Duration::ZERO);
        let fresh = due_in(Some(&c), at(0), month);
        assert!(fresh > 59 * DAY && fresh <= 60 * DAY, "fresh: {fresh:?}");
        let left = due_in(Some(&c), at(59), month);
        assert!(
            left > Duration::ZERO && left <= DAY,
            "31 days left: {left:?}"
        );
        assert_eq!(
            due_in(Some(&c), at(61), month),
            Duration::ZERO,
            "29 days left"
        );
        assert_eq!(due_in(Some(&c), at(100), month), Duration::ZERO, "expired");
        // A shorter window makes the same certificate due later.
        let week = due_in(Some(&c), at(59), 7 * DAY);
        assert!(week > 23 * DAY && week <= 24 * DAY, "{week:?}");
    }

    #[test]
    fn certificates_shorter_than_the_window_renew_at_a_third_of_their_lifetime() {
        // 6 days (+1 min of backdating) under the 30-day default: due after 4 days, not now.
        let c = certs::tests_support::short_cert(6 * DAY);
        let wait = due_in(Some(&c), SystemTime::now(), 30 * DAY);
        let four = 4 * DAY;
        assert!(
            wait > four - Duration::from_secs(120) && wait <= four,
            "{wait:?}"
        );
        // A window just inside the lifetime is honoured as configured.
        let wait = due_in(Some(&c), SystemTime::now(), 5 * DAY);
        assert!(
            wait > DAY - Duration::from_secs(60) && wait <= DAY,
            "{wait:?}"
        );
    }

    #[test]
    fn a_short_lived_certificate_wakes_the_loop_when_due() {
        // A 60 s certificate renewed 45 s before expiry: due after 15 s, not after CHECK_EVERY.
        let c = certs::tests_support::short_cert(Duration::from_secs(60));
        let now = SystemTime::now();
        let wait = due_in(Some(&c), now, Duration::from_secs(45));
        assert!(
            wait > Duration::from_secs(13) && wait <= Duration::from_secs(15),
            "{wait:?}"
        );
        assert_eq!(spread(wait, 0.0), wait, "never before it is due");
        let late = spread(wait, 1.0);
        // At most 5 % later: under 0.75 s for a 15 s wait.
        assert!(
            late > wait && late <= wait + Duration::from_millis(751),
            "{late:?}"
        );
        // Spread stays under a minute for long waits.
        assert_eq!(spread(60 * DAY, 1.0), 60 * DAY + DUE_SPREAD_MAX);
        assert_eq!(spread(60 * DAY, 7.0), 60 * DAY + DUE_SPREAD_MAX, "clamped");
    }

    #[test]
    fn failed_orders_back_off_within_what_the_old_certificate_has_left() {
        let month = 30 * DAY;
        let m = |s: u64| Duration::from_secs(s * 60);
        // Let's Encrypt-sized window: 5 min, 15 min, 45 min, … at most 6 h.
        let waits: Vec<_> = (1..=6).map(|n| retry_in(n, month, Some(month))).collect();
        assert_eq!(
            waits,
            [m(5), m(15), m(45), m(135), m(360), m(360)],
            "backoff"
        );
        assert_eq!(retry_in(40, month, None), m(360), "no overflow");
        // Close to expiry the wait shrinks to a third of what is left (not below the first).
        assert_eq!(retry_in(5, month, Some(m(90))), m(30));
        assert_eq!(retry_in(5, month, Some(Duration::ZERO)), m(5));
        // A 45 s window retries within seconds, so a short-lived certificate is renewed in time.
        let short = Duration::from_secs(45);
        let first = retry_in(1, short, Some(short));
        assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(6));
        assert_eq!(
            retry_in(3, short, Some(Duration::from_secs(30))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn jitter_stays_close() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110));
        }
    }
}
