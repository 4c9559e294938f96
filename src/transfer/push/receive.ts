/**
 * The receiving side of a push (docs/protocol.md): a TCP server that authenticates
 * sources with a shared token, resolves the source's digest groups from its own indexes
 * (protocol 2: it asks only for the block digests of groups it does not hold), looks
 * every block digest up in its repository's hash table, requests only the blocks it lacks
 * (bounded outstanding bytes), verifies every block and the image digest, and publishes
 * atomically.
 */
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';

import { callNative, OsfarmError, toOsfarmError } from '../../base/errors.js';
import { eventSink, type ResultEvent } from '../../base/events.js';
import { native, type PushAssembly } from '../../base/native.js';
import { Repository } from '../../repo/index.js';
import { loadSigningKey, trustedKeys } from '../../trust/keys.js';
import { checkPushed, type SignedManifest } from '../../trust/manifest.js';
import type { PublicKey } from '../../trust/minisign.js';
import { certificateFingerprint, type TlsServerOptions } from '../../trust/tls.js';
import { imageArrived } from '../../trust/provenance.js';
import { mac, macMatches, newNonce, parseNonce } from './auth.js';
import { listenOn } from '../address.js';
import { Connection, field, intField, optString, tagsField } from './connection.js';
import { ConnectionGate, type Ticket } from '../gate.js';
import {
  DEFAULT_MAX_FRAME,
  Encoding,
  FrameType,
  MAX_RUN_BYTES,
  PRE_AUTH_MAX_FRAME,
  PROTOCOL_VERSIONS,
  isOptional,
  parseBlocks,
  parseDigests,
  parseGroups,
  parseJson,
  protocolError,
  requestPayload,
  type Frame,
  type Run,
} from './frames.js';
import { SOFTWARE } from '../../base/version.js';

/** Largest `meta` an IMAGE frame may carry (as JSON): a build's spec, its XML and its log's end. */
const MAX_META = 1 << 20;

export interface ReceiverOptions {
  /** The repository images are received into (created if the directory does not exist). */
  repo: string;
  /** The shared token; required unless `insecure`. */
  token?: string;
  /** Accept sources without a token (trusted networks, tests). */
  insecure?: boolean;
  /**
   * Public key files (minisign format): every pushed image must carry a manifest signed by
   * one of them, or by a key of the repository's trust store (`trust/*.pub`), checked before
   * any block is accepted (docs/trust.md). With neither, pushed manifests are kept unchecked.
   */
  trust?: string[];
  /** Listen with TLS (certificate chain and key, PEM); sources pin its fingerprint or check it against a CA. Without it: plain TCP. */
  tls?: TlsServerOptions;
  /** Transfers at once; more are refused with OSFARM_LOCKED (default 4). */
  maxTransfers?: number;
  /** Close a connection that sends nothing for this long (default 60 s). */
  idleTimeoutMs?: number;
  /** Time allowed for magic + HELLO + AUTH (default 5 s). */
  handshakeTimeoutMs?: number;
  /** Connections waiting to authenticate, from one address (default 8) and in all (default 64); more get OSFARM_LOCKED. */
  maxPendingPerAddress?: number;
  maxPending?: number;
  /** Requested-but-unreceived bytes per transfer (default 16 MiB). */
  windowBytes?: number;
  /** Largest payload accepted after authentication (default 4 MiB). */
  maxFrame?: number;
  /** Protocol versions accepted (default [2, 1]); the highest one the source offers is used. */
  protocols?: number[];
  /** Every event (see ReceiveEvent), the totals last when the receiver closes; a listener's error is ignored. */
  onEvent?: (event: ReceiveEvent) => void;
}

export interface TransferReport {
  remote: string;
  /** The protocol version used. */
  protocol?: number;
  digest?: string;
  /** The image's first tag here. */
  name?: string;
  /** Its tags here. */
  tags?: string[];
  size?: number;
  blockCount?: number;
  alreadyPresent?: boolean;
  receivedBlocks: number;
  receivedBytes: number;
  localBlocks: number;
  resumedBlocks: number;
  duplicateBlocks: number;
  zeroBlocks: number;
  wireBytesReceived: number;
  seconds: number;
  error?: { code: string; message: string };
  /** True if the partial image was kept for a later attempt (the transfer failed without the source's fault). */
  keptPartial?: boolean;
}

/** Totals over a receiver's life. */
export interface ReceiverTotals {
  transfers: number;
  failed: number;
  wireBytesReceived: number;
  receivedBytes: number;
}

/**
 * What a receiver reports: listening, each transfer's start and end (its TransferReport),
 * refused connections, and `{ type: 'result', result }` with its totals when it closes.
 */
export type ReceiveEvent =
  | { type: 'listening'; address: string; port: number; repo: string; /** With TLS: the certificate's SHA-256 fingerprint, for sources to pin. */ tlsFingerprint?: string }
  | { type: 'repository-created'; path: string }
  | { type: 'transfer-start'; remote: string; size: number; name?: string; tags?: string[] }
  | ({ type: 'transfer-done' } & TransferReport)
  | ({ type: 'transfer-failed' } & TransferReport)
  | { type: 'connection-refused'; remote: string; error: { code: string; message: string } }
  /** Connections the gate turned away (too many waiting to authenticate) over the last 5 s. */
  | { type: 'busy'; refused: number; message: string }
  | ResultEvent<ReceiverTotals>;

/** Runs a native call on data from the source: its refusal of bad input is a protocol error. */
function bySource<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const e = toOsfarmError(err);
    throw e.code === 'OSFARM_INVALID_ARGUMENT' ? protocolError(e.message) : e;
  }
}

/**
 * A push receiver: `listen()`, then `close()` (or `await using`). Its events (ReceiveEvent)
 * go to `options.onEvent`, and as EventEmitter events named by their `type` whose payload
 * is the rest of the event: `transfer-start` ({remote, size, name}), `transfer-done`
 * (TransferReport), `transfer-failed` (TransferReport with `error`), `connection-refused`
 * ({remote, error}), `busy` ({refused, message}: connections turned away because too many
 * wait to authenticate, summed over 5 s so a flood does not flood the log too), `listening`,
 * `repository-created`, `result` (totals, on close).
 */
export class Receiver extends EventEmitter implements AsyncDisposable {
  private server: Server | undefined;
  private readonly connections = new Set<Socket>();
  /** Connections before authentication (see gate.ts). */
  private readonly gate: ConnectionGate;
  private active = 0;
  private busyRefused = 0;
  private busyMessage = '';
  private busyTimer: NodeJS.Timeout | undefined;
  private repoChecked = false;
  private closing: Promise<void> | undefined;
  private readonly sink: (event: ReceiveEvent) => void;
  readonly options: Required<Omit<ReceiverOptions, 'token' | 'onEvent' | 'tls' | 'trust'>> & { token?: string; tls?: TlsServerOptions; trust: string[] };
  /** The keys a pushed image's manifest must be signed by (none: not required); read at listen(). */
  private keys: PublicKey[] = [];
  /** Totals over the receiver's life. */
  readonly totals: ReceiverTotals = { transfers: 0, failed: 0, wireBytesReceived: 0, receivedBytes: 0 };

  constructor(options: ReceiverOptions) {
    super();
    if (!options.token && !options.insecure) {
      throw new OsfarmError(
        'OSFARM_UNAUTHORIZED',
        'refusing to receive without a token: give --token, --token-file or $OSFARM_TOKEN, or --insecure on a trusted network',
      );
    }
    this.sink = eventSink(options.onEvent);
    this.options = {
      repo: options.repo,
      token: options.token,
      tls: options.tls,
      trust: options.trust ?? [],
      insecure: options.insecure ?? false,
      maxTransfers: options.maxTransfers ?? 4,
      idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 5_000,
      maxPendingPerAddress: options.maxPendingPerAddress ?? 8,
      maxPending: options.maxPending ?? 64,
      windowBytes: options.windowBytes ?? 16 << 20,
      maxFrame: Math.max(options.maxFrame ?? DEFAULT_MAX_FRAME, MAX_RUN_BYTES + 64),
      protocols: options.protocols ?? [...PROTOCOL_VERSIONS],
    };
    const o = this.options;
    this.gate = new ConnectionGate({ perAddress: o.maxPendingPerAddress, total: o.maxPending, deadlineMs: o.handshakeTimeoutMs });
    if (this.options.protocols.length === 0 || this.options.protocols.some((v) => !PROTOCOL_VERSIONS.includes(v))) {
      throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `protocol versions ${JSON.stringify(options.protocols)}: this osfarm speaks ${PROTOCOL_VERSIONS.join(', ')}`);
    }
  }

  /** Listens, then opens (or creates) the repository: a taken port leaves no new repository behind. Resolves with the bound address. */
  async listen(host: string, port: number): Promise<AddressInfo> {
    // The keys it requires (--trust files, the trust store): a bad key file fails before anything is bound or created.
    this.keys = trustedKeys(this.options.repo, this.options.trust);
    const tls = this.options.tls;
    // With TLS, accept() (and the gate in it) gets the connection once its handshake is done.
    const server = tls ? createTlsServer({ ...tls, noDelay: true }, (socket) => this.accept(socket)) : createServer({ noDelay: true }, (socket) => this.accept(socket));
    // A source that does not complete the TLS handshake (it distrusts the certificate, or speaks plain TCP) is refused.
    server.on('tlsClientError', (err: Error, socket: Socket) => {
      this.report({ type: 'connection-refused', remote: `${socket.remoteAddress}:${socket.remotePort}`, error: { code: 'OSFARM_UNAUTHORIZED', message: `TLS handshake failed: ${err.message}` } });
    });
    // A backstop only (beyond it the kernel's connections are reset): the gate bounds
    // unauthenticated connections, IMAGE the transfers.
    server.maxConnections = 4 * (this.options.maxPending + this.options.maxTransfers) + 64;
    await listenOn(server, host, port);
    this.server = server;
    try {
      this.ensureRepository();
      // A signing key that cannot be used fails now, not after the first transfer.
      loadSigningKey(this.options.repo);
    } catch (err) {
      await this.close();
      throw err;
    }
    const address = server.address() as AddressInfo;
    this.report({ type: 'listening', address: address.address, port: address.port, repo: this.options.repo, ...(tls ? { tlsFingerprint: certificateFingerprint(tls.cert) } : {}) });
    return address;
  }

  /**
   * Stops listening and ends every connection (their partial images stay for resume);
   * reports the totals as the `result` event. Safe to call twice.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const s of this.connections) s.destroy();
      await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
      this.flushBusy();
      this.report({ type: 'result', result: { ...this.totals } });
    })();
    return this.closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** One event to `onEvent` and to the EventEmitter listeners of its type (without `type`). */
  private report(event: ReceiveEvent): void {
    this.sink(event);
    const { type, ...payload } = event;
    this.emit(type, type === 'result' ? event.result : payload);
  }

  /** Records an accepted image's name and signs it with the repository's key, if it has one (docs/trust.md). */
  private signAccepted<E extends { digest: string }>(e: E, carried: SignedManifest | undefined): E {
    using repo = Repository.open(this.options.repo);
    imageArrived(this.options.repo, repo.resolve(e.digest), 'receive', carried);
    return e;
  }

  private ensureRepository(): Repository {
    if (!this.repoChecked && !Repository.exists(this.options.repo)) {
      Repository.init(this.options.repo);
      this.report({ type: 'repository-created', path: this.options.repo });
    }
    this.repoChecked = true;
    return Repository.open(this.options.repo);
  }

  private accept(socket: Socket): void {
    this.connections.add(socket);
    socket.once('close', () => this.connections.delete(socket));
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const conn = new Connection(socket, { idleTimeoutMs: this.options.idleTimeoutMs, maxFrame: PRE_AUTH_MAX_FRAME, peer: 'source' });
    // Garbage and wrong magic get an ERROR frame that says why (see protocol.md).
    conn.sendMagic();
    let refused = false;
    const refuse = (e: OsfarmError, quiet = false) => {
      if (refused) return;
      refused = true;
      conn.fail(e);
      if (quiet) this.noteBusy(e.message);
      else this.report({ type: 'connection-refused', remote, error: { code: e.code, message: e.message } });
    };
    const busy = (why: string) => refuse(new OsfarmError('OSFARM_LOCKED', `receiver busy: ${why}; retry in a few seconds`), true);
    const ticket = this.gate.admit(socket.remoteAddress, {
      refuse: busy,
      expire: () => refuse(protocolError(`the handshake was not completed within ${this.options.handshakeTimeoutMs / 1000} s`)),
    });
    if (typeof ticket === 'string') {
      busy(ticket);
      return;
    }
    socket.once('close', () => ticket.leave());
    this.session(conn, remote, ticket).catch((err) => refuse(toOsfarmError(err)));
  }

  /** Counts a connection turned away by the gate; `busy` reports them once per 5 s. */
  private noteBusy(message: string): void {
    this.busyRefused++;
    this.busyMessage = message;
    this.busyTimer ??= setTimeout(() => {
      this.flushBusy();
    }, 5_000).unref();
  }

  private flushBusy(): void {
    clearTimeout(this.busyTimer);
    this.busyTimer = undefined;
    if (this.busyRefused === 0) return;
    this.report({ type: 'busy', refused: this.busyRefused, message: this.busyMessage });
    this.busyRefused = 0;
  }

  private async session(conn: Connection, remote: string, ticket: Ticket): Promise<void> {
    const o = this.options;
    let repo: Repository;
    let version: number;
    try {
      const hello = await conn.expectJson(FrameType.HELLO, 'HELLO');
      const versions: unknown[] = Array.isArray(hello.protocols) ? hello.protocols : [];
      const common = o.protocols.filter((v) => versions.includes(v));
      if (common.length === 0) {
        throw protocolError(`the source speaks protocol versions ${JSON.stringify(versions)}; this receiver speaks ${o.protocols.join(', ')}`);
      }
      version = Math.max(...common);
      const clientNonce = parseNonce(hello.nonce, 'HELLO');
      const serverNonce = newNonce();
      repo = this.ensureRepository();
      conn.sendJson(FrameType.WELCOME, {
        protocol: version,
        software: SOFTWARE,
        nonce: serverNonce.toString('hex'),
        auth: o.token ? 'hmac-sha256' : 'none',
        hash: repo.hash,
        blockSize: repo.blockSize,
        maxFrame: o.maxFrame,
      });
      const auth = await conn.expectJson(FrameType.AUTH, 'AUTH');
      if (o.token) {
        if (!macMatches(auth.mac, mac(o.token, 'client', clientNonce, serverNonce))) {
          throw new OsfarmError('OSFARM_UNAUTHORIZED', 'wrong token: the source is not allowed to push here');
        }
        conn.sendJson(FrameType.AUTH_OK, { mac: mac(o.token, 'server', clientNonce, serverNonce).toString('hex') });
      } else {
        conn.sendJson(FrameType.AUTH_OK, {});
      }
    } finally {
      ticket.leave();
    }
    conn.setMaxFrame(o.maxFrame);
    const image = await conn.expectJson(FrameType.IMAGE, 'IMAGE');
    if (this.active >= o.maxTransfers) {
      throw new OsfarmError('OSFARM_LOCKED', `the receiver is busy with ${this.active} transfers (its limit); try again later`);
    }
    this.active++;
    try {
      await this.transfer(conn, remote, repo, image, version);
    } finally {
      this.active--;
    }
  }

  private async transfer(conn: Connection, remote: string, repo: Repository, image: Record<string, unknown>, version: number): Promise<void> {
    const o = this.options;
    const started = process.hrtime.bigint();
    const size = intField(image, 'size', 'IMAGE');
    const blockCount = intField(image, 'blockCount', 'IMAGE');
    const hash = field(image, 'hash', 'IMAGE');
    const blockSize = intField(image, 'blockSize', 'IMAGE');
    if (hash !== repo.hash || blockSize !== repo.blockSize) {
      throw new OsfarmError('OSFARM_MISMATCH', `the image was hashed with ${hash} at ${blockSize}-byte blocks; this repository uses ${repo.hash} at ${repo.blockSize}`);
    }
    if (blockCount !== Math.ceil(size / blockSize)) throw protocolError(`IMAGE says ${blockCount} blocks for ${size} bytes at ${blockSize}-byte blocks`);
    const resumeKey = optString(image, 'resumeKey', 512);
    const digest = optString(image, 'digest', 64);
    // The source's bound on the image's data (optional): an image that cannot fit is refused now.
    const dataBytes = image.dataBytes === undefined ? undefined : intField(image, 'dataBytes', 'IMAGE');
    if (digest !== undefined && !/^[0-9a-f]+$/.test(digest)) throw protocolError('IMAGE digest is not lowercase hex');
    const meta = image.meta === undefined || image.meta === null ? undefined : JSON.stringify(image.meta);
    if (meta !== undefined && meta.length > MAX_META) throw protocolError(`IMAGE meta is ${meta.length} bytes of JSON; at most ${MAX_META}`);
    const tags = tagsField(image);
    const imageOptions = {
      tags,
      originalName: optString(image, 'originalName', 4096),
      format: optString(image, 'format', 64),
      // The origin's metadata (spec, stage chain, build log, packages): any JSON, kept as it came.
      metaJson: meta,
    };
    // Its signed manifest: checked now, before any block, when this receiver requires signatures.
    const carried = checkPushed(optString(image, 'manifest', 1 << 16), optString(image, 'signature', 4096), this.keys, {
      digest,
      size,
      blockCount,
      tags: image.tags === undefined ? undefined : tags,
      name: optString(image, 'name', 255),
      meta: image.meta,
    });
    const report: TransferReport = {
      remote,
      protocol: version,
      size,
      blockCount,
      ...(tags.length ? { name: tags[0], tags } : {}),
      receivedBlocks: 0,
      receivedBytes: 0,
      localBlocks: 0,
      resumedBlocks: 0,
      duplicateBlocks: 0,
      zeroBlocks: 0,
      wireBytesReceived: 0,
      seconds: 0,
    };
    this.report({ type: 'transfer-start', remote, size, ...(tags.length ? { name: tags[0], tags } : {}) });

    const asm: PushAssembly = await callNative(() =>
      native.PushAssembly.begin(o.repo, { imageSize: size, resumeKey: resumeKey || undefined, expectedDigest: digest, groups: version >= 2, tags, dataBytes }),
    );
    /** Where the image's blocks came from so far (reported in DONE and to listeners). */
    const counts = () => {
      const st = asm.stats;
      return {
        receivedBlocks: st.receivedBlocks,
        receivedBytes: st.receivedBytes,
        localBlocks: st.localBlocks,
        resumedBlocks: st.resumedBlocks,
        duplicateBlocks: st.duplicateBlocks,
        zeroBlocks: st.zeroBlocks,
      };
    };
    const finishReport = (extra: Partial<TransferReport>) => {
      const st = asm.stats;
      Object.assign(report, {
        ...counts(),
        wireBytesReceived: conn.bytesIn,
        seconds: Number(process.hrtime.bigint() - started) / 1e9,
        ...extra,
      });
      this.totals.wireBytesReceived += conn.bytesIn;
      this.totals.receivedBytes += st.receivedBytes;
      return report;
    };

    if (asm.alreadyPresent) {
      const e = await callNative(() => asm.finish(digest!, imageOptions)).then((e) => this.signAccepted(e, carried));
      conn.sendJson(FrameType.DONE, { digest: e.digest, name: e.tags[0], tags: e.tags, size: e.size, blockCount: e.blockCount, alreadyPresent: true });
      conn.end();
      this.totals.transfers++;
      this.report({ type: 'transfer-done', ...finishReport({ digest: e.digest, name: e.tags[0], tags: e.tags, alreadyPresent: true }) });
      return;
    }
    conn.sendJson(FrameType.ACCEPT, { resumedBlocks: 0 });

    await new Promise<void>((resolve) => {
      const dl = asm.hash === 'sha256' ? 32 : 20;
      const maxRunBlocks = Math.max(1, Math.floor(MAX_RUN_BYTES / blockSize));
      const pending: Run[] = [];
      const outstanding = new Map<number, number>();
      let outstandingBytes = 0;
      let puts = 0;
      let paused = false;
      let endDigest: string | undefined;
      let finishing = false;
      let over = false;
      const MAX_PUTS = 8;
      // v2: the groups announced so far, in image order from `groupHead`. Each is offered,
      // in order, once its block digests are known: from the repository's own index for a
      // group it holds, else from the DIGESTS answering a NEED_DIGESTS run (in `asked`,
      // by first block). Misses are asked for at once, so nothing waits on a round trip.
      interface Group {
        first: number;
        count: number;
        digests?: Buffer;
      }
      const groups: Group[] = [];
      let groupHead = 0;
      let grouped = 0;
      const asked = new Map<number, Group[]>();
      const maxDigestRun = Math.floor((o.maxFrame - 8) / dl);

      const progress = setInterval(() => {
        const st = asm.stats;
        conn.sendJson(FrameType.PROGRESS, { haveBlocks: st.haveBlocks, blockCount, receivedBytes: st.receivedBytes });
      }, 1000);

      const end = (err: OsfarmError | undefined, fromSource: boolean) => {
        if (over) return;
        over = true;
        clearInterval(progress);
        if (err) {
          // A source that misbehaved gets nothing kept; an interrupted one can resume.
          const keep = !fromSource && asm.resumable;
          asm.abort(!keep);
          this.totals.failed++;
          this.report({ type: 'transfer-failed', ...finishReport({ error: { code: err.code, message: err.message }, keptPartial: keep }) });
          conn.fail(err);
        }
        resolve();
      };

      const pump = () => {
        while (pending.length > 0 && outstandingBytes < o.windowBytes && !over) {
          const batch: Run[] = [];
          while (pending.length > 0 && outstandingBytes < o.windowBytes && batch.length < 4096) {
            const r = pending.shift()!;
            batch.push(r);
            outstanding.set(r.first, r.count);
            outstandingBytes += r.count * blockSize;
          }
          conn.send(FrameType.REQUEST, requestPayload(batch));
        }
        maybeFinish();
      };

      const maybeFinish = () => {
        if (over || finishing || endDigest === undefined || pending.length || outstanding.size || puts) return;
        if (groupHead < groups.length || asked.size) return;
        finishing = true;
        callNative(() => asm.finish(endDigest!, imageOptions)).then((e) => this.signAccepted(e, carried)).then(
          (e) => {
            if (over) return;
            conn.sendJson(FrameType.DONE, { digest: e.digest, name: e.tags[0], tags: e.tags, size: e.size, blockCount: e.blockCount, alreadyPresent: false, ...counts() });
            over = true;
            clearInterval(progress);
            this.totals.transfers++;
            this.report({ type: 'transfer-done', ...finishReport({ digest: e.digest, name: e.tags[0], tags: e.tags, alreadyPresent: false }) });
            conn.end();
            resolve();
          },
          // A wrong image digest is the source's fault (nothing kept); a damaged local
          // block (OSFARM_BAD_REPOSITORY) or an I/O error is not.
          (err) => {
            const e = toOsfarmError(err);
            end(e, e.code === 'OSFARM_DIGEST_MISMATCH');
          },
        );
      };

      /** Offers block digests to the assembly and queues requests for the blocks it lacks. */
      const offer = (first: number, digests: Buffer) => {
        for (const r of bySource(() => asm.offer(first, digests))) {
          for (let at = r.first; at < r.first + r.count; at += maxRunBlocks) {
            pending.push({ first: at, count: Math.min(maxRunBlocks, r.first + r.count - at) });
          }
        }
      };

      /** v2: offers the groups at the head of the queue whose digests are known. */
      const offerReady = () => {
        const first = groups[groupHead]?.first ?? 0;
        const parts: Buffer[] = [];
        while (groupHead < groups.length && groups[groupHead]!.digests) parts.push(groups[groupHead++]!.digests!);
        if (parts.length > 0) offer(first, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
        if (groupHead > 4096 && groupHead * 2 > groups.length) {
          groups.splice(0, groupHead);
          groupHead = 0;
        }
        pump();
      };

      /** v2: queues the groups of a GROUPS frame and asks for the digests of unknown ones. */
      const onGroups = (payload: Buffer) => {
        const { first, records } = parseGroups(payload);
        if (first !== grouped) throw protocolError(`GROUPS from block ${first} where block ${grouped} was next`);
        const need: Run[] = [];
        for (const g of bySource(() => asm.lookupGroups(records))) {
          if (grouped + g.count > blockCount) throw protocolError(`GROUPS cover more than the image's ${blockCount} blocks`);
          const group: Group = { first: grouped, count: g.count, digests: g.digests ?? undefined };
          groups.push(group);
          grouped += g.count;
          if (group.digests) continue;
          const last = need[need.length - 1];
          if (last && last.first + last.count === group.first && last.count + group.count <= maxDigestRun) {
            last.count += group.count;
            asked.get(last.first)!.push(group);
          } else {
            need.push({ first: group.first, count: group.count });
            asked.set(group.first, [group]);
          }
        }
        if (need.length > 0) conn.send(FrameType.NEED_DIGESTS, requestPayload(need));
        offerReady();
      };

      /** v2: DIGESTS answer one NEED_DIGESTS run exactly. */
      const onAskedDigests = (first: number, digests: Buffer) => {
        const waiting = asked.get(first);
        const count = digests.length / dl;
        if (!waiting || waiting.reduce((n, g) => n + g.count, 0) !== count) {
          throw protocolError(`DIGESTS ${first}+${count} answer no NEED_DIGESTS`);
        }
        asked.delete(first);
        let at = 0;
        for (const g of waiting) {
          g.digests = digests.subarray(at * dl, (at + g.count) * dl);
          at += g.count;
        }
        offerReady();
      };

      const onFrame = (f: Frame) => {
        switch (f.type) {
          case FrameType.DIGESTS: {
            const { first, digests } = parseDigests(f.payload, dl);
            if (version >= 2) {
              onAskedDigests(first, digests);
              return;
            }
            if (endDigest !== undefined) throw protocolError('DIGESTS after END');
            offer(first, digests);
            pump();
            return;
          }
          case FrameType.GROUPS: {
            if (version < 2) throw protocolError('GROUPS in a protocol 1 session');
            if (endDigest !== undefined) throw protocolError('GROUPS after END');
            onGroups(f.payload);
            return;
          }
          case FrameType.BLOCKS: {
            const b = parseBlocks(f.payload, version);
            if (outstanding.get(b.first) !== b.count) {
              throw protocolError(`BLOCKS ${b.first}+${b.count} answer no outstanding request`);
            }
            if (b.encoding === Encoding.ZSTD_STREAM) {
              // The stream's parts decode only in frame order: here, as the frames arrive.
              b.data = bySource(() => asm.decodeStream(b.first, b.count, b.data));
              b.encoding = Encoding.RAW;
            }
            outstanding.delete(b.first);
            outstandingBytes -= b.count * blockSize;
            puts++;
            if (puts >= MAX_PUTS && !paused) {
              paused = true;
              conn.socket.pause();
            }
            callNative(() => asm.put(b.first, b.count, b.encoding, b.data)).then(
              () => {
                puts--;
                if (paused && puts < MAX_PUTS / 2) {
                  paused = false;
                  conn.socket.resume();
                }
                pump();
              },
              (err) => {
                const e = toOsfarmError(err);
                end(e.code === 'OSFARM_INVALID_ARGUMENT' ? protocolError(e.message) : e, true);
              },
            );
            pump();
            return;
          }
          case FrameType.END: {
            if (endDigest !== undefined) throw protocolError('a second END');
            const m = parseJson(f.type, f.payload);
            const d = field(m, 'digest', 'END');
            if (!/^[0-9a-f]+$/.test(d) || d.length !== dl * 2) throw protocolError('END carries no valid image digest');
            const named = version >= 2 ? grouped : asm.stats.offered;
            if (named !== blockCount) {
              throw protocolError(`END after the ${version >= 2 ? 'groups' : 'digests'} of ${named} of ${blockCount} blocks`);
            }
            endDigest = d;
            maybeFinish();
            return;
          }
          default:
            if (isOptional(f.type)) return;
            throw protocolError(`unexpected frame type 0x${f.type.toString(16)} during the transfer`);
        }
      };

      conn.onClose((err) => {
        if (over) return;
        // Refused data (bad frame, garbage, wrong block) is the source's fault: nothing is
        // kept. A dropped connection, a timeout or the source's own ERROR keep the partial.
        end(err ?? protocolError('the source closed the connection before the image was complete'), conn.closeKind === 'local');
      });
      conn.onFrame(onFrame);
    });
  }
}
