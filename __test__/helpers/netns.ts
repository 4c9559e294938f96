/**
 * Private networks for tests and benches: network namespaces joined by a bridge that
 * lives in its own hub namespace, so nothing touches the host's network. Every name
 * starts with the caller's prefix (which should contain the pid); `destroy()` kills the
 * processes left inside and deletes every namespace, and runs on process exit too.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';

export interface Host {
  /** The namespace name. */
  ns: string;
  /** Its address on the LAN (eth0). */
  ip: string;
}

export interface Lan {
  hosts: Record<string, Host>;
  /** Bytes counted by a host's eth0 (`tx` = sent by that host). */
  counter(host: string, dir: 'tx' | 'rx'): number;
  /** Starts a command inside a host's namespace. */
  spawnIn(host: string, cmd: string, args: string[], opts?: { env?: NodeJS.ProcessEnv }): ChildProcess;
  /** Runs a command inside a host's namespace to completion. */
  runIn(host: string, cmd: string, args: string[]): { status: number; stdout: string; stderr: string };
  destroy(): void;
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr.trim()}`);
}

function namespaces(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Kills what still runs inside `ns`, then deletes it (and the veth ends inside it). */
export function deleteNamespace(ns: string): void {
  // Kill what still runs inside (our own servers), then remove the namespace and its veths.
  const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  spawnSync('ip', ['netns', 'del', ns]);
}

/**
 * Deletes namespaces `<family>-<pid>-*` left by runs whose process died without cleaning up
 * (only that family's, and only dead pids).
 */
export function sweepStale(family: string): void {
  const re = new RegExp(`^${family.replace(/[-]/g, '\\-')}-(\\d+)-`);
  for (const ns of namespaces()) {
    const m = re.exec(ns);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) deleteNamespace(ns);
  }
}

/**
 * Creates one namespace per host name on a bridged /24 (`subnet` like "10.201.7"; hosts
 * get .1, .2, ... in order). Names: `<prefix>-hub` and `<prefix>-<host>`.
 */
export function createLan(prefix: string, hostNames: string[], subnet: string): Lan {
  const hub = `${prefix}-hub`;
  const created: string[] = [];
  const hosts: Record<string, Host> = {};
  let destroyed = false;
  const destroy = () => {
    if (destroyed) return;
    destroyed = true;
    process.off('exit', destroy);
    for (const ns of created.reverse()) deleteNamespace(ns);
  };
  process.on('exit', destroy);
  try {
    ip(['netns', 'add', hub]);
    created.push(hub);
    ip(['-n', hub, 'link', 'set', 'lo', 'up']);
    ip(['-n', hub, 'link', 'add', 'br0', 'type', 'bridge']);
    ip(['-n', hub, 'link', 'set', 'br0', 'up']);
    hostNames.forEach((name, i) => {
      const ns = `${prefix}-${name}`;
      ip(['netns', 'add', ns]);
      created.push(ns);
      ip(['-n', hub, 'link', 'add', `p${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      ip(['-n', hub, 'link', 'set', `p${i}`, 'master', 'br0', 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', ns, 'addr', 'add', `${subnet}.${i + 1}/24`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      hosts[name] = { ns, ip: `${subnet}.${i + 1}` };
    });
  } catch (err) {
    destroy();
    throw err;
  }
  const host = (name: string): Host => {
    const h = hosts[name];
    if (!h) throw new Error(`no host ${name} on this LAN`);
    return h;
  };
  return {
    hosts,
    counter(name, dir) {
      const r = spawnSync('ip', ['-n', host(name).ns, '-j', '-s', 'link', 'show', 'dev', 'eth0'], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`cannot read the counters of ${name}: ${r.stderr}`);
      const [link] = JSON.parse(r.stdout) as { stats64: Record<'tx' | 'rx', { bytes: number }> }[];
      return link!.stats64[dir].bytes;
    },
    spawnIn(name, cmd, args, opts = {}) {
      return spawn('ip', ['netns', 'exec', host(name).ns, cmd, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    },
    runIn(name, cmd, args) {
      const r = spawnSync('ip', ['netns', 'exec', host(name).ns, cmd, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    destroy,
  };
}
