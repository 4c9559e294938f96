// @ts-check
// The osfarm GUI: a hash router over seven pages; a login form when the token is needed.
import { api, byId, el, notice, showError } from './lib.js';

const PAGES = {
  compose: () => import('./compose.js'),
  build: () => import('./build.js'),
  repository: () => import('./repository.js'),
  stages: () => import('./stages.js'),
  compare: () => import('./compare.js'),
  transfer: () => import('./transfer.js'),
  boot: () => import('./boot.js'),
};

let session = { authorized: false, readOnly: false };
let leave = null;

function loginForm() {
  const input = el('input', { type: 'password', id: 'token', autocomplete: 'current-password', placeholder: 'token' });
  const button = el('button', { class: 'primary', type: 'submit' }, 'Log in');
  const form = el('form', { class: 'card', id: 'login' },
    el('h1', {}, 'Log in'),
    el('p', { class: 'muted' }, 'osfarm serve printed the token at its first start; it is kept in its token file (mode 0600).'),
    el('label', { for: 'token' }, 'Token'), input, el('p', {}, button));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      session = await api('POST', '/api/session', { token: input.value.trim() });
      notice('');
      renderSession();
      route();
    } catch (err) {
      showError(err);
    }
  });
  return form;
}

function renderSession() {
  const box = byId('session');
  box.replaceChildren();
  if (session.authorized) {
    box.append('signed in ', el('button', { onclick: async () => { session = await api('DELETE', '/api/session'); renderSession(); route(); } }, 'log out'));
  } else if (session.readOnly) box.append('read-only (log in to change things) ', el('a', { href: '#/login' }, 'log in'));
}

async function route() {
  const [first, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const name = first || 'compose';
  const page = byId('page');
  leave?.();
  leave = null;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('data-page') === name);
  if (name === 'login' || (!session.authorized && !session.readOnly)) {
    page.replaceChildren(loginForm());
    return;
  }
  const load = PAGES[name];
  if (!load) {
    page.replaceChildren(el('p', {}, `No page ${name}.`));
    return;
  }
  notice('');
  const mod = await load();
  const view = el('section', { id: `page-${name}` });
  page.replaceChildren(view);
  try {
    leave = (await mod.render(view, rest.map(decodeURIComponent), session)) ?? null;
  } catch (err) {
    showError(err);
  }
}

window.addEventListener('hashchange', route);
session = await api('GET', '/api/session');
renderSession();
route();
