/**
 * What the Compose page offers: the distributions the drivers know (and whether this
 * machine can build them), their releases (for Debian and Ubuntu: the suites debootstrap's
 * scripts know that the archive still serves), architectures and groups.
 */
import { access, readdir, readFile, readlink } from 'node:fs/promises';

import { ARCHITECTURES, type Architecture, DEB_VARIANTS, DEBIAN_TASKS, DISTRIBUTIONS, type Distribution, familyOf, nativeArchitectures, QEMU_CPU, UBUNTU_GROUPS } from '../spec/distros.js';
import { selectDriver } from '../builder/drivers/index.js';
import { SpecError } from '../spec/errors.js';
import { specFromObject } from '../spec/spec.js';

export interface DistributionInfo {
  name: Distribution;
  family: 'deb' | 'rpm';
  /** A driver can build it on this machine now; otherwise `reason` says why not. */
  buildable: boolean;
  reason?: string;
  /** What a spec must give to build it (e.g. mirrors for the RPM family), from the driver's own check. */
  needs?: string;
  /** Known releases (free text is accepted where the list is empty). */
  releases: string[];
  defaultRelease: string | null;
  groups: string[];
  /** The groups that choose a bootstrap variant (only a spec without a parent may). */
  variants: string[];
}

export interface ArchitectureInfo {
  name: Architecture;
  native: boolean;
  /** Foreign architectures need qemu-user-static. */
  available: boolean;
}

export interface Catalog {
  distributions: DistributionInfo[];
  architectures: ArchitectureInfo[];
  defaultArchitecture: Architecture;
}

const SCRIPTS = '/usr/share/debootstrap/scripts';
const DISTRO_INFO = '/usr/share/distro-info';

/** debootstrap's suites, split by the script they share: Debian's follow `sid`, Ubuntu's `gutsy`. */
async function debootstrapSuites(): Promise<Record<'debian' | 'ubuntu', Set<string>>> {
  const out = { debian: new Set<string>(), ubuntu: new Set<string>() };
  const names = await readdir(SCRIPTS).catch(() => [] as string[]);
  for (const n of names) {
    const target = await readlink(`${SCRIPTS}/${n}`).catch(() => n);
    if (target === 'sid') out.debian.add(n);
    else if (target === 'gutsy') out.ubuntu.add(n);
  }
  return out;
}

/**
 * The releases still served by the archive, newest first: distro-info-data's list (which
 * tells Debian from its derivatives, and knows end-of-life dates) met with debootstrap's.
 * Without distro-info-data, debootstrap's list as is.
 */
async function releasesOf(distribution: 'debian' | 'ubuntu', known: Set<string>, today = new Date().toISOString().slice(0, 10)): Promise<string[]> {
  const csv = await readFile(`${DISTRO_INFO}/${distribution}.csv`, 'utf8').catch(() => '');
  if (!csv) return [...known].sort();
  const [head, ...rows] = csv.trim().split('\n');
  const cols = head!.split(',');
  const at = (name: string) => cols.indexOf(name);
  // Debian keeps LTS releases on the main archive; Ubuntu moves a release away at its (server) end of life.
  const eolCols = (distribution === 'debian' ? ['eol', 'eol-lts'] : ['eol', 'eol-server']).map(at).filter((i) => i >= 0);
  const out: string[] = [];
  for (const row of rows.reverse()) {
    const f = row.split(',');
    const series = f[at('series')] ?? '';
    if (!known.has(series) || (f[at('created')] ?? '') > today) continue;
    const eol = eolCols.map((i) => f[i] ?? '').filter((d) => d !== '').sort().pop();
    if (eol === undefined || eol >= today) out.push(series);
  }
  return out;
}

async function hostCodename(): Promise<{ id: string; codename: string } | null> {
  const text = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const get = (k: string) => new RegExp(`^${k}=["']?([^"'\\n]*)`, 'm').exec(text)?.[1] ?? '';
  return text ? { id: get('ID'), codename: get('VERSION_CODENAME') } : null;
}

function groupsOf(d: Distribution): string[] {
  if (familyOf(d) === 'rpm') return ['core', 'standard'];
  if (d === 'ubuntu') return [...DEB_VARIANTS, ...Object.keys(UBUNTU_GROUPS)];
  return [...DEB_VARIANTS, ...DEBIAN_TASKS];
}

export async function catalog(): Promise<Catalog> {
  const suites = await debootstrapSuites();
  const host = await hostCodename();
  const distributions: DistributionInfo[] = [];
  for (const name of DISTRIBUTIONS) {
    let buildable = true;
    let reason: string | undefined;
    let needs: string | undefined;
    try {
      // The driver's own check on a bare spec, so a newly added driver shows up here by itself.
      await selectDriver(specFromObject({ distribution: name, release: 'RELEASE' }));
    } catch (err) {
      if (err instanceof SpecError) needs = err.issues.map((i) => `${i.path}: ${i.message}`).join('; ');
      else {
        buildable = false;
        reason = (err as Error).message;
      }
    }
    const releases = name === 'debian' || name === 'ubuntu' ? await releasesOf(name, suites[name]) : [];
    const defaultRelease = host && host.id === name && releases.includes(host.codename) ? host.codename : (releases[0] ?? null);
    const variants = familyOf(name) === 'deb' ? [...DEB_VARIANTS] : [];
    distributions.push({ name, family: familyOf(name), buildable, ...(reason ? { reason } : {}), ...(needs ? { needs } : {}), releases, defaultRelease, groups: groupsOf(name), variants });
  }
  const native = nativeArchitectures();
  const architectures: ArchitectureInfo[] = [];
  for (const a of ARCHITECTURES) {
    const isNative = native.includes(a);
    const available = isNative || (await access(`/usr/bin/qemu-${QEMU_CPU[a]}-static`).then(() => true, () => false));
    architectures.push({ name: a, native: isNative, available });
  }
  return { distributions, architectures, defaultArchitecture: native[0]! };
}
