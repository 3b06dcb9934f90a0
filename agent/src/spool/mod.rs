//! The agent's spool: every batch sent to the collector but not yet
//! acknowledged, kept so that nothing is lost while the collector (or its
//! database) is away or while the agent restarts.
//!
//! # Data flow
//!
//! ```text
//! push ──► memory ──(memory full: oldest spill)──► disk ──(disk full)──► dropped, counted
//!   │                                                ▲
//!   └──(payload larger than the memory budget)───────┘
//! ack(n) ──► removes every batch with sequence <= n, from memory and disk
//! ```
//!
//! * [`Spool::push`] stores a batch in memory. When the in-memory bytes
//!   would pass [`SpoolConfig::memory_bytes`], the *oldest* in-memory
//!   batches are spilled to disk first, so memory holds the newest data.
//!   A payload larger than the whole memory budget goes straight to disk.
//! * Writing to disk respects [`SpoolConfig::disk_bytes`]: to make room the
//!   spool drops the oldest batch, whichever that is, the oldest file on
//!   disk or the batch being written. Dropped batches and their payload
//!   bytes are counted in [`SpoolStats`] for the agent's `/metrics`.
//! * [`Spool::ack`] is cumulative, like the collector's acknowledgement.
//! * [`Spool::pending`] lists what is held, oldest first, which is the
//!   order to resend in after reconnecting; [`Spool::get`] fetches a
//!   payload, from memory or from disk.
//! * [`Spool::flush_to_disk`] moves everything to disk on shutdown
//!   (SIGTERM), and [`Spool::open`] recovers it in the next run.
//! * [`Spool::next_sequence`] numbers batches; numbers increase strictly
//!   across restarts, at one fsync per thousand numbers (see the
//!   `sequence` submodule).
//!
//! "Oldest" means lowest sequence: sequences come from
//! [`Spool::next_sequence`], so they increase with time.
//!
//! # Why one file per batch
//!
//! Acknowledging or dropping a batch is one `unlink`, with no compaction
//! and no rewriting of a shared log; a damaged file costs exactly one
//! batch; the directory listing is the index, so recovery needs no
//! separate metadata that could disagree with the data. Batches are a few
//! kilobytes to megabytes and arrive every few seconds, so the per-file
//! overhead (a 28-byte header and an inode) does not matter.
//!
//! # Crash safety
//!
//! A batch file is written under a temporary name, fsynced and renamed
//! (format in the `disk` submodule), so a file under its final name is complete; leftovers
//! of a crash mid-write are deleted at the next [`Spool::open`]. The
//! directory is fsynced once per operation that wrote files. Deletions are
//! not fsynced: one that a power cut undoes only brings back a batch that
//! is resent and deduplicated by the collector. At start-up every file's
//! header and size are checked (catching truncation) and the payload's
//! CRC is checked whenever it is read; damaged files are logged, deleted
//! and counted as dropped. A crash (SIGKILL, OOM, power loss) loses what
//! was only in memory; a clean shutdown calls [`Spool::flush_to_disk`] and
//! loses nothing. A lock file (`flock`) keeps a second agent out of the
//! directory.
//!
//! The spool is synchronous and does blocking file I/O: async callers run
//! it under `spawn_blocking` or accept the short block.

mod disk;
mod sequence;
#[cfg(test)]
mod tests;

use sequence::SequenceCounter;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

/// Where the spool lives and how much it may hold.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory for spilled batches, the sequence reservation and the lock
    /// file; created if missing. One agent per directory.
    pub dir: PathBuf,
    /// Payload bytes held in memory before the oldest batches spill to disk.
    pub memory_bytes: u64,
    /// Bytes of batch files (headers included) on disk before the oldest
    /// batches are dropped.
    pub disk_bytes: u64,
}

/// What the spool holds and has dropped, for the agent's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Payload bytes of the batches held in memory.
    pub memory_bytes: u64,
    /// Size of the batch files on disk, headers included.
    pub disk_bytes: u64,
    /// Batches held, in memory and on disk.
    pub batches: u64,
    /// Batches dropped since [`Spool::open`]: to stay within the disk
    /// budget, or because their file was damaged or failed to write.
    pub dropped_batches: u64,
    /// Payload bytes of the dropped batches (for a damaged file, the bytes
    /// it held after the header).
    pub dropped_bytes: u64,
    /// Sequence of the oldest batch held, `None` when empty.
    pub oldest_sequence: Option<u64>,
}

/// Unacknowledged batches, in memory and spilled to disk. See the module
/// documentation.
pub struct Spool {
    cfg: SpoolConfig,
    /// Held in memory: sequence to payload.
    memory: BTreeMap<u64, Vec<u8>>,
    /// Held on disk: sequence to file size.
    disk: BTreeMap<u64, u64>,
    memory_used: u64,
    disk_used: u64,
    dropped_batches: u64,
    dropped_bytes: u64,
    sequence: SequenceCounter,
    /// Whether the disk budget has forced drops since the last ack: the
    /// first such drop is logged, the rest only counted.
    dropping: bool,
    /// Holds the directory's `flock` for as long as the spool lives.
    _lock: File,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.cfg.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool directory and recovers what an
    /// earlier run left on disk: batch files are checked (header and size)
    /// and damaged ones are deleted, logged and counted as dropped;
    /// temporary files of an interrupted write are deleted; if the files
    /// exceed `disk_bytes` (a lowered budget) the oldest are dropped.
    ///
    /// Fails if the directory cannot be created or read, or is locked by
    /// another process (`ErrorKind::WouldBlock`).
    pub fn open(cfg: SpoolConfig) -> io::Result<Spool> {
        fs::create_dir_all(&cfg.dir)?;
        let lock = disk::lock_dir(&cfg.dir)?;
        let scan = disk::scan(&cfg.dir)?;
        for path in &scan.leftovers {
            tracing::info!(path = %path.display(), "spool: deleting the leftover of an interrupted write");
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }

        let mut dropped_batches = 0;
        let mut dropped_bytes = 0;
        let mut on_disk = BTreeMap::new();
        for seq in scan.batches {
            match disk::inspect(&cfg.dir, seq) {
                Ok(size) => {
                    on_disk.insert(seq, size);
                }
                Err(disk::ReadError::Corrupt(why)) => {
                    let path = disk::batch_path(&cfg.dir, seq);
                    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    tracing::warn!(path = %path.display(), %why, "spool: deleting a damaged batch file");
                    disk::remove_batch(&cfg.dir, seq)?;
                    dropped_batches += 1;
                    dropped_bytes += size.saturating_sub(disk::HEADER_LEN);
                }
                // Vanished since the listing: nothing to recover.
                Err(disk::ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(disk::ReadError::Io(e)) => return Err(e),
            }
        }

        // Never hand out a number at or below a batch that is still held,
        // even if the sequence file was lost.
        let floor = on_disk
            .last_key_value()
            .map_or(0, |(&seq, _)| seq.saturating_add(1));
        let sequence = SequenceCounter::open(&cfg.dir, floor)?;

        let disk_used = on_disk.values().sum();
        let mut spool = Spool {
            cfg,
            memory: BTreeMap::new(),
            disk: on_disk,
            memory_used: 0,
            disk_used,
            dropped_batches,
            dropped_bytes,
            sequence,
            dropping: false,
            _lock: lock,
        };
        if spool.disk_used > spool.cfg.disk_bytes {
            tracing::warn!(
                bytes = spool.disk_used,
                budget = spool.cfg.disk_bytes,
                "spool: recovered batches exceed the disk budget; dropping the oldest"
            );
            while spool.disk_used > spool.cfg.disk_bytes {
                spool.drop_oldest_on_disk();
            }
        }
        if !spool.disk.is_empty() {
            tracing::info!(
                dir = %spool.cfg.dir.display(),
                batches = spool.disk.len(),
                bytes = spool.disk_used,
                "spool: recovered unacknowledged batches"
            );
        }
        Ok(spool)
    }

    /// The next batch sequence number: strictly increasing, also across
    /// restarts and crashes. Costs an fsync once per thousand numbers; a
    /// reservation that cannot be saved (full disk) is logged and numbering
    /// goes on from the clock, so the batch is kept in memory. Fails only when
    /// the numbers are exhausted.
    pub fn next_sequence(&mut self) -> io::Result<u64> {
        self.sequence.next()
    }

    /// The highest sequence number this agent has handed out, across restarts: a
    /// collector that says it stored more is speaking of another agent's batches.
    pub fn issued_through(&self) -> u64 {
        self.sequence.issued_through()
    }

    /// Stores an encoded batch under `sequence` (from
    /// [`Spool::next_sequence`]).
    ///
    /// If memory would pass its budget the oldest in-memory batches spill
    /// to disk first; a payload larger than the memory budget goes straight
    /// to disk; disk space is made by dropping the oldest batches (counted),
    /// and a payload larger than the disk budget as well is dropped and
    /// counted. A batch that fails to write to disk is dropped, counted and
    /// logged rather than kept past the memory budget, so a failing disk
    /// shows up in the dropped counters, not as an error here.
    ///
    /// Fails with `ErrorKind::InvalidInput`, changing nothing, if
    /// `sequence` is already held.
    pub fn push(&mut self, sequence: u64, payload: Vec<u8>) -> io::Result<()> {
        if self.memory.contains_key(&sequence) || self.disk.contains_key(&sequence) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("spool: batch {sequence} is already held"),
            ));
        }
        let len = payload.len() as u64;
        let mut wrote = false;
        if len > self.cfg.memory_bytes {
            wrote |= self.spill_or_drop(sequence, &payload);
        } else {
            while self.memory_used + len > self.cfg.memory_bytes {
                let Some((seq, p)) = self.memory.pop_first() else {
                    break;
                };
                self.memory_used -= p.len() as u64;
                wrote |= self.spill_or_drop(seq, &p);
            }
            self.memory_used += len;
            self.memory.insert(sequence, payload);
        }
        if wrote {
            self.sync_dir_logged();
        }
        Ok(())
    }

    /// Acknowledges every batch with a sequence up to and including
    /// `sequence`: they are removed from memory and their files deleted.
    pub fn ack(&mut self, sequence: u64) {
        // `split_off(k)` keeps keys >= k; what stays behind is acknowledged.
        let (acked_mem, acked_disk) = match sequence.checked_add(1) {
            Some(k) => {
                let kept_mem = self.memory.split_off(&k);
                let kept_disk = self.disk.split_off(&k);
                (
                    std::mem::replace(&mut self.memory, kept_mem),
                    std::mem::replace(&mut self.disk, kept_disk),
                )
            }
            // `u64::MAX` acknowledges everything.
            None => (
                std::mem::take(&mut self.memory),
                std::mem::take(&mut self.disk),
            ),
        };
        if !acked_mem.is_empty() || !acked_disk.is_empty() {
            self.dropping = false;
        }
        self.memory_used -= acked_mem.values().map(|p| p.len() as u64).sum::<u64>();
        for (seq, size) in acked_disk {
            self.disk_used -= size;
            if let Err(e) = disk::remove_batch(&self.cfg.dir, seq) {
                // Left behind, the file is recovered and resent by the next
                // run and deduplicated by the collector: harmless.
                tracing::warn!(seq, error = %e, "spool: could not delete an acknowledged batch");
            }
        }
    }

    /// Sequences of the batches held, oldest first: the resend order.
    pub fn pending(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .memory
            .keys()
            .chain(self.disk.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// The payload of a held batch, or `None` if it is not held. A spilled
    /// batch is read from disk and its CRC checked; a damaged (or vanished)
    /// file is deleted, logged, counted as dropped and reported as `None`.
    /// Fails only if the file exists but cannot be read.
    pub fn get(&mut self, sequence: u64) -> io::Result<Option<Vec<u8>>> {
        if let Some(p) = self.memory.get(&sequence) {
            return Ok(Some(p.clone()));
        }
        let Some(&size) = self.disk.get(&sequence) else {
            return Ok(None);
        };
        let why = match disk::read_batch(&self.cfg.dir, sequence) {
            Ok(p) => return Ok(Some(p)),
            Err(disk::ReadError::Corrupt(why)) => why,
            Err(disk::ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                "file vanished".to_string()
            }
            Err(disk::ReadError::Io(e)) => return Err(e),
        };
        tracing::warn!(
            path = %disk::batch_path(&self.cfg.dir, sequence).display(),
            %why,
            "spool: dropping a damaged batch file"
        );
        self.disk.remove(&sequence);
        self.disk_used -= size;
        self.count_drop(size.saturating_sub(disk::HEADER_LEN));
        if let Err(e) = disk::remove_batch(&self.cfg.dir, sequence) {
            tracing::warn!(sequence, error = %e, "spool: could not delete a damaged batch file");
        }
        Ok(None)
    }

    /// Moves every in-memory batch to disk, oldest first, for a shutdown
    /// that loses nothing. The disk budget still holds: the oldest batches
    /// are dropped (and counted) if everything does not fit. On a write
    /// error the batches not yet written stay in memory and the error is
    /// returned.
    pub fn flush_to_disk(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        let mut wrote = false;
        while let Some((seq, payload)) = self.memory.pop_first() {
            match self.make_room_and_write(seq, &payload) {
                Ok(w) => {
                    wrote |= w;
                    self.memory_used -= payload.len() as u64;
                }
                Err(e) => {
                    self.memory.insert(seq, payload);
                    result = Err(e);
                    break;
                }
            }
        }
        if wrote {
            disk::sync_dir(&self.cfg.dir)?;
        }
        result
    }

    /// What is held and what was dropped.
    pub fn stats(&self) -> SpoolStats {
        let oldest = match (self.memory.keys().next(), self.disk.keys().next()) {
            (Some(&m), Some(&d)) => Some(m.min(d)),
            (m, d) => m.or(d).copied(),
        };
        SpoolStats {
            memory_bytes: self.memory_used,
            disk_bytes: self.disk_used,
            batches: (self.memory.len() + self.disk.len()) as u64,
            dropped_batches: self.dropped_batches,
            dropped_bytes: self.dropped_bytes,
            oldest_sequence: oldest,
        }
    }

    /// Writes a batch that has left memory; a write error drops it (counted
    /// and logged). Returns whether a file was written.
    fn spill_or_drop(&mut self, sequence: u64, payload: &[u8]) -> bool {
        match self.make_room_and_write(sequence, payload) {
            Ok(wrote) => wrote,
            Err(e) => {
                tracing::warn!(sequence, error = %e, "spool: could not spill a batch to disk; dropping it");
                self.count_drop(payload.len() as u64);
                false
            }
        }
    }

    /// Writes `sequence` to disk within the disk budget. While it does not
    /// fit, the oldest of (the oldest file on disk, this batch) is dropped:
    /// usually the file, but a batch older than everything on disk (disk
    /// holds only newer oversized batches) is itself the one to go.
    /// Returns whether it was written (`false`: dropped and counted). On a
    /// write error nothing about this batch is counted.
    fn make_room_and_write(&mut self, sequence: u64, payload: &[u8]) -> io::Result<bool> {
        let len = payload.len() as u64;
        let size = disk::file_size(len);
        if size > self.cfg.disk_bytes {
            tracing::warn!(
                sequence,
                bytes = len,
                budget = self.cfg.disk_bytes,
                "spool: batch is larger than the disk budget; dropping it"
            );
            self.count_drop(len);
            return Ok(false);
        }
        while self.disk_used + size > self.cfg.disk_bytes {
            if !self.dropping {
                self.dropping = true;
                tracing::warn!(
                    budget = self.cfg.disk_bytes,
                    "spool: disk budget full; dropping the oldest batches until the collector acknowledges"
                );
            }
            match self.disk.keys().next() {
                Some(&oldest) if oldest < sequence => self.drop_oldest_on_disk(),
                _ => {
                    self.count_drop(len);
                    return Ok(false);
                }
            }
        }
        let written = disk::write_batch(&self.cfg.dir, sequence, payload)?;
        self.disk.insert(sequence, written);
        self.disk_used += written;
        Ok(true)
    }

    /// Drops the oldest batch on disk, counting it.
    fn drop_oldest_on_disk(&mut self) {
        let Some((seq, size)) = self.disk.pop_first() else {
            return;
        };
        self.disk_used -= size;
        self.count_drop(size.saturating_sub(disk::HEADER_LEN));
        if let Err(e) = disk::remove_batch(&self.cfg.dir, seq) {
            tracing::warn!(sequence = seq, error = %e, "spool: could not delete a dropped batch file");
        }
    }

    fn count_drop(&mut self, payload_bytes: u64) {
        self.dropped_batches += 1;
        self.dropped_bytes += payload_bytes;
    }

    fn sync_dir_logged(&self) {
        // The files themselves are fsynced; only the durability of their
        // names across a power cut is at stake, so this is not worth
        // failing a push for.
        if let Err(e) = disk::sync_dir(&self.cfg.dir) {
            tracing::warn!(dir = %self.cfg.dir.display(), error = %e, "spool: could not fsync the directory");
        }
    }
}
