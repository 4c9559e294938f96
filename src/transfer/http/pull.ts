/**
 * `osfarm pull`: fetches an image over HTTP from `osfarm serve`, a static web server holding
 * a copy of a repository directory, or a caching proxy in front of either (docs/http.md).
 * Only plain GETs with single byte ranges on the repository's own files are used: the
 * index first, then only the blocks the local repository lacks, coalesced into ranges,
 * several requests in flight over keep-alive connections. Every block is verified as it is
 * written (the Assembler), the image is published atomically, and an interrupted pull
 * leaves a resumable partial that the next pull continues.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

import { abortError, OsfarmError } from '../../base/errors.js';
import { eventSink, type ResultEvent } from '../../base/events.js';
import { Repository, type Assembler, type ImageEntry } from '../../repo/index.js';
import { SOFTWARE } from '../../base/version.js';
import { trustedKeys } from '../../trust/keys.js';
import { isCertificateError } from '../../trust/tls.js';
import { recordTags } from '../../trust/names.js';
import { resignLosers } from '../../trust/tags.js';
import { checkIndex, checkMeta, MANIFEST_FILE, SIGNATURE_FILE, signedTags, verifyManifest, writeManifest, type SignedManifest } from '../../trust/manifest.js';
import type { PublicKey } from '../../trust/minisign.js';

export interface PullProgress {
  /** 'local': copying blocks the repository holds (bytes); 'fetch': fetching the rest. */
  phase: 'local' | 'fetch';
  /** Bytes written so far in this phase, out of the phase's total. */
  done: number;
  total: number;
  bytesFetched: number;
  requests: number;
  retries: number;
}

/** What a pull reports, in order; the last event is `{ type: 'result', result }`. */
export type PullEvent = ({ type: 'progress' } & PullProgress) | ResultEvent<PullResult>;

export interface PullOptions {
  /** The local repository (created with the image's hash and block size if absent). */
  repo: string;
  /** A tag for the pulled image instead of the tags it has at the origin (the default: all of them). */
  name?: string;
  /** Stops the pull (the partial is kept for the next pull); it rejects with an AbortError carrying OSFARM_ABORTED. */
  signal?: AbortSignal;
  /** Progress events, then the result; a listener's error is ignored. */
  onEvent?: (event: PullEvent) => void;
  /** @deprecated since 0.2: use `onEvent` (its `progress` events carry the same fields); kept for one release. */
  onProgress?: (p: PullProgress) => void;
  /** Range requests in flight at once (default 4). */
  parallel?: number;
  /** Largest single range request (default 8 MiB). */
  maxRequestBytes?: number;
  /** Missing runs separated by at most this many present bytes are fetched as one range (default 64 KiB). */
  gapBytes?: number;
  /** Attempts after a failure that made no progress, with doubling delays (default 4). */
  retries?: number;
  /** The first retry's delay (default 250 ms). */
  retryDelayMs?: number;
  /** A connection that sends nothing for this long is dropped and retried (default 30 s). */
  idleTimeoutMs?: number;
  /**
   * Public key files (minisign format) whose signature the image must carry. The keys in the
   * repository's trust store (`trust/*.pub`) are always required too; with neither, images
   * are pulled unverified (docs/trust.md).
   */
  trust?: string[];
}

export interface PullResult {
  url: string;
  digest: string;
  /** Its first tag here. */
  name?: string;
  /** Its tags here. */
  tags: string[];
  size: number;
  blockCount: number;
  alreadyPresent: boolean;
  /** The key id whose signed manifest the image matched (absent: pulled without --trust). */
  signedBy?: string;
  /** Blocks copied from images already in the local repository. */
  blocksLocal: number;
  /** Blocks kept from an earlier, interrupted pull. */
  blocksResumed: number;
  /** Blocks fetched and verified (repeats of a fetched block not counted). */
  blocksFetched: number;
  blocksZero: number;
  /** Response body bytes received (including gaps fetched to coalesce ranges). */
  bytesFetched: number;
  /** HTTP requests made (meta, index and ranges, retries included). */
  requests: number;
  retries: number;
  seconds: number;
}

/** Where an image lives: `<base>/images/<ref>`. */
export interface ImageUrl {
  base: string;
  ref: string;
}

const DIGEST = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/i;
const HASH_IDS: Record<number, { name: 'sha1' | 'sha256'; len: number }> = { 1: { name: 'sha1', len: 20 }, 2: { name: 'sha256', len: 32 } };

/** Splits `http(s)://host[/prefix]/images/<ref>[/file]` into base and image reference. */
export function parseImageUrl(url: string): ImageUrl {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `'${url}' is not a URL: give http://HOST[:PORT][/PREFIX]/images/<digest or name>`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `'${url}': only http and https URLs can be pulled`);
  }
  const m = /^(.*?)\/images\/([^/]+)\/?(?:image|index\.osfi|meta\.json)?$/.exec(u.pathname);
  if (!m) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `'${url}' names no image: give http://HOST[:PORT][/PREFIX]/images/<digest or name>`);
  }
  return { base: `${u.origin}${m[1]}`, ref: decodeURIComponent(m[2]!) };
}

/** A failure worth retrying: the network, a truncated body, an overloaded server. */
class Transient extends Error {
  /** The server's Retry-After, if it gave one. */
  retryAfterMs = 0;
}

function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** The HTTP side of a pull: one keep-alive agent, counters, cancellation (the lazy export's fetcher too). */
export class Fetcher {
  readonly agent: HttpAgent;
  requests = 0;
  retries = 0;
  bytes = 0;

  constructor(
    readonly base: string,
    parallel: number,
    private readonly idleTimeoutMs: number,
    private readonly signal: AbortSignal,
  ) {
    const Agent = base.startsWith('https:') ? HttpsAgent : HttpAgent;
    this.agent = new Agent({ keepAlive: true, maxSockets: parallel });
  }

  /** A GET; resolves with the response once its headers are in. */
  get(url: string, headers: Record<string, string> = {}): Promise<IncomingMessage> {
    if (this.signal.aborted) return Promise.reject(aborted(this.signal));
    this.requests++;
    const request = url.startsWith('https:') ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { agent: this.agent, headers: { 'User-Agent': SOFTWARE, 'Accept-Encoding': 'identity', ...headers } });
      const onAbort = () => req.destroy(aborted(this.signal));
      this.signal.addEventListener('abort', onAbort, { once: true });
      req.once('close', () => this.signal.removeEventListener('abort', onAbort));
      req.setTimeout(this.idleTimeoutMs, () => req.destroy(new Transient(`no data from ${url} for ${this.idleTimeoutMs / 1000} s`)));
      req.once('response', resolve);
      req.on('error', (err) => reject(this.signal.aborted ? aborted(this.signal) : classify(err, url)));
      req.end();
    });
  }

  /** A small whole resource (meta, index), following redirects. */
  async getBuffer(url: string, what: string, maxBytes: number): Promise<Buffer> {
    for (let hops = 0; hops < 5; hops++) {
      const res = await this.get(url);
      if (res.statusCode && res.statusCode >= 300 && res.statusCode < 400 && res.headers.location) {
        res.resume();
        url = new URL(res.headers.location, url).toString();
        continue;
      }
      if (res.statusCode !== 200) {
        res.resume();
        throw statusError(res, url, what);
      }
      const declared = Number(res.headers['content-length'] ?? NaN);
      if (declared > maxBytes) {
        res.destroy();
        throw new OsfarmError('OSFARM_PROTOCOL', `${url}: ${what} of ${declared} bytes is larger than the ${maxBytes} expected`);
      }
      const chunks: Buffer[] = [];
      let n = 0;
      try {
        for await (const chunk of res as AsyncIterable<Buffer>) {
          n += chunk.length;
          this.bytes += chunk.length;
          if (n > maxBytes) {
            res.destroy();
            throw new OsfarmError('OSFARM_PROTOCOL', `${url}: ${what} is larger than the ${maxBytes} bytes expected`);
          }
          chunks.push(chunk);
        }
      } catch (err) {
        throw this.signal.aborted ? aborted(this.signal) : classify(err, url);
      }
      if (!res.complete || (!Number.isNaN(declared) && n !== declared)) throw new Transient(`${url}: the response ended after ${n} bytes`);
      return Buffer.concat(chunks);
    }
    throw new OsfarmError('OSFARM_PROTOCOL', `${url}: too many redirects`);
  }

  close(): void {
    this.agent.destroy();
  }
}

function aborted(signal: AbortSignal | undefined): OsfarmError {
  return abortError(signal, 'the pull was cancelled; run it again to continue where it stopped');
}

function classify(err: unknown, url: string): Error {
  if (err instanceof OsfarmError || err instanceof Transient) return err;
  if (isCertificateError(err)) {
    return new OsfarmError(
      'OSFARM_UNAUTHORIZED',
      `${url}: the server's TLS certificate is not trusted (${(err as Error).message}); if your own CA signed it, give that CA's certificate in NODE_EXTRA_CA_CERTS`,
      { cause: err },
    );
  }
  return new Transient(`${url}: ${(err as Error).message}`);
}

function statusError(res: IncomingMessage, url: string, what: string): Error {
  const status = res.statusCode ?? 0;
  if (status === 404 || status === 410) {
    return new OsfarmError('OSFARM_NOT_FOUND', `${url}: the server has no ${what} (HTTP ${status}); check the URL (a static server knows images by full digest only)`);
  }
  if (retryableStatus(status)) {
    const err = new Transient(`${url}: HTTP ${status}`);
    const after = Number(res.headers['retry-after']);
    if (after > 0) err.retryAfterMs = Math.min(after, 60) * 1000;
    return err;
  }
  return new OsfarmError('OSFARM_PROTOCOL', `${url}: unexpected HTTP ${status} for the ${what}`);
}

export interface RetryOptions {
  retries: number;
  retryDelayMs: number;
  /** The longest delay between two attempts (default: no limit, the delays keep doubling). */
  maxRetryDelayMs?: number;
  signal: AbortSignal;
  fetcher: Fetcher;
}

/** How long in all a request waits on a server that answers "busy, retry after" (429/503). */
const BUSY_WAIT_MS = 5 * 60_000;

/**
 * Runs `attempt` until it succeeds, retrying transient failures that made no progress with
 * doubling delays. A server's Retry-After is obeyed and not counted as a failure (a busy
 * server is not a broken one), up to BUSY_WAIT_MS in all.
 */
export async function withRetries<T>(
  o: RetryOptions,
  attempt: () => Promise<T>,
  progressed: () => boolean = () => false,
): Promise<T> {
  let failures = 0;
  let busyWaited = 0;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof Transient)) throw err;
      o.fetcher.retries++;
      if (err.retryAfterMs > 0 && busyWaited + err.retryAfterMs <= BUSY_WAIT_MS) {
        busyWaited += err.retryAfterMs;
        await sleep(err.retryAfterMs, o.signal);
        continue;
      }
      failures = progressed() ? 1 : failures + 1;
      if (failures > o.retries) {
        throw new OsfarmError('OSFARM_IO', `${err.message}; gave up after ${o.retries} retries. The blocks received so far are kept: run the same pull again to continue`);
      }
      await sleep(Math.min(o.retryDelayMs * 2 ** (failures - 1), o.maxRetryDelayMs ?? Infinity), o.signal);
    }
  }
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(aborted(signal));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(aborted(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Header fields of an index, read before handing the whole index to the repository to validate. */
function indexHeader(buf: Buffer, url: string): { hash: 'sha1' | 'sha256'; blockSize: number } {
  const alg = buf.length >= 64 ? HASH_IDS[buf[10]!] : undefined;
  if (!alg || buf.subarray(0, 8).toString('latin1') !== '\x89OSFI\r\n\x1a' || buf[11]! < 9 || buf[11]! > 20) {
    throw new OsfarmError('OSFARM_BAD_INDEX', `${url} is not an osfarm index (.osfi); is this an osfarm repository?`);
  }
  return { hash: alg.name, blockSize: 2 ** buf[11]! };
}

export type BlockRange = { first: number; count: number };

/** Where fetched blocks go: the Assembler, or a lazy export's buffer. */
export interface BlockSink {
  readonly blockSize: number;
  readonly imageSize: number;
  /** Takes whole blocks from block `first` (the image's last may be short); returns how many were new. */
  putBlocks(first: number, data: Buffer): number;
}

/** Missing runs merged across small gaps, then cut into requests of at most `maxBlocks`. */
export function coalesce(runs: BlockRange[], gapBlocks: number, maxBlocks: number): BlockRange[] {
  const merged: BlockRange[] = [];
  for (const r of runs) {
    const last = merged[merged.length - 1];
    if (last && r.first - (last.first + last.count) <= gapBlocks) last.count = r.first + r.count - last.first;
    else merged.push({ ...r });
  }
  const out: BlockRange[] = [];
  for (const r of merged) {
    for (let f = r.first; f < r.first + r.count; f += maxBlocks) out.push({ first: f, count: Math.min(maxBlocks, r.first + r.count - f) });
  }
  return out;
}

/** Streams one block range into `asm`; `range.first/count` advance as blocks land. */
export async function fetchRange(
  fetcher: Fetcher,
  url: string,
  asm: BlockSink,
  range: BlockRange,
  onBlocks: (blocks: number, bytes: number) => void,
): Promise<void> {
  const bs = asm.blockSize;
  const start = range.first * bs;
  const end = Math.min((range.first + range.count) * bs, asm.imageSize) - 1;
  const res = await fetcher.get(url, { Range: `bytes=${start}-${end}` });
  const status = res.statusCode ?? 0;
  const whole = start === 0 && end === asm.imageSize - 1;
  if (status !== 206 && !(status === 200 && whole)) {
    res.resume();
    if (status === 200) throw new OsfarmError('OSFARM_PROTOCOL', `${url}: the server ignores Range requests (HTTP 200 for bytes=${start}-${end}); pull needs single byte ranges`);
    if (status === 416) throw new OsfarmError('OSFARM_PROTOCOL', `${url}: the server's image is shorter than its index says (HTTP 416)`);
    throw statusError(res, url, 'image data');
  }
  if (status === 206) {
    const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
    if (!cr || Number(cr[1]) !== start || Number(cr[2]) !== end || (cr[3] !== '*' && Number(cr[3]) !== asm.imageSize)) {
      res.destroy();
      throw new OsfarmError('OSFARM_PROTOCOL', `${url}: asked for bytes ${start}-${end}/${asm.imageSize}, got Content-Range '${res.headers['content-range'] ?? ''}'`);
    }
  }
  // Deliver whole blocks in batches of about 1 MiB: bounded memory, and a dropped
  // connection loses at most one batch.
  const batchBytes = Math.max(bs, 1 << 20);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const deliver = (final: boolean) => {
    const blockEnd = Math.min((range.first + range.count) * bs, asm.imageSize);
    const available = final ? pendingBytes : pendingBytes - (pendingBytes % bs);
    const usable = Math.min(available, blockEnd - range.first * bs);
    if (usable <= 0) return;
    const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    const blocks = Math.ceil(usable / bs);
    const added = asm.putBlocks(range.first, all.subarray(0, usable));
    onBlocks(added, usable);
    range.first += blocks;
    range.count -= blocks;
    const rest = all.subarray(usable);
    pending = rest.length ? [rest] : [];
    pendingBytes = rest.length;
  };
  let dropped: unknown;
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      fetcher.bytes += chunk.length;
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= batchBytes) deliver(false);
    }
  } catch (err) {
    if (err instanceof OsfarmError) throw err; // a block that failed verification: no retry
    dropped = err;
  }
  const remaining = Math.min((range.first + range.count) * bs, asm.imageSize) - range.first * bs;
  if (pendingBytes > remaining) {
    throw new OsfarmError('OSFARM_PROTOCOL', `${url}: the response for bytes ${start}-${end} is longer than asked for`);
  }
  if (dropped !== undefined || !res.complete || pendingBytes < remaining) {
    // Keep the whole blocks that did arrive, then retry the rest.
    deliver(false);
    const why = dropped instanceof Error ? dropped.message : 'the connection closed';
    throw new Transient(`${url}: the response for bytes ${start}-${end} ended early (${why})`);
  }
  deliver(true);
}

export interface Prepared {
  digest: string;
  index: Buffer;
  /** The index's hash and block size: a new local repository is made with them. */
  params: { hash: 'sha1' | 'sha256'; blockSize: number };
  /** `tags`: the origin's tags (the signed ones when keys were required). */
  meta: { tags: string[]; format?: string; originalName?: string; meta?: unknown };
  /** The verified manifest, when keys were required. */
  signed?: SignedManifest & { key: PublicKey };
}

/**
 * The image's signed manifest, verified against `keys`, checked to describe `digest` (and,
 * when pulled by name, that name). Runs before the index is fetched.
 */
async function fetchManifest(
  loc: ImageUrl,
  digest: string,
  keys: readonly PublicKey[],
  fetcher: Fetcher,
  retry: <T>(f: () => Promise<T>) => Promise<T>,
): Promise<SignedManifest & { key: PublicKey }> {
  const url = `${loc.base}/images/${digest}/${MANIFEST_FILE}`;
  const get = (u: string, what: string) =>
    retry(() => fetcher.getBuffer(u, what, 1 << 20)).catch((err: unknown) => {
      if (err instanceof OsfarmError && err.code === 'OSFARM_NOT_FOUND') {
        throw new OsfarmError('OSFARM_UNTRUSTED', `image ${digest} at ${loc.base} is not signed (no ${u.endsWith('.minisig') ? SIGNATURE_FILE : MANIFEST_FILE}); refusing it because trusted keys are required`);
      }
      throw err;
    });
  const bytes = await get(url, 'signed manifest');
  const sig = await get(`${loc.base}/images/${digest}/${SIGNATURE_FILE}`, 'manifest signature');
  const signed = verifyManifest(bytes, sig.toString('utf8'), keys, url);
  if (signed.manifest.digest !== digest) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${url} is signed for image ${signed.manifest.digest}, not ${digest}: the server or a cache substituted it`);
  }
  // Asked for by tag (not by the digest or a prefix of it): the image must be signed with that tag.
  const byDigest = /^[0-9a-f]{4,}$/i.test(loc.ref) && digest.startsWith(loc.ref.toLowerCase());
  const tags = signedTags(signed.manifest);
  if (!byDigest && !tags.includes(loc.ref)) {
    const as = tags.length ? tags.map((x) => `'${x}'`).join(', ') : 'untagged';
    throw new OsfarmError('OSFARM_UNTRUSTED', `the server resolved tag '${loc.ref}' to image ${digest}, which was signed as ${as}; pull it by digest if you meant that image`);
  }
  return signed;
}

/** The tags an origin's meta.json lists (`tags`; one older than tags has `name` only). */
function servedTags(meta: Record<string, unknown>): string[] {
  if (Array.isArray(meta.tags)) return meta.tags.filter((t): t is string => typeof t === 'string');
  return typeof meta.name === 'string' ? [meta.name] : [];
}

/** Finds the image: its meta.json (following a server's name → digest redirect), then its index. */
export async function prepare(loc: ImageUrl, fetcher: Fetcher, retry: <T>(f: () => Promise<T>) => Promise<T>, keys: readonly PublicKey[]): Promise<Prepared> {
  const metaUrl = `${loc.base}/images/${encodeURIComponent(loc.ref)}/meta.json`;
  const metaBytes = await retry(() => fetcher.getBuffer(metaUrl, `image '${loc.ref}'`, 1 << 20));
  let meta: Record<string, unknown>;
  try {
    meta = JSON.parse(metaBytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new OsfarmError('OSFARM_PROTOCOL', `${metaUrl} is not JSON: is this an osfarm repository?`);
  }
  const digest = typeof meta.digest === 'string' ? meta.digest.toLowerCase() : '';
  if (!DIGEST.test(digest)) throw new OsfarmError('OSFARM_PROTOCOL', `${metaUrl} has no image digest`);
  if (DIGEST.test(loc.ref) && loc.ref.toLowerCase() !== digest) {
    throw new OsfarmError('OSFARM_DIGEST_MISMATCH', `${metaUrl} describes image ${digest}, not ${loc.ref}`);
  }
  // The origin's metadata (spec, stage chain, build log, packages) travels with the image.
  let imageMeta: unknown;
  if (typeof meta.metaJson === 'string') {
    try {
      imageMeta = JSON.parse(meta.metaJson);
    } catch {
      throw new OsfarmError('OSFARM_PROTOCOL', `${metaUrl}: its metaJson is not JSON`);
    }
  }
  const signed = keys.length ? await fetchManifest(loc, digest, keys, fetcher, retry) : undefined;
  if (signed) checkMeta(signed.manifest, imageMeta, metaUrl);
  // With a signature, the signed block count bounds the index, not the unsigned meta.json.
  const blockCount = signed ? signed.manifest.blockCount : typeof meta.blockCount === 'number' ? meta.blockCount : 2 ** 32;
  const indexUrl = `${loc.base}/images/${digest}/index.osfi`;
  const maxIndex = Math.min(64 + blockCount * 32, 4 * 2 ** 30);
  const index = await retry(() => fetcher.getBuffer(indexUrl, 'index', maxIndex));
  if (signed) checkIndex(signed.manifest, index, indexUrl);
  return {
    digest,
    index,
    signed,
    params: indexHeader(index, indexUrl),
    meta: {
      tags: signed ? signedTags(signed.manifest) : servedTags(meta),
      format: typeof meta.format === 'string' ? meta.format : undefined,
      originalName: typeof meta.originalName === 'string' ? meta.originalName : undefined,
      meta: imageMeta,
    },
  };
}

/** Pulls the image `url` names into the repository at `options.repo`. */
export async function pull(url: string, options: PullOptions): Promise<PullResult> {
  const started = process.hrtime.bigint();
  const loc = parseImageUrl(url);
  const parallel = Math.max(1, options.parallel ?? 4);
  const internal = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, internal.signal]) : internal.signal;
  const fetcher = new Fetcher(loc.base, parallel, options.idleTimeoutMs ?? 30_000, signal);
  const retryOpts = { retries: options.retries ?? 4, retryDelayMs: options.retryDelayMs ?? 250, signal, fetcher };
  const retry = <T>(f: () => Promise<T>) => withRetries(retryOpts, f);
  const emit = eventSink(options.onEvent);
  const onProgress = eventSink(options.onProgress);
  let held: Assembler | undefined;
  try {
    const keys = trustedKeys(options.repo, options.trust);
    const prep = await prepare(loc, fetcher, retry, keys);
    const repo = Repository.openOrInit(options.repo, prep.params);
    const plan = await repo.plan(prep.index);
    const asm = repo.beginAssembly(prep.index, { resumable: true, expectedDigest: prep.digest });
    held = asm;
    // The origin's tags travel with the image (`name` gives one of its own instead).
    const { tags: remoteTags, ...imageMeta } = prep.meta;
    const tags = options.name !== undefined ? [options.name] : remoteTags;
    const result: PullResult = {
      url,
      digest: prep.digest,
      tags,
      size: asm.imageSize,
      blockCount: asm.blockCount,
      alreadyPresent: asm.alreadyPresent,
      ...(prep.signed ? { signedBy: prep.signed.key.keyId } : {}),
      blocksLocal: 0,
      blocksResumed: asm.alreadyPresent ? 0 : Math.max(0, asm.haveBlocks - plan.zeroBlocks),
      blocksFetched: 0,
      blocksZero: plan.zeroBlocks,
      bytesFetched: 0,
      requests: 0,
      retries: 0,
      seconds: 0,
    };
    let entry: ImageEntry;
    if (asm.alreadyPresent) {
      entry = await asm.finish({ tags });
    } else {
      const progress = (phase: PullProgress['phase'], done: number, total: number) => {
        const p: PullProgress = { phase, done, total, bytesFetched: fetcher.bytes, requests: fetcher.requests, retries: fetcher.retries };
        emit({ type: 'progress', ...p });
        onProgress(p);
      };
      const fill = await asm.fillFromRepository({ signal, onProgress: (e) => progress('local', e.done, e.total) });
      result.blocksLocal = fill.blocks;
      const bs = asm.blockSize;
      const ranges = coalesce(asm.missing(), Math.floor((options.gapBytes ?? 64 << 10) / bs), Math.max(1, Math.floor((options.maxRequestBytes ?? 8 << 20) / bs)));
      const total = ranges.reduce((s, r) => s + Math.min(r.count * bs, asm.imageSize - r.first * bs), 0);
      let done = 0;
      const report = () => progress('fetch', done, total);
      report();
      const dataUrl = `${loc.base}/images/${prep.digest}/image`;
      const queue = [...ranges];
      const worker = async () => {
        for (let range = queue.shift(); range; range = queue.shift()) {
          const r = range;
          let before = r.first;
          await withRetries(
            retryOpts,
            () => {
              before = r.first;
              return fetchRange(fetcher, dataUrl, asm, r, (added, bytes) => {
                result.blocksFetched += added;
                done += bytes;
                report();
              });
            },
            () => r.first > before,
          );
        }
      };
      // The first failure stops the others; wait for all before recording progress.
      let failure: unknown;
      await Promise.all(
        Array.from({ length: Math.min(parallel, queue.length) }, () =>
          worker().catch((err) => {
            failure ??= err;
            internal.abort();
          }),
        ),
      );
      if (failure !== undefined) {
        asm.flush();
        throw options.signal?.aborted ? aborted(options.signal) : failure;
      }
      entry = await asm.finish({ tags, ...imageMeta });
    }
    // Keep the origin's verified manifest beside the image: this repository republishes it.
    if (prep.signed) writeManifest(entry, prep.signed);
    resignLosers(options.repo, recordTags(options.repo, entry, 'pull'));
    result.tags = entry.tags;
    if (entry.name !== undefined) result.name = entry.name;
    result.bytesFetched = fetcher.bytes;
    result.requests = fetcher.requests;
    result.retries = fetcher.retries;
    result.seconds = Number(process.hrtime.bigint() - started) / 1e9;
    emit({ type: 'result', result });
    return result;
  } finally {
    // Unlocks a resumable partial at once, so a retry from this process can continue it.
    held?.release();
    fetcher.close();
  }
}
