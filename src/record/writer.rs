//! Writing a recording: frames go to a buffer as the driver applies commands, and to the
//! current segment at the end of each driver turn. A segment that reaches an eighth of the
//! recording's bound is closed and a new one begun; the oldest segments are removed while
//! the recording is over its bound.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use super::{frame, pb, segment_name, FORMAT_VERSION, FRAME_HEADER};
use crate::core::At;
use crate::env::{Fs, FsFile};

/// `--record-max-bytes` when it is not given: 1 GiB.
pub const RECORD_MAX_BYTES_DEFAULT: u64 = 1 << 30;
/// The smallest bound a recording may have: 8 MiB (eight segments of 1 MiB).
pub const RECORD_MAX_BYTES_MIN: u64 = 8 << 20;
/// A recording is kept in about this many segments.
const SEGMENTS: u64 = 8;

/// Appends the commands a driver applies to a recording directory.
pub struct Recorder {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    max_bytes: u64,
    settings_toml: String,
    /// Closed segments, oldest first: (name, bytes).
    closed: VecDeque<(String, u64)>,
    file: Box<dyn FsFile>,
    file_name: String,
    file_size: u64,
    /// Frames not yet written.
    buffer: Vec<u8>,
    next_seq: u64,
    /// A write failed: the recording stopped there (the broker goes on).
    stopped: bool,
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
        let mut recorder = Recorder {
            fs,
            dir: dir.to_path_buf(),
            max_bytes,
            settings_toml,
            closed: VecDeque::new(),
            file,
            file_name: name,
            file_size: 0,
            buffer: Vec::new(),
            next_seq: 1,
            stopped: false,
        };
        recorder.start_frame(from_empty);
        recorder.write_buffer()?;
        recorder.fs.sync_dir(&recorder.dir)?;
        Ok(recorder)
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn start_frame(&mut self, from_empty: bool) {
        let start = pb::Start {
            version: FORMAT_VERSION,
            settings_toml: self.settings_toml.clone(),
            first_seq: self.next_seq,
            from_empty,
        };
        let body = pb::Frame { kind: Some(pb::frame::Kind::Start(start)) }.encode_to_vec();
        frame(&body, &mut self.buffer);
    }

    /// Records one applied command with the digests of its reply and outputs.
    pub fn record(&mut self, at: At, command: pb::Command, reply_digest: u64, outputs_digest: u64) {
        if self.stopped {
            return;
        }
        let entry = pb::Entry {
            seq: self.next_seq,
            now_ms: at.now_ms,
            wall_ms: at.wall_ms,
            command: Some(command),
            reply_digest,
            outputs_digest,
        };
        self.next_seq += 1;
        let message = pb::Frame { kind: Some(pb::frame::Kind::Entry(entry)) };
        // The body is encoded in place, after room for its header.
        let at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; FRAME_HEADER]);
        message.encode(&mut self.buffer).expect("a Vec grows as needed");
        let body = &self.buffer[at + FRAME_HEADER..];
        let (len, crc) = ((body.len() as u32).to_le_bytes(), crc32c::crc32c(body).to_le_bytes());
        self.buffer[at..at + 4].copy_from_slice(&len);
        self.buffer[at + 4..at + 8].copy_from_slice(&crc);
    }

    /// Writes what was recorded since the last flush (the end of a driver turn), and
    /// rotates the segment when it is full. A failed write stops the recording, with an
    /// error in the log; the broker goes on.
    pub fn flush(&mut self) {
        if self.stopped || self.buffer.is_empty() {
            return;
        }
        if let Err(error) = self.write_buffer().and_then(|()| self.rotate_if_full()) {
            tracing::error!(dir = %self.dir.display(), %error,
                "the flight recorder cannot write; it stops here (the broker goes on)");
            self.stopped = true;
            self.buffer = Vec::new();
        }
    }

    /// Ends the recording (the broker stops): an `End` frame with the digest of the
    /// broker's state at `now_ms` (see [`digest_state`](super::digest_state)), then a
    /// flush and a sync.
    pub fn finish(&mut self, now_ms: u64, state_digest: u64) {
        if self.stopped {
            return;
        }
        let end = pb::End { last_seq: self.next_seq - 1, now_ms, state_digest };
        let body = pb::Frame { kind: Some(pb::frame::Kind::End(end)) }.encode_to_vec();
        frame(&body, &mut self.buffer);
        self.flush();
        if self.stopped {
            return;
        }
        if let Err(error) = self.file.sync_data() {
            tracing::warn!(dir = %self.dir.display(), %error, "the flight recording's last segment did not sync");
        }
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buffer, self.file_size)?;
        self.file_size += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    fn rotate_if_full(&mut self) -> io::Result<()> {
        if self.file_size < self.max_bytes / SEGMENTS {
            return Ok(());
        }
        self.file.sync_data()?;
        let name = segment_name(self.next_seq);
        let file = self.fs.open(&self.dir.join(&name), true)?;
        let old = std::mem::replace(&mut self.file, file);
        drop(old);
        self.closed.push_back((std::mem::replace(&mut self.file_name, name), self.file_size));
        self.file_size = 0;
        self.start_frame(false);
        self.write_buffer()?;
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
    use crate::core::{Command, OutgoingMessage};
    use crate::env::StdFs;
    use crate::record::{encode_command, read_dir};

    fn publish(size: usize) -> pb::Command {
        let message = OutgoingMessage { value: Bytes::from(vec![7u8; size]), ..Default::default() };
        encode_command(&Command::Publish { topic: "t".into(), messages: vec![message] })
    }

    #[test]
    fn a_recording_rotates_and_drops_its_oldest_segments_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let max = RECORD_MAX_BYTES_MIN;
        let mut recorder = Recorder::create(fs.clone(), dir.path(), max, "x = 1".into(), true).unwrap();
        // 20 MiB of entries, flushed as a driver would, every ten entries.
        for i in 0..2000u64 {
            recorder.record(At { now_ms: i, wall_ms: i }, publish(10 * 1024), i, 0);
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
        recorder.record(At::default(), publish(10), 1, 2);
        recorder.record(At::default(), publish(10), 3, 4);
        recorder.flush();
        let refused = Recorder::create(fs.clone(), dir.path(), RECORD_MAX_BYTES_MIN, String::new(), true);
        assert!(refused.err().unwrap().to_string().contains("already holds a recording"));
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
