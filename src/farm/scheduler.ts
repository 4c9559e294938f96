/**
 * Cache-aware placement (docs/farm.md). A new job waits in the shared queue as a delayed
 * BullMQ job. The scheduler, in the server, places waiting jobs on idle workers' own queues:
 * each job preferably on a worker that holds (or is building, or was just given a job that
 * builds) its deepest stage; a job nobody holds anything of goes to any idle worker. A job
 * whose preferred workers stay busy while another worker idles longer than the wait goes to
 * that worker. Should no scheduler run, BullMQ frees a waiting job in the shared queue (its
 * delay, kept ahead by the scheduler while it runs) for any free worker.
 *
 * It also looks after workers that stopped answering: their own queue's running job is
 * found by BullMQ's stalled-job check (run here, since its owner cannot) and, with the
 * jobs waiting there, moved back to the shared queue; a job BullMQ gave up on is failed.
 * One scheduler acts at a time (a lease in Redis), so several servers may run.
 */
import { randomBytes } from 'node:crypto';

import { Worker } from 'bullmq';
import type { Redis } from 'ioredis';

import { bullIdOf, type FarmJobData, type FarmQueues, parseRoute, routeOf } from './queues.js';
import { forgetWorker, holdersOf, readWorkers, type WorkerView } from './registry.js';
import { ownQueue, queueOwner, SHARED_QUEUE } from './redis.js';
import type { RedisJobStore } from './redis-store.js';

export type SchedulingMode = 'cache-aware' | 'plain' | 'round-robin';

export interface SchedulingOptions {
  /**
   * cache-aware (default); plain: every job straight to the shared queue, as BullMQ hands them
   * out (the first free worker); round-robin: each job, in submit order, on the next live worker
   * in turn, busy or not (the classic baseline the cache-aware placement is measured against).
   */
  mode: SchedulingMode;
  /** How long a job waits for a worker that holds its deepest stage before any free worker may take it (ms). */
  waitMs: number;
}

/** The wait's default: about what a missed stage costs (an appliance stage builds in 0.5 to a few minutes); waiting longer than a miss costs only loses time. */
export const DEFAULT_SCHEDULING: SchedulingOptions = { mode: 'cache-aware', waitMs: 60_000 };

/** A worker silent this long is gone, and BullMQ's lock on its job expires (ms; `osfarm worker --lock-ms`). */
export const DEFAULT_LOCK_MS = 30_000;
/** How often the stalled-job check runs on a gone worker's queue (it costs one script call). */
const ADOPTER_STALLED_MS = 1_000;
/** A worker is gone only if it stays without a heartbeat this long after it was first seen so (Redis may just have come back). */
const GONE_CONFIRM_MS = 1_500;

/** How often the scheduler looks without being asked (a submit or a worker going idle asks at once). */
const TICK_MS = 500;
/** A waiting job's BullMQ delay is pushed forward when it would end within this. */
const EXTEND_MARGIN_MS = 5_000;
/** The least time between rounds asked for while one runs. */
const ROUND_SPACING_MS = 20;
/** How often it checks open jobs against their BullMQ placements. */
const RECONCILE_MS = 5_000;

const LEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0`;

interface Open {
  id: string;
  state: string;
  route: string;
  runner: string;
  tags: string[];
  createdMs: number;
}

export class Scheduler {
  private readonly me = randomBytes(6).toString('hex');
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private lastReconcile = 0;
  /** BullMQ stalled-job checkers on the own queues of workers that stopped answering. */
  private readonly adopters = new Map<string, Worker<FarmJobData>>();
  /** When each worker was first seen without a heartbeat. */
  private readonly silentSince = new Map<string, number>();
  /** When an idle worker was first denied each waiting job (its wait runs from then). */
  private readonly passedOver = new Map<string, number>();
  /** When the shared queue frees each waiting job (its BullMQ delay's end). */
  private readonly freeAt = new Map<string, number>();
  /** Round-robin: the next worker's turn. */
  private turn = 0;
  private readonly subscriber: Redis;

  constructor(
    private readonly store: RedisJobStore,
    private readonly queues: FarmQueues,
    private readonly connection: Redis,
    private readonly options: SchedulingOptions,
  ) {
    this.subscriber = connection.duplicate();
    this.subscriber.on('error', () => {});
  }

  async start(): Promise<void> {
    this.connection.defineCommand('farmLease', { numberOfKeys: 1, lua: LEASE });
    await this.subscriber.subscribe(this.store.keys.idleChannel);
    this.subscriber.on('message', () => this.kick());
    this.timer = setInterval(() => this.kick(), TICK_MS);
    this.kick();
  }

  /** Runs a round now (or right after the one running). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.round()
      .catch(() => {
        /* Redis away: the next tick tries again */
      })
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          // Asked again meanwhile: one more round, a little later, so a burst of submits and
          // idle signals costs a few rounds, not one each.
          this.again = false;
          setTimeout(() => this.kick(), ROUND_SPACING_MS);
        }
      });
  }

  /** Waits until the rounds asked for so far have run (tests and benches). */
  async settle(): Promise<void> {
    while (this.running) await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.running;
    await Promise.all([...this.adopters.values()].map((a) => a.close()));
    this.adopters.clear();
    this.subscriber.disconnect();
  }

  private async round(): Promise<void> {
    const k = this.store.keys;
    const held = await (this.connection as Redis & { farmLease(key: string, me: string, ms: number): Promise<number> }).farmLease(k.schedulerLease, this.me, TICK_MS * 6);
    if (held !== 1) return;
    const workers = await readWorkers(this.connection, k);
    const alive = new Map(workers.filter((w) => w.alive).map((w) => [w.id, w]));
    const now = Date.now();
    for (const id of [...this.silentSince.keys()]) if (alive.has(id)) this.silentSince.delete(id);
    for (const w of workers) if (!w.alive && !this.silentSince.has(w.id)) this.silentSince.set(w.id, now);
    const gone = workers.filter((w) => !w.alive && now - this.silentSince.get(w.id)! >= GONE_CONFIRM_MS);
    if (gone.length > 0) await this.recover(gone);
    if (now - this.lastReconcile > RECONCILE_MS) {
      this.lastReconcile = now;
      await this.reconcile((await this.store.routing(await this.store.openJobs())) as Open[], alive);
    }
    if (this.options.mode !== 'plain') await this.place(alive);
  }

  /**
   * Places waiting jobs on idle workers, best pair first: the pair whose worker holds the
   * deepest of the job's stages, then the oldest job. A worker may take a job only if no
   * live worker holds more of it, unless nobody holds anything of it or it has waited out
   * `waitMs` (then the least lost depth wins).
   */
  private async place(alive: Map<string, WorkerView>): Promise<void> {
    const k = this.store.keys;
    const [awaiting, placed] = await Promise.all([this.connection.smembers(k.awaiting), this.connection.smembers(k.placed)]);
    if (awaiting.length === 0) return;
    const jobs = (await this.store.routing([...awaiting, ...placed])) as Open[];
    const byId = new Map(jobs.map((j) => [j.id, j]));
    const unstarted = (j: Open | undefined) => j !== undefined && j.runner === '' && j.state === 'queued';
    const pending = awaiting.map((id) => byId.get(id)).filter((j): j is Open => unstarted(j) && parseRoute(j!.route).queue === SHARED_QUEUE);
    const onOwn = placed.map((id) => byId.get(id)).filter((j): j is Open => unstarted(j) && queueOwner(parseRoute(j!.route).queue) !== null);
    // The sets keep only what is still waiting to be placed, or placed and not started.
    const drop = (ids: string[], keep: Open[], key: string) => {
      const gone = ids.filter((id) => !keep.some((j) => j.id === id));
      return gone.length > 0 ? this.connection.srem(key, ...gone) : 0;
    };
    await Promise.all([drop(awaiting, pending, k.awaiting), drop(placed, onOwn, k.placed)]);
    if (pending.length === 0 || alive.size === 0) return;
    pending.sort((a, b) => a.createdMs - b.createdMs);
    if (this.options.mode === 'round-robin') return this.takeTurns(pending, [...alive.keys()].sort());
    // What each live worker holds or will hold: its cache, the job it runs, the jobs placed on it.
    const promised = new Map<string, Set<string>>();
    const busy = new Set<string>();
    for (const w of alive.values()) {
      promised.set(w.id, new Set(w.building));
      if (w.job) busy.add(w.id);
    }
    for (const j of onOwn) {
      const owner = queueOwner(parseRoute(j.route).queue)!;
      if (promised.has(owner)) {
        busy.add(owner);
        for (const t of j.tags) promised.get(owner)!.add(t);
      }
    }
    const holders = await holdersOf(this.connection, this.store.keys, pending.flatMap((j) => j.tags));
    const depth = (w: string, j: Open) => {
      for (let i = j.tags.length - 1; i >= 0; i--) if (promised.get(w)!.has(j.tags[i]!) || holders.get(j.tags[i]!)?.has(w)) return i + 1;
      return 0;
    };
    const now = Date.now();
    const expired = (j: Open) => now - (this.passedOver.get(j.id) ?? now) >= this.options.waitMs;
    const left = [...pending];
    let idle = [...alive.keys()].filter((w) => !busy.has(w));
    while (idle.length > 0 && left.length > 0) {
      let best: { w: string; j: Open; d: number; loss: number } | undefined;
      for (const j of left) {
        const top = Math.max(...[...alive.keys()].map((w) => depth(w, j)));
        for (const w of idle) {
          const d = depth(w, j);
          if (!(top === 0 || d === top || expired(j))) continue;
          const loss = top - d;
          if (!best || d > best.d || (d === best.d && (loss < best.loss || (loss === best.loss && j.createdMs < best.j.createdMs)))) best = { w, j, d, loss };
        }
      }
      if (!best) break;
      left.splice(left.indexOf(best.j), 1);
      if (await this.move(best.j, ownQueue(best.w), 0)) {
        await this.connection.multi().srem(k.awaiting, best.j.id).sadd(k.placed, best.j.id).exec();
        busy.add(best.w);
        for (const t of best.j.tags) promised.get(best.w)!.add(t);
      }
      idle = idle.filter((w) => w !== best!.w);
    }
    await this.keepWaiting(left, idle.length > 0, now);
  }

  /** Round-robin: each job, oldest first, on the next worker in turn (by id), whether it is busy or not. */
  private async takeTurns(pending: Open[], workers: string[]): Promise<void> {
    for (const j of pending) {
      const w = workers[this.turn++ % workers.length]!;
      if (await this.move(j, ownQueue(w), 0)) await this.connection.multi().srem(this.store.keys.awaiting, j.id).sadd(this.store.keys.placed, j.id).exec();
    }
  }

  /**
   * The jobs left waiting. The wait runs only while an idle worker is denied a job (a job
   * queued behind others, with every worker busy, loses nothing by waiting): from then on,
   * after `waitMs`, any idle worker may take it. Meanwhile the shared queue's delay, the
   * fallback for when no scheduler runs, is pushed forward so that BullMQ does not free the
   * job earlier.
   */
  private async keepWaiting(left: Open[], idleDenied: boolean, now: number): Promise<void> {
    const ids = new Set(left.map((j) => j.id));
    for (const id of [...this.passedOver.keys()]) if (!ids.has(id)) this.passedOver.delete(id);
    for (const id of [...this.freeAt.keys()]) if (!ids.has(id)) this.freeAt.delete(id);
    for (const j of left) {
      if (idleDenied && !this.passedOver.has(j.id)) this.passedOver.set(j.id, now);
      const due = this.freeAt.get(j.id) ?? j.createdMs + this.options.waitMs;
      const want = (this.passedOver.get(j.id) ?? now) + this.options.waitMs;
      if (due - now < EXTEND_MARGIN_MS && want > due) {
        await this.queues.delay(j.route, want - now);
        this.freeAt.set(j.id, want);
      }
    }
  }

  /** Moves a job to a new placement on `queue` (after `delayMs`); false if it had started, ended or moved. */
  private async move(j: Open, queue: string, delayMs: number, started = false): Promise<boolean> {
    const next = routeOf(queue, bullIdOf(j.id, parseRoute(j.route).n + 1));
    if (!(await this.store.reroute(j.id, j.route, next, started))) return false;
    await this.queues.add(next, j.id, delayMs);
    await this.queues.remove(j.route);
    return true;
  }

  /**
   * Workers that stopped answering: BullMQ's stalled check on their own queue returns the
   * job they ran (once its lock has expired) to waiting; waiting jobs there go back to the
   * shared queue, free for anyone at once (they have waited already). An emptied queue is
   * deleted and the worker forgotten; a worker that comes back registers again.
   */
  private async recover(dead: WorkerView[]): Promise<void> {
    for (const [id, adopter] of this.adopters) {
      if (!dead.some((w) => w.id === id)) {
        this.adopters.delete(id);
        await adopter.close();
      }
    }
    for (const w of dead) {
      const queue = ownQueue(w.id);
      const counts = await this.queues.counts(queue);
      if (counts.active! > 0 && !this.adopters.has(w.id)) {
        const adopter = new Worker<FarmJobData>(queue, null, {
          connection: this.connection,
          prefix: this.store.keys.bullPrefix,
          autorun: false,
          stalledInterval: ADOPTER_STALLED_MS,
          maxStalledCount: 2,
        });
        adopter.on('error', () => {});
        this.adopters.set(w.id, adopter);
        void adopter.startStalledCheckTimer().catch(() => {});
      }
      for (const b of await this.queues.waiting(queue)) {
        const [j] = (await this.store.routing([b.data.id])) as Open[];
        if (j && j.route === routeOf(queue, b.id!) && (await this.move(j, SHARED_QUEUE, 0, true))) {
          await this.store.append(j.id, { type: 'log', line: `osfarm: worker ${w.id} stopped answering: the job goes back to the shared queue, for the next free worker (it starts from that worker's deepest cached stage)` });
        } else await this.queues.remove(routeOf(queue, b.id!));
      }
      const left = await this.queues.counts(queue);
      if (Object.values(left).every((n) => n === 0)) {
        await this.adopters.get(w.id)?.close();
        this.adopters.delete(w.id);
        await this.queues.drop(queue);
        await forgetWorker(this.connection, this.store.keys, w.id);
        this.silentSince.delete(w.id);
      }
    }
  }

  /**
   * Open jobs whose placement is gone or failed: a placement lost (the server stopped between
   * moving a job and queueing it) is queued again; a job whose worker vanished without
   * finishing it, or that BullMQ failed (it stalled workers too often), is failed.
   */
  private async reconcile(open: Open[], alive: Map<string, WorkerView>): Promise<void> {
    for (const j of open) {
      const state = await this.queues.state(j.route);
      if (state === 'unknown' && j.runner === '') {
        await this.queues.add(j.route, j.id);
      } else if ((state === 'failed' || state === 'completed' || state === 'unknown') && j.runner !== '' && !alive.has(j.runner)) {
        const message = state === 'failed' ? `the job stopped its workers too often (the last was ${j.runner}): not trying again` : `worker ${j.runner} stopped before it finished the job`;
        await this.store.append(j.id, { type: 'error', error: { code: 'OSFARM_BUILD_FAILED', message } });
        await this.store.append(j.id, { type: 'state', state: 'failed' });
      }
    }
  }
}
