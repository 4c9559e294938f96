/**
 * Chroot hygiene: /proc, /sys, /dev and resolv.conf set up for commands run inside a tree,
 * a policy-rc.d that keeps daemons from starting, and a teardown that always runs and that
 * verifies in /proc/self/mountinfo that nothing is left mounted under the tree.
 */
import { chmod, lstat, mkdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';

import { exists } from '../host/fs.js';
import { mount, undoAll, unmountBelow } from '../host/mounts.js';
import { run, SYSTEM_PATH } from '../host/process.js';
import { killProcessesIn } from '../host/procs.js';
import { buildFailed } from './errors.js';

/** The character devices of a build tree's /dev (the set mmdebstrap creates): name, major, minor. */
const DEVICE_NODES: ReadonlyArray<readonly [string, number, number]> = [
  ['null', 1, 3],
  ['zero', 1, 5],
  ['full', 1, 7],
  ['random', 1, 8],
  ['urandom', 1, 9],
  ['tty', 5, 0],
  ['console', 5, 1],
  ['ptmx', 5, 2],
];

/**
 * Fills a `dev` directory with the standard device nodes, pts/ and shm/, and the fd
 * links. With `ptmx: 'link'` /dev/ptmx points at the devpts instance mounted on pts/.
 * Entries already there are kept (a tree built on a parent stage has them).
 */
export async function populateDev(dev: string, opts: { ptmx: 'node' | 'link' } = { ptmx: 'node' }): Promise<void> {
  await mkdir(join(dev, 'pts'), { recursive: true, mode: 0o755 });
  await mkdir(join(dev, 'shm'), { recursive: true, mode: 0o755 });
  const link = async (target: string, path: string) => {
    if (!(await exists(path))) await symlink(target, path);
  };
  for (const [name, major, minor] of DEVICE_NODES) {
    if (await exists(join(dev, name))) continue;
    if (name === 'ptmx' && opts.ptmx === 'link') {
      await link('pts/ptmx', join(dev, name));
      continue;
    }
    const r = await run('mknod', ['-m', '666', join(dev, name), 'c', String(major), String(minor)]);
    if (r.code !== 0) throw buildFailed(`cannot create /dev/${name} in the tree (mknod)`);
  }
  await link('/proc/self/fd', join(dev, 'fd'));
  for (const [i, name] of ['stdin', 'stdout', 'stderr'].entries()) await link(`/proc/self/fd/${i}`, join(dev, name));
}

/**
 * Resolves an absolute path inside a tree the way the chroot would see it: symlinks in the
 * tree are followed relative to `root` and can never point outside it. Components that do
 * not exist yet are appended as they are.
 */
export async function resolveInRoot(root: string, path: string, followLast = true): Promise<string> {
  const parts = posix.normalize(path).split('/').filter((p) => p !== '' && p !== '.');
  const resolved: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const host = join(root, ...resolved, part);
    const isLast = parts.length === 0;
    let st;
    try {
      st = await lstat(host);
    } catch {
      resolved.push(part, ...parts.filter((p) => p !== '.'));
      break;
    }
    if (st.isSymbolicLink() && (!isLast || followLast)) {
      if (++hops > 40) throw buildFailed(`too many symbolic links resolving ${path} in the image`);
      const target = await readlink(host);
      if (target.startsWith('/')) resolved.length = 0;
      parts.unshift(...target.split('/').filter((p) => p !== '' && p !== '.'));
      continue;
    }
    resolved.push(part);
  }
  // '..' entries left over from an unfinished walk cannot climb out either.
  const clean: string[] = [];
  for (const p of resolved) {
    if (p === '..') clean.pop();
    else clean.push(p);
  }
  return join(root, ...clean);
}

export interface ChrootOptions {
  /** Copy the host's resolv.conf in for the duration (commands that need the network). */
  resolvConf?: boolean;
  /** Put a policy-rc.d (exit 101) in place for the duration (Debian family). */
  policyRcD?: boolean;
  log?: (line: string) => void;
}

/**
 * A chroot session over a tree. `enter()` mounts /proc, /sys and a private /dev (tmpfs with
 * the standard nodes, its own devpts instance and /dev/shm), installs resolv.conf
 * and policy-rc.d; `leave()` undoes each step, kills leftover processes, unmounts anything
 * still mounted below the tree and fails loudly if it cannot.
 */
export class Chroot {
  readonly root: string;
  private undo: Array<() => Promise<void>> = [];
  private entered = false;

  constructor(root: string, private readonly opts: ChrootOptions = {}) {
    this.root = root;
  }

  private async mountOn(what: string, args: string[]): Promise<void> {
    const target = join(this.root, what);
    const st = await lstat(target).catch(() => undefined);
    if (st && !st.isDirectory()) throw buildFailed(`/${what} in the image is not a directory; refusing to mount over it`);
    this.undo.push(await mount(args, target, { log: this.opts.log, errorCode: 'OSFARM_BUILD_FAILED', what: `mount of /${what} in the chroot` }));
  }

  async enter(): Promise<void> {
    if (this.entered) return;
    this.entered = true;
    await this.mountOn('proc', ['-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc']);
    try {
      await this.mountOn('sys', ['-t', 'sysfs', '-o', 'ro,nosuid,nodev,noexec', 'sysfs']);
    } catch {
      // No sysfs of its own here (a container): the host's, read through a slave bind.
      await this.mountOn('sys', ['--rbind', '/sys']);
      await run('mount', ['--make-rslave', join(this.root, 'sys')]);
    }
    // A /dev of its own, never the host's: what commands create or delete there goes with
    // the tmpfs at teardown, and the tree's own /dev underneath stays as it was.
    await this.mountOn('dev', ['-t', 'tmpfs', '-o', 'nosuid,noexec,mode=0755,size=16m', 'osfarm-dev']);
    const dev = join(this.root, 'dev');
    await populateDev(dev, { ptmx: 'link' });
    const pts = await run('mount', ['-t', 'devpts', '-o', 'newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec', 'devpts', join(dev, 'pts')]);
    if (pts.code !== 0) this.opts.log?.('osfarm: no devpts instance for the chroot (pseudo-terminals will not work in it)');
    await run('mount', ['-t', 'tmpfs', '-o', 'nosuid,nodev,mode=1777,size=64m', 'osfarm-shm', join(dev, 'shm')]);
    if (this.opts.resolvConf) await this.swapFile('/etc/resolv.conf', await hostResolvConf(), 0o644);
    if (this.opts.policyRcD) await this.swapFile('/usr/sbin/policy-rc.d', '#!/bin/sh\n# osfarm: no daemons start during an image build\nexit 101\n', 0o755);
  }

  /** Puts `content` at `path` (inside the tree) for the session; whatever was there comes back on leave. */
  private async swapFile(path: string, content: string, mode: number): Promise<void> {
    const parent = await resolveInRoot(this.root, posix.dirname(path));
    if (!(await exists(parent))) return;
    const target = join(parent, posix.basename(path));
    const saved = `${target}.osfarm-saved`;
    const had = await exists(target);
    if (had) await rename(target, saved);
    await writeFile(target, content, { mode });
    await chmod(target, mode);
    this.undo.push(async () => {
      await rm(target, { force: true });
      if (had) await rename(saved, target);
    });
  }

  /** Tears everything down, in reverse; always safe to call, also twice or after a failed enter. */
  async leave(): Promise<void> {
    const killed = await killProcessesIn(this.root, { graceMs: 500, errorCode: 'OSFARM_BUILD_FAILED' });
    if (killed > 0) this.opts.log?.(`osfarm: killed ${killed} process(es) left running in the chroot`);
    const failure = await undoAll(this.undo);
    // Only below the root: the tree itself may be a mount (a stage's overlay) that outlives the session.
    const left = await unmountBelow(this.root, { log: this.opts.log, strictlyBelow: true });
    if (left.length > 0) throw buildFailed(`could not unmount ${left.join(', ')}; unmount by hand before deleting the tree`);
    if (failure) throw buildFailed(`chroot teardown: ${(failure as Error).message}`, failure);
  }

  /** Runs a shell script inside the chroot with a clean environment; resolves to its exit code. */
  async sh(script: string, opts: { signal?: AbortSignal; onLine?: (l: string) => void; env?: Record<string, string> } = {}): Promise<number> {
    const rel = `/tmp/osfarm-command-${process.pid}-${Date.now()}.sh`;
    const tmp = await resolveInRoot(this.root, '/tmp');
    await mkdir(tmp, { recursive: true, mode: 0o1777 });
    const hostPath = join(tmp, posix.basename(rel));
    await writeFile(hostPath, script, { mode: 0o700 });
    try {
      const r = await run('chroot', [this.root, '/bin/sh', '-e', rel], {
        env: {
          PATH: SYSTEM_PATH,
          HOME: '/root',
          LANG: 'C.UTF-8',
          LC_ALL: 'C.UTF-8',
          TERM: 'dumb',
          DEBIAN_FRONTEND: 'noninteractive',
          DEBCONF_NONINTERACTIVE_SEEN: 'true',
          ...opts.env,
        },
        cwd: '/',
        signal: opts.signal,
        onLine: opts.onLine,
      });
      return r.code ?? 128;
    } finally {
      await rm(hostPath, { force: true });
    }
  }
}

async function hostResolvConf(): Promise<string> {
  try {
    return await readFile('/etc/resolv.conf', 'utf8');
  } catch {
    return '';
  }
}
