// The rater's page: fetches the current trial, shows it, sends the answer.
// All URLs are relative to the page (/s/TOKEN/), so the app works under a
// reverse proxy's prefix.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const ZOOMS = [1, 2, 4];
  let trial = null;        // the trial on screen
  let shownAt = null;      // performance.now() when its images were all loaded
  let busy = false;        // an answer is being sent
  let zoom = 0, flickerTimer = null, origin = "50% 50%";

  function show(section) {
    for (const id of ["intro", "trial", "end", "failure"]) $(id).hidden = id !== section;
  }

  function fail(message) {
    $("failure-text").textContent = message;
    show("failure");
  }

  function setProgress(state) {
    const fraction = state.total ? state.done / state.total : 0;
    $("bar").style.width = (100 * fraction).toFixed(1) + "%";
    $("count").textContent = state.done + " / " + state.total;
  }

  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, Object.assign({cache: "no-store"}, options));
    } catch (e) {
      throw new Error("The server cannot be reached (" + e.message + "). Check your connection and try again.");
    }
    let body = null;
    try { body = await response.json(); } catch (e) { /* an HTML error page */ }
    if (!response.ok) {
      const error = new Error((body && body.error) || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function loadImage(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("An image could not be loaded (" + url + ")."));
      img.src = url;
    });
  }

  async function present(state) {
    setProgress(state);
    trial = state.trial;
    if (!trial) {
      $("end-count").textContent = state.total;
      show("end");
      return;
    }
    shownAt = null;
    setButtons(false);
    stopFlicker();
    setReference(false);
    $("status").textContent = "Loading…";
    show("trial");
    await Promise.all([loadImage($("left"), trial.left), loadImage($("right"), trial.right),
                       loadImage($("ref-left"), trial.reference),
                       loadImage($("ref-right"), trial.reference)]);
    $("status").textContent = "";
    document.body.dataset.trial = trial.id;  // lets tests wait for a trial to be on screen
    shownAt = performance.now();
    setButtons(true);
  }

  function setButtons(enabled) {
    for (const id of ["choose-left", "choose-right"]) $(id).disabled = !enabled;
  }

  async function answer(choice) {
    if (!trial || shownAt === null || busy) return;
    busy = true;
    setButtons(false);
    const responseMs = Math.round(performance.now() - shownAt);
    delete document.body.dataset.trial;
    try {
      const state = await request("api/answer", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({trial: trial.id, choice: choice, response_ms: responseMs})});
      await present(state);
    } catch (e) {
      if (e.status === 409) {  // answered elsewhere (another tab): resync
        $("status").textContent = e.message;
        await present(await request("api/state"));
      } else {
        fail(e.message);
      }
    } finally {
      busy = false;
    }
  }

  function setReference(on) {
    $("trial").classList.toggle("showref", on);
    $("show-ref").classList.toggle("on", on);
    $("mode").textContent = on ? "(showing the reference)" : "";
  }

  function stopFlicker() {
    if (flickerTimer) clearInterval(flickerTimer);
    flickerTimer = null;
    $("flicker").classList.remove("on");
  }

  function toggleFlicker() {
    if (flickerTimer) { stopFlicker(); setReference(false); return; }
    let on = false;
    flickerTimer = setInterval(() => { on = !on; setReference(on); }, 500);
    $("flicker").classList.add("on");
  }

  function applyZoom() {
    const scale = ZOOMS[zoom];
    for (const img of document.querySelectorAll(".view img")) {
      img.style.transformOrigin = origin;
      img.style.transform = scale === 1 ? "" : "scale(" + scale + ")";
    }
    $("trial").classList.toggle("zoomed", scale > 1);
    $("zoom").textContent = "Zoom " + scale + "× (Z)";
  }

  // Both panes zoom around the same point of the image: the pointer's.
  for (const view of document.querySelectorAll(".view")) {
    view.addEventListener("mousemove", (event) => {
      const box = view.getBoundingClientRect();
      const x = Math.min(100, Math.max(0, 100 * (event.clientX - box.left) / box.width));
      const y = Math.min(100, Math.max(0, 100 * (event.clientY - box.top) / box.height));
      origin = x.toFixed(1) + "% " + y.toFixed(1) + "%";
      if (ZOOMS[zoom] > 1) applyZoom();
    });
    view.addEventListener("click", () => { zoom = (zoom + 1) % ZOOMS.length; applyZoom(); });
  }

  document.addEventListener("keydown", (event) => {
    if ($("trial").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "ArrowLeft") { event.preventDefault(); answer("left"); }
    else if (event.key === "ArrowRight") { event.preventDefault(); answer("right"); }
    else if (event.key === " ") { event.preventDefault(); if (!event.repeat) { stopFlicker(); setReference(true); } }
    else if (event.key === "f" || event.key === "F") toggleFlicker();
    else if (event.key === "z" || event.key === "Z") { zoom = (zoom + 1) % ZOOMS.length; applyZoom(); }
  });
  document.addEventListener("keyup", (event) => {
    if (event.key === " " && !flickerTimer) setReference(false);
  });

  $("choose-left").addEventListener("click", () => answer("left"));
  $("choose-right").addEventListener("click", () => answer("right"));
  $("flicker").addEventListener("click", toggleFlicker);
  $("zoom").addEventListener("click", () => { zoom = (zoom + 1) % ZOOMS.length; applyZoom(); });
  const ref = $("show-ref");
  ref.addEventListener("pointerdown", () => { stopFlicker(); setReference(true); });
  for (const type of ["pointerup", "pointerleave"]) {
    ref.addEventListener(type, () => { if (!flickerTimer) setReference(false); });
  }

  async function start() {
    try {
      await present(await request("api/state"));
    } catch (e) {
      fail(e.message);
    }
  }
  $("start").addEventListener("click", start);
  $("retry").addEventListener("click", start);

  // First the instructions (also when coming back), then the trials.
  request("api/state").then((state) => {
    setProgress(state);
    if (!state.trial) { $("end-count").textContent = state.total; show("end"); return; }
    if (state.done > 0) {
      $("resume").textContent = "Welcome back: " + state.done + " of " + state.total +
          " comparisons are done.";
      $("start").textContent = "Continue";
    }
    show("intro");
  }).catch((e) => fail(e.message));
})();
