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
  const a = imageSelect(images, { id: 'compare-a' }, first ?? images[1].digest);
  const b = imageSelect(images, { id: 'compare-b' }, second ?? images.find((i) => i.digest !== a.value)?.digest);
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
