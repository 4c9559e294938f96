/**
 * The builder's use of the stage store: for each stage of a spec's chain, core first,
 * compute its tag, then `ensure` it in the store (a hit returns at once; a miss snapshots
 * the parent copy-on-write and runs that stage's step; a build of the same stage elsewhere
 * is waited for and reused). The last stage's tree is what the outputs are packed from.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { Driver, Phase } from './drivers/types.js';
import { runChecked } from '../host/process.js';
import type { BuildSpec } from '../spec/spec.js';
import { planStages, type StagePlan } from './plan.js';
import type { CowName } from '../stages/cow/types.js';
import type { Lease } from '../stages/lease.js';
import { type StageEvent, StageStore } from '../stages/store.js';
import { stagePopulate } from './steps.js';

export interface StageReport {
  tag: string;
  parent: string | null;
  label: string;
  /** Found in the store (or built by another process while we waited). */
  hit: boolean;
  waited: boolean;
  seconds: number;
}

export interface ChainOptions {
  driver: Driver;
  osfarmVersion: string;
  sourceDateEpoch: number | null;
  /** Scratch directory of this build. */
  buildDir: string;
  /** Shared .deb cache of this distribution. */
  cacheDir: string;
  /** Shared package-list caches. */
  listsDir: string;
  /** The stage store: default $OSFARM_STAGES, else `<repo>/stages`. */
  stages?: string;
  repo?: string;
  cow?: CowName | 'auto';
  /** Keep the store under this size (LRU) after each new stage; default $OSFARM_STAGES_MAX. */
  maxSize?: number | string;
  signal?: AbortSignal;
  log(line: string): void;
  phase(phase: Phase, detail?: string): void;
  onStage?(report: StageReport): void;
  onStoreEvent?(event: StageEvent): void;
}

/** A stage of the chain and its full tree (read-only, until the chain is released). */
export interface StageTree {
  tag: string;
  dir: string;
  /** For listings and the OCI history: "debian bookworm core (core)", "+ base". */
  label: string;
}

export interface ChainResult {
  /** The last stage's full tree, read-only, until release(). */
  dir: string;
  /** Every stage's full tree, core first (the last is `dir`): the disk writers lay a file system out stage by stage. */
  trees: StageTree[];
  stages: StageReport[];
  store: StageStore;
  /** The copy-on-write backend of the store. */
  cow: CowName;
  /** Drops the leases on the chain's stages (unmounting their views). */
  release(): Promise<void>;
}

const versions = new Map<string, Promise<string>>();

/** The first line of `<tool> --version` (cached per process); "<tool> (version unknown)" if it has none. */
export function toolVersion(tool: string): Promise<string> {
  let v = versions.get(tool);
  if (!v) {
    v = runChecked('asking its version', tool, ['--version'])
      .then((out) => out.split('\n').find((l) => l.trim() !== '')!.trim())
      .catch(() => `${tool} (version unknown)`);
    versions.set(tool, v);
  }
  return v;
}

/** Where osfarm's own tree-making code starts: the stage steps and every bootstrap driver. */
const STEP_ROOTS = ['builder/steps', 'builder/drivers/index'];
/** A relative import that stays in the code at run time (`import type` and `export type` vanish). */
const RUNTIME_IMPORT = /^\s*(?:import|export)\s+(?!type\s)(?:[^'";]*?\sfrom\s+)?['"](\.[^'"]+)['"]|\bimport\(\s*['"](\.[^'"]+)['"]\s*\)/gm;
let stepsDigest: string | undefined;

/**
 * sha256 (12 hex digits) of the code of osfarm's tree-making steps, as installed (dist/*.js,
 * or src/*.ts when run from source): the step and driver modules and every module they
 * import, found by following their imports, so a new helper module counts without being
 * listed anywhere. With osfarm's version it names osfarm's own part in a tree, so a
 * changed step is never answered by a stage the old code made.
 */
export function osfarmStepsDigest(): string {
  if (stepsDigest === undefined) {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const ext = existsSync(join(root, `${STEP_ROOTS[0]}.js`)) ? '.js' : '.ts';
    const seen = new Set<string>();
    const visit = (module: string) => {
      if (seen.has(module)) return;
      seen.add(module);
      const text = readFileSync(join(root, `${module}${ext}`), 'utf8');
      for (const m of text.matchAll(RUNTIME_IMPORT)) {
        const target = relative(root, resolve(root, dirname(module), m[1] ?? m[2]!)).replace(/\.js$/, '');
        if (!target.startsWith('..')) visit(target);
      }
    };
    STEP_ROOTS.forEach(visit);
    const h = createHash('sha256');
    for (const m of [...seen].sort()) h.update(`${m}\0${readFileSync(join(root, `${m}${ext}`))}\0`);
    stepsDigest = h.digest('hex').slice(0, 12);
  }
  return stepsDigest;
}

/** The stage plans of a spec for a driver (tags only; nothing is built). */
export async function stagePlans(spec: BuildSpec, driver: Driver, osfarmVersion: string, sourceDateEpoch: number | null): Promise<StagePlan[]> {
  const osfarm = `${osfarmVersion} (steps ${osfarmStepsDigest()})`;
  const driverVersion = `${await toolVersion(driver.tool)}; osfarm ${osfarm}`;
  return planStages(spec, { driver: driver.tool, driverVersion, osfarmVersion: osfarm, sourceDateEpoch });
}

/** Ensures every stage of the spec's chain in the store and returns the last one's tree. */
export async function ensureChain(spec: BuildSpec, opts: ChainOptions): Promise<ChainResult> {
  const plans = await stagePlans(spec, opts.driver, opts.osfarmVersion, opts.sourceDateEpoch);
  const onEvent = (e: StageEvent) => {
    if (e.type === 'waiting') opts.log(`osfarm: stage ${e.tag.slice(0, 12)} is being built by another build: waiting to reuse it`);
    else if (e.type === 'gc') opts.log(`osfarm: stage store over its size bound: removed ${e.removed.length} least recently used stage(s)`);
    else if (e.type === 'warning') opts.log(`osfarm: ${e.message}`);
    opts.onStoreEvent?.(e);
  };
  const store = await StageStore.open({ root: opts.stages, repo: opts.repo, cow: opts.cow, maxSize: opts.maxSize, onEvent });
  const cow = (await store.cowMethod()).name;
  // What killed builds left (unfinished stages, their mounts and tools, views, leases) goes first.
  try {
    const swept = await store.sweep();
    const n = swept.temps + swept.views + swept.checkouts;
    if (n > 0) opts.log(`osfarm: swept ${swept.temps} unfinished stage(s), ${swept.views} view(s) and ${swept.checkouts} checkout(s) left by dead builds`);
  } catch (err) {
    opts.log(`osfarm: sweeping what dead builds left in the stage store failed (osfarm stages verify shows it): ${(err as Error).message}`);
  }
  opts.log(`osfarm: stage store ${store.root} (${cow}); ${plans.length} stage(s): ${plans.map((p) => p.tag.slice(0, 12)).join(' → ')}`);
  const stages: StageReport[] = [];
  // Every stage stays leased (its view mounted) until the outputs are written.
  const held: { lease: Lease; tree: StageTree }[] = [];
  const releaseAll = async () => {
    let failure: unknown;
    for (const h of [...held].reverse()) await h.lease.release().catch((err: unknown) => (failure ??= err));
    held.length = 0;
    if (failure) throw failure;
  };
  try {
    for (const plan of plans) {
      const t0 = Date.now();
      const populate = stagePopulate(plan, {
        driver: opts.driver,
        buildDir: join(opts.buildDir, plan.tag.slice(0, 12)),
        cacheDir: opts.cacheDir,
        listsDir: opts.listsDir,
        sourceDateEpoch: opts.sourceDateEpoch,
        log: opts.log,
        phase: opts.phase,
      });
      const r = await store.ensure(plan.tag, plan.parentTag, populate, { inputs: plan.inputs, label: plan.label, signal: opts.signal });
      held.push({ lease: r.lease, tree: { tag: plan.tag, dir: r.dir, label: plan.label } });
      const report: StageReport = { tag: plan.tag, parent: plan.parentTag, label: plan.label, hit: r.hit, waited: r.waited, seconds: (Date.now() - t0) / 1000 };
      stages.push(report);
      opts.log(`osfarm: stage ${plan.tag.slice(0, 12)} ${plan.label}: ${r.hit ? (r.waited ? 'built by another build, reused' : 'cached') : 'built'} (${report.seconds.toFixed(1)} s)`);
      opts.onStage?.(report);
    }
  } catch (err) {
    await releaseAll().catch(() => {});
    throw err;
  }
  const trees = held.map((h) => h.tree);
  return { dir: trees[trees.length - 1]!.dir, trees, stages, store, cow, release: releaseAll };
}
