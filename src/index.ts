/**
 * osfarm: build Linux images in a chroot, cache their stages, keep them in a
 * repository, and move them between machines sending only the blocks the receiver lacks.
 */
export { OsfarmError, type ErrorCode } from './base/errors.js';
export * from './blocks/index.js';
export * from './pack/index.js';
export * from './repo/index.js';
export { pull, parseImageUrl, type PullOptions, type PullProgress, type PullResult } from './transfer/http/pull.js';
export { createPullHandler, listenHttp, type HttpHandler, type PullHandler, type PullServeStats } from './transfer/http/serve.js';
export * from './stages/index.js';
export * from './builder/plan.js';
export { ensureChain, stagePlans, toolVersion, type ChainOptions, type ChainResult, type StageReport } from './builder/stages.js';
export * from './images/index.js';
export { createWebHandler, startServer, type WebHandler, type WebOptions, type StartedServer } from './web/index.js';
