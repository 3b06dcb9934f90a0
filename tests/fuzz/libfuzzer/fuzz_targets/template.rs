//! libFuzzer entry of `etcdmon_fuzz::template` (see tests/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etcdmon_fuzz::template(data));
