/**
 * A build farm for tests and benches: its own redis-server (append-only file, so a restart
 * keeps the queue), the central repository's `osfarm receive` and `osfarm serve --queue`,
 * and workers, each with its own work directory and stage cache. Every process runs on a
 * "host": a network namespace of a LAN (tests) or this machine's loopback (benches). The
 * server's HTTP API is reached through a unix socket relayed inside its host, so the test
 * process needs no route into the namespaces.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';

import type { Lan } from './netns.js';

/** Runs a process on a host: in a LAN namespace, or here. */
export type Launcher = (host: string, cmd: string, args: string[]) => ChildProcess;

export function lanLauncher(lan: Lan): Launcher {
  return (host, cmd, args) => lan.spawnIn(host, cmd, args);
}

export const loopback: Launcher = (_host, cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** A child whose output is kept, with a way to wait for a line. */
export class Proc {
  out = '';
  err = '';
  readonly exited: Promise<void>;
  private readonly waiters: { re: RegExp; resolve: (line: string) => void }[] = [];

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    const scan = (chunk: string, where: 'out' | 'err') => {
      this[where] += chunk;
      for (const w of [...this.waiters]) {
        const line = this[where].split('\n').find((l) => w.re.test(l));
        if (line !== undefined) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => scan(d, 'out'));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => scan(d, 'err'));
    this.exited = once(child, 'exit').then(() => {});
  }

  /** Resolves with the first output line matching `re` (within `ms`). */
  line(re: RegExp, ms = 60_000): Promise<string> {
    const found = [...this.out.split('\n'), ...this.err.split('\n')].find((l) => re.test(l));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no line matching ${re} within ${ms} ms\nstdout: ${this.out.slice(-2000)}\nstderr: ${this.err.slice(-3000)}`)), ms);
      this.waiters.push({ re, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      void this.exited.then(() => setTimeout(() => reject(new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) before printing ${re}\nstdout: ${this.out.slice(-2000)}\nstderr: ${this.err.slice(-3000)}`)), 50));
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.exited;
  }
}

export interface FarmLabOptions {
  dir: string;
  launch: Launcher;
  /** How osfarm is run: [node, --import, tsx, src/cli/main.ts] or [node, dist/cli/main.js]. */
  osfarm: string[];
  /** The server's host and the address the workers reach it at. */
  server: { host: string; ip: string };
  /** `osfarm serve` options after --queue (e.g. --affinity-wait-ms). */
  serveArgs?: string[];
  redisPort?: number;
  receivePort?: number;
  httpPort?: number;
}

export interface WorkerOptions {
  host: string;
  id: string;
  /** A stage store to start from (copied): a worker with a warm cache. */
  seedStages?: string;
  lockMs?: number;
}

/** The farm's processes; `close()` stops them all. */
export class FarmLab {
  readonly token = 'farm-lab-token-0123456789abcdef';
  readonly redisUrl: string;
  readonly socket: string;
  redis: Proc | undefined;
  receive: Proc | undefined;
  serve: Proc | undefined;
  private relay: Proc | undefined;
  readonly workers = new Map<string, Proc>();
  private readonly tokenFile: string;
  private readonly webTokenFile: string;

  constructor(readonly o: FarmLabOptions) {
    mkdirSync(o.dir, { recursive: true });
    this.redisUrl = `redis://${o.server.ip}:${o.redisPort ?? 6379}`;
    this.socket = join(o.dir, 'web.sock');
    this.tokenFile = join(o.dir, 'push-token');
    this.webTokenFile = join(o.dir, 'web-token');
    writeFileSync(this.tokenFile, `${this.token}\n`, { mode: 0o600 });
    writeFileSync(this.webTokenFile, `${this.token}\n`, { mode: 0o600 });
  }

  get repo(): string {
    return join(this.o.dir, 'central');
  }

  private osfarm(host: string, name: string, args: string[]): Proc {
    const [cmd, ...pre] = this.o.osfarm;
    return new Proc(name, this.o.launch(host, cmd!, [...pre, '--json', ...args]));
  }

  /** redis-server with an append-only file fsynced at every write: a restart loses nothing. */
  async startRedis(): Promise<void> {
    const dir = join(this.o.dir, 'redis');
    mkdirSync(dir, { recursive: true });
    const binds = [...new Set(['127.0.0.1', this.o.server.ip])];
    const p = new Proc('redis', this.o.launch(this.o.server.host, 'redis-server', ['--port', String(this.o.redisPort ?? 6379), '--bind', ...binds, '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--protected-mode', 'no', '--daemonize', 'no', '--logfile', '']));
    await p.line(/Ready to accept connections/);
    this.redis = p;
  }

  async startServer(): Promise<void> {
    const h = this.o.server;
    this.receive ??= this.osfarm(h.host, 'receive', ['--repo', this.repo, 'receive', '--listen', `${h.ip}:${this.o.receivePort ?? 7070}`, '--token-file', this.tokenFile, '--insecure']);
    await this.receive.line(/"listening"/);
    this.serve = this.osfarm(h.host, 'serve', ['--repo', this.repo, 'serve', '--listen', `127.0.0.1:${this.o.httpPort ?? 8080}`, '--token-file', this.webTokenFile, '--queue', `redis://127.0.0.1:${this.o.redisPort ?? 6379}`, '--insecure', ...(this.o.serveArgs ?? [])]);
    await this.serve.line(/"listening"/);
    if (!this.relay) {
      // Inside the server's host: the unix socket (a file, reachable from here) to its HTTP port.
      const code = `const net=require('node:net');require('node:fs').rmSync(${JSON.stringify(this.socket)},{force:true});net.createServer((c)=>{const u=net.connect(${this.o.httpPort ?? 8080},'127.0.0.1');c.pipe(u).pipe(c);c.on('error',()=>u.destroy());u.on('error',()=>c.destroy());}).listen(${JSON.stringify(this.socket)},()=>console.log('relaying'));`;
      this.relay = new Proc('relay', this.o.launch(h.host, process.execPath, ['-e', code]));
      await this.relay.line(/relaying/);
    }
  }

  async startWorker(w: WorkerOptions): Promise<Proc> {
    const work = join(this.o.dir, 'workers', w.id);
    const stages = join(work, 'stages');
    if (w.seedStages) seedStore(w.seedStages, stages);
    const p = this.osfarm(w.host, `worker ${w.id}`, ['worker', '--queue', this.redisUrl, '--push-to', `${this.o.server.ip}:${this.o.receivePort ?? 7070}`, '--token-file', this.tokenFile, '--insecure', '--id', w.id, '-d', work, '--stages', stages, '--lock-ms', String(w.lockMs ?? 3000)]);
    await p.line(/"type":"ready"/);
    this.workers.set(w.id, p);
    return p;
  }

  /**
   * A JSON API call to the server (through the relay). A new connection each time (agent:
   * false): the server closes connections idle between requests after a short deadline
   * (src/transfer/gate.ts), and a kept-alive one reused at that moment hangs up.
   */
  api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = request({ socketPath: this.socket, agent: false, method, path, headers: { authorization: `Bearer ${this.token}`, ...(data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {}) } }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as T) : (undefined as T) }));
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  /** A job's SSE stream from `after`: calls `onEvent` per event; resolves with them all at `end` (or when the server goes away). */
  events(id: string, after = 0, onEvent?: (e: any) => void): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const got: any[] = [];
      const req = request({ socketPath: this.socket, agent: false, method: 'GET', path: `/api/jobs/${id}/events`, headers: { authorization: `Bearer ${this.token}`, ...(after ? { 'last-event-id': String(after) } : {}) } }, (res) => {
        if (res.statusCode !== 200) return reject(new Error(`events of ${id}: HTTP ${res.statusCode}`));
        let buf = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          buf += d;
          for (let at = buf.indexOf('\n\n'); at >= 0; at = buf.indexOf('\n\n')) {
            const block = buf.slice(0, at);
            buf = buf.slice(at + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && event !== 'end' && data) {
              const e = JSON.parse(data);
              got.push(e);
              onEvent?.(e);
            }
          }
        });
        res.on('end', () => resolve(got));
        res.on('error', () => resolve(got));
      });
      req.on('error', (err) => (got.length ? resolve(got) : reject(err)));
      req.end();
    });
  }

  /** Submits a build spec; returns the job. */
  async build(spec: Record<string, unknown>): Promise<any> {
    const r = await this.api('POST', '/api/builds', { spec });
    if (r.status !== 202) throw new Error(`POST /api/builds: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  async job(id: string): Promise<any> {
    return (await this.api('GET', `/api/jobs/${id}`)).body;
  }

  /** Waits until every job has ended; returns them. */
  async finished(ids: string[], ms = 300_000): Promise<any[]> {
    const until = Date.now() + ms;
    for (;;) {
      const jobs = await Promise.all(ids.map((id) => this.job(id)));
      if (jobs.every((j) => ['succeeded', 'failed', 'cancelled'].includes(j.state))) return jobs;
      if (Date.now() > until) throw new Error(`jobs not finished within ${ms} ms: ${JSON.stringify(jobs.map((j) => [j.id, j.state, j.worker]))}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  async workersSeen(): Promise<any[]> {
    return (await this.api('GET', '/api/farm')).body.farm.workers;
  }

  async close(): Promise<void> {
    for (const w of this.workers.values()) await w.stop().catch(() => {});
    for (const p of [this.serve, this.receive, this.relay, this.redis]) await p?.stop().catch(() => {});
  }
}

/**
 * Copies a stage store's complete stages (and its backend record) into a new store, with
 * owners, modes and special files (cp -a): a worker whose cache already holds them.
 */
export function seedStore(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  copyFileSync(join(from, 'store.json'), join(to, 'store.json'));
  const stages = readdirSync(from).filter((n) => /^[0-9a-f]{64}$/.test(n));
  execFileSync('cp', ['-a', '--reflink=auto', ...stages.map((s) => join(from, s)), `${to}/`]);
}
