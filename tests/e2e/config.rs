//! Every shipped example config parses; every invalid fixture fails with its expected message.

use std::path::Path;

use periscope::config_file::{load_any, AnyConfig};

#[test]
fn example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            match load_any(&path) {
                Ok(AnyConfig::Relay(_) | AnyConfig::Agent(_)) => n += 1,
                Err(e) => panic!("{}: {e:#}", path.display()),
            }
        }
    }
    assert!(n >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn invalid_configs_fail_with_their_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let expect = std::fs::read_to_string(path.with_extension("expect")).unwrap();
            let err = match load_any(&path) {
                Ok(_) => panic!("{} should be invalid", path.display()),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                err.contains(expect.trim()),
                "{}: got `{err}`, expected `{}`",
                path.display(),
                expect.trim()
            );
            n += 1;
        }
    }
    assert!(n >= 5);
}

/// Every key of both configs appears in the README's configuration reference.
#[test]
fn every_config_key_is_documented() {
    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let name = if prefix.is_empty() {
                    k.clone()
                } else if prefix.starts_with("[[") {
                    format!("{prefix} {k}")
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => keys(&name, v, out),
                    toml::Value::Array(a) if a.first().is_some_and(|x| x.is_table()) => {
                        keys(&format!("[[{name}]]"), &a[0], out)
                    }
                    _ => out.push(name),
                }
            }
        }
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut relay = relay::RelayConfig::dev("/x".into());
    relay.tls.cert = Some("/c".into());
    relay.tls.key = Some("/k".into());
    relay.auth.key_file = Some("/k".into());
    relay.tls.acme_email = Some("a@b".into());
    relay.tls.acme_ca_file = Some("/ca".into());
    relay.auth.users_file = Some("/u".into());
    relay.limits.stream_time_limit = Some(std::time::Duration::from_secs(60));
    relay.access.push(relay::config::AccessRule {
        host: "h".into(),
        public: true,
        users: vec!["alice".into()],
        basic: true,
        allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
        deny_ips: vec!["10.0.0.1".parse().unwrap()],
    });
    relay.port_access.push(relay::config::PortAccessRule {
        ports: "554".parse().unwrap(),
        mode: relay::config::PortMode::Open,
        allow_ips: vec![],
        deny_ips: vec![],
    });
    let mut agent =
        load_any(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/agent.toml"))
            .map(|c| match c {
                AnyConfig::Agent(a) => *a,
                AnyConfig::Relay(_) => unreachable!(),
            })
            .unwrap();
    agent.ca_file = Some("/ca".into());
    agent.server_name = Some("x".into());
    agent.relay_https = Some("x:443".into());
    agent.token = Some(proto::Secret::new("t"));
    agent.tunnels[0].hostname = Some("h".into());
    agent.tunnels[0].proxy_protocol = Some(agent::config::ProxyProtocol::V2);
    agent.tunnels[0].target_tls = Some(true);
    agent.tunnels[0].target_tls_verify = Some(false);
    agent.tunnels[0].target_sni = Some("nvr.lan".into());
    let mut all = Vec::new();
    keys("", &toml::Value::try_from(&relay).unwrap(), &mut all);
    keys("", &toml::Value::try_from(&agent).unwrap(), &mut all);
    let missing: Vec<_> = all
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")) && !readme.contains(&format!("`{k}` /")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from README's configuration reference: {missing:?}"
    );
}
