// @ts-check
// Stages: the stage tree (parents above children) with sizes, hits and last use; GC.
import { api, bytes, el, short, showError, when } from './lib.js';

export async function render(view, _args, session) {
  const data = await api('GET', '/api/stages');
  const byParent = new Map();
  for (const s of data.stages) {
    const key = s.parent && data.stages.some((x) => x.tag === s.parent) ? s.parent : null;
    if (!byParent.has(key)) byParent.set(key, []);
    byParent.get(key).push(s);
  }
  const branch = (parent) => el('ul', {}, (byParent.get(parent) ?? []).map((s) => el('li', { 'data-tag': s.tag },
    el('div', { class: 'node' },
      el('code', {}, short(s.tag)), el('b', {}, s.label ?? ''),
      el('span', {}, `size ${bytes(s.size)}`), el('span', {}, `own ${bytes(s.ownSize)}`),
      el('span', {}, `${s.hits} hits`), el('span', { class: 'muted' }, `last use ${when(s.lastUsed)}`),
      s.inUse ? el('span', { class: 'warn' }, `in use (${s.leases.length})`) : null),
    byParent.has(s.tag) ? branch(s.tag) : null)));
  const max = el('input', { type: 'text', id: 'gc-max', placeholder: 'e.g. 20G', value: '' });
  const dry = el('input', { type: 'checkbox', id: 'gc-dry', checked: true });
  const run = el('button', { id: 'gc-run', disabled: !session.authorized }, 'Collect');
  const out = el('pre', { id: 'gc-result', hidden: true });
  run.addEventListener('click', async () => {
    try {
      const r = await api('POST', '/api/stages/gc', { maxSize: max.value.trim(), dryRun: dry.checked });
      out.hidden = false;
      out.textContent = [...r.removed.map((s) => `${r.dryRun ? 'would remove' : 'removed'} ${short(s.tag)} ${bytes(s.ownSize)} ${s.label ?? ''}`), `${bytes(r.before)} → ${bytes(r.after)} (bound ${bytes(r.maxSize)})${r.dryRun ? ', dry run' : ''}`].join('\n');
      if (!r.dryRun) setTimeout(() => location.reload(), 800);
    } catch (err) {
      showError(err);
    }
  });
  view.append(
    el('h1', {}, 'Stages'),
    el('p', { class: 'muted' }, `${data.stages.length} stages, ${bytes(data.totalOwnSize)} on disk, backend ${data.backend ?? '-'}, in ${data.root}`),
    el('div', { class: 'card tree', id: 'stage-tree' }, data.stages.length === 0 ? el('p', { class: 'muted' }, 'No stages cached yet.') : branch(null)),
    el('div', { class: 'card' }, el('h2', {}, 'Garbage collection'),
      el('p', { class: 'muted' }, 'Removes least recently used stages until the store fits; never a stage in use.'),
      el('div', { class: 'row' }, el('div', {}, el('label', { for: 'gc-max' }, 'Keep at most'), max), el('label', { class: 'checks' }, dry, ' dry run'), run), out));
}
