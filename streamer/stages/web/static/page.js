// The live page: one card per stream (its MJPEG feed, state and current action), and the action events,
// all kept current by server-sent events from /api/live. Nothing is fetched from outside this server.
"use strict";
const grid = document.getElementById("grid");
const eventsList = document.getElementById("events");
const readyBadge = document.getElementById("ready");
const cards = new Map();
const MAX_EVENTS = 100;

const words = (label) => String(label).replace(/_/g, " ");
const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();

function card(stream) {
  let c = cards.get(stream.name);
  if (c) return c;
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.stream = stream.name;
  const img = document.createElement("img");
  img.alt = `live view of ${stream.name}`;
  const feed = `/streams/${encodeURIComponent(stream.name)}.mjpeg`;
  img.src = feed;
  img.addEventListener("error", () => setTimeout(() => { img.src = `${feed}?retry=${Date.now()}`; }, 2000));
  const info = document.createElement("div");
  info.className = "info";
  info.innerHTML = '<span class="name"></span><span class="badge state"></span><span class="action"></span>';
  info.querySelector(".name").textContent = stream.name;
  el.append(img, info);
  el.addEventListener("click", () => {
    const large = !el.classList.contains("large");
    for (const other of cards.values()) other.el.classList.remove("large");
    el.classList.toggle("large", large);
    grid.classList.toggle("single", large);
  });
  grid.append(el);
  c = { el, state: info.querySelector(".state"), action: info.querySelector(".action") };
  cards.set(stream.name, c);
  return c;
}

function showStreams(streams) {
  for (const s of streams) {
    const c = card(s);
    c.state.textContent = s.state;
    c.state.className = `badge state ${s.state}`;
    c.state.title = s.detail || "";
    const top = s.latest && s.latest.top && s.latest.top[0];
    c.action.textContent = s.action ? `doing: ${words(s.action)}`
      : top ? `${words(top[0])} ${Math.round(top[1] * 100)}%` : "";
  }
}

function showEvent(line, atTop = true) {
  const empty = eventsList.querySelector(".empty");
  if (empty) empty.remove();
  const li = document.createElement("li");
  li.className = line.kind;
  li.innerHTML = '<span class="kind"></span><span class="where"></span><span class="time"></span>' +
                 '<span class="label"></span>';
  li.querySelector(".kind").textContent = line.kind;
  li.querySelector(".where").textContent = Number.isInteger(line.track) ? `${line.stream} #${line.track}` : line.stream;
  li.querySelector(".time").textContent = clock(line.frame_ts);
  li.querySelector(".label").textContent = `${words(line.label)} (${Math.round(line.score * 100)}%)`;
  li.dataset.id = line.id || "";
  if (line.kind === "end" && line.clip && line.id) addClip(li, line.id);
  if (atTop) eventsList.prepend(li); else eventsList.append(li);
  while (eventsList.children.length > MAX_EVENTS) eventsList.lastElementChild.remove();
}

// An ended action's clip: its thumbnail (retried until the clip is written, after its post-roll), and a
// click plays the clip in place.
function addClip(li, id) {
  const base = `/events/${encodeURIComponent(id)}`;
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.alt = "clip of this action (click to play)";
  thumb.hidden = true;  // shown once loaded; meanwhile a note
  const note = document.createElement("span");
  note.className = "pending";
  note.textContent = "clip being written…";
  let tries = 0;
  thumb.onload = () => { thumb.hidden = false; note.remove(); };
  thumb.onerror = () => {
    if (++tries < 30) setTimeout(() => { thumb.src = `${base}/thumbnail.jpg?t=${tries}`; }, 2000);
    else note.textContent = "no clip";
  };
  thumb.src = `${base}/thumbnail.jpg`;
  thumb.addEventListener("click", () => {
    const video = document.createElement("video");
    video.className = "clip";
    video.controls = true;
    video.autoplay = true;
    video.src = `${base}/clip.mp4`;
    thumb.replaceWith(video);
  });
  li.append(note, thumb);
}

async function checkReady() {
  try {
    const r = await fetch("/readyz", { cache: "no-store" });
    const body = await r.json();
    readyBadge.textContent = body.ready ? "ready" : "not ready";
    readyBadge.className = `badge ${body.ready ? "ready" : "notready"}`;
    readyBadge.title = (body.not_ready || []).join("\n");
  } catch (e) {
    readyBadge.textContent = "server unreachable";
    readyBadge.className = "badge notready";
  }
}

const live = new EventSource("/api/live");
live.addEventListener("hello", (e) => {
  const data = JSON.parse(e.data);
  showStreams(data.streams);
  eventsList.innerHTML = '<li class="empty">no action yet</li>';
  for (const line of data.events) showEvent(line, false);
  for (const a of data.earlier || []) {  // the history's, from before this server started: as their end lines
    showEvent({kind: a.end_ts === null ? "start" : "end", stream: a.stream, track: a.track, label: a.label,
               frame_ts: a.end_ts === null ? a.start_ts : a.end_ts, score: a.score, id: a.id, clip: a.clip}, false);
  }
});
live.addEventListener("streams", (e) => showStreams(JSON.parse(e.data)));
live.addEventListener("event", (e) => {
  const line = JSON.parse(e.data);
  showEvent(line);
  const c = cards.get(line.stream);  // the card follows at once, not at the next stream list
  if (!c) return;
  if (Number.isInteger(line.track)) {  // a tracked actor's: the card shows the newest start of any of them
    if (line.kind === "start") c.action.textContent = `#${line.track} ${words(line.label)}`;
  } else {
    c.action.textContent = line.kind === "start" ? `doing: ${words(line.label)}` : "";
  }
});
checkReady();
setInterval(checkReady, 2000);
