//! Config errors as users read them (SPEC §1: "one clear sentence naming the
//! file, field or argument at fault"): `file:line:column: field: message`,
//! and the list of every error found in one pass.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config, located in its file.
///
/// `line` and `column` are 1-based; `line == 0` means "no position" (the file
/// could not be read, or the value came from a CLI flag or environment
/// variable). `field` is a path such as `routes[2].path`, or the flag that
/// supplied the value, such as `--listen (KEYWARD_LISTEN)`; it may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error with no position in the file (unreadable file, overrides).
    pub fn unlocated(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in one config, sorted by position, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Orders errors as a reader meets them: unlocated ones (flags, the file
    /// itself) first, then by line and column. The sort is stable, so errors
    /// at the same spot keep the order in which they were found.
    pub(crate) fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: usize, column: usize, field: &str) -> ConfigError {
        ConfigError {
            file: PathBuf::from("keyward.yaml"),
            line,
            column,
            field: field.to_owned(),
            message: "bad".to_owned(),
        }
    }

    #[test]
    fn located_error_displays_file_line_column_field_message() {
        assert_eq!(
            error(7, 5, "store.redis.timeout").to_string(),
            "keyward.yaml:7:5: store.redis.timeout: bad"
        );
    }

    #[test]
    fn unlocated_error_omits_position_and_empty_field() {
        assert_eq!(
            error(0, 0, "--listen (KEYWARD_LISTEN)").to_string(),
            "keyward.yaml: --listen (KEYWARD_LISTEN): bad"
        );
        assert_eq!(error(0, 0, "").to_string(), "keyward.yaml: bad");
        assert_eq!(error(3, 1, "").to_string(), "keyward.yaml:3:1: bad");
    }

    #[test]
    fn error_list_displays_one_error_per_line_in_file_order() {
        let errors =
            ConfigErrors::sorted(vec![error(9, 1, "b"), error(2, 3, "a"), error(0, 0, "c")]);
        assert_eq!(
            errors.to_string(),
            "keyward.yaml: c: bad\nkeyward.yaml:2:3: a: bad\nkeyward.yaml:9:1: b: bad"
        );
    }
}
