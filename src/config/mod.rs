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
        env::expand(&mut value, lookup).map_err(ConfigError)?;
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ConfigError(inner.to_string())
            } else {
                ConfigError(format!("{path}: {inner}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as YAML, every secret shown as `***`.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
