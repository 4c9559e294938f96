/**
 * The repository: a directory of images named by digest, with one persistent hash table
 * over every block of every image. It answers "which of this image's blocks do I already
 * have, and where?" (`plan`) and builds new images from local blocks plus supplied ones,
 * verifying every block (`assemble`, `beginAssembly`). Format: docs/repository-format.md.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { callNative, callNativeSync, OsfarmError, throwIfAborted } from '../base/errors.js';
import { withProgress } from '../base/progress.js';
import type { HashName, LongRunning } from '../blocks/index.js';
import {
  native,
  type AssemblerHandle,
  type RepoAddOptions,
  type RepoImage,
  type RepoPlan,
  type RepositoryHandle,
  type RepoRebuildReport,
  type RepoStats as NativeRepoStats,
} from '../base/native.js';

export { DEFAULT_REPOSITORY, defaultRepositoryPath } from '../base/env.js';

/** The file that makes a directory a repository, written last by `init` (docs/repository-format.md). */
const FORMAT_FILE = 'osfarm-repo.json';

export interface InitOptions {
  /** Block digest, fixed for the repository's life. Default sha1. */
  hash?: HashName;
  /** Block size in bytes, a power of two from 512 to 1 MiB, fixed. Default 4096. */
  blockSize?: number;
  /**
   * SHA-1 repositories only: every block a push or pull brings is checked for the traces of
   * a SHA-1 collision attack (sha1dc, as git does) and refused if it has them (docs/trust.md).
   * For repositories that take images from pushers they do not trust. Default false.
   */
  detectCollisions?: boolean;
}

export interface OpenOptions {
  /** Wait while another process holds the lock (default). With false, throw OSFARM_LOCKED. */
  waitForLock?: boolean;
}

/** An image in the repository. */
export interface ImageEntry {
  /** The image digest (hex): a digest over its block digests at the repository's parameters. */
  digest: string;
  /** Its tags (names), in the order they were given; a tag is on one image only. */
  tags: string[];
  /** Its first tag, if it has any: the label printed where one name fits. */
  name?: string;
  /** The file name it was added from. */
  originalName?: string;
  /** "tar", "raw", ... */
  format: string;
  size: number;
  blockCount: number;
  added: Date;
  /** The metadata attached when it was added (parsed JSON). */
  meta?: unknown;
  /** The image data. Read-only: images are immutable and share storage. */
  path: string;
  /** Its `.osfi` index. */
  indexPath: string;
}

/** What `add`, `assemble` and `finish` record with an image. */
export interface ImageOptions {
  /** A tag (name) for the image; a tag is on one image only, so this takes it from any image that had it. */
  name?: string;
  /** More tags, given after `name`; an image keeps the tags it had. */
  tags?: string[];
  /** Any JSON-serialisable value (e.g. the build spec that produced the image). */
  meta?: unknown;
  /** "tar", "raw", ...; detected from the data when absent. */
  format?: string;
  /** Recorded as the original file name. */
  originalName?: string;
}

/** A range of consecutive blocks. */
export interface PlanRun {
  first: number;
  count: number;
}

/** Where the blocks of a wanted image would come from. */
export interface Plan {
  /** The wanted image's digest. */
  digest: string;
  imageSize: number;
  blockSize: number;
  blockCount: number;
  /** The wanted image is already in the repository. */
  alreadyPresent: boolean;
  zeroBlocks: number;
  zeroBytes: number;
  /** Blocks found in the repository's images. */
  presentBlocks: number;
  presentBytes: number;
  /** Blocks not in the repository that repeat an earlier missing block of the same image. */
  duplicateBlocks: number;
  duplicateBytes: number;
  /** Distinct blocks to fetch, and their bytes. */
  missingBlocks: number;
  missingBytes: number;
  /** The blocks to fetch, coalesced into runs, in order. */
  missingRuns: PlanRun[];
  /** How many present blocks each repository image supplies. */
  sources: { digest: string; blocks: number }[];
}

export interface RepoStats {
  hash: HashName;
  blockSize: number;
  images: number;
  /** Sum of the images' sizes. */
  totalBytes: number;
  /** What the image files occupy on disk (holes and reflinks make it smaller). */
  diskBytes: number;
  /** Distinct non-zero blocks over all images: the table's entries. */
  distinctBlocks: number;
  tableCapacity: number;
  tableMemoryBytes: number;
  tableFileBytes: number;
  catalogBytes: number;
  /** Resumable assemblies waiting in tmp/. */
  partialAssemblies: number;
  partialBytes: number;
}

export interface RebuildReport {
  images: number;
  distinctBlocks: number;
  /** The catalog was unreadable and was recovered from the image directories. */
  recoveredCatalog: boolean;
  /** "digest: reason" for every image that had to be dropped. */
  dropped: string[];
}

/** What `dedup` did. */
export interface DedupReport {
  images: number;
  /** Images rewritten so that their blocks held elsewhere in the repository are shared by reference. */
  rewritten: number;
  sharedBytes: number;
  copiedBytes: number;
  /** Why nothing could be shared (the file system has no reflinks: ext4, tmpfs), if so. */
  unsupported?: string;
  ms: number;
}

/** The images' logical size and what they take on the device. */
export interface DiskUsage {
  /** Sum of the images' lengths. */
  logicalBytes: number;
  /** Sum of the files' allocations: a block shared by reference counts in every file that shares it. */
  allocatedBytes: number;
  /** Every extent counted once (FIEMAP): what the images take on the device. */
  physicalBytes: number;
  images: { digest: string; logicalBytes: number; allocatedBytes: number; sharedBytes: number }[];
}

export interface FillReport {
  blocks: number;
  bytes: number;
}

/** An index as a `.osfi` path, an image path (indexed with the repository's parameters), or index bytes. */
export type IndexInput = string | Buffer | { index: string } | { image: string };

export interface AssemblyOptions {
  /** Keep the partial image under tmp/ if abandoned, and continue from it next time. */
  resumable?: boolean;
  /** Refuse (OSFARM_DIGEST_MISMATCH) an index that describes another image. */
  expectedDigest?: string;
}

function indexArg(input: IndexInput): string | Buffer {
  if (typeof input === 'string' || Buffer.isBuffer(input)) return input;
  return 'index' in input ? input.index : input.image;
}

/** An image's options as the native calls take them (metadata as JSON text): also for `NbdServer.publish`. */
export function nativeImageOptions(o: ImageOptions): RepoAddOptions {
  return {
    tags: [...(o.name === undefined ? [] : [o.name]), ...(o.tags ?? [])],
    metaJson: o.meta === undefined ? undefined : JSON.stringify(o.meta),
    format: o.format,
    originalName: o.originalName,
  };
}

function entry(e: RepoImage): ImageEntry {
  const out: ImageEntry = {
    digest: e.digest,
    tags: e.tags,
    format: e.format,
    size: e.size,
    blockCount: e.blockCount,
    added: new Date(e.addedMs),
    path: e.path,
    indexPath: e.indexPath,
  };
  if (e.tags.length) out.name = e.tags[0];
  if (e.originalName != null) out.originalName = e.originalName;
  if (e.metaJson != null) out.meta = JSON.parse(e.metaJson);
  return out;
}

function plan(p: RepoPlan): Plan {
  return { ...p, missingRuns: p.missingRuns.map((r) => ({ ...r })), sources: p.sources.map((s) => ({ ...s })) };
}

function stats(s: NativeRepoStats): RepoStats {
  return { ...s, hash: s.hash as HashName };
}

function report(r: RepoRebuildReport): RebuildReport {
  return { ...r };
}

/**
 * A repository on disk. Every operation takes the repository lock for its own duration
 * (shared for reading, exclusive for writing), so handles in several processes coexist.
 * A handle keeps the catalog and block table in memory between operations: `close()` it
 * (or `using repo = Repository.open(…)`) to free them at once.
 */
export class Repository implements Disposable, AsyncDisposable {
  private open: RepositoryHandle | null;
  private constructor(handle: RepositoryHandle) {
    this.open = handle;
  }

  private get handle(): RepositoryHandle {
    if (!this.open) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'this repository handle is closed: open the repository again');
    return this.open;
  }

  /** Frees the handle's cached catalog and table; later calls on it fail (operations already running finish). Safe to call twice. */
  close(): void {
    this.open?.dropCache();
    this.open = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /** Creates a repository in a new or empty directory. */
  static init(path: string, options: InitOptions = {}): Repository {
    return new Repository(callNativeSync(() => native.RepositoryHandle.init(path, options)));
  }

  /** Opens a repository; a missing, damaged or unknown-format one throws OSFARM_BAD_REPOSITORY. */
  static open(path: string, options: OpenOptions = {}): Repository {
    return new Repository(callNativeSync(() => native.RepositoryHandle.open(path, options)));
  }

  /** Whether `path` holds a repository's format file (it may still be damaged: `open` checks). */
  static exists(path: string): boolean {
    return existsSync(join(path, FORMAT_FILE));
  }

  /**
   * Opens the repository at `path` if its format file is there (a damaged one still throws),
   * else creates it with `options` (refused, as by `init`, in a directory holding other things).
   */
  static openOrInit(path: string, options: InitOptions = {}): Repository {
    return Repository.exists(path) ? Repository.open(path) : Repository.init(path, options);
  }

  /** Opens a repository without checking its catalog and table, to `rebuild` a damaged one. */
  static openForRepair(path: string): Repository {
    return new Repository(callNativeSync(() => native.RepositoryHandle.openForRepair(path)));
  }

  get path(): string {
    return this.handle.root;
  }
  get hash(): HashName {
    return this.handle.hash as HashName;
  }
  get blockSize(): number {
    return this.handle.blockSize;
  }
  /** Pushed and pulled blocks are checked for SHA-1 collision attacks (InitOptions.detectCollisions). */
  get detectsCollisions(): boolean {
    return this.handle.detectsCollisions;
  }

  /** Waiting for other processes' locks (default) or failing at once with OSFARM_LOCKED. */
  setWaitForLock(wait: boolean): void {
    this.handle.setWaitForLock(wait);
  }

  /**
   * Copies an image file in (reflink where the file system can), indexes it and publishes
   * it atomically. Adding an image already present returns it (with the tags given added).
   */
  add(imagePath: string, options: ImageOptions & LongRunning = {}): Promise<ImageEntry> {
    const { onProgress, signal, ...rest } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      const r = await withProgress(
        onProgress,
        (l) => this.handle.add(imagePath, nativeImageOptions(rest), l, signal),
        (r) => ({ done: r.size, total: r.size }),
      );
      return entry(r);
    }, signal);
  }

  /** The synchronous twin of `add`. */
  addSync(imagePath: string, options: ImageOptions = {}): ImageEntry {
    return entry(callNativeSync(() => this.handle.addSync(imagePath, nativeImageOptions(options))));
  }

  /** Every image, in the order they were added. */
  list(): ImageEntry[] {
    return callNativeSync(() => this.handle.list()).map(entry);
  }

  /** By full digest, any of its tags, or unique digest prefix of at least 4 hex digits (OSFARM_AMBIGUOUS, OSFARM_NOT_FOUND). */
  resolve(ref: string): ImageEntry {
    return entry(callNativeSync(() => this.handle.resolve(ref)));
  }

  /**
   * Gives an image tags, keeping those it has; a tag another image carries moves to it (one
   * commit). Record and sign the change with `tagImage` (src/trust/tags.ts) unless you mean not to.
   */
  tag(ref: string, ...tags: string[]): ImageEntry {
    return entry(callNativeSync(() => this.handle.tag(ref, tags)));
  }

  /** Removes a tag and returns the image that carried it: it stays, by digest and its other tags. */
  untag(tag: string): ImageEntry {
    return entry(callNativeSync(() => this.handle.untag(tag)));
  }

  /** Removes an image; blocks other images share stay findable. */
  remove(ref: string): Promise<ImageEntry> {
    return callNative(async () => entry(await this.handle.remove(ref)));
  }

  /** The synchronous twin of `remove`. */
  removeSync(ref: string): ImageEntry {
    return entry(callNativeSync(() => this.handle.removeSync(ref)));
  }

  /** For each block of the wanted image: zero, present (where), duplicate, or missing. */
  plan(index: IndexInput, options: LongRunning = {}): Promise<Plan> {
    const { onProgress, signal } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      return plan(await withProgress(onProgress, (l) => this.handle.plan(indexArg(index), l, signal)));
    }, signal);
  }

  /** The synchronous twin of `plan`. */
  planSync(index: IndexInput): Plan {
    return plan(callNativeSync(() => this.handle.planSync(indexArg(index))));
  }

  /**
   * Builds the image `index` describes from the repository's blocks plus the missing ones
   * read from `from` (a file holding that image). Every block is verified; on any
   * mismatch nothing is published (OSFARM_DIGEST_MISMATCH).
   */
  assemble(index: IndexInput, options: ImageOptions & LongRunning & { from: string }): Promise<ImageEntry> {
    const { onProgress, signal, from, ...rest } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      const r = await withProgress(onProgress, (l) =>
        this.handle.assemble(indexArg(index), from, nativeImageOptions(rest), l, signal),
      );
      return entry(r);
    }, signal);
  }

  /** The synchronous twin of `assemble`. */
  assembleSync(index: IndexInput, options: ImageOptions & { from: string }): ImageEntry {
    const { from, ...rest } = options;
    return entry(callNativeSync(() => this.handle.assembleSync(indexArg(index), from, nativeImageOptions(rest))));
  }

  /** Re-hashes an image and compares it with its index (OSFARM_DIGEST_MISMATCH if damaged on disk). */
  verify(ref: string, options: LongRunning = {}): Promise<ImageEntry> {
    const { onProgress, signal } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      return entry(await withProgress(onProgress, (l) => this.handle.verify(ref, l, signal)));
    }, signal);
  }

  /** The synchronous twin of `verify`. */
  verifySync(ref: string): ImageEntry {
    return entry(callNativeSync(() => this.handle.verifySync(ref)));
  }

  /** Re-derives the block table (and a lost catalog) from the images' indexes: the recovery path. */
  rebuild(options: LongRunning = {}): Promise<RebuildReport> {
    const { onProgress, signal } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      return report(await withProgress(onProgress, (l) => this.handle.rebuild(l, signal)));
    }, signal);
  }

  /** The synchronous twin of `rebuild`. */
  rebuildSync(): RebuildReport {
    return report(callNativeSync(() => this.handle.rebuildSync()));
  }

  /**
   * Shares the blocks of `ref` (default: of every image) that other images already hold, by
   * reference (reflinks, on xfs and btrfs); images stay whole files with the same content.
   * New images get this when they are added, received or pulled; this is for a repository
   * filled before, or on another file system. Elsewhere it changes nothing and says why.
   */
  dedup(ref?: string, options: LongRunning = {}): Promise<DedupReport> {
    const { onProgress, signal } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      const r = await withProgress(onProgress, (l) => this.handle.dedup(ref, l, signal));
      const { unsupported, ...rest } = r;
      return { ...rest, ...(unsupported != null ? { unsupported } : {}) };
    }, signal);
  }

  /** Logical size of the images and what they take on disk, shared blocks counted once. */
  diskUsage(): DiskUsage {
    const u = callNativeSync(() => this.handle.diskUsage());
    return { ...u, images: u.images.map((i) => ({ ...i })) };
  }

  stats(): RepoStats {
    return stats(callNativeSync(() => this.handle.stats()));
  }

  /**
   * Starts a streaming assembly: `fillFromRepository()`, then `missing()` says which
   * blocks to obtain, `putBlock`/`putBlocks` deliver them, `finish()` publishes.
   */
  beginAssembly(index: IndexInput, options: AssemblyOptions = {}): Assembler {
    return new Assembler(callNativeSync(() => this.handle.beginAssembly(indexArg(index), options)));
  }
}

/** An image being assembled in a repository (see `Repository.beginAssembly`). */
export class Assembler {
  /** @internal */
  constructor(private readonly handle: AssemblerHandle) {}

  get digest(): string {
    return this.handle.digest;
  }
  get blockCount(): number {
    return this.handle.blockCount;
  }
  get blockSize(): number {
    return this.handle.blockSize;
  }
  get imageSize(): number {
    return this.handle.imageSize;
  }
  /** Blocks present so far, zero blocks included. */
  get haveBlocks(): number {
    return this.handle.haveBlocks;
  }
  /** The image was already in the repository: `finish()` returns it. */
  get alreadyPresent(): boolean {
    return this.handle.alreadyPresent;
  }

  /** Copies every block the repository holds (verified, in parallel). */
  fillFromRepository(options: LongRunning = {}): Promise<FillReport> {
    const { onProgress, signal } = options;
    return callNative(async () => {
      throwIfAborted(signal);
      return { ...(await withProgress(onProgress, (l) => this.handle.fillFromRepository(l, signal))) };
    }, signal);
  }

  /** The synchronous twin of `fillFromRepository`. */
  fillFromRepositorySync(): FillReport {
    return { ...callNativeSync(() => this.handle.fillFromRepositorySync()) };
  }

  /** The blocks still to supply, as runs (repeats of an earlier block come with it). */
  missing(): PlanRun[] {
    return callNativeSync(() => this.handle.missing()).map((r) => ({ ...r }));
  }

  /** Verifies block `n` against its digest and writes it; false if already present. */
  putBlock(n: number, data: Buffer): boolean {
    return callNativeSync(() => this.handle.putBlock(n, data));
  }

  /** Verifies and writes consecutive blocks starting at `first`; returns how many were new. */
  putBlocks(first: number, data: Buffer): number {
    return callNativeSync(() => this.handle.putBlocks(first, data));
  }

  /** Makes a resumable assembly's progress durable now (it also happens every 64 MiB / 5 s). */
  flush(): void {
    callNativeSync(() => this.handle.flush());
  }

  /** Checks that every block is present, then publishes the image atomically. */
  finish(options: ImageOptions = {}): Promise<ImageEntry> {
    return callNative(async () => entry(await this.handle.finish(nativeImageOptions(options))));
  }

  /** The synchronous twin of `finish`. */
  finishSync(options: ImageOptions = {}): ImageEntry {
    return entry(callNativeSync(() => this.handle.finishSync(nativeImageOptions(options))));
  }

  /** Discards the partial image, resumable or not. */
  abort(): void {
    this.handle.abort();
  }

  /**
   * Stops without publishing or discarding: a resumable partial is flushed and unlocked,
   * so a new assembly of the same image (in this process or another) continues it. Any
   * later call on this assembler fails; after `finish` or `abort` it is a no-op.
   */
  release(): void {
    this.handle.release();
  }

  /** `release()`, for `using asm = repo.beginAssembly(…)`. */
  [Symbol.dispose](): void {
    this.release();
  }
}
