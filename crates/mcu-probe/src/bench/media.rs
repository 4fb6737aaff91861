//! The bench participants' media, encoded once before the run: for each participant a loop of
//! VP8 frames carrying frame codes and a loop of Opus packets carrying one tone burst, both as
//! RTP payloads ready to be re-stamped and sent. Replaying them costs the bench almost nothing,
//! so the machine's CPU goes to the server being measured.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use webrtc::util::Unmarshal;

use super::marks::{self, FrameCode, AUDIO_LOOP_PACKETS, PACKET_SAMPLES, SAMPLE_RATE};
use crate::probe::analysis::tone_for;

/// 10 s of video before the loop repeats (from its keyframe): long beside any latency, short
/// enough to encode 25 participants in a few seconds.
pub const VIDEO_LOOP_FRAMES: usize = 300;
pub const VIDEO_FPS: u32 = 30;
/// The size a sender sends by default (`mcu bench --send-size`): a tile of the 4×4 grid at
/// 1280×720, what a browser asked to send tile-sized video would send in a 16-person room.
pub const DEFAULT_SEND_SIZE: &str = "320x180";
/// What a browser sends for a small layer.
const VIDEO_BITRATE_BPS: u32 = 300_000;
const AUDIO_BITRATE_BPS: u32 = 32_000;
const FILE_MAGIC: &[u8; 8] = b"MCUBENCH";

/// One encoded video frame: the RTP payloads of its packets, in order.
pub type Frame = Vec<Bytes>;

/// One participant's loops.
#[derive(Debug, Clone, PartialEq)]
pub struct Loops {
    pub video: Vec<Frame>,
    pub audio: Vec<Bytes>,
    /// Where the burst's onset falls after an Opus decoder, from the start of its packet, in
    /// seconds: the sender's codec delay, which is not the server's doing.
    pub audio_onset_offset: f64,
}

/// Every participant's loops, and the picture size they were made at.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchMedia {
    pub width: usize,
    pub height: usize,
    pub participants: Vec<Loops>,
}

fn launch(description: &str) -> Result<gst::Pipeline> {
    gst::parse::launch(description)
        .with_context(|| format!("building {description}"))?
        .downcast::<gst::Pipeline>()
        .ok()
        .context("not a pipeline")
}

fn element<T: IsA<gst::Element>>(pipeline: &gst::Pipeline, name: &str) -> Result<T> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<T>().ok())
        .with_context(|| format!("no {name} in the pipeline"))
}

/// Pushes `buffers` through a pipeline with an appsrc `src` and an appsink `sink`, and returns
/// every buffer the sink got. Blocking: for the preparation, before anything is measured.
fn run_through(description: &str, buffers: Vec<gst::Buffer>) -> Result<Vec<gst::Buffer>> {
    let pipeline = launch(description)?;
    let src: gst_app::AppSrc = element(&pipeline, "src")?;
    let sink: gst_app::AppSink = element(&pipeline, "sink")?;
    pipeline.set_state(gst::State::Playing)?;
    for buffer in buffers {
        src.push_buffer(buffer)
            .map_err(|e| anyhow::anyhow!("pushing into {description}: {e:?}"))?;
    }
    src.end_of_stream()
        .map_err(|e| anyhow::anyhow!("ending {description}: {e:?}"))?;
    let mut out = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        if let Some(buffer) = sample.buffer_owned() {
            out.push(buffer);
        }
    }
    let bus = pipeline.bus().context("pipeline without a bus")?;
    let error = bus
        .pop_filtered(&[gst::MessageType::Error])
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        });
    pipeline.set_state(gst::State::Null)?;
    if let Some(error) = error {
        bail!("{description}: {error}");
    }
    Ok(out)
}

fn rtp_of(buffer: &gst::Buffer) -> Result<webrtc::rtp::packet::Packet> {
    let map = buffer.map_readable().context("reading an RTP buffer")?;
    let mut bytes = map.as_slice();
    webrtc::rtp::packet::Packet::unmarshal(&mut bytes).context("parsing an RTP packet")
}

fn encode_video(index: usize, width: usize, height: usize) -> Result<Vec<Frame>> {
    let frame_ns = 1_000_000_000 / u64::from(VIDEO_FPS);
    let chroma = (width / 2) * (height / 2);
    let buffers = (0..VIDEO_LOOP_FRAMES)
        .map(|n| {
            let mut data = vec![128u8; width * height + 2 * chroma];
            let code = FrameCode {
                participant: index as u16,
                frame: n as u16,
            };
            marks::draw(
                code,
                &mut data[..width * height],
                width,
                height,
                n as u32 + 1,
            );
            let mut buffer = gst::Buffer::from_mut_slice(data);
            if let Some(b) = buffer.get_mut() {
                b.set_pts(gst::ClockTime::from_nseconds(n as u64 * frame_ns));
                b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
            }
            buffer
        })
        .collect();
    // Good quality settings: this runs once, before the measurement.
    let description = format!(
        "appsrc name=src format=time caps=video/x-raw,format=I420,width={width},height={height},framerate={VIDEO_FPS}/1 \
         ! vp8enc deadline=1 cpu-used=4 threads=1 end-usage=cbr target-bitrate={VIDEO_BITRATE_BPS} \
             keyframe-max-dist=100000 lag-in-frames=0 \
         ! rtpvp8pay pt=96 mtu=1200 picture-id-mode=15-bit \
         ! appsink name=sink sync=false"
    );
    let mut frames: Vec<Frame> = Vec::new();
    let mut last_ts = None;
    for buffer in run_through(&description, buffers)? {
        let packet = rtp_of(&buffer)?;
        if last_ts != Some(packet.header.timestamp) {
            frames.push(Vec::new());
            last_ts = Some(packet.header.timestamp);
        }
        if let Some(frame) = frames.last_mut() {
            frame.push(packet.payload);
        }
    }
    ensure!(
        frames.len() == VIDEO_LOOP_FRAMES,
        "the encoder gave {} frames for {VIDEO_LOOP_FRAMES}",
        frames.len()
    );
    Ok(frames)
}

fn pcm_buffers(packets: impl Iterator<Item = Vec<f32>>) -> Vec<gst::Buffer> {
    let packet_ns = (PACKET_SAMPLES as u64 * 1_000_000_000) / SAMPLE_RATE as u64;
    packets
        .enumerate()
        .map(|(n, samples)| {
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut buffer = gst::Buffer::from_mut_slice(bytes);
            if let Some(b) = buffer.get_mut() {
                b.set_pts(gst::ClockTime::from_nseconds(n as u64 * packet_ns));
                b.set_duration(gst::ClockTime::from_nseconds(packet_ns));
            }
            buffer
        })
        .collect()
}

const PCM_CAPS: &str = "audio/x-raw,format=F32LE,rate=48000,channels=1,layout=interleaved";

fn encode_audio(index: usize) -> Result<(Vec<Bytes>, f64)> {
    let tone_hz = tone_for(index);
    // Two loops: the first warms the encoder up, the second (in steady state) is kept.
    let packets = (0..2 * AUDIO_LOOP_PACKETS).map(|n| marks::loop_packet(index, n, tone_hz));
    let description = format!(
        "appsrc name=src format=time caps={PCM_CAPS} ! audioconvert \
         ! opusenc bitrate={AUDIO_BITRATE_BPS} frame-size=20 audio-type=voice \
         ! rtpopuspay pt=111 mtu=1200 ! appsink name=sink sync=false"
    );
    let encoded: Vec<Bytes> = run_through(&description, pcm_buffers(packets))?
        .iter()
        .map(|b| rtp_of(b).map(|p| p.payload))
        .collect::<Result<_>>()?;
    ensure!(
        encoded.len() >= 2 * AUDIO_LOOP_PACKETS,
        "the encoder gave {} packets for {}",
        encoded.len(),
        2 * AUDIO_LOOP_PACKETS
    );
    // By position from the start: at the end of the stream the encoder flushes its look-ahead
    // into an extra packet.
    let kept: Vec<Bytes> = encoded[AUDIO_LOOP_PACKETS..2 * AUDIO_LOOP_PACKETS].to_vec();
    let offset = onset_offset(index, &kept)?;
    Ok((kept, offset))
}

/// Decodes the loop twice over as the server's decoder would and finds where the burst starts
/// relative to the start of its packet.
fn onset_offset(index: usize, loop_packets: &[Bytes]) -> Result<f64> {
    let packet_seconds = PACKET_SAMPLES as f64 / SAMPLE_RATE as f64;
    let buffers: Vec<gst::Buffer> = (0..2 * AUDIO_LOOP_PACKETS)
        .map(|n| {
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: n as u16,
                    timestamp: (n * PACKET_SAMPLES) as u32,
                    ssrc: 1,
                    marker: n == 0,
                    ..Default::default()
                },
                payload: loop_packets[n % AUDIO_LOOP_PACKETS].clone(),
            };
            let bytes = webrtc::util::Marshal::marshal(&packet).unwrap_or_default();
            let mut buffer = gst::Buffer::from_slice(bytes);
            if let Some(b) = buffer.get_mut() {
                b.set_pts(gst::ClockTime::from_nseconds(
                    (n as f64 * packet_seconds * 1e9) as u64,
                ));
            }
            buffer
        })
        .collect();
    let description = format!(
        "appsrc name=src format=time \
           caps=\"application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=111\" \
         ! rtpopusdepay ! opusdec ! audioconvert ! {PCM_CAPS} ! appsink name=sink sync=false"
    );
    let mut samples = Vec::new();
    for buffer in run_through(&description, buffers)? {
        let map = buffer.map_readable()?;
        samples.extend(
            map.as_slice()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    let tone = tone_for(index);
    let onsets = marks::OnsetDetector::default().push(0.0, &samples, &[tone]);
    // The second loop's burst: the first may carry the decoder's start-up.
    let burst_start = (AUDIO_LOOP_PACKETS + marks::burst_slot(index)) as f64 * packet_seconds;
    onsets
        .iter()
        .map(|o| o.at - burst_start)
        .find(|d| (-0.01..0.05).contains(d))
        .context("the decoded audio loop shows no burst where it was encoded")
}

impl BenchMedia {
    /// Encodes loops for `participants` participants at `width`×`height`.
    pub fn encode(participants: usize, width: usize, height: usize) -> Result<BenchMedia> {
        ensure!(
            participants <= marks::MAX_PARTICIPANTS,
            "at most {} bench participants",
            marks::MAX_PARTICIPANTS
        );
        ensure!(
            width.is_multiple_of(8) && height.is_multiple_of(2) && width >= 96 && height >= 64,
            "the send size must be at least 96×64, its width a multiple of 8 (whole rows for I420)"
        );
        let participants = (0..participants)
            .map(|index| {
                let video = encode_video(index, width, height)
                    .with_context(|| format!("encoding participant {index}'s video"))?;
                let (audio, audio_onset_offset) = encode_audio(index)
                    .with_context(|| format!("encoding participant {index}'s audio"))?;
                Ok(Loops {
                    video,
                    audio,
                    audio_onset_offset,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BenchMedia {
            width,
            height,
            participants,
        })
    }

    /// Saves the loops for the floor process (see floor.rs), so it replays the very same bytes.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(FILE_MAGIC);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.width as u64);
        put(self.height as u64);
        put(self.participants.len() as u64);
        let mut body = Vec::new();
        for p in &self.participants {
            body.extend_from_slice(&p.audio_onset_offset.to_le_bytes());
            body.extend_from_slice(&(p.video.len() as u64).to_le_bytes());
            for frame in &p.video {
                write_chunks(&mut body, frame);
            }
            write_chunks(&mut body, &p.audio);
        }
        out.extend_from_slice(&body);
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&out)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<BenchMedia> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", path.display()))?;
        let mut reader = Reader { bytes: &bytes };
        ensure!(
            reader.take(FILE_MAGIC.len())? == FILE_MAGIC,
            "{} is not a bench media file",
            path.display()
        );
        let width = reader.number()? as usize;
        let height = reader.number()? as usize;
        let count = reader.number()? as usize;
        ensure!(count <= marks::MAX_PARTICIPANTS, "too many participants");
        let mut participants = Vec::with_capacity(count);
        for _ in 0..count {
            let audio_onset_offset = f64::from_le_bytes(reader.array()?);
            let frames = reader.number()? as usize;
            ensure!(frames <= marks::MAX_FRAMES, "too many frames");
            let video = (0..frames)
                .map(|_| reader.chunks())
                .collect::<Result<Vec<_>>>()?;
            let audio = reader.chunks()?;
            participants.push(Loops {
                video,
                audio,
                audio_onset_offset,
            });
        }
        Ok(BenchMedia {
            width,
            height,
            participants,
        })
    }
}

fn write_chunks(out: &mut Vec<u8>, chunks: &[Bytes]) {
    out.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(c);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(self.bytes.len() >= n, "the bench media file is truncated");
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array(&mut self) -> Result<[u8; 8]> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }

    fn number(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn chunks(&mut self) -> Result<Vec<Bytes>> {
        let n = self.number()? as usize;
        ensure!(
            n <= 1 << 16,
            "implausible packet count in the bench media file"
        );
        (0..n)
            .map(|_| {
                let len = self.number()? as usize;
                Ok(Bytes::copy_from_slice(self.take(len)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_encoded_with_a_burst_and_survive_a_save_and_load() {
        gst::init().expect("GStreamer");
        let media = BenchMedia::encode(2, 160, 96).expect("encoding");
        assert_eq!(media.participants.len(), 2);
        for p in &media.participants {
            assert_eq!(p.video.len(), VIDEO_LOOP_FRAMES);
            assert!(p.video.iter().all(|f| !f.is_empty()));
            assert_eq!(p.audio.len(), AUDIO_LOOP_PACKETS);
            // Opus's look-ahead: a few milliseconds, never negative by more than a ramp.
            assert!(
                (-0.005..0.03).contains(&p.audio_onset_offset),
                "{}",
                p.audio_onset_offset
            );
        }
        let path = std::env::temp_dir().join(format!("bench-media-{}.bin", std::process::id()));
        media.save(&path).expect("saving");
        let loaded = BenchMedia::load(&path).expect("loading");
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded, media);
    }
}
