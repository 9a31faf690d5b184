// A small line chart in inline SVG: one polyline and its points per series, axes, a legend.
// Built with DOM calls only (no innerHTML, no inline style), so the page's CSP stays strict.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5f3dc4", "#a67c00"];

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// `step`: the spacing of neighbouring labels; enough decimals that they differ.
function niceNumber(value, step) {
  if (!isFinite(value)) return "-";
  if (Number.isInteger(value) && step === undefined) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e6)) return value.toExponential(2);
  const decimals = step > 0 ? Math.min(8, Math.max(0, Math.ceil(-Math.log10(step)) + 1)) : 3;
  return value.toFixed(decimals);
}

// series: [{name, points: [[x, y], ...]}]; options: {xLabel, yLabel, boundaries: [x, ...]}.
function drawLineChart(container, series, options) {
  const opts = options || {};
  const width = 900, height = 280, left = 56, right = 150, top = 12, bottom = 34;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": opts.yLabel || "chart" });
  const all = series.flatMap((s) => s.points);
  container.replaceChildren(svg);
  if (all.length === 0) {
    svg.appendChild(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no data reported yet"));
    return svg;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const sx = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.appendChild(svgEl("line", { x1: left, x2: width - right, y1: sy(y), y2: sy(y), class: "grid" }));
    svg.appendChild(svgEl("text", { x: left - 6, y: sy(y) + 4, "text-anchor": "end" }, niceNumber(y, (y1 - y0) / 4)));
  }
  for (const b of opts.boundaries || []) {
    if (b > x0 && b < x1) svg.appendChild(svgEl("line", { x1: sx(b), x2: sx(b), y1: top, y2: height - bottom, class: "round-edge" }));
  }
  svg.appendChild(svgEl("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  svg.appendChild(svgEl("text", { x: left, y: height - 14, "text-anchor": "middle" }, niceNumber(x0)));
  svg.appendChild(svgEl("text", { x: width - right, y: height - 14, "text-anchor": "middle" }, niceNumber(x1)));
  svg.appendChild(svgEl("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, opts.xLabel || ""));
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const g = svgEl("g", { class: "series-group", "data-series": s.name });
    const coords = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    g.appendChild(svgEl("polyline", { points: coords, class: "series", stroke: color }));
    for (const p of s.points) {
      const dot = svgEl("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, fill: color, class: "point" });
      dot.appendChild(svgEl("title", {}, `${s.name}: ${opts.xLabel || "x"} ${p[0]}, ${niceNumber(p[1])}`));
      g.appendChild(dot);
    }
    svg.appendChild(g);
    const ly = top + 8 + i * 18;
    svg.appendChild(svgEl("line", { x1: width - right + 12, x2: width - right + 30, y1: ly, y2: ly, stroke: color, "stroke-width": 3 }));
    svg.appendChild(svgEl("text", { x: width - right + 36, y: ly + 4 }, s.name));
  });
  return svg;
}

window.drawLineChart = drawLineChart;
