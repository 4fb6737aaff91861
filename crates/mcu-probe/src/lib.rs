//! Synthetic participants that join an MCU through its wire protocol (docs/protocol.md), send
//! media of known content and measure what comes back. One participant (`participant.rs`, on the
//! signalling `link.rs`, with chat and files in `sharing.rs`) serves both tools: `mcu probe`
//! (colours and tones, the checks behind the tests) and `mcu bench` (frame codes and tone bursts,
//! the figures behind docs/performance.md).

pub mod bench;
pub mod frames;
pub mod heard;
pub mod impair;
mod link;
mod participant;
pub mod probe;
pub mod sharing;
