/**
 * Serving a repository over HTTP for `osfarm pull` (docs/http.md). The URL layout is the
 * repository's own directory layout (`/images/<digest>/{image,index.osfi,meta.json}`), so
 * the same directory copied to any static web server works for pull too; this server adds
 * name resolution (a redirect to the digest URL) and a JSON listing. Image data and indexes
 * are immutable and served with strong ETags, long-lived cache headers and single ranges,
 * which is what lets caching proxies (nginx `slice`, Squid) fan an origin out.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

import { type ErrorCode, errorJson, OsfarmError, toOsfarmError } from '../../base/errors.js';
import { Repository, type ImageEntry } from '../../repo/index.js';
import { MANIFEST_FILE, SIGNATURE_FILE } from '../../trust/manifest.js';
import type { TlsServerOptions } from '../../trust/tls.js';
import { SOFTWARE } from '../../base/version.js';
import { listenOn } from '../address.js';
import { ConnectionGate, type Ticket } from '../gate.js';

/** A request handler: resolves true if it answered the request, false to let the next one try. */
export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

export interface PullHandlerOptions {
  /** The repository to serve. */
  repo: string;
  /** Requests served at once; more get 503 with Retry-After (default 64). */
  maxConcurrent?: number;
}

/** Counters over the handler's life (the origin's side of a scale measurement). */
export interface PullServeStats {
  requests: number;
  active: number;
  /** Body bytes sent (headers not counted). */
  bytesSent: number;
  /** Responses by status code. */
  statuses: Record<number, number>;
}

export type PullHandler = HttpHandler & { stats: PullServeStats };

/** The files of an image directory that are served, and how. */
const IMAGE_FILES: Record<string, { type: string; immutable: boolean; etagSuffix: string }> = {
  image: { type: 'application/octet-stream', immutable: true, etagSuffix: '' },
  'index.osfi': { type: 'application/vnd.osfarm.index', immutable: true, etagSuffix: '.osfi' },
  // meta.json carries the image's tags, which can change: revalidate every time.
  'meta.json': { type: 'application/json', immutable: false, etagSuffix: '' },
  // The boot profile (docs/lazy-boot.md), optional (404 without one); it can be recorded later.
  'profile.json': { type: 'application/json', immutable: false, etagSuffix: '' },
  // The signed manifest (docs/trust.md) names the image too, and is re-signed when it moves.
  [MANIFEST_FILE]: { type: 'application/json', immutable: false, etagSuffix: '' },
  [SIGNATURE_FILE]: { type: 'text/plain; charset=utf-8', immutable: false, etagSuffix: '' },
};

const IMMUTABLE = 'public, max-age=31536000, immutable';
const REVALIDATE = 'no-cache';
const DIGEST = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/** The repository's image list, re-read only when its catalog changes. */
class Listing {
  private repo: Repository | undefined;
  private stamp = '';
  private images: ImageEntry[] = [];

  constructor(private readonly repoPath: string) {}

  /** The repository's hash and block size (valid after `current()`). */
  params(): { hash: string; blockSize: number } {
    return { hash: this.repo!.hash, blockSize: this.repo!.blockSize };
  }

  async current(): Promise<ImageEntry[]> {
    const st = await fsp.stat(join(this.repoPath, 'catalog.osfc'));
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (stamp === this.stamp) return this.images;
    // Never wait for the lock on the event loop: a writer's commit is brief, so poll.
    for (let attempt = 0; ; attempt++) {
      try {
        this.repo ??= Repository.open(this.repoPath, { waitForLock: false });
        this.images = this.repo.list();
        this.stamp = stamp;
        return this.images;
      } catch (err) {
        if (!(err instanceof OsfarmError && err.code === 'OSFARM_LOCKED') || attempt >= 100) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Same order as `Repository.resolve`: full digest, any tag, unique digest prefix (≥ 4). */
  async resolve(ref: string): Promise<ImageEntry | undefined> {
    const images = await this.current();
    const lower = ref.toLowerCase();
    const exact = images.find((e) => e.digest === lower) ?? images.find((e) => e.tags.includes(ref));
    if (exact || !/^[0-9a-f]{4,}$/.test(lower)) return exact;
    const matches = images.filter((e) => e.digest.startsWith(lower));
    return matches.length === 1 ? matches[0] : undefined;
  }
}

type ByteRange = { start: number; end: number };

/**
 * One `bytes=` range against a resource of `size` bytes: a range, 'unsatisfiable' (416),
 * or undefined when the header is absent, malformed or asks for several ranges — all of
 * which the RFC lets a server answer with the whole resource.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (m[2] !== '' && Number(m[2]) < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((t) => {
    const v = t.trim();
    return v === '*' || v === etag || v === `W/${etag}`;
  });
}

/** The request handler for pull's URLs; mount it first and let other handlers follow. */
export function createPullHandler(opts: PullHandlerOptions): PullHandler {
  const listing = new Listing(opts.repo);
  const maxConcurrent = opts.maxConcurrent ?? 64;
  const stats: PullServeStats = { requests: 0, active: 0, bytesSent: 0, statuses: {} };

  const finish = (res: ServerResponse, status: number, headers: Record<string, string | number>, body?: string): void => {
    stats.statuses[status] = (stats.statuses[status] ?? 0) + 1;
    res.writeHead(status, { Server: SOFTWARE, ...headers });
    if (body !== undefined && res.req.method !== 'HEAD') {
      stats.bytesSent += Buffer.byteLength(body);
      res.end(body);
    } else {
      res.end();
    }
  };
  const error = (res: ServerResponse, status: number, code: ErrorCode, message: string, extra: Record<string, string | number> = {}): void =>
    finish(res, status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...extra }, `${JSON.stringify(errorJson(new OsfarmError(code, message)))}\n`);

  async function serveFile(req: IncomingMessage, res: ServerResponse, entry: ImageEntry, file: string): Promise<void> {
    const kind = IMAGE_FILES[file]!;
    const path = file === 'image' ? entry.path : file === 'index.osfi' ? entry.indexPath : join(entry.path, '..', file);
    const fh = await fsp.open(path, 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' && (file === MANIFEST_FILE || file === SIGNATURE_FILE || file === 'profile.json')) return undefined;
      throw err;
    });
    if (!fh && file === 'profile.json') return error(res, 404, 'OSFARM_NOT_FOUND', `image ${entry.digest} has no boot profile`);
    if (!fh) return error(res, 404, 'OSFARM_NOT_FOUND', `image ${entry.digest} is not signed (the repository had no signing key when it got it)`);
    try {
      const st = await fh.stat();
      const size = st.size;
      const etag = kind.immutable ? `"${entry.digest}${kind.etagSuffix}"` : `"${entry.digest}-${st.size}-${Math.floor(st.mtimeMs)}"`;
      const headers: Record<string, string | number> = {
        ETag: etag,
        'Last-Modified': st.mtime.toUTCString(),
        'Cache-Control': kind.immutable ? IMMUTABLE : REVALIDATE,
        'Accept-Ranges': 'bytes',
        'Content-Type': kind.type,
      };
      if (etagMatches(req.headers['if-none-match'], etag)) return finish(res, 304, headers);
      const since = Date.parse(req.headers['if-modified-since'] ?? '');
      if (!req.headers['if-none-match'] && !Number.isNaN(since) && Math.floor(st.mtimeMs / 1000) * 1000 <= since) {
        return finish(res, 304, headers);
      }
      // If-Range: a range only if the client's copy is still this one.
      const ifRange = req.headers['if-range'];
      const rangeOk = ifRange === undefined || ifRange === etag || ifRange === headers['Last-Modified'];
      const range = rangeOk ? parseRange(req.headers.range, size) : undefined;
      if (range === 'unsatisfiable') {
        return finish(res, 416, { ...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': 0 });
      }
      const { start, end } = range ?? { start: 0, end: size - 1 };
      const length = Math.max(0, end - start + 1);
      if (range) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
      headers['Content-Length'] = length;
      const status = range ? 206 : 200;
      if (req.method === 'HEAD' || length === 0) return finish(res, status, headers);
      stats.statuses[status] = (stats.statuses[status] ?? 0) + 1;
      res.writeHead(status, { Server: SOFTWARE, ...headers });
      const stream = createReadStream('', { fd: fh, start, end, autoClose: false, highWaterMark: 256 << 10 });
      stream.on('data', (chunk: Buffer | string) => (stats.bytesSent += chunk.length));
      // A client that goes away mid-body rejects the pipeline; nothing more to do then.
      await pipeline(stream, res).catch(() => res.destroy());
    } finally {
      await fh.close();
    }
  }

  async function listingResponse(res: ServerResponse): Promise<void> {
    const images = (await listing.current()).map((e) => ({
      digest: e.digest,
      name: e.name ?? null,
      tags: e.tags,
      size: e.size,
      blockCount: e.blockCount,
      ...listing.params(),
      format: e.format,
      added: e.added.toISOString(),
    }));
    finish(res, 200, { 'Content-Type': 'application/json', 'Cache-Control': REVALIDATE }, `${JSON.stringify({ images })}\n`);
  }

  async function route(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (path === '/v1/images.json') return listingResponse(res);
    if (path === '/osfarm-repo.json') {
      const body = await fsp.readFile(join(opts.repo, 'osfarm-repo.json'), 'utf8');
      return finish(res, 200, { 'Content-Type': 'application/json', 'Cache-Control': REVALIDATE }, body);
    }
    const m = /^\/images\/([^/]+)\/([^/]+)$/.exec(path);
    if (!m || !(m[2]! in IMAGE_FILES)) return error(res, 404, 'OSFARM_NOT_FOUND', 'no such resource: images are at /images/<digest>/{image,index.osfi,meta.json,profile.json,manifest.json,manifest.json.minisig}');
    let ref: string;
    try {
      ref = decodeURIComponent(m[1]!);
    } catch {
      return error(res, 400, 'OSFARM_INVALID_ARGUMENT', 'the image reference is not valid percent-encoding');
    }
    const entry = await listing.resolve(ref);
    if (!entry) return error(res, 404, 'OSFARM_NOT_FOUND', `no image '${ref}' in this repository`);
    if (!DIGEST.test(m[1]!) || entry.digest !== m[1]) {
      // A name or prefix: send the client to the immutable, cacheable digest URL.
      return finish(res, 307, { Location: `/images/${entry.digest}/${m[2]}`, 'Cache-Control': 'no-store', 'Content-Length': 0 });
    }
    return serveFile(req, res, entry, m[2]!);
  }

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://x').pathname;
    } catch {
      return false;
    }
    if (!(path.startsWith('/images/') || path === '/v1/images.json' || path === '/osfarm-repo.json')) return false;
    stats.requests++;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      error(res, 405, 'OSFARM_INVALID_ARGUMENT', `${req.method} is not allowed: this is a read-only repository`, { Allow: 'GET, HEAD' });
      return true;
    }
    if (stats.active >= maxConcurrent) {
      error(res, 503, 'OSFARM_LOCKED', `busy: ${stats.active} requests in progress; retry shortly`, { 'Retry-After': 1 });
      return true;
    }
    stats.active++;
    try {
      await route(req, res, path);
    } catch (err) {
      if (!res.headersSent) {
        const gone = (err as NodeJS.ErrnoException).code === 'ENOENT';
        const e = toOsfarmError(err);
        error(res, gone ? 404 : 500, gone ? 'OSFARM_NOT_FOUND' : e.code, gone ? 'the image was removed' : `server error: ${e.message}`);
      } else {
        res.destroy();
      }
    } finally {
      stats.active--;
    }
    return true;
  };
  return Object.assign(handler, { stats });
}

export interface HttpServerOptions {
  host: string;
  port: number;
  /** Tried in order; the first that answers wins; unanswered requests get 404. */
  handlers: HttpHandler[];
  /** Open connections at once, a backstop beyond which new ones are reset (default 1024). */
  maxConnections?: number;
  /** Serve HTTPS with this certificate chain and key (PEM) instead of HTTP. */
  tls?: TlsServerOptions;
  /**
   * Connections with no request in progress (sending headers, or idle between requests),
   * per source address (default 16) and in all (default 256): more get 503 OSFARM_LOCKED
   * (see gate.ts). Each has `headersTimeoutMs` (default 10 s) to send a request's headers.
   */
  maxPendingPerAddress?: number;
  maxPending?: number;
  headersTimeoutMs?: number;
}

/** Answers a connection without a request in progress, by hand (node's parser has not produced one), and closes it. */
function turnAway(socket: Socket, status: 503 | 408, error: OsfarmError): void {
  if (socket.writable) {
    const body = `${JSON.stringify(errorJson(error))}\n`;
    const reason = status === 503 ? 'Service Unavailable' : 'Request Timeout';
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nServer: ${SOFTWARE}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n` +
        `${status === 503 ? 'Retry-After: 1\r\n' : ''}Connection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
  // Reading on until the peer closes (or 1 s) sends it a FIN after the answer, not a reset.
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/**
 * A node:http server over a chain of handlers, with timeouts that drop idle or stuck peers
 * and per-address fairness for connections that have not sent a request yet.
 */
export async function listenHttp(opts: HttpServerOptions): Promise<{ server: Server; address: AddressInfo }> {
  const headersTimeoutMs = opts.headersTimeoutMs ?? 10_000;
  const gate = new ConnectionGate({ perAddress: opts.maxPendingPerAddress ?? 16, total: opts.maxPending ?? 256, deadlineMs: headersTimeoutMs });
  const tickets = new WeakMap<Socket, Ticket>();
  const turnedAway = new WeakSet<Socket>();
  /** Puts a connection without a request in progress into the gate's pool. */
  const waitForRequest = (socket: Socket, first: boolean): void => {
    const away = (status: 503 | 408, error: OsfarmError) => {
      if (turnedAway.has(socket)) return;
      turnedAway.add(socket);
      // Between requests nothing is owed (and an answer nobody asked for would be taken
      // for the answer to the next request): just close.
      if (first) turnAway(socket, status, error);
      else socket.end();
    };
    const busy = (why: string) => new OsfarmError('OSFARM_LOCKED', `server busy: ${why}; retry in a second`);
    const ticket = gate.admit(socket.remoteAddress, {
      refuse: (why) => away(503, busy(why)),
      expire: () => away(408, new OsfarmError('OSFARM_PROTOCOL', `no complete request within ${headersTimeoutMs / 1000} s`)),
    });
    if (typeof ticket === 'string') away(503, busy(ticket));
    else tickets.set(socket, ticket);
  };
  const listener = async (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    tickets.get(socket)?.leave();
    if (turnedAway.has(socket)) {
      res.destroy();
      return;
    }
    res.once('finish', () =>
      setImmediate(() => {
        if (!socket.destroyed && !socket.writableEnded) waitForRequest(socket, false);
      }),
    );
    for (const h of opts.handlers) {
      if (await h(req, res)) return;
    }
    res.writeHead(404, { 'Content-Type': 'application/json', Server: SOFTWARE });
    res.end(`${JSON.stringify(errorJson(new OsfarmError('OSFARM_NOT_FOUND', `no such resource: ${req.url}`)))}\n`);
  };
  // An https.Server is an http.Server with TLS underneath: the same gate, timeouts and
  // handlers apply, counting from the end of the handshake (the socket requests arrive on).
  const server: Server = opts.tls ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, listener) : createServer(listener);
  server.on(opts.tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    socket.once('close', () => tickets.get(socket)?.leave());
    waitForRequest(socket, true);
  });
  server.maxConnections = opts.maxConnections ?? 1024;
  // Announced to clients (Keep-Alive: timeout=…), so they do not reuse a connection the gate is about to close.
  server.keepAliveTimeout = Math.max(1_000, headersTimeoutMs - 1_000);
  // The gate's deadline is the one that matters; node's own check runs only every 30 s.
  server.headersTimeout = headersTimeoutMs + 10_000;
  server.requestTimeout = 0; // large bodies take as long as they take; idle sockets time out below
  server.setTimeout(120_000, (socket) => socket.destroy());
  await listenOn(server, opts.host, opts.port);
  return { server, address: server.address() as AddressInfo };
}
