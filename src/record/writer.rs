//! Writing a recording. The driver encodes each applied command into a buffer as it goes;
//! at the end of a turn in which the buffer reached [`FLUSH_BYTES`], and at every
//! checkpoint (about once a second), the buffer goes to the recorder's own thread, which
//! appends it to the current segment. The driver never waits on the disk for the
//! recording (only when the writer is [`BUFFERS_QUEUED_MAX`] buffers behind:
//! back-pressure, not loss); a crash loses at most the last second or so of it. A segment
//! that reaches an eighth of the recording's bound is closed and a new one begun; the
//! oldest segments are removed while the recording is over its bound.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use prost::Message;

use super::{codec, frame, pb, segment_name, FORMAT_VERSION, FRAME_HEADER};
use crate::core::{At, Command};
use crate::env::{Fs, FsFile};

/// `--record-max-bytes` when it is not given: 1 GiB.
pub const RECORD_MAX_BYTES_DEFAULT: u64 = 1 << 30;
/// The smallest bound a recording may have: 8 MiB (eight segments of 1 MiB).
pub const RECORD_MAX_BYTES_MIN: u64 = 8 << 20;
/// A recording is kept in about this many segments.
const SEGMENTS: u64 = 8;
/// Buffers waiting for the writer thread; past it the driver waits.
pub const BUFFERS_QUEUED_MAX: usize = 64;
/// What the driver gathers before it hands a buffer to the writer thread (at the end of a
/// turn), unless a checkpoint or the stop comes first.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// `Frame.entry`: field 2, length-delimited.
const FRAME_ENTRY_TAG: u8 = 2 << 3 | 2;
/// `Entry.reply_digest`: field 5, fixed64.
const REPLY_DIGEST_TAG: u8 = 5 << 3 | 1;
/// `Entry.outputs_digest`: field 6, fixed64.
const OUTPUTS_DIGEST_TAG: u8 = 6 << 3 | 1;
/// The two digest fields: a tag byte and eight bytes each.
const DIGEST_FIELDS_LEN: usize = 2 * 9;

/// What the driver sends the writer thread.
enum ToWriter {
    /// Frames whose first entry is `first_seq` (a segment may begin before them).
    Frames { first_seq: u64, bytes: Vec<u8> },
    /// The last frames (the `End`); the writer syncs, answers, and stops.
    Finish { bytes: Vec<u8>, done: mpsc::SyncSender<()> },
}

/// Appends the commands a driver applies to a recording directory.
pub struct Recorder {
    /// Frames of this turn.
    buffer: Vec<u8>,
    /// The sequence number of the buffer's first entry.
    buffer_first_seq: u64,
    next_seq: u64,
    /// Where the entry `begin` started and `end` has not finished begins in the buffer.
    open_frame: Option<usize>,
    writer: Option<mpsc::SyncSender<ToWriter>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The writer thread's side: the files.
struct Segments {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    max_bytes: u64,
    settings_toml: String,
    /// Closed segments, oldest first: (name, bytes).
    closed: VecDeque<(String, u64)>,
    file: Box<dyn FsFile>,
    file_size: u64,
    file_name: String,
}

impl Recorder {
    /// Starts a recording in `dir` (created if missing; it must hold no recording), bounded
    /// by `max_bytes`. `settings_toml` is the broker's effective configuration; `from_empty`
    /// says the broker started on empty storage, so the recording replays from its start.
    pub fn create(
        fs: Arc<dyn Fs>,
        dir: &Path,
        max_bytes: u64,
        settings_toml: String,
        from_empty: bool,
    ) -> io::Result<Self> {
        if max_bytes < RECORD_MAX_BYTES_MIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record_max_bytes: {max_bytes}; the least is {RECORD_MAX_BYTES_MIN} (8 MiB)"),
            ));
        }
        fs.create_dir_all(dir)?;
        if let Some(old) = fs.list_dir(dir)?.into_iter().find(|n| n.ends_with(".rec")) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already holds a recording ({old}); record into an empty directory", dir.display()),
            ));
        }
        let name = segment_name(1);
        let file = fs.open(&dir.join(&name), true)?;
        let mut segments = Segments {
            fs,
            dir: dir.to_path_buf(),
            max_bytes,
            settings_toml,
            closed: VecDeque::new(),
            file,
            file_size: 0,
            file_name: name,
        };
        segments.write(&segments.start_frame(1, from_empty))?;
        segments.fs.sync_dir(&segments.dir)?;
        let (writer, frames) = mpsc::sync_channel(BUFFERS_QUEUED_MAX);
        let thread = std::thread::Builder::new().name("flight-recorder".into()).spawn(move || segments.run(frames))?;
        Ok(Recorder {
            buffer: Vec::new(),
            buffer_first_seq: 1,
            next_seq: 1,
            open_frame: None,
            writer: Some(writer),
            thread: Some(thread),
        })
    }

    /// Starts the entry of a command about to be applied: its sequence number, time and
    /// the command are encoded now, moving its fields into the protobuf form and back, so
    /// nothing is copied but into the buffer. [`Recorder::end`] adds the digests of what
    /// applying it produced. Returns the command, unchanged.
    pub fn begin(&mut self, at: At, command: Command) -> Command {
        if self.writer.is_none() {
            return command;
        }
        if self.buffer.is_empty() {
            self.buffer_first_seq = self.next_seq;
        }
        let mut entry = pb::Entry {
            seq: self.next_seq,
            now_ms: at.now_ms,
            wall_ms: at.wall_ms,
            command: Some(codec::into_pb(command)),
            reply_digest: 0,
            outputs_digest: 0,
        };
        self.next_seq += 1;
        // Frame { entry: Entry { seq, now_ms, wall_ms, command, reply_digest, outputs_digest } }:
        // the digests are two fixed64 fields at the end, added by `end`.
        let entry_len = entry.encoded_len() + DIGEST_FIELDS_LEN;
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; FRAME_HEADER]);
        self.buffer.push(FRAME_ENTRY_TAG);
        prost::encoding::encode_varint(entry_len as u64, &mut self.buffer);
        entry.encode(&mut self.buffer).expect("a Vec grows as needed");
        self.open_frame = Some(start);
        let command = entry.command.take().expect("set above");
        codec::decode(command).expect("a command's own protobuf form decodes")
    }

    /// Ends the entry [`Recorder::begin`] started with the digests of the command's reply
    /// and outputs.
    pub fn end(&mut self, reply_digest: u64, outputs_digest: u64) {
        let Some(start) = self.open_frame.take() else { return };
        self.buffer.push(REPLY_DIGEST_TAG);
        self.buffer.extend_from_slice(&reply_digest.to_le_bytes());
        self.buffer.push(OUTPUTS_DIGEST_TAG);
        self.buffer.extend_from_slice(&outputs_digest.to_le_bytes());
        let body = &self.buffer[start + FRAME_HEADER..];
        let (len, crc) = ((body.len() as u32).to_le_bytes(), crc32c::crc32c(body).to_le_bytes());
        self.buffer[start..start + 4].copy_from_slice(&len);
        self.buffer[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// At the end of a driver turn: hands what was recorded to the writer thread once it
    /// is [`FLUSH_BYTES`] or more, so a busy broker wakes the writer once per batch of
    /// turns rather than once per turn. [`Recorder::flush`] hands it over whatever its size.
    pub fn turn_ended(&mut self) {
        if self.buffer.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Hands what was recorded since the last flush to the writer thread (the driver
    /// calls it at each checkpoint, about once a second, and when it stops). If the writer
    /// has stopped (a write failed, and it said so in the log), the recording stops here;
    /// the broker goes on.
    pub fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let Some(writer) = &self.writer else { return };
        let bytes = std::mem::take(&mut self.buffer);
        if writer.send(ToWriter::Frames { first_seq: self.buffer_first_seq, bytes }).is_err() {
            self.writer = None;
        }
    }

    /// Ends the recording (the broker stops): an `End` frame with the digest of the
    /// broker's state at `now_ms` (see [`digest_state`](super::digest_state)), then the
    /// writer writes everything, syncs, and stops.
    pub fn finish(&mut self, now_ms: u64, state_digest: u64) {
        self.flush();
        let Some(writer) = self.writer.take() else { return };
        let end = pb::End { last_seq: self.next_seq - 1, now_ms, state_digest };
        let mut bytes = Vec::new();
        frame(&pb::Frame { kind: Some(pb::frame::Kind::End(end)) }.encode_to_vec(), &mut bytes);
        let (done, written) = mpsc::sync_channel(1);
        if writer.send(ToWriter::Finish { bytes, done }).is_ok() {
            let _ = written.recv();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    /// A recorder dropped without `finish` (the driver stopped on a broken invariant)
    /// still writes what it was given.
    fn drop(&mut self) {
        self.flush();
        self.writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Segments {
    /// Writes what the driver sends until it finishes or goes away. After a failed write
    /// it logs why and drops the rest, so the driver is never held up by a dead disk.
    fn run(mut self, frames: mpsc::Receiver<ToWriter>) {
        let mut failed = false;
        while let Ok(message) = frames.recv() {
            let (first_seq, bytes, done) = match message {
                ToWriter::Frames { first_seq, bytes } => (Some(first_seq), bytes, None),
                ToWriter::Finish { bytes, done } => (None, bytes, Some(done)),
            };
            if !failed {
                let written = match first_seq {
                    Some(seq) => self.rotate_if_full(seq).and_then(|()| self.write(&bytes)),
                    None => self.write(&bytes).and_then(|()| self.file.sync_data()),
                };
                if let Err(error) = written {
                    tracing::error!(dir = %self.dir.display(), %error,
                        "the flight recorder cannot write; the recording stops here (the broker goes on)");
                    failed = true;
                }
            }
            if let Some(done) = done {
                let _ = done.send(());
                return;
            }
        }
    }

    fn start_frame(&self, first_seq: u64, from_empty: bool) -> Vec<u8> {
        let start =
            pb::Start { version: FORMAT_VERSION, settings_toml: self.settings_toml.clone(), first_seq, from_empty };
        let mut bytes = Vec::new();
        frame(&pb::Frame { kind: Some(pb::frame::Kind::Start(start)) }.encode_to_vec(), &mut bytes);
        bytes
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.file_size)?;
        self.file_size += bytes.len() as u64;
        Ok(())
    }

    /// Begins a new segment at entry `first_seq` when the current one is full, and removes
    /// the oldest segments while the recording is over its bound.
    fn rotate_if_full(&mut self, first_seq: u64) -> io::Result<()> {
        if self.file_size < self.max_bytes / SEGMENTS {
            return Ok(());
        }
        self.file.sync_data()?;
        let name = segment_name(first_seq);
        self.file = self.fs.open(&self.dir.join(&name), true)?;
        self.closed.push_back((std::mem::replace(&mut self.file_name, name), self.file_size));
        self.file_size = 0;
        let start = self.start_frame(first_seq, false);
        self.write(&start)?;
        let mut total: u64 = self.closed.iter().map(|(_, size)| size).sum::<u64>() + self.file_size;
        while total > self.max_bytes {
            let Some((name, size)) = self.closed.pop_front() else { break };
            self.fs.remove_file(&self.dir.join(&name))?;
            total -= size;
        }
        self.fs.sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::OutgoingMessage;
    use crate::env::StdFs;
    use crate::record::read_dir;

    fn publish(size: usize) -> Command {
        let message = OutgoingMessage { value: Bytes::from(vec![7u8; size]), ..Default::default() };
        Command::Publish { topic: "t".into(), messages: vec![message] }
    }

    fn record(recorder: &mut Recorder, at: At, command: Command, reply: u64, outputs: u64) {
        let back = recorder.begin(at, command.clone());
        assert_eq!(back, command);
        recorder.end(reply, outputs);
    }

    #[test]
    fn a_recording_rotates_and_drops_its_oldest_segments_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let max = RECORD_MAX_BYTES_MIN;
        let mut recorder = Recorder::create(fs.clone(), dir.path(), max, "x = 1".into(), true).unwrap();
        // 20 MiB of entries, flushed as a driver would, every ten entries.
        for i in 0..2000u64 {
            record(&mut recorder, At { now_ms: i, wall_ms: i }, publish(10 * 1024), i, 0);
            if i % 10 == 9 {
                recorder.flush();
            }
        }
        recorder.finish(2000, 42);
        let names = fs.list_dir(dir.path()).unwrap();
        let total: u64 = names.iter().map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len()).sum();
        assert!(total <= max, "{total} bytes kept, bound {max}");
        assert!(names.len() >= 7 && !names.contains(&segment_name(1)), "{names:?}");
        let recording = read_dir(&StdFs, dir.path()).unwrap();
        assert!(!recording.from_empty, "the first segment is gone: it cannot replay from empty");
        let steps = &recording.steps;
        assert_eq!(steps.last().map(|s| s.seq), Some(2000));
        assert!(steps.windows(2).all(|w| w[1].seq == w[0].seq + 1), "no gap");
        assert_eq!(recording.end.map(|e| e.state_digest), Some(42));
    }

    #[test]
    fn a_directory_with_a_recording_is_refused_and_a_torn_tail_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let mut recorder = Recorder::create(fs.clone(), dir.path(), RECORD_MAX_BYTES_MIN, String::new(), true).unwrap();
        record(&mut recorder, At::default(), publish(10), 1, 2);
        record(&mut recorder, At::default(), publish(10), 3, 4);
        recorder.flush();
        let refused = Recorder::create(fs.clone(), dir.path(), RECORD_MAX_BYTES_MIN, String::new(), true);
        assert!(refused.err().unwrap().to_string().contains("already holds a recording"));
        drop(recorder);
        // A crash tore the last frame: what came before it is read, and the cut is said.
        let path = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let recording = read_dir(&StdFs, dir.path()).unwrap();
        assert_eq!(recording.steps.len(), 1);
        assert!(recording.cut.as_deref().unwrap().contains("torn"), "{:?}", recording.cut);
        assert!(recording.end.is_none());
    }
}
