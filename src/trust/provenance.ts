/** What happens when an image arrives in a repository: its name's move is recorded and the repository signs it. */
import type { ImageEntry } from '../repo/index.js';
import { type SignedManifest, signImage } from './manifest.js';
import { type NameRecord, recordName } from './names.js';

export interface Arrival {
  /** The manifest signed with the repository's key (none without a key). */
  signed?: SignedManifest;
  /** The name's move, when the image took a name another image had (or a new name). */
  name?: NameRecord;
}

/** Call when an image is built, added or accepted into `repo` (docs/trust.md). */
export function imageArrived(repo: string, entry: ImageEntry, via: 'add' | 'build' | 'receive'): Arrival {
  const name = recordName(repo, entry, via);
  const signed = signImage(repo, entry);
  return { ...(signed ? { signed } : {}), ...(name ? { name } : {}) };
}
