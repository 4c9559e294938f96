/**
 * Private networks for tests and benches, in network namespaces, so nothing touches the
 * host's network:
 * - `createLan`: namespaces joined by a bridge that lives in its own hub namespace. Every
 *   name starts with the caller's prefix (which should contain the pid); `destroy()` kills
 *   the processes left inside and deletes every namespace, and runs on process exit too.
 * - `createNetns`: one namespace reached from the host over a veth pair throttled by `tc`
 *   on both ends: a slow link between two "machines". Addresses come from 198.18.0.0/15
 *   (RFC 2544, reserved for benchmarking) and exist only on this pair. `remove()`, and exit
 *   or SIGINT/SIGTERM in any case, delete the namespace and whatever still runs in it.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
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

/** Runs `cmd` on the host (`ns` undefined) or inside namespace `ns`; returns its stdout. */
function run(ns: string | undefined, cmd: string, args: string[]): string {
  const [c, a] = ns === undefined ? [cmd, args] : ['ip', ['netns', 'exec', ns, cmd, ...args]];
  const r = spawnSync(c, a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) throw new Error(`${[c, ...a].join(' ')} failed: ${(r.stderr ?? r.error?.message ?? '').trim()}`);
  return r.stdout;
}

function ip(args: string[]): void {
  run(undefined, 'ip', args);
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

// ----- one namespace behind a shaped link -----

export interface LinkOptions {
  /** Rate of each direction, in Mbit/s. */
  mbit: number;
  /** One-way delay added on each end, in ms (0: none). */
  delayMs?: number;
}

export interface Netns {
  name: string;
  /** The host's end of the pair. */
  hostIp: string;
  /** The namespace's end. */
  nsIp: string;
  /** The pair's interfaces: the host's end, the namespace's end. */
  hostDev: string;
  nsDev: string;
  /** Runs a command inside the namespace and returns its stdout. */
  exec(cmd: string, args: string[]): string;
  /** Starts a long-running command inside the namespace. */
  spawn(cmd: string, args: string[], options?: SpawnOptions): ChildProcess;
  /** Bytes sent and received by the host's end so far (IP packets, headers included). */
  hostCounters(): { tx: number; rx: number };
  remove(): void;
}

const live = new Set<Netns>();
let hooked = false;

/** `tc` shaping of one device's egress: a token bucket at `mbit`, after an optional delay. */
function shape(ns: string | undefined, dev: string, o: LinkOptions): void {
  // The bucket holds ~4 ms of traffic, at least 64 KiB (veth hands over 64 KiB GSO
  // packets): enough for a 250 Hz timer, small enough that the rate holds over any
  // interval that matters; 50 ms of queue before drops.
  const burst = String(Math.max(64 << 10, Math.round((o.mbit * 1e6) / 8 / 250)));
  const tbf = ['tbf', 'rate', `${o.mbit}mbit`, 'burst', burst, 'latency', '50ms'];
  if (o.delayMs) {
    run(ns, 'tc', ['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'netem', 'delay', `${o.delayMs}ms`]);
    run(ns, 'tc', ['qdisc', 'add', 'dev', dev, 'parent', '1:1', 'handle', '10:', ...tbf]);
  } else {
    run(ns, 'tc', ['qdisc', 'add', 'dev', dev, 'root', ...tbf]);
  }
}

/**
 * Creates namespace `name` with a veth pair to the host, both ends throttled. Needs root.
 * The pair is named `<dev>-h` / `<dev>-n` (`dev` defaults to `name`; interface names
 * have at most 15 characters).
 */
export function createNetns(name: string, link: LinkOptions, subnet = 0, dev = name): Netns {
  if (!/^[a-z0-9-]{1,40}$/.test(name)) throw new RangeError(`namespace name '${name}' must be 1-40 of [a-z0-9-]`);
  if (!/^[a-z0-9-]{1,10}$/.test(dev)) throw new RangeError(`device prefix '${dev}' must be 1-10 of [a-z0-9-]`);
  const hostDev = `${dev}-h`;
  const nsDev = `${dev}-n`;
  const hostIp = `198.18.${subnet}.1`;
  const nsIp = `198.18.${subnet}.2`;
  const ns: Netns = {
    name,
    hostIp,
    nsIp,
    hostDev,
    nsDev,
    exec: (cmd, args) => run(name, cmd, args),
    spawn: (cmd, args, options = {}) => spawn('ip', ['netns', 'exec', name, cmd, ...args], options),
    hostCounters: () => {
      const j = JSON.parse(run(undefined, 'ip', ['-j', '-s', 'link', 'show', hostDev])) as {
        stats64: { tx: { bytes: number }; rx: { bytes: number } };
      }[];
      return { tx: j[0]!.stats64.tx.bytes, rx: j[0]!.stats64.rx.bytes };
    },
    remove: () => {
      live.delete(ns);
      // Processes started inside it (a receiver left by an interrupted run) would keep
      // the namespace alive after its name is gone; deleting it takes the pair with it.
      deleteNamespace(name);
      try {
        ip(['link', 'delete', hostDev]);
      } catch {
        /* gone with the namespace */
      }
    },
  };
  if (!hooked) {
    hooked = true;
    const cleanup = () => {
      for (const n of [...live]) n.remove();
    };
    process.on('exit', cleanup);
    for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      process.on(sig, () => {
        cleanup();
        process.exit(code);
      });
    }
  }
  live.add(ns);
  try {
    ip(['netns', 'add', name]);
    ip(['link', 'add', hostDev, 'type', 'veth', 'peer', 'name', nsDev]);
    ip(['link', 'set', nsDev, 'netns', name]);
    ip(['addr', 'add', `${hostIp}/30`, 'dev', hostDev]);
    ip(['link', 'set', hostDev, 'up']);
    run(name, 'ip', ['addr', 'add', `${nsIp}/30`, 'dev', nsDev]);
    run(name, 'ip', ['link', 'set', nsDev, 'up']);
    run(name, 'ip', ['link', 'set', 'lo', 'up']);
    shape(undefined, hostDev, link);
    shape(name, nsDev, link);
  } catch (err) {
    ns.remove();
    throw new Error(`cannot set up the network namespace ${name} (needs root and iproute2): ${(err as Error).message}`);
  }
  return ns;
}
