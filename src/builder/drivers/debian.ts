/**
 * Debian and Ubuntu: mmdebstrap does the work (variant, --include, architectures, hooks,
 * mounts, policy-rc.d, reproducible cleanup); debootstrap when asked or when mmdebstrap is
 * missing. Downloaded .debs are shared between builds through a cache directory whose files
 * are hard-linked into the tree before the download and back out after the install, and
 * never stay in the image.
 */
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { type DebVariant, hostArchitecture, planGroup } from '../../spec/distros.js';
import { SpecError } from '../../spec/errors.js';
import { buildFailed, ToolErrors } from '../errors.js';
import { run, SYSTEM_PATH } from '../../host/process.js';
import type { BuildSpec } from '../../spec/spec.js';
import { ensureEmulation } from './emulation.js';
import type { Driver, DriverContext } from './types.js';

/** The variant and extra packages the spec's groups (and settings) ask for. */
export function debianPlan(spec: BuildSpec): { variant: DebVariant; include: string[] } {
  let variant: DebVariant = 'minbase';
  const include: string[] = [];
  for (const g of spec.groups) {
    const plan = planGroup(spec.distribution, g);
    if (plan?.kind === 'variant') variant = plan.variant;
    else if (plan?.kind === 'packages') include.push(...plan.packages);
  }
  include.push(...spec.packages);
  if (spec.timezone !== 'Etc/UTC') include.push('tzdata');
  if (!/^(C|POSIX)(\.|$)/.test(spec.locale)) include.push('locales');
  return { variant, include: [...new Set(include)] };
}

/** Single-quotes a string for sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

async function writeScript(path: string, body: string): Promise<string> {
  await writeFile(path, `#!/bin/sh\nset -eu\n${body}`, { mode: 0o700 });
  await chmod(path, 0o700);
  return path;
}

/** Hook scripts that hard-link cached .debs in before the download and new ones out after the install. */
async function cacheHooks(ctx: DriverContext): Promise<{ cacheIn: string; cacheOut: string }> {
  const hooks = join(ctx.buildDir, 'hooks');
  await mkdir(hooks, { recursive: true });
  const cache = shq(ctx.cacheDir);
  const cacheIn = await writeScript(
    join(hooks, 'cache-in.sh'),
    `archives="$1/var/cache/apt/archives"
mkdir -p "$archives/partial"
n=0
for f in ${cache}/*.deb; do
  [ -f "$f" ] || continue
  ln "$f" "$archives/" 2>/dev/null || cp "$f" "$archives/"
  n=$((n + 1))
done
echo "osfarm: package cache: $n .deb file(s) offered to apt"
`,
  );
  const cacheOut = await writeScript(
    join(hooks, 'cache-out.sh'),
    `mkdir -p ${cache}
n=0
for f in "$1"/var/cache/apt/archives/*.deb; do
  [ -f "$f" ] || continue
  b=$(basename "$f")
  [ -e ${cache}/"$b" ] && continue
  if ! ln "$f" ${cache}/"$b" 2>/dev/null; then
    cp "$f" ${cache}/".$b.part" && mv ${cache}/".$b.part" ${cache}/"$b" || true
  fi
  n=$((n + 1))
done
echo "osfarm: package cache: $n new .deb file(s) kept for later builds"
`,
  );
  return { cacheIn, cacheOut };
}

function baseEnv(ctx: DriverContext): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: SYSTEM_PATH,
    HOME: '/root',
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    TMPDIR: join(ctx.buildDir, 'tmp'),
  };
  if (ctx.sourceDateEpoch !== null) env.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
  return env;
}

export class MmdebstrapDriver implements Driver {
  readonly tool = 'mmdebstrap' as const;
  readonly family = 'deb' as const;

  /** The mmdebstrap command line for a spec (exported for the bench and tests). */
  static async args(ctx: DriverContext): Promise<string[]> {
    const { spec } = ctx;
    const { variant, include } = debianPlan(spec);
    const { cacheIn, cacheOut } = await cacheHooks(ctx);
    const args = [
      '--mode=root',
      '--format=directory',
      // apt and dpkg output go to the build log (instead of progress bars).
      '--verbose',
      `--variant=${variant}`,
      `--architectures=${spec.architecture}`,
      '--skip=essential/unlink',
      `--setup-hook=${shq(cacheIn)} "$1"`,
      `--customize-hook=${shq(cacheOut)} "$1"`,
      // The host's resolv.conf is no part of an image (and would make it unreproducible).
      '--customize-hook=rm -f "$1/etc/resolv.conf"',
    ];
    if (spec.components.length !== 1 || spec.components[0] !== 'main') args.push(`--components=${spec.components.join(',')}`);
    if (include.length > 0) args.push(`--include=${include.join(',')}`);
    if (!spec.gpgCheck) args.push('--aptopt=Acquire::AllowInsecureRepositories "true"', '--aptopt=APT::Get::AllowUnauthenticated "true"');
    args.push('--', spec.release, ctx.root, ...spec.mirrors);
    return args;
  }

  async bootstrap(ctx: DriverContext): Promise<void> {
    await ensureEmulation(ctx.spec.architecture, ctx.log);
    await mkdir(ctx.cacheDir, { recursive: true });
    await mkdir(join(ctx.buildDir, 'tmp'), { recursive: true });
    const args = await MmdebstrapDriver.args(ctx);
    ctx.log(`osfarm: mmdebstrap ${args.filter((a) => !a.startsWith('--setup-hook') && !a.startsWith('--customize-hook')).join(' ')}`);
    ctx.phase('bootstrap', 'mmdebstrap');
    let inPackages = false;
    const errors = new ToolErrors();
    const r = await run('mmdebstrap', args, {
      env: baseEnv(ctx),
      signal: ctx.signal,
      onLine: (line) => {
        ctx.log(line);
        errors.see(line);
        if (!inPackages && /installing remaining packages/.test(line)) {
          inPackages = true;
          ctx.phase('packages', 'apt');
        }
      },
    });
    if (r.code !== 0) throw buildFailed(`mmdebstrap failed (exit ${r.code ?? r.signal})${errors.summary()}; see the build log`);
  }
}

const DEBOOTSTRAP_VARIANT: Partial<Record<DebVariant, string | null>> = {
  minbase: 'minbase',
  buildd: 'buildd',
  important: null,
  debootstrap: null,
  standard: null,
};

export class DebootstrapDriver implements Driver {
  readonly tool = 'debootstrap' as const;
  readonly family = 'deb' as const;

  static check(spec: BuildSpec): void {
    const { variant } = debianPlan(spec);
    if (!(variant in DEBOOTSTRAP_VARIANT)) {
      const i = spec.groups.findIndex((g) => planGroup(spec.distribution, g)?.kind === 'variant');
      throw new SpecError([{ path: `spec.groups[${Math.max(0, i)}]`, message: `debootstrap has no ${variant} variant (it has minbase, buildd and its default); use backend mmdebstrap` }]);
    }
    if (spec.mirrors.length > 1) throw new SpecError([{ path: 'spec.mirrors', message: 'debootstrap takes one mirror' }]);
    if (spec.mirrors[0]?.startsWith('deb')) throw new SpecError([{ path: 'spec.mirrors[0]', message: 'debootstrap takes a mirror URL, not a "deb …" line' }]);
  }

  async bootstrap(ctx: DriverContext): Promise<void> {
    const { spec } = ctx;
    DebootstrapDriver.check(spec);
    await ensureEmulation(spec.architecture, ctx.log);
    const { variant, include } = debianPlan(spec);
    await mkdir(ctx.cacheDir, { recursive: true });
    await mkdir(join(ctx.buildDir, 'tmp'), { recursive: true });
    const v = DEBOOTSTRAP_VARIANT[variant];
    const args = [`--arch=${spec.architecture}`, `--cache-dir=${ctx.cacheDir}`, `--components=${spec.components.join(',')}`];
    if (v) args.push(`--variant=${v}`);
    if (include.length > 0) args.push(`--include=${include.join(',')}`);
    if (!spec.gpgCheck) args.push('--no-check-gpg');
    if (spec.architecture !== hostArchitecture()) args.push('--foreign');
    // debootstrap takes no `--` (it refuses it as an unknown option).
    args.push(spec.release, ctx.root, ...spec.mirrors);
    ctx.log(`osfarm: debootstrap ${args.join(' ')}`);
    ctx.phase('bootstrap', 'debootstrap');
    let inPackages = false;
    const errors = new ToolErrors();
    const onLine = (line: string) => {
      ctx.log(line);
      errors.see(line);
      if (!inPackages && /^I: (Installing core packages|Unpacking the base system)/.test(line)) {
        inPackages = true;
        ctx.phase('packages', 'dpkg');
      }
    };
    let r = await run('debootstrap', args, { env: baseEnv(ctx), signal: ctx.signal, onLine });
    if (r.code === 0 && spec.architecture !== hostArchitecture()) {
      r = await run('chroot', [ctx.root, '/debootstrap/debootstrap', '--second-stage'], { env: baseEnv(ctx), signal: ctx.signal, onLine });
    }
    if (r.code !== 0) throw buildFailed(`debootstrap failed (exit ${r.code ?? r.signal})${errors.summary()}; see the build log`);
    // debootstrap leaves the host's resolv.conf and its .debs; configure's sweep takes the .debs.
    await rm(join(ctx.root, 'etc/resolv.conf'), { force: true });
  }
}
