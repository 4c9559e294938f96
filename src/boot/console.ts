/**
 * A VM's serial console: the bytes as a stream, and the same output as clean lines
 * (terminal escapes and carriage returns removed) kept for waiting on and for error
 * messages.
 */
import { PassThrough } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';

/** Lines kept for `waitFor` and `lastLines`; the stream carries everything. */
const KEEP_LINES = 20_000;

// CSI sequences (colours, cursor moves), other two-byte escapes, and control characters but tab.
// biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is what it is for
const ESCAPES = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]/g;

export function cleanLine(raw: string): string {
  return raw.replace(ESCAPES, '').trimEnd();
}

export class Console {
  /** The console's bytes as the guest wrote them (a reader that falls behind gets them later; none are dropped). */
  readonly stream = new PassThrough();
  /** Clean lines with the time each was complete (ms since the epoch). */
  private readonly lines: { text: string; at: number }[] = [];
  private partial = '';
  // UTF-8 (systemd writes "…"), with a character split between two chunks kept for the next.
  private decoder = new StringDecoder('utf8');
  private readonly listeners = new Set<(line: string, complete: boolean) => void>();
  private bytes = 0;

  /** Bytes seen so far. */
  get size(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    this.stream.write(chunk);
    const parts = (this.partial + this.decoder.write(chunk)).split('\n');
    this.partial = parts.pop() ?? '';
    for (const p of parts) {
      const line = cleanLine(p);
      this.lines.push({ text: line, at: Date.now() });
      if (this.lines.length > KEEP_LINES) this.lines.shift();
      for (const l of this.listeners) l(line, true);
    }
    // A prompt ("login: ") has no newline yet: listeners see it as an incomplete line.
    const rest = cleanLine(this.partial);
    if (rest) for (const l of this.listeners) l(rest, false);
  }

  /** Forgets the lines (not the stream): a restarted guest starts a new history. */
  reset(): void {
    this.lines.length = 0;
    this.partial = '';
    this.decoder = new StringDecoder('utf8');
  }

  /** The last `n` non-empty lines, the current incomplete one included. */
  lastLines(n = 20): string[] {
    const all = [...this.lines.map((l) => l.text), cleanLine(this.partial)].filter((l) => l.length > 0);
    return all.slice(-n);
  }

  /** Calls `fn` for each line from now on (`complete` false for the line still being written); returns the unsubscribe. */
  onLine(fn: (line: string, complete: boolean) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** The first kept line (or the incomplete one) matching `pattern`, and when it came. */
  find(pattern: RegExp): { text: string; at: number } | undefined {
    const rest = cleanLine(this.partial);
    return this.lines.find((l) => pattern.test(l.text)) ?? (pattern.test(rest) ? { text: rest, at: Date.now() } : undefined);
  }

  end(): void {
    this.stream.end();
  }
}
