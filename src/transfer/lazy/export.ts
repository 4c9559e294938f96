/**
 * `osfarm pull --lazy`: an image served over NBD (a unix socket) before it has arrived
 * (docs/lazy-boot.md). The NBD server and the verification are the Rust core's
 * (`NbdServer`); this module feeds it: it finds the image as `pull` does, answers the
 * server's fetch requests with pull's HTTP range requests (several in flight, reads that
 * a client waits for ahead of prefetch, retries with backoff), prefetches the rest in
 * the order of the image's boot profile, then the remainder, and publishes the complete
 * image into the local repository exactly as `pull` does.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { abortError, OsfarmError, toOsfarmError } from '../../base/errors.js';
import { eventSink, type ResultEvent } from '../../base/events.js';
import { native, type NbdFetchRequest, type NbdServer, type RepositoryHandle } from '../../base/native.js';
import { nativeImageOptions, Repository } from '../../repo/index.js';
import { trustedKeys } from '../../trust/keys.js';
import { writeManifest } from '../../trust/manifest.js';
import { recordTags } from '../../trust/names.js';
import { resignLosers } from '../../trust/tags.js';
import { type BlockRange, type BlockSink, Fetcher, fetchRange, parseImageUrl, prepare, type PullResult, type RetryOptions, sleep, withRetries } from '../http/pull.js';
import { removePartialOrigin, writePartialOrigin } from './origin.js';
import { type BootProfile, parseBootProfile, type ProfileRun, readBootProfile, writeBootProfile } from './profile.js';

export interface LazyProgress {
  /** Blocks present (zero blocks included), out of the image's blocks. */
  done: number;
  total: number;
  bytesFetched: number;
  requests: number;
  retries: number;
}

/** What a lazy pull reports; `result` comes once the image is complete and published. */
export type LazyEvent =
  | { type: 'ready'; socket: string; uri: string; exportName: string; digest: string; size: number; haveBlocks: number; blockCount: number; profile: LazyPullResult['profile'] }
  | ({ type: 'progress' } & LazyProgress)
  /** A block that did not match the index: it was not served (the read got EIO) and not stored. */
  | { type: 'bad-block'; block: number; origin: string; message: string }
  /** Blocks that could not be fetched (the origin stayed away past the retries): a client's read of them got EIO. */
  | { type: 'fetch-failed'; first: number; count: number; message: string }
  /** The prefetch is waiting for the origin; it tries again after `retryInMs`. */
  | { type: 'stalled'; message: string; retryInMs: number }
  | { type: 'warning'; message: string }
  | ResultEvent<LazyPullResult>;

export interface LazyPullOptions {
  /** The local repository (created with the image's hash and block size if absent). */
  repo: string;
  /** Name for the published image; default: the name it was pulled by, if any. */
  name?: string;
  /** Public key files whose signature the image must carry, beside the repository's trust store (as `pull`'s). */
  trust?: string[];
  /** The unix socket to serve on (default: a new one in the temp directory). */
  socket?: string;
  /** The NBD export name (default: the image's name if pulled by name, else its digest); clients may also ask for "". */
  exportName?: string;
  /** Closes the export (the blocks received are kept for the next run). */
  signal?: AbortSignal;
  onEvent?: (event: LazyEvent) => void;
  /** HTTP range requests in flight at once (default 4); prefetch uses all but one. */
  parallel?: number;
  /** Largest single range request, and the prefetch's step (default 2 MiB). */
  maxRequestBytes?: number;
  /** Attempts after a failure that made no progress, before a client's read fails (default 12: about 40 s of stalling with the defaults). */
  retries?: number;
  /** The first retry's delay (default 250 ms), doubling up to `maxRetryDelayMs` (default 5 s). */
  retryDelayMs?: number;
  maxRetryDelayMs?: number;
  /** A connection that sends nothing for this long is dropped and retried (default 30 s). */
  idleTimeoutMs?: number;
  /** After a client's read that had to be fetched, fetch up to this much after it at once (default 2 MiB; 0: none; none without the prefetch): see `Readahead`. */
  readaheadBytes?: number;
  /** Fetch the rest in the background and publish (default true); false fetches only what clients read. */
  prefetch?: boolean;
  /** Keep the clients' read order as the image's boot profile when the export closes, if the image is complete by then (default false). */
  recordProfile?: boolean;
}

/** What `pull()` reports, and where the prefetch order came from. */
export interface LazyPullResult extends PullResult {
  /** The origin's boot profile, the local repository's, or none. */
  profile: 'origin' | 'local' | 'none';
}

/** An NBD export of an image on its way into the repository. */
export interface LazyExport extends AsyncDisposable {
  readonly url: string;
  readonly digest: string;
  readonly size: number;
  readonly blockSize: number;
  readonly socket: string;
  readonly exportName: string;
  /** qemu's name for the export: `nbd+unix:///<export>?socket=<socket>`. */
  readonly uri: string;
  /** Resolves when the image is complete and published; rejects if the export closes first or a block cannot be had. */
  readonly completed: Promise<LazyPullResult>;
  /** Where the prefetch order came from (as in the result). */
  readonly profileSource: LazyPullResult['profile'];
  /** The NBD server's counters (reads, blocks copied, fetched, bad). */
  stats(): ReturnType<NbdServer['stats']>;
  /** The clients' first reads so far, in order (the boot profile being recorded). */
  profile(): ProfileRun[];
  /**
   * Keeps the clients' read order so far (e.g. up to a boot's marker) as the image's boot
   * profile: written when the image is published (at once if it is); resolves with the file.
   */
  saveProfile(): Promise<string>;
  /** Stops serving and fetching; blocks received are kept for the next run. Idempotent. */
  close(): Promise<void>;
}

/**
 * Answers the NBD server's fetch requests over HTTP. Reads a client waits for go first, on
 * any slot, then the client's readahead, then the prefetch: on all but one slot, and on one
 * only while a client's read or readahead is in flight, so that on a slow link the guest's
 * reads share it with one prefetch, not with all of them.
 */
class RangeQueue {
  private readonly urgent: NbdFetchRequest[] = [];
  private readonly soon: NbdFetchRequest[] = [];
  private readonly background: NbdFetchRequest[] = [];
  private active = 0;
  private activeBackground = 0;

  constructor(
    private readonly parallel: number,
    private readonly run: (r: NbdFetchRequest) => Promise<void>,
    private readonly forClient: (r: NbdFetchRequest) => boolean,
  ) {}

  push(r: NbdFetchRequest): void {
    (r.urgent ? this.urgent : this.forClient(r) ? this.soon : this.background).push(r);
    this.pump();
  }

  private pump(): void {
    while (this.active < this.parallel) {
      let r = this.urgent.shift() ?? this.soon.shift();
      const background = !r;
      if (!r) {
        const clientReading = this.active > this.activeBackground;
        const slots = clientReading ? 1 : Math.max(1, this.parallel - 1);
        if (this.activeBackground < slots) r = this.background.shift();
      }
      if (!r) return;
      this.active++;
      if (background) this.activeBackground++;
      void this.run(r).finally(() => {
        this.active--;
        if (background) this.activeBackground--;
        this.pump();
      });
    }
  }
}

/**
 * Sequential readahead for a client (a boot reads files front to back): after a read that
 * had to be fetched, the blocks after it are made present at once, ahead of the prefetch.
 * The window starts at `min` blocks and doubles, up to `max`, while each fetched read
 * starts where the last window ended (the reads inside a window are served without a fetch,
 * so the next fetch comes at its end); any other read starts over at `min`.
 */
class Readahead {
  private readonly windows = new Set<{ first: number; end: number }>();
  private next = -1;
  private size = 0;

  constructor(
    private readonly min: number,
    private readonly max: number,
    private readonly blockCount: number,
    private readonly ensure: (first: number, count: number) => Promise<unknown>,
  ) {}

  /** A client's read fetches blocks `[first, first + count)`. */
  fetched(first: number, count: number): void {
    if (this.max <= 0) return;
    const end = first + count;
    const sequential = this.next >= 0 && first >= this.next - this.size && first <= this.next;
    this.size = sequential ? Math.min(this.size * 2, this.max) : this.min;
    const from = Math.max(end, sequential ? this.next : end);
    const to = Math.min(this.blockCount, end + this.size);
    this.next = to;
    if (to <= from) return;
    const w = { first: from, end: to };
    this.windows.add(w);
    // A failure is the client's to meet (its own read retries and reports it), not the readahead's.
    void this.ensure(from, to - from)
      .catch(() => {})
      .finally(() => this.windows.delete(w));
  }

  /** Whether a fetch request brings a window's blocks (it then goes before the prefetch). */
  covers(r: NbdFetchRequest): boolean {
    for (const w of this.windows) if (r.first < w.end && r.first + r.count > w.first) return true;
    return false;
  }
}

/** Runs cut into steps of at most `max` blocks. */
function steps(runs: ProfileRun[], max: number): BlockRange[] {
  const out: BlockRange[] = [];
  for (const r of runs) for (let f = r.first; f < r.first + r.count; f += max) out.push({ first: f, count: Math.min(max, r.first + r.count - f) });
  return out;
}

/**
 * Starts serving the image `url` names (`http(s)://HOST[:PORT][/PREFIX]/images/<digest or
 * name>`) over NBD while it arrives into the repository at `options.repo`; resolves once
 * the export is listening. A partial left by an earlier pull or export of the same image is
 * resumed; an image the repository holds whole is served from there.
 */
export async function pullLazy(url: string, options: LazyPullOptions): Promise<LazyExport> {
  const started = process.hrtime.bigint();
  const loc = parseImageUrl(url);
  const parallel = Math.max(1, options.parallel ?? 4);
  const internal = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, internal.signal]) : internal.signal;
  const fetcher = new Fetcher(loc.base, parallel, options.idleTimeoutMs ?? 30_000, signal);
  const retryOpts: RetryOptions = {
    retries: options.retries ?? 12,
    retryDelayMs: options.retryDelayMs ?? 250,
    maxRetryDelayMs: options.maxRetryDelayMs ?? 5000,
    signal,
    fetcher,
  };
  const retry = <T>(f: () => Promise<T>) => withRetries(retryOpts, f);
  const emit = eventSink(options.onEvent);
  let server: NbdServer | undefined;
  try {
    // Signatures are required as `pull` requires them (docs/trust.md): before any block is served.
    const prep = await prepare(loc, fetcher, retry, trustedKeys(options.repo, options.trust));
    const local = Repository.openOrInit(options.repo, prep.params);
    const repoPath = local.path;
    let plan: Awaited<ReturnType<Repository['plan']>>;
    try {
      plan = await local.plan(prep.index);
    } finally {
      local.close();
    }
    const { blockCount, alreadyPresent, imageSize: size } = plan;
    // The origin's tags travel with the image (`name` gives one of its own instead); the tag
    // it was pulled by names the export and the partial's record.
    const { tags: remoteTags, ...imageMeta } = prep.meta;
    const tags = options.name !== undefined ? [options.name] : remoteTags;
    const name = options.name ?? (remoteTags.includes(loc.ref) ? loc.ref : undefined);

    // The prefetch order: the repository's own profile of this image, else the origin's.
    let profile: BootProfile | undefined;
    let profileSource: LazyPullResult['profile'] = 'none';
    try {
      profile = readBootProfile(repoPath, prep.digest, blockCount);
      if (profile) profileSource = 'local';
    } catch (err) {
      emit({ type: 'warning', message: `${(err as Error).message}; prefetching in block order` });
    }
    if (!profile && !alreadyPresent) {
      const profileUrl = `${loc.base}/images/${prep.digest}/profile.json`;
      try {
        const text = await retry(() => fetcher.getBuffer(profileUrl, 'boot profile', 64 << 20));
        profile = parseBootProfile(text.toString('utf8'), { digest: prep.digest, blockCount }, profileUrl);
        profileSource = 'origin';
      } catch (err) {
        if (signal.aborted) throw err;
        // No profile is normal (404); a broken one only costs the order.
        if ((err as OsfarmError).code !== 'OSFARM_NOT_FOUND') emit({ type: 'warning', message: `${(err as Error).message}; prefetching in block order` });
      }
    }

    // `osfarm boot NAME` can go on with a partly present image from this record.
    if (!alreadyPresent) writePartialOrigin(repoPath, { digest: prep.digest, url: `${loc.base}/images/${prep.digest}`, ...(name ? { name } : {}) });

    const handle: RepositoryHandle = native.RepositoryHandle.open(repoPath);
    const socket = options.socket ?? join(tmpdir(), `osfarm-nbd-${prep.digest.slice(0, 12)}-${process.pid}.sock`);
    const exportName = options.exportName ?? name ?? prep.digest;
    const bs = prep.params.blockSize;
    const maxBlocks = Math.max(1, Math.floor((options.maxRequestBytes ?? 2 << 20) / bs));
    // Without the prefetch, only what clients read is fetched: no readahead either.
    const maxReadahead = options.prefetch === false ? 0 : Math.max(0, options.readaheadBytes ?? 2 << 20);
    const dataUrl = `${loc.base}/images/${prep.digest}/image`;

    // One fetch request: a single range into a buffer, retried from where it stopped.
    const answer = async (r: NbdFetchRequest): Promise<void> => {
      const buf = Buffer.alloc(r.length);
      const sink: BlockSink = {
        blockSize: bs,
        imageSize: size,
        putBlocks: (first, data) => {
          data.copy(buf, (first - r.first) * bs);
          return Math.ceil(data.length / bs);
        },
      };
      const range = { first: r.first, count: r.count };
      try {
        let before = range.first;
        await withRetries(
          retryOpts,
          () => {
            before = range.first;
            return fetchRange(fetcher, dataUrl, sink, range, () => {});
          },
          () => range.first > before,
        );
        server?.supply(r.id, buf);
      } catch (err) {
        try {
          server?.fail(r.id, (err as Error).message);
        } catch {
          /* the server stopped meanwhile: the request is gone */
        }
      }
    };
    const readahead = new Readahead(
      Math.min(64, Math.ceil(maxReadahead / bs)),
      Math.floor(maxReadahead / bs),
      blockCount,
      async (first, count) => server?.ensure(first, count),
    );
    const queue = new RangeQueue(parallel, answer, (r) => readahead.covers(r));
    // Requests can come before `start` resolves (none do today: nothing reads yet).
    server = await native.NbdServer.start(
      handle,
      prep.index,
      { socket, exportName, expectedDigest: prep.digest, maxFetchBlocks: maxBlocks },
      (r) => {
        queue.push(r);
        if (r.urgent) readahead.fetched(r.first, r.count);
      },
      (e) => {
        if (e.kind === 'bad-block') emit({ type: 'bad-block', block: e.block ?? -1, origin: e.origin ?? '', message: e.message });
        else emit({ type: 'fetch-failed', first: e.first ?? -1, count: e.count ?? 0, message: e.message });
      },
    );
    const srv = server;
    const haveAtStart = srv.stats().haveBlocks;
    const uri = `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`;
    emit({ type: 'ready', socket, uri, exportName, digest: prep.digest, size, haveBlocks: haveAtStart, blockCount, profile: profileSource });

    let lastProgress = 0;
    const progress = (force = false) => {
      const now = Date.now();
      if (!force && now - lastProgress < 500) return;
      lastProgress = now;
      emit({ type: 'progress', done: srv.stats().haveBlocks, total: blockCount, bytesFetched: fetcher.bytes, requests: fetcher.requests, retries: fetcher.retries });
    };

    let closed = false;
    let published = false;
    const closedError = () => abortError(options.signal?.aborted ? options.signal : undefined, 'the lazy pull was stopped before the image was complete; run it again to continue where it stopped');

    // Background prefetch: the profile's runs, then whatever is missing, a few steps at once.
    const prefetch = async (): Promise<void> => {
      const stallCap = 30_000;
      let stall = 1000;
      for (let pass = 0; ; pass++) {
        const missing = srv.missing();
        if (missing.length === 0) return;
        const order = steps(pass === 0 && profile ? [...profile.runs, ...missing] : missing, maxBlocks);
        const worker = async () => {
          for (let step = order.shift(); step; step = order.shift()) {
            for (;;) {
              if (closed) throw closedError();
              try {
                await srv.ensure(step.first, step.count);
                stall = 1000;
                progress();
                break;
              } catch (err) {
                if (closed) throw closedError();
                const e = toOsfarmError(err);
                // A block the origin sends wrong is never served or stored: the image cannot be completed from it.
                if (e.code === 'OSFARM_DIGEST_MISMATCH') throw e;
                emit({ type: 'stalled', message: e.message, retryInMs: stall });
                await sleep(stall, signal).catch(() => {});
                stall = Math.min(stall * 2, stallCap);
              }
            }
          }
        };
        let failure: unknown;
        await Promise.all(
          Array.from({ length: Math.max(1, parallel - 1) }, () =>
            worker().catch((err) => {
              failure ??= err;
              order.length = 0;
            }),
          ),
        );
        if (failure !== undefined) throw failure;
      }
    };

    const complete = async (): Promise<LazyPullResult> => {
      try {
        if (options.prefetch === false) {
          // Only clients' reads fetch: wait until they have read everything.
          while (!closed && srv.missing().length > 0) await sleep(1000, signal).catch(() => {});
        } else {
          await prefetch();
        }
      } catch (err) {
        // Calls on a stopped server fail with its own message: say why instead.
        throw closed ? closedError() : err;
      }
      if (closed) throw closedError();
      srv.flush();
      const entry = await srv.publish(nativeImageOptions({ tags, ...imageMeta }));
      published = true;
      removePartialOrigin(repoPath, prep.digest);
      // As `pull` does: the origin's verified manifest is kept beside the image (this
      // repository republishes it), and the tags' moves are recorded.
      const repo = Repository.open(repoPath);
      try {
        const stored = repo.resolve(prep.digest);
        if (prep.signed) writeManifest(stored, prep.signed);
        resignLosers(repoPath, recordTags(repoPath, stored, 'pull --lazy'));
      } finally {
        repo.close();
      }
      // The profile travels with the image, so this repository can serve it on.
      if (profile && profileSource === 'origin') {
        try {
          writeBootProfile(repoPath, profile);
        } catch (err) {
          emit({ type: 'warning', message: `the boot profile was not kept: ${(err as Error).message}` });
        }
      }
      progress(true);
      const s = srv.stats();
      const result: LazyPullResult = {
        url,
        digest: prep.digest,
        ...(entry.tags.length ? { name: entry.tags[0] } : {}),
        tags: entry.tags,
        size,
        blockCount,
        alreadyPresent,
        ...(prep.signed ? { signedBy: prep.signed.key.keyId } : {}),
        blocksLocal: s.localBlocks,
        // Neither zero, copied nor fetched now: kept from before (recorded, or found in the partial after a kill).
        blocksResumed: alreadyPresent ? 0 : Math.max(0, blockCount - plan.zeroBlocks - s.localBlocks - s.fetchedBlocks - plan.duplicateBlocks),
        blocksFetched: s.fetchedBlocks,
        blocksZero: plan.zeroBlocks,
        bytesFetched: fetcher.bytes,
        requests: fetcher.requests,
        retries: fetcher.retries,
        profile: profileSource,
        seconds: Number(process.hrtime.bigint() - started) / 1e9,
      };
      emit({ type: 'result', result });
      return result;
    };

    const saveProfile = async (): Promise<string> => {
      const runs = srv.profile();
      if (runs.length === 0) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'no client has read from the export yet: there is no access order to keep');
      const recorded = new Date().toISOString();
      await completed;
      return writeBootProfile(repoPath, { image: prep.digest, blockSize: bs, blockCount, recorded, runs });
    };

    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      if (options.recordProfile && published) {
        try {
          await saveProfile();
        } catch (err) {
          emit({ type: 'warning', message: `the boot profile was not kept: ${(err as Error).message}` });
        }
      }
      internal.abort();
      srv.stop();
      fetcher.close();
    };
    const onAbort = () => void close();
    options.signal?.addEventListener('abort', onAbort, { once: true });

    const completed = complete();
    // The caller may never wait for completion: a failure then is not an unhandled rejection.
    completed.catch(() => {});
    return {
      url,
      digest: prep.digest,
      size,
      blockSize: bs,
      socket,
      exportName,
      uri,
      completed,
      profileSource,
      stats: () => srv.stats(),
      profile: () => srv.profile(),
      saveProfile,
      close: async () => {
        options.signal?.removeEventListener('abort', onAbort);
        await close();
      },
      [Symbol.asyncDispose]: () => close(),
    };
  } catch (err) {
    server?.stop();
    fetcher.close();
    throw options.signal?.aborted ? abortError(options.signal, 'the lazy pull was cancelled; run it again to continue where it stopped') : toOsfarmError(err);
  }
}
