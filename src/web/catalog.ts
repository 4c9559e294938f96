/**
 * What the Compose page offers: the distributions the drivers know (and whether this
 * machine can build them), their releases (for Debian and Ubuntu: those the archive still
 * serves, from the release catalogue, src/archive/releases.ts), architectures and groups.
 */
import { access, readFile } from 'node:fs/promises';

import { servedReleases } from '../archive/index.js';
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
    const releases = name === 'debian' || name === 'ubuntu' ? servedReleases(name) : [];
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
