//! Every rkyv wire type through the validation a receiver runs (`Message::<T>::new`), then
//! read in full. Input: byte 0 picks the type (see `multispace_fuzz::wire::WIRE_TYPES`), byte
//! 1 the payload's alignment in memory, the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| multispace_fuzz::wire::check(data));
