// The watch page: plays /w/{room} over WHEP (POST /whep/{room}). Receives only; reconnects
// on its own when the connection or the room goes away, and ends its session when closed.

const RETRY_MS = 3000;
// A WHEP answer carries the server's candidates; ours go in the offer, gathered for at most this.
const GATHER_MS = 2000;

const screen = document.getElementById("screen");
const status = document.getElementById("status");
const sound = document.getElementById("sound");
const room = decodeURIComponent(location.pathname.split("/")[2] || "");
const token = new URLSearchParams(location.search).get("token");

let session = null; // { pc, resource }

function say(text) {
  status.textContent = text;
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS);
  });
}

async function end() {
  const s = session;
  session = null;
  if (!s) return;
  s.pc.close();
  if (s.resource) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    // keepalive: the DELETE still goes out as the page closes.
    fetch(s.resource, { method: "DELETE", headers, keepalive: true }).catch(() => {});
  }
}

function retry(why) {
  say(`${why} — trying again…`);
  end();
  setTimeout(watch, RETRY_MS);
}

async function watch() {
  if (session) return;
  const pc = new RTCPeerConnection();
  session = { pc, resource: null };
  const mine = session;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    screen.srcObject = stream;
    screen.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (session !== mine) return;
    if (pc.connectionState === "connected") say("");
    if (pc.connectionState === "failed" || pc.connectionState === "closed") retry("The connection was lost");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const headers = { "Content-Type": "application/sdp" };
    if (token) headers.Authorization = `Bearer ${token}`;
    // Another node of a cluster answers 307 to the room's node; fetch follows it (and the
    // resource URL is then that node's: see reply.url below).
    const offer = { method: "POST", headers, body: pc.localDescription.sdp };
    let reply = await fetch(`/whep/${encodeURIComponent(room)}`, offer);
    // The Fetch standard drops Authorization on a redirect to another origin, so the room's
    // node refuses the followed request (401): ask it again directly, token included.
    if (reply.status === 401 && token && reply.redirected) {
      reply = await fetch(reply.url, offer);
    }
    if (reply.status !== 201) {
      let detail = `${reply.status}`;
      try {
        detail = (await reply.json()).detail || detail;
      } catch {}
      if (session !== mine) return;
      // A wrong token or room name does not get better by asking again.
      if (reply.status === 400 || reply.status === 401 || reply.status === 403) {
        say(`Cannot watch room ${room}: ${detail}`);
        end();
        return;
      }
      retry(`Cannot watch room ${room}: ${detail}`);
      return;
    }
    const location = reply.headers.get("Location");
    if (session === mine) mine.resource = location ? new URL(location, reply.url).href : null;
    await pc.setRemoteDescription({ type: "answer", sdp: await reply.text() });
    say(`Watching room ${room}…`);
  } catch (e) {
    if (session === mine) retry(`Cannot watch room ${room}: ${e.message || e}`);
  }
}

sound.hidden = false;
sound.addEventListener("click", () => {
  screen.muted = false;
  screen.play().catch(() => {});
  sound.hidden = true;
});
window.addEventListener("pagehide", end);
if (!room) {
  say("No room in the address: open /w/<room>.");
} else {
  document.title = `${room} — watching`;
  watch();
}
