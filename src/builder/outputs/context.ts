/** What every output writer gets, and the helpers they share (environment, identifiers, running tools). */
import { createHash } from 'node:crypto';

import { buildFailed } from '../errors.js';
import { run, runChecked, SYSTEM_PATH } from '../../host/process.js';
import type { BuildSpec } from '../../spec/spec.js';

/** A stage of the image's chain and its full tree; `tag` is null for a tree that is no stage. */
export interface LayerTree {
  tag: string | null;
  dir: string;
  /** The stage's label ("+ base"), for the OCI history. */
  label?: string;
}

export interface OutputContext {
  /** The spec digest: seeds the disk's and file systems' identifiers. */
  digest: string;
  spec: BuildSpec;
  sourceDateEpoch: number | null;
  /** The trees of the image's stages, core first; the last is the image's own tree. */
  layers: LayerTree[];
  /** Where a file derived from a stage is cached with it (the stage store's derivedPath), if there is a store. */
  derivedPath?: (tag: string, name: string) => string;
  /** Scratch directory of the build. */
  buildDir: string;
  signal?: AbortSignal;
  log(line: string): void;
  /** Progress of the writer: bytes, or (`unit: 'items'`) a count such as mksquashfs's blocks. */
  onProgress?(e: { done: number; total: number; unit?: 'bytes' | 'items' }): void;
}

/** The image's own tree. */
export function treeOf(ctx: OutputContext): string {
  return ctx.layers[ctx.layers.length - 1]!.dir;
}

/** A UUID (version 4 form) derived from a seed, so equal specs give equal disks and file systems. */
export function derivedUuid(seed: string, purpose: string): string {
  const h = createHash('sha256').update(`osfarm ${purpose}\n${seed}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** The tools' environment: system PATH, C locale, UTC, and the build's clock for e2fsprogs, mtools and mkfs.fat. */
export function toolEnv(ctx: OutputContext): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { PATH: SYSTEM_PATH, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', TZ: 'UTC', MTOOLS_SKIP_CHECK: '1' };
  if (ctx.sourceDateEpoch !== null) {
    e.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
    e.E2FSPROGS_FAKE_TIME = String(ctx.sourceDateEpoch);
  }
  return e;
}

/** Runs a tool; a non-zero exit fails the build naming `what`, with the tool's last lines. */
export function tool(what: string, cmd: string, args: string[], ctx: OutputContext, env: NodeJS.ProcessEnv = {}): Promise<string> {
  return runChecked(what, cmd, args, { env: { ...toolEnv(ctx), ...env }, signal: ctx.signal, errorCode: 'OSFARM_BUILD_FAILED' });
}

/** Runs a tool with its output in the build log. */
export async function logged(what: string, cmd: string, args: string[], ctx: OutputContext, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const r = await run(cmd, args, { env: { ...toolEnv(ctx), ...env }, signal: ctx.signal, onLine: ctx.log });
  if (r.code !== 0) throw buildFailed(`${what} failed (${cmd} exited with ${r.code ?? r.signal}); see the build log`);
}
