// Lookout console: plain JS, no build step. The server sends one JPEG per watched frame;
// boxes, zones and lines are drawn here from JSON (see docs/CONSOLE.md).
"use strict";

const PAGE_SIZE = 24;          // tiles per grid page
const GRID_FRAME_MS = 2000;    // a visible tile asks for a new frame this often
const CAMERA_FRAME_MS = 700;   // the camera page's live view
const STATE_MS = 3000;         // camera states and fps
const COLORS = ["#ffb000", "#00d0ff", "#ff5fa0", "#8cff66", "#c79bff", "#ff7b39"];
// Boxes are coloured by class, so people and vehicles read apart at a glance; class id 0
// (person in the bundled models) gets the first colour.
const CLASS_COLORS = ["#ffb000", "#00d0ff", "#ff5fa0", "#8cff66", "#c79bff", "#ff7b39", "#ffffff", "#3cb4ff"];
const classColor = (id) => CLASS_COLORS[(id >>> 0) % CLASS_COLORS.length];

const main = document.getElementById("main");
const summary = document.getElementById("summary");

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

const enc = encodeURIComponent;
const fmtFps = (x) => (x == null ? "–" : x.toFixed(1));

function stateBadge(state) {
  return el("span", { class: "state", "data-state": state, textContent: state });
}

// ---- overlay: zones, lines, boxes on a canvas over the image -------------------------

// Where the picture lies inside its view (object-fit: contain letter-boxes it), in CSS px.
function frameRect(img) {
  const w = img.clientWidth, h = img.clientHeight;
  if (!img.naturalWidth) return { ox: 0, oy: 0, iw: w, ih: h };
  const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const iw = img.naturalWidth * s, ih = img.naturalHeight * s;
  return { ox: (w - iw) / 2, oy: (h - ih) / 2, iw, ih };
}

function drawOverlay(canvas, img, info, boxes, editor) {
  const w = img.clientWidth, h = img.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(w * dpr));
  canvas.height = Math.max(1, Math.round(h * dpr));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!img.naturalWidth) return;
  // The image is letter-boxed (object-fit: contain): map normalised coordinates into it.
  const { ox, oy, iw, ih } = frameRect(img);
  const X = (x) => ox + x * iw, Y = (y) => oy + y * ih;
  // While editing, the editor's shapes are drawn instead of the running ones.
  if (editor) info = editor.drawable();
  const small = w < 500;
  ctx.font = `${small ? 11 : 13}px system-ui, sans-serif`;
  ctx.lineWidth = small ? 1.5 : 2;

  for (const z of info.zones || []) {
    if (!z.polygon.length) continue;
    ctx.beginPath();
    z.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.closePath();
    ctx.fillStyle = "rgba(80, 160, 255, 0.15)";
    ctx.strokeStyle = "rgba(80, 160, 255, 0.9)";
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = "#9cd0ff";
    ctx.fillText(z.name, X(z.polygon[0][0]) + 4, Y(z.polygon[0][1]) + 14);
  }
  for (const l of info.lines || []) {
    const [[ax, ay], [bx, by]] = l.points;
    const [x1, y1, x2, y2] = [X(ax), Y(ay), X(bx), Y(by)];
    ctx.strokeStyle = "#ff4d4d";
    ctx.beginPath(); ctx.moveTo(x1, y1); ctx.lineTo(x2, y2); ctx.stroke();
    // directions[0] crosses towards the side where (B−A)×(P−A) < 0: the normal (dy, −dx).
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1;
    const nx = dy / len, ny = -dx / len, a = small ? 14 : 22;
    ctx.beginPath(); ctx.moveTo(mx - nx * a, my - ny * a); ctx.lineTo(mx + nx * a, my + ny * a); ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(mx + nx * a, my + ny * a);
    ctx.lineTo(mx + nx * a * 0.6 - ny * a * 0.3, my + ny * a * 0.6 + nx * a * 0.3);
    ctx.lineTo(mx + nx * a * 0.6 + ny * a * 0.3, my + ny * a * 0.6 - nx * a * 0.3);
    ctx.closePath(); ctx.fillStyle = "#ff4d4d"; ctx.fill();
    ctx.fillStyle = "#ffb0b0";
    ctx.fillText(`${l.name} → ${l.directions[0]}`, mx + nx * a + 4, my + ny * a + 4);
  }
  for (const b of boxes || []) {
    // Not (yet) tracked: dashed, so confirmed objects stand out.
    const color = classColor(b.class_id);
    ctx.strokeStyle = color;
    ctx.setLineDash(b.track_id == null ? [4, 3] : []);
    ctx.strokeRect(X(b.x), Y(b.y), b.w * iw, b.h * ih);
    ctx.setLineDash([]);
    const label = `${b.class} ${b.score.toFixed(2)}${b.track_id == null ? "" : " #" + (b.track_id % 1000000)}`;
    const tw = ctx.measureText(label).width + 6, th = small ? 14 : 17;
    const ty = Y(b.y) - th < oy ? Y(b.y) : Y(b.y) - th;
    ctx.fillStyle = color; ctx.fillRect(X(b.x), ty, tw, th);
    ctx.fillStyle = "#000"; ctx.fillText(label, X(b.x) + 3, ty + th - 4);
  }
  if (editor) editor.decorate(ctx, X, Y, boxes || []);
}

// A live view: polls the camera's frame JSON and loads its JPEG when a new frame exists.
class LiveView {
  constructor(id, view, periodMs) {
    this.id = id; this.view = view; this.periodMs = periodMs;
    this.img = view.querySelector("img"); this.canvas = view.querySelector("canvas");
    this.placeholder = view.querySelector(".placeholder");
    this.info = { zones: [], lines: [] }; this.boxes = []; this.seq = null;
    this.timer = null; this.busy = false; this.editor = null;
    new ResizeObserver(() => this.redraw()).observe(view);
  }
  setInfo(info) { this.info = info; this.redraw(); }
  start() { if (!this.timer) { this.tick(); this.timer = setInterval(() => this.tick(), this.periodMs); } }
  stop() { clearInterval(this.timer); this.timer = null; }
  redraw() { drawOverlay(this.canvas, this.img, this.info, this.boxes, this.editor); }
  async tick() {
    if (this.busy) return;
    this.busy = true;
    try {
      const r = await getJSON(`/api/cameras/${enc(this.id)}/frame`);
      const f = r.frame;
      if (!f) { this.placeholder.textContent = "waiting for an analysed frame…"; return; }
      if (f.seq === this.seq) return;
      const next = new Image();
      await new Promise((ok, fail) => { next.onload = ok; next.onerror = fail; next.src = f.jpeg; });
      this.img.src = next.src;
      await this.img.decode().catch(() => {});
      this.seq = f.seq; this.boxes = f.boxes;
      this.img.dataset.seq = f.seq;
      this.img.dataset.boxes = f.boxes.length;
      this.placeholder.textContent = "";
      this.redraw();
    } catch (e) {
      // An image that fails to load rejects with an Event, not an Error.
      this.placeholder.textContent = "no picture: " + String((e && e.message) || "the frame did not load").slice(0, 120);
    } finally {
      this.busy = false;
    }
  }
}

function liveViewElement(cls) {
  return el("div", { class: cls }, el("img", { class: "frame", alt: "" }), el("canvas"), el("div", { class: "placeholder" }));
}

// ---- grid ------------------------------------------------------------------------------

async function gridPage() {
  const params = new URLSearchParams(location.search);
  let page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  const pager = el("div", { class: "pager" });
  const grid = el("div", { class: "grid" });
  main.replaceChildren(pager, grid);
  const tiles = new Map();
  // Only tiles on screen ask for frames: a camera nobody sees costs nothing.
  const observer = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const t = tiles.get(e.target.dataset.camera);
      if (t) e.isIntersecting ? t.live.start() : t.live.stop();
    }
  }, { rootMargin: "100px" });

  function tile(cam) {
    const view = liveViewElement("view");
    const caption = el("div", { class: "caption" });
    const node = el("div", { class: "tile", "data-camera": cam.id }, el("a", { href: `/camera/${enc(cam.id)}` }, view), caption);
    const t = { node, caption, live: new LiveView(cam.id, view, GRID_FRAME_MS) };
    tiles.set(cam.id, t);
    observer.observe(node);
    return t;
  }

  async function refresh() {
    const r = await getJSON(`/api/cameras?offset=${page * PAGE_SIZE}&limit=${PAGE_SIZE}`);
    const pages = Math.max(1, Math.ceil(r.total / PAGE_SIZE));
    if (page >= pages) { page = pages - 1; return refresh(); }
    const streaming = r.cameras.filter((c) => c.state === "streaming").length;
    summary.textContent = `${r.total} cameras`;
    const prev = el("button", { textContent: "‹ previous", disabled: page === 0, onclick: () => go(page - 1) });
    const next = el("button", { textContent: "next ›", disabled: page >= pages - 1, onclick: () => go(page + 1) });
    pager.replaceChildren(prev, el("span", { textContent: `page ${page + 1} of ${pages} · ${streaming} of ${r.cameras.length} shown streaming` }), next);
    const ids = new Set(r.cameras.map((c) => c.id));
    for (const [id, t] of tiles) if (!ids.has(id)) { t.live.stop(); observer.unobserve(t.node); t.node.remove(); tiles.delete(id); }
    r.cameras.forEach((cam, i) => {
      const t = tiles.get(cam.id) || tile(cam);
      if (grid.children[i] !== t.node) grid.insertBefore(t.node, grid.children[i] || null);
      t.live.setInfo(cam);
      t.caption.replaceChildren(...[
        el("a", { class: "id", href: `/camera/${enc(cam.id)}`, textContent: cam.id }),
        stateBadge(cam.state),
        el("span", { class: "fps", textContent: `in ${fmtFps(cam.input_fps)} fps · analysed ${fmtFps(cam.analysed_fps)} fps` }),
        cam.reason ? el("div", { class: "reason", textContent: cam.reason }) : null,
      ].filter(Boolean));
    });
  }
  function go(p) {
    page = p;
    history.replaceState(null, "", p ? `/?page=${p}` : "/");
    refresh().catch(showError);
  }
  await refresh();
  setInterval(() => refresh().catch(showError), STATE_MS);
}

// ---- zone and line editor (camera page) -------------------------------------------------
// Shapes are kept as the config writes them ([[cameras.zones]] / [[cameras.lines]] keys),
// edited on the picture, and saved through PUT /api/cameras/{id}/rules, which validates,
// persists and applies them like camera.update (see docs/CONSOLE.md).

const HANDLE_PX = 10;                      // how near a click must be to grab a point
const r4 = (v) => Math.round(Math.min(1, Math.max(0, v)) * 1e4) / 1e4;

class Editor {
  constructor(camera, live, panel, csrf, onSaved) {
    this.camera = camera; this.live = live; this.panel = panel; this.csrf = csrf; this.onSaved = onSaved;
    const rules = JSON.parse(JSON.stringify(camera.rules || { zones: [], lines: [] }));
    this.zones = rules.zones || []; this.lines = rules.lines || [];
    this.reference = camera.reference_point || "bottom_center";
    this.adding = null;                    // { kind: "zones" | "lines", index } while placing points
    this.drag = null;                      // { kind, index, point } while dragging
    this.last = null;                      // the point last grabbed (Delete removes it)
    this.problems = new Map();             // "zones:0" → [messages]
    this.status = "";
    const c = live.canvas;
    c.classList.add("editing");
    this.handlers = {
      pointerdown: (e) => this.down(e), pointermove: (e) => this.move(e), pointerup: () => this.up(),
      dblclick: (e) => this.remove(e),
    };
    for (const [k, f] of Object.entries(this.handlers)) c.addEventListener(k, f);
    this.onKey = (e) => {
      if ((e.key === "Delete" || e.key === "Backspace") && this.last && document.activeElement === document.body) this.deletePoint(this.last);
    };
    document.addEventListener("keydown", this.onKey);
    live.editor = this;
    this.render(); live.redraw();
  }

  close() {
    const c = this.live.canvas;
    for (const [k, f] of Object.entries(this.handlers)) c.removeEventListener(k, f);
    document.removeEventListener("keydown", this.onKey);
    c.classList.remove("editing");
    this.live.editor = null; this.live.redraw();
    this.panel.replaceChildren();
  }

  points(kind, i) { return kind === "zones" ? this.zones[i].polygon : this.lines[i].points; }

  // What drawOverlay draws: complete shapes only.
  drawable() {
    return { zones: this.zones.filter((z) => z.polygon.length), lines: this.lines.filter((l) => l.points.length === 2) };
  }

  // Handles on every point, the line being placed, and the live boxes' reference points.
  decorate(ctx, X, Y, boxes) {
    for (const b of boxes) {
      const py = this.reference === "center" ? b.y + b.h / 2 : b.y + b.h;
      ctx.beginPath(); ctx.arc(X(b.x + b.w / 2), Y(py), 4, 0, 2 * Math.PI);
      ctx.fillStyle = classColor(b.class_id); ctx.fill(); ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
    }
    for (const kind of ["zones", "lines"]) {
      this[kind].forEach((_, i) => {
        const active = this.adding && this.adding.kind === kind && this.adding.index === i;
        for (const [x, y] of this.points(kind, i)) {
          ctx.beginPath(); ctx.arc(X(x), Y(y), 5, 0, 2 * Math.PI);
          ctx.fillStyle = active ? "#ffe066" : "#fff"; ctx.fill();
          ctx.strokeStyle = kind === "zones" ? "#2a7fff" : "#ff4d4d"; ctx.lineWidth = 2; ctx.stroke();
        }
      });
    }
  }

  // Normalised picture coordinates of a pointer event on the canvas.
  at(e) {
    const { ox, oy, iw, ih } = frameRect(this.live.img);
    return [r4((e.offsetX - ox) / iw), r4((e.offsetY - oy) / ih)];
  }

  // The point within HANDLE_PX of the event, if any.
  hit(e) {
    const { ox, oy, iw, ih } = frameRect(this.live.img);
    let best = null, bestD = HANDLE_PX;
    for (const kind of ["zones", "lines"]) {
      this[kind].forEach((_, index) => this.points(kind, index).forEach(([x, y], point) => {
        const d = Math.hypot(ox + x * iw - e.offsetX, oy + y * ih - e.offsetY);
        if (d <= bestD) { bestD = d; best = { kind, index, point }; }
      }));
    }
    return best;
  }

  down(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    const h = this.hit(e);
    if (h) {
      this.drag = h; this.last = h;
      this.live.canvas.setPointerCapture(e.pointerId);
      return;
    }
    if (!this.adding) return;
    const pts = this.points(this.adding.kind, this.adding.index);
    pts.push(this.at(e));
    this.last = { ...this.adding, point: pts.length - 1 };
    if (this.adding.kind === "lines" && pts.length === 2) this.adding = null;
    this.changed();
  }

  move(e) {
    if (!this.drag) return;
    this.points(this.drag.kind, this.drag.index)[this.drag.point] = this.at(e);
    this.live.redraw();
  }

  up() { if (this.drag) { this.drag = null; this.changed(); } }

  remove(e) { const h = this.hit(e); if (h) this.deletePoint(h); }

  deletePoint(h) {
    const pts = this.points(h.kind, h.index);
    if (!pts || h.point >= pts.length) return;
    pts.splice(h.point, 1);
    this.last = null;
    this.changed();
  }

  changed() { this.render(); this.live.redraw(); }

  add(kind) {
    const n = this[kind].length + 1;
    if (kind === "zones") this.zones.push({ name: `zone-${n}`, polygon: [] });
    else this.lines.push({ name: `line-${n}`, points: [], directions: ["in", "out"] });
    this.adding = { kind, index: this[kind].length - 1 };
    this.status = kind === "zones" ? "Click on the picture to place the zone's corners, then Done." : "Click the line's two ends on the picture.";
    this.changed();
  }

  // The body of the PUT: config keys, optional ones only when set.
  body() {
    const classes = (v) => (Array.isArray(v) ? v : String(v || "").split(",")).map((c) => c.trim()).filter(Boolean);
    const zones = this.zones.map((z) => {
      const o = { name: z.name, polygon: z.polygon };
      if (z.loiter_seconds !== undefined && z.loiter_seconds !== "") o.loiter_seconds = Number(z.loiter_seconds);
      if (z.max_objects !== undefined && z.max_objects !== "") o.max_objects = Number(z.max_objects);
      const c = classes(z.classes); if (c.length) o.classes = c;
      return o;
    });
    const lines = this.lines.map((l) => {
      const o = { name: l.name, points: l.points, directions: l.directions };
      const c = classes(l.classes); if (c.length) o.classes = c;
      return o;
    });
    return { zones, lines };
  }

  async save() {
    this.adding = null; this.problems = new Map(); this.status = "Saving…"; this.render();
    let reply;
    try {
      const r = await fetch(`/api/cameras/${enc(this.camera.id)}/rules`, {
        method: "PUT", cache: "no-store",
        headers: { "Content-Type": "application/json", "X-Lookout-Csrf": this.csrf },
        body: JSON.stringify(this.body()),
      });
      reply = await r.json().catch(() => ({ ok: false, error: { message: `HTTP ${r.status}` } }));
    } catch (e) {
      reply = { ok: false, error: { message: String(e.message || e) } };
    }
    if (reply.ok) {
      this.status = reply.changed === false ? "Saved: nothing changed." :
        reply.restarted ? "Saved: the camera restarted with the new settings." : "Saved: applied without a restart.";
      this.render();
      this.onSaved(this.status);
      return;
    }
    // Each problem goes next to the shape it names (camera.zones[0]…), the rest on top.
    const general = [];
    for (const p of reply.problems || [(reply.error && reply.error.message) || "refused"]) {
      const m = /\b(zones|lines)\[(\d+)\]/.exec(p);
      const key = m ? `${m[1]}:${m[2]}` : null;
      if (key) { if (!this.problems.has(key)) this.problems.set(key, []); this.problems.get(key).push(p); }
      else general.push(p);
    }
    this.status = "Not saved: " + (general.join("; ") || "see the shapes below");
    this.render();
  }

  render() {
    const field = (obj, key, label, attrs) => el("label", {}, label + " ",
      el("input", { ...attrs, "data-field": key, value: obj[key] == null ? "" : Array.isArray(obj[key]) ? obj[key].join(", ") : obj[key],
        oninput: (e) => { obj[key] = e.target.value; this.live.redraw(); } }));
    const rows = [];
    for (const kind of ["zones", "lines"]) {
      this[kind].forEach((shape, i) => {
        const key = `${kind}:${i}`;
        const parts = [el("strong", { textContent: kind === "zones" ? "Zone" : "Line" }), field(shape, "name", "name", { size: 12 })];
        if (kind === "zones") {
          parts.push(field(shape, "loiter_seconds", "loiter s", { type: "number", min: 0, step: "any", style: "width:5em" }),
            field(shape, "max_objects", "max objects", { type: "number", min: 0, style: "width:4em" }));
        } else {
          const dirs = shape.directions;
          parts.push(el("label", {}, "→ arrow ", el("input", { "data-field": "direction0", size: 8, value: dirs[0], oninput: (e) => { dirs[0] = e.target.value; this.live.redraw(); } })),
            el("label", {}, "other way ", el("input", { "data-field": "direction1", size: 8, value: dirs[1], oninput: (e) => { dirs[1] = e.target.value; this.live.redraw(); } })),
            el("button", { type: "button", textContent: "⇄", title: "swap the line's ends (the arrow turns round)",
              onclick: () => { shape.points.reverse(); this.changed(); } }));
        }
        parts.push(field(shape, "classes", "classes", { size: 14, placeholder: "all" }));
        const done = this.adding && this.adding.kind === kind && this.adding.index === i;
        if (done && kind === "zones") parts.push(el("button", { type: "button", class: "done", textContent: "Done", onclick: () => { this.adding = null; this.status = ""; this.changed(); } }));
        parts.push(el("button", { type: "button", class: "delete", textContent: "Delete", onclick: () => { this[kind].splice(i, 1); this.adding = null; this.changed(); } }));
        const probs = this.problems.get(key) || [];
        rows.push(el("div", { class: "shape" + (done ? " active" : ""), "data-shape": key }, ...parts,
          ...probs.map((p) => el("div", { class: "problem", textContent: p }))));
      });
    }
    this.panel.replaceChildren(
      el("div", { class: "tools" },
        el("button", { type: "button", class: "add-zone", textContent: "+ zone", onclick: () => this.add("zones") }),
        el("button", { type: "button", class: "add-line", textContent: "+ line", onclick: () => this.add("lines") }),
        el("button", { type: "button", class: "save", textContent: "Save", onclick: () => this.save() }),
        el("button", { type: "button", class: "cancel", textContent: "Cancel", onclick: () => this.onSaved(null) })),
      el("p", { class: "muted", textContent: "Click to place points, drag a point to move it, double-click a point (or Delete) to remove it. Dots mark the point of each detection that zones and lines test." }),
      el("div", { class: "editor-status", textContent: this.status }),
      ...rows);
  }
}

// ---- camera page -----------------------------------------------------------------------

async function cameraPage(id) {
  const view = liveViewElement("view large");
  const editPanel = el("div", { class: "editor" });
  const editButton = el("button", { type: "button", class: "edit", textContent: "Edit zones and lines", hidden: true });
  const infoPanel = el("div", { class: "panel" });
  const chartPanel = el("div", { class: "panel chart" }, el("h2", { textContent: "Counts, last hour" }));
  const eventsList = el("div", { class: "events" });
  const eventsPanel = el("div", { class: "panel" }, el("h2", { textContent: "Recent events" }), eventsList);
  const changesList = el("div", { class: "changes" });
  eventsPanel.insertBefore(changesList, eventsList);
  main.replaceChildren(el("div", { class: "camera" }, el("div", {}, el("div", { class: "toolbar" }, editButton), view, editPanel, chartPanel),
    el("div", {}, infoPanel, eventsPanel)));
  const live = new LiveView(id, view, CAMERA_FRAME_MS);
  live.start();
  let editor = null, current = null;
  const session = await getJSON("/api/session").catch(() => ({ can_write: false }));
  editButton.hidden = !session.can_write;
  editButton.onclick = () => {
    if (editor || !current) return;
    editButton.disabled = true;
    editor = new Editor(current, live, editPanel, session.csrf, (status) => {
      editor.close(); editor = null; editButton.disabled = false;
      if (status) editPanel.replaceChildren(el("div", { class: "editor-status", textContent: status }));
      info().catch(showError);
    });
  };

  async function info() {
    const c = await getJSON(`/api/cameras/${enc(id)}`);
    current = c;
    live.setInfo(c);
    changesList.replaceChildren(...(c.changes || []).map((ch) => el("div", { class: "event change" },
      el("div", {}, el("div", { textContent: "settings changed" + (ch.restarted ? " (camera restarted)" : " (no restart)") }),
        el("div", { class: "muted", textContent: `by ${ch.by}` }), el("div", { class: "muted", textContent: ch.ts })))));
    summary.textContent = c.id;
    const rows = [
      ["state", stateBadge(c.state)],
      ["reason", c.reason || "–"],
      ["input / analysed fps", `${fmtFps(c.input_fps)} / ${fmtFps(c.analysed_fps)}`],
      ["frame size", c.width ? `${c.width} × ${c.height}` : "–"],
      ["stream", c.decoder ? `${c.codec} · ${c.decoder} · ${c.rtsp_client === "shared" ? "shared RTSP client" : "rtspsrc"}` : "–"],
      ["last analysed frame", c.last_frame || "–"],
      ["model", `${c.model.name} ${c.model.version}`],
      ["zones", c.zones.map((z) => z.name).join(", ") || "–"],
      ["lines", c.lines.map((l) => `${l.name} (${l.directions.join("/")})`).join(", ") || "–"],
    ];
    infoPanel.replaceChildren(el("h2", { textContent: c.id }),
      el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { textContent: k }), el("td", {}, v)))));
  }

  async function events() {
    const evs = await getJSON(`/api/cameras/${enc(id)}/events`);
    if (!evs.length) { eventsList.replaceChildren(el("p", { class: "muted", textContent: "No events yet." })); return; }
    eventsList.replaceChildren(...evs.map((e) => {
      const what = [e.object && `${e.object.class} #${e.object.track_id % 1000000}`,
        e.zone && `zone ${e.zone.name}`, e.line && `line ${e.line.name} → ${e.line.direction}`].filter(Boolean).join(" · ");
      const pic = e.snapshot ? el("img", { src: `/api/cameras/${enc(id)}/snapshots/${enc(e.snapshot.id)}`, alt: "", loading: "lazy", onerror() { this.remove(); } }) : null;
      return el("div", { class: "event" }, pic, el("div", {}, el("div", { textContent: e.type }),
        el("div", { class: "muted", textContent: what }), el("div", { class: "muted", textContent: e.ts })));
    }));
  }

  async function counts() {
    const msgs = await getJSON(`/api/cameras/${enc(id)}/counts`);
    chartPanel.replaceChildren(el("h2", { textContent: "Counts, last hour" }), countsChart(msgs));
  }

  await info();
  await Promise.all([events(), counts()]).catch(showError);
  setInterval(() => info().catch(showError), STATE_MS);
  setInterval(() => events().catch(showError), 5000);
  setInterval(() => counts().catch(showError), 15000);
}

// Line crossings per interval and zone occupancy at each interval's end, as polylines.
function countsChart(msgs) {
  if (!msgs.length) return el("p", { class: "muted", textContent: "No counts yet (they come every count_interval)." });
  const series = new Map();
  for (const m of msgs) {
    const t = Date.parse(m.interval.end);
    for (const [line, dirs] of Object.entries(m.lines || {}))
      for (const [dir, n] of Object.entries(dirs)) push(`${line} ${dir}`, t, n);
    for (const [zone, z] of Object.entries(m.zones || {})) push(`${zone} occupancy`, t, z.occupancy);
    // Per class, only classes seen at least once (a COCO model has 80).
    for (const [cls, n] of Object.entries(m.classes || {})) if (n > 0 || series.has(`${cls} present`)) push(`${cls} present`, t, n);
  }
  function push(k, t, v) { if (!series.has(k)) series.set(k, []); series.get(k).push([t, v]); }
  const now = Date.now(), t0 = now - 3600e3;
  const max = Math.max(1, ...[...series.values()].flat().map(([, v]) => v));
  const W = 600, H = 150, P = 20;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const X = (t) => P + ((t - t0) / 3600e3) * (W - 2 * P), Y = (v) => H - P - (v / max) * (H - 2 * P);
  const legend = el("div", { class: "legend" });
  const totals = el("table");
  [...series.entries()].forEach(([name, pts], i) => {
    const color = COLORS[i % COLORS.length];
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("points", pts.map(([t, v]) => `${X(t).toFixed(1)},${Y(v).toFixed(1)}`).join(" "));
    pl.setAttribute("fill", "none"); pl.setAttribute("stroke", color); pl.setAttribute("stroke-width", "2");
    svg.append(pl);
    legend.append(el("span", { style: `color:${color}`, textContent: `■ ${name}` }));
    const occupancy = name.endsWith("occupancy") || name.endsWith(" present");
    const total = occupancy ? Math.max(...pts.map(([, v]) => v)) : pts.reduce((a, [, v]) => a + v, 0);
    totals.append(el("tr", {}, el("th", { textContent: name }), el("td", { textContent: `${occupancy ? "max" : "total"} ${total}` })));
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", P); axis.setAttribute("y", H - 4); axis.setAttribute("fill", "#8a9099"); axis.setAttribute("font-size", "11");
  axis.textContent = `−60 min … now; max ${max}`;
  svg.append(axis);
  return el("div", {}, svg, legend, totals);
}

// ---- agent page ------------------------------------------------------------------------

async function agentPage() {
  async function render() {
    const s = await getJSON("/api/status");
    summary.textContent = s.status;
    const up = s.uptime_seconds, h = Math.floor(up / 3600), m = Math.floor((up % 3600) / 60);
    const kv = (rows) => el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { textContent: k }), el("td", {}, String(v)))));
    main.replaceChildren(
      el("div", { class: "panel" }, el("h2", { textContent: "Agent" }), kv([
        ["version", s.version], ["started", s.started], ["uptime", `${h} h ${m} min`],
        ["healthy", s.healthy ? "yes" : "NO: a worker thread died"], ["ready", s.ready ? "yes" : "no"],
        ["cameras", `${s.cameras.streaming} of ${s.cameras.total} streaming`],
        ["console frames encoded", s.console.frames_encoded]])),
      el("div", { class: "panel" }, el("h2", { textContent: "Models" }), el("table", {},
        el("tr", {}, el("th", { textContent: "name" }), el("th", { textContent: "version" }), el("th", { textContent: "runs on" }), el("th", { textContent: "sha256" })),
        ...s.models.map((mo) => el("tr", {}, el("td", { textContent: mo.name }), el("td", { textContent: mo.version }), el("td", { textContent: mo.provider || "" }), el("td", {}, el("code", { textContent: mo.sha256 })))))),
      el("div", { class: "panel" }, el("h2", { textContent: "MQTT and outbox" }), kv([
        ["MQTT", s.mqtt.connected ? "connected" : "not connected"], ["messages acknowledged", s.mqtt.acked],
        ["awaiting the broker", `${s.outbox.pending_messages} messages, ${(s.outbox.pending_bytes / 1024).toFixed(1)} KiB`],
        ["dropped (announced as delivery.gap)", s.outbox.dropped]])),
      ...(s.site ? [sitePanel(s.site)] : []),
    );
  }
  await render();
  setInterval(() => render().catch(showError), STATE_MS);
}

// The site of many gateways ([site]): its members and which gateway runs each site camera.
function sitePanel(site) {
  const th = (...names) => el("tr", {}, ...names.map((n) => el("th", { textContent: n })));
  const td = (...cells) => el("tr", {}, ...cells.map((c) => el("td", { textContent: String(c) })));
  const fence = { run: "running its site cameras", hold: "holding them (etcd has no leader)", stop: "stopped (lease not confirmed)" };
  const cams = Object.entries(site.assignment);
  const unassigned = Object.entries(site.unassigned);
  return el("div", { class: "panel", id: "site" }, el("h2", { textContent: "Site" }),
    el("p", { textContent: `leader ${site.leader || "none"}; this gateway (${site.agent}) is ${fence[site.fence] || site.fence}; ${site.moves} moves` }),
    el("table", { class: "site-members" }, th("gateway", "capacity", "load", "assigned", "running", "refused"),
      ...site.members.map((m) => td(m.agent + (m.agent === site.leader ? " (leader)" : ""), m.capacity, m.load, m.assigned, m.running,
        Object.entries(m.refused).map(([c, why]) => `${c}: ${why}`).join("; ") || "—"))),
    el("table", { class: "site-cameras" }, th("site camera", "runs on"),
      ...cams.map(([c, a]) => td(c, a)), ...unassigned.map(([c, why]) => td(c, `nowhere (${why})`))));
}

function showError(e) {
  summary.textContent = "⚠ " + e.message.slice(0, 200);
}

// ?token= has set the cookie by now: keep the token out of the address bar and history.
const query = new URLSearchParams(location.search);
if (query.has("token")) {
  query.delete("token");
  const rest = query.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
}

const path = location.pathname;
const route = path.startsWith("/camera/") ? cameraPage(decodeURIComponent(path.slice(8)))
  : path === "/agent" ? agentPage() : gridPage();
route.catch((e) => main.replaceChildren(el("p", { textContent: "Cannot load: " + e.message })));
