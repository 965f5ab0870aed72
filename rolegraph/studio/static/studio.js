// rolegraph studio: a little plain JavaScript. Text from runs is only ever set with textContent / value.
"use strict";

function loadModels(select) {
  const box = select.closest("form").querySelector(".endpoint-error");
  fetch(select.dataset.models).then((r) => r.json().then((body) => ({ ok: r.ok, body }))).then(({ ok, body }) => {
    if (!ok) {
      box.textContent = body.error;
      box.hidden = false;
      return;
    }
    const current = select.value;
    for (const name of body.models) {
      if (name === current) continue;
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.appendChild(option);
    }
  });
}

function loadState(button) {
  const area = button.parentElement.querySelector("textarea");
  fetch(button.dataset.state).then((r) => r.json()).then((body) => {
    area.value = body.error ? "" : JSON.stringify(body.state, null, 2);
    if (body.error) area.placeholder = body.error;
  });
}

function watchLive(url) {
  const note = document.getElementById("live-note");
  note.hidden = false;
  let seen = null;
  setInterval(() => {
    const editing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    fetch(url).then((r) => r.json()).then((body) => {
      if (seen !== null && body.version !== seen && !editing) location.reload();
      seen = body.version;
      if (!body.live) note.textContent = "run finished";
    });
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const details of document.querySelectorAll("details.fork")) {
    details.addEventListener("toggle", () => {
      const select = details.querySelector(".model-select");
      if (details.open && !select.dataset.loaded) {
        select.dataset.loaded = "1";
        loadModels(select);
      }
    });
  }
  for (const button of document.querySelectorAll(".load-state")) {
    button.addEventListener("click", () => loadState(button));
  }
  for (const form of document.querySelectorAll(".fork-form")) {
    form.addEventListener("submit", () => {
      const button = form.querySelector(".fork-submit");
      button.disabled = true;
      button.textContent = "replaying on the endpoint…";
    });
  }
  if (document.body.dataset.live) watchLive(document.body.dataset.live);
});
