//! The checks live in `signgate::fuzzing::webhook`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signgate::fuzzing::webhook(data));
