//! What the synthetic participant concludes from the media it receives: which colour a tile shows,
//! how strong each tone is in the audio, whether an RTP packet starts a keyframe. Pure functions.

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub fn hex(&self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }

    /// As videotestsrc's `foreground-color` (ARGB).
    pub fn argb(&self) -> u32 {
        0xff00_0000 | (u32::from(self.0) << 16) | (u32::from(self.1) << 8) | u32::from(self.2)
    }

    /// Reads `#rrggbb`.
    pub fn parse_hex(text: &str) -> Option<Rgb> {
        let hex = text.strip_prefix('#').unwrap_or(text);
        if hex.len() != 6 {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
        Some(Rgb(byte(0)?, byte(2)?, byte(4)?))
    }

    fn distance2(&self, other: &Rgb) -> u32 {
        let d = |a: u8, b: u8| (i32::from(a) - i32::from(b)).pow(2) as u32;
        d(self.0, other.0) + d(self.1, other.1) + d(self.2, other.2)
    }
}

/// Participant colours: saturated and far apart, so a tile's colour is recognised after VP8
/// compression, scaling and either BT.601 or BT.709 conversion.
pub const PALETTE: [Rgb; 8] = [
    Rgb(230, 30, 30),   // red
    Rgb(30, 200, 30),   // green
    Rgb(40, 60, 230),   // blue
    Rgb(240, 220, 30),  // yellow
    Rgb(220, 40, 220),  // magenta
    Rgb(30, 220, 230),  // cyan
    Rgb(250, 140, 20),  // orange
    Rgb(250, 250, 250), // white
];

/// The placeholder tile's grey (pipelines/placeholder.txt).
pub const PLACEHOLDER_COLOUR: Rgb = Rgb(0x3c, 0x40, 0x43);
/// Letterbox bars (videoscale add-borders).
pub const BAR_COLOUR: Rgb = Rgb(0, 0, 0);
/// Colours the server draws by itself: the background, letterbox bars, the placeholder tile.
pub const SERVER_COLOURS: [Rgb; 3] = [Rgb(0x20, 0x21, 0x24), BAR_COLOUR, PLACEHOLDER_COLOUR];

/// Tones: 140 Hz apart from 330 Hz, so no tone is a harmonic of another within the first 25 and
/// each is far from the others compared with a 1-second Goertzel window's ~1 Hz resolution.
pub fn tone_for(index: usize) -> f64 {
    330.0 + 140.0 * index as f64
}

pub fn colour_for(index: usize) -> Rgb {
    PALETTE[index % PALETTE.len()]
}

/// Converts one YCbCr sample (limited range) to RGB, with BT.601 coefficients.
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> Rgb {
    let c = 1.164 * (f64::from(y) - 16.0);
    let d = f64::from(u) - 128.0;
    let e = f64::from(v) - 128.0;
    let clamp = |x: f64| x.round().clamp(0.0, 255.0) as u8;
    Rgb(
        clamp(c + 1.596 * e),
        clamp(c - 0.392 * d - 0.813 * e),
        clamp(c + 2.017 * d),
    )
}

/// The nearest of `candidates` to `seen`.
pub fn nearest<'a>(seen: Rgb, candidates: impl IntoIterator<Item = &'a Rgb>) -> Option<Rgb> {
    candidates
        .into_iter()
        .min_by_key(|c| c.distance2(&seen))
        .copied()
}

/// True when `seen` is closer to `expected` than to any other participant colour or server colour.
/// A colour from outside the palette (a browser's camera) is judged against the same candidates,
/// with itself added.
pub fn shows(seen: Rgb, expected: Rgb) -> bool {
    nearest(
        seen,
        PALETTE
            .iter()
            .chain(SERVER_COLOURS.iter())
            .chain(std::iter::once(&expected)),
    ) == Some(expected)
}

/// The average colour of an I420 frame around (cx, cy), over a square of `half`*2 pixels.
pub struct I420<'a> {
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub y_stride: usize,
    pub u: &'a [u8],
    pub u_stride: usize,
    pub v: &'a [u8],
    pub v_stride: usize,
}

impl I420<'_> {
    pub fn average(&self, cx: usize, cy: usize, half: usize) -> Option<Rgb> {
        let x0 = cx.checked_sub(half)?;
        let y0 = cy.checked_sub(half)?;
        let x1 = (cx + half).min(self.width);
        let y1 = (cy + half).min(self.height);
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        let (mut sy, mut su, mut sv, mut n) = (0u64, 0u64, 0u64, 0u64);
        for row in y0..y1 {
            for col in x0..x1 {
                sy += u64::from(*self.y.get(row * self.y_stride + col)?);
                su += u64::from(*self.u.get((row / 2) * self.u_stride + col / 2)?);
                sv += u64::from(*self.v.get((row / 2) * self.v_stride + col / 2)?);
                n += 1;
            }
        }
        Some(yuv_to_rgb((sy / n) as u8, (su / n) as u8, (sv / n) as u8))
    }
}

/// Goertzel power of `freq` in `samples`, normalised so a full-scale sine alone gives 1.0 and the
/// result is the share of the signal's power at that frequency.
pub fn tone_share(samples: &[f32], sample_rate: f64, freq: f64) -> f64 {
    let n = samples.len();
    if n == 0 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / sample_rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let total: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if total <= f64::EPSILON {
        return 0.0;
    }
    // A sine of amplitude A over n samples gives power (A n / 2)^2 and total energy A^2 n / 2.
    (power / (n as f64 / 2.0)) / total
}

/// A tone counts as present above this share of the power; as absent below `TONE_ABSENT`.
/// Three equal tones give ~0.33 each; one's own tone leaking through a mix-minus would give about
/// as much, while codec noise stays below 0.01.
pub const TONE_PRESENT: f64 = 0.05;
pub const TONE_ABSENT: f64 = 0.02;

/// True when an RTP payload starts a keyframe, for VP8 (RFC 7741) or H.264 (RFC 6184).
pub fn starts_keyframe(payload: &[u8], h264: bool) -> bool {
    if h264 {
        h264_has_idr(payload)
    } else {
        vp8_starts_keyframe(payload)
    }
}

fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = payload.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 or 15 bits.
            let Some(&pid) = payload.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/KEYIDX
        }
    }
    // The VP8 frame header's first bit is the inverse key frame flag.
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

fn h264_has_idr(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true, // IDR slice, or SPS (sent with every keyframe)
        24 => {
            // STAP-A: a list of 16-bit sizes and NAL units.
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                if matches!(payload[i + 2] & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == 5),
        _ => false,
    }
}

/// The `p`-th percentile (0–100) of `values`, by nearest rank.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amplitude: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin() as f32
            })
            .collect()
    }

    #[test]
    fn a_lone_tone_has_all_the_power() {
        let s = sine(470.0, 0.5, 48_000);
        assert!((tone_share(&s, 48_000.0, 470.0) - 1.0).abs() < 0.02);
        assert!(tone_share(&s, 48_000.0, 610.0) < 0.001);
    }

    #[test]
    fn three_mixed_tones_each_have_a_third_and_a_missing_one_none() {
        let a = sine(tone_for(0), 0.3, 48_000);
        let b = sine(tone_for(1), 0.3, 48_000);
        let c = sine(tone_for(2), 0.3, 48_000);
        let mix: Vec<f32> = (0..48_000).map(|i| a[i] + b[i] + c[i]).collect();
        for i in 0..3 {
            let share = tone_share(&mix, 48_000.0, tone_for(i));
            assert!((share - 1.0 / 3.0).abs() < 0.02, "tone {i}: {share}");
        }
        assert!(tone_share(&mix, 48_000.0, tone_for(3)) < TONE_ABSENT);
        assert_eq!(tone_share(&[0.0; 100], 48_000.0, 330.0), 0.0);
    }

    #[test]
    fn palette_colours_survive_the_yuv_round_trip_under_either_matrix() {
        // Encode with BT.709 (what a 720p pipeline may use) and decode with BT.601.
        for c in PALETTE {
            let (r, g, b) = (f64::from(c.0), f64::from(c.1), f64::from(c.2));
            let y = 16.0 + (0.2126 * r + 0.7152 * g + 0.0722 * b) * 219.0 / 255.0;
            let u = 128.0 + (-0.1146 * r - 0.3854 * g + 0.5 * b) * 224.0 / 255.0;
            let v = 128.0 + (0.5 * r - 0.4542 * g - 0.0458 * b) * 224.0 / 255.0;
            let seen = yuv_to_rgb(y as u8, u as u8, v as u8);
            assert!(shows(seen, c), "{} seen as {}", c.hex(), seen.hex());
        }
    }

    #[test]
    fn hex_colours_parse() {
        assert_eq!(Rgb::parse_hex("#e61e1e"), Some(Rgb(230, 30, 30)));
        assert_eq!(Rgb::parse_hex("e61e1e"), Some(Rgb(230, 30, 30)));
        assert_eq!(Rgb::parse_hex("#e61e1"), None);
        assert_eq!(Rgb::parse_hex("#gg0000"), None);
    }

    #[test]
    fn background_is_not_mistaken_for_a_participant() {
        assert!(!shows(Rgb(0x20, 0x21, 0x24), PALETTE[7]));
        assert!(!shows(Rgb(0x3c, 0x40, 0x43), PALETTE[2]));
    }

    #[test]
    fn averages_a_square_of_an_i420_frame() {
        let (w, h) = (16usize, 16usize);
        let y = vec![81u8; w * h];
        let u = vec![90u8; w * h / 4];
        let v = vec![240u8; w * h / 4];
        let frame = I420 {
            width: w,
            height: h,
            y: &y,
            y_stride: w,
            u: &u,
            u_stride: w / 2,
            v: &v,
            v_stride: w / 2,
        };
        let c = frame.average(8, 8, 4).unwrap();
        assert!(c.0 > 200 && c.1 < 60 && c.2 < 60, "{c:?}");
        assert!(frame.average(2, 2, 4).is_none());
    }

    #[test]
    fn vp8_keyframes_are_recognised() {
        // X=1, S=1, PID=0; I=1 with a 15-bit picture id; then a key frame header (bit 0 = 0).
        assert!(starts_keyframe(
            &[0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00],
            false
        ));
        // Same, but an inter frame (bit 0 = 1).
        assert!(!starts_keyframe(
            &[0x90, 0x80, 0x81, 0x23, 0x11, 0x02, 0x00],
            false
        ));
        // A continuation packet (S=0).
        assert!(!starts_keyframe(&[0x80, 0x80, 0x81, 0x23, 0x10], false));
        assert!(!starts_keyframe(&[], false));
    }

    #[test]
    fn h264_keyframes_are_recognised() {
        assert!(starts_keyframe(&[0x65, 0x88], true)); // IDR
        assert!(!starts_keyframe(&[0x41, 0x9a], true)); // non-IDR slice
        assert!(starts_keyframe(&[0x7c, 0x85, 0x88], true)); // FU-A start of an IDR
        assert!(starts_keyframe(
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce],
            true
        )); // STAP-A with SPS
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(51.0));
        assert_eq!(percentile(&v, 5.0), Some(6.0));
        assert_eq!(percentile(&[], 5.0), None);
    }
}
