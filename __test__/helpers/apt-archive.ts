/**
 * A minimal local apt archive for a file:// mirror: a Release file and one Packages index
 * listing the given names (no .deb files behind them). Enough for `apt-get update` and
 * osfarm's up-front package check; a bootstrap from it fails at once (it has no essential
 * packages). Unsigned: use it with gpgCheck false (--no-gpg-check).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function localArchive(dir: string, packages: string[], release = 'bookworm', arch = 'amd64'): string {
  const rel = join('main', `binary-${arch}`, 'Packages');
  const dist = join(dir, 'dists', release);
  mkdirSync(join(dist, 'main', `binary-${arch}`), { recursive: true });
  const index = packages
    .map((p) => `Package: ${p}\nVersion: 1.0-1\nArchitecture: ${arch}\nMaintainer: osfarm tests <tests@osfarm.invalid>\nFilename: pool/main/${p}_1.0-1_${arch}.deb\nSize: 1000\nSHA256: ${'0'.repeat(64)}\nSection: misc\nPriority: optional\nDescription: ${p} (a test entry)\n`)
    .join('\n');
  writeFileSync(join(dist, rel), index);
  const sha = createHash('sha256').update(index).digest('hex');
  writeFileSync(
    join(dist, 'Release'),
    [
      'Origin: osfarm-test',
      'Label: osfarm-test',
      `Suite: ${release}`,
      `Codename: ${release}`,
      'Date: Thu, 01 Jan 2026 00:00:00 UTC',
      `Architectures: ${arch}`,
      'Components: main',
      'SHA256:',
      ` ${sha} ${Buffer.byteLength(index)} ${rel}`,
      '',
    ].join('\n'),
  );
  return `file://${dir}`;
}
