//! Path safety shared by the server and the client.
//!
//! A relative path on the wire is a `/`-separated list of components. Every
//! component is checked on its own, then joined onto a root with
//! [`Path::join`], so a path can only ever name something under that root.

use std::path::{Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeReason {
    Empty,
    Absolute,
    ParentDir,
    CurrentDir,
    EmptyComponent,
    Nul,
    Backslash,
    TooLong,
    /// A symbolic link resolves outside the root.
    Symlink,
}

impl std::fmt::Display for EscapeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "the path is empty",
            Self::Absolute => "absolute paths are not allowed",
            Self::ParentDir => "`..` components are not allowed",
            Self::CurrentDir => "`.` components are not allowed",
            Self::EmptyComponent => "empty components (`//` or a trailing `/`) are not allowed",
            Self::Nul => "NUL bytes are not allowed",
            Self::Backslash => "`\\` is not a separator and is not allowed in names",
            Self::TooLong => "the path is too long",
            Self::Symlink => "a symbolic link leads outside the root",
        })
    }
}

/// A path that would leave the folder it must stay in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} escapes its root: {reason}")]
pub struct PathEscape {
    pub path: String,
    pub reason: EscapeReason,
}

impl PathEscape {
    pub fn new(path: impl Into<String>, reason: EscapeReason) -> Self {
        Self {
            path: path.into(),
            reason,
        }
    }
}

/// Longest relative path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Splits a wire path into its components, refusing anything that could
/// name a place outside the root: empty paths, absolute paths, `..`, `.`,
/// empty components, NUL bytes and backslashes.
pub fn validate_relative(path: &str) -> Result<Vec<&str>, PathEscape> {
    let refuse = |reason| Err(PathEscape::new(path, reason));
    if path.is_empty() {
        return refuse(EscapeReason::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return refuse(EscapeReason::TooLong);
    }
    if path.contains('\0') {
        return refuse(EscapeReason::Nul);
    }
    if path.contains('\\') {
        return refuse(EscapeReason::Backslash);
    }
    if path.starts_with('/') {
        return refuse(EscapeReason::Absolute);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" => return refuse(EscapeReason::EmptyComponent),
            "." => return refuse(EscapeReason::CurrentDir),
            ".." => return refuse(EscapeReason::ParentDir),
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// Joins a validated wire path onto `root`, one component at a time.
pub fn join_under(root: &Path, path: &str) -> Result<PathBuf, PathEscape> {
    let mut out = root.to_path_buf();
    for part in validate_relative(path)? {
        out.push(part);
    }
    debug_assert!(out.starts_with(root));
    Ok(out)
}

/// The parent of a wire path (`a/b/c` -> `a/b`), or `None` at the top.
pub fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// A spider name is the folder a spider lives in. File-sync accepts exactly
/// the names a job may ask for, so a spider that can be pushed can be run.
pub use crawler_core::protocol::is_spider_name as is_valid_spider_name;

/// Whether `s` is a hex BLAKE3 digest, and so also a safe file name.
pub fn is_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_split_into_components() {
        assert_eq!(
            validate_relative("crawlab_project/spiders/quotes.py").unwrap(),
            vec!["crawlab_project", "spiders", "quotes.py"]
        );
        let root = Path::new("/srv/spiders/s1");
        assert_eq!(
            join_under(root, "crawlab_project/spiders/quotes.py").unwrap(),
            Path::new("/srv/spiders/s1/crawlab_project/spiders/quotes.py")
        );
    }

    #[test]
    fn every_escape_is_refused() {
        let cases = [
            ("", EscapeReason::Empty),
            ("/etc/passwd", EscapeReason::Absolute),
            ("../x", EscapeReason::ParentDir),
            ("a/../../x", EscapeReason::ParentDir),
            ("a/..", EscapeReason::ParentDir),
            ("./a", EscapeReason::CurrentDir),
            ("a//b", EscapeReason::EmptyComponent),
            ("a/", EscapeReason::EmptyComponent),
            ("a\0b", EscapeReason::Nul),
            ("..\\x", EscapeReason::Backslash),
        ];
        for (path, reason) in cases {
            let err = validate_relative(path).unwrap_err();
            assert_eq!(err.reason, reason, "{path:?}");
            assert!(join_under(Path::new("/r"), path).is_err());
        }
        assert_eq!(
            validate_relative(&"a/".repeat(3000)).unwrap_err().reason,
            EscapeReason::TooLong
        );
    }

    #[test]
    fn dotted_names_that_are_not_dot_components_are_fine() {
        assert!(validate_relative("..a/.b/c..").is_ok());
        assert!(validate_relative(".gitignore").is_ok());
    }

    #[test]
    fn spider_names() {
        for ok in ["quotes", "my-spider_2", "A"] {
            assert!(is_valid_spider_name(ok), "{ok}");
        }
        let too_long = "s".repeat(65);
        assert!(is_valid_spider_name(&too_long[..64]));
        for bad in [
            "", "..", "a/b", "a b", "é", ".hidden", "a.b", "a\0", &too_long,
        ] {
            assert!(!is_valid_spider_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent_of("a/b/c"), Some("a/b"));
        assert_eq!(parent_of("a"), None);
    }
}
