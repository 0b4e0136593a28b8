//! Byte layouts (see the crate docs) as pure functions over byte slices.
//!
//! **Frozen**: changing any struct or constant here changes the on-disk
//! format. Add a new `StoredRecord` variant or bump `FORMAT_VERSION` instead.

use crate::Seq;
use serde::{Deserialize, Serialize};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"LPWALSEG";
pub(crate) const ACK_MAGIC: &[u8; 8] = b"LPWALACK";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
pub(crate) const ACK_FILE_LEN: usize = 24;
/// crc32 (4) + len (4) + seq (8).
pub(crate) const FRAME_HEADER_LEN: usize = 16;
/// The largest payload one record may carry.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// While resynchronising after corruption, a candidate record's seq must lie
/// within this distance above the last good seq; it keeps random bytes from
/// costing a CRC computation at every offset.
const RESYNC_SEQ_WINDOW: u64 = 1 << 40;

/// The identity of the file a batch was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceId {
    pub device: u64,
    pub inode: u64,
    /// Checksum of the file's first bytes (see the checkpoint crate).
    pub fingerprint: u64,
    /// The path the file had when the batch was read.
    pub path: String,
}

/// One line of a log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Byte offset of the line's first byte in the source file.
    pub offset: u64,
    /// The line without its terminator, as read (not necessarily UTF-8).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// Harvester flags (truncated, partial, …), a bit set.
    pub flags: u8,
}

/// What one WAL record carries: consecutive lines of one file for one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub source: SourceId,
    pub topic: String,
    /// Offset just past the last line's terminator: where reading resumes.
    pub end_offset: u64,
    /// When the lines were read (Unix ms; 0 in records written by format 1).
    pub read_ms: u64,
    /// Opaque to the WAL: how the writer wants the lines shipped (the agent
    /// keeps its per-entry output settings here, so a resend is identical).
    #[serde(with = "serde_bytes")]
    pub meta: Vec<u8>,
    pub lines: Vec<Line>,
}

/// The first record schema: a [`Batch`] without `read_ms` and `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchV1 {
    pub source: SourceId,
    pub topic: String,
    pub end_offset: u64,
    pub lines: Vec<Line>,
}

impl From<BatchV1> for Batch {
    fn from(b: BatchV1) -> Self {
        Batch {
            source: b.source,
            topic: b.topic,
            end_offset: b.end_offset,
            read_ms: 0,
            meta: Vec::new(),
            lines: b.lines,
        }
    }
}

/// The versioned payload of a record; the variant is the schema version.
/// Variants are only ever appended (bincode encodes the variant index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredRecord {
    V1(BatchV1),
    V2(Batch),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Appends a frame for `batch` to `out` with its seq and CRC left blank; see
/// [`seal_frame`].
pub(crate) fn encode_frame_unsealed(out: &mut Vec<u8>, batch: &Batch) -> Result<(), String> {
    // Borrowing encode of the same layout as `StoredRecord::V2(batch)`.
    #[derive(Serialize)]
    enum StoredRef<'a> {
        #[allow(dead_code)]
        V1(&'a BatchV1),
        V2(&'a Batch),
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    bincode::serde::encode_into_std_write(StoredRef::V2(batch), out, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let len = u32::try_from(out.len() - start - FRAME_HEADER_LEN).map_err(|e| e.to_string())?;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Writes `seq` and the CRC into a frame made by [`encode_frame_unsealed`].
pub(crate) fn seal_frame(frame: &mut [u8], seq: Seq) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = frame_crc(&frame[4..16], &frame[FRAME_HEADER_LEN..]);
    frame[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a record payload; `None` for bytes that are not a valid payload.
pub fn decode_payload(payload: &[u8]) -> Option<Batch> {
    match bincode::serde::decode_from_slice::<StoredRecord, _>(payload, bincode_config()) {
        Ok((StoredRecord::V1(batch), used)) if used == payload.len() => Some(batch.into()),
        Ok((StoredRecord::V2(batch), used)) if used == payload.len() => Some(batch),
        _ => None,
    }
}

fn frame_crc(len_and_seq: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_and_seq);
    h.update(payload);
    h.finalize()
}

/// Appends one framed record to `out` (the reference framing; `append`
/// frames with [`encode_frame_unsealed`] + [`seal_frame`], which agree).
#[cfg(test)]
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: Seq, payload: &[u8]) {
    let mut hdr = [0u8; 12];
    hdr[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    hdr[4..].copy_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&frame_crc(&hdr, payload).to_le_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A record whose CRC matches; `total` bytes long including the header.
    Valid {
        seq: Seq,
        payload: &'a [u8],
        total: usize,
    },
    /// Plausible so far, but the buffer ends before the frame does.
    Incomplete,
    /// Not a record.
    Invalid,
}

/// Parses the frame at the start of `buf`, accepting only seqs in
/// `min_seq..=max_seq`.
pub(crate) fn parse_frame(buf: &[u8], min_seq: Seq, max_seq: Seq) -> Frame<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Frame::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&buf[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    if len == 0 || len > MAX_RECORD_BYTES || seq < min_seq || seq > max_seq {
        return Frame::Invalid;
    }
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        return Frame::Incomplete;
    }
    let payload = &buf[FRAME_HEADER_LEN..total];
    if frame_crc(&buf[4..16], payload) != crc {
        return Frame::Invalid;
    }
    Frame::Valid {
        seq,
        payload,
        total,
    }
}

/// The seq bounds a record following `last_seq` must respect: exactly the
/// next one normally, anything in a wide window when resynchronising.
pub(crate) fn seq_bounds(last_seq: Seq, resyncing: bool) -> (Seq, Seq) {
    let min = last_seq.saturating_add(1);
    let max = if resyncing {
        last_seq.saturating_add(RESYNC_SEQ_WINDOW)
    } else {
        min
    };
    (min, max)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub id: u64,
    pub first_seq: Seq,
}

pub(crate) fn encode_segment_header(h: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&h.id.to_le_bytes());
    b[20..28].copy_from_slice(&h.first_seq.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderStatus {
    Valid(SegmentHeader),
    Short,
    BadMagic,
    BadCrc,
    UnknownVersion(u32),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

pub(crate) fn decode_segment_header(b: &[u8]) -> HeaderStatus {
    if b.len() < SEGMENT_HEADER_LEN {
        return HeaderStatus::Short;
    }
    if &b[..8] != SEGMENT_MAGIC {
        return HeaderStatus::BadMagic;
    }
    if crc32fast::hash(&b[..28]) != u32_at(b, 28) {
        return HeaderStatus::BadCrc;
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return HeaderStatus::UnknownVersion(version);
    }
    HeaderStatus::Valid(SegmentHeader {
        id: u64_at(b, 12),
        first_seq: u64_at(b, 20),
    })
}

pub(crate) fn encode_ack(acked: Seq) -> [u8; ACK_FILE_LEN] {
    let mut b = [0u8; ACK_FILE_LEN];
    b[..8].copy_from_slice(ACK_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The acked seq stored in an ack file, or `None` when the bytes are not a
/// valid ack file.
pub(crate) fn decode_ack(b: &[u8]) -> Option<Seq> {
    if b.len() != ACK_FILE_LEN
        || &b[..8] != ACK_MAGIC
        || u32_at(b, 8) != FORMAT_VERSION
        || crc32fast::hash(&b[..20]) != u32_at(b, 20)
    {
        return None;
    }
    Some(u64_at(b, 12))
}

/// Segment file name for an id.
pub(crate) fn segment_file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The id in a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            source: SourceId {
                device: 1,
                inode: 2,
                fingerprint: 3,
                path: "/var/log/a.log".into(),
            },
            topic: "t".into(),
            end_offset: 100,
            read_ms: 1_795_000_000_000,
            meta: vec![1, 2, 3],
            lines: (0..n)
                .map(|i| Line {
                    offset: i as u64 * 10,
                    bytes: vec![b'x'; i],
                    flags: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn v1_payloads_still_decode() {
        let b = batch(3);
        let v1 = BatchV1 {
            source: b.source.clone(),
            topic: b.topic.clone(),
            end_offset: b.end_offset,
            lines: b.lines.clone(),
        };
        let bytes =
            bincode::serde::encode_to_vec(StoredRecord::V1(v1), bincode::config::standard())
                .unwrap();
        let got = decode_payload(&bytes).unwrap();
        assert_eq!(got.lines, b.lines);
        assert_eq!((got.read_ms, got.meta.len()), (0, 0));
        let mut framed = Vec::new();
        encode_frame_unsealed(&mut framed, &b).unwrap();
        assert_eq!(decode_payload(&framed[FRAME_HEADER_LEN..]), Some(b));
    }

    #[test]
    fn sealed_frames_round_trip_and_match_the_reference_framing() {
        let b = batch(3);
        let mut buf = Vec::new();
        encode_frame_unsealed(&mut buf, &b).unwrap();
        seal_frame(&mut buf, 9);
        let Frame::Valid {
            seq,
            payload,
            total,
        } = parse_frame(&buf, 9, 9)
        else {
            panic!("not a valid frame")
        };
        assert_eq!((seq, total), (9, buf.len()));
        assert_eq!(decode_payload(payload), Some(b));
        assert_eq!(decode_payload(&payload[..payload.len() - 1]), None);
        let mut reference = Vec::new();
        encode_frame(&mut reference, 9, payload);
        assert_eq!(reference, buf);
    }

    #[test]
    fn frame_round_trips_and_rejects_bad_seq() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"hello");
        assert_eq!(
            parse_frame(&buf, 7, 7),
            Frame::Valid {
                seq: 7,
                payload: b"hello",
                total: buf.len()
            }
        );
        assert_eq!(parse_frame(&buf, 8, 8), Frame::Invalid);
        assert_eq!(parse_frame(&buf[..buf.len() - 1], 7, 7), Frame::Incomplete);
    }

    #[test]
    fn zeros_are_not_a_frame() {
        assert_eq!(parse_frame(&[0u8; 64], 1, 1), Frame::Invalid);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, b"some payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse_frame(&b, 1, 1 << 40), Frame::Valid { .. }),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn headers_round_trip_and_detect_damage() {
        let h = SegmentHeader {
            id: 5,
            first_seq: 99,
        };
        let b = encode_segment_header(h);
        assert_eq!(decode_segment_header(&b), HeaderStatus::Valid(h));
        let mut bad = b;
        bad[13] ^= 1;
        assert_eq!(decode_segment_header(&bad), HeaderStatus::BadCrc);
        assert_eq!(decode_segment_header(&b[..10]), HeaderStatus::Short);
        assert_eq!(decode_ack(&encode_ack(42)), Some(42));
        assert_eq!(decode_ack(&[0u8; ACK_FILE_LEN]), None);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(12), "00000000000000000012.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000012.seg"),
            Some(12)
        );
        assert_eq!(parse_segment_file_name("12.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000012.seg.corrupt"),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_payload(&bytes);
            let _ = parse_frame(&bytes, 1, u64::MAX);
            let _ = decode_segment_header(&bytes);
            let _ = decode_ack(&bytes);
        }
    }
}
