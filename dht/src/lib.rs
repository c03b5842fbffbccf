//! Partitioned, replicated hash table with a consistent view through node failures and on-line
//! recovery of crashed replicas (the paper's distributed hash table, section 3.3.1).
//!
//! Not built yet: see issue 6. It will own the partition and replica-group maps, a raft-rs
//! replica per group with our write-ahead log behind raft-rs's `Storage`, and its transport.
#![forbid(unsafe_code)]
