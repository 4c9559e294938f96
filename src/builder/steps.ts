/**
 * What fills a new stage's tree: the core is bootstrapped by the build driver into the
 * empty tree; a stage above it starts as a copy-on-write copy of its parent and gets its
 * own packages from the package manager: apt-get in a chroot of the tree for Debian and
 * Ubuntu, dnf --installroot (the RPM driver, run again on the copy) for the RPM family.
 * The first stage that names a kernel (or DHCP, SSH keys, cloud-init) installs what that
 * needs too, the initramfs configured for virtual machines first (firstboot.ts). Then each
 * stage runs the configure phase with its own files and commands, and its file times are
 * clamped to SOURCE_DATE_EPOCH.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { Chroot, resolveInRoot } from './chroot.js';
import { configureTree } from './configure.js';
import { bootPackages, finishKernelInstall, prepareKernelInstall } from './firstboot.js';
import { debianPlan, shq } from './drivers/debian.js';
import type { Driver, Phase } from './drivers/types.js';
import { buildFailed, ToolErrors } from './errors.js';
import { acquireLock } from '../host/lock.js';
import { mount, undoAll } from '../host/mounts.js';
import { clampTree } from './clamp.js';
import type { BuildSpec } from '../spec/spec.js';
import type { StagePlan } from './plan.js';
import type { Populate } from '../stages/store.js';

export interface StepContext {
  driver: Driver;
  /** Scratch directory of the build (hook scripts, TMPDIR). */
  buildDir: string;
  /** The package cache shared by builds of this distribution (.deb files), never inside a tree. */
  cacheDir: string;
  /** Where package index caches live (one per set of package sources), shared by builds. */
  listsDir: string;
  sourceDateEpoch: number | null;
  log(line: string): void;
  phase(phase: Phase, detail?: string): void;
}

/** The populate function that makes one planned stage. */
export function stagePopulate(plan: StagePlan, ctx: StepContext): Populate {
  return async (dir, { signal }) => {
    const spec = plan.spec;
    const boot = bootPackages(spec);
    if (boot.length > 0) ctx.log(`osfarm: stage ${spec.name}: for booting: ${boot.join(' ')}`);
    if (ctx.driver.family === 'rpm') {
      // dnf --installroot (into the empty tree, or the parent's copy) installs what is missing:
      // the stage's own groups and packages, and what booting needs (dracut configured first).
      await prepareKernelInstall(dir, spec, ctx.log);
      const withBoot = { ...spec, packages: [...spec.packages, ...boot] };
      const driverCtx = { spec: withBoot, root: dir, buildDir: ctx.buildDir, cacheDir: ctx.cacheDir, sourceDateEpoch: ctx.sourceDateEpoch, signal, log: ctx.log, phase: ctx.phase };
      if (plan.step === 'bootstrap' || withBoot.groups.length + withBoot.packages.length > 0) await ctx.driver.bootstrap(driverCtx);
      else ctx.log(`osfarm: stage ${spec.name}: no packages to add`);
      await withChroot(dir, ctx, (chroot) => finishKernelInstall(spec, chroot, { signal, log: ctx.log }), spec.kernel !== null && spec.kernel !== spec.parent?.kernel);
    } else if (plan.step === 'bootstrap') {
      await ctx.driver.bootstrap({ spec, root: dir, buildDir: ctx.buildDir, cacheDir: ctx.cacheDir, sourceDateEpoch: ctx.sourceDateEpoch, signal, log: ctx.log, phase: ctx.phase });
      // mmdebstrap wants an empty directory: the kernel's configuration and packages come after it.
      if (boot.length > 0) {
        await prepareKernelInstall(dir, spec, ctx.log);
        ctx.phase('packages', `${spec.name}: apt-get for booting`);
        await installPackages(dir, spec, boot, ctx, signal);
      }
    } else {
      ctx.phase('packages', `${spec.name}: apt-get in the parent's tree`);
      await prepareKernelInstall(dir, spec, ctx.log);
      await installPackages(dir, spec, [...debianPlan(spec).include, ...boot], ctx, signal);
    }
    ctx.phase('configure', spec.name);
    await configureTree({ root: dir, spec, family: ctx.driver.family, sourceDateEpoch: ctx.sourceDateEpoch, signal, log: ctx.log });
    if (ctx.sourceDateEpoch !== null) await clampTree(dir, ctx.sourceDateEpoch);
  };
}

/** The tree's apt sources, digested: the package lists downloaded for them are shared by every tree with the same sources. */
async function aptSourcesKey(root: string): Promise<string> {
  const h = createHash('sha256');
  const files = [await resolveInRoot(root, '/etc/apt/sources.list')];
  const d = await resolveInRoot(root, '/etc/apt/sources.list.d');
  for (const n of (await readdir(d).catch(() => [] as string[])).sort()) files.push(join(d, n));
  for (const f of files) h.update(`${f.slice(root.length)}\0${await readFile(f).catch(() => '')}\0`);
  return h.digest('hex').slice(0, 32);
}

/** Runs `fn` in a chroot session of the tree (entered and always left), if `when`. */
async function withChroot(root: string, ctx: StepContext, fn: (chroot: Chroot) => Promise<void>, when: boolean): Promise<void> {
  if (!when) return;
  const chroot = new Chroot(root, { resolvConf: false, policyRcD: false, log: ctx.log });
  let failure: unknown;
  try {
    await chroot.enter();
    await fn(chroot);
  } catch (err) {
    failure = err;
  }
  try {
    await chroot.leave();
  } catch (err) {
    failure ??= err;
  }
  if (failure) throw failure;
}

/**
 * Installs a stage's own packages (its packages, package groups, what its locale and time
 * zone need, and what booting needs) with apt-get inside the tree. The shared .deb cache and a package-list
 * cache are bind-mounted over the tree's apt directories for the duration, so downloads are
 * shared between builds and never stay in the stage.
 */
async function installPackages(root: string, spec: BuildSpec, packages: string[], ctx: StepContext, signal?: AbortSignal): Promise<void> {
  const include = [...new Set(packages)];
  if (include.length === 0) {
    ctx.log(`osfarm: stage ${spec.name}: no packages to add`);
    return;
  }
  const lists = join(ctx.listsDir, await aptSourcesKey(root));
  await mkdir(join(lists, 'partial'), { recursive: true });
  await mkdir(join(ctx.cacheDir, 'partial'), { recursive: true });
  // Builds sharing a work directory share these caches, and apt refuses (not waits for) a
  // lock another apt holds on them: one build's apt at a time.
  const lockPath = join(ctx.listsDir, 'osfarm-apt.lock');
  let aptLock = await acquireLock(lockPath, { wait: false, signal, errorCode: 'OSFARM_BUILD_FAILED' });
  if (!aptLock) {
    ctx.log(`osfarm: stage ${spec.name}: waiting for another build's apt on the shared package cache (${lockPath})`);
    aptLock = await acquireLock(lockPath, { signal, errorCode: 'OSFARM_BUILD_FAILED' });
  }
  try {
    await aptInstall(root, spec, include, lists, ctx, signal);
  } finally {
    await aptLock!.release();
  }
}

/** apt-get update and install in the tree, the shared caches bind-mounted for the duration (the caller holds the apt lock). */
async function aptInstall(root: string, spec: BuildSpec, include: string[], lists: string, ctx: StepContext, signal?: AbortSignal): Promise<void> {
  const chroot = new Chroot(root, { resolvConf: true, policyRcD: true, log: ctx.log });
  const unbind: Array<() => Promise<void>> = [];
  let failure: unknown;
  try {
    await chroot.enter();
    for (const [from, inTree] of [[ctx.cacheDir, '/var/cache/apt/archives'], [lists, '/var/lib/apt/lists']] as const) {
      const target = await resolveInRoot(root, inTree);
      unbind.push(await mount(['--bind', from], target, { log: ctx.log, errorCode: 'OSFARM_BUILD_FAILED', what: `bind-mounting ${from} on ${inTree} in the stage` }));
    }
    ctx.log(`osfarm: stage ${spec.name}: apt-get install ${include.join(' ')}`);
    const env: Record<string, string> = {};
    if (ctx.sourceDateEpoch !== null) env.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
    const errors = new ToolErrors();
    const code = await chroot.sh(`apt-get update -q\napt-get install -y -q --no-install-recommends ${include.map(shq).join(' ')}\n`, { signal, onLine: (l) => {
      ctx.log(l);
      errors.see(l);
    },
    env,
  });
    if (code !== 0) throw buildFailed(`${spec.name}: apt-get install ${include.join(' ')} failed (exit ${code})${errors.summary()}; see the build log`);
  } catch (err) {
    failure = err;
  }
  failure ??= await undoAll(unbind);
  try {
    await chroot.leave();
  } catch (err) {
    failure ??= err;
  }
  if (failure) throw failure;
}
