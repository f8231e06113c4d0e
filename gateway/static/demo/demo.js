// voxgate demo page: a browser WebRTC call through voxgate's SDP broker. No build step, no dependencies.
//
// 1. POST /demo/token: a short-lived browser JWT for the demo tenant (only `voxgate demo` serves this;
//    in production the tenant's own backend signs it). The page never holds an API key.
// 2. getUserMedia, an RTCPeerConnection with the microphone track and the `oai-events` data channel.
// 3. POST /v1/realtime/calls with the SDP offer as application/sdp and `Authorization: Bearer <jwt>`;
//    the 201 carries the SDP answer and `Location: /v1/realtime/calls/{call_id}`.
// 4. The answer's audio plays in <audio>; the data channel carries the Realtime events.
// 5. Hang up: POST /v1/realtime/calls/{call_id}/hangup, then close the peer connection.
//
// window.voxgateDemo is the page's state, for people and for tests/test_browser_demo.py.
"use strict";

const state = {
  status: "idle", // idle | starting | connecting | connected | hanging-up | ended | error
  ice: "new", // RTCPeerConnection.iceConnectionState
  connection: "new", // RTCPeerConnection.connectionState
  channel: "closed", // the oai-events data channel
  callId: null, // from the broker's Location header
  events: [], // the type of every event received on the data channel, in order
  responses: [], // {id, status, usage} of every response.done
  transcript: "", // the current response's transcript
  voxgateCall: null, // the last GET /v1/realtime/calls/{call_id}
  error: null,
};
window.voxgateDemo = state;

const MAX_LOGGED = 200;
const GATHER_MS = 3000;
let pc = null;
let channel = null;
let mic = null;

const $ = (id) => document.getElementById(id);

function publish() {
  const body = document.body.dataset;
  body.state = state.status;
  body.ice = state.ice;
  body.channel = state.channel;
  body.callId = state.callId || "";
  $("status").textContent = state.status;
  $("call-id").textContent = state.callId || "–";
  $("ice").textContent = `${state.ice} (connection ${state.connection})`;
  $("channel").textContent = state.channel;
  $("transcript").textContent = state.transcript || "–";
  const call = state.voxgateCall;
  $("voxgate-call").textContent = call ? `${call.state}${call.end_reason ? ` (${call.end_reason})` : ""}, model ${call.model}` : "–";
  $("error").hidden = !state.error;
  $("error").textContent = state.error || "";
  $("start").disabled = pc !== null;
  $("hello").disabled = state.channel !== "open";
  $("hangup").disabled = pc === null;
}

function setStatus(status) {
  state.status = status;
  publish();
}

function fail(err) {
  state.error = err instanceof Error ? err.message : String(err);
  console.error("voxgate demo:", state.error);
  const callId = pc !== null ? state.callId : null;
  teardown("error");
  if (callId) { // voxgate brokered the call but it did not work out: end it there too
    voxgate(`/v1/realtime/calls/${encodeURIComponent(callId)}/hangup`, { method: "POST" }).catch(() => {});
  }
}

// A browser token for every request: it is short-lived, so never keep one around.
async function browserToken() {
  const response = await fetch("/demo/token", { method: "POST", cache: "no-store" });
  if (!response.ok) throw new Error(`could not get a browser token (HTTP ${response.status})`);
  return (await response.json()).token;
}

// A request to voxgate's call API; errors have OpenAI's shape {"error": {"message", "code", ...}}.
async function voxgate(path, init = {}) {
  const headers = { ...(init.headers || {}), Authorization: `Bearer ${await browserToken()}` };
  const response = await fetch(path, { ...init, headers, cache: "no-store" });
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      const { error } = await response.json();
      detail = `${error.code || response.status}: ${error.message}`;
    } catch (_) { /* not JSON */ }
    throw new Error(`${init.method || "GET"} ${path} failed: ${detail}`);
  }
  return response;
}

// voxgate and OpenAI take one complete offer (no trickle ICE), so wait for the candidates.
function gatheringComplete(peer, ms) {
  return new Promise((resolve) => {
    const check = () => {
      if (peer.iceGatheringState !== "complete") return;
      peer.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    peer.addEventListener("icegatheringstatechange", check);
    check();
    setTimeout(() => { peer.removeEventListener("icegatheringstatechange", check); resolve(); }, ms);
  });
}

function logEvent(event) {
  const item = document.createElement("li");
  item.textContent = event.type;
  const detail = event.type === "error" ? event.error && event.error.message
    : event.type === "response.done" ? `${event.response.status}, ${event.response.usage ? event.response.usage.total_tokens : "?"} tokens`
    : event.type === "session.created" ? `${event.session.model}, ${event.session.id}`
    : null;
  if (detail) {
    const span = document.createElement("span");
    span.className = "detail";
    span.textContent = `  ${detail}`;
    item.append(span);
  }
  const list = $("events");
  list.prepend(item);
  while (list.childElementCount > MAX_LOGGED) list.lastElementChild.remove();
}

function onEvent(event) {
  state.events.push(event.type);
  if (event.type === "response.created") state.transcript = "";
  if (event.type === "response.output_audio_transcript.delta" || event.type === "response.output_text.delta") {
    state.transcript += event.delta;
  }
  if (event.type === "response.done") {
    const { id, status, usage } = event.response;
    state.responses.push({ id, status, usage: usage || null });
  }
  if (event.type === "error") state.error = event.error && event.error.message;
  logEvent(event);
  publish();
}

async function refreshCall() {
  if (!state.callId) return;
  try {
    const response = await voxgate(`/v1/realtime/calls/${encodeURIComponent(state.callId)}`);
    state.voxgateCall = await response.json();
  } catch (err) {
    state.error = err.message;
  }
  publish();
}

async function start() {
  state.error = null;
  state.callId = null;
  state.voxgateCall = null;
  state.transcript = "";
  setStatus("starting");
  try {
    mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc = new RTCPeerConnection(); // no STUN/TURN: voxgate brokers only the SDP
    const peer = pc;
    for (const track of mic.getAudioTracks()) peer.addTrack(track, mic);
    peer.ontrack = (event) => {
      $("remote-audio").srcObject = event.streams[0] || new MediaStream([event.track]);
    };
    peer.oniceconnectionstatechange = () => {
      state.ice = peer.iceConnectionState;
      publish();
    };
    peer.onconnectionstatechange = () => {
      state.connection = peer.connectionState;
      if (peer === pc && peer.connectionState === "failed") fail(new Error("the WebRTC connection failed"));
      else publish();
    };
    channel = peer.createDataChannel("oai-events");
    channel.onopen = () => {
      state.channel = "open";
      setStatus("connected");
      refreshCall();
    };
    channel.onclose = () => {
      state.channel = "closed";
      if (peer === pc && state.status !== "hanging-up") {
        teardown("ended"); // the far end hung up (a cap, a budget, or the session expiring)
        refreshCall();
      } else {
        publish();
      }
    };
    channel.onmessage = (message) => onEvent(JSON.parse(message.data));

    await peer.setLocalDescription(await peer.createOffer());
    await gatheringComplete(peer, GATHER_MS);
    const answer = await voxgate("/v1/realtime/calls", {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: peer.localDescription.sdp,
    });
    state.callId = (answer.headers.get("Location") || "").split("/").pop() || null;
    setStatus("connecting");
    await peer.setRemoteDescription({ type: "answer", sdp: await answer.text() });
  } catch (err) {
    fail(err);
  }
}

function sayHello() {
  if (!channel || channel.readyState !== "open") return;
  const item = { type: "message", role: "user", content: [{ type: "input_text", text: "Hello!" }] };
  channel.send(JSON.stringify({ type: "conversation.item.create", item }));
  channel.send(JSON.stringify({ type: "response.create" }));
}

async function hangup() {
  const callId = state.callId;
  setStatus("hanging-up");
  if (callId) {
    try {
      await voxgate(`/v1/realtime/calls/${encodeURIComponent(callId)}/hangup`, { method: "POST" });
    } catch (err) {
      state.error = err.message;
    }
  }
  teardown("ended");
  await refreshCall();
}

function teardown(status) {
  const peer = pc;
  pc = null;
  if (channel) channel.close();
  channel = null;
  if (peer) peer.close();
  if (mic) mic.getTracks().forEach((track) => track.stop());
  mic = null;
  $("remote-audio").srcObject = null;
  state.channel = "closed";
  if (peer) {
    state.ice = peer.iceConnectionState;
    state.connection = peer.connectionState;
  }
  setStatus(status);
}

document.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", start);
  $("hello").addEventListener("click", sayHello);
  $("hangup").addEventListener("click", hangup);
  // The snippets name this gateway: its own origin, whatever host and port it is reached on.
  for (const span of document.querySelectorAll(".base-url")) span.textContent = `${window.location.origin}/v1`;
  publish();
});
