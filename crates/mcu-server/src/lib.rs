//! An MCU: a WebRTC conference server that composites a whole room into one picture, encodes it
//! once, and sends it to every participant with a mix-minus audio mix. See README.md for the
//! architecture and ../shared/STYLE.md for the design habits.

mod admin;
pub mod admission;
pub mod auth;
pub mod canvas;
pub mod cluster;
pub mod codec;
pub mod config;
mod files;
#[doc(hidden)]
pub mod fuzzing;
mod http;
pub mod ids;
pub mod layout;
mod listener;
pub mod load;
mod log_limit;
pub mod media;
pub mod metrics;
pub mod proc_stat;
pub mod protocol;
mod rate;
mod recordings;
mod room;
pub mod rtc;
mod rtp;
pub mod server;
mod session;
mod signalling;
pub mod speaker;
mod tls;
mod whip;
