/** What happens when an image arrives in a repository: its tags' moves are recorded and the repository signs it. */
import type { ImageEntry } from '../repo/index.js';
import { type SignedManifest, signImage, writeManifest } from './manifest.js';
import { type NameRecord, recordTags } from './names.js';
import { resignLosers } from './tags.js';

export interface Arrival {
  /** The manifest now beside the image: signed with the repository's key, else the one it came with (if any). */
  signed?: SignedManifest;
  /** The tags that are news for this image: each one's move (`previous` set when another image had it). */
  moves: NameRecord[];
}

/**
 * Call when an image is built, added or accepted into `repo` (docs/trust.md). A repository
 * with a key signs it; one without keeps the manifest the image came with (`carried`, a
 * push's), so it republishes the origin's signature.
 */
export function imageArrived(repo: string, entry: ImageEntry, via: 'add' | 'build' | 'receive', carried?: SignedManifest): Arrival {
  const moves = recordTags(repo, entry, via);
  let signed = signImage(repo, entry);
  if (!signed && carried?.manifest.digest === entry.digest) {
    writeManifest(entry, carried);
    signed = carried;
  }
  resignLosers(repo, moves);
  return { ...(signed ? { signed } : {}), moves };
}
