/** Byte counts as people write them: 4096, 64K, 500M, 1.5G, 2TiB (powers of 1024). */
import { OsfarmError } from './errors.js';

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?$/i;

/**
 * Parses a byte count: a number of bytes, or digits with K, M, G, T or P (powers of 1024;
 * "GiB", "GB" and "G" alike). `what` names the value in the error (e.g. "--block-size").
 */
export function parseSize(value: string | number, what = 'size'): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${what} ${value} must be a non-negative number of bytes`);
    return Math.floor(value);
  }
  const m = SIZE.exec(value.trim());
  if (!m) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${what}: ${JSON.stringify(value)} is not a byte count like 4096, 64K, 500M or 1.5G`);
  const power = ' kmgtp'.indexOf((m[2] || ' ').toLowerCase());
  return Math.floor(Number(m[1]) * 1024 ** power);
}
