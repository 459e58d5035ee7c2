"use strict";
// The page: submit a job to /api/generate, poll /api/jobs/{id} for its progress and previews
// (each candidate's rows as they are sampled), then show its reranked PNGs in their place. Every
// run of this session stays in the gallery (in the page only, newest first).

const $ = (id) => document.getElementById(id);
const FIELDS = ["images", "candidates", "top_k", "top_p", "temperature", "guidance_scale", "seed"];
const SLIDER_DIGITS = { temperature: 2, guidance_scale: 1 };
const POLL_MS = 300;
const MANY_TILES = 8;  // more candidates than this are shown as small tiles while they are sampled

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readSettings() {
  const settings = { prompt: $("prompt").value.trim() };
  for (const id of FIELDS) {
    const value = $(id).value.trim();
    if (value !== "") settings[id] = Number(value);  // left out: the server's default
  }
  return settings;
}

function fillSettings(settings) {
  $("prompt").value = settings.prompt;
  for (const id of FIELDS) $(id).value = settings[id] ?? ($(id).type === "range" ? $(id).defaultValue : "");
  refreshLabels();
}

function refreshLabels() {
  for (const [id, digits] of Object.entries(SLIDER_DIGITS)) {
    $(`${id}-value`).textContent = Number($(id).value).toFixed(digits);
  }
  $("count").textContent = `${$("prompt").value.length} / ${$("prompt").maxLength}`;
}

function describe(s) {
  const images = s.images ?? 4;
  const parts = [`${images} image${images === 1 ? "" : "s"}`];
  if (s.candidates && s.candidates !== images) parts.push(`best of ${s.candidates}`);
  parts.push(`temperature ${Number(s.temperature ?? 1).toFixed(2)}`);
  if (s.top_k) parts.push(`top-k ${s.top_k}`);
  if (s.top_p) parts.push(`top-p ${s.top_p}`);
  if ((s.guidance_scale ?? 1) !== 1) parts.push(`guidance ${s.guidance_scale}`);
  parts.push(`seed ${s.seed ?? 0}`);
  return parts.join(" · ");
}

function showFormError(message) {
  $("form-error").textContent = message ?? "";
  $("form-error").hidden = !message;
}

function addCard(settings) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.querySelector(".prompt").textContent = settings.prompt;
  card.querySelector(".meta").textContent = describe(settings);
  card.querySelector(".reuse").addEventListener("click", () => fillSettings(settings));
  // One tile per candidate: each shows its preview while it is sampled, until the best images
  // replace them all.
  const images = card.querySelector(".images");
  const tiles = settings.candidates ?? settings.images ?? 4;
  images.classList.toggle("many", tiles > MANY_TILES);
  for (let i = 0; i < tiles; i++) {
    images.append(Object.assign(document.createElement("div"), { className: "tile placeholder" }));
  }
  $("gallery").prepend(card);
  $("empty").hidden = true;
  $("clear").hidden = false;
  return card;
}

function render(card, job) {
  const state = card.querySelector(".state");
  const percent = Math.round(job.progress * 100);
  card.querySelector(".bar").style.width = `${percent}%`;
  if (job.status === "queued") {
    state.textContent = job.queue_position === 1 ? "Queued: next up" : `Queued: ${job.queue_position - 1} ahead`;
  } else if (job.status === "running") {
    state.textContent = percent < 100 ? `Sampling… ${percent}%` : "Decoding and ranking…";
    showPreviews(card, job.previews);
  } else if (job.status === "done") {
    const ranked = job.scores ? " · best first by CLIP score" : "";
    const notes = job.warnings.length ? ` · ${job.warnings.join("; ")}` : "";
    state.textContent = `Done in ${job.elapsed_s.toFixed(job.elapsed_s < 1 ? 2 : 1)} s${ranked}${notes}`;
    showImages(card, job);
  } else {
    fail(card, job.error);
  }
}

// A preview URL changes when its picture does. The new picture is loaded off-screen and swapped
// in once it has arrived, so a tile never flickers or shows a broken image (a preview fetched as
// the job ends is refused, and the final images take its place anyway).
function showPreviews(card, urls) {
  const tiles = card.querySelectorAll(".images .tile");
  urls.forEach((url, i) => {
    const tile = tiles[i];
    if (!tile || tile.dataset.src === url) return;
    tile.dataset.src = url;
    const next = new Image();
    next.addEventListener("load", () => {
      if (tile.dataset.src !== url || card.classList.contains("finished")) return;
      next.alt = `candidate ${i + 1}, sampled so far`;
      tile.replaceChildren(next);
      tile.classList.remove("placeholder");
    });
    next.src = url;
  });
}

function showImages(card, job) {
  const prompt = card.querySelector(".prompt").textContent;
  const links = job.images.map((url, i) => {
    const link = Object.assign(document.createElement("a"), { href: url, target: "_blank" });
    const img = Object.assign(document.createElement("img"), { src: url, alt: `${prompt} (${i + 1})` });
    if (job.scores) img.title = `CLIP score ${job.scores[i].toFixed(3)}`;
    link.append(img);
    return link;
  });
  const images = card.querySelector(".images");
  images.classList.remove("many");
  images.replaceChildren(...links);
  card.classList.add("finished");
}

function fail(card, message) {
  card.querySelector(".state").textContent = message;
  card.querySelector(".images").replaceChildren();
  card.classList.add("failed", "finished");
}

async function follow(card, job) {
  while (true) {
    render(card, job);
    if (job.status !== "queued" && job.status !== "running") return;
    await sleep(POLL_MS);
    try {
      const response = await fetch(`/api/jobs/${job.id}`);
      const body = await response.json();
      if (!response.ok) return fail(card, body.error);
      job = body;
    } catch (err) {
      return fail(card, `lost contact with the server (${err.message})`);
    }
  }
}

async function submit(event) {
  event.preventDefault();
  if ($("new-seed").checked) randomSeed();
  const settings = readSettings();
  showFormError(null);
  $("generate").disabled = true;
  try {
    const response = await fetch("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(settings),
    });
    const body = await response.json();
    if (!response.ok) return showFormError(body.error);
    follow(addCard(settings), body);
  } catch (err) {
    showFormError(`cannot reach the server (${err.message})`);
  } finally {
    $("generate").disabled = false;
  }
}

function randomSeed() {
  $("seed").value = Math.floor(Math.random() * 2 ** 32);
}

// The sliders start at the pipeline's defaults; empty number fields leave theirs to the server.
function useSamplingDefaults(sampling) {
  for (const id of Object.keys(SLIDER_DIGITS)) $(id).value = $(id).defaultValue = sampling[id];
  $("top_k").placeholder = sampling.top_k ?? "off";
  $("top_p").placeholder = sampling.top_p ?? "off";
}

// The pipeline's own example prompts (from its model card): the first is the prompt box's
// placeholder, and each is a button that puts it in the box.
function showExamples(examples) {
  $("prompt").placeholder = examples[0] ?? "Describe a picture";
  for (const example of examples) {
    const button = Object.assign(document.createElement("button"), {
      type: "button", className: "secondary small example", textContent: example,
    });
    button.addEventListener("click", () => {
      $("prompt").value = example;
      refreshLabels();
      $("prompt").focus();
    });
    $("examples").append(button);
  }
  $("examples").hidden = examples.length === 0;
}

async function showModel() {
  try {
    const health = await (await fetch("/api/health")).json();
    const side = health.image_size, grid = health.grid_size;
    const name = Object.assign(document.createElement("strong"), { textContent: health.pipeline });
    $("model").replaceChildren(name, ` · ${side}×${side} px · ${grid}×${grid} codes · ` +
      `${health.clip ? "CLIP reranking" : "no CLIP"} · ${health.device}`);
    document.title = `DALL·E · ${health.pipeline}`;
    showExamples(health.examples);
    $("prompt").maxLength = health.limits.max_prompt_chars;
    $("images").max = health.limits.max_images;
    $("candidates").max = health.limits.max_candidates;
    useSamplingDefaults(health.sampling);
    if (!health.clip) {
      $("candidates").disabled = true;
      $("candidates").title = "This model has no CLIP to rerank candidates with";
    }
    refreshLabels();
  } catch (err) {
    $("model").textContent = `model info unavailable (${err.message})`;
  }
}

$("form").addEventListener("submit", submit);
$("form").addEventListener("input", refreshLabels);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});
$("random-seed").addEventListener("click", randomSeed);
$("clear").addEventListener("click", () => {
  $("gallery").replaceChildren();
  $("empty").hidden = false;
  $("clear").hidden = true;
});
refreshLabels();
showModel();
