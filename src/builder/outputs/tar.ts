/** The tars: osfarm's block-aligned tar (the default output) and tar.gz as genfs made it. */
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

import { aborted, buildFailed } from '../errors.js';
import { runPiped } from '../../host/process.js';
import { pack } from '../../pack/index.js';
import { type OutputContext, toolEnv, treeOf } from './context.js';

/** The block-aligned tar of the tree (docs/aligned-tar.md). */
export async function writeTar(path: string, ctx: OutputContext): Promise<void> {
  await pack(treeOf(ctx), path, {
    ...(ctx.sourceDateEpoch !== null ? { sourceDateEpoch: ctx.sourceDateEpoch } : {}),
    onProgress: ctx.onProgress,
    signal: ctx.signal,
  });
}

/**
 * tar.gz, as genfs made: GNU tar sorted by name with numeric owners, PAX headers without
 * atime/ctime, xattrs kept, mtimes clamped; gzip without a name or time in its header.
 */
export async function writeTarGz(path: string, ctx: OutputContext): Promise<void> {
  const args = [
    '--sort=name',
    '--numeric-owner',
    '--format=pax',
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
    '--xattrs',
    '--xattrs-include=*',
    '--one-file-system',
    '-C',
    treeOf(ctx),
    '-cf',
    '-',
    '.',
  ];
  if (ctx.sourceDateEpoch !== null) args.unshift(`--mtime=@${ctx.sourceDateEpoch}`, '--clamp-mtime');
  const r = await runPiped('tar', args, { env: toolEnv(ctx), signal: ctx.signal, onLine: ctx.log }, (stdout) =>
    pipeline(stdout, createGzip({ level: 6 }), createWriteStream(path)),
  ).catch((err) => {
    throw ctx.signal?.aborted ? aborted(ctx.signal) : err;
  });
  if (r.code !== 0) throw buildFailed(`tar.gz output failed (tar exited with ${r.code ?? r.signal})`);
}
