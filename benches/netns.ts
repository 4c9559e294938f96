/**
 * A network namespace reached over a veth pair, throttled by `tc` on both ends: a slow
 * link between two "machines" on one host. Addresses come from 198.18.0.0/15 (RFC 2544,
 * reserved for benchmarking) and exist only on this pair, so no traffic leaves the host.
 * The namespace (and whatever still runs in it) is deleted by `remove()`, and on exit or
 * SIGINT/SIGTERM in any case.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

import { deleteNamespace } from '../__test__/helpers/netns.js';

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

function ip(args: string[]): void {
  run(undefined, 'ip', args);
}

/** Runs `cmd` on the host (`ns` undefined) or inside namespace `ns`. */
function run(ns: string | undefined, cmd: string, args: string[]): string {
  const [c, a] = ns === undefined ? [cmd, args] : ['ip', ['netns', 'exec', ns, cmd, ...args]];
  return execFileSync(c, a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

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

/** Creates namespace `name` with a veth pair to the host, both ends throttled. Needs root. */
export function createNetns(name: string, link: LinkOptions, subnet = 0): Netns {
  if (!/^[a-z0-9-]{1,10}$/.test(name)) throw new RangeError(`namespace name '${name}' must be 1-10 of [a-z0-9-]`);
  const hostDev = `${name}-h`;
  const nsDev = `${name}-n`;
  const hostIp = `198.18.${subnet}.1`;
  const nsIp = `198.18.${subnet}.2`;
  const ns: Netns = {
    name,
    hostIp,
    nsIp,
    exec: (cmd, args) => run(name, cmd, args),
    spawn: (cmd, args, options = {}) => spawn('ip', ['netns', 'exec', name, cmd, ...args], options),
    hostCounters: () => {
      const j = JSON.parse(execFileSync('ip', ['-j', '-s', 'link', 'show', hostDev], { encoding: 'utf8' })) as {
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
