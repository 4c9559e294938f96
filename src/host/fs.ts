/**
 * File systems: their type, atomic files, tree sizes, and removing trees carefully (never
 * across a mount; btrfs subvolumes deleted as subvolumes).
 */
import { closeSync, fsyncSync, lstatSync, openSync, readdirSync, renameSync, statfsSync, writeFileSync } from 'node:fs';
import { lstat, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { type ErrorCode, OsfarmError } from '../base/errors.js';
import { mountsUnder, unmountBelow } from './mounts.js';
import { run, runChecked } from './process.js';
import { canonicalPath, ownerToken, randomSuffix } from './procs.js';

export const FS_MAGIC: Record<string, number> = {
  btrfs: 0x9123683e,
  xfs: 0x58465342,
  ext4: 0xef53,
  tmpfs: 0x01021994,
  overlayfs: 0x794c7630,
  nfs: 0x6969,
  zfs: 0x2fc12fc1,
};

/** The file system type of `path` by statfs magic ("btrfs", "xfs", "ext4", … or the hex magic). */
export function fsType(path: string): string {
  const magic = Number(statfsSync(path).type);
  for (const [name, m] of Object.entries(FS_MAGIC)) if (m === magic) return name;
  return `0x${magic.toString(16)}`;
}

/** Whether `path` is the root of a btrfs subvolume (a directory with inode 256 on btrfs). */
export function isSubvolume(path: string): boolean {
  try {
    const st = lstatSync(path);
    return st.isDirectory() && st.ino === 256 && fsType(path) === 'btrfs';
  } catch {
    return false;
  }
}

/** Whether anything is at `path` (a dangling symbolic link counts). */
export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** syncfs(2) on the file system holding `path` (coreutils `sync -f`): the data is on disk when it returns. */
export async function syncFs(path: string, errorCode?: ErrorCode): Promise<void> {
  await runChecked('flushing to disk', 'sync', ['-f', path], { errorCode });
}

/** fsync a directory (so a rename in it is durable). */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    /* best effort: some file systems refuse fsync on directories */
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Writes a file atomically: a temp file beside it, fsync, rename over, fsync the directory. `mode` is set from the start (0600 keeps a secret key private throughout). */
export function writeFileAtomic(path: string, data: string, mode = 0o644): void {
  const tmp = `${path}.${ownerToken()}.${randomSuffix()}.tmp`;
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeFileSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/**
 * Removes a directory tree. First unmounts anything mounted inside it (an overlayfs left by
 * a killed build, a chroot's /proc or /dev: deleting must never walk into those, or it
 * would empty the host's /dev), then deletes btrfs subvolumes with `btrfs subvolume delete`
 * (they may be read-only), then removes the rest. Fails with `errorCode` (default
 * OSFARM_IO) if something stays mounted.
 */
export async function removeTree(path: string, opts: { errorCode?: ErrorCode; log?: (line: string) => void } = {}): Promise<void> {
  try {
    lstatSync(path);
  } catch {
    return;
  }
  const left = await unmountBelow(path, { log: opts.log });
  if (left.length > 0 || mountsUnder(path).length > 0) {
    throw new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `refusing to remove ${path}: still mounted below it: ${[...new Set(left)].join(', ')}`);
  }
  if (fsType(path) === 'btrfs') await deleteSubvolumesIn(path, opts.errorCode);
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}

/** Deletes every btrfs subvolume at or just below `path` (the store's trees sit at `<dir>/tree`), nested ones first. */
async function deleteSubvolumesIn(path: string, errorCode?: ErrorCode): Promise<void> {
  const candidates = [path];
  try {
    for (const e of readdirSync(path, { withFileTypes: true })) if (e.isDirectory()) candidates.push(join(path, e.name));
  } catch {
    /* not a directory */
  }
  for (const c of candidates.reverse()) if (isSubvolume(c)) await deleteSubvolume(c, errorCode);
}

/** `btrfs subvolume delete`, deleting subvolumes nested inside it first (a chroot may create some). */
export async function deleteSubvolume(path: string, errorCode?: ErrorCode): Promise<void> {
  const r = await run('btrfs', ['subvolume', 'delete', path], { capture: true, errorCode });
  if (r.code === 0) return;
  // Nested subvolumes make the delete fail with ENOTEMPTY: find them (inode 256) and delete them first.
  const found = await run('find', [path, '-mindepth', '1', '-type', 'd', '-inum', '256'], { capture: true, errorCode });
  const nested = found.stdout.split('\n').filter((p) => p && isSubvolume(p)).sort((a, b) => b.length - a.length);
  for (const n of nested) await runChecked('deleting a nested btrfs subvolume', 'btrfs', ['subvolume', 'delete', n], { errorCode });
  await runChecked('deleting a btrfs subvolume', 'btrfs', ['subvolume', 'delete', path], { errorCode });
}

export interface TreeUsage {
  /** Apparent size of the regular files (hard links once) plus symlink targets. */
  bytes: number;
  /** Entries (files, directories, links, devices). */
  entries: number;
  /** Bytes of regular files whose inode changed after `since` (new or rewritten by populate). */
  changedBytes: number;
}

/**
 * Walks a tree (not crossing mount points) and adds up its size. With `sinceMs`, also the
 * bytes of files changed since then: after a reflink or plain copy of the parent, those
 * are the bytes the new stage adds (the copied files keep older change times).
 */
export function treeUsage(root: string, sinceMs = 0): TreeUsage {
  const usage: TreeUsage = { bytes: 0, entries: 0, changedBytes: 0 };
  const seen = new Set<string>();
  const mounts = new Set(mountsUnder(root));
  const walk = (dir: string) => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const p = join(dir, name);
      let st;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      usage.entries++;
      if (st.isDirectory()) {
        if (!mounts.has(p)) walk(p);
      } else if (st.isFile()) {
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (seen.has(key)) continue;
          seen.add(key);
        }
        usage.bytes += st.size;
        if (st.ctimeMs > sinceMs) usage.changedBytes += st.size;
      } else if (st.isSymbolicLink()) {
        usage.bytes += st.size;
      }
    }
  };
  walk(canonicalPath(root));
  return usage;
}
