/**
 * The RPM family (Fedora, CentOS Stream, Rocky, AlmaLinux, Scientific Linux): `dnf
 * --installroot` (or yum where only yum exists) into an empty tree, with the groups as comps
 * groups (`@id`) and the packages beside them. No repository is built in: the spec's
 * `mirrors` (or --mirror / $OSFARM_MIRROR) are the repositories' base URLs, and host
 * repositories, plugins and configuration are never read. Downloaded packages are shared
 * between builds through the cache directory, bind-mounted as the tree's dnf cache for the
 * install only.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { rpmGpgKeysFromEnv } from '../../base/env.js';
import { hostArchitecture, nativeArchitectures, planGroup, RPM_ARCH, RPM_GROUP_ALIASES } from '../../spec/distros.js';
import { mount, mountsUnder, undoAll } from '../../host/mounts.js';
import { populateDev } from '../chroot.js';
import { SpecError } from '../../spec/errors.js';
import { buildFailed, ToolErrors } from '../errors.js';
import { run, SYSTEM_PATH } from '../../host/process.js';
import type { BuildSpec } from '../../spec/spec.js';
import { ensureEmulation } from './emulation.js';
import type { Driver, DriverContext } from './types.js';

/** What dnf is asked to install: `@group` for each comps group, then the packages. */
export function rpmPlan(spec: BuildSpec): string[] {
  const items: string[] = [];
  for (const g of spec.groups) {
    const plan = planGroup(spec.distribution, g);
    if (plan?.kind === 'comps') items.push(`@${plan.group}`);
  }
  items.push(...spec.packages);
  // Nothing asked for: the smallest installable system, as minbase is for Debian.
  if (items.length === 0) items.push(`@${RPM_GROUP_ALIASES.minimal}`);
  return [...new Set(items)];
}

/** The signing keys to trust with gpgCheck: $OSFARM_RPM_GPGKEYS, URLs separated by spaces. */
function gpgKeys(spec: BuildSpec): string[] {
  if (!spec.gpgCheck) return [];
  const keys = rpmGpgKeysFromEnv();
  if (keys.length === 0) {
    throw new SpecError([{
      path: 'spec.gpgCheck',
      message: `checking ${spec.distribution}'s package signatures needs its keys: set $OSFARM_RPM_GPGKEYS to their file:// or https:// URLs, or set gpgCheck: false (--no-gpg-check)`,
    }]);
  }
  return keys;
}

/** The dnf/yum configuration of one build: only the spec's repositories, caches in the tree. */
export function rpmConfig(spec: BuildSpec, keys: string[]): string {
  const lines = [
    '[main]',
    `gpgcheck=${spec.gpgCheck ? 1 : 0}`,
    'keepcache=1',
    'best=1',
    'skip_if_unavailable=0',
    'install_weak_deps=0',
    'clean_requirements_on_remove=0',
    'plugins=0',
    'debuglevel=2',
    '',
  ];
  spec.mirrors.forEach((url, i) => {
    lines.push(`[osfarm-${i}]`, `name=${spec.distribution} ${spec.release} repository ${i + 1} (osfarm)`, `baseurl=${url}`, 'enabled=1');
    lines.push(`gpgcheck=${spec.gpgCheck ? 1 : 0}`, 'repo_gpgcheck=0');
    if (keys.length > 0) lines.push(`gpgkey=${keys.join(' ')}`);
    lines.push('');
  });
  return lines.join('\n');
}

/**
 * Where the distribution's own rpm keeps its database: /usr/lib/sysimage/rpm since Fedora 36
 * and EL 10, /var/lib/rpm before. The host's rpm is told (its default may be elsewhere, such
 * as Debian's ~/.rpmdb), or the image's rpm would find no packages installed.
 */
export function rpmDbPath(spec: BuildSpec): string {
  const major = Number.parseInt(spec.release, 10);
  const usr = spec.distribution === 'fedora' ? major >= 36 : spec.distribution !== 'scientific-linux' && major >= 10;
  return usr ? '/usr/lib/sysimage/rpm' : '/var/lib/rpm';
}

export class RpmDriver implements Driver {
  readonly family = 'rpm' as const;
  constructor(readonly tool: 'dnf' | 'yum') {}

  /** The command line for a spec (exported for tests and the docs). */
  static args(tool: 'dnf' | 'yum', spec: BuildSpec, ctx: { root: string; config: string; reposDir: string }): string[] {
    const args = [
      '-y',
      `--config=${ctx.config}`,
      `--installroot=${ctx.root}`,
      `--releasever=${spec.release}`,
      `--setopt=reposdir=${ctx.reposDir}`,
      '--noplugins',
    ];
    if (tool === 'dnf' && !nativeArchitectures().includes(spec.architecture)) args.push(`--forcearch=${RPM_ARCH[spec.architecture]}`);
    args.push('install', ...rpmPlan(spec));
    return args;
  }

  /** Refuses a spec this driver cannot build, before anything runs. */
  check(spec: BuildSpec): void {
    if (spec.mirrors.length === 0) {
      throw new SpecError([{
        path: 'spec.mirrors',
        message: `${spec.distribution} needs its repositories: give their base URLs in mirrors, --mirror or $OSFARM_MIRROR (e.g. a mirror's .../${spec.release}/BaseOS/${RPM_ARCH[spec.architecture]}/os/)`,
      }]);
    }
    if (this.tool === 'yum' && spec.architecture !== hostArchitecture()) {
      throw buildFailed(`yum cannot install ${spec.architecture} packages on this ${hostArchitecture()} machine; use dnf (it has --forcearch)`);
    }
    gpgKeys(spec);
  }

  async bootstrap(ctx: DriverContext): Promise<void> {
    const { spec } = ctx;
    this.check(spec);
    const keys = gpgKeys(spec);
    ctx.phase('bootstrap', this.tool);
    await ensureEmulation(spec.architecture, ctx.log);
    const config = join(ctx.buildDir, `${this.tool}.conf`);
    const reposDir = join(ctx.buildDir, 'repos.d');
    await mkdir(reposDir, { recursive: true });
    await mkdir(ctx.cacheDir, { recursive: true });
    await writeFile(config, rpmConfig(spec, keys));
    await mkdir(ctx.root, { recursive: true, mode: 0o755 });
    // Package scripts write to /dev/null: without the node they would create a plain file.
    await populateDev(join(ctx.root, 'dev'));
    await mkdir(join(ctx.root, 'tmp'), { recursive: true, mode: 0o1777 });

    const undo: Array<() => Promise<void>> = [];
    let failure: unknown;
    try {
      // Package scripts expect /proc; the cache is shared between builds but never ships.
      undo.push(await mount(['-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc'], join(ctx.root, 'proc'), { log: ctx.log, errorCode: 'OSFARM_BUILD_FAILED' }));
      undo.push(await mount(['--bind', ctx.cacheDir], join(ctx.root, 'var/cache', this.tool), { log: ctx.log, errorCode: 'OSFARM_BUILD_FAILED' }));
      const args = RpmDriver.args(this.tool, spec, { root: ctx.root, config, reposDir });
      ctx.log(`osfarm: ${this.tool} ${args.join(' ')}`);
      ctx.phase('packages', this.tool);
      // rpm reads macros from $HOME/.rpmmacros: a home of the build's own, not the host user's.
      const home = join(ctx.buildDir, 'home');
      await mkdir(home, { recursive: true });
      await writeFile(join(home, '.rpmmacros'), `%_dbpath ${rpmDbPath(spec)}\n`);
      const env: NodeJS.ProcessEnv = { PATH: SYSTEM_PATH, HOME: home, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
      if (ctx.sourceDateEpoch !== null) env.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
      const errors = new ToolErrors();
      const r = await run(this.tool, args, { env, signal: ctx.signal, onLine: (l) => {
          ctx.log(l);
          errors.see(l);
        },
      });
      if (r.code !== 0) throw buildFailed(`${this.tool} install failed (exit ${r.code ?? r.signal})${errors.summary()}; see the build log`);
    } catch (err) {
      failure = err;
    }
    failure ??= await undoAll(undo);
    if (failure) throw failure;
    // The mount point of the cache stays behind empty; dnf's own leftovers go with it.
    const cache = join(ctx.root, 'var/cache', this.tool);
    if (mountsUnder(cache).length > 0) throw buildFailed(`the package cache is still mounted at ${cache}; unmount it by hand`);
    for (const n of await readdir(cache).catch(() => [] as string[])) await rm(join(cache, n), { recursive: true, force: true });
    // dnf's history database records its command line (host paths) and the build's clock.
    // (history_record=0 would avoid it, but breaks group installs in dnf 4.14.)
    const lib = join(ctx.root, 'var/lib/dnf');
    for (const n of await readdir(lib).catch(() => [] as string[])) if (n.startsWith('history.sqlite')) await rm(join(lib, n), { force: true });
  }
}
