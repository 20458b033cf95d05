// The review page: one day's actions as spans on a timeline per stream, and beside it a list of those that
// match the filters (paged as it scrolls), where each clip plays in place and is marked right or wrong.
// Everything comes from this server's /api/actions; the filters live in the address, so a reload keeps them.
"use strict";
const PAGE = 50;            // list rows fetched at a time
const DAY_PAGE = 500;       // the timeline fetches its day in pages this big (the API's most) ...
const DAY_PAGES = 20;       // ... and at most this many
const REFRESH_MS = 5000;    // today's actions are fetched again this often
const MAX_LANES = 6;        // a timeline row has a lane per overlapping action (tracked actors), up to this many
const RECENT_S = 60;        // an action that ended less than this ago may still be writing its clip

const $ = (id) => document.getElementById(id);
const dayInput = $("day"), streamSelect = $("stream"), labelSelect = $("label"), unreviewedBox = $("unreviewed");
const timeline = $("timeline"), legend = $("legend"), list = $("actions"), more = $("more"), statusLine = $("status");
const marks = $("marks"), relabel = $("relabel"), rightLabel = $("right-label");

const words = (label) => String(label).replace(/_/g, " ");
const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();
const pad = (n) => String(n).padStart(2, "0");
const now = () => Date.now() / 1000;

const day = { since: 0, until: 0, actions: new Map(), partial: false, generation: 0 };  // the timeline's
const rows = { items: new Map(), next: undefined, loading: null, failed: false, generation: 0 };  // next: cursor
const known = { streams: new Set(), labels: new Set() };  // filter choices: the config's streams and what was seen
const configured = new Set();  // the config's streams: a timeline row each, even on a day without actions
const spans = new Map();  // action id → its span on the timeline
let selected = null;
const video = document.createElement("video");
video.className = "clip";
Object.assign(video, { controls: true, muted: true, playsInline: true, preload: "auto" });

// ------------------------------------------------------------------ talking to the server

async function api(path, options = {}) {
  const response = await fetch(path, { cache: "no-store", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

const actionsUrl = (params) => `/api/actions?${new URLSearchParams(params)}`;

const HOLD_MS = 20000;  // an answer or an error stays this long before the day's count, followed, replaces it
let heldUntil = 0;

function say(text, error = false, hold = true) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", error);
  heldUntil = hold ? Date.now() + HOLD_MS : 0;
}

// ------------------------------------------------------------------ labels as colours

// Label colours: twelve that stay apart on the dark page; a label takes the one its name hashes to, or the next
// one no other label of this page holds (past twelve labels, a hue of its own).
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac", "#17becf", "#bcbd22"];
const colours = new Map();

function hashed(label) {  // FNV-1a of the name, mixed so that similar names differ
  let h = 0x811c9dc5;
  for (const c of String(label)) h = Math.imul(h ^ c.codePointAt(0), 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function colour(label) {
  if (!colours.has(label)) {
    const taken = new Set(colours.values()), h = hashed(label);
    const free = PALETTE.map((_, k) => PALETTE[(h + k) % PALETTE.length]).find((c) => !taken.has(c));
    colours.set(label, free ?? `hsl(${h % 360} 70% ${(h >>> 9) & 1 ? 72 : 52}%)`);
  }
  return colours.get(label);
}

// ------------------------------------------------------------------ filters and the address

function filters() {
  const f = { since: day.since, until: day.until };
  if (streamSelect.value) f.stream = streamSelect.value;
  if (labelSelect.value) f.label = labelSelect.value;
  if (unreviewedBox.checked) f.unreviewed = 1;
  return f;
}

const matches = (a) => (!streamSelect.value || a.stream === streamSelect.value)
  && (!labelSelect.value || a.label === labelSelect.value) && (!unreviewedBox.checked || !a.feedback);

function today() {
  const t = new Date();
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}`;
}

function setDay() {  // local midnight to the next one (23 or 25 hours where the clocks change)
  const [y, m, d] = dayInput.value.split("-").map(Number);
  day.since = new Date(y, m - 1, d).getTime() / 1000;
  day.until = new Date(y, m - 1, d + 1).getTime() / 1000;
}

function remember() {
  const params = new URLSearchParams({ day: dayInput.value });
  if (streamSelect.value) params.set("stream", streamSelect.value);
  if (labelSelect.value) params.set("label", labelSelect.value);
  if (unreviewedBox.checked) params.set("unreviewed", "1");
  history.replaceState(null, "", `?${params}`);
}

function setChoices(select, values, name) {
  const chosen = select.value;
  const options = [...values].sort().map((v) => new Option(name(v), v));
  select.replaceChildren(new Option("all", ""), ...options);
  select.value = chosen;
}

function learn(actions) {  // new streams and labels become filter choices (and right-label suggestions)
  const before = known.streams.size + known.labels.size;
  for (const a of actions) {
    known.streams.add(a.stream);
    known.labels.add(a.label);
    if (a.feedback && a.feedback.label) known.labels.add(a.feedback.label);
  }
  if (known.streams.size + known.labels.size > before) choices();
  [...known.labels].sort().forEach(colour);  // colours handed out in name order, not in the order seen
}

function choices() {
  setChoices(streamSelect, known.streams, String);
  setChoices(labelSelect, known.labels, words);
  $("labels").replaceChildren(...[...known.labels].sort().map((l) => new Option(words(l))));
}

// ------------------------------------------------------------------ the timeline

function lanes(actions) {  // action id → lane, so that actions that overlap in time sit one above the other
  const ends = [], lane = new Map();
  for (const a of [...actions].sort((x, y) => x.start_ts - y.start_ts)) {
    let i = ends.findIndex((end) => end <= a.start_ts);
    if (i < 0) i = ends.length < MAX_LANES ? ends.length : ends.indexOf(Math.min(...ends));
    ends[i] = a.end_ts ?? Infinity;
    lane.set(a.id, i);
  }
  return { lane, count: Math.max(1, ends.length) };
}

// The timeline shows the part of the day that holds its actions (all of it when there are none), so that the
// spans of a few minutes' actions are wide enough to see and click.
const view = { from: 0, to: 0 };
const share = (seconds) => `${(100 * seconds) / (view.to - view.from)}%`;  // of the timeline's width
const place = (ts) => share(ts - view.from);
const HOUR = 3600;
const STEPS = [10, 30, 60, 300, 600, 1800, HOUR, 3 * HOUR];  // seconds between named ticks: the finest naming ≤ 12
const FRAME = 300;  // the view starts and ends on these (5 minutes, from local midnight)

function onFrame(ts, up) {  // the 5-minute mark at or before (after, with `up`) a time
  const k = (ts - day.since) / FRAME;
  return day.since + (up ? Math.ceil(k) : Math.floor(k)) * FRAME;
}

function zoom() {  // the view: the user's (zoomed in or moved), else the part of the day that holds its actions
  if (userView) {
    const width = Math.min(userView.to - userView.from, day.until - day.since);
    const from = Math.min(Math.max(userView.from, day.since), day.until - width);
    Object.assign(view, { from, to: from + width });
    return;
  }
  const times = [...day.actions.values()].flatMap((a) => [a.start_ts, a.end_ts ?? now()]);
  if (!times.length) {
    Object.assign(view, { from: day.since, to: day.until });
    return;
  }
  const isToday = day.since <= now() && now() < day.until;
  const from = Math.max(day.since, onFrame(Math.min(...times), false));
  const to = Math.min(day.until, onFrame(Math.max(...times, isToday ? now() : -Infinity), true));
  Object.assign(view, { from, to: Math.max(to, Math.min(day.until, from + FRAME)) });
}

// Zooming in makes short spans wide enough to drag over precisely (teaching) and close actions apart: ctrl +
// wheel (a pinch) at the pointer, + and - keys or buttons at the middle; shift + wheel moves along the day; 0 or
// "fit" gives the automatic view back.
const MIN_VIEW_S = 60;  // the closest zoom: a minute across the row
let userView = null;

function timeUnder(x, track = timeline.querySelector(".track")) {  // the time under a pointer on a row
  const box = track.getBoundingClientRect(), part = Math.min(1, Math.max(0, (x - box.left) / box.width));
  return view.from + part * (view.to - view.from);
}

function zoomBy(factor, at = (view.from + view.to) / 2) {
  const width = Math.max(MIN_VIEW_S, Math.min((view.to - view.from) * factor, day.until - day.since));
  const from = at - ((at - view.from) / (view.to - view.from)) * width;
  userView = width >= day.until - day.since ? null : { from, to: from + width };
  drawTimeline();
}

function panBy(share) {  // a share of the view's width, later (> 0) or earlier
  const by = share * (view.to - view.from);
  userView = { from: view.from + by, to: view.to + by };
  drawTimeline();
}

function fit() {
  userView = null;
  drawTimeline();
}

timeline.addEventListener("wheel", (e) => {
  if (!(e.ctrlKey || e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY))) return;  // the page scrolls
  e.preventDefault();
  if (e.ctrlKey) {
    zoomBy(Math.exp(Math.max(-1, Math.min(1, e.deltaY / 200))), timeUnder(e.clientX));
  } else {
    panBy((e.shiftKey ? e.deltaY : e.deltaX) / 1000);
  }
}, { passive: false });
$("zoom-in").addEventListener("click", () => zoomBy(0.5));
$("zoom-out").addEventListener("click", () => zoomBy(2));
$("zoom-fit").addEventListener("click", fit);

function hours() {  // ticks across the view, named at the finest step that keeps them apart; the now line
  const layer = document.createElement("div");
  layer.className = "hours";
  const step = STEPS.find((s) => (view.to - view.from) / s <= 12) ?? STEPS[STEPS.length - 1];
  const parts = step === 10 ? 2 : 3, minor = step / parts;  // unnamed ticks between, on whole seconds
  for (let t = day.since + Math.ceil((view.from - day.since) / minor) * minor; t <= view.to; t += minor) {
    const tick = document.createElement("span");
    const named = Math.round((t - day.since) / minor) % parts === 0;
    tick.className = named ? "hour named" : "hour";
    tick.style.left = place(t);
    if (named && t < view.to) {
      const d = new Date(t * 1000);
      tick.textContent = step < HOUR ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : pad(d.getHours());
      if (step < 60) tick.textContent += `:${pad(d.getSeconds())}`;
    }
    layer.append(tick);
  }
  if (view.from <= now() && now() < view.to) {
    const line = document.createElement("span");
    line.className = "now";
    line.style.left = place(now());
    layer.append(line);
  }
  return layer;
}

function span(a, laneIndex) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = "span";
  el.dataset.id = a.id;
  el.style.background = colour(a.label);
  el.style.top = `calc(var(--lane) * ${laneIndex})`;
  el.title = `${words(a.label)} · ${where(a)} · ${clock(a.start_ts)} · ${lasted(a)}`;
  el.addEventListener("click", () => show(a.id));
  spans.set(a.id, el);
  paint(el, a);
  return el;
}

function paint(el, a) {  // the span's extent, and whether it is under way, matches, is reviewed, is selected
  el.style.left = place(a.start_ts);
  el.style.width = share(Math.min(a.end_ts ?? now(), view.to) - a.start_ts);
  el.classList.toggle("ongoing", a.end_ts === null);
  el.classList.toggle("out", !matches(a));
  el.classList.toggle("right", a.feedback?.verdict === "right");
  el.classList.toggle("wrong", a.feedback?.verdict === "wrong");
  el.classList.toggle("selected", a.id === selected);
}

function drawTimeline() {
  const byStream = new Map([...configured].map((s) => [s, []]));
  for (const a of day.actions.values()) {
    if (!byStream.has(a.stream)) byStream.set(a.stream, []);
    byStream.get(a.stream).push(a);
  }
  spans.clear();
  zoom();
  const streamRows = [...byStream.keys()].sort().map((name) => {
    const actions = byStream.get(name), { lane, count } = lanes(actions);
    const row = document.createElement("div");
    row.className = "row";
    const title = document.createElement("span");
    title.className = "stream";
    title.textContent = title.title = name;
    const track = document.createElement("div");
    track.className = "track";
    track.dataset.stream = name;
    track.style.height = `calc(var(--lane) * ${count})`;
    track.append(...actions.map((a) => span(a, lane.get(a.id))));
    row.append(title, track);
    return row;
  });
  const scale = document.createElement("div");
  scale.className = "scale";
  scale.append(hours());
  timeline.replaceChildren(scale, ...streamRows);
  if (!day.actions.size) timeline.append(note("no action on this day"));
  drawLegend();
}

function drawLegend() {  // the day's labels with their colours; a click filters by one (again: all)
  const labels = [...new Set([...day.actions.values()].map((a) => a.label))].sort();
  legend.replaceChildren(...labels.map((label) => {
    const item = document.createElement("button");
    item.type = "button";
    item.textContent = words(label);
    item.style.setProperty("--colour", colour(label));
    item.classList.toggle("chosen", label === labelSelect.value);
    item.addEventListener("click", () => {
      labelSelect.value = labelSelect.value === label ? "" : label;
      changed(false);
    });
    return item;
  }));
}

// ------------------------------------------------------------------ the list

function where(a) {
  return Number.isInteger(a.track) ? `${a.stream} #${a.track}` : a.stream;
}

function lasted(a) {
  const s = Math.max(0, Math.round((a.end_ts ?? now()) - a.start_ts));
  const text = s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s`
    : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return a.end_ts === null ? `under way, ${text}` : text;
}

function verdict(a) {
  if (!a.feedback) return "";
  if (a.feedback.verdict === "right") return "✓ right";
  return a.feedback.label ? `✗ wrong: is ${words(a.feedback.label)}` : "✗ wrong";
}

function row(a) {
  const li = document.createElement("li");
  li.className = "action";
  li.dataset.id = a.id;
  li.innerHTML = '<div class="media"></div><div class="info"><span class="label"></span><span class="score"></span>' +
    '<span class="where"></span><span class="time"></span><span class="lasted"></span><span class="verdict"></span></div>';
  li.addEventListener("click", (e) => { if (!e.target.closest(".marks, video")) choose(a.id, true); });
  fill(li, a);
  return li;
}

function fill(li, a) {  // the row's text and thumbnail from the newest record of its action
  li.style.setProperty("--colour", colour(a.label));
  li.querySelector(".label").textContent = words(a.label);
  li.querySelector(".score").textContent = `${Math.round(a.score * 100)}%`;
  li.querySelector(".where").textContent = where(a);
  li.querySelector(".time").textContent = clock(a.start_ts);
  li.querySelector(".lasted").textContent = lasted(a);
  li.querySelector(".verdict").textContent = verdict(a);
  li.classList.toggle("ongoing", a.end_ts === null);
  li.classList.toggle("right", a.feedback?.verdict === "right");
  li.classList.toggle("wrong", a.feedback?.verdict === "wrong");
  const media = li.querySelector(".media");
  if (media.contains(video) || media.querySelector("img.thumb")) return;
  li.classList.toggle("bare", !a.clip);  // no clip (none made, or not yet): no thumbnail, no player
  if (!a.clip) return media.replaceChildren();
  const thumb = document.createElement("img");  // (a recent one is tried again at each update: see follow)
  thumb.className = "thumb";
  thumb.alt = `clip of ${words(a.label)}`;
  thumb.loading = "lazy";
  thumb.onerror = () => thumb.replaceWith(note(now() - a.end_ts < RECENT_S ? "clip being written…" : "no clip file"));
  thumb.src = `/events/${encodeURIComponent(a.id)}/thumbnail.jpg`;
  media.replaceChildren(thumb);
}

const note = (text) => Object.assign(document.createElement("span"), { className: "note", textContent: text });
const shown = () => [...list.querySelectorAll("li.action")];  // the rows, top to bottom

function add(a, atEnd) {  // a row; newest first, as the API orders them (by start, then id)
  if (rows.items.has(a.id)) return;
  const li = row(a);
  const later = atEnd ? undefined : shown().find((other) => {
    const b = day.actions.get(other.dataset.id);
    return b.start_ts < a.start_ts || (b.start_ts === a.start_ts && b.id < a.id);
  });
  (later || more).before(li);
  rows.items.set(a.id, li);
}

function loadPage() {  // the list's next page; one at a time
  if (rows.loading || rows.next === null) return rows.loading;
  const generation = rows.generation, params = { ...filters(), limit: PAGE };
  if (rows.next) params.before = rows.next;
  more.textContent = "loading…";
  rows.loading = api(actionsUrl(params)).then((page) => {
    if (generation !== rows.generation) return;
    for (const a of page.actions) {
      day.actions.set(a.id, { ...day.actions.get(a.id), ...a });
      add(a, true);
    }
    learn(page.actions);
    rows.next = page.next;
  }).catch((err) => {
    if (generation !== rows.generation) return;
    say(err.message, true);
    rows.next = null;  // no retrying in a loop: a change of filters (or a reload) tries again
    rows.failed = true;
  }).finally(() => {
    if (generation !== rows.generation) return;
    rows.loading = null;
    more.textContent = rows.failed ? "the list could not be loaded" : rows.next !== null ? "more below…"
      : rows.items.size ? "end of the list" : "no action matches";
    scrolled.unobserve(more);
    scrolled.observe(more);  // still in view (a tall screen): the observer calls again for the next page
  });
  return rows.loading;
}

const scrolled = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadPage();
}, { rootMargin: "300px" });

function resetList() {
  rows.generation++;
  rows.loading = null;
  rows.next = undefined;
  rows.failed = false;
  for (const li of rows.items.values()) li.remove();
  rows.items.clear();
  choose(null);
  scrolled.unobserve(more);
  scrolled.observe(more);
}

// ------------------------------------------------------------------ choosing, playing, marking

function choose(id, play = false) {
  if (id !== selected) {
    stop();
    rows.items.get(selected)?.classList.remove("selected");
    spans.get(selected)?.classList.remove("selected");
    selected = id;
    marks.hidden = id === null;
    relabel.hidden = true;
    const li = rows.items.get(id);
    if (!li) return;
    li.classList.add("selected");
    spans.get(id)?.classList.add("selected");
    li.append(marks);
    li.scrollIntoView({ block: "nearest" });
  }
  if (play) toggle(true);
}

async function show(id) {  // a span clicked: its row, after loading the pages before it
  const a = day.actions.get(id);
  if (!a) return;
  if (!matches(a)) return say(`${words(a.label)} at ${clock(a.start_ts)} is outside the filters`);
  while (!rows.items.has(id) && rows.next !== null) {
    const generation = rows.generation;
    await loadPage();
    if (generation !== rows.generation) return;
  }
  choose(id, true);
}

function toggle(play) {  // the chosen action's clip: plays in its row (play false: pause it if it plays)
  const a = day.actions.get(selected), li = rows.items.get(selected);
  if (!a || !li || !a.clip) return;
  const media = li.querySelector(".media");
  if (!media.contains(video)) {
    video.src = `/events/${encodeURIComponent(a.id)}/clip.mp4`;
    media.replaceChildren(video);
    li.classList.add("playing");
  } else if (!play && !video.paused) {
    return video.pause();
  }
  video.play().catch(() => {});
}

function stop() {
  if (!video.parentElement) return;
  const li = video.closest("li");
  video.pause();
  video.removeAttribute("src");
  video.load();
  video.remove();
  li.classList.remove("playing");
  fill(li, day.actions.get(li.dataset.id));
}

function update(a) {  // a newer record of an action: the map, its row, its span
  day.actions.set(a.id, a);
  const li = rows.items.get(a.id);
  if (li) fill(li, a);
  const el = spans.get(a.id);
  if (el) paint(el, a);
}

async function judge(verdictName, label) {
  const id = selected;
  if (!id) return;
  const body = { verdict: verdictName };
  const typed = (label || "").trim();
  if (typed) body.label = [...known.labels].find((l) => words(l) === words(typed)) || typed;
  try {
    update(await api(`/api/actions/${encodeURIComponent(id)}/feedback`, { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
    relabel.hidden = true;
    rightLabel.value = "";
    rightLabel.blur();
  } catch (err) {
    say(err.message, true);
  }
}

function askLabel() {
  if (!selected) return;
  relabel.hidden = false;
  rightLabel.focus();
}

function step(by) {
  const ids = shown().map((li) => li.dataset.id), at = ids.indexOf(selected);
  const next = at < 0 ? 0 : at + by;
  if (next >= 0 && next < ids.length) choose(ids[next]);
  if (next >= ids.length - 3) loadPage();  // near the end: the next page, so j keeps going
}

document.addEventListener("keydown", (e) => {
  if (e.target === rightLabel && e.key === "Escape") {
    relabel.hidden = true;
    return rightLabel.blur();
  }
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input:not([type=checkbox]), select, #teach")) return;
  const keys = { j: () => step(1), k: () => step(-1), " ": () => toggle(false), r: () => judge("right"),
                 w: askLabel, "+": () => zoomBy(0.5), "=": () => zoomBy(0.5), "-": () => zoomBy(2), 0: fit };
  if (!keys[e.key]) return;
  e.preventDefault();  // space scrolls no page, and w is not typed into the field it opens
  keys[e.key]();
});
$("mark-right").addEventListener("click", () => judge("right"));
$("mark-wrong").addEventListener("click", askLabel);
marks.addEventListener("submit", (e) => {
  e.preventDefault();
  judge("wrong", rightLabel.value);
});

// ------------------------------------------------------------------ the day, and following it

async function fetchDay(since, generation) {  // the day's actions from `since` on (null: the day changed)
  const found = [];
  let before = null;
  for (let i = 0; i < DAY_PAGES; i++) {
    const params = { since, until: day.until, limit: DAY_PAGE };
    if (before) params.before = before;
    const page = await api(actionsUrl(params));
    if (generation !== day.generation) return null;
    found.push(...page.actions);
    if (!(before = page.next)) break;
  }
  day.partial = day.partial || before !== null;
  return found;
}

function counted(following = false) {
  if (following && Date.now() < heldUntil) return;
  let matching = 0;
  for (const a of day.actions.values()) matching += matches(a);
  const all = day.actions.size;
  say(`${all} action${all === 1 ? "" : "s"} on ${new Date(day.since * 1000).toDateString()}` +
      (day.partial ? " (the newest; the timeline shows no more)" : "") +
      (matching < all ? `, ${matching} match the filters` : ""), false, false);
}

async function loadDay() {
  const generation = ++day.generation;
  day.actions.clear();
  day.partial = false;
  try {
    const found = await fetchDay(day.since, generation);
    if (!found) return;
    for (const a of found) day.actions.set(a.id, a);
    learn(found);
    drawTimeline();
    counted();
  } catch (err) {
    say(err.message, true);
  }
}

async function follow() {  // today: new actions, and the ends (and clips) of those under way or just ended
  if (!(day.since <= now() && now() < day.until + 60) || rows.next === undefined) return;
  const generation = day.generation, all = [...day.actions.values()];
  const recent = all.filter((a) => a.end_ts === null || now() - a.end_ts < RECENT_S).map((a) => a.start_ts);
  const newest = Math.max(day.since, ...all.map((a) => a.start_ts));
  try {
    const found = await fetchDay(Math.min(newest, ...recent), generation);
    if (!found) return;
    learn(found);
    const first = shown()[0], top = first ? day.actions.get(first.dataset.id).start_ts : -Infinity;
    for (const a of found) {
      update(a);
      if (matches(a) && a.start_ts >= top && rows.next !== undefined) add(a, false);  // (after the first page)
    }
    drawTimeline();
    counted(true);
  } catch (err) {
    say(err.message, true);
  }
}

function grow() {  // each second: what is under way grows, and the now line moves (past the view: zoom out)
  if (!(day.since <= now() && now() < day.until)) return;
  if (!userView && now() >= view.to && view.to < day.until) {
    drawTimeline();
    return;
  }
  for (const a of day.actions.values()) {
    if (a.end_ts !== null) continue;
    const el = spans.get(a.id), li = rows.items.get(a.id);
    if (el) paint(el, a);
    if (li) li.querySelector(".lasted").textContent = lasted(a);
  }
  const line = timeline.querySelector(".now");
  if (line) line.style.left = place(now());
}

function changed(newDay) {
  remember();
  if (newDay) {
    userView = null;
    setDay();
    loadDay();
  } else {
    for (const [id, el] of spans) paint(el, day.actions.get(id));
    drawLegend();
    counted();
  }
  resetList();
}

async function start() {
  const params = new URLSearchParams(location.search);
  dayInput.value = /^\d{4}-\d{2}-\d{2}$/.test(params.get("day") || "") ? params.get("day") : today();
  if (params.get("stream")) known.streams.add(params.get("stream"));
  if (params.get("label")) known.labels.add(params.get("label"));
  try {
    for (const s of await api("/api/streams")) {
      known.streams.add(s.name);
      configured.add(s.name);
      for (const [label] of s.latest?.top ?? []) known.labels.add(label);  // the model's labels, as predicted
    }
  } catch (err) { /* the list says what is wrong */ }
  choices();
  streamSelect.value = params.get("stream") || "";
  labelSelect.value = params.get("label") || "";
  unreviewedBox.checked = params.get("unreviewed") === "1";
  for (const box of [streamSelect, labelSelect, unreviewedBox]) {
    box.addEventListener("change", () => {
      box.blur();  // so that j, k and space go to the list again
      changed(false);
    });
  }
  dayInput.addEventListener("change", () => { if (dayInput.value) changed(true); });
  changed(true);
  setInterval(follow, REFRESH_MS);
  setInterval(grow, 1000);
}

start();
