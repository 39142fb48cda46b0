// Docklet portal: usage figures and charts (uPlot) on the cluster page and the admin hosts
// page. The page marks a section with data-metrics ("cluster" or "hosts") and a card per node
// or host; this script fills the cards' current figures and draws their charts from the REST
// endpoints (same origin, authenticated by the session cookie), over the window chosen in
// the section's data-window select, and refreshes them every 30 s. The charts live outside
// the pages' htmx live regions, which would otherwise replace them on every event.
(function () {
  "use strict";
  const section = document.querySelector("[data-metrics]");
  if (!section || !window.uPlot || !window.fetch) return;
  const status = section.querySelector("[data-metrics-status]");
  const windowSelect = section.querySelector("[data-window]");
  const HEIGHT = 170;
  const REFRESH_MS = 30000;
  const charts = [];

  // Figures as people read them.
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    if (n == null) return "—";
    let unit = 0;
    while (Math.abs(n) >= 1024 && unit + 1 < UNITS.length) { n /= 1024; unit += 1; }
    const digits = unit === 0 || Math.abs(n) >= 100 || Number.isInteger(n) ? 0 : 1;
    return n.toFixed(digits) + " " + UNITS[unit];
  }
  function perSecond(n) { return n == null ? "—" : bytes(n) + "/s"; }
  function percent(n) { return n == null ? "—" : n.toFixed(n < 10 ? 1 : 0) + " %"; }
  function duration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60);
    if (d > 0) return d + " d" + (h ? " " + h + " h" : "");
    if (h > 0) return h + " h" + (m ? " " + m + " min" : "");
    return m > 0 ? m + " min" : Math.floor(secs) + " s";
  }
  function windowSecs() { return Number(windowSelect ? windowSelect.value : 3600); }
  function say(text) { if (status) status.textContent = text; }
  function fill(card, figures) {
    Object.keys(figures).forEach(function (name) {
      const element = card.querySelector("[data-figure='" + name + "']");
      if (element) element.textContent = figures[name];
    });
  }

  // A counter's rate between two points, per second of the time between them (one step,
  // or longer across a gap while the node was stopped); none where the counter went back
  // (the node restarted) or for the first point.
  function rate(before, point, key) {
    if (!before || point.t <= before.t || point[key] < before[key]) return null;
    return (point[key] - before[key]) / (point.t - before.t);
  }

  // A history's columns: time, CPU, memory, disk, and network rates.
  function columns(points) {
    return {
      t: points.map(function (p) { return p.t; }),
      cpu: points.map(function (p) { return p.cpu_percent; }),
      memory: points.map(function (p) { return p.memory_bytes; }),
      disk: points.map(function (p) { return p.disk_bytes; }),
      rx: points.map(function (p, i) { return rate(points[i - 1], p, "rx_bytes"); }),
      tx: points.map(function (p, i) { return rate(points[i - 1], p, "tx_bytes"); }),
    };
  }

  // The sum over a cluster's nodes. Nodes of different ages may answer at different steps:
  // each is averaged onto the coarsest step first, and a node without a point at a time
  // (not running then) adds nothing.
  function total(nodes) {
    const step = Math.max.apply(null, nodes.map(function (n) { return n.step; }).concat([1]));
    const fields = ["cpu", "memory", "rx", "tx"];
    const sums = new Map();
    nodes.forEach(function (node) {
      const c = columns(node.points);
      const buckets = new Map();
      c.t.forEach(function (t, i) {
        const key = t - t % step;
        if (!buckets.has(key)) buckets.set(key, fields.map(function () { return [0, 0]; }));
        fields.forEach(function (f, j) {
          if (c[f][i] == null) return;
          buckets.get(key)[j][0] += c[f][i];
          buckets.get(key)[j][1] += 1;
        });
      });
      buckets.forEach(function (bucket, key) {
        if (!sums.has(key)) sums.set(key, fields.map(function () { return 0; }));
        bucket.forEach(function (b, j) { if (b[1]) sums.get(key)[j] += b[0] / b[1]; });
      });
    });
    const t = Array.from(sums.keys()).sort(function (a, b) { return a - b; });
    const out = { t: t };
    fields.forEach(function (f, j) { out[f] = t.map(function (key) { return sums.get(key)[j]; }); });
    return out;
  }

  // y scales start at zero: a flat line near its maximum says nothing.
  function fromZero(u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }
  // The x scale is the whole window chosen, however much history there is yet.
  function wholeWindow() {
    const now = Date.now() / 1000;
    return [now - windowSecs(), now];
  }

  // Ticks for byte axes at round binary sizes (256 MiB, 2 GiB), which read as the figures do.
  const BINARY_TICKS = [];
  for (let k = 0; k < 5; k++) {
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].forEach(function (m) { BINARY_TICKS.push(m * Math.pow(1024, k)); });
  }

  // Draws (or updates) the chart `name` in `holder`. `lines`: [{label, color, values,
  // format, scale}]; the first scale's axis is on the left, a second one's on the right.
  function draw(holder, name, title, t, lines) {
    const data = [t].concat(lines.map(function (l) { return l.values; }));
    let element = holder.querySelector("[data-chart='" + name + "']");
    if (element && element.uplot) { element.uplot.setData(data); return; }
    element = document.createElement("div");
    element.className = "chart";
    element.dataset.chart = name;
    holder.appendChild(element);
    const scales = { x: { time: true, range: wholeWindow } };
    const axes = [{}];
    lines.forEach(function (l) {
      const key = l.scale || "y";
      if (scales[key]) return;
      scales[key] = { range: fromZero };
      const axis = {
        scale: key,
        side: axes.length === 1 ? 3 : 1,
        size: 72,
        grid: { show: axes.length === 1 },
        values: function (u, splits) { return splits.map(l.format); },
      };
      if (l.format !== percent) axis.incrs = BINARY_TICKS;
      axes.push(axis);
    });
    const series = [{}].concat(lines.map(function (l) {
      return {
        label: l.label, stroke: l.color, width: 1.5, scale: l.scale || "y", spanGaps: false,
        value: function (u, v) { return v == null ? "—" : l.format(v); },
      };
    }));
    const width = element.clientWidth || 300;
    element.uplot = new uPlot({ title: title, width: width, height: HEIGHT, scales: scales, axes: axes, series: series }, data, element);
    charts.push(element);
  }

  const BLUE = "#2458c6", ORANGE = "#c66a24", GREEN = "#1e7d32";

  // A node's (or the cluster's) three charts.
  function drawUsage(holder, c) {
    draw(holder, "cpu", "CPU (100 % = one core)", c.t,
      [{ label: "CPU", color: BLUE, values: c.cpu, format: percent }]);
    draw(holder, "memory", "Memory", c.t,
      [{ label: "Memory", color: GREEN, values: c.memory, format: bytes }]);
    draw(holder, "network", "Network", c.t, [
      { label: "received", color: BLUE, values: c.rx, format: perSecond },
      { label: "sent", color: ORANGE, values: c.tx, format: perSecond },
    ]);
  }

  // The cluster page: one answer for every node. Returns whether a node still waits for
  // its first figures.
  function showCluster(data) {
    const idle = section.querySelector("[data-idle]");
    if (idle) idle.textContent = data.idle_secs == null ? "" : "idle for " + duration(data.idle_secs);
    let waiting = false;
    data.nodes.forEach(function (node) {
      const card = section.querySelector("[data-node-index='" + node.index + "']");
      if (!card) return; // added since the page was loaded: a reload shows it
      const s = node.latest;
      waiting = waiting || !s || s.cpu_percent == null;
      fill(card, {
        cpu: percent(s && s.cpu_percent),
        memory: bytes(s && s.memory_bytes),
        disk: bytes(s && s.disk_bytes),
        network: s ? "received " + bytes(s.net.rx_bytes) + ", sent " + bytes(s.net.tx_bytes) : "—",
        processes: s ? String(s.processes) : "—",
        uptime: s ? duration(s.uptime_secs) : "—",
      });
      drawUsage(card.querySelector("[data-charts]"), columns(node.points));
    });
    const all = section.querySelector("[data-total] [data-charts]");
    if (all) drawUsage(all, total(data.nodes));
    return waiting;
  }

  // A host's card on the hosts page. Returns whether it still waits for its first figures.
  function showHost(card, data) {
    const s = data.latest;
    fill(card, {
      cpu: s ? percent(s.cpu_percent) + " of " + s.cpus + " CPUs" : "—",
      memory: s ? bytes(s.memory_total_bytes - s.memory_available_bytes) + " of " + bytes(s.memory_total_bytes) : "—",
      disk: s ? bytes(s.disk_used_bytes) + " of " + bytes(s.disk_total_bytes) : "—",
      load: s ? s.load.map(function (l) { return l.toFixed(2); }).join(" ") : "—",
      vnodes: s ? String(s.vnodes) : "—",
    });
    const c = columns(data.points);
    draw(card.querySelector("[data-charts]"), "host", "CPU, memory and disk in use", c.t, [
      { label: "CPU", color: BLUE, values: c.cpu, format: percent, scale: "%" },
      { label: "memory", color: GREEN, values: c.memory, format: bytes, scale: "bytes" },
      { label: "disk", color: ORANGE, values: c.disk, format: bytes, scale: "bytes" },
    ]);
    return !s || s.cpu_percent == null;
  }

  function get(url) {
    return fetch(url + "?since=" + windowSecs(), { headers: { accept: "application/json" } }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) throw new Error((body.error && body.error.message) || "HTTP " + r.status);
        return body;
      });
    });
  }

  // Every card's answer; resolves to whether any still waits for its first figures.
  function load() {
    if (section.dataset.metrics === "cluster") return get(section.dataset.source).then(showCluster);
    // One host that cannot answer (gone since the page was loaded) leaves the others shown.
    const cards = Array.from(section.querySelectorAll("[data-source]"));
    const failed = [];
    return Promise.all(cards.map(function (card) {
      return get(card.dataset.source).then(function (data) { return showHost(card, data); },
        function (e) { failed.push(card.dataset.metricsHost + ": " + e.message); return false; });
    })).then(function (waits) {
      if (failed.length) throw new Error(failed.join("; "));
      return waits.some(Boolean);
    });
  }

  const SOON_MS = 5000;
  let opened = Date.now();
  let timer = null;
  let due = 0;
  function later(ms) {
    clearTimeout(timer);
    due = Date.now() + ms;
    timer = setTimeout(refresh, ms);
  }
  function refresh() {
    clearTimeout(timer);
    // Nobody looks at a hidden tab: it catches up when it is shown again.
    if (document.hidden) return;
    load().then(function (waiting) {
      say("updated " + new Date().toLocaleTimeString());
      // Just opened, or a node just started: its first figures come within seconds, so ask
      // often for a while.
      const soon = waiting && Date.now() - opened < 120000;
      later(soon ? SOON_MS : REFRESH_MS);
    }, function (e) {
      say("Usage is not available: " + e.message);
      later(REFRESH_MS);
    });
  }

  let resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      charts.forEach(function (element) {
        element.uplot.setSize({ width: element.clientWidth || 300, height: HEIGHT });
      });
    }, 200);
  });
  if (windowSelect) windowSelect.addEventListener("change", refresh);
  // portal.js's signal of a lifecycle change (a node started or stopped, a host came up):
  // figures may come or go, so ask soon, but not for every event of a busy stream.
  document.body.addEventListener("docklet-event", function () {
    opened = Date.now();
    if (due - Date.now() > SOON_MS) later(SOON_MS);
  });
  document.addEventListener("visibilitychange", refresh);
  refresh();
})();
