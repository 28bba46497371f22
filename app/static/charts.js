/* Live training curves (uPlot): a job page fed by the dashboard's SSE stream, and the compare view. */
(function () {
  "use strict";

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  var COLORS = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6"];

  // Steps are whole numbers: tick only at integer multiples (no "1.2, 1.4" on a 3-step run).
  var STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];

  function axes(xLabel, integerX) {
    var text = css("--muted"), grid = css("--grid");
    var axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    var x = Object.assign({ label: xLabel, labelSize: 20 }, axis);
    if (integerX) x.incrs = STEP_INCRS;
    return [x, Object.assign({ size: 60 }, axis)];
  }

  // Fitted to the data, so a curve moving between 0.1 and 0.3 is not flattened; rewards, accuracies and
  // pass@k live in [0, 1], so their axis never leaves it, and a flat 0 still reads as 0.
  function yRange(bounded) {
    return function (u, min, max) {
      var pad = min === max ? Math.abs(min) * 0.1 || (bounded ? 0.05 : 1) : (max - min) * 0.08;
      var lo = min - pad, hi = max + pad;
      if (bounded) { lo = Math.max(0, lo); hi = Math.min(Math.max(1, max), hi); }
      return [lo, hi];
    };
  }

  function fmt(v) {
    if (v == null) return "—";
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : +v.toPrecision(4) + "";
  }

  function width(el) {
    return Math.max(el.clientWidth, 200);
  }

  // colors: an index per series (the compare view's follow the job); default: the series' position.
  // xKind: "step" (integer ticks), "time" (seconds) or "samples".
  function makePlot(el, labels, data, xLabel, xKind, bounded, colors) {
    var timeX = xKind === "time";
    el.innerHTML = "";
    var series = [{ label: xLabel, value: function (u, v) { return v == null ? "—" : timeX ? fmt(v) + " s" : v; } }];
    labels.forEach(function (label, i) {
      var color = colors ? colors[i] : i;
      series.push({ label: label, stroke: css(COLORS[color % COLORS.length]), width: 2, spanGaps: true,
                    value: function (u, v) { return fmt(v); }, points: { size: 4 } });
    });
    var plot = new uPlot({
      width: width(el), height: 200, series: series, axes: axes(xLabel, xKind === "step"),
      scales: { x: { time: false }, y: { range: yRange(bounded) } }, cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    }, data, el);
    el.uplot = plot; // for the browser tests (its scales) and for debugging from the console
    // Follow the card's width (laptop ↔ phone, rotating).
    new ResizeObserver(function () { plot.setSize({ width: width(el), height: 200 }); }).observe(el);
    return plot;
  }

  /* Job page: one chart per card (data-metrics lists its series), appended to as steps stream in. */
  function jobPage(root, points) {
    var steps = [], values = {};
    var charts = Array.prototype.map.call(root.querySelectorAll(".chart"), function (el) {
      return { el: el, metrics: el.dataset.metrics.split(","), labels: el.dataset.labels.split(","), plot: null };
    });
    charts.forEach(function (c) { c.metrics.forEach(function (m) { values[m] = []; }); });

    function add(point) {
      if (steps.length && point.step <= steps[steps.length - 1]) return; // a replayed step
      steps.push(point.step);
      Object.keys(values).forEach(function (m) {
        var v = point.metrics[m];
        values[m].push(typeof v === "number" ? v : null);
      });
    }

    function draw() {
      root.dataset.points = steps.length;
      root.dataset.lastStep = steps.length ? steps[steps.length - 1] : "";
      syncProgress();
      charts.forEach(function (c) {
        var has = c.metrics.some(function (m) { return values[m].some(function (v) { return v !== null; }); });
        if (!has) return;
        var data = [steps.slice()].concat(c.metrics.map(function (m) { return values[m].slice(); }));
        if (c.plot) c.plot.setData(data);
        else c.plot = makePlot(c.el, c.labels, data, "step", "step", c.el.dataset.bounded === "true");
      });
    }

    // The header's progress comes from the DB, which the worker writes in batches; the stream is ahead.
    // Show the furthest step either has seen, also after each htmx refresh of the header.
    function syncProgress() {
      var bar = document.querySelector("#job-head [role=progressbar]");
      if (!bar || !steps.length) return;
      var last = steps[steps.length - 1], total = Number(bar.getAttribute("aria-valuemax"));
      if (last <= Number(bar.getAttribute("aria-valuenow"))) return;
      bar.setAttribute("aria-valuenow", last);
      if (total) bar.firstElementChild.style.width = Math.min(100, (100 * last) / total) + "%";
      if (bar.nextElementSibling) bar.nextElementSibling.textContent = last + "/" + (total || "?");
    }
    document.body.addEventListener("htmx:afterSwap", syncProgress);

    points.forEach(add);
    draw();
    if (root.dataset.finished === "true" || !window.EventSource) return;

    // Same-origin EventSource sends the session cookie. The page asks only for what it lacks: the steps
    // after the last one it drew from points-data, or the whole stream when it has none (the stream then
    // holds only steps not yet written to the DB, a couple of seconds' worth). On a reconnect the browser
    // resends Last-Event-ID, which the server prefers to `from`; steps already drawn are skipped in add.
    var after = steps.length ? "step-" + steps[steps.length - 1] : "0-0";
    var source = new EventSource("/ui/jobs/" + encodeURIComponent(root.dataset.jobId) + "/stream?from=" + after);
    source.addEventListener("metrics", function (e) { add(JSON.parse(e.data)); draw(); });
    source.addEventListener("end", function () { source.close(); root.dataset.finished = "true"; });
  }

  /* Compare view: several jobs' curves of one metric on one chart, by step, by samples drawn (algorithms
     that draw more samples per step are compared at equal cost) or by wall-clock seconds. */
  var COMPARE_AXES = { step: [0, "step"], time: [1, "seconds since start"], samples: [3, "samples drawn"] };
  function comparePage(el, series) {
    if (!series.length) return;
    var plot = null;
    function draw(mode) {
      var col = COMPARE_AXES[mode][0];
      var tables = series.map(function (s) {
        var xs = [], ys = [];
        s.points.forEach(function (p) { if (p[2] != null && p[col] != null) { xs.push(p[col]); ys.push(p[2]); } });
        return [xs, ys];
      });
      var data = uPlot.join(tables);
      if (plot) plot.destroy();
      plot = makePlot(el, series.map(function (s) { return s.label; }), data,
                      COMPARE_AXES[mode][1], mode, el.dataset.bounded === "true",
                      series.map(function (s) { return s.color; }));
      el.dataset.mode = mode;
    }
    document.querySelectorAll("[data-x]").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll("[data-x]").forEach(function (b) {
          b.setAttribute("aria-pressed", b === button ? "true" : "false");
          b.classList.toggle("primary", b === button);
        });
        draw(button.dataset.x);
      });
    });
    document.querySelector('[data-x="step"]').classList.add("primary");
    draw("step");
  }

  // The pages hold their data in JSON script tags: the Content-Security-Policy allows no inline script.
  function data(id) { var el = document.getElementById(id); return el && JSON.parse(el.textContent); }
  var points = data("points-data");
  if (points) jobPage(document.getElementById("charts"), points);
  var series = data("compare-data");
  if (series) comparePage(document.getElementById("compare-chart"), series);

  // Forms with data-confirm ask first (delegated: htmx swaps the job panel's forms in and out).
  document.addEventListener("submit", function (e) {
    var message = e.target.dataset && e.target.dataset.confirm;
    if (message && !window.confirm(message)) e.preventDefault();
  }, true);
})();
