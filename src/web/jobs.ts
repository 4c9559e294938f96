/**
 * Jobs: long work (builds, transfers) run inside the server, not in a browser tab. A queue
 * has a fixed number of running slots and a bounded backlog (a full backlog refuses with
 * OSFARM_LOCKED); its jobs and their events live in a JobStore (in memory by default), so a
 * page that connects late, or reconnects with Last-Event-ID, sees the history and then the
 * live stream (SSE). A build farm (src/farm) is another JobSource behind the same routes.
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';

import { OsfarmError } from '../base/errors.js';
import { type Emitted, isFinal, JobEmitter, type JobEvent, type JobInfo, type JobKind, jobError, type JobSource, type JobStore, newJobInfo } from '../farm/job-model.js';
import { MemoryJobStore } from '../farm/memory-store.js';

export { isFinal, type JobEvent, type JobInfo, type JobKind, type JobSource, type JobState } from '../farm/job-model.js';

export interface JobContext {
  signal: AbortSignal;
  emit(event: Emitted): void;
}

export type JobRun = (ctx: JobContext) => Promise<unknown>;

interface Job {
  id: string;
  run: JobRun;
  controller: AbortController;
  emitter: JobEmitter;
  done: Promise<void>;
  settle: () => void;
}

export interface QueueOptions {
  /** Jobs running at once. */
  concurrency: number;
  /** Jobs waiting at most; one more is refused with OSFARM_LOCKED. */
  maxQueued: number;
  /** Events kept per job in memory (the oldest log lines go first). */
  maxEvents?: number;
  /** Finished jobs remembered in memory. */
  keepFinished?: number;
  /** Where jobs and events are kept (default: in memory, with maxEvents and keepFinished). */
  store?: JobStore;
}

export class JobQueue implements JobSource {
  private readonly store: JobStore;
  private readonly waiting: Job[] = [];
  private readonly active = new Map<string, Job>();
  private closed = false;

  constructor(private readonly options: QueueOptions) {
    this.store = options.store ?? new MemoryJobStore({ maxEvents: options.maxEvents, keepFinished: options.keepFinished });
  }

  async submit(kind: JobKind, title: string, run: JobRun, meta: Record<string, unknown> = {}): Promise<JobInfo> {
    if (this.closed) throw new OsfarmError('OSFARM_LOCKED', 'the server is shutting down');
    if (this.waiting.length >= this.options.maxQueued) {
      throw new OsfarmError('OSFARM_LOCKED', `the ${kind} queue is full (${this.waiting.length} waiting, ${this.active.size} running): try again when one finishes, or cancel one`);
    }
    let settle!: () => void;
    const done = new Promise<void>((r) => (settle = r));
    const id = randomBytes(6).toString('hex');
    const job: Job = { id, run, controller: new AbortController(), emitter: new JobEmitter(this.store, id), done, settle };
    // Taken before the store answers, so concurrent submits cannot overfill the backlog.
    this.waiting.push(job);
    const info = await this.store.create(newJobInfo(id, kind, title, meta));
    this.pump();
    return this.withPosition(info);
  }

  async get(id: string): Promise<JobInfo | undefined> {
    const info = await this.store.get(id);
    return info && this.withPosition(info);
  }

  async list(): Promise<JobInfo[]> {
    return (await this.store.list()).map((i) => this.withPosition(i));
  }

  async cancel(id: string): Promise<boolean> {
    const at = this.waiting.findIndex((j) => j.id === id);
    if (at >= 0) {
      const [job] = this.waiting.splice(at, 1);
      await this.finish(job!, 'cancelled', null, { code: 'OSFARM_ABORTED', message: 'cancelled before it started' });
      return true;
    }
    const job = this.active.get(id);
    if (!job) return false;
    job.controller.abort();
    return true;
  }

  watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined> {
    return this.store.watch(id, afterSeq, listener);
  }

  /** Cancels everything and waits for running jobs to tear down. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of [...this.waiting]) await this.cancel(job.id);
    const running = [...this.active.values()];
    for (const j of running) j.controller.abort();
    await Promise.all(running.map((j) => j.done));
  }

  private withPosition(info: JobInfo): JobInfo {
    const at = this.waiting.findIndex((j) => j.id === info.id);
    return { ...info, position: at >= 0 ? at : null };
  }

  private pump(): void {
    while (this.active.size < this.options.concurrency && this.waiting.length > 0) {
      const job = this.waiting.shift()!;
      this.active.set(job.id, job);
      void this.start(job).finally(() => {
        this.active.delete(job.id);
        this.pump();
      });
    }
  }

  private async start(job: Job): Promise<void> {
    await job.emitter.append({ type: 'state', state: 'running' });
    try {
      const result = await job.run({ signal: job.controller.signal, emit: (e) => job.emitter.emit(e) });
      await this.finish(job, 'succeeded', result ?? null, null);
    } catch (err) {
      await this.finish(job, job.controller.signal.aborted ? 'cancelled' : 'failed', null, jobError(err));
    }
  }

  private async finish(job: Job, state: 'succeeded' | 'failed' | 'cancelled', result: unknown, error: { code: string; message: string } | null): Promise<void> {
    try {
      if (error) await job.emitter.append({ type: 'error', error });
      else await job.emitter.append({ type: 'result', result });
      await job.emitter.append({ type: 'state', state });
    } finally {
      job.settle();
    }
  }
}

/**
 * Streams a job's events as Server-Sent Events: history after Last-Event-ID, then live,
 * then `end`. A comment every 15 s keeps proxies from closing an idle stream.
 */
export async function streamJob(jobs: JobSource, id: string, res: ServerResponse, lastEventId: number): Promise<boolean> {
  if (!(await jobs.get(id))) return false;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  const write = (e: JobEvent) => {
    if (res.writableEnded) return;
    res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    if (e.type === 'state' && isFinal(e.state)) {
      res.end('event: end\ndata: {}\n\n');
    }
  };
  const unsubscribe = (await jobs.watch(id, lastEventId, write)) ?? (() => {});
  if (res.writableEnded) {
    unsubscribe();
    return true;
  }
  const ping = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  res.on('close', () => {
    clearInterval(ping);
    unsubscribe();
  });
  return true;
}
