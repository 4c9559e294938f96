/**
 * overlayfs: a stage's tree holds only what the stage changed (an overlayfs upper layer,
 * with whiteouts for deleted files and opaque directories for replaced ones). A child is
 * built in an overlay mount whose lower layers are its ancestors' trees (nearest first)
 * and whose upper layer is its own new tree; the mount is constant time. A complete
 * stage is read through a read-only overlay of its whole chain; a checkout is one more
 * writable upper layer on top. Removing a stage would break its children, so the store
 * only removes a parent together with its children.
 *
 * Mount options: redirect_dir, index, metacopy and xino are off, so an upper layer is a
 * plain tree that stays valid as a lower layer under any later mount (renaming a
 * directory that came from below copies it up instead of leaving a redirect).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { fsType } from '../../host/fs.js';
import { unmountBelow } from '../../host/mounts.js';
import { runChecked } from '../../host/process.js';
import { ownerToken, randomSuffix } from '../../host/procs.js';
import { STAGE_ERRORS } from '../errors.js';
import type { CowMethod, ProbeResult, StageTrees, View, Workspace } from './types.js';

const OPTIONS = 'redirect_dir=off,index=off,metacopy=off,xino=off';

/** Characters overlayfs mount options cannot carry in a path. */
const BAD_PATH = /[,:\\\s]/;

function mountData(lowers: string[], upper?: string, work?: string): string {
  for (const p of [...lowers, upper ?? '', work ?? '']) {
    if (BAD_PATH.test(p)) throw new OsfarmError('OSFARM_STAGE', `overlayfs cannot use ${JSON.stringify(p)}: a path in the store contains , : \\ or white space; move the store`);
  }
  const data = upper ? `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work},${OPTIONS}` : `ro,lowerdir=${lowers.join(':')},${OPTIONS}`;
  // The kernel takes at most one page of mount data.
  if (data.length > 4000) {
    throw new OsfarmError('OSFARM_STAGE', `overlayfs mount options for a chain of ${lowers.length} stages are ${data.length} bytes (the kernel takes 4 KiB): use a shorter store path or a shallower chain`);
  }
  return data;
}

async function mountOverlay(lowers: string[], at: string, upper?: string, work?: string): Promise<void> {
  await runChecked('mounting the overlay', 'mount', ['-t', 'overlay', 'overlay', '-o', mountData(lowers, upper, work), at], STAGE_ERRORS);
}

/** A writable overlay on `lowers` in `dir`: `dir/tree` (upper), `dir/work`, mounted at `dir/merged`. */
async function writableOverlay(lowers: string[], dir: string): Promise<{ tree: string; work: string; merged: string }> {
  const tree = join(dir, 'tree');
  const work = join(dir, 'work');
  const merged = join(dir, 'merged');
  for (const d of [tree, work, merged]) mkdirSync(d, { recursive: true, mode: 0o755 });
  await mountOverlay(lowers, merged, tree, work);
  return { tree, work, merged };
}

/** Unmounts `dir` and everything below it; a stage error if something stays mounted. */
const unmounter = (dir: string) => async (): Promise<void> => {
  await unmountBelow(dir, STAGE_ERRORS);
};

export const overlayfs: CowMethod = {
  name: 'overlayfs',
  layered: true,
  sharesData: true,

  async probe(root: string): Promise<ProbeResult> {
    const type = fsType(root);
    if (type === 'overlayfs') return { available: false, detail: `${root} is itself on overlayfs, which cannot hold an upper layer: put the store on a real file system` };
    if (BAD_PATH.test(root)) return { available: false, detail: `the store path ${JSON.stringify(root)} contains , : \\ or white space, which overlayfs mount options cannot carry` };
    const dir = join(root, `.probe-${ownerToken()}-${randomSuffix()}`);
    const lower = join(dir, 'lower');
    mkdirSync(lower, { recursive: true });
    writeFileSync(join(lower, 'gone'), 'x');
    let mounted = false;
    try {
      const { merged } = await writableOverlay([lower], dir).then((r) => {
        mounted = true;
        return r;
      });
      // A whiteout (deleting a lower file) needs mknod of a 0/0 character device in the upper layer.
      rmSync(join(merged, 'gone'));
      writeFileSync(join(merged, 'new'), 'y');
      return { available: true, detail: `overlay mounts over the parent chain (constant time) on ${type}` };
    } catch (err) {
      const msg = (err as Error).message;
      return {
        available: false,
        detail: `cannot use overlayfs in ${root} (needs root or CAP_SYS_ADMIN, the overlay module, and an upper file system with trusted xattrs and d_type): ${msg}`,
      };
    } finally {
      if (mounted) await unmountBelow(join(dir, 'merged')).catch(() => {});
      await rm(dir, { recursive: true, force: true }).catch(() => {});
    }
  },

  async snapshot(parent: StageTrees | null, dir: string): Promise<Workspace> {
    if (parent === null) {
      // A core stage is a plain tree: the bottom layer of every chain above it.
      const tree = join(dir, 'tree');
      mkdirSync(tree, { mode: 0o755 });
      return { dir: tree, seal: async () => {}, discard: async () => {} };
    }
    const { work, merged } = await writableOverlay(parent.layers, dir);
    return {
      dir: merged,
      seal: async () => {
        await unmountBelow(merged, STAGE_ERRORS);
        await rm(work, { recursive: true, force: true });
        await rm(merged, { recursive: true, force: true });
      },
      discard: async () => {
        await unmountBelow(merged, STAGE_ERRORS);
      },
    };
  },

  async view(stage: StageTrees, at: string): Promise<View> {
    if (stage.layers.length === 1) return { dir: stage.layers[0]!, close: async () => {} };
    // A read-only overlay needs no upper layer (and at least two lower ones).
    mkdirSync(at, { recursive: true });
    await mountOverlay(stage.layers, at);
    return { dir: at, close: unmounter(at) };
  },

  async checkout(stage: StageTrees, dir: string): Promise<Workspace> {
    const { merged } = await writableOverlay(stage.layers, dir);
    return { dir: merged, seal: async () => {}, discard: unmounter(merged) };
  },
};
