/** File times of a finished stage tree, clamped for reproducible outputs. */
import { lstat, lutimes, readdir } from 'node:fs/promises';
import { join } from 'node:path';

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
