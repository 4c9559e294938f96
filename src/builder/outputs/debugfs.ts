/**
 * Writing into an ext4 image with debugfs (e2fsprogs): scripts of commands, paths quoted
 * in its command language, failures seen (debugfs exits 0 whatever its commands did).
 */
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { buildFailed } from '../errors.js';
import { run } from '../../host/process.js';
import { type OutputContext, toolEnv } from './context.js';

/**
 * A path as a debugfs argument: in double quotes, in which debugfs takes every character
 * literally (backslashes too: systemd's `system-systemd\x2dcryptsetup.slice`). Only a
 * double quote or a line break cannot be written; null for such a path.
 */
export function quoted(path: string): string | null {
  return /["\n\r]/.test(path) ? null : `"${path}"`;
}

/** An image file, optionally at a byte offset in it (a partition of a disk). */
export function imageArg(image: string, offset = 0): string {
  return offset > 0 ? `${image}?offset=${offset}` : image;
}

/**
 * Runs `lines` as one debugfs script on the image (read-write). Any message on its standard
 * error but the version banner fails the build, naming `what` and the first messages.
 */
export async function runDebugfs(image: string, lines: string[], what: string, ctx: OutputContext, offset = 0): Promise<void> {
  if (lines.length === 0) return;
  const script = join(ctx.buildDir, `debugfs-${process.hrtime.bigint()}.txt`);
  await writeFile(script, `${lines.join('\n')}\n`);
  const errors: string[] = [];
  const r = await run('debugfs', ['-w', '-f', script, imageArg(image, offset)], {
    env: toolEnv(ctx),
    signal: ctx.signal,
    onLine: (line, stream) => {
      if (stream === 'stderr' && !/^debugfs \d/.test(line) && errors.length < 20) errors.push(line);
    },
  });
  await rm(script, { force: true });
  if (r.code !== 0 || errors.length > 0) {
    throw buildFailed(`${what}: debugfs failed (exit ${r.code ?? r.signal})${errors.length ? `: ${errors.slice(0, 5).join(' | ')}` : ''}`);
  }
}
