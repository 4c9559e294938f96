/**
 * btrfs: every stage tree is a subvolume. A child starts as `btrfs subvolume snapshot` of
 * its parent (constant time, whatever the tree's size); a complete stage is set read-only
 * (`btrfs property set ro true`), so nothing can change a cached stage by accident. A
 * checkout is a writable snapshot. Needs the store on btrfs and btrfs-progs.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { fsType, isSubvolume } from '../../host/fs.js';
import { run, runChecked } from '../../host/process.js';
import { ownerToken, randomSuffix } from '../../host/procs.js';
import { STAGE_ERRORS } from '../errors.js';
import type { CowMethod, ProbeResult, StageTrees, View, Workspace } from './types.js';

async function snapshotOrCreate(source: string | null, tree: string): Promise<void> {
  if (source === null) {
    await runChecked('creating a btrfs subvolume', 'btrfs', ['subvolume', 'create', tree], STAGE_ERRORS);
    return;
  }
  if (!isSubvolume(source)) {
    throw new OsfarmError('OSFARM_STAGE', `${source} is not a btrfs subvolume: the parent stage was not made by the btrfs backend`);
  }
  await runChecked('taking a btrfs snapshot', 'btrfs', ['subvolume', 'snapshot', source, tree], STAGE_ERRORS);
}

export const btrfs: CowMethod = {
  name: 'btrfs',
  layered: false,
  sharesData: true,

  async probe(root: string): Promise<ProbeResult> {
    const type = fsType(root);
    if (type !== 'btrfs') return { available: false, detail: `needs the store on a btrfs file system; ${root} is on ${type}` };
    const version = await run('btrfs', ['--version'], { capture: true }).catch(() => null);
    if (version?.code !== 0) return { available: false, detail: 'needs btrfs-progs (the btrfs command)' };
    const dir = join(root, `.probe-${ownerToken()}-${randomSuffix()}`);
    mkdirSync(dir);
    try {
      const made = await run('btrfs', ['subvolume', 'create', join(dir, 's')], { capture: true });
      if (made.code !== 0) return { available: false, detail: `cannot create a btrfs subvolume in ${root}: ${made.stderr.trim()}` };
      const snap = await run('btrfs', ['subvolume', 'snapshot', join(dir, 's'), join(dir, 't')], { capture: true });
      await run('btrfs', ['subvolume', 'delete', join(dir, 't')]);
      await run('btrfs', ['subvolume', 'delete', join(dir, 's')]);
      if (snap.code !== 0) return { available: false, detail: `cannot snapshot a btrfs subvolume in ${root}: ${snap.stderr.trim()}` };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return { available: true, detail: 'subvolume snapshots (constant time), read-only once complete' };
  },

  async snapshot(parent: StageTrees | null, dir: string): Promise<Workspace> {
    const tree = join(dir, 'tree');
    await snapshotOrCreate(parent ? parent.layers[0]! : null, tree);
    return {
      dir: tree,
      seal: async () => {
        await runChecked('making the stage read-only', 'btrfs', ['property', 'set', '-ts', tree, 'ro', 'true'], STAGE_ERRORS);
      },
      discard: async () => {},
    };
  },

  async view(stage: StageTrees): Promise<View> {
    return { dir: stage.layers[0]!, close: async () => {} };
  },

  async checkout(stage: StageTrees, dir: string): Promise<Workspace> {
    const tree = join(dir, 'tree');
    await snapshotOrCreate(stage.layers[0]!, tree);
    return { dir: tree, seal: async () => {}, discard: async () => {} };
  },
};
