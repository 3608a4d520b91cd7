//! The flight recorder: every command the driver applies, in order, with the time it
//! carried and digests of its reply and outputs, appended to a rotating, size-bounded log
//! (`mini-pubsub serve --record DIR`), so that what a broker did can be replayed, exactly,
//! on a fresh core (`mini-pubsub-sim replay DIR`).
//!
//! The format is `proto/record.proto`: segments of frames, each frame the body's length
//! and CRC32C (little-endian u32s) and then a protobuf `Frame`, as the partition log frames
//! its records.

mod codec;
mod digest;
mod reader;
mod replay;
mod writer;

#[cfg(test)]
mod proptests;

pub use codec::{decode as decode_command, encode as encode_command};
pub use digest::{digest_outputs, digest_reply, digest_state};
pub(crate) use reader::frame_at;
pub use reader::{read_dir, End, Recording, RecordingError, Snapshot, Step};
pub use replay::{ReplayError, Replayed, Replayer};
pub use writer::{Recorder, RECORD_MAX_BYTES_DEFAULT, RECORD_MAX_BYTES_MIN};

/// The generated `pubsub.record` package.
#[allow(clippy::all, clippy::too_many_lines, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pubsub.record.rs"));
}

/// The version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest frame body read back; larger is damage (a command is at most a request).
pub const FRAME_BODY_MAX: usize = 64 * 1024 * 1024;

/// Bytes before a frame's body: its length and its CRC32C.
pub(crate) const FRAME_HEADER: usize = 8;

/// Appends one framed body to `out`.
pub(crate) fn frame(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// The size of the (checked) frame at `at`, header included.
pub(crate) fn frame_size(bytes: &[u8], at: usize) -> usize {
    FRAME_HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
}

/// Bytes of CRC work spent looking for an intact frame after damage, at most; past it the
/// damage counts as followed by one.
const RESYNC_CRC_BUDGET: usize = 64 << 20;

/// The position of the first intact frame at or after `from` whose body `accept` takes, if
/// there is one (within the CRC budget; past it, `from` itself, as if one were found). A
/// log that finds one after damage holds records written after it, so it is not a torn tail.
pub(crate) fn later_frame(bytes: &bytes::Bytes, from: usize, accept: impl Fn(bytes::Bytes) -> bool) -> Option<usize> {
    let mut spent = 0usize;
    for at in from..bytes.len().saturating_sub(FRAME_HEADER) {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > bytes.len() - at - FRAME_HEADER {
            continue;
        }
        spent += len;
        if spent > RESYNC_CRC_BUDGET {
            return Some(from);
        }
        if frame_at(bytes, at).is_ok_and(&accept) {
            return Some(at);
        }
    }
    None
}

/// The unit in which a crash loses or tears a write that was never synced (a disk sector).
pub(crate) const LOST_WRITE_BLOCK_BYTES: u64 = 512;

/// Whether `bytes`, a file's bytes from offset `from` on (a damaged frame up to the next
/// intact one), look like a write a crash lost rather than corruption of what was synced:
/// a whole block of zeros within them; zeros from `from` (where the write began) to the end
/// of its block, at least a frame's length field of them, which no frame written whole has;
/// or zeros at their end from `from` or from a block boundary. A lost block means no sync
/// ended after its write (one would have made it durable), so nothing written after it was
/// synced either.
pub(crate) fn looks_lost(bytes: &[u8], from: u64) -> bool {
    let to = from + bytes.len() as u64;
    let mut block = from.next_multiple_of(LOST_WRITE_BLOCK_BYTES);
    while block + LOST_WRITE_BLOCK_BYTES <= to {
        let at = (block - from) as usize;
        if bytes[at..at + LOST_WRITE_BLOCK_BYTES as usize].iter().all(|b| *b == 0) {
            return true;
        }
        block += LOST_WRITE_BLOCK_BYTES;
    }
    let head = from.next_multiple_of(LOST_WRITE_BLOCK_BYTES);
    if head >= from + 4 && head <= to && bytes[..(head - from) as usize].iter().all(|b| *b == 0) {
        return true;
    }
    let zeros = bytes.iter().rev().take_while(|b| **b == 0).count() as u64;
    let start = to - zeros;
    zeros > 0 && (start == from || start.is_multiple_of(LOST_WRITE_BLOCK_BYTES))
}

/// The name of the segment whose first entry is `seq`.
fn segment_name(seq: u64) -> String {
    format!("{seq:020}.rec")
}
