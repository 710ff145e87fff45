//! The ingest log: a write-ahead log of accepted events, so that the journal's group
//! commit costs one `write` + `fdatasync` instead of a sled flush.
//!
//! Why: a sled flush writes out every page touched since the last one, so its cost grows
//! with the keys written per event, and the group commit used to pay it hundreds of
//! times a second (bench/README.md has the figures). With this log, sled is flushed on
//! its own timer and at each segment change, never on the hot path; what makes an
//! acknowledged event durable is its record here.
//!
//! **Format.** Segment files `<dir>/<seq, 20 digits>.log`. Records back to back:
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, where the payload is
//! `[dedupe expiry, Unix µs: i64 LE][the event as JSON]`. A crash can only tear the last
//! record; reading a segment stops at the first record that is short or fails its
//! checksum, and says how many bytes it left.
//!
//! **Pre-filled with zeros.** A segment is kept `PREFILL` bytes of zeros ahead of its
//! last record, written before any record lands there. An append that grows the file
//! makes `fdatasync` write the inode too (a second I/O per commit); a write over
//! zeros already on disk does not, which took a probe on this machine's disk from
//! 244–325 µs to 149–164 µs per write + `fdatasync` (bench/README.md, session 4). The
//! zeros are extended in the same write as records, so they cost no `fdatasync` of
//! their own. A zero length field ends a segment: a tail of zeros is not a torn record.
//!
//! **Order.** `SledStore::ingest` applies an event to sled and appends its record under
//! one lock, so the log's order is sled's order and a replay reaches the same dedupe
//! outcome as the live run did.
//!
//! **Life of a segment.** Records are appended to the open segment until it passes
//! `SEGMENT_BYTES`, or until the store's periodic sweep closes it (every 10 minutes, so
//! a segment never outlives the events in it); then a new one is opened and the old one
//! is deleted after a sled flush (everything in it was applied to sled before it was
//! appended). At open, the
//! store replays every segment left over into sled (events it already has are skipped),
//! flushes sled and deletes them.

use super::{StoreError, StoreResult};
use crate::event::Event;
use chrono::{DateTime, Utc};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A segment is closed once it has grown past this.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// Length and checksum before each payload.
const HEADER: usize = 8;
/// A payload larger than this is a torn or foreign length field, not a record (events
/// are limited far below it by the connectors' body limits).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
// Every event the journal accepts fits in a record (`Event::check_storable`).
const _: () = assert!(crate::event::MAX_EVENT_BYTES + 8 <= MAX_PAYLOAD);
/// Zeros kept on disk ahead of the last record (see the module docs); they are
/// extended once less than half of them is left.
const PREFILL: u64 = 1024 * 1024;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("ingest log: {what} {}: {e}", path.display()))
}

/// One logged ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestRecord {
    pub dedupe_until: DateTime<Utc>,
    pub event: Event,
}

/// Append one record for `event` (already serialised as `event_json`) to `buffer`.
pub fn encode(buffer: &mut Vec<u8>, dedupe_until: DateTime<Utc>, event_json: &[u8]) {
    let payload_len = 8 + event_json.len();
    let until = dedupe_until.timestamp_micros().to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&until);
    crc.update(event_json);
    buffer.reserve(HEADER + payload_len);
    buffer.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buffer.extend_from_slice(&crc.finalize().to_le_bytes());
    buffer.extend_from_slice(&until);
    buffer.extend_from_slice(event_json);
}

/// What a segment holds.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// The records that read back, in order.
    pub records: Vec<IngestRecord>,
    /// Whole, checksummed records that do not decode as an event (written by another
    /// version of perch, or by one that acknowledged something it could not read back):
    /// their offset in the segment, the payload, and why. They are quarantined, and the
    /// records after them are still read.
    pub unreadable: Vec<Unreadable>,
    /// Bytes after the last whole record that are not the zeros of the pre-fill: a torn
    /// tail (a crash mid-write).
    pub torn: usize,
}

/// A whole record that does not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub offset: usize,
    pub payload: Vec<u8>,
    pub reason: String,
}

/// Read the records of a segment. Reading stops at the first record that is short or
/// fails its checksum (only a crash mid-write leaves one, so nothing after it was ever
/// acknowledged); a record that is whole but does not decode is set aside and reading
/// goes on, so one bad record never hides the good ones after it.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let start = at + HEADER;
        if !(8..=MAX_PAYLOAD).contains(&len) || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let micros = i64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
        let until = DateTime::<Utc>::from_timestamp_micros(micros);
        match (until, serde_json::from_slice::<Event>(&payload[8..])) {
            (Some(dedupe_until), Ok(event)) => out.records.push(IngestRecord {
                dedupe_until,
                event,
            }),
            (until, event) => out.unreadable.push(Unreadable {
                offset: at,
                payload: payload.to_vec(),
                reason: match (until, event) {
                    (_, Err(e)) => e.to_string(),
                    _ => format!("dedupe expiry out of range: {micros} µs"),
                },
            }),
        }
        at = start + len;
    }
    // Zeros after the last record are the pre-filled rest of the segment.
    let tail = &bytes[at..];
    out.torn = if tail.iter().all(|b| *b == 0) {
        0
    } else {
        tail.len()
    };
    out
}

/// Where unreadable records are kept: `<log dir>/quarantine/`.
pub const QUARANTINE: &str = "quarantine";

/// Write an unreadable record to `<dir>/quarantine/<segment>-<offset>.record` (the
/// payload as it was: dedupe expiry then the JSON), so nothing acknowledged is deleted
/// with its segment, and a person can look at it.
fn quarantine(dir: &Path, segment: &Path, record: &Unreadable) -> StoreResult<PathBuf> {
    let qdir = dir.join(QUARANTINE);
    std::fs::create_dir_all(&qdir).map_err(|e| io_err("creating", &qdir, e))?;
    let stem = segment
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let path = qdir.join(format!("{stem}-{}.record", record.offset));
    std::fs::write(&path, &record.payload)
        .and_then(|_| File::open(&path)?.sync_all())
        .and_then(|_| File::open(&qdir)?.sync_all())
        .map_err(|e| io_err("writing", &path, e))?;
    Ok(path)
}

/// The open segment.
struct Segment {
    file: File,
    seq: u64,
    /// Bytes of records written (where the next one goes).
    bytes: u64,
    /// Bytes on disk: the records and the zeros after them.
    filled: u64,
    /// Records whose write failed: the file may end in a torn record (after which a
    /// replay reads nothing), so they go to a new segment with the next write, and no
    /// write reports success before they are durable.
    unwritten: Vec<u8>,
}

pub struct IngestLog {
    dir: PathBuf,
    /// Held while writing, so that buffers reach the file in the order they were taken.
    open: Mutex<Segment>,
}

impl IngestLog {
    /// Open the log in `dir` (created if missing). Returns it with the records the
    /// segments left by earlier runs hold, in order, and those segments' paths: the
    /// caller replays the records, makes them durable in the store and then calls
    /// `remove` on the paths.
    pub fn open(dir: &Path) -> StoreResult<(IngestLog, Vec<IngestRecord>, Vec<PathBuf>)> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut old: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err("reading", dir, e))? {
            let path = entry.map_err(|e| io_err("reading", dir, e))?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                old.push((seq, path));
            }
        }
        old.sort();
        let mut records = Vec::new();
        for (_, path) in &old {
            let bytes = std::fs::read(path).map_err(|e| io_err("reading", path, e))?;
            let mut found = decode(&bytes);
            for bad in &found.unreadable {
                // Kept before the segment can be deleted; the records after it replay.
                let kept = quarantine(dir, path, bad)?;
                tracing::error!(segment = %path.display(), offset = bad.offset, reason = %bad.reason, quarantined = %kept.display(), "ingest log record is whole but cannot be decoded; it is quarantined and the records after it are replayed");
            }
            if found.torn > 0 {
                tracing::warn!(segment = %path.display(), records = found.records.len(), torn_bytes = found.torn, "ingest log segment ends in a torn record (a crash mid-write); the whole records before it are replayed");
            }
            records.append(&mut found.records);
        }
        let next = old.last().map_or(1, |(seq, _)| seq + 1);
        let open = create_segment(dir, next)?;
        let log = IngestLog {
            dir: dir.to_path_buf(),
            open: Mutex::new(open),
        };
        Ok((log, records, old.into_iter().map(|(_, p)| p).collect()))
    }

    /// Write `take()`'s bytes to the open segment and `fdatasync` it. `take` runs with
    /// the segment locked, so buffers taken earlier are written earlier. Blocking: call
    /// it off the async runtime. Returns the segments it closed, which may be removed
    /// once the store has flushed.
    pub fn write(&self, take: impl FnOnce() -> Vec<u8>) -> StoreResult<Vec<PathBuf>> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| StoreError::Io("ingest log: a writer panicked".into()))?;
        let mut bytes = std::mem::take(&mut open.unwritten);
        let retrying = !bytes.is_empty();
        bytes.extend_from_slice(&take());
        if bytes.is_empty() {
            // Whatever was taken before is already written: its writer held this lock.
            return Ok(Vec::new());
        }
        let mut closed = Vec::new();
        if retrying {
            // The last write failed and may have left a torn record: never append
            // after it.
            match create_segment(&self.dir, open.seq + 1) {
                Ok(next) => closed.push(segment_path(
                    &self.dir,
                    std::mem::replace(&mut *open, next).seq,
                )),
                Err(e) => {
                    open.unwritten = bytes;
                    return Err(e);
                }
            }
        }
        let path = segment_path(&self.dir, open.seq);
        let end = open.bytes + bytes.len() as u64;
        // Keep zeros ahead: written with the records, made durable by the same sync.
        let zeros = if open.filled.max(end) - end < PREFILL / 2 {
            vec![0u8; PREFILL as usize]
        } else {
            Vec::new()
        };
        if let Err(e) = open
            .file
            .write_all_at(&bytes, open.bytes)
            .and_then(|_| open.file.write_all_at(&zeros, end))
            .and_then(|_| open.file.sync_data())
        {
            open.unwritten = bytes;
            return Err(io_err("writing", &path, e));
        }
        open.bytes = end;
        open.filled = open.filled.max(end + zeros.len() as u64);
        if open.bytes >= SEGMENT_BYTES {
            let next = create_segment(&self.dir, open.seq + 1)?;
            *open = next;
            closed.push(path);
        }
        Ok(closed)
    }
}

impl IngestLog {
    /// Close the open segment if it holds records, and return it: it may be removed once
    /// the store has flushed. Called by the store's periodic sweep, so that no segment
    /// outlives the events in it: a segment replayed after its events were swept would
    /// bring them back.
    pub fn close_segment(&self) -> StoreResult<Option<PathBuf>> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| StoreError::Io("ingest log: a writer panicked".into()))?;
        if open.bytes == 0 || !open.unwritten.is_empty() {
            // Empty, or owed a retry that will move to a new segment by itself.
            return Ok(None);
        }
        let next = create_segment(&self.dir, open.seq + 1)?;
        Ok(Some(segment_path(
            &self.dir,
            std::mem::replace(&mut *open, next).seq,
        )))
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// Create segment `seq`, pre-filled with zeros, and make it and its directory entry
/// durable. (`seq` is above every segment that holds records, so a file already there
/// can only be one whose creation failed: it is truncated.)
fn create_segment(dir: &Path, seq: u64) -> StoreResult<Segment> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_err("creating", &path, e))?;
    file.write_all_at(&vec![0u8; PREFILL as usize], 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| io_err("pre-filling", &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))?;
    Ok(Segment {
        file,
        seq,
        bytes: 0,
        filled: PREFILL,
        unwritten: Vec::new(),
    })
}

/// Delete segments whose records are durable in the store.
pub fn remove(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(segment = %path.display(), error = %e, "could not delete an ingest log segment; it will be replayed (harmlessly) at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, EventKind};

    fn event(n: u32) -> Event {
        let mut e = Event::new("hooks", EventKind::System, Utc::now());
        e.external_id = Some(format!("x-{n}"));
        e.text = Some(format!("event {n}"));
        e
    }

    fn buffer_of(events: &[Event]) -> Vec<u8> {
        let mut buf = Vec::new();
        for e in events {
            encode(&mut buf, e.received_at, &serde_json::to_vec(e).unwrap());
        }
        buf
    }

    #[test]
    fn records_round_trip_in_order() {
        let events: Vec<Event> = (0..5).map(event).collect();
        let Decoded {
            records,
            unreadable,
            torn,
        } = decode(&buffer_of(&events));
        assert_eq!(torn, 0);
        assert!(unreadable.is_empty());
        let ids: Vec<EventId> = records.iter().map(|r| r.event.id).collect();
        assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(records[0].event, events[0]);
        assert_eq!(
            records[0].dedupe_until.timestamp_micros(),
            events[0].received_at.timestamp_micros()
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_left_and_the_records_before_it_kept() {
        let events: Vec<Event> = (0..3).map(event).collect();
        let whole = buffer_of(&events);
        // Every cut inside the last record keeps exactly the first two.
        let last = buffer_of(&events[2..]).len();
        for cut in 1..last {
            let d = decode(&whole[..whole.len() - cut]);
            assert_eq!(d.records.len(), 2, "cut {cut}");
            assert_eq!(d.torn, last - cut);
        }
        // A flipped byte in the second record's payload stops reading there.
        let mut flipped = whole.clone();
        let second = buffer_of(&events[..1]).len() + HEADER + 20;
        flipped[second] ^= 0x55;
        let d = decode(&flipped);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.torn, whole.len() - buffer_of(&events[..1]).len());
        // A tail of zeros (the pre-filled rest of a segment) ends it, and is not torn.
        let mut zeroed = whole.clone();
        zeroed.extend_from_slice(&[0u8; 64]);
        assert_eq!(decode(&zeroed), decode(&whole));
        assert_eq!(decode(&zeroed).torn, 0);
        // A torn record before zeros still is.
        let mut torn_then_zeros = whole[..whole.len() - 5].to_vec();
        torn_then_zeros.extend_from_slice(&[0u8; 64]);
        assert_eq!(decode(&torn_then_zeros).records.len(), 2);
        assert_eq!(decode(&torn_then_zeros).torn, last - 5 + 64);
    }

    /// Records go over zeros already on disk, and the zeros keep ahead of them, also
    /// past the first pre-fill.
    #[test]
    fn a_segment_stays_pre_filled_ahead_of_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = IngestLog::open(dir.path()).unwrap();
        let path = segment_path(dir.path(), 1);
        let size = || std::fs::metadata(&path).unwrap().len();
        assert_eq!(size(), PREFILL);
        let events: Vec<Event> = (0..6000).map(event).collect();
        let mut written = 0;
        for chunk in events.chunks(100) {
            let buf = buffer_of(chunk);
            written += buf.len() as u64;
            log.write(|| buf).unwrap();
            assert!(
                size() >= written + PREFILL / 2,
                "zeros ahead after {written} bytes"
            );
        }
        assert!(written > PREFILL, "the test crosses the first pre-fill");
        drop(log);
        let (_, left, _) = IngestLog::open(dir.path()).unwrap();
        assert_eq!(left.len(), events.len());
        assert_eq!(left[5999].event, events[5999]);
    }

    #[test]
    fn records_of_a_failed_write_go_to_a_new_segment_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = IngestLog::open(dir.path()).unwrap();
        let events: Vec<Event> = (0..3).map(event).collect();
        log.write(|| buffer_of(&events[..1])).unwrap();
        // The disk refuses the next write (a read-only handle stands in for it).
        let first = segment_path(dir.path(), 1);
        log.open.lock().unwrap().file = File::open(&first).unwrap();
        assert!(log.write(|| buffer_of(&events[1..2])).is_err());
        // Nothing new to write, yet the failed records are still owed: not Ok(empty).
        let closed = log.write(Vec::new).unwrap();
        assert_eq!(closed, vec![first]);
        log.write(|| buffer_of(&events[2..])).unwrap();
        drop(log);
        let (_, left, old) = IngestLog::open(dir.path()).unwrap();
        let ids: Vec<_> = left.iter().map(|r| r.event.id).collect();
        assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(old.len(), 2);
    }

    #[test]
    fn open_returns_what_earlier_runs_left_and_continues_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (log, left, old) = IngestLog::open(dir.path()).unwrap();
        assert!(left.is_empty() && old.is_empty());
        let events: Vec<Event> = (0..4).map(event).collect();
        log.write(|| buffer_of(&events[..2])).unwrap();
        log.write(|| buffer_of(&events[2..])).unwrap();
        log.write(Vec::new).unwrap();
        drop(log);
        let (log, left, old) = IngestLog::open(dir.path()).unwrap();
        assert_eq!(left.len(), 4);
        assert_eq!(left[3].event, events[3]);
        assert_eq!(old.len(), 1);
        remove(&old);
        log.write(|| buffer_of(&events[..1])).unwrap();
        drop(log);
        let (_, left, old) = IngestLog::open(dir.path()).unwrap();
        assert_eq!(left.len(), 1, "the removed segment is not replayed again");
        assert_eq!(old.len(), 1);
    }

    /// A whole record that does not decode (here: an event 128 levels deep, which an
    /// older perch acknowledged) is quarantined, and every record after it is replayed.
    #[test]
    fn an_unreadable_record_first_in_a_segment_hides_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = IngestLog::open(dir.path()).unwrap();
        let mut poison = serde_json::to_value(event(999)).unwrap();
        let mut deep = serde_json::Value::Array(Vec::new());
        for _ in 1..127 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        poison["payload"] = deep;
        let mut buf = Vec::new();
        encode(&mut buf, Utc::now(), &serde_json::to_vec(&poison).unwrap());
        let events: Vec<Event> = (0..50).map(event).collect();
        buf.extend_from_slice(&buffer_of(&events));
        log.write(|| buf).unwrap();
        drop(log);
        let (_, left, old) = IngestLog::open(dir.path()).unwrap();
        assert_eq!(left.len(), 50, "every good record after the bad one");
        assert_eq!(left[49].event, events[49]);
        let kept: Vec<_> = std::fs::read_dir(dir.path().join(QUARANTINE))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kept.len(), 1);
        let raw = std::fs::read(&kept[0]).unwrap();
        assert_eq!(serde_json::to_vec(&poison).unwrap(), raw[8..]);
        // The quarantine is not a segment: it survives the segments' removal.
        remove(&old);
        assert!(kept[0].exists());
    }
}
