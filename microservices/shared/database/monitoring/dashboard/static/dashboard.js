// Draws the last hour's charts. Data comes from the dashboard's own JSON endpoints
// (data-series), never from inline script: the Content-Security-Policy forbids it.
"use strict";
(function () {
  const cache = new Map();
  function load(url) {
    if (!cache.has(url)) {
      cache.set(url, fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status)))));
    }
    return cache.get(url);
  }
  function draw(el, data) {
    const metric = el.dataset.metric;
    const small = el.classList.contains("small");
    const values = data[metric] || [];
    el.dataset.points = String(data.t.length);
    if (data.t.length < 2) {
      el.textContent = "collecting samples…";
      el.classList.add("empty");
      return;
    }
    const opts = {
      width: small ? 160 : Math.max(240, el.clientWidth || 300),
      height: small ? 36 : 140,
      legend: { show: !small },
      cursor: { show: !small },
      scales: { x: { time: true } },
      axes: small ? [{ show: false }, { show: false }] : [{}, { size: 50 }],
      series: [{}, { label: metric, stroke: "#2b6cb0", fill: "rgba(43,108,176,0.12)", width: 1.5, spanGaps: true }],
    };
    new uPlot(opts, [data.t, values], el);
    el.dataset.drawn = "1";
  }
  function init() {
    document.querySelectorAll(".chart[data-series]").forEach((el) => {
      load(el.dataset.series).then((data) => draw(el, data)).catch((e) => {
        el.textContent = "chart unavailable (" + e.message + ")";
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
