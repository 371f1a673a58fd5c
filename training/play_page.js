// The play page: every string from the server goes into the DOM as text (textContent,
// attributes set one by one), never as HTML. Each request returns one frame as a PNG.
"use strict";

const $ = (id) => document.getElementById(id);
const ARROWS = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down" };
let info = null;
let chain = Promise.resolve();  // requests run one after another, in the order of the keys
let pending = 0;
let started = false;
let frameUrl = null;
const stepMs = [];  // the latest step times, for frames per second

function status(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

async function api(path, body, contentType) {
  const headers = { "X-Genie-Play": "1" };
  if (contentType) headers["Content-Type"] = contentType;
  return fetch(path, { method: "POST", headers, body: body || "", credentials: "same-origin" });
}

async function errorOf(resp) {
  try { return (await resp.json()).error || resp.statusText; } catch (e) { return resp.status + " " + resp.statusText; }
}

// Show the frame a request answered with; false when it answered an error.
async function show(resp) {
  if (!resp.ok) {
    status(await errorOf(resp), true);
    return false;
  }
  const blob = await resp.blob();
  const img = $("frame");
  if (frameUrl) URL.revokeObjectURL(frameUrl);
  frameUrl = URL.createObjectURL(blob);
  await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = frameUrl; });
  img.hidden = false;
  const frames = resp.headers.get("X-Frames") || "0";
  $("frame-index").textContent = resp.headers.get("X-Frame") || "–";
  document.body.dataset.frames = frames;
  $("undo").disabled = Number(frames) <= 1;
  return true;
}

function enqueue(task) {
  setPending(1);
  chain = chain.then(task).catch((e) => status(String(e), true)).finally(() => setPending(-1));
}

function begin(resp) {
  return show(resp).then((ok) => {
    if (!ok) return;
    started = true;
    stepMs.length = 0;
    $("fps").textContent = "–";
    $("reset").disabled = false;
    $("download").hidden = false;
    status("press 1–" + info.actions.length + " to act");
  });
}

function step(action) {
  if (!started || action < 0 || action >= info.actions.length) return;
  enqueue(async () => {
    const t0 = performance.now();
    const ok = await show(await api("/api/step?action=" + action));
    if (!ok) return;
    stepMs.push(performance.now() - t0);
    if (stepMs.length > 8) stepMs.shift();
    const fps = 1000 * stepMs.length / stepMs.reduce((a, b) => a + b, 0);
    $("fps").textContent = fps.toFixed(1);
    status("action " + (action + 1) + ": " + info.actions[action]);
  });
}

function upload(file) {
  if (!file) return;
  if (file.size > info.max_upload) {
    status("the image is " + file.size + " bytes; at most " + info.max_upload, true);
    return;
  }
  enqueue(async () => begin(await api("/api/start", file, file.type || "application/octet-stream")));
}

function pick(i) {
  enqueue(async () => begin(await api("/api/start?prompt=" + i)));
}

function undo() { if (started) enqueue(async () => { await show(await api("/api/undo")); }); }
function reset() { if (started) enqueue(async () => { await show(await api("/api/reset")); stepMs.length = 0; }); }

function arrowAction(key) {
  const word = ARROWS[key];
  if (!word) return -1;
  const re = new RegExp("\\b" + word + "\\b", "i");
  return info.actions.findIndex((name) => re.test(name));
}

function render() {
  $("limits").textContent = "at most " + (info.max_upload / 1048576).toFixed(0) + " MiB and " +
    info.max_pixels + " pixels; resized to " + info.width + "×" + info.height;
  $("settings").textContent = "MaskGIT steps " + (info.steps ?? "default") + ", temperature " +
    (info.temperature ?? "default") + (info.greedy ? ", greedy" : "") +
    (info.keep_bias != null ? ", keep bias " + info.keep_bias : "") +
    (info.prompt_detail === false ? ", decoder's frames only" : "");
  for (const p of info.prompts) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.prompt = String(p.id);
    const img = document.createElement("img");
    img.src = "/prompt/" + p.id + ".png";
    img.alt = p.name;
    const caption = document.createElement("span");
    caption.textContent = p.name;
    b.append(img, caption);
    b.addEventListener("click", () => pick(p.id));
    $("prompts").append(b);
  }
  info.actions.forEach((name, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.action = String(i);
    const k = document.createElement("kbd");
    k.textContent = String(i + 1);
    b.append(k, document.createTextNode(name));
    b.addEventListener("click", () => step(i));
    $("actions").append(b);
  });
}

document.addEventListener("keydown", (e) => {
  if (!info || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key >= "1" && e.key <= "9") step(Number(e.key) - 1);
  else if (e.key in ARROWS) { const a = arrowAction(e.key); if (a >= 0) { e.preventDefault(); step(a); } }
  else if (e.key === "u" || e.key === "U" || e.key === "Backspace") undo();
  else if (e.key === "r" || e.key === "R") reset();
});

window.addEventListener("DOMContentLoaded", async () => {
  $("upload").addEventListener("change", (e) => { upload(e.target.files[0]); e.target.value = ""; });
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", reset);
  const resp = await fetch("/api/info", { credentials: "same-origin" });
  if (!resp.ok) { status(await errorOf(resp), true); return; }
  info = await resp.json();
  render();
  status(info.prompts.length ? "upload an image or pick a clip" : "upload an image");
  document.body.dataset.ready = "1";
});
