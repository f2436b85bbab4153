//! The deployment kit: every file is there, the systemd units keep their hardening, and
//! install.sh is idempotent (staged under a temporary DESTDIR).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `Key=value` lines of a unit, comments skipped.
fn keys(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn has(unit: &[(String, String)], key: &str, value: &str) -> bool {
    unit.iter().any(|(k, v)| k == key && v == value)
}

#[test]
fn deploy_kit_files_exist() {
    for f in [
        "deploy/systemd/periscope-relay.service",
        "deploy/systemd/periscope-agent.service",
        "deploy/docker/Dockerfile",
        "deploy/docker/compose.yml",
        "deploy/install.sh",
        ".dockerignore",
    ] {
        assert!(repo().join(f).is_file(), "{f} is missing");
    }
}

#[test]
fn systemd_units_are_hardened() {
    for name in ["relay", "agent"] {
        let unit = keys(&read(&format!("deploy/systemd/periscope-{name}.service")));
        for (k, v) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            // Hot reload (`systemctl reload`): the config is re-read on SIGHUP.
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ] {
            assert!(has(&unit, k, v), "periscope-{name}.service lacks {k}={v}");
        }
        assert!(
            unit.iter().any(|(k, _)| k == "StateDirectory"),
            "periscope-{name}.service lacks StateDirectory"
        );
        assert!(
            unit.iter().any(|(k, v)| k == "ExecStart"
                && v.starts_with(&format!("/usr/local/bin/periscope {name} "))),
            "periscope-{name}.service: ExecStart"
        );
    }
    // Only the relay binds 80/443, and it gets exactly that one capability.
    let relay = keys(&read("deploy/systemd/periscope-relay.service"));
    assert!(has(&relay, "AmbientCapabilities", "CAP_NET_BIND_SERVICE"));
    assert!(has(&relay, "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"));
    assert!(has(&relay, "StateDirectory", "periscope"));
    let agent = keys(&read("deploy/systemd/periscope-agent.service"));
    assert!(has(&agent, "AmbientCapabilities", ""));
    assert!(has(&agent, "CapabilityBoundingSet", ""));
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let d = read("deploy/docker/Dockerfile");
    assert!(d.matches("\nFROM ").count() >= 2, "multi-stage");
    assert!(d.contains("\nUSER 65532"), "non-root runtime");
    let c = read("deploy/docker/compose.yml");
    assert!(c.contains("\n  relay:") && c.contains("\n  agent:"), "{c}");
    assert!(c.contains("dockerfile: deploy/docker/Dockerfile"));
}

#[test]
fn install_sh_is_idempotent() {
    let Ok(bash) = which("bash") else {
        eprintln!("no bash here; skipped");
        return;
    };
    let dest = tempfile::tempdir().unwrap();
    // A stand-in binary: the script only copies it and asks its version.
    let bin = dest.path().join("periscope-build");
    std::fs::write(&bin, "#!/bin/sh\necho periscope 0.0.0-test\n").unwrap();
    let run = || {
        let out = std::process::Command::new(&bash)
            .arg(repo().join("deploy/install.sh"))
            .arg("--binary")
            .arg(&bin)
            .env("DESTDIR", dest.path().join("root"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    let first = run();
    let root = dest.path().join("root");
    for f in [
        "usr/local/bin/periscope",
        "etc/periscope/relay.toml.example",
        "etc/systemd/system/periscope-relay.service",
        "etc/systemd/system/periscope-agent.service",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed:\n{first}");
    }
    assert!(first.contains("installed"), "{first}");
    let second = run();
    assert!(
        !second.contains("installed "),
        "second run changed files:\n{second}"
    );
    assert!(second.contains("up to date"), "{second}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p: &PathBuf| Path::is_file(p))
        .ok_or(())
}
