/**
 * The configure phase, the same for every driver: host name, time zone, locale, root
 * password, extra files, then the spec's commands inside the chroot; then the tree is swept
 * of package caches and logs that must not ship in an image.
 */
import { chmod, lchown, lstat, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';

import { Chroot, resolveInRoot } from './chroot.js';
import type { Family } from '../spec/distros.js';
import { buildFailed } from './errors.js';
import { configureFirstBoot, firstBootNeedsChroot, sweepHostKeys } from './firstboot.js';
import { exists } from '../host/fs.js';
import { run } from '../host/process.js';
import type { BuildSpec } from '../spec/spec.js';

export interface ConfigureContext {
  root: string;
  spec: BuildSpec;
  family: Family;
  sourceDateEpoch: number | null;
  signal?: AbortSignal;
  log: (line: string) => void;
}

/** Where `path` (absolute, in the image) is on the host, its parent directories created inside the tree. */
async function placeInRoot(root: string, path: string): Promise<string> {
  const parent = await resolveInRoot(root, posix.dirname(path));
  await mkdir(parent, { recursive: true, mode: 0o755 });
  const target = join(parent, posix.basename(path));
  const st = await lstat(target).catch(() => undefined);
  // Never write through a symlink: it could point anywhere once seen from the host.
  if (st?.isSymbolicLink()) await rm(target);
  return target;
}

async function writeInRoot(root: string, path: string, content: string | Buffer, mode = 0o644): Promise<void> {
  const target = await placeInRoot(root, path);
  await writeFile(target, content, { mode });
  await chmod(target, mode);
  await lchown(target, 0, 0);
}

/** Runs the whole configure phase on a built tree. */
export async function configureTree(ctx: ConfigureContext): Promise<void> {
  const { root, spec } = ctx;
  ctx.log(`osfarm: configure: hostname ${spec.hostname}, timezone ${spec.timezone}, locale ${spec.locale}`);
  await writeInRoot(root, '/etc/hostname', `${spec.hostname}\n`);
  await writeHosts(ctx);
  await setTimezone(ctx);
  const needLocaleGen = await setLocale(ctx);
  if (spec.rootPasswordHash) await setRootPassword(ctx, spec.rootPasswordHash);
  for (let i = 0; i < spec.files.length; i++) await copyFileIn(ctx, i);
  if (spec.files.length > 0) ctx.log(`osfarm: configure: copied ${spec.files.length} file(s) in`);

  if (spec.commands.length > 0 || needLocaleGen || firstBootNeedsChroot(spec)) {
    const chroot = new Chroot(root, { resolvConf: true, policyRcD: ctx.family === 'deb', log: ctx.log });
    let failure: unknown;
    const env: Record<string, string> = {};
    if (ctx.sourceDateEpoch !== null) env.SOURCE_DATE_EPOCH = String(ctx.sourceDateEpoch);
    try {
      await chroot.enter();
      if (needLocaleGen) {
        const code = await chroot.sh('locale-gen\n', { signal: ctx.signal, onLine: ctx.log });
        if (code !== 0) throw buildFailed(`locale-gen for ${spec.locale} failed (exit ${code})`);
      }
      // Before the commands, which may refine it.
      await configureFirstBoot(root, spec, ctx.family, chroot, { signal: ctx.signal, log: ctx.log, env });
      for (const [i, command] of spec.commands.entries()) {
        ctx.log(`osfarm: configure: spec.commands[${i}]`);
        const code = await chroot.sh(`${command}\n`, { signal: ctx.signal, onLine: ctx.log, env });
        if (code !== 0) throw buildFailed(`spec.commands[${i}] failed with exit code ${code} (see the build log)`);
      }
    } catch (err) {
      failure = err;
    }
    // Teardown always runs; its failure outranks nothing but is never swallowed.
    try {
      await chroot.leave();
    } catch (err) {
      if (!failure) failure = err;
      else ctx.log(`osfarm: teardown: ${(err as Error).message}`);
    }
    if (failure) throw failure;
  }
  await sweep(ctx, spec.commands.length > 0);
}

async function writeHosts(ctx: ConfigureContext): Promise<void> {
  const path = await resolveInRoot(ctx.root, '/etc/hosts');
  const host = ctx.spec.hostname;
  let text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) {
    text = '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n';
  }
  if (host !== 'localhost' && !text.split('\n').some((l) => l.split(/\s+/).slice(1).includes(host))) {
    const short = host.split('.')[0]!;
    text += `127.0.1.1\t${host}${short !== host ? ` ${short}` : ''}\n`;
  }
  await writeInRoot(ctx.root, '/etc/hosts', text);
}

async function setTimezone(ctx: ConfigureContext): Promise<void> {
  const tz = ctx.spec.timezone;
  const zone = await resolveInRoot(ctx.root, `/usr/share/zoneinfo/${tz}`);
  const haveZone = await exists(zone);
  if (!haveZone) {
    // glibc reads a missing /etc/localtime as UTC: a minimal image without tzdata stays as it is.
    if (tz === 'Etc/UTC') return;
    throw buildFailed(`time zone ${tz}: /usr/share/zoneinfo/${tz} is not in the image (is tzdata installed?)`);
  }
  const link = await placeInRoot(ctx.root, '/etc/localtime');
  await rm(link, { force: true });
  await symlink(`/usr/share/zoneinfo/${tz}`, link);
  if (ctx.family === 'deb') await writeInRoot(ctx.root, '/etc/timezone', `${tz}\n`);
}

/** Writes the locale settings; returns whether locale-gen must run in the chroot. */
async function setLocale(ctx: ConfigureContext): Promise<boolean> {
  const locale = ctx.spec.locale;
  if (ctx.family === 'rpm') {
    await writeInRoot(ctx.root, '/etc/locale.conf', `LANG=${locale}\n`);
    return false;
  }
  await writeInRoot(ctx.root, '/etc/default/locale', `LANG=${locale}\n`);
  if (/^(C|POSIX)(\.|$)/.test(locale)) return false;
  const charset = /\.([A-Za-z0-9-]+)/.exec(locale)?.[1]?.toUpperCase().replace(/^UTF8$/, 'UTF-8') ?? 'ISO-8859-1';
  const gen = await resolveInRoot(ctx.root, '/etc/locale.gen');
  const current = await readFile(gen, 'utf8').catch(() => '');
  const line = `${locale} ${charset}`;
  if (!current.split('\n').some((l) => l.trim() === line)) await writeInRoot(ctx.root, '/etc/locale.gen', `${current}${current && !current.endsWith('\n') ? '\n' : ''}${line}\n`);
  return true;
}

/** Puts the hash into root's /etc/shadow entry (the password itself never reaches this code). */
async function setRootPassword(ctx: ConfigureContext, hash: string): Promise<void> {
  const passwdPath = await resolveInRoot(ctx.root, '/etc/passwd');
  const passwd = await readFile(passwdPath, 'utf8').catch(() => undefined);
  if (passwd === undefined || !passwd.split('\n').some((l) => l.startsWith('root:'))) {
    throw buildFailed('cannot set the root password: the image has no root entry in /etc/passwd');
  }
  const day = Math.floor((ctx.sourceDateEpoch ?? Date.now() / 1000) / 86400);
  const shadowPath = await resolveInRoot(ctx.root, '/etc/shadow');
  const shadow = await readFile(shadowPath, 'utf8').catch(() => undefined);
  let lines = shadow === undefined ? [] : shadow.split('\n').filter((l, i, a) => l !== '' || i < a.length - 1);
  const entry = (rest: string[]) => ['root', hash, String(day), ...rest].join(':');
  const idx = lines.findIndex((l) => l.startsWith('root:'));
  if (idx >= 0) {
    const f = lines[idx]!.split(':');
    while (f.length < 9) f.push('');
    lines[idx] = entry(f.slice(3, 9));
  } else lines = [entry(['0', '99999', '7', '', '', '']), ...lines];
  const st = shadow === undefined ? undefined : await lstat(shadowPath);
  const target = await placeInRoot(ctx.root, '/etc/shadow');
  await writeFile(target, `${lines.join('\n')}\n`, { mode: 0o600 });
  if (st) {
    await chmod(target, st.mode & 0o7777);
    await lchown(target, st.uid, st.gid);
  } else {
    await chmod(target, ctx.family === 'rpm' ? 0o000 : 0o640);
    await lchown(target, 0, 0);
  }
  // Debian passwd still says "x" for root; make sure, so the shadow entry is used.
  const fixed = passwd.split('\n').map((l) => {
    if (!l.startsWith('root:')) return l;
    const f = l.split(':');
    f[1] = 'x';
    return f.join(':');
  });
  if (fixed.join('\n') !== passwd) await writeFile(passwdPath, fixed.join('\n'));
  ctx.log('osfarm: configure: root password set (SHA-512 crypt hash in /etc/shadow)');
}

async function copyFileIn(ctx: ConfigureContext, i: number): Promise<void> {
  const f = ctx.spec.files[i]!;
  const target = await placeInRoot(ctx.root, f.destination);
  if (f.content !== undefined) {
    await writeFile(target, f.content, { mode: 0o644 });
    await chmod(target, f.mode ? parseInt(f.mode, 8) : 0o644);
    await lchown(target, 0, 0);
    return;
  }
  const st = await lstat(f.source!);
  if (st.isDirectory()) {
    await mkdir(target, { recursive: true, mode: st.mode & 0o7777 });
    const r = await run('cp', ['-a', '--no-preserve=ownership', '--', `${f.source}/.`, `${target}/`], { onLine: ctx.log });
    if (r.code !== 0) throw buildFailed(`spec.files[${i}]: copying ${f.source} to ${f.destination} failed`);
    await run('chown', ['-R', '--no-dereference', '0:0', '--', target]);
  } else {
    const r = await run('cp', ['--preserve=mode,timestamps', '--no-preserve=ownership', '-L', '--', f.source!, target], { onLine: ctx.log });
    if (r.code !== 0) throw buildFailed(`spec.files[${i}]: copying ${f.source} to ${f.destination} failed`);
    await lchown(target, 0, 0);
  }
  if (f.mode) await chmod(target, parseInt(f.mode, 8));
}

async function emptyDir(dir: string, keep: (name: string) => boolean = () => false): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const n of names) if (!keep(n)) await rm(join(dir, n), { recursive: true, force: true });
}

/**
 * Leaves no package caches, package lists, build scratch or logs with build times in the
 * image (the drivers do the same after their own package steps; commands may have undone it).
 */
async function sweep(ctx: ConfigureContext, commandsRan: boolean): Promise<void> {
  const at = (p: string) => resolveInRoot(ctx.root, p);
  if (ctx.family === 'deb') {
    const archives = await at('/var/cache/apt/archives');
    await emptyDir(archives, (n) => n === 'partial' || n === 'lock');
    await emptyDir(join(archives, 'partial'));
    for (const bin of ['pkgcache.bin', 'srcpkgcache.bin']) await rm(join(await at('/var/cache/apt'), bin), { force: true });
    await emptyDir(await at('/var/lib/apt/lists'), (n) => n === 'partial' || n === 'lock');
  } else {
    await emptyDir(await at('/var/cache/dnf'));
    await emptyDir(await at('/var/cache/yum'));
  }
  if (commandsRan) {
    await emptyDir(await at('/tmp'));
    await emptyDir(await at('/run'));
  }
  if (ctx.sourceDateEpoch !== null) {
    // What mmdebstrap removes for reproducible output, plus dnf's logs.
    for (const p of [
      '/var/log/dpkg.log',
      '/var/log/apt/history.log',
      '/var/log/apt/term.log',
      '/var/log/alternatives.log',
      '/var/cache/ldconfig/aux-cache',
      '/var/log/apt/eipp.log.xz',
      '/var/lib/dbus/machine-id',
      '/var/log/dnf.log',
      '/var/log/dnf.librepo.log',
      '/var/log/dnf.rpm.log',
      '/var/log/hawkey.log',
    ]) {
      await rm(await at(p), { force: true });
    }
    const machineId = await at('/etc/machine-id');
    if (await exists(machineId)) await writeFile(machineId, '');
  }
  await sweepHostKeys(ctx.root, ctx.spec, ctx.family, ctx.log);
}
