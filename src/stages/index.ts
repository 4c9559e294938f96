/**
 * The stage store: a generic copy-on-write cache of trees, each named by the checksum of
 * what made it (its tag) and started as a snapshot of its parent. It knows nothing of
 * specs or builders: the builder (src/builder/plan.ts, stages.ts) plans the stages of a
 * spec and fills them. docs/stages.md describes the store.
 */
export * from './tag.js';
export * from './store.js';
export { Lease, type LeaseRecord } from './lease.js';
export { COW_METHODS, cowMethod, probeCowMethods, selectCowMethod, type CowMethodReport } from './cow/index.js';
export { COW_NAMES, type CowMethod, type CowName, type ProbeResult, type StageTrees, type View, type Workspace } from './cow/types.js';
