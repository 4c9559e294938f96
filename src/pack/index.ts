/**
 * The block-aligned tar ("pack"): a directory tree, a tar or a tar.gz rewritten as a
 * POSIX (pax) tar in which every regular file's data starts on a multiple of the block
 * size, so that fixed-size block hashing finds the files two images share.
 * The format is described in docs/aligned-tar.md.
 */
import { sourceDateEpochFromEnv } from '../base/env.js';
import { callNative, callNativeSync, throwIfAborted } from '../base/errors.js';
import { withProgress } from '../base/progress.js';
import { native } from '../base/native.js';

/** Progress of packing: bytes of input consumed out of the input's total. */
export interface PackProgressEvent {
  done: number;
  total: number;
}

export interface PackOptions {
  /** Alignment of file data: a power of two from 512 to 1 MiB. Default 4096. */
  blockSize?: number;
  /**
   * Clamp every mtime to at most this (seconds since the epoch), for reproducible
   * archives. Default: `$SOURCE_DATE_EPOCH` if set, else no clamping.
   */
  sourceDateEpoch?: number;
  /**
   * Fail with OSFARM_INVALID_ARGUMENT, leaving nothing, before the archive would grow past
   * this many bytes (its apparent size): a bound on what an untrusted tar.gz may expand to.
   */
  maxSize?: number;
  /** Called as input is consumed (at most every 50 ms, and once at the end). */
  onProgress?: (event: PackProgressEvent) => void;
  /** Aborting stops the work; no output file is left behind. */
  signal?: AbortSignal;
}

export type PackSyncOptions = Omit<PackOptions, 'onProgress' | 'signal'>;

/** What was written. */
export interface PackResult {
  /** Entries in the archive (pax extended headers not counted). */
  entries: number;
  /** Regular files among them (hard links not counted). */
  regularFiles: number;
  /** Bytes of regular-file data. */
  fileBytes: number;
  /** Bytes added only for alignment (pax comment fill and the final block's tail). */
  paddingBytes: number;
  /** Size of the archive in bytes (a multiple of the block size). */
  outputSize: number;
  /** Input objects left out because tar cannot store them (sockets). */
  skipped: number;
  /**
   * Bytes of input consumed, the unit of progress events: file data read from a
   * directory, or the size of the tar / tar.gz file.
   */
  inputBytes: number;
}

/** The clamp to use: the option, else a valid SOURCE_DATE_EPOCH from the environment. */
function epochOf(option: number | undefined): number | undefined {
  return option ?? sourceDateEpochFromEnv();
}

function nativeOptions(options: PackSyncOptions): { blockSize?: number; sourceDateEpoch?: number; maxSize?: number } {
  const out: { blockSize?: number; sourceDateEpoch?: number; maxSize?: number } = {};
  if (options.blockSize !== undefined) out.blockSize = options.blockSize;
  if (options.maxSize !== undefined) out.maxSize = options.maxSize;
  const epoch = epochOf(options.sourceDateEpoch);
  if (epoch !== undefined) out.sourceDateEpoch = epoch;
  return out;
}

/**
 * Packs `input` (a directory, a tar or a tar.gz, told apart by content) into a
 * block-aligned tar at `output`, off the JS thread. Directory entries are sorted by
 * name, depth first; archive entries keep their order. The output is written
 * atomically. Hostile or damaged archives throw OSFARM_BAD_ARCHIVE.
 */
export function pack(input: string, output: string, options: PackOptions = {}): Promise<PackResult> {
  const { onProgress, signal, ...rest } = options;
  return callNative(() => {
    throwIfAborted(signal);
    const opts = nativeOptions(rest);
    return withProgress(
      onProgress,
      (listener) => native.pack(input, output, opts, listener, signal),
      (r) => ({ done: r.inputBytes, total: r.inputBytes }),
    );
  }, signal);
}

/** The synchronous twin of `pack` (blocks the event loop: for scripts and tests). */
export function packSync(input: string, output: string, options: PackSyncOptions = {}): PackResult {
  return callNativeSync(() => native.packSync(input, output, nativeOptions(options)));
}
