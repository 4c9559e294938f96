/** Images as the front ends list them: the repository entry with what its build recorded. */
import { buildMeta } from '../images/lookup.js';
import type { ImageEntry } from '../repo/index.js';
import type { CanonicalSpec } from '../spec/index.js';

/** An image as the API lists it: the repository entry plus what its build recorded. */
export interface ImageView {
  digest: string;
  /** Its first tag, or null. */
  name: string | null;
  /** All its tags, in the order they were given. */
  tags: string[];
  format: string;
  size: number;
  blockCount: number;
  added: string;
  specDigest: string | null;
  distribution: string | null;
  release: string | null;
  architecture: string | null;
  /** The packages the spec names along its whole chain, the core's first (what the image has on top of its bootstrap variant). */
  packages: string[];
  /** Those the image's own stage adds (the top spec's). */
  addedPackages: string[];
}

/** Packages of a spec and its parents, the core's first, each once. */
function chainPackages(spec: CanonicalSpec | undefined): string[] {
  if (!spec) return [];
  return [...new Set([...chainPackages(spec.parent), ...spec.packages])];
}

export function imageView(e: ImageEntry): ImageView {
  const meta = buildMeta(e);
  const spec = meta?.spec;
  return {
    digest: e.digest,
    name: e.name ?? null,
    tags: e.tags,
    format: e.format,
    size: e.size,
    blockCount: e.blockCount,
    added: e.added.toISOString(),
    specDigest: meta?.specDigest ?? null,
    distribution: spec?.distribution ?? null,
    release: spec?.release ?? null,
    architecture: spec?.architecture ?? null,
    packages: chainPackages(spec),
    addedPackages: spec?.packages ?? [],
  };
}
