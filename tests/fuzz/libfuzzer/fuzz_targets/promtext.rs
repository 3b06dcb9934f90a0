//! libFuzzer entry of `etcdmon_fuzz::promtext` (see tests/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etcdmon_fuzz::promtext(data));
