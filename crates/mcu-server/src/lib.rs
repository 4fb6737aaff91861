//! An MCU: a WebRTC conference server that composites a whole room into one picture, encodes it
//! once, and sends it to every participant with a mix-minus audio mix. See README.md for the
//! architecture and ../shared/STYLE.md for the design habits.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod config;
pub mod files;
pub mod http;
pub mod ids;
pub mod layout;
pub mod media;
pub mod protocol;
pub mod recordings;
pub mod room;
pub mod rtc;
pub mod server;
pub mod session;
pub mod signalling;
pub mod tls;
