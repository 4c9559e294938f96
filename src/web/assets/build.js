// @ts-check
// Build: the jobs the server runs, and for one job its phases, progress and live log, with cancel.
import { api, el, followJob, notice, showError, when, short, bytes } from './lib.js';

const PHASES = ['bootstrap', 'packages', 'configure', 'pack', 'index'];
const MAX_LOG_LINES = 3000;

export async function render(view, [id]) {
  const { jobs } = await api('GET', '/api/jobs');
  const builds = jobs.filter((j) => j.kind === 'build');
  const selected = id ?? builds[0]?.id;
  const list = el('div', { class: 'card jobs' }, el('h2', {}, 'Jobs'),
    builds.length === 0 ? el('p', { class: 'muted' }, 'No builds yet: compose one.') : null,
    builds.map((j) => el('a', { href: `#/build/${j.id}`, class: j.id === selected ? 'selected' : '' }, el('div', {}, j.title), el('small', { class: 'muted' }, `${j.state} · ${when(j.created)}`))));
  const detail = el('div', {});
  view.append(el('h1', {}, 'Builds'), el('div', { class: 'split' }, list, detail));
  if (!selected) return;

  const job = await api('GET', `/api/jobs/${selected}`);
  const state = el('b', { id: 'job-state' }, job.state);
  const phaseBar = el('div', { class: 'phases', id: 'phases' }, PHASES.map((p) => el('span', { 'data-phase': p }, p)));
  const progress = el('progress', { id: 'progress', max: 1, value: 0 });
  const progressText = el('span', { class: 'muted', id: 'progress-text' });
  const log = el('pre', { id: 'log' });
  const outputs = el('div', { id: 'outputs' });
  const cancel = el('button', { class: 'danger', id: 'cancel', disabled: ['succeeded', 'failed', 'cancelled'].includes(job.state) }, 'Cancel');
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await api('DELETE', `/api/jobs/${selected}`);
      notice('cancelling: the build tears its chroot down', 'info');
    } catch (err) {
      showError(err);
    }
  });
  detail.append(el('div', { class: 'card' },
    el('h2', {}, job.title),
    el('p', {}, 'state ', state, ' · request ', el('code', {}, short(job.meta.specDigest)), ' · queued ', when(job.created), ' ', cancel),
    phaseBar, el('div', { class: 'row' }, progress, progressText), outputs),
    el('div', { class: 'card' }, el('h2', {}, 'Log'), log));

  let phase = null;
  let lines = 0;
  const mark = (failed) => {
    const at = PHASES.indexOf(phase);
    for (const span of phaseBar.children) {
      const i = PHASES.indexOf(span.getAttribute('data-phase') ?? '');
      span.className = i < at ? 'done' : i === at ? (failed ? 'failed' : 'current') : '';
    }
  };
  const stick = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const follower = followJob(selected, (e) => {
    if (e.type === 'state') {
      state.textContent = e.state;
      const entry = list.querySelector('a.selected small');
      if (entry) entry.textContent = `${e.state} · ${when(job.created)}`;
      state.className = e.state === 'succeeded' ? 'ok' : e.state === 'failed' || e.state === 'cancelled' ? 'bad' : '';
      if (['succeeded', 'failed', 'cancelled'].includes(e.state)) {
        cancel.disabled = true;
        if (e.state === 'succeeded') {
          phase = 'done';
          for (const span of phaseBar.children) span.className = 'done';
          progress.max = 1;
          progress.value = 1;
        } else mark(true);
      }
    } else if (e.type === 'phase') {
      phase = e.phase;
      mark(false);
      progress.removeAttribute('value');
      progressText.textContent = e.detail ?? e.phase;
    } else if (e.type === 'progress') {
      progress.max = e.total || 1;
      progress.value = e.done;
      // A count (mksquashfs's blocks) or bytes.
      const amount = e.unit === 'items' ? `${e.done} / ${e.total}` : `${bytes(e.done)} / ${bytes(e.total)}`;
      progressText.textContent = `${e.phase ?? ''} ${e.detail ?? ''} ${amount}`;
    } else if (e.type === 'log') {
      const keep = stick();
      log.append(`${e.line}\n`);
      if (++lines > MAX_LOG_LINES) log.firstChild?.remove();
      if (keep) log.scrollTop = log.scrollHeight;
    } else if (e.type === 'output') {
      outputs.append(el('p', { class: 'ok' }, `${e.output.format}: ${bytes(e.output.size)} `, el('a', { href: `#/repository/${e.output.digest}` }, `image ${short(e.output.digest)}`)));
    } else if (e.type === 'error') {
      outputs.append(el('p', { class: 'bad', id: 'job-error' }, `${e.error.code}: ${e.error.message}`));
    }
  });
  return () => follower.stop();
}
