/**
 * Real file systems for tests and benchmarks: btrfs, xfs (reflink=1) or a small ext4 (no
 * blocks reserved for root, so `df` and ENOSPC agree) made in a sparse file, attached to a
 * loop device and mounted; and a plain directory for overlayfs.
 * Always unmounted and detached again (ava: in t.teardown, which runs on failure too).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';

export type LoopFsKind = 'btrfs' | 'xfs' | 'xfs-noreflink' | 'ext4';

export interface LoopFs {
  /** Where the file system is mounted. */
  mountpoint: string;
  device: string;
  /** Unmounts (everything below too), detaches the loop device, deletes the backing file. Idempotent. */
  cleanup(): void;
}

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });

/** Mount points at or below `dir`, deepest first. */
function mountsBelow(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .sort((a, b) => b.length - a.length);
}

/** Unmounts everything at or below `dir` (lazily if busy). */
export function unmountAll(dir: string): void {
  for (let i = 0; i < 8; i++) {
    const mounts = mountsBelow(dir);
    if (mounts.length === 0) return;
    for (const m of mounts) {
      if (spawnSync('umount', [m]).status !== 0) spawnSync('umount', ['--lazy', m]);
    }
  }
}

/** Whether loop devices can be used here (root, /dev/loop-control). */
export function loopAvailable(): boolean {
  return process.getuid?.() === 0 && spawnSync('losetup', ['--find']).status === 0;
}

/** Makes, attaches and mounts a file system of `sizeMiB` in a sparse file under `parent` (default the temp dir). */
export function makeLoopFs(kind: LoopFsKind, sizeMiB = 1024, parent = tmpdir(), prefix = 'osfarm'): LoopFs {
  const base = mkdtempSync(join(parent, `${prefix}-${kind}-`));
  const image = join(base, 'fs.img');
  const mountpoint = join(base, 'mnt');
  mkdirSync(mountpoint);
  run('truncate', ['-s', `${sizeMiB}M`, image]);
  let device = '';
  let done = false;
  const cleanup = () => {
    if (done) return;
    done = true;
    unmountAll(mountpoint);
    if (device) spawnSync('losetup', ['--detach', device]);
    rmSync(base, { recursive: true, force: true });
  };
  try {
    device = run('losetup', ['--find', '--show', image]).trim();
    if (kind === 'btrfs') run('mkfs.btrfs', ['--quiet', '--force', device]);
    else if (kind === 'ext4') run('mkfs.ext4', ['-q', '-F', '-m', '0', device]);
    else run('mkfs.xfs', ['-q', '-f', '-m', `reflink=${kind === 'xfs' ? 1 : 0}`, device]);
    run('mount', [device, mountpoint]);
  } catch (err) {
    cleanup();
    throw err;
  }
  return { mountpoint, device, cleanup };
}

/** A loop file system for one test, torn down when the test ends (pass or fail). */
export function loopFs(t: ExecutionContext, kind: LoopFsKind, sizeMiB = 1024, prefix?: string): string {
  const fs = makeLoopFs(kind, sizeMiB, tmpdir(), prefix);
  t.teardown(() => fs.cleanup());
  return fs.mountpoint;
}

/** A temp directory on the root file system (ext4 here) for overlayfs / plain copy; mounts below it are undone at teardown. */
export function plainDir(t: ExecutionContext, prefix = 'osfarm-stages-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => {
    unmountAll(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
