/**
 * Name history (docs/trust.md): names move silently in the repository's catalog (a new image
 * added with a name takes it from the image that had it), so every time an image arrives
 * with a name, the move is appended to `names.jsonl` in the repository — one JSON line per
 * move: the name, the image that has it now, the one that had it before (as far as the
 * history knows), when, and how it arrived.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import type { ImageEntry } from '../repo/index.js';

export const NAMES_FILE = 'names.jsonl';

export interface NameRecord {
  name: string;
  digest: string;
  /** The image that had the name before (null: none that the history knows of). */
  previous: string | null;
  /** ISO 8601. */
  at: string;
  /** How the image arrived: 'add', 'build', 'receive', 'pull'. */
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

/**
 * Records that `entry` now holds its name, if that is news. Returns the record written (its
 * `previous` set when the name moved from another image), or undefined when nothing changed.
 */
export function recordName(repo: string, entry: ImageEntry, via: string): NameRecord | undefined {
  if (!entry.name) return undefined;
  const last = readHistory(repo).filter((r) => r.name === entry.name).pop();
  if (last?.digest === entry.digest) return undefined;
  const record: NameRecord = { name: entry.name, digest: entry.digest, previous: last?.digest ?? null, at: new Date().toISOString(), via };
  // One write of one short line with O_APPEND: concurrent writers do not interleave.
  appendFileSync(join(repo, NAMES_FILE), `${JSON.stringify(record)}\n`);
  return record;
}

/** Every move of `name`, oldest first. */
export function nameHistory(repo: string, name: string): NameRecord[] {
  return readHistory(repo).filter((r) => r.name === name);
}
