/**
 * The web front end's request handler: `createWebHandler()` answers `/`, `/assets/*` and
 * `/api/*` and leaves every other path to the handlers mounted next to it (the HTTP pull
 * endpoints). docs/web.md describes it.
 */
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { defaultWorkDir } from '../base/env.js';
import { errorJson, invalidArgument, OsfarmError } from '../base/errors.js';
import { VERSION } from '../base/version.js';
import type { FarmClient } from '../farm/client.js';
import { stagesRoot } from '../stages/store.js';
import { Api, type DocumentedRoute } from './api.js';
import { cookieName, loadOrCreateToken, presentedToken, sameOrigin, sessionCookie, tokenMatches } from './auth.js';
import { type Request, readJson, Router, sendError, sendJson, sendText } from './http.js';
import { docsPage, openApiDocument } from './openapi.js';

export interface WebOptions {
  /** The repository the GUI shows and builds into (created if missing). */
  repo: string;
  /** The stage store (default $OSFARM_STAGES, else <repo>/stages). */
  stages?: string;
  /** The token file: read, or created with a new token (mode 0600) at first start. */
  tokenFile: string;
  /** Let anyone browse without the token (the routes marked read); changes still need it. */
  readOnly?: boolean;
  /** Build scratch space and package caches (default $OSFARM_WORK or ~/.cache/osfarm). */
  workDir?: string;
  /** Builds waiting at most (default 4). */
  maxQueuedBuilds?: number;
  /** A build farm: builds go to its workers (and its job history is in Redis). */
  farm?: FarmClient;
}

export interface WebHandler extends AsyncDisposable {
  /** Resolves true if it answered the request, false if the path is not the web's. */
  handler(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
  /** Cancels queued and running jobs and waits for builds to tear down. */
  close(): Promise<void>;
  /** The token, and whether this start created it (then show it once). */
  token: { value: string; created: boolean; path: string };
  api: Api;
}

/** The GUI's files: src/web/assets, found from both src/ (tsx) and dist/ (compiled). */
const ASSETS = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'src', 'web', 'assets');
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

async function serveAsset(res: ServerResponse, name: string): Promise<void> {
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name) || !TYPES[extname(name)]) throw new OsfarmError('OSFARM_NOT_FOUND', `no asset ${name}`);
  let body: Buffer;
  try {
    body = await readFile(join(ASSETS, name));
  } catch {
    throw new OsfarmError('OSFARM_NOT_FOUND', `no asset ${name}`);
  }
  res.writeHead(200, {
    'content-type': TYPES[extname(name)]!,
    'content-length': body.length,
    'cache-control': 'no-cache',
    // Same-origin scripts and styles only; inline SVG charts are markup, not scripts.
    'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    'x-content-type-options': 'nosniff',
  });
  res.end(body);
}

export async function createWebHandler(options: WebOptions): Promise<WebHandler> {
  const token = loadOrCreateToken(options.tokenFile);
  const readOnly = options.readOnly ?? false;
  const cookie = cookieName(token.token);
  const api = new Api({
    repo: resolve(options.repo),
    stages: options.stages ?? stagesRoot({ repo: options.repo }),
    workDir: resolve(options.workDir ?? defaultWorkDir()),
    maxQueuedBuilds: options.maxQueuedBuilds ?? 4,
    ...(options.farm ? { farm: options.farm } : {}),
  });
  const routes = api.routes();
  // The session routes are open (they are how a browser logs in) and documented with the rest.
  const session: DocumentedRoute[] = [
    {
      method: 'GET', path: '/api/session', open: true,
      doc: { tag: 'session', summary: 'Whether this request carries the token, and whether the server allows read-only browsing', response: { status: 200, description: '{ authorized, readOnly }' } },
      handler: ({ res, authorized }) => sendJson(res, 200, { authorized, readOnly }),
    },
    {
      method: 'POST', path: '/api/session', open: true,
      doc: { tag: 'session', summary: 'Log in: check the token and set the HttpOnly, SameSite=Strict session cookie (osfarm_<id of this server>)', body: { token: { description: 'the token', required: true } }, response: { status: 200, description: '{ authorized: true, readOnly }; 401 for a wrong token' } },
      handler: async ({ req, res }) => {
        const body = await readJson(req, 4096);
        if (!tokenMatches(typeof body.token === 'string' ? body.token : undefined, token.token)) throw new OsfarmError('OSFARM_UNAUTHORIZED', 'wrong token: it is in the token file osfarm serve printed at its first start');
        sendJson(res, 200, { authorized: true, readOnly }, { 'set-cookie': sessionCookie(cookie, token.token) });
      },
    },
    {
      method: 'DELETE', path: '/api/session', open: true,
      doc: { tag: 'session', summary: 'Log out: clear the cookie', response: { status: 200, description: '{ authorized: false, readOnly }' } },
      handler: ({ res }) => sendJson(res, 200, { authorized: false, readOnly }, { 'set-cookie': sessionCookie(cookie, null) }),
    },
  ];
  const doc = openApiDocument([...session, ...routes], VERSION);
  const router = new Router();
  for (const r of routes) router.add(r);
  // Open: the page itself, the API documents, and the session.
  const open = new Router()
    .add({ method: 'GET', path: '/', handler: ({ res }) => serveAsset(res, 'index.html') })
    .add({ method: 'GET', path: '/assets/:name', handler: ({ res, params }) => serveAsset(res, params.name!) })
    .add({ method: 'GET', path: '/api/openapi.json', handler: ({ res }) => sendJson(res, 200, doc) })
    .add({ method: 'GET', path: '/api/docs', handler: ({ res }) => sendText(res, 200, docsPage(doc), 'text/html; charset=utf-8') });
  for (const r of session) open.add(r);

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    if (!(path === '/' || path.startsWith('/assets/') || path === '/api' || path.startsWith('/api/'))) return false;
    const method = req.method ?? 'GET';
    const authorized = tokenMatches(presentedToken(req, cookie), token.token);
    try {
      if (method !== 'GET' && method !== 'HEAD' && !sameOrigin(req)) throw new OsfarmError('OSFARM_UNAUTHORIZED', 'a request from another site\'s page is refused');
      const r: Request = { req, res, url, params: {}, authorized };
      const pub = open.match(method, path);
      if (pub.route) {
        await pub.route.handler({ ...r, params: pub.params });
        return true;
      }
      const m = router.match(method, path);
      if (!m.route) {
        const allowed = [...pub.methods, ...m.methods];
        if (allowed.length > 0) sendJson(res, 405, errorJson(invalidArgument(`${method} is not allowed on ${path} (use ${allowed.join(', ')})`)), { allow: allowed.join(', ') });
        else throw new OsfarmError('OSFARM_NOT_FOUND', `no API route ${path}: see /api/docs`);
        return true;
      }
      if (!authorized && !(readOnly && m.route.read)) {
        throw new OsfarmError('OSFARM_UNAUTHORIZED', readOnly ? 'this needs the token (the server allows only browsing without it)' : 'this needs the token: send Authorization: Bearer <token>, or log in on the page');
      }
      await m.route.handler({ ...r, params: m.params });
    } catch (err) {
      sendError(res, err);
    }
    return true;
  };

  const close = () => api.close();
  return {
    handler,
    close,
    [Symbol.asyncDispose]: close,
    token: { value: token.token, created: token.created, path: token.path },
    api,
  };
}
