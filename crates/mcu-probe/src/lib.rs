//! Synthetic participants that join an MCU through its wire protocol (docs/protocol.md), send
//! media of known content and measure what comes back: `mcu probe` (colours and tones, the
//! checks behind the tests) and `mcu bench` (frame codes and tone bursts, the figures behind
//! docs/performance.md).

pub mod bench;
pub mod probe;
