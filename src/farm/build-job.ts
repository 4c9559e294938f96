/**
 * A build as a job: build() with its events turned into job events, its files treated as
 * scratch (the repository keeps its own copy), and a result small enough for a job record.
 * The web server runs it in-process; a farm worker runs it into its own repository and then
 * pushes the outputs to the central one.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';

import { build, type BuildOptions } from '../builder/index.js';
import { type BuildSpec, OUTPUT_EXTENSION, type OutputFormat, specDigest } from '../spec/index.js';
import { findBuilt } from '../images/index.js';
import type { Emitted } from './job-model.js';

export interface BuildJobOptions {
  repo: string;
  workDir: string;
  stages: string;
  signal: AbortSignal;
  emit(event: Emitted): void;
}

export interface BuildJobOutput {
  format: OutputFormat;
  size: number;
  digest: string;
}

export interface BuildJobResult {
  specDigest: string;
  /** The repository already held this request: nothing was built. */
  cached: boolean;
  durationMs: number;
  phases: Record<string, number>;
  outputs: BuildJobOutput[];
  /** The stages, core first, and whether each came from the stage cache. */
  stages: { tag: string; label: string; hit: boolean }[];
}

/** Builds `spec` into `repo`, reporting through `emit`. */
export async function runBuildJob(spec: BuildSpec, o: BuildJobOptions): Promise<BuildJobResult> {
  const digest = specDigest(spec);
  // A request already answered needs no files at all; a new build's files are scratch.
  const answered = findBuilt(o.repo, digest, spec.outputs, spec.sourceDateEpoch) !== null;
  const scratch = answered ? undefined : join(o.workDir, 'web-builds', randomBytes(6).toString('hex'));
  const output = (x: { format: OutputFormat; size: number; digest: string }) =>
    o.emit({ type: 'output', output: { format: x.format, size: x.size, digest: x.digest, file: `${spec.name}${OUTPUT_EXTENSION[x.format]}` } });
  const options: BuildOptions = {
    ...(scratch ? { output: join(scratch, `${spec.name}${OUTPUT_EXTENSION[spec.outputs[0]!]}`) } : {}),
    repo: o.repo,
    workDir: o.workDir,
    stages: o.stages,
    signal: o.signal,
    handleSignals: false,
    onEvent: (e) => {
      switch (e.type) {
        case 'phase':
          return o.emit({ type: 'phase', phase: e.phase, ...(e.detail ? { detail: e.detail } : {}) });
        case 'log':
          return o.emit({ type: 'log', line: e.line });
        case 'progress':
          return o.emit({ type: 'progress', phase: e.phase, done: e.done, total: e.total, unit: e.unit, ...(e.detail ? { detail: e.detail } : {}) });
        case 'output':
          return output(e);
      }
    },
  };
  const r = await build(spec, options).finally(() => scratch && rm(scratch, { recursive: true, force: true }));
  if (r.cached) {
    o.emit({ type: 'log', line: `osfarm: request ${digest} is already in the repository: nothing to build` });
    r.outputs.forEach(output);
  }
  return {
    specDigest: r.specDigest,
    cached: r.cached,
    durationMs: r.durationMs,
    phases: r.phases,
    outputs: r.outputs.map((x) => ({ format: x.format, size: x.size, digest: x.digest })),
    stages: r.stages.map((s) => ({ tag: s.tag, label: s.label, hit: s.hit })),
  };
}
