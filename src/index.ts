/**
 * osfarm: build Linux images in a chroot, cache their stages, keep them in a
 * repository, and move them between machines sending only the blocks the receiver lacks.
 *
 * Conventions of the whole API (docs/api.md):
 * - a repository is named by the option `repo` (its directory), the stage store by `stages`;
 * - long calls take an `AbortSignal` and reject with an AbortError (a TimeoutError for
 *   `AbortSignal.timeout()`) whose `code` is OSFARM_ABORTED and whose `cause` is the
 *   signal's reason; every other error is an OsfarmError with a stable `code`;
 * - build, push, pull and the receiver report through `onEvent`: objects keyed by `type`,
 *   progress as `{ type: 'progress', done, total, … }`, the last one `{ type: 'result', result }`;
 * - what holds resources (Repository, Receiver, servers, handlers, checkouts, leases) has
 *   `close()`/`release()` and `Symbol.asyncDispose` (`await using`).
 */

// Errors and events
export { abortError, errorJson, isAbortError, OsfarmError, toOsfarmError, type ErrorCode } from './base/errors.js';
export type { ResultEvent } from './base/events.js';
export type { ProgressEvent, ProgressListener } from './base/progress.js';
export { VERSION } from './base/version.js';

// Blocks, the block-aligned tar, the repository
export * from './blocks/index.js';
export * from './pack/index.js';
export * from './repo/index.js';

// The spec: parse, validate, canonical form, request checksum (specDigest), XML
export {
  canonicalJson,
  canonicalSpec,
  hostPathIssues,
  loadSpec,
  parseSpec,
  parseTarget,
  specDigest,
  specFromObject,
  specToXml,
  validateSpec,
  SpecError,
  SPEC_VERSION,
  type BuildSpec,
  type CanonicalSpec,
  type SpecFormat,
  type SpecIssue,
  type SpecOptions,
  type SpecValidation,
} from './spec/index.js';
export { ARCHITECTURES, DISTRIBUTIONS, OUTPUT_FORMATS, SPEC_FIELDS, type Architecture, type Distribution, type OutputFormat, type SpecField } from './spec/index.js';

// Building
export { build, outputPaths, type BuildEvent, type BuildOptions, type BuildOutput, type BuildResult, type Phase } from './builder/index.js';
export { planStages, specChain, type StagePlan } from './builder/plan.js';
export { ensureChain, stagePlans, toolVersion, type ChainOptions, type ChainResult, type StageReport } from './builder/stages.js';

// The stage store
export {
  StageStore,
  stagesRoot,
  stageTag,
  isStageTag,
  Lease,
  COW_NAMES,
  probeCowMethods,
  type Checkout,
  type CowName,
  type EnsureOptions,
  type EnsureResult,
  type GcOptions,
  type GcResult,
  type LeaseRecord,
  type Populate,
  type PopulateContext,
  type StageEvent,
  type StageInfo,
  type StageRecord,
  type StageStoreOptions,
  type StageTagInput,
  type SweepResult,
  type VerifyResult,
} from './stages/index.js';

// Images by request: lookup, details, spec export
export * from './images/index.js';

// Transfers: push and receive over TCP, pull and serve over HTTP, lazy pull over NBD
export { push, type PushEvent, type PushOptions, type PushProgress, type PushResult } from './transfer/push/push.js';
export { Receiver, type ReceiveEvent, type ReceiverOptions, type ReceiverTotals, type TransferReport } from './transfer/push/receive.js';
export { resolveToken, type TokenOptions } from './transfer/push/auth.js';
export { pull, parseImageUrl, type PullEvent, type PullOptions, type PullProgress, type PullResult } from './transfer/http/pull.js';
// Trust and provenance: signing keys, signed image manifests, verified pulls (docs/trust.md)
export { exportPublicKey, generateKeys, listKeys, loadSigningKey, readPublicKey, trustedKeys, trustKey, type KeyInfo } from './trust/keys.js';
export {
  checkIndex,
  checkMeta,
  checkPushed,
  describeImage,
  MANIFEST_FILE,
  metaDigest,
  readManifest,
  SIGNATURE_FILE,
  signImage,
  verifyManifest,
  writeManifest,
  type ImageManifest,
  type PushedImage,
  type SignedManifest,
} from './trust/manifest.js';
export { formatPublicKey, parsePublicKey, parseSignature, signMessage, verifyMessage, type PublicKey, type SecretKey, type Signature } from './trust/minisign.js';
export { NAMES_FILE, nameHistory, recordTags, recordUntag, type NameRecord } from './trust/names.js';
export { removeImage, resignLosers, tagImage, type TagResult, untagImage } from './trust/tags.js';
export { imageArrived, type Arrival } from './trust/provenance.js';
export { certificateFingerprint, normalizeFingerprint, type TlsClientOptions, type TlsServerOptions } from './trust/tls.js';
export { createPullHandler, type HttpHandler, type PullHandler, type PullHandlerOptions, type PullServeStats } from './transfer/http/serve.js';
export { pullLazy, type LazyEvent, type LazyExport, type LazyProgress, type LazyPullOptions, type LazyPullResult } from './transfer/lazy/export.js';
export { readBootProfile, writeBootProfile, type BootProfile, type ProfileRun } from './transfer/lazy/profile.js';
export type { Serving } from './app/serve.js';

// Serving a repository: pull endpoints, web GUI and REST API
export {
  createHandler,
  createWebHandler,
  serve,
  type HandlerOptions,
  type OsfarmHandler,
  type OsfarmServer,
  type ServeOptions,
  type WebHandler,
  type WebOptions,
} from './web/index.js';

// Booting images under qemu: console, SSH, stop (docs/boot.md)
export { boot, type Accel, type BootInfo, type BootMode, type BootOptions, type DiskSource, type ExecResult, type QemuExit, VmHandle, type WaitResult } from './boot/index.js';
// Lazy boot: an image booted from its origin before it has arrived (docs/lazy-boot.md)
export { bootAny, bootLazy, lazySource, type LazyBootOptions } from './app/lazy-boot.js';
