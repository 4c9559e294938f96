// Shared helpers of the pages: API calls, DOM building, formatting, notices, job streams.

/** Calls the API; throws an Error carrying the API's code and message. */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get('content-type') ?? '';
  const data = type.includes('json') ? await res.json() : await res.text();
  if (!res.ok) {
    const e = new Error(data?.error?.message ?? `${res.status} ${res.statusText}`);
    e.code = data?.error?.code;
    e.status = res.status;
    e.issues = data?.error?.issues;
    throw e;
  }
  return data;
}

/** el('div', { class: 'x', onclick: f }, child, 'text', …) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'value') node.value = v;
    else if (k === 'checked') node.checked = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

export function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : v < 10 ? 2 : 1)} ${units[i]}`;
}

export const percent = (x) => `${(x * 100).toFixed(1)} %`;
export const short = (d) => (d ? d.slice(0, 12) : '-');
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '-');

/** Shows an error (or, with kind 'info', a message) above the page until the next navigation. */
export function notice(message, kind = 'error') {
  const box = document.getElementById('notice');
  box.textContent = message;
  box.className = kind === 'info' ? 'info' : '';
  box.hidden = !message;
}

export function showError(err) {
  const issues = err.issues?.map((i) => `${i.path}: ${i.message}`).join('\n');
  notice(`${err.code ? `${err.code}: ` : ''}${issues ?? err.message}`);
}

/** Runs an async action from a button, showing errors; the button is disabled meanwhile. */
export function action(button, fn) {
  return async () => {
    button.disabled = true;
    try {
      notice('');
      await fn();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  };
}

/**
 * Follows a job's events (history first, then live) until it ends or `stop()` is called.
 * When the connection drops (the server restarts), the browser reconnects with the last
 * event's id and the server sends what came after it. `onConnection(status)` says 'live',
 * 'reconnecting' (the browser retries by itself) or 'closed' (the server refused the stream).
 */
export function followJob(id, onEvent, onConnection = () => {}) {
  const source = new EventSource(`/api/jobs/${id}/events`);
  const types = ['state', 'phase', 'log', 'progress', 'sample', 'output', 'result', 'error'];
  // The job's `error` event has data; the EventSource's own `error` (a lost connection) has none.
  const lost = () => onConnection(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  for (const t of types) source.addEventListener(t, (m) => (m.data === undefined ? lost() : onEvent(JSON.parse(m.data))));
  source.addEventListener('open', () => onConnection('live'));
  source.addEventListener('end', () => {
    source.close();
    onEvent({ type: 'end' });
  });
  return { stop: () => source.close() };
}

/** Calls `fn` at most once per `ms` after the last call. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** A select of the repository's images. */
export function imageSelect(images, attrs = {}, selected) {
  return el('select', attrs, images.map((i) => el('option', { value: i.digest, selected: i.digest === selected || i.name === selected }, `${i.name ?? short(i.digest)} — ${bytes(i.size)}`)));
}
