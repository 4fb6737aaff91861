// The browser client: pick a room, check camera and microphone, join, and watch the one composited
// stream the server sends. Speaks the protocol in docs/protocol.md. No build step, no dependencies.
// Chat and file sharing live in sharing.js.

import { Sharing, setupSharingControls } from "./sharing.js";

const $ = (id) => document.getElementById(id);
const NAME_KEY = "mcu.displayName";
const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// Reconnect after a dropped socket or failed ICE: quickly at first, then less often.
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
// What our camera may spend on each pixel of its tile per second, and the bounds: the same rule
// the server sends as REMB (SENDER_BITS_PER_PIXEL_SECOND in session/media.rs).
const SENDER_BITS_PER_PIXEL_SECOND = 3;
const MIN_SENDER_BPS = 100_000;
const MAX_SENDER_BPS = 2_500_000;
// How often the connection panel is refreshed while it is open.
const CONNECTION_PANEL_MS = 2000;

function show(section) {
  for (const id of ["landing", "prejoin", "call", "left"]) $(id).hidden = id !== section;
}

function roomFromPath() {
  const match = location.pathname.match(/^\/r\/([^/]+)\/?$/);
  if (!match) return null;
  const room = decodeURIComponent(match[1]);
  return ROOM_PATTERN.test(room) ? room : null;
}

// ---- Landing ----

function landing() {
  show("landing");
  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("room-input").value.trim();
    if (ROOM_PATTERN.test(room)) location.assign(`/r/${encodeURIComponent(room)}`);
  });
  $("room-input").focus();
}

// ---- Prejoin: local media ----

let localStream = new MediaStream();

function mediaMessage(text) {
  const box = $("media-message");
  box.textContent = text;
  box.hidden = !text;
}

async function acquireMedia() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    mediaMessage(
      "The camera needs HTTPS or localhost. This page was opened over plain HTTP from another " +
        "machine, so you can only watch. To send your camera, start the server with " +
        "--tls-self-signed (or --tls-cert/--tls-key) and open the https:// address.",
    );
    return new MediaStream();
  }
  const cameraId = $("camera-select").value;
  const micId = $("mic-select").value;
  const video = cameraId ? { deviceId: { exact: cameraId } } : true;
  const audio = micId ? { deviceId: { exact: micId } } : true;
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio });
  } catch (error) {
    if (error.name === "NotAllowedError") {
      mediaMessage(
        "The browser denied the camera and microphone. You can still join to watch and listen, " +
          "or allow them in the address bar's site settings and reload.",
      );
      return new MediaStream();
    }
    // No camera (or it is busy): try the microphone alone.
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio });
      mediaMessage("No camera was found; you will join with your microphone only.");
      return stream;
    } catch {
      mediaMessage("No camera or microphone was found; you will join to watch and listen only.");
      return new MediaStream();
    }
  }
}

async function fillDeviceLists() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [selectId, kind, trackKind] of [
    ["camera-select", "videoinput", "video"],
    ["mic-select", "audioinput", "audio"],
  ]) {
    const select = $(selectId);
    const current = localStream.getTracks().find((t) => t.kind === trackKind)?.getSettings().deviceId;
    select.replaceChildren();
    const list = devices.filter((d) => d.kind === kind);
    for (const [i, device] of list.entries()) {
      const option = new Option(device.label || `${trackKind === "video" ? "Camera" : "Microphone"} ${i + 1}`, device.deviceId);
      option.selected = device.deviceId === current;
      select.append(option);
    }
    if (list.length === 0) select.append(new Option("None found", ""));
    select.disabled = list.length === 0;
  }
}

async function refreshPreview() {
  for (const track of localStream.getTracks()) track.stop();
  localStream = await acquireMedia();
  // An empty stream on an autoplay <video> would hold the page's load event forever.
  $("preview").srcObject = localStream.getTracks().length ? localStream : null;
  await fillDeviceLists();
}

// A join link may carry a token (`/r/room?token=…`, from `mcu token --url`). It is kept in memory
// for reconnects and taken out of the address bar, so it does not end up in screenshots or history.
function takeTokenFromUrl() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (!token) return null;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  return token;
}

// The display name a token carries (the server uses it, whatever is typed). Only read, never
// trusted: the server checks the signature.
function nameInToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0))));
    return typeof claims.name === "string" ? claims.name : null;
  } catch {
    return null;
  }
}

async function prejoin(room) {
  show("prejoin");
  document.title = `${room} — MCU`;
  $("prejoin-room").textContent = room;
  $("name-input").value = localStorage.getItem(NAME_KEY) || "";
  const tokenName = joinToken ? nameInToken(joinToken) : null;
  if (tokenName) {
    $("name-input").value = tokenName;
    $("name-input").readOnly = true;
    $("name-input").setAttribute("aria-describedby", "name-help");
    $("name-help").hidden = false;
  }
  $("camera-select").addEventListener("change", refreshPreview);
  $("mic-select").addEventListener("change", refreshPreview);
  await refreshPreview();
  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name-input").value.trim();
    if (!name) return;
    localStorage.setItem(NAME_KEY, name);
    startCall(room, name);
  });
}

// ---- The call ----

let call = null;

function setStatus(text, state) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
}

function renderPeople(people) {
  $("people-count").textContent = String(people.size);
  $("people").replaceChildren(
    ...[...people.values()].map((p) => {
      const li = document.createElement("li");
      let text = p.self ? `${p.name} (you)` : p.name;
      if (p.muted) text += " — muted by a moderator";
      else if (p.selfMuted) text += " — muted";
      li.textContent = text; // text, never HTML
      // Marked by the style sheet (and for screen readers), not in the name's text.
      li.classList.toggle("speaking", Boolean(p.speaking));
      if (p.speaking) li.setAttribute("aria-description", "speaking");
      return li;
    }),
  );
}

function setRecording(recording, note) {
  $("rec-indicator").hidden = !recording;
  const button = $("record-button");
  button.textContent = recording ? "Stop recording" : "Record";
  button.setAttribute("aria-pressed", String(recording));
  if (note) setNotice(note);
}

// The server moved us to a smaller picture (or back): say so, and why.
function setQuality(tier) {
  const note = $("quality");
  if (tier.tier > 0) {
    note.textContent = `Your connection is slow: showing a smaller picture (${tier.width}×${tier.height}).`;
    note.hidden = false;
  } else {
    note.textContent = "";
    note.hidden = true;
  }
}

// The connection panel: the picture's tier and the link as the browser measures it.
async function renderConnection() {
  const panel = $("connection");
  if (!panel.open || !call) return;
  const s = await call.stats();
  const tier = s.tier ?? { tier: 0, tiers: 1 };
  const rows = [
    ["Picture", s.video ? `${s.video.frameWidth}×${s.video.frameHeight} at ${Math.round(s.video.framesPerSecond)} fps` : "none yet"],
    ["Quality", `tier ${tier.tier + 1} of ${tier.tiers}${tier.tier > 0 ? " (reduced for your link)" : " (full)"}`],
    ["Round trip", s.roundTripMs === null ? "unknown" : `${s.roundTripMs} ms`],
  ];
  if (s.video) {
    const total = s.video.packetsLost + s.video.packetsReceived;
    const lost = total > 0 ? (100 * s.video.packetsLost) / total : 0;
    rows.push(["Video packets lost", `${lost.toFixed(1)} %`]);
    rows.push(["Freezes", String(s.video.freezeCount)]);
  }
  $("connection-figures").replaceChildren(
    ...rows.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

function setNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

class Call {
  constructor(room, name) {
    this.room = room;
    this.name = name;
    this.people = new Map();
    this.attempt = 0;
    this.closed = false;
    this.remote = new MediaStream();
    $("composite").srcObject = this.remote;
    this.sharing = new Sharing({ send: (m) => this.send(m), ws: () => this.ws });
  }

  connect() {
    if (this.closed) return;
    setStatus(this.attempt === 0 ? "Connecting…" : "Reconnecting…", "connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // A cluster node may send us to the node that holds the room (a `redirect`); a reconnect
    // after a drop starts at this page's node again, since the room's node may be gone.
    const url = this.redirectTo ?? `${scheme}://${location.host}/ws/${encodeURIComponent(this.room)}`;
    this.redirectTo = null;
    const ws = new WebSocket(url);
    this.ws = ws;
    this.joinedHere = false;
    ws.onopen = () => {
      const join = { type: "join", name: this.name };
      if (joinToken) join.token = joinToken;
      this.send(join);
    };
    // Binary frames are file bytes, when chat and files fall back to the WebSocket.
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      if (typeof event.data === "string") this.onMessage(JSON.parse(event.data));
      else this.sharing.onBinary(event.data);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.retry("The connection to the server dropped.");
    };
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  async onMessage(message) {
    // Before `joined`, `rate_limited` refuses this connection (too many from this address, or
    // too many new rooms): coming back at once would only be refused again.
    if (message.type === "error" && message.code === "rate_limited" && !this.joinedHere) {
      this.closed = true;
      setStatus(message.message, "failed");
      return;
    }
    if (this.sharing.onMessage(message)) return;
    switch (message.type) {
      case "joined":
        this.attempt = 0;
        this.redirects = 0;
        this.joinedHere = true;
        this.id = message.participant_id;
        this.sharing.reset({ selfId: message.participant_id, maxFileSize: message.max_file_size });
        this.people = new Map([[message.participant_id, { name: this.name, self: true }]]);
        for (const p of message.participants) this.people.set(p.id, { name: p.name });
        renderPeople(this.people);
        $("record-button").hidden = !message.can_record;
        this.canSetLayout = Boolean(message.can_set_layout);
        $("layout-control").hidden = !this.canSetLayout;
        // A rejoin after a drop: the room must hear again that our microphone is off.
        if ($("mic-button").getAttribute("aria-pressed") === "true") this.send({ type: "self_mute", muted: true });
        this.recording = Boolean(message.recording);
        setRecording(this.recording);
        await this.negotiate(message.ice_servers);
        break;
      case "answer":
        await this.pc?.setRemoteDescription({ type: "answer", sdp: message.sdp });
        break;
      case "candidate":
        if (message.candidate) await this.pc?.addIceCandidate(message.candidate).catch(() => {});
        break;
      case "participant_joined":
        this.people.set(message.participant.id, { name: message.participant.name });
        renderPeople(this.people);
        break;
      case "participant_left":
        this.people.delete(message.participant_id);
        renderPeople(this.people);
        break;
      case "layout":
        this.layout = message;
        showLayout(message.layout);
        await this.fitToTile();
        break;
      case "active_speaker":
        this.activeSpeaker = message.participant_id;
        for (const [id, person] of this.people) person.speaking = id === message.participant_id;
        renderPeople(this.people);
        break;
      case "video_tier":
        this.tier = message;
        setQuality(message);
        break;
      case "recording":
        this.recording = message.state === "started";
        setRecording(
          this.recording,
          message.state === "failed" ? `The recording stopped: ${message.message ?? "error"}` : "",
        );
        break;
      case "participant_muted": {
        const person = this.people.get(message.participant_id);
        if (person && message.by_self) person.selfMuted = message.muted;
        else if (person) person.muted = message.muted;
        renderPeople(this.people);
        if (message.participant_id === this.id && !message.by_self) {
          setNotice(message.muted ? "A moderator muted you: the room cannot hear you." : "");
        }
        break;
      }
      case "redirect": {
        // The room lives on another node (before `joined`), or moved there (after it): join
        // there. A chain of redirects without a join is a fault: fall back to retrying here.
        this.redirects = this.joinedHere ? 0 : (this.redirects ?? 0) + 1;
        const ok = /^wss?:\/\//.test(message.url) && this.redirects <= 3;
        const ws = this.ws;
        this.ws = null;
        ws?.close();
        this.pc?.close();
        this.pc = null;
        if (ok) {
          this.redirectTo = message.url;
          this.connect();
        } else {
          this.redirects = 0;
          this.retry("The server sent this room around; trying again.");
        }
        break;
      }
      case "removed":
        // Not a network problem: do not come back on our own.
        this.closed = true;
        this.pc?.close();
        setStatus(message.reason, "failed");
        setNotice(message.reason);
        break;
      case "error":
        console.warn(`server: ${message.code}: ${message.message}`);
        if (["room_full", "server_full", "invalid_room_name", "unauthorized", "invalid_display_name"].includes(message.code)) {
          this.closed = true;
          setStatus(message.message, "failed");
        } else if (["forbidden", "conflict", "video_too_large", "bad_layout"].includes(message.code)) {
          setNotice(message.message);
        } else if (message.code === "cluster_unavailable" && !this.joinedHere) {
          // No node can open the room right now (Redis down, every node full): try again later.
          this.retry(message.message);
        }
        break;
    }
  }

  async negotiate(iceServers) {
    this.pc?.close();
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    const tracks = localStream.getTracks();
    for (const track of tracks) pc.addTrack(track, localStream);
    // Always receive the composite and the mix, even without a camera or microphone.
    for (const kind of ["video", "audio"]) {
      if (!tracks.some((t) => t.kind === kind)) pc.addTransceiver(kind, { direction: "recvonly" });
    }
    // The data channels go in the first offer, so chat and files need no renegotiation.
    this.sharing.attach(pc);
    pc.onicecandidate = (event) =>
      this.send({ type: "candidate", candidate: event.candidate ? event.candidate.toJSON() : null });
    pc.ontrack = (event) => {
      for (const old of this.remote.getTracks().filter((t) => t.kind === event.track.kind)) {
        this.remote.removeTrack(old);
      }
      this.remote.addTrack(event.track);
      $("composite").play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      const state = pc.connectionState;
      if (state === "connected") {
        setStatus("Connected", "connected");
        this.fitToTile();
        this.sharing.connected();
      }
      else if (state === "failed") this.retry("The media connection failed.");
      else if (state === "disconnected") setStatus("Connection unstable…", "connecting");
    };
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  // Send no more pixels than our tile shows: the server would only scale the rest away, after
  // paying to decode it (a 720p camera in a 3×3 grid's 426×240 tile costs a 720p decode; see
  // docs/performance.md). Applied whenever the layout changes; never scales up.
  async fitToTile() {
    const sender = this.pc?.getSenders().find((s) => s.track?.kind === "video");
    const tile = this.layout?.tiles.find((t) => t.participant_id === this.id);
    if (!sender || !tile) return;
    const { width, height } = sender.track.getSettings();
    if (!width || !height) return;
    const scale = Math.max(1, width / tile.width, height / tile.height);
    const maxBitrate = Math.round(
      Math.min(MAX_SENDER_BPS, Math.max(MIN_SENDER_BPS, tile.width * tile.height * SENDER_BITS_PER_PIXEL_SECOND)),
    );
    const params = sender.getParameters();
    const encoding = params.encodings?.[0];
    if (!encoding) return;
    const sameScale = Math.abs((encoding.scaleResolutionDownBy ?? 1) - scale) < 0.01;
    if (sameScale && encoding.maxBitrate === maxBitrate) return;
    encoding.scaleResolutionDownBy = scale;
    encoding.maxBitrate = maxBitrate;
    await sender.setParameters(params).catch((e) => console.warn(`sending at tile size: ${e}`));
  }

  retry(reason) {
    if (this.closed) return;
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    this.pc?.close();
    this.pc = null;
    const delay = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    this.attempt += 1;
    setStatus(`${reason} Reconnecting in ${Math.round(delay / 1000) || 1} s…`, "failed");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  leave() {
    this.closed = true;
    clearTimeout(this.timer);
    this.send({ type: "leave" });
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    this.pc?.close();
    this.pc = null;
  }

  // For tests and diagnostics: what the browser decodes and hears, and over what link.
  async stats() {
    const report = {
      video: null,
      audio: null,
      connectionState: this.pc?.connectionState ?? "none",
      tier: this.tier ?? null,
      roundTripMs: null,
    };
    if (!this.pc) return report;
    for (const s of (await this.pc.getStats()).values()) {
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        report.roundTripMs = Math.round(s.currentRoundTripTime * 1000);
      }
      if (s.type !== "inbound-rtp") continue;
      if (s.kind === "video") {
        report.video = {
          framesDecoded: s.framesDecoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          framesPerSecond: s.framesPerSecond ?? 0,
          packetsLost: s.packetsLost ?? 0,
          packetsReceived: s.packetsReceived ?? 0,
          freezeCount: s.freezeCount ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
        };
      } else if (s.kind === "audio") {
        report.audio = {
          packetsReceived: s.packetsReceived ?? 0,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
        };
      }
    }
    return report;
  }
}

// Which layout the room is on, in the menu (a named layout from the server's file shows as custom).
function showLayout(name) {
  const select = $("layout-select");
  const known = [...select.options].some((o) => o.value === name);
  select.value = known ? name : "custom";
}

// The participant drawn at a click on the composite: the video element letterboxes the picture
// into its box, and the layout's tiles are on the composite's nominal frame; the highest tile wins
// where tiles overlap (a picture-in-picture's corner).
function tileAt(video, layout, clientX, clientY) {
  if (!layout || !video.videoWidth) return null;
  const box = video.getBoundingClientRect();
  const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
  const shownWidth = video.videoWidth * scale;
  const shownHeight = video.videoHeight * scale;
  const x = (clientX - box.left - (box.width - shownWidth) / 2) / shownWidth;
  const y = (clientY - box.top - (box.height - shownHeight) / 2) / shownHeight;
  if (x < 0 || y < 0 || x > 1 || y > 1) return null;
  const px = x * layout.width;
  const py = y * layout.height;
  const under = layout.tiles.filter(
    (t) => px >= t.x && px < t.x + t.width && py >= t.y && py < t.y + t.height,
  );
  under.sort((a, b) => (b.z ?? 0) - (a.z ?? 0));
  return under[0]?.participant_id ?? null;
}

function startCall(room, name) {
  show("call");
  call = new Call(room, name);
  window.mcu.call = call;
  call.connect();
}

function setupCallControls() {
  $("mic-button").addEventListener("click", (event) => {
    const muted = event.currentTarget.getAttribute("aria-pressed") !== "true";
    for (const t of localStream.getAudioTracks()) t.enabled = !muted;
    event.currentTarget.setAttribute("aria-pressed", String(muted));
    event.currentTarget.textContent = muted ? "Unmute" : "Mute";
    // The room shows it on our tile, and never takes our silence for someone talking.
    call?.send({ type: "self_mute", muted });
  });
  $("layout-select").addEventListener("change", (event) => {
    call?.send({ type: "set_layout", layout: event.currentTarget.value });
  });
  // Clicking someone's tile pins them large; clicking the one pinned goes back to the speaker.
  $("composite").addEventListener("click", (event) => {
    if (!call?.canSetLayout) return;
    const who = tileAt(event.currentTarget, call.layout, event.clientX, event.clientY);
    if (!who) return;
    const pinnedNow = call.layout?.layout === "pin" && call.pinned === who;
    call.pinned = pinnedNow ? null : who;
    call.send(pinnedNow ? { type: "set_layout", layout: "speaker" } : { type: "set_layout", layout: "pin", participant_id: who });
  });
  $("camera-button").addEventListener("click", (event) => {
    const off = event.currentTarget.getAttribute("aria-pressed") !== "true";
    for (const t of localStream.getVideoTracks()) t.enabled = !off;
    event.currentTarget.setAttribute("aria-pressed", String(off));
    event.currentTarget.textContent = off ? "Camera on" : "Camera off";
  });
  $("record-button").addEventListener("click", () => {
    call?.send({ type: "record", action: call.recording ? "stop" : "start" });
  });
  $("leave-button").addEventListener("click", () => {
    call?.leave();
    show("left");
  });
  $("rejoin-button").addEventListener("click", () => {
    if (call) startCall(call.room, call.name);
  });
  window.addEventListener("pagehide", () => call?.leave());
  $("connection").addEventListener("toggle", renderConnection);
  setInterval(renderConnection, CONNECTION_PANEL_MS);
}

window.mcu = { call: null };
const joinToken = takeTokenFromUrl();
setupCallControls();
setupSharingControls(() => call?.sharing);
const room = roomFromPath();
if (room) prejoin(room);
else landing();
