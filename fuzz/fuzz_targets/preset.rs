#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ctxd::fuzzing::preset(data));
