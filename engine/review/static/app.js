// The review page: tiles grouped by cluster, True/False by click or keyboard, saved on every change.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
let state = null;      // the last answer of GET /api/round or of a POST
let focusIndex = 0;    // index into state.queries (display order)
let queue = Promise.resolve();  // changes are sent one after the other, in order

function $(id) { return document.getElementById(id); }

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function request(method, path, body) {
  const options = { method, headers: { "X-Connectile-Token": token } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    throw new Error(data.error || ("HTTP " + response.status));
  }
  return data;
}

function answerOf(roiId) {
  const value = state.answers[String(roiId)];
  return value === undefined ? null : value;
}

function tileFor(index) {
  return document.querySelector('.tile[data-index="' + index + '"]');
}

function paintTile(tile) {
  const answer = answerOf(Number(tile.dataset.roi));
  tile.classList.toggle("yes", answer === true);
  tile.classList.toggle("no", answer === false);
  tile.dataset.answer = answer === null ? "none" : String(answer);
  tile.setAttribute("aria-label", "ROI " + tile.dataset.roi + ": " + (answer === null ? "not reviewed" : String(answer)));
  tile.querySelector(".verdict").textContent = answer === null ? "?" : (answer ? "True" : "False");
}

function paint() {
  document.querySelectorAll(".tile").forEach(paintTile);
  $("progress").textContent = state.reviewed + " / " + state.total + " reviewed";
  $("undo").disabled = state.finished || !state.can_undo;
  $("finish").disabled = state.finished;
  $("finished-banner").hidden = !state.finished;
  document.body.classList.toggle("finished", state.finished);
  document.body.dataset.finished = String(state.finished);
}

function setFocus(index, scroll) {
  if (!state || state.queries.length === 0) return;
  focusIndex = Math.max(0, Math.min(state.queries.length - 1, index));
  document.querySelectorAll(".tile.focused").forEach((t) => t.classList.remove("focused"));
  const tile = tileFor(focusIndex);
  if (tile) {
    tile.classList.add("focused");
    if (scroll !== false) tile.focus({ preventScroll: false });
  }
}

function build() {
  $("round").textContent = state.round;
  $("run").textContent = state.run;
  document.title = "Review " + state.round + " - " + state.run;
  const report = $("report");
  report.hidden = !state.report;
  report.href = "/report/?token=" + encodeURIComponent(token);
  const main = $("clusters");
  main.replaceChildren();
  const sections = new Map();
  state.queries.forEach((q, index) => {
    let section = sections.get(q.cluster);
    if (!section) {
      section = document.createElement("section");
      section.className = "cluster";
      section.dataset.cluster = String(q.cluster);
      const title = document.createElement("h2");
      section.appendChild(title);
      const tiles = document.createElement("div");
      tiles.className = "tiles";
      section.appendChild(tiles);
      sections.set(q.cluster, section);
      main.appendChild(section);
    }
    const tile = document.createElement("div");
    tile.setAttribute("role", "button");
    tile.className = "tile";
    tile.dataset.roi = String(q.roi_id);
    tile.dataset.index = String(index);
    tile.dataset.cluster = String(q.cluster);
    tile.tabIndex = -1;
    const img = document.createElement("img");
    img.alt = "ROI " + q.roi_id;
    img.src = "/api/rois/" + q.roi_id + ".png?token=" + encodeURIComponent(token);
    img.width = 160;
    img.height = 160;
    const verdict = document.createElement("span");
    verdict.className = "verdict";
    const label = document.createElement("span");
    label.className = "roi";
    label.textContent = "#" + q.roi_id;
    tile.title = "ROI " + q.roi_id + ", object " + q.object_id + " at z,y,x " + q.z + "," + q.y + "," + q.x + ", cluster " + q.cluster;
    tile.append(img, verdict, label);
    tile.addEventListener("click", (event) => {
      event.preventDefault();
      setFocus(index, false);
      toggle(index);
    });
    section.querySelector(".tiles").appendChild(tile);
  });
  sections.forEach((section, cluster) => {
    const count = section.querySelectorAll(".tile").length;
    section.querySelector("h2").textContent = "Cluster " + cluster + " (" + count + (count === 1 ? " ROI)" : " ROIs)");
  });
  paint();
  setFocus(0, false);
}

function send(path, body) {
  // chain on the queue so that fast key presses reach the server in order
  queue = queue.then(async () => {
    try {
      const data = await request("POST", path, Object.assign({ round: state.round }, body));
      state = data;
      paint();
      setStatus("saved", false);
      return data;
    } catch (err) {
      setStatus("not saved: " + err.message, true);
      return null;
    }
  });
  return queue;
}

function answer(index, accepted) {
  if (!state || state.finished) return queue;
  const q = state.queries[index];
  if (!q) return queue;
  return send("/api/answer", { roi_id: q.roi_id, accepted });
}

function toggle(index) {
  if (!state || state.finished) return queue;
  const q = state.queries[index];
  if (!q) return queue;
  const current = answerOf(q.roi_id);
  return answer(index, current === null ? true : !current);
}

async function undo() {
  if (!state || state.finished) return;
  const data = await send("/api/undo", {});
  if (data && data.undone !== null && data.undone !== undefined) {
    const index = state.queries.findIndex((q) => q.roi_id === data.undone);
    if (index >= 0) setFocus(index);
  }
}

async function finish() {
  if (!state || state.finished) return;
  const left = state.total - state.reviewed;
  if (left > 0 && !window.confirm(left + " of " + state.total + " ROIs are not reviewed. Finish the round anyway?")) return;
  await send("/api/finish", {});
}

function onKey(event) {
  if (!state || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const target = event.target;
  if (target && (target.tagName === "BUTTON" || target.tagName === "A") && (key === " " || key === "Enter")) return;
  let handled = true;
  if (key === "ArrowRight" || key === "ArrowDown" || key === "j") setFocus(focusIndex + 1);
  else if (key === "ArrowLeft" || key === "ArrowUp" || key === "k") setFocus(focusIndex - 1);
  else if (key === "t" || key === "y") { answer(focusIndex, true); setFocus(focusIndex + 1); }
  else if (key === "f" || key === "n") { answer(focusIndex, false); setFocus(focusIndex + 1); }
  else if (key === " " || key === "Spacebar") toggle(focusIndex);
  else if (key === "u") undo();
  else handled = false;
  if (handled) event.preventDefault();
}

async function load() {
  try {
    state = await request("GET", "/api/round");
    build();
    setStatus("", false);
  } catch (err) {
    $("progress").textContent = "";
    setStatus("cannot load the round: " + err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("undo").addEventListener("click", () => undo());
  $("finish").addEventListener("click", () => finish());
  document.addEventListener("keydown", onKey);
  load();
});
