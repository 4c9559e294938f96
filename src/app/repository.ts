/**
 * The one rule of the front ends for a missing repository: `build`, `serve` and `receive`
 * create it (with the default hash and block size) and say so; the commands that read one
 * (`repo ls`, `plan`, `images` …) refuse a missing one with the command that creates it.
 * docs/cli.md says why.
 */
import { Repository } from '../repo/index.js';

/** Opens the repository at `path`, creating it first if it is not there; `created` says which. */
export function openOrCreateRepository(path: string): { repository: Repository; created: boolean } {
  const created = !Repository.exists(path);
  return { repository: Repository.openOrInit(path), created };
}
