// Lightning studio browser client: one WebSocket to /ws, one generate message per change, draw the newest frame.
// Protocol: docs/protocol.md. Plain script, no build step; exposes window.studio for Gradio's js-only events.
(() => {
  "use strict";
  const state = { prompt: "", seed: 0, steps: 1, width: 256, height: 256 };
  const sent = new Map(); // seq -> {at, prompt, seed, steps}: round-trip times and Snapshot metadata
  let root, canvas, hud, messageBox, config, ws;
  let seq = 0, lastDrawn = -1, drawnMeta = null, retryTimer = null, reconnectDelay = 500;
  let dormant = false, idleClosed = false; // closed for idling or a full server: reconnect when the user acts again, not in a loop
  let compared = null; // the prompt, seed and size the Compare panel was asked for
  const drawTimes = [];

  function init(tries = 0) {
    root = document.getElementById("studio-root");
    // Gradio renders components after this script runs; with --gradio-events there is no live canvas at all.
    if (!root) { if (tries < 600) setTimeout(() => init(tries + 1), 50); return; }
    canvas = document.getElementById("live-canvas");
    hud = document.getElementById("studio-hud");
    messageBox = document.getElementById("studio-message");
    config = JSON.parse(root.dataset.config);
    state.steps = config.live_steps ?? config.variants[0];
    setSize(config.size);
    const box = document.querySelector("#prompt textarea");
    if (box) state.prompt = shownPrompt(box);
    // Delegated, so it survives Gradio re-rendering the textbox; one event per keystroke.
    document.addEventListener("input", (e) => {
      if (e.target && e.target.closest && e.target.closest("#prompt")) { state.prompt = shownPrompt(e.target); send(); }
    }, true);
    document.addEventListener("click", (e) => {
      if (e.target && e.target.closest && e.target.closest("#compare")) { compared = inputsKey(); markCompareStale(); }
    }, true);
    connect();
  }

  // What the box shows: its text, or its placeholder while it is empty. The page draws that, so a first visit sees a
  // picture at once, and the picture always matches the words on screen (Compare does the same on the server).
  function shownPrompt(box) { return box.value || box.placeholder || ""; }

  function connect() {
    const url = new URL(config.ws_path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    setState("connecting");
    ws.onopen = () => {
      reconnectDelay = 500;
      ws.send(JSON.stringify({ type: "hello", version: 1 }));
      if (lastDrawn < 0) hud.textContent = "connected — drawing the prompt";
      send(); // the first picture without typing; after a reconnect, what the box holds now
    };
    ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(ev.data) : onFrame(ev.data));
    ws.onclose = (ev) => {
      setState("disconnected");
      if (ev.code === 1008) return; // refused (origin): retrying cannot help
      if (ev.code === 1013 || idleClosed) { dormant = true; return; }
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 8000);
    };
  }

  function send() {
    markCompareStale();
    if (dormant) { dormant = idleClosed = false; connect(); return; } // onopen sends the current state
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    seq += 1;
    sent.set(seq, { at: performance.now(), prompt: state.prompt, seed: state.seed, steps: state.steps });
    if (sent.size > 256) sent.delete(sent.keys().next().value);
    ws.send(JSON.stringify({ type: "generate", seq, prompt: state.prompt, seed: state.seed, steps: state.steps,
                             width: state.width, height: state.height }));
    root.dataset.sentSeq = String(seq);
  }

  function onText(text) {
    const msg = JSON.parse(text);
    if (msg.type === "status") {
      setState(msg.state);
      showMessage(msg.state === "server_full" || msg.state === "busy" ? msg.message : "");
    } else if (msg.type === "error") {
      showMessage(`${msg.code}: ${msg.message}`);
      if (msg.code === "idle_timeout") idleClosed = true;
      if (msg.code === "rate_limited") { // the refused request is not queued: resend the latest once allowed
        clearTimeout(retryTimer);
        retryTimer = setTimeout(send, msg.retry_ms || 100);
      }
    }
  }

  async function onFrame(buffer) {
    const view = new DataView(buffer);
    const length = view.getUint32(0, false);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    if (header.seq <= lastDrawn) return; // older than what is on screen
    const bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" }));
    if (header.seq <= lastDrawn) return; // a newer frame was decoded meanwhile
    if (canvas.width !== header.width || canvas.height !== header.height) {
      canvas.width = header.width; canvas.height = header.height;
    }
    // A small frame (the shapes model's 128 px) is scaled up with crisp pixels instead of a bilinear smear.
    canvas.classList.toggle("upscaled", header.width < 384);
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    lastDrawn = header.seq;
    setState("ready"); // frames flow, so any warm-up "busy" is over
    root.dataset.frames = String(Number(root.dataset.frames || 0) + 1);
    drawnMeta = Object.assign({ width: header.width, height: header.height }, sent.get(header.seq) || {});
    canvas.dataset.seq = root.dataset.seq = String(header.seq);
    const now = performance.now();
    drawTimes.push(now);
    while (drawTimes.length && now - drawTimes[0] > 2000) drawTimes.shift();
    showHud(header, drawnMeta.at ? now - drawnMeta.at : null);
    if (!header.dropped_tokens) showMessage("");
    else showMessage(`the prompt is longer than the text encoder's 77-token window: the last ${header.dropped_tokens} token(s) were ignored`);
  }

  function showHud(h, rtt) {
    const t = h.timings_ms || {};
    // Only stages that ran: the server leaves out "text" when the prompt's embeddings were cached.
    const stages = ["text", "denoise", "decode", "encode"].map((k) => (k in t ? `${k} ${ms(t[k])}` : k === "text" ? "text cached" : null))
      .filter(Boolean).join(" · ");
    // A rate needs two frames in the last 2 s: a lone frame after a pause is not "0.0 fps".
    const span = drawTimes[drawTimes.length - 1] - drawTimes[0];
    const fps = drawTimes.length > 1 && span > 0 ? ` · ${(((drawTimes.length - 1) * 1000) / span).toFixed(1)} fps` : "";
    hud.textContent = `#${h.seq} · ${h.steps} step${h.steps === 1 ? "" : "s"} · ${h.width}×${h.height} · ${stages} · ` +
      `queue ${h.queue_ms.toFixed(0)} ms${rtt === null ? "" : ` · key→frame ${rtt.toFixed(0)} ms`}${fps}`;
  }

  function ms(value) { return value < 10 ? value.toFixed(1) : value.toFixed(0); } // a 0.4 ms JPEG encode is not "0"

  function inputsKey() { return JSON.stringify([state.prompt, state.seed, state.width, state.height]); }

  // The Compare panel shows what it was asked for; once the prompt, seed or size change it says it is stale.
  function markCompareStale() {
    const panel = document.getElementById("compare-latency");
    if (!panel || compared === null) return;
    const stale = compared !== inputsKey();
    panel.classList.toggle("stale", stale);
    root.dataset.compareStale = String(stale);
  }

  function setState(s) { if (root) root.dataset.state = s; }
  function showMessage(text) { if (messageBox) messageBox.textContent = text || ""; }

  function setPrompt(text) { // an example prompt, typed into the box as the user would (Gradio and the stream both see it)
    const box = document.querySelector("#prompt textarea");
    if (!box) return;
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function setSize(text) { // "1152x896", one of the server's declared sizes (config.sizes)
    const [width, height] = String(text).split("x").map(Number);
    state.width = width; state.height = height;
  }

  function update(changes) {
    if ("seed" in changes) state.seed = Math.max(0, Math.floor(Number(changes.seed) || 0));
    if ("steps" in changes) state.steps = Number(changes.steps);
    if ("size" in changes) setSize(changes.size);
    send();
  }

  // ---- Snapshot: the frame on screen as a PNG with prompt, seed, steps and model in iTXt chunks ----------------
  const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  function crc32(bytes) {
    let c = 0xffffffff;
    for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  function itxtChunk(key, value) { // keyword \0 flag=0 method=0 lang \0 translated \0 UTF-8 text
    const enc = new TextEncoder();
    const data = new Uint8Array([...enc.encode(key), 0, 0, 0, 0, 0, ...enc.encode(String(value))]);
    const chunk = new Uint8Array(12 + data.length);
    const view = new DataView(chunk.buffer);
    view.setUint32(0, data.length);
    chunk.set(enc.encode("iTXt"), 4);
    chunk.set(data, 8);
    view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
    return chunk;
  }
  async function snapshot() {
    if (lastDrawn < 0) { showMessage("no frame yet: type a prompt first"); return null; }
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const png = new Uint8Array(await blob.arrayBuffer());
    const meta = { prompt: drawnMeta.prompt, seed: drawnMeta.seed, steps: drawnMeta.steps, model: config.model,
                   seq: lastDrawn, Software: "lightning-studio" };
    const chunks = Object.entries(meta).map(([k, v]) => itxtChunk(k, v));
    const ihdrEnd = 8 + 25; // signature + IHDR (4 length + 4 type + 13 data + 4 crc)
    const parts = [png.subarray(0, ihdrEnd), ...chunks, png.subarray(ihdrEnd)];
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob(parts, { type: "image/png" }));
    link.download = `studio-seed${meta.seed}-${meta.steps}step.png`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    return link.download;
  }

  window.studio = { update, setPrompt, snapshot, state, get lastSeq() { return lastDrawn; } };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
