/**
 * reflink and plain copy: every stage tree is a full directory tree. A child starts as
 * `cp -a --reflink=always` of its parent (file data shared, copy-on-write, on btrfs and on
 * xfs made with reflink=1: time grows with the number of files, not their size), or, as
 * the last resort, `cp -a --reflink=never` (a full copy of every byte).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { fsType } from '../../host/fs.js';
import { run, runChecked } from '../../host/process.js';
import { ownerToken, randomSuffix } from '../../host/procs.js';
import { STAGE_ERRORS } from '../errors.js';
import type { CowMethod, CowName, ProbeResult, StageTrees, View, Workspace } from './types.js';

function copyBackend(name: CowName, reflink: 'always' | 'never'): CowMethod {
  const copyTree = async (source: string | null, tree: string) => {
    if (source === null) mkdirSync(tree, { mode: 0o755 });
    else await runChecked(reflink === 'always' ? 'reflink-copying the parent stage' : 'copying the parent stage', 'cp', ['-a', `--reflink=${reflink}`, '--no-target-directory', source, tree], STAGE_ERRORS);
  };
  return {
    name,
    layered: false,
    sharesData: reflink === 'always',

    async probe(root: string): Promise<ProbeResult> {
      if (reflink === 'never') return { available: true, detail: 'cp -a: full copies, nothing shared (the last resort)' };
      const type = fsType(root);
      const dir = join(root, `.probe-${ownerToken()}-${randomSuffix()}`);
      mkdirSync(dir);
      try {
        writeFileSync(join(dir, 'a'), 'osfarm reflink probe\n');
        const r = await run('cp', ['--reflink=always', join(dir, 'a'), join(dir, 'b')]);
        if (r.code !== 0) {
          return {
            available: false,
            detail: `needs a file system with reflinks (btrfs, or xfs made with mkfs.xfs -m reflink=1); ${root} is on ${type}${type === 'xfs' ? ' without reflink=1' : ''}`,
          };
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      return { available: true, detail: `cp -a --reflink=always on ${type}: data shared, time grows with the number of files` };
    },

    async snapshot(parent: StageTrees | null, dir: string): Promise<Workspace> {
      const tree = join(dir, 'tree');
      await copyTree(parent ? parent.layers[0]! : null, tree);
      return { dir: tree, seal: async () => {}, discard: async () => {} };
    },

    async view(stage: StageTrees): Promise<View> {
      return { dir: stage.layers[0]!, close: async () => {} };
    },

    async checkout(stage: StageTrees, dir: string): Promise<Workspace> {
      const tree = join(dir, 'tree');
      await copyTree(stage.layers[0]!, tree);
      return { dir: tree, seal: async () => {}, discard: async () => {} };
    },
  };
}

export const reflink = copyBackend('reflink', 'always');
export const copy = copyBackend('copy', 'never');
