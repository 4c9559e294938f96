/**
 * The farm's BullMQ queues as the server uses them: the shared queue and each worker's own
 * queue, one BullMQ job per placement of a farm job. A placement is named by its route,
 * `<queue>/<farm job id>-<n>`; the job record keeps the current route, and only the BullMQ
 * job on it may run the farm job (a worker checks that when it claims the job), so a
 * placement left behind by a move is harmless.
 */
import { type Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';

import type { Keys } from './redis.js';

/** What a BullMQ job of the farm carries: only the farm job's id (the record holds the rest). */
export interface FarmJobData {
  id: string;
}

export function routeOf(queue: string, bullId: string): string {
  return `${queue}/${bullId}`;
}

export function parseRoute(route: string): { queue: string; bullId: string; n: number } {
  const at = route.indexOf('/');
  const queue = route.slice(0, at);
  const bullId = route.slice(at + 1);
  return { queue, bullId, n: Number(bullId.slice(bullId.lastIndexOf('-') + 1)) };
}

/** The BullMQ id of a farm job's n-th placement. */
export function bullIdOf(farmId: string, n: number): string {
  return `${farmId}-${n}`;
}

export class FarmQueues {
  private readonly queues = new Map<string, Queue<FarmJobData>>();

  constructor(
    private readonly connection: Redis,
    private readonly keys: Keys,
  ) {}

  queue(name: string): Queue<FarmJobData> {
    let q = this.queues.get(name);
    if (!q) {
      q = new Queue<FarmJobData>(name, { connection: this.connection, prefix: this.keys.bullPrefix });
      q.on('error', () => {});
      this.queues.set(name, q);
    }
    return q;
  }

  /** Adds the BullMQ job of a placement (a no-op if it exists: ids are unique per queue). */
  async add(route: string, farmId: string, delayMs = 0): Promise<void> {
    const { queue, bullId } = parseRoute(route);
    await this.queue(queue).add('job', { id: farmId }, { jobId: bullId, delay: Math.max(0, Math.round(delayMs)), removeOnComplete: true, removeOnFail: { count: 1000 } });
  }

  /** Removes a placement's BullMQ job if it is not running (best effort: a stale one is skipped anyway). */
  async remove(route: string): Promise<void> {
    const { queue, bullId } = parseRoute(route);
    await this.queue(queue).remove(bullId).catch(() => 0);
  }

  /** Sets a delayed placement to become waiting `delayMs` from now (a no-op once it is not delayed). */
  async delay(route: string, delayMs: number): Promise<void> {
    const { queue, bullId } = parseRoute(route);
    const job = await this.queue(queue).getJob(bullId);
    await job?.changeDelay(Math.max(0, Math.round(delayMs))).catch(() => {});
  }

  /** The BullMQ state of a placement ('unknown' once removed). */
  async state(route: string): Promise<string> {
    const { queue, bullId } = parseRoute(route);
    return this.queue(queue).getJobState(bullId);
  }

  waiting(name: string): Promise<Job<FarmJobData>[]> {
    return this.queue(name).getWaiting();
  }

  async counts(name: string): Promise<Record<string, number>> {
    return this.queue(name).getJobCounts('active', 'waiting', 'delayed', 'prioritized');
  }

  /** Deletes a queue with everything in it (a departed worker's own queue, once empty). */
  async drop(name: string): Promise<void> {
    await this.queue(name).obliterate({ force: true });
    await this.queue(name).close();
    this.queues.delete(name);
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.queues.clear();
  }
}
