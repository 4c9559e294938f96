/**
 * What a stage changed over its parent (diffTrees): what the OCI output's layer of the stage
 * holds (layer.ts), and, as debugfs commands (treeDelta), what turns an ext4 file system
 * holding the parent's tree into one holding the child's, touching nothing else: the
 * parent's inodes and blocks stay where they are and the child's additions come after them
 * (docs/disk.md, "Identical files on identical blocks").
 *
 * The delta is computed from the two full trees, whatever the stage store's backend: an
 * entry whose change time (ctime, nanoseconds) is the same in both trees is the same inode
 * (an overlayfs lower file, a btrfs snapshot's unchanged file), since no process can set a
 * ctime and a copy gets a new one; other entries are compared by type, mode, owner, mtime,
 * size, link target, device number, extended attributes and, for regular files of equal
 * size, content.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { aborted, buildFailed } from '../errors.js';
import { run } from '../../host/process.js';
import { quoted } from './debugfs.js';

/** Relative paths (`/etc/fstab`) to their lstat, in the order mke2fs -d walks a tree: names sorted bytewise, depth first. */
export type TreeWalk = Map<string, BigIntStats>;

const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

export async function walkTree(root: string, signal?: AbortSignal): Promise<TreeWalk> {
  const out: TreeWalk = new Map();
  const visit = async (dir: string, rel: string): Promise<void> => {
    if (signal?.aborted) return;
    const names = (await readdir(dir)).sort(byteOrder);
    const stats = await Promise.all(names.map((n) => lstat(join(dir, n), { bigint: true })));
    for (const [i, n] of names.entries()) {
      const r = `${rel}/${n}`;
      out.set(r, stats[i]!);
      if (stats[i]!.isDirectory()) await visit(join(dir, n), r);
    }
  };
  await visit(root, '');
  return out;
}

/** Whole seconds of the modification time, clamped to the epoch. */
export function mtimeOf(st: BigIntStats, epoch: number | null): number {
  const s = Number(st.mtimeNs / 1_000_000_000n);
  return epoch === null ? s : Math.min(s, epoch);
}

const TYPE = 0o170000;

async function sameContent(a: string, b: string, size: number): Promise<boolean> {
  const fa = await open(a, 'r');
  const fb = await open(b, 'r');
  try {
    const ba = Buffer.alloc(Math.min(size, 1 << 20));
    const bb = Buffer.alloc(ba.length);
    for (let pos = 0; pos < size; pos += ba.length) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, pos), fb.read(bb, 0, bb.length, pos)]);
      if (ra.bytesRead !== rb.bytesRead || !ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
      if (ra.bytesRead === 0) break;
    }
    return true;
  } finally {
    await fa.close();
    await fb.close();
  }
}

/** Extended attributes of `paths` (absolute), by getfattr; paths without any are absent. */
export async function readXattrs(paths: string[], signal?: AbortSignal): Promise<Map<string, Map<string, Buffer>>> {
  const out = new Map<string, Map<string, Buffer>>();
  for (let i = 0; i < paths.length; i += 400) {
    const batch = paths.slice(i, i + 400);
    const r = await run('getfattr', ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', '--', ...batch], { capture: true, signal });
    // Exit 1 with a message for a path that vanished; anything else is a failure.
    if (r.code !== 0 && !/No such file/.test(r.stderr)) throw buildFailed(`reading extended attributes with getfattr failed: ${r.stderr.trim().split('\n')[0]}`);
    let current: Map<string, Buffer> | undefined;
    for (const line of r.stdout.split('\n')) {
      if (line.startsWith('# file: ')) {
        // getfattr writes a backslash and unprintable bytes as \ooo.
        const path = Buffer.from(line.slice(8).replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), 'latin1').toString('utf8');
        current = new Map();
        out.set(path, current);
      } else if (current && /^[^=]+=0x[0-9a-f]*$/.test(line)) {
        const at = line.indexOf('=');
        current.set(line.slice(0, at), Buffer.from(line.slice(at + 3), 'hex'));
      } else if (current && /^[^=]+$/.test(line.trim()) && line.trim() !== '') current.set(line.trim(), Buffer.alloc(0));
    }
  }
  return out;
}

function sameXattrs(a: Map<string, Buffer> | undefined, b: Map<string, Buffer> | undefined): boolean {
  const x = a ?? new Map<string, Buffer>();
  const y = b ?? new Map<string, Buffer>();
  if (x.size !== y.size) return false;
  for (const [k, v] of x) if (!y.get(k)?.equals(v)) return false;
  return true;
}

/** How an entry of the child differs from the parent's entry of the same path. */
export type ChangeKind = 'added' | 'meta' | 'replace';

/** Two trees compared: every path the child added or changed, and what it removed. */
export interface TreeDiff {
  parent: TreeWalk;
  child: TreeWalk;
  /** The child's changed and added paths (absent: the same as in the parent), in the child's walk order. */
  changes: Map<string, ChangeKind>;
  /** Paths of the parent the child no longer has, deepest first (a directory after its contents). */
  gone: string[];
  /** Extended attributes of the entries that may have changed, by absolute path, in each tree. */
  xattrs: { parent: Map<string, Map<string, Buffer>>; child: Map<string, Map<string, Buffer>> };
}

/** Compares two full trees (the module comment says how). */
export async function diffTrees(parent: string, child: string, epoch: number | null, signal?: AbortSignal): Promise<TreeDiff> {
  const [P, C] = await Promise.all([walkTree(parent, signal), walkTree(child, signal)]);
  // Extended attributes: only entries whose inode may have changed, in both trees.
  const suspects = [...C.entries()].filter(([r, st]) => P.get(r)?.ctimeNs !== st.ctimeNs).map(([r]) => r);
  const [px, cx] = await Promise.all([
    readXattrs(suspects.filter((r) => P.has(r)).map((r) => parent + r), signal),
    readXattrs(suspects.map((r) => child + r), signal),
  ]);
  const kindOf = async (r: string, a: BigIntStats, b: BigIntStats): Promise<ChangeKind | null> => {
    if (a.ctimeNs === b.ctimeNs) return null;
    if ((a.mode & BigInt(TYPE)) !== (b.mode & BigInt(TYPE))) return 'replace';
    if (b.isSymbolicLink() && (await readlink(parent + r)) !== (await readlink(child + r))) return 'replace';
    if ((b.isCharacterDevice() || b.isBlockDevice()) && a.rdev !== b.rdev) return 'replace';
    if (b.isFile() && (a.size !== b.size || !(await sameContent(parent + r, child + r, Number(b.size))))) return 'replace';
    if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || mtimeOf(a, epoch) !== mtimeOf(b, epoch)) return 'meta';
    if (!sameXattrs(px.get(parent + r), cx.get(child + r))) return 'meta';
    return null;
  };
  const changes = new Map<string, ChangeKind>();
  for (const [r, st] of C) {
    if (signal?.aborted) throw aborted(signal);
    const before = P.get(r);
    const kind = before ? await kindOf(r, before, st) : 'added';
    if (kind) changes.set(r, kind);
  }
  const gone = [...P.keys()].filter((r) => !C.has(r)).sort((a, b) => b.split('/').length - a.split('/').length || byteOrder(a, b));
  return { parent: P, child: C, changes, gone, xattrs: { parent: px, child: cx } };
}

export interface DeltaOptions {
  epoch: number | null;
  /** A scratch directory for extended attribute values (debugfs reads them from files). */
  scratch: string;
  signal?: AbortSignal;
}

export interface Delta {
  lines: string[];
  added: number;
  removed: number;
  changed: number;
  /** Paths debugfs cannot name (a double quote or a line break), left as the parent had them. */
  skipped: string[];
}

/** The debugfs commands that turn a file system made from `parent` into one of `child`. */
export async function treeDelta(parent: string, child: string, opts: DeltaOptions): Promise<Delta> {
  const { parent: P, child: C, changes, gone, xattrs } = await diffTrees(parent, child, opts.epoch, opts.signal);
  const E = opts.epoch;
  const lines: string[] = [];
  const skipped: string[] = [];
  const q = (r: string): string | null => {
    const s = quoted(r);
    if (s === null) skipped.push(r);
    return s;
  };

  let nx = 0;
  const xattrLines = async (r: string, o: string, old: Map<string, Buffer> | undefined): Promise<void> => {
    const now = xattrs.child.get(child + r) ?? new Map<string, Buffer>();
    for (const k of old?.keys() ?? []) if (!now.has(k)) lines.push(`ea_rm ${o} ${k}`);
    for (const [k, v] of now) {
      if (old?.get(k)?.equals(v)) continue;
      const f = join(opts.scratch, `xattr-${++nx}`);
      await writeFile(f, v);
      lines.push(`ea_set -f ${f} ${o} ${k}`);
    }
  };
  // Owner, mode and times of an entry debugfs has just made: it gives new inodes uid 0,
  // gid 0, times = now (E2FSPROGS_FAKE_TIME, the epoch), a written file the host file's
  // permission bits, a directory 0755, a symlink 0777.
  const created = async (r: string, o: string, st: BigIntStats): Promise<void> => {
    if (!st.isFile()) lines.push(`sif ${o} mode 0${st.mode.toString(8)}`);
    if (st.uid !== 0n) lines.push(`sif ${o} uid ${st.uid}`);
    if (st.gid !== 0n) lines.push(`sif ${o} gid ${st.gid}`);
    const m = mtimeOf(st, E);
    if (m !== E) lines.push(`sif ${o} mtime @${m}`, `sif ${o} atime @${m}`);
    await xattrLines(r, o, undefined);
  };
  const changedMeta = async (r: string, o: string, st: BigIntStats): Promise<void> => {
    const m = mtimeOf(st, E);
    lines.push(`sif ${o} mode 0${st.mode.toString(8)}`, `sif ${o} uid ${st.uid}`, `sif ${o} gid ${st.gid}`, `sif ${o} mtime @${m}`, `sif ${o} atime @${m}`);
    if (E !== null) lines.push(`sif ${o} ctime @${E}`);
    await xattrLines(r, o, xattrs.parent.get(parent + r));
  };

  // 1. What the child removed, deepest first (a directory is empty when its turn comes).
  for (const r of gone) {
    const o = q(r);
    if (o) lines.push(`${P.get(r)!.isDirectory() ? 'rmdir' : 'rm'} ${o}`);
  }

  // 2. Changes and additions, in mke2fs -d's order.
  const links = new Map<string, string>(); // "dev:ino" of a hard-linked inode → its first path in the child
  let added = 0;
  let changed = 0;
  for (const [r, st] of C) {
    if (opts.signal?.aborted) break;
    const o = q(r);
    if (o === null) continue;
    const key = `${st.dev}:${st.ino}`;
    const linked = st.nlink > 1n && !st.isDirectory();
    const before = P.get(r);
    const kind = changes.get(r);
    if (before) {
      if (!kind) {
        if (linked && !links.has(key)) links.set(key, o);
        continue;
      }
      changed++;
      if (kind === 'meta') {
        await changedMeta(r, o, st);
        continue;
      }
      lines.push(`${before.isDirectory() ? 'rmdir' : 'rm'} ${o}`);
    } else added++;
    if (linked && links.has(key)) {
      // A further name of an inode already in the file system: debugfs's ln does not count links.
      lines.push(`ln ${links.get(key)} ${o}`, `sif ${links.get(key)} links_count ${st.nlink}`);
      continue;
    }
    if (linked) links.set(key, o);
    if (st.isDirectory()) lines.push(`mkdir ${o}`);
    else if (st.isFile()) {
      const host = q(child + r);
      if (host === null) continue;
      lines.push(`write ${host} ${o}`);
    } else if (st.isSymbolicLink()) {
      const target = await readlink(child + r);
      const t = q(target);
      if (t === null) continue;
      lines.push(`symlink ${o} ${t}`);
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      const major = Number((st.rdev >> 8n) & 0xfffn);
      const minor = Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & 0xfff00n));
      lines.push(`mknod ${o} ${st.isCharacterDevice() ? 'c' : 'b'} ${major} ${minor}`);
    } else if (st.isFIFO()) lines.push(`mknod ${o} p`);
    else continue; // sockets do not go into images
    await created(r, o, st);
  }
  if (opts.signal?.aborted) throw aborted(opts.signal);
  return { lines, added, removed: gone.length, changed, skipped };
}
