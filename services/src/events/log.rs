//! The event log: partitioned, append-only, read by offset, with committed offsets per
//! consumer group. [`FileLog`] keeps it on local disk (the one-machine default);
//! [`super::kafka::KafkaLog`] is the same over a Kafka-protocol topic.
//!
//! ## The embedded log on disk
//!
//! `DIR/partition-N.log` holds records back to back: `len: u32 LE | crc32(payload): u32 LE |
//! payload`, where `payload = key_len: u16 LE | key | value`. A record's offset is its index in
//! its partition. Appends go through one writer thread that takes every append waiting, writes
//! them, and `fdatasync`s each touched partition once (group commit) before any of them is
//! acknowledged: an acknowledged event is on disk. Opening a log scans each partition,
//! rebuilds the offset index, and cuts a torn or corrupt tail (a crash mid-write) so the log
//! ends at the last whole record. Committed offsets live in `DIR/offsets/GROUP-N`, written
//! through a temporary file and a rename.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};

use tokio::sync::oneshot;

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("event log: partition {partition} does not exist (the log has {partitions})")]
    NoPartition { partition: u32, partitions: u32 },
    #[error("event log: key {key:?} is longer than 65535 bytes")]
    KeyTooLong { key: String },
    #[error("event log writer stopped")]
    Closed,
    #[error("kafka: {0}")]
    Kafka(String),
}

/// Where a consumer resumes a partition: the offset to read from and the event-time
/// watermark it had there (so a restarted stream job drops exactly the late events the first
/// run dropped, and counts no window twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: u64,
    pub watermark: i64,
}

impl Checkpoint {
    pub fn at(offset: u64) -> Self {
        Self {
            offset,
            watermark: i64::MIN,
        }
    }

    /// `offset watermark` (an older `offset` alone reads with no watermark).
    pub fn encode(&self) -> String {
        format!("{} {}", self.offset, self.watermark)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split_whitespace();
        let offset = parts.next()?.parse().ok()?;
        let watermark = match parts.next() {
            Some(w) => w.parse().ok()?,
            None => i64::MIN,
        };
        Some(Self { offset, watermark })
    }
}

/// The partition a key belongs to: one item's events in one partition, on every log.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (recstack_core::stable_hash(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// A partitioned append-only log.
pub trait EventLog: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Appends `(key, value)` records, each to its key's partition, in order per partition;
    /// resolves once all are durable.
    fn append(&self, records: Vec<(String, Vec<u8>)>) -> impl Future<Output = Result<Vec<Appended>, LogError>> + Send;

    /// Up to `max` records of `partition` from offset `from` (fewer, or none, at the end).
    fn read(&self, partition: u32, from: u64, max: usize)
    -> impl Future<Output = Result<Vec<Record>, LogError>> + Send;

    /// The offset the next record of `partition` will get.
    fn end_offset(&self, partition: u32) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// Records where `group` resumes `partition`.
    fn commit(&self, group: &str, partition: u32, at: Checkpoint) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Where `group` resumes `partition` (`None`: never committed).
    fn committed(
        &self,
        group: &str,
        partition: u32,
    ) -> impl Future<Output = Result<Option<Checkpoint>, LogError>> + Send;
}

const HEADER: usize = 8;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Partition {
    path: PathBuf,
    /// Byte position of every record, plus the end of the last one.
    index: RwLock<Vec<u64>>,
    reader: File,
}

struct Append {
    records: Vec<(u32, String, Vec<u8>)>,
    done: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// The embedded log on local disk.
#[derive(Clone)]
pub struct FileLog {
    dir: PathBuf,
    partitions: Arc<Vec<Partition>>,
    writer: mpsc::Sender<Append>,
}

/// What opening a log found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    /// Bytes cut from torn or corrupt tails.
    pub truncated_bytes: u64,
}

fn encode_record(key: &str, value: &[u8], out: &mut Vec<u8>) {
    let payload_len = 2 + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode_payload(payload: &[u8]) -> Option<(String, Vec<u8>)> {
    let key_len = u16::from_le_bytes(payload.get(..2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(payload.get(2..2 + key_len)?).ok()?;
    Some((key.to_string(), payload[2 + key_len..].to_vec()))
}

/// Scans a partition file: the position of every whole, intact record and where they end.
fn scan(file: &mut File) -> io::Result<Vec<u64>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    let mut index = Vec::new();
    let mut pos = 0usize;
    while pos + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap_or_default());
        let end = pos + HEADER + len;
        if len < 2 || end > bytes.len() || crc32fast::hash(&bytes[pos + HEADER..end]) != crc {
            break;
        }
        index.push(pos as u64);
        pos = end;
    }
    index.push(pos as u64);
    Ok(index)
}

impl FileLog {
    /// Opens (creating) the log in `dir` with `partitions` partitions. A log keeps the number
    /// it was created with; asking for another is an error.
    pub fn open(dir: &Path, partitions: u32) -> Result<(Self, Recovered), LogError> {
        let partitions = partitions.max(1);
        std::fs::create_dir_all(dir.join("offsets")).map_err(io_err(dir))?;
        let existing = (0..)
            .take_while(|p| dir.join(format!("partition-{p}.log")).exists())
            .count() as u32;
        if existing > 0 && existing != partitions {
            return Err(LogError::Io {
                path: dir.to_path_buf(),
                source: io::Error::other(format!(
                    "the log has {existing} partitions, {partitions} were asked for"
                )),
            });
        }
        let mut recovered = Recovered::default();
        let mut parts = Vec::new();
        let mut writers = Vec::new();
        for p in 0..partitions {
            let path = dir.join(format!("partition-{p}.log"));
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let index = scan(&mut file).map_err(io_err(&path))?;
            let end = *index.last().unwrap_or(&0);
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len > end {
                tracing::warn!(path = %path.display(), cut = len - end, "event log: cutting a torn tail");
                file.set_len(end).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                recovered.truncated_bytes += len - end;
            }
            file.seek(SeekFrom::Start(end)).map_err(io_err(&path))?;
            recovered.records += index.len() as u64 - 1;
            let reader = File::open(&path).map_err(io_err(&path))?;
            parts.push(Partition {
                path: path.clone(),
                index: RwLock::new(index),
                reader,
            });
            writers.push((path, file));
        }
        let partitions = Arc::new(parts);
        let (tx, rx) = mpsc::channel::<Append>();
        let shared = partitions.clone();
        std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || write_loop(rx, writers, shared))
            .map_err(io_err(dir))?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                partitions,
                writer: tx,
            },
            recovered,
        ))
    }

    fn partition(&self, partition: u32) -> Result<&Partition, LogError> {
        self.partitions.get(partition as usize).ok_or(LogError::NoPartition {
            partition,
            partitions: self.partitions.len() as u32,
        })
    }

    fn offset_path(&self, group: &str, partition: u32) -> PathBuf {
        let safe: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("offsets").join(format!("{safe}-{partition}"))
    }
}

/// The writer thread: group commit of everything waiting.
fn write_loop(rx: mpsc::Receiver<Append>, mut files: Vec<(PathBuf, File)>, parts: Arc<Vec<Partition>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
        let mut positions: Vec<Vec<u64>> = vec![Vec::new(); files.len()];
        // Each partition's first new offset and byte end, from one look at its index.
        let (first_offsets, ends): (Vec<u64>, Vec<u64>) = parts
            .iter()
            .map(|p| {
                let index = p.index.read().unwrap_or_else(|e| e.into_inner());
                (index.len() as u64 - 1, *index.last().unwrap_or(&0))
            })
            .unzip();
        let mut placed: Vec<Vec<Appended>> = Vec::with_capacity(batch.len());
        for append in &batch {
            let mut out = Vec::with_capacity(append.records.len());
            for (p, key, value) in &append.records {
                let p = *p as usize;
                out.push(Appended {
                    partition: p as u32,
                    offset: first_offsets[p] + positions[p].len() as u64,
                });
                positions[p].push(ends[p] + buffers[p].len() as u64);
                encode_record(key, value, &mut buffers[p]);
            }
            placed.push(out);
        }
        let mut result: Result<(), (PathBuf, io::ErrorKind, String)> = Ok(());
        for (p, buf) in buffers.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let (path, file) = &mut files[p];
            if let Err(e) = file.write_all(buf).and_then(|_| file.sync_data()) {
                result = Err((path.clone(), e.kind(), e.to_string()));
                break;
            }
        }
        if result.is_ok() {
            for (p, pos) in positions.into_iter().enumerate() {
                if pos.is_empty() {
                    continue;
                }
                let end = ends[p] + buffers[p].len() as u64;
                let mut index = parts[p].index.write().unwrap_or_else(|e| e.into_inner());
                index.pop();
                index.extend(pos);
                index.push(end);
            }
        } else {
            // Put every file back where it was (the failed one and any written before it):
            // nothing of a failed batch stays behind.
            for (p, (_, file)) in files.iter_mut().enumerate() {
                let _ = file.set_len(ends[p]);
                let _ = file.seek(SeekFrom::Start(ends[p]));
            }
        }
        for (append, out) in batch.into_iter().zip(placed) {
            let reply = match &result {
                Ok(()) => Ok(out),
                Err((path, kind, msg)) => Err(LogError::Io {
                    path: path.clone(),
                    source: io::Error::new(*kind, msg.clone()),
                }),
            };
            let _ = append.done.send(reply);
        }
    }
}

impl EventLog for FileLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(&self, records: Vec<(String, Vec<u8>)>) -> Result<Vec<Appended>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.partitions();
        let mut placed = Vec::with_capacity(records.len());
        for (key, value) in records {
            if key.len() > u16::MAX as usize {
                return Err(LogError::KeyTooLong { key });
            }
            placed.push((partition_of(&key, n), key, value));
        }
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Append { records: placed, done })
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let part = self.partition(partition)?;
        let (start, end, positions) = {
            let index = part.index.read().unwrap_or_else(|e| e.into_inner());
            let count = index.len() as u64 - 1;
            if from >= count || max == 0 {
                return Ok(Vec::new());
            }
            let last = from.saturating_add(max as u64).min(count);
            let positions: Vec<u64> = index[from as usize..=last as usize].to_vec();
            (positions[0], positions[positions.len() - 1], positions)
        };
        let mut bytes = vec![0u8; (end - start) as usize];
        part.reader
            .read_exact_at(&mut bytes, start)
            .map_err(io_err(&part.path))?;
        let mut out = Vec::with_capacity(positions.len() - 1);
        for (i, w) in positions.windows(2).enumerate() {
            let (a, b) = ((w[0] - start) as usize, (w[1] - start) as usize);
            let (key, value) = decode_payload(&bytes[a + HEADER..b]).ok_or_else(|| LogError::Io {
                path: part.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("record {} unreadable", from + i as u64),
                ),
            })?;
            out.push(Record {
                offset: from + i as u64,
                key,
                value,
            });
        }
        Ok(out)
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        let part = self.partition(partition)?;
        Ok(part.index.read().unwrap_or_else(|e| e.into_inner()).len() as u64 - 1)
    }

    async fn commit(&self, group: &str, partition: u32, at: Checkpoint) -> Result<(), LogError> {
        self.partition(partition)?;
        let path = self.offset_path(group, partition);
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(at.encode().as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io_err(&path))
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<Checkpoint>, LogError> {
        self.partition(partition)?;
        let path = self.offset_path(group, partition);
        match std::fs::read_to_string(&path) {
            Ok(s) => Checkpoint::decode(&s).map(Some).ok_or_else(|| LogError::Io {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("not an offset: {s:?}")),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize, prefix: &str) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("item-{}", i % 7), format!("{prefix}-{i}").into_bytes()))
            .collect()
    }

    async fn all(log: &FileLog) -> Vec<Vec<Record>> {
        let mut out = Vec::new();
        for p in 0..log.partitions() {
            out.push(log.read(p, 0, usize::MAX).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn appends_are_read_back_in_order_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = FileLog::open(dir.path(), 3).unwrap();
        assert_eq!(rec, Recovered::default());
        let placed = log.append(recs(50, "a")).await.unwrap();
        assert_eq!(placed.len(), 50);
        for (i, a) in placed.iter().enumerate() {
            assert_eq!(a.partition, partition_of(&format!("item-{}", i % 7), 3));
        }
        let parts = all(&log).await;
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 50);
        for (p, records) in parts.iter().enumerate() {
            for (o, r) in records.iter().enumerate() {
                assert_eq!(r.offset, o as u64);
                assert_eq!(partition_of(&r.key, 3), p as u32);
            }
            // Values of one key keep their order.
            let of_key: Vec<usize> = records
                .iter()
                .filter(|r| r.key == "item-3")
                .map(|r| String::from_utf8_lossy(&r.value)[2..].parse().unwrap())
                .collect();
            assert!(of_key.windows(2).all(|w| w[0] < w[1]));
        }
        // Reads from the middle, past the end, bounded by max.
        let p = placed[10].partition;
        let mid = log.read(p, placed[10].offset, 2).await.unwrap();
        assert_eq!(mid[0].value, b"a-10");
        assert_eq!(mid.len(), 2);
        let end = log.end_offset(p).await.unwrap();
        assert!(log.read(p, end, 10).await.unwrap().is_empty());
        assert!(matches!(log.read(9, 0, 1).await, Err(LogError::NoPartition { .. })));
    }

    #[tokio::test]
    async fn concurrent_appends_get_distinct_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = FileLog::open(dir.path(), 2).unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move { log.append(recs(25, &format!("t{t}"))).await.unwrap() })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            for a in t.await.unwrap() {
                assert!(seen.insert((a.partition, a.offset)), "offset given twice: {a:?}");
            }
        }
        assert_eq!(seen.len(), 500);
        let parts = all(&log).await;
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 500);
    }

    #[tokio::test]
    async fn reopening_keeps_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = FileLog::open(dir.path(), 1).unwrap();
            log.append(recs(10, "x")).await.unwrap();
            log.commit(
                "stream",
                0,
                Checkpoint {
                    offset: 4,
                    watermark: -7,
                },
            )
            .await
            .unwrap();
        }
        // A crash mid-write: half a record at the end.
        let path = dir.path().join("partition-0.log");
        let mut half = Vec::new();
        encode_record("k", b"torn value", &mut half);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&half[..half.len() - 3]).unwrap();
        drop(f);
        let (log, rec) = FileLog::open(dir.path(), 1).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.truncated_bytes, half.len() as u64 - 3);
        assert_eq!(
            log.committed("stream", 0).await.unwrap(),
            Some(Checkpoint {
                offset: 4,
                watermark: -7
            })
        );
        assert_eq!(Checkpoint::decode("12"), Some(Checkpoint::at(12)));
        assert_eq!(log.committed("other", 0).await.unwrap(), None);
        // Appends continue after the last whole record.
        let a = log.append(vec![("k".into(), b"next".to_vec())]).await.unwrap();
        assert_eq!(a[0].offset, 10);
        let back = log.read(0, 9, 5).await.unwrap();
        assert_eq!(
            back.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            vec![b"x-9".to_vec(), b"next".to_vec()]
        );
        assert!(FileLog::open(dir.path(), 4).is_err());
    }

    #[tokio::test]
    async fn a_corrupt_record_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = FileLog::open(dir.path(), 1).unwrap();
            log.append(recs(5, "y")).await.unwrap();
        }
        let path = dir.path().join("partition-0.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = FileLog::open(dir.path(), 1).unwrap();
        assert_eq!(rec.records, 4);
        assert_eq!(log.end_offset(0).await.unwrap(), 4);
    }
}
