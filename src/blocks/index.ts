/**
 * Block hashing, indexes and comparison: the content-addressed view of an image.
 * An image is cut into fixed-size blocks; its index holds one digest per block.
 */
import { callNative, callNativeSync, throwIfAborted } from '../base/errors.js';
import { withProgress } from '../base/progress.js';
import { native, type CompareResult, type IndexInfo, type ProgressEvent } from '../base/native.js';

export type { CompareResult, CompareSide, IndexInfo, ProgressEvent } from '../base/native.js';

export type HashName = 'sha1' | 'sha256';

export interface IndexOptions {
  /** Block size in bytes: a power of two from 512 to 1 MiB. Default 4096. */
  blockSize?: number;
  /** Block digest. Default sha1 (with the CPU's SHA extensions). */
  hash?: HashName;
}

export interface LongRunning {
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

/** Hashes every block of an image in parallel; with `output`, writes the `.osfi` index there. */
export function indexImage(
  image: string,
  options: IndexOptions & LongRunning & { output?: string } = {},
): Promise<IndexInfo> {
  const { onProgress, signal, ...opts } = options;
  return callNative(() => {
    throwIfAborted(signal);
    return withProgress(
      onProgress,
      (listener) => native.indexImage(image, opts, listener, signal),
      (r) => ({ done: r.imageSize, total: r.imageSize }),
    );
  }, signal);
}

/** The synchronous twin of `indexImage` (blocks the event loop: for scripts and tests). */
export function indexImageSync(image: string, options: IndexOptions & { output?: string } = {}): IndexInfo {
  return callNativeSync(() => native.indexImageSync(image, options));
}

/** Reads and validates an `.osfi` index file; a corrupt or truncated one throws OSFARM_BAD_INDEX. */
export function readIndex(path: string): IndexInfo {
  return callNativeSync(() => native.readIndex(path));
}

/**
 * Compares two images or indexes (either may be an `.osfi` file): the share of each
 * one's non-zero blocks that the other already has. An image is indexed with the
 * other side's parameters when the other side is an index.
 */
export function compare(a: string, b: string, options: IndexOptions & LongRunning = {}): Promise<CompareResult> {
  const { onProgress, signal, ...opts } = options;
  return callNative(() => {
    throwIfAborted(signal);
    return withProgress(onProgress, (listener) => native.compare(a, b, opts, listener, signal));
  }, signal);
}

/** The synchronous twin of `compare`. */
export function compareSync(a: string, b: string, options: IndexOptions = {}): CompareResult {
  return callNativeSync(() => native.compareSync(a, b, options));
}
