//! The configuration: the YAML schema of spec/config.md, loaded with `${ENV}` expansion, unknown
//! keys refused, and every error naming the key path it is about.

mod env;
mod schema;
mod secret;
mod units;

use std::path::Path;

pub use schema::*;
pub use secret::{Secret, REDACTED};
pub use units::{ByteSize, HumanDuration};

/// A configuration error, already phrased for the person who wrote the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, expands, types and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::from_yaml(&text, &|name| std::env::var(name).ok())
            .map_err(|ConfigError(e)| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses YAML text; `lookup` answers `${NAME}` references.
    pub fn from_yaml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError(format!("not valid YAML: {e}")))?;
        if value.is_null() {
            value = serde_yaml::Value::Mapping(Default::default());
        }
        let expanded = env::expand(&mut value, lookup).map_err(ConfigError)?;
        let typed = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = without_literals(&e.into_inner().to_string());
            if path == "." {
                ConfigError(inner)
            } else {
                ConfigError(format!("{path}: {inner}"))
            }
        });
        typed
            .and_then(|mut config: Config| config.validate().map(|()| config))
            .map_err(|ConfigError(e)| ConfigError(expanded.hide(e)))
    }

    /// What is allowed but likely a mistake, one line each: said by `check` and at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.server.listen.ip().is_loopback() && self.access.tokens.is_empty() {
            warnings.push(format!(
                "server.listen: {} is not a loopback address and access.tokens is empty: whoever \
                 reaches it uploads and reads with the account's credentials (add tokens, or \
                 publish the port on loopback only, e.g. docker run -p 127.0.0.1:8080:8080)",
                self.server.listen
            ));
        }
        warnings
    }

    /// The effective configuration as YAML, every secret shown as `***`.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// A serde message without the value it quotes (`invalid type: string "…", expected …` becomes
/// `invalid type: string, expected …`): a value in the wrong place may be a secret, and the key
/// path and what was expected are enough to mend the file.
fn without_literals(message: &str) -> String {
    const KINDS: [&str; 3] = ["invalid type: ", "invalid value: ", "unknown variant "];
    let Some(start) = KINDS
        .iter()
        .find_map(|kind| message.find(kind).map(|at| at + kind.len()))
    else {
        return message.to_string();
    };
    let Some(expected) = message.rfind(", expected") else {
        return message.to_string();
    };
    if expected < start {
        return message.to_string();
    }
    let unexpected = &message[start..expected];
    let kind = unexpected
        .find(['"', '`'])
        .map_or(unexpected, |quote| &unexpected[..quote])
        .trim_end();
    let head = format!("{}{kind}", &message[..start]);
    format!("{}{}", head.trim_end(), &message[expected..])
}

#[cfg(test)]
mod tests;
