/**
 * A farm worker (`osfarm worker`): takes jobs from its own BullMQ queue and from the shared
 * one, one at a time; builds each with build() in its own work directory and stage cache,
 * into a local repository; pushes the outputs into the central repository with osfarm's
 * push (only the blocks it lacks cross, and it publishes only complete images); then records
 * the result. Its events go to the job's Redis stream as they happen. It advertises its
 * stage tags and liveness, and obeys cancel requests for the job it runs.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { DelayedError, type Job, WaitingError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';

import { OsfarmError } from '../base/errors.js';
import { specDigest, specFromObject } from '../spec/index.js';
import { Repository } from '../repo/index.js';
import { StageStore } from '../stages/store.js';
import type { TlsClientOptions } from '../trust/tls.js';
import { push, type PushResult } from '../transfer/push/push.js';
import { type BuildJobResult, runBuildJob } from './build-job.js';
import { JobEmitter, jobError, type JobInfo } from './job-model.js';
import { bullIdOf, type FarmJobData, FarmQueues, parseRoute, routeOf } from './queues.js';
import { connectRedis, ownQueue, SHARED_QUEUE } from './redis.js';
import { type FarmFields, RedisJobStore } from './redis-store.js';
import { WorkerRegistration } from './registry.js';
import { DEFAULT_LOCK_MS } from './scheduler.js';

export interface FarmWorkerOptions {
  /** The farm's Redis (redis://host:port). */
  url: string;
  prefix?: string;
  /** This worker's id: its own queue's name and its name in job records (default: host name). */
  id?: string;
  /** The central repository's receiver (host:port). */
  pushTo: string;
  token?: string;
  /** Accept a receiver that asks for no token (as push's). */
  insecure?: boolean;
  /** Push over TLS (as push's): the receiver's certificate pinned and/or checked against a CA. */
  tls?: TlsClientOptions;
  /** Build scratch space and package caches. */
  workDir: string;
  /** The stage cache (default <workDir>/stages). */
  stages?: string;
  /** Where builds land before the push (default <workDir>/farm-repo). */
  repo?: string;
  /** A worker silent this long is gone; BullMQ's job lock (ms, default 30000). */
  lockMs?: number;
  /** Reports what the worker does (the CLI prints it). */
  onEvent?: (e: WorkerEvent) => void;
}

export type WorkerEvent =
  | { type: 'ready'; id: string; stages: number }
  | { type: 'job-start'; job: string; queue: string; attempt: number }
  | { type: 'job-end'; job: string; state: string; ms: number }
  | { type: 'error'; message: string };

export interface WorkerSummary {
  id: string;
  jobs: number;
  succeeded: number;
  failed: number;
}

export interface PushedOutput {
  format: string;
  digest: string;
  name: string | null;
  alreadyPresent: boolean;
  blockCount: number;
  blocksSent: number;
  rawBytesSent: number;
  wireBytesSent: number;
}

/** A build job's result on a farm: the build's, plus where it ran and what the push sent. */
export type FarmBuildResult = BuildJobResult & { worker: string; pushed: PushedOutput[] };

/** How long a stop waits for the running job to tear down and go back to the queue. */
const STOP_MS = 30_000;

/** Whether `p` settled within `ms` (its failure counts as settled: the stop goes on). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  const settled = p.then(() => true as const, () => true as const);
  const r = await Promise.race([settled, late]);
  clearTimeout(timer);
  return r;
}

interface Current {
  id: string;
  controller: AbortController;
  shutdown: boolean;
}

export class FarmWorker {
  readonly id: string;
  private readonly lockMs: number;
  private readonly store: RedisJobStore;
  private readonly connection: Redis;
  private readonly subscriber: Redis;
  private readonly queues: FarmQueues;
  private readonly registration: WorkerRegistration;
  private readonly stagesDir: string;
  private readonly repoPath: string;
  private own: Worker<FarmJobData> | undefined;
  private shared: Worker<FarmJobData> | undefined;
  private current: Current | undefined;
  private busy = false;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private stages: StageStore | undefined;
  readonly summary: WorkerSummary;

  constructor(private readonly o: FarmWorkerOptions) {
    this.id = o.id ?? hostname();
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(this.id)) {
      throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `worker id ${JSON.stringify(this.id)}: use letters, digits, '.', '_' and '-' (it names the worker's queue), e.g. --id build-3`);
    }
    this.lockMs = o.lockMs ?? DEFAULT_LOCK_MS;
    this.store = new RedisJobStore(o.url, o.prefix);
    this.connection = connectRedis(o.url, `osfarm-worker-${this.id}`);
    this.subscriber = connectRedis(o.url, `osfarm-worker-${this.id}-cancel`);
    this.queues = new FarmQueues(this.connection, this.store.keys);
    this.stagesDir = o.stages ?? join(o.workDir, 'stages');
    this.repoPath = o.repo ?? join(o.workDir, 'farm-repo');
    this.registration = new WorkerRegistration(this.connection, this.store.keys, { id: this.id, host: hostname(), pid: process.pid, started: new Date().toISOString(), job: null, building: [] }, this.lockMs);
    this.summary = { id: this.id, jobs: 0, succeeded: 0, failed: 0 };
  }

  /** Registers, advertises the stage cache and starts taking jobs. */
  async start(): Promise<void> {
    Repository.openOrInit(this.repoPath);
    const stages = await this.advertise();
    await this.registration.heartbeat();
    // Back from a Redis outage: say at once that this worker is alive.
    this.connection.on('ready', () => void this.beat());
    await this.subscriber.subscribe(this.store.keys.cancelChannel);
    this.subscriber.on('message', (_channel: string, id: string) => {
      if (this.current?.id === id) this.current.controller.abort();
    });
    this.heartbeatTimer = setInterval(() => void this.beat(), Math.max(100, Math.round(this.lockMs / 3)));
    const options = {
      connection: this.connection,
      prefix: this.store.keys.bullPrefix,
      concurrency: 1,
      lockDuration: this.lockMs,
      stalledInterval: Math.max(250, Math.round(this.lockMs / 2)),
      maxStalledCount: 2,
      // How long a blocked fetch waits before looking again (s): short, so a stop is quick.
      drainDelay: 1,
    };
    this.own = new Worker<FarmJobData>(ownQueue(this.id), (job, token) => this.take(job, token, 'own'), options);
    this.shared = new Worker<FarmJobData>(SHARED_QUEUE, (job, token) => this.take(job, token, 'shared'), options);
    for (const w of [this.own, this.shared]) w.on('error', (err) => this.o.onEvent?.({ type: 'error', message: err.message }));
    await Promise.all([this.own.waitUntilReady(), this.shared.waitUntilReady()]);
    await this.connection.publish(this.store.keys.idleChannel, this.id);
    this.o.onEvent?.({ type: 'ready', id: this.id, stages });
  }

  /**
   * Stops: a running job is given back to the shared queue (another worker takes it from its
   * own deepest cached stage) and the worker leaves the registry.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.heartbeatTimer);
    const running = this.current !== undefined;
    if (this.current) {
      this.current.shutdown = true;
      this.current.controller.abort();
    }
    // Each step needs Redis: bounded, so that a stop never hangs on a Redis that is gone
    // (the job's lock then lapses and another worker takes it over).
    const closing = Promise.all([this.own?.close(), this.shared?.close()]);
    if (!(await within(closing, running ? STOP_MS : 2000))) await within(Promise.all([this.own?.close(true), this.shared?.close(true)]), 1000);
    await within(this.registration.leave(), 1000);
    await within(this.queues.close(), 1000);
    this.subscriber.disconnect();
    this.connection.disconnect();
    await this.store.close();
  }

  /** Runs one BullMQ job if the slot is free; a second delivered at the same instant goes back. */
  private async take(job: Job<FarmJobData>, token: string | undefined, which: 'own' | 'shared'): Promise<unknown> {
    const other = which === 'own' ? this.shared : this.own;
    if (this.busy || this.stopping) {
      await job.moveToWait(token);
      throw new WaitingError();
    }
    this.busy = true;
    // Paused, the other queue's worker fetches nothing while this job runs.
    await other?.pause(true);
    try {
      return await this.run(job, token, which === 'own' ? ownQueue(this.id) : SHARED_QUEUE);
    } finally {
      this.busy = false;
      if (!this.stopping) {
        other?.resume();
        void this.connection.publish(this.store.keys.idleChannel, this.id).catch(() => {});
      }
    }
  }

  private async run(job: Job<FarmJobData>, token: string | undefined, queue: string): Promise<unknown> {
    const id = job.data.id;
    const route = routeOf(queue, job.id!);
    const claim = await this.store.claim(id, route, this.id);
    if (claim === 'final' || claim === 'stale') return { skipped: claim };
    if (claim === 'busy') {
      // Its worker is alive (its lock lapsed while Redis was away): look again once a worker
      // that really stopped would have been declared gone.
      await job.moveToDelayed(Date.now() + this.lockMs, token);
      throw new DelayedError();
    }
    const started = Date.now();
    const emitter = new JobEmitter(this.store, id, { runner: this.id });
    if (claim === 'cancelled') {
      await emitter.append({ type: 'error', error: { code: 'OSFARM_ABORTED', message: 'cancelled before it started' } });
      await emitter.append({ type: 'state', state: 'cancelled' });
      return { cancelled: true };
    }
    const previous = claim.slice('ok:'.length);
    const [fields, info] = (await Promise.all([this.store.farmFields(id), this.store.get(id)])) as [FarmFields, JobInfo];
    this.summary.jobs++;
    this.o.onEvent?.({ type: 'job-start', job: id, queue, attempt: info.attempts });
    const current: Current = { id, controller: new AbortController(), shutdown: false };
    this.current = current;
    // Not awaited: one connection keeps the order, and the job need not wait for its advert.
    void this.registration.heartbeat({ job: id, building: fields.tags }).catch(() => {});
    await emitter.append({ type: 'state', state: 'running' });
    emitter.emit({
      type: 'log',
      line: previous && previous !== this.id
        ? `osfarm: worker ${previous} stopped while running this job: attempt ${info.attempts} on worker ${this.id}, from its deepest cached stage`
        : `osfarm: running on worker ${this.id} (${hostname()}, ${queue === SHARED_QUEUE ? 'shared queue' : 'its own queue: it holds the deepest cached stage'})`,
    });
    let state: 'succeeded' | 'failed' | 'cancelled' = 'failed';
    try {
      const result = fields.spec ? await this.build(id, fields, info.meta, emitter, current.controller.signal) : await this.probe(fields.probeMs, emitter, current.controller.signal);
      await emitter.append({ type: 'result', result });
      await emitter.append({ type: 'state', state: 'succeeded' });
      state = 'succeeded';
    } catch (err) {
      if (current.shutdown) {
        await this.giveBack(id, route, emitter);
        state = 'cancelled';
      } else {
        state = current.controller.signal.aborted ? 'cancelled' : 'failed';
        await emitter.append({ type: 'error', error: jobError(err) }).catch(() => {});
        await emitter.append({ type: 'state', state }).catch(() => {});
      }
    } finally {
      this.current = undefined;
      if (state === 'succeeded') this.summary.succeeded++;
      else if (state === 'failed') this.summary.failed++;
      // A build may have added stages; the advert says so before the worker says it is idle.
      if (fields.spec) await this.advertise().catch(() => {});
      void this.registration.heartbeat({ job: null, building: [] }).catch(() => {});
      this.o.onEvent?.({ type: 'job-end', job: id, state, ms: Date.now() - started });
    }
    return { state };
  }

  /** A stopping worker's job goes back to the shared queue, free for the next worker at once. */
  private async giveBack(id: string, route: string, emitter: JobEmitter): Promise<void> {
    await emitter.flush().catch(() => {});
    await this.store.append(id, { type: 'log', line: `osfarm: worker ${this.id} is stopping: the job goes back to the shared queue` }, { runner: this.id });
    const next = routeOf(SHARED_QUEUE, bullIdOf(id, parseRoute(route).n + 1));
    if (await this.store.reroute(id, route, next, true)) await this.queues.add(next, id);
  }

  private async build(id: string, fields: FarmFields, meta: Record<string, unknown>, emitter: JobEmitter, signal: AbortSignal): Promise<unknown> {
    const spec = specFromObject(fields.spec);
    if (meta.specDigest !== undefined && specDigest(spec) !== meta.specDigest) {
      throw new OsfarmError('OSFARM_MISMATCH', `worker ${this.id} reads this spec as request ${specDigest(spec).slice(0, 12)}, the server as ${String(meta.specDigest).slice(0, 12)}: run the same osfarm version on the server and the workers`);
    }
    const emit = emitter.emit.bind(emitter);
    const r = await runBuildJob(spec, { repo: this.repoPath, workDir: this.o.workDir, stages: this.stagesDir, signal, emit });
    const pushed: PushedOutput[] = [];
    const repo = Repository.open(this.repoPath);
    for (const out of r.outputs) {
      // Only the worker that still holds the job publishes (it may have been moved while this one was silent).
      if ((await this.store.farmFields(id))?.runner !== this.id) throw new OsfarmError('OSFARM_ABORTED', `worker ${this.id} no longer holds this job: not publishing its images`);
      const entry = repo.resolve(out.digest);
      emitter.emit({ type: 'phase', phase: 'push', detail: `${entry.name ?? out.digest.slice(0, 12)} to ${this.o.pushTo}` });
      const p: PushResult = await push(out.digest, this.o.pushTo, {
        repo: this.repoPath,
        ...(this.o.token ? { token: this.o.token } : {}),
        insecure: this.o.insecure ?? !this.o.token,
        ...(this.o.tls ? { tls: this.o.tls } : {}),
        signal,
        onProgress: (x) => emitter.emit({ type: 'progress', phase: 'push', done: x.haveBlocks, total: x.blockCount }),
      });
      emitter.emit({ type: 'log', line: `osfarm: pushed ${entry.name ?? out.digest} to ${this.o.pushTo}: ${p.alreadyPresent ? 'the repository already held it' : `${p.blocksSent} of ${p.blockCount} blocks sent, ${p.wireBytesSent} bytes on the wire`}` });
      pushed.push({ format: out.format, digest: p.digest, name: p.name ?? entry.name ?? null, alreadyPresent: p.alreadyPresent, blockCount: p.blockCount, blocksSent: p.blocksSent, rawBytesSent: p.rawBytesSent, wireBytesSent: p.wireBytesSent });
    }
    // The central repository has them now; the local copies were only the push's source.
    for (const out of r.outputs) await repo.remove(out.digest).catch(() => {});
    const result: FarmBuildResult = { ...r, worker: this.id, pushed };
    return result;
  }

  /** A probe: waits `ms` (cancellable) and reports; the farm's queue path without a build. */
  private async probe(ms: number, emitter: JobEmitter, signal: AbortSignal): Promise<unknown> {
    emitter.emit({ type: 'log', line: `osfarm: probe on worker ${this.id}: waiting ${ms} ms` });
    try {
      await sleep(ms, undefined, { signal });
    } catch {
      throw new OsfarmError('OSFARM_ABORTED', 'the probe was cancelled');
    }
    return { worker: this.id, ms };
  }

  /** Advertises what the stage cache holds now; returns how many stages. */
  private async advertise(): Promise<number> {
    this.stages ??= await StageStore.open({ root: this.stagesDir });
    const tags = this.stages.stageTags();
    await this.registration.syncStages(tags);
    return tags.length;
  }

  private async beat(): Promise<void> {
    try {
      await this.registration.heartbeat();
      if (!this.busy) await this.advertise();
      // A cancel published while the connection was down is still in the record.
      const c = this.current;
      if (c && (await this.store.farmFields(c.id))?.cancel) c.controller.abort();
    } catch (err) {
      this.o.onEvent?.({ type: 'error', message: `heartbeat: ${(err as Error).message}` });
    }
  }
}
