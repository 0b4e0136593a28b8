//! Opening a collected file so that nothing outside `allowed_roots` is ever
//! read, whatever the paths under the roots point to (issue #14).
//!
//! The roots check on a collect entry's glob is textual; the kernel follows
//! symlinked directories in the middle of a path, and a local user who can
//! write a log directory can swap a file for a symlink between discovery and
//! open. So the check that counts is made on what was *opened*:
//!
//! 1. `open(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)`: a symlink as
//!    the last component fails (`ELOOP`); a FIFO does not block the open.
//! 2. `fstat` of the descriptor: only a regular file is read.
//! 3. The descriptor's real path (`/proc/self/fd/N`, resolved by the kernel
//!    from the open file itself, so no later swap changes it) must lie under
//!    one of the roots as resolved when the harvester started
//!    ([`resolve_roots`]). A symlinked directory anywhere in the path shows
//!    up here as its target.
//!
//! When `/proc` cannot tell the real path, the file is refused (fail
//! closed). Hard links are not symlinks: a hard link under a root to a file
//! elsewhere on the same filesystem reads that file; the kernel's
//! `fs.protected_hardlinks = 1` (the default) stops a user from linking a
//! file they do not own (docs/SECURITY.md).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a file was not opened. Refusals are expected (logged once per path
/// and counted by the harvester); `Io` is an ordinary failure.
#[derive(Debug)]
pub enum OpenError {
    /// The last component is a symlink (`O_NOFOLLOW`).
    Symlink,
    /// Not a regular file (FIFO, socket, device, directory).
    NotRegular,
    /// The opened file's real path is outside every allowed root.
    OutsideRoots(PathBuf),
    /// The real path of the descriptor is unknown (`/proc` unavailable).
    Unverifiable(io::Error),
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Symlink => write!(f, "it is a symlink (not followed)"),
            Self::NotRegular => write!(f, "not a regular file"),
            Self::OutsideRoots(real) => {
                write!(f, "it resolves to {} outside allowed_roots", real.display())
            }
            Self::Unverifiable(e) => write!(f, "its real path cannot be checked: {e}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl OpenError {
    /// Whether this is a refusal by policy (not an I/O failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::Io(_))
    }
}

/// The roots as the kernel sees them: each resolved (symlinks followed)
/// when it exists, else kept as written. Resolved once, when a harvester
/// starts, so a root swapped for a symlink later does not move the bound.
pub fn resolve_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
        .collect()
}

/// Whether `real` (a resolved path) lies under one of `roots`. An empty
/// list allows everything (only tests and benches build harvesters so).
pub fn within(real: &Path, roots: &[PathBuf]) -> bool {
    roots.is_empty() || roots.iter().any(|r| real.starts_with(r))
}

/// The real path of an open descriptor.
///
/// # Errors
/// `/proc/self/fd` cannot be read.
pub fn real_path(file: &File) -> io::Result<PathBuf> {
    let p = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    // A file deleted since it was opened: the kernel appends " (deleted)".
    Ok(
        match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(s) => PathBuf::from(s),
            None => p,
        },
    )
}

/// Opens `path` for reading if it is a regular file, not reached through a
/// final symlink, whose real path is under `roots` (see the module docs).
///
/// # Errors
/// [`OpenError`]: a refusal, or the open's own I/O error.
pub fn open_beneath(path: &Path, roots: &[PathBuf]) -> Result<File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OpenError::Symlink,
            _ => OpenError::Io(e),
        })?;
    let md = file.metadata().map_err(OpenError::Io)?;
    if !md.file_type().is_file() {
        return Err(OpenError::NotRegular);
    }
    if !roots.is_empty() {
        let real = real_path(&file).map_err(OpenError::Unverifiable)?;
        if !within(&real, roots) {
            return Err(OpenError::OutsideRoots(real));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("logs");
        let outside = tmp.path().join("etc");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), b"root:x:0:0\n").unwrap();
        std::fs::write(root.join("app.log"), b"ok\n").unwrap();
        (tmp, root, outside)
    }

    #[test]
    fn a_regular_file_under_the_root_opens() {
        let (_t, root, _) = setup();
        let roots = resolve_roots(std::slice::from_ref(&root));
        assert!(open_beneath(&root.join("app.log"), &roots).is_ok());
    }

    #[test]
    fn a_symlinked_directory_does_not_escape() {
        let (_t, root, outside) = setup();
        symlink(&outside, root.join("etcdir")).unwrap();
        let roots = resolve_roots(std::slice::from_ref(&root));
        match open_beneath(&root.join("etcdir/passwd"), &roots) {
            Err(OpenError::OutsideRoots(real)) => assert!(real.ends_with("etc/passwd")),
            other => panic!("opened through a symlinked directory: {other:?}"),
        }
    }

    #[test]
    fn a_final_symlink_is_refused_even_to_a_file_inside() {
        let (_t, root, outside) = setup();
        symlink(outside.join("passwd"), root.join("out.log")).unwrap();
        symlink(root.join("app.log"), root.join("in.log")).unwrap();
        let roots = resolve_roots(std::slice::from_ref(&root));
        assert!(matches!(
            open_beneath(&root.join("out.log"), &roots),
            Err(OpenError::Symlink)
        ));
        assert!(matches!(
            open_beneath(&root.join("in.log"), &roots),
            Err(OpenError::Symlink)
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (_t, root, _) = setup();
        let fifo = root.join("pipe.log");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let roots = resolve_roots(std::slice::from_ref(&root));
        assert!(matches!(
            open_beneath(&fifo, &roots),
            Err(OpenError::NotRegular)
        ));
    }

    #[test]
    fn a_symlinked_root_is_bound_by_its_target() {
        let (t, root, _) = setup();
        let link = t.path().join("var-log");
        symlink(&root, &link).unwrap();
        let roots = resolve_roots(std::slice::from_ref(&link));
        assert!(open_beneath(&link.join("app.log"), &roots).is_ok());
    }
}
