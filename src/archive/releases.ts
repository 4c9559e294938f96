/**
 * The release catalogue of Debian and Ubuntu: distro-info-data's lists (which tell Debian
 * from its derivatives and know end-of-life dates) met with debootstrap's scripts (the
 * suites the bootstrap tools know). Read from those files on this machine, never from the
 * network; the web's Compose page and the up-front checks of a build both use it.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

const SCRIPTS = '/usr/share/debootstrap/scripts';
const DISTRO_INFO = '/usr/share/distro-info';

export type AptDistribution = 'debian' | 'ubuntu';

export interface ReleaseInfo {
  /** The codename (bookworm, noble) or a suite name (stable, sid). */
  name: string;
  /** The version number, if it has one (12, 24.04 LTS). */
  version?: string;
  /** The main archive still serves it (released, not past its end of life; suites always). */
  served: boolean;
  /** Why not: "end of life since 2024-06-30", "not released before 2027-08-01". */
  why?: string;
}

/** Suite names Debian's archive always serves, whatever they point at. */
const DEBIAN_SUITES = ['stable', 'testing', 'unstable', 'oldstable', 'oldoldstable', 'sid'];

/** debootstrap's suites, split by the script they share: Debian's follow `sid`, Ubuntu's `gutsy`. */
function debootstrapSuites(): Record<AptDistribution, Set<string>> {
  const out = { debian: new Set<string>(), ubuntu: new Set<string>() };
  let names: string[] = [];
  try {
    names = readdirSync(SCRIPTS);
  } catch {
    return out;
  }
  for (const n of names) {
    let target = n;
    try {
      target = readlinkSync(`${SCRIPTS}/${n}`);
    } catch {
      /* a script of its own */
    }
    if (target === 'sid') out.debian.add(n);
    else if (target === 'gutsy') out.ubuntu.add(n);
  }
  return out;
}

/**
 * Every release of the distribution this machine knows, newest first, and whether the
 * main archive serves it today. Debian keeps LTS releases on the main archive; Ubuntu
 * moves a release away at its (server) end of life. Without distro-info-data (a package
 * osfarm depends on), debootstrap's suites, all taken as served.
 */
export function releaseCatalogue(distribution: AptDistribution, today = new Date().toISOString().slice(0, 10)): ReleaseInfo[] {
  let csv = '';
  try {
    csv = readFileSync(`${DISTRO_INFO}/${distribution}.csv`, 'utf8');
  } catch {
    /* no distro-info-data */
  }
  const suites = csv ? new Set<string>() : debootstrapSuites()[distribution];
  const out: ReleaseInfo[] = [];
  const seen = new Set<string>();
  if (csv) {
    const [head, ...rows] = csv.trim().split('\n');
    const cols = head!.split(',');
    const at = (name: string) => cols.indexOf(name);
    const eolCols = (distribution === 'debian' ? ['eol', 'eol-lts'] : ['eol', 'eol-server']).map(at).filter((i) => i >= 0);
    for (const row of rows.reverse()) {
      const f = row.split(',');
      const name = f[at('series')] ?? '';
      if (!name || name === 'experimental') continue;
      const created = f[at('created')] ?? '';
      const eol = eolCols.map((i) => f[i] ?? '').filter((d) => d !== '').sort().pop();
      const version = f[at('version')] || undefined;
      let why: string | undefined;
      if (created > today) why = `not created before ${created}`;
      else if (eol !== undefined && eol < today) why = `end of life since ${eol}`;
      out.push({ name, ...(version ? { version } : {}), served: why === undefined, ...(why ? { why } : {}) });
      seen.add(name);
    }
  }
  // Suite names always name a served release. debootstrap's own list (which mixes in
  // derivatives' names) only stands in when distro-info-data is missing.
  const extra = [...(distribution === 'debian' ? DEBIAN_SUITES : []), ...(csv ? [] : suites)];
  for (const name of extra) {
    if (seen.has(name) || !/^[a-z]+$/.test(name)) continue;
    out.push({ name, served: true });
    seen.add(name);
  }
  return out;
}

/** The releases the main archive serves, newest first (the Compose page's list). */
export function servedReleases(distribution: AptDistribution): string[] {
  return releaseCatalogue(distribution).filter((r) => r.served && !DEBIAN_SUITES.includes(r.name)).map((r) => r.name);
}
