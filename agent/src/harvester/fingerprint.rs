//! File identity: (device, inode) plus a checksum of the file's first bytes,
//! so an inode reused for a new file after rotation is not taken for the old
//! one.
//!
//! The fingerprint covers the first line, capped at `fingerprint_bytes`
//! (default 1 KiB): bytes `0..min(end of first line, fingerprint_bytes)`,
//! newline included. Unlike "the first N bytes", it does not change as the
//! file grows, so it can be taken as soon as the first line is complete. A
//! file whose first line is not complete yet and shorter than
//! `fingerprint_bytes` is not fingerprinted: the harvester waits.

use std::fs::File;
use std::io::{self, Read};

/// The fingerprint of `head` (the file's first bytes, at least
/// `fingerprint_bytes` of them when the file has that many), or `None` when
/// the first line is not complete yet.
pub fn fingerprint(head: &[u8], fingerprint_bytes: usize) -> Option<u64> {
    let window = &head[..head.len().min(fingerprint_bytes)];
    let end = match window.iter().position(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if window.len() >= fingerprint_bytes => window.len(),
        None => return None,
    };
    let covered = &window[..end];
    Some(prefix_fingerprint(covered))
}

/// The fingerprint of exactly the bytes of `head` (a file too short to
/// fingerprint after the wait timed out). Same form as [`fingerprint`]:
/// the covered length in the high 32 bits, so [`matches`] can check it.
pub fn prefix_fingerprint(head: &[u8]) -> u64 {
    (head.len() as u64) << 32 | u64::from(crc32fast::hash(head))
}

/// Whether `file` still starts with the bytes `fp` was taken over (the
/// covered length is in `fp`'s high 32 bits). True for the same file however
/// much it has grown; false once it was truncated and written again.
///
/// # Errors
/// Reading the file failed.
pub fn matches(file: &File, fp: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let k = (fp >> 32) as usize;
    if k == 0 {
        return Ok(false);
    }
    let mut head = vec![0u8; k];
    let mut n = 0;
    while n < k {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => return Ok(false),
            Ok(r) => n += r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(prefix_fingerprint(&head) == fp)
}

/// Reads the head of `file` (from offset 0, without moving its cursor) and
/// fingerprints it.
///
/// # Errors
/// Reading the file failed.
pub fn fingerprint_file(file: &File, fingerprint_bytes: usize) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; fingerprint_bytes];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(fingerprint(&head[..n], fingerprint_bytes))
}

/// Reads the whole of a small reader (tests, fuzzing).
pub fn fingerprint_reader(mut r: impl Read, fingerprint_bytes: usize) -> io::Result<Option<u64>> {
    let mut head = Vec::new();
    r.by_ref()
        .take(fingerprint_bytes as u64)
        .read_to_end(&mut head)?;
    Ok(fingerprint(&head, fingerprint_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_fingerprint_is_stable_as_the_file_grows() {
        let a = fingerprint(b"hello\n", 1024).unwrap();
        assert_eq!(fingerprint(b"hello\nworld\n", 1024), Some(a));
        assert_ne!(fingerprint(b"hellp\n", 1024), Some(a));
    }

    #[test]
    fn short_files_without_a_complete_line_wait() {
        assert_eq!(fingerprint(b"", 1024), None);
        assert_eq!(fingerprint(b"no newline yet", 1024), None);
        // A first line longer than the window: the window is the fingerprint.
        let long = vec![b'x'; 2000];
        let f = fingerprint(&long[..1024], 1024).unwrap();
        assert_eq!(fingerprint(&long, 1024), Some(f));
        assert_eq!(fingerprint_reader(&long[..], 1024).unwrap(), Some(f));
    }

    #[test]
    fn a_prefix_fingerprint_matches_the_grown_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"partial").unwrap();
        let fp = prefix_fingerprint(b"partial");
        std::fs::write(&p, b"partial line completed\nmore\n").unwrap();
        assert!(matches(&File::open(&p).unwrap(), fp).unwrap());
        std::fs::write(&p, b"other").unwrap();
        assert!(!matches(&File::open(&p).unwrap(), fp).unwrap());
        std::fs::write(&p, b"par").unwrap();
        assert!(!matches(&File::open(&p).unwrap(), fp).unwrap());
        let normal = fingerprint(b"first\nsecond\n", 1024).unwrap();
        std::fs::write(&p, b"first\nsecond\nthird\n").unwrap();
        assert!(matches(&File::open(&p).unwrap(), normal).unwrap());
    }
}
