#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcu_server::fuzzing::join_token(data));
