/**
 * The server's side of a build farm: `osfarm serve --queue redis://…` submits builds here
 * instead of running them. A request the central repository already answers is answered at
 * once; any other becomes a job record in Redis and a delayed BullMQ job in the shared queue
 * that the scheduler places (docs/farm.md). Reading jobs, their events and cancelling them
 * work from any server process, during and after a restart.
 */
import { randomBytes } from 'node:crypto';

import type { Redis } from 'ioredis';

import { type BuildSpec, OUTPUT_EXTENSION, specDigest } from '../spec/index.js';
import { findBuilt } from '../images/index.js';
import { isFinal, JobEmitter, type JobEvent, type JobInfo, type JobKind, type JobSource, newJobInfo } from './job-model.js';
import { bullIdOf, FarmQueues, routeOf } from './queues.js';
import { connectRedis, SHARED_QUEUE } from './redis.js';
import { RedisJobStore } from './redis-store.js';
import { readWorkers, stageCounts, type WorkerView } from './registry.js';
import { DEFAULT_SCHEDULING, Scheduler, type SchedulingOptions } from './scheduler.js';
import { stageTagsOf } from './tags.js';

export interface FarmClientOptions extends Partial<SchedulingOptions> {
  /** The farm's Redis (redis://host:port). */
  url: string;
  prefix?: string;
  /** The central repository (requests it already holds are answered without a worker). */
  repo: string;
  /** Run the scheduler in this process (default true). */
  schedule?: boolean;
}

export class FarmClient implements JobSource {
  readonly store: RedisJobStore;
  readonly scheduling: SchedulingOptions;
  private readonly connection: Redis;
  private readonly queues: FarmQueues;
  readonly scheduler: Scheduler | undefined;

  private constructor(private readonly o: FarmClientOptions) {
    this.scheduling = { mode: o.mode ?? DEFAULT_SCHEDULING.mode, waitMs: o.waitMs ?? DEFAULT_SCHEDULING.waitMs };
    this.store = new RedisJobStore(o.url, o.prefix);
    this.connection = connectRedis(o.url, 'osfarm-server');
    this.queues = new FarmQueues(this.connection, this.store.keys);
    this.scheduler = o.schedule === false ? undefined : new Scheduler(this.store, this.queues, this.connection, this.scheduling);
  }

  /** Connects (waiting for Redis) and starts the scheduler. */
  static async open(o: FarmClientOptions): Promise<FarmClient> {
    const c = new FarmClient(o);
    await c.connection.ping();
    await c.scheduler?.start();
    return c;
  }

  /** Queues a build; a request the central repository already holds succeeds at once. */
  async submitBuild(spec: BuildSpec, title: string, meta: Record<string, unknown>): Promise<JobInfo> {
    const digest = specDigest(spec);
    const found = findBuilt(this.o.repo, digest, spec.outputs, spec.sourceDateEpoch);
    if (found) {
      const info = await this.store.create(newJobInfo(randomBytes(6).toString('hex'), 'build', title, meta));
      const e = new JobEmitter(this.store, info.id);
      await e.append({ type: 'log', line: `osfarm: request ${digest} is already in the repository: nothing to build` });
      for (const [format, entry] of found) await e.append({ type: 'output', output: { format, size: entry.size, digest: entry.digest, file: `${spec.name}${OUTPUT_EXTENSION[format]}` } });
      const outputs = [...found].map(([format, entry]) => ({ format, size: entry.size, digest: entry.digest }));
      await e.append({ type: 'result', result: { specDigest: digest, cached: true, durationMs: 0, phases: {}, outputs, stages: [] } });
      await e.append({ type: 'state', state: 'succeeded' });
      return (await this.store.get(info.id))!;
    }
    return this.enqueue('build', title, meta, { spec, tags: await stageTagsOf(spec) });
  }

  /** Queues a probe: a job that only waits `ms` on a worker (checks a farm end to end; measures its overhead). */
  submitProbe(ms: number, title = `probe (${ms} ms)`): Promise<JobInfo> {
    return this.enqueue('probe', title, {}, { probeMs: ms, tags: [] });
  }

  private async enqueue(kind: JobKind, title: string, meta: Record<string, unknown>, farm: { spec?: BuildSpec; tags: string[]; probeMs?: number }): Promise<JobInfo> {
    const info = newJobInfo(randomBytes(6).toString('hex'), kind, title, meta);
    const route = routeOf(SHARED_QUEUE, bullIdOf(info.id, 1));
    await this.store.create(info, { route, ...farm });
    // Cache-aware and round-robin: the scheduler places it, or anyone may take it after the
    // wait. Plain, or a job without stage tags (nothing to prefer): free for any worker now.
    const placed = this.scheduling.mode !== 'plain' && farm.tags.length > 0;
    if (placed) await this.connection.sadd(this.store.keys.awaiting, info.id);
    await this.queues.add(route, info.id, placed ? this.scheduling.waitMs : 0);
    this.scheduler?.kick();
    return info;
  }

  get(id: string): Promise<JobInfo | undefined> {
    return this.store.get(id);
  }

  list(): Promise<JobInfo[]> {
    return this.store.list();
  }

  watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined> {
    return this.store.watch(id, afterSeq, listener);
  }

  /**
   * Cancels a job: one no worker has started ends here at once; a running one is stopped by
   * its worker, which tears its build down and records the end.
   */
  async cancel(id: string): Promise<boolean> {
    const before = await this.store.requestCancel(id);
    if (before === undefined || isFinal(before)) return false;
    const fields = await this.store.farmFields(id);
    if (fields && fields.runner === '') {
      const e = new JobEmitter(this.store, id);
      // A worker claiming it meanwhile sees the cancel mark and ends it the same way; one end is kept.
      await e.append({ type: 'error', error: { code: 'OSFARM_ABORTED', message: 'cancelled before it started' } });
      await e.append({ type: 'state', state: 'cancelled' });
      await this.queues.remove(fields.route);
    }
    return true;
  }

  /** The registered workers (alive or not), what each runs, and how many stages its cache holds. */
  async workers(): Promise<(WorkerView & { stages: number })[]> {
    // Only here: the scheduler's rounds read workers without the counts.
    const workers = await readWorkers(this.connection, this.store.keys);
    const counts = await stageCounts(this.connection, this.store.keys, workers.map((w) => w.id));
    return workers.map((w, i) => ({ ...w, stages: counts[i]! }));
  }

  /** Disconnects; the farm's jobs go on on their workers. */
  async close(): Promise<void> {
    await this.scheduler?.stop();
    await this.queues.close();
    this.connection.disconnect();
    await this.store.close();
  }
}
