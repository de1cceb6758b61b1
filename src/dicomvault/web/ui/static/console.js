// Behaviour shared by every console page. Loaded as a file because the
// Content-Security-Policy allows no inline scripts.
"use strict";

// A thumbnail that fails (an instance without an image, such as a structured
// report) is replaced by a short text instead of a broken-image icon.
document.addEventListener(
  "error",
  (event) => {
    const image = event.target;
    if (!(image instanceof HTMLImageElement) || !image.classList.contains("thumb-img")) {
      return;
    }
    const note = document.createElement("span");
    note.className = "no-image";
    note.textContent = "No image";
    image.replaceWith(note);
  },
  true,
);
