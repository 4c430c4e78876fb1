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
  function addFilters(table) {
    // a text box that keeps the rows containing its text; for tables of attacks, an optimizer and
    // an objective selector too (from the rows' data-attack, "optimizer:objective")
    var body = table.tBodies[0];
    if (!body) return;
    var rows = Array.prototype.slice.call(body.rows);
    var bar = document.createElement("div");
    bar.className = "filters";
    var box = document.createElement("input");
    box.type = "search";
    box.placeholder = "filter rows";
    box.setAttribute("aria-label", "filter the rows of this table");
    bar.appendChild(box);
    var selects = [];
    var attacks = rows.map(function (r) { return r.getAttribute("data-attack"); }).filter(Boolean);
    if (attacks.length) {
      [["optimizer", 0], ["objective", 1]].forEach(function (spec) {
        var values = {};
        attacks.forEach(function (a) {
          var part = a.split(" ")[0].split(":")[spec[1]];
          if (part) values[part] = true;
        });
        var names = Object.keys(values).sort();
        if (names.length < 2) return;
        var select = document.createElement("select");
        select.className = "filter-" + spec[0];
        select.setAttribute("aria-label", spec[0]);
        var all = document.createElement("option");
        all.value = "";
        all.textContent = "every " + spec[0];
        select.appendChild(all);
        names.forEach(function (n) {
          var o = document.createElement("option");
          o.value = n;
          o.textContent = n;
          select.appendChild(o);
        });
        select.setAttribute("data-part", spec[1]);
        bar.appendChild(select);
        selects.push(select);
      });
    }
    function apply() {
      var text = box.value.trim().toLowerCase();
      rows.forEach(function (r) {
        var ok = !text || r.textContent.toLowerCase().indexOf(text) >= 0;
        var attack = r.getAttribute("data-attack");
        selects.forEach(function (s) {
          if (s.value && attack) {
            ok = ok && attack.split(" ")[0].split(":")[+s.getAttribute("data-part")] === s.value;
          }
        });
        r.hidden = !ok;
      });
    }
    box.addEventListener("input", apply);
    selects.forEach(function (s) { s.addEventListener("change", apply); });
    table.parentNode.insertBefore(bar, table);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.filterable").forEach(addFilters);
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
