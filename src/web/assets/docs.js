// @ts-check
// The API docs page's "try it": every operation gets a form that sends its request from this
// page and shows the answer. The GUI's session cookie authorizes it (log in on the GUI first),
// or a token typed at the top. Streams (server-sent events) are read for a few seconds only.

/** @type {HTMLInputElement} */
const token = Object.assign(document.createElement('input'), { type: 'password', id: 'try-token', placeholder: 'token (empty: the GUI session)' });
document.querySelector('main > p')?.after(Object.assign(document.createElement('label'), { textContent: 'Try it with: ' }), token);

/**
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {...(Node | string)} children
 */
function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  n.append(...children);
  return n;
}

/** The answer as text: JSON indented, a stream's first seconds, a download's size. */
async function answerText(/** @type {Response} */ r) {
  const type = r.headers.get('content-type') ?? '';
  const head = `${r.status} ${r.statusText} (${type || 'no content type'})\n`;
  if (type.startsWith('application/json')) return head + JSON.stringify(await r.json(), null, 2);
  if (type.startsWith('text/event-stream') && r.body) {
    const reader = r.body.getReader();
    const stop = setTimeout(() => void reader.cancel(), 3000);
    let text = '';
    for (let c = await reader.read(); !c.done && text.length < 16_384; c = await reader.read()) text += new TextDecoder().decode(c.value);
    clearTimeout(stop);
    void reader.cancel();
    return `${head}${text}\n… (the first seconds of the stream)`;
  }
  if (type.startsWith('text/')) return head + (await r.text()).slice(0, 16_384);
  return `${head}${(await r.arrayBuffer()).byteLength} bytes (not shown)`;
}

for (const op of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('section.op'))) {
  const method = op.dataset.method ?? 'GET';
  const path = op.dataset.path ?? '';
  const names = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
  const query = (op.dataset.query ?? '').split(',').filter(Boolean);
  /** @type {Record<string, HTMLInputElement>} */
  const inputs = {};
  const fields = [...names, ...query].map((n) => {
    inputs[n] = /** @type {HTMLInputElement} */ (el('input', { type: 'text', name: n, placeholder: n }));
    return el('label', {}, `${n} `, inputs[n]);
  });
  const body = op.dataset.body ? /** @type {HTMLTextAreaElement} */ (el('textarea', { rows: '4', name: 'body' })) : null;
  if (body) body.value = op.dataset.body ?? '';
  const out = el('pre', { class: 'try-answer', hidden: '' });
  const send = el('button', { type: 'button', class: 'primary' }, `Send ${method}`);
  send.addEventListener('click', async () => {
    let url = path.replace(/\{(\w+)\}/g, (_, n) => encodeURIComponent(inputs[n].value.trim()));
    const q = new URLSearchParams(query.filter((n) => inputs[n].value.trim() !== '').map((n) => [n, inputs[n].value.trim()]));
    if (q.size > 0) url += `?${q}`;
    /** @type {Record<string, string>} */
    const headers = {};
    if (token.value) headers.authorization = `Bearer ${token.value}`;
    if (body) headers['content-type'] = 'application/json';
    out.hidden = false;
    out.textContent = `${method} ${url} …`;
    try {
      out.textContent = `${method} ${url}\n${await answerText(await fetch(url, { method, headers, body: body ? body.value : undefined }))}`;
    } catch (err) {
      out.textContent = `${method} ${url}\n${err}`;
    }
  });
  op.append(el('details', { class: 'try' }, el('summary', {}, 'Try it'), ...fields, ...(body ? [el('label', {}, 'JSON body'), body] : []), send, out));
}
