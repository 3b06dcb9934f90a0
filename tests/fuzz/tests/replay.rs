//! Every fuzz target on stable, in every test run: the committed corpus
//! (`tests/fuzz/corpus/<target>/`, grown by libFuzzer runs of `scripts/fuzz`),
//! built-in seeds, and a fixed set of deterministic mutations of them. Not a
//! substitute for coverage-guided fuzzing; it keeps every input that ever found
//! something, and a few thousand neighbours of each seed, passing.

use std::path::{Path, PathBuf};

use etcdmon_proto::v1::{
    report::Body, Alarm, CertExpiry, Certificate, EtcdStatus, Failure, Label, Member, MetricFamily,
    MetricType, MetricsScrape, Report, Sample,
};
use prost::Message as _;

/// Mutated inputs per target and test run.
const MUTATIONS: usize = 10_000;
/// Largest mutated input (the parser's seed is larger and is mutated in place).
const MAX_LEN: usize = 1 << 16;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The committed corpus of `target`, then the built-in seeds.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.extend(built_in(target));
    out
}

fn built_in(target: &str) -> Vec<Vec<u8>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    match target {
        "promtext" => vec![
            include_bytes!("../../../common/promtext/tests/fixtures/etcd-3.4.23.txt").to_vec(),
            b"# TYPE a histogram\na_bucket{le=\"+Inf\",x=\"\\\"\\n\"} 1 1700000000000\na_sum NaN\n".to_vec(),
        ],
        "report_rows" => reports().iter().map(|r| r.encode_to_vec()).collect(),
        "live_state" => {
            // Length-prefixed as the target reads them: (member << 6 | len / 16).
            let mut joined = Vec::new();
            for (i, r) in reports().iter().enumerate() {
                let mut msg = r.encode_to_vec();
                msg.resize(msg.len().div_ceil(16) * 16, 0);
                joined.push(((i as u8 % 3) << 6) | (msg.len() / 16).min(63) as u8);
                joined.extend(msg);
            }
            vec![joined]
        }
        "time_range" => text(&[
            "now-15m\nnow",
            "2026-11-27T15:00:00Z\n1795000000.5",
            "now-300y\n1e300",
            "0\n253402300799.999",
        ]),
        "matcher" => text(&[
            r#"rule="quorum_lost""#,
            r#"rule=~"quorum_at_risk|no_leader|member_.*""#,
            r#"cluster!~"(a|b)+""#,
            r#"member!="""#,
        ]),
        "template" => text(&[
            "{{ status }} {% for a in alerts %}{{ a.labels.cluster }} {{ a.annotations.summary | mrkdwn }}{% endfor %}",
            "{{ (alerts | first).value }} {{ num_firing * 3 }} {{ external_url ~ '/x' }}",
        ]),
        other => panic!("no seeds for {other}"),
    }
}

/// A few real-looking reports: a status with members and alarms, a metrics
/// scrape with a histogram, certificates.
fn reports() -> Vec<Report> {
    let status = EtcdStatus {
        reachable: true,
        member_id: 1,
        leader_id: 1,
        raft_term: 2,
        raft_index: 10,
        db_size_bytes: 4096,
        db_size_in_use_bytes: 2048,
        version: "3.5.1".into(),
        alarms: vec![Alarm {
            member_id: 2,
            alarm: "NOSPACE".into(),
        }],
        members: (1..=3)
            .map(|i| Member {
                id: i,
                name: format!("m{}", i - 1),
                is_learner: i == 3,
                ..Default::default()
            })
            .collect(),
        failures: vec![Failure::new(
            "status",
            etcdmon_proto::v1::ErrorKind::Timeout,
            "x",
        )],
        ..Default::default()
    };
    let sample = |le: &str, v: f64| Sample {
        labels: vec![Label {
            name: "le".into(),
            value: le.into(),
        }],
        value: v,
        ..Default::default()
    };
    let scrape = MetricsScrape {
        families: vec![MetricFamily {
            name: "etcd_disk_wal_fsync_duration_seconds".into(),
            r#type: MetricType::Histogram as i32,
            samples: vec![sample("0.001", 1.0), sample("+Inf", 2.0)],
        }],
        ..Default::default()
    };
    let certs = CertExpiry {
        certificates: vec![Certificate {
            path: "https://127.0.0.1:2379".into(),
            days_left: 4.5,
            ..Default::default()
        }],
    };
    [
        Body::Status(status),
        Body::Metrics(scrape),
        Body::Certs(certs),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, body)| Report {
        timestamp_unix_ms: 1_000_000 + i as i64,
        body: Some(body),
        ..Default::default()
    })
    .collect()
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to eight byte-level edits, or a splice with another seed.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: [&[u8]; 6] = [
        b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
        b"\x00",
        b"\"",
        b"\\",
        b"{",
        b"\n",
    ];
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next() as u8;
            }
            2 => data.insert(at, rng.next() as u8),
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(32)).min(data.len());
                let chunk = data[start..end].to_vec();
                data.splice(at..at, chunk);
            }
            5 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, word.iter().copied());
            }
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    if seed.len() <= MAX_LEN {
        data.truncate(MAX_LEN);
    }
    data
}

/// Runs `target` on `input`; on a panic, saves the input beside the corpus and
/// fails naming the file, so the finding can be replayed and fixed.
fn run(name: &str, target: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| target(input)).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
        std::fs::create_dir_all(&dir).expect("findings dir");
        let path = dir.join(format!("{name}-{:016x}", fnv(input)));
        std::fs::write(&path, input).expect("save the finding");
        panic!("fuzz target {name} panicked on {} (saved)", path.display());
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    for &(name, target) in etcdmon_fuzz::TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        for seed in &seeds {
            run(name, target, seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fnv(name.as_bytes()));
        for _ in 0..MUTATIONS {
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            run(name, target, &mutate(&mut rng, seed, other));
        }
    }
}
