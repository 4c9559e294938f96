// @ts-check
// Transfer: push an image to another osfarm node (or pull one), with live bandwidth and blocks-sent charts.
import { api, bytes, el, followJob, imageSelect, notice, showError, when } from './lib.js';
import { lineChart } from './charts.js';

/**
 * Draws a transfer job's samples: bandwidth between samples, and blocks sent so far; a
 * transfer that moved nothing gets a sentence, not empty charts. `onEnd` runs when it ends.
 */
function follow(job, box, onEnd) {
  const samples = [];
  const status = el('p', { id: 'transfer-state' }, `${job.title}: ${job.state}`);
  const charts = el('div', { id: 'transfer-charts' });
  const result = el('pre', { id: 'transfer-result', hidden: true });
  box.replaceChildren(status, charts, result);
  let nothingMoved = false;
  const draw = () => {
    if (nothingMoved) return;
    const rate = samples.slice(1).map((s, i) => ({ x: s.ms / 1000, y: (s.wireBytes - samples[i].wireBytes) / Math.max(1e-3, (s.ms - samples[i].ms) / 1000) }));
    // A push counts blocks sent; a pull, bytes fetched.
    const total = job.kind === 'push'
      ? lineChart([{ points: samples.map((s) => ({ x: s.ms / 1000, y: s.blocks })), color: '#1a7f37' }], { title: 'blocks sent', format: (v) => Math.round(v).toString() })
      : lineChart([{ points: samples.map((s) => ({ x: s.ms / 1000, y: s.wireBytes })), color: '#1a7f37' }], { title: 'bytes fetched', format: bytes });
    charts.replaceChildren(lineChart([{ points: rate, color: '#1f6feb' }], { title: 'bandwidth (bytes/s on the wire)', format: (v) => `${bytes(v)}/s` }), total);
  };
  return followJob(job.id, (e) => {
    if (e.type === 'sample') {
      samples.push(e.sample);
      draw();
    } else if (e.type === 'state') {
      status.textContent = `${job.title}: ${e.state}`;
      if (['succeeded', 'failed', 'cancelled'].includes(e.state)) onEnd?.();
    } else if (e.type === 'result') {
      result.hidden = false;
      const r = e.result;
      nothingMoved = job.kind === 'push' ? r.blocksSent === 0 : r.blocksFetched === 0;
      if (nothingMoved) charts.replaceChildren();
      result.textContent = job.kind === 'push'
        ? (r.alreadyPresent ? 'the receiver already had this image: nothing sent' : `${r.blocksSent} of ${r.blockCount} blocks sent, ${bytes(r.wireBytesSent)} on the wire in ${r.seconds.toFixed(2)} s`)
        : (r.alreadyPresent ? 'this repository already had the image: nothing fetched' : `${r.blocksFetched} of ${r.blockCount} blocks fetched (${r.blocksLocal} found here), ${bytes(r.bytesFetched)} in ${r.seconds.toFixed(2)} s`);
    } else if (e.type === 'error') {
      result.hidden = false;
      result.textContent = `${e.error.code}: ${e.error.message}`;
    }
  });
}

export async function render(view, _args, session) {
  const [{ images }, { jobs }, doc] = await Promise.all([api('GET', '/api/images'), api('GET', '/api/jobs'), api('GET', '/api/openapi.json')]);
  const live = el('div', { class: 'card', id: 'transfer-live' }, el('p', { class: 'muted' }, 'Start a transfer to see its bandwidth and blocks.'));
  let follower = null;
  const start = async (path, body) => {
    const job = await api('POST', path, body);
    notice(`${job.title} started`, 'info');
    follower?.stop();
    follower = follow(job, live, refreshRecent);
    refreshRecent();
  };

  const image = imageSelect(images, { id: 'push-image' });
  const address = el('input', { type: 'text', id: 'push-address', placeholder: 'host:port of osfarm receive' });
  const token = el('input', { type: 'password', id: 'push-token', placeholder: "the receiver's token" });
  const name = el('input', { type: 'text', id: 'push-name', placeholder: 'name there (optional)' });
  const push = el('button', { class: 'primary', id: 'push-run', disabled: !session.authorized || images.length === 0 }, 'Push');
  push.addEventListener('click', () => start('/api/transfers/push', { image: image.value, address: address.value.trim(), token: token.value || undefined, name: name.value.trim() || undefined }).catch(showError));
  view.append(el('h1', {}, 'Transfer'),
    el('div', { class: 'card' }, el('h2', {}, 'Push an image to another node'),
      el('div', { class: 'row' }, el('div', {}, el('label', { for: 'push-image' }, 'Image'), image), el('div', {}, el('label', { for: 'push-address' }, 'Receiver'), address)),
      el('div', { class: 'row' }, el('div', {}, el('label', { for: 'push-token' }, 'Token'), token), el('div', {}, el('label', { for: 'push-name' }, 'Name'), name), push)));

  if (doc.paths['/api/transfers/pull']) {
    const url = el('input', { type: 'text', id: 'pull-url', placeholder: 'http://node:port/images/<name or digest>' });
    const pullName = el('input', { type: 'text', id: 'pull-name', placeholder: 'name here (optional)' });
    const pull = el('button', { class: 'primary', id: 'pull-run', disabled: !session.authorized }, 'Pull');
    pull.addEventListener('click', () => start('/api/transfers/pull', { url: url.value.trim(), name: pullName.value.trim() || undefined }).catch(showError));
    view.append(el('div', { class: 'card' }, el('h2', {}, 'Pull an image from another node'),
      el('div', { class: 'row' }, el('div', {}, el('label', { for: 'pull-url' }, 'Image URL'), url), el('div', {}, el('label', { for: 'pull-name' }, 'Name'), pullName), pull)));
  }
  // Recent transfers: redrawn whenever one of them ends, so the list is current without a reload.
  const recentList = el('div', { id: 'recent-transfers' });
  const showRecent = (all) => {
    const recent = all.filter((j) => j.kind !== 'build');
    recentList.replaceChildren(recent.length === 0 ? el('p', { class: 'muted' }, 'none yet') :
      el('ul', {}, recent.map((j) => el('li', {}, el('a', { href: '#/transfer', onclick: (e) => { e.preventDefault(); follower?.stop(); follower = follow(j, live, refreshRecent); } }, j.title), ` · ${j.state} · ${when(j.created)}`))));
  };
  const refreshRecent = () => api('GET', '/api/jobs').then((r) => showRecent(r.jobs), showError);
  showRecent(jobs);
  view.append(live, el('div', { class: 'card' }, el('h2', {}, 'Recent transfers'), recentList));
  return () => follower?.stop();
}
