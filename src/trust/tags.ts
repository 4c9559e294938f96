/**
 * Tagging an image in place (`osfarm images tag|untag`, the REST API): the catalog change,
 * its line in the tag history, and fresh signatures. A manifest signs the image's tags
 * (docs/trust.md), so a repository with a key re-signs the image that got a tag and every
 * image that lost one: a stale manifest of the loser would still vouch for the moved tag.
 */
import { Repository, type ImageEntry } from '../repo/index.js';
import { signImage } from './manifest.js';
import { type NameRecord, recordTags, recordUntag } from './names.js';

export interface TagResult {
  image: ImageEntry;
  /** The history lines written: a tag that moved has its `previous` image. */
  moves: NameRecord[];
}

/** Re-signs the images that lost a tag to a move (those still in the repository), when the repository signs. */
export function resignLosers(repo: string, moves: readonly NameRecord[]): void {
  const losers = new Set(moves.map((m) => m.previous).filter((d): d is string => d !== null));
  if (!losers.size) return;
  using r = Repository.open(repo);
  const here = new Map(r.list().map((e) => [e.digest, e]));
  for (const d of losers) {
    const e = here.get(d);
    if (e) signImage(repo, e);
  }
}

/** Gives the image `ref` names (a digest, prefix or tag) the `tags`, moving any another image had. */
export function tagImage(repo: string, ref: string, tags: readonly string[]): TagResult {
  using r = Repository.open(repo);
  // Who had each tag, from the catalog: the history may not know (a tag given through the
  // low-level API, or before the history existed).
  const holders = new Map(r.list().flatMap((e) => e.tags.map((t) => [t, e.digest] as const)));
  const image = r.tag(ref, ...tags);
  const moves = recordTags(repo, { ...image, tags: image.tags.filter((t) => tags.includes(t)) }, 'tag', holders);
  if (moves.length) {
    signImage(repo, image);
    resignLosers(repo, moves);
  }
  return { image, moves };
}

/** Removes the image `ref` names (`osfarm repo rm`): its tags go with it, each recorded in the history. */
export async function removeImage(repo: string, ref: string): Promise<TagResult> {
  using r = Repository.open(repo);
  const image = await r.remove(ref);
  return { image, moves: image.tags.map((t) => recordUntag(repo, t, image.digest, 'rm')) };
}

/** Removes `tag`; the image that carried it stays (by digest and its other tags) and is re-signed. */
export function untagImage(repo: string, tag: string): TagResult {
  using r = Repository.open(repo);
  const image = r.untag(tag);
  const moves = [recordUntag(repo, tag, image.digest)];
  signImage(repo, image);
  return { image, moves };
}
