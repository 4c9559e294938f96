/**
 * Everything a build can be refused for before anything runs, in one place, so that
 * `osfarm build --check` and a real build refuse the same specs: the release, architecture
 * and package names against the archives (src/archive/), the bootstrap driver's own checks
 * (its tool is installed, the spec gives what it needs, such as an RPM mirror), and the
 * tools of the output formats.
 */
import { checkSources, type FetchPolicy, packageIndexDir, PackageIndexes } from '../archive/index.js';
import { SpecError, type SpecIssue } from '../spec/errors.js';
import { diskFirmware } from '../spec/distros.js';
import type { BuildSpec } from '../spec/spec.js';
import { selectDriver } from './drivers/index.js';
import type { Driver } from './drivers/types.js';
import { checkOutputTools } from './outputs/index.js';

export interface PreflightOptions {
  /** The build's work directory: private package indexes are cached under it. */
  workDir: string;
  /** May a package index apt lacks be fetched (default `any`: the build fetches from there anyway). */
  fetch?: FetchPolicy;
  indexes?: PackageIndexes;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface Preflight {
  driver: Driver;
  /** What was not checked, and why. */
  notes: string[];
  /** Where package names were looked up, if they were. */
  packageIndex?: string;
}

/** Checks a spec as a build would; throws a SpecError listing every problem (or OSFARM_BUILD_FAILED for a missing tool). */
export async function preflight(spec: BuildSpec, options: PreflightOptions): Promise<Preflight> {
  const indexes = options.indexes ?? new PackageIndexes(packageIndexDir(options.workDir));
  const sources = await checkSources(spec, { indexes, fetch: options.fetch ?? 'any', signal: options.signal, log: options.log });
  const issues: SpecIssue[] = [...sources.issues];
  let driver: Driver | undefined;
  try {
    driver = await selectDriver(spec);
  } catch (err) {
    if (!(err instanceof SpecError)) throw issues.length > 0 ? new SpecError(issues) : err;
    issues.push(...err.issues);
  }
  if (issues.length > 0) throw new SpecError(issues);
  await checkOutputTools(spec.outputs, diskFirmware(spec.firmware, spec.architecture));
  return { driver: driver!, notes: sources.notes, ...(sources.index ? { packageIndex: sources.index.where } : {}) };
}
