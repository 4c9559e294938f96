/** Small HTTP helpers for the web API: routing, JSON bodies and answers, errors with codes. */
import type { IncomingMessage, ServerResponse } from 'node:http';

import { SpecError } from '../spec/errors.js';
import { type ErrorCode, errorJson, invalidArgument, toOsfarmError } from '../base/errors.js';

export interface Request {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  params: Record<string, string>;
  /** The token was presented (false in read-only browsing without one). */
  authorized: boolean;
}

export type Handler = (r: Request) => Promise<void> | void;

export interface Route {
  method: string;
  /** `/api/images/:ref` style; a `:name` segment matches one path segment. */
  path: string;
  /** Allowed in read-only browsing without the token. */
  read?: boolean;
  /** Needs no token at all (logging in). */
  open?: boolean;
  handler: Handler;
}

interface Compiled extends Route {
  re: RegExp;
  names: string[];
}

export class Router {
  private readonly routes: Compiled[] = [];

  add(route: Route): this {
    const names: string[] = [];
    const re = new RegExp(
      `^${route.path.replace(/:([a-zA-Z]+)/g, (_, n: string) => {
        names.push(n);
        return '([^/]+)';
      })}$`,
    );
    this.routes.push({ ...route, re, names });
    return this;
  }

  /** The route for a method and path, with its parameters; `methods` lists what the path allows otherwise. */
  match(method: string, path: string): { route?: Compiled; params: Record<string, string>; methods: string[] } {
    const methods: string[] = [];
    for (const r of this.routes) {
      const m = r.re.exec(path);
      if (!m) continue;
      if (r.method !== method && !(method === 'HEAD' && r.method === 'GET')) {
        methods.push(r.method);
        continue;
      }
      const params: Record<string, string> = {};
      r.names.forEach((n, i) => (params[n] = decodeURIComponent(m[i + 1]!)));
      return { route: r, params, methods };
    }
    return { params: {}, methods };
  }
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  OSFARM_INVALID_ARGUMENT: 400,
  OSFARM_BAD_SPEC: 422,
  OSFARM_NOT_FOUND: 404,
  OSFARM_AMBIGUOUS: 409,
  OSFARM_LOCKED: 503,
  OSFARM_UNAUTHORIZED: 401,
  OSFARM_UNTRUSTED: 403,
  OSFARM_ABORTED: 409,
  OSFARM_BAD_INDEX: 422,
  OSFARM_BAD_ARCHIVE: 422,
  OSFARM_MISMATCH: 409,
};

/** An error as the API reports it: `{ error: { code, message, issues? } }` (the one error shape on the port) with a fitting status. */
export function errorBody(err: unknown): { status: number; body: { error: { code: string; message: string; issues?: unknown } } } {
  const e = toOsfarmError(err);
  const body = errorJson(e);
  return { status: STATUS[e.code] ?? 500, body: e instanceof SpecError ? { error: { ...body.error, issues: e.issues } } : body };
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers });
  res.end(text);
}

export function sendError(res: ServerResponse, err: unknown): void {
  const { status, body } = errorBody(err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, status, body, status === 401 ? { 'www-authenticate': 'Bearer realm="osfarm"' } : {});
}

export function sendText(res: ServerResponse, status: number, text: string, type: string): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** Reads a JSON object body (at most `limit` bytes). */
export async function readJson(req: IncomingMessage, limit = 1 << 20): Promise<Record<string, unknown>> {
  const type = req.headers['content-type'] ?? '';
  if (!type.startsWith('application/json')) throw invalidArgument('send the body as JSON (Content-Type: application/json)');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw invalidArgument(`the body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw invalidArgument(`the body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidArgument('the body must be a JSON object');
  return value as Record<string, unknown>;
}

/** A required string field of a body or query. */
export function field(obj: Record<string, unknown>, name: string): string {
  const v = obj[name];
  if (typeof v !== 'string' || v === '') throw invalidArgument(`${name} is required (a non-empty string)`);
  return v;
}

export function optField(obj: Record<string, unknown>, name: string): string | undefined {
  const v = obj[name];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw invalidArgument(`${name} must be a string`);
  return v;
}

export function query(url: URL, name: string): string {
  const v = url.searchParams.get(name);
  if (!v) throw invalidArgument(`query parameter ${name} is required`);
  return v;
}
