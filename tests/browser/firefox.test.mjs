// Firefox beside Chromium in one room: each negotiates its own payload types and codecs with the
// server, and each sees the other's camera in the composite. Debian's firefox-esr is driven over
// WebDriver BiDi by puppeteer-core (Playwright only drives its own patched Firefox builds, which
// cannot be downloaded here). Firefox has no file-backed fake camera: its fake device is a solid
// colour that changes over time, so its tile is checked for being a picture, not a colour.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";
import {
  ARTIFACTS, colourAt, compositeShot, decodePng, fakeMedia, joinRoom, launchBrowser, layout, near,
  startServer, stats, waitFor,
} from "./harness.mjs";

const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";
const RED = [230, 30, 30];
const PLACEHOLDER = [0x3c, 0x40, 0x43];
const SETTLE_MS = 30000;

function launchFirefox() {
  return puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: {
      // Fake camera and microphone (a changing colour and a 1 kHz tone), granted without asking.
      "media.navigator.streams.fake": true,
      "media.navigator.permission.disabled": true,
      "media.autoplay.default": 0,
      // No update checks, telemetry or captive-portal probes: the network here is closed.
      "app.update.enabled": false,
      "network.captive-portal-service.enabled": false,
      "datareporting.policy.dataSubmissionEnabled": false,
    },
  });
}

/** A camera picture rather than the dark placeholder or the background: clearly coloured. */
const isPicture = ([r, g, b]) => Math.max(r, g, b) - Math.min(r, g, b) > 60 && !near([r, g, b], PLACEHOLDER, 20);

test("Firefox and Chromium in one room see each other's cameras and hear audio", async () => {
  const server = await startServer();
  const chromium = await launchBrowser(fakeMedia("red", RED, 440));
  const firefox = await launchFirefox();
  try {
    const red = await joinRoom(chromium, server.url, "interop", "Red");
    const fox = await firefox.newPage();
    await fox.setViewport({ width: 1400, height: 1000 });
    await fox.goto(`${server.url}/r/interop`);
    await fox.type("#name-input", "Fox");
    await waitFor("Firefox's camera preview", 10000, () =>
      fox.evaluate(() => document.getElementById("preview").srcObject?.getVideoTracks().length > 0),
    );
    await fox.click("#join-button");

    // Firefox decodes the 1280×720 composite (Chromium's 640×360 camera in a 640×720 tile needs
    // the full frame), frames keep coming, and the mix carries sound.
    const first = await waitFor("Firefox to decode the composite", SETTLE_MS, async () => {
      const s = await fox.evaluate(() => window.mcu.call?.stats());
      const full = s?.video?.frameWidth === 1280;
      return full && s?.video?.framesDecoded > 10 && s?.audio?.packetsReceived > 10 ? s : null;
    });
    assert.equal(first.video.frameWidth, 1280);
    assert.equal(first.video.frameHeight, 720);
    const later = await waitFor("Firefox's frame count to rise", 5000, async () => {
      const s = await fox.evaluate(() => window.mcu.call.stats());
      return s.video.framesDecoded > first.video.framesDecoded + 15 ? s : null;
    });
    assert.ok(later.audio.totalAudioEnergy > 0, "Firefox hears the Chromium page's tone");

    // Chromium's composite: its own red on the left, Firefox's camera on the right.
    await waitFor("Chromium to show both cameras", SETTLE_MS, async () => {
      const l = await layout(red);
      if (!l || l.tiles.length !== 2) return null;
      const shot = await compositeShot(red, "interop-chromium.png");
      const [a, b] = l.tiles.map((t) => colourAt(shot, l.width, l.height, t.x + t.width / 2, t.y + t.height / 2));
      return near(a, RED) && isPicture(b);
    });
    const chromiumStats = await stats(red);
    assert.equal(chromiumStats.video.frameWidth, 1280);

    // Firefox's composite shows the same: red on the left, its own camera on the right.
    mkdirSync(ARTIFACTS, { recursive: true });
    await waitFor("Firefox to show both cameras", SETTLE_MS, async () => {
      const l = await fox.evaluate(() => window.mcu.call?.layout ?? null);
      if (!l || l.tiles.length !== 2) return null;
      const element = await fox.$("#composite");
      const png = await element.screenshot({ path: join(ARTIFACTS, "interop-firefox.png") });
      const shot = { image: decodePng(Buffer.from(png)) };
      const [a, b] = l.tiles.map((t) => colourAt(shot, l.width, l.height, t.x + t.width / 2, t.y + t.height / 2));
      return near(a, RED) && isPicture(b);
    });
  } finally {
    await firefox.close();
    await chromium.close();
    await server.stop();
  }
});
