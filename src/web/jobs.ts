/**
 * Jobs: long work (builds, transfers) run inside the server, not in a browser tab. A queue
 * has a fixed number of running slots and a bounded backlog (a full backlog refuses with
 * OSFARM_LOCKED); each job keeps its recent events so a page that connects late, or
 * reconnects with Last-Event-ID, sees the history and then the live stream (SSE).
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';

import { OsfarmError } from '../base/errors.js';
import { errorBody } from './http.js';

export type JobKind = 'build' | 'push' | 'pull' | 'boot';
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** What a job reports while it runs; `t` is milliseconds since the job was created. */
export type JobEvent = { seq: number; t: number } & (
  | { type: 'state'; state: JobState }
  | { type: 'phase'; phase: string; detail?: string }
  | { type: 'log'; line: string }
  | { type: 'progress'; phase?: string; done: number; total: number; unit?: 'bytes' | 'items'; detail?: string }
  | { type: 'sample'; sample: Record<string, number> }
  | { type: 'output'; output: { format: string; size: number; digest: string; file: string } }
  | { type: 'result'; result: unknown }
  | { type: 'error'; error: { code: string; message: string } }
);

type Emitted = JobEvent extends infer E ? (E extends JobEvent ? Omit<E, 'seq' | 't'> : never) : never;

export interface JobContext {
  signal: AbortSignal;
  emit(event: Emitted): void;
}

export type JobRun = (ctx: JobContext) => Promise<unknown>;

export interface JobInfo {
  id: string;
  kind: JobKind;
  title: string;
  state: JobState;
  created: string;
  started: string | null;
  finished: string | null;
  /** The last phase and progress reported. */
  phase: string | null;
  progress: { done: number; total: number; detail?: string } | null;
  /** Jobs ahead of this one while queued. */
  position: number | null;
  result: unknown;
  error: { code: string; message: string } | null;
  /** Anything the submitter attached (the spec digest of a build, the image of a transfer). */
  meta: Record<string, unknown>;
}

interface Job {
  info: JobInfo;
  run: JobRun;
  createdAt: number;
  controller: AbortController;
  events: JobEvent[];
  seq: number;
  listeners: Set<(e: JobEvent) => void>;
  done: Promise<void>;
  settle: () => void;
  lastProgressAt: number;
}

export interface QueueOptions {
  /** Jobs running at once. */
  concurrency: number;
  /** Jobs waiting at most; one more is refused with OSFARM_LOCKED. */
  maxQueued: number;
  /** Events kept per job (the oldest log lines go first). */
  maxEvents?: number;
  /** Finished jobs remembered. */
  keepFinished?: number;
}

/** Progress events closer together than this are dropped (the last state is in `info`). */
const PROGRESS_INTERVAL_MS = 100;

export class JobQueue {
  private readonly jobs = new Map<string, Job>();
  private readonly waiting: Job[] = [];
  private running = 0;
  private closed = false;

  constructor(private readonly options: QueueOptions) {}

  submit(kind: JobKind, title: string, run: JobRun, meta: Record<string, unknown> = {}): JobInfo {
    if (this.closed) throw new OsfarmError('OSFARM_LOCKED', 'the server is shutting down');
    if (this.waiting.length >= this.options.maxQueued) {
      throw new OsfarmError('OSFARM_LOCKED', `the ${kind} queue is full (${this.waiting.length} waiting, ${this.running} running): try again when one finishes, or cancel one`);
    }
    let settle!: () => void;
    const done = new Promise<void>((r) => (settle = r));
    const job: Job = {
      info: { id: randomBytes(6).toString('hex'), kind, title, state: 'queued', created: new Date().toISOString(), started: null, finished: null, phase: null, progress: null, position: null, result: null, error: null, meta },
      run,
      createdAt: Date.now(),
      controller: new AbortController(),
      events: [],
      seq: 0,
      listeners: new Set(),
      done,
      settle,
      lastProgressAt: 0,
    };
    this.jobs.set(job.info.id, job);
    this.waiting.push(job);
    this.push(job, { type: 'state', state: 'queued' });
    this.pump();
    this.forget();
    return this.snapshot(job);
  }

  get(id: string): JobInfo | undefined {
    const job = this.jobs.get(id);
    return job && this.snapshot(job);
  }

  list(): JobInfo[] {
    return [...this.jobs.values()].map((j) => this.snapshot(j));
  }

  /** Cancels a queued or running job; false if it had already ended. */
  cancel(id: string): boolean {
    const job = this.jobs.get(id);
    if (!job || isFinal(job.info.state)) return false;
    const at = this.waiting.indexOf(job);
    if (at >= 0) {
      this.waiting.splice(at, 1);
      this.finish(job, 'cancelled', null, { code: 'OSFARM_ABORTED', message: 'cancelled before it started' });
    } else job.controller.abort();
    return true;
  }

  /** Events after `afterSeq`, then live ones, until the job ends (or `unsubscribe`). */
  subscribe(id: string, afterSeq: number, listener: (e: JobEvent) => void): (() => void) | undefined {
    const job = this.jobs.get(id);
    if (!job) return undefined;
    for (const e of job.events) if (e.seq > afterSeq) listener(e);
    if (isFinal(job.info.state)) return () => {};
    job.listeners.add(listener);
    return () => job.listeners.delete(listener);
  }

  /** Cancels everything and waits for running jobs to tear down. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of [...this.waiting]) this.cancel(job.info.id);
    const running = [...this.jobs.values()].filter((j) => j.info.state === 'running');
    for (const j of running) j.controller.abort();
    await Promise.all(running.map((j) => j.done));
  }

  private snapshot(job: Job): JobInfo {
    const at = this.waiting.indexOf(job);
    return { ...job.info, position: at >= 0 ? at : null };
  }

  private push(job: Job, e: Emitted): void {
    const event = { ...e, seq: ++job.seq, t: Date.now() - job.createdAt } as JobEvent;
    job.events.push(event);
    const max = this.options.maxEvents ?? 5000;
    if (job.events.length > max) {
      const drop = job.events.findIndex((x) => x.type === 'log' || x.type === 'progress' || x.type === 'sample');
      job.events.splice(Math.max(drop, 0), 1);
    }
    for (const l of job.listeners) l(event);
  }

  private emit(job: Job, e: Emitted): void {
    if (isFinal(job.info.state)) return;
    if (e.type === 'phase') {
      job.info.phase = e.phase;
      job.info.progress = null;
    } else if (e.type === 'progress') {
      job.info.progress = { done: e.done, total: e.total, ...(e.detail ? { detail: e.detail } : {}) };
      const now = Date.now();
      if (now - job.lastProgressAt < PROGRESS_INTERVAL_MS && e.done < e.total) return;
      job.lastProgressAt = now;
    }
    this.push(job, e);
  }

  private pump(): void {
    while (this.running < this.options.concurrency && this.waiting.length > 0) {
      const job = this.waiting.shift()!;
      this.running++;
      void this.start(job).finally(() => {
        this.running--;
        this.pump();
      });
    }
  }

  private async start(job: Job): Promise<void> {
    job.info.state = 'running';
    job.info.started = new Date().toISOString();
    this.push(job, { type: 'state', state: 'running' });
    try {
      const result = await job.run({ signal: job.controller.signal, emit: (e) => this.emit(job, e) });
      this.finish(job, 'succeeded', result ?? null, null);
    } catch (err) {
      const { body } = errorBody(err);
      const cancelled = job.controller.signal.aborted;
      this.finish(job, cancelled ? 'cancelled' : 'failed', null, { code: body.error.code, message: body.error.message });
    }
  }

  private finish(job: Job, state: JobState, result: unknown, error: { code: string; message: string } | null): void {
    if (error) this.push(job, { type: 'error', error });
    else this.push(job, { type: 'result', result });
    job.info.state = state;
    job.info.finished = new Date().toISOString();
    job.info.result = result;
    job.info.error = error;
    this.push(job, { type: 'state', state });
    job.listeners.clear();
    job.settle();
  }

  private forget(): void {
    const finished = [...this.jobs.values()].filter((j) => isFinal(j.info.state));
    const extra = finished.length - (this.options.keepFinished ?? 50);
    for (const j of finished.slice(0, Math.max(0, extra))) this.jobs.delete(j.info.id);
  }
}

export function isFinal(state: JobState): boolean {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}

/**
 * Streams a job's events as Server-Sent Events: history after Last-Event-ID, then live,
 * then `end`. A comment every 15 s keeps proxies from closing an idle stream.
 */
export function streamJob(queue: JobQueue, id: string, res: ServerResponse, lastEventId: number): boolean {
  if (!queue.get(id)) return false;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  const write = (e: JobEvent) => {
    res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    if (e.type === 'state' && isFinal(e.state)) {
      res.end('event: end\ndata: {}\n\n');
    }
  };
  const unsubscribe = queue.subscribe(id, lastEventId, write)!;
  if (res.writableEnded) return true;
  const ping = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  res.on('close', () => {
    clearInterval(ping);
    unsubscribe();
  });
  return true;
}
