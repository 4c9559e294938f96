/**
 * Package search for the Compose page, over the distribution's real package index. For a
 * Debian release and architecture the host's apt already knows (`apt-get indextargets`),
 * the Packages files apt downloaded are read; for another Debian release or architecture
 * the index is fetched once through apt itself, with the host's configured archive URIs,
 * into a private lists directory (no mirror is ever named here). Parsed indexes are cached
 * in memory until the files change.
 */
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import type { Architecture, Distribution } from '../spec/distros.js';
import { OsfarmError } from '../base/errors.js';
import { run, runChecked } from '../host/process.js';

const APT_HELPER = '/usr/lib/apt/apt-helper';

export interface PackageInfo {
  name: string;
  version: string;
  section: string;
  installedSizeKiB: number;
  description: string;
}

export interface PackageIndex {
  distribution: Distribution;
  release: string;
  architecture: Architecture;
  /** Where the index came from: `host` (apt's lists) or `fetched` (a private apt update). */
  source: 'host' | 'fetched';
  files: string[];
  packages: PackageInfo[];
}

interface Target {
  file: string;
  codename: string;
  suite: string;
  arch: string;
  uri: string;
}

/** Packages index files apt knows, with the options that point apt at a lists directory. */
async function indexTargets(aptOptions: string[]): Promise<Target[]> {
  const stdout = await runChecked('listing apt\'s package indexes', 'apt-get', [...aptOptions, 'indextargets', '--format', '$(FILENAME)\t$(CODENAME)\t$(SUITE)\t$(ARCHITECTURE)\t$(REPO_URI)', 'Created-By: Packages']);
  return stdout
    .split('\n')
    .filter((l) => l.includes('\t'))
    .map((l) => {
      const [file, codename, suite, arch, uri] = l.split('\t') as [string, string, string, string, string];
      return { file, codename, suite, arch, uri };
    });
}

/** The release's own index plus its -updates and -security companions, for the architecture. */
function matching(targets: Target[], release: string, arch: string): Target[] {
  const of = (name: string) => name === release || name.startsWith(`${release}-`);
  return targets.filter((t) => t.arch === arch && (of(t.codename) || of(t.suite)));
}

async function existing(targets: Target[]): Promise<Target[]> {
  const out: Target[] = [];
  for (const t of targets) if (await stat(t.file).then(() => true, () => false)) out.push(t);
  return out;
}

/**
 * Reads one Packages file (apt-helper decompresses whatever apt stored) line by line, so the
 * event loop keeps serving requests while tens of thousands of stanzas go by. A stanza
 * starts with its Package field; the first stanza seen for a name wins.
 */
async function readPackages(file: string, into: Map<string, PackageInfo>): Promise<void> {
  let cur: PackageInfo | undefined;
  const flush = () => {
    if (cur?.name && !into.has(cur.name)) into.set(cur.name, cur);
    cur = undefined;
  };
  const onLine = (line: string) => {
    if (line.startsWith(' ')) return;
    const colon = line.indexOf(': ');
    if (colon <= 0) return;
    const value = line.slice(colon + 2);
    const key = line.slice(0, colon);
    if (key === 'Package') {
      flush();
      cur = { name: value, version: '', section: '', installedSizeKiB: 0, description: '' };
      return;
    }
    if (!cur) return;
    switch (key) {
      case 'Version':
        cur.version = value;
        break;
      case 'Section':
        cur.section = value;
        break;
      case 'Installed-Size':
        cur.installedSizeKiB = Number(value) || 0;
        break;
      case 'Description':
        cur.description = value;
        break;
    }
  };
  let stderr = '';
  const r = await run(APT_HELPER, ['cat-file', file], {
    onLine: (l, stream) => {
      if (stream === 'stderr') stderr += `${l}\n`;
      else onLine(l);
    },
  });
  flush();
  if (r.code !== 0) throw new OsfarmError('OSFARM_IO', `cannot read the package index ${file}: ${stderr.trim() || `apt-helper exited with ${r.code}`}`);
}

export class PackageSearch {
  private readonly cache = new Map<string, { mtimes: number[]; index: Promise<PackageIndex> }>();

  /** `cacheDir` holds the private apt lists of fetched indexes. */
  constructor(private readonly cacheDir: string) {}

  /**
   * `fetchable` says whether an index apt does not have yet may be fetched for this release
   * (the caller allows only known releases, so a request cannot make apt chase any name).
   */
  async index(distribution: Distribution, release: string, architecture: Architecture, fetchable: boolean): Promise<PackageIndex> {
    if (distribution !== 'debian' && distribution !== 'ubuntu') {
      throw new OsfarmError('OSFARM_NOT_FOUND', `package search covers Debian and Ubuntu (apt indexes); for ${distribution} type the package names`);
    }
    const key = `${distribution}/${release}/${architecture}`;
    const hit = this.cache.get(key);
    if (hit) {
      const index = await hit.index.catch(() => undefined);
      const mtimes = index ? await Promise.all(index.files.map((f) => stat(f).then((s) => s.mtimeMs, () => -1))) : [];
      if (index && mtimes.every((m, i) => m === hit.mtimes[i])) return index;
    }
    const index = this.load(distribution, release, architecture, fetchable);
    const entry = { mtimes: [] as number[], index };
    this.cache.set(key, entry);
    try {
      const done = await index;
      entry.mtimes = await Promise.all(done.files.map((f) => stat(f).then((s) => s.mtimeMs, () => -1)));
      return done;
    } catch (err) {
      this.cache.delete(key);
      throw err;
    }
  }

  /** Packages whose name contains the query (exact and prefix matches first), then description matches. */
  async search(distribution: Distribution, release: string, architecture: Architecture, fetchable: boolean, q: string, limit = 50): Promise<{ index: Omit<PackageIndex, 'packages'> & { count: number }; results: PackageInfo[] }> {
    const index = await this.index(distribution, release, architecture, fetchable);
    const needle = q.trim().toLowerCase();
    const rank = (p: PackageInfo): number => {
      if (p.name === needle) return 0;
      if (p.name.startsWith(needle)) return 1;
      if (p.name.includes(needle)) return 2;
      if (needle.length >= 3 && p.description.toLowerCase().includes(needle)) return 3;
      return -1;
    };
    const results = needle === '' ? [] : index.packages
      .map((p) => ({ p, r: rank(p) }))
      .filter((x) => x.r >= 0)
      .sort((a, b) => a.r - b.r || a.p.name.length - b.p.name.length || a.p.name.localeCompare(b.p.name))
      .slice(0, limit)
      .map((x) => x.p);
    const { packages, ...rest } = index;
    return { index: { ...rest, count: packages.length }, results };
  }

  private async load(distribution: Distribution, release: string, architecture: Architecture, fetchable: boolean): Promise<PackageIndex> {
    const hostTargets = await indexTargets([]);
    let source: PackageIndex['source'] = 'host';
    let targets = await existing(matching(hostTargets, release, architecture));
    if (targets.length === 0) {
      if (!fetchable) throw new OsfarmError('OSFARM_NOT_FOUND', `${release} is not a release of ${distribution} that osfarm knows (see GET /api/distributions): no package index`);
      targets = await this.fetch(hostTargets, distribution, release, architecture);
      source = 'fetched';
    }
    const byName = new Map<string, PackageInfo>();
    // -updates and -security first: where they carry a package, theirs is the newer version.
    const ordered = [...targets].sort((a, b) => (a.codename === release ? 1 : 0) - (b.codename === release ? 1 : 0));
    for (const t of ordered) await readPackages(t.file, byName);
    return { distribution, release, architecture, source, files: targets.map((t) => t.file), packages: [...byName.values()] };
  }

  /** Runs apt-get update for one release and architecture into a private lists directory, with the host's archive URIs. */
  private async fetch(hostTargets: Target[], distribution: Distribution, release: string, architecture: Architecture): Promise<Target[]> {
    // The host's main archive URIs (not its -security/-updates companions), which only serve the host's distribution.
    const hostIsDebian = hostTargets.some((t) => /debian/i.test(t.uri));
    const uris = [...new Set(hostTargets.filter((t) => !t.codename.includes('-')).map((t) => t.uri))];
    if (uris.length === 0 || (distribution === 'debian') !== hostIsDebian) {
      throw new OsfarmError('OSFARM_NOT_FOUND', `apt on this machine has no sources for ${distribution}: no package index for ${release} (${architecture}); type the package names, or add a source for it to apt's configuration`);
    }
    const dir = join(this.cacheDir, `${distribution}-${release}-${architecture}`);
    await mkdir(join(dir, 'lists', 'partial'), { recursive: true });
    await mkdir(join(dir, 'parts'), { recursive: true });
    await mkdir(join(dir, 'cache'), { recursive: true });
    await writeFile(join(dir, 'sources.list'), uris.map((u) => `deb [arch=${architecture}] ${u} ${release} main\n`).join(''));
    const options = [
      '-o', `Dir::Etc::SourceList=${join(dir, 'sources.list')}`,
      '-o', `Dir::Etc::SourceParts=${join(dir, 'parts')}`,
      '-o', `Dir::State::Lists=${join(dir, 'lists')}`,
      '-o', `Dir::Cache=${join(dir, 'cache')}`,
      '-o', `APT::Architecture=${architecture}`,
      '-o', `APT::Architectures=${architecture}`,
      '-o', 'Acquire::Languages=none',
    ];
    try {
      await runChecked('apt-get update', 'apt-get', [...options, '-q', 'update'], { signal: AbortSignal.timeout(180_000) });
    } catch (err) {
      throw new OsfarmError('OSFARM_NOT_FOUND', `cannot fetch the package index of ${distribution} ${release} (${architecture}) through apt: ${(err as Error).message}`);
    }
    const targets = await existing(matching(await indexTargets(options), release, architecture));
    if (targets.length === 0) throw new OsfarmError('OSFARM_NOT_FOUND', `apt found no package index for ${distribution} ${release} (${architecture}): is ${release} a release of ${distribution}?`);
    return targets;
  }
}
