//! What the server needs to read in its own outgoing RTP packets, and the one rewrite it makes in
//! a payload: the sequence number, timestamp and marker from the header, whether a packet starts
//! a keyframe (VP8, RFC 7741; H.264, RFC 6184), and the VP8 picture id. Pure and allocation-free
//! but for the rewrite; a leaf that imports nothing above it.

use bytes::Bytes;

use crate::codec::VideoCodec;

/// What a packet says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpInfo {
    pub seq: u16,
    pub timestamp: u32,
    /// The last packet of a frame.
    pub marker: bool,
    /// The first packet of a keyframe: a decoder can start here.
    pub keyframe_start: bool,
    /// The VP8 picture id, when it is the 15-bit kind our payloaders write.
    pub picture_id: Option<u16>,
}

/// The payload's offset in an RTP packet, past the CSRCs and any header extension.
fn payload_start(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut at = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
        at += 4 + 4 * usize::from(words);
    }
    (at <= packet.len()).then_some(at)
}

/// Reads a packet of the composite; None when it is not RTP.
pub fn read(packet: &[u8], codec: VideoCodec) -> Option<RtpInfo> {
    let start = payload_start(packet)?;
    let payload = &packet[start..];
    let (keyframe_start, picture_id) = match codec {
        VideoCodec::Vp8 => {
            let d = vp8_descriptor(payload);
            (
                d.is_some_and(|d| d.keyframe_start),
                d.and_then(|d| d.picture_id.map(|(id, _)| id)),
            )
        }
        VideoCodec::H264 => (h264_keyframe_start(payload), None),
    };
    Some(RtpInfo {
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        marker: packet[1] & 0x80 != 0,
        keyframe_start,
        picture_id,
    })
}

#[derive(Clone, Copy)]
struct Vp8Descriptor {
    keyframe_start: bool,
    /// The 15-bit picture id and its offset in the payload.
    picture_id: Option<(u16, usize)>,
    /// Where the VP8 payload header starts, past the descriptor.
    header_at: usize,
}

fn vp8_descriptor(payload: &[u8]) -> Option<Vp8Descriptor> {
    let first = *payload.first()?;
    let starts_partition = first & 0x10 != 0 && first & 0x07 == 0;
    let mut at = 1;
    let mut picture_id = None;
    if first & 0x80 != 0 {
        let extension = *payload.get(1)?;
        at = 2;
        if extension & 0x80 != 0 {
            let high = *payload.get(at)?;
            if high & 0x80 != 0 {
                let low = *payload.get(at + 1)?;
                picture_id = Some((u16::from(high & 0x7f) << 8 | u16::from(low), at));
                at += 2;
            } else {
                at += 1;
            }
        }
        if extension & 0x40 != 0 {
            at += 1;
        }
        if extension & 0x30 != 0 {
            at += 1;
        }
    }
    // The VP8 payload header's first bit is 0 on a keyframe (RFC 6386, 9.1).
    let keyframe_start = starts_partition && payload.get(at).is_some_and(|b| b & 0x01 == 0);
    Some(Vp8Descriptor {
        keyframe_start,
        picture_id,
        header_at: at,
    })
}

/// An IDR slice or a parameter set starts the packet: what a decoder can begin with.
fn h264_keyframe_start(payload: &[u8]) -> bool {
    let starts_keyframe = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    let Some(first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        // STAP-A: any of its units.
        24 => {
            let mut at = 1;
            while let (Some(high), Some(low)) = (payload.get(at), payload.get(at + 1)) {
                let size = usize::from(u16::from_be_bytes([*high, *low]));
                if payload.get(at + 2).is_some_and(|nal| starts_keyframe(*nal)) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        // FU-A: the first fragment of one.
        28 => payload
            .get(1)
            .is_some_and(|header| header & 0x80 != 0 && starts_keyframe(*header)),
        _ => starts_keyframe(*first),
    }
}

/// The picture size a camera packet declares, for the packets that declare one: a VP8 keyframe's
/// first packet (RFC 6386, 9.1) and an H.264 sequence parameter set, alone or in a STAP-A (the
/// macroblock-aligned size, before cropping). The server reads it before anything is decoded,
/// since a decoder allocates what the stream declares: a 16383×16383 VP8 frame is ~400 MB.
pub fn declared_size(packet: &[u8], codec: VideoCodec) -> Option<(u32, u32)> {
    let payload = &packet[payload_start(packet)?..];
    match codec {
        VideoCodec::Vp8 => {
            let d = vp8_descriptor(payload)?;
            if !d.keyframe_start {
                return None;
            }
            let header = payload.get(d.header_at..d.header_at + 10)?;
            if header[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
            let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
            Some((u32::from(width), u32::from(height)))
        }
        VideoCodec::H264 => {
            let first = *payload.first()?;
            match first & 0x1f {
                7 => h264_sps_size(payload),
                24 => {
                    let mut at = 1;
                    while let (Some(high), Some(low)) = (payload.get(at), payload.get(at + 1)) {
                        let size = usize::from(u16::from_be_bytes([*high, *low]));
                        let unit = payload.get(at + 2..at + 2 + size)?;
                        if unit.first().is_some_and(|nal| nal & 0x1f == 7) {
                            return h264_sps_size(unit);
                        }
                        at += 2 + size;
                    }
                    None
                }
                _ => None,
            }
        }
    }
}

/// Reads Exp-Golomb coded fields of an H.264 RBSP (emulation prevention already removed).
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.at / 8)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0, |v, _| Some(v << 1 | self.bit()?))
    }

    /// ue(v); anything over 31 leading zeros is not a valid stream.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }

    fn se(&mut self) -> Option<i64> {
        let v = i64::from(self.ue()?);
        Some(if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) })
    }
}

/// The size an H.264 SPS NAL unit declares (ITU-T H.264, 7.3.2.1.1).
fn h264_sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    // The RBSP: the NAL header dropped, emulation prevention bytes (00 00 03) removed.
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.get(1..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits { data: &rbsp, at: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bit()?;
        }
        r.ue()?; // bit depths
        r.ue()?;
        r.bit()?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for list in 0..lists {
                if r.bit()? == 1 {
                    let size = if list < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    let width = width_mbs * 16;
    let height = (2 - frame_mbs_only) * height_units * 16;
    Some((
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    ))
}

/// The payload with its VP8 picture id set to `id` (15 bits); None when the payload carries no
/// 15-bit picture id to set.
pub fn with_vp8_picture_id(payload: &Bytes, id: u16) -> Option<Bytes> {
    let (_, at) = vp8_descriptor(payload)?.picture_id?;
    let mut bytes = payload.to_vec();
    bytes[at] = 0x80 | ((id >> 8) as u8 & 0x7f);
    bytes[at + 1] = id as u8;
    Some(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTP packet (version 2, no CSRC, no extension) around `payload`.
    fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, if marker { 0xe0 } else { 0x60 }];
        p.extend(seq.to_be_bytes());
        p.extend(ts.to_be_bytes());
        p.extend(0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// A VP8 descriptor as rtpvp8pay writes it (X, I with a 15-bit id), then the payload header.
    fn vp8(start: bool, id: u16, keyframe: bool) -> Vec<u8> {
        vec![
            0x80 | if start { 0x10 } else { 0 },
            0x80,
            0x80 | (id >> 8) as u8,
            id as u8,
            if keyframe { 0x10 } else { 0x11 },
            0x02,
        ]
    }

    #[test]
    fn vp8_packets_say_where_a_keyframe_starts_and_their_picture_id() {
        let key = rtp(7, 9000, false, &vp8(true, 0x1234, true));
        let info = read(&key, VideoCodec::Vp8).unwrap();
        assert_eq!(
            info,
            RtpInfo {
                seq: 7,
                timestamp: 9000,
                marker: false,
                keyframe_start: true,
                picture_id: Some(0x1234),
            }
        );
        let delta = read(
            &rtp(8, 9000, true, &vp8(true, 0x1235, false)),
            VideoCodec::Vp8,
        )
        .unwrap();
        assert!(!delta.keyframe_start && delta.marker);
        // A continuation of a keyframe's partition is not its start.
        let middle = read(
            &rtp(9, 9000, false, &vp8(false, 0x1234, true)),
            VideoCodec::Vp8,
        )
        .unwrap();
        assert!(!middle.keyframe_start);
        assert!(read(&[0x40, 0, 0], VideoCodec::Vp8).is_none(), "not RTP");
    }

    #[test]
    fn h264_keyframes_start_with_an_idr_or_parameter_sets() {
        let idr = rtp(1, 0, false, &[0x65, 0x88]);
        assert!(read(&idr, VideoCodec::H264).unwrap().keyframe_start);
        let stap_a = rtp(
            1,
            0,
            false,
            &[0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce],
        );
        assert!(read(&stap_a, VideoCodec::H264).unwrap().keyframe_start);
        let fu_a_first = rtp(1, 0, false, &[0x7c, 0x85, 0x00]);
        assert!(read(&fu_a_first, VideoCodec::H264).unwrap().keyframe_start);
        let fu_a_later = rtp(1, 0, false, &[0x7c, 0x05, 0x00]);
        assert!(!read(&fu_a_later, VideoCodec::H264).unwrap().keyframe_start);
        let p_slice = rtp(1, 0, false, &[0x41, 0x9a]);
        assert!(!read(&p_slice, VideoCodec::H264).unwrap().keyframe_start);
    }

    #[test]
    fn a_vp8_picture_id_is_rewritten_in_place() {
        let payload = Bytes::from(vp8(true, 0x1234, true));
        let rewritten = with_vp8_picture_id(&payload, 0x0042).unwrap();
        let info = read(&rtp(1, 0, false, &rewritten), VideoCodec::Vp8).unwrap();
        assert_eq!(info.picture_id, Some(0x0042));
        assert!(info.keyframe_start);
        assert_eq!(rewritten.len(), payload.len());
        // No picture id, nothing to rewrite.
        assert!(with_vp8_picture_id(&Bytes::from_static(&[0x10, 0x00]), 1).is_none());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_vp8_keyframe_declares_its_size_and_a_delta_frame_none() {
        // Descriptor with a 15-bit picture id, then the frame tag, start code and 14-bit sizes.
        let mut payload = vec![0x90, 0x80, 0x80, 0x01, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
        payload.extend_from_slice(&16383u16.to_le_bytes());
        payload.extend_from_slice(&(0x4000u16 | 16383).to_le_bytes()); // scale bits ignored
        let packet = rtp(1, 0, false, &payload);
        assert_eq!(
            declared_size(&packet, VideoCodec::Vp8),
            Some((16383, 16383))
        );
        let mut delta = payload.clone();
        delta[4] |= 0x01;
        assert_eq!(
            declared_size(&rtp(1, 0, false, &delta), VideoCodec::Vp8),
            None
        );
        // A truncated keyframe header declares nothing (and does not panic).
        assert_eq!(
            declared_size(&rtp(1, 0, false, &payload[..8]), VideoCodec::Vp8),
            None
        );
    }

    #[test]
    fn an_h264_sps_declares_its_size_alone_or_in_a_stap_a() {
        // From x264 (gst-launch-1.0 … x264enc ! video/x-h264,profile=…), emulation prevention
        // bytes included.
        let baseline_360p = hex("6742c01ed900a02ff97016a0c0c0d4a0000003002000000791e2c5c9");
        let high_1440p = hex("67640032acd9402800b5b016a0202028000003000800000301e478c18cb0");
        let main_1080p = hex("674d4028eca03c0113f2e02d40404050000003001000000303c8f1831960");
        assert_eq!(
            declared_size(&rtp(1, 0, false, &baseline_360p), VideoCodec::H264),
            Some((640, 368))
        );
        assert_eq!(
            declared_size(&rtp(1, 0, false, &high_1440p), VideoCodec::H264),
            Some((2560, 1440))
        );
        // STAP-A: SPS then a PPS.
        let mut stap = vec![24];
        stap.extend_from_slice(&(main_1080p.len() as u16).to_be_bytes());
        stap.extend_from_slice(&main_1080p);
        stap.extend_from_slice(&[0, 4, 0x68, 0xee, 0x3c, 0x80]);
        assert_eq!(
            declared_size(&rtp(1, 0, false, &stap), VideoCodec::H264),
            Some((1920, 1088))
        );
        // Every prefix of an SPS: nothing or a size, never a panic.
        for n in 0..high_1440p.len() {
            let _ = declared_size(&rtp(1, 0, false, &high_1440p[..n]), VideoCodec::H264);
        }
    }

    #[test]
    fn extensions_and_csrcs_are_skipped() {
        let mut p = vec![0x91, 0x60, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend([0, 0, 0, 9]); // one CSRC
        p.extend([0xbe, 0xde, 0x00, 0x01, 0x10, 0xff, 0x00, 0x00]); // a one-word extension
        p.extend(vp8(true, 3, true));
        let info = read(&p, VideoCodec::Vp8).unwrap();
        assert_eq!(
            (info.seq, info.picture_id, info.keyframe_start),
            (5, Some(3), true)
        );
    }
}
