import type { ProgressDisplay } from './command.js';
import { bytes, count } from './format.js';

const SILENT: ProgressDisplay = { update() {}, done() {} };

/** A one-line progress bar on stderr, redrawn at most ten times a second; `unit` says whether done and total are bytes or a count. */
export function progressBar(label: string, enabled: boolean, unit: 'bytes' | 'items' = 'bytes'): ProgressDisplay {
  const out = process.stderr;
  if (!enabled || !out.isTTY) return SILENT;
  const started = Date.now();
  let last = 0;
  let shown = false;
  const draw = (done: number, total: number, detail?: string) => {
    const width = Math.max(10, Math.min(40, (out.columns ?? 80) - 60));
    const share = total > 0 ? Math.min(1, done / total) : 0;
    const filled = Math.round(share * width);
    const secs = (Date.now() - started) / 1000;
    const amount = unit === 'bytes' ? `${bytes(done)}/${bytes(total)} ${secs > 0 ? `${bytes(done / secs)}/s` : ''}` : `${count(done)}/${count(total)}`;
    const bar = `${'#'.repeat(filled)}${'-'.repeat(width - filled)}`;
    const text = `${label} [${bar}] ${(share * 100).toFixed(0).padStart(3)}% ${amount} ${detail ?? ''}`;
    out.write(`\r${text.slice(0, (out.columns ?? 120) - 1)}\x1b[K`);
    shown = true;
  };
  return {
    update(done, total, detail) {
      const now = Date.now();
      if (now - last < 100 && done < total) return;
      last = now;
      draw(done, total, detail);
    },
    done() {
      if (shown) out.write('\r\x1b[K');
    },
  };
}
