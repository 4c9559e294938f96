/**
 * The ext4 root file system of the disk outputs and the ext4 output, made so that identical
 * files of the images of one stage chain land on identical 4 KiB blocks (docs/disk.md):
 *
 *  - layered: `mke2fs -d` of the chain's core tree, then each later stage's changes applied
 *    with debugfs (delta.ts), so a parent's inodes and blocks are a prefix of its child's;
 *  - one checksum seed and directory hash seed per chain (metadata_csum_seed, derived from
 *    the core stage's tag), the UUID set per image at the end;
 *  - a geometry that does not depend on the size: 16 KiB per inode, a size in whole 128 MiB
 *    groups and at least 2 GiB (sparse: the free space costs neither disk nor transfer),
 *    no resize inode, a 64 MiB journal, the features pinned by osfarm's own mke2fs.conf.
 *
 * Each stage's populated file system is kept with the stage in the stage store (a
 * "derived" file): a child's image starts as a copy of its parent's, so an appliance on a
 * cached base applies only its own changes.
 */
import type { BigIntStats } from 'node:fs';
import { link, lstat, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { run } from '../../host/process.js';
import { derivedUuid, logged, type OutputContext, tool, treeOf } from './context.js';
import { imageArg, quoted, runDebugfs } from './debugfs.js';
import { treeDelta, walkTree, mtimeOf } from './delta.js';

/** The layout recipe's version: part of a cached stage image's name, bumped when the recipe changes. */
export const ROOT_FS_RECIPE = 1;
const BLOCK = 4096;
const GROUP_BLOCKS = 32768; // 128 MiB
const MIN_BLOCKS = 16 * GROUP_BLOCKS; // 2 GiB: a full first flex group (below it flex_bg's layout depends on the group count)
const BYTES_PER_INODE = 16384;

/**
 * mke2fs's configuration, pinned so that a host's /etc/mke2fs.conf cannot change the layout.
 * No orphan_file (e2fsprogs 1.47's default, which kernels before 5.15 cannot mount).
 */
const MKE2FS_CONF = `[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = ${BYTES_PER_INODE}
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize
\t}
`;

/** Blocks of the root file system for a tree: its data and inodes with headroom, in whole groups, at least 2 GiB. */
export async function rootBlocks(tree: string, signal?: AbortSignal): Promise<number> {
  const seen = new Set<bigint>();
  let blocks = 0;
  let inodes = 1;
  for (const st of (await walkTree(tree, signal)).values()) {
    if (st.nlink > 1n && !st.isDirectory()) {
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
    }
    inodes++;
    if (st.isDirectory()) blocks += Math.max(1, Math.ceil(Number(st.size) / BLOCK));
    else if (st.isFile()) blocks += Math.ceil(Number(st.size) / BLOCK);
    else if (st.isSymbolicLink() && st.size >= 60n) blocks += 1;
  }
  // 25 % headroom plus the journal and metadata; enough inodes at the fixed ratio.
  const need = Math.max(blocks * 1.25 + (96 << 20) / BLOCK, (Math.ceil(inodes * 1.25) + 1024) * (BYTES_PER_INODE / BLOCK));
  return Math.max(MIN_BLOCKS, Math.ceil(need / GROUP_BLOCKS) * GROUP_BLOCKS);
}

let e2fsVersion: Promise<string> | undefined;
/** e2fsprogs' version (`mke2fs -V`): it names cached stage images, since another mke2fs may lay them out differently. */
function e2fsprogsVersion(): Promise<string> {
  e2fsVersion ??= run('mke2fs', ['-V'], { capture: true }).then((r) => /mke2fs ([0-9][0-9.]*)/.exec(r.stderr + r.stdout)?.[1] ?? 'unknown');
  return e2fsVersion;
}

/** A copy that keeps holes (and shares extents where the file system can: btrfs, xfs). */
export async function sparseCopy(from: string, to: string, ctx: OutputContext): Promise<void> {
  await rm(to, { force: true });
  await tool('copying a file system image', 'cp', ['--reflink=auto', '--sparse=always', '--', from, to], ctx);
}

/**
 * `sif` lines that set every entry's ctime to the epoch and its atime to its mtime (mke2fs -d
 * copies the host's), and an mtime after the epoch to the epoch (a stage's tree is clamped
 * already; a tree given by hand may not be).
 */
async function clampLines(tree: string, epoch: number, ctx: OutputContext): Promise<string[]> {
  const lines: string[] = [];
  const clamp = (o: string, st: BigIntStats) => {
    const m = mtimeOf(st, epoch);
    lines.push(`sif ${o} ctime @${epoch}`, `sif ${o} atime @${m}`);
    if (st.mtimeNs > BigInt(m) * 1_000_000_000n) lines.push(`sif ${o} mtime @${m}`);
  };
  clamp('"/"', await lstat(tree, { bigint: true }));
  let skipped = 0;
  for (const [r, st] of await walkTree(tree, ctx.signal)) {
    const o = quoted(r);
    if (o === null) skipped++;
    else clamp(o, st);
  }
  if (skipped > 0) ctx.log(`osfarm: ext4: ${skipped} path(s) with double quotes or line breaks keep their build-time ctime`);
  return lines;
}

/**
 * The root file system of the image's tree, populated stage by stage (and cached with each
 * stage), before any per-image write: returns its path, which must not be modified (it may
 * be the stage store's copy). `blocks` from rootBlocks().
 */
export async function populatedRoot(ctx: OutputContext, blocks: number): Promise<string> {
  const layers = ctx.layers;
  const name = `ext4-r${ROOT_FS_RECIPE}-e2fsprogs${await e2fsprogsVersion()}-${blocks}.img`;
  const cached = (i: number) => (layers[i]!.tag && ctx.derivedPath ? ctx.derivedPath(layers[i]!.tag!, name) : undefined);
  let start = -1;
  let current = '';
  for (let i = layers.length - 1; i >= 0; i--) {
    const c = cached(i);
    if (c && (await lstat(c).then((s) => s.isFile(), () => false))) {
      start = i;
      current = c;
      break;
    }
  }
  if (start >= 0) ctx.log(`osfarm: ext4: starting from the cached file system of stage ${layers[start]!.tag!.slice(0, 12)} (${layers.length - 1 - start} stage(s) to apply)`);
  const scratch = join(ctx.buildDir, 'rootfs');
  await mkdir(scratch, { recursive: true });
  const conf = join(scratch, 'mke2fs.conf');
  await writeFile(conf, MKE2FS_CONF);
  // The chain's seeds: its core stage's tag (or the spec digest for a tree without stages).
  const family = layers[0]!.tag ?? ctx.digest;
  for (let i = start + 1; i < layers.length; i++) {
    const t0 = Date.now();
    const next = join(scratch, `stage-${i}.ext4`);
    if (i === 0) {
      await rm(next, { force: true });
      await logged('ext4: mke2fs -d', 'mke2fs', [
        '-q', '-F', '-t', 'ext4', '-b', String(BLOCK), '-m', '0', '-i', String(BYTES_PER_INODE), '-I', '256',
        '-J', 'size=64', '-U', derivedUuid(family, 'ext4 uuid'), '-L', 'root',
        '-E', `hash_seed=${derivedUuid(family, 'ext4 hash seed')},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard`,
        '-d', layers[0]!.dir, next, String(blocks),
      ], ctx, { MKE2FS_CONFIG: conf });
      if (ctx.sourceDateEpoch !== null) await runDebugfs(next, await clampLines(layers[0]!.dir, ctx.sourceDateEpoch, ctx), 'ext4: clamping inode times', ctx);
      ctx.log(`osfarm: ext4: ${blocks / GROUP_BLOCKS * 128} MiB file system of the core stage in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } else {
      await sparseCopy(current, next, ctx);
      const xattrs = join(scratch, `xattrs-${i}`);
      await mkdir(xattrs, { recursive: true });
      const delta = await treeDelta(layers[i - 1]!.dir, layers[i]!.dir, { epoch: ctx.sourceDateEpoch, scratch: xattrs, signal: ctx.signal });
      if (delta.skipped.length > 0) ctx.log(`osfarm: ext4: ${delta.skipped.length} path(s) with double quotes or line breaks cannot be written by debugfs and are left as the parent stage had them: ${delta.skipped.slice(0, 3).join(', ')}`);
      await runDebugfs(next, delta.lines, `ext4: applying stage ${i}'s changes`, ctx);
      await rm(xattrs, { recursive: true, force: true });
      ctx.log(`osfarm: ext4: stage ${i}: ${delta.added} added, ${delta.changed} changed, ${delta.removed} removed (${delta.lines.length} debugfs commands) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    current = await keep(next, cached(i), 'file system', ctx);
  }
  return current;
}

/** Puts a file made from a stage into the stage store (linked, else copied, then renamed: never half there); returns where it is now. */
export async function keep(file: string, target: string | undefined, what: string, ctx: OutputContext): Promise<string> {
  if (!target) return file;
  try {
    await mkdir(join(target, '..'), { recursive: true });
    const tmp = `${target}.${process.pid}.tmp`;
    await rm(tmp, { force: true });
    await link(file, tmp).catch(() => sparseCopy(file, tmp, ctx));
    await rename(tmp, target);
    await rm(file, { force: true });
    return target;
  } catch (err) {
    // A cache that cannot be written costs time later, not this build.
    ctx.log(`osfarm: could not keep the stage's ${what} in the stage store: ${(err as Error).message}`);
    return file;
  }
}

/** A file written into the root file system for one image (fstab, grub.cfg): it depends on the image's UUIDs. */
export interface RootFile {
  path: string;
  content: string;
}

/**
 * Makes the copy of the populated root at `offset` in `image` a file system of its own: the
 * per-image files written in, its own UUID and label; then e2fsck must find nothing to
 * repair (systemd-fsck would otherwise fix it at boot and reboot the machine).
 */
export async function finishRoot(image: string, offset: number, ctx: OutputContext, opts: { uuid: string; label: string; files: RootFile[] }): Promise<void> {
  const tree = treeOf(ctx);
  const lines: string[] = [];
  const dirs = new Set<string>();
  const scratch = join(ctx.buildDir, 'rootfs');
  await mkdir(scratch, { recursive: true });
  for (const [i, f] of opts.files.entries()) {
    const local = join(scratch, `file-${i}`);
    await writeFile(local, f.content, { mode: 0o644 });
    const parent = f.path.slice(0, f.path.lastIndexOf('/')) || '/';
    const exists = async (p: string) => lstat(join(tree, p)).then(() => true, () => false);
    // The parent directories: made (0755, root) unless the tree has them.
    const missing: string[] = [];
    for (let d = parent; d !== '/' && !dirs.has(d) && !(await exists(d)); d = d.slice(0, d.lastIndexOf('/')) || '/') missing.unshift(d);
    for (const d of missing) {
      lines.push(`mkdir ${quoted(d)}`);
      dirs.add(d);
    }
    if (await exists(f.path)) lines.push(`rm ${quoted(f.path)}`);
    lines.push(`write ${quoted(local)} ${quoted(f.path)}`);
  }
  await runDebugfs(image, lines, 'ext4: writing the per-image files', ctx, offset);
  // tune2fs, not debugfs's ssv: ssv writes the primary superblock only, and e2fsck at boot
  // then finds the backups different, repairs, and systemd-fsck reboots the machine.
  await tool('ext4: setting the UUID and label', 'tune2fs', ['-U', opts.uuid, '-L', opts.label.slice(0, 16), imageArg(image, offset)], ctx);
  const r = await run('e2fsck', ['-fn', imageArg(image, offset)], { capture: true, signal: ctx.signal });
  if (r.code !== 0) {
    throw new OsfarmError('OSFARM_BUILD_FAILED', `ext4: e2fsck finds problems in the file system osfarm wrote (a bug; please report it): ${(r.stdout + r.stderr).trim().split('\n').slice(-5).join(' | ')}`);
  }
}

/** The ext4 output: the image's root file system alone, labelled with the image name. */
export async function writeExt4(path: string, populated: string, ctx: OutputContext): Promise<void> {
  await sparseCopy(populated, path, ctx);
  await finishRoot(path, 0, ctx, { uuid: derivedUuid(ctx.digest, 'ext4 uuid'), label: ctx.spec.name, files: [] });
}
