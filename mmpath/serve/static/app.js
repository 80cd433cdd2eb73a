// mmpath search page: queries /api/, fills the gallery, opens hits in OpenSeadragon.
// Data from the server is put in the page with textContent only (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, level: "tiles", last: null, hits: [], viewer: null, open: null };
window.mmpath = state; // read by the browser tests

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function say(text, kind) {
  const m = $("message");
  m.hidden = !text;
  m.className = kind || "error";
  m.textContent = text || "";
}

async function api(url, opts) {
  let r;
  try {
    r = await fetch(url, opts);
  } catch (err) {
    throw new Error("the server does not answer (" + err.message + ")");
  }
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    throw new Error((body && body.error) || ("HTTP " + r.status));
  }
  return body;
}

// -- filters built from the index's metadata columns --------------------------------------

const SKIP = new Set(["x", "y", "obs_name"]);

function pyString(v) { return JSON.stringify(String(v)); } // a valid Python string literal

function buildFilters(columns) {
  const box = $("filters");
  for (const c of columns) {
    if (SKIP.has(c.name)) continue;
    if (c.kind === "text" && c.values && c.values.length > 1 && c.values.length <= 50) {
      const s = el("select", { "data-col": c.name, "aria-label": c.name, title: c.name });
      s.appendChild(el("option", { value: "" }, c.name + ": any"));
      for (const v of c.values) s.appendChild(el("option", { value: v }, v));
      box.appendChild(s);
    } else if (c.kind === "number" && c.min !== c.max && c.min !== undefined) {
      const i = el("input", {
        type: "number", step: "any", "data-col": c.name, "data-op": ">=",
        placeholder: c.name + " ≥", "aria-label": c.name + " at least", title: c.name + " ≥",
      });
      box.appendChild(i);
    } else if (c.kind === "bool" && c.values && c.values.length > 1) {
      const s = el("select", { "data-col": c.name, "data-bool": "1", "aria-label": c.name });
      s.appendChild(el("option", { value: "" }, c.name + ": any"));
      s.appendChild(el("option", { value: "True" }, c.name));
      s.appendChild(el("option", { value: "False" }, "not " + c.name));
      box.appendChild(s);
    }
  }
}

function whereString() {
  const parts = [];
  for (const e of $("filters").querySelectorAll("[data-col]")) {
    if (e.value === "") continue;
    const col = e.dataset.col;
    if (e.dataset.bool) parts.push(col + " == " + e.value);
    else if (e.dataset.op) parts.push(col + " " + e.dataset.op + " " + Number(e.value));
    else parts.push(col + " == " + pyString(e.value));
  }
  const free = $("where").value.trim();
  if (free) parts.push("(" + free + ")");
  return parts.join(" and ");
}

// -- queries --------------------------------------------------------------------------------

function params(extra) {
  const p = new URLSearchParams();
  p.set("k", $("k").value || "20");
  const w = whereString();
  if (w) p.set("where", w);
  p.set("level", state.level);
  for (const [k, v] of Object.entries(extra || {})) if (v !== "" && v !== null) p.set(k, v);
  return p;
}

async function run(query) {
  state.last = query;
  say("");
  $("status").textContent = "searching…";
  const t0 = performance.now();
  try {
    let res;
    if (query.kind === "text") {
      const p = params();
      res = await api("/api/search/text", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          text: query.text, k: Number(p.get("k")), where: p.get("where"), level: state.level,
        }),
      });
    } else if (query.kind === "image") {
      const p = params({ mpp: state.level === "tiles" ? $("mpp").value : "" });
      res = await api("/api/search/image?" + p, {
        method: "POST",
        headers: { "Content-Type": query.blob.type || "application/octet-stream" },
        body: query.blob,
      });
    } else {
      res = await api("/api/search/tile/" + query.id + "?" + params());
    }
    if (res.note) say(res.note, "note");
    show(res);
    const what = res.level === "slides" ? "slide(s)" : "hit(s)";
    $("status").textContent = res.results.length + " " + what + " in " +
      Math.round(performance.now() - t0) + " ms (" + describe(query) + ")";
  } catch (err) {
    say(err.message, "error");
    $("status").textContent = "";
  }
}

function describe(q) {
  if (q.kind === "text") return "text: " + q.text;
  if (q.kind === "image") return "image: " + (q.blob.name || "pasted image");
  return "more like tile " + q.id;
}

// -- results --------------------------------------------------------------------------------

const HIT_SKIP = new Set(["rank", "score", "tile_id", "slide_id", "x", "y", "mpp", "obs_name",
  "text", "size0"]);

function fmt(v) {
  if (typeof v === "number" && !Number.isInteger(v)) return v.toPrecision(4);
  return v === null || v === undefined ? "–" : String(v);
}

function show(res) {
  const gallery = $("gallery"), table = $("slides-table");
  gallery.replaceChildren();
  table.tBodies[0].replaceChildren();
  table.tHead.replaceChildren();
  if (res.level === "slides") {
    gallery.hidden = true; table.hidden = false;
    renderSlides(res.results);
    return;
  }
  gallery.hidden = false; table.hidden = true;
  state.hits = res.results;
  if (!res.results.length) gallery.appendChild(el("p", { class: "muted" }, "no hits"));
  for (const h of res.results) gallery.appendChild(card(h));
}

function card(h) {
  const c = el("div", { class: "hit", "data-tile": h.tile_id, "data-slide": h.slide_id });
  const img = el("img", {
    src: "/api/tiles/" + h.tile_id + "/thumb.jpg", alt: "tile " + h.obs_name, loading: "lazy",
  });
  img.addEventListener("error", () => {
    img.classList.add("broken");
    c.insertBefore(el("div", { class: "nothumb" }, "slide unreadable: no thumbnail"), img.nextSibling);
  });
  img.addEventListener("click", () => openSlide(h.slide_id, h));
  c.appendChild(img);
  const dl = el("dl");
  const add = (k, v) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", { title: fmt(v) }, fmt(v))); };
  add("score", h.score);
  add("slide", h.slide_id);
  add("x, y", h.x + ", " + h.y);
  add("µm/px", h.mpp);
  for (const [k, v] of Object.entries(h)) if (!HIT_SKIP.has(k)) add(k, v);
  dl.firstChild.nextSibling.classList.add("score");
  c.appendChild(dl);
  const more = el("button", { type: "button", class: "more" }, "more like this");
  more.addEventListener("click", () => run({ kind: "tile", id: h.tile_id }));
  const view = el("button", { type: "button", class: "view" }, "open slide");
  view.addEventListener("click", () => openSlide(h.slide_id, h));
  c.appendChild(more); c.appendChild(view);
  return c;
}

function renderSlides(rows) {
  const table = $("slides-table");
  if (!rows.length) { table.tBodies[0].appendChild(el("tr", {}, "no slides")); return; }
  const cols = Object.keys(rows[0]);
  const hr = el("tr");
  for (const c of cols) hr.appendChild(el("th", {}, c));
  table.tHead.appendChild(hr);
  for (const r of rows) {
    const tr = el("tr", { "data-slide": r.slide_id });
    for (const c of cols) tr.appendChild(el("td", {}, fmt(r[c])));
    tr.addEventListener("click", () => openSlide(r.slide_id, null));
    table.tBodies[0].appendChild(tr);
  }
}

// -- the slide viewer -----------------------------------------------------------------------

function viewerMessage(text) {
  const m = $("viewer-msg");
  m.hidden = !text;
  m.textContent = text || "";
  $("viewer").hidden = !!text;
}

async function openSlide(slideId, hit) {
  $("viewer-pane").hidden = false;
  $("viewer-title").textContent = slideId;
  $("viewer-facts").textContent = "";
  for (const c of document.querySelectorAll(".hit.current")) c.classList.remove("current");
  if (hit) {
    const c = document.querySelector('.hit[data-tile="' + hit.tile_id + '"]');
    if (c) c.classList.add("current");
  }
  state.open = { slide: slideId, hit: hit, ready: false, info: null };
  let info;
  try {
    info = await api("/api/slides/" + encodeURIComponent(slideId));
  } catch (err) {
    viewerMessage(err.message);
    return;
  }
  state.open.info = info;
  const mpp = info.mpp ? info.mpp + " µm/px" : "mpp unknown";
  $("viewer-facts").textContent = (info.dims ? info.dims.join(" × ") + " px, " : "") + mpp +
    ", " + info.n_tiles + " tiles indexed";
  if (!info.readable) {
    viewerMessage("Cannot show this slide: " + info.message);
    $("scalebar").hidden = true;
    return;
  }
  viewerMessage("");
  if (!state.viewer) {
    state.viewer = OpenSeadragon({
      element: $("viewer"),
      prefixUrl: "/static/vendor/openseadragon/images/",
      showNavigator: false,
      showRotationControl: false,
      maxZoomPixelRatio: 4,
      crossOriginPolicy: false,
    });
    state.viewer.addHandler("animation", drawScale);
    state.viewer.addHandler("open", onOpen);
    state.viewer.addHandler("open-failed", (e) => viewerMessage("Cannot show this slide: " + (e.message || "open failed")));
  }
  state.viewer.open("/api/slides/" + encodeURIComponent(slideId) + ".dzi");
}

function onOpen() {
  const v = state.viewer, o = state.open;
  if (!o) return;
  v.clearOverlays();
  const tiled = v.world.getItemAt(0);
  for (const h of state.hits) {
    if (h.slide_id !== o.slide || (o.hit && h.tile_id === o.hit.tile_id)) continue;
    v.addOverlay({ element: el("div", { class: "other", title: "hit " + h.rank }),
      location: tiled.imageToViewportRectangle(h.x, h.y, h.size0, h.size0) });
  }
  if (o.hit) {
    const h = o.hit, s = h.size0;
    v.addOverlay({ element: el("div", { class: "outline", id: "hit-outline" }),
      location: tiled.imageToViewportRectangle(h.x, h.y, s, s) });
    v.viewport.fitBounds(tiled.imageToViewportRectangle(h.x - 1.5 * s, h.y - 1.5 * s, 4 * s, 4 * s), true);
  } else {
    v.viewport.goHome(true);
  }
  o.ready = true;
  drawScale();
}

function visibleImageRect() { // for the tests: the visible region in level-0 pixels
  const v = state.viewer;
  const r = v.world.getItemAt(0).viewportToImageRectangle(v.viewport.getBounds(true));
  return { x: r.x, y: r.y, width: r.width, height: r.height };
}
state.visibleImageRect = visibleImageRect;

function drawScale() {
  const o = state.open, v = state.viewer;
  const bar = $("scalebar");
  if (!o || !o.info || !o.info.mpp || !v || !v.world.getItemAt(0)) { bar.hidden = true; return; }
  const item = v.world.getItemAt(0);
  // screen pixels per level-0 pixel
  const zoom = item.viewportToImageZoom(v.viewport.getZoom(true));
  const umPerPx = o.info.mpp / zoom;
  const target = 120 * umPerPx;
  const pow = Math.pow(10, Math.floor(Math.log10(target)));
  const nice = [1, 2, 5, 10].map((m) => m * pow).filter((x) => x <= target).pop() || pow;
  const px = nice / umPerPx;
  bar.hidden = false;
  $("scalebar-bar").style.width = px + "px";
  $("scalebar-text").textContent = nice >= 1000 ? (nice / 1000) + " mm" : nice + " µm";
}

// -- wiring -----------------------------------------------------------------------------------

function imageQuery(blob) {
  if (!state.info || !state.info.image_search) {
    say("image search is off: no encoder is loaded (start the server with --encoder NAME)");
    return;
  }
  run({ kind: "image", blob: blob });
}

function setLevel(level) {
  state.level = level;
  for (const b of document.querySelectorAll("#tabs button")) {
    b.setAttribute("aria-selected", String(b.dataset.level === level));
  }
  if (state.last) run(state.last);
}

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (err) {
    say("cannot load the index: " + err.message);
    return;
  }
  const i = state.info;
  $("summary").textContent = i.n_tiles + " tiles of " + i.n_slides + " slide(s), " +
    i.embedding_key + (i.encoder ? ", encoder " + i.encoder : ", no encoder");
  $("k").max = i.limits.k;
  $("k").value = Math.min(20, i.limits.k);
  $("where").title = i.filter_help;
  $("text").maxLength = i.limits.text;
  if (!i.text_search) {
    $("text").disabled = true; $("text-go").disabled = true;
    $("text").placeholder = "text search is off: " + i.text_reason;
    $("text").title = i.text_reason;
  }
  buildFilters(i.columns);
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("text").value.trim();
    if (t) run({ kind: "text", text: t });
  });
  $("file").addEventListener("change", () => { if ($("file").files[0]) imageQuery($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) imageQuery(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData.items) {
      if (item.type.startsWith("image/")) { imageQuery(item.getAsFile()); return; }
    }
  });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => setLevel(b.dataset.level));
  }
  $("viewer-close").addEventListener("click", () => { $("viewer-pane").hidden = true; state.open = null; });
}

start();
