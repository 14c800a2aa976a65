//! Reading the config file into a [`Layer`]. Unknown keys are errors, so a
//! typo is not silently ignored; every error names the file and the key.

use std::path::Path;

use super::{ConfigError, Layer};

impl Layer {
    pub fn read_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_file(path, &text)
    }

    pub fn parse_file(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let syntax = |message: String| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            message,
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| syntax(e.to_string()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            let message = error.into_inner().message().trim().to_owned();
            // Keys of flattened parts (storage, consul_*, the listeners) come
            // without a path; their messages name the key themselves.
            if field == "." {
                syntax(message)
            } else {
                syntax(format!("field `{field}`: {message}"))
            }
        })
    }
}
