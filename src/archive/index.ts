/**
 * What the distributions' archives offer, read from this machine: the release catalogue
 * (distro-info-data, debootstrap), the real package indexes (apt's lists, or a private
 * apt update into osfarm's cache), and the up-front check of a spec against both.
 */
import { join } from 'node:path';

export { checkSources, type SourceCheck, type SourceCheckOptions } from './check.js';
export { type FetchPolicy, type IndexRequest, type PackageIndex, PackageIndexes, type PackageInfo, type PackageSources } from './packages.js';
export { type AptDistribution, releaseCatalogue, type ReleaseInfo, servedReleases } from './releases.js';

/** Where the private package indexes of a work directory live. */
export function packageIndexDir(workDir: string): string {
  return join(workDir, 'cache', 'apt-indexes');
}
