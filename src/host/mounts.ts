/** The mount table (/proc/self/mountinfo), mounting, and unmounting everything below a directory. */
import { mkdir } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { sep } from 'node:path';

import { type ErrorCode, OsfarmError } from '../base/errors.js';
import { run } from './process.js';
import { canonicalPath } from './procs.js';

/** Decodes the octal escapes (`\040`) of /proc/self/mountinfo. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Every mount point in this mount namespace, in mount order (a stacked mount point appears once per mount). */
export function mountPoints(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.push(unescapeMount(f[4]!));
  }
  return out;
}

/** Mount points at or below `dir` (only below it with `strictlyBelow`), in mount order: unmount them in reverse. */
export function mountsUnder(dir: string, strictlyBelow = false): string[] {
  const base = canonicalPath(dir);
  const prefix = base.endsWith(sep) ? base : base + sep;
  return mountPoints().filter((m) => (m === base && !strictlyBelow) || m.startsWith(prefix));
}

/** Whether `path` is itself a mount point. */
export function isMountPoint(path: string): boolean {
  return mountPoints().includes(canonicalPath(path));
}

export interface UnmountOptions {
  /** Leave `dir` itself mounted (a tree that is itself a mount, such as a stage's overlay). */
  strictlyBelow?: boolean;
  log?: (line: string) => void;
  /** Throw this code when something stays mounted, instead of returning what did. */
  errorCode?: ErrorCode;
}

/**
 * Unmounts everything at or below `dir`, latest mount first, lazily where a plain umount
 * fails, in rounds until nothing is left. Returns what is still mounted (or throws
 * `errorCode` naming it).
 */
export async function unmountBelow(dir: string, opts: UnmountOptions = {}): Promise<string[]> {
  for (let round = 0; round < 8; round++) {
    const mounts = mountsUnder(dir, opts.strictlyBelow);
    if (mounts.length === 0) return [];
    for (const mp of mounts.reverse()) {
      const r = await run('umount', [mp], { capture: true });
      if (r.code !== 0 && isMountPoint(mp)) {
        opts.log?.(`osfarm: umount ${mp} failed; detaching it lazily`);
        await run('umount', ['--lazy', mp]);
      }
    }
  }
  const left = mountsUnder(dir, opts.strictlyBelow);
  if (left.length > 0 && opts.errorCode) throw new OsfarmError(opts.errorCode, `cannot unmount ${[...new Set(left)].join(', ')}; unmount by hand`);
  return left;
}

/**
 * Runs undo steps (what `mount` returns, and the like) latest first, every one of them
 * even when one fails, and empties the list; returns the first failure, if any.
 */
export async function undoAll(steps: Array<() => Promise<void>>): Promise<unknown> {
  let first: unknown;
  while (steps.length > 0) {
    try {
      await steps.pop()!();
    } catch (err) {
      first ??= err;
    }
  }
  return first;
}

/**
 * Mounts (`mount ARGS TARGET`, the target made if missing) and returns what undoes it:
 * unmounting the target and anything mounted below it since.
 */
export async function mount(args: string[], target: string, opts: { log?: (line: string) => void; errorCode?: ErrorCode; what?: string } = {}): Promise<() => Promise<void>> {
  await mkdir(target, { recursive: true });
  const r = await run('mount', [...args, target], { onLine: opts.log, capture: !opts.log });
  if (r.code !== 0) {
    const detail = r.stderr.trim().split('\n').slice(-1)[0];
    throw new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `${opts.what ?? `mount ${args.join(' ')} ${target}`} failed${detail ? `: ${detail}` : ''}`);
  }
  return async () => {
    await unmountBelow(target, { log: opts.log, errorCode: opts.errorCode ?? 'OSFARM_IO' });
  };
}
