// @ts-check
// Inline SVG charts: horizontal bars and time lines. No library, nothing fetched.
const NS = 'http://www.w3.org/2000/svg';

/**
 * @param {string} tag
 * @param {Record<string, string | number>} [attrs]
 * @param {...Node} children
 * @returns {SVGElement}
 */
function svg(tag, attrs = {}, ...children) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  for (const c of children) n.append(c);
  return n;
}

/**
 * Stacked horizontal bars: rows of { label, parts: [{ value, color, title }] }, each row
 * scaled to its own total (shares), with the share of the first part printed. The label
 * sits above its bar, over the whole width, so a long image name is not cut off.
 * @param {{ label: string, parts: { value: number, color: string, title: string }[] }[]} rows
 * @param {{ width?: number, rowHeight?: number }} [size]
 */
export function stackedBars(rows, { width = 640, rowHeight = 46 } = {}) {
  const labelH = 16;
  const height = rows.length * rowHeight + 4;
  const root = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img' });
  rows.forEach((row, i) => {
    const y = 2 + i * rowHeight;
    const total = row.parts.reduce((n, p) => n + p.value, 0) || 1;
    root.append(svg('text', { x: 0, y: y + labelH - 4 }, document.createTextNode(row.label)));
    const barY = y + labelH;
    const barH = rowHeight - labelH - 6;
    let x = 0;
    for (const p of row.parts) {
      const w = (width * p.value) / total;
      const rect = svg('rect', { x, y: barY, width: Math.max(0, w), height: barH, fill: p.color });
      rect.append(svg('title', {}, document.createTextNode(`${p.title}: ${p.value}`)));
      root.append(rect);
      x += w;
    }
    const share = row.parts[0].value / total;
    root.append(svg('text', { x: 4, y: barY + barH / 2 + 4, class: 'on-bar' }, document.createTextNode(`${(share * 100).toFixed(1)} %`)));
  });
  return root;
}

/**
 * A line chart of points [{ x, y }] (x in seconds), with the y axis labelled by `format`.
 * @param {{ points: { x: number, y: number }[], color: string }[]} series
 * @param {{ width?: number, height?: number, format?: (value: number) => string, title?: string }} [options]
 */
export function lineChart(series, { width = 640, height = 180, format = String, title = '' } = {}) {
  const pad = { l: 70, r: 10, t: 18, b: 22 };
  const all = series.flatMap((s) => s.points);
  const maxX = Math.max(1e-9, ...all.map((p) => p.x));
  const maxY = Math.max(1e-9, ...all.map((p) => p.y));
  const sx = (/** @type {number} */ x) => pad.l + ((width - pad.l - pad.r) * x) / maxX;
  const sy = (/** @type {number} */ y) => height - pad.b - ((height - pad.t - pad.b) * y) / maxY;
  const root = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img' });
  root.append(svg('text', { x: pad.l, y: 12 }, document.createTextNode(title)));
  for (const f of [0, 0.5, 1]) {
    const y = sy(maxY * f);
    root.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: y, y2: y, stroke: '#e1e4e8' }));
    root.append(svg('text', { x: 2, y: y + 4 }, document.createTextNode(format(maxY * f))));
  }
  root.append(svg('text', { x: width - pad.r - 40, y: height - 4 }, document.createTextNode(`${maxX.toFixed(1)} s`)));
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
    root.append(svg('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2 }));
  }
  return root;
}
