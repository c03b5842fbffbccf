//! The dht's write-ahead-log replay (`Wal::open`) over segment files with arbitrary contents:
//! the decoder of what a crash, a full disk or a bad sector left on disk. Its record parser is
//! private, so the target goes through the public replay, on files in a RAM-backed directory.
//!
//! Input: up to four records (see `multispace_fuzz::records`), each one segment file: its first
//! byte is the segment's first LSN (the file name), the rest its contents. Checked beyond "no
//! panic": a log that opened once (its torn tail cut off) opens again to the same records with
//! nothing more torn.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use multispace_dht::wal::{Wal, WalOptions};
use multispace_fuzz::records;

/// One directory per fuzzing process, on tmpfs when there is one (the target writes every run).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("multispace-fuzz-wal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the fuzz WAL directory");
        dir
    })
}

fn opts() -> WalOptions {
    // Small limits, so lengths in the input can reach them; zeros after the last record are
    // taken for fill written ahead, as the table's log writes it.
    WalOptions { segment_bytes: 1 << 16, max_record_bytes: 4096, prefill_bytes: 256 }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    for entry in fs::read_dir(dir).expect("read the fuzz WAL directory").flatten() {
        fs::remove_file(entry.path()).expect("clear the fuzz WAL directory");
    }
    for rec in records(data).take(4) {
        let Some((&lsn, contents)) = rec.split_first() else { continue };
        let path = dir.join(format!("wal-{:020}.log", u64::from(lsn)));
        if !path.exists() {
            fs::write(&path, contents).expect("write a segment");
        }
    }
    let Ok((wal, replay)) = Wal::open(dir, opts()) else { return };
    drop(wal);
    let (_wal, again) = Wal::open(dir, opts()).expect("a log that replayed once replays again");
    assert_eq!(again.records, replay.records, "a second replay returned other records");
    assert_eq!(again.torn_bytes, 0, "the first replay left a torn tail behind");
});
