//! Container runtime log files: the CRI format (containerd, CRI-O; what
//! Kubernetes writes under `/var/log/pods`) and Docker's `json-file` driver.
//!
//! ```text
//! CRI:    2026-12-01T10:00:00.123456789Z stdout F GET / 200
//!         2026-12-01T10:00:00.123456789Z stderr P first 16 KiB of a long line…
//! Docker: {"log":"GET / 200\n","stream":"stdout","time":"2026-12-01T10:00:00.123456789Z"}
//! ```
//!
//! A runtime splits a long line into pieces: CRI tags every piece but the
//! last `P` (partial) and the last `F`; Docker leaves the `\n` off all but
//! the last. [`Decoder`] joins the pieces of one stream into one line. A
//! line of another stream arriving first ends the pending one, which is then
//! emitted with [`PARTIAL`] — so lines always leave in file order and a
//! resume offset never lies behind a line already emitted.
//!
//! # Stored form
//!
//! A decoded line is stored in the WAL as `<time> <stream> <message>` with
//! the flag [`CONTAINER`]: the runtime's time as written (RFC 3339, checked
//! here), `stdout` or `stderr`, then the message bytes. The event encoder
//! splits it with [`split_stored`] and ships `message`, `stream` and the
//! runtime's time as `@timestamp`. A line that is not in the entry's format
//! is stored as read, with [`MALFORMED`], and shipped as a plain line: it is
//! never dropped.
//!
//! While pieces are pending, [`Decoder::pending_offset`] is the first
//! piece's offset, so the file's resume offset stays there and a restart
//! reads the whole line again (the multiline joiner's rule).
//!
//! # File names
//!
//! [`KubeRef::from_path`] takes pod, namespace and container from the file
//! name Kubernetes gives a container's log:
//! `…/containers/<pod>_<namespace>_<container>-<container id>.log` (the
//! kubelet's symlinks) and `…/pods/<namespace>_<pod>_<pod uid>/<container>/<n>.log`;
//! Docker's `…/<id>/<id>-json.log` gives the container id.

use super::lines::{SplitLine, PARTIAL, TRUNCATED};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

/// The line's bytes are the stored form `<time> <stream> <message>`.
pub const CONTAINER: u8 = 8;
/// The line is not in the entry's container format: stored as read.
pub const MALFORMED: u8 = 16;

/// A pending partial line is emitted (with [`PARTIAL`]) after the file has
/// not grown for this long: its runtime died or stopped mid-line.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The format of an entry's files. JSON: `"cri"`, `"docker"`, `"auto"`
/// (each line: `{` starts a Docker line, anything else is CRI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerFormat {
    Cri,
    Docker,
    Auto,
}

/// The output stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"stdout" => Some(Self::Stdout),
            b"stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// One piece of a line, as a runtime wrote it.
#[derive(Debug, PartialEq, Eq)]
struct Piece<'a> {
    time: Cow<'a, str>,
    stream: Stream,
    /// More pieces of this line follow.
    partial: bool,
    message: Cow<'a, [u8]>,
}

fn valid_time(t: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(t).is_ok()
}

/// `<time> <stream> <P|F> <message>`; the message may be empty.
fn parse_cri(line: &[u8]) -> Option<Piece<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = Stream::parse(parts.next()?)?;
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let message = parts.next().unwrap_or_default();
    valid_time(time).then_some(Piece {
        time: Cow::Borrowed(time),
        stream,
        partial,
        message: Cow::Borrowed(message),
    })
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// `{"log": …, "stream": …, "time": …}` (other keys, such as `attrs`, are
/// ignored); a `log` without its final `\n` is partial.
fn parse_docker(line: &[u8]) -> Option<Piece<'_>> {
    let d: DockerLine<'_> = serde_json::from_slice(line).ok()?;
    let stream = Stream::parse(d.stream.as_bytes())?;
    if !valid_time(&d.time) {
        return None;
    }
    let (partial, message) = match d.log {
        Cow::Borrowed(s) => {
            let (p, m) = strip_newline(s);
            (p, Cow::Borrowed(m.as_bytes()))
        }
        Cow::Owned(s) => {
            let (p, m) = strip_newline(&s);
            (p, Cow::Owned(m.as_bytes().to_vec()))
        }
    };
    Some(Piece {
        time: d.time,
        stream,
        partial,
        message,
    })
}

/// (whether the piece is partial, the text without its line end).
fn strip_newline(s: &str) -> (bool, &str) {
    match s.strip_suffix('\n') {
        Some(m) => (false, m.strip_suffix('\r').unwrap_or(m)),
        None => (true, s),
    }
}

fn parse(format: ContainerFormat, line: &[u8]) -> Option<Piece<'_>> {
    match format {
        ContainerFormat::Cri => parse_cri(line),
        ContainerFormat::Docker => parse_docker(line),
        ContainerFormat::Auto if line.first() == Some(&b'{') => parse_docker(line),
        ContainerFormat::Auto => parse_cri(line),
    }
}

/// A line being joined from its pieces.
#[derive(Debug, Clone)]
struct Pending {
    stream: Stream,
    /// The stored form so far: prefix and the pieces' messages.
    line: SplitLine,
}

/// The per-file joining state.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    pending: Option<Pending>,
}

impl Decoder {
    /// The offset of the pending line's first piece, if one is pending.
    pub fn pending_offset(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.line.offset)
    }

    /// Decodes lines in file order; finished lines are appended to `out`.
    /// A joined line keeps at most `max_bytes` of message ([`TRUNCATED`]).
    pub fn feed(
        &mut self,
        format: ContainerFormat,
        max_bytes: usize,
        lines: Vec<SplitLine>,
        out: &mut Vec<SplitLine>,
    ) {
        for line in lines {
            let Some(piece) = parse(format, &line.bytes) else {
                self.flush(out);
                out.push(SplitLine {
                    flags: line.flags | MALFORMED,
                    ..line
                });
                continue;
            };
            if self
                .pending
                .as_ref()
                .is_some_and(|p| p.stream != piece.stream)
            {
                self.flush(out);
            }
            let partial = piece.partial;
            match self.pending.as_mut() {
                Some(p) => {
                    let prefix = stored_prefix_len(&p.line.bytes);
                    let room = (prefix + max_bytes).saturating_sub(p.line.bytes.len());
                    let take = piece.message.len().min(room);
                    p.line.bytes.extend_from_slice(&piece.message[..take]);
                    if take < piece.message.len() {
                        p.line.flags |= TRUNCATED;
                    }
                    p.line.flags |= line.flags & TRUNCATED;
                }
                None => {
                    let mut bytes = Vec::with_capacity(piece.time.len() + 8 + piece.message.len());
                    bytes.extend_from_slice(piece.time.as_bytes());
                    bytes.push(b' ');
                    bytes.extend_from_slice(piece.stream.as_str().as_bytes());
                    bytes.push(b' ');
                    let take = piece.message.len().min(max_bytes);
                    bytes.extend_from_slice(&piece.message[..take]);
                    let mut flags = CONTAINER | (line.flags & TRUNCATED);
                    if take < piece.message.len() {
                        flags |= TRUNCATED;
                    }
                    self.pending = Some(Pending {
                        stream: piece.stream,
                        line: SplitLine {
                            offset: line.offset,
                            bytes,
                            flags,
                        },
                    });
                }
            }
            if !partial {
                if let Some(p) = self.pending.take() {
                    out.push(p.line);
                }
            }
        }
    }

    /// Emits the pending line, if any, marked [`PARTIAL`]: its last piece
    /// never came.
    pub fn flush(&mut self, out: &mut Vec<SplitLine>) {
        if let Some(mut p) = self.pending.take() {
            p.line.flags |= PARTIAL;
            out.push(p.line);
        }
    }
}

/// Where the message starts in a stored line (after two spaces; the
/// line's length when they are missing).
pub fn stored_prefix_len(stored: &[u8]) -> usize {
    let mut spaces = 0;
    for (i, b) in stored.iter().enumerate() {
        if *b == b' ' {
            spaces += 1;
            if spaces == 2 {
                return i + 1;
            }
        }
    }
    stored.len()
}

/// A stored line's parts: (runtime time, stream, message). `None` when
/// the bytes are not in the stored form.
pub fn split_stored(stored: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut parts = stored.splitn(3, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = Stream::parse(parts.next()?)?;
    Some((time, stream.as_str(), parts.next().unwrap_or_default()))
}

/// What a container log's file name tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KubeRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// A Kubernetes object name part (DNS-1123 label or subdomain): never
/// holds `_`, so `_` separates the parts of a file name unambiguously.
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl KubeRef {
    /// Reads the names from a container log's path; `None` for a path of
    /// no known layout.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        // …/containers/<pod>_<namespace>_<container>-<id>.log
        if let Some(stem) = name.strip_suffix(".log") {
            let parts: Vec<&str> = stem.split('_').collect();
            if let [pod, namespace, rest] = parts.as_slice() {
                if let Some((container, id)) = rest.rsplit_once('-') {
                    if dns_name(pod)
                        && dns_name(namespace)
                        && dns_name(container)
                        && container_id(id)
                    {
                        return Some(Self {
                            namespace: Some((*namespace).to_string()),
                            pod: Some((*pod).to_string()),
                            container: Some(container.to_string()),
                            container_id: Some(id.to_string()),
                            ..Self::default()
                        });
                    }
                }
            }
            // …/pods/<namespace>_<pod>_<uid>/<container>/<n>.log
            let dir = path.parent()?;
            let container = dir.file_name()?.to_str()?;
            let pod_dir = dir.parent()?.file_name()?.to_str()?;
            let parts: Vec<&str> = pod_dir.split('_').collect();
            if let [namespace, pod, uid] = parts.as_slice() {
                if !stem.is_empty()
                    && stem.bytes().all(|b| b.is_ascii_digit())
                    && dns_name(namespace)
                    && dns_name(pod)
                    && dns_name(container)
                    && !uid.is_empty()
                    && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                {
                    return Some(Self {
                        namespace: Some((*namespace).to_string()),
                        pod: Some((*pod).to_string()),
                        pod_uid: Some((*uid).to_string()),
                        container: Some(container.to_string()),
                        ..Self::default()
                    });
                }
            }
        }
        // Docker: …/<id>/<id>-json.log
        let id = name.strip_suffix("-json.log")?;
        let dir = path.parent()?.file_name()?.to_str()?;
        (container_id(id) && dir == id).then(|| Self {
            container_id: Some(id.to_string()),
            ..Self::default()
        })
    }

    /// The event fields: `kubernetes.{namespace, pod.{name, uid},
    /// container.name}` and `container.id`, those that are known.
    pub fn fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut out = Vec::new();
        let mut k8s = serde_json::Map::new();
        if let Some(ns) = &self.namespace {
            k8s.insert("namespace".into(), ns.clone().into());
        }
        let mut pod = serde_json::Map::new();
        if let Some(p) = &self.pod {
            pod.insert("name".into(), p.clone().into());
        }
        if let Some(u) = &self.pod_uid {
            pod.insert("uid".into(), u.clone().into());
        }
        if !pod.is_empty() {
            k8s.insert("pod".into(), pod.into());
        }
        if let Some(c) = &self.container {
            k8s.insert("container".into(), serde_json::json!({ "name": c }));
        }
        if !k8s.is_empty() {
            out.push(("kubernetes", k8s.into()));
        }
        if let Some(id) = &self.container_id {
            out.push(("container", serde_json::json!({ "id": id })));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::harvester::lines::line as l;

    fn run(format: ContainerFormat, lines: &[(u64, &str)]) -> (Vec<(u64, String, u8)>, Decoder) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.feed(
            format,
            1 << 20,
            lines.iter().map(|(o, s)| l(*o, s)).collect(),
            &mut out,
        );
        let out = out
            .into_iter()
            .map(|x| (x.offset, String::from_utf8(x.bytes).unwrap(), x.flags))
            .collect();
        (out, d)
    }

    const T: &str = "2026-12-01T10:00:00.123456789Z";

    #[test]
    fn cri_lines_are_decoded_and_partials_joined() {
        let (out, d) = run(
            ContainerFormat::Cri,
            &[
                (0, &format!("{T} stdout F GET / 200")),
                (50, &format!("{T} stderr P first ")),
                (90, &format!("{T} stderr P second ")),
                (130, &format!("{T} stderr F third")),
                (170, &format!("{T} stdout F ")),
                (210, &format!("{T} stdout P pending")),
            ],
        );
        assert_eq!(
            out,
            vec![
                (0, format!("{T} stdout GET / 200"), CONTAINER),
                (50, format!("{T} stderr first second third"), CONTAINER),
                (170, format!("{T} stdout "), CONTAINER),
            ]
        );
        assert_eq!(d.pending_offset(), Some(210));
    }

    #[test]
    fn docker_lines_are_decoded_and_partials_joined() {
        let (out, d) = run(
            ContainerFormat::Docker,
            &[
                (
                    0,
                    r#"{"log":"hello \"x\"\n","stream":"stdout","time":"2026-12-01T10:00:00.1Z"}"#,
                ),
                (
                    80,
                    r#"{"log":"part one, ","stream":"stderr","time":"2026-12-01T10:00:01Z"}"#,
                ),
                (
                    160,
                    r#"{"log":"part two\r\n","stream":"stderr","time":"2026-12-01T10:00:01Z","attrs":{"a":"b"}}"#,
                ),
            ],
        );
        assert_eq!(
            out,
            vec![
                (
                    0,
                    "2026-12-01T10:00:00.1Z stdout hello \"x\"".into(),
                    CONTAINER
                ),
                (
                    80,
                    "2026-12-01T10:00:01Z stderr part one, part two".into(),
                    CONTAINER
                ),
            ]
        );
        assert_eq!(d.pending_offset(), None);
    }

    #[test]
    fn another_stream_ends_a_pending_line_as_partial_in_file_order() {
        let (out, d) = run(
            ContainerFormat::Cri,
            &[
                (0, &format!("{T} stderr P half")),
                (40, &format!("{T} stdout F whole")),
            ],
        );
        assert_eq!(
            out,
            vec![
                (0, format!("{T} stderr half"), CONTAINER | PARTIAL),
                (40, format!("{T} stdout whole"), CONTAINER),
            ]
        );
        assert_eq!(d.pending_offset(), None);
    }

    #[test]
    fn lines_not_in_the_format_are_kept_as_read_and_marked() {
        let (out, _) = run(
            ContainerFormat::Cri,
            &[
                (0, "plain text"),
                (11, "yesterday stdout F no time"),
                (40, &format!("{T} stdin F bad stream")),
                (90, &format!("{T} stdout X bad tag")),
            ],
        );
        assert!(out.iter().all(|(_, _, f)| *f == MALFORMED), "{out:?}");
        assert_eq!(out[0].1, "plain text");
        let (out, _) = run(
            ContainerFormat::Docker,
            &[(0, "{\"log\":1}"), (9, "not json")],
        );
        assert!(out.iter().all(|(_, _, f)| *f == MALFORMED), "{out:?}");
    }

    #[test]
    fn auto_tells_the_formats_apart_per_line() {
        let (out, _) = run(
            ContainerFormat::Auto,
            &[
                (0, &format!("{T} stdout F cri")),
                (
                    50,
                    &format!(r#"{{"log":"docker\n","stream":"stderr","time":"{T}"}}"#),
                ),
            ],
        );
        assert_eq!(out[0].1, format!("{T} stdout cri"));
        assert_eq!(out[1].1, format!("{T} stderr docker"));
    }

    #[test]
    fn joined_lines_are_capped() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.feed(
            ContainerFormat::Cri,
            8,
            vec![
                l(0, &format!("{T} stdout P 12345")),
                l(50, &format!("{T} stdout F 67890")),
            ],
            &mut out,
        );
        assert_eq!(out[0].bytes, format!("{T} stdout 12345678").as_bytes());
        assert_eq!(out[0].flags, CONTAINER | TRUNCATED);
        let (time, stream, msg) = split_stored(&out[0].bytes).unwrap();
        assert_eq!((time, stream, msg), (T, "stdout", &b"12345678"[..]));
    }

    #[test]
    fn kubernetes_names_come_from_the_file_name() {
        let id = "a".repeat(64);
        let k = KubeRef::from_path(Path::new(&format!(
            "/var/log/containers/web-7d9f_shop_nginx-{id}.log"
        )))
        .unwrap();
        assert_eq!(k.pod.as_deref(), Some("web-7d9f"));
        assert_eq!(k.namespace.as_deref(), Some("shop"));
        assert_eq!(k.container.as_deref(), Some("nginx"));
        assert_eq!(k.container_id.as_deref(), Some(id.as_str()));
        let k = KubeRef::from_path(Path::new(
            "/var/log/pods/shop_web-7d9f_0f1e2d3c-aaaa-bbbb-cccc-1234567890ab/nginx/3.log",
        ))
        .unwrap();
        assert_eq!(
            (
                k.namespace.as_deref(),
                k.pod.as_deref(),
                k.container.as_deref()
            ),
            (Some("shop"), Some("web-7d9f"), Some("nginx"))
        );
        assert_eq!(
            k.pod_uid.as_deref(),
            Some("0f1e2d3c-aaaa-bbbb-cccc-1234567890ab")
        );
        let k = KubeRef::from_path(Path::new(&format!(
            "/var/lib/docker/containers/{id}/{id}-json.log"
        )))
        .unwrap();
        assert_eq!(k.container_id.as_deref(), Some(id.as_str()));
        assert!(k.pod.is_none());
        for other in [
            "/var/log/syslog",
            "/var/log/a_b_c.log",
            "/var/log/containers/x.log",
        ] {
            assert_eq!(KubeRef::from_path(Path::new(other)), None, "{other}");
        }
        let fields = KubeRef::from_path(Path::new(&format!(
            "/var/log/containers/web_shop_nginx-{id}.log"
        )))
        .unwrap()
        .fields();
        assert_eq!(fields[0].1["pod"]["name"], "web");
        assert_eq!(fields[0].1["container"]["name"], "nginx");
        assert_eq!(fields[1].1["id"], id);
    }

    proptest! {
        /// Whatever the bytes: no panic, every line comes out once in file
        /// order or is still pending, and the pending offset is never behind
        /// a line emitted.
        #[test]
        fn any_input_is_decoded_or_kept(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,20}",
                    "(stdout|stderr) (P|F) [a-z ]{0,10}".prop_map(|s| format!("{T} {s}")),
                    "[a-z]{0,5}".prop_map(|s| format!(r#"{{"log":"{s}\n","stream":"stdout","time":"{T}"}}"#)),
                ],
                0..30,
            ),
            fmt in prop_oneof![Just(ContainerFormat::Cri), Just(ContainerFormat::Docker), Just(ContainerFormat::Auto)],
        ) {
            let input: Vec<SplitLine> = lines
                .iter()
                .enumerate()
                .map(|(i, s)| l(i as u64 * 100, s))
                .collect();
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.feed(fmt, 64, input, &mut out);
            let offsets: Vec<u64> = out.iter().map(|x| x.offset).collect();
            prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            if let (Some(p), Some(last)) = (d.pending_offset(), offsets.last()) {
                prop_assert!(p > *last);
            }
            for x in &out {
                if x.flags & CONTAINER != 0 {
                    prop_assert!(split_stored(&x.bytes).is_some());
                }
            }
        }
    }
}
