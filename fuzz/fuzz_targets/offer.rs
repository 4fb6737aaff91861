#![no_main]

use std::sync::OnceLock;

use mcu_server::fuzzing::OfferTarget;

/// One runtime and WebRTC factory for every input.
static TARGET: OnceLock<OfferTarget> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    TARGET
        .get_or_init(|| OfferTarget::new().expect("a runtime and a WebRTC factory"))
        .run(data);
});
