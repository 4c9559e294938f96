/**
 * Jobs kept in Redis: each job a hash (its info, one JSON value per field, plus the farm's
 * routing fields) and a stream of its events whose entry ids are `0-<seq>`, so an SSE
 * client's Last-Event-ID is a stream position. Every append is one Lua script: number the
 * event, add it to the stream, fold it into the hash, publish it for live watchers. A
 * restarted server reads the same history; a watcher that lost its subscription (Redis
 * restarted) fills the gap from the stream. docs/farm.md describes the records.
 */
import type { Redis } from 'ioredis';

import { type AppendOptions, type Emitted, foldEvent, isFinal, type JobEvent, type JobInfo, type JobStore } from './job-model.js';
import { connectRedis, Keys } from './redis.js';

const INFO_FIELDS = ['id', 'kind', 'title', 'state', 'created', 'started', 'finished', 'phase', 'progress', 'result', 'error', 'meta', 'worker', 'attempts'] as const;

const FINAL_STATES = "local function final(s) return s == '\"succeeded\"' or s == '\"failed\"' or s == '\"cancelled\"' end\n";

/** KEYS job, events, channel, open, finished; ARGV body, maxlen, runner, n, field1, value1, … */
const APPEND = `${FINAL_STATES}
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if final(redis.call('HGET', KEYS[1], 'state')) then return false end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'runner') ~= ARGV[3] then return false end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local t = ms - tonumber(redis.call('HGET', KEYS[1], 'createdMs'))
local ev = '{"seq":' .. seq .. ',"t":' .. t .. ',' .. ARGV[1] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. seq, 'e', ev)
for i = 5, 4 + 2 * tonumber(ARGV[4]), 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if final(redis.call('HGET', KEYS[1], 'state')) then
  redis.call('SREM', KEYS[4], redis.call('HGET', KEYS[1], 'rawId'))
  redis.call('ZADD', KEYS[5], ms, redis.call('HGET', KEYS[1], 'rawId'))
  redis.call('HSET', KEYS[1], 'runner', '')
end
redis.call('PUBLISH', KEYS[3], ev)
return ev`;

/** KEYS job, jobs, open; ARGV id, n, field1, value1, … — a new job (its first event is appended after). */
const CREATE = `
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'createdMs', ms, 'seq', 0, 'rawId', ARGV[1], 'runner', '', 'cancel', '0')
for i = 3, 2 + 2 * tonumber(ARGV[2]), 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ms, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return ms`;

/**
 * KEYS job; ARGV route, worker, alive-key prefix. Starts a run of the job by the BullMQ job
 * on `route`: 'final', 'stale' (the job was moved elsewhere), 'cancelled', 'busy' (another
 * worker that is still alive runs it: BullMQ redelivered it after a lapse of that worker's
 * lock, e.g. while Redis was away), or 'ok:<previous runner>'.
 */
const CLAIM = `${FINAL_STATES}
if redis.call('EXISTS', KEYS[1]) == 0 then return 'final' end
if final(redis.call('HGET', KEYS[1], 'state')) then return 'final' end
if redis.call('HGET', KEYS[1], 'route') ~= ARGV[1] then return 'stale' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'cancelled' end
local previous = redis.call('HGET', KEYS[1], 'runner')
if previous ~= '' and previous ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. previous .. ':alive') == 1 then return 'busy' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts')) + 1
redis.call('HSET', KEYS[1], 'runner', ARGV[2], 'worker', cjson.encode(ARGV[2]), 'attempts', attempts)
return 'ok:' .. previous`;

/**
 * KEYS job; ARGV expected route, new route, '1' to move a started job too (its worker is
 * gone). Moves a job that has not ended; 1 if moved.
 */
const REROUTE = `${FINAL_STATES}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if final(redis.call('HGET', KEYS[1], 'state')) then return 0 end
if redis.call('HGET', KEYS[1], 'route') ~= ARGV[1] then return 0 end
if ARGV[3] ~= '1' and redis.call('HGET', KEYS[1], 'runner') ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'route', ARGV[2], 'runner', '')
return 1`;

/**
 * KEYS finished, jobs; ARGV keep, at most, key prefix. Forgets the oldest finished jobs
 * beyond `keep`, a few at a time (each new job calls it: the work stays constant, and
 * concurrent callers never pick the same job).
 */
const FORGET = `
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if extra <= 0 then return 0 end
local old = redis.call('ZPOPMIN', KEYS[1], math.min(extra, tonumber(ARGV[2])))
for i = 1, #old, 2 do
  redis.call('DEL', ARGV[3] .. old[i], ARGV[3] .. old[i] .. ':events')
  redis.call('ZREM', KEYS[2], old[i])
end
return #old / 2`;

/** KEYS job; marks a job to be cancelled; returns its state (JSON) or false. */
const CANCEL = `${FINAL_STATES}
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local s = redis.call('HGET', KEYS[1], 'state')
if not final(s) then redis.call('HSET', KEYS[1], 'cancel', '1') end
return s`;

type Scripted = Redis & {
  farmAppend(job: string, events: string, channel: string, open: string, finished: string, ...args: (string | number)[]): Promise<string | null>;
  farmCreate(job: string, jobs: string, open: string, ...args: (string | number)[]): Promise<number>;
  farmClaim(job: string, route: string, worker: string, alivePrefix: string): Promise<string>;
  farmReroute(job: string, expected: string, next: string, started: string): Promise<number>;
  farmCancel(job: string): Promise<string | null>;
  farmForget(finished: string, jobs: string, keep: number, most: number, jobPrefix: string): Promise<number>;
};

function defineScripts(redis: Redis): Scripted {
  redis.defineCommand('farmAppend', { numberOfKeys: 5, lua: APPEND });
  redis.defineCommand('farmCreate', { numberOfKeys: 3, lua: CREATE });
  redis.defineCommand('farmClaim', { numberOfKeys: 1, lua: CLAIM });
  redis.defineCommand('farmReroute', { numberOfKeys: 1, lua: REROUTE });
  redis.defineCommand('farmCancel', { numberOfKeys: 1, lua: CANCEL });
  redis.defineCommand('farmForget', { numberOfKeys: 2, lua: FORGET });
  return redis as Scripted;
}

/** The farm's fields of a job record, next to its info. */
export interface FarmFields {
  /** `<queue>/<BullMQ job id>`: the one BullMQ job allowed to run it. */
  route: string;
  /** The worker running it now ('' when none). */
  runner: string;
  cancel: boolean;
  /** The stage tags of a build, core first (for placement). */
  tags: string[];
  /** A build's spec (BuildSpec as JSON), or null for a probe. */
  spec: unknown;
  /** A probe's duration in ms. */
  probeMs: number;
}

export interface RedisStoreOptions {
  /** Events kept per job (approximately; default 20000). */
  maxEvents?: number;
  /** Finished jobs remembered (default 1000). */
  keepFinished?: number;
}

interface Watcher {
  id: string;
  last: number;
  listener: (e: JobEvent) => void;
  chain: Promise<void>;
  stopped: boolean;
}

export class RedisJobStore implements JobStore {
  readonly keys: Keys;
  private readonly redis: Scripted;
  private subscriber: Redis | undefined;
  private readonly watchers = new Map<string, Set<Watcher>>();

  constructor(
    private readonly url: string,
    prefix?: string,
    private readonly options: RedisStoreOptions = {},
  ) {
    this.keys = new Keys(prefix);
    this.redis = defineScripts(connectRedis(url, 'osfarm-jobs'));
  }

  /** The command connection (shared with the farm code that owns this store). */
  get client(): Redis {
    return this.redis;
  }

  async create(info: JobInfo, farm: Partial<FarmFields> = {}): Promise<JobInfo> {
    const fields: (string | number)[] = [];
    for (const f of INFO_FIELDS) fields.push(f, JSON.stringify(info[f]));
    if (farm.route !== undefined) fields.push('route', farm.route);
    if (farm.tags !== undefined) fields.push('tags', JSON.stringify(farm.tags));
    if (farm.spec !== undefined) fields.push('spec', JSON.stringify(farm.spec));
    if (farm.probeMs !== undefined) fields.push('probeMs', String(farm.probeMs));
    const k = this.keys;
    await this.redis.farmCreate(k.job(info.id), k.jobs, k.open, info.id, fields.length / 2, ...fields);
    await this.append(info.id, { type: 'state', state: info.state });
    await this.forget();
    return info;
  }

  async get(id: string): Promise<JobInfo | undefined> {
    const values = await this.redis.hmget(this.keys.job(id), ...INFO_FIELDS);
    return parseInfo(values);
  }

  async list(): Promise<JobInfo[]> {
    const ids = await this.redis.zrevrange(this.keys.jobs, 0, -1);
    const pipe = this.redis.pipeline();
    for (const id of ids) pipe.hmget(this.keys.job(id), ...INFO_FIELDS);
    const rows = (await pipe.exec()) ?? [];
    return rows.map(([, v]) => parseInfo(v as (string | null)[])).filter((i): i is JobInfo => i !== undefined);
  }

  async append(id: string, event: Emitted, options: AppendOptions = {}): Promise<JobEvent | undefined> {
    const patch = { ...foldEvent(event), ...options.patch };
    const fields: string[] = [];
    for (const [f, v] of Object.entries(patch)) fields.push(f, JSON.stringify(v));
    const k = this.keys;
    const body = JSON.stringify(event).slice(1, -1);
    const ev = await this.redis.farmAppend(k.job(id), k.events(id), k.jobChannel(id), k.open, k.finished, body, this.options.maxEvents ?? 20_000, options.runner ?? '', fields.length / 2, ...fields);
    return ev ? (JSON.parse(ev) as JobEvent) : undefined;
  }

  async events(id: string, afterSeq: number): Promise<JobEvent[]> {
    const out: JobEvent[] = [];
    let from = `(0-${afterSeq}`;
    for (;;) {
      const batch = await this.redis.xrange(this.keys.events(id), from, '+', 'COUNT', 2000);
      for (const [, kv] of batch) out.push(JSON.parse(kv[1]!) as JobEvent);
      if (batch.length < 2000) return out;
      from = `(${batch[batch.length - 1]![0]}`;
    }
  }

  async watch(id: string, afterSeq: number, listener: (e: JobEvent) => void): Promise<(() => void) | undefined> {
    const sub = await this.subscription();
    const w: Watcher = { id, last: afterSeq, listener, chain: Promise.resolve(), stopped: false };
    let set = this.watchers.get(id);
    if (!set) {
      set = new Set();
      this.watchers.set(id, set);
      // Subscribed before the history is read, so no event falls between the two.
      await sub.subscribe(this.keys.jobChannel(id));
    }
    set.add(w);
    const info = await this.get(id);
    if (!info) {
      this.stopWatcher(w);
      return undefined;
    }
    await this.enqueue(w);
    // Ended before we looked: the history was everything.
    if (isFinal(info.state)) this.stopWatcher(w);
    return () => this.stopWatcher(w);
  }

  /**
   * Delivers, in order after what the watcher is already being given, the stored events
   * after its last one and then `live` (a published event), skipping what it has seen.
   */
  private enqueue(w: Watcher, live?: JobEvent): Promise<void> {
    w.chain = w.chain.then(async () => {
      if (w.stopped) return;
      // A gap (messages lost while Redis was away, or the first call) is filled from the stream.
      if (!live || live.seq > w.last + 1) for (const e of await this.events(w.id, w.last)) this.deliver(w, e);
      if (live) this.deliver(w, live);
    }).catch(() => {
      /* Redis away: the next event or the reconnect fills the gap */
    });
    return w.chain;
  }

  private deliver(w: Watcher, e: JobEvent): void {
    if (w.stopped || e.seq <= w.last) return;
    w.last = e.seq;
    w.listener(e);
    if (e.type === 'state' && isFinal(e.state)) this.stopWatcher(w);
  }

  private async subscription(): Promise<Redis> {
    if (this.subscriber) return this.subscriber;
    const sub = connectRedis(this.url, 'osfarm-jobs-watch');
    this.subscriber = sub;
    sub.on('message', (channel: string, message: string) => {
      const id = channel.slice(`${this.keys.prefix}:job:`.length, -':live'.length);
      const e = JSON.parse(message) as JobEvent;
      for (const w of this.watchers.get(id) ?? []) void this.enqueue(w, e);
    });
    // After a reconnect the client subscribes again by itself; what was published meanwhile is in the streams.
    let first = true;
    sub.on('ready', () => {
      if (first) {
        first = false;
        return;
      }
      for (const set of this.watchers.values()) for (const w of set) void this.enqueue(w);
    });
    return sub;
  }

  private stopWatcher(w: Watcher): void {
    if (w.stopped) return;
    w.stopped = true;
    const s = this.watchers.get(w.id);
    s?.delete(w);
    if (s && s.size === 0) {
      this.watchers.delete(w.id);
      void this.subscriber?.unsubscribe(this.keys.jobChannel(w.id)).catch(() => {});
    }
  }

  // ----- the farm's routing fields -----

  async farmFields(id: string): Promise<FarmFields | undefined> {
    const [route, runner, cancel, tags, spec, probeMs] = await this.redis.hmget(this.keys.job(id), 'route', 'runner', 'cancel', 'tags', 'spec', 'probeMs');
    if (route === null) return undefined;
    return { route, runner: runner ?? '', cancel: cancel === '1', tags: tags ? (JSON.parse(tags) as string[]) : [], spec: spec ? JSON.parse(spec) : null, probeMs: Number(probeMs ?? 0) };
  }

  /** Starts a run by the BullMQ job on `route` (see CLAIM). */
  claim(id: string, route: string, worker: string): Promise<string> {
    return this.redis.farmClaim(this.keys.job(id), route, worker, this.keys.alive('').slice(0, -':alive'.length));
  }

  /**
   * Moves a job that has not ended from one route to another; false if it had ended, moved,
   * or (unless `started`: its worker is gone) a worker had started it.
   */
  async reroute(id: string, expected: string, next: string, started = false): Promise<boolean> {
    return (await this.redis.farmReroute(this.keys.job(id), expected, next, started ? '1' : '0')) === 1;
  }

  /** Routing fields of many jobs at once (for the scheduler). */
  async routing(ids: string[]): Promise<{ id: string; state: JobInfo['state']; route: string; runner: string; tags: string[]; createdMs: number; cancel: boolean }[]> {
    const pipe = this.redis.pipeline();
    for (const id of ids) pipe.hmget(this.keys.job(id), 'state', 'route', 'runner', 'tags', 'createdMs', 'cancel');
    const rows = (await pipe.exec()) ?? [];
    const out = [];
    for (const [i, id] of ids.entries()) {
      const [state, route, runner, tags, createdMs, cancel] = (rows[i]?.[1] ?? []) as (string | null)[];
      if (!state || !route) continue;
      out.push({ id, state: JSON.parse(state) as JobInfo['state'], route, runner: runner ?? '', tags: tags ? (JSON.parse(tags) as string[]) : [], createdMs: Number(createdMs), cancel: cancel === '1' });
    }
    return out;
  }

  /** Marks a job to be cancelled and tells its worker; its state before, or undefined if unknown. */
  async requestCancel(id: string): Promise<JobInfo['state'] | undefined> {
    const s = await this.redis.farmCancel(this.keys.job(id));
    if (s === null) return undefined;
    await this.redis.publish(this.keys.cancelChannel, id);
    return JSON.parse(s) as JobInfo['state'];
  }

  /** Jobs not yet finished. */
  openJobs(): Promise<string[]> {
    return this.redis.smembers(this.keys.open);
  }

  async close(): Promise<void> {
    for (const set of this.watchers.values()) for (const w of set) w.stopped = true;
    this.watchers.clear();
    this.subscriber?.disconnect();
    this.redis.disconnect();
  }

  /** Forgets the oldest finished jobs beyond keepFinished (up to 10 per new job). */
  private async forget(): Promise<void> {
    const k = this.keys;
    await this.redis.farmForget(k.finished, k.jobs, this.options.keepFinished ?? 1000, 10, k.job(''));
  }
}

function parseInfo(values: (string | null)[]): JobInfo | undefined {
  if (values[0] === null || values[0] === undefined) return undefined;
  const info: Record<string, unknown> = {};
  INFO_FIELDS.forEach((f, i) => (info[f] = values[i] === null ? null : JSON.parse(values[i]!)));
  return { ...(info as unknown as JobInfo), position: null };
}
