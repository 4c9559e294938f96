/**
 * Stages: cached, shared lower layers of image builds (core → base → appliance), each
 * named by the checksum of its configuration and started as a copy-on-write snapshot of
 * its parent. docs/stages.md describes the store.
 */
export * from './tag.js';
export * from './store.js';
export { Lease, type LeaseRecord } from './lease.js';
export { BACKENDS, backendByName, probeBackends, selectBackend, type BackendReport } from './cow/index.js';
export { COW_NAMES, type CowBackend, type CowName, type ProbeResult, type StageTrees, type View, type Workspace } from './cow/types.js';
export * from '../builder/plan.js';
export { ensureChain, stagePlans, toolVersion, type ChainOptions, type ChainResult, type StageReport } from '../builder/stages.js';
