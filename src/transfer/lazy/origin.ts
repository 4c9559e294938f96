/**
 * Where a partly present image comes from (docs/lazy-boot.md): a lazy pull records the
 * origin's URL beside the resumable partial (`tmp/<digest>.origin.json`), so that
 * `osfarm boot NAME` of an image that is only partly in the repository can go on fetching
 * it lazily without being given the URL again. Removed when the image is published.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { writeFileAtomic } from '../../host/fs.js';

const FORMAT = 'osfarm-partial-origin';
const SUFFIX = '.origin.json';

export interface PartialOrigin {
  /** The image digest (hex). */
  digest: string;
  /** The image's URL at the origin, by digest (`http://HOST:PORT/images/<digest>`). */
  url: string;
  /** The name the image was pulled by, and will be published under. */
  name?: string;
}

function originPath(repoPath: string, digest: string): string {
  return join(repoPath, 'tmp', `${digest}${SUFFIX}`);
}

/** Records where image `o.digest` is being fetched from (atomically; replaces an earlier record). */
export function writePartialOrigin(repoPath: string, o: PartialOrigin): void {
  writeFileAtomic(originPath(repoPath, o.digest), `${JSON.stringify({ format: FORMAT, version: 1, ...o })}\n`);
}

export function removePartialOrigin(repoPath: string, digest: string): void {
  rmSync(originPath(repoPath, digest), { force: true });
}

function readRecord(path: string): PartialOrigin | undefined {
  try {
    const o = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
    if (o.format !== FORMAT || o.version !== 1 || typeof o.digest !== 'string' || typeof o.url !== 'string') return undefined;
    return { digest: o.digest, url: o.url, ...(typeof o.name === 'string' ? { name: o.name } : {}) };
  } catch {
    // A record is only a convenience: one that cannot be read is as good as none.
    return undefined;
  }
}

/**
 * The origin of a partly present image that `ref` names: its name, its digest, or a
 * digest prefix of at least 8 hex digits that only one record has. Undefined if none.
 */
export function findPartialOrigin(repoPath: string, ref: string): PartialOrigin | undefined {
  const tmp = join(repoPath, 'tmp');
  if (!existsSync(tmp)) return undefined;
  const records = readdirSync(tmp)
    .filter((f) => f.endsWith(SUFFIX))
    .map((f) => readRecord(join(tmp, f)))
    .filter((o): o is PartialOrigin => o !== undefined);
  const byName = records.filter((o) => o.name === ref);
  if (byName.length === 1) return byName[0];
  const lower = ref.toLowerCase();
  const byDigest = /^[0-9a-f]{8,}$/.test(lower) ? records.filter((o) => o.digest.startsWith(lower)) : [];
  return byDigest.length === 1 ? byDigest[0] : undefined;
}
