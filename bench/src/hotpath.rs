//! The collector's per-batch CPU work outside the INSERT, timed on one
//! thread before the load starts: decoding the protobuf batch (what tonic's
//! decoder does after gunzip) and converting its reports to rows (the
//! collector's own `report_rows`). With the writer's busy time from the
//! steps (time inside `Storage::write`), this splits the collector's cost
//! into decode, conversion and insert without a profiler.

use crate::payload::{identity, Payload};
use etcdmon_collector::ingest::convert::{report_rows, Target};
use etcdmon_proto::v1::{stream_request, StreamRequest};
use prost::Message as _;
use std::time::{Duration, Instant};

/// Batches per measurement.
const ROUNDS: u32 = 300;

/// Mean single-thread cost per batch.
#[derive(Debug, Clone, Copy)]
pub struct HotPath {
    /// Protobuf decode of one batch.
    pub decode: Duration,
    /// Reports to sample and series rows.
    pub convert: Duration,
    /// Rows per batch.
    pub rows: usize,
}

/// Times decode and conversion of the bench batch.
pub fn measure(payload: &Payload) -> HotPath {
    let id = identity(0);
    let mut bytes = Vec::new();
    payload
        .for_agent(&id)
        .encode_batch(1, 1_700_000_000_000, &mut bytes);
    let target = Target {
        cluster: &id.cluster,
        member: &id.member_name,
    };
    let started = Instant::now();
    let mut decoded = None;
    for _ in 0..ROUNDS {
        decoded = Some(StreamRequest::decode(bytes.as_slice()).expect("bench batch decodes"));
    }
    let decode = started.elapsed() / ROUNDS;
    let Some(StreamRequest {
        kind: Some(stream_request::Kind::Batch(batch)),
    }) = decoded
    else {
        unreachable!("the bench encodes batches");
    };
    let started = Instant::now();
    let mut rows = 0;
    for _ in 0..ROUNDS {
        rows = batch
            .reports
            .iter()
            .map(|r| {
                let (samples, series) = report_rows(&target, r);
                std::hint::black_box(&series);
                samples.len()
            })
            .sum();
    }
    let convert = started.elapsed() / ROUNDS;
    HotPath {
        decode,
        convert,
        rows,
    }
}
