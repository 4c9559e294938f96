/**
 * A stage as an OCI layer: an uncompressed tar of what the stage changed over its parent
 * (the core stage: its whole tree), with an OCI whiteout (`.wh.<name>`, an empty file) for
 * each path it removed. The changes are diffTrees' (delta.ts, as for the layered ext4),
 * archived by GNU tar from the stage's tree in the tree's walk order, then rewritten by
 * osfarm's aligned packer: owners numeric, mtimes clamped to SOURCE_DATE_EPOCH, no
 * atime/ctime, file data on 4 KiB boundaries. A stage's layer depends on nothing but its
 * tree, its parent's tree and the epoch, so every image on a stage has the same layer bytes;
 * it is kept with the stage (derivedPath), so later images link it instead of making it
 * again. docs/disk.md ("OCI") describes the format.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';

import { pack } from '../../pack/index.js';
import type { OutputContext } from './context.js';
import { tool } from './context.js';
import { diffTrees } from './delta.js';
import { keep } from './rootfs.js';

/** Bumped when the layer a stage gives changes: a layer kept with a stage by an older recipe is not reused. */
const LAYER_RECIPE = 1;

export interface StageLayer {
  /** The layer tar (in the stage store when kept there): read it, never modify it. */
  path: string;
  /** sha256 of the tar, hex: the layer's digest and, uncompressed, its diff_id. */
  digest: string;
  size: number;
  /** What the stage changed (all of the core's tree counts as added). */
  added: number;
  changed: number;
  removed: number;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Where layers are made: the caller removes it once the layers are used (a layer not kept with a stage stays in it). */
export function layerScratch(ctx: OutputContext): string {
  return join(ctx.buildDir, 'oci-layers');
}

/** The layer of stage `i` of the image's chain: kept with the stage, or made now (and kept). */
export async function stageLayer(ctx: OutputContext, i: number): Promise<StageLayer> {
  const stage = ctx.layers[i]!;
  const name = `oci-layer-r${LAYER_RECIPE}-${ctx.sourceDateEpoch ?? 'unclamped'}.tar`;
  const cached = stage.tag && ctx.derivedPath ? ctx.derivedPath(stage.tag, name) : undefined;
  // The digest and counts are written before the tar is renamed into place: a kept tar has them.
  const meta = (p: string) => `${p}.json`;
  if (cached && (await lstat(cached).then((s) => s.isFile(), () => false))) {
    try {
      const m = JSON.parse(await readFile(meta(cached), 'utf8')) as Omit<StageLayer, 'path'>;
      ctx.log(`osfarm: oci: layer of stage ${i} (${stage.tag!.slice(0, 12)}) kept with the stage: sha256:${m.digest.slice(0, 16)}`);
      return { ...m, path: cached };
    } catch {
      /* no readable digest: made again below */
    }
  }
  const t0 = Date.now();
  const scratch = join(layerScratch(ctx), String(i));
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  const out = join(scratch, 'layer.tar');
  const epoch = ctx.sourceDateEpoch !== null ? { sourceDateEpoch: ctx.sourceDateEpoch } : {};
  let counts = { added: 0, changed: 0, removed: 0 };
  if (i === 0) {
    const r = await pack(stage.dir, out, { ...epoch, signal: ctx.signal });
    counts = { added: r.entries, changed: 0, removed: 0 };
  } else {
    counts = await deltaTar(ctx.layers[i - 1]!.dir, stage.dir, scratch, join(scratch, 'delta.tar'), ctx);
    await pack(join(scratch, 'delta.tar'), out, { ...epoch, signal: ctx.signal });
    for (const n of ['delta.tar', 'changes.list', 'whiteouts.list', 'whiteouts']) await rm(join(scratch, n), { recursive: true, force: true });
  }
  const layer = { digest: await sha256File(out), size: (await lstat(out)).size, ...counts };
  ctx.log(
    `osfarm: oci: layer of stage ${i}${stage.tag ? ` (${stage.tag.slice(0, 12)})` : ''}: ${counts.added} added, ${counts.changed} changed, ${counts.removed} removed; ` +
      `${layer.size} bytes, sha256:${layer.digest.slice(0, 16)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
  );
  if (cached) {
    await mkdir(dirname(cached), { recursive: true }).catch(() => {});
    await writeFile(meta(cached), JSON.stringify(layer)).catch(() => {});
  }
  return { ...layer, path: await keep(out, cached, 'OCI layer', ctx) };
}

/**
 * Writes the plain tar of what `child` changed over `parent` to `out`: the changed and added
 * entries (a changed file whole, as overlayfs copies it up), then the whiteouts, made in
 * `scratch`. A whiteout is written only where the parent directory is still a directory in
 * the child: below a removed or replaced directory the directory's own entry covers it.
 */
async function deltaTar(parent: string, child: string, scratch: string, out: string, ctx: OutputContext): Promise<{ added: number; changed: number; removed: number }> {
  const diff = await diffTrees(parent, child, ctx.sourceDateEpoch, ctx.signal);
  const whiteouts = join(scratch, 'whiteouts');
  const wnames: string[] = [];
  // The directories above every entry and whiteout go in too, as they are in the child (what
  // docker's layers do): an applier that makes a missing parent itself gives it its own time.
  const parents = new Set<string>();
  const addParents = (r: string) => {
    for (let d = r.slice(0, r.lastIndexOf('/')); d !== '' && !parents.has(d); d = d.slice(0, d.lastIndexOf('/'))) parents.add(d);
  };
  for (const r of diff.gone) {
    const at = r.lastIndexOf('/');
    const dir = r.slice(0, at);
    if (dir !== '' && !diff.child.get(dir)?.isDirectory()) continue;
    wnames.push(`.${dir}/.wh.${r.slice(at + 1)}`);
    addParents(r);
  }
  wnames.sort(byteOrder);
  const names: string[] = [];
  let added = 0;
  let changed = 0;
  for (const r of diff.changes.keys()) if (!diff.child.get(r)!.isSocket()) addParents(r);
  for (const [r, st] of diff.child) {
    const kind = diff.changes.get(r);
    if (st.isSocket() || (!kind && !parents.has(r))) continue; // sockets do not go into images
    names.push(`.${r}`);
    if (kind === 'added') added++;
    else if (kind) changed++;
  }
  const time = ctx.sourceDateEpoch ?? 0;
  for (const w of wnames) {
    const f = join(whiteouts, w);
    await mkdir(dirname(f), { recursive: true });
    await writeFile(f, '');
    await chmod(f, 0o644);
    await utimes(f, time, time);
  }
  await mkdir(whiteouts, { recursive: true });
  const list = join(scratch, 'changes.list');
  const wlist = join(scratch, 'whiteouts.list');
  await writeFile(list, names.map((n) => `${n}\0`).join(''));
  await writeFile(wlist, wnames.map((n) => `${n}\0`).join(''));
  // Names verbatim (a name starting with '-' is a name), NUL-separated (a name may hold a
  // line break); each -T reads its names relative to the -C before it.
  await tool('oci: archiving the stage\'s changes (tar)', 'tar', [
    '--create', '--file', out, '--format=pax', '--numeric-owner', '--xattrs', '--xattrs-include=*', '--no-recursion',
    '--null', '--verbatim-files-from', '-C', child, '-T', list, '-C', whiteouts, '-T', wlist,
  ], ctx);
  return { added, changed, removed: wnames.length };
}
