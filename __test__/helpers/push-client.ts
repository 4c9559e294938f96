/**
 * A raw push client that speaks (and can break) the protocol with the same frame helpers
 * as osfarm, so it can lie; and `osfarm receive` as a child process, whose descriptors
 * and deleted-but-open files a test can count in /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync, readlinkSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ExecutionContext } from 'ava';

import { Repository } from '../../src/repo/index.js';
import { mac, newNonce } from '../../src/transfer/push/auth.js';
import { FrameReader, FrameType, MAGIC, header, jsonPayload, parseJson, type Frame } from '../../src/transfer/push/frames.js';
import { Receiver } from '../../src/transfer/push/receive.js';
import { tempDir } from './tmp.js';

export const BS = 4096;

export interface ImageFrame {
  size: number;
  blockCount?: number;
  resumeKey?: string;
  name?: string;
  tags?: string[];
  digest?: string;
  /** What travels with an image (docs/trust.md). */
  meta?: unknown;
  manifest?: string;
  signature?: string;
}

export class RawClient {
  private readonly reader = new FrameReader(64 << 20, 'receiver');
  private frames: Frame[] = [];
  private wake: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.frames.push(...this.reader.push(chunk));
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => {});
  }

  /** Connects to "host:port", from `localAddress` if given (another 127.0.0.x on loopback). */
  static async connect(address: string, localAddress?: string): Promise<RawClient> {
    const [host, port] = address.split(':');
    const socket = connect({ host, port: Number(port), localAddress });
    await once(socket, 'connect');
    return new RawClient(socket);
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  send(type: number, payload: Buffer | Buffer[]): void {
    const parts = Array.isArray(payload) ? payload : [payload];
    this.write(Buffer.concat([header(type, parts.reduce((n, p) => n + p.length, 0)), ...parts]));
  }

  /** The next frame, or undefined once the receiver has closed the connection. */
  async next(): Promise<Frame | undefined> {
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.closed) return undefined;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  /** Skips PROGRESS/KEEPALIVE frames. */
  async nextControl(): Promise<Frame | undefined> {
    for (;;) {
      const f = await this.next();
      if (!f || f.type < 0x80) return f;
    }
  }

  /** The ERROR frame the receiver ends with (asserting the connection is then closed). */
  async error(t: ExecutionContext): Promise<{ code: string; message: string }> {
    const f = await this.nextControl();
    t.truthy(f, 'the receiver closed the connection without an ERROR frame');
    t.is(f!.type, FrameType.ERROR, `expected ERROR, got frame type 0x${f!.type.toString(16)}`);
    t.is(await this.next(), undefined, 'the connection stays open after ERROR');
    return parseJson(f!.type, f!.payload) as { code: string; message: string };
  }

  /** magic, HELLO, WELCOME, AUTH, AUTH_OK (an empty mac for an --insecure receiver). */
  async handshake(token: string | undefined, protocols = [1]): Promise<void> {
    const clientNonce = newNonce();
    this.write(MAGIC);
    this.send(FrameType.HELLO, jsonPayload({ protocols, software: 'raw test client', nonce: clientNonce.toString('hex') }));
    const welcome = parseJson(FrameType.WELCOME, (await this.next())!.payload);
    const serverNonce = Buffer.from(welcome.nonce as string, 'hex');
    this.send(FrameType.AUTH, jsonPayload({ mac: token === undefined ? '' : mac(token, 'client', clientNonce, serverNonce).toString('hex') }));
    const ok = await this.next();
    if (ok?.type !== FrameType.AUTH_OK) throw new Error('the raw client was not authenticated');
  }

  /** Sends IMAGE for `data` (or the fields given) and returns the answer (ACCEPT, DONE or ERROR). */
  async announce(image: ImageFrame): Promise<Frame | undefined> {
    const blockCount = image.blockCount ?? Math.ceil(image.size / BS);
    this.send(FrameType.IMAGE, jsonPayload({ hash: 'sha1', blockSize: BS, ...image, blockCount }));
    return this.nextControl();
  }

  /** Announces an image and waits for ACCEPT. */
  async image(data: Buffer, resumeKey?: string): Promise<void> {
    const f = await this.announce({ size: data.length, resumeKey });
    if (f?.type !== FrameType.ACCEPT) throw new Error(`expected ACCEPT, got ${f ? `0x${f.type.toString(16)}` : 'a closed connection'}`);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The sha1 digest of every 4 KiB block of `data`. */
export function blockDigests(data: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += BS) out.push(createHash('sha1').update(data.subarray(at, at + BS)).digest());
  return Buffer.concat(out);
}

// ----- osfarm receive (or serve) as a child process -----

const CLI_MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

export interface ChildServer {
  child: ChildProcess;
  pid: number;
  /** "127.0.0.1:port". */
  address: string;
  /** The --json event lines seen so far. */
  events: Record<string, unknown>[];
  /** Resolves with the next event named `name` (or one already seen after `from`). */
  waitFor(name: string, from?: number): Promise<Record<string, unknown>>;
}

/**
 * Starts `osfarm --json <args>` (receive or serve, with --listen 127.0.0.1:0 among `args`)
 * and waits for its `listening` event; killed when the test ends.
 */
export async function startChild(t: ExecutionContext, args: string[], env: NodeJS.ProcessEnv = {}): Promise<ChildServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI_MAIN, '--json', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const events: Record<string, unknown>[] = [];
  const waiters: { name: string; resolve: (e: Record<string, unknown>) => void; reject: (e: Error) => void }[] = [];
  const lines = createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    events.push(e);
    for (const w of waiters.splice(0)) {
      if (e.type === w.name) w.resolve(e);
      else waiters.push(w);
    }
  });
  let exited: Error | undefined;
  child.once('exit', (code) => {
    exited = new Error(`osfarm exited (${code}): ${stderr}`);
    for (const w of waiters.splice(0)) w.reject(exited);
  });
  const waitFor = (name: string, from = 0) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const seen = events.slice(from).find((e) => e.type === name);
      if (seen) return resolve(seen);
      if (exited) return reject(exited);
      waiters.push({ name, resolve, reject });
    });
  const listening = await waitFor('listening');
  return { child, pid: child.pid!, address: `127.0.0.1:${listening.port as number}`, events, waitFor };
}

/** A process's open descriptors: how many, and the paths of those whose file was deleted. */
export function openFiles(pid: number): { count: number; deleted: string[] } {
  const dir = `/proc/${pid}/fd`;
  const deleted: string[] = [];
  let count = 0;
  for (const fd of readdirSync(dir)) {
    let target: string;
    try {
      target = readlinkSync(join(dir, fd));
    } catch {
      continue; // closed while we looked
    }
    count++;
    if (target.endsWith(' (deleted)')) deleted.push(target);
  }
  return { count, deleted };
}

/**
 * Polls until `pid` holds at most `baseline` descriptors (any number if undefined) and no
 * deleted file, or 5 s pass (a transfer's last writes may still be running when it is
 * reported failed); returns what it holds then.
 */
export async function settledFiles(pid: number, baseline = Infinity): Promise<{ count: number; deleted: string[] }> {
  let now = openFiles(pid);
  for (let i = 0; i < 50 && (now.count > baseline || now.deleted.length > 0); i++) {
    await new Promise((r) => setTimeout(r, 100));
    now = openFiles(pid);
  }
  return now;
}

/**
 * An in-process receiver (no token, plain TCP) into a new repository, closed when the test
 * ends; `detectCollisions` makes the repository first, with SHA-1 collision detection.
 */
export async function inProcessReceiver(t: ExecutionContext, o: { trust?: string[]; detectCollisions?: boolean } = {}): Promise<{ dir: string; address: string }> {
  const dir = join(tempDir(t), 'received');
  if (o.detectCollisions !== undefined) Repository.init(dir, { detectCollisions: o.detectCollisions });
  const r = new Receiver({ repo: dir, insecure: true, ...(o.trust ? { trust: o.trust } : {}) });
  const a = await r.listen('127.0.0.1', 0);
  t.teardown(() => r.close());
  return { dir, address: `127.0.0.1:${a.port}` };
}

/** A refused push kept nothing: no image, no partial, no list of held blocks. */
export function nothingKept(t: ExecutionContext, dir: string): void {
  t.deepEqual(Repository.open(dir).list(), []);
  t.deepEqual(readdirSync(join(dir, 'tmp')).filter((n) => n.endsWith('.partial') || n.endsWith('.have')), []);
}
