/**
 * The sending side of a push (docs/protocol.md): hashes the image in Rust worker threads
 * while the network runs, streams content-defined digest groups (protocol 2; every block
 * digest with a version 1 receiver), sends the block digests of the groups the receiver
 * asks for, answers its requests with runs of blocks (through one zstd stream in protocol
 * 2), and succeeds only on the receiver's DONE.
 */
import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { realpathSync, statSync } from 'node:fs';
import { basename } from 'node:path';

import { abortError, callNative, callNativeSync, invalidArgument, OsfarmError, throwIfAborted, toOsfarmError } from '../../base/errors.js';
import { eventSink, type ResultEvent } from '../../base/events.js';
import { native } from '../../base/native.js';
import type { ImageSourceHandle } from '../../base/native.js';
import { type ImageEntry, Repository } from '../../repo/index.js';
import { readManifest } from '../../trust/manifest.js';
import { mac, macMatches, newNonce, parseNonce } from './auth.js';
import { Connection, field, intField } from './connection.js';
import { checkPinned, clientTlsOptions, isCertificateError, type TlsClientOptions } from '../../trust/tls.js';
import {
  BLOCKS_HEADER_LEN,
  DEFAULT_MAX_FRAME,
  FrameType,
  PROTOCOL_VERSIONS,
  blocksHeader,
  digestsPayload,
  groupsPayload,
  isOptional,
  parseJson,
  parseRequest,
  protocolError,
  type Run,
} from './frames.js';
import { SOFTWARE } from '../../base/version.js';
import { StreamLevel } from './level.js';
import { parseAddress } from '../address.js';

export interface PushProgress {
  /** Blocks whose digests (v1) or groups (v2) were sent. */
  digestsSent: number;
  /** Blocks sent as data. */
  blocksSent: number;
  /** Blocks the receiver holds so far (from its PROGRESS frames). */
  haveBlocks: number;
  blockCount: number;
  wireBytesSent: number;
}

/**
 * What a push reports, in order: progress (`done` blocks the receiver holds out of
 * `total`, with the counters of PushProgress), then `{ type: 'result', result }`.
 */
export type PushEvent = ({ type: 'progress'; done: number; total: number } & PushProgress) | ResultEvent<PushResult>;

export interface PushOptions {
  /** The shared token (see `resolveToken`). Without one, only an `--insecure` receiver accepts. */
  token?: string;
  /** Accept a receiver that asks for no token even though one was given. */
  insecure?: boolean;
  /**
   * Push over TLS: the receiver's certificate pinned by its SHA-256 fingerprint and/or
   * checked against a CA. Checked before anything of the protocol (the token's proof
   * included) is sent; a mismatch is OSFARM_UNAUTHORIZED. Without it the push is plain TCP.
   */
  tls?: TlsClientOptions;
  /** The tag the image gets in the receiver's repository, instead of the tags it carries here. */
  name?: string;
  /** A local repository to find `image` in when it is not a file (by digest, prefix or name). */
  repo?: string;
  /** zstd-compress runs when it helps (default true). */
  compress?: boolean;
  /**
   * A fixed zstd level (1–9) for protocol v2's block stream. By default the level adapts to
   * whether the encoder or the link holds the push back; each change starts a new zstd frame
   * (without the earlier runs' history), so a fixed level gives repeatable sizes.
   */
  compressLevel?: number;
  /** Stops the push; it rejects with an AbortError carrying OSFARM_ABORTED (the receiver keeps the blocks it has for a resume). */
  signal?: AbortSignal;
  /** Progress events (a few per second), then the result; a listener's error is ignored. */
  onEvent?: (event: PushEvent) => void;
  /** @deprecated since 0.2: use `onEvent` (its `progress` events carry the same fields); kept for one release. */
  onProgress?: (p: PushProgress) => void;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** Blocks read from disk at once while answering requests (default 4). */
  readAhead?: number;
  /** Protocol versions offered (default [2, 1]); [1] talks as an osfarm without digest groups. */
  protocols?: number[];
}

export interface PushResult {
  digest: string;
  /** Its first tag at the receiver. */
  name?: string;
  /** Its tags at the receiver (all of them, the ones it had there before included). */
  tags: string[];
  size: number;
  blockCount: number;
  /** The receiver already held the image: nothing was sent but the handshake. */
  alreadyPresent: boolean;
  /** Blocks whose data crossed the network, and their bytes before / after compression. */
  blocksSent: number;
  rawBytesSent: number;
  encodedBytesSent: number;
  /** The protocol version the receiver chose. */
  protocol: number;
  /** Payload bytes of DIGESTS and GROUPS frames: what naming the blocks cost. */
  digestBytesSent: number;
  /** Everything written to / read from the socket, framing included. */
  wireBytesSent: number;
  wireBytesReceived: number;
  /** The receiver's account (from DONE). */
  localBlocks: number;
  resumedBlocks: number;
  duplicateBlocks: number;
  zeroBlocks: number;
  /** Wall time from connecting to DONE. */
  seconds: number;
  /** True if the digests came from a stored index rather than hashing. */
  fromIndex: boolean;
}

interface Source {
  path: string;
  index?: string;
  digest?: string;
  hash?: string;
  blockSize?: number;
  resumeKey: string;
  originalName: string;
  format?: string;
  /** A repository image's tags, metadata and signed manifest: they travel with it (docs/trust.md). */
  tags?: string[];
  meta?: unknown;
  signed?: { manifest: string; signature: string };
}

/** The IMAGE frame's `name` and `tags` for the tags an image takes to the receiver. */
function pushTags(tags: string[] | undefined): { name?: string; tags?: string[] } {
  return tags?.length ? { name: tags[0], tags } : {};
}

/** Finds what to send: a file, or an image of a local repository. */
function resolveSource(image: string, repo?: string): Source {
  let st: ReturnType<typeof statSync> | undefined;
  try {
    st = statSync(image);
  } catch {
    st = undefined;
  }
  if (st?.isFile()) {
    const real = realpathSync(image);
    const key = createHash('sha256')
      .update(`file\0${real}\0${st.dev}\0${st.ino}\0${st.size}\0${st.mtimeMs}`)
      .digest('hex');
    return { path: real, resumeKey: `file:${key}`, originalName: basename(image) };
  }
  if (st?.isDirectory()) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${image} is a directory: pack it first (osfarm pack)`);
  if (st) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${image} is a device, FIFO or socket, not a regular file: osfarm sends images from regular files`);
  if (!repo) throw new OsfarmError('OSFARM_NOT_FOUND', `${image} is not a file, and no repository was given to look it up in`);
  let r: Repository;
  try {
    r = Repository.open(repo);
  } catch (err) {
    throw new OsfarmError('OSFARM_NOT_FOUND', `${image} is not a file, and ${repo} is not a repository to look it up in`, { cause: err });
  }
  const e = r.resolve(image);
  return {
    path: e.path,
    index: e.indexPath,
    digest: e.digest,
    hash: r.hash,
    blockSize: r.blockSize,
    resumeKey: `image:${e.digest}`,
    originalName: e.originalName ?? e.name ?? e.digest,
    format: e.format,
    tags: e.tags,
    meta: e.meta,
    signed: signedManifest(e),
  };
}

/** The manifest stored beside a repository image, as text for the IMAGE frame (a damaged one is not sent). */
function signedManifest(e: ImageEntry): Source['signed'] {
  let m: ReturnType<typeof readManifest>;
  try {
    m = readManifest(e);
  } catch {
    return undefined;
  }
  return m && { manifest: m.bytes.toString('utf8'), signature: m.signature };
}

/** Starts hashing `source` (or streaming its stored index, when that was made with these parameters). */
function openSource(source: Source, hash: string | undefined, blockSize: number | undefined): ImageSourceHandle {
  const useIndex = source.index !== undefined && source.hash === hash && source.blockSize === blockSize;
  return callNativeSync(() => native.ImageSourceHandle.open(source.path, { hash, blockSize, index: useIndex ? source.index : undefined }));
}

function connectSocket(host: string, port: number, timeoutMs: number, signal?: AbortSignal, tls?: TlsClientOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = tls ? tlsConnect({ host, port, ...clientTlsOptions(tls, host) }) : connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new OsfarmError('OSFARM_IO', `cannot connect to ${host}:${port}: no answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onAbort = () => {
      socket.destroy();
      reject(abortError(signal, 'the push was cancelled'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once(tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      try {
        if (tls) checkPinned(socket as TLSSocket, tls, `${host}:${port}`);
      } catch (err) {
        socket.destroy();
        return reject(err);
      }
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (isCertificateError(err)) {
        return reject(new OsfarmError('OSFARM_UNAUTHORIZED', `the TLS certificate of ${host}:${port} is not trusted (${err.message}): check --tls-ca, or pin its fingerprint`, { cause: err }));
      }
      reject(new OsfarmError('OSFARM_IO', `cannot connect to ${host}:${port}: ${err.message}`, { cause: err }));
    });
  });
}

/**
 * Pushes an image (a file, or an image of `options.repo`) to an `osfarm receive` at
 * `address` ("host:port"). Only the blocks the receiver's repository lacks are sent.
 */
export async function push(image: string, address: string, options: PushOptions = {}): Promise<PushResult> {
  throwIfAborted(options.signal);
  const { compressLevel } = options;
  if (compressLevel !== undefined && !(Number.isInteger(compressLevel) && compressLevel >= 1 && compressLevel <= 9)) {
    throw invalidArgument(`compressLevel must be a whole number from 1 to 9, got ${compressLevel}`);
  }
  const started = process.hrtime.bigint();
  const source = resolveSource(image, options.repo);
  const { host, port } = parseAddress(address);
  // Hashing starts now, with the parameters the receiver most likely uses (the source's
  // own, else the defaults), and runs while the connection and handshake take their
  // milliseconds; a receiver that wants others gets the image hashed again.
  let src: ImageSourceHandle | undefined = openSource(source, source.hash, source.blockSize);
  let socket: Socket;
  try {
    socket = await connectSocket(host, port, options.connectTimeoutMs ?? 10_000, options.signal, options.tls);
  } catch (err) {
    src.cancel();
    throw err;
  }
  const conn = new Connection(socket, { idleTimeoutMs: options.idleTimeoutMs ?? 60_000, maxFrame: DEFAULT_MAX_FRAME, peer: 'receiver' });
  const cancelled = () => abortError(options.signal, 'the sender cancelled the push');
  const onAbort = () => conn.fail(cancelled());
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // ----- handshake -----
    const clientNonce = newNonce();
    conn.sendMagic();
    const offered = options.protocols ?? [...PROTOCOL_VERSIONS];
    if (offered.length === 0 || offered.some((v) => !PROTOCOL_VERSIONS.includes(v))) {
      throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `protocol versions ${JSON.stringify(offered)}: this osfarm speaks ${PROTOCOL_VERSIONS.join(', ')}`);
    }
    conn.sendJson(FrameType.HELLO, { protocols: offered, software: SOFTWARE, nonce: clientNonce.toString('hex') });
    const welcome = await conn.expectJson(FrameType.WELCOME, 'WELCOME');
    const version = welcome.protocol;
    if (typeof version !== 'number' || !offered.includes(version)) {
      throw protocolError(`the receiver chose protocol ${String(version)}; this push offered ${offered.join(', ')}`);
    }
    const serverNonce = parseNonce(welcome.nonce, 'WELCOME');
    const hash = field(welcome, 'hash', 'WELCOME');
    const blockSize = intField(welcome, 'blockSize', 'WELCOME');
    const maxFrame = intField(welcome, 'maxFrame', 'WELCOME');
    if (welcome.auth === 'none') {
      if (options.token !== undefined && !options.insecure) {
        throw new OsfarmError('OSFARM_UNAUTHORIZED', `the receiver at ${address} asks for no token (it runs --insecure); push with --insecure to send to it anyway`);
      }
      conn.sendJson(FrameType.AUTH, { mac: '' });
      await conn.expectJson(FrameType.AUTH_OK, 'AUTH_OK');
    } else if (welcome.auth === 'hmac-sha256') {
      if (options.token === undefined) {
        throw new OsfarmError('OSFARM_UNAUTHORIZED', `the receiver at ${address} requires a token: give --token, --token-file or $OSFARM_TOKEN`);
      }
      conn.sendJson(FrameType.AUTH, { mac: mac(options.token, 'client', clientNonce, serverNonce).toString('hex') });
      const ok = await conn.expectJson(FrameType.AUTH_OK, 'AUTH_OK');
      if (!macMatches(ok.mac, mac(options.token, 'server', clientNonce, serverNonce))) {
        throw new OsfarmError('OSFARM_UNAUTHORIZED', `the receiver at ${address} does not know the token: not sending to it`);
      }
    } else {
      throw protocolError(`the receiver asks for unknown authentication '${String(welcome.auth)}'`);
    }
    conn.setMaxFrame(DEFAULT_MAX_FRAME);

    // ----- the image -----
    if (src.hash !== hash || src.blockSize !== blockSize) {
      src.cancel();
      src = openSource(source, hash, blockSize);
    }
    const blockCount = src.blockCount;
    const maxRunBlocks = Math.max(1, Math.floor(Math.min(maxFrame - BLOCKS_HEADER_LEN, 1 << 20) / blockSize));
    conn.sendJson(FrameType.IMAGE, {
      size: src.imageSize,
      blockCount,
      hash,
      blockSize,
      resumeKey: source.resumeKey,
      digest: src.fromIndex ? source.digest : undefined,
      // The space the file takes: a bound on its non-zero blocks (holes take none), so a
      // receiver without room refuses at once.
      dataBytes: Math.min(src.imageSize, statSync(source.path).blocks * 512),
      // `name` for receivers older than tags; `tags` is the whole list.
      ...pushTags(options.name !== undefined ? [options.name] : source.tags),
      originalName: source.originalName,
      format: source.format,
      meta: source.meta,
      ...(source.signed ?? {}),
    });
    const accept = await conn.next();
    let done: Record<string, unknown>;
    const stats = { digestsSent: 0, digestBytes: 0, blocksSent: 0, rawBytes: 0, encodedBytes: 0, haveBlocks: 0 };
    const emit = eventSink(options.onEvent);
    const onProgress = eventSink(options.onProgress);
    const progress = () => {
      const p: PushProgress = { digestsSent: stats.digestsSent, blocksSent: stats.blocksSent, haveBlocks: stats.haveBlocks, blockCount, wireBytesSent: conn.bytesOut };
      emit({ type: 'progress', done: p.haveBlocks, total: p.blockCount, ...p });
      onProgress(p);
    };
    if (accept.type === FrameType.DONE) {
      done = parseJson(accept.type, accept.payload);
    } else if (accept.type !== FrameType.ACCEPT) {
      throw protocolError(`expected ACCEPT or DONE, got frame type 0x${accept.type.toString(16)}`);
    } else {
      done = await stream(conn, src, { version, maxFrame, blockCount, maxRunBlocks, compress: options.compress ?? true, compressLevel, readAhead: options.readAhead ?? 4, stats, progress, signal: options.signal });
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const num = (k: string) => (typeof done[k] === 'number' ? (done[k] as number) : 0);
    const result: PushResult = {
      digest: field(done, 'digest', 'DONE'),
      size: src.imageSize,
      blockCount,
      alreadyPresent: done.alreadyPresent === true,
      blocksSent: stats.blocksSent,
      rawBytesSent: stats.rawBytes,
      encodedBytesSent: stats.encodedBytes,
      protocol: version,
      digestBytesSent: stats.digestBytes,
      wireBytesSent: conn.bytesOut,
      wireBytesReceived: conn.bytesIn,
      localBlocks: num('localBlocks'),
      resumedBlocks: num('resumedBlocks'),
      duplicateBlocks: num('duplicateBlocks'),
      zeroBlocks: num('zeroBlocks'),
      seconds,
      fromIndex: src.fromIndex,
      tags: Array.isArray(done.tags) ? done.tags.filter((t): t is string => typeof t === 'string') : typeof done.name === 'string' ? [done.name] : [],
    };
    if (result.tags.length) result.name = result.tags[0];
    conn.end();
    emit({ type: 'result', result });
    return result;
  } catch (err) {
    // Once the caller aborted, whatever broke (the socket, a pending read) is that abort.
    const e = options.signal?.aborted ? cancelled() : toOsfarmError(err);
    if (!conn.isClosed) conn.fail(e);
    throw conn.closeError && conn.closeError !== e && e.code === 'OSFARM_IO' ? conn.closeError : e;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    src?.cancel();
    if (!conn.isClosed) socket.destroy();
  }
}

/** Unsent bytes in the socket's buffer beyond which the digest stream waits. */
const DIGEST_BACKLOG_BYTES = 4 << 20;

interface StreamState {
  /** The negotiated protocol version. */
  version: number;
  /** The receiver's payload limit. */
  maxFrame: number;
  blockCount: number;
  maxRunBlocks: number;
  compress: boolean;
  compressLevel?: number;
  readAhead: number;
  stats: { digestsSent: number; digestBytes: number; blocksSent: number; rawBytes: number; encodedBytes: number; haveBlocks: number };
  progress: () => void;
  signal?: AbortSignal;
}

/**
 * Digests (v1) or digest groups (v2) out as produced, the block digests of groups the
 * receiver asks for (v2), blocks out as requested, until DONE.
 */
function stream(conn: Connection, src: ImageSourceHandle, s: StreamState): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let finished = false;
    const settle = (err: unknown, value?: Record<string, unknown>) => {
      if (finished) return;
      finished = true;
      clearInterval(ticker);
      if (err) reject(err);
      else resolve(value!);
    };
    const ticker = setInterval(s.progress, 200);
    const requests: Run[] = [];
    let reading = 0;
    /** Blocks the receiver may name: digests sent (v1) or blocks covered by groups sent (v2). */
    let known = 0;
    const dl = src.hash === 'sha256' ? 32 : 20;
    // v2: every digest is kept to answer NEED_DIGESTS (0.5 % of the image in memory).
    const grouper = s.version >= 2 ? new native.DigestGrouper(src.hash) : undefined;
    const all = grouper ? Buffer.allocUnsafe(s.blockCount * dl) : undefined;
    const sendGroups = (records: Buffer) => {
      if (records.length === 0) return;
      const first = known;
      known = grouper!.grouped;
      s.stats.digestsSent = known;
      s.stats.digestBytes += 8 + records.length;
      conn.send(FrameType.GROUPS, groupsPayload(first, records));
    };

    // v2: runs are compressed through one zstd stream, in the order their frames are sent
    // (`encodeTail` chains the encoder's calls), so a run also compresses against earlier
    // ones, at a level that adapts to whether the encoder or the link is the bottleneck.
    const streamEncoder = s.version >= 2 && s.compress ? new native.BlockStreamEncoder() : undefined;
    let encodeTail: Promise<void> = Promise.resolve();
    const level = new StreamLevel(s.compressLevel === undefined ? {} : { start: s.compressLevel, min: s.compressLevel, max: s.compressLevel });
    const sendRun = (r: Run, encoding: number, data: Buffer, rawLength: number) => {
      if (finished || conn.isClosed) return;
      conn.send(FrameType.BLOCKS, [blocksHeader(r.first, r.count, encoding), data]);
      s.stats.blocksSent += r.count;
      s.stats.rawBytes += rawLength;
      s.stats.encodedBytes += data.length;
    };

    const pumpBlocks = () => {
      while (!finished && reading < s.readAhead && requests.length > 0 && conn.writable) {
        const r = requests.shift()!;
        reading++;
        const read = callNative(() => src.readRun(r.first, r.count, s.compress && !streamEncoder));
        let sent: Promise<void>;
        if (streamEncoder) {
          sent = read.then((run) => {
            const encoded = encodeTail.then(async () => {
              const e = await level.encode((l) => callNative(() => streamEncoder.encode(run.data, l)));
              sendRun(r, e.encoding, e.data, run.rawLength);
            });
            encodeTail = encoded.catch(() => undefined);
            return encoded;
          });
        } else {
          sent = read.then((run) => sendRun(r, run.encoding, run.data, run.rawLength));
        }
        sent.then(
          () => {
            reading--;
            if (finished || conn.isClosed) return;
            if (conn.writable) pumpBlocks();
            else void conn.drained().then(pumpBlocks);
          },
          (err) => fail(err),
        );
      }
      // drained() resolves at once on a closed connection: stop there, or this spins.
      if (!finished && !conn.isClosed && !conn.writable && requests.length > 0) void conn.drained().then(pumpBlocks);
    };

    const fail = (err: unknown) => {
      const e = toOsfarmError(err);
      conn.fail(e);
      settle(e);
    };

    conn.onClose((err) => settle(err ?? protocolError('the receiver closed the connection before DONE')));
    conn.onFrame((f) => {
      switch (f.type) {
        case FrameType.REQUEST: {
          for (const r of parseRequest(f.payload)) {
            if (r.count > s.maxRunBlocks || r.first + r.count > known) {
              throw protocolError(`the receiver asked for blocks ${r.first}+${r.count}, beyond what it may ask`);
            }
            requests.push(r);
          }
          pumpBlocks();
          return;
        }
        case FrameType.NEED_DIGESTS: {
          if (!all) throw protocolError('NEED_DIGESTS in a protocol 1 session');
          for (const r of parseRequest(f.payload, 'NEED_DIGESTS')) {
            if (r.first + r.count > known || 8 + r.count * dl > s.maxFrame) {
              throw protocolError(`the receiver asked for the digests of blocks ${r.first}+${r.count}, beyond what it may ask`);
            }
            const digests = all.subarray(r.first * dl, (r.first + r.count) * dl);
            s.stats.digestBytes += 8 + digests.length;
            conn.send(FrameType.DIGESTS, digestsPayload(r.first, digests));
          }
          return;
        }
        case FrameType.PROGRESS: {
          const p = parseJson(f.type, f.payload);
          if (typeof p.haveBlocks === 'number') s.stats.haveBlocks = p.haveBlocks;
          return;
        }
        case FrameType.DONE:
          s.stats.haveBlocks = s.blockCount;
          s.progress();
          settle(undefined, parseJson(f.type, f.payload));
          return;
        default:
          if (isOptional(f.type)) return;
          throw protocolError(`unexpected frame type 0x${f.type.toString(16)} during the transfer`);
      }
    });

    // Digests, as the hashing thread produces them.
    void (async () => {
      try {
        for (;;) {
          const w = await callNative(() => src.next(s.signal), s.signal);
          if (finished) return;
          if (!w) break;
          if (grouper) {
            w.digests.copy(all!, w.firstBlock * dl);
            sendGroups(grouper.push(w.digests));
          } else {
            known = w.firstBlock + w.count;
            s.stats.digestsSent = known;
            s.stats.digestBytes += 8 + w.digests.length;
            conn.send(FrameType.DIGESTS, digestsPayload(w.firstBlock, w.digests));
          }
          // Digests (0.5 % of the image) do not wait behind blocks: the further ahead the
          // receiver knows them, the fuller its request window stays at a small delta.
          // Only a large backlog in the socket's buffer pauses them (and so hashing).
          if (conn.queuedBytes > DIGEST_BACKLOG_BYTES) await conn.drained();
          if (finished) return;
        }
        if (grouper) sendGroups(grouper.finish());
        const digest = src.imageDigest();
        if (!digest) throw new OsfarmError('OSFARM_INTERNAL', 'the image digest is not known after the last window');
        conn.sendJson(FrameType.END, { digest });
      } catch (err) {
        fail(err);
      }
    })();
  });
}
