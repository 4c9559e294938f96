/**
 * The stage store: cached stages of image builds (core → base → appliance), each named
 * by its tag, each starting as a copy-on-write snapshot of its parent.
 *
 * Layout (docs/stages.md has the details):
 *
 *     <root>/store.json              format and the copy-on-write backend of this store
 *     <root>/<tag>/stage.json        a complete stage: its record …
 *     <root>/<tag>/tree/             … and its tree (overlayfs: only its changes)
 *     <root>/<tag>/derived/          files made from the stage and kept with it (its ext4 image)
 *     <root>/tmp/<tag>.<owner>.<r>/  a stage being built (or removed); never looks complete
 *     <root>/locks/<tag>.lock        per-tag build lock (flock, see lock.ts)
 *     <root>/leases/<tag>/<id>       "in use" marks (see lease.ts)
 *     <root>/checkouts/<id>/         writable working copies
 *     <root>/views/<id>/             read-only overlay views of complete stages
 *
 * A stage becomes visible only by the rename of its finished temp directory (stage.json
 * written and the file system synced before), so a build killed at any point leaves
 * nothing that looks complete; its temp is swept once its owner is gone.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { stagesMaxSize, stagesPath } from '../base/env.js';
import { OsfarmError, throwIfAborted } from '../base/errors.js';
import { parseSize } from '../base/size.js';
import { cowMethod, selectCowMethod } from './cow/index.js';
import { COW_NAMES, type CowMethod, type CowName } from './cow/types.js';
import { createLease, type Lease, type LeaseRecord, liveLeases, readLeases, sweepLeases } from './lease.js';
import { acquireLock, type FileLock } from '../host/lock.js';
import { fsyncDir, isSubvolume, removeTree, syncFs, treeUsage, writeFileAtomic } from '../host/fs.js';
import { mountsUnder } from '../host/mounts.js';
import { killProcessesIn, ownerAlive, ownerToken, randomSuffix } from '../host/procs.js';
import { STAGE_ERRORS } from './errors.js';
import { type CanonicalTagInput, canonicalTagInput, isStageTag, type StageTagInput, tagOfCanonical } from './tag.js';

export const STORE_FORMAT = 1;
export const STAGE_FORMAT = 1;

const STAGE = STAGE_ERRORS;

/** What stage.json holds. */
export interface StageRecord {
  format: number;
  tag: string;
  /** The parent stage's tag; null for a core stage. */
  parent: string | null;
  /** The copy-on-write backend that made the tree. */
  backend: CowName;
  /** A human label given by the builder ("debian bookworm core"); not part of the tag. */
  label: string | null;
  /** The canonical tag inputs (the config summary): sha256 of their canonical JSON is the tag. Null if the builder gave none. */
  inputs: CanonicalTagInput | null;
  /** Apparent size of the whole tree (what a full copy would take), in bytes. */
  size: number;
  /** Bytes this stage adds on disk over its parent (estimated for reflink: files created or rewritten). */
  ownSize: number;
  /** Entries in the whole tree. */
  entries: number;
  created: string;
  buildSeconds: number;
  lastUsed: string;
  hits: number;
}

/** A stage as listed: its record plus where it is and who uses it. */
export interface StageInfo extends StageRecord {
  dir: string;
  /** Live leases on this stage (checkouts, views, builds of children). */
  leases: LeaseRecord[];
  inUse: boolean;
  /** Tags of the stages built on this one. */
  children: string[];
}

export type StageEvent =
  | { type: 'hit'; tag: string }
  | { type: 'waiting'; tag: string }
  | { type: 'building'; tag: string; parent: string | null; backend: CowName }
  | { type: 'built'; tag: string; seconds: number; size: number; ownSize: number }
  | { type: 'gc'; removed: string[] }
  | { type: 'warning'; message: string };

export interface StageStoreOptions {
  /** The store directory; default $OSFARM_STAGES, else `<repo>/stages`. */
  root?: string;
  /** The repository (default $OSFARM_REPO or ./osfarm-repo), when `root` is not given. */
  repo?: string;
  /** Copy-on-write backend: `auto` (default: what store.json says, else the best that works here) or a name. */
  cow?: CowName | 'auto';
  /** Keep the store under this many bytes after each new stage (LRU). Default $OSFARM_STAGES_MAX; none if unset. Accepts 10G, 500M… */
  maxSize?: number | string;
  /** Create the store if missing (default true). With false, a missing store reads as empty. */
  create?: boolean;
  /** Sync the file system before a stage becomes visible (default true; tests may turn it off). */
  durable?: boolean;
  /** Progress of ensure/gc. */
  onEvent?: (event: StageEvent) => void;
}

export interface PopulateContext {
  tag: string;
  parentTag: string | null;
  signal?: AbortSignal;
}

/** Fills a new stage's directory, which starts as a copy of the parent's tree (or empty for a core). */
export type Populate = (dir: string, ctx: PopulateContext) => Promise<void>;

export interface EnsureOptions {
  signal?: AbortSignal;
  /** The tag inputs: when given, the tag must equal stageTag(inputs); they are kept in stage.json. */
  inputs?: StageTagInput;
  /** A human label for listings. */
  label?: string;
}

export interface EnsureResult {
  tag: string;
  /** The stage's full tree, read-only (valid until the lease is released). */
  dir: string;
  /** True when the stage was already there (or another process built it while we waited). */
  hit: boolean;
  /** True when we waited for another process building the same stage. */
  waited: boolean;
  stage: StageRecord;
  /** Keeps the stage (and its ancestors) from GC; release it when done. */
  lease: Lease;
}

export interface Checkout extends AsyncDisposable {
  tag: string;
  /** A writable copy-on-write working copy of the stage's full tree. */
  dir: string;
  lease: Lease;
  /** Unmounts and deletes the working copy and drops the lease. */
  release(): Promise<void>;
}

export interface GcOptions {
  /** Remove least recently used stages until the total is at most this many bytes (default: the store's maxSize). */
  maxSize?: number | string;
  dryRun?: boolean;
  signal?: AbortSignal;
}

export interface GcResult {
  maxSize: number;
  before: number;
  after: number;
  removed: { tag: string; ownSize: number; lastUsed: string; label: string | null }[];
  /** Stages kept although the bound asked for more room, because they (or stages built on them) are in use. */
  inUse: string[];
  dryRun: boolean;
  swept: SweepResult;
}

export interface SweepResult {
  temps: number;
  checkouts: number;
  views: number;
  leases: number;
}

export interface VerifyProblem {
  tag?: string;
  path: string;
  problem: string;
}

export interface VerifyResult {
  ok: boolean;
  root: string;
  stages: number;
  problems: VerifyProblem[];
  /** Unfinished builds and removals (not stages): live ones are in progress, dead ones will be swept. */
  leftovers: { path: string; live: boolean }[];
}

/** The store directory from options and environment. */
export function stagesRoot(opts: { root?: string; repo?: string } = {}): string {
  return stagesPath(opts);
}

const SUBDIRS = ['tmp', 'locks', 'leases', 'checkouts', 'views'] as const;

interface StoreFile {
  format: number;
  backend: CowName;
}

/** The owner token (`<pid>-<start>`) inside a temp, checkout or view name. */
function ownerOf(name: string): string | undefined {
  return name.split('.').find((part) => /^\d+-\d+$/.test(part));
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

export class StageStore {
  readonly root: string;
  readonly maxSize: number | undefined;
  private readonly requested: CowName | 'auto';
  private readonly durable: boolean;
  private readonly onEvent: (e: StageEvent) => void;
  private methodPromise: Promise<CowMethod> | undefined;

  private constructor(root: string, opts: StageStoreOptions) {
    this.root = root;
    this.requested = opts.cow ?? 'auto';
    if (this.requested !== 'auto') cowMethod(this.requested);
    const max = opts.maxSize ?? stagesMaxSize();
    this.maxSize = max === undefined || max === '' ? undefined : parseSize(max, 'the stage store size limit');
    this.durable = opts.durable ?? true;
    this.onEvent = opts.onEvent ?? (() => {});
  }

  /** Opens (and by default creates) the store. The backend is chosen on first use. */
  static async open(opts: StageStoreOptions = {}): Promise<StageStore> {
    const root = stagesRoot(opts);
    const store = new StageStore(root, opts);
    if (opts.create ?? true) {
      mkdirSync(root, { recursive: true });
      for (const d of SUBDIRS) mkdirSync(join(root, d), { recursive: true });
    }
    return store;
  }

  private path(...parts: string[]): string {
    return join(this.root, ...parts);
  }

  private readStoreFile(): StoreFile | null {
    try {
      const f = JSON.parse(readFileSync(this.path('store.json'), 'utf8')) as StoreFile;
      return f;
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      throw new OsfarmError('OSFARM_STAGE', `${this.path('store.json')} is damaged (${(err as Error).message}); run osfarm stages verify`);
    }
  }

  /** The name of the backend recorded for this store (null before the first stage). */
  recordedCowMethod(): CowName | null {
    return this.readStoreFile()?.backend ?? null;
  }

  /**
   * The store's copy-on-write backend: the one store.json records (a store keeps one
   * backend: overlayfs trees are diffs, btrfs trees are subvolumes); a different one asked
   * for is an error unless the store is empty; a new store probes and records its choice.
   */
  cowMethod(): Promise<CowMethod> {
    this.methodPromise ??= (async () => {
      const recorded = this.readStoreFile();
      if (recorded && (this.requested === 'auto' || this.requested === recorded.backend)) return cowMethod(recorded.backend);
      if (recorded && this.stageTags().length > 0) {
        throw new OsfarmError(
          'OSFARM_STAGE',
          `the stage store ${this.root} holds stages made with ${recorded.backend}; it cannot switch to ${this.requested} (remove its stages with osfarm stages gc --max-size 0, or use another store with --stages / $OSFARM_STAGES)`,
        );
      }
      mkdirSync(this.root, { recursive: true });
      const { method } = await selectCowMethod(this.root, this.requested);
      writeFileAtomic(this.path('store.json'), `${JSON.stringify({ format: STORE_FORMAT, backend: method.name }, null, 2)}\n`);
      return method;
    })();
    this.methodPromise.catch(() => {
      this.methodPromise = undefined;
    });
    return this.methodPromise;
  }

  // -------------------------------------------------------------------------
  // Reading

  /** Tags of every complete stage (directories named by a tag). */
  stageTags(): string[] {
    try {
      return readdirSync(this.root).filter(isStageTag);
    } catch (err) {
      if (errno(err) === 'ENOENT') return [];
      throw err;
    }
  }

  /** A complete stage's record, or null if there is no such stage. Throws OSFARM_STAGE if its stage.json is damaged. */
  get(tag: string): StageRecord | null {
    const r = this.readRecord(tag);
    if (r.error !== undefined) {
      throw new OsfarmError('OSFARM_STAGE', `stage ${tag} is damaged: ${this.path(tag, 'stage.json')}: ${r.error}; run osfarm stages verify, then osfarm stages rm ${tag.slice(0, 12)}`);
    }
    return r.rec;
  }

  private readRecord(tag: string): { rec: StageRecord | null; error?: string } {
    let text: string;
    try {
      text = readFileSync(this.path(tag, 'stage.json'), 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return { rec: null };
      return { rec: null, error: `cannot read it (${errno(err) ?? (err as Error).message})` };
    }
    let rec: StageRecord;
    try {
      rec = JSON.parse(text) as StageRecord;
    } catch (err) {
      return { rec: null, error: `it does not parse (${(err as Error).message})` };
    }
    if (rec === null || typeof rec !== 'object') return { rec: null, error: 'it is not a JSON object' };
    if (rec.tag !== tag) return { rec: null, error: `it names stage ${JSON.stringify(rec.tag)}` };
    return { rec };
  }

  /** The full tag for a unique prefix (at least 4 hex digits). */
  resolve(prefix: string): string {
    const p = prefix.toLowerCase();
    if (!/^[0-9a-f]{4,64}$/.test(p)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${JSON.stringify(prefix)} is not a stage tag or a prefix of one (4 to 64 hex digits)`);
    const matches = this.stageTags().filter((t) => t.startsWith(p));
    if (matches.length === 0) throw new OsfarmError('OSFARM_NOT_FOUND', `no stage ${prefix} in ${this.root}`);
    if (matches.length > 1) throw new OsfarmError('OSFARM_AMBIGUOUS', `${prefix} matches ${matches.length} stages: ${matches.map((m) => m.slice(0, 16)).join(', ')}`);
    return matches[0]!;
  }

  /** Every complete stage, with its leases and children. Damaged stages are left out (verify reports them). */
  list(): StageInfo[] {
    const records: StageRecord[] = [];
    for (const tag of this.stageTags()) {
      try {
        const r = this.get(tag);
        if (r) records.push(r);
      } catch {
        /* damaged: verify says so */
      }
    }
    const children = new Map<string, string[]>();
    for (const r of records) if (r.parent) children.set(r.parent, [...(children.get(r.parent) ?? []), r.tag]);
    return records.map((r) => {
      const leases = liveLeases(this.path('leases'), r.tag);
      return { ...r, dir: this.path(r.tag), leases, inUse: leases.length > 0, children: children.get(r.tag) ?? [] };
    });
  }

  /** The trees a stage's full view is made of: its own, then (layered backends) its ancestors'. */
  private layersOf(tag: string, backend: CowMethod): string[] {
    if (!backend.layered) return [this.path(tag, 'tree')];
    const layers: string[] = [];
    const seen = new Set<string>();
    let t: string | null = tag;
    while (t) {
      if (seen.has(t)) throw new OsfarmError('OSFARM_STAGE', `stage ${tag}: its parent chain loops at ${t}`);
      seen.add(t);
      const rec = this.get(t);
      if (!rec) throw new OsfarmError('OSFARM_STAGE', `stage ${tag}: its ancestor ${t} is missing; run osfarm stages verify`);
      layers.push(this.path(t, 'tree'));
      t = rec.parent;
    }
    return layers;
  }

  /** Records a use of a stage (last use; and a hit). Concurrent hits may lose a count, never the record. */
  private touch(tag: string, hit: boolean): StageRecord | null {
    const rec = this.get(tag);
    if (!rec) return null;
    rec.lastUsed = new Date().toISOString();
    if (hit) rec.hits += 1;
    try {
      writeFileAtomic(this.path(tag, 'stage.json'), `${JSON.stringify(rec, null, 2)}\n`);
    } catch (err) {
      // The stage was removed under us (it is not leased by anyone but us only after our lease): nothing to record.
      if (errno(err) !== 'ENOENT') throw err;
    }
    return rec;
  }

  // -------------------------------------------------------------------------
  // ensure / checkout

  /**
   * Makes sure the stage `tag` exists and leases it. A hit returns at once. A miss takes
   * the tag's build lock (another process building the same stage makes us wait and then
   * reuse its result), snapshots the parent (or starts empty for a core), runs `populate`
   * on the new tree, and makes the stage visible only when it is complete.
   */
  async ensure(tag: string, parentTag: string | null, populate: Populate, opts: EnsureOptions = {}): Promise<EnsureResult> {
    if (!isStageTag(tag)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${JSON.stringify(tag)} is not a stage tag (64 hex digits): compute it with stageTag()`);
    if (parentTag !== null && !isStageTag(parentTag)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `parent ${JSON.stringify(parentTag)} is not a stage tag or null`);
    if (parentTag === tag) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'a stage cannot be its own parent');
    let inputs: CanonicalTagInput | null = null;
    if (opts.inputs) {
      inputs = canonicalTagInput(opts.inputs);
      const computed = tagOfCanonical(inputs);
      if (computed !== tag) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `the tag ${tag.slice(0, 12)}… does not match its inputs (they hash to ${computed.slice(0, 12)}…)`);
      if (inputs.parent !== parentTag) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `the inputs name parent ${inputs.parent}, but ensure was given ${parentTag}`);
    }
    throwIfAborted(opts.signal);
    const backend = await this.cowMethod();
    mkdirSync(this.path('leases'), { recursive: true });
    // Lease first, then look: GC renames a stage away before it checks leases, so either it sees our lease or we see the stage gone.
    const lease = createLease(this.path('leases'), tag, opts.label ? `ensure ${opts.label}` : 'ensure');
    try {
      let rec = this.get(tag);
      let hit = true;
      let waited = false;
      if (!rec) {
        let lock = await acquireLock(this.lockPath(tag), { wait: false, ...STAGE });
        if (!lock) {
          waited = true;
          this.onEvent({ type: 'waiting', tag });
          lock = (await acquireLock(this.lockPath(tag), { signal: opts.signal, ...STAGE })) as FileLock;
        }
        try {
          rec = this.get(tag);
          if (!rec) {
            rec = await this.build(tag, parentTag, populate, backend, inputs, opts);
            hit = false;
          }
        } finally {
          await lock.release();
        }
      }
      if (hit) {
        rec = this.touch(tag, true) ?? rec;
        this.onEvent({ type: 'hit', tag });
      }
      if (rec.parent !== parentTag) {
        throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `stage ${tag.slice(0, 12)}… exists with parent ${rec.parent ?? 'none'}, not ${parentTag ?? 'none'}: the tag was not computed from this parent`);
      }
      const at = this.path('views', lease.id);
      const view = await backend.view({ layers: this.layersOf(tag, backend) }, at);
      lease.onRelease(async () => {
        await view.close();
        await removeTree(at, STAGE);
      });
      if (!hit && this.maxSize !== undefined) await this.autoGc();
      return { tag, dir: view.dir, hit, waited, stage: rec, lease };
    } catch (err) {
      await lease.release().catch(() => {});
      throw err;
    }
  }

  private lockPath(tag: string): string {
    return this.path('locks', `${tag}.lock`);
  }

  /** Builds a stage under its lock: temp dir, snapshot, populate, seal, size, sync, stage.json, rename. */
  private async build(
    tag: string,
    parentTag: string | null,
    populate: Populate,
    backend: CowMethod,
    inputs: CanonicalTagInput | null,
    opts: EnsureOptions,
  ): Promise<StageRecord> {
    // Holding the tag's lock: any temp of this tag is a dead build (or removal). Sweep it.
    await this.sweepTemps((name) => name.startsWith(`${tag}.`), true);
    let parentLease: Lease | undefined;
    const tmp = this.path('tmp', `${tag}.${ownerToken()}.${randomSuffix()}`);
    const t0 = process.hrtime.bigint();
    let ws: Awaited<ReturnType<CowMethod['snapshot']>> | undefined;
    try {
      let parentLayers: string[] | null = null;
      if (parentTag) {
        parentLease = createLease(this.path('leases'), parentTag, `parent of ${tag}`);
        const parent = this.get(parentTag);
        if (!parent) throw new OsfarmError('OSFARM_NOT_FOUND', `parent stage ${parentTag} is not in the store ${this.root}: ensure it first`);
        if (parent.backend !== backend.name) throw new OsfarmError('OSFARM_STAGE', `parent stage ${parentTag.slice(0, 12)}… was made with ${parent.backend}, this store now uses ${backend.name}`);
        parentLayers = this.layersOf(parentTag, backend);
      }
      this.onEvent({ type: 'building', tag, parent: parentTag, backend: backend.name });
      mkdirSync(tmp, { recursive: true });
      ws = await backend.snapshot(parentLayers ? { layers: parentLayers } : null, tmp);
      // Files copied from the parent have change times up to the marker's; files populate writes get later
      // ones (the pause outlasts the kernel's coarse timestamp granularity). Same clock, same file system.
      let since = 0;
      if (parentTag && !backend.layered && backend.sharesData) {
        const marker = join(tmp, 'since');
        writeFileSync(marker, '');
        since = statSync(marker).ctimeMs;
        rmSync(marker);
        await sleep(25);
      }
      throwIfAborted(opts.signal);
      await populate(ws.dir, { tag, parentTag, signal: opts.signal });
      throwIfAborted(opts.signal);
      const full = treeUsage(ws.dir, since);
      await ws.seal();
      const own = !parentTag || !backend.sharesData ? full.bytes : backend.layered ? treeUsage(join(tmp, 'tree')).bytes : full.changedBytes;
      if (this.durable) await syncFs(tmp, STAGE.errorCode);
      const now = new Date().toISOString();
      const rec: StageRecord = {
        format: STAGE_FORMAT,
        tag,
        parent: parentTag,
        backend: backend.name,
        label: opts.label ?? null,
        inputs,
        size: full.bytes,
        ownSize: own,
        entries: full.entries,
        created: now,
        buildSeconds: Math.round(Number(process.hrtime.bigint() - t0) / 1e6) / 1e3,
        lastUsed: now,
        hits: 0,
      };
      writeFileAtomic(join(tmp, 'stage.json'), `${JSON.stringify(rec, null, 2)}\n`);
      try {
        renameSync(tmp, this.path(tag));
      } catch (err) {
        if (errno(err) !== 'ENOTEMPTY' && errno(err) !== 'EEXIST') throw err;
        // Someone committed the same stage without our lock (a lock file was replaced): keep theirs.
        await removeTree(tmp, STAGE);
        const theirs = this.get(tag);
        if (theirs) return theirs;
        throw err;
      }
      fsyncDir(this.root);
      this.onEvent({ type: 'built', tag, seconds: rec.buildSeconds, size: rec.size, ownSize: rec.ownSize });
      return rec;
    } catch (err) {
      if (ws) await ws.discard().catch(() => {});
      await removeTree(tmp, STAGE).catch(() => {});
      throw err;
    } finally {
      await parentLease?.release();
    }
  }

  /**
   * A writable working copy of a complete stage (for building a child by hand, or for
   * packing an image): a btrfs snapshot, an overlay with a new upper layer, or a
   * (reflink) copy. The stage is leased until `release()`.
   */
  async checkout(tag: string, opts: { signal?: AbortSignal } = {}): Promise<Checkout> {
    if (!isStageTag(tag)) tag = this.resolve(tag);
    throwIfAborted(opts.signal);
    const backend = await this.cowMethod();
    const lease = createLease(this.path('leases'), tag, 'checkout');
    const dir = this.path('checkouts', lease.id);
    try {
      if (!this.get(tag)) throw new OsfarmError('OSFARM_NOT_FOUND', `no stage ${tag} in ${this.root}`);
      mkdirSync(dir, { recursive: true });
      const ws = await backend.checkout({ layers: this.layersOf(tag, backend) }, dir);
      lease.onRelease(async () => {
        await ws.discard();
        await removeTree(dir, STAGE);
      });
      this.touch(tag, false);
      const release = () => lease.release();
      return { tag, dir: ws.dir, lease, release, [Symbol.asyncDispose]: release };
    } catch (err) {
      await removeTree(dir, STAGE).catch(() => {});
      await lease.release().catch(() => {});
      throw err;
    }
  }

  // -------------------------------------------------------------------------
  // Removal, GC, sweeping

  /**
   * Removes one stage if nobody uses it and nothing is built on it. Under the tag's lock
   * (skipped if busy), the stage is renamed away into tmp/ first (so it vanishes at once),
   * then leases and children are checked again and it is put back if either appeared.
   */
  private async removeOne(tag: string): Promise<{ removed: boolean; reason?: string }> {
    const lock = await acquireLock(this.lockPath(tag), { wait: false, ...STAGE });
    if (!lock) return { removed: false, reason: 'busy (being built or removed)' };
    try {
      if (!existsSync(this.path(tag))) return { removed: false, reason: 'not in the store' };
      const check = (): string | undefined => {
        const leases = liveLeases(this.path('leases'), tag);
        if (leases.length > 0) return `in use (${leases.map((l) => `pid ${l.pid}: ${l.purpose}`).join('; ')})`;
        const kids = this.stageTags().filter((t) => {
          try {
            return this.get(t)?.parent === tag;
          } catch {
            return false;
          }
        });
        if (kids.length > 0) return `stages are built on it (${kids.map((k) => k.slice(0, 12)).join(', ')})`;
        return undefined;
      };
      const before = check();
      if (before) return { removed: false, reason: before };
      const away = this.path('tmp', `${tag}.rm.${ownerToken()}.${randomSuffix()}`);
      renameSync(this.path(tag), away);
      const after = check();
      if (after) {
        renameSync(away, this.path(tag));
        return { removed: false, reason: after };
      }
      fsyncDir(this.root);
      await removeTree(away, STAGE);
      return { removed: true };
    } finally {
      await lock.release();
    }
  }

  /**
   * Removes a stage (a tag or unique prefix). A stage with children is refused unless
   * `recursive`, which removes its whole subtree (children first). A stage in use is never removed.
   */
  async remove(tagOrPrefix: string, opts: { recursive?: boolean } = {}): Promise<string[]> {
    const tag = isStageTag(tagOrPrefix) && existsSync(this.path(tagOrPrefix)) ? tagOrPrefix : this.resolve(tagOrPrefix);
    const all = this.list();
    const kids = new Map<string, string[]>();
    for (const s of all) if (s.parent) kids.set(s.parent, [...(kids.get(s.parent) ?? []), s.tag]);
    const order: string[] = [];
    const visit = (t: string) => {
      for (const k of kids.get(t) ?? []) visit(k);
      order.push(t);
    };
    visit(tag);
    if (order.length > 1 && !opts.recursive) {
      throw new OsfarmError('OSFARM_STAGE', `stage ${tag.slice(0, 12)} has ${order.length - 1} stage(s) built on it: remove them first, or pass --recursive to remove them all`);
    }
    const removed: string[] = [];
    for (const t of order) {
      const r = await this.removeOne(t);
      if (!r.removed) {
        throw new OsfarmError('OSFARM_LOCKED', `cannot remove stage ${t.slice(0, 12)}: ${r.reason}${removed.length ? ` (removed ${removed.length} other stage(s) first)` : ''}`);
      }
      removed.push(t);
    }
    return removed;
  }

  /**
   * Removes least recently used stages until the store's total (the sum of each stage's
   * own size) is at most `maxSize`. Only leaves go (a parent only after its children), and
   * never a stage in use. Runs a sweep of dead temps, checkouts and leases first.
   */
  async gc(opts: GcOptions = {}): Promise<GcResult> {
    const max = opts.maxSize !== undefined ? parseSize(opts.maxSize, 'maxSize') : this.maxSize;
    if (max === undefined) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'gc needs a size bound: --max-size (e.g. 20G) or $OSFARM_STAGES_MAX');
    const dryRun = opts.dryRun ?? false;
    const gcLock = (await acquireLock(this.path('locks', 'gc.lock'), { signal: opts.signal, ...STAGE })) as FileLock;
    try {
      const swept = dryRun ? { temps: 0, checkouts: 0, views: 0, leases: 0 } : await this.sweep();
      const stages = this.list();
      const before = stages.reduce((n, s) => n + s.ownSize, 0);
      let total = before;
      const gone = new Set<string>();
      const stuck = new Set<string>();
      const removed: GcResult['removed'] = [];
      while (total > max) {
        throwIfAborted(opts.signal);
        const leaves = stages.filter((s) => !gone.has(s.tag) && !stuck.has(s.tag) && !s.inUse && s.children.every((c) => gone.has(c)));
        if (leaves.length === 0) break;
        leaves.sort((a, b) => a.lastUsed.localeCompare(b.lastUsed) || a.created.localeCompare(b.created) || a.tag.localeCompare(b.tag));
        const victim = leaves[0]!;
        const r = dryRun ? { removed: true } : await this.removeOne(victim.tag);
        if (r.removed) {
          gone.add(victim.tag);
          total -= victim.ownSize;
          removed.push({ tag: victim.tag, ownSize: victim.ownSize, lastUsed: victim.lastUsed, label: victim.label });
        } else {
          stuck.add(victim.tag);
        }
      }
      // What is kept only because it is in use, directly or through a stage built on it.
      const inUse = total > max ? stages.filter((s) => !gone.has(s.tag) && (s.inUse || stuck.has(s.tag))).map((s) => s.tag) : [];
      if (removed.length > 0 && !dryRun) this.onEvent({ type: 'gc', removed: removed.map((r) => r.tag) });
      return { maxSize: max, before, after: total, removed, inUse, dryRun, swept };
    } finally {
      await gcLock.release();
    }
  }

  private async autoGc(): Promise<void> {
    try {
      await this.gc({ maxSize: this.maxSize });
    } catch (err) {
      this.onEvent({ type: 'warning', message: `keeping the stage store under ${this.maxSize} bytes failed: ${(err as Error).message}` });
    }
  }

  /** Removes temps (tmp/) whose owner is dead — or all matching `filter` when `force` (we hold their tag's lock). */
  private async sweepTemps(filter: (name: string) => boolean = () => true, force = false): Promise<number> {
    let names: string[];
    try {
      names = readdirSync(this.path('tmp'));
    } catch {
      return 0;
    }
    let n = 0;
    for (const name of names.filter(filter)) {
      const owner = ownerOf(name);
      if (!force && owner && ownerAlive(owner)) continue;
      // Tools the dead build started (mmdebstrap, apt in a chroot) may still be writing there.
      await killProcessesIn(this.path('tmp', name), STAGE);
      await removeTree(this.path('tmp', name), STAGE);
      n++;
    }
    return n;
  }

  /** Removes what dead processes left: temps, checkouts and views (unmounted first), leases, probe dirs. */
  async sweep(): Promise<SweepResult> {
    const result: SweepResult = { temps: await this.sweepTemps(), checkouts: 0, views: 0, leases: 0 };
    for (const kind of ['checkouts', 'views'] as const) {
      let names: string[] = [];
      try {
        names = readdirSync(this.path(kind));
      } catch {
        /* none */
      }
      for (const name of names) {
        const owner = ownerOf(name);
        if (owner && ownerAlive(owner)) continue;
        await removeTree(this.path(kind, name), STAGE);
        result[kind]++;
      }
    }
    result.leases = sweepLeases(this.path('leases'));
    let top: string[] = [];
    try {
      top = readdirSync(this.root);
    } catch {
      /* none */
    }
    for (const name of top) {
      const probe = /^\.probe-(\d+-\d+)-/.exec(name);
      const tmpFile = /\.(\d+-\d+)\.[0-9a-f]+\.tmp$/.exec(name);
      const owner = probe?.[1] ?? tmpFile?.[1];
      if (owner && !ownerAlive(owner)) await removeTree(this.path(name), STAGE);
    }
    // Half-written stage.json replacements (a process killed while recording a hit).
    for (const tag of this.stageTags()) {
      let files: string[] = [];
      try {
        files = readdirSync(this.path(tag));
      } catch {
        continue;
      }
      for (const f of files) {
        const m = /^stage\.json\.(\d+-\d+)\.[0-9a-f]+\.tmp$/.exec(f);
        if (m && !ownerAlive(m[1]!)) rmSync(this.path(tag, f), { force: true });
      }
    }
    return result;
  }

  /**
   * Checks the store: every stage's stage.json parses and names it, its tree exists, its
   * parent exists, its inputs hash to its tag; nothing unexpected sits among the stages.
   * Unfinished builds in tmp/ are listed as leftovers, never as stages.
   */
  verify(): VerifyResult {
    const problems: VerifyProblem[] = [];
    const leftovers: VerifyResult['leftovers'] = [];
    let names: string[];
    try {
      names = readdirSync(this.root);
    } catch (err) {
      return { ok: false, root: this.root, stages: 0, problems: [{ path: this.root, problem: `cannot read the store: ${errno(err) ?? (err as Error).message}` }], leftovers };
    }
    let storeBackend: string | null = null;
    try {
      storeBackend = this.readStoreFile()?.backend ?? null;
      if (storeBackend !== null && !(COW_NAMES as readonly string[]).includes(storeBackend)) {
        problems.push({ path: this.path('store.json'), problem: `unknown backend ${JSON.stringify(storeBackend)}` });
      }
    } catch (err) {
      problems.push({ path: this.path('store.json'), problem: (err as Error).message });
    }
    const tags = names.filter(isStageTag);
    const records = new Map<string, StageRecord>();
    for (const tag of tags) {
      const dir = this.path(tag);
      const { rec, error } = this.readRecord(tag);
      if (error !== undefined) {
        problems.push({ tag, path: join(dir, 'stage.json'), problem: `stage.json is damaged: ${error}` });
        continue;
      }
      if (!rec) {
        problems.push({ tag, path: dir, problem: 'a stage directory without stage.json (not made by osfarm, or damaged)' });
        continue;
      }
      records.set(tag, rec);
      const bad = (problem: string, path = join(dir, 'stage.json')) => problems.push({ tag, path, problem });
      if (!(COW_NAMES as readonly string[]).includes(rec.backend)) bad(`unknown backend ${JSON.stringify(rec.backend)}`);
      else if (storeBackend && rec.backend !== storeBackend) bad(`made with ${rec.backend}, but the store uses ${storeBackend}`);
      if (rec.parent !== null && !isStageTag(rec.parent)) bad(`parent ${JSON.stringify(rec.parent)} is not a tag`);
      for (const k of ['size', 'ownSize', 'hits'] as const) if (typeof rec[k] !== 'number') bad(`${k} is not a number`);
      for (const k of ['created', 'lastUsed'] as const) if (typeof rec[k] !== 'string' || Number.isNaN(Date.parse(rec[k]))) bad(`${k} is not a date`);
      const tree = join(dir, 'tree');
      let isDir = false;
      try {
        isDir = statSync(tree).isDirectory();
      } catch {
        /* missing */
      }
      if (!isDir) bad('its tree is missing', tree);
      else if (rec.backend === 'btrfs' && !isSubvolume(tree)) bad('its tree is not a btrfs subvolume', tree);
      if (rec.inputs) {
        try {
          const t = tagOfCanonical(rec.inputs);
          if (t !== tag) bad(`its inputs hash to ${t.slice(0, 12)}…, not to its tag`);
          if (rec.inputs.parent !== rec.parent) bad(`its inputs name parent ${rec.inputs.parent}, stage.json says ${rec.parent}`);
        } catch (err) {
          bad(`its inputs cannot be hashed: ${(err as Error).message}`);
        }
      }
    }
    for (const [tag, rec] of records) {
      if (rec.parent && !records.has(rec.parent)) {
        problems.push({ tag, path: this.path(tag, 'stage.json'), problem: `its parent ${rec.parent.slice(0, 12)}… is missing${rec.backend === 'overlayfs' ? ' (its overlay layers are broken)' : ''}` });
      }
      // A loop in the parent chain.
      const seen = new Set<string>([tag]);
      let p = rec.parent;
      while (p && records.has(p)) {
        if (seen.has(p)) {
          problems.push({ tag, path: this.path(tag, 'stage.json'), problem: 'its parent chain loops' });
          break;
        }
        seen.add(p);
        p = records.get(p)!.parent;
      }
    }
    const known = new Set<string>(['store.json', ...SUBDIRS]);
    for (const name of names) {
      if (isStageTag(name) || known.has(name) || name.startsWith('.probe-') || name.endsWith('.tmp')) continue;
      problems.push({ path: this.path(name), problem: 'unexpected entry in the stage store (not a stage: its name is not a tag)' });
    }
    let temps: string[] = [];
    try {
      temps = readdirSync(this.path('tmp'));
    } catch {
      /* none */
    }
    for (const name of temps) {
      const owner = ownerOf(name);
      leftovers.push({ path: this.path('tmp', name), live: owner ? ownerAlive(owner) : false });
    }
    for (const m of new Set(mountsUnder(this.root))) {
      const rel = m.slice(this.root.length + 1).split('/');
      const owner = ['tmp', 'checkouts', 'views'].includes(rel[0] ?? '') ? ownerOf(rel[1] ?? '') : undefined;
      if (owner !== undefined && !ownerAlive(owner)) leftovers.push({ path: m, live: false });
    }
    return { ok: problems.length === 0, root: this.root, stages: records.size, problems, leftovers };
  }

  /**
   * Where a file made from a complete stage is kept with it (the disk writer's ext4 image of
   * the stage, docs/disk.md): `<root>/<tag>/derived/<name>`, removed with the stage. Such
   * files are caches: written whole under a temporary name and renamed, never counted in
   * the stage's size.
   */
  derivedPath(tag: string, name: string): string {
    if (!isStageTag(tag) || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `derivedPath(${tag}, ${name}): a stage tag and a plain file name`);
    return this.path(tag, 'derived', name);
  }

  /** Leases on one stage (live and dead). */
  leases(tag: string): LeaseRecord[] {
    return readLeases(this.path('leases'), tag);
  }
}
