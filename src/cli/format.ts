/** An image's tags as printed: "a, b", or "" for none. */
export function tagList(tags: readonly string[]): string {
  return tags.join(', ');
}

/** Human-readable byte counts: 1.5 GiB, 320 KiB, 12 B. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

/** A share from 0 to 1 as a percentage with one decimal. */
export function percent(share: number): string {
  return `${(share * 100).toFixed(share < 0.01 ? 2 : 1)} %`;
}

/**
 * Numbers with thousands separators (1,234,567). By hand: the first toLocaleString call
 * loads ICU data, ~17 ms, which the first progress update of a short transfer paid.
 */
export function count(n: number): string {
  const [int, frac] = String(n).split('.');
  const grouped = int!.replace(/\B(?=(\d{3})+$)/g, ',');
  return frac === undefined ? grouped : `${grouped}.${frac}`;
}

/** Left-aligned text columns, for listings. */
export function table(rows: string[][], header?: string[]): string {
  const all = header ? [header, ...rows] : rows;
  if (all.length === 0) return '';
  const widths = all[0]!.map((_, c) => Math.max(...all.map((r) => (r[c] ?? '').length)));
  return all
    .map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  '))
    .join('\n');
}
