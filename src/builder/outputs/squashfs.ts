/** squashfs with zstd, reproducible. */
import { cpus } from 'node:os';

import { buildFailed } from '../errors.js';
import { run } from '../../host/process.js';
import { type OutputContext, toolEnv, treeOf } from './context.js';

/** mksquashfs's progress bar, `[====   ]  1234/5678  21%` (redrawn after a carriage return). */
const SQUASHFS_PROGRESS = /\]\s+(\d+)\/(\d+)\s+\d+%\s*$/;

/** The file system time is SOURCE_DATE_EPOCH when set. */
export async function writeSquashfs(path: string, ctx: OutputContext): Promise<void> {
  // With SOURCE_DATE_EPOCH in its environment mksquashfs sets the file system time itself
  // (and refuses -mkfs-time next to it). -quiet keeps its progress bar, which becomes
  // progress events (in blocks written) instead of log lines.
  const args = [treeOf(ctx), path, '-noappend', '-comp', 'zstd', '-xattrs', '-quiet', '-processors', String(Math.max(1, cpus().length)), '-reproducible'];
  const onLine = (line: string) => {
    const m = SQUASHFS_PROGRESS.exec(line);
    if (m) ctx.onProgress?.({ done: Number(m[1]), total: Number(m[2]), unit: 'items' });
    else ctx.log(line);
  };
  const r = await run('mksquashfs', args, { env: toolEnv(ctx), signal: ctx.signal, onLine });
  if (r.code !== 0) throw buildFailed(`squashfs output failed (mksquashfs exited with ${r.code ?? r.signal}); see the build log`);
}
