/** squashfs with zstd, reproducible. */
import { cpus } from 'node:os';

import { logged, type OutputContext, treeOf } from './context.js';

/** The file system time is SOURCE_DATE_EPOCH when set. */
export async function writeSquashfs(path: string, ctx: OutputContext): Promise<void> {
  // With SOURCE_DATE_EPOCH in its environment mksquashfs sets the file system time itself
  // (and refuses -mkfs-time next to it).
  const args = [treeOf(ctx), path, '-noappend', '-comp', 'zstd', '-xattrs', '-no-progress', '-quiet', '-processors', String(Math.max(1, cpus().length)), '-reproducible'];
  await logged('squashfs output', 'mksquashfs', args, ctx);
}
