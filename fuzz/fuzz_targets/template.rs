//! The checks live in `signgate::fuzzing::template`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signgate::fuzzing::template(data));
