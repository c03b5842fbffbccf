//! `cargo bench --bench validation`: what safety costs per message. Every payload type of
//! the Table 1 rows, opened as a received message would be — validated (bytecheck, what the
//! runtime always does for network bytes) and, for this measurement only, unchecked — then
//! one field read. The difference is the validation cost to set beside a round trip of tens
//! of microseconds (`table1`).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use multispace_rpc::rkyv::util::AlignedVec;
use multispace_rpc::{Message, Validate};

/// `value` archived, in a 16-aligned buffer (as payloads sit in frames).
macro_rules! archived {
    ($value:expr) => {{
        let bytes = multispace_rpc::rkyv::to_bytes::<multispace_rpc::rkyv::rancor::Error>(&$value).expect("archive");
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(&bytes);
        Bytes::from_owner(v)
    }};
}

fn pair<T: Validate>(c: &mut Criterion, row: &str, bytes: Bytes, read: fn(&Message<T>) -> usize) {
    let mut g = c.benchmark_group(format!("validation/{row}"));
    g.bench_function(BenchmarkId::new("validated", bytes.len()), |b| {
        b.iter(|| {
            let m = Message::<T>::new(std::hint::black_box(bytes.clone())).expect("valid");
            std::hint::black_box(read(&m))
        })
    });
    g.bench_function(BenchmarkId::new("unchecked", bytes.len()), |b| {
        b.iter(|| {
            // SAFETY: `bytes` is this process's own archive of a `T`, 16-aligned
            // (`archived`), and never came from a peer; this is the measurement baseline.
            let m = unsafe { Message::<T>::new_unchecked(std::hint::black_box(bytes.clone())) };
            std::hint::black_box(read(&m))
        })
    });
    g.finish();
}

fn validation(c: &mut Criterion) {
    pair::<()>(c, "f()", archived!(()), |m| m.bytes().len());
    pair::<i32>(c, "f(int)", archived!(7i32), |m| m.to_native() as usize);
    pair::<[i32; 4]>(c, "int f(int,int,int,int)", archived!([1i32, 2, 3, 4]), |m| m[3].to_native() as usize);
    for n in [100usize, 1000, 10_000] {
        pair::<Vec<u8>>(c, &format!("f(byte[{n}])"), archived!(vec![7u8; n]), |m| m.len());
    }
}

criterion_group!(benches, validation);
criterion_main!(benches);
