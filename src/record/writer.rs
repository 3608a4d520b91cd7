//! Writing a recording. The driver encodes each applied command into a buffer as it goes;
//! once the buffer reaches [`FLUSH_BYTES`], and at every checkpoint (about once a second),
//! the buffer goes to the recorder's own thread, which
//! appends it to the current segment. The driver never waits on the disk for the
//! recording (only when the writer is [`BUFFERS_QUEUED_MAX`] buffers behind:
//! back-pressure, not loss); a crash loses at most the last second or so of it.
//!
//! A segment that reaches an eighth of the recording's bound is closed at the end of a
//! turn, and the next begins with a snapshot of the broker's state then
//! ([`Broker::snapshot`]), so a replay can begin there; the oldest segments are removed
//! while the recording is over its bound. A state larger than an eighth of the bound is
//! not written (the log says so): until a later segment has one, the recording replays
//! only from an older snapshot or its start. Taking a snapshot holds the driver for as long
//! as reading and encoding the state takes (not measured yet; it grows with what is
//! retained, at most an eighth of the bound).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use prost::Message;

use super::{codec, frame, pb, segment_name, FORMAT_VERSION, FRAME_HEADER};
use crate::core::{At, Broker, Command, SnapshotError};
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
/// A buffer's capacity: a flush's worth and room for the turn's last commands past it,
/// so a buffer rarely grows. Written buffers come back from the writer thread to be used
/// again, so the driver does not fault in fresh pages for every flush.
const BUFFER_CAPACITY: usize = 2 * FLUSH_BYTES;
/// Written buffers kept for the driver; more, or one a huge command grew past four times
/// [`BUFFER_CAPACITY`], are freed.
const BUFFERS_KEPT: usize = 4;
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
    /// Frames for the current segment.
    Frames { bytes: Vec<u8> },
    /// Close the current segment and begin one at entry `first_seq`, with this snapshot;
    /// with `alone`, remove every older segment.
    Rotate { first_seq: u64, snapshot: Option<Vec<u8>>, alone: bool },
    /// The last frames (the `End`); the writer syncs, answers, and stops.
    Finish { bytes: Vec<u8>, done: mpsc::SyncSender<()> },
}

/// Appends the commands a driver applies to a recording directory.
pub struct Recorder {
    /// Frames of this turn.
    buffer: Vec<u8>,
    next_seq: u64,
    /// The recording's bound: a segment is begun after each eighth of it.
    max_bytes: u64,
    /// Bytes of entries handed to the writer for the current segment (its start and
    /// snapshot frames not counted, so a large snapshot does not shorten its segment).
    segment_bytes: u64,
    /// The sequence number of the current segment's first entry: a segment with no entry
    /// yet is never rotated (the next would take its name).
    segment_first_seq: u64,
    /// A snapshot was too large: said once in the log, not at every segment.
    told_too_large: bool,
    /// Where the entry `begin` started and `end` has not finished begins in the buffer.
    open_frame: Option<usize>,
    writer: Option<mpsc::SyncSender<ToWriter>>,
    /// Buffers the writer thread has written, to be filled again.
    written: mpsc::Receiver<Vec<u8>>,
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
    /// Starts a recording of `broker` in `dir` (created if missing; it must hold no
    /// recording), bounded by `max_bytes`. `settings_toml` is the broker's effective
    /// configuration. A broker that holds nothing replays from the recording's start; one
    /// that restored stored state is snapshotted first, so its recording replays too.
    pub fn create(
        fs: Arc<dyn Fs>,
        dir: &Path,
        max_bytes: u64,
        settings_toml: String,
        broker: &Broker,
    ) -> io::Result<Self> {
        let from_empty = broker.is_new();
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
        let mut start = segments.start_frame(1, from_empty);
        let mut told_too_large = false;
        if !from_empty {
            if let Some(state) = snapshot_of(broker, max_bytes, &mut told_too_large) {
                frame(&snapshot_frame(1, state), &mut start);
            }
        }
        segments.write(&start)?;
        segments.fs.sync_dir(&segments.dir)?;
        let (writer, frames) = mpsc::sync_channel(BUFFERS_QUEUED_MAX);
        let (give_back, written) = mpsc::sync_channel(BUFFERS_KEPT);
        let thread = std::thread::Builder::new()
            .name("flight-recorder".into())
            .spawn(move || segments.run(frames, give_back))?;
        Ok(Recorder {
            buffer: Vec::with_capacity(BUFFER_CAPACITY),
            next_seq: 1,
            max_bytes,
            segment_bytes: 0,
            segment_first_seq: 1,
            told_too_large,
            open_frame: None,
            writer: Some(writer),
            written,
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
        if let Command::Publish { topic, messages } = &command {
            // The one command whose size is the payload's: encoded from references, with no
            // protobuf form built and taken apart again.
            let seq = self.next_seq;
            self.next_seq += 1;
            let entry_len = publish::entry_len(seq, at, topic, messages) + DIGEST_FIELDS_LEN;
            let start = self.buffer.len();
            self.buffer.extend_from_slice(&[0; FRAME_HEADER]);
            self.buffer.push(FRAME_ENTRY_TAG);
            prost::encoding::encode_varint(entry_len as u64, &mut self.buffer);
            publish::encode_entry(seq, at, topic, messages, &mut self.buffer);
            self.open_frame = Some(start);
            return command;
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
        // A turn of large publishes would otherwise grow the buffer far past its capacity.
        if self.buffer.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// At the end of a driver turn: when the segment has reached an eighth of the bound, a
    /// new one begins with a snapshot of `broker` (between two commands, as it is at a
    /// turn's end). What was recorded reaches the writer thread in buffers of
    /// [`FLUSH_BYTES`] (see [`Recorder::end`]), or at a [`Recorder::flush`].
    pub fn turn_ended(&mut self, broker: &Broker) {
        let full = self.segment_bytes + self.buffer.len() as u64 >= self.max_bytes / SEGMENTS;
        if full && self.next_seq > self.segment_first_seq {
            self.rotate(broker);
        }
    }

    /// The broker's state was replaced (a cluster node installed a snapshot sent by
    /// another): the recording begins again with a snapshot of the new state, and its older
    /// segments, which lead to the old one, are removed.
    pub fn begin_again(&mut self, broker: &Broker) {
        self.rotate_with(broker, true);
    }

    /// Closes the segment and begins the next with a snapshot of `broker`.
    fn rotate(&mut self, broker: &Broker) {
        self.rotate_with(broker, false);
    }

    fn rotate_with(&mut self, broker: &Broker, alone: bool) {
        self.flush();
        if self.writer.is_none() {
            return;
        }
        let snapshot = snapshot_of(broker, self.max_bytes, &mut self.told_too_large);
        let Some(writer) = &self.writer else { return };
        self.segment_bytes = 0;
        self.segment_first_seq = self.next_seq;
        if writer.send(ToWriter::Rotate { first_seq: self.next_seq, snapshot, alone }).is_err() {
            self.writer = None;
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
        let next = self.written.try_recv().unwrap_or_else(|_| Vec::with_capacity(BUFFER_CAPACITY));
        let bytes = std::mem::replace(&mut self.buffer, next);
        self.segment_bytes += bytes.len() as u64;
        if writer.send(ToWriter::Frames { bytes }).is_err() {
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

/// A snapshot of `broker` no larger than an eighth of the recording's bound (and than a
/// frame may be), or `None` with a warning (once for a state too large, `told` says).
fn snapshot_of(broker: &Broker, max_bytes: u64, told: &mut bool) -> Option<Vec<u8>> {
    // The frame's other fields take a few bytes; a frame is at most FRAME_BODY_MAX.
    let limit = ((max_bytes / SEGMENTS) as usize).min(super::FRAME_BODY_MAX - 64);
    match broker.snapshot(limit) {
        Ok(state) => Some(state),
        Err(error) => {
            if !*told || !matches!(error, SnapshotError::TooLarge { .. }) {
                tracing::warn!(%error, "the flight recorder begins a segment without a snapshot: a replay cannot \
                    begin there (raise record_max_bytes to eight times the state to snapshot it)");
                *told = true;
            }
            None
        }
    }
}

/// The body of a `Snapshot` frame.
fn snapshot_frame(next_seq: u64, state: Vec<u8>) -> Vec<u8> {
    let snapshot = pb::Snapshot { next_seq, state: state.into() };
    pb::Frame { kind: Some(pb::frame::Kind::Snapshot(snapshot)) }.encode_to_vec()
}

/// `Entry { seq, now_ms, wall_ms, command: Command { publish: Publish { topic, messages } } }`
/// encoded by hand from references, field for field as prost encodes the generated types
/// (proto3 defaults skipped, optional fields written when set), so it reads back alike.
mod publish {
    use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len, WireType};

    use crate::core::{At, OutgoingMessage};

    fn message_len(m: &OutgoingMessage) -> usize {
        let mut len = 0;
        if !m.value.is_empty() {
            len += encoding::bytes::encoded_len(1, &m.value);
        }
        if let Some(key) = &m.key {
            len += encoding::string::encoded_len(2, key);
        }
        len += encoding::btree_map::encoded_len(
            encoding::string::encoded_len,
            encoding::string::encoded_len,
            3,
            &m.attributes,
        );
        if let Some(partition) = &m.partition {
            len += encoding::uint32::encoded_len(4, partition);
        }
        if let Some(key) = &m.idempotency_key {
            len += encoding::string::encoded_len(5, key);
        }
        len
    }

    fn publish_len(topic: &str, messages: &[OutgoingMessage]) -> usize {
        let topic_len =
            if topic.is_empty() { 0 } else { key_len(1) + encoded_len_varint(topic.len() as u64) + topic.len() };
        let messages: usize =
            messages.iter().map(message_len).map(|len| key_len(2) + encoded_len_varint(len as u64) + len).sum();
        topic_len + messages
    }

    fn command_len(topic: &str, messages: &[OutgoingMessage]) -> usize {
        let len = publish_len(topic, messages);
        key_len(1) + encoded_len_varint(len as u64) + len
    }

    fn scalar_len(tag: u32, value: u64) -> usize {
        if value == 0 {
            0
        } else {
            encoding::uint64::encoded_len(tag, &value)
        }
    }

    /// The entry's length, without the digests `end` adds.
    pub(super) fn entry_len(seq: u64, at: At, topic: &str, messages: &[OutgoingMessage]) -> usize {
        let command = command_len(topic, messages);
        scalar_len(1, seq)
            + scalar_len(2, at.now_ms)
            + scalar_len(3, at.wall_ms)
            + key_len(4)
            + encoded_len_varint(command as u64)
            + command
    }

    pub(super) fn encode_entry(seq: u64, at: At, topic: &str, messages: &[OutgoingMessage], buf: &mut Vec<u8>) {
        for (tag, value) in [(1, seq), (2, at.now_ms), (3, at.wall_ms)] {
            if value != 0 {
                encoding::uint64::encode(tag, &value, buf);
            }
        }
        let publish = publish_len(topic, messages);
        let command = key_len(1) + encoded_len_varint(publish as u64) + publish;
        encode_key(4, WireType::LengthDelimited, buf);
        encode_varint(command as u64, buf);
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(publish as u64, buf);
        if !topic.is_empty() {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(topic.len() as u64, buf);
            buf.extend_from_slice(topic.as_bytes());
        }
        for m in messages {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(message_len(m) as u64, buf);
            if !m.value.is_empty() {
                encoding::bytes::encode(1, &m.value, buf);
            }
            if let Some(key) = &m.key {
                encoding::string::encode(2, key, buf);
            }
            encoding::btree_map::encode(
                encoding::string::encode,
                encoding::string::encoded_len,
                encoding::string::encode,
                encoding::string::encoded_len,
                3,
                &m.attributes,
                buf,
            );
            if let Some(partition) = &m.partition {
                encoding::uint32::encode(4, partition, buf);
            }
            if let Some(key) = &m.idempotency_key {
                encoding::string::encode(5, key, buf);
            }
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
    fn run(mut self, frames: mpsc::Receiver<ToWriter>, give_back: mpsc::SyncSender<Vec<u8>>) {
        let mut failed = false;
        while let Ok(message) = frames.recv() {
            let (written, done) = match message {
                ToWriter::Frames { .. } | ToWriter::Rotate { .. } if failed => (Ok(()), None),
                ToWriter::Finish { done, .. } if failed => (Ok(()), Some(done)),
                ToWriter::Frames { mut bytes } => {
                    let written = self.write(&bytes);
                    bytes.clear();
                    // The driver takes it back at its next flush; if it has enough, it is freed.
                    if bytes.capacity() <= 4 * BUFFER_CAPACITY {
                        let _ = give_back.try_send(bytes);
                    }
                    (written, None)
                }
                ToWriter::Rotate { first_seq, snapshot, alone } => (self.rotate(first_seq, snapshot, alone), None),
                ToWriter::Finish { bytes, done } => {
                    (self.write(&bytes).and_then(|()| self.file.sync_data()), Some(done))
                }
            };
            if let Err(error) = written {
                tracing::error!(dir = %self.dir.display(), %error,
                    "the flight recorder cannot write; the recording stops here (the broker goes on)");
                failed = true;
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

    /// Closes the current segment and begins one at entry `first_seq` with `snapshot`, then
    /// removes the oldest segments while the recording is over its bound (every one before
    /// it, when `alone`).
    fn rotate(&mut self, first_seq: u64, snapshot: Option<Vec<u8>>, alone: bool) -> io::Result<()> {
        self.file.sync_data()?;
        let name = segment_name(first_seq);
        self.file = self.fs.open(&self.dir.join(&name), true)?;
        self.closed.push_back((std::mem::replace(&mut self.file_name, name), self.file_size));
        self.file_size = 0;
        let mut frames = self.start_frame(first_seq, false);
        if let Some(state) = snapshot {
            frame(&snapshot_frame(first_seq, state), &mut frames);
        }
        self.write(&frames)?;
        let mut total: u64 = self.closed.iter().map(|(_, size)| size).sum::<u64>() + self.file_size;
        while total > self.max_bytes || alone {
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
    use crate::core::{Answer, OutgoingMessage, Output, Reply, SubscriptionSpec};
    use crate::env::StdFs;
    use crate::record::{digest_outputs, digest_reply, digest_state, read_dir, Replayer};
    use crate::storage::MemoryStorage;

    fn publish(size: usize) -> Command {
        let message = OutgoingMessage { value: Bytes::from(vec![7u8; size]), ..Default::default() };
        Command::Publish { topic: "t".into(), messages: vec![message] }
    }

    fn record(recorder: &mut Recorder, at: At, command: Command, reply: u64, outputs: u64) {
        let back = recorder.begin(at, command.clone());
        assert_eq!(back, command);
        recorder.end(reply, outputs);
    }

    /// Applies `command` to `broker` as the driver does, recording it.
    fn apply(recorder: &mut Recorder, broker: &mut Broker, at: At, command: Command) -> Reply {
        let command = recorder.begin(at, command);
        let reply = broker.handle(at, command);
        let outputs: Vec<Output> = std::iter::from_fn(|| broker.poll_output()).collect();
        recorder.end(digest_reply(&reply), digest_outputs(&outputs));
        reply
    }

    #[test]
    fn a_recording_past_its_bound_drops_old_segments_and_replays_from_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let max = RECORD_MAX_BYTES_MIN;
        // Retention keeps the broker's state small, so each new segment gets a snapshot.
        let settings = "[storage]\nstorage = \"memory\"\n[broker]\nmax_message_bytes = 65536\n\
                        partition_retention_bytes = 262144\n";
        let config = crate::config::Loaded::from_toml(settings, Path::new("test")).unwrap().config;
        let mut broker = Broker::new(config.server.broker, Box::new(MemoryStorage)).unwrap();
        let mut recorder = Recorder::create(fs.clone(), dir.path(), max, settings.into(), &broker).unwrap();
        let mut at = At { now_ms: 1_000, wall_ms: 1_700_000_000_000 };
        let spec = SubscriptionSpec { name: "s".into(), topic: "t".into(), ..Default::default() };
        let create = Command::CreateTopic { name: "t".into(), partitions: None, dedupe_window_ms: None };
        apply(&mut recorder, &mut broker, at, create).unwrap();
        apply(&mut recorder, &mut broker, at, Command::CreateSubscription(spec)).unwrap();
        // 20 MiB of publishes; pulls leave leases in flight across the snapshots, some acked.
        for i in 0..2000u64 {
            at.now_ms += 5;
            at.wall_ms += 5;
            apply(&mut recorder, &mut broker, at, publish(10 * 1024)).unwrap();
            if i % 7 == 0 {
                let pull = Command::Pull { subscription: "s".into(), max_messages: 3 };
                let Ok(Answer::Deliveries(leased)) = apply(&mut recorder, &mut broker, at, pull) else { panic!() };
                let ack_ids = leased.iter().take(2).map(|d| d.ack_id.clone()).collect();
                let acks = Command::Acks { subscription: "s".into(), op: crate::core::AckOp::Ack, ack_ids };
                apply(&mut recorder, &mut broker, at, acks).unwrap();
            }
            if i % 10 == 9 {
                apply(&mut recorder, &mut broker, at, Command::Retention).unwrap();
                apply(&mut recorder, &mut broker, at, Command::Tick).unwrap();
                recorder.turn_ended(&broker);
            }
        }
        recorder.finish(at.now_ms, digest_state(&broker, at.now_ms));

        let names = fs.list_dir(dir.path()).unwrap();
        let total: u64 = names.iter().map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len()).sum();
        assert!(total <= max, "{total} bytes kept, bound {max}");
        // Each segment holds an eighth of the bound in entries, and a snapshot besides.
        assert!(names.len() >= 5 && !names.contains(&segment_name(1)), "{names:?}");
        let recording = read_dir(&StdFs, dir.path()).unwrap();
        assert!(!recording.from_empty, "the first segment is gone: it cannot replay from empty");
        let snapshot = recording.snapshot.as_ref().expect("the first segment left begins with a snapshot");
        let steps = &recording.steps;
        assert_eq!(steps.first().map(|s| s.seq), Some(snapshot.next_seq));
        assert!(steps.windows(2).all(|w| w[1].seq == w[0].seq + 1), "no gap");
        let mut replayer = Replayer::new(&recording, Box::new(MemoryStorage), false).unwrap();
        for step in steps {
            let replayed = replayer.apply(step);
            assert!(replayed.reply_matches && replayed.outputs_match, "entry {}: {:?}", step.seq, replayed.reply);
        }
        let end = recording.end.expect("the recorder finished");
        assert_eq!(replayer.state_digest(end.now_ms), end.state_digest);
    }

    #[test]
    fn a_broker_that_started_on_stored_state_is_snapshotted_first_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let settings = "[storage]\nstorage = \"memory\"\n";
        let config = crate::config::Loaded::from_toml(settings, Path::new("test")).unwrap().config;
        let mut broker = Broker::new(config.server.broker, Box::new(MemoryStorage)).unwrap();
        let at = At { now_ms: 1_000, wall_ms: 1_700_000_000_000 };
        let create = Command::CreateTopic { name: "t".into(), partitions: None, dedupe_window_ms: None };
        broker.handle(at, create).unwrap();
        broker.handle(at, publish(100)).unwrap();
        let mut recorder = Recorder::create(fs, dir.path(), RECORD_MAX_BYTES_MIN, settings.into(), &broker).unwrap();
        let spec = SubscriptionSpec { name: "s".into(), topic: "t".into(), ..Default::default() };
        apply(&mut recorder, &mut broker, at, Command::CreateSubscription(spec)).unwrap();
        let pull = Command::Pull { subscription: "s".into(), max_messages: 0 };
        apply(&mut recorder, &mut broker, at, pull).unwrap();
        recorder.finish(at.now_ms, digest_state(&broker, at.now_ms));
        let recording = read_dir(&StdFs, dir.path()).unwrap();
        assert!(!recording.from_empty && recording.snapshot.is_some());
        let mut replayer = Replayer::new(&recording, Box::new(MemoryStorage), false).unwrap();
        let replies: Vec<Reply> = recording
            .steps
            .iter()
            .map(|step| {
                let replayed = replayer.apply(step);
                assert!(replayed.reply_matches && replayed.outputs_match, "entry {}: {:?}", step.seq, replayed.reply);
                replayed.reply
            })
            .collect();
        // The pull leased the message published before the recording began: it came with
        // the snapshot.
        let Ok(Answer::Deliveries(leased)) = &replies[1] else { panic!("{:?}", replies[1]) };
        assert_eq!(leased.len(), 1);
        assert_eq!(replayer.state_digest(at.now_ms), recording.end.unwrap().state_digest);
    }

    proptest::proptest! {
        #[test]
        fn a_publish_is_encoded_by_hand_exactly_as_prost_encodes_it(
            topic in "[a-z]{0,5}",
            messages in proptest::collection::vec((
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                proptest::option::of("[a-z]{0,4}"),
                proptest::collection::btree_map("[a-z]{0,3}", "[a-z]{0,3}", 0..3),
                proptest::option::of(0u32..300),
                proptest::option::of("[a-z0-9-]{0,6}"),
            ), 0..5),
            seq in 0u64..1000,
            now_ms in 0u64..100_000,
            wall_ms in 0u64..2_000_000_000_000,
        ) {
            let messages: Vec<OutgoingMessage> = messages
                .into_iter()
                .map(|(value, key, attributes, partition, idempotency_key)| OutgoingMessage {
                    value: value.into(),
                    key,
                    attributes,
                    partition,
                    idempotency_key,
                })
                .collect();
            let at = At { now_ms, wall_ms };
            let mut by_hand = Vec::new();
            publish::encode_entry(seq, at, &topic, &messages, &mut by_hand);
            proptest::prop_assert_eq!(by_hand.len(), publish::entry_len(seq, at, &topic, &messages));
            let command = Command::Publish { topic, messages };
            let entry = pb::Entry {
                seq,
                now_ms,
                wall_ms,
                command: Some(codec::into_pb(command)),
                reply_digest: 0,
                outputs_digest: 0,
            };
            proptest::prop_assert_eq!(by_hand, entry.encode_to_vec());
        }
    }

    #[test]
    fn a_broker_reopened_on_saved_metadata_without_topics_is_not_recorded_as_new() {
        use crate::storage::{FileStorage, FileStorageConfig};
        let data = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let storage = || Box::new(FileStorage::open(fs.clone(), FileStorageConfig::new(data.path())).unwrap());
        let mut broker = Broker::open(crate::core::BrokerConfig::default(), storage()).unwrap();
        assert!(broker.is_new());
        let at = At { now_ms: 1, wall_ms: 1_700_000_000_000 };
        broker.handle(at, Command::CreateTopic { name: "t".into(), partitions: None, dedupe_window_ms: None }).unwrap();
        broker.handle(at, Command::DeleteTopic { name: "t".into(), force: false }).unwrap();
        drop(broker);
        // It holds nothing, but it numbers topics and leases on from what it saved.
        let broker = Broker::open(crate::core::BrokerConfig::default(), storage()).unwrap();
        assert!(broker.is_pristine() && !broker.is_new());
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::create(fs, dir.path(), RECORD_MAX_BYTES_MIN, String::new(), &broker).unwrap();
        drop(recorder);
        let recording = read_dir(&StdFs, dir.path()).unwrap();
        assert!(!recording.from_empty && recording.snapshot.is_some());
    }

    #[test]
    fn a_directory_with_a_recording_is_refused_and_a_torn_tail_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let empty = Broker::new(crate::core::BrokerConfig::default(), Box::new(MemoryStorage)).unwrap();
        let mut recorder =
            Recorder::create(fs.clone(), dir.path(), RECORD_MAX_BYTES_MIN, String::new(), &empty).unwrap();
        record(&mut recorder, At::default(), publish(10), 1, 2);
        record(&mut recorder, At::default(), publish(10), 3, 4);
        recorder.flush();
        let refused = Recorder::create(fs.clone(), dir.path(), RECORD_MAX_BYTES_MIN, String::new(), &empty);
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
