// Labelling page. Every text from the server (titles above all) goes into the DOM through
// textContent, never innerHTML. Saves run one after another (a promise chain) so an undo
// always applies to the label given just before it. The session cookie the server sets on
// the first load goes with every request: an undo reaches only this browser's labels.
"use strict";

const $ = (id) => document.getElementById(id);
const S = { clips: [], mine: {}, others: new Set(), pos: 0, labeller: "", target: 0, counts: {} };
let chain = Promise.resolve();
let pending = 0;

function setStatus(text, error) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

async function api(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Genie-Label": "1" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function send(path, body, onOk, failed) {
  setPending(1);
  chain = chain.then(() => api(path, body)).then(
    (d) => { if (d.counts) renderCounts(d.counts); onOk(d); },
    (e) => setStatus(failed + ": " + e.message, true),
  ).finally(() => setPending(-1));
  return chain;
}

function renderCounts(c) {
  S.counts = c;
  const target = Math.max(1, S.target);
  // done: the target (at most the clips there are) is reached; labelling more stays possible
  const done = S.target > 0 && c.labelled >= S.target ? " · done: target reached, train-quality next" : "";
  $("progress-text").textContent = `${c.labelled} / ${S.target} labelled${done}` +
    (c.skipped ? ` · ${c.skipped} skipped` : "") + (c.labellers && c.labellers.length > 1 ? ` · ${c.labellers.length} labellers` : "");
  $("bar-fill").style.width = Math.min(100, (100 * c.labelled) / target) + "%";
  $("n-good").textContent = String(c.good);
  $("n-bad").textContent = String(c.bad);
  const gb = c.good + c.bad;
  $("bal-good").style.width = (gb ? (100 * c.good) / gb : 0) + "%";
  $("bal-bad").style.width = (gb ? (100 * c.bad) / gb : 0) + "%";
}

function show(pos) {
  if (!S.clips.length) {
    $("title").textContent = "No clips to label.";
    return;
  }
  S.pos = Math.max(0, Math.min(S.clips.length - 1, pos));
  const c = S.clips[S.pos];
  document.body.dataset.key = c.key;
  $("title").textContent = c.title || c.key;
  $("source").textContent = c.source || "?";
  $("video-id").textContent = c.video_id;
  $("pos").textContent = `${S.pos + 1} / ${S.clips.length}`;
  const lab = S.mine[c.key];
  const badge = $("current");
  badge.textContent = lab || "none";
  badge.className = "badge" + (lab ? " " + lab : "");
  const video = $("video"), strip = $("strip");
  strip.hidden = true;
  video.hidden = false;
  video.src = "/clip/" + encodeURIComponent(c.key) + ".mp4";
  video.play().catch(() => {});
}

function showStrip() {
  const c = S.clips[S.pos];
  if (!c) return;
  $("video").hidden = true;
  const strip = $("strip");
  strip.src = "/strip/" + encodeURIComponent(c.key) + ".png";
  strip.hidden = false;
}

function nextOpen(from) {
  // the next clip this labeller has not labelled, preferring clips nobody else has labelled
  // and (when labelled clips are skipped over) a video other than the one just shown
  const n = S.clips.length;
  const prevVideo = S.clips[from] ? S.clips[from].video_id : null;
  for (const [avoidOthers, avoidSame] of [[true, true], [false, true], [false, false]]) {
    for (let i = 1; i <= n; i++) {
      const c = S.clips[(from + i) % n];
      if (c.key in S.mine || (avoidOthers && S.others.has(c.key))) continue;
      if (avoidSame && c.video_id === prevVideo && n > 1) continue;
      return (from + i) % n;
    }
  }
  return -1;
}

function needName() {
  if (S.labeller) return false;
  setStatus("Type your name in the labeller box first.", true);
  $("labeller").focus();
  return true;
}

function label(value) {
  if (!S.clips.length || needName()) return;
  const c = S.clips[S.pos];
  S.mine[c.key] = value;
  send("/api/label", { key: c.key, label: value, labeller: S.labeller },
       () => setStatus(`saved: ${value} — ${c.key}`), "NOT SAVED (check the server and try again)");
  const nxt = nextOpen(S.pos);
  if (nxt < 0) {
    setStatus("All clips of the sample are labelled. Thank you!");
    show(S.pos);
  } else {
    show(nxt);
  }
}

function undo() {
  if (needName()) return;
  send("/api/undo", { labeller: S.labeller }, (d) => {
    if (!d.undone) { setStatus("nothing to undo"); return; }
    const key = d.undone.key;
    if (d.current) S.mine[key] = d.current; else delete S.mine[key];
    const i = S.clips.findIndex((c) => c.key === key);
    if (i >= 0) show(i);
    setStatus(`undone: ${d.undone.label} — ${key}`);
  }, "NOT UNDONE");
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) {
    if (e.key === "Enter" || e.key === "Escape") t.blur();
    return;
  }
  const actions = {
    g: () => label("good"), b: () => label("bad"), s: () => label("skip"), u: undo,
    ArrowRight: () => show(S.pos + 1), ArrowLeft: () => show(S.pos - 1),
  };
  const f = actions[e.key];
  if (f) { e.preventDefault(); f(); }
}

async function load() {
  const q = new URLSearchParams(location.search);
  let name = q.get("labeller") || localStorage.getItem("genie-labeller") || "";
  const r = await fetch("/api/state?labeller=" + encodeURIComponent(name), { credentials: "same-origin" });
  if (!r.ok) { setStatus("cannot load the sample: HTTP " + r.status, true); return; }
  const st = await r.json();
  if (!name && st.labeller_default) {
    name = st.labeller_default;
  }
  S.labeller = name;
  $("labeller").value = name;
  if (name && name !== st.labeller_default) localStorage.setItem("genie-labeller", name);
  S.clips = st.clips;
  S.mine = st.mine;
  S.others = new Set(st.others);
  S.target = st.target;
  renderCounts(st.counts);
  const first = S.clips.length ? nextOpen(-1) : 0;
  show(first < 0 ? 0 : first);
  document.body.dataset.ready = "1";
  if (!name) needName();
}

async function changeName() {
  const v = $("labeller").value.trim();
  if (!v || v === S.labeller) return;
  S.labeller = v;
  localStorage.setItem("genie-labeller", v);
  const r = await fetch("/api/state?labeller=" + encodeURIComponent(v), { credentials: "same-origin" });
  const st = await r.json();
  S.mine = st.mine;
  S.others = new Set(st.others);
  renderCounts(st.counts);
  setStatus("labelling as " + v);
  show(S.pos);
}

document.addEventListener("DOMContentLoaded", () => {
  document.body.dataset.pending = "0";
  document.addEventListener("keydown", onKey);
  $("btn-good").addEventListener("click", () => label("good"));
  $("btn-bad").addEventListener("click", () => label("bad"));
  $("btn-skip").addEventListener("click", () => label("skip"));
  $("btn-undo").addEventListener("click", undo);
  $("btn-prev").addEventListener("click", () => show(S.pos - 1));
  $("btn-next").addEventListener("click", () => show(S.pos + 1));
  $("labeller").addEventListener("change", changeName);
  $("video").addEventListener("error", showStrip);
  // buttons must not keep focus, or Space/Enter would press them again
  for (const b of document.querySelectorAll("button")) b.addEventListener("mouseup", () => b.blur());
  load().catch((e) => setStatus("cannot load the sample: " + e.message, true));
});
