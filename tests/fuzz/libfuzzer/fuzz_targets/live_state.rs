//! libFuzzer entry of `etcdmon_fuzz::live_state` (see tests/fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etcdmon_fuzz::live_state(data));
