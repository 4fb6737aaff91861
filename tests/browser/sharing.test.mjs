// Chat and file sharing between two Chromium pages, through the page's own controls: a message
// with a link and markup arrives as text with a working link, a small file arrives byte for byte
// (and is saved), and a file over the server's limit is refused before any byte is sent.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  ARTIFACTS, fakeMedia, joinRoom, launchBrowser, startServer, stats, waitFor,
} from "./harness.mjs";

const RED = [230, 30, 30];
const BLUE = [40, 60, 230];
const SETTLE_MS = 30000;

const sharing = (page) =>
  page.evaluate(() => {
    const s = window.mcu.call?.sharing;
    return s && { transport: s.transport, chats: s.chats, files: [...s.files.values()].map((f) => ({ ...f, parts: undefined })) };
  });

test("two pages chat and share a file over their data channels", async () => {
  const server = await startServer(["--max-file-size", "100kB"]);
  const red = await launchBrowser(fakeMedia("red", RED, 440));
  const blue = await launchBrowser(fakeMedia("blue", BLUE, 660));
  try {
    const a = await joinRoom(red, server.url, "share", "Red");
    const b = await joinRoom(blue, server.url, "share", "Blue");
    for (const [page, who] of [[a, "red"], [b, "blue"]]) {
      await waitFor(`${who} to subscribe on its data channel`, SETTLE_MS, async () =>
        (await sharing(page))?.transport === "datachannel");
    }

    // A message with a link and some markup: shown as text, the link clickable, no markup.
    const text = "see https://example.org/agenda <b>now</b>";
    await a.getByLabel("Message to everyone").fill(text);
    await a.getByLabel("Message to everyone").press("Enter");
    const item = b.locator("#chat-log li").last();
    await waitFor("the message on the other page", SETTLE_MS, async () =>
      (await b.locator("#chat-log li").count()) === 1);
    assert.equal(await item.locator(".who").textContent(), "Red");
    assert.equal(await item.locator("p").textContent(), text);
    assert.equal(await item.locator("p a").getAttribute("href"), "https://example.org/agenda");
    assert.equal(await item.locator("b").count(), 0, "markup is shown, never rendered");
    assert.equal(await a.locator("#chat-log li .who").last().textContent(), "Red (you)");

    // A small file: offered from one page, announced on both, downloaded and saved on the other.
    const content = Buffer.from(Array.from({ length: 40_000 }, (_, i) => (i * 7919) % 251));
    await a.locator("#file-input").setInputFiles({ name: "notes.bin", mimeType: "application/octet-stream", buffer: content });
    const download = b.getByRole("button", { name: "Download notes.bin" });
    await waitFor("the file to be ready on the other page", SETTLE_MS, () => download.isVisible());
    assert.match(await b.locator("#file-list li").first().textContent(), /notes\.bin 40 kB from Red/);
    const [saved] = await Promise.all([b.waitForEvent("download"), download.click()]);
    assert.equal(saved.suggestedFilename(), "notes.bin");
    const path = join(ARTIFACTS, "shared-notes.bin");
    await saved.saveAs(path);
    assert.equal(
      createHash("sha256").update(readFileSync(path)).digest("hex"),
      createHash("sha256").update(content).digest("hex"),
      "the saved file is the one sent",
    );
    const file = (await sharing(b)).files[0];
    assert.equal(file.downloadedSha256, file.sha256, "the page checked the server's hash");

    // Over the server's 100 kB limit: refused on the spot, and nobody is told of a file.
    await a.locator("#file-input").setInputFiles({ name: "big.bin", mimeType: "application/octet-stream", buffer: Buffer.alloc(200_000) });
    await waitFor("the refusal", 5000, async () =>
      /big\.bin is 200 kB: larger than the 100 kB/.test(await a.locator("#file-message").textContent()));
    assert.equal((await sharing(b)).files.length, 1);
    // The call went on throughout.
    assert.ok((await stats(b)).video.framesDecoded > 0);
    await b.screenshot({ path: join(ARTIFACTS, "sharing.png") });
  } finally {
    await red.close();
    await blue.close();
    await server.stop();
  }
});
