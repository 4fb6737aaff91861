#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcu_server::fuzzing::file_chunk(data));
