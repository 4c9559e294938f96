/**
 * Images by their build request: find the images a spec has produced, show an image's
 * spec, stages, formats and build log, export its spec (XML round-trips to the same
 * checksum), and let a spec name a repository image as its parent.
 */
import { parseText } from '../spec/formats.js';
import { type BuildSpec, specDigest } from '../spec/spec.js';
import { OsfarmError } from '../base/errors.js';
import type { ImageEntry, Repository } from '../repo/index.js';
import { type BuildMeta, buildMeta, imagesOfRequest, openIfExists, type RepositoryRef, requireBuildMeta } from './lookup.js';
import { cyclonedxDocument, diffPackages, type PackageDiff, packagesOf, spdxDocument } from './packages.js';

export * from './lookup.js';
export { cyclonedxDocument, diffPackages, type PackageChange, type PackageDiff, spdxDocument } from './packages.js';
export { specToXml } from '../spec/xml.js';

/** One image of a request, as listed. */
export interface ImageSummary {
  digest: string;
  /** Its first tag, or null. */
  name: string | null;
  /** All its tags. */
  tags: string[];
  format: string;
  size: number;
  added: string;
  sourceDateEpoch: number | null;
}

export interface FindResult {
  specDigest: string;
  images: ImageSummary[];
}

export interface ShowResult extends ImageSummary {
  path: string;
  specDigest: string;
  spec: BuildMeta['spec'];
  specXml: string | null;
  stages: { tag: string; label: string }[];
  cow: string | null;
  backend: string;
  builder: string;
  /** When it was built (where it was built: a pushed or pulled image keeps it); null for older builds. */
  built: string | null;
  /** Every image of the same request: its formats. */
  formats: ImageSummary[];
  buildLog: { path: string; tail: string } | null;
}

function summary(e: ImageEntry): ImageSummary {
  const m = buildMeta(e);
  return { digest: e.digest, name: e.name ?? null, tags: e.tags, format: m?.format ?? e.format, size: e.size, added: e.added.toISOString(), sourceDateEpoch: m?.sourceDateEpoch ?? null };
}

/** The images a spec's request produced (every format and SOURCE_DATE_EPOCH). */
export function findImages(repo: RepositoryRef, spec: BuildSpec): FindResult {
  const digest = specDigest(spec);
  const opened = openIfExists(repo);
  return { specDigest: digest, images: opened ? imagesOfRequest(opened, digest).map(summary) : [] };
}

function builtEntry(repo: Repository, ref: string): { entry: ImageEntry; meta: BuildMeta } {
  const entry = repo.resolve(ref);
  return { entry, meta: requireBuildMeta(entry) };
}

function openRepo(ref: RepositoryRef): Repository {
  const repo = openIfExists(ref);
  if (!repo) throw new OsfarmError('OSFARM_NOT_FOUND', `no repository at ${ref as string} (give --repo or $OSFARM_REPO)`);
  return repo;
}

/** An image's spec, stages, size, formats and build log (by name, digest or unique digest prefix). */
export function showImage(repo: RepositoryRef, ref: string): ShowResult {
  const opened = openRepo(repo);
  const { entry, meta } = builtEntry(opened, ref);
  return {
    ...summary(entry),
    path: entry.path,
    specDigest: meta.specDigest,
    spec: meta.spec,
    specXml: meta.specXml ?? null,
    stages: meta.stages ?? [],
    cow: meta.cow ?? null,
    backend: meta.backend,
    builder: meta.builder,
    built: meta.built ?? null,
    formats: imagesOfRequest(opened, meta.specDigest).map(summary),
    buildLog: meta.buildLog ?? null,
  };
}

/** The XML of the spec an image was built from. */
export function exportSpec(repo: RepositoryRef, ref: string): { specDigest: string; xml: string } {
  const { meta } = builtEntry(openRepo(repo), ref);
  if (!meta.specXml) throw new OsfarmError('OSFARM_NOT_FOUND', `image ${ref} was built before osfarm kept specs as XML: only its canonical JSON is kept (osfarm images show)`);
  return { specDigest: meta.specDigest, xml: meta.specXml };
}

/**
 * A `resolveParent` for specs: a parent named by an image name (or digest) in the
 * repository stands for the spec that image was built from.
 */
export function repositoryParents(repoDir: RepositoryRef): (ref: string) => { raw: unknown } | undefined {
  return (ref) => {
    const repo = openIfExists(repoDir);
    if (!repo) return undefined;
    let found: { meta: BuildMeta } | undefined;
    try {
      found = builtEntry(repo, ref);
    } catch (err) {
      if (err instanceof OsfarmError && err.code === 'OSFARM_NOT_FOUND') return undefined;
      throw err;
    }
    return found.meta.specXml ? { raw: parseText(found.meta.specXml, 'xml') } : undefined;
  };
}


/** Two images' package lists compared: what the image `b` adds, removes and changes against `a`. */
export interface DiffResult extends PackageDiff {
  a: { digest: string; name: string | null };
  b: { digest: string; name: string | null };
}

/** `osfarm images diff A B`: the packages added, removed and changed from image A to image B. */
export function diffImages(repo: RepositoryRef, a: string, b: string): DiffResult {
  const opened = openRepo(repo);
  const [ea, eb] = [opened.resolve(a), opened.resolve(b)];
  return {
    a: { digest: ea.digest, name: ea.name ?? null },
    b: { digest: eb.digest, name: eb.name ?? null },
    ...diffPackages(packagesOf(ea).packages, packagesOf(eb).packages),
  };
}

export type SbomFormat = 'spdx' | 'cyclonedx';

/** An image's SBOM: SPDX 2.3 JSON (default) or CycloneDX 1.5 JSON, from its recorded package list. */
export function imageSbom(repo: RepositoryRef, ref: string, format: SbomFormat = 'spdx'): Record<string, unknown> {
  const entry = openRepo(repo).resolve(ref);
  return format === 'cyclonedx' ? cyclonedxDocument(entry) : spdxDocument(entry);
}
