//! Walking a folder that is about to be served or uploaded, and hashing files.
//!
//! The walk never leaves its root: a symbolic link is followed only when it
//! resolves to a file inside the root (it is then served as that file);
//! a link that leads outside is refused, and so is a link to a folder (which
//! could loop). Names must be UTF-8 and pass [`crate::paths::validate_relative`].

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::paths::{EscapeReason, PathEscape, validate_relative};

/// Why a folder cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Escape(#[from] PathEscape),
    #[error("{path}: {what} is not supported")]
    Unsupported { path: String, what: &'static str },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalkError + '_ {
    move |source| WalkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file or folder found under the root.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// `/`-separated path relative to the root.
    pub rel: String,
    /// Where it is on disk (for a link inside the root, the link itself;
    /// opening it reaches the target).
    pub abs: PathBuf,
    pub is_dir: bool,
    pub size: u64,
    pub mtime_ns: i128,
    /// Permission bits only (0o777).
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl WalkEntry {
    fn new(rel: String, abs: PathBuf, meta: &Metadata) -> Self {
        Self {
            rel,
            abs,
            is_dir: meta.is_dir(),
            size: if meta.is_dir() { 0 } else { meta.len() },
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            mode: meta.permissions().mode() & 0o777,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Whether `meta` (of a freshly opened file) still describes this entry.
    pub fn same_file(&self, meta: &Metadata) -> bool {
        let now = Self::new(String::new(), PathBuf::new(), meta);
        now.size == self.size
            && now.mtime_ns == self.mtime_ns
            && now.dev == self.dev
            && now.ino == self.ino
    }
}

/// Lists everything under `root` (which should be canonical), sorted by
/// path so that parents come before their children.
pub fn walk(root: &Path) -> Result<Vec<WalkEntry>, WalkError> {
    let mut out = Vec::new();
    walk_into(root, root, "", &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk_into(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<WalkEntry>,
) -> Result<(), WalkError> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        names.push(item.file_name());
    }
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(WalkError::Unsupported {
                path: abs.display().to_string(),
                what: "a name that is not UTF-8",
            });
        };
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        validate_relative(&rel)?;
        let link_meta = std::fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
        let meta = if link_meta.file_type().is_symlink() {
            let target = std::fs::canonicalize(&abs)
                .map_err(|_| PathEscape::new(rel.clone(), EscapeReason::Symlink))?;
            if !target.starts_with(root) {
                return Err(PathEscape::new(rel, EscapeReason::Symlink).into());
            }
            let meta = std::fs::metadata(&target).map_err(io_err(&target))?;
            if meta.is_dir() {
                return Err(WalkError::Unsupported {
                    path: rel,
                    what: "a symbolic link to a folder",
                });
            }
            meta
        } else {
            link_meta
        };
        if meta.is_dir() {
            out.push(WalkEntry::new(rel.clone(), abs.clone(), &meta));
            walk_into(root, &abs, &rel, out)?;
        } else if meta.is_file() {
            out.push(WalkEntry::new(rel, abs, &meta));
        } else {
            return Err(WalkError::Unsupported {
                path: rel,
                what: "a special file (fifo, socket or device)",
            });
        }
    }
    Ok(())
}

/// Hex BLAKE3 of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    hash_reader(&mut file)
}

/// Hex BLAKE3 of everything `reader` yields.
pub fn hash_reader(reader: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_nested_entries_parents_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("crawlab_project/spiders")).unwrap();
        std::fs::write(root.join("crawlab_project/spiders/quotes.py"), "x").unwrap();
        std::fs::write(root.join("a-b"), "y").unwrap();
        let rels: Vec<_> = walk(&root).unwrap().into_iter().map(|e| e.rel).collect();
        assert_eq!(
            rels,
            [
                "a-b",
                "crawlab_project",
                "crawlab_project/spiders",
                "crawlab_project/spiders/quotes.py"
            ]
        );
    }

    #[test]
    fn links_leaving_the_root_are_refused_and_links_inside_are_served() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(base.join("secret"), "s").unwrap();
        std::fs::write(root.join("real"), "r").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("inside")).unwrap();
        let entries = walk(&root).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].rel, "inside");
        assert_eq!(entries[0].size, 1);

        std::os::unix::fs::symlink(base.join("secret"), root.join("leak")).unwrap();
        match walk(&root) {
            Err(WalkError::Escape(e)) => {
                assert_eq!(e.reason, EscapeReason::Symlink);
                assert_eq!(e.path, "leak");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
