// The watch page (/w/{room}): Chromium plays a room over WHEP, receive-only, with no tile of its
// own; closing the page ends its session.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ARTIFACTS, MCU, startServer, launchBrowser, fakeMedia, waitFor, decodePng, near } from "./harness.mjs";

// The probe's first participant (p1) sends the palette's red.
const PROBE_RED = [230, 30, 30];

/** The admin view of `room` (the server answers loopback without a token). */
async function roomView(server, room) {
  const reply = await fetch(`${server.url}/api/v1/rooms`);
  const body = await reply.json();
  return body.rooms.find((r) => r.room === room) ?? null;
}

test("the watch page plays a room's whole composite without joining it", async () => {
  // A fixed canvas: the full 1280×720 a room of HD cameras gets (the probe's camera is small).
  const server = await startServer(["--canvas", "fixed"]);
  const probe = spawn(MCU, [
    "probe", "--url", server.url, "--room", "lobby", "--participants", "1", "--seconds", "40",
  ], { stdio: "ignore" });
  const browser = await launchBrowser(fakeMedia("unused", [0, 0, 0], 220));
  try {
    await waitFor("the probe in the room", 15000, async () => (await roomView(server, "lobby"))?.participants.length === 1);
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const page = await context.newPage();
    await page.goto(`${server.url}/w/lobby`);
    const playing = await waitFor("the composite to play at 1280×720", 20000, () =>
      page.evaluate(() => {
        const v = document.getElementById("screen");
        return v.videoWidth === 1280 && v.videoHeight === 720 && v.currentTime > 0.5
          ? { width: v.videoWidth, height: v.videoHeight }
          : null;
      }),
    );
    assert.deepEqual(playing, { width: 1280, height: 720 });
    const frames = () => page.evaluate(() => document.getElementById("screen").getVideoPlaybackQuality().totalVideoFrames);
    const before = await frames();
    await waitFor("frames to keep coming", 10000, async () => (await frames()) > before + 30);

    // Watching is not joining: one participant, one tile, one watcher.
    const view = await roomView(server, "lobby");
    assert.equal(view.participants.length, 1, JSON.stringify(view.participants));
    assert.equal(view.layout.tiles.length, 1);
    assert.equal(view.watchers, 1);

    // The probe's tile fills the frame: its red is at the centre of what the page shows.
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = decodePng(await page.screenshot({ path: join(ARTIFACTS, "watch-page.png") }));
    const i = (Math.round(shot.height / 2) * shot.width + Math.round(shot.width / 2)) * shot.channels;
    const centre = [shot.data[i], shot.data[i + 1], shot.data[i + 2]];
    assert.ok(near(centre, PROBE_RED), `the centre of the watch page is ${centre}, not the probe's red`);

    // Closing the page ends its WHEP session.
    await context.close();
    await waitFor("the watcher to be gone", 10000, async () => (await roomView(server, "lobby"))?.watchers === 0);
  } finally {
    probe.kill();
    await browser.close();
    await server.stop();
  }
});
