#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| osfarm_core::fuzz::tar(data));
