// Shared pieces of the browser tests: the server process, fake camera/microphone files, headless
// Chromium with those files as its devices, and reading pixels out of a PNG screenshot.

import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { createWriteStream, mkdirSync, existsSync, readFileSync } from "node:fs";
import { inflateSync } from "node:zlib";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

export const ROOT = resolve(import.meta.dirname, "..", "..");
export const MCU = process.env.MCU_BIN ?? join(ROOT, "target", "debug", "mcu");
export const ARTIFACTS = join(ROOT, "target", "browser-artifacts");
const MEDIA = join(ROOT, "target", "browser-media");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Polls `check` until it returns a truthy value or `ms` pass; every wait has a deadline. */
export async function waitFor(what, ms, check) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

let servers = 0;

/** Starts `mcu serve` on a free loopback port; resolves to { url, process, stop() }. */
export async function startServer(args = [], { https = false } = {}) {
  const child = spawn(MCU, ["serve", "--listen", "127.0.0.1:0", ...args], {
    // Recordings (if a test makes any) stay under target/, never in the working tree.
    env: { ...process.env, RUST_LOG: "info,webrtc=error,webrtc_ice=error", MCU_RECORDINGS_DIR: join(ARTIFACTS, "recordings") },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  // Each server's log is kept next to the screenshots: a failure in CI is read from it.
  mkdirSync(ARTIFACTS, { recursive: true });
  const logFile = createWriteStream(join(ARTIFACTS, `server-${process.pid}-${++servers}.log`));
  child.stderr.on("data", (d) => {
    log += d;
    logFile.write(d);
  });
  const line = await new Promise((resolveLine, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once("line", resolveLine);
    child.once("exit", (code) => reject(new Error(`mcu serve exited (${code}): ${log}`)));
  });
  const match = line.match(/^listening on (https?:\/\/\S+)$/);
  if (!match) throw new Error(`unexpected first line ${line}`);
  let url = match[1];
  if (https) url = url.replace("127.0.0.1", "localhost");
  return {
    url,
    log: () => log,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
    },
  };
}

/** Writes (once) a solid-colour .y4m camera clip and a sine-tone .wav microphone file. */
export function fakeMedia(name, [r, g, b], toneHz) {
  mkdirSync(MEDIA, { recursive: true });
  const video = join(MEDIA, `${name}.y4m`);
  const audio = join(MEDIA, `${name}.wav`);
  const argb = (0xff000000 | (r << 16) | (g << 8) | b) >>> 0;
  if (!existsSync(video)) {
    execFileSync("gst-launch-1.0", [
      "-q", "videotestsrc", "num-buffers=30", "pattern=solid-color", `foreground-color=${argb}`,
      "!", "video/x-raw,format=I420,width=640,height=360,framerate=30/1",
      "!", "y4menc", "!", "filesink", `location=${video}`,
    ]);
  }
  if (!existsSync(audio)) {
    execFileSync("gst-launch-1.0", [
      "-q", "audiotestsrc", "num-buffers=100", "wave=sine", `freq=${toneHz}`, "volume=0.3",
      "samplesperbuffer=960", "!", "audio/x-raw,format=S16LE,rate=48000,channels=1",
      "!", "wavenc", "!", "filesink", `location=${audio}`,
    ]);
  }
  return { video, audio };
}

/** Launches headless Chromium whose camera and microphone are the given files. */
export async function launchBrowser(media, extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-video-capture=${media.video}`,
      `--use-file-for-fake-audio-capture=${media.audio}`,
      "--autoplay-policy=no-user-gesture-required",
      ...extraArgs,
    ],
  });
}

/** Opens the room's link, types a name and joins; resolves to the page. */
export async function joinRoom(browser, url, room, name) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${url}/r/${room}`);
  await page.getByLabel("Your name").fill(name);
  // The preview must be live before joining, or the browser would join without a camera.
  await waitFor("the camera preview", 10000, () =>
    page.evaluate(() => document.getElementById("preview").srcObject?.getVideoTracks().length > 0),
  );
  await page.getByRole("button", { name: "Join" }).click();
  return page;
}

export const stats = (page) => page.evaluate(() => window.mcu.call?.stats());
export const layout = (page) => page.evaluate(() => window.mcu.call?.layout ?? null);

/** Screenshot of the composite <video>, decoded; also saved under target/browser-artifacts. */
export async function compositeShot(page, file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const video = page.locator("#composite");
  const png = await video.screenshot({ path: join(ARTIFACTS, file) });
  const box = await video.boundingBox();
  return { image: decodePng(png), box };
}

/**
 * The colour at composite pixel (x, y) in a screenshot of the <video>, for a composite of
 * `width`×`height` drawn letterboxed into the element. Averages a small square.
 */
export function colourAt(shot, width, height, x, y) {
  const { image } = shot;
  const scale = Math.min(image.width / width, image.height / height);
  const offX = (image.width - width * scale) / 2;
  const offY = (image.height - height * scale) / 2;
  const cx = Math.round(offX + x * scale);
  const cy = Math.round(offY + y * scale);
  let sum = [0, 0, 0];
  let n = 0;
  for (let dy = -3; dy <= 3; dy++) {
    for (let dx = -3; dx <= 3; dx++) {
      const i = ((cy + dy) * image.width + (cx + dx)) * image.channels;
      sum = [sum[0] + image.data[i], sum[1] + image.data[i + 1], sum[2] + image.data[i + 2]];
      n++;
    }
  }
  return sum.map((v) => Math.round(v / n));
}

export function near(seen, expected, tolerance = 60) {
  return seen.every((v, i) => Math.abs(v - expected[i]) <= tolerance);
}

/** A minimal PNG decoder: 8-bit RGB or RGBA, not interlaced (what Chromium writes). */
export function decodePng(buffer) {
  const data = Buffer.isBuffer(buffer) ? buffer : readFileSync(buffer);
  let pos = 8;
  let width = 0, height = 0, colourType = 0;
  const idat = [];
  while (pos < data.length) {
    const length = data.readUInt32BE(pos);
    const type = data.toString("ascii", pos + 4, pos + 8);
    const body = data.subarray(pos + 8, pos + 8 + length);
    if (type === "IHDR") {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      if (body[8] !== 8 || body[12] !== 0) throw new Error("only 8-bit, non-interlaced PNGs");
      colourType = body[9];
    } else if (type === "IDAT") idat.push(body);
    else if (type === "IEND") break;
    pos += 12 + length;
  }
  const channels = colourType === 6 ? 4 : colourType === 2 ? 3 : 0;
  if (!channels) throw new Error(`PNG colour type ${colourType} not supported`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, channels, data: out };
}
