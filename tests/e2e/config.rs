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
