// Real headless Chromium joining through the page, with fake devices fed from files of known
// content. Assertions look at what the browser decodes (getStats) and at the pixels of a
// screenshot of the composite. Run by `make test` (node --test, one test at a time).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { join } from "node:path";
import {
  ARTIFACTS, MCU, colourAt, compositeShot, fakeMedia, joinRoom, launchBrowser, layout, near,
  startServer, stats, waitFor,
} from "./harness.mjs";

const RED = [230, 30, 30];
const BLUE = [40, 60, 230];
const SETTLE_MS = 30000;

/** The composite's sizes: the 1280×720 frame, or a smaller canvas that fits the cameras in it
 * (the server's canvas.rs). A fake camera sends 640×360: alone in the frame it makes a 640×360
 * canvas; two of them side by side need the full frame. */
const CANVAS_WIDTHS = [1280, 960, 640, 320];

/** Waits until the page decodes the composite (`width` wide, when given) and hears audio. */
async function decoding(page, who, width = null) {
  const first = await waitFor(`${who} to decode the composite`, SETTLE_MS, async () => {
    const s = await stats(page);
    const sized = width === null || s?.video?.frameWidth === width;
    return sized && s?.video?.framesDecoded > 10 && s?.audio?.packetsReceived > 10 ? s : null;
  });
  assert.ok(CANVAS_WIDTHS.includes(first.video.frameWidth), `${who}: composite width ${first.video.frameWidth}`);
  assert.equal(first.video.frameHeight * 16, first.video.frameWidth * 9, `${who}: a 16:9 composite`);
  // Still rising: the stream flows, it did not just deliver a few frames. Audio keeps arriving
  // too; alone in a room, the silent mix comes as one packet every 400 ms (as Opus DTX sends).
  const later = await waitFor(`${who}'s frame and audio packet counts to rise`, 5000, async () => {
    const s = await stats(page);
    const rising = s.audio.packetsReceived > first.audio.packetsReceived;
    return rising && s.video.framesDecoded > first.video.framesDecoded + 15 ? s : null;
  });
  return later;
}

/** Waits until a screenshot of `page` shows each expected colour in its participant's tile. */
async function showsTiles(page, expected, file) {
  let last = "no layout yet";
  try {
    return await waitFor(`${file}: the colours in their tiles`, SETTLE_MS, async () => {
      const l = await layout(page);
      if (!l || l.tiles.length !== expected.length) {
        last = `layout ${JSON.stringify(l)}`;
        return null;
      }
      const shot = await compositeShot(page, file);
      const seen = l.tiles.map((t) => colourAt(shot, l.width, l.height, t.x + t.width / 2, t.y + t.height / 2));
      last = `colours ${JSON.stringify(seen)} at the centres of ${JSON.stringify(l)}`;
      return expected.every((colour, i) => near(seen[i], colour)) ? { layout: l, seen } : null;
    });
  } catch (e) {
    // What the page last showed says which part failed (a tile missing, or a wrong picture).
    throw new Error(`${e.message}; last seen: ${last}`);
  }
}

test("two browsers see both colours, hear each other, and one leaving leaves one tile", async () => {
  const server = await startServer();
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  const blue = await launchBrowser(fakeMedia("blue", BLUE, 660));
  try {
    const a = await joinRoom(red, server.url, "browsers", "Red");
    const b = await joinRoom(blue, server.url, "browsers", "Blue");
    // Two 640×360 cameras side by side: the full 1280×720 frame.
    const statsA = await decoding(a, "red", 1280);
    const statsB = await decoding(b, "blue", 1280);
    assert.ok(statsA.audio.totalAudioEnergy > 0 && statsB.audio.totalAudioEnergy > 0, "sound, not silence");
    // Join order is tile order: red left, blue right, in both composites.
    await showsTiles(a, [RED, BLUE], "two-browsers-red.png");
    await showsTiles(b, [RED, BLUE], "two-browsers-blue.png");
    const people = await a.locator("#people li").allTextContents();
    assert.deepEqual(people.sort(), ["Blue", "Red (you)"]);

    await b.getByRole("button", { name: "Leave" }).click();
    const alone = await showsTiles(a, [RED], "one-left.png");
    assert.deepEqual(
      [alone.layout.tiles[0].width, alone.layout.tiles[0].height],
      [1280, 720],
      "the one who stayed fills the frame",
    );
  } finally {
    await red.close();
    await blue.close();
    await server.stop();
  }
});

test("each tile carries its name, and a click on a tile pins that participant large", async () => {
  const server = await startServer();
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  const blue = await launchBrowser(fakeMedia("blue", BLUE, 660));
  try {
    const a = await joinRoom(red, server.url, "labels", "Red");
    const b = await joinRoom(blue, server.url, "labels", "Blue");
    await decoding(a, "red", 1280);
    await showsTiles(a, [RED, BLUE], "labels-grid.png");
    // Each 640×720 tile: its camera's colour at the centre, its name (white on a dark box) at
    // the bottom left, where the camera alone is red or blue too.
    const labelled = await waitFor("a label at the bottom left of each tile", SETTLE_MS, async () => {
      const l = await layout(a);
      const shot = await compositeShot(a, "labels-names.png");
      const checks = l.tiles.map((t, i) => {
        const colour = [RED, BLUE][i];
        const centre = colourAt(shot, l.width, l.height, t.x + t.width / 2, t.y + t.height / 2);
        const label = colourAt(shot, l.width, l.height, t.x + 40, t.y + t.height - 28);
        return { centre, label, ok: near(centre, colour) && !near(label, colour) };
      });
      return checks.every((c) => c.ok) ? checks : null;
    });
    console.log(`labels: ${JSON.stringify(labelled)}`);
    // The server asks for the level each audio packet carries (RFC 6464), and the page hears who
    // speaks (both fake microphones play a steady tone: the first heard takes the floor).
    const answer = await a.evaluate(() => window.mcu.call.pc.remoteDescription.sdp);
    assert.match(answer, /a=extmap:\d+ urn:ietf:params:rtp-hdrext:ssrc-audio-level/);
    await waitFor("an active speaker", SETTLE_MS, () => a.evaluate(() => window.mcu.call.activeSpeaker ?? null));
    // Red clicks Blue's tile (the right half): Blue is pinned large above a strip.
    const box = await a.locator("#composite").boundingBox();
    await a.mouse.click(box.x + box.width * 0.75, box.y + box.height / 2);
    const pinned = await waitFor("the pin layout in both pages", SETTLE_MS, async () => {
      const [la, lb] = [await layout(a), await layout(b)];
      return la?.layout === "pin" && lb?.layout === "pin" ? la : null;
    });
    const big = pinned.tiles.reduce((x, y) => (x.width * x.height >= y.width * y.height ? x : y));
    assert.equal(big.participant_id, "p2", `Blue (p2) is the large tile: ${JSON.stringify(pinned)}`);
    await waitFor("Blue's colour in the large region", SETTLE_MS, async () => {
      const shot = await compositeShot(a, "labels-pinned.png");
      const seen = colourAt(shot, pinned.width, pinned.height, big.x + big.width / 2, big.y + big.height / 2);
      return near(seen, BLUE) ? seen : null;
    });
    assert.equal(await a.locator("#layout-select").inputValue(), "pin");
  } finally {
    await red.close();
    await blue.close();
    await server.stop();
  }
});

test("a browser and a synthetic participant see each other", async () => {
  const server = await startServer();
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const page = await joinRoom(red, server.url, "mixed", "Red");
    await decoding(page, "browser");
    // The probe joins second (participant p2: the palette's green) and must see the browser (p1)
    // in red.
    const report = join(ARTIFACTS, "mixed-probe.json");
    const probe = spawn(MCU, [
      "probe", "--url", server.url, "--room", "mixed", "--participants", "1", "--seconds", "6",
      "--expect", "p1=#e61e1e", "--json", report,
    ], { stdio: "inherit" });
    await showsTiles(page, [RED, [30, 200, 30]], "mixed-browser.png");
    const code = await new Promise((r) => probe.once("exit", r));
    const result = JSON.parse(readFileSync(report, "utf8"));
    const probeView = result.per_participant[0];
    const browserTile = probeView.tiles.find((t) => t.participant === "p1");
    assert.ok(browserTile?.ok, `the probe saw the browser's red tile: ${JSON.stringify(browserTile)}`);
    assert.equal(code, 0, `probe report: ${JSON.stringify(probeView)}`);
  } finally {
    await red.close();
    await server.stop();
  }
});

/** The size the page's camera is sent at (outbound-rtp), once Chrome reports one. */
async function sendingSize(page) {
  return page.evaluate(async () => {
    const report = await window.mcu.call.pc?.getStats();
    const out = [...(report?.values() ?? [])].find((s) => s.type === "outbound-rtp" && s.kind === "video");
    return out?.frameHeight ? { width: out.frameWidth, height: out.frameHeight } : null;
  });
}

/** The most the page lets its camera send (RTCRtpSender encoding parameters). */
function maxBitrate(page) {
  return page.evaluate(() => {
    const sender = window.mcu.call.pc?.getSenders().find((s) => s.track?.kind === "video");
    return sender?.getParameters().encodings?.[0]?.maxBitrate ?? null;
  });
}

test("a browser's own estimate of its link reaches the server, and a smaller tier is explained", async () => {
  const server = await startServer();
  const browser = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const page = await joinRoom(browser, server.url, "estimate", "Red");
    await decoding(page, "browser");
    // Chromium sends REMB about the composite; the server keeps it as the participant's estimate.
    const estimate = await waitFor("the browser's estimate in the admin API", SETTLE_MS, async () => {
      const rooms = await (await fetch(`${server.url}/api/v1/rooms`)).json();
      const kbps = rooms.rooms?.[0]?.participants?.[0]?.link?.estimate_kbps;
      return kbps > 0 ? kbps : null;
    });
    // In kbit/s, not bit/s. It starts near what arrives: a lone red camera makes a 640×360
    // composite of one flat colour, a few tens of kbit/s (22 in one run).
    assert.ok(estimate >= 10 && estimate < 100000, `estimate ${estimate} kbit/s`);
    // What the page says when the server moves it to a smaller tier (as it does for a thin link,
    // which Chromium cannot be given here): the message, and the connection panel.
    await page.evaluate(() =>
      window.mcu.call.onMessage({ type: "video_tier", tier: 1, tiers: 3, width: 640, height: 360 }),
    );
    const text = await page.evaluate(() => {
      const q = document.getElementById("quality");
      return q.hidden ? "" : q.textContent;
    });
    assert.match(text, /Your connection is slow: showing a smaller picture \(640×360\)/);
    await page.evaluate(() => {
      document.getElementById("connection").open = true;
    });
    const panel = await waitFor("the connection panel", SETTLE_MS, async () => {
      const t = await page.evaluate(() => document.getElementById("connection-figures").textContent);
      return /tier 2 of 3/.test(t) && /Round trip/.test(t) ? t : null;
    });
    assert.match(panel, /reduced for your link/);
    await page.evaluate(() =>
      window.mcu.call.onMessage({ type: "video_tier", tier: 0, tiers: 3, width: 1280, height: 720 }),
    );
    assert.equal(await page.evaluate(() => document.getElementById("quality").hidden), true);
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("a browser sends its camera at the size of its tile", async () => {
  const server = await startServer();
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const page = await joinRoom(red, server.url, "tiles", "Red");
    await decoding(page, "browser");
    // Alone, its tile is the whole 1280×720 frame: the 640×360 camera goes as it is.
    const alone = await waitFor("the camera to be sent", SETTLE_MS, () => sendingSize(page));
    assert.deepEqual(alone, { width: 640, height: 360 });
    // And at no more bitrate than the tile is worth: the whole frame's, capped at 2.5 Mbit/s.
    assert.equal(await maxBitrate(page), 2_500_000);
    // Four more make a 3×3 grid of 426×240 tiles: the page scales its camera down to fit.
    const probe = spawn(MCU, [
      "probe", "--url", server.url, "--room", "tiles", "--participants", "4", "--seconds", "12",
    ], { stdio: "inherit" });
    try {
      const fitted = await waitFor("the camera to be sent at tile size", SETTLE_MS, async () => {
        const size = await sendingSize(page);
        return size && size.height <= 240 ? size : null;
      });
      assert.ok(fitted.width <= 427, `sent ${fitted.width}×${fitted.height}`);
      // 3 bits per tile pixel per second: 426×240 → about 307 kbit/s.
      const cap = await maxBitrate(page);
      assert.ok(cap >= 250_000 && cap <= 320_000, `capped at ${cap} bit/s`);
      await showsTiles(page, [RED, ...[[30, 200, 30], [40, 60, 230], [240, 220, 30], [220, 40, 220]]], "tiles.png");
    } finally {
      probe.kill();
    }
  } finally {
    await red.close();
    await server.stop();
  }
});

test("over self-signed HTTPS with all media on one UDP port", async () => {
  const port = 40000 + Math.floor(Math.random() * 10000);
  const server = await startServer(
    ["--tls-self-signed", "--udp-port", String(port), "--ice-server", "stun:127.0.0.1:3478"],
    { https: true },
  );
  assert.match(server.url, /^https:/);
  const red = await launchBrowser(fakeMedia("red", RED, 440), ["--ignore-certificate-errors"]);
  try {
    const page = await joinRoom(red, server.url, "secure", "Red");
    assert.equal(await page.evaluate(() => window.isSecureContext), true);
    await decoding(page, "browser over HTTPS");
    await showsTiles(page, [RED], "https-udp-port.png");
    // The media path the browser chose ends on the server's one port.
    const remotePort = await page.evaluate(async () => {
      const report = await window.mcu.call.pc.getStats();
      const all = [...report.values()];
      const pair = all.find((s) => s.type === "candidate-pair" && s.state === "succeeded" && s.nominated);
      return all.find((s) => s.id === pair?.remoteCandidateId)?.port;
    });
    assert.equal(remotePort, port);
    // The STUN server given to the server was handed on to the browser.
    const iceServers = await page.evaluate(() => window.mcu.call.pc.getConfiguration().iceServers);
    assert.deepEqual(iceServers.map((s) => s.urls).flat(), ["stun:127.0.0.1:3478"]);
  } finally {
    await red.close();
    await server.stop();
  }
});

test("a dropped connection reconnects by itself and the person reappears", async () => {
  const server = await startServer();
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const page = await joinRoom(red, server.url, "flaky", "Red");
    await decoding(page, "browser");
    // The socket drops (a network blip): the page must rejoin without a reload.
    await page.evaluate(() => window.mcu.call.ws.close());
    await waitFor("the status to show the reconnect", 5000, () =>
      page.evaluate(() => /Reconnect/.test(document.getElementById("status").textContent)),
    );
    await waitFor("the new connection", SETTLE_MS, () =>
      page.evaluate(() => window.mcu.call.pc?.connectionState === "connected"),
    );
    await decoding(page, "browser after reconnecting");
    await showsTiles(page, [RED], "reconnected.png");
    const people = await page.locator("#people li").allTextContents();
    assert.deepEqual(people, ["Red (you)"], "the old session left; only the new one is in the room");
  } finally {
    await red.close();
    await server.stop();
  }
});

test("without camera access the page says why, and the person can still join to watch", async () => {
  const server = await startServer();
  // Camera permission refused: no --use-fake-ui-for-media-stream, so the request is denied.
  const denied = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
      "--use-fake-device-for-media-stream",
    ],
  });
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const watcher = await (await denied.newContext()).newPage();
    await watcher.goto(`${server.url}/r/watch`);
    await waitFor("the denied-camera message", 10000, () =>
      watcher.evaluate(() => /denied/.test(document.getElementById("media-message").textContent)),
    );
    // Every address a test may use is loopback, which browsers treat as secure; so present the
    // page as it would be seen over plain HTTP from another machine.
    const insecure = await (await denied.newContext()).newPage();
    await insecure.addInitScript(() => Object.defineProperty(window, "isSecureContext", { value: false }));
    await insecure.goto(`${server.url}/r/watch`);
    await waitFor("the secure-context message", 10000, () =>
      insecure.evaluate(() => /HTTPS or localhost/.test(document.getElementById("media-message").textContent)),
    );

    // Join to watch: the camera-less page still receives the composite, showing the sender.
    const sender = await joinRoom(red, server.url, "watch", "Red");
    await decoding(sender, "sender");
    await watcher.getByLabel("Your name").fill("Watcher");
    await watcher.getByRole("button", { name: "Join" }).click();
    await decoding(watcher, "watch-only browser");
    // The sender's tile is red; the watcher's own tile is its placeholder: dark grey, with its
    // name across the middle (so look above the name).
    await waitFor("the sender's colour and the watcher's placeholder", SETTLE_MS, async () => {
      const l = await layout(watcher);
      if (!l || l.tiles.length !== 2) return null;
      const shot = await compositeShot(watcher, "watch-only.png");
      const [s, w] = l.tiles;
      const senderColour = colourAt(shot, l.width, l.height, s.x + s.width / 2, s.y + s.height / 2);
      const placeholder = colourAt(shot, l.width, l.height, w.x + w.width / 2, w.y + w.height / 8);
      return near(senderColour, RED) && near(placeholder, [0x3c, 0x40, 0x43], 20);
    });
  } finally {
    await denied.close();
    await red.close();
    await server.stop();
  }
});

test("HTTPS with a certificate and key from files", async () => {
  const dir = join(ARTIFACTS, "tls");
  mkdirSync(dir, { recursive: true });
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], { stdio: "ignore" });
  const server = await startServer(["--tls-cert", cert, "--tls-key", key], { https: true });
  const red = await launchBrowser(fakeMedia("red", RED, 440), ["--ignore-certificate-errors"]);
  try {
    const page = await joinRoom(red, server.url, "files", "Red");
    assert.equal(await page.evaluate(() => location.protocol), "https:");
    await decoding(page, "browser over HTTPS from files");
  } finally {
    await red.close();
    await server.stop();
  }
});

test("a join link with a token names the person, and only a token that allows it records", async () => {
  const secret = "browser-test-jwt-secret-0123456789abcdef";
  const server = await startServer(["--jwt-secret", secret]);
  const mint = (name, record) =>
    execFileSync(MCU, ["token", "--jwt-secret", secret, "--room", "tok", "--name", name, ...(record ? ["--record"] : [])])
      .toString()
      .trim();
  const host = await launchBrowser(fakeMedia("red", RED, 440));
  const guest = await launchBrowser(fakeMedia("blue", BLUE, 660));
  const stranger = await launchBrowser(fakeMedia("red", RED, 440));
  try {
    const open = async (browser, token) => {
      const page = await (await browser.newContext({ viewport: { width: 1400, height: 1000 } })).newPage();
      await page.goto(`${server.url}/r/tok${token ? `?token=${token}` : ""}`);
      return page;
    };
    const enter = async (page) => {
      await waitFor("the camera preview", 10000, () =>
        page.evaluate(() => document.getElementById("preview").srcObject?.getVideoTracks().length > 0),
      );
      await page.getByRole("button", { name: "Join" }).click();
    };
    const hostPage = await open(host, mint("Ada Host", true));
    // The name comes from the token and cannot be changed; the token leaves the address bar.
    const nameInput = hostPage.getByLabel("Your name");
    assert.equal(await nameInput.inputValue(), "Ada Host");
    assert.equal(await nameInput.getAttribute("readonly"), "");
    assert.ok(!hostPage.url().includes("token="), `the token stays in the URL: ${hostPage.url()}`);
    await enter(hostPage);
    const guestPage = await open(guest, mint("Bob Guest", false));
    await enter(guestPage);
    await decoding(hostPage, "the host");
    await decoding(guestPage, "the guest");

    const record = hostPage.getByRole("button", { name: "Record" });
    assert.ok(await record.isVisible(), "the host may record");
    assert.ok(!(await guestPage.getByRole("button", { name: "Record" }).isVisible()), "the guest may not");
    await record.click();
    for (const [page, who] of [[hostPage, "host"], [guestPage, "guest"]]) {
      await waitFor(`the ${who} to see the recording indicator`, 10000, () =>
        page.getByText("this call is being recorded").isVisible(),
      );
    }
    await hostPage.getByRole("button", { name: "Stop recording" }).click();
    await waitFor("the indicator to go", 10000, async () =>
      !(await guestPage.getByText("this call is being recorded").isVisible()),
    );

    // Without a token, the page says why it cannot join and does not loop reconnecting.
    const strangerPage = await open(stranger, null);
    await strangerPage.getByLabel("Your name").fill("Eve");
    await enter(strangerPage);
    await waitFor("the refusal", 10000, async () =>
      (await strangerPage.locator("#status").textContent()).includes("requires a join token"),
    );
    await hostPage.screenshot({ path: join(ARTIFACTS, "token-host.png") });
  } finally {
    await Promise.all([host.close(), guest.close(), stranger.close()]);
    await server.stop();
  }
});
