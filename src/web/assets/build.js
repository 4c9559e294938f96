// @ts-check
// Build: the jobs the server runs (or a farm's workers run), and for one job its worker and
// attempt, phases (push on a farm), progress and live log, with cancel; the farm's workers.
import { api, el, followJob, notice, showError, when, short, bytes } from './lib.js';

const PHASES = ['bootstrap', 'packages', 'configure', 'pack', 'index'];
const MAX_LOG_LINES = 3000;
const FARM_REFRESH_MS = 3000;
const final = (state) => ['succeeded', 'failed', 'cancelled'].includes(state);

/** The farm's scheduling and workers; refreshed while the page is open. */
function farmCard(farm, session) {
  const body = el('tbody', {});
  const scheduling = el('span', {});
  const probeOut = el('span', { class: 'muted', id: 'probe-result' });
  const probe = el('button', { id: 'probe', disabled: !session.authorized, title: 'a job that only waits on a worker: checks the farm end to end' }, 'Probe');
  probe.addEventListener('click', async () => {
    probe.disabled = true;
    try {
      const job = await api('POST', '/api/farm/probes', { ms: 0 });
      probeOut.textContent = `probe ${short(job.id)} queued…`;
      const follower = followJob(job.id, async (e) => {
        if (e.type !== 'end') return;
        follower.stop();
        const j = await api('GET', `/api/jobs/${job.id}`);
        probeOut.textContent = j.state === 'succeeded'
          ? `probe ${short(j.id)}: worker ${j.worker} started it ${Date.parse(j.started) - Date.parse(j.created)} ms after submit`
          : `probe ${short(j.id)}: ${j.state}${j.error ? ` (${j.error.code}: ${j.error.message})` : ''}`;
        probe.disabled = false;
      });
    } catch (err) {
      probe.disabled = false;
      showError(err);
    }
  });
  const show = (f) => {
    scheduling.textContent = f.scheduling.mode === 'cache-aware'
      ? `cache-aware scheduling (a job waits up to ${(f.scheduling.waitMs / 1000).toFixed(0)} s for the worker holding its deepest stage)`
      : 'plain scheduling (the first free worker takes the next job)';
    const workers = [...f.workers].sort((a, b) => a.id.localeCompare(b.id));
    body.replaceChildren(...(workers.length === 0
      ? [el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No worker has registered: start osfarm worker --queue … on a build machine.'))]
      : workers.map((w) => el('tr', { 'data-worker': w.id },
        el('td', {}, el('b', {}, w.id)),
        el('td', {}, w.host),
        el('td', { class: w.alive ? 'ok' : 'bad' }, w.alive ? 'alive' : 'gone'),
        el('td', {}, w.job ? el('a', { href: `#/build/${w.job}` }, `job ${short(w.job)}`) : el('span', { class: 'muted' }, 'idle')),
        el('td', { class: 'num' }, w.stages ?? '-'),
        el('td', { class: 'muted' }, when(w.seen))))));
  };
  show(farm);
  const card = el('div', { class: 'card', id: 'farm' },
    el('h2', {}, 'Farm'),
    el('p', {}, scheduling, ' ', probe, ' ', probeOut),
    el('table', {}, el('thead', {}, el('tr', {}, ['worker', 'host', 'state', 'running', 'cached stages', 'last heartbeat'].map((h) => el('th', { class: h === 'cached stages' ? 'num' : '' }, h)))), body));
  const timer = setInterval(async () => {
    try {
      const { farm: f } = await api('GET', '/api/farm');
      if (f) show(f);
    } catch {
      /* the server is away (restarting): the next refresh tries again */
    }
  }, FARM_REFRESH_MS);
  return { card, stop: () => clearInterval(timer) };
}

export async function render(view, [id], session) {
  const [{ jobs }, { farm }] = await Promise.all([api('GET', '/api/jobs'), api('GET', '/api/farm')]);
  const builds = jobs.filter((j) => j.kind === 'build');
  const selected = id ?? builds[0]?.id;
  const list = el('div', { class: 'card jobs' }, el('h2', {}, 'Jobs'),
    builds.length === 0 ? el('p', { class: 'muted' }, 'No builds yet: compose one.') : null,
    builds.map((j) => el('a', { href: `#/build/${j.id}`, class: j.id === selected ? 'selected' : '' }, el('div', {}, j.title), el('small', { class: 'muted' }, `${j.state} · ${when(j.created)}${j.worker ? ` · ${j.worker}` : ''}`))));
  const detail = el('div', {});
  const farmView = farm ? farmCard(farm, session) : null;
  view.append(el('h1', {}, 'Builds'),
    farmView?.card ?? el('p', { class: 'muted', id: 'farm' }, 'Builds run in this server, one at a time.'),
    el('div', { class: 'split' }, list, detail));
  const leave = () => farmView?.stop();
  if (!selected) return leave;

  let job = await api('GET', `/api/jobs/${selected}`);
  // On a farm a worker pushes each image into this repository after indexing it.
  const phases = job.worker || farm ? [...PHASES, 'push'] : PHASES;
  const state = el('b', { id: 'job-state' }, job.state);
  const worker = el('span', { id: 'job-worker' });
  const stream = el('span', { class: 'muted', id: 'stream-state' });
  const phaseBar = el('div', { class: 'phases', id: 'phases' }, phases.map((p) => el('span', { 'data-phase': p }, p)));
  const progress = el('progress', { id: 'progress', max: 1, value: 0 });
  const progressText = el('span', { class: 'muted', id: 'progress-text' });
  const log = el('pre', { id: 'log' });
  const outputs = el('div', { id: 'outputs' });
  const cancel = el('button', { class: 'danger', id: 'cancel', disabled: final(job.state) }, 'Cancel');
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await api('DELETE', `/api/jobs/${selected}`);
      notice('cancelling: the build tears its chroot down', 'info');
    } catch (err) {
      showError(err);
    }
  });
  const showWorker = () => {
    worker.replaceChildren(...(job.worker
      ? [' · worker ', el('b', {}, job.worker), job.attempts > 1 ? el('span', { class: 'warn' }, ` (attempt ${job.attempts})`) : '']
      : farm && !final(job.state) ? [' · ', el('span', { class: 'muted' }, 'waiting for a worker')] : []));
  };
  showWorker();
  detail.append(el('div', { class: 'card' },
    el('h2', {}, job.title),
    el('p', {}, 'state ', state, worker, ' · request ', el('code', {}, short(job.meta.specDigest)), ' · queued ', when(job.created), ' ', cancel, ' ', stream),
    phaseBar, el('div', { class: 'row' }, progress, progressText), outputs),
    el('div', { class: 'card' }, el('h2', {}, 'Log'), log));

  let phase = null;
  let lines = 0;
  const mark = (failed) => {
    const at = phases.indexOf(phase);
    for (const span of phaseBar.children) {
      const i = phases.indexOf(span.getAttribute('data-phase') ?? '');
      span.className = i < at ? 'done' : i === at ? (failed ? 'failed' : 'current') : '';
    }
  };
  const stick = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  // A (re)start on a worker sets the job's worker and attempt: read them again.
  const refresh = async () => {
    try {
      job = await api('GET', `/api/jobs/${selected}`);
      showWorker();
    } catch {
      /* shown at the next state change */
    }
  };
  const follower = followJob(selected, (e) => {
    if (e.type === 'state') {
      state.textContent = e.state;
      void refresh();
      const entry = list.querySelector('a.selected small');
      if (entry) entry.textContent = `${e.state} · ${when(job.created)}${job.worker ? ` · ${job.worker}` : ''}`;
      state.className = e.state === 'succeeded' ? 'ok' : e.state === 'failed' || e.state === 'cancelled' ? 'bad' : '';
      if (final(e.state)) {
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
      // A push counts blocks the central repository has; mksquashfs counts items; the other phases count bytes.
      const amount = e.unit === 'items' ? `${e.done} / ${e.total}` : `${bytes(e.done)} / ${bytes(e.total)}`;
      progressText.textContent = e.phase === 'push' ? `push: ${e.done} / ${e.total} blocks in the repository` : `${e.phase ?? ''} ${e.detail ?? ''} ${amount}`;
    } else if (e.type === 'log') {
      const keep = stick();
      log.append(`${e.line}\n`);
      if (++lines > MAX_LOG_LINES) log.firstChild?.remove();
      if (keep) log.scrollTop = log.scrollHeight;
    } else if (e.type === 'output') {
      outputs.append(el('p', { class: 'ok' }, `${e.output.format}: ${bytes(e.output.size)} `, el('a', { href: `#/repository/${e.output.digest}` }, `image ${short(e.output.digest)}`)));
    } else if (e.type === 'result') {
      for (const p of e.result?.pushed ?? []) {
        outputs.append(el('p', { class: 'pushed' }, `${p.format} pushed by ${e.result.worker}: `,
          p.alreadyPresent ? 'the repository already held it' : `${p.blocksSent} of ${p.blockCount} blocks sent, ${bytes(p.wireBytesSent)} on the wire`));
      }
    } else if (e.type === 'error') {
      outputs.append(el('p', { class: 'bad', id: 'job-error' }, `${e.error.code}: ${e.error.message}`));
    }
  }, (status) => {
    stream.textContent = status === 'live' ? '' : status === 'reconnecting' ? 'connection lost: reconnecting…' : 'the server refused the event stream: reload the page';
    stream.className = status === 'live' ? 'muted' : 'warn';
  });
  return () => {
    follower.stop();
    leave();
  };
}
