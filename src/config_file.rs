//! Reading config files with errors that name the file, line and key, and suggest the nearest
//! valid key for a typo.

use std::path::{Path, PathBuf};

use relay::RelayConfig;

/// A config file error: `FILE:LINE:COL: key `K`: message (did you mean `X`?)`.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The offending key, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Turn a toml/serde error into a [`ConfigError`].
pub fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let (line, col) = line_col(text, span.start);
    // The span covers the key (unknown field) or the value (bad value): either way the key is
    // what stands before `=` on that line.
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .or_else(|| text.get(span.clone()).map(|k| k.trim().to_string()))
        .filter(|k| !k.is_empty() && !k.contains('\n') && k.len() < 64);
    let mut message = e.message().trim().to_string();
    // serde: "unknown field `tls_cert`, expected one of `a`, `b`" → suggest the nearest.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((bad, expected)) = rest.split_once('`') {
            let nearest = expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|c| (distance(bad, c), c))
                .min();
            if let Some((d, c)) = nearest {
                if d <= bad.len().max(3) / 2 + 1 {
                    message = format!("unknown key `{bad}` (did you mean `{c}`?); {message}");
                }
            }
        }
    }
    if let Some(k) = &key {
        if !message.contains(k.as_str()) {
            message = format!("key `{k}`: {message}");
        }
    }
    ConfigError {
        file: file.to_path_buf(),
        line,
        col,
        key,
        message,
    }
}

/// A validation error (`"key.path: message"`) with the file and, when the key's last segment
/// appears on exactly one line, that line.
fn validation_error(path: &Path, text: &str, e: impl std::fmt::Display) -> anyhow::Error {
    let msg = e.to_string();
    let detail = msg.split_once(": ").map_or(msg.as_str(), |(_, d)| d);
    let leaf = detail
        .split(':')
        .next()
        .and_then(|k| k.split_whitespace().next())
        .and_then(|k| k.rsplit('.').next())
        .unwrap_or_default();
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.split_once('=').is_some_and(|(k, _)| k.trim() == leaf))
        .map(|(i, _)| i + 1)
        .collect();
    match lines.as_slice() {
        [line] => anyhow::anyhow!("{}:{line}: {msg}", path.display()),
        _ => anyhow::anyhow!("{}: {msg}", path.display()),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Load and validate a relay.toml.
pub fn load_relay(path: &Path) -> anyhow::Result<RelayConfig> {
    parse_relay(path, &read(path)?)
}

fn parse_relay(path: &Path, text: &str) -> anyhow::Result<RelayConfig> {
    let cfg = RelayConfig::from_toml(text).map_err(|e| toml_error(path, text, &e))?;
    cfg.validate()
        .map_err(|e| validation_error(path, text, e))?;
    Ok(cfg)
}

/// Load an agent.toml (validated later, after CLI overrides).
pub fn load_agent(path: &Path) -> anyhow::Result<agent::AgentConfig> {
    let text = read(path)?;
    agent::AgentConfig::from_toml(&text).map_err(|e| toml_error(path, &text, &e).into())
}

/// Which kind of file this is: a relay config has `domain`, an agent config has `relay`.
pub enum AnyConfig {
    /// relay.toml
    Relay(Box<RelayConfig>),
    /// agent.toml
    Agent(Box<agent::AgentConfig>),
}

/// Load and validate either kind of config.
pub fn load_any(path: &Path) -> anyhow::Result<AnyConfig> {
    let text = read(path)?;
    let table: toml::Table = text.parse().map_err(|e| toml_error(path, &text, &e))?;
    if table.contains_key("relay") {
        let cfg = agent::AgentConfig::from_toml(&text).map_err(|e| toml_error(path, &text, &e))?;
        cfg.validate()
            .map_err(|e| validation_error(path, &text, e))?;
        Ok(AnyConfig::Agent(Box::new(cfg)))
    } else if table.contains_key("domain") {
        Ok(AnyConfig::Relay(Box::new(parse_relay(path, &text)?)))
    } else {
        anyhow::bail!(
            "{}: neither a relay config (needs `domain`) nor an agent config (needs `relay`)",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_names_line_key_and_suggestion() {
        let text =
            "domain = \"x.example\"\ndata_dir = \"/tmp/x\"\n[listen]\nquik = \"127.0.0.1:1\"\n";
        let e = RelayConfig::from_toml(text).unwrap_err();
        let ce = toml_error(Path::new("relay.toml"), text, &e);
        assert_eq!(ce.line, 4);
        assert_eq!(ce.key.as_deref(), Some("quik"));
        let s = ce.to_string();
        assert!(s.starts_with("relay.toml:4:1:"), "{s}");
        assert!(s.contains("did you mean `quic`"), "{s}");
    }

    #[test]
    fn distance_works() {
        assert_eq!(distance("quik", "quic"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
