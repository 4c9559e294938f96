/**
 * One push connection, either side: framing over a TCP socket, write backpressure,
 * keepalives, idle timeout, and ERROR frames in both directions.
 */
import type { Socket } from 'node:net';

import { type ErrorCode, OsfarmError, toOsfarmError } from '../../base/errors.js';
import {
  FrameReader,
  FrameType,
  MAGIC,
  header,
  jsonPayload,
  parseJson,
  protocolError,
  type Frame,
} from './frames.js';

const KEEPALIVE_AFTER_MS = 15_000;

export interface ConnectionOptions {
  /** Close the connection when nothing arrives for this long. */
  idleTimeoutMs: number;
  /** Payload limit until `setMaxFrame` (before authentication). */
  maxFrame: number;
  /** Who the peer is, for messages ("receiver", "source"). */
  peer: string;
}

export class Connection {
  readonly reader: FrameReader;
  bytesIn = 0;
  bytesOut = 0;
  /** Why the connection ended (undefined: closed cleanly). */
  closeError: OsfarmError | undefined;
  /**
   * Who ended it: `local` (this side refused something the peer sent, via `fail`),
   * `peer` (the peer sent ERROR), `timeout`, `network` (dropped or reset), `clean`.
   */
  closeKind: 'local' | 'peer' | 'timeout' | 'network' | 'clean' | undefined;
  private queue: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: OsfarmError) => void } | undefined;
  private handler: ((f: Frame) => void) | undefined;
  private closedFlag = false;
  private lastSent = Date.now();
  private readonly timer: NodeJS.Timeout;
  private closeListeners: ((err: OsfarmError | undefined) => void)[] = [];
  private drainWaiters: (() => void)[] = [];

  constructor(readonly socket: Socket, private readonly opts: ConnectionOptions) {
    this.reader = new FrameReader(opts.maxFrame, opts.peer);
    socket.setNoDelay(true);
    socket.setTimeout(opts.idleTimeoutMs);
    socket.on('timeout', () => {
      this.closeKind ??= 'timeout';
      this.fail(protocolError(`no data from the ${opts.peer} for ${Math.round(opts.idleTimeoutMs / 1000)} s: the connection is closed`));
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.flushDrainWaiters());
    socket.on('error', (err) => this.closed(new OsfarmError('OSFARM_IO', `connection to the ${opts.peer} failed: ${err.message}`, { cause: err })));
    socket.on('close', () => {
      this.closed(new OsfarmError('OSFARM_IO', `the ${opts.peer} closed the connection`));
    });
    this.timer = setInterval(() => {
      if (Date.now() - this.lastSent >= KEEPALIVE_AFTER_MS) this.send(FrameType.KEEPALIVE);
    }, 5_000);
    this.timer.unref();
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  sendMagic(): void {
    this.write(MAGIC);
  }

  /** Raises the payload limit (after authentication). */
  setMaxFrame(n: number): void {
    this.reader.maxFrame = n;
  }

  /** Sends one frame; false means "wait for `drained()` before sending more". */
  send(type: number, payload: Buffer | Buffer[] = []): boolean {
    if (this.closedFlag) return false;
    const parts = Array.isArray(payload) ? payload : [payload];
    const length = parts.reduce((n, p) => n + p.length, 0);
    this.socket.cork();
    this.write(header(type, length));
    let ok = true;
    for (const p of parts) if (p.length) ok = this.write(p);
    this.socket.uncork();
    return ok && !this.socket.writableNeedDrain;
  }

  sendJson(type: number, value: unknown): boolean {
    return this.send(type, jsonPayload(value));
  }

  /** True when the socket accepts more without buffering beyond its high-water mark. */
  get writable(): boolean {
    return !this.closedFlag && !this.socket.writableNeedDrain;
  }

  /** Bytes written but still in the socket's user-space buffer. */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  /** Resolves when the socket's write buffer has drained (or the connection closed). */
  drained(): Promise<void> {
    if (!this.socket.writableNeedDrain || this.closedFlag) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private flushDrainWaiters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }

  private write(b: Buffer): boolean {
    this.bytesOut += b.length;
    this.lastSent = Date.now();
    return this.socket.write(b);
  }

  /** The next frame (handshake phase). Rejects if the connection ends or the peer sends ERROR. */
  next(): Promise<Frame> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.closedFlag) return Promise.reject(this.closeError ?? protocolError(`the ${this.opts.peer} closed the connection`));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** The next frame, which must be of type `type`; its JSON payload. */
  async expectJson(type: number, what: string): Promise<Record<string, unknown>> {
    const f = await this.next();
    if (f.type !== type) throw protocolError(`expected ${what} from the ${this.opts.peer}, got frame type 0x${f.type.toString(16)}`);
    return parseJson(f.type, f.payload);
  }

  /** From now on, frames go to `handler` (queued ones first). */
  onFrame(handler: (f: Frame) => void): void {
    this.handler = handler;
    while (this.queue.length && this.handler === handler && !this.closedFlag) handler(this.queue.shift()!);
  }

  onClose(listener: (err: OsfarmError | undefined) => void): void {
    if (this.closedFlag) listener(this.closeError);
    else this.closeListeners.push(listener);
  }

  private onData(chunk: Buffer): void {
    if (this.closedFlag) return;
    this.bytesIn += chunk.length;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      this.fail(toOsfarmError(err));
      return;
    }
    for (const f of frames) {
      if (this.closedFlag) return;
      if (f.type === FrameType.ERROR) {
        this.peerError(f.payload);
        return;
      }
      if (f.type === FrameType.KEEPALIVE) continue;
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(f);
      } else if (this.handler) {
        try {
          this.handler(f);
        } catch (err) {
          this.fail(toOsfarmError(err));
          return;
        }
      } else {
        this.queue.push(f);
      }
    }
  }

  private peerError(payload: Buffer): void {
    let code: ErrorCode = 'OSFARM_PROTOCOL';
    let message = `the ${this.opts.peer} reported an error`;
    try {
      const v = parseJson(FrameType.ERROR, payload);
      if (typeof v.code === 'string' && /^OSFARM_[A-Z_]+$/.test(v.code)) code = v.code as ErrorCode;
      if (typeof v.message === 'string') message = `the ${this.opts.peer} says: ${v.message.slice(0, 2000)}`;
    } catch {
      /* keep the generic message */
    }
    this.closed(new OsfarmError(code, message), 'peer');
    this.socket.destroy();
  }

  /** Sends ERROR with the error's code and message, then closes. */
  fail(err: OsfarmError): void {
    if (this.closedFlag) return;
    try {
      this.send(FrameType.ERROR, jsonPayload({ code: err.code, message: err.message }));
    } catch {
      /* the socket may be gone */
    }
    this.closed(err, 'local');
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2_000).unref();
  }

  /** Closes without an error (after DONE). */
  end(): void {
    if (this.closedFlag) return;
    this.closed(undefined, 'clean');
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2_000).unref();
  }

  private closed(err: OsfarmError | undefined, kind: Connection['closeKind'] = 'network'): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.closeKind ??= kind;
    this.closeError = err;
    clearInterval(this.timer);
    this.flushDrainWaiters();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.reject(err ?? protocolError(`the ${this.opts.peer} closed the connection`));
    }
    for (const l of this.closeListeners.splice(0)) l(err);
  }
}

/** A required string field of a control message. */
export function field(msg: Record<string, unknown>, key: string, what: string): string {
  const v = msg[key];
  if (typeof v !== 'string') throw protocolError(`${what} has no '${key}'`);
  return v;
}

/** A required non-negative integer field of a control message. */
export function intField(msg: Record<string, unknown>, key: string, what: string): number {
  const v = msg[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw protocolError(`${what} has no valid '${key}'`);
  return v;
}

/**
 * The tags an IMAGE frame gives the image: its `tags` list, or (from a sender older than
 * tags) its one `name`. The receiving repository checks each tag's form before any data.
 */
export function tagsField(msg: Record<string, unknown>): string[] {
  const v = msg.tags;
  if (v === undefined || v === null) {
    const name = optString(msg, 'name', 255);
    return name === undefined ? [] : [name];
  }
  if (!Array.isArray(v) || v.length > 4096 || v.some((t) => typeof t !== 'string' || t.length > 255)) {
    throw protocolError("'tags' must be a list of at most 4096 strings of at most 255 characters");
  }
  return v as string[];
}

export function optString(msg: Record<string, unknown>, key: string, max = 4096): string | undefined {
  const v = msg[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > max) throw protocolError(`'${key}' must be a string of at most ${max} characters`);
  return v;
}
