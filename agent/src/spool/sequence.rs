//! The batch sequence counter, persisted so that it never goes backwards.
//!
//! The collector deduplicates per agent on the sequence number, so a number
//! that is handed out twice makes the collector throw away a real batch. To
//! avoid an fsync per batch the counter reserves numbers in blocks: before
//! handing out the first number of a block it durably records the end of
//! the block (the *limit*, the first number not yet reserved) in
//! `dir/sequence`. After a restart, crash or not, counting resumes at the
//! recorded limit; the unused rest of the last block is skipped, which only
//! leaves a gap (the collector must tolerate gaps anyway: dropped batches
//! leave them too).
//!
//! File layout (20 bytes, little-endian): magic `EMSQ`, version `u16` = 1,
//! flags `u16` = 0, limit `u64`, CRC-32 of the preceding 16 bytes. It is
//! replaced via a temp file, fsync, rename and directory fsync, so it is
//! always either the old or the new reservation.
//!
//! Every start begins at the highest of: the recorded limit, one past the
//! newest batch still on disk, and the wall clock in microseconds since the
//! Unix epoch. A counter only advances by one per batch and by one block per
//! restart, far slower than a microsecond clock, so even an agent whose
//! directory was wiped or whose file is damaged does not reuse the numbers of
//! its earlier life (as long as the clock has not been set back; the file
//! covers that case).
//!
//! When the reservation cannot be saved (a full or read-only disk), the batch
//! is not lost: the counter jumps to at least the clock and hands out numbers
//! from there without a reservation, retrying the save at every number. A
//! restart, crash or not, begins at the clock again, past all of them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the reservation file in the spool directory.
pub(crate) const FILE_NAME: &str = "sequence";

/// Numbers reserved per fsync.
pub(crate) const BLOCK: u64 = 1000;

const MAGIC: [u8; 4] = *b"EMSQ";
const VERSION: u16 = 1;
const LEN: usize = 20;

/// A counter whose numbers strictly increase across restarts.
#[derive(Debug)]
pub(crate) struct SequenceCounter {
    path: PathBuf,
    dir: PathBuf,
    /// The number the next call returns.
    next: u64,
    /// First number not covered by the durable reservation.
    limit: u64,
    /// The last reservation failed (logged once per failing stretch).
    failing: bool,
}

impl SequenceCounter {
    /// Loads the reservation in `dir`; the first number handed out is at
    /// least `floor` (one past the newest batch recovered from disk).
    pub(crate) fn open(dir: &Path, floor: u64) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let start = match fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Some(limit) => limit,
                None => {
                    let seed = clock_seed();
                    tracing::warn!(
                        path = %path.display(),
                        seed,
                        "spool: sequence file is damaged; continuing from the wall clock"
                    );
                    seed
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => clock_seed(),
            Err(e) => return Err(e),
        };
        // The clock too: numbers handed out without a reservation (see
        // `next`) lie at or just above the clock of their time.
        let next = start.max(floor).max(clock_seed()).max(1);
        Ok(SequenceCounter {
            path,
            dir: dir.to_path_buf(),
            next,
            // Nothing of the range from `next` on is reserved by this run
            // yet, so the first call writes a reservation.
            limit: next,
            failing: false,
        })
    }

    /// The highest number handed out so far in this agent's life (0 for none):
    /// numbers only go up, across restarts too, so no batch of this agent can
    /// carry a higher one.
    pub(crate) fn issued_through(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Hands out the next number, first reserving a new block if needed. A
    /// reservation that cannot be saved does not stop it (see the module
    /// docs); only running out of numbers does.
    pub(crate) fn next(&mut self) -> io::Result<u64> {
        if self.next >= self.limit {
            let limit = self
                .next
                .checked_add(BLOCK)
                .ok_or_else(|| io::Error::other("spool: batch sequence numbers are exhausted"))?;
            match self.persist(limit) {
                Ok(()) => {
                    if self.failing {
                        tracing::info!(path = %self.path.display(), "spool: sequence reservation saved again");
                    }
                    self.failing = false;
                    self.limit = limit;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(path = %self.path.display(), error = %e,
                            "spool: cannot save the sequence reservation; numbering from the clock until it can");
                    }
                    self.failing = true;
                    self.next = self.next.max(clock_seed());
                }
            }
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }

    fn persist(&self, limit: u64) -> io::Result<()> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode(limit))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        // Unlike batch files, the reservation must be durable before any
        // number from it is used: a rename lost to a power cut would bring
        // back the old limit and with it numbers already handed out.
        super::disk::sync_dir(&self.dir)
    }
}

fn encode(limit: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&limit.to_le_bytes());
    let crc = crc32fast::hash(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || b[0..4] != MAGIC || b[4..6] != VERSION.to_le_bytes() || b[6..8] != [0, 0] {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if crc != crc32fast::hash(&b[0..16]) {
        return None;
    }
    Some(u64::from_le_bytes(b[8..16].try_into().ok()?))
}

/// Microseconds since the Unix epoch (1 if the clock is before it).
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_reject_damage() {
        let b = encode(123_456);
        assert_eq!(decode(&b), Some(123_456));
        for i in 0..LEN {
            let mut d = b;
            d[i] ^= 0x01;
            assert_eq!(decode(&d), None, "flipped byte {i} accepted");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
    }

    #[test]
    fn reserves_in_blocks_and_resumes_past_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SequenceCounter::open(dir.path(), 10).unwrap();
        let first = c.next().unwrap();
        assert!(first >= 10);
        for i in 1..5 {
            assert_eq!(c.next().unwrap(), first + i);
        }
        drop(c);
        // The reservation covered [first, first + BLOCK): a restart must
        // start past all of it, whatever was actually used.
        let mut c = SequenceCounter::open(dir.path(), 0).unwrap();
        assert!(c.next().unwrap() >= first + BLOCK);
    }

    /// A full or read-only disk must not cost batches: numbers keep coming,
    /// above everything handed out before, and a restart starts above them.
    #[test]
    fn an_unsaved_reservation_still_numbers_and_a_restart_starts_above() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SequenceCounter::open(dir.path(), 0).unwrap();
        let mut last = c.next().unwrap();
        c.limit = c.next; // the block is used up
                          // The temp file cannot be created: a directory is in its place.
        fs::create_dir(dir.path().join(format!("{FILE_NAME}.tmp"))).unwrap();
        for _ in 0..3 {
            let n = c.next().expect("numbers despite the failing reservation");
            assert!(n > last, "{n} after {last}");
            last = n;
        }
        assert!(c.failing);
        drop(c);
        let mut c = SequenceCounter::open(dir.path(), 0).unwrap();
        assert!(c.next().unwrap() > last, "a restart reuses no number");
        fs::remove_dir(dir.path().join(format!("{FILE_NAME}.tmp"))).unwrap();
        c.limit = c.next;
        let n = c.next().expect("saved again");
        assert!(n > last && !c.failing && c.limit > n);
    }

    #[test]
    fn floor_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SequenceCounter::open(dir.path(), 0).unwrap();
        let first = c.next().unwrap();
        drop(c);
        // Far enough ahead that the clock does not catch up during the test.
        let floor = first + 1_000_000_000;
        let mut c = SequenceCounter::open(dir.path(), floor).unwrap();
        assert_eq!(c.next().unwrap(), floor);
    }

    #[test]
    fn damaged_file_falls_back_to_the_clock_not_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        let mut c = SequenceCounter::open(dir.path(), 0).unwrap();
        // 2020-01-01 in microseconds: the clock, not a small number.
        assert!(c.next().unwrap() > 1_577_836_800_000_000);
    }
}
