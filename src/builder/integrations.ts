/**
 * The builder's use of its neighbours: the block-aligned tar writer (src/pack) and the
 * repository (src/repo).
 */
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

/** Adds an image to the repository at `repoPath` (created if missing) and returns its entry. */
export async function addToRepository(
  repoPath: string,
  image: string,
  options: ImageOptions & { onProgress?: (e: { done: number; total: number }) => void; signal?: AbortSignal },
): Promise<ImageEntry> {
  return Repository.openOrInit(repoPath).add(image, options);
}
