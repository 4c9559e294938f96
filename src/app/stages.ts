/** The stage store as the front ends show it: a summary listing, and garbage collection (also of a store not made yet). */
import { existsSync } from 'node:fs';

import { type GcResult, type StageInfo, StageStore } from '../stages/store.js';

export interface StageSummary {
  root: string;
  /** The store's copy-on-write method (null before its first stage). */
  backend: string | null;
  /** The sum of the stages' own sizes: what the store takes on disk. */
  totalOwnSize: number;
  /** Most recently used first. */
  stages: StageInfo[];
}

/** Every stage of the store at `root`, most recently used first; a store not made yet lists as empty (and is not made). */
export async function stageSummary(root: string): Promise<StageSummary> {
  const store = await StageStore.open({ root, create: false });
  const stages = store.list().sort((a, b) => b.lastUsed.localeCompare(a.lastUsed));
  return { root: store.root, backend: existsSync(store.root) ? store.recordedCowMethod() : null, totalOwnSize: stages.reduce((n, s) => n + s.ownSize, 0), stages };
}

/** Removes least recently used stages until the store fits in `maxSize` (see StageStore.gc); a store not made yet has nothing to remove. */
export async function gcStages(root: string, opts: { maxSize: number; dryRun?: boolean; signal?: AbortSignal }): Promise<GcResult> {
  const dryRun = opts.dryRun ?? false;
  if (!existsSync(root)) return { maxSize: opts.maxSize, before: 0, after: 0, removed: [], inUse: [], dryRun, swept: { temps: 0, checkouts: 0, views: 0, leases: 0 } };
  const store = await StageStore.open({ root, create: false });
  return store.gc({ maxSize: opts.maxSize, dryRun, signal: opts.signal });
}
