// Image viewer of the instance page: window and level (inputs or drag), zoom,
// frame slider; and the filter of the tag table.
"use strict";

(function () {
  // Pixels of pointer movement per window unit are scaled to the window width,
  // so a drag across the image changes the window by about its own size.
  const DRAG_SENSITIVITY = 1 / 256;
  const MIN_WIDTH = 1;

  function setUpViewer() {
    const controls = document.getElementById("viewer-controls");
    const viewer = document.getElementById("viewer");
    const image = document.getElementById("viewer-image");
    if (!controls || !viewer || !image) {
      return;
    }
    const base = controls.dataset.base;
    const frames = Number(controls.dataset.frames || "1");
    const initialCenter = controls.dataset.center;
    const initialWidth = controls.dataset.width;
    const center = document.getElementById("window-center");
    const width = document.getElementById("window-width");
    const zoom = document.getElementById("zoom");
    const zoomOutput = document.getElementById("zoom-output");
    const frame = document.getElementById("frame");
    const frameOutput = document.getElementById("frame-output");
    const status = document.getElementById("viewer-status");
    const reset = document.getElementById("viewer-reset");
    let requested = "";
    let loading = false;
    let pending = false;

    function currentFrame() {
      return frame ? Number(frame.value) : 1;
    }

    function imageUrl() {
      let url = `${base}/${currentFrame()}`;
      const c = Number(center.value);
      const w = Number(width.value);
      if (center.value !== "" && width.value !== "" && Number.isFinite(c) && w >= MIN_WIDTH) {
        url += `?window=${encodeURIComponent(`${c},${w}`)}`;
      }
      return url;
    }

    // Loads one image at a time; a change during a load is sent when it ends.
    function load() {
      const url = imageUrl();
      if (url === requested) {
        return;
      }
      if (loading) {
        pending = true;
        return;
      }
      loading = true;
      requested = url;
      status.textContent = "Loading…";
      image.src = url;
      image.alt = `Frame ${currentFrame()} of ${frames}`;
    }

    image.addEventListener("load", () => {
      loading = false;
      status.textContent = "";
      if (pending) {
        pending = false;
        load();
      }
    });
    image.addEventListener("error", () => {
      loading = false;
      pending = false;
      status.textContent = "The image could not be loaded. Check the window values and try again.";
    });
    requested = image.getAttribute("src");

    function applyZoom() {
      viewer.style.setProperty("--zoom", zoom.value);
      zoomOutput.textContent = `${Math.round(Number(zoom.value) * 100)}%`;
    }

    center.addEventListener("change", load);
    width.addEventListener("change", load);
    zoom.addEventListener("input", applyZoom);
    if (frame) {
      frame.addEventListener("input", () => {
        frameOutput.textContent = `${frame.value} / ${frames}`;
        load();
      });
    }
    reset.addEventListener("click", () => {
      center.value = initialCenter;
      width.value = initialWidth;
      zoom.value = "1";
      applyZoom();
      load();
    });

    // Drag: horizontal movement changes the width, vertical the center.
    let drag = null;
    viewer.addEventListener("pointerdown", (event) => {
      if (center.value === "" || width.value === "") {
        return; // a color image has no window
      }
      drag = {
        x: event.clientX,
        y: event.clientY,
        center: Number(center.value),
        width: Number(width.value),
      };
      viewer.setPointerCapture(event.pointerId);
      event.preventDefault();
    });
    viewer.addEventListener("pointermove", (event) => {
      if (!drag) {
        return;
      }
      const scale = Math.max(drag.width, MIN_WIDTH) * DRAG_SENSITIVITY;
      const newWidth = Math.max(MIN_WIDTH, drag.width + (event.clientX - drag.x) * scale);
      const newCenter = drag.center + (event.clientY - drag.y) * scale;
      width.value = String(Math.round(newWidth * 100) / 100);
      center.value = String(Math.round(newCenter * 100) / 100);
      load();
    });
    const endDrag = () => {
      drag = null;
    };
    viewer.addEventListener("pointerup", endDrag);
    viewer.addEventListener("pointercancel", endDrag);

    // Keyboard: arrows change the frame, + and - the zoom.
    viewer.addEventListener("keydown", (event) => {
      if (frame && (event.key === "ArrowRight" || event.key === "ArrowLeft")) {
        const step = event.key === "ArrowRight" ? 1 : -1;
        frame.value = String(Math.min(frames, Math.max(1, currentFrame() + step)));
        frame.dispatchEvent(new Event("input"));
        event.preventDefault();
      } else if (event.key === "+" || event.key === "=" || event.key === "-") {
        const step = event.key === "-" ? -0.25 : 0.25;
        zoom.value = String(Math.min(8, Math.max(0.25, Number(zoom.value) + step)));
        applyZoom();
        event.preventDefault();
      }
    });
    viewer.addEventListener(
      "wheel",
      (event) => {
        const step = event.deltaY < 0 ? 0.25 : -0.25;
        zoom.value = String(Math.min(8, Math.max(0.25, Number(zoom.value) + step)));
        applyZoom();
        event.preventDefault();
      },
      { passive: false },
    );
    controls.addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
  }

  function setUpTagFilter() {
    const input = document.getElementById("tag-filter");
    const table = document.getElementById("tag-table");
    if (!input || !table) {
      return;
    }
    const rows = Array.from(table.tBodies[0].rows);
    input.addEventListener("input", () => {
      const needle = input.value.trim().toLowerCase();
      for (const row of rows) {
        row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpViewer();
    setUpTagFilter();
  });
})();
