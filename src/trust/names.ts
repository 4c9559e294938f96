/**
 * Tag history (docs/trust.md): tags (names) move in the repository's catalog (an image given
 * a tag takes it from the image that had it), so every time an image gets a tag — it arrives
 * with it or is tagged — and every time a tag is removed, one JSON line is appended to
 * `names.jsonl` in the repository: the tag, the image that has it now, the one that had it
 * before (as far as the history knows), when, and how.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import type { ImageEntry } from '../repo/index.js';

export const NAMES_FILE = 'names.jsonl';

export interface NameRecord {
  /** The tag (name). */
  name: string;
  /** The image that has it now (null: the tag was removed, `images untag`). */
  digest: string | null;
  /** The image that had it before (null: none that the history knows of). */
  previous: string | null;
  /** ISO 8601. */
  at: string;
  /** How it came: 'add', 'build', 'receive', 'pull', 'tag' (`images tag`), 'untag', 'rm' (its image was removed). */
  via: string;
}

function readHistory(repo: string): NameRecord[] {
  const path = join(repo, NAMES_FILE);
  if (!existsSync(path)) return [];
  const out: NameRecord[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as NameRecord);
    } catch {
      // A line cut by a crash mid-append: the rest of the history still holds.
    }
  }
  return out;
}

function append(repo: string, record: NameRecord): NameRecord {
  // One write of one short line with O_APPEND: concurrent writers do not interleave.
  appendFileSync(join(repo, NAMES_FILE), `${JSON.stringify(record)}\n`);
  return record;
}

/**
 * Records that `entry` now carries each of its tags, where that is news. Returns the records
 * written (each with `previous` set when the tag moved from another image). `holders` — each
 * tag's image before the change, read from the catalog — makes that exact; without it the
 * history's last record stands for it (an arrival: the catalog changed in one native call).
 */
export function recordTags(repo: string, entry: ImageEntry, via: string, holders?: ReadonlyMap<string, string>): NameRecord[] {
  if (!entry.tags.length) return [];
  // Each tag's image as the history last saw it (a later line wins); read only when the caller has no holders.
  const before = holders ?? new Map(readHistory(repo).map((r) => [r.name, r.digest]));
  const out: NameRecord[] = [];
  for (const name of entry.tags) {
    const previous = before.get(name) ?? null;
    if (previous === entry.digest) continue;
    out.push(append(repo, { name, digest: entry.digest, previous, at: new Date().toISOString(), via }));
  }
  return out;
}

/** Records that `tag` was taken off image `digest`: `images untag`, or 'rm' when the image was removed. */
export function recordUntag(repo: string, tag: string, digest: string, via: 'untag' | 'rm' = 'untag'): NameRecord {
  return append(repo, { name: tag, digest: null, previous: digest, at: new Date().toISOString(), via });
}

/** Every move of `name`, oldest first. */
export function nameHistory(repo: string, name: string): NameRecord[] {
  return readHistory(repo).filter((r) => r.name === name);
}
