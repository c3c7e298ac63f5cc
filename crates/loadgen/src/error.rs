//! The load generator's error type: every message is one line naming the flag, file or field,
//! and says each cause once.

use std::path::PathBuf;

/// Everything that can go wrong before or around a run. Failed requests are not errors: they
/// are counted in the results.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad setting (a flag or an option of the library); the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A file that could not be read or written. The message ends with the I/O error's text,
    /// and the I/O error is deliberately not the `source()` (a reporter that prints the chain,
    /// such as anyhow's `{:#}`, would print the cause twice).
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// A file whose content is wrong; the message names the line or field.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The server could not be reached or answered something unusable (outside a run).
    #[error("{0}")]
    Http(String),
}

impl LoadError {
    /// A bad setting.
    pub fn invalid(msg: impl Into<String>) -> Self {
        LoadError::Invalid(msg.into())
    }

    /// A file with bad content.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        LoadError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A file that could not be read or written.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_cause_once() {
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = cause.to_string();
        let e = LoadError::io("b1/summary.json", cause);
        // What a reporter that prints the whole chain (anyhow's `{:#}`) shows.
        let mut shown = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(s) = next {
            shown = format!("{shown}: {s}");
            next = s.source();
        }
        assert_eq!(shown.matches(&text).count(), 1, "{shown}");
        assert!(shown.starts_with("b1/summary.json: "), "{shown}");
    }
}
