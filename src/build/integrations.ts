/**
 * The builder's use of its neighbours: the block-aligned tar writer (src/pack) and the
 * repository (src/repo), loaded when a build needs them.
 */
import { OsfarmError } from '../errors.js';
import { pack } from '../pack/index.js';

export interface PackOptions {
  blockSize?: number;
  sourceDateEpoch?: number;
  onProgress?: (e: { done: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface AddOptions {
  name?: string;
  /** Any JSON-serialisable value, kept with the image. */
  meta?: unknown;
  originalName?: string;
  onProgress?: (e: { done: number; total: number }) => void;
  signal?: AbortSignal;
}

interface RepositoryLike {
  add(image: string, options: AddOptions): Promise<{ digest: string; path?: string }>;
}

interface RepoModule {
  Repository: { open(path: string): RepositoryLike | Promise<RepositoryLike>; init(path: string): RepositoryLike | Promise<RepositoryLike> };
}

// The module name in a variable: the repository may land after this module.
const REPO_MODULE = '../repo/index.js';

async function load<T>(specifier: string, what: string): Promise<T> {
  try {
    return (await import(specifier)) as T;
  } catch (err) {
    throw new OsfarmError('OSFARM_INTERNAL', `${what} (${specifier}) is not available in this osfarm: ${(err as Error).message}`, { cause: err });
  }
}

/** Writes the block-aligned tar of a directory. */
export async function packTree(input: string, output: string, options: PackOptions): Promise<void> {
  await pack(input, output, options);
}

export interface AddedImage {
  digest: string;
  /** Where the repository keeps the image. */
  path?: string;
}

/** Adds an image to the repository at `repoPath` (created if missing) and returns its entry. */
export async function addToRepository(
  repoPath: string,
  image: string,
  options: AddOptions,
): Promise<AddedImage> {
  const { Repository } = await load<RepoModule>(REPO_MODULE, 'the repository');
  let repo: RepositoryLike;
  try {
    repo = await Repository.open(repoPath);
  } catch (err) {
    if (!(err instanceof OsfarmError) || (err.code !== 'OSFARM_NOT_FOUND' && err.code !== 'OSFARM_BAD_REPOSITORY')) throw err;
    repo = await Repository.init(repoPath);
  }
  const entry = await repo.add(image, options);
  return { digest: entry.digest, ...(entry.path ? { path: entry.path } : {}) };
}
