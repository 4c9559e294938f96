/**
 * Admission of connections that have proven nothing yet — a push connection before its
 * authentication, an HTTP connection before its request's headers are complete (or idle
 * between requests) — so slow or idle connections (slowloris) cannot keep legitimate ones
 * out (issue 17, bug 4):
 *
 * - each such connection has a short deadline;
 * - they are bounded per source address (an IPv6 /64 counts as one address) and in total,
 *   separately from the work of proven connections (transfers, requests), which their
 *   servers bound themselves;
 * - when the total is reached, a connection from an address holding fewer than the
 *   biggest holder takes the place of that holder's oldest, so one address (or a few)
 *   cannot fill the pool: every other address still gets in.
 *
 * A connection turned away or evicted is told so (the caller's `refuse`: a push ERROR or
 * an HTTP 503, both OSFARM_LOCKED "busy, retry"), never just reset.
 */
import { isIPv6 } from 'node:net';

export interface GateOptions {
  /** Unproven connections from one address at once. */
  perAddress: number;
  /** Unproven connections at once, all addresses together. */
  total: number;
  /** Time an unproven connection has to prove itself. */
  deadlineMs: number;
}

export interface Waiting {
  /** Turns the connection away (evicted for another address's sake). */
  refuse(reason: string): void;
  /** The deadline passed. */
  expire(): void;
}

/** A connection in the pool; `leave` when it has proven itself or closed (idempotent). */
export interface Ticket {
  readonly address: string;
  leave(): void;
}

interface Entry extends Ticket {
  waiting: Waiting;
  timer: NodeJS.Timeout;
}

/** The key a connection from `address` is counted under: the address, or its /64 for IPv6. */
export function addressKey(address: string | undefined): string {
  const a = (address ?? '').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
  if (!isIPv6(a)) return a;
  const [head = '', tail = ''] = a.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

export class ConnectionGate {
  /** Per address, oldest first (a Set keeps insertion order). */
  private readonly byAddress = new Map<string, Set<Entry>>();
  private size = 0;
  /** Connections turned away or evicted so far. */
  refused = 0;

  constructor(readonly options: GateOptions) {}

  /** Unproven connections now. */
  get pending(): number {
    return this.size;
  }

  /**
   * Admits an unproven connection from `address`, or returns the reason it is turned away
   * (the caller then refuses it). May evict another address's oldest connection.
   */
  admit(address: string | undefined, waiting: Waiting): Ticket | string {
    const key = addressKey(address);
    const mine = this.byAddress.get(key)?.size ?? 0;
    const o = this.options;
    if (mine >= o.perAddress) {
      this.refused++;
      return `${mine} connections from ${key} are already waiting to authenticate or send a request (the limit per address)`;
    }
    if (this.size >= o.total) {
      const [biggest, held] = this.biggest();
      if (!biggest || held.size <= mine + 1) {
        this.refused++;
        return `${this.size} connections are already waiting to authenticate or send a request (the limit)`;
      }
      const oldest = held.values().next().value!;
      oldest.leave();
      this.refused++;
      oldest.waiting.refuse(`too many connections from ${biggest} are waiting (${held.size + 1}); others come first`);
    }
    let entries = this.byAddress.get(key);
    if (!entries) {
      entries = new Set();
      this.byAddress.set(key, entries);
    }
    const entry: Entry = {
      address: key,
      waiting,
      timer: setTimeout(() => {
        entry.leave();
        waiting.expire();
      }, o.deadlineMs),
      leave: () => {
        if (!entries.delete(entry)) return;
        clearTimeout(entry.timer);
        this.size--;
        if (entries.size === 0 && this.byAddress.get(key) === entries) this.byAddress.delete(key);
      },
    };
    entry.timer.unref();
    entries.add(entry);
    this.size++;
    return entry;
  }

  private biggest(): [string | undefined, Set<Entry>] {
    let best: [string | undefined, Set<Entry>] = [undefined, new Set()];
    for (const [k, s] of this.byAddress) if (s.size > best[1].size) best = [k, s];
    return best;
  }
}
