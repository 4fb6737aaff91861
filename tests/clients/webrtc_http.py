"""A WHEP player and a WHIP publisher built on aiortc (a WebRTC stack not written here), for the
tests in tests/whip.rs. Prints one JSON line of what it saw.

    webrtc_http.py watch URL --seconds N [--tone HZ] [--token T]
    webrtc_http.py audience URL --players N --seconds S   (players that receive without decoding,
                                                           to measure what watchers cost the server)
    webrtc_http.py publish URL --seconds N --colour RRGGBB --tone HZ [--codec vp8|h264]
"""

import argparse
import asyncio
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array

from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av import AudioFrame, VideoFrame

SAMPLE_RATE = 48000
AUDIO_FRAME = 960  # 20 ms


def http(method, url, body=None, token=None, content_type=None):
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


async def negotiate(pc, url, token):
    """POSTs the offer (every candidate in it: aiortc gathers in setLocalDescription) and applies
    the answer; returns the resource URL."""
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, headers, body = await loop.run_in_executor(
        None, http, "POST", url, pc.localDescription.sdp.encode(), token, "application/sdp"
    )
    if status != 201:
        print(json.dumps({"error": f"POST answered {status}: {body}"}))
        sys.exit(2)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return urllib.parse.urljoin(url, headers.get("Location", ""))


def yuv_to_rgb(y, u, v):
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    clamp = lambda x: max(0, min(255, round(x)))
    return [clamp(c + 1.596 * e), clamp(c - 0.392 * d - 0.813 * e), clamp(c + 2.017 * d)]


def centre_colour(frame):
    """The average colour of a 16×16 square at the picture's centre."""
    frame = frame.reformat(format="yuv420p")
    cx, cy = frame.width // 2, frame.height // 2
    sums = []
    for index, (x0, y0, size) in enumerate([(cx - 8, cy - 8, 16), (cx // 2 - 4, cy // 2 - 4, 8), (cx // 2 - 4, cy // 2 - 4, 8)]):
        plane = frame.planes[index]
        data = bytes(plane)
        total = 0
        for row in range(y0, y0 + size):
            start = row * plane.line_size + x0
            total += sum(data[start:start + size])
        sums.append(total / (size * size))
    return yuv_to_rgb(*sums)


def tone_share(samples, hz):
    """The share of the signal's energy at `hz` (Goertzel over the whole window)."""
    if not samples:
        return 0.0
    k = 2 * math.cos(2 * math.pi * hz / SAMPLE_RATE)
    s1 = s2 = 0.0
    energy = 0.0
    for x in samples:
        s0 = x + k * s1 - s2
        s2, s1 = s1, s0
        energy += x * x
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    return 0.0 if energy == 0 else min(1.0, 2 * power / (len(samples) * energy))


async def watch(args):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    seen = {"frame_times": [], "size": None, "centre": None, "audio": array("h")}

    async def video(track):
        while True:
            frame = await track.recv()
            seen["frame_times"].append(time.monotonic())
            seen["size"] = [frame.width, frame.height]
            if len(seen["frame_times"]) % 30 == 0:
                seen["centre"] = centre_colour(frame)

    async def audio(track):
        while True:
            frame = await track.recv()
            channels = len(frame.layout.channels)
            # The plane may be padded past its samples.
            pcm = array("h", bytes(frame.planes[0])[: frame.samples * channels * 2])
            seen["audio"].extend(pcm[::channels])
            del seen["audio"][: max(0, len(seen["audio"]) - SAMPLE_RATE)]

    tasks = []

    @pc.on("track")
    def on_track(track):
        tasks.append(asyncio.ensure_future(video(track) if track.kind == "video" else audio(track)))

    resource = await negotiate(pc, args.url, args.token)
    await asyncio.sleep(args.seconds)
    times = seen["frame_times"]
    # The rate once the picture runs: from two seconds after the first frame to the end.
    steady = [t for t in times if times and t >= times[0] + 2.0]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else 0.0
    samples = [x / 32768.0 for x in seen["audio"]]
    result = {
        "frames": len(times),
        "fps": round(fps, 2),
        "size": seen["size"],
        "centre": seen["centre"],
        "audio_samples": len(samples),
        "tone_share": round(tone_share(samples, args.tone), 3) if args.tone else None,
        "resource": resource,
    }
    for task in tasks:
        task.cancel()
    status, _, _ = http("DELETE", resource, token=args.token)
    result["delete_status"] = status
    await pc.close()
    print(json.dumps(result))


class NoDecoder:
    """Stands in for aiortc's decoders: an audience's packets are received, decrypted and
    depacketized, but not decoded (the measured cost is the server's, not the players')."""

    def decode(self, encoded_frame):
        return []


async def audience(args):
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.get_decoder = lambda codec: NoDecoder()
    players = []
    for _ in range(args.players):
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        players.append((pc, await negotiate(pc, args.url, args.token)))
    await asyncio.sleep(args.seconds)
    statuses = []
    for pc, resource in players:
        statuses.append(http("DELETE", resource, token=args.token)[0])
        await pc.close()
    print(json.dumps({"players": len(players), "delete_statuses": sorted(set(statuses))}))


class ColourTrack(MediaStreamTrack):
    """A 640×360 camera of one colour with a moving bright bar, at 30 fps."""

    kind = "video"

    def __init__(self, rgb):
        super().__init__()
        r, g, b = rgb
        self.yuv = (
            round(16 + 0.257 * r + 0.504 * g + 0.098 * b),
            round(128 - 0.148 * r - 0.291 * g + 0.439 * b),
            round(128 + 0.439 * r - 0.368 * g - 0.071 * b),
        )
        self.count = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.count / 30
        await asyncio.sleep(max(0, due - time.monotonic()))
        frame = VideoFrame(width=640, height=360, format="yuv420p")
        y, u, v = self.yuv
        luma = bytearray([y]) * (frame.planes[0].line_size * 360)
        bar = (self.count * 4) % 600
        for row in range(0, 20):
            start = row * frame.planes[0].line_size + bar
            luma[start:start + 40] = b"\xeb" * 40
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(bytes([u]) * (frame.planes[1].line_size * 180))
        frame.planes[2].update(bytes([v]) * (frame.planes[2].line_size * 180))
        frame.pts = self.count * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A sine tone, 20 ms at a time, in real time."""

    kind = "audio"

    def __init__(self, hz):
        super().__init__()
        self.hz = hz
        self.sent = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.sent / SAMPLE_RATE
        await asyncio.sleep(max(0, due - time.monotonic()))
        samples = array(
            "h",
            (
                round(12000 * math.sin(2 * math.pi * self.hz * (self.sent + i) / SAMPLE_RATE))
                for i in range(AUDIO_FRAME)
            ),
        )
        frame = AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.sent += AUDIO_FRAME
        return frame


async def publish(args):
    pc = RTCPeerConnection()
    rgb = [int(args.colour[i:i + 2], 16) for i in (0, 2, 4)]
    video = pc.addTransceiver(ColourTrack(rgb), direction="sendonly")
    mime = {"vp8": "video/VP8", "h264": "video/H264"}[args.codec]
    video.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == mime]
    )
    pc.addTransceiver(ToneTrack(args.tone), direction="sendonly")
    resource = await negotiate(pc, args.url, args.token)
    await asyncio.sleep(args.seconds)
    status, _, _ = http("DELETE", resource, token=args.token)
    await pc.close()
    print(json.dumps({"resource": resource, "delete_status": status}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["watch", "publish", "audience"])
    parser.add_argument("--players", type=int, default=10)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tone", type=float)
    parser.add_argument("--colour", default="8000ff")
    parser.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    parser.add_argument("--token")
    args = parser.parse_args()
    run = {"watch": watch, "publish": publish, "audience": audience}[args.mode]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
