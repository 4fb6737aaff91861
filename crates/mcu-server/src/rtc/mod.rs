//! Everything that touches webrtc-rs construction: codecs, interceptors, ICE settings, and the
//! tracks the server sends. Keeping the crate's types behind this module (and session/) means a
//! move to another WebRTC stack changes these files only: the room and the media graph hand out
//! packets and never name webrtc-rs.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::{configure_rtcp_reports, configure_twcc_receiver_only};
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::sdp::extmap::AUDIO_LEVEL_URI;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::track::track_remote::TrackRemote;

mod resend;

use crate::codec::VideoCodec;
use crate::config::{RtcOptions, UdpPolicy};
use crate::protocol::{IceCandidate, IceServer};
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

/// Payload types we offer. They only have to be consistent within one SDP; these are the numbers
/// browsers commonly use, which makes captures easier to read.
pub const PT_VP8: u8 = 96;
pub const PT_H264: u8 = 102;
pub const PT_OPUS: u8 = 111;

/// Constrained baseline level 3.1 with non-interleaved packetization: what every browser can
/// decode, and what the shared H.264 encoder produces.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    })
    .collect()
}

pub fn codec_capability(codec: VideoCodec) -> RTCRtpCodecCapability {
    let (mime, fmtp) = match codec {
        VideoCodec::Vp8 => (MIME_TYPE_VP8, ""),
        VideoCodec::H264 => (MIME_TYPE_H264, H264_FMTP),
    };
    RTCRtpCodecCapability {
        mime_type: mime.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: video_feedback(),
    }
}

pub fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.into(),
        rtcp_feedback: vec![],
    }
}

/// The codec of a remote track, as the room needs it, from its negotiated MIME type.
pub fn video_codec_of(mime_type: &str) -> Option<VideoCodec> {
    if mime_type.eq_ignore_ascii_case(MIME_TYPE_VP8) {
        Some(VideoCodec::Vp8)
    } else if mime_type.eq_ignore_ascii_case(MIME_TYPE_H264) {
        Some(VideoCodec::H264)
    } else {
        None
    }
}

pub fn is_opus(mime_type: &str) -> bool {
    mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS)
}

/// The id under which `track`'s packets carry their RFC 6464 audio level, when the client
/// negotiated it.
pub fn audio_level_id(track: &TrackRemote) -> Option<u8> {
    track
        .params()
        .header_extensions
        .iter()
        .find(|h| h.uri == AUDIO_LEVEL_URI)
        .and_then(|h| u8::try_from(h.id).ok())
}

/// The audio level a packet carries under extension `id` (0–127, -dBov: 0 is the loudest), if
/// it carries a well-formed one.
pub fn audio_level(packet: &webrtc::rtp::packet::Packet, id: u8) -> Option<u8> {
    use webrtc::rtp::extension::audio_level_extension::AudioLevelExtension;
    use webrtc::util::Unmarshal;
    let mut raw = packet.header.get_extension(id)?;
    AudioLevelExtension::unmarshal(&mut raw)
        .ok()
        .map(|e| e.level)
}

/// True when an SDP candidate line's address is a loopback address. A participant on the
/// server's own host skips the others: a check from 127.0.0.1 to another local address is
/// answered from 127.0.0.1, which ICE rejects as a mismatch and accepts only a second later as
/// peer-reflexive.
pub fn is_loopback_candidate(candidate: &str) -> bool {
    candidate
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// How often missing packets are NACKed. webrtc-rs's 100 ms default spends most of a receiver's
/// jitter buffer before the sender even hears of a loss: with 5 % loss the repair arrived after
/// the packet's deadline and every loss became a freeze. 20 ms costs one small RTCP packet per
/// tick only while something is missing (our responder spaces resends of one packet anyway).
const NACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// webrtc-rs's defaults but for the NACK responder: NACKs to senders for what they lost (the
/// generator), resends to viewers within a budget (resend.rs), RTCP sender and receiver reports,
/// and transport-wide congestion feedback received (never stamped on what we send, so browsers
/// estimate with REMB, which is what reaches us).
fn interceptors(media: &mut MediaEngine) -> Result<Registry> {
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RTPCodecType::Video,
        );
    }
    let mut registry = Registry::new();
    registry.add(Box::new(resend::PacedResponderBuilder));
    registry.add(Box::new(
        webrtc::interceptor::nack::generator::Generator::builder().with_interval(NACK_INTERVAL),
    ));
    registry = configure_rtcp_reports(registry);
    Ok(configure_twcc_receiver_only(registry, media)?)
}

/// Builds peer connections that all share one configuration.
pub struct RtcFactory {
    api: API,
    ice_servers: Vec<IceServer>,
    loopback_only: bool,
}

impl RtcFactory {
    /// Builds the factory. With `UdpPolicy::Muxed` this binds the media port now, so it must run
    /// inside the tokio runtime, and a port in use is reported at start-up, not at the first call.
    pub fn new(options: RtcOptions) -> Result<Self> {
        Self::build(options, None)
    }

    /// A factory whose peer connections all send and receive through `conn` (which need not be
    /// a plain socket: the synthetic participants put an impaired link there). `options.udp` is
    /// not used.
    pub fn with_conn(
        options: RtcOptions,
        conn: impl webrtc::util::Conn + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::build(options, Some(UDPMuxParams::new(conn)))
    }

    fn build(options: RtcOptions, conn: Option<UDPMuxParams>) -> Result<Self> {
        let mut media = MediaEngine::default();
        for (capability, payload_type, kind) in [
            (
                codec_capability(VideoCodec::Vp8),
                PT_VP8,
                RTPCodecType::Video,
            ),
            (
                codec_capability(VideoCodec::H264),
                PT_H264,
                RTPCodecType::Video,
            ),
            (opus_capability(), PT_OPUS, RTPCodecType::Audio),
        ] {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        capability,
                        payload_type,
                        ..Default::default()
                    },
                    kind,
                )
                .context("registering a codec")?;
        }
        // Browsers stamp each audio packet with its level (RFC 6464) when the answer carries the
        // extension: the active speaker is then decided on the client's own measurement.
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_string(),
                },
                RTPCodecType::Audio,
                None,
            )
            .context("registering the audio level header extension")?;
        let interceptors = interceptors(&mut media).context("registering interceptors")?;
        let mut settings = SettingEngine::default();
        // Loopback candidates let a participant on the same host connect (tests, a local demo).
        settings.set_include_loopback_candidate(true);
        // mDNS candidates are for browsers hiding their addresses; a server has nothing to hide,
        // and answering mDNS queries would need multicast that containers rarely have.
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // A controlling agent (our synthetic participants; the server only when it offers) waits
        // 1 s by default before nominating a peer-reflexive pair, which is what a pair becomes
        // when the other side's check arrives before its trickled candidate: `mcu bench` saw 2-3
        // joins in 16 take 1.1 s instead of 0.1 s for it. A pair that answered is good enough.
        settings.set_prflx_acceptance_min_wait(Some(std::time::Duration::ZERO));
        if options.loopback_only {
            settings.set_ip_filter(Box::new(|ip: std::net::IpAddr| ip.is_loopback()));
        }
        if let Some(ip) = options.public_ip {
            // Behind 1:1 NAT (a cloud VM): advertise the public address in host candidates.
            settings.set_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
        }
        let muxed = match (conn, options.udp) {
            (Some(conn), _) => Some(conn),
            (None, UdpPolicy::Ephemeral) => None,
            (None, UdpPolicy::Muxed(port)) => {
                let socket = std::net::UdpSocket::bind(("0.0.0.0", port))
                    .with_context(|| format!("binding the media port udp/{port}"))?;
                socket.set_nonblocking(true)?;
                let socket = tokio::net::UdpSocket::from_std(socket)
                    .context("handing the media socket to tokio")?;
                Some(UDPMuxParams::new(socket))
            }
            (None, UdpPolicy::Range(min, max)) => {
                let ports = EphemeralUDP::new(min, max)
                    .map_err(|e| anyhow::anyhow!("UDP port range {min}-{max}: {e}"))?;
                settings.set_udp_network(UDPNetwork::Ephemeral(ports));
                None
            }
        };
        if let Some(params) = muxed {
            settings.set_udp_network(UDPNetwork::Muxed(UDPMuxDefault::new(params)));
            // The sockets are IPv4: advertising IPv6 candidates on the same port would make ICE
            // file every incoming check under the wrong candidate, and no pair ever forms.
            settings.set_network_types(vec![NetworkType::Udp4]);
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(interceptors)
            .with_setting_engine(settings)
            .build();
        Ok(RtcFactory {
            api,
            ice_servers: options.ice_servers,
            loopback_only: options.loopback_only,
        })
    }

    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// True when only loopback candidates are wanted (see `RtcOptions::loopback_only`).
    pub fn loopback_only(&self) -> bool {
        self.loopback_only
    }

    /// A peer connection as a session sets it up before the offer: the composite and an audio
    /// mix to send (webrtc-rs 0.17 needs them before the offer is applied).
    pub async fn peer_connection_with_tracks(
        &self,
        codec: VideoCodec,
    ) -> Result<Arc<RTCPeerConnection>> {
        let pc = self.peer_connection().await?;
        pc.add_track(OutboundTrack::video(codec, "composite", "mcu").as_local())
            .await
            .context("adding the composite track")?;
        pc.add_track(OutboundTrack::audio("mcu-mix").as_local())
            .await
            .context("adding the audio mix track")?;
        Ok(pc)
    }

    pub async fn peer_connection(&self) -> Result<Arc<RTCPeerConnection>> {
        let config = RTCConfiguration {
            ice_servers: self
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        };
        let pc = self
            .api
            .new_peer_connection(config)
            .await
            .context("creating a peer connection")?;
        Ok(Arc::new(pc))
    }
}

/// A track a peer connection sends: RTP packets written as they are, with the SSRC and payload
/// type webrtc-rs negotiated for the connection stamped on each.
#[derive(Clone)]
pub struct OutboundTrack(Arc<TrackLocalStaticRTP>);

impl OutboundTrack {
    pub fn video(codec: VideoCodec, track_id: &str, stream_id: &str) -> Self {
        OutboundTrack(Arc::new(TrackLocalStaticRTP::new(
            codec_capability(codec),
            track_id.into(),
            stream_id.into(),
        )))
    }

    pub fn audio(stream_id: &str) -> Self {
        OutboundTrack(Arc::new(TrackLocalStaticRTP::new(
            opus_capability(),
            "mix".into(),
            stream_id.into(),
        )))
    }

    pub fn as_local(&self) -> Arc<dyn TrackLocal + Send + Sync> {
        self.0.clone()
    }

    /// Writes one marshalled RTP packet. Fails only while the connection is not up yet, or is
    /// gone.
    ///
    /// The payload is not copied: the parsed packet shares `packet`'s memory, and so does the
    /// copy webrtc-rs keeps to answer NACKs (up to 8192 packets per stream). Every viewer of a
    /// room writes the same composite packets; parsed from a slice, each viewer's history held a
    /// copy of its own, which `mcu bench` saw as 5.5 MB more per participant after 20 s of a
    /// 16-person room.
    ///
    /// Returns the bytes handed to the connection's transport: 0 while no connection has bound
    /// the track yet.
    pub async fn write(&self, packet: &Bytes) -> Result<usize, webrtc::Error> {
        let mut raw = packet.clone();
        let parsed = <webrtc::rtp::packet::Packet as webrtc::util::Unmarshal>::unmarshal(&mut raw)?;
        self.0.write_rtp(&parsed).await
    }

    /// Writes a packet already parsed (the track sets its SSRC and payload type per binding).
    pub async fn write_rtp(
        &self,
        packet: &webrtc::rtp::packet::Packet,
    ) -> Result<(), webrtc::Error> {
        self.0.write_rtp(packet).await.map(|_| ())
    }

    /// Writes one marshalled RTP packet with its sequence number and timestamp (and, when given,
    /// its VP8 picture id) replaced: a viewer's composite spliced from several tiers. As in
    /// `write`, the payload is shared, unless its picture id changes.
    pub async fn write_spliced(
        &self,
        packet: &Bytes,
        seq: u16,
        timestamp: u32,
        picture_id: Option<u16>,
    ) -> Result<usize, webrtc::Error> {
        let mut raw = packet.clone();
        let mut parsed =
            <webrtc::rtp::packet::Packet as webrtc::util::Unmarshal>::unmarshal(&mut raw)?;
        parsed.header.sequence_number = seq;
        parsed.header.timestamp = timestamp;
        if let Some(id) = picture_id {
            if let Some(payload) = crate::rtp::with_vp8_picture_id(&parsed.payload, id) {
                parsed.payload = payload;
            }
        }
        self.0.write_rtp(&parsed).await
    }

    /// Writes every packet from `packets` until the sending side goes away.
    pub async fn write_all(self, packets: mpsc::Receiver<Bytes>) {
        self.write_all_counted(packets, None).await
    }

    /// As `write_all`, counting what reaches the connection in the server's metrics as `kind`.
    pub async fn write_all_counted(
        self,
        packets: mpsc::Receiver<Bytes>,
        counted: Option<crate::metrics::Kind>,
    ) {
        let packets = futures_util::stream::unfold(packets, |mut packets| async move {
            packets.recv().await.map(|packet| (packet, packets))
        });
        self.write_stream(packets, counted).await
    }

    /// Writes every packet of `packets` until it ends.
    async fn write_stream(
        self,
        packets: impl Stream<Item = Bytes>,
        counted: Option<crate::metrics::Kind>,
    ) {
        let mut packets = std::pin::pin!(packets);
        let mut failures: u64 = 0;
        while let Some(packet) = packets.next().await {
            let written = self.write(&packet).await;
            if let (Ok(1..), Some(kind)) = (&written, counted) {
                crate::metrics::metrics().rtp(crate::metrics::Direction::Out, kind, packet.len());
            }
            if let Err(e) = written {
                // A connection that is not up yet, or gone, fails every write. Log the first and
                // then every thousandth, not every packet.
                if failures.is_multiple_of(1000) {
                    tracing::debug!(failures, "writing to a track: {e}");
                }
                failures += 1;
            }
        }
    }
}

/// A local candidate as the protocol sends it; `None` when webrtc-rs cannot write it out (then it
/// is not worth sending).
fn candidate_to_protocol(candidate: &RTCIceCandidate) -> Option<IceCandidate> {
    let init = candidate.to_json().ok()?;
    Some(IceCandidate {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_m_line_index: init.sdp_mline_index,
        username_fragment: init.username_fragment,
    })
}

/// What to signal for webrtc-rs's `on_ice_candidate`: `Some(Some(c))` a candidate, `Some(None)`
/// the end of gathering (webrtc-rs passes no candidate), `None` nothing (one it cannot write out).
pub fn gathered_candidate(candidate: Option<&RTCIceCandidate>) -> Option<Option<IceCandidate>> {
    match candidate {
        Some(c) => candidate_to_protocol(c).map(Some),
        None => Some(None),
    }
}

/// A remote candidate from the protocol, for `add_ice_candidate`.
pub fn candidate_from_protocol(candidate: IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: candidate.candidate,
        sdp_mid: candidate.sdp_mid,
        sdp_mline_index: candidate.sdp_m_line_index,
        username_fragment: candidate.username_fragment,
    }
}

/// Reads an SDP without applying it: an error says why it is not one.
pub fn parse_sdp(sdp: &str) -> Result<()> {
    let mut reader = std::io::Cursor::new(sdp.as_bytes());
    webrtc::sdp::SessionDescription::unmarshal(&mut reader).context("reading the SDP")?;
    Ok(())
}

/// Applies a client's offer to `pc` and returns our answer, applied too: the whole of what the
/// server does with an SDP a client sent (webrtc-rs parses and checks it).
pub async fn answer(pc: &RTCPeerConnection, offer_sdp: String) -> Result<String> {
    let offer = RTCSessionDescription::offer(offer_sdp).context("reading the offer")?;
    pc.set_remote_description(offer)
        .await
        .context("applying the offer")?;
    let answer = pc.create_answer(None).await.context("creating an answer")?;
    pc.set_local_description(answer.clone())
        .await
        .context("applying our answer")?;
    Ok(answer.sdp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packet::Packet;

    fn packet_with_level(id: u8, level: u8, voice: bool) -> Packet {
        let mut header = Header {
            extension: true,
            // RFC 8285's one-byte header extensions, as browsers send the audio level.
            extension_profile: 0xBEDE,
            ..Default::default()
        };
        let byte = if voice { 0x80 | level } else { level };
        header
            .set_extension(id, Bytes::copy_from_slice(&[byte]))
            .expect("a one-byte extension");
        Packet {
            header,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn an_audio_level_is_read_from_its_negotiated_extension_only() {
        assert_eq!(audio_level(&packet_with_level(1, 30, true), 1), Some(30));
        assert_eq!(audio_level(&packet_with_level(1, 127, false), 1), Some(127));
        assert_eq!(audio_level(&packet_with_level(1, 30, true), 3), None);
        assert_eq!(audio_level(&Packet::default(), 1), None);
    }
}
