//! Cross-crate integration tests and, later, a deterministic cluster simulator.
//! The tests themselves live in `tests/tests/`.
#![forbid(unsafe_code)]
