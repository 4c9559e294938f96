/**
 * Image formats written from a finished tree: the block-aligned tar (default), tar.gz (the
 * seed's format), raw ext4, qcow2 and squashfs. Every writer is deterministic for a given
 * tree, spec digest and SOURCE_DATE_EPOCH.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, lutimes, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

import type { OutputFormat } from '../spec/distros.js';
import { aborted, buildFailed } from './errors.js';
import { run, runPiped, SYSTEM_PATH } from '../host/process.js';
import { pack } from '../pack/index.js';

export interface OutputContext {
  /** The spec digest: seeds the ext4 UUID and directory hash seed. */
  digest: string;
  name: string;
  sourceDateEpoch: number | null;
  /** Scratch directory (for the raw image behind a qcow2). */
  buildDir: string;
  signal?: AbortSignal;
  log(line: string): void;
  onProgress?(e: { done: number; total: number }): void;
}

/**
 * Clamps modification times in the tree to SOURCE_DATE_EPOCH, in whole seconds (files
 * written during the build carry the build's clock, with sub-second parts that ext4 would
 * keep). Only those entries are touched: packages' files already have whole-second times
 * from before the epoch, and access times reach no output (the tars and squashfs drop
 * them, the ext4 writer sets them to the mtime).
 */
export async function clampTree(root: string, epoch: number): Promise<number> {
  let changed = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const p = join(dir, name);
      const st = await lstat(p);
      if (st.isDirectory()) await walk(p);
      const m = Math.min(Math.floor(st.mtimeMs / 1000), epoch);
      if (Math.floor(st.mtimeMs / 1000) !== m || st.mtimeMs % 1000 !== 0) {
        await lutimes(p, m, m);
        changed++;
      }
    }
  };
  await walk(root);
  const st = await lstat(root);
  const m = Math.min(Math.floor(st.mtimeMs / 1000), epoch);
  await lutimes(root, m, m);
  return changed;
}

/** Bytes the tree needs on a 4 KiB-block file system, and its inode count (hard links once). */
async function ext4Footprint(root: string): Promise<{ blocks: number; inodes: number }> {
  const seen = new Set<number>();
  let blocks = 0;
  let inodes = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const p = join(dir, name);
      const st = await lstat(p);
      if (st.nlink > 1 && !st.isDirectory()) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      inodes++;
      if (st.isDirectory()) {
        blocks += Math.max(1, Math.ceil(st.size / 4096));
        await walk(p);
      } else if (st.isFile()) blocks += Math.ceil(st.size / 4096);
      else if (st.isSymbolicLink() && st.size >= 60) blocks += 1;
    }
  };
  await walk(root);
  return { blocks, inodes: inodes + 1 };
}

/** A UUID derived from the spec digest (so equal specs give equal file systems). */
export function derivedUuid(digest: string, purpose: string): string {
  const h = createHash('sha256').update(`osfarm ${purpose}\n${digest}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

function env(ctx: OutputContext): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { PATH: SYSTEM_PATH, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
  if (ctx.sourceDateEpoch !== null) {
    e.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
    e.E2FSPROGS_FAKE_TIME = String(ctx.sourceDateEpoch);
  }
  return e;
}

async function checked(what: string, cmd: string, args: string[], ctx: OutputContext): Promise<void> {
  const r = await run(cmd, args, { env: env(ctx), signal: ctx.signal, onLine: ctx.log });
  if (r.code !== 0) throw buildFailed(`${what} failed (${cmd} exited with ${r.code ?? r.signal}); see the build log`);
}

/** Writes `root` as `format` to `path` (through a temporary name, renamed when complete). */
export async function writeOutput(format: OutputFormat, root: string, path: string, ctx: OutputContext, rawCache?: { path?: string }): Promise<void> {
  const tmp = `${path}.osfarm-part`;
  await rm(tmp, { force: true });
  try {
    switch (format) {
      case 'tar':
        await pack(root, tmp, {
          ...(ctx.sourceDateEpoch !== null ? { sourceDateEpoch: ctx.sourceDateEpoch } : {}),
          onProgress: ctx.onProgress,
          signal: ctx.signal,
        });
        break;
      case 'tar.gz':
        await writeTarGz(root, tmp, ctx);
        break;
      case 'ext4':
        await writeExt4(root, tmp, ctx);
        if (rawCache) rawCache.path = path;
        break;
      case 'qcow2': {
        let raw = rawCache?.path;
        let temporary = false;
        if (!raw) {
          raw = join(ctx.buildDir, 'image.ext4');
          await writeExt4(root, raw, ctx);
          temporary = true;
        }
        await checked('qcow2 conversion', 'qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, tmp], ctx);
        if (temporary) await rm(raw, { force: true });
        break;
      }
      case 'squashfs':
        await writeSquashfs(root, tmp, ctx);
        break;
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * tar.gz, as genfs made: GNU tar sorted by name with numeric owners, PAX headers without
 * atime/ctime, xattrs kept, mtimes clamped; gzip without a name or time in its header.
 */
async function writeTarGz(root: string, path: string, ctx: OutputContext): Promise<void> {
  const args = [
    '--sort=name',
    '--numeric-owner',
    '--format=pax',
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
    '--xattrs',
    '--xattrs-include=*',
    '--one-file-system',
    '-C',
    root,
    '-cf',
    '-',
    '.',
  ];
  if (ctx.sourceDateEpoch !== null) args.unshift(`--mtime=@${ctx.sourceDateEpoch}`, '--clamp-mtime');
  const r = await runPiped('tar', args, { env: env(ctx), signal: ctx.signal, onLine: ctx.log }, (stdout) =>
    pipeline(stdout, createGzip({ level: 6 }), createWriteStream(path)),
  ).catch((err) => {
    throw ctx.signal?.aborted ? aborted(ctx.signal) : err;
  });
  if (r.code !== 0) throw buildFailed(`tar.gz output failed (tar exited with ${r.code ?? r.signal})`);
}

/** Raw ext4 with 4 KiB blocks (so file data is block-aligned), sized to the tree plus headroom. */
async function writeExt4(root: string, path: string, ctx: OutputContext): Promise<void> {
  const usage = await ext4Footprint(root);
  const inodes = Math.ceil(usage.inodes * 1.25) + 1024;
  // data + inode tables (256 B) + 25 % headroom + journal and metadata.
  const bytes = usage.blocks * 4096 * 1.25 + inodes * 256 + 48 * 2 ** 20;
  const mib = Math.ceil(bytes / 2 ** 20 / 4) * 4;
  const uuid = derivedUuid(ctx.digest, 'ext4 uuid');
  const seed = derivedUuid(ctx.digest, 'ext4 hash seed');
  await rm(path, { force: true });
  ctx.log(`osfarm: ext4: ${mib} MiB, ${inodes} inodes, UUID ${uuid}`);
  await checked('ext4 output', 'mke2fs', [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-b',
    '4096',
    '-m',
    '0',
    '-N',
    String(inodes),
    '-U',
    uuid,
    '-E',
    `hash_seed=${seed},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard`,
    '-L',
    ctx.name.slice(0, 16),
    '-d',
    root,
    path,
    `${mib}M`,
  ], ctx);
  if (ctx.sourceDateEpoch !== null) await clampExt4Ctimes(root, path, ctx);
}

/**
 * mke2fs -d copies each file's ctime, which is the build's clock and cannot be set on the
 * host, and access times that reading the tree moved; debugfs sets every inode's ctime to
 * SOURCE_DATE_EPOCH and its atime to its mtime instead.
 */
async function clampExt4Ctimes(root: string, image: string, ctx: OutputContext): Promise<void> {
  const hex = `0x${ctx.sourceDateEpoch!.toString(16)}`;
  const lines: string[] = [`sif "/" ctime ${hex}`, `sif "/" atime ${hex}`];
  let skipped = 0;
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const r = `${rel}/${name}`;
      const st = await lstat(join(dir, name));
      if (/["\\\n\r]/.test(r)) skipped++;
      else {
        // Reading the tree (mke2fs did) moves access times: make them the modification time.
        const m = `0x${Math.min(Math.floor(st.mtimeMs / 1000), ctx.sourceDateEpoch!).toString(16)}`;
        lines.push(`sif "${r}" ctime ${hex}`, `sif "${r}" atime ${m}`);
      }
      if (st.isDirectory()) await walk(join(dir, name), r);
    }
  };
  await walk(root, '');
  if (skipped > 0) ctx.log(`osfarm: ext4: ${skipped} path(s) with quotes or backslashes keep their build-time ctime`);
  const script = join(ctx.buildDir, 'ext4-ctime.debugfs');
  await writeFile(script, `${lines.join('\n')}\n`);
  const r = await run('debugfs', ['-w', '-f', script, image], { env: env(ctx), signal: ctx.signal });
  await rm(script, { force: true });
  if (r.code !== 0) throw buildFailed(`ext4 output: debugfs could not set inode times (exit ${r.code ?? r.signal})`);
}

/** squashfs with zstd, reproducible; the file system time is SOURCE_DATE_EPOCH when set. */
async function writeSquashfs(root: string, path: string, ctx: OutputContext): Promise<void> {
  // With SOURCE_DATE_EPOCH in its environment mksquashfs sets the file system time itself
  // (and refuses -mkfs-time next to it).
  const args = [root, path, '-noappend', '-comp', 'zstd', '-xattrs', '-no-progress', '-quiet', '-processors', String(Math.max(1, cpus().length)), '-reproducible'];
  await checked('squashfs output', 'mksquashfs', args, ctx);
}
