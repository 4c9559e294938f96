/**
 * The packages installed in a built tree, with their versions, architectures and source
 * packages, read from the tree's own package database by the host's dpkg-query or rpm
 * (nothing runs inside the tree). Kept with each image (BuildMeta.installed): the GUI lists
 * them and diffs two images' lists, which is what a site certifying an image against another
 * asks first; `osfarm images diff` and `images sbom` (SPDX, CycloneDX) read them too.
 */
import { familyOf } from '../spec/distros.js';
import type { BuildSpec } from '../spec/spec.js';
import { haveTool, run, SYSTEM_PATH } from '../host/process.js';
import type { InstalledPackage } from '../images/lookup.js';
import { rpmDbPath } from './drivers/rpm.js';

/** rpm's SOURCERPM ("bash-5.1.8-9.el9.src.rpm") as the source package's name and version-release. */
function sourceRpm(file: string): { source?: string; sourceVersion?: string } {
  const m = /^(.+)-([^-]+-[^-]+)\.(?:no)?src\.rpm$/.exec(file);
  return m ? { source: m[1]!, sourceVersion: m[2]! } : {};
}

/** The tree's packages sorted by name; undefined (and a log line) if its database cannot be read. */
export async function installedPackages(root: string, spec: BuildSpec, log: (line: string) => void): Promise<InstalledPackage[] | undefined> {
  const deb = familyOf(spec.distribution) === 'deb';
  const [cmd, args] = deb
    ? // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not a template
      ['dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f', '${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\t${source:Package}\\t${source:Version}\\n']]
    : ['rpm', ['--root', root, '--dbpath', rpmDbPath(spec), '-qa', '--qf', 'ii \\t%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n']];
  if (!(await haveTool(cmd))) {
    log(`osfarm: ${cmd} is not installed: the image's package list is not recorded`);
    return undefined;
  }
  const r = await run(cmd, args, { capture: true, env: { PATH: SYSTEM_PATH, LC_ALL: 'C.UTF-8' } });
  if (r.code !== 0) {
    log(`osfarm: ${cmd} could not read the tree's package database (exit ${r.code}): the image's package list is not recorded`);
    return undefined;
  }
  const out: InstalledPackage[] = [];
  for (const line of r.stdout.split('\n')) {
    // dpkg: only what is installed ("ii"), not what was removed with its configuration kept.
    const [status, name, version, arch, source, sourceVersion] = line.split('\t');
    if (!status?.startsWith('ii') || !name || !version) continue;
    const from = deb ? (source ? { source, ...(sourceVersion ? { sourceVersion } : {}) } : {}) : sourceRpm(source ?? '');
    out.push({ name, version: deb ? version : version.replace(/^0:/, ''), ...(arch ? { arch } : {}), ...from });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
