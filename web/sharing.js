// Chat and file sharing in the call: a "chat" data channel for messages and a "files" data
// channel for bytes on the call's own peer connection, or the WebSocket when those cannot open.
// Speaks the chat and file messages of docs/protocol.md. Everything people typed or named is
// shown as text (textContent), never as HTML; only http(s) links become links.

const $ = (id) => document.getElementById(id);
// Bytes of a file per binary frame, after a 4-byte file id (the server's FILE_CHUNK_BYTES).
const CHUNK_BYTES = 16 * 1024;
// An upload waits while more than this is queued on its channel, and goes on below LOW_WATER:
// the file flows without crowding the call's audio and video out of the link.
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;
// If the chat channel has not opened this long after the call connected, chat and files use the
// WebSocket instead (some networks and browsers block data channels).
const CHANNEL_OPEN_TIMEOUT_MS = 5000;
const LINK = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;

/** "52.4 MB", "900 kB", "12 bytes": sizes as people write them (as the server does). */
export function sizeText(bytes) {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`;
  return `${bytes} bytes`;
}

/** Appends `text` to `parent` as text nodes, with http(s) links as <a> elements. */
export function appendLinkified(parent, text) {
  let last = 0;
  for (const match of text.matchAll(LINK)) {
    if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
    const a = document.createElement("a");
    a.href = match[0];
    a.textContent = match[0];
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    parent.append(a);
    last = match.index + match[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function frame(fileId, bytes) {
  const out = new Uint8Array(4 + bytes.byteLength);
  new DataView(out.buffer).setUint32(0, fileId);
  out.set(new Uint8Array(bytes), 4);
  return out;
}

export class Sharing {
  /** `send(message)` sends on the WebSocket; `ws()` returns it (for binary frames). */
  constructor({ send, ws }) {
    this.sendOnSocket = send;
    this.ws = ws;
    this.chats = [];
    this.files = new Map();
    // Offers waiting for their answer, by the ref they carry.
    this.pendingOffers = new Map();
    this.nextRef = 1;
    this.maxFileSize = 0;
    this.selfId = null;
    this.transport = null;
  }

  /** A new session joined: the backlog will come again after subscribing. */
  reset({ selfId, maxFileSize }) {
    this.selfId = selfId;
    this.maxFileSize = maxFileSize || 0;
    this.chats = [];
    this.files.clear();
    this.pendingOffers.clear();
    this.transport = null;
    clearTimeout(this.fallbackTimer);
    $("chat-log").replaceChildren();
    $("file-list").replaceChildren();
    this.note("");
  }

  /** Creates the data channels on the call's connection (before its offer). */
  attach(pc) {
    this.pc = pc;
    const chat = pc.createDataChannel("chat");
    const files = pc.createDataChannel("files");
    files.binaryType = "arraybuffer";
    files.bufferedAmountLowThreshold = LOW_WATER;
    this.chatChannel = chat;
    this.filesChannel = files;
    chat.onopen = () => {
      if (this.transport || this.pc !== pc) return;
      this.transport = "datachannel";
      clearTimeout(this.fallbackTimer);
      chat.send(JSON.stringify({ type: "chat_subscribe" }));
    };
    chat.onmessage = (event) => {
      try {
        this.onMessage(JSON.parse(event.data));
      } catch (e) {
        console.warn(`chat channel: ${e}`);
      }
    };
    files.onmessage = (event) => this.onBinary(event.data);
  }

  /** The call connected: give the data channels a few seconds, then fall back. */
  connected() {
    if (this.transport) return;
    clearTimeout(this.fallbackTimer);
    this.fallbackTimer = setTimeout(() => {
      if (this.transport) return;
      this.transport = "websocket";
      console.warn("the chat data channel did not open; chat and files use the WebSocket");
      this.sendOnSocket({ type: "chat_subscribe" });
    }, CHANNEL_OPEN_TIMEOUT_MS);
  }

  send(message) {
    if (this.transport === "datachannel" && this.chatChannel?.readyState === "open") {
      this.chatChannel.send(JSON.stringify(message));
    } else {
      this.sendOnSocket(message);
    }
  }

  note(text) {
    $("file-message").textContent = text;
  }

  /** Chat and file messages, from either transport. Returns false for any other message. */
  onMessage(message) {
    switch (message.type) {
      case "chat":
        this.chats.push(message);
        this.renderChat(message);
        return true;
      case "file_offered":
        this.files.set(message.file_id, { ...message, received: 0, state: "uploading" });
        this.renderFile(message.file_id);
        return true;
      case "file_progress": {
        const f = this.files.get(message.file_id);
        if (f) f.received = message.received;
        this.renderFile(message.file_id);
        return true;
      }
      case "file_ready": {
        const f = this.files.get(message.file_id);
        if (f) Object.assign(f, { received: f.size, sha256: message.sha256, state: "ready" });
        this.renderFile(message.file_id);
        return true;
      }
      case "file_failed": {
        const f = this.files.get(message.file_id);
        if (f) Object.assign(f, { state: "failed", reason: message.reason });
        this.renderFile(message.file_id);
        return true;
      }
      case "file_accepted": {
        const file = this.pendingOffers.get(message.ref);
        this.pendingOffers.delete(message.ref);
        if (file) this.upload(message.file_id, file);
        return true;
      }
      case "file_refused": {
        const file = this.pendingOffers.get(message.ref);
        this.pendingOffers.delete(message.ref);
        this.note(`${file ? `${file.name}: ` : ""}${message.message}`);
        return true;
      }
      case "error":
        // Answers to chat and file requests; anything else is the call's business.
        if (["unknown_file", "rate_limited", "bad_message"].includes(message.code)) {
          this.note(message.message);
          return true;
        }
        return false;
      default:
        return false;
    }
  }

  // ---- chat ----

  sendChat(text) {
    const trimmed = text.trim();
    if (trimmed) this.send({ type: "chat", text: trimmed });
  }

  renderChat(entry) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = entry.from === this.selfId ? `${entry.name} (you)` : entry.name;
    const when = document.createElement("time");
    when.dateTime = entry.at;
    when.textContent = new Date(entry.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const body = document.createElement("p");
    appendLinkified(body, entry.text);
    li.append(who, " ", when, body);
    const log = $("chat-log");
    log.append(li);
    log.scrollTop = log.scrollHeight;
  }

  // ---- files ----

  /** Offers a file; its bytes go once the server accepts it. Refused up front when too large. */
  shareFile(file) {
    if (this.maxFileSize && file.size > this.maxFileSize) {
      this.note(`${file.name} is ${sizeText(file.size)}: larger than the ${sizeText(this.maxFileSize)} this server accepts.`);
      return false;
    }
    if (file.size === 0) {
      this.note(`${file.name} is empty.`);
      return false;
    }
    this.note("");
    const ref = this.nextRef++;
    this.pendingOffers.set(ref, file);
    this.send({ type: "file_offer", name: file.name, size: file.size, mime: file.type || undefined, ref });
    return true;
  }

  async upload(fileId, file) {
    const viaChannel = this.transport === "datachannel";
    const channel = this.filesChannel;
    for (let offset = 0; offset < file.size; offset += CHUNK_BYTES) {
      const bytes = await file.slice(offset, offset + CHUNK_BYTES).arrayBuffer();
      const data = frame(fileId, bytes);
      if (viaChannel) {
        if (channel.readyState !== "open") return this.note(`${file.name}: the connection closed.`);
        if (channel.bufferedAmount > HIGH_WATER) {
          await new Promise((resolve) => channel.addEventListener("bufferedamountlow", resolve, { once: true }));
        }
        channel.send(data);
      } else {
        const ws = this.ws();
        if (ws?.readyState !== WebSocket.OPEN) return this.note(`${file.name}: the connection closed.`);
        while (ws.bufferedAmount > HIGH_WATER) await new Promise((r) => setTimeout(r, 50));
        ws.send(data);
      }
    }
  }

  download(fileId) {
    const f = this.files.get(fileId);
    if (!f || f.state !== "ready") return;
    Object.assign(f, { parts: [], got: 0, state: "downloading" });
    this.renderFile(fileId);
    this.send({ type: "file_get", file_id: fileId });
  }

  /** A binary frame of a download (from the files channel or the WebSocket). */
  onBinary(data) {
    if (!(data instanceof ArrayBuffer) || data.byteLength <= 4) return;
    const fileId = new DataView(data).getUint32(0);
    const f = this.files.get(fileId);
    if (!f || f.state !== "downloading") return;
    f.parts.push(data.slice(4));
    f.got += data.byteLength - 4;
    if (f.got >= f.size) this.finishDownload(fileId);
    else this.renderFile(fileId);
  }

  async finishDownload(fileId) {
    const f = this.files.get(fileId);
    const blob = new Blob(f.parts, { type: f.mime || "application/octet-stream" });
    f.parts = [];
    f.downloadedSha256 = await sha256Hex(blob);
    if (f.downloadedSha256 !== f.sha256) {
      Object.assign(f, { state: "ready" });
      this.note(`${f.name} arrived damaged; try again.`);
      this.renderFile(fileId);
      return;
    }
    f.url = URL.createObjectURL(blob);
    f.state = "saved";
    this.renderFile(fileId);
    // Save it at once, as a download link does; the Save link stays for another copy.
    $(`file-save-${fileId}`)?.click();
  }

  renderFile(fileId) {
    const f = this.files.get(fileId);
    if (!f) return;
    let li = $(`file-${fileId}`);
    if (!li) {
      li = document.createElement("li");
      li.id = `file-${fileId}`;
      $("file-list").append(li);
    }
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = f.name;
    const meta = document.createElement("span");
    meta.className = "hint";
    meta.textContent = ` ${sizeText(f.size)} from ${f.from === this.selfId ? "you" : f.from_name}`;
    const parts = [name, meta];
    const progress = document.createElement("progress");
    progress.max = f.size;
    progress.setAttribute("aria-label", `${f.name}: progress`);
    if (f.state === "uploading") {
      progress.value = f.received;
      parts.push(progress, this.label(`uploading ${Math.floor((100 * f.received) / f.size)} %`));
    } else if (f.state === "downloading") {
      progress.value = f.got;
      parts.push(progress, this.label(`downloading ${Math.floor((100 * f.got) / f.size)} %`));
    } else if (f.state === "ready") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Download";
      button.setAttribute("aria-label", `Download ${f.name}`);
      button.addEventListener("click", () => this.download(fileId));
      parts.push(button);
    } else if (f.state === "saved") {
      const a = document.createElement("a");
      a.id = `file-save-${fileId}`;
      a.href = f.url;
      a.download = f.name;
      a.textContent = "Save";
      parts.push(a);
    } else if (f.state === "failed") {
      parts.push(this.label(`not shared: ${f.reason}`));
    }
    li.replaceChildren(...parts);
  }

  label(text) {
    const span = document.createElement("span");
    span.className = "hint";
    span.textContent = ` ${text}`;
    return span;
  }
}

/** Wires the chat form, the file picker and dropping files anywhere on the call. */
export function setupSharingControls(current) {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    current()?.sendChat(input.value);
    input.value = "";
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("file-input").addEventListener("change", (event) => {
    for (const file of event.target.files) current()?.shareFile(file);
    event.target.value = "";
  });
  const call = $("call");
  call.addEventListener("dragover", (event) => {
    event.preventDefault();
    call.classList.add("dropping");
  });
  call.addEventListener("dragleave", () => call.classList.remove("dropping"));
  call.addEventListener("drop", (event) => {
    event.preventDefault();
    call.classList.remove("dropping");
    for (const file of event.dataTransfer?.files ?? []) current()?.shareFile(file);
  });
}
