//! The marks a bench participant puts in its media so a receiver can tell, in the composite it
//! decodes, whose frame it is looking at and which one; and in the audio mix it hears, whose
//! burst just started. Pure functions: drawing and reading a frame code, finding burst onsets.

use crate::probe::analysis::tone_share;

/// The frame code is a grid of black and white cells over the whole picture: big cells survive
/// VP8 at a low bitrate and a downscale to a 5×5 tile (a 320×180 frame in a 256×144 tile keeps
/// cells of 42×36 pixels).
pub const CODE_COLUMNS: usize = 6;
pub const CODE_ROWS: usize = 4;
/// 6 bits of participant (64 participants), 10 of frame number (34 s at 30 fps, far longer than
/// any latency) and 8 of check, so a cell misread or a frame caught mid-layout is rejected.
const PARTICIPANT_BITS: u32 = 6;
const FRAME_BITS: u32 = 10;
pub const MAX_PARTICIPANTS: usize = 1 << PARTICIPANT_BITS;
pub const MAX_FRAMES: usize = 1 << FRAME_BITS;
/// Folded into the check so that an all-black or all-white picture (a letterbox, a placeholder,
/// a frozen keyframe's grey) never reads as a valid code.
const CHECK_SALT: u8 = 0x5a;
/// Studio-range black and white, as the encoder expects them.
pub const LUMA_BLACK: u8 = 16;
pub const LUMA_WHITE: u8 = 235;
const LUMA_THRESHOLD: u32 = 126;

/// Who sent a frame and which frame of their loop it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameCode {
    pub participant: u16,
    pub frame: u16,
}

fn crc8(data: u16) -> u8 {
    let mut crc: u8 = 0;
    for byte in data.to_be_bytes() {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl FrameCode {
    /// The 24 cell values, row by row, most significant first.
    pub fn bits(self) -> [bool; CODE_COLUMNS * CODE_ROWS] {
        let data = (u32::from(self.participant) << FRAME_BITS) | u32::from(self.frame);
        let check = crc8(data as u16) ^ CHECK_SALT;
        let word = (data << 8) | u32::from(check);
        let mut bits = [false; CODE_COLUMNS * CODE_ROWS];
        for (i, bit) in bits.iter_mut().enumerate() {
            *bit = (word >> (23 - i)) & 1 == 1;
        }
        bits
    }

    pub fn from_bits(bits: &[bool; CODE_COLUMNS * CODE_ROWS]) -> Option<FrameCode> {
        let word = bits.iter().fold(0u32, |acc, &b| (acc << 1) | u32::from(b));
        let data = (word >> 8) as u16;
        let check = (word & 0xff) as u8;
        (crc8(data) ^ CHECK_SALT == check).then_some(FrameCode {
            participant: data >> FRAME_BITS,
            frame: data & ((1 << FRAME_BITS) - 1),
        })
    }
}

/// Fills a luma plane (`width`×`height`, tightly packed) with the code's cells. `noise_seed`
/// adds a little per-pixel noise, as a camera sensor would, so the encoded stream costs a
/// decoder what a real one does rather than what a flat picture does.
pub fn draw(code: FrameCode, luma: &mut [u8], width: usize, height: usize, noise_seed: u32) {
    let bits = code.bits();
    let mut state = noise_seed | 1;
    for y in 0..height {
        let row = y * CODE_ROWS / height;
        for x in 0..width {
            let column = x * CODE_COLUMNS / width;
            let base = if bits[row * CODE_COLUMNS + column] {
                LUMA_WHITE
            } else {
                LUMA_BLACK
            };
            // xorshift: cheap, deterministic noise of ±8.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 17) as i16 - 8;
            let value = (i16::from(base) + noise).clamp(0, 255) as u8;
            if let Some(px) = luma.get_mut(y * width + x) {
                *px = value;
            }
        }
    }
}

/// A rectangle of the composite, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Where a picture of aspect `source_w`:`source_h` lands inside a tile once letterboxed (the
/// server scales with borders, never stretching).
pub fn content_of(tile: Area, source_w: usize, source_h: usize) -> Area {
    if tile.width * source_h > tile.height * source_w {
        let width = tile.height * source_w / source_h.max(1);
        Area {
            x: tile.x + (tile.width - width) / 2,
            width,
            ..tile
        }
    } else {
        let height = tile.width * source_h / source_w.max(1);
        Area {
            y: tile.y + (tile.height - height) / 2,
            height,
            ..tile
        }
    }
}

/// Reads the code shown in `area` of a luma plane, averaging the middle of each cell.
pub fn read(luma: &[u8], stride: usize, area: Area) -> Option<FrameCode> {
    let cell_w = area.width / CODE_COLUMNS;
    let cell_h = area.height / CODE_ROWS;
    if cell_w < 4 || cell_h < 4 {
        return None;
    }
    let (half_w, half_h) = (cell_w / 6, cell_h / 6);
    let mut bits = [false; CODE_COLUMNS * CODE_ROWS];
    for row in 0..CODE_ROWS {
        for column in 0..CODE_COLUMNS {
            let cx = area.x + column * area.width / CODE_COLUMNS + cell_w / 2;
            let cy = area.y + row * area.height / CODE_ROWS + cell_h / 2;
            let (mut sum, mut n) = (0u32, 0u32);
            for y in cy - half_h..=cy + half_h {
                let line = luma.get(y * stride + cx - half_w..=y * stride + cx + half_w)?;
                sum += line.iter().map(|&v| u32::from(v)).sum::<u32>();
                n += line.len() as u32;
            }
            bits[row * CODE_COLUMNS + column] = sum > LUMA_THRESHOLD * n.max(1);
        }
    }
    FrameCode::from_bits(&bits)
}

/// Audio marks: every participant is silent except for one burst of its own tone per loop, in a
/// slot of its own, so the bursts of different participants arrive apart in a mix.
pub const SAMPLE_RATE: usize = 48_000;
pub const PACKET_SAMPLES: usize = 960;
/// A burst lasts three packets (60 ms): Opus in voice mode needs a few milliseconds to settle on
/// a new tone, and a 20-ms burst comes out as little more than a click.
pub const BURST_PACKETS: usize = 3;
/// Bursts start four packets (80 ms) apart, leaving 20 ms of quiet between two participants.
const SLOT_PACKETS: usize = 4;
/// 128 packets of 20 ms: a slot each for 32 participants, a burst each every 2.56 s.
pub const AUDIO_LOOP_PACKETS: usize = 128;
pub const BURST_AMPLITUDE: f32 = 0.5;

/// The packet of the audio loop in which participant `index`'s burst starts.
pub fn burst_slot(index: usize) -> usize {
    (SLOT_PACKETS * index) % AUDIO_LOOP_PACKETS
}

/// Louder than this after quiet: a burst has started. Opus leaves silence within ±0.005.
const ONSET_LEVEL: f32 = 0.1;
const QUIET_LEVEL: f32 = 0.03;
/// A burst only counts after this much quiet (5 ms), so the middle of one (a sine passes near
/// zero twice a period) is not an onset.
const QUIET_BEFORE: usize = 240;
/// The tone is named from 20 ms of audio starting 10 ms into the burst, once the codec has
/// settled on it.
const NAMING_SKIP: usize = PACKET_SAMPLES / 2;
const NAMING_WINDOW: usize = PACKET_SAMPLES;
/// The named tone must hold at least this share of the window's energy.
const NAMING_SHARE: f64 = 0.5;

/// A burst heard in the mix: when it started (in the caller's seconds) and whose tone it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Onset {
    pub at: f64,
    pub tone_hz: f64,
}

/// Finds burst onsets in a stream of samples pushed in pieces, and names each by the strongest
/// of the candidate tones.
#[derive(Debug, Default)]
pub struct OnsetDetector {
    quiet_run: usize,
    pending: Option<(f64, Vec<f32>)>,
}

impl OnsetDetector {
    /// `start` is the time of `samples[0]`; `tones` are the frequencies that may be heard.
    pub fn push(&mut self, start: f64, samples: &[f32], tones: &[f64]) -> Vec<Onset> {
        let mut found = Vec::new();
        for (i, &x) in samples.iter().enumerate() {
            if let Some((at, window)) = self.pending.as_mut() {
                window.push(x);
                if window.len() >= NAMING_SKIP + NAMING_WINDOW {
                    let at = *at;
                    let window = std::mem::take(window);
                    self.pending = None;
                    if let Some(tone_hz) = name_tone(&window[NAMING_SKIP..], tones) {
                        found.push(Onset { at, tone_hz });
                    }
                }
                continue;
            }
            // Samples between the two levels (a burst's first rise, Opus's ripple) neither
            // start a burst nor end a quiet stretch.
            let level = x.abs();
            if level >= ONSET_LEVEL {
                if self.quiet_run >= QUIET_BEFORE {
                    let at = start + i as f64 / SAMPLE_RATE as f64;
                    self.pending = Some((at, vec![x]));
                }
                self.quiet_run = 0;
            } else if level < QUIET_LEVEL {
                self.quiet_run += 1;
            }
        }
        found
    }
}

fn name_tone(window: &[f32], tones: &[f64]) -> Option<f64> {
    tones
        .iter()
        .map(|&hz| (hz, tone_share(window, SAMPLE_RATE as f64, hz)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, share)| *share >= NAMING_SHARE)
        .map(|(hz, _)| hz)
}

/// One packet's worth of the audio loop for `index`: its tone in its slot, silence elsewhere.
pub fn loop_packet(index: usize, packet: usize, tone_hz: f64) -> Vec<f32> {
    let into_burst =
        (packet % AUDIO_LOOP_PACKETS + AUDIO_LOOP_PACKETS - burst_slot(index)) % AUDIO_LOOP_PACKETS;
    if into_burst >= BURST_PACKETS {
        return vec![0.0; PACKET_SAMPLES];
    }
    (0..PACKET_SAMPLES)
        .map(|n| {
            let t = (into_burst * PACKET_SAMPLES + n) as f64 / SAMPLE_RATE as f64;
            BURST_AMPLITUDE * (2.0 * std::f64::consts::PI * tone_hz * t).sin() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::analysis::tone_for;

    #[test]
    fn every_code_round_trips_and_blank_pictures_never_read_as_codes() {
        for participant in [0u16, 1, 17, 63] {
            for frame in [0u16, 1, 299, 1023] {
                let code = FrameCode { participant, frame };
                assert_eq!(FrameCode::from_bits(&code.bits()), Some(code));
            }
        }
        assert_eq!(FrameCode::from_bits(&[false; 24]), None);
        assert_eq!(FrameCode::from_bits(&[true; 24]), None);
    }

    #[test]
    fn a_single_wrong_cell_is_rejected() {
        let code = FrameCode {
            participant: 5,
            frame: 77,
        };
        for i in 0..24 {
            let mut bits = code.bits();
            bits[i] = !bits[i];
            assert_eq!(FrameCode::from_bits(&bits), None, "cell {i}");
        }
    }

    /// Draws a code, scales it by nearest neighbour into a letterboxed tile of a bigger
    /// picture, and reads it back from there.
    #[test]
    fn a_code_reads_back_from_a_scaled_letterboxed_tile() {
        let (w, h) = (320, 180);
        let code = FrameCode {
            participant: 9,
            frame: 512,
        };
        let mut source = vec![0u8; w * h];
        draw(code, &mut source, w, h, 7);
        let (cw, ch) = (1280, 720);
        let mut composite = vec![LUMA_BLACK; cw * ch];
        let tile = Area {
            x: 640,
            y: 0,
            width: 640,
            height: 720,
        };
        let content = content_of(tile, w, h);
        assert_eq!((content.width, content.height, content.y), (640, 360, 180));
        for y in 0..content.height {
            for x in 0..content.width {
                let sx = x * w / content.width;
                let sy = y * h / content.height;
                composite[(content.y + y) * cw + content.x + x] = source[sy * w + sx];
            }
        }
        assert_eq!(read(&composite, cw, content), Some(code));
        // The tile's letterbox is not a code.
        let bar = Area {
            height: 180,
            ..tile
        };
        assert_eq!(read(&composite, cw, bar), None);
    }

    #[test]
    fn bursts_are_found_where_they_start_and_named_by_their_tone() {
        let tones: Vec<f64> = (0..4).map(tone_for).collect();
        let mut stream = Vec::new();
        for packet in 0..AUDIO_LOOP_PACKETS {
            let mixed: Vec<f32> = (1..4)
                .map(|p| loop_packet(p, packet, tone_for(p)))
                .fold(vec![0.0; PACKET_SAMPLES], |acc, x| {
                    acc.iter().zip(x).map(|(a, b)| a + b).collect()
                });
            stream.extend(mixed);
        }
        let mut detector = OnsetDetector::default();
        let mut onsets = Vec::new();
        // Pushed in 10-ms pieces, as a decoder hands them over.
        for (i, piece) in stream.chunks(480).enumerate() {
            onsets.extend(detector.push(i as f64 * 0.01, piece, &tones));
        }
        let expected: Vec<(f64, f64)> = (1..4)
            .map(|p| (burst_slot(p) as f64 * 0.02, tone_for(p)))
            .collect();
        assert_eq!(onsets.len(), 3, "{onsets:?}");
        for (onset, (at, hz)) in onsets.iter().zip(expected) {
            assert!((onset.at - at).abs() < 0.001, "{onset:?} vs {at}");
            assert_eq!(onset.tone_hz, hz);
        }
    }
}
