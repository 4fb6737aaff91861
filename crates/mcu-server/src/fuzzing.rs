//! Entry points for fuzzing what clients send: the signalling parser and state machine, the
//! file-chunk decoder, join tokens, the picture size read from camera RTP, and the offer path
//! (an SDP through webrtc-rs's parser and negotiation, as a session applies it). Each takes
//! arbitrary bytes and must return without panicking, whatever they are.
//!
//! `fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run <target>`, see docs/fuzzing.md);
//! `make test` runs each over a few thousand inputs mutated from real messages on stable Rust
//! (the tests below), so a regression shows up without a nightly toolchain.

use std::time::Duration;

use crate::auth::Secret;
use crate::codec::VideoCodec;
use crate::config::RtcOptions;
use crate::protocol::sharing::decode_chunk;
use crate::protocol::{parse_client_message, ClientMessage};
use crate::rtc::RtcFactory;
use crate::signalling::{Action, Signalling};

/// One WebSocket session's text frames, one per line, through the parser and the state machine.
pub fn signalling(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut session = Signalling::new();
    for line in text.split('\n') {
        let Ok(message) = parse_client_message(line) else {
            continue;
        };
        let offered = matches!(message, ClientMessage::Offer { .. });
        if let Ok(Action::Join { .. }) = session.on_message(message) {
            session.joined();
        }
        if offered {
            session.remote_description_applied();
        }
    }
}

/// A binary frame of file bytes.
pub fn file_chunk(data: &[u8]) {
    let _ = decode_chunk(data);
}

/// The secret the join-token target verifies against.
pub const TOKEN_SECRET: &str = "a-fuzzing-secret-of-32-bytes-or-more";

/// A join token, as `join` carries it.
pub fn join_token(data: &[u8]) {
    let secret = Secret::new(TOKEN_SECRET);
    let _ = crate::auth::verify(&secret, &String::from_utf8_lossy(data), "room");
}

/// A camera's RTP packet, read for the picture size it declares, in either codec.
pub fn rtp_size(data: &[u8]) {
    let _ = crate::rtp::declared_size(data, VideoCodec::Vp8);
    let _ = crate::rtp::declared_size(data, VideoCodec::H264);
    let _ = crate::rtp::read(data, VideoCodec::Vp8);
    let _ = crate::rtp::read(data, VideoCodec::H264);
}

/// The offer path: a peer connection set up as a session sets it up, the bytes applied as the
/// client's offer and answered. Holds a runtime and a WebRTC factory for all its inputs.
pub struct OfferTarget {
    runtime: tokio::runtime::Runtime,
    rtc: RtcFactory,
}

/// An offer that takes longer than this is a hang worth reporting; none should.
const OFFER_DEADLINE: Duration = Duration::from_secs(5);

impl OfferTarget {
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let rtc = runtime.block_on(async {
            RtcFactory::new(RtcOptions {
                loopback_only: true,
                ..Default::default()
            })
        })?;
        Ok(OfferTarget { runtime, rtc })
    }

    /// Whether the bytes were answered (most mutations are refused, as they should be).
    pub fn run(&self, data: &[u8]) -> bool {
        let sdp = String::from_utf8_lossy(data).into_owned();
        self.runtime.block_on(async {
            let pc = self
                .rtc
                .peer_connection_with_tracks(VideoCodec::Vp8)
                .await
                .expect("a peer connection");
            let outcome = tokio::time::timeout(OFFER_DEADLINE, crate::rtc::answer(&pc, sdp)).await;
            let _ = pc.close().await;
            outcome
                .expect("an offer is answered or refused within the deadline")
                .is_ok()
        })
    }

    /// A real offer, from a peer connection like a browser's (camera, microphone, both data
    /// channels): the seed the mutations start from.
    pub fn seed_offer(&self) -> anyhow::Result<String> {
        self.runtime.block_on(async {
            let pc = self
                .rtc
                .peer_connection_with_tracks(VideoCodec::Vp8)
                .await?;
            pc.create_data_channel("chat", None).await?;
            let offer = pc.create_offer(None).await?;
            let _ = pc.close().await;
            Ok(offer.sdp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic mutator (xorshift): bit flips, byte changes, cuts, repeats and
    /// splices of the seeds. Not libFuzzer, but it reaches the same error paths cheaply.
    struct Mutator(u64);

    impl Mutator {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
            let mut data = seeds[self.below(seeds.len())].clone();
            for _ in 0..1 + self.below(8) {
                let at = self.below(data.len() + 1);
                let last = data.len().saturating_sub(1);
                match self.below(7) {
                    0 if !data.is_empty() => data[at.min(last)] ^= 1 << self.below(8),
                    1 if !data.is_empty() => data[at.min(last)] = self.next() as u8,
                    2 => data.truncate(at),
                    3 => {
                        let byte = [0u8, 0xff, b'"', b'{', b'}', b'\n', b'0', 0x80][self.below(8)];
                        data.insert(at, byte);
                    }
                    4 if at < data.len() => {
                        let end = (at + self.below(64)).min(data.len());
                        let copy = data[at..end].to_vec();
                        data.splice(at..at, copy);
                    }
                    5 => {
                        let other = &seeds[self.below(seeds.len())];
                        let from = self.below(other.len());
                        data.splice(at..at, other[from..].iter().copied());
                    }
                    _ => {
                        let cut = self.below(data.len().saturating_sub(at) + 1);
                        data.drain(at..at + cut);
                    }
                }
            }
            data
        }
    }

    fn run(seeds: &[Vec<u8>], inputs: usize, target: impl Fn(&[u8])) {
        let mut mutator = Mutator(0x9e37_79b9_7f4a_7c15);
        for seed in seeds {
            target(seed);
        }
        for _ in 0..inputs {
            target(&mutator.mutate(seeds));
        }
    }

    fn text(seeds: &[&str]) -> Vec<Vec<u8>> {
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// Real inputs of each target, where the mutations start (also written to fuzz/seeds).
    fn signalling_seeds() -> Vec<Vec<u8>> {
        text(&[
            "{\"type\":\"join\",\"name\":\"Ada\"}\n{\"type\":\"offer\",\"sdp\":\"v=0\"}\n{\"type\":\"candidate\",\"candidate\":{\"candidate\":\"candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}}",
            "{\"type\":\"join\",\"name\":\"Bo\",\"token\":\"e30.e30.x\"}\n{\"type\":\"chat\",\"text\":\"hi\"}\n{\"type\":\"file_offer\",\"name\":\"a.txt\",\"size\":3,\"ref\":1}\n{\"type\":\"file_get\",\"file_id\":1}",
            "{\"type\":\"record\",\"action\":\"start\"}\n{\"type\":\"chat_subscribe\"}\n{\"type\":\"ping\"}\n{\"type\":\"leave\"}",
        ])
    }

    fn chunk_seeds() -> Vec<Vec<u8>> {
        vec![
            [&[0u8, 0, 0, 7][..], &[1u8; 100][..]].concat(),
            vec![0, 0, 0, 1, 9],
        ]
    }

    fn token_seeds() -> Vec<Vec<u8>> {
        let token = crate::auth::mint(
            &Secret::new(TOKEN_SECRET),
            "room",
            "Ada",
            true,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        text(&[&token, "eyJhbGciOiJub25lIn0.e30.", "a.b.c"])
    }

    /// A VP8 keyframe's first packet, an H.264 SPS from x264 (2560×1440, high profile), and a
    /// STAP-A with an SPS and a PPS.
    fn rtp_seeds() -> Vec<Vec<u8>> {
        let header = [0x80u8, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let payloads: [&[u8]; 3] = [
            &[
                0x90, 0x80, 0x80, 0x01, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
            ],
            &[
                0x67, 0x64, 0x00, 0x32, 0xac, 0xd9, 0x40, 0x28, 0x00, 0xb5, 0xb0, 0x16, 0xa0, 0x20,
                0x20, 0x28, 0x00, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x01, 0xe4, 0x78, 0xc1,
            ],
            &[24, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 0, 2, 0x68, 0xce],
        ];
        payloads.iter().map(|p| [&header[..], p].concat()).collect()
    }

    #[test]
    fn signalling_survives_mutated_sessions() {
        run(&signalling_seeds(), 20_000, signalling);
    }

    #[test]
    fn the_chunk_decoder_survives_mutated_frames() {
        run(&chunk_seeds(), 20_000, file_chunk);
    }

    #[test]
    fn token_parsing_survives_mutated_tokens() {
        run(&token_seeds(), 5_000, join_token);
    }

    #[test]
    fn the_rtp_size_reader_survives_mutated_packets() {
        run(&rtp_seeds(), 50_000, rtp_size);
    }

    #[test]
    fn the_offer_path_survives_mutated_offers() {
        let target = OfferTarget::new().unwrap();
        let offer = target.seed_offer().unwrap();
        assert!(target.run(offer.as_bytes()), "the real offer is answered");
        // Each input builds a peer connection: two thousand take about a second.
        let answered = std::cell::Cell::new(0);
        run(&[offer.into_bytes()], 2_000, |data| {
            answered.set(answered.get() + usize::from(target.run(data)));
        });
        println!("{} of 2000 mutated offers answered", answered.get());
        assert!(
            answered.get() > 0,
            "mutations that keep the offer valid are answered"
        );
    }

    /// Writes the seeds above into `fuzz/seeds/<target>/`, where `cargo fuzz run` starts from
    /// (docs/fuzzing.md): `cargo test -p mcu-server --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand to refresh fuzz/seeds"]
    fn write_fuzz_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        let offer = OfferTarget::new().unwrap().seed_offer().unwrap();
        let targets = [
            ("offer", vec![offer.into_bytes()]),
            ("join_token", token_seeds()),
            ("signalling", signalling_seeds()),
            ("file_chunk", chunk_seeds()),
            ("rtp_size", rtp_seeds()),
        ];
        for (name, seeds) in targets {
            let dir = root.join(name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (n, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
            }
        }
    }
}
