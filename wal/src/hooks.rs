//! The seam for fault injection: every write, sync, create, rename and
//! truncate the WAL does is announced to an [`IoHooks`] first, which may fail
//! it. Production uses [`NoHooks`].

use std::io;
use std::path::Path;

/// The kind of I/O about to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Writing record bytes or a header to a segment.
    Write,
    /// fdatasync of a segment or fsync of the directory.
    Sync,
    /// Creating a segment or the ack file's temporary.
    Create,
    /// Replacing the ack file.
    Rename,
    /// Truncating a torn tail, or deleting an acknowledged segment.
    Remove,
}

/// Called before each I/O operation; an `Err` is returned to the caller as if
/// the operation itself had failed.
pub trait IoHooks: Send + Sync + 'static {
    /// # Errors
    /// The error to inject, if any.
    fn before(&self, op: IoOp, path: &Path) -> io::Result<()>;
}

/// No fault injection.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl IoHooks for NoHooks {
    fn before(&self, _op: IoOp, _path: &Path) -> io::Result<()> {
        Ok(())
    }
}
