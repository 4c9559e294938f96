// @ts-check
// Boots: the VMs the server runs from repository images; for one, its console live (SSE) and Stop.
import { api, el, followJob, notice, showError, short, when } from './lib.js';

const MAX_LINES = 5000;
const FINAL = ['succeeded', 'failed', 'cancelled'];

export async function render(view, [id]) {
  const { jobs } = await api('GET', '/api/jobs');
  const boots = jobs.filter((j) => j.kind === 'boot');
  const selected = id ?? boots[0]?.id;
  const list = el('div', { class: 'card jobs' }, el('h2', {}, 'VMs'),
    boots.length === 0 ? el('p', { class: 'muted' }, 'No boots yet: boot an image from the Repository page.') : null,
    boots.map((j) => el('a', { href: `#/boot/${j.id}`, class: j.id === selected ? 'selected' : '' }, el('div', {}, j.title), el('small', { class: 'muted' }, `${j.state} · ${when(j.created)}`))));
  const detail = el('div', {});
  view.append(el('h1', {}, 'Boots'), el('div', { class: 'split' }, list, detail));
  if (!selected) return;

  const job = await api('GET', `/api/jobs/${selected}`);
  const state = el('b', { id: 'boot-state' }, job.state);
  const how = el('span', { class: 'muted', id: 'boot-detail' }, job.phase ?? '');
  const consoleView = el('pre', { id: 'console' });
  const outcome = el('div', { id: 'boot-outcome' });
  const stop = el('button', { class: 'danger', id: 'stop', disabled: FINAL.includes(job.state) }, 'Stop');
  stop.addEventListener('click', async () => {
    stop.disabled = true;
    try {
      await api('DELETE', `/api/jobs/${selected}`);
      notice('stopping the VM', 'info');
    } catch (err) {
      showError(err);
    }
  });
  detail.append(el('div', { class: 'card' },
    el('h2', {}, job.title),
    el('p', {}, 'state ', state, ' · image ', el('a', { href: `#/repository/${job.meta.image}` }, el('code', {}, short(job.meta.image))), ' · started ', when(job.created), ' ', stop),
    el('p', {}, how), outcome),
    el('div', { class: 'card' }, el('h2', {}, 'Serial console'), consoleView));

  let lines = 0;
  const stick = () => consoleView.scrollHeight - consoleView.scrollTop - consoleView.clientHeight < 40;
  const follower = followJob(selected, (e) => {
    if (e.type === 'state') {
      state.textContent = e.state;
      state.className = e.state === 'running' ? 'ok' : e.state === 'failed' ? 'bad' : '';
      if (FINAL.includes(e.state)) stop.disabled = true;
    } else if (e.type === 'phase') {
      how.textContent = e.detail ?? e.phase;
    } else if (e.type === 'log') {
      const keep = stick();
      consoleView.append(`${e.line}\n`);
      if (++lines > MAX_LINES) consoleView.firstChild?.remove();
      if (keep) consoleView.scrollTop = consoleView.scrollHeight;
    } else if (e.type === 'result') {
      outcome.replaceChildren(el('p', { class: 'ok' }, `VM ended after ${e.result.seconds} s (${e.result.accel.toUpperCase()})`));
    } else if (e.type === 'error') {
      outcome.replaceChildren(el('p', { class: e.error.code === 'OSFARM_ABORTED' ? 'muted' : 'bad', id: 'boot-error' }, `${e.error.code}: ${e.error.message}`));
    }
  });
  return () => follower.stop();
}
