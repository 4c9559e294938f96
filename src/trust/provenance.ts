/** What happens when an image arrives in a repository: its name's move is recorded and the repository signs it. */
import type { ImageEntry } from '../repo/index.js';
import { type SignedManifest, signImage, writeManifest } from './manifest.js';
import { type NameRecord, recordName } from './names.js';

export interface Arrival {
  /** The manifest now beside the image: signed with the repository's key, else the one it came with (if any). */
  signed?: SignedManifest;
  /** The name's move, when the image took a name another image had (or a new name). */
  name?: NameRecord;
}

/**
 * Call when an image is built, added or accepted into `repo` (docs/trust.md). A repository
 * with a key signs it; one without keeps the manifest the image came with (`carried`, a
 * push's), so it republishes the origin's signature.
 */
export function imageArrived(repo: string, entry: ImageEntry, via: 'add' | 'build' | 'receive', carried?: SignedManifest): Arrival {
  const name = recordName(repo, entry, via);
  let signed = signImage(repo, entry);
  if (!signed && carried?.manifest.digest === entry.digest) {
    writeManifest(entry, carried);
    signed = carried;
  }
  return { ...(signed ? { signed } : {}), ...(name ? { name } : {}) };
}
