/**
 * The farm's Redis: one connection helper and every key name, so the server, the scheduler
 * and the workers agree on them (docs/farm.md lists them). BullMQ keeps its queues under
 * `<prefix>-bull`; osfarm's own records (jobs, events, workers, stage holdings) under
 * `<prefix>:`.
 */
import { Redis } from 'ioredis';

import { OsfarmError } from '../base/errors.js';

export const DEFAULT_PREFIX = 'osfarm';

/** The shared build queue: any worker takes its jobs. */
export const SHARED_QUEUE = 'builds';

/** A worker's own queue: jobs placed on it because it holds their deepest cached stage. */
export function ownQueue(workerId: string): string {
  return `builds-${workerId}`;
}

/** The worker id an own queue belongs to, or null for the shared queue. */
export function queueOwner(queue: string): string | null {
  return queue.startsWith('builds-') ? queue.slice('builds-'.length) : null;
}

/** Checks a queue URL: redis://[user:password@]host[:port][/db] or rediss://… */
export function checkQueueUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `--queue ${JSON.stringify(url)} is not a URL: give redis://host:port (the farm's Redis)`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `--queue ${JSON.stringify(url)}: the queue is a Redis server, redis://host:port or rediss://host:port`);
  }
  return url;
}

/**
 * A Redis connection that waits out an outage: commands queue while it reconnects (every
 * 0.1 to 2 s) and run once Redis is back, as BullMQ requires (maxRetriesPerRequest null).
 */
export function connectRedis(url: string, name: string): Redis {
  const redis = new Redis(checkQueueUrl(url), {
    maxRetriesPerRequest: null,
    connectionName: name,
    retryStrategy: (times) => Math.min(100 * times, 2000),
  });
  // Errors while Redis is away are retried by the client; without a listener they would be thrown.
  redis.on('error', () => {});
  return redis;
}

/** Key names under one prefix. */
export class Keys {
  constructor(readonly prefix: string = DEFAULT_PREFIX) {}

  get bullPrefix(): string {
    return `${this.prefix}-bull`;
  }
  job(id: string): string {
    return `${this.prefix}:job:${id}`;
  }
  events(id: string): string {
    return `${this.prefix}:job:${id}:events`;
  }
  /** Channel on which each appended event of a job is published. */
  jobChannel(id: string): string {
    return `${this.prefix}:job:${id}:live`;
  }
  /** Sorted set of every job kept, by creation time. */
  get jobs(): string {
    return `${this.prefix}:jobs`;
  }
  /** Sorted set of finished jobs, by end time (the oldest are forgotten first). */
  get finished(): string {
    return `${this.prefix}:jobs:finished`;
  }
  /** Set of farm jobs not yet finished. */
  get open(): string {
    return `${this.prefix}:jobs:open`;
  }
  /** Jobs in the shared queue waiting for the scheduler to place them (they have stage tags). */
  get awaiting(): string {
    return `${this.prefix}:jobs:awaiting`;
  }
  /** Jobs the scheduler placed on an own queue that no worker has started yet. */
  get placed(): string {
    return `${this.prefix}:jobs:placed`;
  }
  get workers(): string {
    return `${this.prefix}:workers`;
  }
  worker(id: string): string {
    return `${this.prefix}:worker:${id}`;
  }
  /** Exists while the worker is alive (it renews the expiry). The claim script builds it as `<prefix>:worker:<id>:alive`. */
  alive(id: string): string {
    return `${this.prefix}:worker:${id}:alive`;
  }
  workerStages(id: string): string {
    return `${this.prefix}:worker:${id}:stages`;
  }
  /** Set of the workers holding a stage. */
  stage(tag: string): string {
    return `${this.prefix}:stage:${tag}`;
  }
  /** Channel: a job id to cancel. */
  get cancelChannel(): string {
    return `${this.prefix}:cancel`;
  }
  /** Channel: a worker id that has a free slot. */
  get idleChannel(): string {
    return `${this.prefix}:idle`;
  }
  /** Held by the one scheduler that acts (renewed while it runs). */
  get schedulerLease(): string {
    return `${this.prefix}:scheduler`;
  }
}
