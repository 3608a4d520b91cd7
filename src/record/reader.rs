//! Reading a recording back: its settings, and its entries in order, segment by segment.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::{codec, pb, FORMAT_VERSION, FRAME_BODY_MAX, FRAME_HEADER};
use crate::core::{At, Command};
use crate::env::Fs;

/// One recorded command, as the broker applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The entry's sequence number: 1 for the recorder's first, one more for each after.
    pub seq: u64,
    /// The time the driver stamped the command with; a replay applies it at the same.
    pub at: At,
    /// The command, decoded.
    pub command: Command,
    /// [`digest_reply`](super::digest_reply) of the broker's reply to it.
    pub reply_digest: u64,
    /// [`digest_outputs`](super::digest_outputs) of the outputs it produced, in order.
    pub outputs_digest: u64,
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The directory cannot be listed, or a segment read.
    #[error("{path}: {error}")]
    Io {
        /// The directory or segment.
        path: PathBuf,
        /// What the filesystem answered.
        error: std::io::Error,
    },
    /// The directory has no `.rec` segment.
    #[error("{0}: holds no recording (no .rec segment)")]
    Empty(PathBuf),
    /// A segment other than the last has a torn or corrupt frame, or any segment breaks
    /// the format (another version, a gap in the entries, a frame that does not decode).
    #[error("{path}: {reason}")]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// What is wrong, and at which byte or entry.
        reason: String,
    },
}

/// A recording directory, read.
#[derive(Debug)]
pub struct Recording {
    /// The broker's effective configuration (TOML, as `mini-pubsub config print` writes).
    pub settings_toml: String,
    /// The broker started on empty storage and no segment was dropped: the recording
    /// replays from its first entry.
    pub from_empty: bool,
    /// The broker's state where the first segment left begins, when the recording does not
    /// replay from an empty broker (its older segments were removed at its bound).
    pub snapshot: Option<Snapshot>,
    /// Every entry, in order.
    pub steps: Vec<Step>,
    /// Where reading stopped early: a torn or damaged last frame (a crash mid-write).
    pub cut: Option<String>,
    /// The broker stopped cleanly: when (monotonic ms), and the digest of its state then.
    pub end: Option<End>,
}

/// The broker's state where a segment begins (see [`Broker::snapshot`](crate::core::Broker::snapshot)).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The sequence number of the first entry applied after it.
    pub next_seq: u64,
    /// The state, as [`Broker::from_snapshot`](crate::core::Broker::from_snapshot) reads it.
    pub state: Bytes,
}

/// How a recording ended, when its broker stopped cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The broker's monotonic clock when it stopped, in milliseconds.
    pub now_ms: u64,
    /// [`digest_state`](super::digest_state) of the broker at `now_ms`.
    pub state_digest: u64,
}

/// Reads every segment of the recording in `dir`, oldest first.
pub fn read_dir(fs: &dyn Fs, dir: &Path) -> Result<Recording, RecordingError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| RecordingError::Io { path, error }
    };
    let mut names: Vec<String> =
        fs.list_dir(dir).map_err(io(dir))?.into_iter().filter(|n| n.ends_with(".rec")).collect();
    names.sort();
    if names.is_empty() {
        return Err(RecordingError::Empty(dir.to_path_buf()));
    }
    let mut recording = Recording {
        settings_toml: String::new(),
        from_empty: false,
        snapshot: None,
        steps: Vec::new(),
        cut: None,
        end: None,
    };
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        let bytes = Bytes::from(fs.read(&path).map_err(io(&path))?);
        let damaged = |reason: String| RecordingError::Damaged { path: path.clone(), reason };
        let mut at = 0;
        while at < bytes.len() {
            let body = match frame_at(&bytes, at) {
                Ok(body) => body,
                Err(reason) if i + 1 == names.len() => {
                    recording.cut = Some(format!("{}: {reason} at byte {at}", path.display()));
                    break;
                }
                Err(reason) => return Err(damaged(format!("{reason} at byte {at}"))),
            };
            at += FRAME_HEADER + body.len();
            let frame = pb::Frame::decode(body).map_err(|e| damaged(format!("a frame does not decode: {e}")))?;
            match frame.kind {
                Some(pb::frame::Kind::Start(start)) => {
                    if start.version != FORMAT_VERSION {
                        return Err(damaged(format!(
                            "format version {}; this build reads version {FORMAT_VERSION}",
                            start.version
                        )));
                    }
                    if i == 0 {
                        recording.settings_toml = start.settings_toml;
                        recording.from_empty = start.from_empty;
                    }
                    let expected = recording.steps.last().map_or(start.first_seq, |s| s.seq + 1);
                    if start.first_seq != expected {
                        return Err(damaged(format!("starts at entry {}, expected {expected}", start.first_seq)));
                    }
                }
                Some(pb::frame::Kind::Entry(entry)) => {
                    let command =
                        entry.command.ok_or_else(|| damaged(format!("entry {} has no command", entry.seq)))?;
                    let command = codec::decode(command).map_err(|e| damaged(format!("entry {}: {e}", entry.seq)))?;
                    recording.steps.push(Step {
                        seq: entry.seq,
                        at: At { now_ms: entry.now_ms, wall_ms: entry.wall_ms },
                        command,
                        reply_digest: entry.reply_digest,
                        outputs_digest: entry.outputs_digest,
                    });
                }
                Some(pb::frame::Kind::End(end)) => {
                    let last = recording.steps.last().map_or(0, |s| s.seq);
                    if end.last_seq != last {
                        return Err(damaged(format!("ends after entry {}, but the last is {last}", end.last_seq)));
                    }
                    recording.end = Some(End { now_ms: end.now_ms, state_digest: end.state_digest });
                }
                // Only the first segment's snapshot is needed: the replay begins there.
                Some(pb::frame::Kind::Snapshot(snapshot)) if i == 0 && recording.steps.is_empty() => {
                    recording.snapshot = Some(Snapshot { next_seq: snapshot.next_seq, state: snapshot.state });
                }
                Some(pb::frame::Kind::Snapshot(_)) => {}
                None => return Err(damaged("a frame of no kind".to_string())),
            }
        }
    }
    Ok(recording)
}

/// The body of the frame at `at`, checked against its length and CRC.
pub(crate) fn frame_at(bytes: &Bytes, at: usize) -> Result<Bytes, String> {
    let header = bytes.get(at..at + FRAME_HEADER).ok_or("a torn frame header")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > FRAME_BODY_MAX {
        return Err(format!("a frame of {len} bytes, more than {FRAME_BODY_MAX}"));
    }
    let start = at + FRAME_HEADER;
    if bytes.len() < start + len {
        return Err("a torn frame".to_string());
    }
    let body = bytes.slice(start..start + len);
    if crc32c::crc32c(&body) != crc {
        return Err("a frame whose CRC does not match".to_string());
    }
    Ok(body)
}
