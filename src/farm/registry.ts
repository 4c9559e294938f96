/**
 * Workers in Redis: each advertises itself (a hash renewed every heartbeat), its liveness
 * (a key that expires unless renewed) and the stage tags its cache holds (its own set plus
 * one set per tag naming its holders), so the scheduler finds, for a job's stages, the
 * workers that hold the deepest one. docs/farm.md lists the keys.
 */
import type { Redis } from 'ioredis';

import type { Keys } from './redis.js';

/** What a worker says about itself. */
export interface WorkerAdvert {
  id: string;
  host: string;
  pid: number;
  started: string;
  /** A job running now (its id), or null when idle. */
  job: string | null;
  /** The stage tags of the running job (it will hold them when done). */
  building: string[];
}

export interface WorkerView extends WorkerAdvert {
  alive: boolean;
  /** Its last heartbeat (ISO time), '' if none was recorded. */
  seen: string;
}

/** The worker's side: register, renew, advertise stages, leave. */
export class WorkerRegistration {
  private advertised = new Set<string>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly advert: WorkerAdvert,
    /** How long the worker counts as alive without a heartbeat (ms). */
    private readonly ttlMs: number,
  ) {}

  /** Writes the advert and renews liveness. */
  async heartbeat(change: Partial<Pick<WorkerAdvert, 'job' | 'building'>> = {}): Promise<void> {
    Object.assign(this.advert, change);
    const k = this.keys;
    const a = this.advert;
    await this.redis
      .multi()
      .sadd(k.workers, a.id)
      .hset(k.worker(a.id), 'id', a.id, 'host', a.host, 'pid', String(a.pid), 'started', a.started, 'job', a.job ?? '', 'building', JSON.stringify(a.building), 'seen', new Date().toISOString())
      .set(k.alive(a.id), '1', 'PX', this.ttlMs)
      .exec();
  }

  /** Makes the advertised stage set equal to `tags` (what the cache holds now). */
  async syncStages(tags: string[]): Promise<void> {
    const k = this.keys;
    const id = this.advert.id;
    const now = new Set(tags);
    // The first sync also drops what an earlier run advertised and the cache lost since.
    const before = this.advertised.size > 0 ? this.advertised : new Set(await this.redis.smembers(k.workerStages(id)));
    const added = [...now].filter((t) => !before.has(t));
    const gone = [...before].filter((t) => !now.has(t));
    if (added.length === 0 && gone.length === 0 && this.advertised.size > 0) return;
    const m = this.redis.multi();
      for (const t of added) m.sadd(k.workerStages(id), t).sadd(k.stage(t), id);
    for (const t of gone) m.srem(k.workerStages(id), t).srem(k.stage(t), id);
    await m.exec();
    this.advertised = now;
  }

  /** A clean stop: gone at once, with its stage holdings. */
  async leave(): Promise<void> {
    await forgetWorker(this.redis, this.keys, this.advert.id);
  }
}

/** Removes a worker and its stage holdings from the registry. */
export async function forgetWorker(redis: Redis, keys: Keys, id: string): Promise<void> {
  const tags = await redis.smembers(keys.workerStages(id));
  const m = redis.multi().srem(keys.workers, id).del(keys.worker(id), keys.alive(id), keys.workerStages(id));
  for (const t of tags) m.srem(keys.stage(t), id);
  await m.exec();
}

/** Every registered worker, alive or not. */
export async function readWorkers(redis: Redis, keys: Keys): Promise<WorkerView[]> {
  const ids = await redis.smembers(keys.workers);
  const pipe = redis.pipeline();
  for (const id of ids) {
    pipe.hgetall(keys.worker(id));
    pipe.exists(keys.alive(id));
  }
  const rows = (await pipe.exec()) ?? [];
  const out: WorkerView[] = [];
  ids.forEach((id, i) => {
    const h = (rows[2 * i]?.[1] ?? {}) as Record<string, string>;
    out.push({
      id,
      host: h.host ?? '',
      pid: Number(h.pid ?? 0),
      started: h.started ?? '',
      job: h.job ? h.job : null,
      building: h.building ? (JSON.parse(h.building) as string[]) : [],
      alive: rows[2 * i + 1]?.[1] === 1,
      seen: h.seen ?? '',
    });
  });
  return out;
}

/** How many stage tags each worker's cache holds (as it last advertised). */
export async function stageCounts(redis: Redis, keys: Keys, ids: string[]): Promise<number[]> {
  const pipe = redis.pipeline();
  for (const id of ids) pipe.scard(keys.workerStages(id));
  const rows = (await pipe.exec()) ?? [];
  return ids.map((_, i) => Number(rows[i]?.[1] ?? 0));
}

/** For each tag, the workers whose cache holds it (live or not). */
export async function holdersOf(redis: Redis, keys: Keys, tags: Iterable<string>): Promise<Map<string, Set<string>>> {
  const list = [...new Set(tags)];
  const pipe = redis.pipeline();
  for (const t of list) pipe.smembers(keys.stage(t));
  const rows = (await pipe.exec()) ?? [];
  return new Map(list.map((t, i) => [t, new Set((rows[i]?.[1] ?? []) as string[])]));
}
