/**
 * System plumbing for the stage store: running tools, process identity and liveness,
 * the mount table, atomic files, careful removal of trees (mounts and btrfs subvolumes
 * inside), and tree sizes.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, statfsSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, sep } from 'node:path';

import { OsfarmError } from '../base/errors.js';

/** PATH for the tools the store runs, whatever the caller's PATH. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool and returns its exit code and output (never throws for a non-zero exit). */
export function tool(cmd: string, args: string[], opts: { signal?: AbortSignal } = {}): Promise<ToolResult> {
  return new Promise((resolvePromise, reject) => {
    execFile(
      cmd,
      args,
      { env: { ...process.env, PATH: SYSTEM_PATH, LC_ALL: 'C' }, maxBuffer: 64 << 20, signal: opts.signal },
      (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new OsfarmError('OSFARM_STAGE', `${cmd} is not installed (needed for: ${cmd} ${args[0] ?? ''})`));
          return;
        }
        if (err && err.name === 'AbortError') {
          reject(new OsfarmError('OSFARM_ABORTED', 'the operation was cancelled'));
          return;
        }
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolvePromise({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Runs a tool and throws OSFARM_STAGE with its error output unless it exits 0. */
export async function toolChecked(what: string, cmd: string, args: string[], opts: { signal?: AbortSignal } = {}): Promise<string> {
  const r = await tool(cmd, args, opts);
  if (r.code !== 0) {
    const detail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' | ');
    throw new OsfarmError('OSFARM_STAGE', `${what} failed: ${cmd} ${args.join(' ')} exited with ${r.code}${detail ? `: ${detail}` : ''}`);
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------
// Process identity: pid + start time (so a reused pid is not mistaken for the owner)

/** The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat), or null if it is gone. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); field 22 is rest[19]. A zombie is as good as dead.
    if (rest[0] === 'Z' || rest[0] === 'X') return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

const SELF_START = processStart(process.pid) ?? '0';

/** This process as an owner token, `<pid>-<start>`: used in temp names, lease and checkout names. */
export function ownerToken(): string {
  return `${process.pid}-${SELF_START}`;
}

export const HOST = hostname();

/** Whether the process named by an owner token (`<pid>-<start>`) is still running on this host. */
export function ownerAlive(token: string): boolean {
  const m = /^(\d+)-(\d+)$/.exec(token);
  if (!m) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return m[2] === SELF_START;
  return processStart(pid) === m[2];
}

/** A short random suffix for unique names. */
export function randomSuffix(): string {
  return randomBytes(6).toString('hex');
}

// ---------------------------------------------------------------------------
// Mount table

function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Every mount point in this mount namespace (from /proc/self/mountinfo). */
export function mountPoints(): string[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.push(unescapeMountPath(f[4]!));
  }
  return out;
}

function canonical(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** Mount points at or below `path`, deepest first. */
export function mountsUnder(path: string): string[] {
  const base = canonical(path);
  const prefix = base.endsWith(sep) ? base : base + sep;
  return [...new Set(mountPoints().filter((m) => m === base || m.startsWith(prefix)))].sort((a, b) => b.length - a.length);
}

/** Whether `path` is itself a mount point. */
export function isMountPoint(path: string): boolean {
  const base = canonical(path);
  return mountPoints().includes(base);
}

/** Unmounts one mount point; falls back to a lazy unmount if it is busy. */
export async function unmount(path: string): Promise<void> {
  const r = await tool('umount', [path]);
  if (r.code === 0) return;
  if (!isMountPoint(path)) return;
  const lazy = await tool('umount', ['--lazy', path]);
  if (lazy.code !== 0 && isMountPoint(path)) {
    throw new OsfarmError('OSFARM_STAGE', `cannot unmount ${path}: ${r.stderr.trim() || lazy.stderr.trim()}`);
  }
}

/** Unmounts everything mounted at or below `path` (deepest first). Stacked mounts are unmounted until none is left. */
export async function unmountUnder(path: string): Promise<void> {
  for (let round = 0; round < 8; round++) {
    const mounts = mountsUnder(path);
    if (mounts.length === 0) return;
    for (const m of mounts) await unmount(m);
  }
  const left = mountsUnder(path);
  if (left.length > 0) throw new OsfarmError('OSFARM_STAGE', `cannot unmount ${left.join(', ')}`);
}

/** Processes working in `path`: chrooted into it, with their working directory in it, or naming it on their command line. */
export function processesIn(path: string): number[] {
  const base = canonical(path);
  const inside = (p: string) => p === base || p.startsWith(base + sep);
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (inside(readlinkSync(`/proc/${name}/root`)) || inside(readlinkSync(`/proc/${name}/cwd`)) || cmd.some(inside)) pids.push(Number(name));
    } catch {
      /* gone, or a kernel thread */
    }
  }
  return pids;
}

/**
 * Kills what a dead build left running in a tree it was making (mmdebstrap, apt and dpkg in
 * a chroot run in their own process groups and outlive a killed osfarm), and waits until
 * they are gone, so the tree can be unmounted and removed.
 */
export async function killProcessesIn(path: string): Promise<number> {
  let pids = processesIn(path);
  const total = pids.length;
  for (let round = 0; pids.length > 0 && round < 50; round++) {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await new Promise((r) => setTimeout(r, 100));
    pids = processesIn(path);
  }
  if (pids.length > 0) throw new OsfarmError('OSFARM_STAGE', `processes ${pids.join(', ')} still run in ${path} and cannot be killed`);
  return total;
}

// ---------------------------------------------------------------------------
// File systems

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

/** syncfs(2) on the file system holding `path` (coreutils `sync -f`): the data is on disk when it returns. */
export async function syncFs(path: string): Promise<void> {
  await toolChecked('flushing the stage to disk', 'sync', ['-f', path]);
}

// ---------------------------------------------------------------------------
// Atomic files

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

/** Writes a file atomically: a temp file beside it, fsync, rename over, fsync the directory. */
export function writeFileAtomic(path: string, data: string): void {
  const tmp = `${path}.${ownerToken()}.${randomSuffix()}.tmp`;
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    writeFileSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

// ---------------------------------------------------------------------------
// Removing trees: never across a mount, btrfs subvolumes deleted as subvolumes

/**
 * Removes a directory tree made by the store (a stage, a temp, a checkout). First unmounts
 * anything mounted inside it (an overlayfs left by a killed build, a chroot's /proc or /dev
 * bind mounts: `rm -r` must never walk into those), then deletes btrfs subvolumes with
 * `btrfs subvolume delete` (they may be read-only), then removes the rest.
 */
export async function removeTree(path: string): Promise<void> {
  try {
    lstatSync(path);
  } catch {
    return;
  }
  await unmountUnder(path);
  if (mountsUnder(path).length > 0) throw new OsfarmError('OSFARM_STAGE', `refusing to remove ${path}: something is still mounted inside it`);
  if (fsType(path) === 'btrfs') await deleteSubvolumesIn(path);
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}

/** Deletes every btrfs subvolume at or just below `path` (the store's trees sit at `<dir>/tree`), nested ones first. */
async function deleteSubvolumesIn(path: string): Promise<void> {
  const candidates = [path];
  try {
    for (const e of readdirSync(path, { withFileTypes: true })) if (e.isDirectory()) candidates.push(join(path, e.name));
  } catch {
    /* not a directory */
  }
  for (const c of candidates.reverse()) if (isSubvolume(c)) await deleteSubvolume(c);
}

/** `btrfs subvolume delete`, deleting subvolumes nested inside it first (a chroot may create some). */
export async function deleteSubvolume(path: string): Promise<void> {
  const r = await tool('btrfs', ['subvolume', 'delete', path]);
  if (r.code === 0) return;
  // Nested subvolumes make the delete fail with ENOTEMPTY: find them (inode 256) and delete them first.
  const found = await tool('find', [path, '-mindepth', '1', '-type', 'd', '-inum', '256']);
  const nested = found.stdout.split('\n').filter((p) => p && isSubvolume(p)).sort((a, b) => b.length - a.length);
  for (const n of nested) await toolChecked('deleting a nested btrfs subvolume', 'btrfs', ['subvolume', 'delete', n]);
  await toolChecked('deleting a btrfs subvolume', 'btrfs', ['subvolume', 'delete', path]);
}

// ---------------------------------------------------------------------------
// Tree sizes

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
  walk(canonical(root));
  return usage;
}
