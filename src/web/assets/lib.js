// @ts-check
// Shared helpers of the pages: API calls, DOM building, formatting, notices, job streams.

/** @typedef {{ path: string, message: string }} SpecIssue */

/** An API error: the answer's `{ error: { code, message, issues } }` and its HTTP status. */
export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {string | undefined} code
   * @param {number} status
   * @param {SpecIssue[] | undefined} issues
   */
  constructor(message, code, status, issues) {
    super(message);
    this.code = code;
    this.status = status;
    this.issues = issues;
  }
}

/**
 * Calls the API; throws an ApiError carrying the API's code and message.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body] sent as JSON
 * @returns {Promise<any>} the JSON answer (or text)
 */
export async function api(method, path, body) {
  /** @type {RequestInit & { headers: Record<string, string> }} */
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get('content-type') ?? '';
  const data = type.includes('json') ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(data?.error?.message ?? `${res.status} ${res.statusText}`, data?.error?.code, res.status, data?.error?.issues);
  return data;
}

/**
 * An element of the page by id; a missing one is a bug of index.html.
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node;
}

/** @typedef {Node | string | number | null | undefined | false | unknown[]} Child */

/**
 * el('div', { class: 'x', onclick: f }, child, 'text', …): attributes, `on…` listeners, and
 * `value` / `checked` set as properties.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any> | null} [attrs]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, ...children) {
  const node = /** @type {HTMLElementTagNameMap[K] & { value?: unknown, checked?: unknown }} */ (document.createElement(tag));
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'value') node.value = v;
    else if (k === 'checked') node.checked = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of /** @type {(Node | string | number | null | undefined | false)[]} */ (children.flat(Infinity))) if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

/**
 * @param {number | null | undefined} n bytes
 * @returns {string}
 */
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

export const percent = (/** @type {number} */ x) => `${(x * 100).toFixed(1)} %`;
export const short = (/** @type {string | null | undefined} */ d) => (d ? d.slice(0, 12) : '-');
export const when = (/** @type {string | null | undefined} */ iso) => (iso ? new Date(iso).toLocaleString() : '-');

/**
 * Shows an error (or, with kind 'info', a message) above the page until the next navigation.
 * @param {string} message
 * @param {'error' | 'info'} [kind]
 */
export function notice(message, kind = 'error') {
  const box = byId('notice');
  box.textContent = message;
  box.className = kind === 'info' ? 'info' : '';
  box.hidden = !message;
}

/**
 * Shows an error the API (an ApiError) or the browser threw.
 * @param {any} err
 */
export function showError(err) {
  const issues = err.issues?.map((i) => `${i.path}: ${i.message}`).join('\n');
  notice(`${err.code ? `${err.code}: ` : ''}${issues ?? err.message}`);
}

/**
 * Runs an async action from a button, showing errors; the button is disabled meanwhile.
 * @param {HTMLButtonElement} button
 * @param {() => Promise<void>} fn
 */
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
 * event's id and the server sends what came after it.
 * @param {string} id
 * @param {(event: any) => void} onEvent the job's events (`{ type, … }`), then `{ type: 'end' }`
 * @param {(status: 'live' | 'reconnecting' | 'closed') => void} [onConnection] 'reconnecting': the
 *   browser retries by itself; 'closed': the server refused the stream
 * @returns {{ stop(): void }}
 */
export function followJob(id, onEvent, onConnection = () => {}) {
  const source = new EventSource(`/api/jobs/${id}/events`);
  const types = ['state', 'phase', 'log', 'progress', 'sample', 'output', 'result', 'error'];
  // The job's `error` event has data; the EventSource's own `error` (a lost connection) has none.
  const lost = () => onConnection(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  for (const t of types) {
    source.addEventListener(t, (m) => {
      const data = /** @type {MessageEvent<string>} */ (m).data;
      if (data === undefined) lost();
      else onEvent(JSON.parse(data));
    });
  }
  source.addEventListener('open', () => onConnection('live'));
  source.addEventListener('end', () => {
    source.close();
    onEvent({ type: 'end' });
  });
  return { stop: () => source.close() };
}

/**
 * Calls `fn` at most once per `ms` after the last call.
 * @template {unknown[]} A
 * @param {(...args: A) => void} fn
 * @param {number} ms
 * @returns {(...args: A) => void}
 */
export function debounce(fn, ms) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/**
 * A select of the repository's images.
 * @param {{ digest: string, name?: string | null, size: number }[]} images
 * @param {Record<string, any>} [attrs]
 * @param {string} [selected] a digest or name
 */
export function imageSelect(images, attrs = {}, selected) {
  return el('select', attrs, images.map((i) => el('option', { value: i.digest, selected: i.digest === selected || i.name === selected }, `${i.name ?? short(i.digest)} — ${bytes(i.size)}`)));
}
