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
