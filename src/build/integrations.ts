/**
 * The builder's use of its neighbours: the block-aligned tar writer (src/pack) and the
 * repository (src/repo).
 */
import { OsfarmError } from '../errors.js';
import { pack } from '../pack/index.js';
import { type ImageEntry, type ImageOptions, Repository } from '../repo/index.js';

export interface PackOptions {
  blockSize?: number;
  sourceDateEpoch?: number;
  onProgress?: (e: { done: number; total: number }) => void;
  signal?: AbortSignal;
}

/** Writes the block-aligned tar of a directory. */
export async function packTree(input: string, output: string, options: PackOptions): Promise<void> {
  await pack(input, output, options);
}

/** Opens the repository at `repoPath`, creating it if there is none yet. */
export function openOrInitRepository(repoPath: string): Repository {
  try {
    return Repository.open(repoPath);
  } catch (err) {
    if (!(err instanceof OsfarmError) || (err.code !== 'OSFARM_NOT_FOUND' && err.code !== 'OSFARM_BAD_REPOSITORY')) throw err;
    return Repository.init(repoPath);
  }
}

/** Adds an image to the repository at `repoPath` (created if missing) and returns its entry. */
export async function addToRepository(
  repoPath: string,
  image: string,
  options: ImageOptions & { onProgress?: (e: { done: number; total: number }) => void; signal?: AbortSignal },
): Promise<ImageEntry> {
  return openOrInitRepository(repoPath).add(image, options);
}
