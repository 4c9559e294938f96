/**
 * The up-front check of a spec against what the archives really offer, before anything is
 * bootstrapped: the release (the catalogue), the architecture (this machine runs it, or
 * qemu-user-static does), and for Debian and Ubuntu every package name of every stage
 * (the release's real package index), each mistake with the closest names. `osfarm build`
 * runs it before a build and `--check` alone; the web API when a spec is checked or queued.
 */
import { existsSync } from 'node:fs';

import { closest, didYouMean } from '../base/suggest.js';
import { type Distribution, familyOf, nativeArchitectures, planGroup, QEMU_CPU } from '../spec/distros.js';
import { SpecError, type SpecIssue } from '../spec/errors.js';
import type { BuildSpec } from '../spec/spec.js';
import type { FetchPolicy, PackageIndex, PackageIndexes } from './packages.js';
import { releaseCatalogue } from './releases.js';

export interface SourceCheckOptions {
  indexes: PackageIndexes;
  /** Whether a package index apt lacks may be fetched (see FetchPolicy). */
  fetch: FetchPolicy;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface SourceCheck {
  issues: SpecIssue[];
  /** What could not be checked, and why ("package names not checked: …"). */
  notes: string[];
  /** The index package names were checked against, if any. */
  index?: Pick<PackageIndex, 'source' | 'where' | 'files'>;
}

/** What a release of the RPM family looks like: a number (9, 9.4), or Fedora's rawhide. */
function rpmReleaseIssue(distribution: Distribution, release: string): string | undefined {
  if (distribution === 'fedora') return /^(\d+|rawhide)$/.test(release) ? undefined : `${JSON.stringify(release)} is not a release of fedora: give its number (e.g. 41) or rawhide`;
  return /^\d+(\.\d+)?$/.test(release) ? undefined : `${JSON.stringify(release)} is not a release of ${distribution}: give its number (e.g. 9, or 9.4)`;
}

/** The release against the catalogue (Debian, Ubuntu) or the RPM family's numbering. */
function releaseIssue(core: BuildSpec): string | undefined {
  if (familyOf(core.distribution) === 'rpm') return rpmReleaseIssue(core.distribution, core.release);
  const catalogue = releaseCatalogue(core.distribution as 'debian' | 'ubuntu');
  if (catalogue.length === 0) return undefined;
  const r = catalogue.find((x) => x.name === core.release);
  if (!r) {
    const byVersion = catalogue.find((x) => x.version !== undefined && x.version.split(' ')[0] === core.release);
    if (byVersion) return `${JSON.stringify(core.release)} is the version number of ${byVersion.name}: give the codename, ${byVersion.name}`;
    const served = catalogue.filter((x) => x.served).map((x) => x.name);
    const hint = didYouMean(core.release, catalogue.map((x) => x.name));
    return `${JSON.stringify(core.release)} is not a release of ${core.distribution}${hint}; the archive serves ${served.join(', ')}`;
  }
  // The main archive no longer (or not yet) has it: only a mirror that does can build it.
  if (!r.served && core.mirrors.length === 0) return `${core.release}: ${r.why}, so the main archive does not have it: give an archive that does with --mirror URL`;
  return undefined;
}

/** A foreign architecture needs qemu-user-static's interpreter. */
function architectureIssue(core: BuildSpec): string | undefined {
  if (nativeArchitectures().includes(core.architecture)) return undefined;
  const cpu = QEMU_CPU[core.architecture];
  return existsSync(`/usr/bin/qemu-${cpu}-static`) ? undefined : `building ${core.architecture} on this machine needs qemu-user-static (apt-get install qemu-user-static binfmt-support)`;
}

/** The spec path of a chain member `depth` parents below the top. */
const at = (depth: number, rest: string) => `spec${'.parent'.repeat(depth)}.${rest}`;

/** Checks a spec (and its parents) against the release catalogue and the package index. */
export async function checkSources(spec: BuildSpec, opts: SourceCheckOptions): Promise<SourceCheck> {
  const chain: BuildSpec[] = [];
  for (let s: BuildSpec | undefined = spec; s; s = s.parent) chain.push(s);
  const core = chain[chain.length - 1]!;
  const depth = chain.length - 1;
  const issues: SpecIssue[] = [];
  const notes: string[] = [];
  const release = releaseIssue(core);
  if (release) issues.push({ path: at(depth, 'release'), message: release });
  const arch = architectureIssue(core);
  if (arch) issues.push({ path: at(depth, 'architecture'), message: arch });
  if (familyOf(core.distribution) === 'rpm') {
    notes.push(`package names of ${core.distribution} are checked by dnf when it runs`);
    return { issues, notes };
  }
  if (release) return { issues, notes };

  let index: PackageIndex | null;
  try {
    index = await opts.indexes.index({
      distribution: core.distribution,
      release: core.release,
      architecture: core.architecture,
      sources: { mirrors: core.mirrors, components: core.components, gpgCheck: core.gpgCheck },
      fetch: opts.fetch,
      signal: opts.signal,
      log: opts.log,
    });
  } catch (err) {
    if (!(err instanceof SpecError)) throw err;
    // Blamed on the core's fields, wherever the core is on the chain.
    issues.push(...err.issues.map((i) => ({ ...i, path: at(depth, i.path.replace(/^spec\./, '')) })));
    return { issues, notes };
  }
  if (!index) {
    notes.push(`package names not checked: no package index of ${core.distribution} ${core.release} (${core.architecture}) here yet`);
    return { issues, notes };
  }
  const known = (name: string) => index.names.has(name) || index.provided.has(name);
  const unknown = (name: string) => {
    const near = closest(name, index.names, 3);
    const hint = near.length ? ` (did you mean ${near.join(', ')}?)` : '';
    return `${JSON.stringify(name)} is not a package of ${core.distribution} ${core.release} (${core.architecture})${hint}; looked up in ${index.where}`;
  };
  chain.forEach((s, d) => {
    s.packages.forEach((p, j) => {
      // pkg=version and pkg/suite: apt checks the version, and another suite has another index.
      if (p.includes('/')) return;
      const name = p.split('=')[0]!;
      if (!known(name)) issues.push({ path: at(d, `packages[${j}]`), message: unknown(name) });
    });
    s.groups.forEach((g, j) => {
      const plan = planGroup(s.distribution, g);
      if (plan?.kind !== 'packages') return;
      for (const name of plan.packages) if (!known(name)) issues.push({ path: at(d, `groups[${j}]`), message: `${JSON.stringify(g)} means the package ${name}, which ${unknown(name).replace(/^"[^"]*" is/, 'is')}` });
    });
  });
  return { issues, notes, index: { source: index.source, where: index.where, files: index.files } };
}
