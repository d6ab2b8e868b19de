// The xCos page: pick or drop two images, POST them to the API, show the explanation.
// Plain browser JavaScript, no framework and nothing fetched from outside this server.
"use strict";

(function () {
  const API = "api/v1/";
  const REGION_NAMES = {
    left_eye: "eye (image left)",
    right_eye: "eye (image right)",
    nose: "nose",
    mouth: "mouth",
  };

  const $ = (id) => document.getElementById(id);
  const chosen = { a: null, b: null };
  const previews = { a: null, b: null };
  let authRequired = false;
  let maxUploadBytes = null;

  /** The facial region of one entry of most_different_regions, in words. */
  function regionName(entry) {
    if (entry.region && REGION_NAMES[entry.region]) {
      return REGION_NAMES[entry.region];
    }
    const [row, column] = entry.cell;
    return `cell in row ${row + 1}, column ${column + 1}`;  // counted from 1, top left
  }

  function percent(share) {
    return `${(100 * share).toFixed(1)}%`;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = $("error");
    box.textContent = "";
    box.hidden = true;
  }

  function headers() {
    const key = $("api-key").value.trim();
    return authRequired && key ? { Authorization: `Bearer ${key}` } : {};
  }

  function updateButton() {
    const keyMissing = authRequired && !$("api-key").value.trim();
    $("verify").disabled = !(chosen.a && chosen.b) || keyMissing || $("verify").dataset.busy === "1";
  }

  function setBusy(busy) {
    const button = $("verify");
    button.dataset.busy = busy ? "1" : "";
    button.setAttribute("aria-busy", busy ? "true" : "false");
    button.textContent = busy ? "Verifying…" : "Verify";
    $("status").textContent = busy ? "Comparing the two faces…" : "";
    updateButton();
  }

  /** Keep ``file`` as image ``which`` (a or b) and show its preview. */
  function choose(which, file) {
    const preview = $(`preview-${which}`);
    if (previews[which]) {
      URL.revokeObjectURL(previews[which]);
      previews[which] = null;
    }
    chosen[which] = file || null;
    $(`name-${which}`).textContent = file ? file.name : "";
    $(`drop-${which}`).classList.toggle("chosen", Boolean(file));
    preview.hidden = true;
    preview.removeAttribute("src");
    if (file && file.type.startsWith("image/")) {
      previews[which] = URL.createObjectURL(file);
      preview.src = previews[which];
      preview.hidden = false;
    }
    if (file && maxUploadBytes && file.size > maxUploadBytes) {
      showError(
        `image_${which}: ${file.name} is ${(file.size / 1048576).toFixed(1)} MB, ` +
          `over this server's limit of ${maxUploadBytes / 1048576} MB`
      );
      chosen[which] = null;
    } else {
      clearError();
    }
    updateButton();
  }

  function setUpDropZone(which) {
    const zone = $(`drop-${which}`);
    const input = $(`image-${which}`);
    const preview = $(`preview-${which}`);
    // A file the browser cannot show (not an image, or a format it lacks): no broken icon;
    // the server says what is wrong with it.
    preview.addEventListener("error", () => {
      preview.hidden = true;
    });
    input.addEventListener("change", () => choose(which, input.files[0]));
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const files = event.dataTransfer.files;
      if (files.length) {
        try {
          input.files = files; // keeps the input in step with what was dropped
        } catch (ignored) {
          // older browsers: the input keeps its own file, ``chosen`` holds the dropped one
        }
        choose(which, files[0]);
      }
    });
  }

  /** Show the base64 PNG ``base64`` in image ``id``; hide the image when there is none. */
  function showPng(id, base64) {
    const image = $(id);
    const figure = image.closest("figure");
    if (base64) {
      image.src = `data:image/png;base64,${base64}`;
    } else {
      image.removeAttribute("src");
    }
    (figure || image).hidden = !base64;
  }

  function showResult(result) {
    const decision = $("decision");
    decision.textContent = result.same ? "Same person" : "Different people";
    decision.className = `decision ${result.same ? "same" : "different"}`;
    $("score").textContent = result.score.toFixed(4);
    $("threshold").textContent = result.threshold.toFixed(4);
    $("cos").textContent = result.cos.toFixed(4);

    const faces = result.faces || {};
    const figures = result.figures || {};
    showPng("face-a", faces.a);
    showPng("face-b", faces.b);
    showPng("figure-paper", figures.paper);
    showPng("figure-overlay", figures.overlay);

    const list = $("regions");
    list.replaceChildren(
      ...result.most_different_regions.map((entry) => {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.className = "region";
        name.textContent = regionName(entry);
        const share = document.createElement("span");
        share.className = "share";
        share.textContent = `${percent(entry.share)} of the difference`;
        item.append(name, " – ", share);
        return item;
      })
    );
    $("result").hidden = false;
  }

  /** The JSON body of ``response``, or an Error carrying the API's {"error": ...} message. */
  async function readJson(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : `the server answered ${response.status}`;
      throw new Error(message);
    }
    return body;
  }

  async function verify(event) {
    event.preventDefault();
    if (!(chosen.a && chosen.b)) {
      return;
    }
    clearError();
    $("result").hidden = true;
    setBusy(true);
    const form = new FormData();
    form.append("image_a", chosen.a, chosen.a.name);
    form.append("image_b", chosen.b, chosen.b.name);
    try {
      const response = await fetch(`${API}verify?figure=both&faces=true`, {
        method: "POST",
        body: form,
        headers: headers(),
      });
      showResult(await readJson(response));
      if (authRequired && $("model").dataset.loaded !== "1") {
        loadModel();
      }
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      setBusy(false);
    }
  }

  function describeModel(info) {
    const parts = [];
    if (info.backbone) parts.push(`backbone ${info.backbone}`);
    if (Array.isArray(info.grid)) parts.push(`${info.grid[0]}×${info.grid[1]} grid`);
    if (info.input_size) parts.push(`${info.input_size} px faces`);
    if (typeof info.threshold === "number") {
      const source = info.threshold_source ? `, from ${info.threshold_source}` : "";
      parts.push(`threshold ${info.threshold.toFixed(4)}${source}`);
    }
    if (info.checkpoint || info.onnx) parts.push(info.onnx || info.checkpoint);
    if (info.runtime) parts.push(info.runtime);
    return `Model: ${parts.join(" · ")}`;
  }

  async function loadModel() {
    try {
      const info = await readJson(await fetch(`${API}model`, { headers: headers() }));
      $("model").textContent = describeModel(info);
      $("model").dataset.loaded = "1";
      if (info.max_upload_mb) {
        maxUploadBytes = info.max_upload_mb * 1048576;
      }
    } catch (error) {
      $("model").textContent = `Model: unknown (${error.message})`;
    }
  }

  async function start() {
    setUpDropZone("a");
    setUpDropZone("b");
    // A file dropped beside the zones must not make the browser leave the page to open it.
    for (const name of ["dragover", "drop"]) {
      window.addEventListener(name, (event) => event.preventDefault());
    }
    $("verify-form").addEventListener("submit", verify);
    $("api-key").addEventListener("input", updateButton);
    try {
      const health = await readJson(await fetch(`${API}health`));
      authRequired = Boolean(health.auth_required);
    } catch (error) {
      showError(`The server does not answer: ${error.message}`);
      markReady();
      return;
    }
    $("auth").hidden = !authRequired;
    if (authRequired) {
      $("model").textContent = "Model: shown once the API key is accepted";
    } else {
      loadModel();
    }
    updateButton();
    markReady();
  }

  /** Say on <body data-ready="1"> that the page knows what the server asks for (whether a key
   * is needed): until the health request answers, the key box and the button are not final,
   * so whoever drives the page (a test, an assistive tool) waits for this. */
  function markReady() {
    document.body.dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
