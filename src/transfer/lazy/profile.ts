/**
 * Boot profiles (docs/lazy-boot.md): the order in which a boot first read an image's
 * blocks, kept with the image in the repository (`images/<digest>/profile.json`) and
 * served beside it over HTTP, so that a lazy export prefetches what the boot will read
 * next before the rest.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { writeFileAtomic } from '../../host/fs.js';

export const PROFILE_FILE = 'profile.json';
const FORMAT = 'osfarm-boot-profile';

/** A range of consecutive blocks. */
export interface ProfileRun {
  first: number;
  count: number;
}

export interface BootProfile {
  /** The image digest (hex) the profile belongs to. */
  image: string;
  blockSize: number;
  blockCount: number;
  /** When it was recorded (ISO 8601). */
  recorded: string;
  /** Block runs in the order of first reads; each block at most once. */
  runs: ProfileRun[];
}

/** Checks a profile's JSON text against the image it should describe; throws OSFARM_PROTOCOL with what is wrong. */
export function parseBootProfile(text: string, expect: { digest: string; blockCount: number }, where: string): BootProfile {
  const bad = (why: string) => new OsfarmError('OSFARM_PROTOCOL', `${where} is not a usable boot profile: ${why}`);
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw bad('not JSON');
  }
  if (o?.format !== FORMAT || o.version !== 1) throw bad(`not format "${FORMAT}" version 1`);
  if (o.image !== expect.digest) throw bad(`it belongs to image ${String(o.image)}`);
  if (o.blockCount !== expect.blockCount || !Number.isInteger(o.blockSize)) throw bad('its block count or size differs from the image');
  if (!Array.isArray(o.runs)) throw bad('no runs');
  const runs: ProfileRun[] = [];
  for (const r of o.runs as unknown[]) {
    const [first, count] = Array.isArray(r) ? (r as unknown[]) : [];
    if (!Number.isInteger(first) || !Number.isInteger(count) || (count as number) < 1 || (first as number) < 0 || (first as number) + (count as number) > expect.blockCount) {
      throw bad(`run ${JSON.stringify(r)} is not [first, count] inside the image's ${expect.blockCount} blocks`);
    }
    runs.push({ first: first as number, count: count as number });
  }
  return { image: expect.digest, blockSize: o.blockSize as number, blockCount: expect.blockCount, recorded: String(o.recorded ?? ''), runs };
}

/** The profile's file form: runs as `[first, count]` pairs, one object. */
export function bootProfileJson(p: BootProfile): string {
  return `${JSON.stringify({
    format: FORMAT,
    version: 1,
    image: p.image,
    blockSize: p.blockSize,
    blockCount: p.blockCount,
    recorded: p.recorded,
    runs: p.runs.map((r) => [r.first, r.count]),
  })}\n`;
}

function imageDir(repoPath: string, digest: string): string {
  return join(repoPath, 'images', digest);
}

/** The profile kept with image `digest` in the repository at `repoPath`, if it has one. */
export function readBootProfile(repoPath: string, digest: string, blockCount: number): BootProfile | undefined {
  const path = join(imageDir(repoPath, digest), PROFILE_FILE);
  if (!existsSync(path)) return undefined;
  return parseBootProfile(readFileSync(path, 'utf8'), { digest, blockCount }, path);
}

/** Keeps `profile` with its image (which must be in the repository), replacing any earlier one atomically. */
export function writeBootProfile(repoPath: string, profile: BootProfile): string {
  const dir = imageDir(repoPath, profile.image);
  if (!existsSync(join(dir, 'index.osfi'))) {
    throw new OsfarmError('OSFARM_NOT_FOUND', `image ${profile.image} is not in the repository at ${repoPath}: a boot profile is kept only with a complete image`);
  }
  const path = join(dir, PROFILE_FILE);
  writeFileAtomic(path, bootProfileJson(profile));
  return path;
}
