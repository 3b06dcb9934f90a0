//! libFuzzer entry of `etcdmon_fuzz::matcher` (see tests/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etcdmon_fuzz::matcher(data));
