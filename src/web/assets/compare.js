// @ts-check
// Compare: two images' common blocks both ways, as numbers and a chart.
import { api, el, imageSelect, percent, showError } from './lib.js';
import { stackedBars } from './charts.js';

export async function render(view, [first, second]) {
  const { images } = await api('GET', '/api/images');
  if (images.length < 2) {
    view.append(el('h1', {}, 'Compare'), el('p', { class: 'muted' }, 'Compare needs two images in the repository.'));
    return;
  }
  // By default the newest two images of one format (images of different formats share almost nothing).
  const pair = (() => {
    for (const [n, x] of images.entries()) {
      const y = images.slice(n + 1).find((i) => i.format === x.format);
      if (y) return [y, x];
    }
    return [images[1], images[0]];
  })();
  const a = imageSelect(images, { id: 'compare-a' }, first ?? pair[0].digest);
  const b = imageSelect(images, { id: 'compare-b' }, second ?? (first ? images.find((i) => i.digest !== a.value)?.digest : pair[1].digest));
  const result = el('div', { id: 'compare-result' });
  const go = el('button', { class: 'primary', id: 'compare-run' }, 'Compare');
  const run = async () => {
    go.disabled = true;
    try {
      const r = await api('GET', `/api/compare?a=${encodeURIComponent(a.value)}&b=${encodeURIComponent(b.value)}`);
      const nameA = r.images.a.name ?? r.a.digest.slice(0, 12);
      const nameB = r.images.b.name ?? r.b.digest.slice(0, 12);
      const row = (label, s, other) => el('tr', {}, el('td', {}, label), el('td', { class: 'num' }, s.blocks), el('td', { class: 'num' }, s.zeroBlocks), el('td', { class: 'num' }, s.distinctBlocks), el('td', { class: 'num' }, s.blocksInOther), el('td', { class: 'num share' }, percent(s.shareInOther)), el('td', {}, `of its non-zero blocks are in ${other}`));
      const nonZero = (s) => s.blocks - s.zeroBlocks;
      result.replaceChildren(
        el('table', { id: 'compare-table' },
          el('thead', {}, el('tr', {}, ['image', 'blocks', 'zero', 'distinct', 'in the other', 'share', ''].map((h) => el('th', {}, h)))),
          el('tbody', {}, row(nameA, r.a, nameB), row(nameB, r.b, nameA))),
        el('p', { class: 'muted' }, `${r.blockSize}-byte blocks, ${r.hash}`),
        stackedBars([
          { label: `${nameA} → ${nameB}`, parts: [{ value: r.a.blocksInOther, color: '#1a7f37', title: `blocks also in ${nameB}` }, { value: nonZero(r.a) - r.a.blocksInOther, color: '#d0d7de', title: 'only here' }] },
          { label: `${nameB} → ${nameA}`, parts: [{ value: r.b.blocksInOther, color: '#1f6feb', title: `blocks also in ${nameA}` }, { value: nonZero(r.b) - r.b.blocksInOther, color: '#d0d7de', title: 'only here' }] },
        ]));
      const [da, db] = await Promise.all([api('GET', `/api/images/${r.a.digest}`), api('GET', `/api/images/${r.b.digest}`)]);
      result.append(packageDiff(da.meta?.installed, db.meta?.installed, nameA, nameB));
    } catch (err) {
      showError(err);
    } finally {
      go.disabled = false;
    }
  };
  go.addEventListener('click', run);
  view.append(el('h1', {}, 'Compare'),
    el('div', { class: 'card' }, el('div', { class: 'row' }, el('div', {}, el('label', { for: 'compare-a' }, 'Image A'), a), el('div', {}, el('label', { for: 'compare-b' }, 'Image B'), b), go)),
    el('div', { class: 'card' }, result));
  if (first && second) await run();
}

/** Which packages differ between two images (their builds' package lists): only in A, only in B, other versions. */
function packageDiff(a, b, nameA, nameB) {
  if (!Array.isArray(a) || !Array.isArray(b)) return el('p', { class: 'muted', id: 'package-diff' }, 'No package comparison: an image without a package list (not built by this osfarm).');
  const va = new Map(a.map((p) => [p.name, p.version]));
  const vb = new Map(b.map((p) => [p.name, p.version]));
  const names = [...new Set([...va.keys(), ...vb.keys()])].sort();
  const rows = names.filter((n) => va.get(n) !== vb.get(n)).map((n) => el('tr', {}, el('td', {}, n), el('td', { class: 'mono' }, va.get(n) ?? '—'), el('td', { class: 'mono' }, vb.get(n) ?? '—')));
  const same = names.length - rows.length;
  return el('div', { id: 'package-diff' }, el('h2', {}, 'Packages'),
    el('p', { class: 'muted' }, rows.length === 0 ? `the same ${same} packages at the same versions` : `${rows.length} differ, ${same} the same`),
    rows.length > 0 && el('table', { id: 'package-diff-table' }, el('thead', {}, el('tr', {}, el('th', {}, 'package'), el('th', {}, nameA), el('th', {}, nameB))), el('tbody', {}, rows)));
}
