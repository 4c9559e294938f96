/**
 * The job model shared by the web server's in-process queue and the build farm: what a job
 * is (JobInfo), what it reports (JobEvent), and where both are kept (JobStore: in memory for
 * one process, in Redis streams for a farm, so history and live logs outlive a restart).
 * A job's info is the fold of its events: the store applies each event's effect (state,
 * phase, progress, result, error) as it appends it. docs/farm.md describes the Redis form.
 */
import { errorJson } from '../base/errors.js';

export type JobKind = 'build' | 'push' | 'pull' | 'boot' | 'probe';
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

/** An event as its producer emits it (the store numbers and times it). */
export type Emitted = JobEvent extends infer E ? (E extends JobEvent ? Omit<E, 'seq' | 't'> : never) : never;

export interface JobError {
  code: string;
  message: string;
}

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
  /** Jobs ahead of this one while queued (in-process queue only; null on a farm). */
  position: number | null;
  result: unknown;
  error: JobError | null;
  /** Anything the submitter attached (the spec digest of a build, the image of a transfer). */
  meta: Record<string, unknown>;
  /** The farm worker running it or that ran it last (null in-process). */
  worker: string | null;
  /** How many times a worker started it (more than 1 after a worker died mid-build). */
  attempts: number;
}

/** The info fields an event changes (null: it changes none). */
export function foldEvent(e: Emitted, now = new Date()): Partial<JobInfo> | null {
  switch (e.type) {
    case 'state':
      if (e.state === 'running') return { state: e.state, started: now.toISOString() };
      if (isFinal(e.state)) return { state: e.state, finished: now.toISOString() };
      return { state: e.state };
    case 'phase':
      return { phase: e.phase, progress: null };
    case 'progress':
      return { progress: { done: e.done, total: e.total, ...(e.detail ? { detail: e.detail } : {}) } };
    case 'result':
      return { result: e.result };
    case 'error':
      return { error: e.error };
    default:
      return null;
  }
}

export function isFinal(state: JobState): boolean {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}

/** An error as a job records it: the stable code and the message. */
export function jobError(err: unknown): JobError {
  return errorJson(err).error;
}

/** A new job's info, queued. */
export function newJobInfo(id: string, kind: JobKind, title: string, meta: Record<string, unknown>): JobInfo {
  return { id, kind, title, state: 'queued', created: new Date().toISOString(), started: null, finished: null, phase: null, progress: null, position: null, result: null, error: null, meta, worker: null, attempts: 0 };
}

export interface AppendOptions {
  /** Only if this worker still runs the job (a worker that lost it must not write). */
  runner?: string;
  /** Extra info fields to set with the event (e.g. worker, attempts). */
  patch?: Partial<JobInfo>;
}

/**
 * Where jobs and their events are kept. Appends after a job's final state are dropped, so a
 * worker that lost its job (or a late progress line) cannot change a finished record.
 */
export interface JobStore {
  /** Records a new job with its first event (state queued). */
  create(info: JobInfo): Promise<JobInfo>;
  get(id: string): Promise<JobInfo | undefined>;
  /** Every job kept, newest first. */
  list(): Promise<JobInfo[]>;
  /** Numbers, times and keeps an event and folds it into the info; undefined if it was dropped. */
  append(id: string, event: Emitted, options?: AppendOptions): Promise<JobEvent | undefined>;
  /** The events after `afterSeq` (those still kept). */
  events(id: string, afterSeq: number): Promise<JobEvent[]>;
  /**
   * Calls `listener` with the events after `afterSeq`, then with live ones until the job
   * ends; undefined for an unknown job. The returned function stops it early.
   */
  watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined>;
  close(): Promise<void>;
}

/** What the web API needs of a set of jobs, wherever they run. */
export interface JobSource {
  get(id: string): Promise<JobInfo | undefined>;
  list(): Promise<JobInfo[]>;
  /** Cancels a queued or running job; false if it had already ended. */
  cancel(id: string): Promise<boolean>;
  watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined>;
  /** Stops what this process runs (a farm's jobs go on on their workers). */
  close(): Promise<void>;
}

/** Progress events closer together than this are dropped (the last state is in `info`). */
const PROGRESS_INTERVAL_MS = 100;

/**
 * A producer's side of one job: `emit` is synchronous (builders call it from callbacks),
 * drops progress events that come too fast, and appends in order; `flush` waits for
 * everything emitted so far to be stored.
 */
export class JobEmitter {
  private tail: Promise<unknown> = Promise.resolve();
  private lastProgressAt = 0;
  private failure: unknown;

  constructor(
    private readonly store: JobStore,
    readonly id: string,
    private readonly options: AppendOptions = {},
  ) {}

  emit(e: Emitted): void {
    if (e.type === 'progress') {
      const now = Date.now();
      if (now - this.lastProgressAt < PROGRESS_INTERVAL_MS && e.done < e.total) return;
      this.lastProgressAt = now;
    }
    this.tail = this.tail.then(() => this.store.append(this.id, e, this.options)).catch((err) => (this.failure ??= err));
  }

  /** Appends one event and waits for it (and everything before it); returns it, or undefined if dropped. */
  async append(e: Emitted, patch?: Partial<JobInfo>): Promise<JobEvent | undefined> {
    await this.flush();
    return this.store.append(this.id, e, { ...this.options, ...(patch ? { patch } : {}) });
  }

  /** Waits for every event emitted so far; throws the first storage error. */
  async flush(): Promise<void> {
    await this.tail;
    if (this.failure) throw this.failure;
  }
}
