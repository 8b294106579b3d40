// cifarlab serve: sortable and filterable tables, and the runs that are still training updating themselves.
"use strict";

function cellValue(row, column, numeric) {
  const cell = row.children[column];
  const text = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (!numeric) return text.toLowerCase();
  const number = parseFloat(text);
  return Number.isNaN(number) ? -Infinity : number;
}

function makeSortable(table) {
  table.querySelectorAll("thead th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      const numeric = th.dataset.type === "number";
      const ascending = !th.classList.contains("asc");
      table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(ascending ? "asc" : "desc");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = cellValue(a, column, numeric), y = cellValue(b, column, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
}

function makeFilter(input, table) {
  const shown = document.getElementById("shown");
  input.addEventListener("input", function () {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    let count = 0;
    Array.from(table.tBodies[0].rows).forEach(function (row) {
      const text = row.textContent.toLowerCase();
      const keep = words.every(function (w) { return text.indexOf(w) !== -1; });
      row.hidden = !keep;
      if (keep) count += 1;
    });
    if (shown) shown.textContent = String(count);
  });
}

// While some run trains, ask /api/runs every few seconds; show its epochs, and reload once it has finished.
function followTraining() {
  const training = document.querySelectorAll('tr[data-status="training"], #training');
  if (!training.length) return;
  const ids = Array.from(training).map(function (el) { return el.dataset.id; });
  window.setInterval(function () {
    fetch("/api/runs").then(function (r) { return r.json(); }).then(function (runs) {
      runs.forEach(function (run) {
        if (ids.indexOf(run.id) === -1) return;
        if (run.status !== "training") { window.location.reload(); return; }
        document.querySelectorAll("tr[data-status]").forEach(function (row) {
          if (row.dataset.id !== run.id) return;
          row.querySelector(".epochs").textContent = run.epochs_done + "/" + (run.epochs === null ? "?" : run.epochs);
        });
        const note = document.getElementById("training");
        if (note && note.dataset.id === run.id && note.dataset.done !== String(run.epochs_done)) {
          if (note.dataset.done !== undefined) window.location.reload();
          note.dataset.done = String(run.epochs_done);
        }
      });
    }).catch(function () { /* the server stopped; try again at the next tick */ });
  }, 3000);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  const filter = document.getElementById("filter"), runs = document.getElementById("runs");
  if (filter && runs) makeFilter(filter, runs);
  followTraining();
});
