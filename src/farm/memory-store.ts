/**
 * Jobs kept in this process: what `osfarm serve` without a queue uses. A job keeps its
 * recent events (the oldest log, progress and sample events go first), and the last
 * finished jobs are remembered; a restart forgets them all.
 */
import { type AppendOptions, type Emitted, foldEvent, isFinal, type JobEvent, type JobInfo, type JobStore } from './job-model.js';

interface Entry {
  info: JobInfo;
  createdAt: number;
  events: JobEvent[];
  seq: number;
  listeners: Set<(e: JobEvent) => void>;
}

export interface MemoryStoreOptions {
  /** Events kept per job (default 5000). */
  maxEvents?: number;
  /** Finished jobs remembered (default 50). */
  keepFinished?: number;
}

export class MemoryJobStore implements JobStore {
  private readonly jobs = new Map<string, Entry>();

  constructor(private readonly options: MemoryStoreOptions = {}) {}

  async create(info: JobInfo): Promise<JobInfo> {
    this.jobs.set(info.id, { info: { ...info }, createdAt: Date.parse(info.created), events: [], seq: 0, listeners: new Set() });
    await this.append(info.id, { type: 'state', state: info.state });
    this.forget();
    return { ...info };
  }

  async get(id: string): Promise<JobInfo | undefined> {
    const e = this.jobs.get(id);
    return e && { ...e.info };
  }

  async list(): Promise<JobInfo[]> {
    return [...this.jobs.values()].map((e) => ({ ...e.info })).reverse();
  }

  async append(id: string, event: Emitted, options: AppendOptions = {}): Promise<JobEvent | undefined> {
    const job = this.jobs.get(id);
    if (!job || isFinal(job.info.state)) return undefined;
    if (options.runner !== undefined && job.info.worker !== options.runner) return undefined;
    Object.assign(job.info, foldEvent(event), options.patch);
    const e = { ...event, seq: ++job.seq, t: Date.now() - job.createdAt } as JobEvent;
    job.events.push(e);
    const max = this.options.maxEvents ?? 5000;
    if (job.events.length > max) {
      const drop = job.events.findIndex((x) => x.type === 'log' || x.type === 'progress' || x.type === 'sample');
      job.events.splice(Math.max(drop, 0), 1);
    }
    for (const l of job.listeners) l(e);
    if (isFinal(job.info.state)) job.listeners.clear();
    return e;
  }

  async events(id: string, afterSeq: number): Promise<JobEvent[]> {
    return (this.jobs.get(id)?.events ?? []).filter((e) => e.seq > afterSeq);
  }

  async watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined> {
    const job = this.jobs.get(id);
    if (!job) return undefined;
    for (const e of job.events) if (e.seq > afterSeq) listener(e);
    if (isFinal(job.info.state)) return () => {};
    job.listeners.add(listener);
    return () => job.listeners.delete(listener);
  }

  async close(): Promise<void> {}

  private forget(): void {
    const finished = [...this.jobs.values()].filter((j) => isFinal(j.info.state));
    const extra = finished.length - (this.options.keepFinished ?? 50);
    for (const j of finished.slice(0, Math.max(0, extra))) this.jobs.delete(j.info.id);
  }
}
