/**
 * build(): one spec in, images out. Phases: bootstrap and packages (the driver), configure
 * (configure.ts, in a chroot that is always torn down), pack (every output format), index
 * (each output indexed and added to the repository with its spec as metadata).
 */
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, createWriteStream, type WriteStream } from 'node:fs';
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { indexImage } from '../blocks/index.js';
import { defaultWorkDir, repositoryPath, sourceDateEpochFromEnv } from '../base/env.js';
import { OsfarmError } from '../base/errors.js';
import { eventSink, type ResultEvent } from '../base/events.js';
import { SOFTWARE, VERSION } from '../base/version.js';
import { type BuildMeta, BUILD_META_KIND, buildMeta, findBuilt } from '../images/lookup.js';
import { specToXml } from '../spec/xml.js';
import type { CowName } from '../stages/cow/types.js';
import type { StagePlan } from './plan.js';
import { type ChainResult, ensureChain, type StageReport, stagePlans } from './stages.js';
import { familyOf, OUTPUT_EXTENSION, type OutputFormat, outputFormatOfPath } from '../spec/distros.js';
import { selectDriver } from './drivers/index.js';
import type { Phase } from './drivers/types.js';
import { aborted, buildFailed } from './errors.js';
import { removeTree } from '../host/fs.js';
import { unmountBelow } from '../host/mounts.js';
import { OutputWriter } from './outputs/index.js';
import { installedPackages } from './installed.js';
import { preflight } from './preflight.js';
import { type ImageEntry, Repository } from '../repo/index.js';
import { imageArrived } from '../trust/provenance.js';
import { type BuildSpec, canonicalSpec, type CanonicalSpec, specDigest } from '../spec/spec.js';

export type { Phase } from './drivers/types.js';

/** What a build reports, in order; the last event is `{ type: 'result', result }` (see base/events.ts). */
export type BuildEvent =
  | { type: 'phase'; phase: Phase; detail?: string; elapsedMs: number }
  | { type: 'log'; line: string }
  | { type: 'progress'; phase: Phase; done: number; total: number; unit: 'bytes' | 'items'; detail?: string }
  | { type: 'stage'; stage: StageReport }
  | { type: 'output'; format: OutputFormat; path: string; size: number; digest: string }
  | ResultEvent<BuildResult>;

export interface BuildOptions {
  /** Where builds happen and the package cache lives: default $OSFARM_WORK, else ~/.cache/osfarm. */
  workDir?: string;
  /**
   * The image path. Its ending names its format; other formats of the spec go next to it
   * with their own endings. Default: `<workDir>/images/<name>-<digest>.<ext>`.
   */
  output?: string;
  /** The repository the outputs are added to (default $OSFARM_REPO, else ./osfarm-repo). */
  repo?: string;
  /** Do not add the outputs to a repository (each gets an `.osfi` index next to it instead). */
  noRepo?: boolean;
  /** Overrides the spec's sourceDateEpoch and $SOURCE_DATE_EPOCH. */
  sourceDateEpoch?: number;
  /** Keep a working copy of the built tree (a checkout of the last stage in the stage store) for inspection. */
  keepTree?: boolean;
  /** The stage store (cached stages): default $OSFARM_STAGES, else `<repo>/stages`. */
  stages?: string;
  /** Copy-on-write backend of a new stage store: auto (default: btrfs, overlayfs, reflink, copy, whichever works first) or a name. */
  cow?: CowName | 'auto';
  /** Keep the stage store under this size (LRU, never a stage in use): 20G, 500M… Default $OSFARM_STAGES_MAX. */
  stagesMaxSize?: number | string;
  /** Build even when the repository already holds the images of this exact request (stages are still reused). */
  rebuild?: boolean;
  /** Every event of the build, the result last; a listener's error is ignored. */
  onEvent?: (event: BuildEvent) => void;
  /** Ends the build (the chroot is torn down); it rejects with an AbortError carrying OSFARM_ABORTED. */
  signal?: AbortSignal;
  /**
   * Abort on SIGINT, SIGTERM and SIGHUP while the build runs (and re-raise the signal once
   * torn down if nobody else listens). Default: true when no `signal` is given.
   */
  handleSignals?: boolean;
}

export interface BuildOutput {
  format: OutputFormat;
  path: string;
  size: number;
  /** The image digest (its name in the repository). */
  digest: string;
  /** The `.osfi` index written next to the image (with noRepo). */
  indexPath?: string;
  inRepository: boolean;
}

export interface BuildResult {
  name: string;
  specDigest: string;
  spec: CanonicalSpec;
  backend: string;
  sourceDateEpoch: number | null;
  outputs: BuildOutput[];
  logPath: string;
  /** The build tree, when kept (keepTree). */
  treePath?: string;
  durationMs: number;
  /** Milliseconds spent in each phase. */
  phases: Partial<Record<Phase, number>>;
  /** The stages the image was packed from, core first (found in the store, or built). */
  stages: StageReport[];
  /** The stage store's copy-on-write backend. */
  cow?: string;
  /** True when the repository already held the images of this request: nothing was built. */
  cached: boolean;
}

/** Where each output goes. */
export function outputPaths(spec: BuildSpec, output: string | undefined, workDir: string, digest: string): Map<OutputFormat, string> {
  const paths = new Map<OutputFormat, string>();
  let base: string;
  if (output) {
    const abs = resolve(output);
    const f = outputFormatOfPath(abs);
    if (f && spec.outputs.includes(f)) paths.set(f, abs);
    base = f ? abs.slice(0, abs.length - (abs.toLowerCase().endsWith('.tgz') ? 4 : OUTPUT_EXTENSION[f].length)) : abs;
    if (f === 'disk' && !abs.toLowerCase().endsWith('.img')) base = abs.replace(/\.raw$/i, '');
  } else base = join(workDir, 'images', `${spec.name}-${digest.slice(0, 12)}`);
  for (const f of spec.outputs) if (!paths.has(f)) paths.set(f, `${base}${OUTPUT_EXTENSION[f]}`);
  return paths;
}

/** The SOURCE_DATE_EPOCH a build uses: the option, else the spec's, else $SOURCE_DATE_EPOCH, else none. */
function resolveEpoch(spec: BuildSpec, options: BuildOptions): number | null {
  if (options.sourceDateEpoch !== undefined) {
    if (!Number.isSafeInteger(options.sourceDateEpoch) || options.sourceDateEpoch < 0) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'sourceDateEpoch must be a whole number of seconds');
    return options.sourceDateEpoch;
  }
  return spec.sourceDateEpoch ?? sourceDateEpochFromEnv() ?? null;
}

/**
 * The stages build() would use for the spec on this host, core first (its bootstrap driver,
 * tool versions and package sources; nothing is built): what a build farm matches against
 * its workers' stage caches.
 */
export async function plannedStages(spec: BuildSpec, options: Pick<BuildOptions, 'sourceDateEpoch'> = {}): Promise<StagePlan[]> {
  return stagePlans(spec, await selectDriver(spec), VERSION, resolveEpoch(spec, options));
}

/** Builds the images a spec describes. Nothing runs before the spec, tools and paths check out. */
export async function build(spec: BuildSpec, options: BuildOptions = {}): Promise<BuildResult> {
  if (options.signal?.aborted) throw aborted(options.signal);
  const started = Date.now();
  const canonical = canonicalSpec(spec);
  const digest = specDigest(spec);
  const epoch = resolveEpoch(spec, options);
  const workDir = resolve(options.workDir ?? defaultWorkDir());
  const repoPath = resolve(repositoryPath(options.repo));
  const emit = eventSink(options.onEvent);
  const paths = outputPaths(spec, options.output, workDir, digest);
  if (!options.noRepo && !options.rebuild) {
    const found = findBuilt(repoPath, digest, spec.outputs, epoch);
    if (found) return finished(await fromRepository(spec, found, options.output ? paths : null, started), emit);
  }
  // Everything a spec can be refused for, before anything runs (as `osfarm build --check` does).
  const { driver } = await preflight(spec, { workDir, signal: options.signal, log: (line) => emit({ type: 'log', line }) });
  if (process.getuid && process.getuid() !== 0) throw buildFailed('building an image needs root (chroot, mounts, file ownership)');

  // Signals and the caller's AbortSignal both end the build through one controller.
  const controller = new AbortController();
  const signal = controller.signal;
  const onOuterAbort = () => controller.abort(options.signal!.reason);
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  if (options.signal?.aborted) onOuterAbort();
  let caught: NodeJS.Signals | undefined;
  const handlers = new Map<NodeJS.Signals, () => void>();
  if (options.handleSignals ?? !options.signal) {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      const h = () => {
        caught ??= sig;
        controller.abort(new DOMException(`interrupted by ${sig}`, 'AbortError'));
      };
      handlers.set(sig, h);
      process.on(sig, h);
    }
  }

  const primary = paths.values().next().value!;
  const logPath = `${primary}.build.log`;
  const buildDir = join(workDir, 'builds', `${digest.slice(0, 12)}-${process.pid}-${randomBytes(3).toString('hex')}`);
  let root = '';
  let chain: ChainResult | undefined;
  const cacheDir = join(workDir, 'cache', familyOf(spec.distribution) === 'deb' ? 'apt' : 'dnf', familyOf(spec.distribution) === 'deb' ? spec.distribution : `${spec.distribution}-${spec.release}-${spec.architecture}`);
  const phases: Partial<Record<Phase, number>> = {};
  let current: { phase: Phase; at: number } | undefined;
  let log: WriteStream | undefined;
  const logLines: string[] = [];
  const logLine = (line: string) => {
    log?.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)}] ${line}\n`);
    logLines.push(line);
    if (logLines.length > 4000) logLines.splice(0, 1000);
    emit({ type: 'log', line });
  };
  const phase = (p: Phase, detail?: string) => {
    const now = Date.now();
    if (current) phases[current.phase] = (phases[current.phase] ?? 0) + now - current.at;
    current = { phase: p, at: now };
    logLine(`osfarm: phase ${p}${detail ? ` (${detail})` : ''}`);
    emit({ type: 'phase', phase: p, ...(detail ? { detail } : {}), elapsedMs: now - started });
  };

  const outputs: BuildOutput[] = [];
  let failure: unknown;
  try {
    for (const p of new Set([...paths.values()].map((p) => dirname(p)))) await mkdir(p, { recursive: true });
    await mkdir(buildDir, { recursive: true });
    log = createWriteStream(logPath, { mode: 0o644 });
    logLine(`${SOFTWARE}: building ${spec.name} (${spec.distribution} ${spec.release} ${spec.architecture}) with ${driver.tool}`);
    logLine(`osfarm: spec digest ${digest}${epoch !== null ? `, SOURCE_DATE_EPOCH ${epoch}` : ''}`);

    if (!options.noRepo) Repository.openOrInit(repoPath);
    chain = await ensureChain(spec, {
      driver,
      osfarmVersion: VERSION,
      sourceDateEpoch: epoch,
      buildDir,
      cacheDir,
      listsDir: join(workDir, 'cache', 'apt-lists'),
      stages: options.stages,
      repo: repoPath,
      cow: options.cow,
      maxSize: options.stagesMaxSize,
      signal,
      log: logLine,
      phase,
      onStage: (stage) => emit({ type: 'stage', stage }),
    });
    root = chain.dir;
    if (signal.aborted) throw aborted(signal);

    const installed = await installedPackages(root, spec, logLine);

    phase('pack');
    let format: OutputFormat = spec.outputs[0]!;
    const store = chain.store;
    const writer = new OutputWriter({
      digest,
      spec,
      sourceDateEpoch: epoch,
      layers: chain.trees,
      derivedPath: (tag, name) => store.derivedPath(tag, name),
      buildDir,
      signal,
      log: logLine,
      onProgress: (e) => emit({ type: 'progress', phase: 'pack', done: e.done, total: e.total, unit: e.unit ?? 'bytes', detail: format }),
    });
    for (const f of OutputWriter.order(paths.keys())) {
      if (signal.aborted) throw aborted(signal);
      format = f;
      const path = paths.get(f)!;
      const t0 = Date.now();
      logLine(`osfarm: writing ${f} to ${path}`);
      await writer.write(f, path);
      logLine(`osfarm: ${f} written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }

    phase('index');
    const builder = SOFTWARE;
    // Provenance: when, beside by what; it travels with the image and dates its SBOM.
    const built = new Date().toISOString();
    for (const [format, path] of paths) {
      if (signal.aborted) throw aborted(signal);
      const size = (await stat(path)).size;
      const onProgress = (e: { done: number; total: number }) => emit({ type: 'progress', phase: 'index', done: e.done, total: e.total, unit: 'bytes', detail: format });
      let out: BuildOutput;
      if (options.noRepo) {
        const info = await indexImage(path, { output: `${path}.osfi`, onProgress, signal });
        out = { format, path, size, digest: info.digest, indexPath: `${path}.osfi`, inRepository: false };
      } else {
        const meta: BuildMeta = {
          kind: BUILD_META_KIND,
          builder,
          built,
          format,
          specDigest: digest,
          spec: canonical,
          specXml: specToXml(spec),
          stages: chain!.stages.map((s) => ({ tag: s.tag, label: s.label })),
          backend: driver.tool,
          cow: chain!.cow,
          sourceDateEpoch: epoch,
          buildLog: { path: logPath, tail: logLines.slice(-400).join('\n') },
          ...(installed ? { installed } : {}),
        };
        const entry = await Repository.openOrInit(repoPath).add(path, { name: `${spec.name}${OUTPUT_EXTENSION[format]}`, originalName: basename(path), format, meta, onProgress, signal });
        for (const moved of imageArrived(repoPath, entry, 'build').moves) {
          if (moved.previous) logLine(`osfarm: tag ${moved.name} moved from ${moved.previous} to ${moved.digest}`);
        }
        out = { format, path, size, digest: entry.digest, inRepository: true };
      }
      outputs.push(out);
      logLine(`osfarm: ${format} ${basename(path)}: ${size} bytes, digest ${out.digest}${out.inRepository ? ` (in ${repoPath})` : ''}`);
      emit({ type: 'output', format, path, size, digest: out.digest });
    }
  } catch (err) {
    failure = signal.aborted ? aborted(signal) : err;
  }

  // Teardown, whatever happened: nothing stays mounted, the scratch tree goes.
  try {
    if (chain && options.keepTree && !failure) {
      const kept = await chain.store.checkout(chain.stages[chain.stages.length - 1]!.tag);
      root = kept.dir;
      logLine(`osfarm: tree kept at ${root} (a working copy in the stage store; osfarm stages gc removes it once this process is gone)`);
    }
    await chain?.release();
    const left = await unmountBelow(buildDir, { log: logLine });
    if (left.length > 0) throw buildFailed(`still mounted after the build: ${left.join(', ')}`);
    await removeTree(buildDir, { errorCode: 'OSFARM_BUILD_FAILED', log: logLine });
  } catch (err) {
    logLine(`osfarm: teardown: ${(err as Error).message}`);
    failure ??= err;
  }
  if (current) phases[current.phase] = (phases[current.phase] ?? 0) + Date.now() - current.at;
  if (failure) logLine(`osfarm: build failed: ${(failure as Error).message}`);
  else logLine(`osfarm: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  await new Promise<void>((res) => (log ? log.end(res) : res()));

  options.signal?.removeEventListener('abort', onOuterAbort);
  for (const [sig, h] of handlers) process.off(sig, h);
  if (caught && process.listenerCount(caught) === 0) {
    // Nobody else handles it: die of the signal as if we had never caught it, now that the chroot is gone.
    process.kill(process.pid, caught);
  }
  if (failure) {
    if (failure instanceof OsfarmError && failure.code === 'OSFARM_BUILD_FAILED') {
      throw new OsfarmError('OSFARM_BUILD_FAILED', `${failure.message} (log: ${logPath})`, { cause: failure });
    }
    throw failure;
  }
  return finished({
    name: spec.name,
    specDigest: digest,
    spec: canonical,
    backend: driver.tool,
    sourceDateEpoch: epoch,
    outputs,
    logPath,
    ...(options.keepTree ? { treePath: root } : {}),
    durationMs: Date.now() - started,
    phases,
    stages: chain!.stages,
    cow: chain!.cow,
    cached: false,
  }, emit);
}

/** The result, also as the stream's last event. */
function finished(result: BuildResult, emit: (e: BuildEvent) => void): BuildResult {
  emit({ type: 'result', result });
  return result;
}

/** The answer to a request the repository already holds: its images (copied to the asked output path, if one was given). */
async function fromRepository(spec: BuildSpec, found: Map<OutputFormat, ImageEntry>, copyTo: Map<OutputFormat, string> | null, started: number): Promise<BuildResult> {
  const outputs: BuildOutput[] = [];
  let meta: BuildMeta | null = null;
  for (const f of spec.outputs) {
    const e = found.get(f)!;
    meta ??= buildMeta(e);
    let path = e.path;
    const target = copyTo?.get(f);
    if (target) {
      await mkdir(dirname(target), { recursive: true });
      await copyFile(e.path, target, fsConstants.COPYFILE_FICLONE);
      path = target;
    }
    outputs.push({ format: f, path, size: e.size, digest: e.digest, inRepository: true });
  }
  return {
    name: spec.name,
    specDigest: meta!.specDigest,
    spec: canonicalSpec(spec),
    backend: meta!.backend,
    sourceDateEpoch: meta!.sourceDateEpoch,
    outputs,
    logPath: meta!.buildLog?.path ?? '',
    durationMs: Date.now() - started,
    phases: {},
    stages: (meta!.stages ?? []).map((s, i, all) => ({ tag: s.tag, parent: all[i - 1]?.tag ?? null, label: s.label, hit: true, waited: false, seconds: 0 })),
    ...(meta!.cow ? { cow: meta!.cow } : {}),
    cached: true,
  };
}
