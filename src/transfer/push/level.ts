/**
 * The zstd level of a push's block stream, adapted (like `zstd --adapt`) to which side
 * holds the transfer back, judged by the share of wall time the encoder was busy over the
 * last interval. An encoder busy nearly all the time is the bottleneck: level down. One
 * idle much of the time waits on the link, the disk or the receiver's requests: spare CPU
 * buys bytes, level up. (Runs queued for the encoder are no signal: reads finish in
 * bursts, so runs queue even behind an encoder that is idle most of the time.)
 *
 * Each change ends a zstd frame (the encoder takes a level only at a frame's start, see
 * codec.rs), and the next frame starts without the old one's history; so changes are
 * rare: a level found too slow is not tried again for a while. It starts at the top:
 * a link compression helps on is slower than the encoder at any level (on a 100 Mbit/s
 * link, starting at 3 and climbing cost bookworm minbase -> +python3 3.4 % more bytes),
 * and on a faster one the level is down to what the encoder sustains within a few
 * tenths of a second.
 */
export interface StreamLevelOptions {
  start?: number;
  min?: number;
  max?: number;
  /** Length of the interval over which the busy share is measured (ms). */
  intervalMs?: number;
  /** How long a level found too slow stays out of reach (ms). */
  holdMs?: number;
  /** Clock in nanoseconds (tests pass their own). */
  now?: () => bigint;
}

/** Busy shares above which the level goes down, and below which it goes up. */
const BUSY_HIGH = 0.9;
const BUSY_LOW = 0.5;

export class StreamLevel {
  level: number;
  private readonly min: number;
  private readonly max: number;
  private readonly intervalNs: number;
  private readonly holdNs: number;
  private readonly now: () => bigint;
  private spanStart: bigint;
  private busyNs = 0;
  /** The lowest level found too slow, and until when it stays out of reach. */
  private ceiling = Infinity;
  private ceilingUntil = 0n;

  constructor(o: StreamLevelOptions = {}) {
    this.min = o.min ?? 1;
    this.max = o.max ?? 9;
    this.level = Math.min(this.max, Math.max(this.min, o.start ?? 9));
    this.intervalNs = (o.intervalMs ?? 100) * 1e6;
    this.holdNs = (o.holdMs ?? 2000) * 1e6;
    this.now = o.now ?? process.hrtime.bigint;
    this.spanStart = this.now();
  }

  /** Runs one encode at the current level and accounts its time; the level may change after it. */
  async encode<T>(encode: (level: number) => Promise<T>): Promise<T> {
    const t0 = this.now();
    try {
      return await encode(this.level);
    } finally {
      this.account(t0, this.now());
    }
  }

  private account(t0: bigint, t1: bigint): void {
    this.busyNs += Number(t1 - t0);
    const span = Number(t1 - this.spanStart);
    if (span < this.intervalNs) return;
    const busy = this.busyNs / span;
    this.busyNs = 0;
    this.spanStart = t1;
    if (t1 >= this.ceilingUntil) this.ceiling = Infinity;
    if (busy > BUSY_HIGH && this.level > this.min) {
      this.ceiling = this.level;
      this.ceilingUntil = t1 + BigInt(this.holdNs);
      this.level--;
    } else if (busy < BUSY_LOW && this.level < this.max && this.level + 1 < this.ceiling) {
      this.level++;
    }
  }
}
