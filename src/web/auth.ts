/**
 * The web token: one random secret per server, created at first start in a file only its
 * owner may read (0600), printed once by `osfarm serve`. Requests carry it as
 * `Authorization: Bearer <token>` or, for the browser (EventSource and download links
 * cannot set headers), as the HttpOnly SameSite=Strict cookie `POST /api/session` sets.
 */
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { mkdirSync, openSync, readFileSync, statSync, writeSync, closeSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { dirname } from 'node:path';

import { OsfarmError } from '../base/errors.js';

/**
 * The session cookie's name: `osfarm_<12 hex digits of the token's sha256>`. Browsers keep
 * cookies per host, not per port, so two servers on one host need different names.
 */
export function cookieName(token: string): string {
  return `osfarm_${createHash('sha256').update(`osfarm web cookie\0${token}`).digest('hex').slice(0, 12)}`;
}

export { defaultTokenFile } from '../base/env.js';

export interface LoadedToken {
  token: string;
  /** True when this call created the file: the only time the token is shown. */
  created: boolean;
  path: string;
}

/** Reads the token file, or creates it (mode 0600, never overwriting a file that appears meanwhile). */
export function loadOrCreateToken(path: string): LoadedToken {
  try {
    const st = statSync(path);
    if ((st.mode & 0o077) !== 0) {
      throw new OsfarmError('OSFARM_UNAUTHORIZED', `the token file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it, or delete it to get a new token`);
    }
    const token = readFileSync(path, 'utf8').split('\n')[0]!.trim();
    if (token.length < 16) throw new OsfarmError('OSFARM_UNAUTHORIZED', `the token file ${path} holds no token of at least 16 characters: delete it to get a new one`);
    return { token, created: false, path };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const token = randomBytes(24).toString('base64url');
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, `${token}\n`);
  } finally {
    closeSync(fd);
  }
  return { token, created: true, path };
}

/** Compares in constant time (over digests, so lengths do not leak either). */
export function tokenMatches(given: string | undefined, token: string): boolean {
  if (given === undefined) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

function cookieValue(req: IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim());
  }
  return undefined;
}

/** The token a request presents, from its Authorization header or its session cookie. */
export function presentedToken(req: IncomingMessage, cookie: string): string | undefined {
  // The scheme is case-insensitive (RFC 7235 §2.1): "bearer", "BEARER" as well.
  const bearer = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  if (bearer) return bearer[1];
  return cookieValue(req, cookie);
}

/** The Set-Cookie value for a session (or for logging out, with a null value). */
export function sessionCookie(cookie: string, token: string | null): string {
  const base = `${cookie}=${token === null ? '' : encodeURIComponent(token)}; Path=/; HttpOnly; SameSite=Strict`;
  return token === null ? `${base}; Max-Age=0` : base;
}

/**
 * A cross-site form cannot carry the cookie (SameSite=Strict), but a request whose Origin
 * names another host is refused too, so a page elsewhere never drives the API.
 */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  if (!origin || origin === 'null') return origin === undefined;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}
