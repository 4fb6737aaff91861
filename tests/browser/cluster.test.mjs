// Two nodes sharing one Redis, both needing join tokens: a browser that opens a room's link on
// the node without the room follows the server's `redirect` to the room's node and is in the call
// there; the watch page on that node follows the WHEP door's 307 the same way, and asks again
// with its token when the followed request lost it (the Fetch standard drops Authorization on a
// cross-origin redirect).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import {
  colourAt, compositeShot, fakeMedia, launchBrowser, layout, MCU, near, startServer, waitFor,
} from "./harness.mjs";

const GREEN = [40, 200, 60];
const SECRET = "browser-cluster-jwt-secret-0123456789abcdef";
const mint = (name) =>
  execFileSync(MCU, ["token", "--jwt-secret", SECRET, "--room", "standup", "--name", name]).toString().trim();

/** A free loopback TCP port. */
function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Debian's redis-server on a free loopback port, without persistence. */
async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", `${port}`, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  await waitFor("redis-server to listen", 10000, () =>
    new Promise((ok) => {
      const probe = createServer();
      // Listening on its port fails once Redis holds it.
      probe.once("error", () => ok(true));
      probe.listen(port, "127.0.0.1", () => probe.close(() => ok(false)));
    }),
  );
  return { url: `redis://127.0.0.1:${port}/`, stop: () => child.kill("SIGKILL") };
}

const api = async (node, path, method = "GET") => (await fetch(`${node.url}/api/v1/${path}`, { method })).json();

test("a browser sent from one node to the room's node joins the call there, and so does the watch page", async () => {
  const redis = await startRedis();
  const nodes = [];
  const browser = await launchBrowser(fakeMedia("green", GREEN, 550));
  try {
    for (const id of ["a", "b"]) {
      nodes.push(await startServer(["--redis-url", redis.url, "--node-id", id, "--jwt-secret", SECRET]));
    }
    const [a, b] = nodes;
    await waitFor("both nodes published", 10000, async () => (await api(a, "rooms")).cluster?.nodes?.length === 2);
    // Node a drains, so the room goes to b although the browser comes in through a.
    const drained = await api(a, "node/drain", "POST");
    assert.equal(drained.draining, true);

    const page = await (await browser.newContext({ viewport: { width: 1400, height: 1000 } })).newPage();
    await page.goto(`${a.url}/r/standup?token=${mint("Green")}`);
    await waitFor("the camera preview", 10000, () =>
      page.evaluate(() => document.getElementById("preview").srcObject?.getVideoTracks().length > 0),
    );
    await page.getByRole("button", { name: "Join" }).click();
    await waitFor("the browser in the room on node b", 20000, async () => {
      const room = (await api(b, "rooms")).rooms.find((r) => r.room === "standup");
      return room?.participants.length === 1;
    });
    assert.equal((await api(a, "rooms")).rooms.length, 0, "node a holds no room");
    await waitFor("the page's own colour in its tile", 20000, async () => {
      const l = await layout(page);
      if (!l || l.tiles.length !== 1) return false;
      const t = l.tiles[0];
      const shot = await compositeShot(page, "cluster-redirected.png");
      return near(colourAt(shot, l.width, l.height, t.x + t.width / 2, t.y + t.height / 2), GREEN);
    });

    // The watch page on node a: its WHEP offer is answered 307 to node b, which fetch follows
    // without the token; node b's 401 makes the page post there again with it.
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const watch = await context.newPage();
    await watch.goto(`${a.url}/w/standup?token=${mint("Wall screen")}`);
    await waitFor("the watch page playing", 20000, () =>
      watch.evaluate(() => document.getElementById("screen").currentTime > 0.5),
    );
    const room = (await api(b, "rooms")).rooms.find((r) => r.room === "standup");
    assert.equal(room.watchers, 1, "the watcher is on the room's node");
    await context.close();
  } finally {
    await browser.close();
    for (const node of nodes) await node.stop();
    redis.stop();
  }
});
