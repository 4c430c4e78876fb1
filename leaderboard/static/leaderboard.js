// mtlbench leaderboard: sortable tables, the eps and profile selectors, the per-task toggle. No dependencies.
(function () {
  "use strict";
  function value(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) v = cell.textContent.trim();
    var n = parseFloat(v);
    return (v !== "" && !isNaN(n) && isFinite(v)) ? n : v.toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc;
    if (th.classList.contains("asc")) asc = false;
    else if (th.classList.contains("desc")) asc = true;
    else asc = th.getAttribute("data-first") !== "desc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[index]), y = value(b.cells[index]);
      var empty = function (z) { return z === "" || z === "–"; };
      if (empty(x) || empty(y)) return empty(x) - empty(y);
      if (x < y) return asc ? -1 : 1;
      if (x > y) return asc ? 1 : -1;
      return 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(asc ? "asc" : "desc");
  }
  function showEps(select) {
    var group = select.getAttribute("data-group"), eps = select.value;
    document.querySelectorAll('[data-group="' + group + '"][data-eps]').forEach(function (el) {
      el.hidden = el.getAttribute("data-eps") !== eps;
    });
  }
  function showChoice(select) {
    var group = select.getAttribute("data-group"), choice = select.value;
    document.querySelectorAll('[data-group="' + group + '"][data-choice]').forEach(function (el) {
      el.hidden = el.getAttribute("data-choice") !== choice;
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("select.choice").forEach(function (s) {
      s.addEventListener("change", function () { showChoice(s); });
      showChoice(s);
    });
    document.querySelectorAll("th.sort").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(th); });
    });
    document.querySelectorAll("select.eps").forEach(function (s) {
      s.addEventListener("change", function () { showEps(s); });
      showEps(s);
    });
    var toggle = document.getElementById("show-tasks");
    if (toggle) toggle.addEventListener("change", function () {
      document.body.classList.toggle("show-tasks", toggle.checked);
    });
  });
})();
