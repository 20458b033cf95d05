// Teaching from the review page (issue 24): drag along a stream's row to choose a span, or choose an action and
// press "teach as…", name what it shows, and Teach: the server trains the label on the windows it kept
// (POST /api/teach) and the workers use it from their next batch. Clip files from this computer teach the same
// way (sent as a form; the server reads them with the checkpoint). Below the legend: the taught labels, each with
// forget, and the earlier versions to go back to. Loaded after review.js, whose timeline, view and helpers it uses.
"use strict";
const teachForm = $("teach"), teachWhat = $("teach-what"), teachLabel = $("teach-label");
const taughtBox = $("taught"), taughtList = $("taught-labels"), versionList = $("versions");
const teachActor = $("teach-actor");
const filesForm = $("teach-files"), filesLabel = $("teach-files-label"), filesInput = $("teach-clips");
const MIN_SPAN_S = 1;  // a shorter drag is a click
let example = null;    // what Teach teaches from: {stream, from, to} or {action}

const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body) });

const timeAt = (stream, x) => timeUnder(x, trackOf(stream));  // on a stream's row (as it is drawn now)

const trackOf = (stream) => [...timeline.querySelectorAll(".track")].find((t) => t.dataset.stream === stream);

function band() {  // the chosen span on its row (the rows are drawn again as the day is followed)
  timeline.querySelectorAll(".band").forEach((el) => el.remove());
  if (!example?.stream) return;
  const track = trackOf(example.stream);
  if (!track) return;
  const el = document.createElement("div");
  el.className = "band";
  el.style.left = place(example.from);
  el.style.width = share(example.to - example.from);
  track.append(el);
}

function offer(chosen, what) {
  example = chosen;
  teachWhat.textContent = what;
  askActor([]);
  teachForm.hidden = false;
  band();
  teachLabel.focus();
}

function cancel() {
  example = null;
  teachForm.hidden = true;
  band();
}

// A drag along a row chooses a span, over the actions drawn there too (a press that hardly moves stays a click,
// which selects an action). The rows are drawn again while a drag goes on (the day is followed every few seconds):
// the drag listens on the document, and each move reads the row of its stream as drawn then.
const DRAG_PX = 4;

timeline.addEventListener("pointerdown", (e) => {
  const track = e.target.closest(".track");
  if (!track || e.button !== 0) return;
  const stream = track.dataset.stream, from = timeAt(stream, e.clientX), x0 = e.clientX;
  let dragging = false;
  const drag = (m) => {
    dragging ||= Math.abs(m.clientX - x0) > DRAG_PX;
    if (!dragging) return;
    const t = timeAt(stream, m.clientX);
    example = { stream, from: Math.min(from, t), to: Math.max(from, t) };
    band();
  };
  const done = (u) => {
    document.removeEventListener("pointermove", drag);
    document.removeEventListener("pointerup", done);
    drag(u);
    if (!dragging) return;
    if (example.to - example.from < MIN_SPAN_S) return cancel();
    offerSpan(example);
  };
  document.addEventListener("pointermove", drag);
  document.addEventListener("pointerup", done);
});

function askActor(actors) {  // [{track, windows}]: a span of a tracked stream with several actors in it
  teachActor.replaceChildren(...actors.map((a) => new Option(`actor #${a.track} (${a.windows} windows)`, a.track)));
  teachActor.hidden = actors.length < 2;  // one actor: the server takes it
}

async function offerSpan(span) {  // offered at once; then says how much it kept, and on a tracked stream whose
  const what = `${span.stream}, ${clock(span.from)} to ${clock(span.to)} (${Math.round(span.to - span.from)} s)`;
  offer(span, `${what} shows`);
  let kept;
  try {
    kept = await api(`/api/teach/span?${new URLSearchParams({ stream: span.stream, from: span.from, to: span.to })}`);
  } catch (err) {
    return say(err.message, true);
  }
  if (example !== span) return;  // another drag since
  const actors = kept.whole ? [] : kept.actors.sort((a, b) => b.windows - a.windows);
  const count = (n) => `${n} window${n === 1 ? "" : "s"}`;
  teachWhat.textContent = actors.length > 1 ? `${what}: whose action?` :
    actors.length ? `${what}, actor #${actors[0].track} (${count(actors[0].windows)} kept), shows` :
    `${what}, ${count(kept.whole)} kept, shows`;
  askActor(actors);
}

new MutationObserver(band).observe(timeline, { childList: true });

$("teach-this").addEventListener("click", () => {
  const a = selected && day.actions.get(selected);
  if (a) offer({ action: a.id }, `this ${words(a.label)} (${where(a)}, ${clock(a.start_ts)}) shows`);
});
$("teach-cancel").addEventListener("click", cancel);
teachLabel.addEventListener("keydown", (e) => { if (e.key === "Escape") cancel(); });

teachForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!example) return;
  const label = asLabel(teachLabel.value);
  const span = teachActor.hidden ? example : { ...example, track: Number(teachActor.value) };
  const body = example.action ? { label, actions: [example.action] } : { label, spans: [span] };
  if (await teachFrom(label, { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) })) {
    teachLabel.value = "";
    cancel();
  }
});

filesForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const label = asLabel(filesLabel.value), form = new FormData();
  form.append("label", label);
  for (const file of filesInput.files) form.append("clip", file, file.name);
  if (await teachFrom(label, { method: "POST", body: form }, `${filesInput.files.length} clip(s)`)) {
    filesForm.reset();
  }
});

const asLabel = (typed) => typed.trim().replace(/\s+/g, "_");  // typed as words, kept as a label

async function teachFrom(label, request, what = "") {  // true when it was taught
  say(`teaching ${words(label)}${what ? ` from ${what}` : ""}…`);
  try {
    const got = await api("/api/teach", request);
    const check = got.checks[label];
    say(`taught ${words(label)} from ${got.examples} windows (and ${got.negatives} others) in ` +
        `${got.seconds.toFixed(1)} s` + (check ? `; held out: precision ${check.precision.toFixed(2)}, ` +
        `recall ${check.recall.toFixed(2)}` : "") + ". The workers use it from their next batch.");
    known.labels.add(label);
    choices();
    showTaught();
    return true;
  } catch (err) {
    say(err.message, true);
    return false;
  }
}

async function showTaught() {
  let state;
  try {
    state = await api("/api/teach");
  } catch (err) {
    return;  // no store: nothing to teach from, and the box stays hidden
  }
  taughtBox.hidden = false;
  taughtList.replaceChildren(...state.labels.map((label) => {
    const li = document.createElement("li"), forget = document.createElement("button"), check = state.checks[label];
    li.style.setProperty("--colour", colour(label));
    li.textContent = words(label) + (check ? ` · held out: precision ${check.precision.toFixed(2)}, ` +
                                             `recall ${check.recall.toFixed(2)}` : "");
    forget.type = "button";
    forget.textContent = "forget";
    forget.addEventListener("click", () => change("/api/teach/forget", { label }, `forgot ${words(label)}`));
    li.append(forget);
    return li;
  }));
  if (!state.labels.length) taughtList.replaceChildren(note("none yet: drag along a stream, name what it shows"));
  versionList.replaceChildren(...state.versions.map((v) => {
    const li = document.createElement("li"), back = document.createElement("button");
    li.textContent = `${v.version}: ${v.note} (${v.labels.map(words).join(", ") || "no taught labels"}) `;
    back.type = "button";
    back.textContent = "go back to this";
    back.hidden = v.version === state.version;
    back.addEventListener("click", () => change("/api/teach/revert", { version: v.version },
                                                `back to version ${v.version}`));
    li.append(back);
    return li;
  }));
}

async function change(path, body, done) {
  try {
    await post(path, body);
    say(`${done}. The workers follow from their next batch.`);
    showTaught();
  } catch (err) {
    say(err.message, true);
  }
}

showTaught();
