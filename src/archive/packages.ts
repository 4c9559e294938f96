/**
 * The real package index of a Debian or Ubuntu release, for the up-front check of a build
 * (which package names exist) and the Compose page's package search. Where it comes from:
 *
 * - the spec names no mirror: the machine's apt sources. Their own lists when apt already
 *   has the release and architecture (`apt-get indextargets`); otherwise a private
 *   `apt-get update` with the same archive URIs (and the same -updates/-security companions)
 *   for that release, into osfarm's cache. Only when those sources serve the distribution
 *   (their Release files' Origin): Ubuntu on a Debian machine needs a mirror.
 * - the spec names mirrors: a private `apt-get update` of exactly those.
 *
 * No archive host name is written here: apt's configuration and the spec give them all.
 * A private index is refreshed once a day; parsed indexes are kept in memory until their
 * files change.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { OsfarmError } from '../base/errors.js';
import { acquireLock } from '../host/lock.js';
import { run, runChecked, runPiped } from '../host/process.js';
import type { Architecture, Distribution } from '../spec/distros.js';
import { SpecError } from '../spec/errors.js';

const APT_HELPER = '/usr/lib/apt/apt-helper';
/** A private index older than this is fetched again. */
const FRESH_MS = 24 * 3600_000;

export interface PackageInfo {
  name: string;
  version: string;
  section: string;
  installedSizeKiB: number;
  description: string;
}

/** Where packages come from: the spec's mirrors (empty: the machine's apt sources), components and signature checking. */
export interface PackageSources {
  mirrors: string[];
  components: string[];
  gpgCheck: boolean;
}

/**
 * May an index apt does not have yet be fetched? `any`: yes (a build fetches packages from
 * there anyway); `host`: only from the machine's own sources (a web request may not make
 * the server fetch from a URL it names); `none`: use what is there.
 */
export type FetchPolicy = 'any' | 'host' | 'none';

export interface IndexRequest {
  distribution: Distribution;
  release: string;
  architecture: Architecture;
  sources: PackageSources;
  fetch: FetchPolicy;
  signal?: AbortSignal;
  /** Told about a fetch before it starts (it can take a while). */
  log?: (line: string) => void;
}

export interface PackageIndex {
  distribution: Distribution;
  release: string;
  architecture: Architecture;
  /** `host` (apt's lists on this machine) or `fetched` (a private apt update). */
  source: 'host' | 'fetched';
  /** In words, for messages: "apt's lists on this machine", "osfarm's apt index of http://…". */
  where: string;
  files: string[];
  /** Every package name, and the names packages provide (virtual packages). */
  names: Set<string>;
  provided: Set<string>;
  /** With `full`: each package's details (the first stanza of a name wins). */
  packages?: PackageInfo[];
}

interface Target {
  file: string;
  codename: string;
  suite: string;
  arch: string;
  uri: string;
  origin: string;
  component: string;
}

/** Packages index files apt knows, with the options that point apt at a lists directory. */
async function indexTargets(aptOptions: string[]): Promise<Target[]> {
  const format = '$(FILENAME)\t$(CODENAME)\t$(SUITE)\t$(ARCHITECTURE)\t$(REPO_URI)\t$(ORIGIN)\t$(COMPONENT)';
  const stdout = await runChecked("listing apt's package indexes", 'apt-get', [...aptOptions, 'indextargets', '--format', format, 'Created-By: Packages']);
  return stdout
    .split('\n')
    .filter((l) => l.includes('\t'))
    .map((l) => {
      const [file, codename, suite, arch, uri, origin, component] = l.split('\t') as string[];
      return { file: file!, codename: codename!, suite: suite!, arch: arch!, uri: uri!, origin: (origin ?? '').toLowerCase(), component: component ?? '' };
    });
}

/**
 * What apt's answer about its indexes depends on: its sources and configuration, and the
 * lists themselves (their files and directories). Cheap to take (a few stats); `apt-get
 * indextargets` is not (it parses every list, more than a second where apt keeps no
 * package cache, as in containers).
 */
async function targetsKey(files: string[]): Promise<string> {
  const parts: string[] = [];
  for (const f of files) parts.push(`${f}\t${await stat(f).then((st) => `${st.mtimeMs}\t${st.size}`, () => '-')}`);
  return parts.join('\n');
}

/** The files apt's sources and configuration are read from (in the default places). */
async function aptConfigFiles(): Promise<string[]> {
  const out = ['/etc/apt/sources.list', '/etc/apt/sources.list.d', '/etc/apt/apt.conf.d'];
  for (const d of ['/etc/apt/sources.list.d', '/etc/apt/apt.conf.d']) out.push(...(await readdir(d).catch(() => [] as string[])).sort().map((n) => join(d, n)));
  return out;
}

/**
 * `indexTargets` with its answer kept in `cacheFile` while the files it depends on
 * (`inputs`, and the index files and their directories it named) are unchanged.
 */
async function cachedTargets(aptOptions: string[], cacheFile: string, inputs: string[]): Promise<Target[]> {
  const depends = (targets: Target[]) => [...inputs, ...new Set(targets.flatMap((t) => [dirname(t.file), t.file]))];
  const kept = await readFile(cacheFile, 'utf8').then((t) => JSON.parse(t) as { key: string; targets: Target[] }, () => undefined);
  if (kept && kept.key === (await targetsKey(depends(kept.targets)))) return kept.targets;
  const targets = await indexTargets(aptOptions);
  await mkdir(dirname(cacheFile), { recursive: true });
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify({ key: await targetsKey(depends(targets)), targets }));
  await rename(tmp, cacheFile);
  return targets;
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

/** Decompresses one Packages file (whatever apt stored) through apt-helper. */
async function catFile(file: string, consume: (stdout: NodeJS.ReadableStream) => Promise<void>): Promise<void> {
  let stderr = '';
  const r = await runPiped(APT_HELPER, ['cat-file', file], {
    onLine: (l, stream) => {
      if (stream === 'stderr') stderr += `${l}\n`;
    },
  }, consume);
  if (r.code !== 0) throw new OsfarmError('OSFARM_IO', `cannot read the package index ${file}: ${stderr.trim() || `apt-helper exited with ${r.code}`}`);
}

/** Package names and provided names only: a scan for two field names, fast enough for a command line's check. */
async function readNames(file: string, names: Set<string>, provided: Set<string>): Promise<void> {
  const chunks: Buffer[] = [];
  await catFile(file, async (stdout) => {
    for await (const c of stdout) chunks.push(c as Buffer);
  });
  // latin1: a byte a character, so offsets stay cheap; names and Provides are ASCII.
  const text = `\n${Buffer.concat(chunks).toString('latin1')}`;
  for (let i = text.indexOf('\nPackage: '); i >= 0; i = text.indexOf('\nPackage: ', i + 1)) {
    const end = text.indexOf('\n', i + 10);
    names.add(text.slice(i + 10, end < 0 ? undefined : end).trim());
  }
  for (let i = text.indexOf('\nProvides: '); i >= 0; i = text.indexOf('\nProvides: ', i + 1)) {
    const end = text.indexOf('\n', i + 11);
    for (const p of text.slice(i + 11, end < 0 ? undefined : end).split(',')) provided.add(p.trim().split(/[\s(]/)[0]!);
  }
}

/** Every stanza's details, line by line (the event loop keeps serving requests meanwhile). */
async function readFull(file: string, into: Map<string, PackageInfo>, provided: Set<string>): Promise<void> {
  let cur: PackageInfo | undefined;
  const onLine = (line: string) => {
    if (line.length === 0 || line.charCodeAt(0) === 32) return;
    if (line.startsWith('Package: ')) {
      cur = { name: line.slice(9).trim(), version: '', section: '', installedSizeKiB: 0, description: '' };
      if (!into.has(cur.name)) into.set(cur.name, cur);
      return;
    }
    if (!cur) return;
    if (line.startsWith('Version: ')) cur.version = line.slice(9);
    else if (line.startsWith('Section: ')) cur.section = line.slice(9);
    else if (line.startsWith('Installed-Size: ')) cur.installedSizeKiB = Number(line.slice(16)) || 0;
    else if (line.startsWith('Description: ')) cur.description = line.slice(13);
    else if (line.startsWith('Provides: ')) for (const p of line.slice(10).split(',')) provided.add(p.trim().split(/[\s(]/)[0]!);
  };
  await catFile(file, async (stdout) => {
    let rest = '';
    stdout.setEncoding('utf8');
    for await (const chunk of stdout) {
      const s = rest + (chunk as string);
      let start = 0;
      for (let i = s.indexOf('\n'); i >= 0; i = s.indexOf('\n', start)) {
        onLine(s.slice(start, i));
        start = i + 1;
      }
      rest = s.slice(start);
    }
    onLine(rest);
  });
}

/** The E: lines of an apt run: what went wrong, in apt's words. */
function aptErrors(output: string): string[] {
  return output.split('\n').filter((l) => /^(E|Err):/.test(l.trim())).map((l) => l.trim());
}

export class PackageIndexes {
  private readonly cache = new Map<string, { mtimes: number[]; index: Promise<PackageIndex> }>();
  private host: Promise<Target[]> | undefined;

  /** `cacheDir` holds the private apt lists of fetched indexes. */
  constructor(private readonly cacheDir: string) {}

  /** The machine's apt indexes (read once). */
  private hostTargets(): Promise<Target[]> {
    this.host ??= aptConfigFiles().then((inputs) => cachedTargets([], join(this.cacheDir, 'host-targets.json'), inputs)).catch((err) => {
      this.host = undefined;
      throw err;
    });
    return this.host;
  }

  /** The distributions the machine's apt sources serve (by their Release files' Origin). */
  async hostOrigins(): Promise<string[]> {
    return [...new Set((await this.hostTargets()).map((t) => t.origin).filter((o) => o !== ''))];
  }

  /**
   * The index for a request, or null when it cannot be had under the fetch policy. Throws
   * a SpecError (with the spec path to blame) when the sources cannot serve the release.
   */
  async index(req: IndexRequest, full = false): Promise<PackageIndex | null> {
    if (req.distribution !== 'debian' && req.distribution !== 'ubuntu') {
      throw new OsfarmError('OSFARM_NOT_FOUND', `package indexes cover Debian and Ubuntu (apt); ${req.distribution}'s packages are checked by dnf itself: type the package names`);
    }
    const key = `${full ? 'full' : 'names'}|${req.distribution}|${req.release}|${req.architecture}|${JSON.stringify(req.sources)}`;
    const hit = this.cache.get(key) ?? (full ? undefined : this.cache.get(key.replace(/^names/, 'full')));
    if (hit) {
      const index = await hit.index.catch(() => undefined);
      const mtimes = index ? await Promise.all(index.files.map((f) => stat(f).then((s) => s.mtimeMs, () => -1))) : [];
      if (index && mtimes.every((m, i) => m === hit.mtimes[i])) return index;
    }
    const loading = this.load(req, full);
    const entry = { mtimes: [] as number[], index: loading as Promise<PackageIndex> };
    this.cache.set(key, entry);
    try {
      const done = await loading;
      if (!done) this.cache.delete(key);
      else entry.mtimes = await Promise.all(done.files.map((f) => stat(f).then((s) => s.mtimeMs, () => -1)));
      return done;
    } catch (err) {
      this.cache.delete(key);
      throw err;
    }
  }

  /** Packages whose name contains the query (exact and prefix matches first), then description matches. */
  async search(req: IndexRequest, q: string, limit = 50): Promise<{ index: Omit<PackageIndex, 'packages' | 'names' | 'provided'> & { count: number }; results: PackageInfo[] }> {
    const index = await this.index(req, true);
    if (!index) throw new OsfarmError('OSFARM_NOT_FOUND', `no package index of ${req.distribution} ${req.release} (${req.architecture}) here: type the package names`);
    const needle = q.trim().toLowerCase();
    const rank = (p: PackageInfo): number => {
      if (p.name === needle) return 0;
      if (p.name.startsWith(needle)) return 1;
      if (p.name.includes(needle)) return 2;
      if (needle.length >= 3 && p.description.toLowerCase().includes(needle)) return 3;
      return -1;
    };
    const results = needle === ''
      ? []
      : index.packages!
          .map((p) => ({ p, r: rank(p) }))
          .filter((x) => x.r >= 0)
          .sort((a, b) => a.r - b.r || a.p.name.length - b.p.name.length || a.p.name.localeCompare(b.p.name))
          .slice(0, limit)
          .map((x) => x.p);
    const { packages, names, provided: _provided, ...rest } = index;
    return { index: { ...rest, count: names.size }, results };
  }

  private async load(req: IndexRequest, full: boolean): Promise<PackageIndex | null> {
    const { distribution, release, architecture, sources } = req;
    let targets: Target[];
    let source: PackageIndex['source'] = 'host';
    let where = "apt's lists on this machine";
    if (sources.mirrors.length === 0) {
      const host = await this.hostTargets();
      const origins = await this.hostOrigins();
      if (!origins.includes(distribution)) {
        const serve = origins.length ? `serve ${origins.join(' and ')}` : 'name no archive';
        throw new SpecError([{ path: 'spec.mirrors', message: `this machine's apt sources ${serve}, not ${distribution}: give ${distribution}'s archive with --mirror URL (or $OSFARM_MIRROR, or mirrors: in the spec)` }]);
      }
      const ours = host.filter((t) => t.origin === distribution);
      const have = await existing(matching(ours, release, architecture));
      const components = new Set(have.filter((t) => t.codename === release || t.suite === release).map((t) => t.component));
      if (have.length > 0 && sources.components.every((c) => components.has(c))) targets = have;
      else {
        if (req.fetch === 'none') return null;
        // The host's archives, laid out as the host's own release is: the release itself and its companions.
        const hostRelease = ours.map((t) => t.codename).filter((c) => !c.includes('-')).sort()[0];
        const lines = new Set<string>();
        for (const t of ours) {
          if (!hostRelease || !t.codename.startsWith(hostRelease)) continue;
          lines.add(`deb [arch=${architecture}${sources.gpgCheck ? '' : ' trusted=yes'}] ${t.uri} ${release}${t.codename.slice(hostRelease.length)} ${sources.components.join(' ')}`);
        }
        targets = await this.fetch(req, [...lines], 'spec.release');
        source = 'fetched';
        where = `osfarm's apt index of ${release} from this machine's sources`;
      }
    } else {
      if (req.fetch !== 'any') return null;
      const lines = sources.mirrors.map((m) => (m.startsWith('deb') ? m : `deb [arch=${architecture}${sources.gpgCheck ? '' : ' trusted=yes'}] ${m} ${release} ${sources.components.join(' ')}`));
      targets = await this.fetch(req, lines, 'spec.mirrors');
      source = 'fetched';
      where = `osfarm's apt index of ${sources.mirrors.join(', ')}`;
    }
    const names = new Set<string>();
    const provided = new Set<string>();
    const byName = new Map<string, PackageInfo>();
    // -updates and -security first: where they carry a package, theirs is the newer version.
    const ordered = [...targets].sort((a, b) => (a.codename === release ? 1 : 0) - (b.codename === release ? 1 : 0));
    for (const t of ordered) {
      if (full) await readFull(t.file, byName, provided);
      else await readNames(t.file, names, provided);
    }
    if (full) for (const n of byName.keys()) names.add(n);
    return { distribution, release, architecture, source, where, files: ordered.map((t) => t.file), names, provided, ...(full ? { packages: [...byName.values()] } : {}) };
  }

  /**
   * `apt-get update` of `lines` (sources.list entries) into a private lists directory, at
   * most once a day; the release's own index must come out of it. `blame` is the spec path
   * a failure is reported at.
   */
  private async fetch(req: IndexRequest, lines: string[], blame: string): Promise<Target[]> {
    const { distribution, release, architecture } = req;
    if (lines.length === 0) throw new SpecError([{ path: blame, message: `apt on this machine has no archive of ${distribution} to fetch ${release}'s package index from: give a mirror (--mirror URL)` }]);
    const text = `${lines.join('\n')}\n`;
    const dir = join(this.cacheDir, `${distribution}-${release}-${architecture}-${createHash('sha256').update(text).digest('hex').slice(0, 12)}`);
    const options = [
      '-o', `Dir::Etc::SourceList=${join(dir, 'sources.list')}`,
      '-o', `Dir::Etc::SourceParts=${join(dir, 'parts')}`,
      '-o', `Dir::State::Lists=${join(dir, 'lists')}`,
      '-o', `Dir::Cache=${join(dir, 'cache')}`,
      '-o', `APT::Architecture=${architecture}`,
      '-o', `APT::Architectures=${architecture}`,
      '-o', 'Acquire::Languages=none',
    ];
    const own = (targets: Target[]) => targets.filter((t) => t.codename === release || t.suite === release);
    await mkdir(dir, { recursive: true });
    const inputs = await aptConfigFiles();
    const lock = await acquireLock(join(dir, 'lock'), { signal: req.signal });
    try {
      const stamp = join(dir, 'fetched');
      const fetchedAt = await stat(stamp).then((s) => s.mtimeMs, () => 0);
      const targets = () => cachedTargets(options, join(dir, 'targets.json'), [join(dir, 'sources.list'), ...inputs]);
      const before = fetchedAt > 0 ? await existing(matching(await targets(), release, architecture)) : [];
      if (own(before).length > 0 && Date.now() - fetchedAt < FRESH_MS) return before;
      for (const d of ['lists/partial', 'parts', 'cache']) await mkdir(join(dir, d), { recursive: true });
      await writeFile(join(dir, 'sources.list'), text);
      req.log?.(`osfarm: fetching the package index of ${distribution} ${release} (${architecture}) with apt-get update into ${dir}`);
      const timeout = AbortSignal.timeout(180_000);
      const r = await run('apt-get', [...options, '-q', 'update'], { capture: true, signal: req.signal ? AbortSignal.any([req.signal, timeout]) : timeout });
      const after = await existing(matching(await targets(), release, architecture));
      if (own(after).length > 0) {
        // A companion (-updates, -security) the release lacks is no reason to refuse; the release itself is there.
        await writeFile(stamp, new Date().toISOString());
        return after;
      }
      // apt keeps no list for an empty index: a clean update that gave none is an archive with
      // no packages. Not clean: an Err: line (apt exits 0 when a mirror cannot be reached).
      const errors = aptErrors(`${r.stdout}\n${r.stderr}`);
      if (r.code === 0 && errors.length === 0) {
        await writeFile(stamp, new Date().toISOString());
        return after;
      }
      if (own(before).length > 0) {
        req.log?.(`osfarm: could not refresh the package index (${errors[0] ?? `apt-get exited with ${r.code}`}); using the one fetched ${new Date(fetchedAt).toISOString()}`);
        return before;
      }
      // apt's own words, those about the release itself (not its companions) first.
      const main = errors.filter((e) => !/-(updates|security|backports)\b/.test(e));
      const said = [...main, ...errors].slice(0, 2).join('; ') || `apt-get update exited with ${r.code ?? r.signal} and gave no index`;
      throw new SpecError([{ path: blame, message: `no package index of ${distribution} ${release} (${architecture}) from ${lines.map((l) => l.split(' ').find((w) => /^[a-z+]+:\/\//.test(w)) ?? l).join(', ')}: ${said}` }]);
    } finally {
      await lock?.release();
    }
  }
}
