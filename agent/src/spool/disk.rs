//! The on-disk side of the spool: the batch file format and the directory.
//!
//! One file per batch, named `<sequence, 20 digits>.batch` so that a plain
//! directory listing sorts oldest first. Layout (little-endian):
//!
//! | offset | size | field                                        |
//! |--------|------|----------------------------------------------|
//! | 0      | 4    | magic `EMSB` (etcd-monitor spool batch)      |
//! | 4      | 2    | format version, `1`                          |
//! | 6      | 2    | flags, `0` (reserved; anything else rejects) |
//! | 8      | 8    | sequence (must match the file name)          |
//! | 16     | 8    | payload length                               |
//! | 24     | 4    | CRC-32 (IEEE) of the payload                 |
//! | 28     | n    | payload                                      |
//!
//! A file is written under `<name>.tmp`, fsynced and only then renamed to
//! its final name, so a crash at any point leaves either no file, a
//! `.tmp` leftover (deleted at the next start) or a complete file under the
//! final name. The sequence and length in the header let a cheap check at
//! start-up (header plus file size, no payload read) catch truncation; the
//! CRC is verified whenever a payload is read back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes before the payload in a batch file.
pub(crate) const HEADER_LEN: u64 = 28;

const MAGIC: [u8; 4] = *b"EMSB";
const VERSION: u16 = 1;
const SUFFIX: &str = ".batch";
const TMP_SUFFIX: &str = ".tmp";
/// Digits in a batch file name: enough for `u64::MAX`, so names of every
/// sequence have the same length and sort numerically as strings.
const NAME_DIGITS: usize = 20;

/// Name of the lock file that keeps two agents off one directory.
const LOCK_FILE: &str = "lock";

/// Why a batch file could not be used.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is damaged (truncated, bad header, wrong CRC): delete it.
    Corrupt(String),
    /// The file could not be read; it may be fine, so leave it alone.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        // A file that ends early is damaged, not unreadable.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Corrupt("file ends inside the header".into())
        } else {
            ReadError::Io(e)
        }
    }
}

/// Size on disk of the file for a payload of `payload_len` bytes.
pub(crate) fn file_size(payload_len: u64) -> u64 {
    HEADER_LEN.saturating_add(payload_len)
}

/// Final path of the file for `sequence`.
pub(crate) fn batch_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:0NAME_DIGITS$}{SUFFIX}"))
}

fn tmp_path(final_path: &Path) -> PathBuf {
    let mut name = final_path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// The sequence a batch file name stands for, or `None` for other names.
pub(crate) fn parse_batch_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // 20 digits can exceed u64::MAX; such a name is not one of ours.
    digits.parse().ok()
}

/// Whether `name` is a temporary file this module (or the sequence file)
/// may have left behind in a crash.
pub(crate) fn is_leftover_tmp(name: &str) -> bool {
    match name.strip_suffix(TMP_SUFFIX) {
        Some(base) => parse_batch_name(base).is_some() || base == super::sequence::FILE_NAME,
        None => false,
    }
}

fn encode_header(sequence: u64, payload: &[u8]) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    // h[6..8]: flags, zero.
    h[8..16].copy_from_slice(&sequence.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// What a valid header says.
struct Header {
    payload_len: u64,
    crc: u32,
}

fn decode_header(h: &[u8; HEADER_LEN as usize], sequence: u64) -> Result<Header, ReadError> {
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if h[0..4] != MAGIC {
        return Err(ReadError::Corrupt("bad magic".into()));
    }
    let version = u16_at(4);
    if version != VERSION {
        return Err(ReadError::Corrupt(format!(
            "unknown format version {version}"
        )));
    }
    let flags = u16_at(6);
    if flags != 0 {
        return Err(ReadError::Corrupt(format!("unknown flags {flags:#x}")));
    }
    let found = u64_at(8);
    if found != sequence {
        return Err(ReadError::Corrupt(format!(
            "header holds sequence {found}, file name says {sequence}"
        )));
    }
    Ok(Header {
        payload_len: u64_at(16),
        crc: u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
    })
}

/// Opens the file for `sequence`, checks its header against the name and
/// the file's size, and leaves the reader at the start of the payload.
fn open_checked(dir: &Path, sequence: u64) -> Result<(File, Header, u64), ReadError> {
    let mut f = File::open(batch_path(dir, sequence))?;
    let size = f.metadata()?.len();
    let mut h = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut h)?;
    let header = decode_header(&h, sequence)?;
    if file_size(header.payload_len) != size {
        return Err(ReadError::Corrupt(format!(
            "file has {size} bytes, header promises {}",
            file_size(header.payload_len)
        )));
    }
    Ok((f, header, size))
}

/// Cheap start-up check: header and size, without reading the payload.
/// Returns the file size.
pub(crate) fn inspect(dir: &Path, sequence: u64) -> Result<u64, ReadError> {
    open_checked(dir, sequence).map(|(_, _, size)| size)
}

/// Reads the payload of `sequence` and verifies its CRC.
pub(crate) fn read_batch(dir: &Path, sequence: u64) -> Result<Vec<u8>, ReadError> {
    let (mut f, header, _) = open_checked(dir, sequence)?;
    let len = usize::try_from(header.payload_len)
        .map_err(|_| ReadError::Corrupt("payload length does not fit in memory".into()))?;
    let mut payload = vec![0u8; len];
    f.read_exact(&mut payload)?;
    let crc = crc32fast::hash(&payload);
    if crc != header.crc {
        return Err(ReadError::Corrupt(format!(
            "payload CRC {crc:#010x}, header says {:#010x}",
            header.crc
        )));
    }
    Ok(payload)
}

/// Writes the file for `sequence` crash-safely: temp name, fsync, rename.
/// Returns the file size. The directory entry is made durable by a later
/// [`sync_dir`], which the spool does once per operation rather than once
/// per file.
pub(crate) fn write_batch(dir: &Path, sequence: u64, payload: &[u8]) -> io::Result<u64> {
    let path = batch_path(dir, sequence);
    let tmp = tmp_path(&path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // Batches hold the member's metrics and names: owner only.
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode_header(sequence, payload))?;
        f.write_all(payload)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        // Best effort: do not leave a partial temp file to use up the disk.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(file_size(payload.len() as u64))
}

/// Deletes the file for `sequence`; a file that is already gone is fine.
pub(crate) fn remove_batch(dir: &Path, sequence: u64) -> io::Result<()> {
    match fs::remove_file(batch_path(dir, sequence)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes renames and creations in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes an exclusive, non-blocking `flock` on `dir/lock`. The lock lives
/// as long as the returned file: two agents sharing a directory would hand
/// out the same sequence numbers and delete each other's files.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "spool directory {} is in use by another process",
                dir.display()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// What a start-up scan of the directory found.
#[derive(Default)]
pub(crate) struct Scan {
    /// Sequences of batch files, in no particular order.
    pub batches: Vec<u64>,
    /// Temp files left by a crash mid-write.
    pub leftovers: Vec<PathBuf>,
}

/// Lists batch files and crash leftovers; other names are ignored.
pub(crate) fn scan(dir: &Path) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_batch_name(name) {
            scan.batches.push(seq);
        } else if is_leftover_tmp(name) {
            scan.leftovers.push(entry.path());
        }
    }
    Ok(scan)
}
