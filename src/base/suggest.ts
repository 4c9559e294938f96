/** "Did you mean …?" for every misspelt name osfarm meets: flags, commands, spec fields, releases, packages. */

/** Levenshtein distance (insertions, deletions, substitutions), with an early exit above `max`. */
export function editDistance(a: string, b: string, max = Number.POSITIVE_INFINITY): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      cur.push(v);
      if (v < rowMin) rowMin = v;
    }
    if (rowMin > max) return max + 1;
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The candidates closest to `word` (case-insensitive), best first: at most `limit`, and only
 * those within a distance that grows with the word's length (1 for short words, up to 3),
 * so that a wild guess is not offered as a correction. An exact match (up to case, `-` and
 * `_`) comes first.
 */
export function closest(word: string, candidates: Iterable<string>, limit = 3): string[] {
  const w = word.toLowerCase();
  const squash = (s: string) => s.toLowerCase().replace(/[-_ ]/g, '');
  const max = w.length <= 3 ? 1 : w.length <= 6 ? 2 : 3;
  const scored: { c: string; d: number }[] = [];
  for (const c of candidates) {
    if (c === word) continue;
    const d = squash(c) === squash(word) ? 0 : editDistance(w, c.toLowerCase(), max);
    // A candidate that starts with the word (a prefix typed) is a good guess too.
    const score = d <= max ? d : c.toLowerCase().startsWith(w) && w.length >= 3 ? max : -1;
    if (score >= 0) scored.push({ c, d: score });
  }
  return scored
    .sort((a, b) => a.d - b.d || a.c.length - b.c.length || a.c.localeCompare(b.c))
    .slice(0, limit)
    .map((s) => s.c);
}

/** ` (did you mean x?)`, ` (did you mean x or y?)`, or '' when nothing is close. */
export function didYouMean(word: string, candidates: Iterable<string>, limit = 3): string {
  const found = closest(word, candidates, limit);
  if (found.length === 0) return '';
  const last = found.pop()!;
  return ` (did you mean ${found.length ? `${found.join(', ')} or ${last}` : last}?)`;
}
