//! Tests of the spool: placement between memory and disk, budgets and
//! drops, acknowledgement, recovery, damaged files, sequence numbers, and a
//! property test over random operation sequences.

use super::disk::{self, HEADER_LEN};
use super::{Spool, SpoolConfig};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

fn cfg(dir: &Path, memory_bytes: u64, disk_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        memory_bytes,
        disk_bytes,
    }
}

/// A payload that differs per sequence, length and salt, so a mix-up of
/// batches or a wrong length shows.
fn payload(seq: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ salt)
        .collect()
}

/// Size of the file of a payload of `len` bytes.
fn fsize(len: u64) -> u64 {
    HEADER_LEN + len
}

/// Sequences of the batch files in `dir`, sorted, with their total size.
fn files(dir: &Path) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut bytes = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if let Some(seq) = disk::parse_batch_name(e.file_name().to_str().unwrap()) {
            seqs.push(seq);
            bytes += e.metadata().unwrap().len();
        }
    }
    seqs.sort_unstable();
    (seqs, bytes)
}

/// The spool's own bookkeeping agrees with itself, its limits and the
/// directory.
fn assert_consistent(s: &Spool) {
    let st = s.stats();
    let pending = s.pending();
    assert!(
        pending.windows(2).all(|w| w[0] < w[1]),
        "not oldest first: {pending:?}"
    );
    assert_eq!(st.batches, pending.len() as u64);
    assert_eq!(st.oldest_sequence, pending.first().copied());
    assert_eq!(
        st.memory_bytes,
        s.memory.values().map(|p| p.len() as u64).sum::<u64>()
    );
    assert!(st.memory_bytes <= s.cfg.memory_bytes, "{st:?}");
    assert!(st.disk_bytes <= s.cfg.disk_bytes, "{st:?}");
    let (on_disk, bytes) = files(&s.cfg.dir);
    assert_eq!(on_disk, s.disk.keys().copied().collect::<Vec<_>>());
    assert_eq!(st.disk_bytes, bytes);
    assert!(s.memory.keys().all(|k| !s.disk.contains_key(k)));
}

fn flip_byte(path: &Path, offset: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

#[test]
fn push_within_memory_stays_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 100, 1000)).unwrap();
    for seq in 1..=3 {
        s.push(seq, payload(seq, 30, 0)).unwrap();
    }
    assert_eq!(s.pending(), vec![1, 2, 3]);
    let st = s.stats();
    assert_eq!(st.memory_bytes, 90);
    assert_eq!(st.disk_bytes, 0);
    assert_eq!(st.batches, 3);
    assert_eq!(st.oldest_sequence, Some(1));
    assert_eq!(files(dir.path()).0, Vec::<u64>::new());
    for seq in 1..=3 {
        assert_eq!(s.get(seq).unwrap(), Some(payload(seq, 30, 0)));
    }
    assert_eq!(s.get(4).unwrap(), None);
    assert_consistent(&s);
}

#[test]
fn exceeding_memory_spills_the_oldest_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 100, 10_000)).unwrap();
    for seq in 1..=5 {
        s.push(seq, payload(seq, 30, 1)).unwrap();
    }
    // Memory keeps the newest three (90 bytes); 1 and 2 went to disk.
    assert_eq!(s.memory.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(files(dir.path()).0, vec![1, 2]);
    assert!(dir.path().join("00000000000000000001.batch").is_file());
    let st = s.stats();
    assert_eq!(st.memory_bytes, 90);
    assert_eq!(st.disk_bytes, 2 * fsize(30));
    assert_eq!(st.dropped_batches, 0);
    assert_eq!(s.pending(), vec![1, 2, 3, 4, 5]);
    for seq in 1..=5 {
        assert_eq!(
            s.get(seq).unwrap(),
            Some(payload(seq, 30, 1)),
            "batch {seq}"
        );
    }
    assert_consistent(&s);
}

#[test]
fn exceeding_disk_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    // Memory for two batches, disk for two more.
    let mut s = Spool::open(cfg(dir.path(), 60, 2 * fsize(30))).unwrap();
    for seq in 1..=6 {
        s.push(seq, payload(seq, 30, 2)).unwrap();
        assert_consistent(&s);
    }
    assert_eq!(s.pending(), vec![3, 4, 5, 6]);
    assert_eq!(files(dir.path()).0, vec![3, 4]);
    let st = s.stats();
    assert_eq!(st.dropped_batches, 2);
    assert_eq!(st.dropped_bytes, 60);
    assert_eq!(st.oldest_sequence, Some(3));
    for seq in 3..=6 {
        assert_eq!(s.get(seq).unwrap(), Some(payload(seq, 30, 2)));
    }
    assert_eq!(s.get(1).unwrap(), None);
}

#[test]
fn the_spilled_batch_itself_is_dropped_when_it_is_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 100, 200)).unwrap();
    s.push(1, payload(1, 30, 0)).unwrap();
    s.push(2, payload(2, 30, 0)).unwrap();
    // Too big for memory: straight to disk, newer than 1 and 2.
    s.push(3, payload(3, 150, 0)).unwrap();
    assert_eq!(files(dir.path()).0, vec![3]);
    // Spilling 1 needs disk room; 1 is older than everything on disk, so
    // 1 goes, not the newer 3.
    s.push(4, payload(4, 50, 0)).unwrap();
    assert_eq!(s.pending(), vec![2, 3, 4]);
    assert_eq!(s.stats().dropped_batches, 1);
    assert_eq!(s.stats().dropped_bytes, 30);
    assert_eq!(s.get(3).unwrap(), Some(payload(3, 150, 0)));
    assert_consistent(&s);
}

#[test]
fn a_payload_larger_than_memory_goes_to_disk_and_one_larger_than_disk_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 50, fsize(500))).unwrap();
    s.push(1, payload(1, 10, 3)).unwrap();
    s.push(2, payload(2, 500, 3)).unwrap();
    assert_eq!(s.memory.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(files(dir.path()).0, vec![2]);
    assert_eq!(s.get(2).unwrap(), Some(payload(2, 500, 3)));

    s.push(3, payload(3, 501, 3)).unwrap();
    assert_eq!(s.pending(), vec![1, 2]);
    let st = s.stats();
    assert_eq!(st.dropped_batches, 1);
    assert_eq!(st.dropped_bytes, 501);
    assert_eq!(s.get(3).unwrap(), None);
    assert_consistent(&s);
}

#[test]
fn zero_budgets_hold_nothing_but_count_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 0, 0)).unwrap();
    s.push(1, payload(1, 10, 0)).unwrap();
    s.push(2, payload(2, 20, 0)).unwrap();
    // An empty payload fits in a zero memory budget.
    s.push(3, Vec::new()).unwrap();
    assert_eq!(s.pending(), vec![3]);
    assert_eq!(s.stats().dropped_batches, 2);
    assert_eq!(s.stats().dropped_bytes, 30);
    assert_consistent(&s);
}

#[test]
fn ack_is_cumulative_over_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 60, 10_000)).unwrap();
    for seq in 1..=6 {
        s.push(seq, payload(seq, 30, 4)).unwrap();
    }
    assert_eq!(files(dir.path()).0, vec![1, 2, 3, 4]);
    // Acknowledging a number between held ones works too.
    s.ack(2);
    assert_eq!(s.pending(), vec![3, 4, 5, 6]);
    assert_eq!(files(dir.path()).0, vec![3, 4]);
    assert_consistent(&s);
    s.ack(5);
    assert_eq!(s.pending(), vec![6]);
    assert_eq!(files(dir.path()).0, Vec::<u64>::new());
    assert_eq!(s.get(4).unwrap(), None);
    assert_eq!(s.get(6).unwrap(), Some(payload(6, 30, 4)));
    // An old acknowledgement changes nothing.
    s.ack(1);
    assert_eq!(s.pending(), vec![6]);
    s.ack(u64::MAX);
    assert_eq!(s.pending(), Vec::<u64>::new());
    let st = s.stats();
    assert_eq!((st.memory_bytes, st.disk_bytes, st.batches), (0, 0, 0));
    assert_eq!(st.oldest_sequence, None);
    assert_eq!(st.dropped_batches, 0);
    assert_consistent(&s);
}

#[test]
fn a_duplicate_sequence_is_rejected_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 10, 1000)).unwrap();
    s.push(1, payload(1, 100, 0)).unwrap(); // on disk
    s.push(2, payload(2, 5, 0)).unwrap(); // in memory
    let before = s.stats();
    for seq in [1, 2] {
        let e = s.push(seq, payload(seq, 3, 9)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
    assert_eq!(s.stats(), before);
    assert_eq!(s.get(1).unwrap(), Some(payload(1, 100, 0)));
    assert_eq!(s.get(2).unwrap(), Some(payload(2, 5, 0)));
}

#[test]
fn reopen_after_flush_recovers_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 200, 100_000);
    let mut s = Spool::open(c.clone()).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..12u64 {
        let seq = s.next_sequence().unwrap();
        let len = [0, 1, 40, 90, 300][i as usize % 5];
        let p = payload(seq, len, 5);
        s.push(seq, p.clone()).unwrap();
        want.insert(seq, p);
    }
    let acked = *want.keys().nth(2).unwrap();
    s.ack(acked);
    want.retain(|&k, _| k > acked);
    assert!(!s.memory.is_empty() && !s.disk.is_empty());
    let before = s.pending();
    s.flush_to_disk().unwrap();
    assert!(s.memory.is_empty());
    assert_eq!(s.stats().memory_bytes, 0);
    assert_eq!(s.pending(), before);
    assert_consistent(&s);
    let disk_bytes = s.stats().disk_bytes;
    drop(s);

    let mut s = Spool::open(c).unwrap();
    assert_eq!(s.pending(), before);
    assert_eq!(s.pending(), want.keys().copied().collect::<Vec<_>>());
    let st = s.stats();
    assert_eq!(st.disk_bytes, disk_bytes);
    assert_eq!(st.memory_bytes, 0);
    assert_eq!(st.dropped_batches, 0);
    for (seq, p) in &want {
        assert_eq!(s.get(*seq).unwrap().as_ref(), Some(p), "batch {seq}");
    }
    assert_consistent(&s);
}

#[test]
fn flush_respects_the_disk_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 1000, 2 * fsize(30))).unwrap();
    for seq in 1..=4 {
        s.push(seq, payload(seq, 30, 6)).unwrap();
    }
    s.flush_to_disk().unwrap();
    assert_eq!(s.pending(), vec![3, 4]);
    assert_eq!(files(dir.path()).0, vec![3, 4]);
    assert_eq!(s.stats().dropped_batches, 2);
    assert_eq!(s.stats().dropped_bytes, 60);
    assert_consistent(&s);
}

#[test]
fn a_lowered_disk_budget_drops_the_oldest_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(dir.path(), 0, 10_000)).unwrap();
    for seq in 1..=5 {
        s.push(seq, payload(seq, 30, 7)).unwrap();
    }
    drop(s);
    let s = Spool::open(cfg(dir.path(), 0, 2 * fsize(30))).unwrap();
    assert_eq!(s.pending(), vec![4, 5]);
    assert_eq!(s.stats().dropped_batches, 3);
    assert_eq!(s.stats().dropped_bytes, 90);
    assert_consistent(&s);
}

#[test]
fn next_sequence_increases_across_clean_restarts_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 1 << 20, 1 << 20);
    let mut issued = Vec::new();
    for round in 0..4 {
        let mut s = Spool::open(c.clone()).unwrap();
        // Cross a reservation block boundary in one of the rounds.
        let n = if round == 1 { 2500 } else { 3 };
        for _ in 0..n {
            let seq = s.next_sequence().unwrap();
            s.push(seq, payload(seq, 8, 0)).unwrap();
            issued.push(seq);
        }
        if round % 2 == 0 {
            s.flush_to_disk().unwrap();
        }
        // Odd rounds end in a simulated crash: no flush, memory lost.
        drop(s);
    }
    assert!(
        issued.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers went backwards or repeated"
    );
}

#[test]
fn next_sequence_stays_above_held_batches_without_the_sequence_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 0, 10_000);
    let high = 1u64 << 62; // far above the wall-clock seed
    let mut s = Spool::open(c.clone()).unwrap();
    s.push(high, payload(high, 10, 0)).unwrap();
    drop(s);
    fs::remove_file(dir.path().join(super::sequence::FILE_NAME)).ok();
    let mut s = Spool::open(c).unwrap();
    assert!(s.next_sequence().unwrap() > high);
}

#[test]
fn a_flipped_payload_byte_is_detected_on_read_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 0, 10_000);
    let mut s = Spool::open(c.clone()).unwrap();
    for seq in 1..=3 {
        s.push(seq, payload(seq, 30, 8)).unwrap();
    }
    flip_byte(&disk::batch_path(dir.path(), 2), HEADER_LEN + 5);
    // Detected while running...
    assert_eq!(s.get(2).unwrap(), None);
    assert_eq!(s.pending(), vec![1, 3]);
    assert_eq!(s.stats().dropped_batches, 1);
    assert_eq!(s.stats().dropped_bytes, 30);
    assert_consistent(&s);
    drop(s);

    // ...and after a restart: the header is intact, so the file is listed
    // until its payload is read.
    flip_byte(&disk::batch_path(dir.path(), 3), HEADER_LEN + 29);
    let mut s = Spool::open(c).unwrap();
    assert_eq!(s.get(3).unwrap(), None);
    assert_eq!(s.get(1).unwrap(), Some(payload(1, 30, 8)));
    assert_eq!(s.pending(), vec![1]);
    assert_eq!(s.stats().dropped_batches, 1);
    assert_eq!(files(dir.path()).0, vec![1]);
    assert_consistent(&s);
}

#[test]
fn damaged_headers_and_truncated_files_are_skipped_at_open_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 0, 10_000);
    let mut s = Spool::open(c.clone()).unwrap();
    for seq in 1..=6 {
        s.push(seq, payload(seq, 30, 9)).unwrap();
    }
    drop(s);
    // Damage the magic, the sequence and the payload length.
    flip_byte(&disk::batch_path(dir.path(), 1), 0);
    flip_byte(&disk::batch_path(dir.path(), 2), 9);
    flip_byte(&disk::batch_path(dir.path(), 3), 17);
    // Truncated inside the payload and inside the header.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk::batch_path(dir.path(), 4))
        .unwrap();
    f.set_len(HEADER_LEN + 10).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk::batch_path(dir.path(), 5))
        .unwrap();
    f.set_len(7).unwrap();

    let mut s = Spool::open(c).unwrap();
    assert_eq!(s.pending(), vec![6]);
    assert_eq!(files(dir.path()).0, vec![6]);
    let st = s.stats();
    assert_eq!(st.dropped_batches, 5);
    // Bytes after the header: three intact lengths, 10, and none.
    assert_eq!(st.dropped_bytes, 3 * 30 + 10);
    assert_eq!(s.get(6).unwrap(), Some(payload(6, 30, 9)));
    assert_consistent(&s);
}

#[test]
fn open_deletes_crash_leftovers_and_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("00000000000000000007.batch.tmp"), b"half").unwrap();
    fs::write(dir.path().join("sequence.tmp"), b"half").unwrap();
    fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
    fs::write(dir.path().join("7.batch"), b"not our name").unwrap();
    let s = Spool::open(cfg(dir.path(), 10, 1000)).unwrap();
    assert!(!dir.path().join("00000000000000000007.batch.tmp").exists());
    assert!(!dir.path().join("sequence.tmp").exists());
    assert!(dir.path().join("notes.txt").exists());
    assert!(dir.path().join("7.batch").exists());
    assert_eq!(s.pending(), Vec::<u64>::new());
    assert_eq!(s.stats().dropped_batches, 0);
}

#[test]
fn open_creates_the_directory_and_locks_it() {
    let root = tempfile::tempdir().unwrap();
    let c = cfg(&root.path().join("a/b/spool"), 10, 1000);
    let s = Spool::open(c.clone()).unwrap();
    let e = Spool::open(c.clone()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    drop(s);
    Spool::open(c).unwrap();
}

#[test]
fn batch_names_sort_numerically() {
    let dir = Path::new("/x");
    let name = |seq| {
        disk::batch_path(dir, seq)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(42), "00000000000000000042.batch");
    assert!(name(9) < name(10) && name(99_999) < name(u64::MAX));
    assert_eq!(disk::parse_batch_name(&name(u64::MAX)), Some(u64::MAX));
    assert_eq!(disk::parse_batch_name("99999999999999999999.batch"), None);
    assert_eq!(disk::parse_batch_name("0000000000000000004a.batch"), None);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Push {
        len: usize,
        salt: u8,
    },
    /// Acknowledge the held batch at this index (or everything issued).
    Ack(prop::sample::Index),
    Flush,
    /// Drop the spool and open it again, after a flush or as after a crash.
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..300, any::<u8>()).prop_map(|(len, salt)| Op::Push { len, salt }),
        3 => any::<prop::sample::Index>().prop_map(Op::Ack),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// What the spool should hold: everything pushed and not acknowledged,
/// except what it reports as dropped or what a crash took from memory.
#[derive(Default)]
struct Model {
    live: BTreeMap<u64, Vec<u8>>,
    last_issued: Option<u64>,
    /// Drops seen since the last open; the spool's counters restart too.
    dropped_batches: u64,
    dropped_bytes: u64,
}

fn check(s: &mut Spool, m: &mut Model) -> Result<(), TestCaseError> {
    assert_consistent(s);
    let held = s.pending();
    for seq in &held {
        prop_assert!(
            m.live.contains_key(seq),
            "holds {seq}, never pushed or acked"
        );
    }
    // Whatever is no longer held was dropped, and must be counted as such.
    let gone: Vec<u64> = m
        .live
        .keys()
        .copied()
        .filter(|k| held.binary_search(k).is_err())
        .collect();
    let oldest_on_disk = s.disk.keys().next().copied();
    for seq in gone {
        let p = m.live.remove(&seq).unwrap_or_default();
        m.dropped_batches += 1;
        m.dropped_bytes += p.len() as u64;
        // Oldest first: a drop never spares an older batch on disk, unless
        // the dropped batch could never fit on disk at all.
        if fsize(p.len() as u64) <= s.cfg.disk_bytes {
            if let Some(oldest) = oldest_on_disk {
                prop_assert!(
                    seq < oldest,
                    "dropped {} but kept older {} on disk",
                    seq,
                    oldest
                );
            }
        }
    }
    let st = s.stats();
    prop_assert_eq!(st.dropped_batches, m.dropped_batches);
    prop_assert_eq!(st.dropped_bytes, m.dropped_bytes);
    for (seq, p) in &m.live {
        let got = s.get(*seq)?;
        prop_assert_eq!(got.as_ref(), Some(p), "payload of {}", seq);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_the_spool_consistent(
        memory_bytes in 0u64..400,
        disk_bytes in 0u64..1200,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), memory_bytes, disk_bytes);
        let mut s = Spool::open(c.clone())?;
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Push { len, salt } => {
                    let seq = s.next_sequence()?;
                    if let Some(last) = m.last_issued {
                        prop_assert!(seq > last, "sequence {} after {}", seq, last);
                    }
                    m.last_issued = Some(seq);
                    let p = payload(seq, len, salt);
                    s.push(seq, p.clone())?;
                    m.live.insert(seq, p);
                }
                Op::Ack(i) => {
                    let keys: Vec<u64> = m.live.keys().copied().collect();
                    let upto = if keys.is_empty() {
                        m.last_issued.unwrap_or(0)
                    } else {
                        keys[i.index(keys.len())]
                    };
                    s.ack(upto);
                    m.live.retain(|&k, _| k > upto);
                }
                Op::Flush => {
                    s.flush_to_disk()?;
                    prop_assert_eq!(s.stats().memory_bytes, 0);
                    prop_assert!(s.memory.is_empty());
                }
                Op::Reopen { clean } => {
                    if clean {
                        s.flush_to_disk()?;
                        check(&mut s, &mut m)?;
                    } else {
                        // A crash loses exactly what was only in memory.
                        for seq in s.memory.keys() {
                            m.live.remove(seq);
                        }
                    }
                    drop(s);
                    s = Spool::open(c.clone())?;
                    m.dropped_batches = 0;
                    m.dropped_bytes = 0;
                    // Same budget, undamaged files: all of it comes back.
                    prop_assert_eq!(s.pending(), m.live.keys().copied().collect::<Vec<_>>());
                    prop_assert_eq!(s.stats().dropped_batches, 0);
                }
            }
            check(&mut s, &mut m)?;
        }
    }
}
